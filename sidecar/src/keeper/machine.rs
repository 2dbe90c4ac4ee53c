//! The keeper's decisions and nothing else: which broker call to make,
//! which files to write or wipe, what to log, when to wake and how to exit.
//!
//! [`Machine::handle`] takes one [`Event`] and the time it is handled at and
//! returns the [`Action`]s to carry out, in order. It starts no thread,
//! touches no file, reads no clock and draws no random number (jitter comes
//! from the function it is built with), so every schedule, retry, deadline
//! and ordering is tested here by feeding events at chosen instants.
//!
//! The volume's answers change what happens next (a failed write is
//! retried, a failed wipe fails the exit), so an action that has one is
//! *answered*: it is always the last of its batch, and the shell hands its
//! outcome back as the next event ([`Event::CallStarted`], [`Event::Written`],
//! [`Event::ReadyMarked`], [`Event::ReadyCleared`], [`Event::Wiped`]) before
//! any other. Work decided but not yet done waits in a queue meanwhile, so
//! the actions come out in exactly the order one straight-line function
//! would have done them.

use std::collections::VecDeque;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::broker_client::{BrokerError, IssuedLease};
use crate::log::Level;
use crate::schedule::{self, REFUSED_RETRY_CAP, RETRY_CAP};
use crate::volume::{SecretFile, WriteOutcome};
use ferry_contract::wire::SecretRef;

/// Limits on how long things may take.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// From start until every secret is written, else `run` fails.
    pub startup: Duration,
    /// One broker call (connect, TLS, request, response).
    pub call: Duration,
    /// All revocations at shutdown together.
    pub revoke: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Self {
            startup: Duration::from_secs(120),
            call: Duration::from_secs(10),
            revoke: Duration::from_secs(5),
        }
    }
}

/// How the sidecar was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Keep the secrets current until a signal, then revoke and wipe.
    Run,
    /// Issue and write once, then exit; the leases simply expire.
    Init,
}

/// What the machine hears about.
#[derive(Debug)]
pub enum Event {
    /// Begin: issue every secret (after clearing a stale readiness marker
    /// when running).
    Start(Mode),
    /// SIGTERM or SIGINT.
    Signal(Signal),
    /// A `POST /v1/leases` answered.
    Issued {
        /// The slots asked for, in the order of the secrets sent.
        slots: Vec<usize>,
        /// When the call began: expiry is timed from here.
        asked_at: Instant,
        /// The leases, one per slot in the same order, or why not.
        result: Result<Vec<IssuedLease>, BrokerError>,
    },
    /// A renewal answered.
    Renewed {
        /// The slot whose lease was renewed.
        slot: usize,
        /// When the call began.
        asked_at: Instant,
        /// The renewed lease, or why not.
        result: Result<IssuedLease, BrokerError>,
    },
    /// A revocation answered.
    Revoked {
        /// The lease.
        lease_id: String,
        /// Its secret, `namespace/name`, for the log.
        secret: String,
        /// Whether the broker revoked it.
        result: Result<(), BrokerError>,
    },
    /// A revocation watch answered: the secrets the broker took away
    /// (their files must go now), none when its wait ended, or why not.
    Watched {
        /// The revoked secrets, or why the watch failed.
        result: Result<Vec<SecretRef>, BrokerError>,
    },
    /// Nothing arrived before [`Machine::wake_at`].
    Tick,
    /// Answers [`Action::Issue`], [`Action::Renew`], [`Action::Revoke`]
    /// and [`Action::Watch`]: whether the call's thread started.
    CallStarted(bool),
    /// Answers [`Action::Write`].
    Written(Result<WriteOutcome, String>),
    /// Answers [`Action::MarkReady`].
    ReadyMarked(Result<(), String>),
    /// Answers [`Action::ClearReady`].
    ReadyCleared(Result<(), String>),
    /// Answers [`Action::Wipe`].
    Wiped(Result<(), String>),
}

/// What the shell is to do.
#[derive(Debug)]
pub enum Action {
    /// Write one log line.
    Log {
        /// How much it matters.
        level: Level,
        /// The event name.
        event: &'static str,
        /// Its fields, a JSON object.
        fields: Value,
    },
    /// Start `POST /v1/leases` for these slots' secrets on a thread and
    /// report [`Event::Issued`]. Answered.
    Issue {
        /// The slots, echoed back in [`Event::Issued`].
        slots: Vec<usize>,
        /// Their secrets, in the same order.
        secrets: Vec<SecretRef>,
    },
    /// Start a renewal of `lease_id` on a thread and report
    /// [`Event::Renewed`]. Answered.
    Renew {
        /// The slot, echoed back in [`Event::Renewed`].
        slot: usize,
        /// The lease to renew.
        lease_id: String,
    },
    /// Start a revocation watch of these leases on a thread and report
    /// [`Event::Watched`]. Answered.
    Watch {
        /// The held leases.
        lease_ids: Vec<String>,
    },
    /// Start a revocation on a thread, bounded by `timeout`, and report
    /// [`Event::Revoked`]. Answered.
    Revoke {
        /// The lease to revoke.
        lease_id: String,
        /// Its secret, `namespace/name`, echoed back.
        secret: String,
        /// Time limit of the call.
        timeout: Duration,
    },
    /// Write a secret's files (a new generation). Answered.
    Write {
        /// The secret's name, its directory in the volume.
        secret: String,
        /// The files. Secret: never logged.
        files: Vec<SecretFile>,
    },
    /// Create the readiness marker. Answered.
    MarkReady {
        /// Every secret, `namespace/name`, for the marker's content.
        secrets: Vec<String>,
    },
    /// Remove the readiness marker. Answered.
    ClearReady,
    /// Remove a secret's files. Answered.
    Wipe {
        /// The secret's name, its directory in the volume.
        secret: String,
    },
    /// Tell the app, if its pod asked, that the secret's files changed:
    /// after a swap while running, never before the new files are all in
    /// place, never at start-up (the app starts after them).
    Reload {
        /// The secret, `namespace/name`.
        secret: String,
    },
    /// Exit the process with this code. Always the last action.
    Exit(ExitCode),
}

impl Action {
    /// Whether the shell must hand this action's outcome back as the next
    /// event.
    pub fn is_answered(&self) -> bool {
        !matches!(
            self,
            Action::Log { .. } | Action::Reload { .. } | Action::Exit(_)
        )
    }
}

/// A lease the sidecar holds, its files written.
#[derive(Debug)]
struct Held {
    id: String,
    /// Timed from when the sidecar asked, so never later than the broker's.
    expires: Instant,
}

/// One secret's state.
#[derive(Debug)]
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

/// Where the sidecar is in its life.
#[derive(Debug)]
enum Phase {
    /// Before [`Event::Start`].
    Idle,
    /// Issuing every secret at once until the startup deadline.
    Starting {
        deadline: Instant,
        /// Failed attempts so far, for backoff.
        failures: u32,
        last_error: String,
        /// Backing off until then; `None` while an issue is under way.
        retry_at: Option<Instant>,
    },
    /// Keeping the secrets current.
    Running,
    /// Revoking and wiping; waiting for revocations until `deadline`.
    Stopping {
        deadline: Instant,
        /// Revocations under way, in the order they were started.
        pending: Vec<String>,
        /// Every wipe so far succeeded.
        wiped: bool,
        after: AfterStop,
    },
    /// Exited: nothing more happens.
    Done,
}

/// How a stop ends.
#[derive(Debug, Clone, Copy)]
enum AfterStop {
    /// After a signal: log `stopped`, exit 0 if the wipe succeeded.
    Report,
    /// After a failed start: exit 1.
    Fail,
}

/// Work decided and not yet done, run in order.
#[derive(Debug)]
enum Step {
    /// At `run` start: remove a marker a previous container left.
    ClearStaleReady,
    /// Issue every secret at once (start-up).
    IssueAll,
    /// Write a held lease's files.
    Write {
        slot: usize,
        lease: IssuedLease,
        how: &'static str,
    },
    /// Mark or unmark readiness to match what is held.
    UpdateReady,
    /// Every start-up write is done.
    Started,
    /// Every slot in turn: [`Step::Due`].
    ActOnDue { now: Instant },
    /// Wipe the slot if its lease ran out by `now`, then [`Step::Call`].
    Due { slot: usize, now: Instant },
    /// Start the slot's call if it is due by `now` and idle.
    Call { slot: usize, now: Instant },
    /// Start a revocation watch if none is under way and one is due.
    Watch { now: Instant },
    /// The broker revoked the slot's lease: wipe it (if still held).
    LoseRevoked { slot: usize },
    /// At shutdown: start a revocation.
    Revoke {
        lease_id: String,
        secret: String,
        timeout: Duration,
    },
    /// At shutdown: remove the readiness marker.
    StopClearReady,
    /// At shutdown: wipe a slot.
    StopWipe { slot: usize },
    /// At shutdown: wait for the revocations, or exit if none is pending.
    StopWait,
}

