//! Leader election on a real Lease: of several replicas exactly one leads,
//! and leadership passes on when the leader releases it, stops renewing, or
//! is cut off from the apiserver.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use ferry_e2e::{Cluster, eventually};
use ferry_runtime::leader::{LeaderConfig, LeaderElector, LeaderGuard, default_identity};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const LEASE: &str = "ferry-operator";
const WAIT: Duration = Duration::from_secs(60);

/// Short timing so takeovers happen in seconds, not the default 15.
fn fast_config(ns: &str) -> LeaderConfig {
    LeaderConfig {
        lease_duration: Duration::from_secs(4),
        renew_deadline: Duration::from_secs(2),
        renew_interval: Duration::from_millis(500),
        retry_interval: Duration::from_millis(200),
        ..LeaderConfig::new(ns, LEASE, default_identity())
    }
}

fn elector(client: &Client, ns: &str) -> LeaderElector {
    LeaderElector::new(client.clone(), fast_config(ns)).unwrap()
}

/// Longer than any wait of these tests (each is bounded by [`WAIT`]): a
/// lease taken with it cannot expire while a test runs, so whatever
/// happens to it must have another cause.
const OUTLIVES_THE_TEST: Duration = Duration::from_secs(3600);

/// [`fast_config`], but with a lease that outlives the test.
fn long_lease_elector(client: &Client, ns: &str) -> LeaderElector {
    let config = LeaderConfig {
        lease_duration: OUTLIVES_THE_TEST,
        ..fast_config(ns)
    };
    LeaderElector::new(client.clone(), config).unwrap()
}

async fn lease_spec(client: &Client, ns: &str) -> LeaseSpec {
    Api::<Lease>::namespaced(client.clone(), ns)
        .get(LEASE)
        .await
        .unwrap()
        .spec
        .unwrap_or_default()
}

fn holder(spec: &LeaseSpec) -> Option<&str> {
    spec.holder_identity.as_deref()
}

fn micros(time: &Option<MicroTime>) -> i64 {
    time.as_ref().unwrap().0.as_microsecond()
}

/// Waits until the leader has renewed the lease `times` more times: proof
/// that time has passed in lease terms, without sleeping for it.
async fn wait_for_renewals(client: &Client, ns: &str, times: usize) {
    let mut seen = micros(&lease_spec(client, ns).await.renew_time);
    for _ in 0..times {
        seen = eventually("the leader to renew the lease", WAIT, || async {
            let renewed = micros(&lease_spec(client, ns).await.renew_time);
            (renewed > seen).then_some(renewed)
        })
        .await;
    }
}

fn candidate(elector: LeaderElector) -> JoinHandle<LeaderGuard> {
    tokio::spawn(async move { elector.run_until_leader().await.unwrap() })
}

#[tokio::test]
async fn of_several_candidates_for_a_new_lease_exactly_one_leads() {
    let cluster = Cluster::shared().await.unwrap();
    let ns = cluster.create_namespace("leader-race").await.unwrap();
    let client = cluster.client().unwrap();
    let electors: Vec<LeaderElector> = (0..4).map(|_| elector(&client, &ns)).collect();
    let mut candidates: Vec<JoinHandle<LeaderGuard>> =
        electors.iter().cloned().map(candidate).collect();

    let leader = eventually("one candidate to lead", WAIT, || {
        let done = candidates.iter().position(|c| c.is_finished());
        async move { done }
    })
    .await;
    let guard = candidates.remove(leader).await.unwrap();
    assert_eq!(
        holder(&lease_spec(&client, &ns).await),
        Some(guard.identity())
    );
    wait_for_renewals(&client, &ns, 3).await;

    assert!(guard.is_leading());
    assert!(
        candidates.iter().all(|c| !c.is_finished()),
        "a second candidate became leader while the first still held the lease"
    );
    assert_eq!(
        holder(&lease_spec(&client, &ns).await),
        Some(guard.identity())
    );
    for c in candidates {
        c.abort();
    }
}

#[tokio::test]
async fn released_leadership_passes_to_a_waiting_candidate() {
    let cluster = Cluster::shared().await.unwrap();
    let ns = cluster.create_namespace("leader-release").await.unwrap();
    let client = cluster.client().unwrap();
    // The first leader's lease outlives the test: a takeover can only
    // follow its release, never its expiry.
    let first = long_lease_elector(&client, &ns)
        .run_until_leader()
        .await
        .unwrap();
    let second = elector(&client, &ns);
    let second_id = second.identity().to_owned();
    let waiting = candidate(second);
    wait_for_renewals(&client, &ns, 1).await;
    assert!(!waiting.is_finished());
    let before = lease_spec(&client, &ns).await;
    assert_eq!(
        before.lease_duration_seconds,
        i32::try_from(OUTLIVES_THE_TEST.as_secs()).ok()
    );

    first.release().await.unwrap();
    let guard = tokio::time::timeout(WAIT, waiting).await.unwrap().unwrap();

    let after = lease_spec(&client, &ns).await;
    assert_eq!(guard.identity(), second_id);
    assert_eq!(holder(&after), Some(second_id.as_str()));
    assert_eq!(
        after.lease_transitions.unwrap(),
        before.lease_transitions.unwrap() + 1
    );
}

