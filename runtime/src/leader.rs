//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several
//! operator replicas exactly one reconciles at a time.
//!
//! Written here rather than taken from `kube-lease-manager` (the one such
//! crate built on kube 5): that crate keeps reporting leadership while it
//! cannot reach the apiserver, so a partitioned replica would go on
//! reconciling after another had taken over, and it clears an expired lease
//! without a `resourceVersion` precondition.
//!
//! What keeps two replicas from leading at once:
//! - every write is conditional: a create (409 when another candidate created
//!   the lease first) or a replace carrying the `resourceVersion` just read
//!   (409 when anyone wrote in between), so of two candidates in one round at
//!   most one wins;
//! - a candidate takes the lease only when it has no holder, is already its
//!   own, or has expired (`renewTime + leaseDurationSeconds` is past);
//! - the leader counts itself lost once [`LeaderConfig::renew_deadline`],
//!   which is shorter than the lease duration, has passed since the start of
//!   its last successful renewal, whether or not the apiserver answers; so it
//!   stops before another replica may start, given node clocks that agree to
//!   within `lease_duration - renew_deadline`.

use std::future::Future;
use std::hash::BuildHasher;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Why leader election failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// The timing or names given cannot work.
    #[error("leader election on Lease {lease}: {problem}")]
    Config {
        /// `namespace/name` of the Lease.
        lease: String,
        /// What is wrong with the configuration.
        problem: String,
    },
    /// Reading the Lease failed.
    #[error("leader election on Lease {lease}: cannot read it: {source}")]
    Read {
        /// `namespace/name` of the Lease.
        lease: String,
        /// The underlying error.
        source: kube::Error,
    },
    /// Creating, renewing or releasing the Lease failed.
    #[error("leader election on Lease {lease}: cannot write it as {identity}: {source}")]
    Write {
        /// `namespace/name` of the Lease.
        lease: String,
        /// This candidate's identity.
        identity: String,
        /// The underlying error.
        source: kube::Error,
    },
}

impl LeaderError {
    /// Whether retrying cannot help (bad configuration, missing RBAC, a
    /// missing namespace) as opposed to a passing apiserver or network fault.
    pub fn is_permanent(&self) -> bool {
        let source = match self {
            Self::Config { .. } => return true,
            Self::Read { source, .. } | Self::Write { source, .. } => source,
        };
        match source {
            kube::Error::Api(status) => {
                (400..500).contains(&status.code) && ![408, 409, 429].contains(&status.code)
            }
            _ => false,
        }
    }
}

/// Which Lease to contend for, as whom, and how often.
#[derive(Clone, Debug)]
pub struct LeaderConfig {
    /// Namespace of the Lease (the operator's own).
    pub namespace: String,
    /// Name of the Lease.
    pub lease_name: String,
    /// This candidate's identity, written as `holderIdentity`; unique per replica.
    pub identity: String,
    /// How long a lease stays valid after its last renewal (`leaseDurationSeconds`, whole seconds).
    pub lease_duration: Duration,
    /// How long the leader keeps leading without a successful renewal; shorter than `lease_duration`.
    pub renew_deadline: Duration,
    /// How often the leader renews; shorter than `renew_deadline`.
    pub renew_interval: Duration,
    /// How often a candidate retries a held lease, and the leader a failed renewal.
    pub retry_interval: Duration,
}

impl LeaderConfig {
    /// A configuration with the usual timing: a 15 s lease renewed every 5 s,
    /// given up 10 s after the last successful renewal, retried every 2 s.
    pub fn new(
        namespace: impl Into<String>,
        lease_name: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        Self {
            namespace: namespace.into(),
            lease_name: lease_name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            renew_interval: Duration::from_secs(5),
            retry_interval: Duration::from_secs(2),
        }
    }

    /// `namespace/name` of the Lease, for messages.
    pub fn lease_ref(&self) -> String {
        format!("{}/{}", self.namespace, self.lease_name)
    }

    fn lease_duration_seconds(&self) -> Result<i32, LeaderError> {
        let seconds =
            self.lease_duration.as_secs() + u64::from(self.lease_duration.subsec_nanos() > 0);
        i32::try_from(seconds).map_err(|_| self.problem("lease duration is too long"))
    }