/// What an answered action is waiting for.
#[derive(Debug)]
enum Awaiting {
    StaleReadyCleared,
    IssueStarted {
        slots: Vec<usize>,
    },
    RenewStarted {
        slot: usize,
    },
    WatchStarted,
    RevokeStarted {
        lease_id: String,
    },
    Written {
        slot: usize,
        how: &'static str,
        lease: WrittenLease,
    },
    ReadyMarked,
    ReadyCleared,
    ExpiredWiped {
        slot: usize,
    },
    StopReadyCleared,
    StopWiped {
        slot: usize,
    },
}

/// What the `secret_written` log line says about a lease whose files went
/// to the shell.
#[derive(Debug)]
struct WrittenLease {
    id: String,
    files: Vec<String>,
    ttl: Duration,
    expires_at: String,
}

/// The keeper's state: one slot per secret, the phase, and the work queue.
/// `J` draws a jitter value in `[0, 1)` each time it is called.
#[derive(Debug)]
pub struct Machine<J> {
    slots: Vec<Slot>,
    deadlines: Deadlines,
    jitter: J,
    started: Instant,
    mode: Mode,
    phase: Phase,
    ready: bool,
    todo: VecDeque<Step>,
    awaiting: Option<Awaiting>,
    out: Vec<Action>,
    watch: Watching,
}

/// The revocation watch: one request held by the broker at a time, while
/// running, asked again as soon as it answers.
#[derive(Debug)]
struct Watching {
    /// A watch is under way.
    busy: bool,
    /// When to start the next one.
    due: Instant,
    /// Consecutive failures, for backoff.
    failures: u32,
}

