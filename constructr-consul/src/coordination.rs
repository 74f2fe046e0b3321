//! `ConsulCoordination`: the [`Coordination`] contract on Consul (sessions, KV locks,
//! transactions, blocking queries).
//!
//! # Layout
//! Everything of one cluster lives under `{prefix}/{cluster}/` (see [`constructr_core::entry`];
//! Consul keys have no leading `/`, so the default prefix is `constructr/`):
//! - `nodes/{base64url(address)}` = `{"address":..,"incarnation":..}`, locked (`?acquire=`)
//!   by the node's own session;
//! - `lock` = the encoded holder, locked by a session with the lock TTL; the lock token is
//!   that session's id (UUIDs are never reused);
//! - `epoch` = the cluster id (16 hex digits), without session; [`Epoch::version`] is its
//!   `ModifyIndex`, and every registration rewrites it with a check-and-set. Its `Flags` hold
//!   the modify index each write replaced: Consul keeps the modify index of a write that
//!   changes neither value nor flags, and the flags make every rewrite a change.
//!
//! Every session is TTL-only (`NodeChecks: []`, so it does not die with the agent's
//! `serfHealth` check) with `Behavior: delete` (its keys vanish with it). Node sessions have
//! a lock delay of 0 s; the lock session's is [`ConsulConfig::lock_delay`].
//!
//! # TTLs and the expiry bound
//! Consul session TTLs are 10 s to 24 h; other TTLs are refused with
//! [`CoordinationError::Invalid`] (check node settings up front with
//! [`validate_settings`](crate::validate_settings)). A TTL is rounded up to whole seconds.
//! **Consul invalidates a session between its TTL and twice its TTL** after the last renewal:
//! the leader's timer runs for 2 × TTL (measured against Consul 1.8: an unrenewed entry
//! vanished 20.0 s after its 10 s session was created), and a leader change restarts every
//! timer. Invalidating is a raft write, so allow a moment more:
//! [`ConsulCoordination::expiry_bound`] is `ttl + 1 s`, i.e. an entry of a node that died
//! disappears at the latest `2 × ttl + 1 s` after its last refresh. With ttl-factor 2 that is
//! about four refresh intervals. The same holds for the bootstrap lock, plus the lock delay.
//! Settings validation (ttl-factor) only guarantees that a live node refreshes within `ttl`;
//! the doubling is the price of Consul's lazy expiry and cannot be configured away.
//!
//! # Fencing
//! The seed registration is one `/v1/txn`: `check-session` and `check-index` on the lock key
//! (still locked by the token's session, unchanged since the read that confirmed the holder),
//! `cas` on the epoch (unchanged since the read that found no nodes), then the epoch and the
//! node key. Consul transactions cannot compare values, so "the epoch names my cluster" is
//! checked by reading the epoch and then `cas`-ing it with the index read (a race retries).
//!
//! # Watching
//! `wait_for_change` is a blocking query on the prefix. For a prefix without any key (and no
//! tombstones) Consul reports the index of the whole KV store, which moves with writes
//! elsewhere; so a listing whose index moved but whose content (keys, modify indexes,
//! sessions) equals the content at the caller's read does not count as a change.
//!
//! # Consul restarts
//! All state lives in Consul (refresh finds the node's session through its key). A Consul
//! **server with a data dir** keeps keys and sessions across a restart and restarts every
//! session timer when it regains leadership, so nodes just renew their sessions again: no
//! re-registration, no re-bootstrap (tested with 9 s of downtime). A **dev agent**
//! (`consul agent -dev`) keeps everything in memory: after its restart the epoch marker and
//! every session are gone, refreshes report `Missing`, and the members register again,
//! the first of them re-creating the epoch marker for their cluster (a member's
//! registration may create a missing marker): the cluster lives on, no re-bootstrap.

use constructr_core::coordination::Result;
use std::collections::VecDeque;
use std::hash::{Hash as _, Hasher as _};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use constructr_core::coordination::{
    AddMode, AddOutcome, Coordination, CoordinationError, Lease, LockOutcome, LockToken, NodeLimit,
    RefreshOutcome, Registry, WaitOutcome,
};
use constructr_core::entry;
use constructr_core::plumbing::{
    Backoff, LockAttempt, SharedLocks, SharedReads, SharedWaits, spawn_background,
};
use constructr_core::{ClusterId, Epoch, NodeId, Scope, Settings, SettingsError};

