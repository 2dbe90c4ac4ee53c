//! Takes access away as soon as it ends: when a Revocation comes, a Grant
//! goes, or a policy changes, the sweeper tells the sidecars watching for
//! revocation (they wipe their files at once) and revokes every live lease
//! in the book that may no longer be held. A tick catches what ends by the
//! clock alone (a Grant's validUntil).

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use tokio_util::sync::CancellationToken;

use crate::service::Broker;

/// How often the book is looked at when nothing changed.
const TICK: Duration = Duration::from_secs(1);

/// Lets a burst of changes (a policy's Grants replaced one by one, a
/// relist) arrive before acting on them, so watchers wake once.
const SETTLE: Duration = Duration::from_millis(50);

/// Sweeps after every change and every [`TICK`] until `shutdown`.
pub async fn sweep_until(broker: &Broker, shutdown: &CancellationToken) {
    let mut grants = broker.grants.changes();
    let mut orders = broker.revocation_orders.changes();
    loop {
        let changed = tokio::select! {
            () = shutdown.cancelled() => return,
            Ok(()) = grants.changed() => true,
            Ok(()) = orders.changed() => true,
            () = tokio::time::sleep(TICK) => false,
        };
        if changed {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(SETTLE) => {}
            }
            grants.mark_unchanged();
            orders.mark_unchanged();
            // Watchers first: wiping a pod's files needs no backend.
            broker.announce_access_change();
        }
        let revoked = broker.sweep(Timestamp::now()).await;
        if revoked > 0 && !changed {
            broker.announce_access_change();
        }
    }
}
