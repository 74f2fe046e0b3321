//! Deterministic simulation: many nodes (machines + [`MemoryCoordination`] + [`LocalCluster`])
//! on virtual time, with a seeded RNG and randomized faults.
//!
//! Each trial starts `nodes` nodes at (nearly) the same time and, with faults on, plays one
//! [`Scenario`], chosen by the trial's seed:
//! - **random faults**: failed, lost (applied or not), slow (beyond the coordination
//!   timeout) replies; node crashes with or without restart (same address, new
//!   incarnation); pauses of a node (SIGSTOP, GC: it keeps its cluster membership while its
//!   entry and lock may expire) up to [`SimConfig::max_pause`]; lost locks and expired
//!   entries;
//! - **outage**: the coordination service answers nothing but errors for 0.1–5 × the entry
//!   TTL, once or twice, while some nodes only start during it (newcomers);
//! - **wipe**: every node entry vanishes while the cluster runs, and a newcomer starts;
//! - **join errors**: a third of all joins fail at once.
//!
//! Failed machines are restarted like a supervisor would.
//!
//! Checked after **every** step, as the application sees it: all live nodes that are members
//! of a cluster are members of the same one, registered or not. After every registration:
//! the registered live nodes are all members of one cluster, and the registering node is a
//! member (or the seed of the epoch it writes, which forms after). Checked at quiescence: exactly one cluster
//! among live nodes (0 islands), every live node joined and registered, the registry holds
//! exactly the live nodes. In outage and wipe trials also: no machine failed and no member
//! left its cluster (0 [`Event::ClusterLost`]) — an outage alone never costs a member.
//! A trial is a pure function of its seed: replay with [`run_trial`].

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::coordination::{AddMode, AddOutcome, CoordinationError, Registry};
use crate::local::{JoinAttempt, LocalCluster};
use crate::machine::{Action, AttemptId, Event, Machine, Mutations, Reply, State};
use crate::memory::{ManualClock, MemoryCoordination};
use crate::node::{ClusterId, ClusterName, NodeId, Scope};
use crate::settings::Settings;

/// Parameters of a simulation.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Nodes per trial.
    pub nodes: usize,
    /// Inject faults.
    pub faults: bool,
    /// Machine settings (short defaults, see [`SimConfig::default`]).
    pub settings: Settings,
    /// Starts are spread uniformly over this window.
    pub start_spread: Duration,
    /// Faults happen within this window after the start.
    pub fault_window: Duration,
    /// Virtual time after the fault window until quiescence is checked.
    pub settle: Duration,
    /// The longest pause (freeze) of a node; `None`: [`Settings::max_safe_pause`], the
    /// longest freeze the protocol is safe through. Longer ones can split the cluster while
    /// the frozen member sleeps (the remaining window).
    pub max_pause: Option<Duration>,
    /// Test-only: remove machine-side safety mechanisms.
    #[doc(hidden)]
    pub mutations: Mutations,
    /// Test-only: the backend ignores every write condition (no fencing, no epoch check).
    #[doc(hidden)]
    pub unfenced_backend: bool,
}

impl SimConfig {
    /// Short settings that keep trials small: refresh 2 s, TTL 6 s, join timeout 2 s.
    pub fn short_settings() -> Settings {
        Settings {
            cluster_name: ClusterName::new("sim").expect("valid"),
            coordination_timeout: Duration::from_millis(500),
            join_timeout: Duration::from_secs(2),
            retry_delay: Duration::from_millis(300),
            max_retry_delay: Duration::from_secs(2),
            refresh_interval: Duration::from_secs(2),
            ttl_factor: 3.0,
            ..Settings::default()
        }
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            nodes: 10,
            faults: true,
            settings: Self::short_settings(),
            start_spread: Duration::from_millis(200),
            fault_window: Duration::from_secs(10),
            settle: Duration::from_secs(30),
            max_pause: None,
            mutations: Mutations::default(),
            unfenced_backend: false,
        }
    }
}

