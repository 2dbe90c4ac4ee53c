//! ferry's HTTPS servers hold every client to bounds, against the real
//! apiserver: a body that trickles in is cut off with 408, one declared too
//! large with 413 before it is read, connections past an address's share
//! are closed at once, HTTP/2 is not offered; the broker refuses tokens
//! that cannot pass a review without one and rate-limits the reviews it
//! makes. Under a flood of slow bodies, idle connections and random tokens
//! from other loopback addresses, a labelled pod is still admitted within
//! seconds and the apiserver's TokenReview count stays bounded.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ferry_api::testing;
use ferry_broker::auth::ReviewLimits;
use ferry_broker::lease_id::{LeaseKeys, generate_lease_key};
use ferry_broker::routes::default_rate_limit;
use ferry_contract as contract;
use ferry_e2e::{
    BrokerLimits, Cluster, RunningBroker, RunningOperator, RunningWebhook, create_brokered_secret,
    eventually, grant, install_crds, pod_bound_token, wait_webhook_active,
};
use ferry_runtime::serving::ServingLimits;
use ferry_webhook::config::InjectionConfig;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, PostParams};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio::sync::OnceCell;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

const WAIT: Duration = Duration::from_secs(60);
const FERRY_NAMESPACE: &str = "ferry-system";

/// The webhook's limits here: small, so a test reaches them quickly.
const WEBHOOK_LIMITS: ServingLimits = ServingLimits {
    max_connections: 64,
    max_connections_per_address: 8,
    idle_timeout: Duration::from_secs(2),
    body_timeout: Duration::from_secs(2),
    max_body_bytes: ferry_webhook::server::MAX_BODY_BYTES,
};

struct Servers {
    _operator: RunningOperator,
    webhook: RunningWebhook,
    broker: RunningBroker,
    ca_pem: String,
}

async fn servers() -> &'static Servers {
    static RUNNING: OnceCell<Servers> = OnceCell::const_new();
    RUNNING
        .get_or_init(|| async {
            let cluster = Cluster::shared().await.unwrap();
            let client = cluster.client().unwrap();
            install_crds(&client).await.unwrap();
            let operator = RunningOperator::start(cluster.config().clone()).unwrap();
            let key = generate_lease_key().unwrap();
            let broker = RunningBroker::start_limited(
                cluster,
                cluster.config().clone(),
                LeaseKeys::new(&key, &[]),
                default_rate_limit(),
                BrokerLimits::default(),
            )
            .unwrap();
            let webhook = RunningWebhook::start_limited(
                cluster,
                cluster.config().clone(),
                InjectionConfig {
                    ferry_namespace: FERRY_NAMESPACE.into(),
                    sidecar_image: "ferry-sidecar:e2e".into(),
                    broker_url: broker.url(),
                    ..InjectionConfig::default()
                },
                WEBHOOK_LIMITS,
            )
            .unwrap();
            webhook.register(&client, FERRY_NAMESPACE).await.unwrap();
            Servers {
                _operator: operator,
                webhook,
                broker,
                ca_pem: cluster.authority().cert_pem(),
            }
        })
        .await
}

fn tls_connector(ca_pem: &str, alpn: &[&[u8]]) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(config))
}

/// A TLS connection to `server` from the loopback address `source`.
async fn connect_from(
    source: IpAddr,
    server: SocketAddr,
    tls: &TlsConnector,
) -> std::io::Result<TlsStream<tokio::net::TcpStream>> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let tcp = socket.connect(server).await?;
    tls.connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
}

fn loopback(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

/// Reads until the server answers or closes, for at most `WAIT`: the
/// status line's code, or `None` if it closed without answering.
async fn status_or_close(stream: &mut (impl AsyncRead + Unpin)) -> Option<u16> {
    let mut read = Vec::new();
    let mut buffer = [0_u8; 4096];
    let outcome = tokio::time::timeout(WAIT, async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    read.extend_from_slice(&buffer[..n]);
                    if read.windows(4).any(|w| w == b"\r\n\r\n") {
                        return;
                    }
                }
            }
        }
    })
    .await;
    assert!(outcome.is_ok(), "the server neither answered nor closed");
    let text = String::from_utf8_lossy(&read);
    text.split(' ').nth(1).and_then(|code| code.parse().ok())
}

