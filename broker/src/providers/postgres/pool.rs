//! A few admin connections per database, handed out one caller at a time.
//!
//! Each database has a pool of its own (a semaphore of `size` permits and
//! the idle connections), so acquiring a connection for one database never
//! waits on another. A connection is tagged with the digest of the
//! connection string it was opened with: once the stored string changes
//! (an admin rotation), idle connections of the old one are closed at the
//! next acquire and busy ones when they come back, so every pooled
//! connection soon uses the current credential.
//!
//! Opening a connection is the caller's (the same connect path for every
//! one: `.next` fallback, superuser check). A failure is remembered for
//! [`NEGATIVE_CACHE`]: a caller that would have to connect is refused at
//! once with the same error instead of waiting for a timeout of its own.
//! When other connections are open, it waits for one of them instead, and
//! the pool stays at the size the database allowed (a server at its
//! `max_connections`) until the failure is forgotten.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::ProviderError;

/// Admin connections per database unless `--postgres-admin-connections`
/// says otherwise (Vault's default too).
pub const DEFAULT_ADMIN_CONNECTIONS: usize = 4;

/// The most `--postgres-admin-connections` allows.
pub const MAX_ADMIN_CONNECTIONS: usize = 32;

/// How long a failed connection is remembered: callers that would have to
/// connect are refused at once with the same error until then.
pub(super) const NEGATIVE_CACHE: Duration = Duration::from_secs(10);

/// What the pool needs to know of a connection.
pub(super) trait Health {
    /// Whether the connection can no longer be used.
    fn is_closed(&self) -> bool;
}

impl Health for tokio_postgres::Client {
    fn is_closed(&self) -> bool {
        tokio_postgres::Client::is_closed(self)
    }
}

/// A connection and the digest of the connection string it was opened with.
struct Entry<C> {
    digest: [u8; 32],
    connection: C,
}

/// A connection failure, remembered.
struct Failed {
    digest: [u8; 32],
    at: Instant,
    error: ProviderError,
}

#[derive(Default)]
struct State<C> {
    idle: Vec<Entry<C>>,
    /// Connections open: idle, or lent to a caller.
    open: usize,
    /// The digest of the connection string last asked for.
    digest: Option<[u8; 32]>,
    failed: Option<Failed>,
    /// Permits taken out of the semaphore because the database refused a
    /// further connection, and since when.
    withheld: usize,
    withheld_at: Option<Instant>,
}

/// What an acquirer holding a permit does next.
enum Next<C> {
    /// Use this idle connection.
    Use(Entry<C>),
    /// Open a new one.
    Connect,
    /// Connecting failed lately: refuse with this.
    Refuse(ProviderError),
}

impl<C: Health> State<C> {
    /// Closes idle connections of another connection string or closed,
    /// then takes an idle one, or says whether to connect or refuse.
    fn next(&mut self, digest: [u8; 32], now: Instant) -> Next<C> {
        self.digest = Some(digest);
        let before = self.idle.len();
        self.idle
            .retain(|entry| entry.digest == digest && !entry.connection.is_closed());
        self.open -= before - self.idle.len();
        if let Some(entry) = self.idle.pop() {
            return Next::Use(entry);
        }
        match &self.failed {
            Some(failed)
                if failed.digest == digest && now.duration_since(failed.at) < NEGATIVE_CACHE =>
            {
                Next::Refuse(remembered(&failed.error, now.duration_since(failed.at)))
            }
            _ => Next::Connect,
        }
    }

    /// Takes back a lent connection, keeping it only if still usable.
    fn give_back(&mut self, entry: Entry<C>) {
        if Some(entry.digest) == self.digest && !entry.connection.is_closed() {
            self.idle.push(entry);
        } else {
            self.open -= 1;
        }
    }
}

/// The admin connections of one database.
pub(super) struct Pool<C> {
    size: usize,
    permits: Arc<Semaphore>,
    state: Mutex<State<C>>,
}

/// A connection lent by a [`Pool`]; it goes back when dropped.
pub(super) struct Pooled<C: Health> {
    entry: Option<Entry<C>>,
    pool: Arc<Pool<C>>,
    // Released after the connection is back (fields drop after `drop`).
    _permit: OwnedSemaphorePermit,
}

impl<C: Health> std::ops::Deref for Pooled<C> {
    type Target = C;

    fn deref(&self) -> &C {
        // Present from construction until drop.
        match &self.entry {
            Some(entry) => &entry.connection,
            None => unreachable!("a pooled connection is present until dropped"),
        }
    }
}