impl<J: FnMut() -> f64> Machine<J> {
    /// A machine for `secrets`, created at `now` (the start-up deadline
    /// counts from here), drawing jitter from `jitter`.
    pub fn new(secrets: &[SecretRef], deadlines: Deadlines, now: Instant, jitter: J) -> Self {
        let slots = secrets
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
            slots,
            deadlines,
            jitter,
            started: now,
            mode: Mode::Run,
            phase: Phase::Idle,
            ready: false,
            todo: VecDeque::new(),
            awaiting: None,
            out: Vec::new(),
            watch: Watching {
                busy: false,
                due: now,
                failures: 0,
            },
        }
    }

    /// Handles `event` at `now`; the actions to carry out, in order. If the
    /// last one [is answered](Action::is_answered), its outcome must be the
    /// next event.
    pub fn handle(&mut self, event: Event, now: Instant) -> Vec<Action> {
        match event {
            Event::CallStarted(_)
            | Event::Written(_)
            | Event::ReadyMarked(_)
            | Event::ReadyCleared(_)
            | Event::Wiped(_) => {
                if let Some(awaiting) = self.awaiting.take() {
                    self.on_answer(awaiting, event, now);
                }
            }
            other => self.on_event(other, now),
        }
        self.work(now);
        std::mem::take(&mut self.out)
    }

    /// When to send [`Event::Tick`] if nothing else arrives first; `None`
    /// to wait for events only.
    pub fn wake_at(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Starting {
                deadline, retry_at, ..
            } => Some(retry_at.unwrap_or(*deadline)),
            Phase::Running => self.next_due(),
            Phase::Stopping { deadline, .. } => Some(*deadline),
            Phase::Idle | Phase::Done => None,
        }
    }

    /// Whether the readiness marker is (believed to be) in place.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    fn on_event(&mut self, event: Event, now: Instant) {
        match &mut self.phase {
            Phase::Idle => {
                if let Event::Start(mode) = event {
                    self.mode = mode;
                    self.phase = Phase::Starting {
                        deadline: self.started + self.deadlines.startup,
                        failures: 0,
                        last_error: String::from("no answer yet"),
                        retry_at: None,
                    };
                    if mode == Mode::Run {
                        self.todo.push_back(Step::ClearStaleReady);
                    }
                    self.todo.push_back(Step::IssueAll);
                }
            }
            Phase::Starting { .. } => self.on_starting_event(event, now),
            Phase::Running => {
                match event {
                    Event::Signal(signal) => return self.shut_down(signal, now),
                    Event::Issued {
                        slots,
                        asked_at,
                        result,
                    } => self.on_reissued(&slots, asked_at, result, now),
                    Event::Renewed {
                        slot,
                        asked_at,
                        result,
                    } => self.on_renewed(slot, asked_at, result, now),
                    Event::Watched { result } => self.on_watched(result, now),
                    _ => {}
                }
                self.todo.push_back(Step::ActOnDue { now });
            }
            Phase::Stopping {
                deadline, pending, ..
            } => match event {
                Event::Revoked {
                    lease_id,
                    secret,
                    result,
                } => {
                    pending.retain(|id| *id != lease_id);
                    self.out.push(revoked_log(lease_id, secret, result));
                    self.todo.push_back(Step::StopWait);
                }
                // A lease issued while stopping: revoke it too.
                Event::Issued {
                    result: Ok(leases), ..
                } => {
                    let remaining = deadline.saturating_duration_since(now);
                    for lease in leases {
                        self.todo.push_back(Step::Revoke {
                            lease_id: lease.id,
                            secret: qualified(&lease.secret),
                            timeout: remaining,
                        });
                    }
                    self.todo.push_back(Step::StopWait);
                }
                Event::Tick if now >= *deadline => {
                    self.out.push(log(
                        Level::Warn,
                        "revoke_timed_out",
                        json!({ "leases": pending, "note": "left to expire" }),
                    ));
                    self.finish_stop(now);
                }
                _ => {}
            },
            Phase::Done => {}
        }
    }

    /// Start-up: the one issue call's answer, a signal, or the clock.
    fn on_starting_event(&mut self, event: Event, now: Instant) {
        let Phase::Starting {
            deadline,
            failures,
            last_error,
            retry_at,
        } = &mut self.phase
        else {
            return;
        };
        match event {
            Event::Signal(signal) => match self.mode {
                Mode::Run => self.shut_down(signal, now),
                Mode::Init => self.exit(ExitCode::FAILURE),
            },
            Event::Issued {
                slots,
                asked_at,
                result,
            } if retry_at.is_none() => {
                for slot in &mut self.slots {
                    slot.busy = false;
                }
                match result {
                    Ok(leases) => {
                        // All held before any is written, so a failed write
                        // still revokes every one of them.
                        let leases: Vec<(usize, IssuedLease)> =
                            slots.into_iter().zip(leases).collect();
                        for (slot, lease) in &leases {
                            self.hold(*slot, lease, asked_at);
                        }
                        for (slot, lease) in leases {
                            self.todo.push_back(Step::Write {
                                slot,
                                lease,
                                how: "issued",
                            });
                        }
                        self.todo.push_back(Step::UpdateReady);
                        self.todo.push_back(Step::Started);
                    }
                    Err(error) => {
                        if error.is_permanent_at_start() {
                            return self.fail_start(error.to_string(), now);
                        }
                        let delay = schedule::retry_delay(
                            *failures,
                            RETRY_CAP,
                            (self.jitter)(),
                            error.retry_after(),
                        );
                        *failures = failures.saturating_add(1);
                        self.out.push(log(
                            Level::Warn,
                            "issue_failed",
                            json!({
                                "error": error.to_string(),
                                "status": error.status(),
                                "retry_in_ms": delay.as_millis() as u64,
                            }),
                        ));
                        *last_error = error.to_string();
                        let at = schedule::later(now, delay);
                        if delay.is_zero() {
                            self.todo.push_back(Step::IssueAll);
                        } else if at > *deadline {
                            // The next try would come too late: give up now.
                            let message = no_leases(self.deadlines.startup, last_error);
                            self.fail_start(message, now);
                        } else {
                            *retry_at = Some(at);
                        }
                    }
                }
            }
            Event::Tick => match *retry_at {
                Some(at) if now >= at => {
                    *retry_at = None;
                    self.todo.push_back(Step::IssueAll);
                }
                None if now >= *deadline => {
                    let message = no_leases(self.deadlines.startup, last_error);
                    self.fail_start(message, now);
                }
                _ => {}
            },
            _ => {}
        }
    }

    /// The answer to the action that was waiting for one.
    fn on_answer(&mut self, awaiting: Awaiting, answer: Event, now: Instant) {
        match (awaiting, answer) {
            (Awaiting::StaleReadyCleared, Event::ReadyCleared(Err(error))) => self.out.push(log(
                Level::Warn,
                "ready_marker_failed",
                json!({ "error": error }),
            )),
            (Awaiting::IssueStarted { slots }, Event::CallStarted(false)) => {
                if matches!(self.phase, Phase::Starting { .. }) {
                    for slot in &mut self.slots {
                        slot.busy = false;
                    }
                    self.fail_start("cannot start a thread for the broker call".into(), now);
                } else {
                    for slot in slots {
                        self.failed(slot, false, None, now);
                    }
                }
            }
            (Awaiting::RenewStarted { slot }, Event::CallStarted(false)) => {
                self.failed(slot, false, None, now);
            }
            (Awaiting::WatchStarted, Event::CallStarted(started)) => {
                self.watch.busy = started;
                if !started {
                    self.watch_failed(None, now);
                }
            }
            (Awaiting::RevokeStarted { lease_id }, Event::CallStarted(true)) => {
                if let Phase::Stopping { pending, .. } = &mut self.phase
                    && !pending.contains(&lease_id)
                {
                    pending.push(lease_id);
                }
            }
            (Awaiting::Written { slot, how, lease }, Event::Written(result)) => {
                self.on_written(slot, how, lease, result, now)
            }
            (Awaiting::ReadyMarked, Event::ReadyMarked(result)) => match result {
                Ok(()) => {
                    self.ready = true;
                    self.out.push(log(
                        Level::Info,
                        "ready",
                        json!({ "elapsed_ms": self.elapsed_ms(now) }),
                    ));
                }
                Err(error) => self.out.push(log(
                    Level::Error,
                    "ready_marker_failed",
                    json!({ "error": error }),
                )),
            },
            (Awaiting::ReadyCleared, Event::ReadyCleared(result)) => {
                if let Err(error) = result {
                    self.out.push(log(
                        Level::Error,
                        "ready_marker_failed",
                        json!({ "error": error }),
                    ));
                }
                self.out.push(log(Level::Warn, "not_ready", json!({})));
            }
            (Awaiting::ExpiredWiped { slot }, Event::Wiped(Err(error))) => {
                let secret = self.qualified(slot);
                self.out.push(log(
                    Level::Error,
                    "wipe_failed",
                    json!({ "secret": secret, "error": error }),
                ));
            }
            (Awaiting::StopReadyCleared, Event::ReadyCleared(Err(error))) => {
                self.out
                    .push(log(Level::Error, "wipe_failed", json!({ "error": error })));
                self.wipe_failed();
            }
            (Awaiting::StopWiped { slot }, Event::Wiped(result)) => {
                let secret = self.qualified(slot);
                match result {
                    Ok(()) => self.out.push(log(
                        Level::Info,
                        "secret_wiped",
                        json!({ "secret": secret }),
                    )),
                    Err(error) => {
                        self.wipe_failed();
                        self.out.push(log(
                            Level::Error,
                            "wipe_failed",
                            json!({ "secret": secret, "error": error }),
                        ));
                    }
                }
            }
            // Success where nothing follows from it, or an answer to
            // something else (the shell answers in order; ignore it).
            _ => {}
        }
    }

    fn on_written(
        &mut self,
        slot: usize,
        how: &'static str,
        lease: WrittenLease,
        result: Result<WriteOutcome, String>,
        now: Instant,
    ) {
        match result {
            Ok(outcome) => {
                let Some(state) = self.slots.get(slot) else {
                    return;
                };
                self.out.push(log(
                    Level::Info,
                    "secret_written",
                    json!({
                        "how": how,
                        "secret": qualified(&state.secret),
                        "lease": lease.id,
                        "files": lease.files,
                        "changed": outcome == WriteOutcome::Swapped,
                        "ttl_s": lease.ttl.as_secs(),
                        "expires_at": lease.expires_at,
                        "renew_in_s": state.due.saturating_duration_since(now).as_secs(),
                        "elapsed_ms": self.elapsed_ms(now),
                    }),
                ));
                if outcome == WriteOutcome::Swapped && matches!(self.phase, Phase::Running) {
                    self.out.push(Action::Reload {
                        secret: qualified(&state.secret),
                    });
                }
            }
            Err(error) => {
                let message = format!(
                    "cannot write secret {} (lease {}): {error}",
                    self.qualified(slot),
                    lease.id
                );
                if matches!(self.phase, Phase::Starting { .. }) {
                    // The remaining writes and the readiness go with it.
                    self.todo.clear();
                    self.fail_start(message, now);
                } else {
                    let delay = self.failed(slot, false, None, now);
                    self.out.push(log(
                        Level::Error,
                        "write_failed",
                        json!({ "error": message, "retry_in_ms": delay.as_millis() as u64 }),
                    ));
                }
            }
        }
    }

    /// A renewal answered (steady state).
    fn on_renewed(
        &mut self,
        index: usize,
        asked_at: Instant,
        result: Result<IssuedLease, BrokerError>,
        now: Instant,
    ) {
        let Some(slot) = self.slots.get_mut(index) else {
            return;
        };
        slot.busy = false;
        let secret = qualified(&slot.secret);
        // Never write one secret's files into another's directory.
        let result = result.and_then(|lease| {
            if lease.secret == slot.secret {
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
                self.todo.push_back(Step::Write {
                    slot: index,
                    lease,
                    how: "renewed",
                });
            }
            Err(error) => {
                let lease = slot.held.as_ref().map(|h| h.id.clone());
                let gone = error.status() == Some(409);
                if gone || error.is_permanent() {
                    // This lease will not renew; ask for a new one, keeping
                    // the current files until they expire.
                    slot.renewable = false;
                }
                let delay = if gone {
                    slot.busy = false;
                    slot.due = now;
                    Duration::ZERO
                } else {
                    self.failed(index, error.is_permanent(), error.retry_after(), now)
                };
                let renewable = self.slots.get(index).is_some_and(|s| s.renewable);
                self.out.push(log(
                    Level::Warn,
                    if gone { "lease_gone" } else { "renew_failed" },
                    json!({
                        "secret": secret,
                        "lease": lease,
                        "status": error.status(),
                        "error": error.to_string(),
                        "retry_in_ms": delay.as_millis() as u64,
                        "next": if renewable { "renew" } else { "issue" },
                    }),
                ));
            }
        }
    }

    /// An issue answered (steady state: one slot whose lease ran out or
    /// would not renew).
    fn on_reissued(
        &mut self,
        slots: &[usize],
        asked_at: Instant,
        result: Result<Vec<IssuedLease>, BrokerError>,
        now: Instant,
    ) {
        let slots: Vec<usize> = slots
            .iter()
            .copied()
            .filter(|&i| i < self.slots.len())
            .collect();
        for &index in &slots {
            self.slots[index].busy = false;
        }
        match result {
            Ok(leases) => {
                for (&index, lease) in slots.iter().zip(leases) {
                    self.hold(index, &lease, asked_at);
                    self.todo.push_back(Step::Write {
                        slot: index,
                        lease,
                        how: "issued",
                    });
                }
                self.todo.push_back(Step::UpdateReady);
            }
            Err(error) => {
                for &index in &slots {
                    let delay = self.failed(index, error.is_permanent(), error.retry_after(), now);
                    self.out.push(log(
                        Level::Warn,
                        "issue_failed",
                        json!({
                            "secret": self.qualified(index),
                            "status": error.status(),
                            "error": error.to_string(),
                            "retry_in_ms": delay.as_millis() as u64,
                        }),
                    ));
                }
            }
        }
    }

    /// Runs queued steps until none is left or one waits for an answer.
    fn work(&mut self, now: Instant) {
        while self.awaiting.is_none() {
            let Some(step) = self.todo.pop_front() else {
                return;
            };
            self.step(step, now);
        }
    }

    fn step(&mut self, step: Step, now: Instant) {
        match step {
            Step::ClearStaleReady => self.ask(Action::ClearReady, Awaiting::StaleReadyCleared),
            Step::IssueAll => {
                let all: Vec<usize> = (0..self.slots.len()).collect();
                self.issue(all);
            }
            Step::Write { slot, lease, how } => {
                let Some(state) = self.slots.get(slot) else {
                    return;
                };
                let secret = state.secret.name.clone();
                let written = WrittenLease {
                    files: lease.files.iter().map(|f| f.name.clone()).collect(),
                    id: lease.id,
                    ttl: lease.ttl,
                    expires_at: lease.expires_at,
                };
                self.ask(
                    Action::Write {
                        secret,
                        files: lease.files,
                    },
                    Awaiting::Written {
                        slot,
                        how,
                        lease: written,
                    },
                );
            }
            Step::UpdateReady => self.update_ready(),
            Step::Started => {
                self.phase = Phase::Running;
                if self.mode == Mode::Run {
                    self.todo.push_back(Step::Watch { now });
                }
                if self.mode == Mode::Init {
                    self.out.push(log(
                        Level::Info,
                        "init_done",
                        json!({ "note": "nothing is renewed, revoked or wiped after init; the leases expire" }),
                    ));
                    self.exit(ExitCode::SUCCESS);
                }
            }
            Step::ActOnDue { now: at } => {
                self.todo.push_front(Step::Watch { now: at });
                for slot in (0..self.slots.len()).rev() {
                    self.todo.push_front(Step::Due { slot, now: at });
                }
            }
            Step::Watch { now: at } => self.watch_if_due(at),
            Step::Due { slot, now: at } => {
                let expired = self.slots[slot]
                    .held
                    .as_ref()
                    .is_some_and(|held| held.expires <= at);
                if expired {
                    // Its call is considered once the wipe is answered.
                    self.todo.push_front(Step::Call { slot, now: at });
                    self.expire(slot);
                } else {
                    self.call_if_due(slot, at);
                }
            }
            Step::Call { slot, now: at } => self.call_if_due(slot, at),
            Step::LoseRevoked { slot } => {
                if self.slots.get(slot).is_some_and(|s| s.held.is_some()) {
                    self.lose(
                        slot,
                        Level::Warn,
                        "secret_revoked",
                        "the broker revoked this lease; files removed, asking for a new lease",
                    );
                }
            }
            Step::Revoke {
                lease_id,
                secret,
                timeout,
            } => self.ask(
                Action::Revoke {
                    lease_id: lease_id.clone(),
                    secret,
                    timeout,
                },
                Awaiting::RevokeStarted { lease_id },
            ),
            Step::StopClearReady => {
                self.ready = false;
                self.ask(Action::ClearReady, Awaiting::StopReadyCleared);
            }
            Step::StopWipe { slot } => {
                let Some(state) = self.slots.get_mut(slot) else {
                    return;
                };
                state.held = None;
                let secret = state.secret.name.clone();
                self.ask(Action::Wipe { secret }, Awaiting::StopWiped { slot });
            }
            Step::StopWait => {
                if let Phase::Stopping { pending, .. } = &self.phase
                    && pending.is_empty()
                {
                    self.finish_stop(now);
                }
            }
        }
    }

    /// Emits an answered action and waits for its answer.
    fn ask(&mut self, action: Action, awaiting: Awaiting) {
        self.out.push(action);
        self.awaiting = Some(awaiting);
    }

    fn issue(&mut self, slots: Vec<usize>) {
        let secrets = slots
            .iter()
            .map(|&i| self.slots[i].secret.clone())
            .collect();
        for &index in &slots {
            self.slots[index].busy = true;
        }
        self.ask(
            Action::Issue {
                slots: slots.clone(),
                secrets,
            },
            Awaiting::IssueStarted { slots },
        );
    }

    /// A lease ran out unrenewed: its files go, and the pod is not ready.
    /// (The readiness update follows the wipe's answer.)
    fn expire(&mut self, index: usize) {
        self.lose(
            index,
            Level::Error,
            "secret_expired",
            "not renewed in time; files removed, asking for a new lease",
        );
    }

    /// A held lease is lost (`event` says how): its files go, and the pod
    /// is not ready until a new one is written.
    fn lose(&mut self, index: usize, level: Level, event: &'static str, note: &str) {
        let slot = &mut self.slots[index];
        let lease = slot.held.take().map(|held| held.id);
        slot.renewable = false;
        let secret = qualified(&slot.secret);
        let name = slot.secret.name.clone();
        self.out.push(log(
            level,
            event,
            json!({
                "secret": secret,
                "lease": lease,
                "note": note,
            }),
        ));
        self.todo.push_front(Step::UpdateReady);
        self.ask(
            Action::Wipe { secret: name },
            Awaiting::ExpiredWiped { slot: index },
        );
    }

    /// Starts a revocation watch of the held leases if running, none is
    /// under way and one is due.
    fn watch_if_due(&mut self, now: Instant) {
        if self.mode != Mode::Run
            || !matches!(self.phase, Phase::Running)
            || self.watch.busy
            || self.watch.due > now
        {
            return;
        }
        let lease_ids: Vec<String> = self
            .slots
            .iter()
            .filter_map(|slot| slot.held.as_ref().map(|held| held.id.clone()))
            .collect();
        if lease_ids.is_empty() {
            // Nothing to watch; the next lease written starts one.
            return;
        }
        self.watch.busy = true;
        self.ask(Action::Watch { lease_ids }, Awaiting::WatchStarted);
    }

    /// A watch answered: wipe every secret the broker took away (a new
    /// lease is asked for at once, refused while a Revocation stands),
    /// then watch again.
    fn on_watched(&mut self, result: Result<Vec<SecretRef>, BrokerError>, now: Instant) {
        self.watch.busy = false;
        match result {
            Ok(revoked) => {
                self.watch.failures = 0;
                self.watch.due = now;
                let lost: Vec<usize> = (0..self.slots.len())
                    .filter(|&i| {
                        self.slots[i].held.is_some() && revoked.contains(&self.slots[i].secret)
                    })
                    .collect();
                for index in lost.into_iter().rev() {
                    self.slots[index].due = now;
                    self.todo.push_front(Step::Call { slot: index, now });
                    // Each wipe is answered before the next loss is handled.
                    self.todo.push_front(Step::LoseRevoked { slot: index });
                }
            }
            Err(error) => self.watch_failed(Some(&error), now),
        }
    }

    /// Backs the watch off after a failure (the renewals go on as before).
    fn watch_failed(&mut self, error: Option<&BrokerError>, now: Instant) {
        // A broker without the watch (an older version) is asked rarely.
        let cap = if error.and_then(BrokerError::status) == Some(404) {
            REFUSED_RETRY_CAP
        } else {
            RETRY_CAP
        };
        let jitter = (self.jitter)();
        let delay = schedule::retry_delay(
            self.watch.failures,
            cap,
            jitter,
            error.and_then(BrokerError::retry_after),
        );
        self.watch.failures = self.watch.failures.saturating_add(1);
        self.watch.due = schedule::later(now, delay);
        self.out.push(log(
            Level::Warn,
            "watch_failed",
            json!({
                "status": error.and_then(BrokerError::status),
                "error": error.map_or_else(|| "cannot start a thread for the watch".to_owned(), ToString::to_string),
                "retry_in_ms": delay.as_millis() as u64,
                "note": "revocations reach this pod at its next renewal until a watch succeeds",
            }),
        ));
    }

    /// Starts a slot's renewal or issue if it is due and idle.
    fn call_if_due(&mut self, index: usize, now: Instant) {
        let slot = &self.slots[index];
        if slot.busy || slot.due > now {
            return;
        }
        match (&slot.held, slot.renewable) {
            (Some(held), true) => {
                let lease_id = held.id.clone();
                self.slots[index].busy = true;
                self.ask(
                    Action::Renew {
                        slot: index,
                        lease_id,
                    },
                    Awaiting::RenewStarted { slot: index },
                );
            }
            _ => self.issue(vec![index]),
        }
    }

    /// Creates the readiness marker once every secret is held, removes it
    /// as soon as one is not.
    fn update_ready(&mut self) {
        let all_held = self.slots.iter().all(|slot| slot.held.is_some());
        if all_held && !self.ready {
            let secrets = self.slots.iter().map(|s| qualified(&s.secret)).collect();
            self.ask(Action::MarkReady { secrets }, Awaiting::ReadyMarked);
        } else if !all_held && self.ready {
            self.ready = false;
            self.ask(Action::ClearReady, Awaiting::ReadyCleared);
        }
    }

    /// Records `lease` as held by `slot` and schedules its renewal.
    fn hold(&mut self, index: usize, lease: &IssuedLease, asked_at: Instant) {
        // In [-1, 1), as `random::symmetric`.
        let jitter = (self.jitter)() * 2.0 - 1.0;
        let Some(slot) = self.slots.get_mut(index) else {
            return;
        };
        let delay = schedule::renewal_delay(lease.renew_after, lease.ttl, jitter);
        slot.held = Some(Held {
            id: lease.id.clone(),
            expires: schedule::later(asked_at, lease.ttl),
        });
        slot.due = schedule::later(asked_at, delay);
        slot.failures = 0;
        slot.renewable = true;
    }

    /// Schedules the next try for a slot after a failure.
    fn failed(
        &mut self,
        index: usize,
        permanent: bool,
        retry_after: Option<Duration>,
        now: Instant,
    ) -> Duration {
        let jitter = (self.jitter)();
        let Some(slot) = self.slots.get_mut(index) else {
            return Duration::ZERO;
        };
        let cap = if permanent {
            REFUSED_RETRY_CAP
        } else {
            RETRY_CAP
        };
        let delay = schedule::retry_delay(slot.failures, cap, jitter, retry_after);
        slot.failures = slot.failures.saturating_add(1);
        slot.busy = false;
        slot.due = schedule::later(now, delay);
        delay
    }

    /// Start-up failed: say why; when running, revoke what is held and
    /// wipe before exiting 1.
    fn fail_start(&mut self, message: String, now: Instant) {
        self.out.push(log(
            Level::Error,
            "start_failed",
            json!({ "error": message }),
        ));
        match self.mode {
            Mode::Run => self.stop(now, AfterStop::Fail),
            Mode::Init => self.exit(ExitCode::FAILURE),
        }
    }

    /// Pod end: revoke every held lease (bounded), wipe every secret, exit.
    fn shut_down(&mut self, signal: Signal, now: Instant) {
        self.out.push(log(
            Level::Info,
            "shutting_down",
            json!({ "signal": signal.as_str() }),
        ));
        self.stop(now, AfterStop::Report);
    }

    /// Revokes held leases while wiping every secret and the readiness
    /// marker, then waits for the revocations at most the revoke deadline.
    fn stop(&mut self, now: Instant, after: AfterStop) {
        self.todo.clear();
        self.phase = Phase::Stopping {
            deadline: now + self.deadlines.revoke,
            pending: Vec::new(),
            wiped: true,
            after,
        };
        for slot in &self.slots {
            if let Some(held) = &slot.held {
                self.todo.push_back(Step::Revoke {
                    lease_id: held.id.clone(),
                    secret: qualified(&slot.secret),
                    timeout: self.deadlines.revoke,
                });
            }
        }
        self.todo.push_back(Step::StopClearReady);
        for slot in 0..self.slots.len() {
            self.todo.push_back(Step::StopWipe { slot });
        }
        self.todo.push_back(Step::StopWait);
    }

    fn wipe_failed(&mut self) {
        if let Phase::Stopping { wiped, .. } = &mut self.phase {
            *wiped = false;
        }
    }

    /// Every revocation answered or the deadline passed: exit.
    fn finish_stop(&mut self, now: Instant) {
        let Phase::Stopping { wiped, after, .. } = self.phase else {
            return;
        };
        match after {
            AfterStop::Report => {
                self.out.push(log(
                    Level::Info,
                    "stopped",
                    json!({
                        "wiped": wiped,
                        "uptime_s": now.saturating_duration_since(self.started).as_secs(),
                    }),
                ));
                self.exit(if wiped {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                });
            }
            AfterStop::Fail => self.exit(ExitCode::FAILURE),
        }
    }

    fn exit(&mut self, code: ExitCode) {
        self.todo.clear();
        self.phase = Phase::Done;
        self.out.push(Action::Exit(code));
    }

    /// The next moment something is due: a renewal, a retry, an expiry or
    /// a watch to start again.
    fn next_due(&self) -> Option<Instant> {
        let watch = (self.mode == Mode::Run
            && !self.watch.busy
            && self.slots.iter().any(|slot| slot.held.is_some()))
        .then_some(self.watch.due);
        self.slots
            .iter()
            .flat_map(|slot| {
                let due = (!slot.busy).then_some(slot.due);
                let expiry = slot.held.as_ref().map(|held| held.expires);
                due.into_iter().chain(expiry)
            })
            .chain(watch)
            .min()
    }

    fn qualified(&self, index: usize) -> String {
        self.slots
            .get(index)
            .map(|slot| qualified(&slot.secret))
            .unwrap_or_default()
    }

    fn elapsed_ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.started).as_millis() as u64
    }
}

