//! The sans-IO bootstrap state machine.
//!
//! # How to drive it
//! The machine never performs I/O and never reads the clock. A driver:
//! 1. creates it with [`Machine::new`] (which queues the first action),
//! 2. **after every call that takes `now`**, drains [`Machine::poll_action`] and
//!    [`Machine::poll_event`] until both return `None`, executes every action and feeds
//!    each result back with [`Machine::handle_reply`] (passing the action's attempt id),
//! 3. calls [`Machine::handle_timeout`] once `now >= poll_timeout()`. A spurious or early
//!    wake-up is a no-op.
//!
//! Replies carrying an attempt id that is not the current one are ignored: a reply that
//! arrives after its request timed out can never be mistaken for the reply of a retry.
//! A driver may (and should) drop the future of an action whose attempt has been
//! superseded ([`Machine::is_awaiting`] tells), but it does not have to.
//!
//! # How it is built
//! The machine is a `Phase` (the state, with the data only that state needs: the lock
//! token while verifying, the seeds and the registration while joining, ...) and the I/O it
//! waits for (one request in flight, or a timer). Every input — a reply, a timeout, a
//! shutdown, a cluster event — becomes an `Input`, and **one function, `transition`, holds
//! the single `match (phase, input)`** that decides the next phase. Entering a phase issues
//! the request that phase stands for; `begin` is the one place that derives it.
//!
//! # Outages
//! A registered member never leaves its cluster because the coordination service is down:
//! a failed refresh moves it to [`State::Degraded`], where it retries with growing waits
//! (capped at `max-retry-delay` and at the refresh interval) until the service answers,
//! then refreshes or re-registers under its cluster's epoch. A node that is still
//! bootstrapping retries with the same growing waits for `retry-budget` before it fails.
//! A node that finds an empty registry whose epoch names a cluster waits
//! [`Settings::reseed_grace`] (watching) before it seeds, so that a live cluster whose entries
//! vanished re-registers first: the older cluster wins.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::cluster::{ClusterError, ClusterEvent};
use crate::coordination::{
    AddMode, AddOutcome, CoordinationError, ErrorKind, ErrorSummary, LockOutcome, LockToken,
    NodeLimit, RefreshOutcome, Registry, WaitOutcome,
};
use crate::node::{ClusterId, NodeId};
use crate::settings::{Settings, SettingsError};

/// Identifies one request; replies to any other attempt are stale and ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttemptId(pub u64);

/// An effect the driver must execute. Coordination actions map 1:1 to
/// [`crate::Coordination`] methods, cluster actions to [`crate::Cluster`] methods.
#[must_use = "every action must be executed and its result fed back"]
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Call `Coordination::get_some_nodes` with `limit`, or `Coordination::get_nodes` if
    /// it is `None`; reply with [`Reply::Nodes`].
    GetNodes {
        /// Attempt id for the reply.
        attempt: AttemptId,
        /// How many entries the read needs: `None` for all of them.
        limit: Option<NodeLimit>,
    },
    /// Call `Coordination::lock`; reply with [`Reply::Lock`].
    Lock {
        /// Attempt id for the reply.
        attempt: AttemptId,
        /// Lock TTL.
        ttl: Duration,
    },
    /// Call `Coordination::add_self`; reply with [`Reply::AddSelf`].
    AddSelf {
        /// Attempt id for the reply.
        attempt: AttemptId,
        /// Entry TTL.
        ttl: Duration,
        /// Write condition.
        mode: AddMode,
    },
    /// Call `Coordination::refresh`; reply with [`Reply::Refresh`].
    Refresh {
        /// Attempt id for the reply.
        attempt: AttemptId,
        /// Entry TTL.
        ttl: Duration,
    },
    /// Call `Coordination::remove_self`; reply with [`Reply::RemoveSelf`].
    RemoveSelf {
        /// Attempt id for the reply.
        attempt: AttemptId,
    },
    /// Call `Coordination::wait_for_change`; reply with [`Reply::Changed`]. An early wake-up
    /// only: the machine re-reads the nodes at its own timeout regardless.
    WaitForChange {
        /// Attempt id for the reply.
        attempt: AttemptId,
        /// The revision of the last read.
        after: Option<u64>,
    },
    /// Call `Cluster::join`; reply with [`Reply::Joined`] (or report [`ClusterEvent::SelfUp`]).
    JoinCluster {
        /// Attempt id for the reply.
        attempt: AttemptId,
        /// Seed nodes (exactly this node when seeding a new cluster).
        seeds: Vec<NodeId>,
    },
    /// Call `Cluster::leave`; reply with [`Reply::Left`].
    LeaveCluster {
        /// Attempt id for the reply.
        attempt: AttemptId,
    },
}

impl Action {
    /// The attempt id the reply must carry.
    pub fn attempt(&self) -> AttemptId {
        match self {
            Action::GetNodes { attempt, .. }
            | Action::Lock { attempt, .. }
            | Action::AddSelf { attempt, .. }
            | Action::Refresh { attempt, .. }
            | Action::RemoveSelf { attempt }
            | Action::WaitForChange { attempt, .. }
            | Action::JoinCluster { attempt, .. }
            | Action::LeaveCluster { attempt } => *attempt,
        }
    }
}

/// The result of an executed [`Action`].
#[derive(Debug)]
pub enum Reply {
    /// Result of `get_nodes`.
    Nodes(Result<Registry, CoordinationError>),
    /// Result of `lock`.
    Lock(Result<LockOutcome, CoordinationError>),
    /// Result of `add_self`.
    AddSelf(Result<AddOutcome, CoordinationError>),
    /// Result of `refresh`.
    Refresh(Result<RefreshOutcome, CoordinationError>),
    /// Result of `remove_self`.
    RemoveSelf(Result<(), CoordinationError>),
    /// Result of `wait_for_change`.
    Changed(Result<WaitOutcome, CoordinationError>),
    /// Result of `Cluster::join`.
    Joined(Result<(), ClusterError>),
    /// Result of `Cluster::leave`.
    Left(Result<(), ClusterError>),
}

/// The machine's states (ConstructR's, plus the safety, outage and shutdown states).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    /// Reading the registered nodes.
    GettingNodes,
    /// The registry was empty: taking the bootstrap lock.
    Locking,
    /// Holding the lock: re-reading the nodes before seeding.
    VerifyingEmpty,
    /// Another node holds the lock, or the registry's cluster may still re-register (the
    /// re-seed grace): waiting for a registration (watch) or a timer, then re-reading.
    WaitingForNodes,
    /// Joining the seeds of the registered cluster.
    Joining,
    /// Registering in the coordination service: a member after its join, or a seed
    /// *before* it forms its cluster (its fenced registration first).
    AddingSelf,
    /// A seed whose fenced registration committed: forming its cluster (joining itself),
    /// only while that registration's lease certainly holds (else it refreshes it first).
    Forming,
    /// The seed's fenced registration was refused after an attempt whose outcome is
    /// unknown: re-reading the registry to recognise its own committed registration.
    ConfirmingSeed,
    /// Registered: waiting for the next refresh.
    RefreshScheduled,
    /// Refreshing the registration.
    Refreshing,
    /// A registered member whose registration is not confirmed (the coordination service
    /// failed): still a member, retrying with growing waits.
    Degraded,
    /// Leaving the cluster to start over (refused registration, join timeout or error).
    Resetting,
    /// Graceful shutdown: leaving the cluster.
    Leaving,
    /// Graceful shutdown: removing this node's entry.
    RemovingSelf,
    /// Terminal: shut down.
    Stopped,
    /// Terminal: failed, see [`Machine::failure`].
    Failed,
}