impl<C: Health> Drop for Pooled<C> {
    fn drop(&mut self) {
        if let Some(entry) = self.entry.take() {
            self.pool.lock().give_back(entry);
        }
    }
}

impl<C: Health> Pool<C> {
    /// A pool of at most `size` connections (at least one).
    pub(super) fn new(size: usize) -> Arc<Self> {
        let size = size.max(1);
        Arc::new(Self {
            size,
            permits: Arc::new(Semaphore::new(size)),
            state: Mutex::new(State {
                idle: Vec::new(),
                open: 0,
                digest: None,
                failed: None,
                withheld: 0,
                withheld_at: None,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State<C>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many connections are open (idle or lent).
    #[cfg(test)]
    fn open(&self) -> usize {
        self.lock().open
    }

    /// A connection opened with the connection string of `digest`: an idle
    /// one, or one `connect` opens when fewer than the pool's size are
    /// open. Waits at most `wait` for a connection to come free, then
    /// returns `busy`.
    pub(super) async fn acquire<F, Fut>(
        self: &Arc<Self>,
        digest: [u8; 32],
        wait: Duration,
        connect: F,
        busy: impl Fn(usize) -> ProviderError,
    ) -> Result<Pooled<C>, ProviderError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<C, ProviderError>>,
    {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            self.restore_withheld(Instant::now());
            let permit =
                tokio::time::timeout_at(deadline, Arc::clone(&self.permits).acquire_owned())
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .ok_or_else(|| busy(self.size))?;
            let next = self.lock().next(digest, Instant::now());
            let error = match next {
                Next::Use(entry) => return Ok(self.lend(entry, permit)),
                Next::Refuse(error) => error,
                Next::Connect => match connect().await {
                    Ok(connection) => {
                        let mut state = self.lock();
                        state.open += 1;
                        state.failed = None;
                        drop(state);
                        return Ok(self.lend(Entry { digest, connection }, permit));
                    }
                    Err(error) => {
                        self.lock().failed = Some(Failed {
                            digest,
                            at: Instant::now(),
                            error: error.clone(),
                        });
                        error
                    }
                },
            };
            let mut state = self.lock();
            if state.open == 0 {
                return Err(error);
            }
            // Others are open: wait for one of them, one permit fewer
            // until the failure is forgotten. At least one permit stays
            // per open connection, so this never waits on nothing.
            permit.forget();
            state.withheld += 1;
            state.withheld_at = Some(Instant::now());
        }
    }

    fn lend(self: &Arc<Self>, entry: Entry<C>, permit: OwnedSemaphorePermit) -> Pooled<C> {
        Pooled {
            entry: Some(entry),
            pool: Arc::clone(self),
            _permit: permit,
        }
    }

    /// Gives back the permits withheld after a refused connection once the
    /// failure is no longer remembered, so the pool tries to grow again.
    fn restore_withheld(&self, now: Instant) {
        let mut state = self.lock();
        let due = state
            .withheld_at
            .is_some_and(|at| now.duration_since(at) >= NEGATIVE_CACHE);
        if state.withheld > 0 && due {
            self.permits.add_permits(state.withheld);
            state.withheld = 0;
            state.withheld_at = None;
        }
    }
}

/// A remembered connection failure, saying so.
pub(super) fn remembered(error: &ProviderError, ago: Duration) -> ProviderError {
    let message = format!(
        "{error} ({}s ago; the next attempt is after {}s)",
        ago.as_secs(),
        NEGATIVE_CACHE.saturating_sub(ago).as_secs().max(1)
    );
    match error {
        ProviderError::NotFound(_) => ProviderError::NotFound(message),
        ProviderError::Invalid(_) => ProviderError::Invalid(message),
        ProviderError::Gone(_) => ProviderError::Gone(message),
        ProviderError::Refused(_) => ProviderError::Refused(message),
        ProviderError::Unavailable(_) => ProviderError::Unavailable(message),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use super::*;

    /// A connection the test closes by hand.
    struct Plain(Arc<AtomicBool>);

    impl Health for Plain {
        fn is_closed(&self) -> bool {
            self.0.load(Ordering::SeqCst)
        }
    }

    const A: [u8; 32] = [1; 32];
    const B: [u8; 32] = [2; 32];
    const WAIT: Duration = Duration::from_secs(5);

    fn busy(size: usize) -> ProviderError {
        ProviderError::Unavailable(format!("all {size} busy"))
    }

    /// A connect that counts its calls and hands out `Plain`s.
    fn opener(
        calls: &Arc<AtomicUsize>,
        closed: &Arc<AtomicBool>,
    ) -> impl Fn() -> std::future::Ready<Result<Plain, ProviderError>> {
        let (calls, closed) = (Arc::clone(calls), Arc::clone(closed));
        move || {
            calls.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Ok(Plain(Arc::clone(&closed))))
        }
    }

    #[tokio::test]
    async fn connections_are_reused_and_never_more_than_the_size_are_open() {
        let pool = Pool::new(2);
        let (calls, closed) = (Arc::default(), Arc::default());
        let first = pool
            .acquire(A, WAIT, opener(&calls, &closed), busy)
            .await
            .unwrap();
        let second = pool
            .acquire(A, WAIT, opener(&calls, &closed), busy)
            .await
            .unwrap();
        assert_eq!(pool.open(), 2);
        // A third waits for one to come back; with none, it is told so.
        let third = pool
            .acquire(A, Duration::from_millis(50), opener(&calls, &closed), busy)
            .await;
        assert!(matches!(third, Err(ProviderError::Unavailable(m)) if m == "all 2 busy"));
        drop(first);
        let _third = pool
            .acquire(A, WAIT, opener(&calls, &closed), busy)
            .await
            .unwrap();
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "the returned one is reused"
        );
        assert_eq!(pool.open(), 2);
        drop(second);
    }

    #[tokio::test]
    async fn a_new_connection_string_replaces_idle_and_returning_connections() {
        let pool = Pool::new(3);
        let (calls, closed) = (Arc::default(), Arc::default());
        let lent = pool
            .acquire(A, WAIT, opener(&calls, &closed), busy)
            .await
            .unwrap();
        drop(
            pool.acquire(A, WAIT, opener(&calls, &closed), busy)
                .await
                .unwrap(),
        );
        assert_eq!(pool.open(), 2);
        // Rotated: the idle one of A is closed, a new one opened for B.
        let rotated = pool
            .acquire(B, WAIT, opener(&calls, &closed), busy)
            .await
            .unwrap();
        assert_eq!(pool.open(), 2, "one of A still lent, one of B");
        drop(lent);
        assert_eq!(pool.open(), 1, "A's comes back and is closed");
        drop(rotated);
        drop(
            pool.acquire(B, WAIT, opener(&calls, &closed), busy)
                .await
                .unwrap(),
        );
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(pool.open(), 1);
    }

    #[tokio::test]
    async fn closed_connections_are_replaced() {
        let pool = Pool::new(2);
        let (calls, closed) = (Arc::default(), Arc::new(AtomicBool::new(false)));
        drop(
            pool.acquire(A, WAIT, opener(&calls, &closed), busy)
                .await
                .unwrap(),
        );
        closed.store(true, Ordering::SeqCst);
        let fresh = Arc::new(AtomicBool::new(false));
        drop(
            pool.acquire(A, WAIT, opener(&calls, &fresh), busy)
                .await
                .unwrap(),
        );
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(pool.open(), 1);
    }

    #[tokio::test]
    async fn a_failure_is_remembered_and_waits_for_open_connections_instead() {
        let pool: Arc<Pool<Plain>> = Pool::new(2);
        let attempts = Arc::new(AtomicUsize::new(0));
        let failing = {
            let attempts = Arc::clone(&attempts);
            move || {
                attempts.fetch_add(1, Ordering::SeqCst);
                std::future::ready(Err(ProviderError::Unavailable("too many clients".into())))
            }
        };
        // Nothing open: refused, then refused at once from memory.
        let error = pool.acquire(A, WAIT, &failing, busy).await.err().unwrap();
        assert_eq!(error.to_string(), "too many clients");
        let again = pool.acquire(A, WAIT, &failing, busy).await.err().unwrap();
        assert!(again.to_string().contains("s ago"), "{again}");
        assert_eq!(attempts.load(Ordering::SeqCst), 1);

        // Another connection string is tried afresh; with one open, a
        // refused second connection makes the caller wait for the first.
        let (calls, closed) = (Arc::default(), Arc::default());
        let lent = pool
            .acquire(B, WAIT, opener(&calls, &closed), busy)
            .await
            .unwrap();
        let waiter = {
            let (pool, failing) = (Arc::clone(&pool), failing.clone());
            tokio::spawn(async move { pool.acquire(B, WAIT, failing, busy).await.is_ok() })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(attempts.load(Ordering::SeqCst), 2);
        drop(lent);
        assert!(waiter.await.unwrap(), "served by the open connection");
        assert_eq!(pool.open(), 1);
    }
}
