//! `EtcdCoordination`: the [`Coordination`] contract on etcd v3 (leases, transactions, watches).
//!
//! # Layout
//! Everything of one cluster lives under `{prefix}/{cluster}/` (see [`constructr_core::entry`]):
//! - `nodes/{base64url(address)}` = `{"address":..,"incarnation":..}`, each on its own lease;
//! - `lock` = the encoded holder, on a lease with the lock TTL; the lock token is the key's
//!   create revision;
//! - `epoch` = the cluster id (16 hex digits), without lease; [`Epoch::version`] is its mod
//!   revision, and every registration rewrites it.
//!
//! # TTLs and the expiry bound
//! etcd leases have whole-second TTLs: a TTL is rounded **up** to whole seconds (at least
//! 1 s; etcd itself raises TTLs below its minimum, 2 s with default election settings).
//! etcd's leader checks for expired leases every 500 ms and deletes their keys through
//! raft, so an entry disappears at the latest `ceil(ttl) + 1 s` after the `add_self` or
//! `refresh` call returned ([`EtcdCoordination::EXPIRY_BOUND`]). **Exception:** when the
//! etcd leader changes, the new leader renews every lease to its full TTL, which can delay
//! an expiry by up to one more TTL.
//!
//! Refreshing keeps alive the lease *attached to the node's key* (read in the same call,
//! together with the check that the key still holds this incarnation), on a fresh
//! keep-alive stream, so refresh works across etcd restarts and needs no state in this
//! process.

use constructr_core::coordination::Result;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use constructr_core::coordination::{
    AddMode, AddOutcome, Coordination, CoordinationError, Lease, LockOutcome, LockToken, NodeLimit,
    RefreshOutcome, Registry, WaitOutcome,
};
use constructr_core::entry;
use constructr_core::plumbing::{LockAttempt, SharedLocks, SharedReads, SharedWaits};
use constructr_core::{ClusterId, Epoch, NodeId, Scope};
use etcd_client::{
    Compare, CompareOp, EventType, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};

use crate::client::EtcdClient;
use crate::config::EtcdConfig;
use crate::entries::OwnedEntries;
use crate::error::EtcdError;
use crate::joins::{Joined, Joins, Pending};
use constructr_core::plumbing::{Backoff, DriverError};

/// The etcd backend. One value serves any number of nodes and clusters; clone-free sharing
/// through `Arc`.
pub struct EtcdCoordination {
    client: Arc<EtcdClient>,
    entries: Arc<OwnedEntries>,
    waits: SharedWaits,
    reads: SharedReads<Arc<Registry>>,
    locks: SharedLocks,
    /// Member registrations written together (`joins`).
    joins: Joins,
    /// Where the next bounded read starts handing out entries of its window.
    rotation: AtomicUsize,
}

impl std::fmt::Debug for EtcdCoordination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdCoordination").finish_non_exhaustive()
    }
}

/// etcd's largest lease TTL (`MaxLeaseTTL`), in seconds.
const MAX_LEASE_TTL_SECS: u64 = 9_000_000_000;

/// The lease TTL in whole seconds for a requested TTL: rounded up, at least 1, at most
/// etcd's maximum (9,000,000,000 s).
pub fn lease_ttl_secs(ttl: Duration) -> i64 {
    let secs = ttl
        .as_secs()
        .saturating_add(u64::from(ttl.subsec_nanos() > 0))
        .clamp(1, MAX_LEASE_TTL_SECS);
    i64::try_from(secs).expect("clamped below i64::MAX")
}

impl EtcdCoordination {
    /// How long after its TTL (rounded up to whole seconds) an unrefreshed entry may still be
    /// visible, barring an etcd leader change (see the module docs).
    pub const EXPIRY_BOUND: Duration = Duration::from_secs(1);