use crate::client::{ConsulClient, KvEntry, Listing, SessionSpec, TxnOp, TxnOutcome};
use crate::config::{ConsulConfig, check_session_ttl};
use crate::entries::OwnedEntries;
use crate::error::ConsulError;
use crate::joins::{Joins, Pending};

/// How long one blocking query waits at most before it is re-issued.
const BLOCKING_WAIT: Duration = Duration::from_secs(30);
/// Content fingerprints of recent reads kept for `wait_for_change`.
const FINGERPRINTS: usize = 256;

/// The Consul backend. One value serves any number of nodes and clusters; share it through
/// `Arc`.
pub struct ConsulCoordination {
    client: Arc<ConsulClient>,
    lock_delay: Duration,
    /// (scope base, index) → content fingerprint of recent `get_nodes` reads.
    fingerprints: Arc<Fingerprints>,
    entries: Arc<OwnedEntries>,
    waits: SharedWaits,
    joins: Joins,
    reads: SharedReads<Arc<Registry>>,
    locks: SharedLocks,
    /// Where the next bounded read starts handing out entries of the shared listing.
    rotation: AtomicUsize,
}

/// (scope base, index) → content fingerprint of recent `get_nodes` reads.
type Fingerprints = Mutex<VecDeque<(String, u64, u64)>>;

impl std::fmt::Debug for ConsulCoordination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulCoordination")
            .field("lock_delay", &self.lock_delay)
            .finish_non_exhaustive()
    }
}

/// The session TTL in whole seconds for a requested TTL: rounded up.
pub fn session_ttl_secs(ttl: Duration) -> u64 {
    ttl.as_secs()
        .saturating_add(u64::from(ttl.subsec_nanos() > 0))
}

/// A core key (`/prefix/cluster/...`) as a Consul key (no leading `/`).
fn consul_key(key: String) -> String {
    match key.strip_prefix('/') {
        Some(k) => k.to_owned(),
        None => key,
    }
}

struct Keys {
    scope: Scope,
    base: String,
    nodes: String,
    lock: String,
    epoch: String,
}

impl Keys {
    fn of(scope: &Scope) -> Self {
        Self {
            scope: scope.clone(),
            base: consul_key(format!("{}/", scope.base())),
            nodes: consul_key(entry::nodes_prefix(scope)),
            lock: consul_key(entry::lock_key(scope)),
            epoch: consul_key(entry::epoch_key(scope)),
        }
    }

    fn node(&self, address: &str) -> String {
        consul_key(entry::node_key(&self.scope, address))
    }
}

fn fingerprint(entries: &[KvEntry]) -> u64 {
    let mut items: Vec<(&str, u64, Option<&str>)> = entries
        .iter()
        .map(|e| (e.key.as_str(), e.modify_index, e.session.as_deref()))
        .collect();
    items.sort();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    items.hash(&mut h);
    h.finish()
}

impl ConsulCoordination {
    /// How long after its TTL an unrefreshed entry may still be visible: one more TTL
    /// (rounded up to whole seconds; Consul's timer runs for 2 × TTL) plus 1 s for the raft
    /// write that deletes it. See the module docs.
    pub fn expiry_bound(ttl: Duration) -> Duration {
        Duration::from_secs(session_ttl_secs(ttl) + 1)
    }

    /// Creates the backend: validates `config` and reads the TLS files. Connections are
    /// opened on first use (so a node may start before Consul is up; requests fail as
    /// retryable until it is).
    pub fn new(config: &ConsulConfig) -> Result<Self, ConsulError> {
        Ok(Self {
            client: Arc::new(ConsulClient::new(config)?),
            lock_delay: config.lock_delay,
            fingerprints: Arc::new(Mutex::new(VecDeque::with_capacity(FINGERPRINTS))),
            entries: Arc::default(),
            waits: SharedWaits::default(),
            joins: Joins::default(),
            reads: SharedReads::default(),
            locks: SharedLocks::default(),
            rotation: AtomicUsize::new(0),
        })
    }

