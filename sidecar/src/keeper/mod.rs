//! Keeps a pod's secrets current for as long as it lives: issue them all at
//! start, renew each on its own schedule, wipe one whose lease runs out,
//! and at SIGTERM/SIGINT revoke, wipe and exit.
//!
//! One thread decides (this module's loop over an event channel); broker
//! calls run on short-lived threads that report back, and a signal thread
//! turns signals into events. So a hanging call never delays an expiry or
//! a shutdown, and no async runtime is linked.

use std::collections::HashSet;
use std::process::ExitCode;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::{SigSet, Signal};
use serde_json::json;

use crate::broker_client::{BrokerClient, BrokerError, IssuedLease};
use crate::config::SidecarConfig;
use crate::log;
use crate::random;
use crate::schedule::{self, REFUSED_RETRY_CAP, RETRY_CAP};
use crate::volume::{SecretVolume, WriteOutcome};
use ferry_contract::wire::SecretRef;

/// Stack of a broker-call thread: a TLS handshake and JSON parsing fit
/// easily; only touched pages count towards memory.
const CALL_STACK_BYTES: usize = 512 * 1024;

pub mod machine;

pub use machine::Deadlines;

/// What the loop hears about.
enum Event {
    Signal(Signal),
    Issued {
        secrets: Vec<usize>,
        asked_at: Instant,
        result: Result<Vec<IssuedLease>, BrokerError>,
    },
    Renewed {
        slot: usize,
        asked_at: Instant,
        result: Result<IssuedLease, BrokerError>,
    },
    Revoked {
        lease_id: String,
        secret: String,
        result: Result<(), BrokerError>,
    },
}

/// A lease the sidecar holds, its files written.
struct Held {
    id: String,
    /// Timed from when the sidecar asked, so never later than the broker's.
    expires: Instant,
}

/// One secret's state.
struct Slot {
    secret: SecretRef,
    held: Option<Held>,
    /// When to act next: renew if `renewable`, else issue afresh.
    due: Instant,
    /// Consecutive failures, for backoff.
    failures: u32,
    /// A call for this secret is under way.
    busy: bool,
    /// The held lease may be renewed (not after a 409 or a refusal).
    renewable: bool,
}

/// Why start-up failed.
enum StartFailure {
    /// A signal came first: stop quietly.
    Stopped(Signal),
    /// No leases, or they could not be written.
    Failed(String),
}

/// The sidecar's state and the channel its helpers report on.
pub struct Keeper {
    config: SidecarConfig,
    client: BrokerClient,
    volume: SecretVolume,
    deadlines: Deadlines,
    slots: Vec<Slot>,
    events: Sender<Event>,
    inbox: Receiver<Event>,
    started: Instant,
    ready: bool,
}

impl Keeper {
    /// A keeper for `config`, calling the broker through `client`.
    pub fn new(config: SidecarConfig, client: BrokerClient, deadlines: Deadlines) -> Self {
        let (events, inbox) = mpsc::channel();
        let now = Instant::now();
        let slots = config
            .secrets
            .iter()
            .map(|secret| Slot {
                secret: secret.clone(),
                held: None,
                due: now,
                failures: 0,
                busy: false,
                renewable: false,
            })
            .collect();
        Self {
            volume: SecretVolume::new(&config.secrets_dir, config.fs_group),
            config,
            client,
            deadlines,
            slots,
            events,
            inbox,
            started: now,
            ready: false,
        }
    }

