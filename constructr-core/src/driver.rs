//! The tokio driver: runs a [`Machine`] against a real [`Coordination`] and [`Cluster`].
//!
//! Start a node with [`NodeBuilder`] ([`Node::builder`]). The driver never exits the
//! process: when the machine stops or fails, [`NodeHandle::stopped`] resolves and the
//! application decides what to do (ConstructR issues #95/#171).
//!
//! ```
//! use std::sync::Arc;
//! use constructr_core::driver::Node;
//! use constructr_core::local::LocalCluster;
//! use constructr_core::memory::MemoryCoordination;
//! use constructr_core::{NodeId, Settings, State};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let me = NodeId::new("10.0.0.1:7946", 1);
//! let world = LocalCluster::new();
//! let node = Node::builder()
//!     .settings(Settings::default())
//!     .address(me.clone())
//!     .coordination(Arc::new(MemoryCoordination::default()))
//!     .cluster(Arc::new(world.node(me)))
//!     .spawn()?;
//! // `Err` if the node failed or stopped first: a failed node never looks registered.
//! assert!(node.registered().await?.is_registered());
//! assert!(node.status().is_ready());
//! node.shutdown();
//! node.stopped().await?;
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument as _;

use crate::cluster::Cluster;
use crate::coordination::{Coordination, ErrorKind, LockOutcome, RefreshOutcome, Registry};
use crate::divergence::DivergenceMonitor;
use crate::machine::{Action, AttemptId, Event, Failure, Machine, Reply, State};
use crate::node::{NodeId, Scope};
use crate::settings::{Settings, SettingsError};
use crate::status::{LockHolder, Operation, Outcome, Request, Status};

/// Sees what a running node does, as it happens: every finished call and every event
/// (metrics, audit logs). Called on the node's task: keep it quick and never block.
pub trait Observer: Send + Sync + 'static {
    /// A coordination or cluster call finished.
    fn request(&self, request: &Request) {
        let _ = request;
    }
    /// The node reported an event (after the status was updated).
    fn event(&self, event: &TimedEvent, status: &Status) {
        let _ = (event, status);
    }
}

/// Where to start nodes: `Node::builder()`.
#[derive(Debug)]
pub struct Node;

impl Node {
    /// A builder for a node: name its settings, address, coordination and cluster, then
    /// [`NodeBuilder::spawn`].
    pub fn builder() -> NodeBuilder {
        NodeBuilder::default()
    }
}

/// Why [`NodeBuilder::spawn`] refused to start a node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnError {
    /// A required part was not given.
    #[error("the node builder needs {0}")]
    Missing(&'static str),
    /// The settings are invalid (in general, or for this backend).
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// The coordination backend lacks what "exactly one cluster forms" needs (e.g. Serf),
    /// and the caller did not accept that ([`NodeBuilder::accept_split_brain_risk`]).
    #[error(
        "the coordination backend is not {}: two clusters can form under a partition at \
         bootstrap; use a backend with these guarantees (etcd, Consul), or call \
         accept_split_brain_risk() to start anyway",
        missing.join(" and ")
    )]
    UnsafeCoordination {
        /// The guarantees it lacks ([`crate::coordination::Guarantees::missing_for_bootstrap`]).
        missing: Vec<&'static str>,
    },
}

/// Builds and starts a node ([`Node::builder`]). Settings default to [`Settings::default`]
/// and the seed of the machine's randomness to a random one; the address, the
/// coordination and the cluster are required.
#[derive(Default)]
#[must_use = "a builder does nothing until spawn()"]
pub struct NodeBuilder {
    settings: Option<Settings>,
    node: Option<NodeId>,
    coordination: Option<Arc<dyn Coordination>>,
    cluster: Option<Arc<dyn Cluster>>,
    seed: Option<u64>,
    observers: Vec<Arc<dyn Observer>>,
    accept_split_brain: bool,
}

