//! The node entries this backend value wrote, watched, so that a refresh is **one** lease
//! keep-alive.
//!
//! A refresh must notice that a node's entry is gone even while its lease lives (an
//! operator deleted the key, or another incarnation overwrote it). Reading the key on every
//! refresh would cost a second request; instead, one watch per nodes prefix (shared by all
//! the nodes of this backend value) records the revision of every change under it. A
//! refresh trusts its remembered lease only when that watch has been running since the
//! entry was last known to be this node's, and has seen no change of the key since; every
//! other refresh reads the key first (the checking path) and remembers it again.
//!
//! Whatever goes wrong with the watch (the stream ends, etcd restarts or compacts past it)
//! only makes refreshes take the checking path until a new watch runs: a mistake here costs
//! a request, never a wrong answer. A change the watch delivers late (milliseconds) is
//! noticed at the following refresh.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use etcd_client::WatchOptions;

use crate::client::EtcdClient;

/// What this node wrote: its value, the lease it wrote it on, and the revision at which
/// the key was known to hold exactly that.
struct Owned {
    value: Vec<u8>,
    lease: i64,
    checked: i64,
}

/// One running watch of a nodes prefix.
struct Watch {
    id: u64,
    /// The first revision it reports.
    from: i64,
    /// Whether etcd confirmed the watch (from then on every change from `from` arrives).
    created: bool,
    task: tokio::task::AbortHandle,
}

#[derive(Default)]
struct State {
    owned: HashMap<String, Owned>,
    /// Per nodes prefix.
    watches: HashMap<String, Watch>,
    /// The latest revision at which each key under a watched prefix changed.
    changed: HashMap<String, i64>,
}

/// See the module docs.
#[derive(Default)]
pub(crate) struct OwnedEntries {
    state: Mutex<State>,
    ids: AtomicU64,
}

impl Drop for OwnedEntries {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        for w in state.watches.values() {
            w.task.abort();
        }
    }
}

impl OwnedEntries {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The lease to keep alive for `key` without reading it, if the watch vouches that the
    /// key still holds `value`.
    pub(crate) fn trusted_lease(&self, prefix: &str, key: &str, value: &[u8]) -> Option<i64> {
        let state = self.state();
        let owned = state.owned.get(key).filter(|o| o.value == value)?;
        let watch = state.watches.get(prefix).filter(|w| w.created)?;
        let unchanged = state.changed.get(key).is_none_or(|&r| r <= owned.checked);
        (watch.from <= owned.checked + 1 && unchanged).then_some(owned.lease)
    }

    /// Remembers that at `revision` the key held `value` on `lease`, and makes sure a watch
    /// of `prefix` runs from the next revision on.
    pub(crate) fn remember(
        self: &Arc<Self>,
        client: &Arc<EtcdClient>,
        prefix: &str,
        key: &str,
        value: Vec<u8>,
        lease: i64,
        revision: i64,
    ) {
        let mut state = self.state();
        if state.changed.get(key).is_some_and(|&r| r > revision) {
            // Changed again since: the next refresh checks.
            state.owned.remove(key);
        } else {
            state.owned.insert(
                key.to_owned(),
                Owned {
                    value,
                    lease,
                    checked: revision,
                },
            );
        }
        if !state.watches.contains_key(prefix) {
            let id = self.ids.fetch_add(1, Ordering::Relaxed);
            let from = revision + 1;
            let task = tokio::spawn(watch(
                client.clone(),
                Arc::downgrade(self),
                prefix.to_owned(),
                from,
                id,
            ))
            .abort_handle();
            state.watches.insert(
                prefix.to_owned(),
                Watch {
                    id,
                    from,
                    created: false,
                    task,
                },
            );
        }
    }

    /// The lease this node's `value` was last written on under `key`, watched or not.
    pub(crate) fn own_lease(&self, key: &str, value: &[u8]) -> Option<i64> {
        let state = self.state();
        state
            .owned
            .get(key)
            .filter(|o| o.value == value)
            .map(|o| o.lease)
    }

    /// Forgets `key` (removed, or found missing).
    pub(crate) fn forget(&self, key: &str) {
        self.state().owned.remove(key);
    }

    fn created(&self, prefix: &str, id: u64) {
        if let Some(w) = self.state().watches.get_mut(prefix).filter(|w| w.id == id) {
            w.created = true;
        }
    }

    fn changed(&self, key: &str, revision: i64) {
        let mut state = self.state();
        let r = state.changed.entry(key.to_owned()).or_insert(revision);
        *r = (*r).max(revision);
    }

    /// The watch `id` of `prefix` ended: until a new one runs, refreshes check.
    fn ended(&self, prefix: &str, id: u64) {
        let mut state = self.state();
        if state.watches.get(prefix).is_some_and(|w| w.id == id) {
            state.watches.remove(prefix);
            state.changed.retain(|k, _| !k.starts_with(prefix));
        }
    }
}

/// Watches `prefix` from revision `from` and records every change, until the stream ends.
async fn watch(
    client: Arc<EtcdClient>,
    entries: Weak<OwnedEntries>,
    prefix: String,
    from: i64,
    id: u64,
) {
    let options = WatchOptions::new().with_prefix().with_start_revision(from);
    match client.watch(&prefix, options).await {
        Ok((_, mut stream)) => loop {
            let Ok(Some(resp)) = stream.message().await else {
                break;
            };
            let Some(entries) = entries.upgrade() else {
                return;
            };
            if resp.canceled() || resp.compact_revision() > 0 {
                break;
            }
            if resp.created() {
                entries.created(&prefix, id);
            }
            for event in resp.events() {
                if let Some(kv) = event.kv()
                    && let Ok(key) = kv.key_str()
                {
                    entries.changed(key, kv.mod_revision());
                }
            }
        },
        Err(e) => {
            tracing::debug!(error = %e, "could not watch the own entries; refreshes read them")
        }
    }
    if let Some(entries) = entries.upgrade() {
        entries.ended(&prefix, id);
    }
}