    /// `ferry-sidecar run`: start, keep the secrets current until a signal,
    /// then revoke, wipe and exit 0. Non-zero when start-up fails (the
    /// kubelet restarts the container) or the wipe does.
    pub fn run(mut self) -> ExitCode {
        if let Err(message) = self.listen_for_signals() {
            log::error("start_failed", json!({ "error": message }));
            return ExitCode::FAILURE;
        }
        self.log_start("run");
        if let Err(error) = self.volume.clear_ready() {
            log::warn("ready_marker_failed", json!({ "error": error.to_string() }));
        }
        match self.start() {
            Ok(()) => {}
            Err(StartFailure::Stopped(signal)) => return self.shut_down(signal),
            Err(StartFailure::Failed(message)) => {
                log::error("start_failed", json!({ "error": message }));
                self.revoke_and_wipe();
                return ExitCode::FAILURE;
            }
        }
        loop {
            let wake = self.next_wake();
            let event = match wake {
                Some(at) => match self
                    .inbox
                    .recv_timeout(at.saturating_duration_since(Instant::now()))
                {
                    Ok(event) => Some(event),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => return ExitCode::FAILURE,
                },
                None => match self.inbox.recv() {
                    Ok(event) => Some(event),
                    Err(_) => return ExitCode::FAILURE,
                },
            };
            match event {
                Some(Event::Signal(signal)) => return self.shut_down(signal),
                Some(Event::Issued {
                    secrets,
                    asked_at,
                    result,
                }) => self.on_reissued(&secrets, asked_at, result),
                Some(Event::Renewed {
                    slot,
                    asked_at,
                    result,
                }) => self.on_renewed(slot, asked_at, result),
                Some(Event::Revoked { .. }) | None => {}
            }
            self.act_on_due();
        }
    }

    /// `ferry-sidecar init`: issue and write every secret once, exit 0.
    /// Nothing renews, revokes or wipes them later: the leases expire.
    pub fn init(mut self) -> ExitCode {
        self.log_start("init");
        match self.start() {
            Ok(()) => {
                log::info(
                    "init_done",
                    json!({ "note": "nothing is renewed, revoked or wiped after init; the leases expire" }),
                );
                ExitCode::SUCCESS
            }
            Err(StartFailure::Stopped(_)) => ExitCode::FAILURE,
            Err(StartFailure::Failed(message)) => {
                log::error("start_failed", json!({ "error": message }));
                ExitCode::FAILURE
            }
        }
    }

    fn log_start(&self, mode: &str) {
        log::info(
            "starting",
            json!({
                "mode": mode,
                "version": env!("CARGO_PKG_VERSION"),
                "secrets": self.slots.iter().map(|s| qualified(&s.secret)).collect::<Vec<_>>(),
                "dir": self.config.secrets_dir.display().to_string(),
                "broker": self.config.broker_url.host_header(),
                "pod": format!(
                    "{}/{}",
                    self.config.pod.namespace.as_deref().unwrap_or("?"),
                    self.config.pod.name.as_deref().unwrap_or("?")
                ),
                "pod_uid": self.config.pod.uid,
                "fs_group": self.config.fs_group,
            }),
        );
    }