impl std::fmt::Debug for NodeBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeBuilder")
            .field("settings", &self.settings)
            .field("node", &self.node)
            .field("coordination", &self.coordination.is_some())
            .field("cluster", &self.cluster.is_some())
            .field("seed", &self.seed)
            .field("observers", &self.observers.len())
            .field("accept_split_brain", &self.accept_split_brain)
            .finish()
    }
}

impl NodeBuilder {
    /// The settings (default: [`Settings::default`]).
    pub fn settings(mut self, settings: Settings) -> Self {
        self.settings = Some(settings);
        self
    }

    /// This node's address as registered (its incarnation should be random per start).
    pub fn address(mut self, node: NodeId) -> Self {
        self.node = Some(node);
        self
    }

    /// The coordination service.
    pub fn coordination(mut self, coordination: Arc<dyn Coordination>) -> Self {
        self.coordination = Some(coordination);
        self
    }

    /// The cluster runtime being bootstrapped.
    pub fn cluster(mut self, cluster: Arc<dyn Cluster>) -> Self {
        self.cluster = Some(cluster);
        self
    }

    /// The seed of the machine's randomness (jitter), for reproducible runs (default:
    /// random).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Adds an observer of calls and events (e.g. the management endpoint's metrics).
    pub fn observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observers.push(observer);
        self
    }

    /// Starts the node even on a backend that is not linearizable or has no exclusive
    /// fenced lock (such as Serf, [`Coordination::guarantees`]): **under a network
    /// partition at bootstrap, two clusters can form**. Without this, such a backend is
    /// refused ([`SpawnError::UnsafeCoordination`]).
    pub fn accept_split_brain_risk(mut self) -> Self {
        self.accept_split_brain = true;
        self
    }

    /// Validates the settings (the general rules, then the backend's own limits through
    /// [`Coordination::check_settings`]) and the backend's guarantees, and starts the node
    /// on the current tokio runtime.
    ///
    /// # Errors
    /// [`SpawnError::Missing`] names a required part that was not given;
    /// [`SpawnError::Settings`] says which setting is invalid;
    /// [`SpawnError::UnsafeCoordination`] what the backend lacks.
    pub fn spawn(self) -> Result<NodeHandle, SpawnError> {
        let node = self.node.ok_or(SpawnError::Missing("an address"))?;
        let coordination = self
            .coordination
            .ok_or(SpawnError::Missing("a coordination"))?;
        let missing = coordination.guarantees().missing_for_bootstrap();
        if !missing.is_empty() {
            if !self.accept_split_brain {
                return Err(SpawnError::UnsafeCoordination { missing });
            }
            tracing::warn!(
                ?missing,
                "starting on a coordination backend without the guarantees of a single \
                 cluster: two clusters can form under a partition at bootstrap"
            );
        }
        let cluster = self.cluster.ok_or(SpawnError::Missing("a cluster"))?;
        let seed = self.seed.unwrap_or_else(rand::random);
        let settings = self.settings.unwrap_or_default();
        Ok(start(
            settings,
            node,
            coordination,
            cluster,
            seed,
            self.observers,
        )?)
    }
}

/// Events a node buffers for each receiver that has not read them yet; a receiver that falls
/// further behind gets `RecvError::Lagged` and then the newer events. A bootstrap emits
/// about a dozen. (The buffer is allocated up front: 256 events cost about 13 KiB per node
/// more; 1000-node demo on the memory backend: peak RSS 64.5–68.2 MB with 256, 52.2–53.9 MB
/// with 64.)
pub const EVENT_BUFFER: usize = 64;

/// An [`Event`] with the time since the node started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimedEvent {
    /// Time since the node was spawned.
    pub elapsed: Duration,
    /// The event.
    pub event: Event,
}

/// The handle of a running node.
pub struct NodeHandle {
    node: NodeId,
    state: watch::Receiver<State>,
    status: watch::Receiver<Status>,
    cluster: Arc<dyn Cluster>,
    events: broadcast::Sender<TimedEvent>,
    shutdown: Arc<Notify>,
    task: JoinHandle<Result<(), Failure>>,
    first_events: Option<broadcast::Receiver<TimedEvent>>,
}

