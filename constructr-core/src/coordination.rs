//! The `Coordination` trait: what a backend (etcd, Consul, memory, ...) must provide.

use std::time::Duration;

use async_trait::async_trait;

use crate::node::{ClusterId, Epoch, NodeId, Scope};

/// How many node entries a bounded read ([`Coordination::get_some_nodes`]) returns at
/// most: at least 2, so that a node that finds no other node in the answer (the answer may
/// hold its own entry) knows that there is none.
///
/// ```
/// use constructr_core::coordination::NodeLimit;
///
/// assert_eq!(NodeLimit::new(1), None);
/// assert_eq!(NodeLimit::new(6).map(NodeLimit::get), Some(6));
/// // What joining with at most 5 seeds needs: 5 others and maybe this node itself.
/// assert_eq!(NodeLimit::for_seeds(5).map(NodeLimit::get), Some(6));
/// // 0 = every registered node is a seed: no bound.
/// assert_eq!(NodeLimit::for_seeds(0), None);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeLimit(usize);

impl NodeLimit {
    /// A limit of `n` entries; `None` if `n < 2`.
    pub fn new(n: usize) -> Option<Self> {
        (n >= 2).then_some(Self(n))
    }

    /// The read a node needs to join with at most `max_seeds` others (the
    /// `max-nr-of-seed-nodes` setting): `max_seeds + 1` entries, since one may be its own.
    /// `None` (read everything) for 0, which means every registered node.
    pub fn for_seeds(max_seeds: usize) -> Option<Self> {
        match max_seeds {
            0 => None,
            n => Some(Self(n.saturating_add(1).max(2))),
        }
    }

    /// The number of entries.
    pub fn get(self) -> usize {
        self.0
    }
}

/// The result of a [`Coordination`] call; the error is a [`CoordinationError`] unless named.
pub type Result<T, E = CoordinationError> = std::result::Result<T, E>;

/// The registered nodes of one cluster, as read in one consistent read.
#[derive(Clone, Debug, PartialEq, Eq, Default, Hash)]
pub struct Registry {
    /// Registered nodes (undecodable entries already skipped by the backend).
    pub nodes: Vec<NodeId>,
    /// The cluster epoch marker, if any cluster ever registered under this scope.
    pub epoch: Option<Epoch>,
    /// The backend's revision of this read (etcd revision, Consul index), used as the
    /// starting point of [`Coordination::wait_for_change`]. `None` if the backend has none.
    pub revision: Option<u64>,
    /// Who held the bootstrap lock at this read, if the backend reports it (`None`: free,
    /// or not reported). A node that finds the lock held by another does not try to take
    /// it: it waits for the holder's registration (no lock request, no lease for nothing).
    pub lock: Option<NodeId>,
}

impl Registry {
    /// A copy with `limit` of the entries (all if there are no more), taken from the
    /// `start`-th on (modulo their number), wrapping around: what a backend that shares one
    /// read between many nodes hands each of them for [`Coordination::get_some_nodes`], with
    /// a different `start` each, so that they do not all join the same seeds.
    ///
    /// ```
    /// use constructr_core::{NodeId, NodeLimit, Registry};
    ///
    /// let registry = Registry {
    ///     nodes: (1..=4).map(|i| NodeId::new(format!("10.0.0.{i}:2552"), 1)).collect(),
    ///     ..Registry::default()
    /// };
    /// let some = registry.some(NodeLimit::new(2).unwrap(), 3);
    /// let addresses: Vec<_> = some.nodes.iter().map(|n| n.address.as_str()).collect();
    /// assert_eq!(addresses, ["10.0.0.4:2552", "10.0.0.1:2552"]);
    /// ```
    pub fn some(&self, limit: NodeLimit, start: usize) -> Registry {
        let all = &self.nodes;
        let nodes = if all.len() <= limit.get() {
            all.clone()
        } else {
            let start = start % all.len();
            all[start..]
                .iter()
                .chain(&all[..start])
                .take(limit.get())
                .cloned()
                .collect()
        };
        Registry {
            nodes,
            epoch: self.epoch,
            revision: self.revision,
            lock: self.lock.clone(),
        }
    }
}