    /// Blocks SIGTERM and SIGINT in every thread and waits for them on one.
    fn listen_for_signals(&self) -> Result<(), String> {
        let mut signals = SigSet::empty();
        signals.add(Signal::SIGTERM);
        signals.add(Signal::SIGINT);
        signals
            .thread_block()
            .map_err(|e| format!("cannot block signals: {e}"))?;
        let events = self.events.clone();
        thread::Builder::new()
            .name("signals".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                while let Ok(signal) = signals.wait() {
                    if events.send(Event::Signal(signal)).is_err() {
                        break;
                    }
                }
            })
            .map(drop)
            .map_err(|e| format!("cannot start the signal thread: {e}"))
    }

    /// Issues all leases at once (the broker gives all or none), retrying
    /// transient failures until the start-up deadline, and writes them.
    fn start(&mut self) -> Result<(), StartFailure> {
        let deadline = self.started + self.deadlines.startup;
        let all: Vec<usize> = (0..self.slots.len()).collect();
        let mut last_error = String::from("no answer yet");
        let mut failures = 0;
        loop {
            if !self.call_issue(all.clone()) {
                return Err(StartFailure::Failed(
                    "cannot start a thread for the broker call".into(),
                ));
            }
            let retry_at = loop {
                let remaining = deadline.saturating_duration_since(Instant::now());
                let event = match self.inbox.recv_timeout(remaining) {
                    Ok(event) => event,
                    Err(_) => {
                        return Err(StartFailure::Failed(format!(
                            "no leases within {}s: {last_error}",
                            self.deadlines.startup.as_secs()
                        )));
                    }
                };
                match event {
                    Event::Signal(signal) => return Err(StartFailure::Stopped(signal)),
                    Event::Issued {
                        asked_at,
                        result: Ok(leases),
                        ..
                    } => return self.write_initial(asked_at, leases),
                    Event::Issued {
                        result: Err(error), ..
                    } => {
                        for slot in &mut self.slots {
                            slot.busy = false;
                        }
                        if error.is_permanent_at_start() {
                            return Err(StartFailure::Failed(error.to_string()));
                        }
                        let delay = schedule::retry_delay(
                            failures,
                            RETRY_CAP,
                            random::unit_interval(),
                            error.retry_after(),
                        );
                        failures += 1;
                        log::warn(
                            "issue_failed",
                            json!({
                                "error": error.to_string(),
                                "status": error.status(),
                                "retry_in_ms": delay.as_millis() as u64,
                            }),
                        );
                        last_error = error.to_string();
                        break Instant::now() + delay;
                    }
                    Event::Renewed { .. } | Event::Revoked { .. } => {}
                }
            };
            // Wait out the backoff, still hearing signals.
            loop {
                let wait = retry_at.saturating_duration_since(Instant::now());
                if wait.is_zero() {
                    break;
                }
                if Instant::now() + wait > deadline {
                    return Err(StartFailure::Failed(format!(
                        "no leases within {}s: {last_error}",
                        self.deadlines.startup.as_secs()
                    )));
                }
                match self.inbox.recv_timeout(wait) {
                    Ok(Event::Signal(signal)) => return Err(StartFailure::Stopped(signal)),
                    Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => {
                        return Err(StartFailure::Failed("event channel closed".into()));
                    }
                }
            }
        }
    }

    fn write_initial(
        &mut self,
        asked_at: Instant,
        leases: Vec<IssuedLease>,
    ) -> Result<(), StartFailure> {
        // All recorded before any is written, so a failed write still
        // revokes every one of them.
        for (index, lease) in leases.iter().enumerate() {
            self.slots[index].busy = false;
            self.hold(index, lease, asked_at);
        }
        for (index, lease) in leases.iter().enumerate() {
            self.write(index, lease, "issued")
                .map_err(StartFailure::Failed)?;
        }
        self.update_ready();
        Ok(())
    }

    /// Records `lease` as held by `slot` and schedules its renewal.
    fn hold(&mut self, index: usize, lease: &IssuedLease, asked_at: Instant) {
        let slot = &mut self.slots[index];
        let delay = schedule::renewal_delay(lease.renew_after, lease.ttl, random::symmetric());
        slot.held = Some(Held {
            id: lease.id.clone(),
            expires: asked_at + lease.ttl,
        });
        slot.due = asked_at + delay;
        slot.failures = 0;
        slot.renewable = true;
    }

    /// Writes a lease's files and logs it; the error message on failure.
    fn write(&mut self, index: usize, lease: &IssuedLease, how: &str) -> Result<(), String> {
        let slot = &self.slots[index];
        match self.volume.write_secret(&slot.secret.name, &lease.files) {
            Ok(outcome) => {
                log::info(
                    "secret_written",
                    json!({
                        "how": how,
                        "secret": qualified(&slot.secret),
                        "lease": lease.id,
                        "files": lease.file_names(),
                        "changed": outcome == WriteOutcome::Swapped,
                        "ttl_s": lease.ttl.as_secs(),
                        "expires_at": lease.expires_at,
                        "renew_in_s": slot.due.saturating_duration_since(Instant::now()).as_secs(),
                        "elapsed_ms": self.started.elapsed().as_millis() as u64,
                    }),
                );
                Ok(())
            }
            Err(error) => Err(format!(
                "cannot write secret {} (lease {}): {error}",
                qualified(&slot.secret),
                lease.id
            )),
        }
    }

    /// Creates the readiness marker once every secret is held, removes it
    /// as soon as one is not.
    fn update_ready(&mut self) {
        let all_held = self.slots.iter().all(|slot| slot.held.is_some());
        if all_held && !self.ready {
            let detail = json!({
                "ready_since": log::rfc3339(SystemTime::now()),
                "secrets": self.slots.iter().map(|s| qualified(&s.secret)).collect::<Vec<_>>(),
            })
            .to_string();
            match self.volume.mark_ready(&detail) {
                Ok(()) => {
                    self.ready = true;
                    log::info(
                        "ready",
                        json!({ "elapsed_ms": self.started.elapsed().as_millis() as u64 }),
                    );
                }
                Err(error) => {
                    log::error("ready_marker_failed", json!({ "error": error.to_string() }))
                }
            }
        } else if !all_held && self.ready {
            self.ready = false;
            if let Err(error) = self.volume.clear_ready() {
                log::error("ready_marker_failed", json!({ "error": error.to_string() }));
            }
            log::warn("not_ready", json!({}));
        }
    }

    /// The next moment something is due: a renewal, a retry or an expiry.
    fn next_wake(&self) -> Option<Instant> {
        self.slots
            .iter()
            .flat_map(|slot| {
                let due = (!slot.busy).then_some(slot.due);
                let expiry = slot.held.as_ref().map(|held| held.expires);
                due.into_iter().chain(expiry)
            })
            .min()
    }

    /// Wipes expired secrets and starts the calls that are due.
    fn act_on_due(&mut self) {
        let now = Instant::now();
        for index in 0..self.slots.len() {
            let expired = self.slots[index]
                .held
                .as_ref()
                .is_some_and(|held| held.expires <= now);
            if expired {
                self.expire(index);
            }
            let slot = &self.slots[index];
            if slot.busy || slot.due > now {
                continue;
            }
            let started = match (&slot.held, slot.renewable) {
                (Some(held), true) => {
                    let id = held.id.clone();
                    self.call_renew(index, id)
                }
                _ => self.call_issue(vec![index]),
            };
            if !started {
                self.failed(index, false, None);
            }
        }
    }

    /// A lease ran out unrenewed: its files go, and the pod is not ready.
    fn expire(&mut self, index: usize) {
        let slot = &mut self.slots[index];
        let lease = slot.held.take().map(|held| held.id);
        slot.renewable = false;
        let secret = qualified(&slot.secret);
        let name = slot.secret.name.clone();
        log::error(
            "secret_expired",
            json!({
                "secret": secret,
                "lease": lease,
                "note": "not renewed in time; files removed, asking for a new lease",
            }),
        );
        if let Err(error) = self.volume.wipe_secret(&name) {
            log::error(
                "wipe_failed",
                json!({ "secret": secret, "error": error.to_string() }),
            );
        }
        self.update_ready();
    }

    /// Schedules the next try for a slot after a failure.
    fn failed(&mut self, index: usize, permanent: bool, retry_after: Option<Duration>) -> Duration {
        let slot = &mut self.slots[index];
        let cap = if permanent {
            REFUSED_RETRY_CAP
        } else {
            RETRY_CAP
        };
        let delay = schedule::retry_delay(slot.failures, cap, random::unit_interval(), retry_after);
        slot.failures = slot.failures.saturating_add(1);
        slot.busy = false;
        slot.due = Instant::now() + delay;
        delay
    }

    fn on_renewed(
        &mut self,
        index: usize,
        asked_at: Instant,
        result: Result<IssuedLease, BrokerError>,
    ) {
        self.slots[index].busy = false;
        let secret = qualified(&self.slots[index].secret);
        // Never write one secret's files into another's directory.
        let result = result.and_then(|lease| {
            if lease.secret == self.slots[index].secret {
                Ok(lease)
            } else {
                Err(BrokerError::InvalidLease {
                    action: "renew".into(),
                    message: format!(
                        "lease {} is for {}, not {secret}",
                        lease.id,
                        qualified(&lease.secret)
                    ),
                })
            }
        });
        match result {
            Ok(lease) => {
                self.hold(index, &lease, asked_at);
                if let Err(message) = self.write(index, &lease, "renewed") {
                    let delay = self.failed(index, false, None);
                    log::error(
                        "write_failed",
                        json!({ "error": message, "retry_in_ms": delay.as_millis() as u64 }),
                    );
                }
            }
            Err(error) => {
                let lease = self.slots[index].held.as_ref().map(|h| h.id.clone());
                let gone = error.status() == Some(409);
                if gone || error.is_permanent() {
                    // This lease will not renew; ask for a new one, keeping
                    // the current files until they expire.
                    self.slots[index].renewable = false;
                }
                let delay = if gone {
                    self.slots[index].busy = false;
                    self.slots[index].due = Instant::now();
                    Duration::ZERO
                } else {
                    self.failed(index, error.is_permanent(), error.retry_after())
                };
                log::warn(
                    if gone { "lease_gone" } else { "renew_failed" },
                    json!({
                        "secret": secret,
                        "lease": lease,
                        "status": error.status(),
                        "error": error.to_string(),
                        "retry_in_ms": delay.as_millis() as u64,
                        "next": if self.slots[index].renewable { "renew" } else { "issue" },
                    }),
                );
            }
        }
    }

    fn on_reissued(
        &mut self,
        secrets: &[usize],
        asked_at: Instant,
        result: Result<Vec<IssuedLease>, BrokerError>,
    ) {
        for &index in secrets {
            self.slots[index].busy = false;
        }
        match result {
            Ok(leases) => {
                for (&index, lease) in secrets.iter().zip(leases) {
                    self.hold(index, &lease, asked_at);
                    if let Err(message) = self.write(index, &lease, "issued") {
                        let delay = self.failed(index, false, None);
                        log::error(
                            "write_failed",
                            json!({ "error": message, "retry_in_ms": delay.as_millis() as u64 }),
                        );
                    }
                }
                self.update_ready();
            }
            Err(error) => {
                for &index in secrets {
                    let delay = self.failed(index, error.is_permanent(), error.retry_after());
                    log::warn(
                        "issue_failed",
                        json!({
                            "secret": qualified(&self.slots[index].secret),
                            "status": error.status(),
                            "error": error.to_string(),
                            "retry_in_ms": delay.as_millis() as u64,
                        }),
                    );
                }
            }
        }
    }

    /// Starts `POST /v1/leases` for the given slots on a thread.
    fn call_issue(&mut self, indexes: Vec<usize>) -> bool {
        let secrets: Vec<SecretRef> = indexes
            .iter()
            .map(|&i| self.slots[i].secret.clone())
            .collect();
        for &index in &indexes {
            self.slots[index].busy = true;
        }
        let client = self.client.clone();
        self.spawn_call("issue", move || {
            let asked_at = Instant::now();
            let result = client.issue(&secrets);
            Event::Issued {
                secrets: indexes,
                asked_at,
                result,
            }
        })
    }

    /// Starts `POST /v1/leases/{id}/renew` on a thread.
    fn call_renew(&mut self, index: usize, lease_id: String) -> bool {
        self.slots[index].busy = true;
        let client = self.client.clone();
        self.spawn_call("renew", move || {
            let asked_at = Instant::now();
            let result = client.renew(&lease_id);
            Event::Renewed {
                slot: index,
                asked_at,
                result,
            }
        })
    }

    fn spawn_call(&self, name: &str, call: impl FnOnce() -> Event + Send + 'static) -> bool {
        let events = self.events.clone();
        let spawned = thread::Builder::new()
            .name(name.into())
            .stack_size(CALL_STACK_BYTES)
            .spawn(move || {
                // The loop may have exited already; nothing to tell then.
                let _ = events.send(call());
            });
        if let Err(error) = &spawned {
            log::error(
                "thread_failed",
                json!({ "call": name, "error": error.to_string() }),
            );
        }
        spawned.is_ok()
    }

    /// Pod end: revoke every held lease (bounded), wipe every secret, exit.
    fn shut_down(mut self, signal: Signal) -> ExitCode {
        log::info("shutting_down", json!({ "signal": signal.as_str() }));
        let wiped = self.revoke_and_wipe();
        log::info(
            "stopped",
            json!({ "wiped": wiped, "uptime_s": self.started.elapsed().as_secs() }),
        );
        if wiped {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }

    /// Revokes held leases while wiping every secret and the readiness
    /// marker; waits for the revocations at most the revoke deadline.
    /// Whether the wipe succeeded.
    fn revoke_and_wipe(&mut self) -> bool {
        let deadline = Instant::now() + self.deadlines.revoke;
        let mut pending = HashSet::new();
        let held: Vec<(String, String)> = self
            .slots
            .iter()
            .filter_map(|slot| {
                let held = slot.held.as_ref()?;
                Some((held.id.clone(), qualified(&slot.secret)))
            })
            .collect();
        for (lease_id, secret) in held {
            if self.call_revoke(lease_id.clone(), secret, self.deadlines.revoke) {
                pending.insert(lease_id);
            }
        }

        let mut wiped = true;
        if let Err(error) = self.volume.clear_ready() {
            log::error("wipe_failed", json!({ "error": error.to_string() }));
            wiped = false;
        }
        self.ready = false;
        for index in 0..self.slots.len() {
            let slot = &mut self.slots[index];
            slot.held = None;
            let secret = qualified(&slot.secret);
            match self.volume.wipe_secret(&slot.secret.name) {
                Ok(()) => log::info("secret_wiped", json!({ "secret": secret })),
                Err(error) => {
                    wiped = false;
                    log::error(
                        "wipe_failed",
                        json!({ "secret": secret, "error": error.to_string() }),
                    );
                }
            }
        }

        while !pending.is_empty() {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match self.inbox.recv_timeout(remaining) {
                Ok(Event::Revoked {
                    lease_id,
                    secret,
                    result,
                }) => {
                    pending.remove(&lease_id);
                    match result {
                        Ok(()) => {
                            log::info("revoked", json!({ "lease": lease_id, "secret": secret }))
                        }
                        // Already expired or revoked: nothing left to do.
                        Err(error) if matches!(error.status(), Some(404 | 409)) => log::info(
                            "revoked",
                            json!({ "lease": lease_id, "secret": secret, "note": error.to_string() }),
                        ),
                        Err(error) => log::warn(
                            "revoke_failed",
                            json!({ "lease": lease_id, "secret": secret, "error": error.to_string() }),
                        ),
                    }
                }
                // A lease issued while stopping: revoke it too.
                Ok(Event::Issued {
                    result: Ok(leases), ..
                }) => {
                    for lease in leases {
                        let remaining = deadline.saturating_duration_since(Instant::now());
                        if self.call_revoke(lease.id.clone(), qualified(&lease.secret), remaining) {
                            pending.insert(lease.id);
                        }
                    }
                }
                Ok(_) => {}
                Err(_) => {
                    log::warn(
                        "revoke_timed_out",
                        json!({
                            "leases": pending.iter().collect::<Vec<_>>(),
                            "note": "left to expire",
                        }),
                    );
                    break;
                }
            }
        }
        wiped
    }

    fn call_revoke(&self, lease_id: String, secret: String, timeout: Duration) -> bool {
        let client = self.client.clone();
        self.spawn_call("revoke", move || {
            let result = client.revoke(&lease_id, timeout);
            Event::Revoked {
                lease_id,
                secret,
                result,
            }
        })
    }
}

/// `namespace/name`.
fn qualified(secret: &SecretRef) -> String {
    format!("{}/{}", secret.namespace, secret.name)
}
