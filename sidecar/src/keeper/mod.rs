//! Keeps a pod's secrets current for as long as it lives: issue them all at
//! start, renew each on its own schedule, wipe one whose lease runs out,
//! and at SIGTERM/SIGINT revoke, wipe and exit.
//!
//! [`machine`] decides; this module is its shell. One thread feeds the
//! machine events from a channel and carries out its actions; broker calls
//! run on short-lived threads that report back, and a signal thread turns
//! signals into events. So a hanging call never delays an expiry or a
//! shutdown, and no async runtime is linked.

pub mod machine;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::{SigSet, Signal};
use serde_json::json;

use crate::broker_client::BrokerClient;
use crate::config::SidecarConfig;
use crate::log;
use crate::random;
use crate::reload::Reloader;
use crate::volume::SecretVolume;
pub use machine::Deadlines;
use machine::{Action, Event, Machine, Mode, qualified};

/// Stack of a broker-call thread: a TLS handshake and JSON parsing fit
/// easily; only touched pages count towards memory.
const CALL_STACK_BYTES: usize = 512 * 1024;

/// How long the broker holds each revocation watch: one connection per
/// pod stays open, and is made again this often.
const WATCH_WAIT: Duration = Duration::from_secs(120);

/// Stack of a reload thread: a scan of `/proc` or one small request.
const RELOAD_STACK_BYTES: usize = 128 * 1024;

/// The machine, and the I/O it asks for.
pub struct Keeper {
    config: SidecarConfig,
    client: BrokerClient,
    volume: SecretVolume,
    /// Tells the app of new files, when its pod asked.
    reloader: Option<Arc<Reloader>>,
    machine: Machine<fn() -> f64>,
    /// Kept so the channel never closes while the keeper waits on it.
    events: Sender<Event>,
    inbox: Receiver<Event>,
}

impl Keeper {
    /// A keeper for `config`, calling the broker through `client`.
    pub fn new(config: SidecarConfig, client: BrokerClient, deadlines: Deadlines) -> Self {
        let (events, inbox) = mpsc::channel();
        let machine = Machine::new(
            &config.secrets,
            deadlines,
            Instant::now(),
            random::unit_interval as fn() -> f64,
        );
        Self {
            volume: SecretVolume::new(&config.secrets_dir, config.fs_group),
            reloader: Reloader::new(&config.reload).map(Arc::new),
            config,
            client,
            machine,
            events,
            inbox,
        }
    }

    /// `ferry-sidecar run`: start, keep the secrets current until a signal,
    /// then revoke, wipe and exit 0. Non-zero when start-up fails (the
    /// kubelet restarts the container) or the wipe does.
    pub fn run(self) -> ExitCode {
        // A process of another container that shares the pod's process
        // namespace and runs as this user (a signal reload asks for both)
        // must not read this one's memory, environment or root through
        // /proc: it holds the pod's broker token. Not dumpable, those are
        // root's; and no core dump can carry a secret to disk.
        if let Err(error) = nix::sys::prctl::set_dumpable(false) {
            log::error(
                "start_failed",
                json!({ "error": format!("cannot make the process undumpable: {error}") }),
            );
            return ExitCode::FAILURE;
        }
        if let Err(message) = self.listen_for_signals() {
            log::error("start_failed", json!({ "error": message }));
            return ExitCode::FAILURE;
        }
        self.log_start("run");
        self.drive(Mode::Run)
    }

    /// `ferry-sidecar init`: issue and write every secret once, exit 0.
    /// Nothing renews, revokes or wipes them later: the leases expire.
    pub fn init(self) -> ExitCode {
        self.log_start("init");
        self.drive(Mode::Init)
    }

    /// Feeds the machine until it exits: each event, then whatever arrives
    /// on the channel or, at the machine's wake-up time, a tick. Retired
    /// generations are zeroed when their grace period ends, and all of
    /// them at exit.
    fn drive(mut self, mode: Mode) -> ExitCode {
        // Generations a previous run of this container retired get their
        // grace period from now.
        self.zero_retired();
        let mut event = Some(Event::Start(mode));
        loop {
            if let Some(event) = event.take()
                && let Some(code) = self.feed(event)
            {
                return self.zero_all_retired(code);
            }
            if self
                .volume
                .next_zero_at()
                .is_some_and(|at| at <= Instant::now())
            {
                self.zero_retired();
            }
            let wake = self.machine.wake_at();
            let until = wake.into_iter().chain(self.volume.next_zero_at()).min();
            let received = match until {
                Some(at) => self
                    .inbox
                    .recv_timeout(at.saturating_duration_since(Instant::now())),
                None => self
                    .inbox
                    .recv()
                    .map_err(|_| RecvTimeoutError::Disconnected),
            };
            event = match received {
                Ok(event) => Some(event),
                Err(RecvTimeoutError::Timeout) => wake
                    .is_some_and(|at| at <= Instant::now())
                    .then_some(Event::Tick),
                Err(RecvTimeoutError::Disconnected) => return ExitCode::FAILURE,
            };
        }
    }

