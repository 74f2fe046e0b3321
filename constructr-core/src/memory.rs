//! `MemoryCoordination`: a linearizable in-process registry with TTLs on an injected clock
//! and fault switches.

use crate::coordination::Result;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::coordination::{
    AddMode, AddOutcome, Coordination, CoordinationError, Lease, LockOutcome, LockToken, NodeLimit,
    RefreshOutcome, Registry, WaitOutcome,
};
use crate::entry;
use crate::node::{Epoch, NodeId, Scope};
use crate::notify::Notifier;

/// A source of the current time, so TTLs can run on virtual time in simulations.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current instant.
    fn now(&self) -> Instant;
}

/// The real monotonic clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that only moves when told to.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Mutex<Instant>>);

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: Instant) -> Self {
        Self(Arc::new(Mutex::new(start)))
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) += by;
    }

    /// Sets the clock (never backwards).
    pub fn set(&self, to: Instant) {
        let mut now = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if to > *now {
            *now = to;
        }
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A fault applied to the next call of the async [`Coordination`] API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Fail without applying (retryable: `Unavailable`, else `Permanent`).
    Fail {
        /// Whether the error is retryable.
        retryable: bool,
    },
    /// Apply, then answer after this delay (feature `tokio`; ignored without it).
    Delay(Duration),
    /// Apply, then never answer (the reply is lost).
    DropReply,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct NodeEntry {
    /// The value, decoded once when written; or the raw bytes that do not decode.
    value: Result<NodeId, Vec<u8>>,
    expires: Instant,
}

impl NodeEntry {
    fn new(key_suffix: &str, raw: Vec<u8>, expires: Instant) -> Self {
        let value = entry::decode_node(key_suffix, &raw).map_err(|_| raw);
        Self { value, expires }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct LockEntry {
    holder: NodeId,
    token: u64,
    expires: Instant,
}

/// The registry of one scope as plain data: node entries with expiry times, the epoch
/// marker, the lock and the revision, with every operation of the [`Coordination`]
/// contract as a synchronous method that takes the time.
///
/// [`MemoryCoordination`] keeps one per scope behind a mutex; a model checker keeps one
/// inside each explored state (it is `Clone + Eq + Hash`), so both run **the same
/// semantics**. Expired entries and locks are dropped at the start of every operation.
///
/// ```
/// use std::time::{Duration, Instant};
/// use constructr_core::memory::ScopeRegistry;
/// use constructr_core::{LockOutcome, NodeId};
///
/// let now = Instant::now();
/// let mut r = ScopeRegistry::default();
/// let a = NodeId::new("10.0.0.1:2552", 1);
/// assert!(matches!(r.lock(now, &a, Duration::from_secs(5)), LockOutcome::Acquired(_)));
/// assert!(r.get_nodes(now).nodes.is_empty());
/// assert!(r.lock_holder(now).is_some());
/// assert!(r.lock_holder(now + Duration::from_secs(5)).is_none());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ScopeRegistry {
    /// Key suffix (base64url of the address) → raw value.
    nodes: BTreeMap<String, NodeEntry>,
    epoch: Option<Epoch>,
    lock: Option<LockEntry>,
    revision: u64,
    ignore_write_conditions: bool,
}

impl ScopeRegistry {
    /// Drops the entries and the lock whose TTL ran out by `now`.
    pub fn expire(&mut self, now: Instant) {
        self.nodes.retain(|_, e| e.expires > now);
        if self.lock.as_ref().is_some_and(|l| l.expires <= now) {
            self.lock = None;
        }
    }

    fn bump(&mut self) -> u64 {
        self.revision += 1;
        self.revision
    }

    /// The revision of the last write.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The epoch marker.
    pub fn epoch(&self) -> Option<Epoch> {
        self.epoch
    }

    /// The earliest instant at which an entry or the lock expires.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.nodes
            .values()
            .map(|e| e.expires)
            .chain(self.lock.as_ref().map(|l| l.expires))
            .min()
    }

    /// The holder of the lock at `now` and its token.
    pub fn lock_holder(&self, now: Instant) -> Option<(&NodeId, LockToken)> {
        self.lock
            .as_ref()
            .filter(|l| l.expires > now)
            .map(|l| (&l.holder, LockToken(l.token.to_string())))
    }

    /// Whether exactly `node` (this incarnation) has an unexpired entry at `now`.
    pub fn is_registered(&self, now: Instant, node: &NodeId) -> bool {
        let key = base64_address(&node.address);
        self.nodes
            .get(&key)
            .is_some_and(|e| e.expires > now && e.value.as_ref() == Ok(node))
    }

    /// Reads the registry at `now`.
    pub fn get_nodes(&mut self, now: Instant) -> Registry {
        self.get_some_nodes(now, None)
    }

    /// Reads the registry at `now`, the first `limit` decodable entries in key order
    /// (`None`: all).
    pub fn get_some_nodes(&mut self, now: Instant, limit: Option<NodeLimit>) -> Registry {
        self.expire(now);
        let limit = limit.map_or(usize::MAX, NodeLimit::get);
        let mut nodes = Vec::with_capacity(self.nodes.len().min(limit));
        for (suffix, e) in &self.nodes {
            if nodes.len() >= limit {
                break;
            }
            let raw = match &e.value {
                Ok(node) => {
                    nodes.push(node.clone());
                    continue;
                }
                Err(raw) => raw,
            };
            match entry::decode_node(suffix, raw) {
                Ok(node) => nodes.push(node),
                Err(error) => {
                    tracing::warn!(key = %suffix, %error, "skipping undecodable registry entry")
                }
            }
        }
        Registry {
            nodes,
            epoch: self.epoch,
            revision: Some(self.revision),
            lock: self.lock.as_ref().map(|l| l.holder.clone()),
        }
    }

    /// Takes (or re-takes) the lock at `now`.
    pub fn lock(&mut self, now: Instant, holder: &NodeId, ttl: Duration) -> LockOutcome {
        self.expire(now);
        match &mut self.lock {
            Some(l) if &l.holder == holder => {
                l.expires = now + ttl;
                LockOutcome::Acquired(LockToken(l.token.to_string()))
            }
            Some(_) => LockOutcome::HeldByOther,
            None => {
                // Tokens are revisions: never reused for a later holder.
                let token = self.bump();
                self.lock = Some(LockEntry {
                    holder: holder.clone(),
                    token,
                    expires: now + ttl,
                });
                LockOutcome::Acquired(LockToken(token.to_string()))
            }
        }
    }

    /// Whether `add_self(node, mode)` may write now (the fencing of the contract).
    fn allowed(&self, node: &NodeId, mode: &AddMode) -> bool {
        if self.ignore_write_conditions {
            return true;
        }
        match mode {
            // A member whose epoch marker is gone (data loss) re-creates it.
            AddMode::Join { cluster } => {
                self.epoch.is_none() || self.epoch.map(|e| e.cluster) == *cluster
            }
            AddMode::Seed {
                lock,
                cluster,
                expected_epoch_version,
            } => {
                let holds_lock = self
                    .lock
                    .as_ref()
                    .is_some_and(|l| &l.holder == node && LockToken(l.token.to_string()) == *lock);
                let epoch_ok = self.epoch.map(|e| e.version) == *expected_epoch_version
                    || self.epoch.is_some_and(|e| e.cluster == *cluster);
                holds_lock && epoch_ok
            }
        }
    }

    /// Registers `node` at `now` under the condition of `mode`.
    pub fn add_self(
        &mut self,
        now: Instant,
        node: &NodeId,
        ttl: Duration,
        mode: &AddMode,
    ) -> AddOutcome {
        self.expire(now);
        if !self.allowed(node, mode) {
            return AddOutcome::Refused;
        }
        self.nodes.insert(
            base64_address(&node.address),
            NodeEntry {
                value: Ok(node.clone()),
                expires: now + ttl,
            },
        );
        let version = self.bump();
        self.epoch = mode.cluster().map(|cluster| Epoch { cluster, version });
        AddOutcome::Added
    }

    /// Extends `node`'s entry at `now`.
    pub fn refresh(&mut self, now: Instant, node: &NodeId, ttl: Duration) -> RefreshOutcome {
        self.expire(now);
        if !self.is_registered(now, node) {
            return RefreshOutcome::Missing;
        }
        if let Some(e) = self.nodes.get_mut(&base64_address(&node.address)) {
            e.expires = now + ttl;
        }
        RefreshOutcome::Refreshed
    }

    /// Removes `node`'s entry at `now` (only this incarnation's).
    pub fn remove_self(&mut self, now: Instant, node: &NodeId) {
        self.expire(now);
        if self.is_registered(now, node) {
            self.nodes.remove(&base64_address(&node.address));
            self.bump();
        }
    }

    /// Fault: the lock is lost (as if its TTL ran out).
    pub fn expire_lock(&mut self) {
        self.lock = None;
    }

    /// Fault: the entry of `address` vanishes now.
    pub fn expire_entry(&mut self, address: &str) {
        self.nodes.remove(&base64_address(address));
    }

    /// Writes a raw value under the node key suffix `key_suffix` (e.g. garbage for tests).
    pub fn put_raw(&mut self, now: Instant, key_suffix: &str, value: &[u8], ttl: Duration) {
        self.expire(now);
        self.nodes.insert(
            key_suffix.to_owned(),
            NodeEntry::new(key_suffix, value.to_vec(), now + ttl),
        );
        self.bump();
    }

    /// Model checking: renames every node and cluster id in the registry (see
    /// [`Renaming`](crate::machine::Renaming)).
    #[cfg(feature = "mutations")]
    #[cfg_attr(docsrs, doc(cfg(feature = "mutations")))]
    #[doc(hidden)]
    pub fn rename(&mut self, r: &crate::machine::Renaming<'_>) {
        let nodes = std::mem::take(&mut self.nodes);
        for (suffix, e) in nodes {
            match &e.value {
                Ok(node) => {
                    let node = (r.node)(node);
                    self.nodes.insert(
                        base64_address(&node.address),
                        NodeEntry {
                            value: Ok(node),
                            expires: e.expires,
                        },
                    );
                }
                Err(_) => {
                    self.nodes.insert(suffix, e);
                }
            }
        }
        if let Some(l) = &mut self.lock {
            l.holder = (r.node)(&l.holder);
        }
        if let Some(e) = &mut self.epoch {
            e.cluster = (r.cluster)(e.cluster);
        }
    }

    /// Test-only: remove the fencing mechanism (write `add_self` whatever its condition), to
    /// show that the tests catch its absence.
    #[doc(hidden)]
    pub fn set_ignore_write_conditions(&mut self, ignore: bool) {
        self.ignore_write_conditions = ignore;
    }
}

#[derive(Debug, Default)]
struct Inner {
    scopes: HashMap<Scope, ScopeRegistry>,
    calls: u64,
    ignore_write_conditions: bool,
}

impl Inner {
    fn scope(&mut self, scope: &Scope) -> &mut ScopeRegistry {
        let ignore = self.ignore_write_conditions;
        let s = self.scopes.entry(scope.clone()).or_default();
        s.ignore_write_conditions = ignore;
        s
    }
}

/// A linearizable in-memory coordination service.
///
/// Every operation exists twice: a synchronous `*_at(now, ..)` form that takes the time
/// explicitly (used by the simulation on virtual time) and the async [`Coordination`]
/// implementation, which reads the injected [`Clock`] and applies queued [`Fault`]s.
/// Cloning shares the registry.
#[derive(Clone, Debug)]
pub struct MemoryCoordination {
    inner: Arc<Mutex<Inner>>,
    faults: Arc<Mutex<VecDeque<Fault>>>,
    changed: Arc<Notifier>,
    clock: Arc<dyn Clock>,
}

impl Default for MemoryCoordination {
    fn default() -> Self {
        Self::new(Arc::new(SystemClock))
    }
}

impl MemoryCoordination {
    /// An empty registry whose TTLs run on `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            inner: Arc::default(),
            faults: Arc::default(),
            changed: Arc::default(),
            clock,
        }
    }

    fn lock_inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of coordination calls served so far (both APIs).
    pub fn calls(&self) -> u64 {
        self.lock_inner().calls
    }

    /// Runs `op` on the registry of `scope` at the clock's time or `now`; notifies the
    /// watchers if it wrote.
    fn with_scope<T>(&self, scope: &Scope, op: impl FnOnce(&mut ScopeRegistry) -> T) -> T {
        let mut inner = self.lock_inner();
        inner.calls += 1;
        let s = inner.scope(scope);
        let before = s.revision();
        let out = op(s);
        let wrote = s.revision() != before;
        drop(inner);
        if wrote {
            self.changed.notify();
        }
        out
    }

    /// Reads the registry at `now`.
    pub fn get_nodes_at(&self, now: Instant, scope: &Scope) -> Registry {
        self.with_scope(scope, |s| s.get_nodes(now))
    }

    /// Reads the first `limit` entries (in key order) of `scope` at `now`.
    pub fn get_some_nodes_at(&self, now: Instant, scope: &Scope, limit: NodeLimit) -> Registry {
        self.with_scope(scope, |s| s.get_some_nodes(now, Some(limit)))
    }

    /// Takes (or re-takes) the lock at `now`.
    pub fn lock_at(&self, now: Instant, lease: Lease<'_>) -> LockOutcome {
        self.with_scope(lease.scope, |s| s.lock(now, lease.node, lease.ttl))
    }

    /// Registers `lease.node` at `now` under the condition of `mode`.
    pub fn add_self_at(&self, now: Instant, lease: Lease<'_>, mode: &AddMode) -> AddOutcome {
        self.with_scope(lease.scope, |s| {
            s.add_self(now, lease.node, lease.ttl, mode)
        })
    }

    /// Extends `lease.node`'s entry at `now`.
    pub fn refresh_at(&self, now: Instant, lease: Lease<'_>) -> RefreshOutcome {
        self.with_scope(lease.scope, |s| s.refresh(now, lease.node, lease.ttl))
    }

    /// Removes `node`'s entry at `now` (only this incarnation's).
    pub fn remove_self_at(&self, now: Instant, scope: &Scope, node: &NodeId) {
        self.with_scope(scope, |s| s.remove_self(now, node))
    }

    /// Test-only: remove the fencing mechanism (write `add_self` whatever its condition), to
    /// show that the tests catch its absence.
    #[doc(hidden)]
    pub fn set_ignore_write_conditions(&self, ignore: bool) {
        let mut inner = self.lock_inner();
        inner.ignore_write_conditions = ignore;
        for s in inner.scopes.values_mut() {
            s.set_ignore_write_conditions(ignore);
        }
    }

    /// The revision of the last write to `scope`.
    pub fn revision(&self, scope: &Scope) -> u64 {
        self.lock_inner()
            .scopes
            .get(scope)
            .map_or(0, ScopeRegistry::revision)
    }

    /// Fault switch: the lock of `scope` is lost (as if its TTL ran out).
    pub fn expire_lock(&self, scope: &Scope) {
        if let Some(s) = self.lock_inner().scopes.get_mut(scope) {
            s.expire_lock();
        }
    }

    /// Fault switch: the entry of `address` expires now.
    pub fn expire_entry(&self, scope: &Scope, address: &str) {
        if let Some(s) = self.lock_inner().scopes.get_mut(scope) {
            s.expire_entry(address);
        }
    }

    /// Writes a raw value under `{base}/nodes/{key_suffix}`, e.g. garbage for tests.
    pub fn put_raw(&self, scope: &Scope, key_suffix: &str, value: &[u8], ttl: Duration) {
        let now = self.clock.now();
        self.lock_inner()
            .scope(scope)
            .put_raw(now, key_suffix, value, ttl);
    }

    /// Queues `n` copies of `fault` for the next calls of the async API.
    pub fn inject(&self, fault: Fault, n: usize) {
        let mut q = self.faults.lock().unwrap_or_else(|e| e.into_inner());
        q.extend(std::iter::repeat_n(fault, n));
    }

    fn next_fault(&self) -> Option<Fault> {
        self.faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
    }

    /// Applies the next fault around `op`.
    async fn faulty<T>(&self, op: impl FnOnce(Instant) -> T) -> Result<T> {
        match self.next_fault() {
            Some(Fault::Fail { retryable: true }) => {
                Err(CoordinationError::unavailable("injected fault"))
            }
            Some(Fault::Fail { retryable: false }) => {
                Err(CoordinationError::permanent("injected fault"))
            }
            Some(Fault::Delay(d)) => {
                let out = op(self.clock.now());
                #[cfg(feature = "tokio")]
                tokio::time::sleep(d).await;
                #[cfg(not(feature = "tokio"))]
                let _ = d;
                Ok(out)
            }
            Some(Fault::DropReply) => {
                let _ = op(self.clock.now());
                std::future::pending().await
            }
            None => Ok(op(self.clock.now())),
        }
    }
}