/// A request's head for `path` declaring a body of `length` bytes.
fn post_head(path: &str, length: usize, extra: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {length}\r\n{extra}\r\n"
    )
}

/// An AdmissionReview of a large, realistic pod: 10 containers with 70 env
/// vars each, 20 volumes, long labels and annotations, a
/// `last-applied-configuration` copy of itself and managedFields.
fn large_pod_review() -> Vec<u8> {
    let container = |i: usize| {
        json!({
            "name": format!("app-{i}"),
            "image": format!("registry.example.com/team/service-{i}@sha256:{}", "a".repeat(64)),
            "args": (0..20).map(|j| format!("--flag-{j}=value-{j}-{}", "x".repeat(20))).collect::<Vec<_>>(),
            "env": (0..60).map(|j| json!({"name": format!("ENV_VAR_NUMBER_{j}"),
                                          "value": format!("some-configuration-value-{}", "y".repeat(40))}))
                .chain((0..10).map(|j| json!({"name": format!("SECRET_{j}"),
                    "valueFrom": {"secretKeyRef": {"name": format!("secret-{j}"), "key": "key"}}})))
                .collect::<Vec<_>>(),
            "resources": {"requests": {"cpu": "500m", "memory": "512Mi"},
                          "limits": {"cpu": "2", "memory": "2Gi"}},
            "volumeMounts": (0..20).map(|j| json!({"name": format!("vol-{j}"),
                "mountPath": format!("/etc/config/vol-{j}"), "readOnly": true})).collect::<Vec<_>>(),
            "readinessProbe": {"httpGet": {"path": "/ready", "port": 8000}, "periodSeconds": 5},
        })
    };
    let spec = json!({
        "containers": (0..8).map(container).collect::<Vec<_>>(),
        "initContainers": (100..102).map(container).collect::<Vec<_>>(),
        "volumes": (0..20).map(|j| json!({"name": format!("vol-{j}"),
            "configMap": {"name": format!("config-{j}")}})).collect::<Vec<_>>(),
    });
    let mut annotations: serde_json::Map<String, Value> = (0..20)
        .map(|j| {
            (
                format!("annotation-{j}.example.com/key"),
                json!("v".repeat(200)),
            )
        })
        .collect();
    annotations.insert(
        "kubectl.kubernetes.io/last-applied-configuration".into(),
        json!(json!({"apiVersion": "v1", "kind": "Pod", "spec": spec}).to_string()),
    );
    let managed: serde_json::Map<String, Value> = (0..8)
        .map(|i| {
            let env: serde_json::Map<String, Value> = (0..60)
                .map(|j| {
                    (
                        format!("k:{{\"name\":\"ENV_VAR_NUMBER_{j}\"}}"),
                        json!({".": {}, "f:name": {}, "f:value": {}}),
                    )
                })
                .collect();
            (
                format!("k:{{\"name\":\"app-{i}\"}}"),
                json!({".": {}, "f:env": env}),
            )
        })
        .collect();
    let review = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "large-pod", "operation": "CREATE",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "payments",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {
                    "name": "large", "namespace": "payments",
                    "labels": (0..20).map(|j| (format!("label-{j}.example.com/key"), json!("v".repeat(30))))
                        .collect::<serde_json::Map<_, _>>(),
                    "annotations": annotations,
                    "managedFields": [{"manager": "kubectl", "operation": "Update", "apiVersion": "v1",
                        "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:containers": managed}}}],
                },
                "spec": spec,
            },
        },
    });
    serde_json::to_vec(&review).unwrap()
}