/// Why start-up gave up at its deadline.
fn no_leases(startup: Duration, last_error: &str) -> String {
    format!("no leases within {}s: {last_error}", startup.as_secs())
}

/// `namespace/name`.
pub fn qualified(secret: &SecretRef) -> String {
    format!("{}/{}", secret.namespace, secret.name)
}

fn log(level: Level, event: &'static str, fields: Value) -> Action {
    Action::Log {
        level,
        event,
        fields,
    }
}

/// The log line for a revocation's answer.
fn revoked_log(lease_id: String, secret: String, result: Result<(), BrokerError>) -> Action {
    match result {
        Ok(()) => log(
            Level::Info,
            "revoked",
            json!({ "lease": lease_id, "secret": secret }),
        ),
        // Already expired or revoked: nothing left to do.
        Err(error) if matches!(error.status(), Some(404 | 409)) => log(
            Level::Info,
            "revoked",
            json!({ "lease": lease_id, "secret": secret, "note": error.to_string() }),
        ),
        Err(error) => log(
            Level::Warn,
            "revoke_failed",
            json!({ "lease": lease_id, "secret": secret, "error": error.to_string() }),
        ),
    }
}

#[cfg(test)]
mod tests {
    use zeroize::Zeroizing;

    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    /// Jitter in the middle: renewals exactly at `renew_after`, retries at
    /// three quarters of the exponential step.
    fn middle() -> f64 {
        0.5
    }