impl State {
    /// Whether the machine will not change any more.
    pub fn is_terminal(self) -> bool {
        matches!(self, State::Stopped | State::Failed)
    }

    /// Whether this node is a registered member whose registration is confirmed.
    pub fn is_registered(self) -> bool {
        matches!(self, State::RefreshScheduled | State::Refreshing)
    }
}

/// Why the machine failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Hash)]
#[non_exhaustive]
pub enum Failure {
    /// Coordination requests kept failing for `retry-budget` (or `nr-of-retries` times).
    #[error("coordination failed in state {state:?} after all retries: {error}")]
    RetriesExhausted {
        /// The state the request belonged to.
        state: State,
        /// The last error.
        error: ErrorSummary,
    },
    /// The coordination service returned a permanent error.
    #[error("coordination failed permanently in state {state:?}: {error}")]
    Permanent {
        /// The state the request belonged to.
        state: State,
        /// The error.
        error: ErrorSummary,
    },
    /// Joining timed out and `abort_on_join_timeout` is set.
    #[error("joining the cluster timed out")]
    JoinTimeout,
    /// Joining kept failing for `retry-budget` (or `nr-of-retries` times).
    #[error("joining the cluster failed after all retries: {error}")]
    JoinFailed {
        /// The last join error.
        error: String,
    },
    /// A backend or cluster call panicked (reported by the driver, never by the machine).
    #[error("{what} panicked: {message}")]
    Panicked {
        /// Which call.
        what: String,
        /// The panic message.
        message: String,
    },
    /// The node was shut down before it registered (reported by the driver's
    /// `registered()`, never by the machine).
    #[error("the node stopped before it registered")]
    StoppedBeforeRegistering,
}

impl Failure {
    /// The kind of the coordination error behind the failure ([`Failure::RetriesExhausted`]
    /// and [`Failure::Permanent`]), to match on what went wrong (unauthorized, invalid,
    /// unavailable, ...); `None` for failures of the cluster or the node itself.
    ///
    /// ```
    /// use constructr_core::coordination::ErrorKind;
    /// use constructr_core::{CoordinationError, Failure, State};
    ///
    /// let failure = Failure::Permanent {
    ///     state: State::GettingNodes,
    ///     error: CoordinationError::Unauthorized { message: "bad password".into() }.summary(),
    /// };
    /// assert_eq!(failure.kind(), Some(ErrorKind::Unauthorized));
    /// assert_eq!(Failure::JoinTimeout.kind(), None);
    /// ```
    pub fn kind(&self) -> Option<ErrorKind> {
        match self {
            Failure::RetriesExhausted { error, .. } | Failure::Permanent { error, .. } => {
                error.kind
            }
            Failure::JoinTimeout
            | Failure::JoinFailed { .. }
            | Failure::Panicked { .. }
            | Failure::StoppedBeforeRegistering => None,
        }
    }
}

/// Something the application may want to observe. `Display` gives one line for logs.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Event {
    /// The state changed.
    StateChanged {
        /// The old state.
        from: State,
        /// The new state.
        to: State,
    },
    /// A request (or a join) failed and will be retried after `retry_in`.
    Retrying {
        /// The state the request belongs to.
        state: State,
        /// The error.
        error: ErrorSummary,
        /// The wait before the retry.
        retry_in: Duration,
    },
    /// The fenced registration of this node's seeding was refused: it starts over.
    SeedRefused,
    /// After a refused retry of its fenced registration, the seed found its own earlier
    /// registration committed (the reply had been lost): it goes on to form its cluster.
    SeedConfirmed,
    /// The seed's registration lapsed before it formed its cluster (it was paused for
    /// longer than the entry's TTL): it starts over, having formed nothing.
    SeedLapsed,
    /// The registry is empty but its epoch names `cluster`: this node waits up to `grace`
    /// for that cluster's members to re-register before it may seed.
    ReseedGrace {
        /// The cluster the epoch names.
        cluster: ClusterId,
        /// How long this node waits at most.
        grace: Duration,
    },
    /// A registered member's re-registration was refused (another cluster owns the
    /// registry now): it leaves its cluster and starts over.
    ClusterLost {
        /// The cluster it leaves.
        cluster: Option<ClusterId>,
    },
    /// The cluster runtime and the registry disagree, and have for `lasting` (reported by
    /// the driver's [`DivergenceMonitor`](crate::divergence::DivergenceMonitor), never by
    /// the machine): a second cluster may run beside this node's.
    ClusterDivergence {
        /// Registered nodes the runtime does not show as live members.
        unseen: usize,
        /// Live members of this node's cluster that are not registered.
        unregistered: usize,
        /// The registry's epoch names another cluster than this node's.
        foreign_epoch: bool,
        /// How long the divergence has lasted so far.
        lasting: Duration,
    },
    /// A reported divergence is gone: runtime and registry agree again.
    ClusterDivergenceEnded {
        /// How long it lasted.
        lasted: Duration,
    },
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::StateChanged { from, to } => write!(f, "{from:?} -> {to:?}"),
            Event::Retrying {
                state,
                error,
                retry_in,
            } => write!(f, "retrying in {state:?} after {retry_in:?}: {error}"),
            Event::SeedRefused => f.write_str("seed registration refused: starting over"),
            Event::SeedConfirmed => {
                f.write_str("seed registration found committed despite the lost reply")
            }
            Event::SeedLapsed => {
                f.write_str("seed registration lapsed before the cluster formed: starting over")
            }
            Event::ReseedGrace { cluster, grace } => write!(
                f,
                "registry empty, epoch names cluster {cluster}: waiting up to {grace:?} for its members"
            ),
            Event::ClusterLost { cluster } => match cluster {
                Some(c) => write!(f, "re-registration refused: leaving cluster {c}"),
                None => f.write_str("re-registration refused: leaving the cluster"),
            },
            Event::ClusterDivergence {
                unseen,
                unregistered,
                foreign_epoch,
                lasting,
            } => write!(
                f,
                "cluster divergence for {lasting:?}: {unseen} registered nodes not in the runtime, \
                 {unregistered} runtime members not registered{}",
                if *foreign_epoch {
                    ", the registry names another cluster"
                } else {
                    ""
                }
            ),
            Event::ClusterDivergenceEnded { lasted } => {
                write!(f, "cluster divergence ended after {lasted:?}")
            }
        }
    }
}

/// Test-only switches that remove a safety mechanism, to show the tests catch its absence
/// (feature `mutations`; never in a default build).
#[cfg(feature = "mutations")]
#[cfg_attr(docsrs, doc(cfg(feature = "mutations")))]
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Mutations {
    /// Seed directly after taking the lock, without re-reading the nodes.
    pub skip_reread_after_lock: bool,
    /// Form the new cluster first and register after (ConstructR's order): a seed cut off
    /// before its registration commits runs a cluster nobody can find.
    pub form_before_register: bool,
}

/// Model-checking support (feature `mutations`): a renaming of nodes and cluster ids, to
/// map a state to its symmetric twin (the same state with interchangeable nodes renamed).
/// Lists of nodes are put back in registry (key) order after renaming, as a read would
/// have returned them.
#[cfg(feature = "mutations")]
#[cfg_attr(docsrs, doc(cfg(feature = "mutations")))]
#[doc(hidden)]
pub struct Renaming<'a> {
    /// The new name of a node.
    pub node: &'a dyn Fn(&NodeId) -> NodeId,
    /// The new id of a cluster.
    pub cluster: &'a dyn Fn(ClusterId) -> ClusterId,
}

