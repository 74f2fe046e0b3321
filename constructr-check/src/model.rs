//! The model: real [`Machine`]s, a [`ScopeRegistry`] (the memory backend's own registry
//! code), a cluster runtime with [`LocalCluster`](constructr_core::local::LocalCluster)'s
//! join rules, virtual time, and faults.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use constructr_core::WaitOutcome;
use constructr_core::coordination::{AddMode, AddOutcome, CoordinationError, LockOutcome};
use constructr_core::machine::{Mutations, Renaming};
use constructr_core::memory::ScopeRegistry;
use constructr_core::{
    Action, AttemptId, ClusterId, ClusterName, Event, Machine, NodeId, Reply, Settings, State,
};
use stateright::{Model, Property};

/// A safety mechanism the checker can remove, to show that its properties catch the absence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mutation {
    /// The machine seeds right after taking the lock, without re-reading the registry.
    SkipRereadAfterLock,
    /// The registry writes a seed's registration whatever its lock and epoch condition.
    UnfencedSeedWrite,
    /// No re-seed grace: a node seeds as soon as it finds the registry empty.
    NoReseedGrace,
    /// A seed forms its cluster before its registration commits (ConstructR's order).
    FormBeforeRegister,
}

impl Mutation {
    /// Every mutation, for `--mutation` parsing and the tests.
    pub const ALL: [Mutation; 4] = [
        Mutation::SkipRereadAfterLock,
        Mutation::UnfencedSeedWrite,
        Mutation::NoReseedGrace,
        Mutation::FormBeforeRegister,
    ];

    /// The kebab-case name (`skip-reread-after-lock`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Mutation::SkipRereadAfterLock => "skip-reread-after-lock",
            Mutation::UnfencedSeedWrite => "unfenced-seed-write",
            Mutation::NoReseedGrace => "no-reseed-grace",
            Mutation::FormBeforeRegister => "form-before-register",
        }
    }
}

impl std::str::FromStr for Mutation {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        by_name(s, &Mutation::ALL, Mutation::name, "mutation")
    }
}

/// The one of `all` named `s`, or an error listing the names.
fn by_name<T: Copy>(
    s: &str,
    all: &[T],
    name: fn(T) -> &'static str,
    what: &str,
) -> Result<T, String> {
    all.iter().copied().find(|t| name(*t) == s).ok_or_else(|| {
        let names: Vec<_> = all.iter().map(|t| name(*t)).collect();
        format!("unknown {what} {s:?} (one of: {})", names.join(", "))
    })
}

/// The kinds of fault a path may contain (each costs one of `max_faults`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// The coordination service answers only errors (or nothing) until the outage ends.
    Outage,
    /// A node crashes (kill -9); it may restart later as a new incarnation.
    Crash,
    /// A node shuts down gracefully (SIGTERM); it may restart later.
    Shutdown,
    /// A request takes effect but its reply is lost.
    LostReply,
    /// A request is slow: it is answered late (up to its timeout), while time passes.
    Slow,
    /// A request outlives its timeout: the node gives up on it.
    Timeout,
    /// A request the node gave up on takes effect after all.
    LateWrite,
    /// The lock vanishes before its TTL.
    LockLost,
    /// A node's entry vanishes before its TTL (an operator deleted it, data loss).
    EntryLost,
    /// A node freezes between two of its own steps (a GC pause, SIGSTOP) for up to
    /// [`CheckConfig::max_pause`]: it takes no step, its timers and replies wait.
    Pause,
}

impl FaultKind {
    /// Every fault kind.
    pub const ALL: [FaultKind; 10] = [
        FaultKind::Outage,
        FaultKind::Crash,
        FaultKind::Shutdown,
        FaultKind::LostReply,
        FaultKind::Slow,
        FaultKind::Timeout,
        FaultKind::LateWrite,
        FaultKind::LockLost,
        FaultKind::EntryLost,
        FaultKind::Pause,
    ];

    /// The kebab-case name (`outage`, `lost-reply`, ...).
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Outage => "outage",
            FaultKind::Crash => "crash",
            FaultKind::Shutdown => "shutdown",
            FaultKind::LostReply => "lost-reply",
            FaultKind::Slow => "slow",
            FaultKind::Timeout => "timeout",
            FaultKind::LateWrite => "late-write",
            FaultKind::LockLost => "lock-lost",
            FaultKind::EntryLost => "entry-lost",
            FaultKind::Pause => "pause",
        }
    }
}

impl std::str::FromStr for FaultKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        by_name(s, &FaultKind::ALL, FaultKind::name, "fault kind")
    }
}

/// What to check: the cluster size, the fault bound and the timing.
#[derive(Clone, Debug)]
pub struct CheckConfig {
    /// Nodes (1–4; every one starts at time 0).
    pub nodes: usize,
    /// Faults per path at most.
    pub max_faults: u8,
    /// Faults happen only up to this time (an outage ends by then at the latest).
    pub fault_window: Duration,
    /// Paths are explored up to this virtual time.
    pub horizon: Duration,
    /// The machines' settings (see [`CheckConfig::settings`]).
    pub settings: Settings,
    /// A safety mechanism removed, or none.
    pub mutation: Option<Mutation>,
    /// The fault kinds paths may contain.
    pub faults: Vec<FaultKind>,
    /// The last `late` nodes start not at time 0 but at any time within the fault window
    /// (newcomers, e.g. during an outage).
    pub late: usize,
    /// The longest freeze of a [`FaultKind::Pause`] (the node resumes at any moment up to
    /// this): by default [`Settings::max_safe_pause`] of the settings.
    pub max_pause: Duration,
    /// Once no fault can happen any more, fire a node's timer that nothing else can
    /// interfere with before any other step, instead of in every order (a partial-order
    /// reduction: the same verdicts, fewer states). On by default.
    pub reduce_local_timers: bool,
}

impl CheckConfig {
    /// Round, short timings: coordination timeout 1 s, join timeout 2 s, retry delay 1 s
    /// (growing to 2 s), refresh every 2 s, entry TTL 6 s, lock TTL 4 s, no jitter; the
    /// derived re-seed grace is 5 s.
    pub fn settings() -> Settings {
        let mut s = Settings::default();
        s.cluster_name = ClusterName::new("check").expect("valid");
        s.coordination_timeout = Duration::from_secs(1);
        s.join_timeout = Duration::from_secs(2);
        s.retry_delay = Duration::from_secs(1);
        s.max_retry_delay = Duration::from_secs(2);
        s.refresh_interval = Duration::from_secs(2);
        s.ttl_factor = 3.0;
        s.retry_jitter = 0.0;
        s
    }