    fn secret(name: &str) -> SecretRef {
        SecretRef {
            namespace: "shop".into(),
            name: name.into(),
        }
    }

    fn lease(id: &str, name: &str, ttl: u64, renew_after: u64) -> IssuedLease {
        IssuedLease {
            id: id.into(),
            secret: secret(name),
            files: vec![SecretFile {
                name: "password".into(),
                content: Zeroizing::new(b"hunter2".to_vec()),
            }],
            ttl: S(ttl),
            renew_after: S(renew_after),
            expires_at: "2030-01-01T00:15:00Z".into(),
        }
    }

    fn unavailable(status: u16, retry_after: Option<Duration>) -> BrokerError {
        BrokerError::Unavailable {
            action: "issue leases".into(),
            status,
            message: "try later".into(),
            retry_after,
        }
    }

    fn refused(status: u16) -> BrokerError {
        BrokerError::Refused {
            action: "renew lease".into(),
            status,
            message: "no".into(),
        }
    }

    /// The transient retry delay after `failures` failures, as the
    /// machine must compute it with [`middle`] jitter.
    fn retry(failures: u32) -> Duration {
        schedule::retry_delay(failures, RETRY_CAP, middle(), None)
    }

    /// A machine, a clock the test moves, and a volume and thread spawner
    /// that answer as told.
    struct World {
        machine: Machine<fn() -> f64>,
        t0: Instant,
        now: Instant,
        fail_write: Option<&'static str>,
        fail_wipe: Option<&'static str>,
        fail_spawn: bool,
        fail_mark: bool,
        logs: Vec<(&'static str, Value)>,
        exit: Option<ExitCode>,
    }

    impl World {
        fn new(names: &[&str]) -> Self {
            Self::with(names, Deadlines::default(), middle)
        }

        fn with(names: &[&str], deadlines: Deadlines, jitter: fn() -> f64) -> Self {
            let secrets: Vec<SecretRef> = names.iter().map(|n| secret(n)).collect();
            let t0 = Instant::now();
            Self {
                machine: Machine::new(&secrets, deadlines, t0, jitter),
                t0,
                now: t0,
                fail_write: None,
                fail_wipe: None,
                fail_spawn: false,
                fail_mark: false,
                logs: Vec::new(),
                exit: None,
            }
        }

        /// Moves the clock to `t0 + millis`.
        fn at_ms(&mut self, millis: u64) -> &mut Self {
            self.now = self.t0 + Duration::from_millis(millis);
            self
        }

        fn at(&mut self, secs: u64) -> &mut Self {
            self.at_ms(secs * 1000)
        }

        /// Feeds `event` now, answering answered actions as a shell would;
        /// every action, described.
        fn feed(&mut self, event: Event) -> Vec<String> {
            let mut seen = Vec::new();
            let mut next = Some(event);
            while let Some(event) = next.take() {
                let actions = self.machine.handle(event, self.now);
                let count = actions.len();
                for (i, action) in actions.into_iter().enumerate() {
                    assert!(
                        !action.is_answered() || i + 1 == count,
                        "answered action {action:?} is not last"
                    );
                    assert!(self.exit.is_none(), "{action:?} after exit");
                    seen.push(describe(&action));
                    if action.is_answered() {
                        next = Some(self.answer(&action));
                    }
                    match action {
                        Action::Log { event, fields, .. } => self.logs.push((event, fields)),
                        Action::Exit(code) => self.exit = Some(code),
                        _ => {}
                    }
                }
            }
            seen
        }

        fn answer(&self, action: &Action) -> Event {
            let fails = |name: &Option<&str>, secret: &str| {
                if *name == Some(secret) {
                    Err("disk full".to_string())
                } else {
                    Ok(())
                }
            };
            match action {
                Action::Issue { .. }
                | Action::Renew { .. }
                | Action::Revoke { .. }
                | Action::Watch { .. } => Event::CallStarted(!self.fail_spawn),
                Action::Write { secret, .. } => {
                    Event::Written(fails(&self.fail_write, secret).map(|()| WriteOutcome::Swapped))
                }
                Action::MarkReady { .. } => Event::ReadyMarked(if self.fail_mark {
                    Err("read-only".into())
                } else {
                    Ok(())
                }),
                Action::ClearReady => Event::ReadyCleared(Ok(())),
                Action::Wipe { secret } => Event::Wiped(fails(&self.fail_wipe, secret)),
                Action::Log { .. } | Action::Reload { .. } | Action::Exit(_) => {
                    unreachable!("not answered")
                }
            }
        }