    /// Creates the backend: validates `config` and reads the TLS files. Connections are
    /// opened on first use (so a node may start before etcd is up; requests fail as
    /// retryable until it is).
    pub fn new(config: &EtcdConfig) -> Result<Self, EtcdError> {
        Ok(Self {
            client: Arc::new(EtcdClient::new(config)?),
            entries: Arc::default(),
            waits: SharedWaits::default(),
            reads: SharedReads::default(),
            locks: SharedLocks::default(),
            joins: Joins::default(),
            rotation: AtomicUsize::new(0),
        })
    }

    /// Test hook: the next leases this value grants try `ids` first (in order), e.g. the id
    /// of a lease someone else holds, to check that a taken id is not used.
    #[doc(hidden)]
    pub fn try_lease_ids_first(&self, ids: Vec<i64>) {
        self.client.try_lease_ids_first(ids);
    }

    /// Checks that etcd answers a consistent read of `scope`'s keys with these settings
    /// (reachability, TLS, credentials and read permission); useful before starting nodes.
    pub async fn check(&self, scope: &Scope) -> Result<(), EtcdError> {
        self.client
            .count_prefix(&format!("{}/", scope.base()))
            .await
            .map(|_| ())
    }
}

impl EtcdCoordination {
    /// Takes (or extends) the lock: a lease and a transaction that creates the lock key on it.
    ///
    /// A lock that is held costs one request: the transaction is sent alone first, on a
    /// lease id that was not granted. When the lock key exists its `else` branch names the
    /// holder and etcd checks no lease; when it does not, etcd refuses the put for its
    /// missing lease, and the grant and the transaction follow together. Nodes that lose the
    /// race thus grant no lease and send one request each (the winner sends three).
    async fn lock_once(&self, lease: Lease<'_>) -> Result<LockAttempt> {
        let key = entry::lock_key(lease.scope);
        let value = entry::encode_node(lease.node);
        let lock_txn = |lease: i64| {
            Txn::new()
                .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key.as_str(),
                    value.clone(),
                    Some(PutOptions::new().with_lease(lease)),
                )])
                .or_else([TxnOp::get(key.as_str(), None)])
        };
        let probe = rand::random_range(1..=i64::MAX);
        match self.client.txn_unless_no_lease(lock_txn(probe)).await? {
            // Free: lock it below.
            None => {}
            Some(resp) if resp.succeeded() => {
                // The id is someone else's live lease (about one in 2^63): take the key off
                // it again, and lock it below on a lease of our own.
                let undo = Txn::new()
                    .when([Compare::lease(key.as_str(), CompareOp::Equal, probe)])
                    .and_then([TxnOp::delete(key.as_str(), None)]);
                self.client.txn(undo).await?;
            }
            Some(resp) => {
                if let Some(attempt) = self.held(resp, &value).await? {
                    return Ok(attempt);
                }
            }
        }
        // The lock key can expire between the transaction and the keep-alive; a few rounds
        // settle it.
        for _ in 0..3 {
            // The lease and the transaction that creates the lock key on it, sent together.
            let (_, resp) = self
                .client
                .grant_with_txn(lease_ttl_secs(lease.ttl), &[key.as_str()], lock_txn)
                .await?;
            if resp.succeeded() {
                // A write transaction bumps the revision once: the new key's create revision.
                let revision = header_revision(resp.header())?;
                return Ok(LockAttempt::acquired(LockToken(revision.to_string())));
            }
            // Lost: the lease holds nothing and expires with the lock TTL. Revoking it would
            // be one more raft write per loser, queued right in front of the winner's
            // seeding (measured: 20 nodes seeded in 57 ms with revokes, 17 ms without).
            if let Some(attempt) = self.held(resp, &value).await? {
                return Ok(attempt);
            }
        }
        Err(CoordinationError::unavailable(
            "the etcd lock key kept expiring while being locked",
        ))
    }

    /// What a lock transaction's `else` branch (the lock key, read) tells: held by another
    /// node, held by this one (extended: acquired), or `None` if the key expired in between.
    async fn held(
        &self,
        resp: etcd_client::TxnResponse,
        value: &[u8],
    ) -> Result<Option<LockAttempt>> {
        let Some(kv) = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(mut g) => g.take_kvs().into_iter().next(),
            _ => None,
        }) else {
            return Ok(None);
        };
        if kv.value() != value {
            // Named, so that this process's other nodes asking need not ask again.
            return Ok(Some(LockAttempt::held_by(
                entry::decode_lock(kv.value()).ok(),
            )));
        }
        // Re-entrant: extend our own lock.
        if self.client.keep_alive(kv.lease()).await? {
            return Ok(Some(LockAttempt::acquired(LockToken(
                kv.create_revision().to_string(),
            ))));
        }
        Ok(None)
    }
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Result<i64, EtcdError> {
    header
        .map(|h| h.revision())
        .ok_or_else(|| EtcdError::protocol("response without header"))
}