    fn validate(&self) -> Result<(), LeaderError> {
        if self.namespace.is_empty() || self.lease_name.is_empty() {
            return Err(self.problem("namespace and lease name must not be empty"));
        }
        if self.identity.is_empty() {
            return Err(self.problem("identity must not be empty"));
        }
        if self.lease_duration < Duration::from_secs(1) {
            return Err(self.problem("lease duration must be at least 1s"));
        }
        self.lease_duration_seconds()?;
        if self.renew_deadline >= self.lease_duration {
            return Err(self.problem("renew deadline must be shorter than the lease duration"));
        }
        if self.renew_interval.is_zero() || self.renew_interval >= self.renew_deadline {
            return Err(
                self.problem("renew interval must be non-zero and shorter than the renew deadline")
            );
        }
        if self.retry_interval.is_zero() {
            return Err(self.problem("retry interval must be non-zero"));
        }
        Ok(())
    }

    fn problem(&self, problem: &str) -> LeaderError {
        LeaderError::Config {
            lease: self.lease_ref(),
            problem: problem.to_owned(),
        }
    }
}

/// A replica's identity: `$POD_NAME` (or the hostname) and a random suffix,
/// so that a restarted pod with the same name is a new candidate.
pub fn default_identity() -> String {
    let base = ["POD_NAME", "HOSTNAME"]
        .into_iter()
        .filter_map(|key| std::env::var(key).ok())
        .chain(std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|name| name.trim().to_owned())
        .find(|name| !name.is_empty())
        .unwrap_or_else(|| "ferry-operator".to_owned());
    // RandomState is seeded from the OS per instance: enough for uniqueness.
    let random = std::collections::hash_map::RandomState::new()
        .hash_one((std::process::id(), SystemTime::now()));
    format!("{base}-{:08x}", random & 0xffff_ffff)
}

/// What a candidate may do with a Lease as last read.
#[derive(Debug, PartialEq, Eq)]
enum Claim {
    /// Free, already ours, or expired: write ourselves in.
    Take,
    /// Another candidate holds it and its lease is current.
    HeldBy(String),
}

fn claim(spec: Option<&LeaseSpec>, identity: &str, now: Timestamp) -> Claim {
    let Some(spec) = spec else {
        return Claim::Take;
    };
    let holder = match spec.holder_identity.as_deref() {
        None | Some("") => return Claim::Take,
        Some(holder) if holder == identity => return Claim::Take,
        Some(holder) => holder,
    };
    // A holder without a renewal time or duration has no valid lease.
    let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref());
    let expires = renewed
        .zip(spec.lease_duration_seconds)
        .map(|(at, seconds)| {
            at.0.as_microsecond()
                .saturating_add(i64::from(seconds).saturating_mul(1_000_000))
        });
    match expires {
        Some(expires) if expires >= now.as_microsecond() => Claim::HeldBy(holder.to_owned()),
        _ => Claim::Take,
    }
}

/// The Lease spec once `identity` has taken or renewed it at `now`.
fn claimed_spec(
    previous: Option<&LeaseSpec>,
    identity: &str,
    now: Timestamp,
    lease_duration_seconds: i32,
) -> LeaseSpec {
    let mut spec = previous.cloned().unwrap_or_default();
    let renewing = spec.holder_identity.as_deref() == Some(identity);
    if !renewing {
        spec.acquire_time = Some(MicroTime(now));
        if previous.is_some() {
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
        }
    }
    spec.lease_transitions.get_or_insert(0);
    spec.holder_identity = Some(identity.to_owned());
    spec.renew_time = Some(MicroTime(now));
    spec.lease_duration_seconds = Some(lease_duration_seconds);
    spec
}

/// The Lease spec with no holder, so another candidate may take it at once.
fn released_spec(previous: &LeaseSpec) -> LeaseSpec {
    LeaseSpec {
        holder_identity: None,
        acquire_time: None,
        renew_time: None,
        ..previous.clone()
    }
}

fn wall_clock_now() -> Timestamp {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let seconds = i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX);
    let nanos = i32::try_from(since_epoch.subsec_nanos()).unwrap_or(0);
    Timestamp::new(seconds, nanos).unwrap_or(Timestamp::MAX)
}

fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409)
}

/// How one attempt to take or renew the lease went.
#[derive(Debug)]
enum Attempt {
    /// We hold the lease; the renewal started at this instant.
    Won(Instant),
    /// Another candidate holds a current lease.
    HeldBy(String),
    /// The lease is gone (while renewing only).
    Missing,
    /// Someone wrote the lease between our read and our write.
    Raced,
}

/// Contends for one Lease on behalf of one replica.
#[derive(Clone)]
pub struct LeaderElector {
    leases: Api<Lease>,
    config: LeaderConfig,
}