impl std::fmt::Debug for NodeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeHandle")
            .field("node", &self.node)
            .field("state", &*self.state.borrow())
            .finish_non_exhaustive()
    }
}

impl NodeHandle {
    /// The receiver of **all** events since the start (only once; later calls get `None`).
    /// Use [`NodeHandle::events`] for later subscriptions.
    pub fn take_events(&mut self) -> Option<broadcast::Receiver<TimedEvent>> {
        self.first_events.take()
    }

    /// This node.
    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// The current state.
    pub fn state(&self) -> State {
        *self.state.borrow()
    }

    /// A receiver of state changes.
    pub fn watch_state(&self) -> watch::Receiver<State> {
        self.state.clone()
    }

    /// Subscribes to events from now on (a slow subscriber misses old events, never blocks the node).
    pub fn events(&self) -> broadcast::Receiver<TimedEvent> {
        self.events.subscribe()
    }

    /// A snapshot of the node: state, errors, retries, cluster, last registry read.
    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// What the management endpoint needs: the status and the cluster's members, for as
    /// long as the node runs (cloneable, independent of this handle).
    pub fn monitor(&self) -> Monitor {
        Monitor {
            status: self.status.clone(),
            cluster: self.cluster.clone(),
        }
    }

    /// Resolves once this node is registered: `Ok` with the registered state, or `Err`
    /// if the node failed first (the failure) or was shut down first
    /// ([`Failure::StoppedBeforeRegistering`]). A failed node never looks registered.
    pub async fn registered(&self) -> Result<State, Failure> {
        let mut rx = self.status.clone();
        let status = rx
            .wait_for(|s| s.state.is_registered() || s.state.is_terminal())
            .await
            .map(|s| s.clone());
        match status {
            Ok(s) if s.state.is_registered() => Ok(s.state),
            Ok(s) => Err(s.failure.unwrap_or(Failure::StoppedBeforeRegistering)),
            // The task ended without a last word (aborted or panicked).
            Err(_) => Err(self
                .status
                .borrow()
                .failure
                .clone()
                .unwrap_or(Failure::StoppedBeforeRegistering)),
        }
    }

    /// Starts a graceful shutdown: leave the cluster, remove the entry, stop.
    pub fn shutdown(&self) {
        self.shutdown.notify_one();
    }

    /// Resolves when the machine has stopped (`Ok`) or failed (`Err` with the reason; a
    /// panic of the node task itself is [`Failure::Panicked`] too, never a hang).
    pub async fn stopped(self) -> Result<(), Failure> {
        match self.task.await {
            Ok(r) => r,
            Err(e) if e.is_panic() => Err(Failure::Panicked {
                what: "the node task".into(),
                message: panic_message(e.into_panic()),
            }),
            Err(_) => Ok(()),
        }
    }

    /// Stops the node at once without leaving (as if the process crashed). Its entry
    /// expires with its TTL; [`NodeHandle::stopped`] then returns `Ok(())`.
    pub fn abort(&self) {
        self.task.abort();
    }
}

/// The status and members of a running node, for probes and the management endpoint
/// ([`NodeHandle::monitor`]).
#[derive(Clone)]
pub struct Monitor {
    status: watch::Receiver<Status>,
    cluster: Arc<dyn Cluster>,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor")
            .field("status", &*self.status.borrow())
            .finish_non_exhaustive()
    }
}