/// One node's claim on a key with a time to live: what [`Coordination::lock`],
/// [`Coordination::add_self`] and [`Coordination::refresh`] act on.
///
/// ```
/// use std::time::Duration;
/// use constructr_core::{ClusterName, NodeId, Scope};
///
/// let scope = Scope::new("/constructr", ClusterName::new("shop").unwrap()).unwrap();
/// let node = NodeId::new("10.0.0.1:2552", 1);
/// let lease = scope.lease(&node, Duration::from_secs(30));
/// assert_eq!(lease.ttl, Duration::from_secs(30));
/// assert_eq!(lease.node, &node);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Lease<'a> {
    /// The cluster's registry.
    pub scope: &'a Scope,
    /// The node that holds the lock or owns the entry.
    pub node: &'a NodeId,
    /// How long the key lives unless refreshed.
    pub ttl: Duration,
}

impl Scope {
    /// `node`'s claim with `ttl` under this scope: the argument of [`Coordination::lock`],
    /// [`Coordination::add_self`] and [`Coordination::refresh`].
    pub fn lease<'a>(&'a self, node: &'a NodeId, ttl: Duration) -> Lease<'a> {
        Lease {
            scope: self,
            node,
            ttl,
        }
    }
}

/// The opaque proof of holding the bootstrap lock (etcd: the lock key's create revision,
/// Consul: the lock session id). Backends check it when writing a fenced registration.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LockToken(pub String);

/// Result of [`Coordination::lock`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum LockOutcome {
    /// This node holds the lock (newly, or again: locking is re-entrant for the holder).
    Acquired(LockToken),
    /// Another node holds the lock.
    HeldByOther,
}

/// The condition under which [`Coordination::add_self`] may write.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum AddMode {
    /// The seeding node's first registration (fenced). Written, together with the epoch
    /// marker set to `cluster`, only if **both**:
    /// - the lock is still held by this node with `lock`, and
    /// - the epoch marker is unchanged since the read that found the registry empty
    ///   (`expected_epoch_version`, `None` = no marker existed), **or** already names
    ///   `cluster` (so a retry after a lost reply succeeds).
    Seed {
        /// Token returned by [`Coordination::lock`].
        lock: LockToken,
        /// The new cluster's id.
        cluster: ClusterId,
        /// [`Epoch::version`] of the read that found no nodes.
        expected_epoch_version: Option<u64>,
    },
    /// A member's registration: written only if the epoch marker names `cluster`, or if
    /// no marker exists (`None` always needs that; `Some(c)` then re-creates the marker
    /// naming `c`, so that members outlive a backend that lost its data — whoever creates
    /// the marker first owns the registry). A successful write changes the marker's version.
    Join {
        /// The cluster this node is a member of.
        cluster: Option<ClusterId>,
    },
}

impl AddMode {
    /// The cluster this registration belongs to (`None`: a member of a registry without
    /// epoch marker).
    pub fn cluster(&self) -> Option<ClusterId> {
        match self {
            AddMode::Seed { cluster, .. } => Some(*cluster),
            AddMode::Join { cluster } => *cluster,
        }
    }
}

/// Result of [`Coordination::add_self`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum AddOutcome {
    /// The entry is written with the requested TTL.
    Added,
    /// The condition of the [`AddMode`] did not hold; nothing was written.
    Refused,
}

/// Result of [`Coordination::refresh`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RefreshOutcome {
    /// The TTL of this node's entry was extended.
    Refreshed,
    /// This node's entry (with this incarnation) is not there any more: it expired,
    /// was removed, or was replaced by another incarnation.
    Missing,
}