#[cfg(feature = "mutations")]
impl Renaming<'_> {
    /// Renames the nodes of `list` and sorts it in registry key order.
    pub fn nodes(&self, list: &mut [NodeId]) {
        for n in list.iter_mut() {
            *n = (self.node)(n);
        }
        list.sort_by_cached_key(|n| crate::memory::base64_address(&n.address));
    }

    /// Renames the cluster of a registration.
    pub fn mode(&self, mode: &mut AddMode) {
        match mode {
            AddMode::Seed { cluster, .. } => *cluster = (self.cluster)(*cluster),
            AddMode::Join { cluster } => *cluster = cluster.map(self.cluster),
        }
    }

    fn grace(&self, grace: &mut Option<Grace>) {
        if let Some(g) = grace {
            g.cluster = (self.cluster)(g.cluster);
        }
    }

    fn opt(&self, cluster: &mut Option<ClusterId>) {
        *cluster = cluster.map(self.cluster);
    }

    /// Renames what an action names.
    pub fn action(&self, action: &mut Action) {
        match action {
            Action::AddSelf { mode, .. } => self.mode(mode),
            Action::JoinCluster { seeds, .. } => self.nodes(seeds),
            _ => {}
        }
    }

    fn event(&self, event: &mut Event) {
        match event {
            Event::ReseedGrace { cluster, .. } => *cluster = (self.cluster)(*cluster),
            Event::ClusterLost { cluster } => self.opt(cluster),
            _ => {}
        }
    }
}

/// What a registration is for, which decides what follows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Role {
    /// A seed registering before it forms its cluster: once written, it forms.
    Seed,
    /// A node that joined a cluster (or, under `form_before_register`, formed one): its
    /// first registration.
    Newcomer,
    /// A registered member whose entry vanished: it stays a member while it retries.
    Member,
}

/// The re-seed grace: until `until`, a node that finds the registry of `cluster` empty
/// waits instead of seeding. `None`: a request failed during the grace, so the members may
/// not have been able to re-register either; the grace starts over with the next read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Grace {
    cluster: ClusterId,
    until: Option<Instant>,
}

/// A state with the data only it needs.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Phase {
    GettingNodes {
        grace: Option<Grace>,
    },
    Locking {
        revision: Option<u64>,
        epoch_version: Option<u64>,
        grace: Option<Grace>,
    },
    VerifyingEmpty {
        lock: LockToken,
        grace: Option<Grace>,
    },
    WaitingForNodes {
        revision: Option<u64>,
        until: Instant,
        /// The attempt of the watch (early wake-up), while it runs.
        watch: Option<AttemptId>,
        grace: Option<Grace>,
    },
    Joining {
        seeds: Vec<NodeId>,
        /// The registration that follows the join.
        registration: AddMode,
    },
    AddingSelf {
        mode: AddMode,
        role: Role,
        /// An earlier attempt of this registration failed: it may have been written.
        uncertain: bool,
        /// When the first attempt was sent: whichever attempt was written, it was written
        /// after this, so the entry lives at least until `since + ttl`.
        since: Instant,
    },
    ConfirmingSeed {
        cluster: ClusterId,
        /// `Seed`: not formed yet; `Newcomer`: formed before registering (mutation).
        role: Role,
        since: Instant,
    },
    /// The seed's registration (written no earlier than `since`) committed: joining itself.
    Forming {
        cluster: ClusterId,
        since: Instant,
    },
    /// The seed's lease may have run out before it formed (a pause): refreshing its
    /// registration to learn whether it still holds.
    RecheckingSeed {
        cluster: ClusterId,
    },
    RefreshScheduled {
        cluster: Option<ClusterId>,
    },
    Refreshing {
        cluster: Option<ClusterId>,
    },
    Degraded {
        cluster: Option<ClusterId>,
    },
    Resetting {
        /// Wait this long after leaving before reading the nodes again (join errors).
        backoff: Duration,
    },
    Leaving {
        /// Whether this node's entry may exist (then it is removed next).
        registered: bool,
    },
    RemovingSelf,
    Stopped,
    Failed(Failure),
}

impl Phase {
    fn state(&self) -> State {
        match self {
            Phase::GettingNodes { .. } => State::GettingNodes,
            Phase::Locking { .. } => State::Locking,
            Phase::VerifyingEmpty { .. } => State::VerifyingEmpty,
            Phase::WaitingForNodes { .. } => State::WaitingForNodes,
            Phase::Joining { .. } => State::Joining,
            Phase::AddingSelf { .. } => State::AddingSelf,
            Phase::ConfirmingSeed { .. } => State::ConfirmingSeed,
            Phase::Forming { .. } | Phase::RecheckingSeed { .. } => State::Forming,
            Phase::RefreshScheduled { .. } => State::RefreshScheduled,
            Phase::Refreshing { .. } => State::Refreshing,
            Phase::Degraded { .. } => State::Degraded,
            Phase::Resetting { .. } => State::Resetting,
            Phase::Leaving { .. } => State::Leaving,
            Phase::RemovingSelf => State::RemovingSelf,
            Phase::Stopped => State::Stopped,
            Phase::Failed(_) => State::Failed,
        }
    }

    /// The cluster this node joined or seeded, as far as this phase knows it.
    fn cluster(&self) -> Option<ClusterId> {
        match self {
            Phase::Joining { registration, .. } => registration.cluster(),
            Phase::AddingSelf { mode, .. } => mode.cluster(),
            Phase::ConfirmingSeed { cluster, .. }
            | Phase::Forming { cluster, .. }
            | Phase::RecheckingSeed { cluster } => Some(*cluster),
            Phase::RefreshScheduled { cluster }
            | Phase::Refreshing { cluster }
            | Phase::Degraded { cluster } => *cluster,
            _ => None,
        }
    }

    /// Whether this node is a member whose entry may exist (a shutdown removes it).
    fn may_be_registered(&self) -> bool {
        matches!(
            self,
            Phase::AddingSelf { .. }
                | Phase::ConfirmingSeed { .. }
                | Phase::Forming { .. }
                | Phase::RecheckingSeed { .. }
                | Phase::RefreshScheduled { .. }
                | Phase::Refreshing { .. }
                | Phase::Degraded { .. }
        )
    }
}

/// What the machine waits for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Io {
    /// The reply to the phase's request `attempt`; at `deadline` it counts as a timeout.
    Request {
        attempt: AttemptId,
        /// When it was issued (a write it made took effect after this).
        issued: Instant,
        deadline: Instant,
    },
    /// A timer: at `at` the phase gets [`Input::Due`] (a retry issues its request again).
    Wait { at: Instant },
    /// Nothing (terminal phases).
    Idle,
}

/// Every input of the machine, as the transition function sees it.
#[derive(Debug)]
enum Input {
    Nodes(Registry),
    Lock(LockOutcome),
    Added(AddOutcome),
    Refreshed(RefreshOutcome),
    Removed,
    Joined,
    JoinFailed(String),
    Left,
    /// The watch saw a change.
    Changed,
    /// The current request failed (error reply or timeout).
    Failed(ErrorSummary),
    /// The phase's timer fired.
    Due,
    Shutdown,
}

/// What a transition does with the machine.
#[derive(Debug)]
enum Step {
    /// Keep the phase and what it waits for.
    Stay(Phase),
    /// Switch to the phase, keeping the request in flight.
    Become(Phase),
    /// Enter the phase and issue its request now.
    Enter(Phase),
    /// Enter (or stay in) the phase and issue its request after a wait.
    After(Phase, Duration),
}

/// Consecutive failures, for the retry budget and the growing waits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
struct Streak {
    since: Option<Instant>,
    count: u32,
}