    /// One consistent listing of `scope`, shared by the calls that arrive while the previous
    /// one is in flight.
    async fn shared_listing(&self, scope: &Scope) -> Result<Arc<Registry>> {
        let keys = Keys::of(scope);
        let client = self.client.clone();
        let fingerprints = self.fingerprints.clone();
        let owned = scope.clone();
        self.reads
            .read(&keys.base, move || {
                let (client, fingerprints, scope) =
                    (client.clone(), fingerprints.clone(), owned.clone());
                async move {
                    let keys = Keys::of(&scope);
                    let listing = client.kv_list(&keys.base, None).await?;
                    remember(
                        &fingerprints,
                        &keys.base,
                        listing.index,
                        fingerprint(&listing.entries),
                    );
                    Ok(Arc::new(decode(&scope, &keys, &listing)))
                }
            })
            .await
    }

    /// Takes (or extends) the lock: a session and an acquire of the lock key with it.
    async fn lock_once(&self, lease: Lease<'_>) -> Result<LockAttempt> {
        let Lease {
            scope,
            node: holder,
            ttl,
        } = lease;
        check_session_ttl("lock TTL", ttl)?;
        let keys = Keys::of(scope);
        let value = entry::encode_node(holder);
        // The lock can expire or be taken between the read and the acquire; a few rounds
        // settle it.
        for _ in 0..3 {
            if let Some(current) = self.client.kv_get(&keys.lock).await?
                && let Some(session) = current.session
            {
                if current.value != value {
                    // Named, so that this process's other nodes asking need not ask again.
                    return Ok(LockAttempt::held_by(
                        entry::decode_lock(&current.value).ok(),
                    ));
                }
                // Re-entrant: extend our own lock.
                if self.client.session_renew(&session).await? {
                    return Ok(LockAttempt::acquired(LockToken(session)));
                }
                continue; // expired in between
            }
            let session = self
                .create_session(
                    &format!("constructr lock {scope} by {holder}"),
                    ttl,
                    self.lock_delay,
                )
                .await?;
            match self
                .client
                .kv_acquire(&keys.lock, value.clone(), &session)
                .await
            {
                Ok(true) => return Ok(LockAttempt::acquired(LockToken(session))),
                Ok(false) => {
                    self.destroy_in_background(session);
                    // Taken by someone else in between, or Consul's lock delay after the last
                    // holder's session ended: not ours either way.
                    match self.client.kv_get(&keys.lock).await? {
                        Some(KvEntry {
                            session: Some(_),
                            value: v,
                            ..
                        }) if v == value => continue,
                        Some(KvEntry {
                            session: Some(_),
                            value: v,
                            ..
                        }) => return Ok(LockAttempt::held_by(entry::decode_lock(&v).ok())),
                        // Free, but in Consul's lock delay: nobody to name.
                        _ => return Ok(LockAttempt::held_by(None)),
                    }
                }
                Err(e) => {
                    self.destroy_in_background(session);
                    return Err(e.into());
                }
            }
        }
        Err(CoordinationError::unavailable(
            "the Consul lock key kept changing while being locked",
        ))
    }

    /// Checks that Consul answers, has a leader, knows the ACL token (if one is set) and
    /// answers a consistent read of `scope`'s keys (the same check as
    /// `EtcdCoordination::check`); useful before starting nodes. Missing *write*
    /// permissions show up on the first write (Consul filters what a token may not read, so
    /// the read succeeds without read permission, too).
    pub async fn check(&self, scope: &Scope) -> Result<(), ConsulError> {
        if self.client.leader().await?.is_empty() {
            return Err(ConsulError::Unavailable {
                address: "-".into(),
                detail: "Consul has no cluster leader".into(),
            });
        }
        self.client.token_self().await?;
        self.client
            .kv_list(&Keys::of(scope).base, None)
            .await
            .map(|_| ())
    }

    fn destroy_in_background(&self, session: String) {
        let client = self.client.clone();
        // Without a runtime (a future dropped outside one) the session simply expires.
        spawn_background(async move {
            if let Err(e) = client.session_destroy(&session).await {
                tracing::debug!(error = %e, "could not destroy an unused Consul session");
            }
        });
    }