/// What a faulty trial does (chosen from its seed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Scenario {
    /// No faults.
    #[default]
    None,
    /// Random request faults, crashes, pauses, lock and entry loss.
    RandomFaults,
    /// One or two coordination outages of 0.1–5 × the entry TTL, with newcomers during them.
    Outage,
    /// Every node entry vanishes while the cluster runs; a newcomer starts right after.
    Wipe,
    /// A third of all joins fail at once.
    JoinErrors,
}

/// The result of one trial.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrialOutcome {
    /// The trial's seed (replay with [`run_trial`]).
    pub seed: u64,
    /// What the trial did.
    pub scenario: Scenario,
    /// Machines that ended in `Failed` (and were restarted).
    pub failed_machines: u64,
    /// Members that left their cluster because their re-registration was refused.
    pub clusters_lost: u64,
    /// Clusters among live nodes at quiescence, minus one (0 = success).
    pub islands: usize,
    /// Safety and liveness violations found.
    pub violations: Vec<String>,
    /// Live nodes at the end.
    pub live: usize,
    /// Coordination requests served.
    pub coordination_requests: u64,
    /// Fenced seed registrations that were refused.
    pub seeds_refused: u64,
    /// Simulation steps processed.
    pub steps: u64,
}

impl TrialOutcome {
    /// Whether the trial found nothing wrong.
    pub fn ok(&self) -> bool {
        self.islands == 0 && self.violations.is_empty()
    }
}

/// Aggregate of many trials.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimReport {
    /// Trials run.
    pub trials: u64,
    /// Total islands over all trials.
    pub islands: u64,
    /// Seeds of failing trials.
    pub failed_seeds: Vec<u64>,
    /// The first failure message of each failing trial.
    pub failures: Vec<String>,
    /// Coordination requests over all trials.
    pub coordination_requests: u64,
    /// Refused seed registrations over all trials.
    pub seeds_refused: u64,
    /// Trials per scenario: random faults, outage, wipe, join errors.
    pub scenarios: [u64; 4],
    /// Machines that failed, over all trials.
    pub failed_machines: u64,
    /// Members that left their cluster for a refused re-registration, over all trials.
    pub clusters_lost: u64,
}

/// The seed of trial `i` of a run seeded with `seed` (SplitMix64).
pub fn trial_seed(seed: u64, i: u64) -> u64 {
    let mut z = seed.wrapping_add(i.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Runs `trials` trials on `threads` threads.
pub fn run_trials(config: &SimConfig, seed: u64, trials: u64, threads: usize) -> SimReport {
    let threads = threads.clamp(1, 64) as u64;
    let outcomes: Vec<Vec<TrialOutcome>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    (t..trials)
                        .step_by(threads as usize)
                        .map(|i| run_trial(config, trial_seed(seed, i)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("trial thread panicked"))
            .collect()
    });
    let mut report = SimReport::default();
    for o in outcomes.into_iter().flatten() {
        report.trials += 1;
        report.islands += o.islands as u64;
        report.coordination_requests += o.coordination_requests;
        report.seeds_refused += o.seeds_refused;
        report.failed_machines += o.failed_machines;
        report.clusters_lost += o.clusters_lost;
        match o.scenario {
            Scenario::RandomFaults => report.scenarios[0] += 1,
            Scenario::Outage => report.scenarios[1] += 1,
            Scenario::Wipe => report.scenarios[2] += 1,
            Scenario::JoinErrors => report.scenarios[3] += 1,
            Scenario::None => {}
        }
        if !o.ok() {
            report.failed_seeds.push(o.seed);
            report.failures.push(
                o.violations
                    .first()
                    .cloned()
                    .unwrap_or_else(|| format!("{} islands", o.islands)),
            );
        }
    }
    report
}

#[derive(Debug)]
enum Ev {
    Start(usize),
    Apply {
        node: usize,
        inc: u64,
        attempt: AttemptId,
        action: Action,
        reply_lost: bool,
        reply_delay: Duration,
    },
    Deliver {
        node: usize,
        inc: u64,
        attempt: AttemptId,
        reply: Reply,
    },
    Crash {
        node: usize,
        restart_after: Option<Duration>,
    },
    Restart(usize),
    Pause {
        node: usize,
        duration: Duration,
    },
    Resume(usize),
    ExpireLock,
    ExpireEntry(usize),
    OutageStart(Duration),
    OutageEnd,
    Wipe,
}

struct SimNode {
    address: String,
    machine: Option<Machine>,
    paused_until: Option<Instant>,
    /// Incarnation of the current machine; deliveries for older ones are dropped.
    inc: u64,
}

struct Watcher {
    node: usize,
    inc: u64,
    attempt: AttemptId,
    after: Option<u64>,
}

struct PendingJoin {
    node: usize,
    inc: u64,
    attempt: AttemptId,
    seeds: Vec<NodeId>,
}

struct World<'a> {
    cfg: &'a SimConfig,
    rng: ChaCha8Rng,
    now: Instant,
    seq: u64,
    queue: BinaryHeap<Reverse<(Instant, u64, usize)>>,
    slab: Vec<Option<Ev>>,
    free: Vec<usize>,
    nodes: Vec<SimNode>,
    memory: MemoryCoordination,
    clock: ManualClock,
    cluster: LocalCluster,
    scope: Scope,
    watchers: Vec<Watcher>,
    joins: Vec<PendingJoin>,
    out: TrialOutcome,
    clock_start: Instant,
    /// `CONSTRUCTR_SIM_TRACE` set: print every simulation event to stderr (for replays).
    trace: bool,
    /// While set, every coordination request fails (and nothing is applied).
    outage_until: Option<Instant>,
    /// The virtual time the trial ends.
    end: Instant,
    /// Live members were seen in two clusters at once (reported once).
    split_seen: bool,
    /// The seed of each cluster id that was registered.
    seeded: HashMap<ClusterId, NodeId>,
}

