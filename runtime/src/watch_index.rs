//! One driver for every in-memory index ferry keeps from a watch (the
//! Grant index of the webhook and the broker, the broker's pod index): it
//! feeds watch events into the index, collects a relist aside and swaps it
//! in whole, so a lookup never sees a half-filled index, and logs watch
//! errors the same way for every kind while the watcher backs off.

use futures::StreamExt;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

/// An index filled from a watch of `K`s.
pub trait WatchedIndex<K> {
    /// What the index keeps of one object.
    type Entry;

    /// The kind, for logs ("Grant", "pod").
    const KIND: &'static str;

    /// What the index keeps of `object`, or `None` to skip it.
    fn entry(&self, object: K) -> Option<Self::Entry>;

    /// `object` was created or changed.
    fn apply(&self, object: K);

    /// `object` was deleted.
    fn delete(&self, object: K);

    /// A complete list: the index becomes exactly `entries`, and counts as
    /// synced from now on.
    fn replace(&self, entries: Vec<Self::Entry>);
}

/// Keeps `index` in step with the objects `api` and `config` watch, until
/// `shutdown` is cancelled or the watch ends.
pub async fn maintain<K, I>(
    index: &I,
    api: Api<K>,
    config: watcher::Config,
    shutdown: CancellationToken,
) where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
    I: WatchedIndex<K>,
{
    let events = watcher::watcher(api, config).default_backoff();
    let mut events = std::pin::pin!(events);
    // A relist is collected aside and swapped in whole at InitDone.
    let mut relist: Option<Vec<I::Entry>> = None;
    loop {
        let event = tokio::select! {
            () = shutdown.cancelled() => return,
            event = events.next() => event,
        };
        match event {
            None => return,
            Some(Err(error)) => crate::lifecycle::log_watch_error(I::KIND, &error),
            Some(Ok(Event::Init)) => relist = Some(Vec::new()),
            Some(Ok(Event::InitApply(object))) => match relist.as_mut() {
                Some(entries) => entries.extend(index.entry(object)),
                None => index.apply(object),
            },
            Some(Ok(Event::InitDone)) => {
                let entries = relist.take().unwrap_or_default();
                tracing::debug!(kind = I::KIND, objects = entries.len(), "index synced");
                index.replace(entries);
            }
            Some(Ok(Event::Apply(object))) => index.apply(object),
            Some(Ok(Event::Delete(object))) => index.delete(object),
        }
    }
}