    async fn create_session(
        &self,
        name: &str,
        ttl: Duration,
        lock_delay: Duration,
    ) -> Result<String, ConsulError> {
        self.client
            .session_create(&SessionSpec {
                name,
                ttl_secs: session_ttl_secs(ttl),
                lock_delay,
            })
            .await
    }

    async fn register(
        &self,
        keys: &Keys,
        node: &NodeId,
        mode: &AddMode,
        session: &str,
    ) -> Result<AddOutcome, ConsulError> {
        let node_key = keys.node(&node.address);
        let node_value = entry::encode_node(node);
        // Replaces another incarnation's entry (one entry per address): deleting first also
        // removes its lock, so `lock` succeeds.
        let write_node = [
            TxnOp::delete(&node_key),
            TxnOp::lock(&node_key, &node_value, session),
        ];
        match mode {
            AddMode::Seed {
                lock,
                cluster,
                expected_epoch_version,
            } => {
                let Some(lock_entry) = self.client.kv_get(&keys.lock).await? else {
                    return Ok(AddOutcome::Refused);
                };
                // The lock is this node's (value) and held by the token's session.
                if lock_entry.session.as_deref() != Some(lock.0.as_str())
                    || lock_entry.value != node_value
                {
                    return Ok(AddOutcome::Refused);
                }
                let holds_lock = [
                    TxnOp::check_session(&keys.lock, &lock.0),
                    TxnOp::check_index(&keys.lock, lock_entry.modify_index),
                ];
                let epoch_value = entry::encode_epoch(*cluster);
                // The first try: nobody registered since the read that found no nodes.
                let mut ops = holds_lock.to_vec();
                let expected = expected_epoch_version.unwrap_or(0);
                ops.push(TxnOp::cas(&keys.epoch, &epoch_value, expected, expected));
                ops.extend(write_node.iter().cloned());
                if self.client.txn(&ops).await? == TxnOutcome::Committed {
                    return Ok(AddOutcome::Added);
                }
                // A retry after a lost reply: the marker already names our cluster.
                let Some(epoch) = self.client.kv_get(&keys.epoch).await? else {
                    return Ok(AddOutcome::Refused);
                };
                if epoch.value != epoch_value {
                    return Ok(AddOutcome::Refused);
                }
                let mut ops = holds_lock.to_vec();
                ops.push(TxnOp::cas(
                    &keys.epoch,
                    &epoch_value,
                    epoch.modify_index,
                    epoch.modify_index,
                ));
                ops.extend(write_node.iter().cloned());
                Ok(match self.client.txn(&ops).await? {
                    TxnOutcome::Committed => AddOutcome::Added,
                    TxnOutcome::Failed { .. } => AddOutcome::Refused,
                })
            }
            AddMode::Join {
                cluster: Some(cluster),
            } => {
                // Written together with the other registrations of this value (`joins`).
                let (reply, answer) = tokio::sync::oneshot::channel();
                self.joins.submit(
                    &self.client,
                    &keys.epoch,
                    entry::encode_epoch(*cluster),
                    Pending {
                        node_key,
                        node_value,
                        session: session.to_owned(),
                        reply,
                    },
                );
                answer.await.unwrap_or_else(|_| {
                    Err(ConsulError::Unavailable {
                        address: "-".into(),
                        detail: "the registration writer stopped".into(),
                    })
                })
            }
            AddMode::Join { cluster: None } => {
                let mut ops = vec![TxnOp::check_not_exists(&keys.epoch)];
                ops.extend(write_node.iter().cloned());
                match self.client.txn(&ops).await? {
                    TxnOutcome::Committed => Ok(AddOutcome::Added),
                    TxnOutcome::Failed { op_index: 0, .. } => Ok(AddOutcome::Refused),
                    TxnOutcome::Failed { what, .. } => Err(ConsulError::Unavailable {
                        address: "-".into(),
                        detail: format!("registration transaction failed: {what}"),
                    }),
                }
            }
        }
    }

    /// This node's entry and its session, if the entry is this incarnation's.
    async fn own_entry(&self, keys: &Keys, node: &NodeId) -> Result<Option<KvEntry>, ConsulError> {
        let key = keys.node(&node.address);
        let Some(e) = self.client.kv_get(&key).await? else {
            return Ok(None);
        };
        let suffix = &key[keys.nodes.len()..];
        Ok(match entry::decode_node(suffix, &e.value) {
            Ok(n) if n == *node => Some(e),
            _ => None,
        })
    }
}