/// Runs one trial; deterministic in `seed`.
pub fn run_trial(config: &SimConfig, seed: u64) -> TrialOutcome {
    let start = Instant::now();
    let clock = ManualClock::new(start);
    let memory = MemoryCoordination::new(Arc::new(clock.clone()));
    memory.set_ignore_write_conditions(config.unfenced_backend);
    let scope = config.settings.scope().expect("valid sim settings");
    let mut w = World {
        cfg: config,
        rng: ChaCha8Rng::seed_from_u64(seed),
        now: start,
        seq: 0,
        queue: BinaryHeap::new(),
        slab: Vec::new(),
        free: Vec::new(),
        nodes: (0..config.nodes)
            .map(|i| SimNode {
                address: format!("10.0.{}.{}:2552", i / 250, i % 250 + 1),
                machine: None,
                paused_until: None,
                inc: 0,
            })
            .collect(),
        memory,
        clock,
        cluster: LocalCluster::new(),
        scope,
        watchers: Vec::new(),
        joins: Vec::new(),
        out: TrialOutcome {
            seed,
            ..TrialOutcome::default()
        },
        clock_start: start,
        trace: std::env::var_os("CONSTRUCTR_SIM_TRACE").is_some(),
        outage_until: None,
        end: start + config.start_spread + config.fault_window + config.settle,
        split_seen: false,
        seeded: HashMap::new(),
    };
    w.run(start);
    w.out
}

/// A uniform duration in `[lo, hi)`, `lo` when the range is empty.
fn uniform(rng: &mut ChaCha8Rng, lo: Duration, hi: Duration) -> Duration {
    let (lo_us, hi_us) = (lo.as_micros() as u64, hi.as_micros() as u64);
    if hi_us <= lo_us {
        lo
    } else {
        Duration::from_micros(rng.random_range(lo_us..hi_us))
    }
}