    /// `nodes` nodes, `max_faults` faults of every kind within the first 5 s, explored up
    /// to 18 s: long enough for a cluster that died at 5 s to be re-seeded (its entries
    /// expire within the 6 s TTL, then the 5 s re-seed grace runs out).
    pub fn new(nodes: usize, max_faults: u8) -> Self {
        Self {
            nodes,
            max_faults,
            fault_window: Duration::from_secs(5),
            horizon: Duration::from_secs(18),
            settings: Self::settings(),
            mutation: None,
            faults: FaultKind::ALL.to_vec(),
            late: 0,
            max_pause: Self::settings().max_safe_pause(),
            reduce_local_timers: true,
        }
    }

    /// The same, with pauses of up to `max_pause`.
    pub fn with_max_pause(mut self, max_pause: Duration) -> Self {
        self.max_pause = max_pause;
        self
    }

    /// The same, with `mutation`.
    pub fn with_mutation(mut self, mutation: Option<Mutation>) -> Self {
        self.mutation = mutation;
        self
    }

    /// The same, with only these fault kinds.
    pub fn with_faults(mut self, faults: &[FaultKind]) -> Self {
        self.faults = faults.to_vec();
        self
    }

    /// The same, with the last `late` nodes starting at any time within the fault window.
    pub fn with_late_nodes(mut self, late: usize) -> Self {
        self.late = late;
        self
    }

    /// The same, with another fault window and horizon.
    pub fn with_times(mut self, fault_window: Duration, horizon: Duration) -> Self {
        self.fault_window = fault_window;
        self.horizon = horizon;
        self
    }
}

/// Why a configuration cannot be checked.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    /// The node count is outside 1–4.
    #[error("the model checks 1 to 4 nodes, not {0}")]
    Nodes(usize),
    /// The settings are invalid.
    #[error("invalid settings: {0}")]
    Settings(#[from] constructr_core::SettingsError),
    /// More late nodes than nodes.
    #[error("{late} late nodes of {nodes}")]
    Late {
        /// Late nodes.
        late: usize,
        /// Nodes.
        nodes: usize,
    },
    /// The horizon is shorter than the fault window or longer than an hour.
    #[error("the horizon must be at least the fault window and at most 1 h")]
    Horizon,
    /// The Explorer's address cannot be bound.
    #[error("cannot serve the explorer on {address}: {error}")]
    Bind {
        /// The address.
        address: std::net::SocketAddr,
        /// Why.
        error: String,
    },
}

/// One node of the model: its machine (none while crashed), its cluster membership and
/// the requests it waits for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Node {
    /// The running machine; `None` after a crash, until a restart.
    pub machine: Option<Machine>,
    /// The incarnation of the running (or last) machine.
    pub incarnation: u64,
    /// The cluster (runtime group) this node is a member of.
    pub group: Option<u32>,
    /// Issued actions whose reply the machine still awaits (at most a request and a watch).
    pub requests: Vec<Action>,
    /// A request that is slow ([`FaultKind::Slow`]): time may pass before it is answered.
    /// Every other request is answered before time moves on.
    pub slow: Option<AttemptId>,
    /// A write the node gave up on that may still take effect ([`FaultKind::LateWrite`]).
    pub stale: Option<(u64, Action)>,
    /// This incarnation took the lock at least once.
    pub locked: bool,
    /// Its last registry read happened after it had taken the lock, and held no other node.
    pub read_empty_under_lock: bool,
    /// This incarnation registered at least once.
    pub registered_once: bool,
    /// This incarnation is shutting down (so leaving is not a loss).
    pub shutting_down: bool,
    /// Frozen ([`FaultKind::Pause`]) until at the latest this time: it takes no step.
    pub frozen_until: Option<Duration>,
    /// Resumed from a freeze, and has not stepped since: its overdue timer is the pause's
    /// doing, not a timeout fault.
    pub thawed: bool,
}

impl Node {
    fn id(&self, index: usize) -> NodeId {
        NodeId::new(address(index), self.incarnation)
    }

    /// Whether `id` names this node (node `index`, its current incarnation).
    fn is(&self, index: usize, id: &NodeId) -> bool {
        id.incarnation == self.incarnation && id.address == address(index)
    }

    /// Whether this node (node `index`, its current incarnation) is registered at `now`.
    fn registered(&self, index: usize, registry: &ScopeRegistry, now: Instant) -> bool {
        match &self.machine {
            Some(m) => registry.is_registered(now, m.node()),
            None => registry.is_registered(now, &self.id(index)),
        }
    }

    fn alive(&self) -> bool {
        self.machine
            .as_ref()
            .is_some_and(|m| !m.state().is_terminal())
    }

    fn frozen(&self) -> bool {
        self.frozen_until.is_some()
    }
}

/// Safety facts recorded along a path (a property reads them in the state).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Flags {
    /// A registration was written for a node outside the cluster the epoch names.
    pub foreign_registration: bool,
    /// A seed's registration was written while it did not hold the lock.
    pub seed_without_lock: bool,
    /// A node formed a new cluster without having read the registry empty under the lock.
    pub seed_without_reread: bool,
    /// A registered member left its cluster, or its machine failed, without shutting down.
    pub member_lost: bool,
    /// A machine failed.
    pub machine_failed: bool,
}

/// One state of the model.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct World {
    /// Virtual time since the start.
    pub now: Duration,
    /// The nodes.
    pub nodes: Vec<Node>,
    /// The coordination service's registry (linearizable, TTLs on virtual time).
    pub registry: ScopeRegistry,
    /// The coordination service is down.
    pub outage: bool,
    /// Faults so far.
    pub faults: u8,
    /// A fault other than an outage or a shutdown happened on the path (the only fact about
    /// the kinds of fault a property reads: keeping no more merges states that differ in
    /// nothing else).
    pub other_faults: bool,
    /// Runtime groups formed so far.
    pub groups_formed: u32,
    /// Epoch cluster ids bound to the runtime group that seeded them, in order.
    pub epochs: Vec<(ClusterId, u32)>,
    /// Safety facts.
    pub flags: Flags,
}

impl World {
    /// Whether every fault on the path was an outage (shutdowns are not faults here).
    pub fn only_outages(&self) -> bool {
        !self.other_faults
    }

    fn group_of_epoch(&self, cluster: ClusterId) -> Option<u32> {
        self.epochs
            .iter()
            .find(|(c, _)| *c == cluster)
            .map(|(_, g)| *g)
    }
}

/// One step of the model.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Step {
    /// The request takes effect (linearized now) and its reply arrives.
    Execute {
        /// The node.
        node: usize,
        /// The request.
        attempt: AttemptId,
    },
    /// The node's timer is due: a retry wait, a watch's fallback, a refresh, or a request's
    /// timeout (a [`FaultKind::Timeout`] unless the service is down or the join cannot
    /// proceed).
    Timer {
        /// The node.
        node: usize,
    },
    /// Time advances to the next timer or expiry.
    Tick,
    /// A fault.
    Fault(Fault),
    /// A late node starts, or a crashed, failed or stopped node starts again (new
    /// incarnation).
    Restart {
        /// The node.
        node: usize,
    },
    /// The coordination service is back.
    OutageEnds,
    /// A frozen node resumes.
    Resume {
        /// The node.
        node: usize,
    },
}

