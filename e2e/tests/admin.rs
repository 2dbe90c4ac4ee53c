//! The operator's admin server over a real socket: liveness, readiness that
//! follows the shared flag, Prometheus metrics, and a clean shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use ferry_operator::admin::{AdminState, Readiness, bind_admin, serve_admin};
use ferry_operator::metrics::OperatorMetrics;
use prometheus::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);

struct Reply {
    status: u16,
    content_type: Option<String>,
    body: String,
}

/// One HTTP/1.1 GET over a fresh connection; enough for the admin port.
async fn get(addr: SocketAddr, path: &str) -> Reply {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(WAIT, stream.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .unwrap()
        .parse()
        .unwrap();
    let content_type = lines
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-type"))
        .map(|(_, value)| value.trim().to_owned());
    Reply {
        status,
        content_type,
        body: body.to_owned(),
    }
}

#[tokio::test]
async fn admin_server_reports_liveness_readiness_and_metrics() {
    let registry = Registry::new();
    let metrics = OperatorMetrics::new(&registry).unwrap();
    let readiness = Readiness::not_ready("waiting for leadership");
    let listener = bind_admin("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let server = tokio::spawn(serve_admin(
        listener,
        AdminState {
            readiness: readiness.clone(),
            registry,
        },
        stop.clone().cancelled_owned(),
    ));

    let livez = get(addr, "/livez").await;
    assert_eq!((livez.status, livez.body.as_str()), (200, "ok\n"));

    let not_ready = get(addr, "/readyz").await;
    assert_eq!(not_ready.status, 503);
    assert!(
        not_ready.body.contains("waiting for leadership"),
        "{}",
        not_ready.body
    );

    readiness.set_ready();
    metrics.set_leader(true);
    metrics.observe_reconcile("accesspolicy", Duration::from_millis(4), Ok(()));
    let ready = get(addr, "/readyz").await;
    assert_eq!((ready.status, ready.body.as_str()), (200, "ok\n"));

    let scraped = get(addr, "/metrics").await;
    assert_eq!(scraped.status, 200);
    assert!(
        scraped
            .content_type
            .as_deref()
            .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        scraped.content_type
    );
    for name in [
        "ferry_operator_leader 1",
        r#"ferry_operator_reconciles_total{controller="accesspolicy",result="ok"} 1"#,
        "ferry_operator_reconcile_duration_seconds_bucket",
        "ferry_operator_grants",
    ] {
        assert!(
            scraped.body.contains(name),
            "no {name} in\n{}",
            scraped.body
        );
    }

    readiness.set_not_ready("lost leadership");
    assert_eq!(get(addr, "/readyz").await.status, 503);
    assert_eq!(get(addr, "/metrics/extra").await.status, 404);

    stop.cancel();
    tokio::time::timeout(WAIT, server).await.unwrap().unwrap();
    assert!(TcpStream::connect(addr).await.is_err());
}