fn decode(scope: &Scope, keys: &Keys, listing: &Listing) -> Registry {
    {
        let mut registry = Registry {
            nodes: Vec::new(),
            epoch: None,
            revision: Some(listing.index),
            lock: None,
        };
        for kv in &listing.entries {
            if let Some(suffix) = kv.key.strip_prefix(keys.nodes.as_str()) {
                match entry::decode_node(suffix, &kv.value) {
                    Ok(n) => registry.nodes.push(n),
                    Err(e) => {
                        tracing::warn!(scope = %scope, key = %kv.key, error = %e, "skipping an undecodable registry entry")
                    }
                }
            } else if kv.key == keys.lock {
                // Held only while a session locks it; unreadable: reported as free.
                if kv.session.is_some() {
                    registry.lock = entry::decode_lock(&kv.value).ok();
                }
            } else if kv.key == keys.epoch {
                match entry::decode_epoch(&kv.value) {
                    Ok(cluster) => {
                        registry.epoch = Some(Epoch {
                            cluster,
                            version: kv.modify_index,
                        })
                    }
                    Err(e) => {
                        // Reported with its version, so a seed can replace it.
                        tracing::warn!(scope = %scope, key = %kv.key, error = %e, "undecodable epoch marker");
                        registry.epoch = Some(Epoch {
                            cluster: ClusterId::UNREADABLE,
                            version: kv.modify_index,
                        });
                    }
                }
            }
        }
        registry
    }
}

fn remember(fingerprints: &Fingerprints, base: &str, index: u64, fp: u64) {
    {
        let mut f = fingerprints.lock().unwrap_or_else(|p| p.into_inner());
        if f.iter().any(|(b, i, _)| b == base && *i == index) {
            return;
        }
        if f.len() >= FINGERPRINTS {
            f.pop_front();
        }
        f.push_back((base.to_owned(), index, fp));
    }
}

fn remembered(fingerprints: &Fingerprints, base: &str, index: u64) -> Option<u64> {
    let f = fingerprints.lock().unwrap_or_else(|p| p.into_inner());
    f.iter()
        .rev()
        .find(|(b, i, _)| b == base && *i == index)
        .map(|(_, _, fp)| *fp)
}

#[async_trait]
impl Coordination for ConsulCoordination {
    /// Consistent reads, session locks with `/v1/txn` fencing, session TTLs, blocking queries.
    fn guarantees(&self) -> constructr_core::coordination::Guarantees {
        constructr_core::coordination::Guarantees::STRONG
    }

    fn check_settings(&self, settings: &Settings) -> Result<(), SettingsError> {
        crate::validate_settings(settings).map_err(|e| SettingsError::Backend {
            backend: "Consul",
            rule: e.to_string(),
        })
    }

    /// One consistent listing of the scope; the nodes of this backend value that read the
    /// same scope at once share it ([`SharedReads`]: a read that starts after each call).
    async fn get_nodes(&self, scope: &Scope) -> Result<Registry> {
        self.shared_listing(scope).await.map(Arc::unwrap_or_clone)
    }

    /// The shared listing of `get_nodes` (Consul's KV listing has no limit), of which each
    /// caller gets `limit` entries from a rotating start: the listing is read once for
    /// all nodes that read at once, and joiners spread over every registered node.
    async fn get_some_nodes(&self, scope: &Scope, limit: NodeLimit) -> Result<Registry> {
        let shared = self.shared_listing(scope).await?;
        Ok(shared.some(limit, self.rotation.fetch_add(1, Ordering::Relaxed)))
    }

    /// One lock request per scope at a time for the nodes of this backend value
    /// ([`SharedLocks`]): the others wait for its outcome, so that nodes that lose the race
    /// create no session and send no acquire.
    async fn lock(&self, lease: Lease<'_>) -> Result<LockOutcome> {
        let key = Keys::of(lease.scope).lock;
        self.locks
            .lock(&key, lease.node, self.lock_once(lease))
            .await
    }