impl Monitor {
    /// A snapshot of the node.
    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// A receiver of status changes.
    pub fn watch_status(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// The live members as the cluster runtime sees them (`None`: it does not tell).
    pub async fn members(&self) -> Option<Vec<NodeId>> {
        self.cluster.live_members().await
    }
}

fn start(
    settings: Settings,
    node: NodeId,
    coordination: Arc<dyn Coordination>,
    cluster: Arc<dyn Cluster>,
    seed: u64,
    observers: Vec<Arc<dyn Observer>>,
) -> Result<NodeHandle, SettingsError> {
    let scope = settings.scope()?;
    settings.validate()?;
    coordination.check_settings(&settings)?;
    let start = Instant::now();
    let check_every = settings.divergence_check_interval();
    let divergence = DivergenceMonitor::new(settings.ttl());
    let machine = Machine::new(settings, node.clone(), seed, start.into_std())?;
    let (state_tx, state_rx) = watch::channel(machine.state());
    let (status_tx, status_rx) = watch::channel(Status::new(
        node.clone(),
        machine.state(),
        SystemTime::now(),
    ));
    let (events, first_events) = broadcast::channel(EVENT_BUFFER);
    let shutdown = Arc::new(Notify::new());
    let run = Runner {
        machine,
        scope,
        coordination,
        cluster: cluster.clone(),
        state_tx,
        status_tx,
        observers: observers.into(),
        events: events.clone(),
        shutdown: shutdown.clone(),
        start,
        check_every,
        divergence,
    };
    let span = tracing::info_span!("constructr", node = %node);
    let task = tokio::spawn(run.run().instrument(span));
    Ok(NodeHandle {
        node,
        state: state_rx,
        status: status_rx,
        cluster,
        events,
        shutdown,
        task,
        first_events: Some(first_events),
    })
}

/// One running backend or cluster call.
struct Call {
    attempt: AttemptId,
    what: &'static str,
    handle: tokio::task::AbortHandle,
}

struct Runner {
    machine: Machine,
    scope: Scope,
    coordination: Arc<dyn Coordination>,
    cluster: Arc<dyn Cluster>,
    state_tx: watch::Sender<State>,
    status_tx: watch::Sender<Status>,
    observers: Arc<[Arc<dyn Observer>]>,
    events: broadcast::Sender<TimedEvent>,
    shutdown: Arc<Notify>,
    start: Instant,
    /// How often a registered member compares its runtime with the registry (`None`: never).
    check_every: Option<Duration>,
    divergence: DivergenceMonitor,
}

/// What one divergence check read: the registry and the runtime's live members.
type CheckResult = Option<(Registry, Vec<NodeId>)>;

impl Runner {
    async fn run(mut self) -> Result<(), Failure> {
        let (tx, mut rx) = mpsc::unbounded_channel::<(AttemptId, Reply)>();
        let mut tasks = tokio::task::JoinSet::new();
        // The running calls: which attempt (to drop superseded ones) and what (for panics).
        let mut running: HashMap<tokio::task::Id, Call> = HashMap::new();
        // Divergence checks: one at a time, off the machine's loop.
        let (check_tx, mut check_rx) = mpsc::channel::<CheckResult>(1);
        let mut next_check = self.check_every.map(|every| Instant::now() + every);
        let mut checking = false;
        loop {
            while let Some(action) = self.machine.poll_action() {
                let what = action_name(&action);
                let attempt = action.attempt();
                let handle = tasks.spawn(self.execute(action, tx.clone()));
                running.insert(
                    handle.id(),
                    Call {
                        attempt,
                        what,
                        handle,
                    },
                );
            }
            // A superseded attempt (timed out, retried, or its phase left) is dropped, so a
            // slow call never overlaps its retry (no extra leases or sessions).
            running.retain(|_, call| {
                let live = self.machine.is_awaiting(call.attempt);
                if !live {
                    call.handle.abort();
                }
                live
            });
            while let Some(event) = self.machine.poll_event() {
                self.report(event);
            }
            let state = self.machine.state();
            if state.is_terminal() {
                tasks.abort_all();
                return match self.machine.failure() {
                    Some(f) => Err(f.clone()),
                    None => Ok(()),
                };
            }
            let deadline = self.machine.poll_timeout();
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(Instant::from_std(at)).await,
                    None => std::future::pending().await,
                }
            };
            let check_due = async {
                match next_check {
                    Some(at) if !checking => tokio::time::sleep_until(at).await,
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                () = check_due => {
                    next_check = self.check_every.map(|every| Instant::now() + every);
                    if state.is_registered() {
                        checking = true;
                        tokio::spawn(self.check(check_tx.clone()));
                    }
                }
                Some(result) = check_rx.recv() => {
                    checking = false;
                    if let Some((registry, live)) = result {
                        let now = Instant::now().into_std();
                        let cluster = self.machine.cluster();
                        // Only a member that is still registered compares.
                        if self.machine.state().is_registered()
                            && let Some(event) = self.divergence.observe(now, cluster, &registry, &live)
                        {
                            self.report(event);
                        }
                    }
                }
                Some((attempt, reply)) = rx.recv() => {
                    if self.machine.is_awaiting(attempt) {
                        self.saw_reply(&reply);
                    }
                    self.machine.handle_reply(Instant::now().into_std(), attempt, reply);
                }
                () = sleep => self.machine.handle_timeout(Instant::now().into_std()),
                () = self.shutdown.notified() => self.machine.shutdown(Instant::now().into_std()),
                Some(done) = tasks.join_next_with_id() => {
                    match done {
                        Ok((id, ())) => {
                            running.remove(&id);
                        }
                        Err(e) if e.is_panic() => {
                            let what = running.remove(&e.id()).map_or("a call", |c| c.what);
                            let failure = Failure::Panicked {
                                what: what.to_owned(),
                                message: panic_message(e.into_panic()),
                            };
                            tracing::error!(reason = %failure, "bootstrap failed");
                            let elapsed = self.start.elapsed();
                            let _ = self.state_tx.send(State::Failed);
                            self.status_tx.send_modify(|s| {
                                s.state = State::Failed;
                                s.state_since = elapsed;
                                s.transitions += 1;
                                s.failure = Some(failure.clone());
                            });
                            tasks.abort_all();
                            return Err(failure);
                        }
                        Err(e) => {
                            running.remove(&e.id());
                        }
                    }
                }
            }
        }
    }

