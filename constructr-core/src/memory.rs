//! `MemoryCoordination`: a linearizable in-process registry with TTLs on an injected clock
//! and fault switches.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::coordination::{
    AddMode, AddOutcome, Coordination, CoordinationError, LockOutcome, LockToken, RefreshOutcome,
    Registry, WaitOutcome,
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

#[derive(Debug)]
struct NodeEntry {
    raw: Vec<u8>,
    expires: Instant,
}

#[derive(Debug)]
struct LockEntry {
    holder: NodeId,
    token: u64,
    expires: Instant,
}

#[derive(Debug, Default)]
struct ScopeState {
    /// Key suffix (base64url of the address) → raw value.
    nodes: BTreeMap<String, NodeEntry>,
    epoch: Option<Epoch>,
    lock: Option<LockEntry>,
    revision: u64,
}

impl ScopeState {
    fn expire(&mut self, now: Instant) {
        self.nodes.retain(|_, e| e.expires > now);
        if self.lock.as_ref().is_some_and(|l| l.expires <= now) {
            self.lock = None;
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    scopes: HashMap<Scope, ScopeState>,
    revision: u64,
    calls: u64,
    ignore_write_conditions: bool,
}

impl Inner {
    fn scope(&mut self, scope: &Scope, now: Instant) -> &mut ScopeState {
        let s = self.scopes.entry(scope.clone()).or_default();
        s.expire(now);
        s
    }

    fn bump(&mut self, scope: &Scope) -> u64 {
        self.revision += 1;
        let rev = self.revision;
        self.scopes.entry(scope.clone()).or_default().revision = rev;
        rev
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

    /// Reads the registry at `now`.
    pub fn get_nodes_at(&self, now: Instant, scope: &Scope) -> Registry {
        let mut inner = self.lock_inner();
        inner.calls += 1;
        let s = inner.scope(scope, now);
        let mut nodes = Vec::with_capacity(s.nodes.len());
        for (suffix, e) in &s.nodes {
            match entry::decode_node(suffix, &e.raw) {
                Ok(node) => nodes.push(node),
                Err(error) => {
                    tracing::warn!(%scope, key = %suffix, %error, "skipping undecodable registry entry")
                }
            }
        }
        Registry {
            nodes,
            epoch: s.epoch,
            revision: Some(s.revision),
        }
    }

    /// Takes (or re-takes) the lock at `now`.
    pub fn lock_at(
        &self,
        now: Instant,
        scope: &Scope,
        holder: &NodeId,
        ttl: Duration,
    ) -> LockOutcome {
        let mut inner = self.lock_inner();
        inner.calls += 1;
        let next_token = inner.revision + 1;
        let s = inner.scope(scope, now);
        match &mut s.lock {
            Some(l) if &l.holder == holder => {
                l.expires = now + ttl;
                return LockOutcome::Acquired(LockToken(l.token.to_string()));
            }
            Some(_) => return LockOutcome::HeldByOther,
            None => {
                s.lock = Some(LockEntry {
                    holder: holder.clone(),
                    token: next_token,
                    expires: now + ttl,
                });
            }
        }
        // Tokens are revisions: never reused for a later holder.
        inner.bump(scope);
        drop(inner);
        self.changed.notify();
        LockOutcome::Acquired(LockToken(next_token.to_string()))
    }

    /// Registers `node` at `now` under the condition of `mode`.
    pub fn add_self_at(
        &self,
        now: Instant,
        scope: &Scope,
        node: &NodeId,
        ttl: Duration,
        mode: &AddMode,
    ) -> AddOutcome {
        let mut inner = self.lock_inner();
        inner.calls += 1;
        let ignore_conditions = inner.ignore_write_conditions;
        let s = inner.scope(scope, now);
        let allowed = ignore_conditions
            || match mode {
                AddMode::Seed {
                    lock,
                    cluster,
                    expected_epoch_version,
                } => {
                    let holds_lock = s.lock.as_ref().is_some_and(|l| {
                        &l.holder == node && LockToken(l.token.to_string()) == *lock
                    });
                    let epoch_ok = s.epoch.map(|e| e.version) == *expected_epoch_version
                        || s.epoch.is_some_and(|e| e.cluster == *cluster);
                    holds_lock && epoch_ok
                }
                // A member whose epoch marker is gone (data loss) re-creates it.
                AddMode::Join { cluster } => {
                    s.epoch.is_none() || s.epoch.map(|e| e.cluster) == *cluster
                }
            };
        if !allowed {
            return AddOutcome::Refused;
        }
        s.nodes.insert(
            base64_address(&node.address),
            NodeEntry {
                raw: entry::encode_node(node),
                expires: now + ttl,
            },
        );
        let rev = inner.bump(scope);
        let s = inner.scope(scope, now);
        let cluster = match mode {
            AddMode::Seed { cluster, .. } => Some(*cluster),
            AddMode::Join { cluster } => *cluster,
        };
        s.epoch = cluster.map(|cluster| Epoch {
            cluster,
            version: rev,
        });
        drop(inner);
        self.changed.notify();
        AddOutcome::Added
    }

    /// Extends `node`'s entry at `now`.
    pub fn refresh_at(
        &self,
        now: Instant,
        scope: &Scope,
        node: &NodeId,
        ttl: Duration,
    ) -> RefreshOutcome {
        let mut inner = self.lock_inner();
        inner.calls += 1;
        let s = inner.scope(scope, now);
        match s.nodes.get_mut(&base64_address(&node.address)) {
            Some(e)
                if entry::decode_node(&base64_address(&node.address), &e.raw)
                    .ok()
                    .as_ref()
                    == Some(node) =>
            {
                e.expires = now + ttl;
                RefreshOutcome::Refreshed
            }
            _ => RefreshOutcome::Missing,
        }
    }

    /// Removes `node`'s entry at `now` (only this incarnation's).
    pub fn remove_self_at(&self, now: Instant, scope: &Scope, node: &NodeId) {
        let mut inner = self.lock_inner();
        inner.calls += 1;
        let key = base64_address(&node.address);
        let s = inner.scope(scope, now);
        let ours = s
            .nodes
            .get(&key)
            .is_some_and(|e| entry::decode_node(&key, &e.raw).ok().as_ref() == Some(node));
        if ours {
            s.nodes.remove(&key);
            inner.bump(scope);
            drop(inner);
            self.changed.notify();
        }
    }

    /// Test-only: remove the fencing mechanism (write `add_self` whatever its condition), to
    /// show that the tests catch its absence.
    #[doc(hidden)]
    pub fn set_ignore_write_conditions(&self, ignore: bool) {
        self.lock_inner().ignore_write_conditions = ignore;
    }

    /// The revision of the last write to `scope`.
    pub fn revision(&self, scope: &Scope) -> u64 {
        self.lock_inner()
            .scopes
            .get(scope)
            .map_or(0, |s| s.revision)
    }

    /// Fault switch: the lock of `scope` is lost (as if its TTL ran out).
    pub fn expire_lock(&self, scope: &Scope) {
        if let Some(s) = self.lock_inner().scopes.get_mut(scope) {
            s.lock = None;
        }
    }

    /// Fault switch: the entry of `address` expires now.
    pub fn expire_entry(&self, scope: &Scope, address: &str) {
        if let Some(s) = self.lock_inner().scopes.get_mut(scope) {
            s.nodes.remove(&base64_address(address));
        }
    }

    /// Writes a raw value under `{base}/nodes/{key_suffix}`, e.g. garbage for tests.
    pub fn put_raw(&self, scope: &Scope, key_suffix: &str, value: &[u8], ttl: Duration) {
        let now = self.clock.now();
        let mut inner = self.lock_inner();
        inner.scope(scope, now).nodes.insert(
            key_suffix.to_owned(),
            NodeEntry {
                raw: value.to_vec(),
                expires: now + ttl,
            },
        );
        inner.bump(scope);
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
    async fn faulty<T>(&self, op: impl FnOnce(Instant) -> T) -> Result<T, CoordinationError> {
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

fn base64_address(address: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(address)
}

#[async_trait]
impl Coordination for MemoryCoordination {
    async fn get_nodes(&self, scope: &Scope) -> Result<Registry, CoordinationError> {
        self.faulty(|now| self.get_nodes_at(now, scope)).await
    }

    async fn lock(
        &self,
        scope: &Scope,
        holder: &NodeId,
        ttl: Duration,
    ) -> Result<LockOutcome, CoordinationError> {
        self.faulty(|now| self.lock_at(now, scope, holder, ttl))
            .await
    }

    async fn add_self(
        &self,
        scope: &Scope,
        node: &NodeId,
        ttl: Duration,
        mode: &AddMode,
    ) -> Result<AddOutcome, CoordinationError> {
        self.faulty(|now| self.add_self_at(now, scope, node, ttl, mode))
            .await
    }

    async fn refresh(
        &self,
        scope: &Scope,
        node: &NodeId,
        ttl: Duration,
    ) -> Result<RefreshOutcome, CoordinationError> {
        self.faulty(|now| self.refresh_at(now, scope, node, ttl))
            .await
    }

    async fn remove_self(&self, scope: &Scope, node: &NodeId) -> Result<(), CoordinationError> {
        self.faulty(|now| self.remove_self_at(now, scope, node))
            .await
    }

    async fn wait_for_change(
        &self,
        scope: &Scope,
        revision: Option<u64>,
    ) -> Result<WaitOutcome, CoordinationError> {
        loop {
            let seen = self.changed.version();
            if revision.is_none_or(|r| self.revision(scope) > r) {
                return Ok(WaitOutcome::Changed);
            }
            self.changed.changed_since(seen).await;
        }
    }
}