impl std::fmt::Debug for LeaderElector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderElector")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl LeaderElector {
    /// An elector for `config`'s Lease; fails if the timing cannot work.
    pub fn new(client: Client, config: LeaderConfig) -> Result<Self, LeaderError> {
        config.validate()?;
        Ok(Self {
            leases: Api::namespaced(client, &config.namespace),
            config,
        })
    }

    /// This candidate's identity.
    pub fn identity(&self) -> &str {
        &self.config.identity
    }

    /// The configuration this elector runs with.
    pub fn config(&self) -> &LeaderConfig {
        &self.config
    }

    /// Waits until this replica holds the Lease, then keeps renewing it in
    /// the background until the returned guard is released or dropped.
    /// Retries passing apiserver faults; returns only permanent errors.
    pub async fn run_until_leader(&self) -> Result<LeaderGuard, LeaderError> {
        let mut last_holder = None;
        loop {
            match self.attempt(false).await {
                Ok(Attempt::Won(started)) => {
                    tracing::info!(
                        lease = %self.config.lease_ref(),
                        identity = %self.config.identity,
                        "acquired leadership"
                    );
                    return Ok(self.spawn_renewer(started));
                }
                Ok(Attempt::HeldBy(holder)) => {
                    if last_holder.as_ref() != Some(&holder) {
                        tracing::info!(
                            lease = %self.config.lease_ref(),
                            %holder,
                            "another replica leads; waiting"
                        );
                        last_holder = Some(holder);
                    }
                }
                Ok(Attempt::Missing | Attempt::Raced) => {}
                Err(error) if error.is_permanent() => return Err(error),
                Err(error) => tracing::warn!(%error, "leader election attempt failed; retrying"),
            }
            tokio::time::sleep(self.config.retry_interval).await;
        }
    }

    /// The Lease as it is now, if it exists.
    async fn read_lease(&self) -> Result<Option<Lease>, LeaderError> {
        self.leases
            .get_opt(&self.config.lease_name)
            .await
            .map_err(|source| LeaderError::Read {
                lease: self.config.lease_ref(),
                source,
            })
    }

    /// One attempt to take (or, when `renewing`, keep) the lease.
    async fn attempt(&self, renewing: bool) -> Result<Attempt, LeaderError> {
        let config = &self.config;
        let current = self.read_lease().await?;
        let seconds = config.lease_duration_seconds()?;
        let started = Instant::now();
        let now = wall_clock_now();
        let written = match current {
            None if renewing => return Ok(Attempt::Missing),
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(config.lease_name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(claimed_spec(None, &config.identity, now, seconds)),
                };
                self.leases.create(&PostParams::default(), &lease).await
            }
            Some(mut lease) => {
                let holder = lease.spec.as_ref().and_then(|s| s.holder_identity.clone());
                if renewing && holder.as_deref() != Some(config.identity.as_str()) {
                    return Ok(Attempt::HeldBy(holder.unwrap_or_default()));
                }
                if let Claim::HeldBy(holder) = claim(lease.spec.as_ref(), &config.identity, now) {
                    return Ok(Attempt::HeldBy(holder));
                }
                // `lease.metadata.resourceVersion` makes the replace conditional.
                lease.spec = Some(claimed_spec(
                    lease.spec.as_ref(),
                    &config.identity,
                    now,
                    seconds,
                ));
                self.leases
                    .replace(&config.lease_name, &PostParams::default(), &lease)
                    .await
            }
        };
        match written {
            Ok(_) => Ok(Attempt::Won(started)),
            Err(error) if is_conflict(&error) => Ok(Attempt::Raced),
            Err(source) => Err(self.write_error(source)),
        }
    }

    /// Clears the holder if it is still us, so another replica takes over now.
    async fn release(&self) -> Result<(), LeaderError> {
        let config = &self.config;
        let Some(mut lease) = self.read_lease().await? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_ref() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
            return Ok(());
        }
        lease.spec = Some(released_spec(spec));
        match self
            .leases
            .replace(&config.lease_name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                tracing::info!(
                    lease = %config.lease_ref(),
                    identity = %config.identity,
                    "released leadership"
                );
                Ok(())
            }
            // Someone wrote it since we read it: it is no longer ours to clear.
            Err(error) if is_conflict(&error) => Ok(()),
            Err(source) => Err(self.write_error(source)),
        }
    }

    fn write_error(&self, source: kube::Error) -> LeaderError {
        LeaderError::Write {
            lease: self.config.lease_ref(),
            identity: self.config.identity.clone(),
            source,
        }
    }

    fn spawn_renewer(&self, acquired: Instant) -> LeaderGuard {
        let (leading, watch) = watch::channel(true);
        let stop = CancellationToken::new();
        let renewer = tokio::spawn(self.clone().keep_leading(acquired, leading, stop.clone()));
        LeaderGuard {
            elector: self.clone(),
            leading: watch,
            stop,
            renewer: Some(renewer),
        }
    }

    /// Renews every `renew_interval` until `stop`; reports loss through
    /// `leading` when the lease is taken or `renew_deadline` passes without
    /// a successful renewal.
    async fn keep_leading(
        self,
        acquired: Instant,
        leading: watch::Sender<bool>,
        stop: CancellationToken,
    ) {
        let config = &self.config;
        let mut last_renewed = acquired;
        'leading: loop {
            tokio::select! {
                () = stop.cancelled() => break 'leading,
                () = tokio::time::sleep_until(last_renewed + config.renew_interval) => {}
            }
            let deadline = last_renewed + config.renew_deadline;
            loop {
                let attempt = tokio::time::timeout_at(deadline, self.attempt(true));
                let outcome = tokio::select! {
                    () = stop.cancelled() => break 'leading,
                    outcome = attempt => outcome,
                };
                match outcome {
                    Ok(Ok(Attempt::Won(started))) => {
                        last_renewed = started;
                        continue 'leading;
                    }
                    Ok(Ok(Attempt::HeldBy(holder))) => {
                        tracing::warn!(lease = %config.lease_ref(), %holder, "lost leadership to another replica");
                        break 'leading;
                    }
                    Ok(Ok(Attempt::Missing)) => {
                        tracing::warn!(lease = %config.lease_ref(), "lost leadership: the lease was deleted");
                        break 'leading;
                    }
                    Ok(Ok(Attempt::Raced)) => {}
                    Ok(Err(error)) => {
                        tracing::warn!(%error, "renewing leadership failed; retrying")
                    }
                    Err(_elapsed) => {}
                }
                if Instant::now() >= deadline {
                    tracing::warn!(
                        lease = %config.lease_ref(),
                        deadline = ?config.renew_deadline,
                        "lost leadership: no successful renewal within the deadline"
                    );
                    break 'leading;
                }
                let retry_at = (Instant::now() + config.retry_interval).min(deadline);
                tokio::select! {
                    () = stop.cancelled() => break 'leading,
                    () = tokio::time::sleep_until(retry_at) => {}
                }
            }
        }
        leading.send_replace(false);
    }
}