    /// One divergence check: a full registry read and the runtime's live members, each
    /// bounded by the coordination timeout; `None` if either is not to be had.
    fn check(
        &self,
        tx: mpsc::Sender<CheckResult>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let coordination = self.coordination.clone();
        let cluster = self.cluster.clone();
        let scope = self.scope.clone();
        let bound = self.machine.settings().coordination_timeout;
        async move {
            let registry = bounded(bound, coordination.get_nodes(&scope)).await;
            let live = bounded(bound, cluster.live_members()).await;
            let result = match (registry, live) {
                (Some(Ok(registry)), Some(Some(live))) => Some((registry, live)),
                _ => None,
            };
            let _ = tx.send(result).await;
        }
    }

    /// What a reply tells the status (before the machine sees it).
    fn saw_reply(&self, reply: &Reply) {
        let elapsed = self.start.elapsed();
        self.status_tx.send_if_modified(|s| match reply {
            Reply::Nodes(Ok(registry)) => {
                s.saw_registry(registry, elapsed);
                true
            }
            Reply::Lock(Ok(outcome)) => {
                s.lock = Some(match outcome {
                    LockOutcome::Acquired(_) => LockHolder::ThisNode,
                    LockOutcome::HeldByOther => LockHolder::AnotherNode,
                });
                true
            }
            Reply::AddSelf(Ok(crate::coordination::AddOutcome::Added))
            | Reply::Refresh(Ok(RefreshOutcome::Refreshed)) => {
                s.last_registered = Some(elapsed);
                true
            }
            _ => false,
        });
    }