/// What a backend guarantees ([`Coordination::guarantees`]): the state machine's safety
/// ("exactly one cluster forms") rests on the first two; the conformance suite runs every
/// check the declared guarantees cover.
///
/// ```
/// use constructr_core::coordination::Guarantees;
///
/// assert!(Guarantees::STRONG.is_safe_for_bootstrap());
/// let gossip = Guarantees { watch: true, ..Guarantees::NONE };
/// assert_eq!(gossip.missing_for_bootstrap(), ["linearizable", "exclusive_lock"]);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Guarantees {
    /// Every call observes every call that completed before it (consistent reads).
    pub linearizable: bool,
    /// `lock` is exclusive per scope, `add_self` is fenced by the lock and the epoch, and
    /// the epoch marker outlives the nodes (the Lock, Fencing and Epoch points of the
    /// [`Coordination`] contract).
    pub exclusive_lock: bool,
    /// Entries disappear after their TTL (the TTL point of the contract).
    pub ttl_expiry: bool,
    /// `wait_for_change` wakes on a change instead of answering
    /// [`WaitOutcome::Unsupported`].
    pub watch: bool,
}

impl Guarantees {
    /// Everything: what etcd, Consul and the memory backend give.
    pub const STRONG: Guarantees = Guarantees {
        linearizable: true,
        exclusive_lock: true,
        ttl_expiry: true,
        watch: true,
    };

    /// Nothing.
    pub const NONE: Guarantees = Guarantees {
        linearizable: false,
        exclusive_lock: false,
        ttl_expiry: false,
        watch: false,
    };

    /// Whether "exactly one cluster forms" holds on this backend: linearizable, with an
    /// exclusive fenced lock.
    pub fn is_safe_for_bootstrap(&self) -> bool {
        self.missing_for_bootstrap().is_empty()
    }

    /// The guarantees that "exactly one cluster forms" needs and this backend lacks.
    pub fn missing_for_bootstrap(&self) -> Vec<&'static str> {
        let mut missing = Vec::new();
        if !self.linearizable {
            missing.push("linearizable");
        }
        if !self.exclusive_lock {
            missing.push("exclusive_lock");
        }
        missing
    }

    /// Whether every guarantee of `needs` is among these.
    pub fn covers(&self, needs: &Guarantees) -> bool {
        (self.linearizable || !needs.linearizable)
            && (self.exclusive_lock || !needs.exclusive_lock)
            && (self.ttl_expiry || !needs.ttl_expiry)
            && (self.watch || !needs.watch)
    }
}

/// Result of [`Coordination::wait_for_change`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum WaitOutcome {
    /// Something under the scope changed after the given revision.
    Changed,
    /// The backend cannot watch; the caller falls back to polling after its delay.
    Unsupported,
}

