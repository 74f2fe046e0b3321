//! The node entries this backend value wrote, watched, so that a refresh is **one** session
//! renewal.
//!
//! A refresh must notice that a node's entry is gone even while its session lives (an
//! operator deleted the key, or another incarnation overwrote it). Reading the key on every
//! refresh would cost a second request; instead, one blocking query per nodes prefix (shared
//! by all the nodes of this backend value) keeps the latest listing of the prefix. A refresh
//! trusts its remembered session only while that query waits on a listing in which the key
//! holds this node's value, locked by that session; every other refresh reads the key first
//! (the checking path) and remembers it again.
//!
//! While entries change, the query re-lists at most once per [`RELIST_PAUSE`] (a forming
//! cluster of 1,000 nodes is not listed 1,000 times), and refreshes in that pause take the
//! checking path. Whatever goes wrong with the query only makes refreshes check: a mistake
//! here costs a request, never a wrong answer. A change the query sees late (milliseconds)
//! is noticed at the following refresh.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::client::{ConsulClient, KvEntry};

/// The shortest time between two listings of the nodes' own entries by the backend's
/// watch of them: after its nodes registered or their entries changed, refreshes read their
/// entry (two requests instead of one) for up to this long.
pub const RELIST_PAUSE: Duration = Duration::from_secs(1);
/// How long one blocking query of the watch waits before it is re-issued.
const WAIT: Duration = Duration::from_secs(300);

/// One watched nodes prefix.
#[derive(Default)]
struct Watch {
    /// Whether a blocking query waits on `listing` (nothing changed since, as far as known).
    waiting: bool,
    /// key → (value, session) of the latest listing.
    listing: HashMap<String, (Vec<u8>, Option<String>)>,
}

#[derive(Default)]
struct State {
    /// key → the session this node's entry was written with.
    owned: HashMap<String, String>,
    /// Per nodes prefix; present while its task runs.
    watches: HashMap<String, Watch>,
}

/// See the module docs.
#[derive(Default)]
pub(crate) struct OwnedEntries {
    state: Mutex<State>,
}

impl OwnedEntries {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The session to renew for `key` without reading it, if the watch vouches that the
    /// key still holds `value` locked by it.
    pub(crate) fn trusted_session(&self, prefix: &str, key: &str, value: &[u8]) -> Option<String> {
        let state = self.state();
        let session = state.owned.get(key)?;
        let watch = state.watches.get(prefix).filter(|w| w.waiting)?;
        let (v, s) = watch.listing.get(key)?;
        (v.as_slice() == value && s.as_deref() == Some(session.as_str())).then(|| session.clone())
    }

    /// Remembers that `key` was written with `session`, and makes sure a watch of `prefix`
    /// runs.
    pub(crate) fn remember(
        self: &Arc<Self>,
        client: &Arc<ConsulClient>,
        prefix: &str,
        key: &str,
        session: String,
    ) {
        let mut state = self.state();
        state.owned.insert(key.to_owned(), session);
        if !state.watches.contains_key(prefix) {
            state.watches.insert(prefix.to_owned(), Watch::default());
            tokio::spawn(watch(
                client.clone(),
                Arc::downgrade(self),
                prefix.to_owned(),
            ));
        }
    }

    /// Forgets `key` (removed, or found missing).
    pub(crate) fn forget(&self, key: &str) {
        self.state().owned.remove(key);
    }

    /// Records a listing; `false` (the watch stops) when no owned key is left under
    /// `prefix`.
    fn listed(&self, prefix: &str, entries: Vec<KvEntry>, waiting: bool) -> bool {
        let mut state = self.state();
        if !state.owned.keys().any(|k| k.starts_with(prefix)) {
            state.watches.remove(prefix);
            return false;
        }
        let w = state.watches.entry(prefix.to_owned()).or_default();
        w.waiting = waiting;
        w.listing = entries
            .into_iter()
            .map(|e| (e.key, (e.value, e.session)))
            .collect();
        true
    }

    fn ended(&self, prefix: &str) {
        self.state().watches.remove(prefix);
    }
}

/// Keeps the latest listing of `prefix` while owned entries live under it.
async fn watch(client: Arc<ConsulClient>, entries: Weak<OwnedEntries>, prefix: String) {
    // `None`: list consistently (not blocking), then wait on that listing's index.
    let mut index: Option<u64> = None;
    loop {
        let answer = client
            .kv_list(&prefix, index.map(|i| (i.max(1), WAIT)))
            .await;
        let Some(owned) = entries.upgrade() else {
            return;
        };
        let listing = match answer {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(error = %e, "the watch of the own entries failed; refreshes read them");
                owned.ended(&prefix);
                return;
            }
        };
        if index.is_some_and(|i| listing.index < i) {
            // Consul's state was reset: refreshes check, and remember anew.
            owned.ended(&prefix);
            return;
        }
        let changed = index.is_some_and(|i| listing.index > i);
        if !owned.listed(&prefix, listing.entries, !changed) {
            return;
        }
        if changed {
            // Entries are changing: pause, then list again and wait on that listing.
            drop(owned);
            tokio::time::sleep(RELIST_PAUSE).await;
            index = None;
        } else {
            index = Some(listing.index);
        }
    }
}
