//! A ferry component running in-process on a thread of its own, with its
//! own tokio runtime, so it outlives any single test's runtime and stops
//! when dropped.

use std::future::Future;
use std::thread::JoinHandle;

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