        fn start(&mut self) -> Vec<String> {
            self.feed(Event::Start(Mode::Run))
        }

        fn issued(
            &mut self,
            slots: &[usize],
            result: Result<Vec<IssuedLease>, BrokerError>,
        ) -> Vec<String> {
            let asked_at = self.now;
            self.feed(Event::Issued {
                slots: slots.to_vec(),
                asked_at,
                result,
            })
        }

        fn renewed(
            &mut self,
            slot: usize,
            result: Result<IssuedLease, BrokerError>,
        ) -> Vec<String> {
            let asked_at = self.now;
            self.feed(Event::Renewed {
                slot,
                asked_at,
                result,
            })
        }

        fn revoked(&mut self, lease_id: &str, result: Result<(), BrokerError>) -> Vec<String> {
            self.feed(Event::Revoked {
                lease_id: lease_id.into(),
                secret: "shop/x".into(),
                result,
            })
        }

        fn tick(&mut self) -> Vec<String> {
            self.feed(Event::Tick)
        }

        /// Started with `a` (L1: ttl 900 s, renew after 600 s) and `b`
        /// (L2: ttl 450 s, renew after 300 s) issued at t0 + 1 s.
        fn running() -> Self {
            let mut world = Self::new(&["a", "b"]);
            world.start();
            world.at(1).issued(
                &[0, 1],
                Ok(vec![lease("L1", "a", 900, 600), lease("L2", "b", 450, 300)]),
            );
            assert!(world.machine.is_ready());
            world.logs.clear();
            world
        }

        /// The fields of the last log line named `event`.
        fn log(&self, event: &str) -> &Value {
            &self
                .logs
                .iter()
                .rev()
                .find(|(name, _)| *name == event)
                .unwrap_or_else(|| panic!("no {event} in {:?}", self.logs))
                .1
        }

        fn wake_in(&self) -> Option<Duration> {
            self.machine.wake_at().map(|at| at - self.t0)
        }
    }

