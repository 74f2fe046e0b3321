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
//! superseded, but it does not have to.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::cluster::{ClusterError, ClusterEvent};
use crate::coordination::{
    AddMode, AddOutcome, CoordinationError, ErrorSummary, LockOutcome, LockToken, RefreshOutcome,
    Registry, WaitOutcome,
};
use crate::node::{ClusterId, NodeId};
use crate::settings::{Settings, SettingsError};

/// Identifies one request; replies to any other attempt are stale and ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttemptId(pub u64);

/// An effect the driver must execute. Coordination actions map 1:1 to
/// [`crate::Coordination`] methods, cluster actions to [`crate::Cluster`] methods.
#[must_use = "every action must be executed and its result fed back"]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Call `Coordination::get_nodes`; reply with [`Reply::Nodes`].
    GetNodes {
        /// Attempt id for the reply.
        attempt: AttemptId,
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
            Action::GetNodes { attempt }
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

/// The machine's states (ConstructR's, plus the safety and shutdown states).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    /// Reading the registered nodes.
    GettingNodes,
    /// The registry was empty: taking the bootstrap lock.
    Locking,
    /// Holding the lock: re-reading the nodes before seeding.
    VerifyingEmpty,
    /// Another node holds the lock: waiting for its registration (watch) or `retry_delay`.
    WaitingForNodes,
    /// Joining the seeds (or this node alone, when seeding).
    Joining,
    /// Member of the cluster: registering in the coordination service.
    AddingSelf,
    /// Registered: waiting for the next refresh.
    RefreshScheduled,
    /// Refreshing the registration.
    Refreshing,
    /// Leaving the cluster to start over (refused registration or join timeout).
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

    /// Whether this node is a registered member.
    pub fn is_registered(self) -> bool {
        matches!(self, State::RefreshScheduled | State::Refreshing)
    }
}

/// Why the machine failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Failure {
    /// A coordination request failed `nr_of_retries + 1` times in a row.
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
}

/// Something the application may want to observe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The state changed.
    StateChanged {
        /// The old state.
        from: State,
        /// The new state.
        to: State,
    },
    /// A request failed and will be retried after a delay.
    Retrying {
        /// The state the request belongs to.
        state: State,
        /// The error.
        error: ErrorSummary,
    },
    /// The fenced registration of this node's seeding was refused: it starts over.
    SeedRefused,
}

