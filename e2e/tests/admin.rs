//! The operator's admin server over a real socket: liveness, readiness that
//! follows the shared flag, Prometheus metrics, and a clean shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;
use tokio::net::TcpStream;

use ferry_e2e::http_get;
use ferry_operator::metrics::OperatorMetrics;
use ferry_runtime::admin::{AdminState, Readiness, bind_admin, serve_admin};
use prometheus::Registry;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);

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

    let livez = http_get(addr, "/livez").await.unwrap();
    assert_eq!((livez.status, livez.body.as_str()), (200, "ok\n"));

    let not_ready = http_get(addr, "/readyz").await.unwrap();
    assert_eq!(not_ready.status, 503);
    assert!(
        not_ready.body.contains("waiting for leadership"),
        "{}",
        not_ready.body
    );

    readiness.set_ready();
    metrics.set_leader(true);
    metrics.observe_reconcile("accesspolicy", Duration::from_millis(4), Ok(()));
    let ready = http_get(addr, "/readyz").await.unwrap();
    assert_eq!((ready.status, ready.body.as_str()), (200, "ok\n"));

    let scraped = http_get(addr, "/metrics").await.unwrap();
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
    assert_eq!(http_get(addr, "/readyz").await.unwrap().status, 503);
    assert_eq!(http_get(addr, "/metrics/extra").await.unwrap().status, 404);

    stop.cancel();
    tokio::time::timeout(WAIT, server).await.unwrap().unwrap();
    assert!(TcpStream::connect(addr).await.is_err());
}