impl Streak {
    /// Records a failure at `now`; returns the number of failures in a row so far.
    fn record(&mut self, now: Instant) -> u32 {
        self.since.get_or_insert(now);
        self.count = self.count.saturating_add(1);
        self.count
    }

    /// Whether the failures in a row used up the budget (time, or count if set).
    fn exhausted(&self, now: Instant, s: &Settings) -> bool {
        let counted = s.nr_of_retries.is_some_and(|r| self.count > r);
        let timed = self
            .since
            .is_some_and(|since| now.saturating_duration_since(since) >= s.retry_budget);
        counted || timed
    }
}

/// One node's bootstrap state machine. See the [module docs](self) for how to drive it.
///
/// A machine is plain data: `Clone`, `Eq` and `Hash` (a model checker explores copies of
/// it). The hash leaves out the settings, which are fixed for a machine's life.
///
/// # Driving it by hand
/// The tokio [`driver`](crate::driver) does this for real backends; here one node seeds a
/// cluster on the synchronous in-memory registry ([`ScopeRegistry`](crate::memory::ScopeRegistry)),
/// with made-up cluster replies and a clock that jumps to the next timer:
///
/// ```
/// use std::time::Instant;
/// use constructr_core::memory::ScopeRegistry;
/// use constructr_core::{Action, Machine, NodeId, Reply, Settings, State};
///
/// let mut now = Instant::now();
/// let me = NodeId::new("10.0.0.7:2552", 1);
/// let mut registry = ScopeRegistry::default();
/// let mut machine = Machine::new(Settings::default(), me.clone(), 42, now)?;
/// for _ in 0..100 {
///     // After every call that takes `now`: execute each action, feed its result back.
///     while let Some(action) = machine.poll_action() {
///         let attempt = action.attempt();
///         let reply = match action {
///             Action::GetNodes { .. } => Reply::Nodes(Ok(registry.get_nodes(now))),
///             Action::Lock { ttl, .. } => Reply::Lock(Ok(registry.lock(now, &me, ttl))),
///             Action::AddSelf { ttl, mode, .. } => {
///                 Reply::AddSelf(Ok(registry.add_self(now, &me, ttl, &mode)))
///             }
///             Action::Refresh { ttl, .. } => Reply::Refresh(Ok(registry.refresh(now, &me, ttl))),
///             Action::RemoveSelf { .. } => {
///                 registry.remove_self(now, &me);
///                 Reply::RemoveSelf(Ok(()))
///             }
///             // An early wake-up only: it may stay unanswered.
///             Action::WaitForChange { .. } => continue,
///             // A real cluster joins `seeds` here (when seeding: just this node).
///             Action::JoinCluster { .. } => Reply::Joined(Ok(())),
///             Action::LeaveCluster { .. } => Reply::Left(Ok(())),
///         };
///         machine.handle_reply(now, attempt, reply);
///     }
///     while let Some(event) = machine.poll_event() {
///         println!("{event:?}");
///     }
///     if machine.state().is_registered() {
///         break;
///     }
///     // Nothing to execute: sleep until the machine's next timer (a retry, a refresh).
///     if let Some(at) = machine.poll_timeout() {
///         now = now.max(at);
///         machine.handle_timeout(now);
///     }
/// }
/// assert_eq!(machine.state(), State::RefreshScheduled);
/// assert!(registry.is_registered(now, &me));
/// assert!(machine.cluster().is_some()); // the cluster this node seeded
/// # Ok::<(), constructr_core::SettingsError>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Machine {
    /// Shared: a model checker clones machines by the million.
    settings: std::sync::Arc<Settings>,
    node: NodeId,
    rng: ChaCha8Rng,
    phase: Phase,
    io: Io,
    next_attempt: u64,
    /// Failed coordination requests in a row (any success resets it).
    failures: Streak,
    /// Failed joins in a row (a registration resets it).
    join_failures: Streak,
    /// Set during one call only: the timer fired more than `late_wake` after its deadline,
    /// so this node was frozen (GC pause, SIGSTOP, a starved runtime), not the
    /// service slow: its retry follows at once instead of after a wait.
    woke_late: bool,
    #[cfg(feature = "mutations")]
    mutations: Mutations,
    /// Model checking: the next cluster id this node chooses, instead of a random one.
    #[cfg(feature = "mutations")]
    next_cluster_id: Option<u64>,
    actions: VecDeque<Action>,
    events: VecDeque<Event>,
}

impl Eq for Machine {}

impl std::hash::Hash for Machine {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.node.hash(state);
        self.rng.get_seed().hash(state);
        self.rng.get_stream().hash(state);
        self.rng.get_word_pos().hash(state);
        self.phase.hash(state);
        self.io.hash(state);
        self.next_attempt.hash(state);
        self.failures.hash(state);
        self.join_failures.hash(state);
        self.woke_late.hash(state);
        #[cfg(feature = "mutations")]
        self.mutations.hash(state);
        #[cfg(feature = "mutations")]
        self.next_cluster_id.hash(state);
        self.actions.hash(state);
        self.events.hash(state);
    }
}

impl Machine {
    /// Creates the machine for `node` and queues its first action (`GetNodes`).
    ///
    /// `seed` drives all randomness (jitter, seed subsets, cluster ids): the same seed and
    /// the same inputs give the same outputs.
    ///
    /// ```
    /// use std::time::Instant;
    /// use constructr_core::{Action, Machine, NodeId, Settings, State};
    ///
    /// let now = Instant::now();
    /// let mut m = Machine::new(Settings::default(), NodeId::new("10.0.0.7:2552", 1), 42, now)?;
    /// assert_eq!(m.state(), State::GettingNodes);
    /// assert!(matches!(m.poll_action(), Some(Action::GetNodes { .. })));
    /// # Ok::<(), constructr_core::SettingsError>(())
    /// ```
    pub fn new(
        settings: Settings,
        node: NodeId,
        seed: u64,
        now: Instant,
    ) -> Result<Self, SettingsError> {
        settings.validate()?;
        let mut m = Self {
            settings: std::sync::Arc::new(settings),
            node,
            rng: ChaCha8Rng::seed_from_u64(seed),
            phase: Phase::GettingNodes { grace: None },
            io: Io::Idle,
            next_attempt: 0,
            failures: Streak::default(),
            join_failures: Streak::default(),
            woke_late: false,
            #[cfg(feature = "mutations")]
            mutations: Mutations::default(),
            #[cfg(feature = "mutations")]
            next_cluster_id: None,
            actions: VecDeque::new(),
            events: VecDeque::new(),
        };
        m.begin(now);
        Ok(m)
    }

    #[cfg(feature = "mutations")]
    #[cfg_attr(docsrs, doc(cfg(feature = "mutations")))]
    #[doc(hidden)]
    pub fn set_mutations(&mut self, mutations: Mutations) {
        self.mutations = mutations;
    }

    /// Model checking: this node's cluster ids are `first`, `first + 1`, ... instead of
    /// random (so that a checker can tell, and rename, which node chose an id).
    #[cfg(feature = "mutations")]
    #[cfg_attr(docsrs, doc(cfg(feature = "mutations")))]
    #[doc(hidden)]
    pub fn set_cluster_ids(&mut self, first: u64) {
        self.next_cluster_id = Some(first);
    }