impl World<'_> {
    fn schedule(&mut self, at: Instant, ev: Ev) {
        self.seq += 1;
        let idx = match self.free.pop() {
            Some(i) => {
                self.slab[i] = Some(ev);
                i
            }
            None => {
                self.slab.push(Some(ev));
                self.slab.len() - 1
            }
        };
        self.queue.push(Reverse((at, self.seq, idx)));
    }

    fn latency(&mut self) -> Duration {
        Duration::from_micros(self.rng.random_range(500..15_000))
    }

    fn run(&mut self, start: Instant) {
        self.out.scenario = if self.cfg.faults {
            match self.rng.random_range(0..8u32) {
                0..=3 => Scenario::RandomFaults,
                4 | 5 => Scenario::Outage,
                6 => Scenario::Wipe,
                _ => Scenario::JoinErrors,
            }
        } else {
            Scenario::None
        };
        let mut late = HashSet::new();
        match self.out.scenario {
            Scenario::RandomFaults => self.schedule_faults(start),
            Scenario::Outage => late = self.schedule_outages(start),
            Scenario::Wipe => late = self.schedule_wipe(start),
            Scenario::None | Scenario::JoinErrors => {}
        }
        for i in 0..self.cfg.nodes {
            if late.contains(&i) {
                continue;
            }
            let at = start + uniform(&mut self.rng, Duration::ZERO, self.cfg.start_spread);
            self.schedule(at, Ev::Start(i));
        }
        let end = self.end;
        loop {
            let next_event = self.queue.peek().map(|Reverse((at, _, _))| *at);
            let next_timer = self
                .nodes
                .iter()
                .enumerate()
                .filter(|(_, n)| n.paused_until.is_none())
                .filter_map(|(i, n)| n.machine.as_ref()?.poll_timeout().map(|t| (t, i)))
                .min();
            let take_timer = match (next_event, next_timer) {
                (None, None) => break,
                (Some(e), Some((t, _))) => t < e,
                (None, Some(_)) => true,
                (Some(_), None) => false,
            };
            let at = if take_timer {
                next_timer.expect("checked").0
            } else {
                next_event.expect("checked")
            };
            if at > end {
                break;
            }
            self.now = self.now.max(at);
            self.clock.set(self.now);
            self.out.steps += 1;
            self.step_then_check(take_timer, next_timer.map(|(_, i)| i));
        }
        self.now = end;
        self.clock.set(end);
        self.check_quiescence();
        self.out.coordination_requests = self.memory.calls();
    }

    /// One step of the loop (a due timer or the next event), then the application's view:
    /// all live members in one cluster.
    fn step_then_check(&mut self, take_timer: bool, timer_node: Option<usize>) {
        if take_timer {
            let i = timer_node.expect("checked");
            let now = self.now;
            if let Some(m) = self.nodes[i].machine.as_mut() {
                m.handle_timeout(now);
            }
            self.drain(i);
        } else {
            let Reverse((_, _, idx)) = self.queue.pop().expect("peeked");
            let ev = self.slab[idx].take().expect("scheduled");
            self.free.push(idx);
            self.handle(ev);
        }
        self.check_one_live_cluster();
    }

    /// Safety, after **every** step, as the application sees it: all live nodes that are
    /// members of a cluster are members of the same one (registered or not). Recorded once
    /// per trial, at the first moment it breaks.
    fn check_one_live_cluster(&mut self) {
        if self.split_seen {
            return;
        }
        let clusters = self.cluster.clusters();
        if clusters.len() > 1 {
            self.split_seen = true;
            let at = self.now - self.clock_start;
            let sizes: Vec<usize> = clusters.values().map(BTreeSet::len).collect();
            self.out.violations.push(format!(
                "live members in {} clusters at t={at:?} (sizes {sizes:?})",
                clusters.len()
            ));
        }
    }

    /// One or two outages of 0.1–5 × TTL; up to two nodes start only during the first.
    fn schedule_outages(&mut self, start: Instant) -> HashSet<usize> {
        let ttl = self.cfg.settings.ttl();
        let mut late = HashSet::new();
        let mut at = start + uniform(&mut self.rng, Duration::ZERO, self.cfg.fault_window);
        for k in 0..self.rng.random_range(1..=2u32) {
            let length = uniform(&mut self.rng, ttl.mul_f64(0.1), ttl.mul_f64(5.0));
            self.schedule(at, Ev::OutageStart(length));
            if k == 0 && self.cfg.nodes > 2 {
                for _ in 0..self.rng.random_range(0..=2u32) {
                    let node = self.rng.random_range(0..self.cfg.nodes);
                    if late.insert(node) {
                        let when = at + uniform(&mut self.rng, Duration::ZERO, length);
                        self.schedule(when, Ev::Start(node));
                    }
                }
            }
            at += length + uniform(&mut self.rng, Duration::from_millis(100), ttl * 2);
        }
        self.end = self.end.max(at + self.cfg.settle);
        late
    }

    /// Every entry vanishes after the cluster formed; a newcomer starts right after.
    fn schedule_wipe(&mut self, start: Instant) -> HashSet<usize> {
        let at = start
            + self.cfg.start_spread
            + self.cfg.settings.join_timeout
            + uniform(&mut self.rng, Duration::ZERO, self.cfg.fault_window);
        self.schedule(at, Ev::Wipe);
        let mut late = HashSet::new();
        if self.cfg.nodes > 1 {
            let node = self.rng.random_range(0..self.cfg.nodes);
            late.insert(node);
            let when = at + uniform(&mut self.rng, Duration::ZERO, Duration::from_millis(50));
            self.schedule(when, Ev::Start(node));
        }
        self.end = self.end.max(at + self.cfg.settle);
        late
    }

    fn schedule_faults(&mut self, start: Instant) {
        let max_pause = self
            .cfg
            .max_pause
            .unwrap_or_else(|| self.cfg.settings.max_safe_pause())
            .min(crate::settings::MAX_DURATION);
        let n = self.cfg.nodes;
        for _ in 0..self.rng.random_range(0..=3u32) {
            let at = start + uniform(&mut self.rng, Duration::ZERO, self.cfg.fault_window);
            let node = self.rng.random_range(0..n);
            let ev = match self.rng.random_range(0..5u32) {
                0 | 1 => Ev::Crash {
                    node,
                    restart_after: self
                        .rng
                        .random_bool(0.7)
                        .then(|| uniform(&mut self.rng, Duration::ZERO, Duration::from_secs(5))),
                },
                2 => Ev::Pause {
                    node,
                    duration: uniform(&mut self.rng, Duration::from_millis(1), max_pause),
                },
                3 => Ev::ExpireLock,
                _ => Ev::ExpireEntry(node),
            };
            self.schedule(at, ev);
        }
    }

    fn start_node(&mut self, i: usize) {
        let inc: u64 = self.rng.random();
        let seed: u64 = self.rng.random();
        let id = NodeId::new(self.nodes[i].address.clone(), inc);
        let mut m = Machine::new(self.cfg.settings.clone(), id, seed, self.now)
            .expect("valid sim settings");
        m.set_mutations(self.cfg.mutations);
        self.nodes[i].machine = Some(m);
        self.nodes[i].inc = inc;
        self.nodes[i].paused_until = None;
        self.drain(i);
    }

    fn crash(&mut self, i: usize) {
        if let Some(m) = self.nodes[i].machine.take() {
            self.cluster.remove(m.node());
        }
        self.nodes[i].paused_until = None;
        self.watchers.retain(|w| w.node != i);
        self.joins.retain(|j| j.node != i);
    }

    fn handle(&mut self, ev: Ev) {
        if self.trace {
            eprintln!("{:?} {:?}", self.now - self.clock_start, ev);
        }
        match ev {
            Ev::Start(i) | Ev::Restart(i) => {
                if self.nodes[i].machine.is_none() {
                    self.start_node(i);
                }
            }
            Ev::Crash {
                node,
                restart_after,
            } => {
                self.crash(node);
                if let Some(d) = restart_after {
                    self.schedule(self.now + d, Ev::Restart(node));
                }
            }
            Ev::Pause { node, duration } => {
                if self.nodes[node].machine.is_some() && self.nodes[node].paused_until.is_none() {
                    self.nodes[node].paused_until = Some(self.now + duration);
                    self.schedule(self.now + duration, Ev::Resume(node));
                }
            }
            Ev::Resume(node) => {
                self.nodes[node].paused_until = None;
                let now = self.now;
                if let Some(m) = self.nodes[node].machine.as_mut() {
                    m.handle_timeout(now);
                }
                self.drain(node);
            }
            Ev::ExpireLock => self.memory.expire_lock(&self.scope),
            Ev::OutageStart(length) => {
                self.outage_until = Some(self.now + length);
                self.schedule(self.now + length, Ev::OutageEnd);
            }
            Ev::OutageEnd => self.outage_until = None,
            Ev::Wipe => {
                for i in 0..self.nodes.len() {
                    let address = self.nodes[i].address.clone();
                    self.memory.expire_entry(&self.scope, &address);
                }
            }
            Ev::ExpireEntry(i) => {
                let address = self.nodes[i].address.clone();
                self.memory.expire_entry(&self.scope, &address);
            }
            Ev::Apply {
                node,
                inc,
                attempt,
                action,
                reply_lost,
                reply_delay,
            } => self.apply(node, inc, attempt, action, reply_lost, reply_delay),
            Ev::Deliver {
                node,
                inc,
                attempt,
                reply,
            } => {
                if self.nodes[node].inc != inc {
                    return;
                }
                if let Some(until) = self.nodes[node].paused_until {
                    // A paused node handles its messages when it resumes.
                    let ev = Ev::Deliver {
                        node,
                        inc,
                        attempt,
                        reply,
                    };
                    self.schedule(until, ev);
                    return;
                }
                let now = self.now;
                if let Some(m) = self.nodes[node].machine.as_mut() {
                    m.handle_reply(now, attempt, reply);
                    self.drain(node);
                }
            }
        }
    }

    /// Drains a machine's outputs: actions become network events, failures restart the node.
    fn drain(&mut self, i: usize) {
        let inc = self.nodes[i].inc;
        loop {
            let Some(m) = self.nodes[i].machine.as_mut() else {
                return;
            };
            let action = m.poll_action();
            let event = m.poll_event();
            if action.is_none() && event.is_none() {
                break;
            }
            if self.trace
                && let Some(e) = &event
            {
                eprintln!("{:?}   node {i}: {e}", self.now - self.clock_start);
            }
            match event {
                Some(Event::SeedRefused) => self.out.seeds_refused += 1,
                Some(Event::ClusterLost { .. }) => self.out.clusters_lost += 1,
                _ => {}
            }
            if let Some(action) = action {
                self.send(i, inc, action);
            }
        }
        let failed = self.nodes[i]
            .machine
            .as_ref()
            .is_some_and(|m| m.state() == State::Failed);
        if failed {
            self.out.failed_machines += 1;
            // Fail fast, then a supervisor restarts the process.
            self.crash(i);
            self.schedule(self.now + Duration::from_secs(1), Ev::Restart(i));
        }
    }

    fn send(&mut self, i: usize, inc: u64, action: Action) {
        let attempt = action.attempt();
        let mut request_delay = self.latency();
        let mut reply_delay = self.latency();
        let mut reply_lost = false;
        let is_coordination = !matches!(
            action,
            Action::JoinCluster { .. } | Action::LeaveCluster { .. } | Action::WaitForChange { .. }
        );
        // The service is down (connection refused), or the join fails at once: an error
        // reply, nothing applied.
        let outage = is_coordination && self.outage_until.is_some_and(|until| self.now < until);
        let join_error = self.out.scenario == Scenario::JoinErrors
            && matches!(action, Action::JoinCluster { .. })
            && self.rng.random_bool(1.0 / 3.0);
        let faulty_now =
            self.now < self.clock_start + self.cfg.start_spread + self.cfg.fault_window;
        let random_faults =
            self.out.scenario == Scenario::RandomFaults && is_coordination && faulty_now;
        let roll: f64 = if random_faults {
            self.rng.random()
        } else {
            1.0
        };
        if outage || join_error || roll < 0.03 {
            let reply = error_reply(&action);
            self.schedule(
                self.now + request_delay,
                Ev::Deliver {
                    node: i,
                    inc,
                    attempt,
                    reply,
                },
            );
            return;
        }
        if random_faults {
            if roll < 0.04 {
                return; // request lost
            } else if roll < 0.05 {
                reply_lost = true; // applied, reply lost
            } else if roll < 0.08 {
                // Slow: the reply arrives after the coordination timeout.
                reply_delay = self.cfg.settings.coordination_timeout.mul_f64(1.5);
            } else if roll < 0.10 {
                request_delay = self.cfg.settings.coordination_timeout.mul_f64(0.9);
            }
        }
        self.schedule(
            self.now + request_delay,
            Ev::Apply {
                node: i,
                inc,
                attempt,
                action,
                reply_lost,
                reply_delay,
            },
        );
    }

    fn apply(
        &mut self,
        i: usize,
        inc: u64,
        attempt: AttemptId,
        action: Action,
        reply_lost: bool,
        reply_delay: Duration,
    ) {
        if self.nodes[i].inc != inc || self.nodes[i].machine.is_none() {
            return; // the sender crashed; the request died with its connection
        }
        let node = self.nodes[i]
            .machine
            .as_ref()
            .expect("checked")
            .node()
            .clone();
        let now = self.now;
        let scope = self.scope.clone();
        let reply = match action {
            Action::GetNodes { limit, .. } => {
                let mut registry = self.memory.get_nodes_at(now, &scope);
                if let Some(limit) = limit {
                    // Any `limit` of the entries may come back (the contract leaves the
                    // choice to the backend): a random choice explores them all.
                    registry.nodes.shuffle(&mut self.rng);
                    registry.nodes.truncate(limit.get());
                }
                Reply::Nodes(Ok(registry))
            }
            Action::Lock { ttl, .. } => {
                Reply::Lock(Ok(self.memory.lock_at(now, scope.lease(&node, ttl))))
            }
            Action::AddSelf { ttl, mode, .. } => {
                let out = self.memory.add_self_at(now, scope.lease(&node, ttl), &mode);
                if out == AddOutcome::Added {
                    self.check_registration(&node, &mode);
                }
                self.wake_watchers();
                Reply::AddSelf(Ok(out))
            }
            Action::Refresh { ttl, .. } => {
                Reply::Refresh(Ok(self.memory.refresh_at(now, scope.lease(&node, ttl))))
            }
            Action::RemoveSelf { .. } => {
                self.memory.remove_self_at(now, &scope, &node);
                self.wake_watchers();
                Reply::RemoveSelf(Ok(()))
            }
            Action::WaitForChange { after, .. } => {
                self.watchers.push(Watcher {
                    node: i,
                    inc,
                    attempt,
                    after,
                });
                self.wake_watchers();
                return;
            }
            Action::JoinCluster { seeds, .. } => {
                self.joins.push(PendingJoin {
                    node: i,
                    inc,
                    attempt,
                    seeds,
                });
                self.try_joins();
                return;
            }
            Action::LeaveCluster { .. } => {
                self.joins.retain(|j| j.node != i);
                self.cluster.remove(&node);
                Reply::Left(Ok(()))
            }
        };
        if !reply_lost {
            self.schedule(
                now + reply_delay,
                Ev::Deliver {
                    node: i,
                    inc,
                    attempt,
                    reply,
                },
            );
        }
    }

    fn wake_watchers(&mut self) {
        let rev = self.memory.revision(&self.scope);
        let mut woken = Vec::new();
        self.watchers.retain(|w| {
            let changed = w.after.is_none_or(|a| rev > a);
            if changed {
                woken.push((w.node, w.inc, w.attempt));
            }
            !changed
        });
        for (node, inc, attempt) in woken {
            let d = self.latency();
            self.schedule(
                self.now + d,
                Ev::Deliver {
                    node,
                    inc,
                    attempt,
                    reply: Reply::Changed(Ok(crate::coordination::WaitOutcome::Changed)),
                },
            );
        }
    }

    /// Joins that can complete now do; the rest wait for a seed to come up (like Akka).
    fn try_joins(&mut self) {
        loop {
            let mut progressed = false;
            let mut k = 0;
            while k < self.joins.len() {
                let j = &self.joins[k];
                let Some(m) = self.nodes[j.node].machine.as_ref() else {
                    self.joins.swap_remove(k);
                    continue;
                };
                let node = m.node().clone();
                if let JoinAttempt::Member(_) = self.cluster.try_join(&node, &j.seeds) {
                    let j = self.joins.swap_remove(k);
                    let d = self.latency();
                    self.schedule(
                        self.now + d,
                        Ev::Deliver {
                            node: j.node,
                            inc: j.inc,
                            attempt: j.attempt,
                            reply: Reply::Joined(Ok(())),
                        },
                    );
                    progressed = true;
                } else {
                    k += 1;
                }
            }
            if !progressed {
                break;
            }
        }
    }

    fn live_nodes(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter_map(|n| n.machine.as_ref().map(|m| m.node().clone()))
            .collect()
    }

    /// Safety, after every successful registration: a member's registering node is a
    /// member (a seed registers before it forms its cluster), and all registered live nodes
    /// are in one cluster.
    fn check_registration(&mut self, node: &NodeId, mode: &AddMode) {
        // A seed registers its new cluster, or registers again under it after its entry
        // lapsed, before it forms it.
        let seed = !self.cfg.mutations.form_before_register
            && match mode {
                AddMode::Seed { cluster, .. } => {
                    self.seeded.insert(*cluster, node.clone());
                    true
                }
                AddMode::Join { cluster: Some(c) } => self.seeded.get(c) == Some(node),
                AddMode::Join { cluster: None } => false,
            };
        if !seed && self.cluster.cluster_of(node).is_none() {
            self.out.violations.push(format!(
                "{node} registered while not a member of any cluster"
            ));
        }
        let live: HashSet<NodeId> = self.live_nodes().into_iter().collect();
        let registry: Registry = self.memory.get_nodes_at(self.now, &self.scope);
        let clusters: BTreeSet<_> = registry
            .nodes
            .iter()
            .filter(|n| live.contains(*n))
            .filter_map(|n| self.cluster.cluster_of(n))
            .collect();
        if clusters.len() > 1 {
            self.out.violations.push(format!(
                "registered live nodes belong to {} clusters after {node} registered",
                clusters.len()
            ));
        }
    }

    fn check_quiescence(&mut self) {
        if matches!(self.out.scenario, Scenario::Outage | Scenario::Wipe) {
            if self.out.failed_machines > 0 {
                self.out.violations.push(format!(
                    "{} machines failed in a {:?} trial",
                    self.out.failed_machines, self.out.scenario
                ));
            }
            if self.out.clusters_lost > 0 {
                self.out.violations.push(format!(
                    "{} members left their cluster in a {:?} trial",
                    self.out.clusters_lost, self.out.scenario
                ));
            }
        }
        let live = self.live_nodes();
        self.out.live = live.len();
        let clusters: BTreeSet<_> = live
            .iter()
            .filter_map(|n| self.cluster.cluster_of(n))
            .collect();
        self.out.islands = clusters.len().saturating_sub(1);
        for n in &self.nodes {
            if let Some(m) = &n.machine
                && !m.state().is_registered()
            {
                self.out.violations.push(format!(
                    "{} not registered at quiescence: {:?}",
                    m.node(),
                    m.state()
                ));
            }
        }
        for n in &live {
            if self.cluster.cluster_of(n).is_none() {
                self.out
                    .violations
                    .push(format!("{n} not a member at quiescence"));
            }
        }
        let mut registered: Vec<NodeId> = self.memory.get_nodes_at(self.now, &self.scope).nodes;
        registered.sort();
        let mut expected = live;
        expected.sort();
        if registered != expected {
            self.out.violations.push(format!(
                "registry {registered:?} != live nodes {expected:?} at quiescence"
            ));
        }
    }
}

fn error_reply(action: &Action) -> Reply {
    let e = || CoordinationError::unavailable("simulated transient failure");
    match action {
        Action::GetNodes { .. } => Reply::Nodes(Err(e())),
        Action::Lock { .. } => Reply::Lock(Err(e())),
        Action::AddSelf { .. } => Reply::AddSelf(Err(e())),
        Action::Refresh { .. } => Reply::Refresh(Err(e())),
        Action::RemoveSelf { .. } => Reply::RemoveSelf(Err(e())),
        Action::WaitForChange { .. } => Reply::Changed(Err(e())),
        Action::JoinCluster { .. } => Reply::Joined(Err(crate::ClusterError::Join {
            message: "simulated".into(),
        })),
        Action::LeaveCluster { .. } => Reply::Left(Ok(())),
    }
}
