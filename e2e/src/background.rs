//! A ferry component running in-process on a thread of its own, with its
//! own tokio runtime, so it outlives any single test's runtime and stops
//! when dropped; and what starting one takes: loopback listeners, and
//! waiting for its readiness.

use std::future::Future;
use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ferry_runtime::admin::Readiness;

use tokio_util::sync::CancellationToken;

use crate::HarnessError;

/// A future running on its own thread and runtime until stopped.
pub(crate) struct Background {
    shutdown: CancellationToken,
    thread: Option<JoinHandle<()>>,
}

impl Background {
    /// Runs the future `run(shutdown)` makes on a new thread named `name`.
    pub(crate) fn spawn<F, Fut>(name: &str, run: F) -> Result<Self, HarnessError>
    where
        F: FnOnce(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|source| HarnessError::Io {
                what: format!("starting the {name} runtime"),
                source,
            })?;
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || runtime.block_on(run(token)))
            .map_err(|source| HarnessError::Io {
                what: format!("starting the {name} thread"),
                source,
            })?;
        Ok(Self {
            shutdown,
            thread: Some(thread),
        })
    }

    /// Cancels the future's token and waits for the thread to finish.
    pub(crate) fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A non-blocking listener on a free loopback port, for `what`, and its
/// address; hand it to a component's runtime with `TcpListener::from_std`.
pub(crate) fn bind_loopback(
    what: &str,
) -> Result<(std::net::TcpListener, SocketAddr), HarnessError> {
    let io = |source| HarnessError::Io {
        what: format!("binding a loopback port for {what}"),
        source,
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(io)?;
    listener.set_nonblocking(true).map_err(io)?;
    let addr = listener.local_addr().map_err(io)?;
    Ok((listener, addr))
}

/// Blocks until `readiness` is ready, or fails after `timeout` naming
/// `what` and why it is not ready.
pub(crate) fn wait_ready(
    readiness: &Readiness,
    what: &str,
    timeout: Duration,
) -> Result<(), HarnessError> {
    let deadline = Instant::now() + timeout;
    while !readiness.is_ready() {
        if Instant::now() > deadline {
            return Err(HarnessError::Process(format!(
                "{what} not ready after {timeout:?}: {:?}",
                readiness.check()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