    /// Zeroes the retired generations whose grace period is over.
    fn zero_retired(&self) {
        if let Err(error) = self.volume.zero_retired(Instant::now()) {
            log::error(
                "retired_wipe_failed",
                json!({ "error": error.to_string(), "note": "tried again later" }),
            );
        }
    }

    /// At exit no reader is left: zeroes every retired generation now. A
    /// failure fails the exit, as a failed wipe does.
    fn zero_all_retired(&self, code: ExitCode) -> ExitCode {
        match self.volume.zero_all_retired() {
            Ok(()) => code,
            Err(error) => {
                log::error("retired_wipe_failed", json!({ "error": error.to_string() }));
                ExitCode::FAILURE
            }
        }
    }

    /// Hands `event` to the machine and carries out its actions, answering
    /// the one that wants an answer at once; the exit code once it says so.
    fn feed(&mut self, event: Event) -> Option<ExitCode> {
        let mut next = Some(event);
        while let Some(event) = next.take() {
            for action in self.machine.handle(event, Instant::now()) {
                if let Action::Exit(code) = action {
                    return Some(code);
                }
                next = self.execute(action);
            }
        }
        None
    }

    /// Carries out one action; its answer, if it has one.
    fn execute(&self, action: Action) -> Option<Event> {
        let answer = match action {
            Action::Log {
                level,
                event,
                fields,
            } => {
                log::emit(level, event, fields);
                return None;
            }
            Action::Exit(_) => return None,
            Action::Reload { secret } => {
                if let Some(reloader) = &self.reloader {
                    let reloader = Arc::clone(reloader);
                    let spawned = thread::Builder::new()
                        .name("reload".into())
                        .stack_size(RELOAD_STACK_BYTES)
                        .spawn(move || reloader.reload(&secret));
                    if let Err(error) = spawned {
                        log::error(
                            "thread_failed",
                            json!({ "call": "reload", "error": error.to_string() }),
                        );
                    }
                }
                return None;
            }
            Action::Issue { slots, secrets } => {
                let client = self.client.clone();
                Event::CallStarted(self.spawn_call("issue", move || {
                    let asked_at = Instant::now();
                    let result = client.issue(&secrets);
                    Event::Issued {
                        slots,
                        asked_at,
                        result,
                    }
                }))
            }
            Action::Renew { slot, lease_id } => {
                let client = self.client.clone();
                Event::CallStarted(self.spawn_call("renew", move || {
                    let asked_at = Instant::now();
                    let result = client.renew(&lease_id);
                    Event::Renewed {
                        slot,
                        asked_at,
                        result,
                    }
                }))
            }
            Action::Watch { lease_ids } => {
                let client = self.client.clone();
                Event::CallStarted(self.spawn_call("watch", move || Event::Watched {
                    result: client.watch(&lease_ids, WATCH_WAIT),
                }))
            }
            Action::Revoke {
                lease_id,
                secret,
                timeout,
            } => {
                let client = self.client.clone();
                Event::CallStarted(self.spawn_call("revoke", move || {
                    let result = client.revoke(&lease_id, timeout);
                    Event::Revoked {
                        lease_id,
                        secret,
                        result,
                    }
                }))
            }
            Action::Write { secret, files } => Event::Written(
                self.volume
                    .write_secret(&secret, &files)
                    .map_err(|e| e.to_string()),
            ),
            Action::MarkReady { secrets } => {
                let detail = json!({
                    "ready_since": log::rfc3339(SystemTime::now()),
                    "secrets": secrets,
                })
                .to_string();
                Event::ReadyMarked(self.volume.mark_ready(&detail).map_err(|e| e.to_string()))
            }
            Action::ClearReady => {
                Event::ReadyCleared(self.volume.clear_ready().map_err(|e| e.to_string()))
            }
            Action::Wipe { secret } => {
                Event::Wiped(self.volume.wipe_secret(&secret).map_err(|e| e.to_string()))
            }
        };
        Some(answer)
    }

    fn log_start(&self, mode: &str) {
        log::info(
            "starting",
            json!({
                "mode": mode,
                "version": env!("CARGO_PKG_VERSION"),
                "secrets": self.config.secrets.iter().map(qualified).collect::<Vec<_>>(),
                "dir": self.config.secrets_dir.display().to_string(),
                "broker": self.config.broker_url.host_header(),
                "pod": format!(
                    "{}/{}",
                    self.config.pod.namespace.as_deref().unwrap_or("?"),
                    self.config.pod.name.as_deref().unwrap_or("?")
                ),
                "pod_uid": self.config.pod.uid,
                "fs_group": self.config.fs_group,
                "reload_signal": self.config.reload.signal,
                "reload_url": self.config.reload.url.as_ref().map(|url| format!("{}:{}{}", url.host, url.port, url.path)),
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

    /// Runs `call` on a thread that reports its event; whether it started.
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
}