    /// Model checking: renames every node and cluster id this machine holds (see
    /// [`Renaming`]).
    #[cfg(feature = "mutations")]
    #[cfg_attr(docsrs, doc(cfg(feature = "mutations")))]
    #[doc(hidden)]
    pub fn rename(&mut self, r: &Renaming<'_>) {
        self.node = (r.node)(&self.node);
        if let Some(next) = &mut self.next_cluster_id {
            *next = (r.cluster)(ClusterId(*next)).0;
        }
        match &mut self.phase {
            Phase::GettingNodes { grace }
            | Phase::Locking { grace, .. }
            | Phase::VerifyingEmpty { grace, .. }
            | Phase::WaitingForNodes { grace, .. } => r.grace(grace),
            Phase::Joining {
                seeds,
                registration,
            } => {
                r.nodes(seeds);
                r.mode(registration);
            }
            Phase::AddingSelf { mode, .. } => r.mode(mode),
            Phase::ConfirmingSeed { cluster, .. }
            | Phase::Forming { cluster, .. }
            | Phase::RecheckingSeed { cluster } => *cluster = (r.cluster)(*cluster),
            Phase::RefreshScheduled { cluster }
            | Phase::Refreshing { cluster }
            | Phase::Degraded { cluster } => r.opt(cluster),
            Phase::Resetting { .. }
            | Phase::Leaving { .. }
            | Phase::RemovingSelf
            | Phase::Stopped
            | Phase::Failed(_) => {}
        }
        for a in &mut self.actions {
            r.action(a);
        }
        for e in &mut self.events {
            r.event(e);
        }
    }