#[tokio::test]
async fn the_webhook_cuts_off_slow_and_oversized_bodies_and_speaks_http1_only() {
    let servers = servers().await;
    let addr = servers.webhook.addr();
    let tls = tls_connector(&servers.ca_pem, &[b"http/1.1"]);

    // A body that trickles in is cut off at the body deadline with 408.
    let slow = connect_from(loopback(10), addr, &tls).await.unwrap();
    let (mut reader, mut writer) = tokio::io::split(slow);
    writer
        .write_all(post_head("/mutate", 1000, "").as_bytes())
        .await
        .unwrap();
    writer.write_all(b"{").await.unwrap();
    let started = Instant::now();
    let trickle = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if writer.write_all(b" ").await.is_err() {
                return;
            }
        }
    });
    let code = status_or_close(&mut reader).await;
    trickle.abort();
    println!(
        "slow body: cut off after {:?} with {code:?}",
        started.elapsed()
    );
    assert_eq!(code, Some(408));

    // A body declared larger than the limit is refused before it is read.
    let mut large = connect_from(loopback(10), addr, &tls).await.unwrap();
    let declared = usize::try_from(WEBHOOK_LIMITS.max_body_bytes).unwrap() + 1;
    large
        .write_all(post_head("/mutate", declared, "").as_bytes())
        .await
        .unwrap();
    assert_eq!(status_or_close(&mut large).await, Some(413));

    // The review of a large pod is well inside the limit.
    let review = large_pod_review();
    println!(
        "a large pod's AdmissionReview: {} bytes (limit {})",
        review.len(),
        WEBHOOK_LIMITS.max_body_bytes
    );
    assert!(review.len() * 3 < declared, "{}", review.len());
    let mut fits = connect_from(loopback(10), addr, &tls).await.unwrap();
    fits.write_all(post_head("/mutate", review.len(), "Connection: close\r\n").as_bytes())
        .await
        .unwrap();
    fits.write_all(&review).await.unwrap();
    assert_eq!(status_or_close(&mut fits).await, Some(200));

    // An idle connection is closed at the idle deadline.
    let mut idle = connect_from(loopback(10), addr, &tls).await.unwrap();
    assert_eq!(status_or_close(&mut idle).await, None);

    // HTTP/2 is not offered: a client that speaks only h2 is refused, one
    // that offers both gets HTTP/1.1.
    let h2_only = tls_connector(&servers.ca_pem, &[b"h2"]);
    assert!(connect_from(loopback(10), addr, &h2_only).await.is_err());
    let both = tls_connector(&servers.ca_pem, &[b"h2", b"http/1.1"]);
    let negotiated = connect_from(loopback(10), addr, &both).await.unwrap();
    assert_eq!(
        negotiated.get_ref().1.alpn_protocol(),
        Some(&b"http/1.1"[..])
    );
}

#[tokio::test]
async fn connections_past_an_addresss_share_are_closed_while_other_addresses_are_served() {
    let servers = servers().await;
    let addr = servers.webhook.addr();
    let tls = tls_connector(&servers.ca_pem, &[b"http/1.1"]);
    let share = WEBHOOK_LIMITS.max_connections_per_address;
    let mut held = Vec::new();
    for _ in 0..share {
        held.push(connect_from(loopback(11), addr, &tls).await.unwrap());
    }
    // The address's share is taken: the next connection is closed before
    // its handshake, while another address is still served.
    assert!(connect_from(loopback(11), addr, &tls).await.is_err());
    let mut other = connect_from(loopback(12), addr, &tls).await.unwrap();
    other
        .write_all(post_head("/mutate", 2, "Connection: close\r\n").as_bytes())
        .await
        .unwrap();
    other.write_all(b"{}").await.unwrap();
    assert_eq!(status_or_close(&mut other).await, Some(400));
    // Once the held connections go, the address gets its share back.
    drop(held);
    let reconnected = eventually("the address's share to come back", WAIT, || async {
        connect_from(loopback(11), addr, &tls).await.ok()
    })
    .await;
    drop(reconnected);
}

/// Grants service account `checkout` (created here) the BrokeredSecret
/// `orders-db` in `ns`, and waits for the Grant.
async fn grant_orders_db_to_checkout(client: &Client, ns: &str) {
    let secret = testing::brokered_secret(ns, "orders-db")
        .ttl("15m")
        .max_ttl("1h")
        .postgres("db-admin", "dsn");
    create_brokered_secret(client, &secret.build())
        .await
        .unwrap();
    let policy = testing::access_policy(ns, "checkout-orders")
        .service_account(ns, "checkout")
        .secret("orders-db");
    grant(client, policy.build()).await.unwrap();
}

