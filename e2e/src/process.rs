//! Child processes that die with the harness.
//!
//! Every process a cluster starts joins one process group whose leader is a
//! tiny shell watchdog. The watchdog holds the read end of a pipe whose write
//! end only this process has; when this process goes away by any route
//! (normal drop, panic, `exit`, a signal, even SIGKILL) the kernel closes the
//! pipe, and the watchdog terminates the whole group and removes the
//! cluster's directory. A lazily started shared cluster in a `static` is
//! never dropped, so this is what cleans up after a test binary.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::HarnessError;

/// Ignores the terminal's signals, waits for EOF on stdin (the harness is
/// gone), then stops the group: SIGTERM, a grace period, cleanup, SIGKILL.
/// `kill ... 0` signals the whole group, this shell included, which ignores
/// TERM and dies with KILL last.
const WATCHDOG: &str = r#"trap '' INT TERM HUP
while read -r _; do :; done
kill -TERM 0 2>/dev/null
sleep 2
[ -n "$1" ] && rm -rf -- "$1"
kill -KILL 0"#;

/// How long processes get to exit after SIGTERM before SIGKILL.
const GRACE: Duration = Duration::from_secs(10);

/// A process group of named children, killed as one.
pub struct ProcessGroup {
    pgid: Pid,
    watchdog: Child,
    // Held only so that it closes when the group is dropped or we die.
    _lifeline: ChildStdin,
    children: Vec<(String, Child)>,
    log_dir: PathBuf,
}

impl ProcessGroup {
    /// Starts the watchdog. `cleanup_dir` is removed by the watchdog if this
    /// process dies without dropping the group.
    pub fn new(log_dir: &Path, cleanup_dir: &Path) -> Result<Self, HarnessError> {
        use std::os::unix::process::CommandExt;
        let mut watchdog = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("ferry-e2e-watchdog")
            .arg(cleanup_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|source| HarnessError::Io {
                what: "starting the watchdog (sh)".into(),
                source,
            })?;
        let lifeline = watchdog
            .stdin
            .take()
            .ok_or_else(|| HarnessError::Process("watchdog has no stdin".into()))?;
        let pgid = Pid::from_raw(
            i32::try_from(watchdog.id())
                .map_err(|_| HarnessError::Process("pid out of range".into()))?,
        );
        Ok(Self {
            pgid,
            watchdog,
            _lifeline: lifeline,
            children: Vec::new(),
            log_dir: log_dir.to_path_buf(),
        })
    }

    /// Spawns `command` in the group with stdout and stderr appended to
    /// `<log_dir>/<name>.log`.
    pub fn spawn(&mut self, name: &str, mut command: Command) -> Result<(), HarnessError> {
        use std::os::unix::process::CommandExt;
        let log = self.log_path(name);
        let out = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|source| HarnessError::Io {
                what: format!("opening {}", log.display()),
                source,
            })?;
        let err = out.try_clone().map_err(|source| HarnessError::Io {
            what: format!("opening {}", log.display()),
            source,
        })?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(self.pgid.as_raw())
            .spawn()
            .map_err(|source| HarnessError::Io {
                what: format!("starting {name} ({:?})", command.get_program()),
                source,
            })?;
        self.children.push((name.to_string(), child));
        Ok(())
    }

    /// Sends `signal` to the named child alone. Not to the group: the
    /// watchdog must stay able to clean up (SIGSTOP would freeze it too).
    pub fn signal(&self, name: &str, signal: Signal) -> Result<(), HarnessError> {
        let child = self
            .children
            .iter()
            .find(|(child, _)| child == name)
            .map(|(_, child)| child)
            .ok_or_else(|| HarnessError::Process(format!("no child named {name}")))?;
        let pid = i32::try_from(child.id())
            .map_err(|_| HarnessError::Process("pid out of range".into()))?;
        nix::sys::signal::kill(Pid::from_raw(pid), signal)
            .map_err(|error| HarnessError::Process(format!("sending {signal} to {name}: {error}")))
    }

    /// The id of the process group (for tests that check nothing is left).
    pub fn id(&self) -> i32 {
        self.pgid.as_raw()
    }

    /// The log file of the named child.
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.log_dir.join(format!("{name}.log"))
    }

    /// The first child that has exited, with its status, if any.
    pub fn exited(&mut self) -> Option<(String, std::process::ExitStatus)> {
        self.children.iter_mut().find_map(|(name, child)| {
            child
                .try_wait()
                .ok()
                .flatten()
                .map(|status| (name.clone(), status))
        })
    }

    /// The last `lines` lines of the named child's log, for error messages.
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_path(name)).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Polls `ready` every 100 ms until it holds, for at most `deadline`;
    /// fails at once, with the tail of its log, when a child exits, and
    /// names `name`'s log tail when the deadline passes.
    pub async fn wait_ready<F, Fut>(
        &mut self,
        name: &str,
        deadline: Duration,
        mut ready: F,
    ) -> Result<(), HarnessError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let until = Instant::now() + deadline;
        loop {
            if let Some((component, status)) = self.exited() {
                return Err(HarnessError::Exited {
                    log_tail: self.log_tail(&component, 20),
                    component,
                    status,
                });
            }
            if ready().await {
                return Ok(());
            }
            if Instant::now() > until {
                return Err(HarnessError::Process(format!(
                    "{name} was not ready after {deadline:?}; its log ends with:\n{}",
                    self.log_tail(name, 20)
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops every child: SIGTERM to the group, a grace period, then SIGKILL.
    fn stop(&mut self) {
        // The watchdog ignores SIGTERM, so this reaches only the children.
        let _ = killpg(self.pgid, Signal::SIGTERM);
        let deadline = Instant::now() + GRACE;
        while Instant::now() < deadline
            && self
                .children
                .iter_mut()
                .any(|(_, c)| matches!(c.try_wait(), Ok(None)))
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = killpg(self.pgid, Signal::SIGKILL);
        for (_, child) in &mut self.children {
            let _ = child.wait();
        }
        let _ = self.watchdog.wait();
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.stop();
    }
}