    fn describe(action: &Action) -> String {
        match action {
            Action::Log { event, .. } => format!("log {event}"),
            Action::Issue { secrets, .. } => format!(
                "issue {}",
                secrets
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            Action::Renew { lease_id, .. } => format!("renew {lease_id}"),
            Action::Revoke { lease_id, .. } => format!("revoke {lease_id}"),
            Action::Watch { lease_ids } => format!("watch {}", lease_ids.join(",")),
            Action::Write { secret, .. } => format!("write {secret}"),
            Action::MarkReady { .. } => "mark_ready".into(),
            Action::ClearReady => "clear_ready".into(),
            Action::Wipe { secret } => format!("wipe {secret}"),
            Action::Reload { secret } => format!("reload {secret}"),
            Action::Exit(code) if *code == ExitCode::SUCCESS => "exit 0".into(),
            Action::Exit(_) => "exit 1".into(),
        }
    }

    // Start-up.

    #[test]
    fn run_clears_a_stale_marker_then_issues_every_secret_in_one_call() {
        let mut world = World::new(&["a", "b"]);
        assert_eq!(world.machine.wake_at(), None);
        assert_eq!(world.start(), ["clear_ready", "issue a,b"]);
        assert_eq!(world.wake_in(), Some(S(120)), "the startup deadline");
    }

    #[test]
    fn once_every_lease_is_issued_each_is_written_then_the_pod_is_ready() {
        let mut world = World::new(&["a", "b"]);
        world.start();
        let actions = world.at_ms(500).issued(
            &[0, 1],
            Ok(vec![lease("L1", "a", 900, 600), lease("L2", "b", 450, 300)]),
        );
        assert_eq!(
            actions,
            [
                "write a",
                "log secret_written",
                "write b",
                "log secret_written",
                "mark_ready",
                "log ready",
                "watch L1,L2"
            ],
            "once running, the leases are watched for revocation"
        );
        assert!(world.machine.is_ready());
        let written = world.log("secret_written");
        assert_eq!(written["how"], "issued");
        assert_eq!(written["secret"], "shop/b");
        assert_eq!(written["lease"], "L2");
        assert_eq!(written["files"], json!(["password"]));
        assert_eq!(written["changed"], true);
        assert_eq!(written["ttl_s"], 450);
        assert_eq!(written["renew_in_s"], 300);
        assert_eq!(written["elapsed_ms"], 500);
        assert_eq!(world.log("ready")["elapsed_ms"], 500);
        assert_eq!(
            world.wake_in(),
            Some(S(300) + Duration::from_millis(500)),
            "b's renewal, timed from when it was asked"
        );
    }

    #[test]
    fn a_lease_with_absurd_durations_is_timed_within_a_week_without_overflow() {
        let mut world = World::new(&["a"]);
        world.start();
        let absurd = IssuedLease {
            ttl: Duration::MAX,
            renew_after: Duration::MAX,
            ..lease("L1", "a", 1, 1)
        };
        world.at(1).issued(&[0], Ok(vec![absurd]));
        assert!(world.machine.is_ready());
        let wake = world.wake_in().unwrap();
        assert!(wake <= schedule::MAX_LEASE_TTL + S(1), "{wake:?}");
        // A Retry-After from another world is bounded by the retry cap too.
        world
            .at(2)
            .renewed(0, Err(unavailable(503, Some(Duration::MAX))));
        assert_eq!(world.log("renew_failed")["retry_in_ms"], 30_000);
    }

    #[test]
    fn init_writes_every_secret_once_then_exits_zero() {
        let mut world = World::new(&["a"]);
        assert_eq!(world.feed(Event::Start(Mode::Init)), ["issue a"]);
        assert_eq!(
            world.issued(&[0], Ok(vec![lease("L1", "a", 900, 600)])),
            [
                "write a",
                "log secret_written",
                "mark_ready",
                "log ready",
                "log init_done",
                "exit 0"
            ]
        );
    }

    #[test]
    fn init_failing_exits_one_without_revoking_or_wiping() {
        let mut world = World::new(&["a"]);
        world.feed(Event::Start(Mode::Init));
        assert_eq!(
            world.issued(&[0], Err(refused(400))),
            ["log start_failed", "exit 1"]
        );
    }

    #[test]
    fn a_transient_start_failure_is_retried_with_growing_backoff() {
        let mut world = World::new(&["a", "b"]);
        world.start();
        assert_eq!(
            world.issued(&[0, 1], Err(unavailable(503, None))),
            ["log issue_failed"]
        );
        let failed = world.log("issue_failed");
        assert_eq!(failed["status"], 503);
        assert_eq!(failed["retry_in_ms"], retry(0).as_millis() as u64);
        assert_eq!(world.wake_in(), Some(retry(0)));

        world.at_ms(retry(0).as_millis() as u64 - 1);
        assert!(world.tick().is_empty(), "not before the backoff ends");
        world.now = world.t0 + retry(0);
        assert_eq!(world.tick(), ["issue a,b"]);
        assert_eq!(world.wake_in(), Some(S(120)));

        world.issued(&[0, 1], Err(unavailable(503, None)));
        assert!(retry(1) > retry(0));
        assert_eq!(
            world.log("issue_failed")["retry_in_ms"],
            retry(1).as_millis() as u64
        );
    }

    #[test]
    fn the_brokers_retry_after_is_a_floor_at_start() {
        let mut world = World::new(&["a"]);
        world.start();
        world.issued(&[0], Err(unavailable(429, Some(S(7)))));
        assert_eq!(world.log("issue_failed")["retry_in_ms"], 7000);
        assert_eq!(world.wake_in(), Some(S(7)));
    }

    #[test]
    fn refusals_a_new_pod_may_meet_are_retried_at_start() {
        for status in [401, 403, 404] {
            let mut world = World::new(&["a"]);
            world.start();
            assert_eq!(
                world.issued(&[0], Err(refused(status))),
                ["log issue_failed"],
                "{status}"
            );
        }
    }

    #[test]
    fn a_permanent_refusal_at_start_fails_at_once_wipes_and_exits_one() {
        let mut world = World::new(&["a", "b"]);
        world.start();
        assert_eq!(
            world.issued(&[0, 1], Err(refused(400))),
            [
                "log start_failed",
                "clear_ready",
                "wipe a",
                "log secret_wiped",
                "wipe b",
                "log secret_wiped",
                "exit 1"
            ]
        );
        assert!(
            world.log("start_failed")["error"]
                .as_str()
                .unwrap()
                .contains("broker refused")
        );
    }

    #[test]
    fn no_answer_by_the_startup_deadline_fails_start() {
        let mut world = World::new(&["a"]);
        world.start();
        assert!(world.at(119).tick().is_empty());
        assert_eq!(
            world.at(120).tick(),
            [
                "log start_failed",
                "clear_ready",
                "wipe a",
                "log secret_wiped",
                "exit 1"
            ]
        );
        assert_eq!(
            world.log("start_failed")["error"],
            "no leases within 120s: no answer yet"
        );
    }

    #[test]
    fn start_gives_up_at_once_when_the_next_try_would_miss_the_deadline() {
        let deadlines = Deadlines {
            startup: S(5),
            ..Deadlines::default()
        };
        let mut world = World::with(&["a"], deadlines, middle);
        world.start();
        let actions = world.at(1).issued(&[0], Err(unavailable(503, Some(S(10)))));
        assert_eq!(actions[..2], ["log issue_failed", "log start_failed"]);
        assert_eq!(actions.last().unwrap(), "exit 1");
        let error = world.log("start_failed")["error"].as_str().unwrap();
        assert!(
            error.starts_with("no leases within 5s: broker could not"),
            "{error}"
        );
    }

    #[test]
    fn a_failed_write_at_start_revokes_every_issued_lease_then_exits_one() {
        let mut world = World::new(&["a", "b"]);
        world.fail_write = Some("a");
        world.start();
        let actions = world.at(1).issued(
            &[0, 1],
            Ok(vec![lease("L1", "a", 900, 600), lease("L2", "b", 900, 600)]),
        );
        assert_eq!(
            actions,
            [
                "write a",
                "log start_failed",
                "revoke L1",
                "revoke L2",
                "clear_ready",
                "wipe a",
                "log secret_wiped",
                "wipe b",
                "log secret_wiped"
            ],
            "b is never written"
        );
        assert_eq!(
            world.log("start_failed")["error"],
            "cannot write secret shop/a (lease L1): disk full"
        );
        assert_eq!(world.wake_in(), Some(S(6)), "the revoke deadline");
        assert_eq!(world.revoked("L1", Ok(())), ["log revoked"]);
        assert_eq!(world.revoked("L2", Ok(())), ["log revoked", "exit 1"]);
    }

    #[test]
    fn a_call_thread_that_cannot_start_fails_start() {
        let mut world = World::new(&["a"]);
        world.fail_spawn = true;
        assert_eq!(
            world.start(),
            [
                "clear_ready",
                "issue a",
                "log start_failed",
                "clear_ready",
                "wipe a",
                "log secret_wiped",
                "exit 1"
            ]
        );
        assert_eq!(
            world.log("start_failed")["error"],
            "cannot start a thread for the broker call"
        );
    }

    #[test]
    fn a_signal_during_start_wipes_and_exits_zero() {
        let mut world = World::new(&["a"]);
        world.start();
        assert_eq!(
            world.at(2).feed(Event::Signal(Signal::SIGTERM)),
            [
                "log shutting_down",
                "clear_ready",
                "wipe a",
                "log secret_wiped",
                "log stopped",
                "exit 0"
            ]
        );
        assert_eq!(world.log("shutting_down")["signal"], "SIGTERM");
        assert_eq!(world.log("stopped")["uptime_s"], 2);
    }

    #[test]
    fn a_ready_marker_that_cannot_be_written_leaves_the_pod_unready() {
        let mut world = World::new(&["a"]);
        world.fail_mark = true;
        world.start();
        let actions = world.issued(&[0], Ok(vec![lease("L1", "a", 900, 600)]));
        assert_eq!(
            actions[2..],
            ["mark_ready", "log ready_marker_failed", "watch L1"]
        );
        assert!(!world.machine.is_ready());
    }

    // Steady state.

    #[test]
    fn each_lease_is_renewed_on_its_own_schedule() {
        let mut world = World::running();
        assert_eq!(world.wake_in(), Some(S(301)), "b first");
        assert!(world.at(300).tick().is_empty());
        assert_eq!(world.at(301).tick(), ["renew L2"]);
        assert_eq!(world.wake_in(), Some(S(451)), "b's expiry while it renews");
        assert_eq!(
            world.at(302).renewed(1, Ok(lease("L2", "b", 450, 300))),
            ["write b", "log secret_written", "reload shop/b"],
            "the app is told once the new files are in place"
        );
        assert_eq!(world.log("secret_written")["how"], "renewed");
        assert_eq!(world.log("secret_written")["renew_in_s"], 300);
        assert_eq!(world.wake_in(), Some(S(601)), "a's turn");
        assert_eq!(world.at(601).tick(), ["renew L1"]);
    }

    #[test]
    fn renewal_time_takes_its_jitter_from_the_given_source() {
        fn highest() -> f64 {
            1.0
        }
        let mut world = World::with(&["a"], Deadlines::default(), highest);
        world.start();
        world.issued(&[0], Ok(vec![lease("L1", "a", 900, 600)]));
        assert_eq!(world.wake_in(), Some(S(660)), "renew_after + 10%");
    }

    #[test]
    fn a_failed_renewal_backs_off_and_renews_the_same_lease_again() {
        let mut world = World::running();
        world.at(301).tick();
        assert_eq!(
            world.renewed(1, Err(unavailable(503, None))),
            ["log renew_failed"]
        );
        let failed = world.log("renew_failed");
        assert_eq!(failed["lease"], "L2");
        assert_eq!(failed["next"], "renew");
        assert_eq!(failed["retry_in_ms"], retry(0).as_millis() as u64);
        assert_eq!(world.wake_in(), Some(S(301) + retry(0)));
        assert!(world.machine.is_ready(), "the files stay until expiry");

        world.now += retry(0);
        assert_eq!(world.tick(), ["renew L2"]);
        world.renewed(1, Err(unavailable(503, None)));
        assert_eq!(
            world.log("renew_failed")["retry_in_ms"],
            retry(1).as_millis() as u64
        );
    }

    #[test]
    fn one_secrets_failures_back_off_without_moving_the_others() {
        let mut world = World::running();
        world.at(301).tick();
        world.renewed(1, Err(unavailable(503, None)));
        world.now += retry(0);
        assert_eq!(world.tick(), ["renew L2"], "only b retries");
        world.renewed(1, Ok(lease("L2b", "b", 450, 300)));
        assert_eq!(world.at(601).tick(), ["renew L1"], "a keeps its time");
    }

    #[test]
    fn a_refused_renewal_asks_for_a_new_lease_backing_off_up_to_five_minutes() {
        let mut world = World::new(&["a"]);
        world.start();
        world.issued(&[0], Ok(vec![lease("L1", "a", 86_400, 600)]));
        world.at(600).tick();
        assert_eq!(world.renewed(0, Err(refused(403))), ["log renew_failed"]);
        assert_eq!(world.log("renew_failed")["next"], "issue");
        let refused_retry = |n| schedule::retry_delay(n, REFUSED_RETRY_CAP, middle(), None);
        assert_eq!(
            world.log("renew_failed")["retry_in_ms"],
            refused_retry(0).as_millis() as u64
        );
        let mut delays = Vec::new();
        for failures in 1..=12 {
            world.now = world.machine.wake_at().unwrap();
            assert_eq!(world.tick(), ["issue a"]);
            world.issued(&[0], Err(refused(403)));
            let delay = world.log("issue_failed")["retry_in_ms"].as_u64().unwrap();
            assert_eq!(delay, refused_retry(failures).as_millis() as u64);
            delays.push(delay);
        }
        assert!(delays.iter().any(|&d| d > RETRY_CAP.as_millis() as u64));
        assert!(
            delays
                .iter()
                .all(|&d| d <= REFUSED_RETRY_CAP.as_millis() as u64)
        );
        assert!(world.machine.is_ready(), "the old files stay until expiry");
    }

    #[test]
    fn a_lease_the_broker_no_longer_has_is_replaced_at_once() {
        let mut world = World::running();
        world.at(301).tick();
        assert_eq!(
            world.renewed(1, Err(refused(409))),
            ["log lease_gone", "issue b"]
        );
        assert_eq!(world.log("lease_gone")["retry_in_ms"], 0);
        assert_eq!(world.log("lease_gone")["next"], "issue");
        assert_eq!(
            world.issued(&[1], Ok(vec![lease("L3", "b", 450, 300)])),
            ["write b", "log secret_written", "reload shop/b"],
            "still ready: no marker change"
        );
    }

    #[test]
    fn a_renewal_answered_for_another_secret_is_not_written() {
        let mut world = World::running();
        world.at(301).tick();
        assert_eq!(
            world.renewed(1, Ok(lease("L9", "a", 450, 300))),
            ["log renew_failed"]
        );
        let failed = world.log("renew_failed");
        assert_eq!(failed["next"], "issue");
        assert!(
            failed["error"]
                .as_str()
                .unwrap()
                .contains("lease L9 is for shop/a, not shop/b")
        );
    }

    #[test]
    fn a_renewed_lease_that_cannot_be_written_is_renewed_again_after_backoff() {
        let mut world = World::running();
        world.at(301).tick();
        world.fail_write = Some("b");
        assert_eq!(
            world.renewed(1, Ok(lease("L2b", "b", 450, 300))),
            ["write b", "log write_failed"]
        );
        let failed = world.log("write_failed");
        assert_eq!(
            failed["error"],
            "cannot write secret shop/b (lease L2b): disk full"
        );
        assert_eq!(failed["retry_in_ms"], retry(0).as_millis() as u64);
        world.fail_write = None;
        world.now += retry(0);
        assert_eq!(world.tick(), ["renew L2b"]);
    }

    #[test]
    fn a_steady_state_issue_failure_backs_off_for_that_secret() {
        let mut world = World::running();
        world.at(301).tick();
        world.renewed(1, Err(refused(409)));
        assert_eq!(
            world.issued(&[1], Err(unavailable(503, None))),
            ["log issue_failed"]
        );
        let failed = world.log("issue_failed");
        assert_eq!(failed["secret"], "shop/b");
        assert_eq!(failed["retry_in_ms"], retry(0).as_millis() as u64);
        world.now += retry(0);
        assert_eq!(world.tick(), ["issue b"]);
    }

    #[test]
    fn a_call_thread_that_cannot_start_is_retried_after_backoff() {
        let mut world = World::running();
        world.fail_spawn = true;
        assert_eq!(world.at(301).tick(), ["renew L2"]);
        assert_eq!(world.wake_in(), Some(S(301) + retry(0)));
        world.fail_spawn = false;
        world.now += retry(0);
        assert_eq!(world.tick(), ["renew L2"]);
    }

    #[test]
    fn an_expired_lease_is_wiped_and_the_pod_unready_until_a_new_one_is_written() {
        let mut world = World::running();
        // b's renewal hangs past its expiry.
        world.at(301).tick();
        assert_eq!(
            world.at(451).tick(),
            [
                "log secret_expired",
                "wipe b",
                "clear_ready",
                "log not_ready"
            ],
            "no new call while one is under way"
        );
        assert_eq!(world.log("secret_expired")["lease"], "L2");
        assert!(!world.machine.is_ready());

        assert_eq!(
            world.at(455).renewed(1, Err(unavailable(503, None))),
            ["log renew_failed"]
        );
        assert_eq!(world.log("renew_failed")["next"], "issue");
        world.now += retry(0);
        assert_eq!(world.tick(), ["issue b"]);
        assert_eq!(
            world.issued(&[1], Ok(vec![lease("L3", "b", 450, 300)])),
            [
                "write b",
                "log secret_written",
                "reload shop/b",
                "mark_ready",
                "log ready"
            ]
        );
        assert!(world.machine.is_ready());
    }

    // Revocation watch.

    #[test]
    fn a_revoked_secret_is_wiped_at_once_the_pod_unready_and_a_new_lease_asked_for() {
        let mut world = World::running();
        assert_eq!(
            world.at(10).feed(Event::Watched {
                result: Ok(vec![secret("b"), secret("not-held")]),
            }),
            [
                "log secret_revoked",
                "wipe b",
                "clear_ready",
                "log not_ready",
                "issue b",
                "watch L1"
            ],
            "long before b's renewal (300 s) or expiry (450 s)"
        );
        assert_eq!(world.log("secret_revoked")["lease"], "L2");
        assert!(!world.machine.is_ready());
        // Refused while the Revocation stands: backs off, files stay gone.
        assert_eq!(
            world.at(11).issued(&[1], Err(refused(403))),
            ["log issue_failed"]
        );
        assert!(!world.machine.is_ready());
    }

    #[test]
    fn a_watch_that_ends_without_revocation_is_made_again_at_once() {
        let mut world = World::running();
        assert_eq!(
            world.at(120).feed(Event::Watched { result: Ok(vec![]) }),
            ["watch L1,L2"]
        );
        assert!(world.machine.is_ready());
    }

    #[test]
    fn a_failed_watch_backs_off_and_renewals_go_on() {
        let mut world = World::running();
        assert_eq!(
            world.at(5).feed(Event::Watched {
                result: Err(unavailable(503, None)),
            }),
            ["log watch_failed"]
        );
        assert!(
            world.machine.is_ready(),
            "a failed watch takes nothing away"
        );
        world.now += retry(0);
        assert_eq!(world.tick(), ["watch L1,L2"]);
    }

    #[test]
    fn an_expiry_whose_wipe_fails_is_logged_and_a_new_lease_asked_for() {
        let mut world = World::running();
        world.fail_wipe = Some("b");
        world.at(301).tick();
        world.renewed(1, Err(refused(409)));
        // The issue hangs; b expires.
        assert_eq!(
            world.at(451).tick(),
            [
                "log secret_expired",
                "wipe b",
                "log wipe_failed",
                "clear_ready",
                "log not_ready"
            ]
        );
    }

    // Shutdown.

    #[test]
    fn sigterm_revokes_every_held_lease_wipes_everything_then_exits_zero() {
        let mut world = World::running();
        assert_eq!(
            world.at(10).feed(Event::Signal(Signal::SIGTERM)),
            [
                "log shutting_down",
                "revoke L1",
                "revoke L2",
                "clear_ready",
                "wipe a",
                "log secret_wiped",
                "wipe b",
                "log secret_wiped"
            ],
            "revocations start before the wipe, which does not wait for them"
        );
        assert!(!world.machine.is_ready());
        assert_eq!(world.wake_in(), Some(S(15)), "the revoke deadline");
        assert_eq!(world.revoked("L2", Ok(())), ["log revoked"]);
        assert_eq!(
            world.at(11).revoked("L1", Err(refused(404))),
            ["log revoked", "log stopped", "exit 0"],
            "already gone counts as revoked"
        );
        assert_eq!(world.log("stopped")["wiped"], true);
        assert_eq!(world.log("stopped")["uptime_s"], 11);
        assert_eq!(world.exit, Some(ExitCode::SUCCESS));
    }

    #[test]
    fn a_failed_revocation_is_logged_and_does_not_fail_the_exit() {
        let mut world = World::new(&["a"]);
        world.start();
        world.issued(&[0], Ok(vec![lease("L1", "a", 900, 600)]));
        world.feed(Event::Signal(Signal::SIGINT));
        assert_eq!(
            world.revoked("L1", Err(unavailable(503, None))),
            ["log revoke_failed", "log stopped", "exit 0"]
        );
    }

    #[test]
    fn revocations_unanswered_by_the_revoke_deadline_are_left_to_expire() {
        let mut world = World::running();
        world.at(10).feed(Event::Signal(Signal::SIGTERM));
        assert!(world.at_ms(14_999).tick().is_empty());
        assert_eq!(
            world.at(15).tick(),
            ["log revoke_timed_out", "log stopped", "exit 0"]
        );
        assert_eq!(world.log("revoke_timed_out")["leases"], json!(["L1", "L2"]));
    }

    #[test]
    fn a_failed_wipe_at_shutdown_exits_one() {
        let mut world = World::running();
        world.fail_wipe = Some("a");
        let actions = world.feed(Event::Signal(Signal::SIGTERM));
        assert_eq!(
            actions[4..],
            ["wipe a", "log wipe_failed", "wipe b", "log secret_wiped"]
        );
        world.revoked("L1", Ok(()));
        world.revoked("L2", Ok(()));
        assert_eq!(world.log("stopped")["wiped"], false);
        assert_eq!(world.exit, Some(ExitCode::FAILURE));
    }

    #[test]
    fn a_renewal_answered_after_sigterm_is_ignored() {
        let mut world = World::running();
        world.at(301).tick();
        world.feed(Event::Signal(Signal::SIGTERM));
        assert!(
            world.renewed(1, Ok(lease("L2b", "b", 450, 300))).is_empty(),
            "nothing written once stopping"
        );
    }

    #[test]
    fn a_lease_issued_after_sigterm_is_revoked_not_written() {
        let mut world = World::running();
        world.at(301).tick();
        world.renewed(1, Err(refused(409)));
        world.at(302).feed(Event::Signal(Signal::SIGTERM));
        assert_eq!(
            world
                .at(304)
                .issued(&[1], Ok(vec![lease("L3", "b", 450, 300)])),
            ["revoke L3"]
        );
        world.revoked("L1", Ok(()));
        world.revoked("L2", Ok(()));
        assert_eq!(
            world.revoked("L3", Ok(())),
            ["log revoked", "log stopped", "exit 0"]
        );
    }

    #[test]
    fn nothing_happens_after_exit() {
        let mut world = World::new(&["a"]);
        world.start();
        world.feed(Event::Signal(Signal::SIGTERM));
        assert!(world.exit.is_some());
        world.exit = None;
        assert!(
            world
                .issued(&[0], Ok(vec![lease("L1", "a", 900, 600)]))
                .is_empty()
        );
        assert!(world.renewed(0, Err(refused(409))).is_empty());
        assert!(world.revoked("L1", Ok(())).is_empty());
        assert!(world.at(1000).tick().is_empty());
        assert!(world.feed(Event::Signal(Signal::SIGTERM)).is_empty());
        assert_eq!(world.machine.wake_at(), None);
    }
}