    async fn add_self(&self, lease: Lease<'_>, mode: &AddMode) -> Result<AddOutcome> {
        let Lease { scope, node, ttl } = lease;
        check_session_ttl("entry TTL", ttl)?;
        let keys = Keys::of(scope);
        // Node sessions never have a lock delay: it would keep a restarted node (same
        // address) from registering.
        let session = self
            .create_session(
                &format!("constructr node {node} in {scope}"),
                ttl,
                Duration::ZERO,
            )
            .await?;
        let outcome = self.register(&keys, node, mode, &session).await;
        if matches!(outcome, Ok(AddOutcome::Added)) {
            self.entries.remember(
                &self.client,
                &keys.nodes,
                &keys.node(&node.address),
                session.clone(),
            );
        } else {
            // Refused: the session holds nothing. Failed: whether the write took effect is
            // unknown; ending the session removes it, and the caller retries.
            self.destroy_in_background(session);
        }
        Ok(outcome?)
    }

    /// Renews the session of the node's entry: **one** renewal when this backend value's
    /// watch vouches that the key still holds this incarnation under that session (see
    /// the `entries` module), else a read of the key first.
    async fn refresh(&self, lease: Lease<'_>) -> Result<RefreshOutcome> {
        let Lease { scope, node, ttl } = lease;
        check_session_ttl("entry TTL", ttl)?;
        let keys = Keys::of(scope);
        let key = keys.node(&node.address);
        let trusted = self
            .entries
            .trusted_session(&keys.nodes, &key, &entry::encode_node(node));
        let session = match trusted {
            Some(session) => session,
            None => {
                let Some(KvEntry {
                    session: Some(session),
                    ..
                }) = self.own_entry(&keys, node).await?
                else {
                    // Absent, another incarnation's, or written without a session (never
                    // expires: not ours).
                    self.entries.forget(&key);
                    return Ok(RefreshOutcome::Missing);
                };
                session
            }
        };
        Ok(if self.client.session_renew(&session).await? {
            self.entries
                .remember(&self.client, &keys.nodes, &key, session);
            RefreshOutcome::Refreshed
        } else {
            self.entries.forget(&key);
            RefreshOutcome::Missing
        })
    }

    async fn remove_self(&self, scope: &Scope, node: &NodeId) -> Result<()> {
        let keys = Keys::of(scope);
        self.entries.forget(&keys.node(&node.address));
        let Some(own) = self.own_entry(&keys, node).await? else {
            return Ok(()); // absent, or another incarnation's
        };
        // Delete first (so ending the session sets no lock delay on the key), then end the
        // session, which held nothing else.
        if !self
            .client
            .kv_delete_cas(&own.key, own.modify_index)
            .await?
        {
            return Ok(()); // changed in between: not ours any more
        }
        if let Some(session) = own.session
            && let Err(e) = self.client.session_destroy(&session).await
        {
            tracing::debug!(error = %e, "could not destroy the removed entry's session");
        }
        Ok(())
    }

    /// A blocking query on the scope, shared by the nodes of this backend value that wait on
    /// it ([`SharedWaits`]), so a process holds one blocking query per scope.
    async fn wait_for_change(&self, scope: &Scope, revision: Option<u64>) -> Result<WaitOutcome> {
        let keys = Keys::of(scope);
        let client = self.client.clone();
        let fingerprints = self.fingerprints.clone();
        let base = keys.base.clone();
        // Waiters that read at the same index share one blocking query.
        self.waits
            .wait(
                &format!("{}@{revision:?}", keys.base),
                revision,
                move |after| next_change(client.clone(), fingerprints.clone(), base.clone(), after),
            )
            .await
    }

    fn requests_sent(&self) -> Option<u64> {
        Some(self.client.requests_sent())
    }
}