#[async_trait]
impl Coordination for EtcdCoordination {
    /// Linearizable reads and transactions, lease-fenced lock, epoch key, lease TTLs, watch.
    fn guarantees(&self) -> constructr_core::coordination::Guarantees {
        constructr_core::coordination::Guarantees::STRONG
    }

    /// One lock request per scope at a time for the nodes of this backend value
    /// ([`SharedLocks`]): the others wait for its outcome, so that nodes that lose the race
    /// grant no lease and send no transaction.
    async fn lock(&self, lease: Lease<'_>) -> Result<LockOutcome> {
        let key = entry::lock_key(lease.scope);
        self.locks
            .lock(&key, lease.node, self.lock_once(lease))
            .await
    }

    async fn add_self(&self, lease: Lease<'_>, mode: &AddMode) -> Result<AddOutcome> {
        let Lease { scope, node, ttl } = lease;
        let node_key = entry::node_key(scope, &node.address);
        let epoch_key = entry::epoch_key(scope);
        let lock_key = entry::lock_key(scope);
        if let AddMode::Join {
            cluster: Some(cluster),
        } = mode
        {
            // Written together with the other registrations of this value (`joins`).
            let (reply, answer) = tokio::sync::oneshot::channel();
            let value = entry::encode_node(node);
            self.joins.submit(
                &self.client,
                &epoch_key,
                entry::encode_epoch(*cluster),
                Pending {
                    node_key: node_key.clone(),
                    node_value: value.clone(),
                    ttl: lease_ttl_secs(ttl),
                    reply,
                },
            );
            let joined = answer.await.unwrap_or_else(|_| {
                Err(EtcdError::Unavailable {
                    endpoint: "-".into(),
                    detail: "the registration writer stopped".into(),
                })
            })?;
            return Ok(match joined {
                Joined::Added { lease, revision } => {
                    self.entries.remember(
                        &self.client,
                        &entry::nodes_prefix(scope),
                        &node_key,
                        value,
                        lease,
                        revision,
                    );
                    AddOutcome::Added
                }
                Joined::Refused => AddOutcome::Refused,
            });
        }
        // Not a token of this backend: it cannot be the lock's.
        let token = match mode {
            AddMode::Seed { lock, .. } => match lock.0.parse::<i64>() {
                Ok(token) => Some(token),
                Err(_) => return Ok(AddOutcome::Refused),
            },
            AddMode::Join { .. } => None,
        };
        // The transactions to try in turn, writing the entry on `lease`.
        let attempts = |lease: i64| -> Vec<Txn> {
            let put_node = TxnOp::put(
                node_key.as_str(),
                entry::encode_node(node),
                Some(PutOptions::new().with_lease(lease).with_prev_key()),
            );
            match mode {
                AddMode::Seed {
                    cluster,
                    expected_epoch_version,
                    ..
                } => {
                    let token = token.unwrap_or_default();
                    let epoch_value = entry::encode_epoch(*cluster);
                    // The lock is this node's (value) and the same acquisition (create revision).
                    let holds_lock = [
                        Compare::create_revision(lock_key.as_str(), CompareOp::Equal, token),
                        Compare::value(
                            lock_key.as_str(),
                            CompareOp::Equal,
                            entry::encode_node(node),
                        ),
                    ];
                    let epoch_unchanged = match expected_epoch_version {
                        Some(v) => Compare::mod_revision(
                            epoch_key.as_str(),
                            CompareOp::Equal,
                            i64::try_from(*v).unwrap_or(i64::MAX),
                        ),
                        None => Compare::create_revision(epoch_key.as_str(), CompareOp::Equal, 0),
                    };
                    let writes = [
                        TxnOp::put(epoch_key.as_str(), epoch_value.clone(), None),
                        put_node.clone(),
                    ];
                    vec![
                        // The first try: nobody registered since the read that found no nodes.
                        Txn::new()
                            .when([
                                holds_lock[0].clone(),
                                holds_lock[1].clone(),
                                epoch_unchanged,
                            ])
                            .and_then(writes.clone()),
                        // A retry after a lost reply: the marker already names our cluster.
                        Txn::new()
                            .when([
                                holds_lock[0].clone(),
                                holds_lock[1].clone(),
                                Compare::value(epoch_key.as_str(), CompareOp::Equal, epoch_value),
                            ])
                            .and_then(writes),
                    ]
                }
                // A registry without marker (a member of a known cluster went through
                // `joins` above).
                AddMode::Join { .. } => vec![
                    Txn::new()
                        .when([Compare::create_revision(
                            epoch_key.as_str(),
                            CompareOp::Equal,
                            0,
                        )])
                        .and_then([put_node]),
                ],
            }
        };
        // The lease and the first transaction, sent together; the others (a retry's) after.
        let (lease, first) = self
            .client
            .grant_with_txn(lease_ttl_secs(ttl), &[node_key.as_str()], |lease| {
                attempts(lease).swap_remove(0)
            })
            .await?;
        let mut rest = attempts(lease).into_iter().skip(1);
        let mut resp = first;
        loop {
            if resp.succeeded() {
                // Our own earlier registration (same incarnation) was replaced: its lease
                // now holds no key.
                for r in resp.op_responses() {
                    if let TxnOpResponse::Put(p) = r
                        && let Some(prev) = p.prev_key()
                        && prev.key() == node_key.as_bytes()
                        && prev.lease() != 0
                        && prev.lease() != lease
                        && prev.value() == entry::encode_node(node).as_slice()
                    {
                        self.client.revoke_in_background(prev.lease());
                    }
                }
                self.entries.remember(
                    &self.client,
                    &entry::nodes_prefix(scope),
                    &node_key,
                    entry::encode_node(node),
                    lease,
                    header_revision(resp.header())?,
                );
                return Ok(AddOutcome::Added);
            }
            match rest.next() {
                Some(txn) => resp = self.client.txn_on_lease(txn, lease).await?,
                None => break,
            }
        }
        self.client.revoke_in_background(lease);
        Ok(AddOutcome::Refused)
    }