/// Creates a labelled pod `name` granted `orders-db`, retrying while the
/// webhook has not seen the Grant yet; returns it (injected) and how long
/// the create that succeeded took.
async fn admit(client: &Client, ns: &str, name: &str) -> (Pod, Duration) {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name,
                     "labels": {contract::INJECT_LABEL: "true"},
                     "annotations": {contract::SECRETS_ANNOTATION: "orders-db"}},
        "spec": {"serviceAccountName": "checkout",
                 "containers": [{"name": "app", "image": "registry.example/app:1"}]},
    }))
    .unwrap();
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    let (created, took) = eventually("the webhook to admit the pod", WAIT, || async {
        let started = Instant::now();
        match pods.create(&PostParams::default(), &pod).await {
            Ok(created) => Some((created, started.elapsed())),
            Err(kube::Error::Api(status)) if status.message.contains("has no Grant") => None,
            Err(error) => panic!("creating pod {name}: {error}"),
        }
    })
    .await;
    let injected = created
        .spec
        .as_ref()
        .and_then(|spec| spec.init_containers.as_ref())
        .is_some_and(|init| {
            init.iter()
                .any(|c| c.name == contract::SIDECAR_CONTAINER_NAME)
        });
    assert!(injected, "pod {name} was admitted without the sidecar");
    (created, took)
}

/// The TokenReviews the apiserver has served, from its own metrics.
async fn token_reviews(client: &Client) -> u64 {
    let request = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = client.request_text(request).await.unwrap();
    text.lines()
        .filter(|line| {
            line.starts_with("apiserver_request_total{")
                && line.contains("resource=\"tokenreviews\"")
        })
        .filter_map(|line| line.rsplit(' ').next())
        .filter_map(|value| value.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// A JWT that passes the broker's shape check but no review: claims for
/// the broker's audience, expiring in ten minutes, and a made-up signature.
fn forged_jwt(n: u64) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let part = |value: Value| URL_SAFE_NO_PAD.encode(value.to_string());
    format!(
        "{}.{}.{}",
        part(json!({"alg": "RS256", "kid": "forged"})),
        part(
            json!({"aud": [contract::DEFAULT_BROKER_AUDIENCE], "exp": exp,
                    "sub": format!("system:serviceaccount:evil:sa-{n}")})
        ),
        URL_SAFE_NO_PAD.encode(format!("signature-{n}"))
    )
}

/// A connection that sends nothing (`idle`) or a body one byte at a time,
/// from `source`, again and again until `stop`; counts connections closed
/// before their handshake in `refused`.
async fn hog(
    source: IpAddr,
    server: SocketAddr,
    tls: TlsConnector,
    idle: bool,
    stop: Arc<AtomicBool>,
    refused: Arc<AtomicU64>,
) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(stream) = connect_from(source, server, &tls).await else {
            refused.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(250)).await;
            continue;
        };
        let (mut reader, mut writer) = tokio::io::split(stream);
        if !idle {
            let head = post_head("/mutate", 100_000, "");
            if writer.write_all(head.as_bytes()).await.is_err() {
                continue;
            }
            tokio::spawn(async move {
                while writer.write_all(b" ").await.is_ok() {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            });
        }
        let mut buffer = [0_u8; 1024];
        while matches!(reader.read(&mut buffer).await, Ok(n) if n > 0) {}
    }
}