/// Proof of leadership: renews the Lease in the background while held.
///
/// Dropping it stops renewing and leaves the lease to expire; [`release`]
/// hands it over at once.
///
/// [`release`]: LeaderGuard::release
#[derive(Debug)]
pub struct LeaderGuard {
    elector: LeaderElector,
    leading: watch::Receiver<bool>,
    stop: CancellationToken,
    renewer: Option<JoinHandle<()>>,
}

impl LeaderGuard {
    /// This replica's identity.
    pub fn identity(&self) -> &str {
        self.elector.identity()
    }

    /// Whether this replica still leads.
    pub fn is_leading(&self) -> bool {
        *self.leading.borrow()
    }

    /// A receiver that turns `false` when leadership is lost.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.leading.clone()
    }

    /// Completes when leadership is lost (or the guard is released or dropped).
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut leading = self.leading.clone();
        async move {
            // An error means the renewer ended, which also ends leadership.
            let _ = leading.wait_for(|leading| !*leading).await;
        }
    }

    /// Stops renewing and clears the holder so another replica can take
    /// over immediately; for graceful shutdown.
    pub async fn release(mut self) -> Result<(), LeaderError> {
        self.stop.cancel();
        if let Some(renewer) = self.renewer.take() {
            // A panicked renewer has stopped renewing too; release regardless.
            let _ = renewer.await;
        }
        self.elector.release().await
    }
}

impl Drop for LeaderGuard {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: &str = "operator-a-1234";

    fn at(seconds: i64) -> Timestamp {
        Timestamp::new(1_800_000_000 + seconds, 0).unwrap()
    }

    fn held_by(holder: &str, renewed: i64, duration: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.to_owned()),
            acquire_time: Some(MicroTime(at(0))),
            renew_time: Some(MicroTime(at(renewed))),
            lease_duration_seconds: Some(duration),
            lease_transitions: Some(3),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn missing_or_holderless_lease_can_be_taken() {
        assert_eq!(claim(None, ME, at(0)), Claim::Take);
        assert_eq!(claim(Some(&LeaseSpec::default()), ME, at(0)), Claim::Take);
        let cleared = LeaseSpec {
            holder_identity: Some(String::new()),
            ..held_by("x", 0, 15)
        };
        assert_eq!(claim(Some(&cleared), ME, at(0)), Claim::Take);
    }