    /// Keeps alive the lease of the node's entry: **one** keep-alive when this backend
    /// value's watch vouches that the key still holds this incarnation (see
    /// the `entries` module), else a read of the key first. The lease was granted with the TTL
    /// of `add_self`; a different `lease.ttl` here does not change it.
    async fn refresh(&self, lease: Lease<'_>) -> Result<RefreshOutcome> {
        let Lease { scope, node, .. } = lease;
        let key = entry::node_key(scope, &node.address);
        let prefix = entry::nodes_prefix(scope);
        let value = entry::encode_node(node);
        if let Some(id) = self.entries.trusted_lease(&prefix, &key, &value) {
            if self.client.keep_alive(id).await? {
                return Ok(RefreshOutcome::Refreshed);
            }
            self.entries.forget(&key);
            return Ok(RefreshOutcome::Missing);
        }
        let (Some(kv), revision) = self.client.get(&key).await? else {
            self.entries.forget(&key);
            return Ok(RefreshOutcome::Missing);
        };
        let suffix = &key[prefix.len()..];
        let ours = matches!(entry::decode_node(suffix, kv.value()), Ok(n) if n == *node);
        if !ours || kv.lease() == 0 {
            // Another incarnation's, or written without a lease by someone else (it would
            // never expire): not ours.
            self.entries.forget(&key);
            return Ok(RefreshOutcome::Missing);
        }
        if self.client.keep_alive(kv.lease()).await? {
            self.entries
                .remember(&self.client, &prefix, &key, value, kv.lease(), revision);
            Ok(RefreshOutcome::Refreshed)
        } else {
            self.entries.forget(&key);
            Ok(RefreshOutcome::Missing)
        }
    }