/// The index of the first change of the content under `base` after index `after` (after
/// now for `None`); `u64::MAX` if Consul's index went backwards (its state was reset:
/// everything may have changed).
async fn next_change(
    client: Arc<ConsulClient>,
    fingerprints: Arc<Fingerprints>,
    base: String,
    after: Option<u64>,
) -> Result<u64> {
    let (mut index, known) = match after {
        Some(r) => (r, remembered(&fingerprints, &base, r)),
        None => {
            let l = client.kv_list(&base, None).await?;
            (l.index, Some(fingerprint(&l.entries)))
        }
    };
    let mut backoff = Backoff::default();
    loop {
        // Consul treats index 0 as "do not block".
        let answer = client
            .kv_list(&base, Some((index.max(1), BLOCKING_WAIT)))
            .await;
        let Some(listing) = backoff.retry(answer, "a Consul blocking query").await? else {
            continue;
        };
        backoff.reset();
        if listing.index < index {
            return Ok(u64::MAX);
        }
        if listing.index > index {
            match known {
                Some(fp) if fp == fingerprint(&listing.entries) => {
                    // Only the index of the whole KV store moved (writes elsewhere).
                    index = listing.index;
                }
                _ => return Ok(listing.index),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use constructr_core::ClusterName;

    #[test]
    fn starting_a_node_checks_consuls_session_ttl_limits() {
        let consul = ConsulCoordination::new(&ConsulConfig::default()).expect("client");
        let mut s = Settings::default();
        assert_eq!(consul.check_settings(&s), Ok(()));
        s.refresh_interval = Duration::from_secs(2); // entry TTL 4 s
        match consul.check_settings(&s) {
            Err(SettingsError::Backend { backend, rule }) => {
                assert_eq!(backend, "Consul");
                assert!(rule.contains("entry TTL"), "{rule}");
            }
            other => panic!("expected a Consul settings error, got {other:?}"),
        }
    }

    #[test]
    fn session_ttl_rounds_up_to_whole_seconds() {
        assert_eq!(session_ttl_secs(Duration::from_secs(10)), 10);
        assert_eq!(session_ttl_secs(Duration::from_millis(10_001)), 11);
        assert_eq!(session_ttl_secs(Duration::from_millis(12_500)), 13);
    }

    #[test]
    fn keys_have_no_leading_slash() {
        let scope = Scope::new("/constructr", ClusterName::new("orders").unwrap()).unwrap();
        let k = Keys::of(&scope);
        assert_eq!(k.base, "constructr/orders/");
        assert_eq!(k.nodes, "constructr/orders/nodes/");
        assert_eq!(k.lock, "constructr/orders/lock");
        assert_eq!(k.epoch, "constructr/orders/epoch");
        assert_eq!(
            format!("/{}", k.node("10.0.0.1:2552")),
            entry::node_key(&scope, "10.0.0.1:2552")
        );
        let root = Scope::new("", ClusterName::new("c").unwrap()).unwrap();
        assert_eq!(Keys::of(&root).base, "c/");
    }

    #[test]
    fn fingerprints_ignore_order_but_see_index_and_session_changes() {
        let e = |k: &str, i: u64, s: Option<&str>| KvEntry {
            key: k.into(),
            value: vec![],
            session: s.map(Into::into),
            modify_index: i,
        };
        let a = [e("a", 1, None), e("b", 2, Some("s"))];
        let b = [e("b", 2, Some("s")), e("a", 1, None)];
        assert_eq!(fingerprint(&a), fingerprint(&b));
        assert_ne!(fingerprint(&a), fingerprint(&[e("a", 1, None)]));
        assert_ne!(
            fingerprint(&a),
            fingerprint(&[e("a", 1, None), e("b", 3, Some("s"))])
        );
        assert_ne!(
            fingerprint(&a),
            fingerprint(&[e("a", 1, None), e("b", 2, None)])
        );
    }

    #[test]
    fn ttls_outside_consuls_range_are_invalid() {
        let c = ConsulCoordination::new(&ConsulConfig::default()).unwrap();
        let scope = Scope::new("/x", ClusterName::new("c").unwrap()).unwrap();
        let node = NodeId::new("n:1", 1);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            for r in [
                c.lock(scope.lease(&node, Duration::from_secs(9)))
                    .await
                    .map(|_| ()),
                c.add_self(
                    scope.lease(&node, Duration::from_secs(3)),
                    &AddMode::Join { cluster: None },
                )
                .await
                .map(|_| ()),
                c.refresh(scope.lease(&node, Duration::from_secs(100_000)))
                    .await
                    .map(|_| ()),
            ] {
                let e = r.unwrap_err();
                assert!(matches!(e, CoordinationError::Invalid { .. }), "{e:?}");
                assert!(e.to_string().contains("between 10s and 24h"), "{e}");
            }
        });
    }
}