    #[test]
    fn current_lease_of_another_holder_is_respected_until_it_expires() {
        let lease = held_by("operator-b", 10, 15);
        assert_eq!(
            claim(Some(&lease), ME, at(20)),
            Claim::HeldBy("operator-b".to_owned())
        );
        assert_eq!(
            claim(Some(&lease), ME, at(25)),
            Claim::HeldBy("operator-b".to_owned())
        );
        assert_eq!(claim(Some(&lease), ME, at(26)), Claim::Take);
    }

    #[test]
    fn own_lease_can_be_renewed_even_after_expiry() {
        assert_eq!(claim(Some(&held_by(ME, 0, 15)), ME, at(5)), Claim::Take);
        assert_eq!(claim(Some(&held_by(ME, 0, 15)), ME, at(500)), Claim::Take);
    }

    #[test]
    fn holder_without_renew_time_or_duration_has_expired() {
        let no_duration = LeaseSpec {
            lease_duration_seconds: None,
            ..held_by("operator-b", 10, 15)
        };
        assert_eq!(claim(Some(&no_duration), ME, at(10)), Claim::Take);
        let no_times = LeaseSpec {
            acquire_time: None,
            renew_time: None,
            ..held_by("operator-b", 10, 15)
        };
        assert_eq!(claim(Some(&no_times), ME, at(10)), Claim::Take);
    }

    #[test]
    fn taking_over_counts_a_transition_and_renewing_does_not() {
        let taken = claimed_spec(Some(&held_by("operator-b", 0, 15)), ME, at(30), 15);
        assert_eq!(taken.holder_identity.as_deref(), Some(ME));
        assert_eq!(taken.acquire_time, Some(MicroTime(at(30))));
        assert_eq!(taken.renew_time, Some(MicroTime(at(30))));
        assert_eq!(taken.lease_transitions, Some(4));

        let renewed = claimed_spec(Some(&taken), ME, at(35), 15);
        assert_eq!(renewed.acquire_time, Some(MicroTime(at(30))));
        assert_eq!(renewed.renew_time, Some(MicroTime(at(35))));
        assert_eq!(renewed.lease_transitions, Some(4));
    }

    #[test]
    fn first_holder_of_a_new_lease_starts_at_zero_transitions() {
        let created = claimed_spec(None, ME, at(0), 15);
        assert_eq!(created.holder_identity.as_deref(), Some(ME));
        assert_eq!(created.lease_duration_seconds, Some(15));
        assert_eq!(created.lease_transitions, Some(0));
    }

    #[test]
    fn released_lease_has_no_holder_and_can_be_taken_at_once() {
        let released = released_spec(&held_by(ME, 10, 15));
        assert_eq!(released.holder_identity, None);
        assert_eq!(released.lease_transitions, Some(3));
        assert_eq!(claim(Some(&released), "operator-b", at(11)), Claim::Take);
    }

    #[test]
    fn timing_that_could_let_two_replicas_lead_is_refused() {
        let good = LeaderConfig::new("ferry-system", "ferry-operator", ME);
        assert!(good.validate().is_ok());
        let too_late = LeaderConfig {
            renew_deadline: Duration::from_secs(15),
            ..good.clone()
        };
        let error = too_late.validate().unwrap_err();
        assert!(error.is_permanent());
        assert!(
            error.to_string().contains("ferry-system/ferry-operator"),
            "{error}"
        );
        let renews_too_rarely = LeaderConfig {
            renew_interval: Duration::from_secs(10),
            ..good.clone()
        };
        assert!(renews_too_rarely.validate().is_err());
        let nameless = LeaderConfig {
            identity: String::new(),
            ..good
        };
        assert!(nameless.validate().is_err());
    }

    #[test]
    fn sub_second_lease_durations_round_up() {
        let config = LeaderConfig {
            lease_duration: Duration::from_millis(2500),
            renew_deadline: Duration::from_secs(2),
            renew_interval: Duration::from_millis(500),
            ..LeaderConfig::new("ns", "lease", ME)
        };
        assert_eq!(config.lease_duration_seconds().unwrap(), 3);
    }

    #[test]
    fn default_identities_are_unique_per_call() {
        let first = default_identity();
        let second = default_identity();
        assert!(!first.is_empty());
        assert_ne!(first, second);
    }
}