    /// Revokes the lease this value wrote the entry on (one request: etcd deletes the keys
    /// of a revoked lease, and only this entry sits on it; an entry that another incarnation
    /// wrote over it sits on another lease and stays). Without a remembered lease: a
    /// transaction that deletes the key if it holds this incarnation, then a revoke.
    async fn remove_self(&self, scope: &Scope, node: &NodeId) -> Result<()> {
        let key = entry::node_key(scope, &node.address);
        let own = self.entries.own_lease(&key, &entry::encode_node(node));
        self.entries.forget(&key);
        if let Some(lease) = own {
            // `false`: expired already, and the entry with it.
            self.client.revoke(lease).await?;
            return Ok(());
        }
        let txn = Txn::new()
            .when([Compare::value(
                key.as_str(),
                CompareOp::Equal,
                entry::encode_node(node),
            )])
            .and_then([TxnOp::delete(
                key.as_str(),
                Some(etcd_client::DeleteOptions::new().with_prev_key()),
            )]);
        let resp = self.client.txn(txn).await?;
        if !resp.succeeded() {
            return Ok(()); // absent, or another incarnation's
        }
        for r in resp.op_responses() {
            if let TxnOpResponse::Delete(d) = r {
                for prev in d.prev_kvs() {
                    if prev.lease() != 0 {
                        // The entry is gone already; the lease held nothing else.
                        if let Err(e) = self.client.revoke(prev.lease()).await {
                            tracing::debug!(error = %e, "could not revoke the removed entry's lease");
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// One range read of the scope; the nodes of this backend value that read the same
    /// scope at once share it ([`SharedReads`]: a read that starts after each call).
    async fn get_nodes(&self, scope: &Scope) -> Result<Registry> {
        let client = self.client.clone();
        let owned = scope.clone();
        let shared = self
            .reads
            .read(&scope.base(), move || {
                let (client, scope) = (client.clone(), owned.clone());
                async move { read_registry(client, scope, None).await.map(Arc::new) }
            })
            .await?;
        Ok(Arc::unwrap_or_clone(shared))
    }

    /// A range read with a limit: the epoch, the lock and the first `max(limit, 32)` node
    /// entries in key order (more pages only if some could not be decoded), shared like
    /// `get_nodes` by the nodes that read at once. Each caller gets `limit` entries of that
    /// window from a rotating start, so that joiners spread over 32 seeds, not the first 6.
    async fn get_some_nodes(&self, scope: &Scope, limit: NodeLimit) -> Result<Registry> {
        let window = limit.get().max(SPREAD);
        let client = self.client.clone();
        let owned = scope.clone();
        let shared = self
            .reads
            // Not a scope's base (those start with `/`): no full read shares this key.
            .read(&format!("{window}{}", scope.base()), move || {
                let (client, scope) = (client.clone(), owned.clone());
                async move {
                    read_registry(client, scope, Some(window))
                        .await
                        .map(Arc::new)
                }
            })
            .await?;
        let start = self.rotation.fetch_add(1, Ordering::Relaxed);
        Ok(shared.some(limit, start))
    }

    /// Resolves when a node registers or the lock is released after `revision`; other
    /// changes (the lock taken, the epoch rewritten, entries removed) do not wake. The nodes
    /// of this backend value that wait on one scope share one watch ([`SharedWaits`]).
    async fn wait_for_change(&self, scope: &Scope, revision: Option<u64>) -> Result<WaitOutcome> {
        let client = self.client.clone();
        let base = format!("{}/", scope.base());
        let nodes = entry::nodes_prefix(scope);
        let lock = entry::lock_key(scope);
        // Waiters that read at the same revision share one watch.
        let shared = format!("{base}@{revision:?}");
        self.waits
            .wait(&shared, revision, move |after| {
                next_change(
                    client.clone(),
                    base.clone(),
                    nodes.clone(),
                    lock.clone(),
                    after,
                )
            })
            .await
    }

    fn requests_sent(&self) -> Option<u64> {
        Some(self.client.requests_sent())
    }
}

/// How many node entries a bounded read takes at least, so that the nodes sharing it draw
/// their seeds from more than the first few keys.
const SPREAD: usize = 32;

/// A consistent read of everything under `scope`, or (with `window`) of the epoch, the lock
/// and at least `window` decodable node entries if that many are registered.
///
/// The keys `epoch` and `lock` sort before `nodes/`, so the first page of `window + 2` keys
/// holds them and `window` entries; later pages (at the first page's revision, so all pages
/// are one consistent read) are read only while undecodable entries leave it short.
async fn read_registry(
    client: Arc<EtcdClient>,
    scope: Scope,
    window: Option<usize>,
) -> Result<Registry> {
    let scope = &scope;
    let base = format!("{}/", scope.base());
    let end = prefix_end(&base);
    let nodes_prefix = entry::nodes_prefix(scope);
    let epoch_key = entry::epoch_key(scope);
    let lock_key = entry::lock_key(scope);
    let mut registry = Registry::default();
    let mut from = base.clone().into_bytes();
    let mut at = None;
    loop {
        let limit = window.map(|w| {
            let wanted = w.saturating_sub(registry.nodes.len());
            let extra = if at.is_none() { 2 } else { 0 };
            i64::try_from(wanted.saturating_add(extra)).unwrap_or(i64::MAX)
        });
        let mut resp = client.get_range(&from, &end, limit, at).await?;
        let revision = header_revision(resp.header())?;
        let revision = *at.get_or_insert(revision);
        registry.revision = Some(u64::try_from(revision).unwrap_or(0));
        let more = resp.more();
        let kvs = resp.take_kvs();
        if let Some(last) = kvs.last() {
            from = last.key().to_vec();
            from.push(0);
        }
        for kv in kvs {
            let Ok(key) = kv.key_str() else {
                tracing::warn!(scope = %scope, "skipping a registry key that is not UTF-8");
                continue;
            };
            if let Some(suffix) = key.strip_prefix(nodes_prefix.as_str()) {
                match entry::decode_node(suffix, kv.value()) {
                    Ok(n) => registry.nodes.push(n),
                    Err(e) => {
                        tracing::warn!(key, error = %e, "skipping an undecodable registry entry")
                    }
                }
            } else if key == lock_key {
                // Unreadable: reported as free; taking the lock settles who holds it.
                registry.lock = entry::decode_lock(kv.value()).ok();
            } else if key == epoch_key {
                let version = u64::try_from(kv.mod_revision()).unwrap_or(0);
                match entry::decode_epoch(kv.value()) {
                    Ok(cluster) => registry.epoch = Some(Epoch { cluster, version }),
                    Err(e) => {
                        // Reported with its version, so a seed can replace it.
                        tracing::warn!(key, error = %e, "undecodable epoch marker");
                        registry.epoch = Some(Epoch {
                            cluster: ClusterId::UNREADABLE,
                            version,
                        });
                    }
                }
            }
        }
        match window {
            Some(w) if more && registry.nodes.len() < w => {}
            _ => return Ok(registry),
        }
    }
}

/// The end of the range of keys that start with `prefix` (its last byte incremented).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte 0xff: to the end of the key space.
    vec![0]
}

/// The revision of the first change under `base` after `after` that a waiting node cares
/// about: a node entry written, or the lock released.
///
/// Two watches run side by side: one from the revision after `after`, so nothing between
/// the read and the watch is missed, and one from now on. etcd delivers the events of a
/// watch that starts in the past only when its background sync catches it up (every
/// 100 ms); a watch from now on gets each event as it is committed. Without the second,
/// waiters woke up to 100 ms after the seed's registration.
async fn next_change(
    client: Arc<EtcdClient>,
    base: String,
    nodes: String,
    lock: String,
    after: Option<u64>,
) -> Result<u64> {
    let live = watch_relevant(client.clone(), &base, &nodes, &lock, None);
    let Some(r) = after else {
        return live.await;
    };
    let gap = watch_relevant(client.clone(), &base, &nodes, &lock, Some(r));
    tokio::select! {
        r = live => r,
        r = gap => r,
    }
}

/// Watches `base` (from the revision after `after`, or from now on) until a relevant change
/// (see [`next_change`]); transient failures re-open the watch where it stopped.
async fn watch_relevant(
    client: Arc<EtcdClient>,
    base: &str,
    nodes: &str,
    lock: &str,
    after: Option<u64>,
) -> Result<u64> {
    let mut options = WatchOptions::new().with_prefix();
    if let Some(r) = after {
        options = options.with_start_revision(i64::try_from(r).unwrap_or(i64::MAX - 1) + 1);
    }
    let mut backoff = Backoff::default();
    loop {
        let opened = client.watch(base, options.clone()).await;
        let Some((ticket, mut stream)) = backoff.retry(opened, "opening an etcd watch").await?
        else {
            continue;
        };
        loop {
            match stream.message().await {
                Ok(Some(resp)) => {
                    // Compacted past our start: anything may have changed; every waiter
                    // re-reads.
                    if resp.compact_revision() > 0 {
                        return Ok(u64::MAX);
                    }
                    let relevant = resp
                        .events()
                        .iter()
                        .filter_map(|e| {
                            let kv = e.kv()?;
                            let key = kv.key();
                            let wakes = match e.event_type() {
                                EventType::Put => key.starts_with(nodes.as_bytes()),
                                EventType::Delete => key == lock.as_bytes(),
                            };
                            wakes.then(|| kv.mod_revision())
                        })
                        .max();
                    if let Some(r) = relevant {
                        return Ok(u64::try_from(r).unwrap_or(0));
                    }
                    if resp.canceled() {
                        let reason = resp.cancel_reason().to_owned();
                        if reason.contains("permission denied") {
                            return Err(EtcdError::Unauthorized {
                                endpoint: client.endpoint_of(ticket).to_owned(),
                                detail: reason,
                            }
                            .into());
                        }
                        tracing::debug!(%reason, "etcd canceled the watch; re-opening");
                        break;
                    }
                    if resp.created()
                        && after.is_none()
                        && let Some(h) = resp.header()
                    {
                        // From now on means from this revision on, also after a re-open.
                        options = options.with_start_revision(h.revision() + 1);
                    }
                    if let Some(last) = resp.events().last().and_then(|e| e.kv()) {
                        // Irrelevant changes seen: a re-opened watch need not see them again.
                        options = options.with_start_revision(last.mod_revision() + 1);
                    }
                }
                Ok(None) => {
                    tracing::debug!("etcd watch stream ended; re-opening");
                    break;
                }
                Err(e) => {
                    let e = EtcdError::classify(client.endpoint_of(ticket), e);
                    if !e.is_retryable() {
                        return Err(e.into());
                    }
                    tracing::debug!(error = %e, "etcd watch stream failed; re-opening");
                    client.report_failure(ticket, &e).await;
                    break;
                }
            }
        }
        backoff.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_ttl_rounds_up_to_whole_seconds() {
        assert_eq!(lease_ttl_secs(Duration::ZERO), 1);
        assert_eq!(lease_ttl_secs(Duration::from_millis(1)), 1);
        assert_eq!(lease_ttl_secs(Duration::from_secs(1)), 1);
        assert_eq!(lease_ttl_secs(Duration::from_millis(1001)), 2);
        assert_eq!(lease_ttl_secs(Duration::from_millis(2500)), 3);
        assert_eq!(lease_ttl_secs(Duration::from_secs(60)), 60);
        assert_eq!(lease_ttl_secs(Duration::MAX), 9_000_000_000);
    }
}