pub(crate) fn base64_address(address: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(address)
}

#[async_trait]
impl Coordination for MemoryCoordination {
    fn guarantees(&self) -> crate::coordination::Guarantees {
        crate::coordination::Guarantees::STRONG
    }

    async fn get_nodes(&self, scope: &Scope) -> Result<Registry> {
        self.faulty(|now| self.get_nodes_at(now, scope)).await
    }

    async fn get_some_nodes(&self, scope: &Scope, limit: NodeLimit) -> Result<Registry> {
        self.faulty(|now| self.get_some_nodes_at(now, scope, limit))
            .await
    }

    async fn lock(&self, lease: Lease<'_>) -> Result<LockOutcome> {
        self.faulty(|now| self.lock_at(now, lease)).await
    }

    async fn add_self(&self, lease: Lease<'_>, mode: &AddMode) -> Result<AddOutcome> {
        self.faulty(|now| self.add_self_at(now, lease, mode)).await
    }

    async fn refresh(&self, lease: Lease<'_>) -> Result<RefreshOutcome> {
        self.faulty(|now| self.refresh_at(now, lease)).await
    }

    async fn remove_self(&self, scope: &Scope, node: &NodeId) -> Result<()> {
        self.faulty(|now| self.remove_self_at(now, scope, node))
            .await
    }

    async fn wait_for_change(&self, scope: &Scope, revision: Option<u64>) -> Result<WaitOutcome> {
        // Without a revision: the first change after the call (never at once).
        let revision = revision.unwrap_or_else(|| self.revision(scope));
        loop {
            let seen = self.changed.version();
            if self.revision(scope) > revision {
                return Ok(WaitOutcome::Changed);
            }
            self.changed.changed_since(seen).await;
        }
    }
}