    fn report(&self, event: Event) {
        let elapsed = self.start.elapsed();
        // The state first: whoever wakes on the status (`registered()`) sees it already.
        if let Event::StateChanged { to, .. } = &event {
            let _ = self.state_tx.send(*to);
        }
        let cluster = self.machine.cluster();
        let failure = self.machine.failure().cloned();
        self.status_tx.send_modify(|s| {
            s.cluster = cluster;
            match &event {
                Event::StateChanged { to, .. } => {
                    s.state = *to;
                    s.state_since = elapsed;
                    s.transitions += 1;
                    if failure.is_some() {
                        s.failure = failure;
                    }
                }
                Event::Retrying { error, .. } => {
                    s.retries += 1;
                    s.last_error = Some(error.message.clone());
                }
                _ => {}
            }
        });
        match &event {
            Event::StateChanged { from, to } => {
                if *to == State::Failed {
                    let reason = self.machine.failure().map(|f| f.to_string());
                    tracing::error!(?from, reason = reason.as_deref(), "bootstrap failed");
                } else {
                    tracing::info!(
                        ?from,
                        ?to,
                        elapsed_ms = elapsed.as_millis() as u64,
                        "state changed"
                    );
                }
            }
            Event::Retrying {
                state,
                error,
                retry_in,
            } => {
                tracing::warn!(?state, %error, retry_in_ms = retry_in.as_millis() as u64, "request failed; retrying")
            }
            Event::SeedRefused => {
                tracing::warn!("fenced seed registration refused (lost the lock); starting over")
            }
            Event::SeedConfirmed => {
                tracing::info!("found the seed registration committed despite the lost reply")
            }
            Event::SeedLapsed => tracing::warn!(
                "the seed registration lapsed before the cluster formed (paused past its TTL); starting over"
            ),
            Event::ReseedGrace { cluster, grace } => tracing::info!(
                %cluster,
                grace_ms = grace.as_millis() as u64,
                "registry empty but its epoch names a cluster: waiting for its members to re-register before seeding"
            ),
            Event::ClusterLost { cluster } => tracing::warn!(
                cluster = cluster.map(|c| c.to_string()),
                "re-registration refused: another cluster owns the registry; leaving to join it"
            ),
            Event::ClusterDivergence {
                unseen,
                unregistered,
                foreign_epoch,
                lasting,
            } => tracing::warn!(
                unseen,
                unregistered,
                foreign_epoch,
                lasting_ms = lasting.as_millis() as u64,
                "cluster divergence: the runtime's members and the registry disagree (a second cluster may run)"
            ),
            Event::ClusterDivergenceEnded { lasted } => tracing::info!(
                lasted_ms = lasted.as_millis() as u64,
                "cluster divergence ended"
            ),
        }
        let timed = TimedEvent { elapsed, event };
        if !self.observers.is_empty() {
            let status = self.status_tx.borrow();
            for o in self.observers.iter() {
                o.event(&timed, &status);
            }
        }
        let _ = self.events.send(timed);
    }