/// A fault step.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Fault {
    /// The coordination service goes down.
    Outage,
    /// kill -9.
    Crash {
        /// The node.
        node: usize,
    },
    /// SIGTERM.
    Shutdown {
        /// The node.
        node: usize,
    },
    /// The request is slow: time may pass before it is answered.
    Delay {
        /// The node.
        node: usize,
        /// The request.
        attempt: AttemptId,
    },
    /// The request takes effect, its reply is lost.
    LoseReply {
        /// The node.
        node: usize,
        /// The request.
        attempt: AttemptId,
    },
    /// The write the node gave up on takes effect.
    LateWrite {
        /// The node.
        node: usize,
    },
    /// The lock vanishes.
    LockLost,
    /// The node's entry vanishes.
    EntryLost {
        /// The node.
        node: usize,
    },
    /// The node freezes.
    Pause {
        /// The node.
        node: usize,
    },
}

impl Fault {
    fn kind(&self) -> FaultKind {
        match self {
            Fault::Outage => FaultKind::Outage,
            Fault::Crash { .. } => FaultKind::Crash,
            Fault::Shutdown { .. } => FaultKind::Shutdown,
            Fault::Delay { .. } => FaultKind::Slow,
            Fault::LoseReply { .. } => FaultKind::LostReply,
            Fault::LateWrite { .. } => FaultKind::LateWrite,
            Fault::LockLost => FaultKind::LockLost,
            Fault::EntryLost { .. } => FaultKind::EntryLost,
            Fault::Pause { .. } => FaultKind::Pause,
        }
    }
}

/// The bootstrap protocol of `nodes` real machines as a [`stateright::Model`].
#[derive(Clone, Debug)]
pub struct BootstrapModel {
    config: CheckConfig,
    settings: Settings,
    start: Instant,
}

/// The nodes' addresses (the model checks at most four).
const ADDRESSES: [&str; 4] = ["n1:2552", "n2:2552", "n3:2552", "n4:2552"];

fn address(index: usize) -> &'static str {
    ADDRESSES[index]
}

/// The first cluster id node `index` chooses in `incarnation`: the node's index in the
/// top 16 bits, so that a renaming of nodes can rename the ids they chose.
fn first_cluster_id(index: usize, incarnation: u64) -> u64 {
    ((index as u64 + 1) << CLUSTER_ID_NODE_SHIFT) | ((incarnation & 0xff_ffff) << 24) | 1
}

const CLUSTER_ID_NODE_SHIFT: u32 = 48;

/// The index of the node `node` names in the model (`nN:2552`).
fn index_of(node: &NodeId, nodes: usize) -> Option<usize> {
    (0..nodes).find(|i| node.address == address(*i))
}

/// The symmetry of the model: nodes are interchangeable (the same settings, the same
/// randomness, faults that may hit any of them), so a state and the same state with its
/// nodes renamed have the same futures, renamed. This picks one state of each such class:
/// the nodes sorted by what they are doing (not by name), with every node name and every
/// cluster id a node chose renamed to match. (Nodes alike in everything sorted by keep
/// their order: then two states of one class may get two representatives, which costs
/// states, not soundness.)
pub fn representative(w: &World) -> World {
    let mut order: Vec<usize> = (0..w.nodes.len()).collect();
    order.sort_by_cached_key(|&i| sort_key(w, i));
    if order.iter().enumerate().all(|(p, &i)| p == i) {
        return w.clone();
    }
    permuted(w, &order)
}

/// `w` with its nodes renamed: node `order[p]` becomes node `p`, with every name and every
/// cluster id a node chose.
///
/// # Panics
///
/// If `order` is not a permutation of the node indices (a caller's mistake: the checker
/// passes the sorted indices).
pub fn permuted(w: &World, order: &[usize]) -> World {
    let n = w.nodes.len();
    assert_eq!(order.len(), n, "a permutation of the nodes");
    // `to[i]`: the new index of node `i`.
    let mut to = vec![0; n];
    for (p, &i) in order.iter().enumerate() {
        to[i] = p;
    }
    let node = |id: &NodeId| match index_of(id, n) {
        Some(i) => NodeId::new(address(to[i]), id.incarnation),
        None => id.clone(),
    };
    let cluster = |c: ClusterId| {
        let i = (c.0 >> CLUSTER_ID_NODE_SHIFT) as usize;
        if (1..=n).contains(&i) {
            let low = c.0 & ((1 << CLUSTER_ID_NODE_SHIFT) - 1);
            ClusterId(((to[i - 1] as u64 + 1) << CLUSTER_ID_NODE_SHIFT) | low)
        } else {
            c
        }
    };
    let r = Renaming {
        node: &node,
        cluster: &cluster,
    };
    let nodes = order
        .iter()
        .map(|&i| {
            let mut node = w.nodes[i].clone();
            if let Some(m) = &mut node.machine {
                m.rename(&r);
            }
            for a in &mut node.requests {
                r.action(a);
            }
            if let Some((_, a)) = &mut node.stale {
                r.action(a);
            }
            node
        })
        .collect();
    let mut registry = w.registry.clone();
    registry.rename(&r);
    World {
        nodes,
        registry,
        epochs: w.epochs.iter().map(|&(c, g)| (cluster(c), g)).collect(),
        ..*w
    }
}

/// What node `i` is doing, without its name: the order of [`representative`].
fn sort_key(w: &World, i: usize) -> impl Ord {
    let node = &w.nodes[i];
    let m = node.machine.as_ref();
    (
        node.incarnation,
        m.map(|m| m.state() as u8),
        node.group,
        node.frozen_until,
        (
            node.slow.is_some(),
            node.stale.is_some(),
            node.locked,
            node.read_empty_under_lock,
            node.registered_once,
            node.shutting_down,
            node.thawed,
        ),
        node.requests.len(),
        m.and_then(Machine::poll_timeout),
    )
}

fn unavailable() -> CoordinationError {
    CoordinationError::unavailable("coordination outage")
}

fn is_write(action: &Action) -> bool {
    matches!(
        action,
        Action::Lock { .. }
            | Action::AddSelf { .. }
            | Action::Refresh { .. }
            | Action::RemoveSelf { .. }
    )
}