/// An error of a coordination backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoordinationError {
    /// The backend could not be reached or answered with a transient failure; retrying may help.
    #[error("coordination service unavailable: {message}")]
    Unavailable {
        /// What went wrong, without secrets.
        message: String,
        /// The underlying error.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The request did not complete in time; retrying may help.
    #[error("coordination request timed out")]
    Timeout,
    /// Authentication or authorization failed; retrying will not help.
    #[error("coordination service refused access: {message}")]
    Unauthorized {
        /// What the backend said, without secrets.
        message: String,
    },
    /// The request was invalid for this backend (e.g. a TTL it does not support); permanent.
    #[error("invalid coordination request: {message}")]
    Invalid {
        /// Which rule was broken.
        message: String,
    },
    /// Any other permanent failure.
    #[error("coordination failed permanently: {message}")]
    Permanent {
        /// What went wrong.
        message: String,
        /// The underlying error.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

/// The kinds of [`CoordinationError`], for matching on what went wrong and for drivers
/// that map their own errors onto it ([`CoordinationError::of_kind`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// [`CoordinationError::Unavailable`]: transient.
    Unavailable,
    /// [`CoordinationError::Timeout`]: transient.
    Timeout,
    /// [`CoordinationError::Unauthorized`]: permanent.
    Unauthorized,
    /// [`CoordinationError::Invalid`]: permanent.
    Invalid,
    /// [`CoordinationError::Permanent`]: permanent.
    Permanent,
}

impl ErrorKind {
    /// Whether retrying may succeed: `Unavailable` and `Timeout`.
    ///
    /// Drivers define their own `is_retryable` through it, so that a driver error and the
    /// coordination error it maps to always agree.
    pub fn is_retryable(self) -> bool {
        matches!(self, Self::Unavailable | Self::Timeout)
    }
}

impl CoordinationError {
    /// A driver's `error` as the coordination error of `kind`. The message is the error's
    /// whole chain ([`error_chain`]: the state machine keeps messages, not error values);
    /// `Unavailable` and `Permanent` keep the error as their source.
    ///
    /// ```
    /// use constructr_core::{CoordinationError, coordination::ErrorKind};
    ///
    /// let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
    /// let e = CoordinationError::of_kind(ErrorKind::Unavailable, io);
    /// assert!(e.is_retryable());
    /// assert_eq!(e.kind(), ErrorKind::Unavailable);
    /// ```
    pub fn of_kind<E>(kind: ErrorKind, error: E) -> Self
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        let message = error_chain(&error);
        match kind {
            ErrorKind::Unavailable => Self::Unavailable {
                message,
                source: Some(Box::new(error)),
            },
            ErrorKind::Timeout => Self::Timeout,
            ErrorKind::Unauthorized => Self::Unauthorized { message },
            ErrorKind::Invalid => Self::Invalid { message },
            ErrorKind::Permanent => Self::Permanent {
                message,
                source: Some(Box::new(error)),
            },
        }
    }

    /// Which kind of error this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Unavailable { .. } => ErrorKind::Unavailable,
            Self::Timeout => ErrorKind::Timeout,
            Self::Unauthorized { .. } => ErrorKind::Unauthorized,
            Self::Invalid { .. } => ErrorKind::Invalid,
            Self::Permanent { .. } => ErrorKind::Permanent,
        }
    }

    /// A transient error with a message.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::Unavailable {
            message: message.into(),
            source: None,
        }
    }

    /// A transient error with a message and its cause.
    pub fn unavailable_from(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Unavailable {
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }

    /// A permanent error with a message.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self::Permanent {
            message: message.into(),
            source: None,
        }
    }

    /// Whether retrying the same request may succeed (ConstructR issue #92).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable { .. } | Self::Timeout)
    }

    /// A cloneable summary (kind + message) for the state machine's plain-data outputs.
    pub fn summary(&self) -> ErrorSummary {
        ErrorSummary {
            retryable: self.is_retryable(),
            kind: Some(self.kind()),
            message: self.to_string(),
        }
    }
}

/// `err: cause: cause ...` — an error and its sources on one line, skipping a cause whose
/// text its parent already printed. Backends use it for the messages the state machine
/// keeps (it keeps messages, not error values).
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !out.ends_with(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    out
}

/// A plain-data copy of an error: whether it was retryable, its kind and its message.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ErrorSummary {
    /// Whether the error was worth retrying.
    pub retryable: bool,
    /// The kind of a [`CoordinationError`]; `None` for a cluster (join) error.
    pub kind: Option<ErrorKind>,
    /// Its display message.
    pub message: String,
}