#[tokio::test]
async fn leader_that_stops_renewing_is_replaced_once_its_lease_expires() {
    let cluster = Cluster::shared().await.unwrap();
    let ns = cluster.create_namespace("leader-expire").await.unwrap();
    let client = cluster.client().unwrap();
    let first = elector(&client, &ns).run_until_leader().await.unwrap();
    let first_id = first.identity().to_owned();
    let second = elector(&client, &ns);
    let second_id = second.identity().to_owned();
    let waiting = candidate(second);
    wait_for_renewals(&client, &ns, 1).await;

    // Dropping without release is what a crashed or frozen replica does.
    drop(first);
    // A renewal already in flight may still land; that only makes the
    // expiry checked below earlier than the real one, never later.
    let last_renewal = lease_spec(&client, &ns).await;
    assert_eq!(holder(&last_renewal), Some(first_id.as_str()));
    let guard = tokio::time::timeout(WAIT, waiting).await.unwrap().unwrap();

    let after = lease_spec(&client, &ns).await;
    assert_eq!(holder(&after), Some(second_id.as_str()));
    assert!(guard.is_leading());
    let old_expiry = micros(&last_renewal.renew_time)
        + i64::from(last_renewal.lease_duration_seconds.unwrap()) * 1_000_000;
    assert!(
        micros(&after.acquire_time) > old_expiry,
        "took over at {:?}, before the old lease expired at {old_expiry}",
        after.acquire_time
    );
}

#[tokio::test]
async fn leader_reports_loss_when_another_holder_takes_the_lease() {
    let cluster = Cluster::shared().await.unwrap();
    let ns = cluster.create_namespace("leader-taken").await.unwrap();
    let client = cluster.client().unwrap();
    let guard = elector(&client, &ns).run_until_leader().await.unwrap();
    let lost = guard.lost();

    // An administrator (or a misbehaving replica) writes another holder in.
    let leases = Api::<Lease>::namespaced(client.clone(), &ns);
    let mut lease = leases.get(LEASE).await.unwrap();
    let spec = lease.spec.as_mut().unwrap();
    spec.holder_identity = Some("intruder".to_owned());
    spec.lease_duration_seconds = Some(3600);
    leases
        .replace(LEASE, &PostParams::default(), &lease)
        .await
        .unwrap();

    tokio::time::timeout(WAIT, lost).await.unwrap();
    assert!(!guard.is_leading());
    assert_eq!(holder(&lease_spec(&client, &ns).await), Some("intruder"));
}

/// A TCP forwarder to the apiserver that can be cut, to partition a client.
struct Partition {
    addr: std::net::SocketAddr,
    cut: CancellationToken,
}

impl Partition {
    async fn to(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = CancellationToken::new();
        let stop = cut.clone();
        tokio::spawn(async move {
            let mut links = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    accepted = listener.accept() => {
                        let Ok((mut inbound, _)) = accepted else { continue };
                        let upstream = upstream.clone();
                        links.spawn(async move {
                            let mut outbound = TcpStream::connect(upstream).await.unwrap();
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        });
                    }
                }
            }
            // Dropping the listener and every link refuses and resets all traffic.
            links.abort_all();
        });
        Self { addr, cut }
    }
}

#[tokio::test]
async fn leader_cut_off_from_the_apiserver_gives_up_before_its_lease_expires() {
    let cluster = Cluster::shared().await.unwrap();
    let ns = cluster.create_namespace("leader-partition").await.unwrap();
    let client = cluster.client().unwrap();
    let upstream = cluster.server().trim_start_matches("https://").to_owned();
    let partition = Partition::to(upstream).await;
    let mut config = cluster.config().clone();
    config.cluster_url = format!("https://{}", partition.addr).parse().unwrap();
    let partitioned = Client::try_from(config).unwrap();
    // Its lease outlives the test, so if it stops leading, it gave up on
    // its own (renew deadline missed), before the lease expired.
    let guard = long_lease_elector(&partitioned, &ns)
        .run_until_leader()
        .await
        .unwrap();
    let id = guard.identity().to_owned();
    wait_for_renewals(&client, &ns, 1).await;

    partition.cut.cancel();
    tokio::time::timeout(WAIT, guard.lost()).await.unwrap();

    assert!(!guard.is_leading());
    // The Lease still names it and is still in force: nobody took over,
    // and no replica may until it expires.
    let spec = lease_spec(&client, &ns).await;
    assert_eq!(holder(&spec), Some(id.as_str()));
    assert_eq!(
        spec.lease_duration_seconds,
        i32::try_from(OUTLIVES_THE_TEST.as_secs()).ok()
    );
    // Taking over once a lease expires is shown by
    // leader_that_stops_renewing_is_replaced_once_its_lease_expires.
}
