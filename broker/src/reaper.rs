//! The reaper: drops revocable credentials (PostgreSQL roles) that
//! expired, whose pod is gone, or whose access was withdrawn (those no
//! replica has in its book, such as after a restart), on a schedule and
//! soon after pods leave or access changes.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use tokio_util::sync::CancellationToken;

use crate::pods::PodIndex;
use crate::routes::BrokerState;

/// Reaps now, then every `interval` and soon after pods go away, until
/// `shutdown`. Every replica reaps; dropping a credential twice is harmless.
pub async fn reap_until(
    state: &BrokerState,
    pods: &PodIndex,
    interval: Duration,
    unknown_pod_grace: Duration,
    shutdown: &CancellationToken,
) {
    /// Lets a burst of deletions (a scaled-down Deployment) end first.
    const SETTLE: Duration = Duration::from_secs(1);
    let mut departures = pods.departures();
    departures.mark_unchanged();
    let mut access = state.broker.access_changed.subscribe();
    access.mark_unchanged();
    loop {
        let reaped = state
            .broker
            .reap(pods, unknown_pod_grace, Timestamp::now())
            .await;
        if reaped.expired + reaped.pod_gone + reaped.withdrawn + reaped.failed > 0 {
            tracing::info!(
                found = reaped.found,
                expired = reaped.expired,
                pod_gone = reaped.pod_gone,
                withdrawn = reaped.withdrawn,
                failed = reaped.failed,
                "reaper pass"
            );
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
            Ok(()) = departures.changed() => {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(SETTLE) => {}
                }
                departures.mark_unchanged();
            }
            Ok(()) = access.changed() => {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(SETTLE) => {}
                }
                access.mark_unchanged();
            }
        }
    }
}