impl std::fmt::Display for ErrorSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// A coordination service that keeps a cluster's registry: node entries with TTLs, a
/// bootstrap lock and the cluster epoch marker.
///
/// One value may serve many nodes and many clusters at once: every method names the
/// [`Scope`] and, where it matters, the [`NodeId`].
///
/// # Contract
/// - **Linearizable.** Every method observes the effects of every call that completed
///   before it started. `get_nodes` is a consistent read (no stale follower reads).
/// - **Registry.** `get_nodes` returns every unexpired node entry of the scope and the
///   epoch marker. Entries that cannot be decoded are skipped with a `tracing` warning,
///   never an error. One entry per address: a new incarnation replaces an old one.
/// - **Bounded read.** `get_some_nodes(scope, limit)` is `get_nodes` that returns exactly
///   `min(limit, registered)` of the decodable entries (which ones is the backend's
///   choice), with the epoch, lock and revision of the same consistent read. An entry that
///   cannot be decoded does not count: a backend that reads a page of raw entries reads on
///   until it has `limit` decodable ones or none are left. Since `limit >= 2`, a node that
///   finds no other entry than its own knows that no other is registered.
/// - **TTL.** An entry written with TTL `t` by `add_self` or extended by `refresh`
///   disappears at the latest `t` plus a backend-specific bound after that call returned
///   (etcd: lease granularity of 1 s; Consul: up to `2 × t`). The implementation documents its bound.
/// - **Lock.** `lock` is exclusive per scope and expires after its TTL. Calling it again
///   while holding it returns `Acquired` with the **same** token and extends the TTL.
///   A token is never reused for a later holder.
/// - **Fencing.** `add_self` writes only under the condition of its [`AddMode`], checked
///   atomically with the write. `Refused` means nothing was written.
/// - **Epoch.** A successful `AddMode::Seed` sets the epoch marker to its cluster;
///   every successful `add_self` changes [`Epoch::version`]. The marker never expires.
///   A marker whose value cannot be decoded is reported (with a warning) as
///   [`ClusterId::UNREADABLE`] with its real version, so a seed can replace it.
/// - **Incarnations.** `refresh` and `remove_self` act only on the entry of exactly this
///   `NodeId`; an entry of another incarnation at the same address is left alone.
/// - `remove_self` of an absent entry succeeds.
/// - **Refresh TTL.** `refresh` is called with the TTL the entry was registered with (the
///   state machine never changes it); a backend that binds the TTL at registration (etcd
///   lease, Consul session) extends by that TTL and may ignore `lease.ttl`.
/// - **Watch.** `wait_for_change(scope, Some(r))` resolves `Changed` once anything under
///   `scope` changed after revision `r` (at once if it already has);
///   `wait_for_change(scope, None)` (the read had no revision) resolves `Changed` at the
///   first change after the call, **never at once**: the state machine re-reads on
///   `Changed`, so an immediate answer would make a polling loop. A backend that cannot
///   watch answers [`WaitOutcome::Unsupported`] and does not declare
///   [`Guarantees::watch`].
///
/// A backend declares what of this contract it keeps ([`Coordination::guarantees`]);
/// [`crate::driver::NodeBuilder::spawn`] refuses one that lacks what "exactly one cluster
/// forms" needs unless the caller opts in.
///
/// # Errors
/// Transient failures are [`CoordinationError::Unavailable`] or [`CoordinationError::Timeout`]
/// (retryable, see [`CoordinationError::is_retryable`]); bad credentials are
/// [`CoordinationError::Unauthorized`]; everything else that retrying cannot fix is
/// permanent. An error says nothing about whether a write took effect: callers retry
/// idempotently (all writes here are idempotent for the same arguments).
///
/// # Cancellation
/// Every future may be dropped at any point (the driver drops requests that outlive the
/// coordination timeout). A dropped write may or may not have taken effect; it never
/// leaves a partial write behind (each write is one atomic backend operation).
#[async_trait]
pub trait Coordination: Send + Sync + 'static {
    /// Reads the registered nodes and the epoch marker of `scope` in one consistent read.
    async fn get_nodes(&self, scope: &Scope) -> Result<Registry>;

    /// Reads `min(limit, registered)` of the registered nodes, with the epoch marker and
    /// the lock, in one consistent read (see **Bounded read** above). What a joining node
    /// needs: a few seeds and whether anyone else is registered, in bytes that do not grow
    /// with the cluster.
    ///
    /// The default reads everything and keeps the first `limit` entries; a backend that can
    /// limit its reads (etcd's range limit) or share them between nodes overrides it.
    async fn get_some_nodes(&self, scope: &Scope, limit: NodeLimit) -> Result<Registry> {
        let mut registry = self.get_nodes(scope).await?;
        registry.nodes.truncate(limit.get());
        Ok(registry)
    }

    /// Tries to take the bootstrap lock for `lease.node` with `lease.ttl`. Re-entrant.
    async fn lock(&self, lease: Lease<'_>) -> Result<LockOutcome>;

    /// Registers `lease.node` with `lease.ttl` under the condition of `mode` (see [`AddMode`]).
    async fn add_self(&self, lease: Lease<'_>, mode: &AddMode) -> Result<AddOutcome>;

    /// Extends the TTL of `lease.node`'s own entry.
    async fn refresh(&self, lease: Lease<'_>) -> Result<RefreshOutcome>;

    /// Removes `node`'s own entry at once (graceful shutdown).
    async fn remove_self(&self, scope: &Scope, node: &NodeId) -> Result<()>;

    /// What this backend guarantees of the contract above (see [`Guarantees`]). Declare
    /// only what holds: the builder refuses a backend without linearizability and an
    /// exclusive lock unless the caller opts in, and the conformance suite checks what is
    /// declared.
    fn guarantees(&self) -> Guarantees;

    /// Checks the backend's own limits on the node settings (e.g. Consul's session TTLs of
    /// 10 s to 24 h), so that no node starts with settings the backend would refuse later.
    /// [`crate::driver::NodeBuilder::spawn`] calls it; the default accepts everything.
    fn check_settings(&self, settings: &crate::Settings) -> Result<(), crate::SettingsError> {
        let _ = settings;
        Ok(())
    }

    /// Resolves when a node registered under `scope`, or its lock was released, after
    /// `revision` (a [`Registry::revision`]). It may also resolve on other changes (a
    /// spurious wake-up costs the caller one read), but never at once without a change.
    ///
    /// Backends that can watch (etcd watch, Consul blocking query) override this so nodes
    /// waiting for a seed wake at once. The default returns [`WaitOutcome::Unsupported`]
    /// immediately and the state machine polls after `retry_delay`. Callers bound the wait
    /// themselves (they drop the future); implementations need no timeout of their own.
    async fn wait_for_change(&self, scope: &Scope, revision: Option<u64>) -> Result<WaitOutcome> {
        let _ = (scope, revision);
        Ok(WaitOutcome::Unsupported)
    }

    /// How many requests this backend value sent to its service so far (retries and
    /// watches included), for benchmarks and metrics; `None` if it does not count them.
    fn requests_sent(&self) -> Option<u64> {
        None
    }
}

#[async_trait]
impl<T: Coordination + ?Sized> Coordination for std::sync::Arc<T> {
    async fn get_nodes(&self, scope: &Scope) -> Result<Registry> {
        (**self).get_nodes(scope).await
    }
    async fn get_some_nodes(&self, scope: &Scope, limit: NodeLimit) -> Result<Registry> {
        (**self).get_some_nodes(scope, limit).await
    }
    async fn lock(&self, lease: Lease<'_>) -> Result<LockOutcome> {
        (**self).lock(lease).await
    }
    async fn add_self(&self, lease: Lease<'_>, mode: &AddMode) -> Result<AddOutcome> {
        (**self).add_self(lease, mode).await
    }
    async fn refresh(&self, lease: Lease<'_>) -> Result<RefreshOutcome> {
        (**self).refresh(lease).await
    }
    async fn remove_self(&self, scope: &Scope, node: &NodeId) -> Result<()> {
        (**self).remove_self(scope, node).await
    }
    fn check_settings(&self, settings: &crate::Settings) -> Result<(), crate::SettingsError> {
        (**self).check_settings(settings)
    }
    fn guarantees(&self) -> Guarantees {
        (**self).guarantees()
    }
    async fn wait_for_change(&self, scope: &Scope, revision: Option<u64>) -> Result<WaitOutcome> {
        (**self).wait_for_change(scope, revision).await
    }
    fn requests_sent(&self) -> Option<u64> {
        (**self).requests_sent()
    }
}