    /// Runs one action to completion and sends its reply. Each call is bounded here too,
    /// so superseded calls end by themselves.
    fn execute(
        &self,
        action: Action,
        tx: mpsc::UnboundedSender<(AttemptId, Reply)>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let coordination = self.coordination.clone();
        let cluster = self.cluster.clone();
        let scope = self.scope.clone();
        let node = self.machine.node().clone();
        let s = self.machine.settings();
        let bound = s.coordination_timeout * 2;
        let join_bound = s.join_timeout * 2;
        let wait_bound = s.retry_delay * 3;
        let span = tracing::debug_span!("action", state = ?self.machine.state());
        let observers = self.observers.clone();
        async move {
            let attempt = action.attempt();
            let operation = operation(&action);
            let started = Instant::now();
            let c = &*coordination;
            let reply = match action {
                Action::GetNodes { limit: None, .. } => {
                    bounded(bound, c.get_nodes(&scope)).await.map(Reply::Nodes)
                }
                Action::GetNodes {
                    limit: Some(limit), ..
                } => bounded(bound, c.get_some_nodes(&scope, limit))
                    .await
                    .map(Reply::Nodes),
                Action::Lock { ttl, .. } => bounded(bound, c.lock(scope.lease(&node, ttl)))
                    .await
                    .map(Reply::Lock),
                Action::AddSelf { ttl, mode, .. } => {
                    bounded(bound, c.add_self(scope.lease(&node, ttl), &mode))
                        .await
                        .map(Reply::AddSelf)
                }
                Action::Refresh { ttl, .. } => bounded(bound, c.refresh(scope.lease(&node, ttl)))
                    .await
                    .map(Reply::Refresh),
                Action::RemoveSelf { .. } => bounded(bound, c.remove_self(&scope, &node))
                    .await
                    .map(Reply::RemoveSelf),
                Action::WaitForChange { after, .. } => {
                    bounded(wait_bound, c.wait_for_change(&scope, after))
                        .await
                        .map(Reply::Changed)
                }
                Action::JoinCluster { seeds, .. } => {
                    tokio::time::timeout(join_bound, cluster.join(&seeds))
                        .await
                        .ok()
                        .map(Reply::Joined)
                }
                Action::LeaveCluster { .. } => tokio::time::timeout(bound, cluster.leave())
                    .await
                    .ok()
                    .map(Reply::Left),
            };
            if !observers.is_empty() {
                let request = Request {
                    operation,
                    outcome: outcome(reply.as_ref()),
                    latency: started.elapsed(),
                };
                for o in observers.iter() {
                    o.request(&request);
                }
            }
            if let Some(reply) = reply {
                let _ = tx.send((attempt, reply));
            }
        }
        .instrument(span)
    }
}

fn operation(action: &Action) -> Operation {
    match action {
        Action::GetNodes { .. } => Operation::GetNodes,
        Action::Lock { .. } => Operation::Lock,
        Action::AddSelf { .. } => Operation::AddSelf,
        Action::Refresh { .. } => Operation::Refresh,
        Action::RemoveSelf { .. } => Operation::RemoveSelf,
        Action::WaitForChange { .. } => Operation::WaitForChange,
        Action::JoinCluster { .. } => Operation::Join,
        Action::LeaveCluster { .. } => Operation::Leave,
    }
}

/// How a call ended; `None` is a call the driver stopped waiting for.
fn outcome(reply: Option<&Reply>) -> Outcome {
    fn of<T, E>(r: &Result<T, E>, kind: impl Fn(&E) -> Outcome) -> Outcome {
        r.as_ref().err().map_or(Outcome::Ok, kind)
    }
    let coordination = |e: &crate::CoordinationError| Outcome::Error(e.kind());
    let cluster = |_: &crate::ClusterError| Outcome::ClusterError;
    match reply {
        None => Outcome::Error(ErrorKind::Timeout),
        Some(Reply::Nodes(r)) => of(r, coordination),
        Some(Reply::Lock(r)) => of(r, coordination),
        Some(Reply::AddSelf(r)) => of(r, coordination),
        Some(Reply::Refresh(r)) => of(r, coordination),
        Some(Reply::RemoveSelf(r)) => of(r, coordination),
        Some(Reply::Changed(r)) => of(r, coordination),
        Some(Reply::Joined(r)) => of(r, cluster),
        Some(Reply::Left(r)) => of(r, cluster),
    }
}

fn action_name(action: &Action) -> &'static str {
    match action {
        Action::GetNodes { .. } => "Coordination::get_nodes",
        Action::Lock { .. } => "Coordination::lock",
        Action::AddSelf { .. } => "Coordination::add_self",
        Action::Refresh { .. } => "Coordination::refresh",
        Action::RemoveSelf { .. } => "Coordination::remove_self",
        Action::WaitForChange { .. } => "Coordination::wait_for_change",
        Action::JoinCluster { .. } => "Cluster::join",
        Action::LeaveCluster { .. } => "Cluster::leave",
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

async fn bounded<T>(bound: Duration, f: impl std::future::Future<Output = T>) -> Option<T> {
    tokio::time::timeout(bound, f).await.ok()
}