/// Test-only switches that remove a safety mechanism, to show the tests catch its absence.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mutations {
    /// Seed directly after taking the lock, without re-reading the nodes.
    pub skip_reread_after_lock: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Request {
    GetNodes,
    Lock,
    AddSelf(AddMode),
    Refresh,
    RemoveSelf,
    Join(Vec<NodeId>),
    Leave,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wake {
    RequestTimeout,
    Retry,
    WaitOver,
    RefreshDue,
}

/// One node's bootstrap state machine. See the [module docs](self) for how to drive it.
#[derive(Debug)]
pub struct Machine {
    settings: Settings,
    node: NodeId,
    rng: ChaCha8Rng,
    state: State,
    failure: Option<Failure>,
    next_attempt: u64,
    /// The request whose reply is awaited, with its attempt id.
    pending: Option<(AttemptId, Request)>,
    /// The request to repeat when the retry timer fires.
    to_retry: Option<Request>,
    /// Wait-for-change attempt (early wake-up of `WaitingForNodes`).
    waiting: Option<AttemptId>,
    timer: Option<(Instant, Wake)>,
    retries_left: u32,
    last_revision: Option<u64>,
    last_epoch_version: Option<u64>,
    lock: Option<LockToken>,
    /// The condition of this node's (next) registration.
    add_mode: Option<AddMode>,
    /// The cluster this node joined, as named by the registry's epoch.
    cluster: Option<ClusterId>,
    may_be_registered: bool,
    shutting_down: bool,
    mutations: Mutations,
    actions: VecDeque<Action>,
    events: VecDeque<Event>,
}

impl Machine {
    /// Creates the machine for `node` and queues its first action (`GetNodes`).
    ///
    /// `seed` drives all randomness (jitter, seed subsets, cluster ids): the same seed and
    /// the same inputs give the same outputs.
    pub fn new(
        settings: Settings,
        node: NodeId,
        seed: u64,
        now: Instant,
    ) -> Result<Self, SettingsError> {
        settings.validate()?;
        let retries_left = settings.nr_of_retries;
        let mut m = Self {
            settings,
            node,
            rng: ChaCha8Rng::seed_from_u64(seed),
            state: State::GettingNodes,
            failure: None,
            next_attempt: 0,
            pending: None,
            to_retry: None,
            waiting: None,
            timer: None,
            retries_left,
            last_revision: None,
            last_epoch_version: None,
            lock: None,
            add_mode: None,
            cluster: None,
            may_be_registered: false,
            shutting_down: false,
            mutations: Mutations::default(),
            actions: VecDeque::new(),
            events: VecDeque::new(),
        };
        m.issue(now, Request::GetNodes);
        Ok(m)
    }

    #[doc(hidden)]
    pub fn set_mutations(&mut self, mutations: Mutations) {
        self.mutations = mutations;
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
        self.state
    }

    /// Why the machine failed, once it is in [`State::Failed`].
    pub fn failure(&self) -> Option<&Failure> {
        self.failure.as_ref()
    }

    /// The cluster (epoch) this node joined or seeded, once known.
    pub fn cluster(&self) -> Option<ClusterId> {
        self.cluster
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
        self.timer.map(|(at, _)| at)
    }

    /// Starts a graceful shutdown: leave the cluster, remove this node's entry, stop.
    pub fn shutdown(&mut self, now: Instant) {
        if self.shutting_down || self.state.is_terminal() {
            return;
        }
        self.shutting_down = true;
        self.waiting = None;
        self.to_retry = None;
        match self.state {
            State::GettingNodes
            | State::Locking
            | State::VerifyingEmpty
            | State::WaitingForNodes => {
                self.pending = None;
                self.timer = None;
                self.enter(State::Stopped);
            }
            State::Resetting => {
                // Already leaving; its reply moves on to removing or stopping.
                self.enter(State::Leaving);
            }
            _ => {
                self.enter(State::Leaving);
                self.issue(now, Request::Leave);
            }
        }
    }

    /// A cluster membership event. Only [`ClusterEvent::SelfUp`] while joining matters;
    /// everything else is ignored and leaves every deadline where it was.
    pub fn handle_cluster_event(&mut self, now: Instant, event: ClusterEvent) {
        if let (ClusterEvent::SelfUp, State::Joining, Some((attempt, Request::Join(_)))) =
            (&event, self.state, &self.pending)
        {
            let attempt = *attempt;
            self.handle_reply(now, attempt, Reply::Joined(Ok(())));
        }
    }

    /// Wakes the machine; acts only if its timer is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some((at, wake)) = self.timer else { return };
        if now < at {
            return;
        }
        self.timer = None;
        match wake {
            Wake::RequestTimeout => {
                if let Some((_, request)) = self.pending.take() {
                    self.on_request_failed(now, request, CoordinationError::Timeout.summary());
                }
            }
            Wake::Retry => {
                if let Some(request) = self.to_retry.take() {
                    self.issue(now, request);
                }
            }
            Wake::WaitOver => {
                self.waiting = None;
                self.enter(State::GettingNodes);
                self.issue(now, Request::GetNodes);
            }
            Wake::RefreshDue => {
                self.enter(State::Refreshing);
                self.issue(now, Request::Refresh);
            }
        }
    }

    /// The result of the action with `attempt`. Stale or unexpected replies are ignored.
    pub fn handle_reply(&mut self, now: Instant, attempt: AttemptId, reply: Reply) {
        if self.waiting == Some(attempt) {
            self.waiting = None;
            if matches!(reply, Reply::Changed(Ok(WaitOutcome::Changed)))
                && self.state == State::WaitingForNodes
            {
                self.timer = None;
                self.enter(State::GettingNodes);
                self.issue(now, Request::GetNodes);
            }
            return;
        }
        let Some((current, request)) = &self.pending else {
            return;
        };
        if *current != attempt || !reply_matches(request, &reply) {
            return;
        }
        let (_, request) = self.pending.take().expect("checked above");
        self.timer = None;
        match reply {
            Reply::Nodes(Ok(registry)) => self.on_nodes(now, registry),
            Reply::Lock(Ok(outcome)) => self.on_lock(now, outcome),
            Reply::AddSelf(Ok(outcome)) => self.on_added(now, outcome),
            Reply::Refresh(Ok(outcome)) => self.on_refreshed(now, outcome),
            Reply::RemoveSelf(Ok(())) => self.enter(State::Stopped),
            Reply::Joined(Ok(())) => {
                self.succeeded();
                self.enter(State::AddingSelf);
                let mode = self.add_mode.clone().expect("set before joining");
                self.issue(now, Request::AddSelf(mode));
            }
            Reply::Joined(Err(_)) => self.reset(now),
            Reply::Left(_) => self.on_left(now),
            Reply::Nodes(Err(e))
            | Reply::Lock(Err(e))
            | Reply::AddSelf(Err(e))
            | Reply::Refresh(Err(e))
            | Reply::RemoveSelf(Err(e)) => self.on_request_failed(now, request, e.summary()),
            Reply::Changed(_) => {}
        }
    }

    fn on_nodes(&mut self, now: Instant, registry: Registry) {
        self.succeeded();
        self.last_revision = registry.revision;
        let others: Vec<NodeId> = registry
            .nodes
            .into_iter()
            .filter(|n| n.address != self.node.address)
            .collect();
        let epoch = registry.epoch;
        self.last_epoch_version = epoch.map(|e| e.version);
        if !others.is_empty() {
            self.cluster = epoch.map(|e| e.cluster);
            let mode = AddMode::Join {
                cluster: self.cluster,
            };
            let seeds = self.pick_seeds(others);
            self.join(now, seeds, mode);
            return;
        }
        match self.state {
            State::GettingNodes => {
                self.enter(State::Locking);
                self.issue(now, Request::Lock);
            }
            State::VerifyingEmpty => self.seed(now, epoch.map(|e| e.version)),
            _ => {}
        }
    }

    fn on_lock(&mut self, now: Instant, outcome: LockOutcome) {
        self.succeeded();
        match outcome {
            LockOutcome::Acquired(token) => {
                self.lock = Some(token);
                if self.mutations.skip_reread_after_lock {
                    self.seed(now, self.last_epoch_version);
                } else {
                    self.enter(State::VerifyingEmpty);
                    self.issue(now, Request::GetNodes);
                }
            }
            LockOutcome::HeldByOther => {
                self.enter(State::WaitingForNodes);
                if self.settings.watch {
                    let attempt = self.next_attempt();
                    self.waiting = Some(attempt);
                    self.actions.push_back(Action::WaitForChange {
                        attempt,
                        after: self.last_revision,
                    });
                }
                let delay = self.retry_wait();
                self.timer = Some((now + delay, Wake::WaitOver));
            }
        }
    }

    fn seed(&mut self, now: Instant, expected_epoch_version: Option<u64>) {
        let cluster = loop {
            let id = ClusterId(self.rng.random());
            if id != ClusterId::UNREADABLE {
                break id;
            }
        };
        let lock = self.lock.clone().expect("seeding requires the lock");
        self.cluster = Some(cluster);
        let mode = AddMode::Seed {
            lock,
            cluster,
            expected_epoch_version,
        };
        self.join(now, vec![self.node.clone()], mode);
    }

    fn join(&mut self, now: Instant, seeds: Vec<NodeId>, mode: AddMode) {
        self.add_mode = Some(mode);
        self.enter(State::Joining);
        self.issue(now, Request::Join(seeds));
    }

    fn on_added(&mut self, now: Instant, outcome: AddOutcome) {
        self.succeeded();
        match outcome {
            AddOutcome::Added => {
                // Later re-registrations (after an expired entry) are those of a member.
                self.add_mode = Some(AddMode::Join {
                    cluster: self.cluster,
                });
                self.lock = None;
                self.schedule_refresh(now);
            }
            AddOutcome::Refused => {
                self.may_be_registered = false;
                if matches!(self.add_mode, Some(AddMode::Seed { .. })) {
                    self.events.push_back(Event::SeedRefused);
                }
                self.reset(now);
            }
        }
    }

    fn on_refreshed(&mut self, now: Instant, outcome: RefreshOutcome) {
        self.succeeded();
        match outcome {
            RefreshOutcome::Refreshed => self.schedule_refresh(now),
            RefreshOutcome::Missing => {
                self.enter(State::AddingSelf);
                let mode = self.add_mode.clone().expect("set when first added");
                self.issue(now, Request::AddSelf(mode));
            }
        }
    }

    fn on_left(&mut self, now: Instant) {
        match self.state {
            State::Resetting => {
                self.enter(State::GettingNodes);
                self.issue(now, Request::GetNodes);
            }
            State::Leaving if self.may_be_registered => {
                self.retries_left = self.settings.nr_of_retries;
                self.enter(State::RemovingSelf);
                self.issue(now, Request::RemoveSelf);
            }
            State::Leaving => self.enter(State::Stopped),
            _ => {}
        }
    }

    fn on_request_failed(&mut self, now: Instant, request: Request, error: ErrorSummary) {
        match self.state {
            State::Joining => {
                if self.settings.abort_on_join_timeout {
                    self.fail(Failure::JoinTimeout);
                } else {
                    self.reset(now);
                }
                return;
            }
            State::Resetting | State::Leaving => return self.on_left(now),
            State::Refreshing if self.settings.ignore_refresh_failures => {
                self.events.push_back(Event::Retrying {
                    state: self.state,
                    error,
                });
                return self.retry_later(now, request);
            }
            _ => {}
        }
        if error.retryable && self.retries_left > 0 {
            self.retries_left -= 1;
            self.events.push_back(Event::Retrying {
                state: self.state,
                error,
            });
            self.retry_later(now, request);
        } else if self.state == State::RemovingSelf {
            // The entry expires with its TTL; shutting down goes on.
            self.enter(State::Stopped);
        } else if error.retryable {
            self.fail(Failure::RetriesExhausted {
                state: self.state,
                error,
            });
        } else {
            self.fail(Failure::Permanent {
                state: self.state,
                error,
            });
        }
    }

    fn retry_later(&mut self, now: Instant, request: Request) {
        self.to_retry = Some(request);
        let delay = self.retry_wait();
        self.timer = Some((now + delay, Wake::Retry));
    }

    fn reset(&mut self, now: Instant) {
        self.lock = None;
        self.cluster = None;
        self.add_mode = None;
        if self.shutting_down {
            self.enter(State::Leaving);
        } else {
            self.enter(State::Resetting);
        }
        self.issue(now, Request::Leave);
    }

    fn fail(&mut self, failure: Failure) {
        self.pending = None;
        self.to_retry = None;
        self.waiting = None;
        self.timer = None;
        self.failure = Some(failure);
        self.enter(State::Failed);
    }

    fn succeeded(&mut self) {
        self.retries_left = self.settings.nr_of_retries;
    }

    fn schedule_refresh(&mut self, now: Instant) {
        self.may_be_registered = true;
        self.enter(State::RefreshScheduled);
        self.timer = Some((now + self.settings.refresh_interval, Wake::RefreshDue));
    }

    fn pick_seeds(&mut self, mut nodes: Vec<NodeId>) -> Vec<NodeId> {
        let max = self.settings.max_nr_of_seed_nodes;
        if max > 0 && nodes.len() > max {
            // A random subset, so that not every joiner hammers the same first N nodes.
            nodes.partial_shuffle(&mut self.rng, max);
            nodes.truncate(max);
        }
        nodes
    }

    fn retry_wait(&mut self) -> Duration {
        let base = self.settings.retry_delay;
        let jitter = self.settings.retry_jitter;
        if jitter > 0.0 {
            base.mul_f64(1.0 + self.rng.random_range(0.0..jitter))
        } else {
            base
        }
    }

    fn next_attempt(&mut self) -> AttemptId {
        self.next_attempt += 1;
        AttemptId(self.next_attempt)
    }

    fn issue(&mut self, now: Instant, request: Request) {
        let attempt = self.next_attempt();
        let s = &self.settings;
        let (action, timeout) = match &request {
            Request::GetNodes => (Action::GetNodes { attempt }, s.coordination_timeout),
            Request::Lock => (
                Action::Lock {
                    attempt,
                    ttl: s.lock_ttl(),
                },
                s.coordination_timeout,
            ),
            Request::AddSelf(mode) => {
                self.may_be_registered = true;
                (
                    Action::AddSelf {
                        attempt,
                        ttl: s.ttl(),
                        mode: mode.clone(),
                    },
                    s.coordination_timeout,
                )
            }
            Request::Refresh => (
                Action::Refresh {
                    attempt,
                    ttl: s.ttl(),
                },
                s.coordination_timeout,
            ),
            Request::RemoveSelf => (Action::RemoveSelf { attempt }, s.coordination_timeout),
            Request::Join(seeds) => (
                Action::JoinCluster {
                    attempt,
                    seeds: seeds.clone(),
                },
                s.join_timeout,
            ),
            Request::Leave => (Action::LeaveCluster { attempt }, s.coordination_timeout),
        };
        self.pending = Some((attempt, request));
        self.timer = Some((now + timeout, Wake::RequestTimeout));
        self.actions.push_back(action);
    }

    fn enter(&mut self, to: State) {
        let from = self.state;
        if from != to {
            self.state = to;
            self.events.push_back(Event::StateChanged { from, to });
        }
    }
}

fn reply_matches(request: &Request, reply: &Reply) -> bool {
    matches!(
        (request, reply),
        (Request::GetNodes, Reply::Nodes(_))
            | (Request::Lock, Reply::Lock(_))
            | (Request::AddSelf(_), Reply::AddSelf(_))
            | (Request::Refresh, Reply::Refresh(_))
            | (Request::RemoveSelf, Reply::RemoveSelf(_))
            | (Request::Join(_), Reply::Joined(_))
            | (Request::Leave, Reply::Left(_))
    )
}