impl BootstrapModel {
    /// The model of `config`.
    pub fn new(config: CheckConfig) -> Result<Self, ConfigError> {
        if !(1..=4).contains(&config.nodes) {
            return Err(ConfigError::Nodes(config.nodes));
        }
        if config.late > config.nodes {
            return Err(ConfigError::Late {
                late: config.late,
                nodes: config.nodes,
            });
        }
        if config.horizon < config.fault_window || config.horizon > Duration::from_secs(3600) {
            return Err(ConfigError::Horizon);
        }
        let mut settings = config.settings.clone();
        if config.mutation == Some(Mutation::NoReseedGrace) {
            settings.reseed_grace = Some(Duration::ZERO);
        }
        settings.validate()?;
        Ok(Self {
            config,
            settings,
            start: Instant::now(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &CheckConfig {
        &self.config
    }

    fn instant(&self, at: Duration) -> Instant {
        self.start + at
    }

    fn since_start(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.start)
    }

    fn machine(&self, index: usize, incarnation: u64, now: Duration) -> Machine {
        // The same randomness for every node (it only draws jitter, 0 here, and subsets of
        // more than `max-nr-of-seed-nodes` seeds, never here), so that nodes are
        // interchangeable; cluster ids name their node instead (see `representative`).
        let mut m = Machine::new(
            self.settings.clone(),
            NodeId::new(address(index), incarnation),
            incarnation,
            self.instant(now),
        )
        .expect("settings validated in BootstrapModel::new");
        m.set_cluster_ids(first_cluster_id(index, incarnation));
        m.set_mutations(Mutations {
            skip_reread_after_lock: self.config.mutation == Some(Mutation::SkipRereadAfterLock),
            form_before_register: self.config.mutation == Some(Mutation::FormBeforeRegister),
        });
        m
    }

    fn fault_allowed(&self, w: &World, kind: FaultKind) -> bool {
        w.faults < self.config.max_faults
            && w.now <= self.config.fault_window
            && self.config.faults.contains(&kind)
    }

    /// Whether node `i`'s join of `seeds` can take place now (a seed is a member).
    fn join_target(w: &World, i: usize, seeds: &[NodeId]) -> Option<Option<u32>> {
        let me = &w.nodes[i];
        if seeds.len() == 1 && me.is(i, &seeds[0]) {
            return Some(None);
        }
        seeds
            .iter()
            .filter(|s| !me.is(i, s))
            .find_map(|s| {
                w.nodes
                    .iter()
                    .enumerate()
                    // A frozen member answers no join.
                    .find_map(|(j, n)| {
                        (n.alive() && !n.frozen() && n.is(j, s))
                            .then_some(n.group)
                            .flatten()
                    })
            })
            .map(Some)
    }

    fn executable(w: &World, i: usize, action: &Action) -> bool {
        match action {
            Action::WaitForChange { after, .. } => {
                w.outage || after.is_none_or(|r| w.registry.revision() > r)
            }
            Action::JoinCluster { seeds, .. } => Self::join_target(w, i, seeds).is_some(),
            _ => true,
        }
    }

    /// Applies `action` of incarnation `incarnation` of node `i` at the registry or the
    /// cluster runtime; returns its reply. (A late write may come from an earlier, dead
    /// incarnation: it changes the registry only.)
    fn apply(&self, w: &mut World, i: usize, incarnation: u64, action: &Action) -> Reply {
        let now = self.instant(w.now);
        let me = NodeId::new(address(i), incarnation);
        let current = w.nodes[i].incarnation == incarnation;
        let coordination = !matches!(
            action,
            Action::JoinCluster { .. } | Action::LeaveCluster { .. }
        );
        if coordination && w.outage {
            return match action {
                Action::GetNodes { .. } => Reply::Nodes(Err(unavailable())),
                Action::Lock { .. } => Reply::Lock(Err(unavailable())),
                Action::AddSelf { .. } => Reply::AddSelf(Err(unavailable())),
                Action::Refresh { .. } => Reply::Refresh(Err(unavailable())),
                Action::RemoveSelf { .. } => Reply::RemoveSelf(Err(unavailable())),
                _ => Reply::Changed(Err(unavailable())),
            };
        }
        match action {
            Action::GetNodes { .. } => {
                let registry = w.registry.get_nodes(now);
                let node = &mut w.nodes[i];
                node.read_empty_under_lock =
                    node.locked && registry.nodes.iter().all(|n| n.address == me.address);
                Reply::Nodes(Ok(registry))
            }
            Action::Lock { ttl, .. } => {
                let outcome = w.registry.lock(now, &me, *ttl);
                if current && matches!(outcome, LockOutcome::Acquired(_)) {
                    w.nodes[i].locked = true;
                }
                Reply::Lock(Ok(outcome))
            }
            Action::AddSelf { ttl, mode, .. } => {
                let holds = match mode {
                    AddMode::Seed { lock, .. } => w
                        .registry
                        .lock_holder(now)
                        .is_some_and(|(h, t)| *h == me && t == *lock),
                    AddMode::Join { .. } => true,
                };
                let outcome = w.registry.add_self(now, &me, *ttl, mode);
                if outcome == AddOutcome::Added {
                    if !holds {
                        w.flags.seed_without_lock = true;
                    }
                    let group = if current { w.nodes[i].group } else { None };
                    self.registered(w, group, mode);
                    if current {
                        w.nodes[i].registered_once = true;
                    }
                }
                Reply::AddSelf(Ok(outcome))
            }
            Action::Refresh { ttl, .. } => Reply::Refresh(Ok(w.registry.refresh(now, &me, *ttl))),
            Action::RemoveSelf { .. } => {
                w.registry.remove_self(now, &me);
                Reply::RemoveSelf(Ok(()))
            }
            Action::WaitForChange { .. } => Reply::Changed(Ok(WaitOutcome::Changed)),
            Action::JoinCluster { seeds, .. } => {
                match Self::join_target(w, i, seeds) {
                    Some(None) if w.nodes[i].group.is_none() => {
                        if !w.nodes[i].read_empty_under_lock {
                            w.flags.seed_without_reread = true;
                        }
                        w.groups_formed += 1;
                        let group = w.groups_formed;
                        w.nodes[i].group = Some(group);
                        // The new cluster is the one the seed's epoch names (whether its
                        // registration is written already or follows).
                        let cluster = w.nodes[i].machine.as_ref().and_then(Machine::cluster);
                        if let Some(cluster) = cluster {
                            self.bind(w, cluster, group);
                        }
                    }
                    Some(Some(g)) if w.nodes[i].group.is_none() => w.nodes[i].group = Some(g),
                    _ => {}
                }
                Reply::Joined(Ok(()))
            }
            Action::LeaveCluster { .. } => {
                let node = &mut w.nodes[i];
                if node.group.take().is_some() && node.registered_once && !node.shutting_down {
                    w.flags.member_lost = true;
                }
                Reply::Left(Ok(()))
            }
        }
    }

    /// Checks a written registration of a member of `group` against the epoch it wrote.
    /// (A registration of a node that is no member, e.g. a late write of a dead
    /// incarnation, is harmless: nobody can join through it, and it expires.)
    fn registered(&self, w: &mut World, group: Option<u32>, mode: &AddMode) {
        let Some(g) = group else {
            return;
        };
        match mode {
            AddMode::Seed { cluster, .. } => self.bind(w, *cluster, g),
            AddMode::Join { cluster: Some(c) } => {
                if w.group_of_epoch(*c) != Some(g) {
                    w.flags.foreign_registration = true;
                }
            }
            AddMode::Join { cluster: None } => {}
        }
    }

    /// Binds the epoch's cluster id to the runtime group its seed formed; a second group
    /// under the same id is a foreign registration.
    fn bind(&self, w: &mut World, cluster: ClusterId, group: u32) {
        match w.group_of_epoch(cluster) {
            None => w.epochs.push((cluster, group)),
            Some(bound) if bound != group => w.flags.foreign_registration = true,
            Some(_) => {}
        }
    }

    /// Drains node `i`'s machine: its actions become awaited requests, superseded requests
    /// are dropped (writes among them may still land later), failures are recorded.
    fn settle(&self, w: &mut World, i: usize) {
        let late_writes = self.fault_allowed(w, FaultKind::LateWrite);
        let node = &mut w.nodes[i];
        let Some(m) = node.machine.as_mut() else {
            return;
        };
        while let Some(action) = m.poll_action() {
            node.requests.push(action);
        }
        while let Some(event) = m.poll_event() {
            if let Event::ClusterLost { .. } = event {
                w.flags.member_lost = true;
            }
        }
        let m = node.machine.as_ref().expect("checked above");
        let mut kept = Vec::with_capacity(node.requests.len());
        for action in node.requests.drain(..) {
            if m.is_awaiting(action.attempt()) {
                kept.push(action);
            } else if late_writes && is_write(&action) {
                node.stale = Some((node.incarnation, action));
            }
        }
        node.requests = kept;
        if node
            .slow
            .is_some_and(|a| !node.requests.iter().any(|r| r.attempt() == a))
        {
            node.slow = None;
        }
        if m.state() == State::Failed {
            w.flags.machine_failed = true;
            if node.group.is_some() {
                w.flags.member_lost = true;
            }
        }
    }

    fn settle_all(&self, w: &mut World) {
        for i in 0..w.nodes.len() {
            self.settle(w, i);
        }
        if !self.fault_allowed(w, FaultKind::LateWrite) {
            for n in &mut w.nodes {
                n.stale = None;
            }
        }
    }

    fn charge(&self, w: &mut World, kind: FaultKind) {
        w.faults += 1;
        w.other_faults |= !matches!(kind, FaultKind::Outage | FaultKind::Shutdown);
    }

    /// The next instant at which something is due after `now`: a timer or an expiry.
    fn next_event(&self, w: &World) -> Option<Duration> {
        let now = self.instant(w.now);
        w.nodes
            .iter()
            .filter_map(|n| n.machine.as_ref().and_then(Machine::poll_timeout))
            .chain(w.registry.next_expiry())
            .chain(
                w.nodes
                    .iter()
                    .filter_map(|n| n.frozen_until.map(|d| self.instant(d))),
            )
            .filter(|t| *t > now)
            .min()
            .map(|t| self.since_start(t))
    }

    fn timer_due(&self, w: &World, i: usize) -> bool {
        let now = self.instant(w.now);
        w.nodes[i]
            .machine
            .as_ref()
            .and_then(Machine::poll_timeout)
            .is_some_and(|t| t <= now)
    }

    /// A node whose due timer may fire before every other step (with
    /// [`CheckConfig::reduce_local_timers`], the model offers only that step; a partial-order reduction:
    /// the other orders reach no state this one does not, up to the order of steps that
    /// commute). It must be a step nothing else can interfere with, and that nothing can
    /// observe:
    /// - no fault can happen any more (a fault of this node would race with its timer);
    /// - the node is not frozen and awaits no request (so no other step of its own exists,
    ///   and no step of another node can enable one: the timer is its only step until it
    ///   fires, and time cannot pass before it does);
    /// - firing it changes nothing another node's step reads (whether the node is alive, its
    ///   cluster) and nothing a property reads (that too, whether it is registered, the
    ///   flags; it writes nothing to the registry).
    ///
    /// Then every other step commutes with it, and every state an order with the timer
    /// later passes has a twin after the timer that no property tells apart, so firing it
    /// first loses no verdict (the state graph has no cycles: time and attempt numbers only
    /// grow) (`tests/reduction.rs` checks the commuting along random paths, and the
    /// verdicts with and without the reduction).
    pub fn local_timer(&self, w: &World) -> Option<usize> {
        if w.now <= self.config.fault_window && w.faults < self.config.max_faults {
            return None;
        }
        (0..w.nodes.len()).find(|&i| {
            let node = &w.nodes[i];
            if node.frozen() || !node.requests.is_empty() || node.machine.is_none() {
                return false;
            }
            if !self.timer_due(w, i) || self.timeout_fault(w, i).is_some() {
                return false;
            }
            let Some(next) = self.next_state(w, Step::Timer { node: i }) else {
                return false;
            };
            let after = &next.nodes[i];
            let registered = |n: &Node| n.machine.as_ref().map(|m| m.state().is_registered());
            // What the properties and the other nodes' steps read of this node.
            after.alive() == node.alive()
                && after.group == node.group
                && registered(after) == registered(node)
                && next.flags == w.flags
                && next.only_outages() == w.only_outages()
        })
    }

    /// The fault a due timer of node `i` stands for, if any: a request that could have
    /// been answered but timed out.
    fn timeout_fault(&self, w: &World, i: usize) -> Option<FaultKind> {
        let node = &w.nodes[i];
        let m = node.machine.as_ref()?;
        if node.thawed {
            return None;
        }
        let awaited = node
            .requests
            .iter()
            .find(|a| !matches!(a, Action::WaitForChange { .. }) && m.is_awaiting(a.attempt()))?;
        if w.outage
            && !matches!(
                awaited,
                Action::JoinCluster { .. } | Action::LeaveCluster { .. }
            )
        {
            return None;
        }
        Self::executable(w, i, awaited).then_some(FaultKind::Timeout)
    }
}

impl Model for BootstrapModel {
    type State = World;
    type Action = Step;

    fn init_states(&self) -> Vec<World> {
        let first_late = self.config.nodes - self.config.late;
        let nodes = (0..self.config.nodes)
            .map(|i| Node {
                // A late node starts with its first `Restart` (incarnation 1).
                machine: (i < first_late).then(|| self.machine(i, 1, Duration::ZERO)),
                incarnation: if i < first_late { 1 } else { 0 },
                group: None,
                requests: Vec::new(),
                slow: None,
                stale: None,
                locked: false,
                read_empty_under_lock: false,
                registered_once: false,
                shutting_down: false,
                frozen_until: None,
                thawed: false,
            })
            .collect();
        let mut registry = ScopeRegistry::default();
        registry
            .set_ignore_write_conditions(self.config.mutation == Some(Mutation::UnfencedSeedWrite));
        let mut w = World {
            now: Duration::ZERO,
            nodes,
            registry,
            outage: false,
            faults: 0,
            other_faults: false,
            groups_formed: 0,
            epochs: Vec::new(),
            flags: Flags::default(),
        };
        self.settle_all(&mut w);
        vec![w]
    }

    fn actions(&self, w: &World, out: &mut Vec<Step>) {
        if self.config.reduce_local_timers
            && let Some(i) = self.local_timer(w)
        {
            out.push(Step::Timer { node: i });
            return;
        }
        // Requests are answered before time moves on, except a slow one.
        let mut any_due = false;
        for (i, node) in w.nodes.iter().enumerate() {
            if node.frozen() {
                out.push(Step::Resume { node: i });
                // It must resume before time passes its freeze's end.
                if node.frozen_until.is_some_and(|until| until <= w.now) {
                    any_due = true;
                }
                continue;
            }
            for action in &node.requests {
                if Self::executable(w, i, action) {
                    out.push(Step::Execute {
                        node: i,
                        attempt: action.attempt(),
                    });
                    if node.slow != Some(action.attempt()) {
                        any_due = true;
                    }
                }
            }
            if self.timer_due(w, i) {
                any_due = true;
                match self.timeout_fault(w, i) {
                    None => out.push(Step::Timer { node: i }),
                    Some(kind) if self.fault_allowed(w, kind) => out.push(Step::Timer { node: i }),
                    Some(_) => {}
                }
            }
        }
        if w.outage {
            out.push(Step::OutageEnds);
        }
        // Time moves on once nothing is due; an outage ends with the fault window.
        if !any_due
            && let Some(next) = self.next_event(w)
            && next <= self.config.horizon
            && !(w.outage && next > self.config.fault_window)
        {
            out.push(Step::Tick);
        }
        for (i, node) in w.nodes.iter().enumerate() {
            let stopped = node
                .machine
                .as_ref()
                .is_none_or(|m| m.state().is_terminal());
            if stopped && w.now <= self.config.fault_window {
                out.push(Step::Restart { node: i });
            }
        }
        if self.fault_allowed(w, FaultKind::Outage) && !w.outage {
            out.push(Step::Fault(Fault::Outage));
        }
        if self.fault_allowed(w, FaultKind::LockLost)
            && w.registry.lock_holder(self.instant(w.now)).is_some()
        {
            out.push(Step::Fault(Fault::LockLost));
        }
        for (i, node) in w.nodes.iter().enumerate() {
            if node.alive() {
                if self.fault_allowed(w, FaultKind::Crash) {
                    out.push(Step::Fault(Fault::Crash { node: i }));
                }
                if node.frozen() {
                    continue;
                }
                if self.fault_allowed(w, FaultKind::Pause) && !self.config.max_pause.is_zero() {
                    out.push(Step::Fault(Fault::Pause { node: i }));
                }
                let leaving = node
                    .machine
                    .as_ref()
                    .is_some_and(|m| matches!(m.state(), State::Leaving | State::RemovingSelf));
                if self.fault_allowed(w, FaultKind::Shutdown) && !leaving {
                    out.push(Step::Fault(Fault::Shutdown { node: i }));
                }
            }
            if self.fault_allowed(w, FaultKind::Slow) && node.slow.is_none() {
                for action in &node.requests {
                    if !matches!(action, Action::WaitForChange { .. })
                        && Self::executable(w, i, action)
                    {
                        out.push(Step::Fault(Fault::Delay {
                            node: i,
                            attempt: action.attempt(),
                        }));
                    }
                }
            }
            if self.fault_allowed(w, FaultKind::LostReply) {
                for action in &node.requests {
                    if !matches!(action, Action::WaitForChange { .. })
                        && Self::executable(w, i, action)
                    {
                        out.push(Step::Fault(Fault::LoseReply {
                            node: i,
                            attempt: action.attempt(),
                        }));
                    }
                }
            }
            if node.stale.is_some() && self.fault_allowed(w, FaultKind::LateWrite) && !w.outage {
                out.push(Step::Fault(Fault::LateWrite { node: i }));
            }
            if self.fault_allowed(w, FaultKind::EntryLost)
                && node.registered(i, &w.registry, self.instant(w.now))
            {
                out.push(Step::Fault(Fault::EntryLost { node: i }));
            }
        }
    }

    fn next_state(&self, last: &World, step: Step) -> Option<World> {
        let mut w = last.clone();
        let now = self.instant(w.now);
        match step {
            Step::Execute { node: i, attempt }
            | Step::Fault(Fault::LoseReply { node: i, attempt }) => {
                let pos = w.nodes[i]
                    .requests
                    .iter()
                    .position(|a| a.attempt() == attempt)?;
                let action = w.nodes[i].requests.remove(pos);
                w.nodes[i].thawed = false;
                let incarnation = w.nodes[i].incarnation;
                let reply = self.apply(&mut w, i, incarnation, &action);
                if matches!(step, Step::Execute { .. }) {
                    w.nodes[i]
                        .machine
                        .as_mut()?
                        .handle_reply(now, attempt, reply);
                } else {
                    self.charge(&mut w, FaultKind::LostReply);
                }
            }
            Step::Timer { node: i } => {
                if let Some(kind) = self.timeout_fault(&w, i) {
                    self.charge(&mut w, kind);
                }
                w.nodes[i].thawed = false;
                w.nodes[i].machine.as_mut()?.handle_timeout(now);
            }
            Step::Tick => {
                w.now = self.next_event(&w)?;
                let now = self.instant(w.now);
                w.registry.expire(now);
            }
            Step::Restart { node: i } => {
                let node = &mut w.nodes[i];
                node.incarnation += 1;
                node.machine = Some(self.machine(i, node.incarnation, w.now));
                node.group = None;
                node.requests.clear();
                node.slow = None;
                node.locked = false;
                node.read_empty_under_lock = false;
                node.registered_once = false;
                node.shutting_down = false;
                node.frozen_until = None;
                node.thawed = false;
            }
            Step::OutageEnds => w.outage = false,
            Step::Resume { node: i } => {
                w.nodes[i].frozen_until = None;
                w.nodes[i].thawed = true;
            }
            Step::Fault(fault) => {
                self.charge(&mut w, fault.kind());
                match fault {
                    Fault::Outage => w.outage = true,
                    Fault::Crash { node: i } => {
                        let late_writes = self.fault_allowed(&w, FaultKind::LateWrite);
                        let node = &mut w.nodes[i];
                        node.machine = None;
                        node.group = None;
                        node.slow = None;
                        node.frozen_until = None;
                        node.thawed = false;
                        let write = node.requests.drain(..).find(is_write);
                        if late_writes && let Some(write) = write {
                            node.stale = Some((node.incarnation, write));
                        }
                    }
                    Fault::Shutdown { node: i } => {
                        w.nodes[i].shutting_down = true;
                        w.nodes[i].machine.as_mut()?.shutdown(now);
                    }
                    Fault::Delay { node: i, attempt } => w.nodes[i].slow = Some(attempt),
                    Fault::LateWrite { node: i } => {
                        let (incarnation, action) = w.nodes[i].stale.take()?;
                        let _ = self.apply(&mut w, i, incarnation, &action);
                    }
                    Fault::LockLost => w.registry.expire_lock(),
                    Fault::EntryLost { node: i } => w.registry.expire_entry(address(i)),
                    Fault::Pause { node: i } => {
                        // Past the horizon nothing is explored: no later resume is needed.
                        let until = w.now.saturating_add(self.config.max_pause);
                        w.nodes[i].frozen_until = Some(until.min(self.config.horizon));
                    }
                    Fault::LoseReply { .. } => unreachable!("handled above"),
                }
            }
        }
        self.settle_all(&mut w);
        Some(w)
    }

    fn within_boundary(&self, w: &World) -> bool {
        w.now <= self.config.horizon
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(
                "at most one cluster among live members",
                |_: &Self, w: &World| {
                    let mut groups = w
                        .nodes
                        .iter()
                        .filter_map(|n| n.alive().then_some(n.group).flatten());
                    let first = groups.next();
                    groups.all(|g| Some(g) == first)
                },
            ),
            Property::always(
                "at most one cluster among registered live members",
                |m: &Self, w: &World| {
                    let now = m.instant(w.now);
                    let mut groups = w.nodes.iter().enumerate().filter_map(|(i, n)| {
                        (n.alive() && n.registered(i, &w.registry, now))
                            .then_some(n.group)
                            .flatten()
                    });
                    let first = groups.next();
                    groups.all(|g| Some(g) == first)
                },
            ),
            Property::always(
                "a member registers only under the epoch naming its cluster",
                |_: &Self, w: &World| !w.flags.foreign_registration,
            ),
            Property::always(
                "a seed's first registration only while it holds the lock",
                |_: &Self, w: &World| !w.flags.seed_without_lock,
            ),
            Property::always(
                "a node seeds only after reading the registry empty under the lock",
                |_: &Self, w: &World| !w.flags.seed_without_reread,
            ),
            Property::always(
                "no member leaves its cluster for an outage alone",
                |_: &Self, w: &World| !(w.only_outages() && w.flags.member_lost),
            ),
            Property::always("no machine fails", |_: &Self, w: &World| {
                !w.flags.machine_failed
            }),
            Property::sometimes(
                "one cluster with every node registered",
                |m: &Self, w: &World| all_registered(m, w),
            ),
            Property::sometimes(
                "a re-seed after the whole cluster died",
                |m: &Self, w: &World| w.epochs.len() >= 2 && all_registered(m, w),
            ),
            Property::eventually(
                "every node ends registered or terminal",
                |m: &Self, w: &World| {
                    let now = m.instant(w.now);
                    w.nodes.iter().enumerate().all(|(i, n)| match &n.machine {
                        None => true,
                        Some(machine) if machine.state().is_terminal() => true,
                        Some(machine) => {
                            machine.state().is_registered() && n.registered(i, &w.registry, now)
                        }
                    })
                },
            ),
        ]
    }

    fn format_action(&self, step: &Step) -> String {
        match step {
            Step::Execute { node, attempt } => {
                format!("n{} request {} answered", node + 1, attempt.0)
            }
            Step::Timer { node } => format!("n{} timer", node + 1),
            Step::Tick => "time passes".into(),
            Step::Restart { node } => format!("n{} restarts", node + 1),
            Step::OutageEnds => "coordination service back".into(),
            Step::Resume { node } => format!("n{} resumes", node + 1),
            Step::Fault(f) => format!("FAULT {f:?}"),
        }
    }
}

/// Whether every node runs, is registered (machine and registry agree) and all are in one
/// cluster.
fn all_registered(m: &BootstrapModel, w: &World) -> bool {
    let now = m.instant(w.now);
    let first = w.nodes.first().and_then(|n| n.group);
    first.is_some()
        && w.nodes.iter().enumerate().all(|(i, n)| {
            n.machine
                .as_ref()
                .is_some_and(|m| m.state().is_registered())
                && n.registered(i, &w.registry, now)
                && n.group == first
        })
}

/// `cN` for the epoch cluster id bound to runtime group N, else the id.
fn cluster_name(w: &World, cluster: ClusterId) -> String {
    w.group_of_epoch(cluster)
        .map_or_else(|| cluster.to_string(), |g| format!("c{g}"))
}

fn node_name(node: &NodeId) -> String {
    let name = node.address.split(':').next().unwrap_or("?");
    format!("{name}#{}", node.incarnation)
}

/// A short description of what an action asks for.
pub fn describe_action(w: &World, action: &Action) -> String {
    match action {
        Action::GetNodes { .. } => "get-nodes".into(),
        Action::Lock { .. } => "lock".into(),
        Action::AddSelf { mode, .. } => match mode {
            AddMode::Seed { cluster, .. } => {
                format!("add-self (seed {}, fenced)", cluster_name(w, *cluster))
            }
            AddMode::Join { cluster: Some(c) } => {
                format!("add-self (join {})", cluster_name(w, *c))
            }
            AddMode::Join { cluster: None } => "add-self (join)".into(),
        },
        Action::Refresh { .. } => "refresh".into(),
        Action::RemoveSelf { .. } => "remove-self".into(),
        Action::WaitForChange { .. } => "watch".into(),
        Action::JoinCluster { seeds, .. } => {
            let names: Vec<_> = seeds.iter().map(node_name).collect();
            format!("join [{}]", names.join(", "))
        }
        Action::LeaveCluster { .. } => "leave".into(),
    }
}

/// A short description of a reply.
fn describe_reply(w: &World, reply: &Reply) -> String {
    fn err(e: &dyn std::fmt::Display) -> String {
        format!("error ({e})")
    }
    match reply {
        Reply::Nodes(Ok(r)) => {
            let nodes: Vec<_> = r.nodes.iter().map(node_name).collect();
            let epoch = r
                .epoch
                .map(|e| format!(", epoch {}", cluster_name(w, e.cluster)))
                .unwrap_or_default();
            format!("[{}]{epoch}", nodes.join(", "))
        }
        Reply::Lock(Ok(LockOutcome::Acquired(_))) => "acquired".into(),
        Reply::Lock(Ok(LockOutcome::HeldByOther)) => "held by another node".into(),
        Reply::AddSelf(Ok(AddOutcome::Added)) => "written".into(),
        Reply::AddSelf(Ok(AddOutcome::Refused)) => "REFUSED".into(),
        Reply::Refresh(Ok(o)) => format!("{o:?}").to_lowercase(),
        Reply::RemoveSelf(Ok(())) => "removed".into(),
        Reply::Changed(Ok(_)) => "changed".into(),
        Reply::Joined(Ok(())) => "joined".into(),
        Reply::Left(_) => "left".into(),
        Reply::Joined(Err(e)) => err(e),
        Reply::Nodes(Err(e))
        | Reply::Lock(Err(e))
        | Reply::AddSelf(Err(e))
        | Reply::Refresh(Err(e))
        | Reply::RemoveSelf(Err(e))
        | Reply::Changed(Err(e)) => err(e),
    }
}

impl BootstrapModel {
    /// One line for one step of a path: the time, which node did what and what came back,
    /// every node's state change, and the registry after it.
    pub fn describe_step(&self, before: &World, step: &Step, after: &World) -> String {
        let mut line = format!("t={:>6.3}s  ", after.now.as_secs_f64());
        // Replays the request on a copy of the state before, to show its reply.
        let request = |i: usize, attempt: AttemptId| {
            let action = before.nodes[i]
                .requests
                .iter()
                .find(|a| a.attempt() == attempt)?;
            let mut copy = before.clone();
            let reply = self.apply(&mut copy, i, before.nodes[i].incarnation, action);
            Some(format!(
                "{} -> {}",
                describe_action(after, action),
                describe_reply(after, &reply)
            ))
        };
        match step {
            Step::Execute { node, attempt } => {
                let _ = write!(
                    line,
                    "n{}: {}",
                    node + 1,
                    request(*node, *attempt).unwrap_or_default()
                );
            }
            Step::Fault(Fault::LoseReply { node, attempt }) => {
                let _ = write!(
                    line,
                    "FAULT n{}: {}, but the reply is LOST",
                    node + 1,
                    request(*node, *attempt).unwrap_or_default()
                );
            }
            Step::Fault(Fault::Delay { node, attempt }) => {
                let what = before.nodes[*node]
                    .requests
                    .iter()
                    .find(|a| a.attempt() == *attempt)
                    .map(|a| describe_action(before, a))
                    .unwrap_or_default();
                let _ = write!(line, "FAULT n{}: {what} is SLOW", node + 1);
            }
            Step::Fault(Fault::LateWrite { node }) => {
                let what = before.nodes[*node]
                    .stale
                    .as_ref()
                    .map(|(_, a)| describe_action(before, a))
                    .unwrap_or_default();
                let _ = write!(
                    line,
                    "FAULT n{}: abandoned {what} takes effect LATE",
                    node + 1
                );
            }
            Step::Fault(Fault::Crash { node }) => {
                let _ = write!(line, "FAULT n{}: crashes (kill -9)", node + 1);
            }
            Step::Fault(Fault::Shutdown { node }) => {
                let _ = write!(line, "n{}: shuts down (SIGTERM)", node + 1);
            }
            Step::Fault(Fault::EntryLost { node }) => {
                let _ = write!(line, "FAULT n{}'s entry vanishes", node + 1);
            }
            Step::Fault(Fault::LockLost) => line.push_str("FAULT the lock vanishes"),
            Step::Fault(Fault::Pause { node }) => {
                let _ = write!(line, "FAULT n{}: freezes (SIGSTOP)", node + 1);
            }
            Step::Resume { node } => {
                let _ = write!(line, "n{}: resumes", node + 1);
            }
            Step::Fault(Fault::Outage) => line.push_str("FAULT coordination outage begins"),
            Step::Timer { node } => {
                let fault = self.timeout_fault(before, *node).is_some();
                let _ = write!(
                    line,
                    "{}n{}: timer fires",
                    if fault {
                        "FAULT (request timed out) "
                    } else {
                        ""
                    },
                    node + 1
                );
            }
            Step::Tick => line.push_str("time passes"),
            Step::Restart { node } if before.nodes[*node].incarnation == 0 => {
                let _ = write!(line, "n{}: starts", node + 1);
            }
            Step::Restart { node } => {
                let _ = write!(line, "n{}: restarts", node + 1);
            }
            Step::OutageEnds => line.push_str("coordination outage ends"),
        }
        for (i, (b, a)) in before.nodes.iter().zip(&after.nodes).enumerate() {
            let state = |n: &Node| {
                n.machine
                    .as_ref()
                    .map_or("down".to_owned(), |m| format!("{:?}", m.state()))
            };
            let (sb, sa) = (state(b), state(a));
            if sb != sa || b.incarnation != a.incarnation {
                let _ = write!(line, " | n{}: {sb} -> {sa}", i + 1);
            }
            if b.group != a.group {
                let g = |g: Option<u32>| g.map_or("none".to_owned(), |g| format!("c{g}"));
                let _ = write!(
                    line,
                    " | n{} cluster {} -> {}",
                    i + 1,
                    g(b.group),
                    g(a.group)
                );
            }
        }
        let now = self.instant(after.now);
        let registered: Vec<String> = after
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, n)| n.alive() && after.registry.is_registered(now, &n.id(*i)))
            .map(|(i, n)| {
                let group = n.group.map(|g| format!("@c{g}")).unwrap_or_default();
                format!("n{}{group}", i + 1)
            })
            .collect();
        let epoch = after
            .registry
            .epoch()
            .map(|e| format!(" epoch {}", cluster_name(after, e.cluster)))
            .unwrap_or_default();
        let _ = write!(
            line,
            "  [registered: {{{}}}{epoch}{}]",
            registered.join(", "),
            if after.outage { ", SERVICE DOWN" } else { "" }
        );
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_starts_with_every_node_reading_the_registry() {
        let model = BootstrapModel::new(CheckConfig::new(2, 0)).unwrap();
        let init = model.init_states();
        assert_eq!(init.len(), 1);
        let mut steps = Vec::new();
        model.actions(&init[0], &mut steps);
        assert!(steps.contains(&Step::Execute {
            node: 0,
            attempt: AttemptId(1)
        }));
        assert!(steps.contains(&Step::Execute {
            node: 1,
            attempt: AttemptId(1)
        }));
    }

    #[test]
    fn unknown_mutation_names_the_known_ones() {
        let err = "nope".parse::<Mutation>().unwrap_err();
        assert!(err.contains("skip-reread-after-lock"), "{err}");
        assert_eq!(
            "unfenced-seed-write".parse(),
            Ok(Mutation::UnfencedSeedWrite)
        );
    }

    #[test]
    fn configurations_outside_the_model_are_refused() {
        assert_eq!(
            BootstrapModel::new(CheckConfig::new(0, 0)).unwrap_err(),
            ConfigError::Nodes(0)
        );
        assert_eq!(
            BootstrapModel::new(CheckConfig::new(5, 0)).unwrap_err(),
            ConfigError::Nodes(5)
        );
        let c = CheckConfig::new(2, 0).with_times(Duration::from_secs(10), Duration::from_secs(5));
        assert_eq!(BootstrapModel::new(c).unwrap_err(), ConfigError::Horizon);
    }
}