    /// This node.
    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.phase.state()
    }

    /// Why the machine failed, once it is in [`State::Failed`].
    pub fn failure(&self) -> Option<&Failure> {
        match &self.phase {
            Phase::Failed(f) => Some(f),
            _ => None,
        }
    }

    /// The cluster (epoch) this node joined or seeded, once known.
    pub fn cluster(&self) -> Option<ClusterId> {
        self.phase.cluster()
    }

    /// Whether the reply to `attempt` is still awaited (the driver drops the futures of
    /// every other attempt).
    pub fn is_awaiting(&self, attempt: AttemptId) -> bool {
        let requested = matches!(&self.io, Io::Request { attempt: a, .. } if *a == attempt);
        let watching =
            matches!(self.phase, Phase::WaitingForNodes { watch: Some(w), .. } if w == attempt);
        requested || watching
    }

    /// The next action to execute.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The next event to report.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Machine::handle_timeout`] must be called next; `None` when no timer runs.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.io {
            Io::Request { deadline, .. } => Some(*deadline),
            Io::Wait { at } => Some(*at),
            Io::Idle => None,
        }
    }

    /// Starts a graceful shutdown: leave the cluster, remove this node's entry, stop.
    pub fn shutdown(&mut self, now: Instant) {
        self.step(now, Input::Shutdown);
    }

    /// A cluster membership event. Only [`ClusterEvent::SelfUp`] while joining or forming
    /// matters (it counts as the join's reply); everything else is ignored and leaves every
    /// deadline where it was.
    pub fn handle_cluster_event(&mut self, now: Instant, event: ClusterEvent) {
        let joining = matches!(self.phase, Phase::Joining { .. } | Phase::Forming { .. })
            && matches!(self.io, Io::Request { .. });
        if event == ClusterEvent::SelfUp && joining {
            self.step(now, Input::Joined);
        }
    }

    /// Wakes the machine; acts only if its timer is due.
    ///
    /// A request that timed out while this node was frozen (its timer fires more than
    /// [`Settings::late_wake`] after its deadline) is retried at once: a member that wakes from a
    /// pause re-checks its registration before anyone's re-seed grace can end.
    pub fn handle_timeout(&mut self, now: Instant) {
        let input = match &self.io {
            Io::Request { deadline, .. } if now >= *deadline => {
                self.woke_late =
                    now.saturating_duration_since(*deadline) > self.settings.late_wake();
                Input::Failed(CoordinationError::Timeout.summary())
            }
            Io::Wait { at } if now >= *at => Input::Due,
            _ => return,
        };
        self.io = Io::Idle;
        self.step(now, input);
        self.woke_late = false;
    }

    /// The result of the action with `attempt`. Stale or unexpected replies are ignored.
    pub fn handle_reply(&mut self, now: Instant, attempt: AttemptId, reply: Reply) {
        if let Phase::WaitingForNodes { watch, grace, .. } = &mut self.phase
            && *watch == Some(attempt)
        {
            *watch = None;
            match reply {
                Reply::Changed(Ok(WaitOutcome::Changed)) => self.step(now, Input::Changed),
                // The service failed while this node waited out a re-seed grace: the
                // cluster's members may have failed to re-register too, even if this node's
                // own reads all fell outside the outage.
                Reply::Changed(Err(_)) => *grace = interrupted(*grace),
                _ => {}
            }
            return;
        }
        let Io::Request {
            attempt: current, ..
        } = &self.io
        else {
            return;
        };
        if *current != attempt || !reply_fits(&self.phase, &reply) {
            return;
        }
        let input = match reply {
            Reply::Nodes(Ok(registry)) => Input::Nodes(registry),
            Reply::Lock(Ok(outcome)) => Input::Lock(outcome),
            Reply::AddSelf(Ok(outcome)) => Input::Added(outcome),
            Reply::Refresh(Ok(outcome)) => Input::Refreshed(outcome),
            Reply::RemoveSelf(Ok(())) => Input::Removed,
            Reply::Joined(Ok(())) => Input::Joined,
            Reply::Joined(Err(e)) => Input::JoinFailed(e.to_string()),
            // A failed leave counts as done (the cluster contract).
            Reply::Left(_) => Input::Left,
            Reply::Nodes(Err(e))
            | Reply::Lock(Err(e))
            | Reply::AddSelf(Err(e))
            | Reply::Refresh(Err(e))
            | Reply::RemoveSelf(Err(e))
            | Reply::Changed(Err(e)) => Input::Failed(e.summary()),
            Reply::Changed(Ok(_)) => return,
        };
        self.step(now, input);
    }

    /// Runs one input through [`Machine::transition`] and applies the step.
    fn step(&mut self, now: Instant, input: Input) {
        let from = self.phase.state();
        let phase = std::mem::replace(&mut self.phase, Phase::Stopped);
        if matches!(
            &input,
            Input::Nodes(_)
                | Input::Lock(_)
                | Input::Added(_)
                | Input::Refreshed(_)
                | Input::Removed
        ) {
            self.failures = Streak::default();
        }
        let step = self.transition(now, phase, input);
        let (phase, issue) = match step {
            Step::Stay(phase) => {
                self.phase = phase;
                return;
            }
            Step::Become(phase) => (phase, None),
            Step::Enter(phase) => (phase, Some(Duration::ZERO)),
            Step::After(phase, wait) => (phase, Some(wait)),
        };
        self.phase = phase;
        let to = self.phase.state();
        if from != to {
            self.events.push_back(Event::StateChanged { from, to });
        }
        match issue {
            Some(wait) if wait.is_zero() => self.begin(now),
            Some(wait) => {
                self.io = Io::Wait {
                    at: after(now, wait),
                }
            }
            None => {}
        }
    }

    /// **The transitions, all in one place.** Given the phase and an input, the next step.
    fn transition(&mut self, now: Instant, phase: Phase, input: Input) -> Step {
        use Input as I;
        use Phase as P;
        match (phase, input) {
            (p, I::Shutdown) => self.shut_down(p),

            // Reading the registry: join the registered nodes, or go for the lock.
            (P::GettingNodes { grace }, I::Nodes(registry)) => {
                self.on_nodes(now, registry, grace, None)
            }
            #[cfg(feature = "mutations")]
            (P::Locking { epoch_version, .. }, I::Lock(LockOutcome::Acquired(lock)))
                if self.mutations.skip_reread_after_lock =>
            {
                self.seed(now, lock, epoch_version)
            }
            (P::Locking { grace, .. }, I::Lock(LockOutcome::Acquired(lock))) => {
                Step::Enter(P::VerifyingEmpty { lock, grace })
            }
            (
                P::Locking {
                    revision, grace, ..
                },
                I::Lock(LockOutcome::HeldByOther),
            ) => {
                let until = after(now, self.wait_for_nodes());
                Step::Enter(P::WaitingForNodes {
                    revision,
                    until,
                    watch: None,
                    grace,
                })
            }
            (P::VerifyingEmpty { lock, grace }, I::Nodes(registry)) => {
                self.on_nodes(now, registry, grace, Some(lock))
            }
            (P::WaitingForNodes { grace, .. }, I::Changed | I::Due) => {
                Step::Enter(P::GettingNodes { grace })
            }

            // Joining, then registering.
            (P::Joining { registration, .. }, I::Joined) => Step::Enter(P::AddingSelf {
                mode: registration,
                role: Role::Newcomer,
                uncertain: false,
                since: now,
            }),
            // A seed: registered, then forming; its first refresh counts from the
            // registration, which may be older than the cluster.
            (P::Forming { cluster, since }, I::Joined) => {
                self.join_failures = Streak::default();
                let due = after(since, self.settings.refresh_interval);
                if now >= due {
                    Step::Enter(P::Refreshing {
                        cluster: Some(cluster),
                    })
                } else {
                    Step::After(
                        P::RefreshScheduled {
                            cluster: Some(cluster),
                        },
                        due - now,
                    )
                }
            }
            (P::RecheckingSeed { cluster }, I::Refreshed(RefreshOutcome::Refreshed)) => {
                let since = self.issued(now);
                self.form(now, cluster, since)
            }
            (P::RecheckingSeed { .. }, I::Refreshed(RefreshOutcome::Missing)) => {
                self.events.push_back(Event::SeedLapsed);
                Step::Enter(P::Resetting {
                    backoff: Duration::ZERO,
                })
            }
            (P::Joining { .. } | P::Forming { .. }, I::Failed(_))
                if self.settings.abort_on_join_timeout =>
            {
                Step::Enter(P::Failed(Failure::JoinTimeout))
            }
            (P::Joining { .. }, I::JoinFailed(error)) => {
                match self.join_failed(now, State::Joining, error) {
                    Ok(backoff) => Step::Enter(P::Resetting { backoff }),
                    Err(failed) => Step::Enter(failed),
                }
            }
            (P::Joining { .. }, I::Failed(_)) => Step::Enter(P::Resetting {
                backoff: Duration::ZERO,
            }),
            // The registered seed keeps its registration and tries to form again (its lease
            // is checked again before), instead of leaving an entry that nobody can join.
            (P::Forming { cluster, since }, I::JoinFailed(error)) => {
                match self.join_failed(now, State::Forming, error) {
                    Ok(backoff) => self.form_after(now, cluster, since, backoff),
                    Err(failed) => Step::Enter(failed),
                }
            }
            (P::Forming { cluster, since }, I::Failed(error)) => {
                match self.join_failed(now, State::Forming, error.message) {
                    Ok(backoff) => self.form_after(now, cluster, since, backoff),
                    Err(failed) => Step::Enter(failed),
                }
            }
            (P::Forming { cluster, since }, I::Due) => self.form(now, cluster, since),
            (
                P::AddingSelf {
                    mode,
                    role: Role::Seed,
                    since,
                    ..
                },
                I::Added(AddOutcome::Added),
            ) => match mode.cluster() {
                Some(cluster) => self.form(now, cluster, since),
                // A seed's registration always names its cluster.
                None => Step::Enter(P::Resetting {
                    backoff: Duration::ZERO,
                }),
            },
            (P::AddingSelf { mode, .. }, I::Added(AddOutcome::Added)) => {
                self.join_failures = Streak::default();
                Step::Enter(P::RefreshScheduled {
                    cluster: mode.cluster(),
                })
            }
            (
                P::AddingSelf {
                    mode: AddMode::Seed { cluster, .. },
                    uncertain: true,
                    role,
                    since,
                },
                I::Added(AddOutcome::Refused),
            ) => Step::Enter(P::ConfirmingSeed {
                cluster,
                role,
                since,
            }),
            (P::AddingSelf { mode, role, .. }, I::Added(AddOutcome::Refused)) => {
                match (mode, role) {
                    (AddMode::Seed { .. }, _) | (_, Role::Seed) => {
                        self.events.push_back(Event::SeedRefused)
                    }
                    (AddMode::Join { cluster }, Role::Member) => {
                        self.events.push_back(Event::ClusterLost { cluster })
                    }
                    (AddMode::Join { .. }, Role::Newcomer) => {}
                }
                Step::Enter(P::Resetting {
                    backoff: Duration::ZERO,
                })
            }
            (
                P::ConfirmingSeed {
                    cluster,
                    role,
                    since,
                },
                I::Nodes(registry),
            ) => {
                // Only this seed's fenced write can have set the epoch to its random
                // cluster id (members learn the id from the registry): the write committed.
                if registry.epoch.is_some_and(|e| e.cluster == cluster) {
                    self.join_failures = Streak::default();
                    self.events.push_back(Event::SeedConfirmed);
                    let present = registry.nodes.contains(&self.node);
                    match role {
                        Role::Seed if present => self.form(now, cluster, since),
                        Role::Seed => Step::Enter(P::AddingSelf {
                            // Its entry expired meanwhile (paused past its TTL): register
                            // again before forming.
                            mode: AddMode::Join {
                                cluster: Some(cluster),
                            },
                            role: Role::Seed,
                            uncertain: false,
                            since: now,
                        }),
                        _ if present => Step::Enter(P::RefreshScheduled {
                            cluster: Some(cluster),
                        }),
                        _ => Step::Enter(P::AddingSelf {
                            mode: AddMode::Join {
                                cluster: Some(cluster),
                            },
                            role: Role::Member,
                            uncertain: false,
                            since: now,
                        }),
                    }
                } else {
                    self.events.push_back(Event::SeedRefused);
                    Step::Enter(P::Resetting {
                        backoff: Duration::ZERO,
                    })
                }
            }

            // Registered: refresh; a vanished entry is registered again.
            (P::RefreshScheduled { cluster }, I::Due) => Step::Enter(P::Refreshing { cluster }),
            (
                P::Refreshing { cluster } | P::Degraded { cluster },
                I::Refreshed(RefreshOutcome::Refreshed),
            ) => Step::Enter(P::RefreshScheduled { cluster }),
            (
                P::Refreshing { cluster } | P::Degraded { cluster },
                I::Refreshed(RefreshOutcome::Missing),
            ) => Step::Enter(P::AddingSelf {
                mode: AddMode::Join { cluster },
                role: Role::Member,
                uncertain: false,
                since: now,
            }),

            // Leaving: to start over, or to stop.
            (P::Resetting { backoff }, I::Left | I::Failed(_)) => {
                Step::After(P::GettingNodes { grace: None }, backoff)
            }
            (P::Leaving { registered: true }, I::Left | I::Failed(_)) => {
                Step::Enter(P::RemovingSelf)
            }
            (P::Leaving { registered: false }, I::Left | I::Failed(_)) => Step::Enter(P::Stopped),
            (P::RemovingSelf, I::Removed) => Step::Enter(P::Stopped),

            // A failed request: retry, degrade, or fail.
            (p, I::Failed(error)) => self.on_failure(now, p, error),
            // A retry's wait is over: issue the phase's request again.
            (p, I::Due) => Step::Enter(p),
            // Anything else (a late watch, a reply a terminal machine no longer wants).
            (p, _) => Step::Stay(p),
        }
    }

    fn shut_down(&mut self, phase: Phase) -> Step {
        self.failures = Streak::default();
        match phase {
            Phase::GettingNodes { .. }
            | Phase::Locking { .. }
            | Phase::VerifyingEmpty { .. }
            | Phase::WaitingForNodes { .. } => Step::Enter(Phase::Stopped),
            // Already leaving: its reply moves on to stopping.
            Phase::Resetting { .. } => Step::Become(Phase::Leaving { registered: false }),
            p @ (Phase::Leaving { .. }
            | Phase::RemovingSelf
            | Phase::Stopped
            | Phase::Failed(_)) => Step::Stay(p),
            p => Step::Enter(Phase::Leaving {
                registered: p.may_be_registered(),
            }),
        }
    }

    /// A registry read of `GettingNodes` or (holding `lock`) of `VerifyingEmpty`: join the
    /// registered nodes; else wait out the re-seed grace of the epoch's cluster; else lock,
    /// or seed when the lock is held.
    fn on_nodes(
        &mut self,
        now: Instant,
        registry: Registry,
        grace: Option<Grace>,
        lock: Option<LockToken>,
    ) -> Step {
        let revision = registry.revision;
        let epoch = registry.epoch;
        let held_by_other = registry.lock.as_ref().is_some_and(|h| *h != self.node);
        if let Some((seeds, registration)) = self.others(registry) {
            return Step::Enter(Phase::Joining {
                seeds,
                registration,
            });
        }
        let epoch_version = epoch.map(|e| e.version);
        let grace_period = self.settings.reseed_grace();
        let grace = match epoch {
            // The epoch names a cluster that may still live: give its members the chance
            // to re-register before seeding over it. Any read may be the first to see it
            // (a node that locked before the cluster formed re-reads after an outage).
            Some(e) if e.cluster != ClusterId::UNREADABLE && !grace_period.is_zero() => match grace
            {
                Some(Grace {
                    cluster,
                    until: Some(until),
                }) if cluster == e.cluster => Some(until),
                _ => {
                    self.events.push_back(Event::ReseedGrace {
                        cluster: e.cluster,
                        grace: grace_period,
                    });
                    Some(after(now, grace_period))
                }
            }
            .map(|until| Grace {
                cluster: e.cluster,
                until: Some(until),
            }),
            _ => None,
        };
        match (grace, lock) {
            (
                Some(Grace {
                    until: Some(grace_until),
                    ..
                }),
                _,
            ) if now < grace_until => {
                let until = after(now, self.wait_for_nodes()).min(grace_until);
                Step::Enter(Phase::WaitingForNodes {
                    revision,
                    until,
                    watch: None,
                    grace,
                })
            }
            // A join-only node waits (watching) until someone registers.
            (grace, None) if !self.settings.new_cluster_enabled => {
                let until = after(now, self.wait_for_nodes());
                Step::Enter(Phase::WaitingForNodes {
                    revision,
                    until,
                    watch: None,
                    grace,
                })
            }
            (_, Some(lock)) => self.seed(now, lock, epoch_version),
            // The lock is someone else's: wait for its holder to register (or the lock to
            // be released) instead of asking for it.
            (grace, None) if held_by_other => Step::Enter(Phase::WaitingForNodes {
                revision,
                until: after(now, self.wait_for_nodes()),
                watch: None,
                grace,
            }),
            (grace, None) => Step::Enter(Phase::Locking {
                revision,
                epoch_version,
                grace,
            }),
        }
    }

    /// The seeds and the registration to join with, if other nodes are registered.
    fn others(&mut self, registry: Registry) -> Option<(Vec<NodeId>, AddMode)> {
        let mut others: Vec<NodeId> = registry
            .nodes
            .into_iter()
            .filter(|n| n.address != self.node.address)
            .collect();
        if others.is_empty() {
            return None;
        }
        let max = self.settings.max_nr_of_seed_nodes;
        if max > 0 && others.len() > max {
            // A random subset, so that not every joiner hammers the same first N nodes.
            others.partial_shuffle(&mut self.rng, max);
            others.truncate(max);
        }
        let cluster = registry.epoch.map(|e| e.cluster);
        Some((others, AddMode::Join { cluster }))
    }

    /// Holding the lock with the registry read empty: the fenced registration of a new
    /// cluster, which the seed forms only once it is written (see [`Machine::form`]).
    fn seed(&mut self, now: Instant, lock: LockToken, expected_epoch_version: Option<u64>) -> Step {
        #[cfg(feature = "mutations")]
        if let Some(next) = &mut self.next_cluster_id {
            *next += 1;
        }
        let cluster = loop {
            #[cfg(feature = "mutations")]
            if let Some(next) = self.next_cluster_id {
                break ClusterId(next - 1);
            }
            let id = ClusterId(self.rng.random());
            if id != ClusterId::UNREADABLE {
                break id;
            }
        };
        let mode = AddMode::Seed {
            lock,
            cluster,
            expected_epoch_version,
        };
        #[cfg(feature = "mutations")]
        if self.mutations.form_before_register {
            return Step::Enter(Phase::Joining {
                seeds: vec![self.node.clone()],
                registration: mode,
            });
        }
        Step::Enter(Phase::AddingSelf {
            mode,
            role: Role::Seed,
            uncertain: false,
            since: now,
        })
    }

    /// A seed whose registration (written no earlier than `since`) committed forms its
    /// cluster, **but only while that registration certainly lives** (`now < since + ttl`):
    /// no other seed can have registered before it expired, and none can form a cluster
    /// before it registered. After a longer gap (the node was paused) it refreshes the
    /// registration first: refreshed, the lease holds again; missing, it starts over without
    /// ever having formed.
    fn form(&mut self, now: Instant, cluster: ClusterId, since: Instant) -> Step {
        if now < after(since, self.settings.ttl()) {
            Step::Enter(Phase::Forming { cluster, since })
        } else {
            Step::Enter(Phase::RecheckingSeed { cluster })
        }
    }

    /// A failed join (or formation): the wait before the next try, or the failed phase once
    /// the join budget is used up.
    fn join_failed(
        &mut self,
        now: Instant,
        state: State,
        error: String,
    ) -> Result<Duration, Phase> {
        let n = self.join_failures.record(now);
        if self.join_failures.exhausted(now, &self.settings) {
            return Err(Phase::Failed(Failure::JoinFailed { error }));
        }
        let backoff = self.retry_wait(n - 1, false);
        self.events.push_back(Event::Retrying {
            state,
            error: ErrorSummary {
                retryable: true,
                kind: None,
                message: error,
            },
            retry_in: backoff,
        });
        Ok(backoff)
    }

    /// Forms again after `backoff` (through [`Machine::form`], which checks the lease).
    fn form_after(
        &mut self,
        now: Instant,
        cluster: ClusterId,
        since: Instant,
        backoff: Duration,
    ) -> Step {
        if backoff.is_zero() {
            self.form(now, cluster, since)
        } else {
            Step::After(Phase::Forming { cluster, since }, backoff)
        }
    }

    /// When the request in flight was issued (`now` if none is).
    fn issued(&self, now: Instant) -> Instant {
        match self.io {
            Io::Request { issued, .. } => issued,
            _ => now,
        }
    }

    /// A coordination request of `phase` failed (error reply or timeout).
    fn on_failure(&mut self, now: Instant, phase: Phase, error: ErrorSummary) -> Step {
        let state = phase.state();
        let n = self.failures.record(now);
        let member_cluster = match &phase {
            Phase::Refreshing { cluster } | Phase::Degraded { cluster } => Some(*cluster),
            Phase::AddingSelf {
                mode,
                role: Role::Member,
                ..
            } => Some(mode.cluster()),
            _ => None,
        };
        if let Some(cluster) = member_cluster {
            // A registered member: it stays a member (degraded) unless fail-fast is asked for.
            let keep = self.settings.ignore_refresh_failures
                || (error.retryable && !self.failures.exhausted(now, &self.settings));
            if !keep {
                return Step::Enter(Phase::Failed(fail(state, error)));
            }
            // A permanent error will not go away soon: retry at the longest wait.
            let k = if error.retryable { n - 1 } else { u32::MAX };
            let retry_in = self.retry_wait(k, true);
            self.events.push_back(Event::Retrying {
                state,
                error,
                retry_in,
            });
            return Step::After(Phase::Degraded { cluster }, retry_in);
        }
        let phase = match phase {
            Phase::RemovingSelf => {
                // Shutting down: a few quick tries, then the entry expires with its TTL.
                if !error.retryable || n > self.settings.nr_of_retries.unwrap_or(2) {
                    return Step::Enter(Phase::Stopped);
                }
                let retry_in = self.retry_wait(0, false);
                self.events.push_back(Event::Retrying {
                    state,
                    error,
                    retry_in,
                });
                return Step::After(Phase::RemovingSelf, retry_in);
            }
            p @ (Phase::Stopped | Phase::Failed(_)) => return Step::Stay(p),
            // The service failed during a re-seed grace: the cluster's members may have
            // failed to re-register too, so the grace starts over once it answers.
            Phase::GettingNodes { grace } => Phase::GettingNodes {
                grace: interrupted(grace),
            },
            Phase::Locking {
                revision,
                epoch_version,
                grace,
            } => Phase::Locking {
                revision,
                epoch_version,
                grace: interrupted(grace),
            },
            Phase::VerifyingEmpty { lock, grace } => Phase::VerifyingEmpty {
                lock,
                grace: interrupted(grace),
            },
            // The outcome of this registration is unknown now.
            Phase::AddingSelf {
                mode, role, since, ..
            } => Phase::AddingSelf {
                mode,
                role,
                uncertain: true,
                since,
            },
            p => p,
        };
        if !error.retryable || self.failures.exhausted(now, &self.settings) {
            return Step::Enter(Phase::Failed(fail(state, error)));
        }
        let retry_in = self.retry_wait(n - 1, false);
        self.events.push_back(Event::Retrying {
            state,
            error,
            retry_in,
        });
        Step::After(phase, retry_in)
    }

    /// The jittered wait before retry `k + 1` (see [`Settings::retry_wait`]).
    fn retry_wait(&mut self, k: u32, member: bool) -> Duration {
        if self.woke_late {
            return Duration::ZERO;
        }
        let jitter = self.jitter();
        if member {
            self.settings.member_retry_wait(k, jitter)
        } else {
            self.settings.retry_wait(k, jitter)
        }
    }

    /// How long a waiting node waits for a registration before reading again.
    fn wait_for_nodes(&mut self) -> Duration {
        self.retry_wait(0, false)
    }

    fn jitter(&mut self) -> f64 {
        if self.settings.retry_jitter > 0.0 {
            self.rng.random_range(0.0..1.0)
        } else {
            0.0
        }
    }

    fn next_attempt(&mut self) -> AttemptId {
        self.next_attempt += 1;
        AttemptId(self.next_attempt)
    }

    /// **The one place that derives what a phase does on entry**: the request it issues
    /// (with its deadline), or the timer it waits for.
    fn begin(&mut self, now: Instant) {
        let s = &self.settings;
        let (coordination, join, refresh) =
            (s.coordination_timeout, s.join_timeout, s.refresh_interval);
        let (ttl, lock_ttl, watch) = (s.ttl(), s.lock_ttl(), s.watch);
        let attempt = AttemptId(self.next_attempt + 1);
        let (action, timeout) = match &mut self.phase {
            // Joining needs a few seeds and whether anyone else is registered; confirming
            // a seed needs to see the seed's own entry among all of them.
            Phase::GettingNodes { .. } | Phase::VerifyingEmpty { .. } => (
                Action::GetNodes {
                    attempt,
                    limit: NodeLimit::for_seeds(s.max_nr_of_seed_nodes),
                },
                coordination,
            ),
            Phase::ConfirmingSeed { .. } => (
                Action::GetNodes {
                    attempt,
                    limit: None,
                },
                coordination,
            ),
            Phase::Locking { .. } => (
                Action::Lock {
                    attempt,
                    ttl: lock_ttl,
                },
                coordination,
            ),
            Phase::WaitingForNodes {
                revision,
                until,
                watch: watching,
                ..
            } => {
                self.io = Io::Wait { at: *until };
                if watch {
                    *watching = Some(attempt);
                    let after = *revision;
                    self.next_attempt();
                    self.actions
                        .push_back(Action::WaitForChange { attempt, after });
                }
                return;
            }
            Phase::Joining { seeds, .. } => (
                Action::JoinCluster {
                    attempt,
                    seeds: seeds.clone(),
                },
                join,
            ),
            Phase::Forming { .. } => (
                Action::JoinCluster {
                    attempt,
                    seeds: vec![self.node.clone()],
                },
                join,
            ),
            Phase::AddingSelf { mode, .. } => (
                Action::AddSelf {
                    attempt,
                    ttl,
                    mode: mode.clone(),
                },
                coordination,
            ),
            Phase::RefreshScheduled { .. } => {
                self.io = Io::Wait {
                    at: after(now, refresh),
                };
                return;
            }
            Phase::Refreshing { .. } | Phase::Degraded { .. } | Phase::RecheckingSeed { .. } => {
                (Action::Refresh { attempt, ttl }, coordination)
            }
            Phase::Resetting { .. } | Phase::Leaving { .. } => {
                (Action::LeaveCluster { attempt }, coordination)
            }
            Phase::RemovingSelf => (Action::RemoveSelf { attempt }, coordination),
            Phase::Stopped | Phase::Failed(_) => {
                self.io = Io::Idle;
                return;
            }
        };
        self.next_attempt();
        self.actions.push_back(action);
        self.io = Io::Request {
            attempt,
            issued: now,
            deadline: after(now, timeout),
        };
    }
}