#[tokio::test]
async fn a_flood_of_slow_bodies_idle_connections_and_random_tokens_leaves_a_labelled_pod_admitted()
{
    let servers = servers().await;
    let cluster = Cluster::shared().await.unwrap();
    let client = cluster.client().unwrap();
    let ns = cluster.create_namespace("bounded").await.unwrap();
    wait_webhook_active(&client, &ns).await.unwrap();
    grant_orders_db_to_checkout(&client, &ns).await;
    let (_, quiet) = admit(&client, &ns, "before-the-flood").await;

    // The flood: from six addresses, twice each address's share of
    // connections, half idle and half trickling bodies, reconnecting as
    // soon as they are cut off.
    let stop = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicU64::new(0));
    let tls = tls_connector(&servers.ca_pem, &[b"http/1.1"]);
    let mut flood = tokio::task::JoinSet::new();
    for address in 20..26 {
        for n in 0..2 * WEBHOOK_LIMITS.max_connections_per_address {
            flood.spawn(hog(
                loopback(address),
                servers.webhook.addr(),
                tls.clone(),
                n % 2 == 0,
                Arc::clone(&stop),
                Arc::clone(&refused),
            ));
        }
    }
    eventually("every flooding address to hit its share", WAIT, || async {
        (refused.load(Ordering::Relaxed) >= 6).then_some(())
    })
    .await;

    // Random tokens at the broker from one address: garbage, and JWTs that
    // look right but that no review would accept.
    let reviews_before = token_reviews(&client).await;
    let flood_started = Instant::now();
    let broker_addr: SocketAddr = servers.broker.url()["https://".len()..].parse().unwrap();
    let mut senders = tokio::task::JoinSet::new();
    for worker in 0..4_u64 {
        let tls = tls.clone();
        senders.spawn(async move {
            let stream = connect_from(loopback(30), broker_addr, &tls).await.unwrap();
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(connection);
            let mut statuses = Vec::new();
            for n in 0..150 {
                let token = if n % 2 == 0 {
                    format!("random-garbage-{worker}-{n}")
                } else {
                    forged_jwt(worker * 1000 + n)
                };
                let reply = ferry_e2e::https_client::send(
                    &mut sender,
                    "POST",
                    "/v1/leases",
                    Some(&token),
                    bytes::Bytes::from_static(br#"{"secrets":[]}"#),
                )
                .await
                .unwrap();
                statuses.push(reply.status);
            }
            statuses
        });
    }
    let statuses: Vec<u16> = senders.join_all().await.into_iter().flatten().collect();
    let flood_took = flood_started.elapsed();

    // With the webhook flooded, a labelled pod is still admitted.
    let (pod, flooded) = admit(&client, &ns, "during-the-flood").await;

    // The pod's own token still gets through the broker's limits from its
    // own address while 127.0.0.30 is throttled.
    let token = pod_bound_token(&client, &pod, contract::DEFAULT_BROKER_AUDIENCE, 600)
        .await
        .unwrap();
    let broker = servers.broker.client().unwrap();
    let body = json!({"secrets": [{"namespace": ns, "name": "orders-db"}]}).to_string();
    let legit = eventually("the pod's token to be reviewed", WAIT, || async {
        let reply = broker
            .request("POST", "/v1/leases", Some(&token), body.as_bytes())
            .await
            .unwrap();
        // 401 until the broker's pod index has the new pod.
        (reply.status != 401).then_some(reply)
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    flood.abort_all();
    let reviews_after = token_reviews(&client).await;

    let unauthenticated = statuses.iter().filter(|s| **s == 401).count();
    let throttled = statuses.iter().filter(|s| **s == 429).count();
    let reviews = reviews_after - reviews_before;
    let limits = ReviewLimits::default();
    let burst = u64::from(limits.per_address.burst_size().get());
    let per_second = 10_u64;
    let allowed = burst + per_second * (flood_took.as_secs() + 1) + 2;
    println!(
        "admission: {quiet:?} before the flood, {flooded:?} during it; \
         {} refused connections; broker: {} random tokens in {flood_took:?}, \
         {unauthenticated} answered 401, {throttled} answered 429, \
         {reviews} TokenReviews made (bound {allowed}); the pod's own token: {}",
        refused.load(Ordering::Relaxed),
        statuses.len(),
        legit.status
    );
    assert!(
        flooded < Duration::from_secs(10),
        "admission took {flooded:?}"
    );
    assert_ne!(legit.status, 429, "{:?}", legit.json());
    assert_eq!(statuses.len(), 600);
    assert_eq!(unauthenticated + throttled, 600, "{statuses:?}");
    assert!(
        reviews <= allowed,
        "{reviews} TokenReviews for 600 random tokens"
    );
    let metrics = servers.broker.metrics_text();
    let skipped = metrics
        .lines()
        .find(|line| line.starts_with("ferry_broker_token_reviews_total{cache=\"skipped\"}"))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(skipped >= 300, "{metrics}");
}