fn interrupted(grace: Option<Grace>) -> Option<Grace> {
    grace.map(|g| Grace { until: None, ..g })
}

fn fail(state: State, error: ErrorSummary) -> Failure {
    if error.retryable {
        Failure::RetriesExhausted { state, error }
    } else {
        Failure::Permanent { state, error }
    }
}

/// `now + d`, saturating far in the future instead of overflowing.
fn after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(crate::settings::MAX_DURATION))
        .unwrap_or(now)
}

/// Whether `reply` answers the kind of request `phase` issues (see [`Machine::begin`]).
fn reply_fits(phase: &Phase, reply: &Reply) -> bool {
    matches!(
        (phase, reply),
        (
            Phase::GettingNodes { .. }
                | Phase::VerifyingEmpty { .. }
                | Phase::ConfirmingSeed { .. },
            Reply::Nodes(_)
        ) | (Phase::Locking { .. }, Reply::Lock(_))
            | (
                Phase::Joining { .. } | Phase::Forming { .. },
                Reply::Joined(_)
            )
            | (Phase::AddingSelf { .. }, Reply::AddSelf(_))
            | (
                Phase::Refreshing { .. } | Phase::Degraded { .. } | Phase::RecheckingSeed { .. },
                Reply::Refresh(_)
            )
            | (
                Phase::Resetting { .. } | Phase::Leaving { .. },
                Reply::Left(_)
            )
            | (Phase::RemovingSelf, Reply::RemoveSelf(_))
    )
}
