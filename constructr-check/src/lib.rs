//! # constructr-check
//!
//! Exhaustive model checking of the **real** bootstrap state machine
//! ([`constructr_core::Machine`], not a re-implementation) with the
//! [stateright](https://docs.rs/stateright) model checker.
//!
//! The simulation (`constructr_core::sim`) samples random faulty runs; this crate
//! enumerates **every** interleaving of a small cluster up to a fault bound:
//!
//! - **State**: every node's machine, the registry (a
//!   [`ScopeRegistry`](constructr_core::memory::ScopeRegistry) — the memory backend's own
//!   code, linearizable, TTLs on virtual time, the lock, the epoch), the cluster runtime's
//!   membership (the join rules of `LocalCluster`), the requests in flight, virtual time.
//! - **Steps**: a request takes effect and its reply arrives (in any order across nodes);
//!   a node's timer fires; time advances to the next timer or expiry; faults — an outage
//!   (every request fails until it ends), a crash (kill -9, restart later as a new
//!   incarnation), a graceful shutdown, a lost reply (the request took effect), a request
//!   timeout, a late write (a request the node gave up on takes effect after all), the lock
//!   or an entry vanishing before its TTL. At most `max_faults` faults per path, within the
//!   fault window; paths end at the horizon.
//! - **Properties** (see [`PROPERTIES`]): always at most one cluster among registered live
//!   members; a member registers only under the epoch naming its cluster; a seed's first
//!   registration only while it holds the lock; a node seeds only after reading the
//!   registry empty under the lock; no member leaves its cluster for an outage alone; no
//!   machine fails. Sometimes one cluster with every node registered, and a re-seed after
//!   the whole cluster died. Eventually every node registered or terminal.
//!
//! ```
//! use constructr_check::{CheckConfig, CheckOptions, Verdict, check};
//!
//! // Two nodes, no faults: every interleaving forms exactly one cluster.
//! let report = check(CheckConfig::new(2, 0), &CheckOptions::default())?;
//! assert!(report.complete);
//! assert!(report.passed(), "{report:?}");
//! let all = report.property("one cluster with every node registered").unwrap();
//! assert_eq!(all.verdict, Verdict::Reached);
//! # Ok::<(), constructr_check::ConfigError>(())
//! ```
#![deny(missing_docs)]

mod model;

use std::time::{Duration, Instant};

use stateright::{Checker, Expectation, HasDiscoveries, Model};

pub use model::{
    BootstrapModel, CheckConfig, ConfigError, Fault, FaultKind, Flags, Mutation, Node, Step, World,
    describe_action, permuted, representative,
};

/// The properties checked, in report order, with their kind.
pub const PROPERTIES: [(&str, &str); 10] = [
    ("at most one cluster among live members", "always"),
    (
        "at most one cluster among registered live members",
        "always",
    ),
    (
        "a member registers only under the epoch naming its cluster",
        "always",
    ),
    (
        "a seed's first registration only while it holds the lock",
        "always",
    ),
    (
        "a node seeds only after reading the registry empty under the lock",
        "always",
    ),
    ("no member leaves its cluster for an outage alone", "always"),
    ("no machine fails", "always"),
    ("one cluster with every node registered", "sometimes"),
    ("a re-seed after the whole cluster died", "sometimes"),
    ("every node ends registered or terminal", "eventually"),
];

/// How to run the checker.
#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// Worker threads.
    pub threads: usize,
    /// Stop after this long (the report then says `complete: false`).
    pub timeout: Option<Duration>,
    /// Stop at the first violated property (for mutation runs).
    pub stop_at_first_violation: bool,
    /// Depth first instead of breadth first: memory for the visited states' fingerprints
    /// and one path only, instead of the whole frontier (deep checks); counterexamples are
    /// then not the shortest.
    pub depth_first: bool,
    /// Symmetry reduction (depth first only): a state and the same state with its nodes
    /// renamed count once (see [`representative`]): up to N! fewer states.
    pub symmetry: bool,
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            timeout: None,
            stop_at_first_violation: false,
            depth_first: false,
            symmetry: false,
        }
    }
}

/// What the checker concluded about one property.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// An always/eventually property held on every explored path.
    Holds,
    /// A counterexample was found (see the trace).
    Violated,
    /// A sometimes property: an example path was found (see the trace).
    Reached,
    /// A sometimes property: no explored path reaches it.
    NotReached,
}

/// One property's result.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PropertyReport {
    /// The property.
    pub name: &'static str,
    /// `always`, `sometimes` or `eventually`.
    pub kind: &'static str,
    /// The verdict.
    pub verdict: Verdict,
    /// The counterexample or example, one line per step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace: Option<Vec<String>>,
}

/// The result of a check.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CheckReport {
    /// Nodes.
    pub nodes: usize,
    /// Nodes that start at any time within the fault window.
    pub late: usize,
    /// Fault bound per path.
    pub max_faults: u8,
    /// The fault kinds paths may contain.
    pub faults: Vec<FaultKind>,
    /// The mutation, if any.
    pub mutation: Option<Mutation>,
    /// Fault window (s).
    pub fault_window_s: f64,
    /// Horizon (s).
    pub horizon_s: f64,
    /// States explored (including revisits).
    pub states: usize,
    /// Distinct states.
    pub unique_states: usize,
    /// Longest path explored (steps).
    pub max_depth: usize,
    /// Wall time (s).
    pub seconds: f64,
    /// Whether the whole bounded state space was explored (no timeout, no early stop).
    pub complete: bool,
    /// Every property's verdict.
    pub properties: Vec<PropertyReport>,
}

impl CheckReport {
    /// Whether no always/eventually property was violated.
    pub fn passed(&self) -> bool {
        self.properties
            .iter()
            .all(|p| p.verdict != Verdict::Violated)
    }

    /// The report of the property `name`.
    pub fn property(&self, name: &str) -> Option<&PropertyReport> {
        self.properties.iter().find(|p| p.name == name)
    }
}

/// Explores every interleaving of `config` (breadth first, so counterexamples are short)
/// and reports each property's verdict.
pub fn check(config: CheckConfig, options: &CheckOptions) -> Result<CheckReport, ConfigError> {
    let model = BootstrapModel::new(config)?;
    let (nodes, max_faults, mutation, faults) = (
        model.config().nodes,
        model.config().max_faults,
        model.config().mutation,
        model.config().faults.clone(),
    );
    let (fault_window_s, horizon_s) = (
        model.config().fault_window.as_secs_f64(),
        model.config().horizon.as_secs_f64(),
    );
    let started = Instant::now();
    let mut builder = model.clone().checker().threads(options.threads.max(1));
    if let Some(t) = options.timeout {
        builder = builder.timeout(t);
    }
    builder = builder.finish_when(if options.stop_at_first_violation {
        HasDiscoveries::AnyFailures
    } else {
        HasDiscoveries::All
    });
    let report = |checker: &dyn Checker<BootstrapModel>| {
        (
            checker.state_count(),
            checker.unique_state_count(),
            checker.max_depth(),
            model
                .properties()
                .iter()
                .map(|p| (p.clone(), checker.discovery(p.name)))
                .collect::<Vec<_>>(),
        )
    };
    let (states, unique_states, max_depth, discoveries) = if options.symmetry {
        report(
            &builder
                .symmetry_fn(model::representative)
                .spawn_dfs()
                .join(),
        )
    } else if options.depth_first {
        report(&builder.spawn_dfs().join())
    } else {
        report(&builder.spawn_bfs().join())
    };
    let seconds = started.elapsed().as_secs_f64();
    let stopped_early = options.stop_at_first_violation
        && discoveries
            .iter()
            .any(|(p, d)| p.expectation.discovery_is_failure() && d.is_some());
    let timed_out = options.timeout.is_some_and(|t| started.elapsed() >= t);
    let properties = discoveries
        .into_iter()
        .map(|(p, discovery)| {
            let kind = match p.expectation {
                Expectation::Always => "always",
                Expectation::Sometimes => "sometimes",
                Expectation::Eventually => "eventually",
            };
            let verdict = match (&p.expectation, discovery.is_some()) {
                (Expectation::Sometimes, true) => Verdict::Reached,
                (Expectation::Sometimes, false) => Verdict::NotReached,
                (_, true) => Verdict::Violated,
                (_, false) => Verdict::Holds,
            };
            PropertyReport {
                name: p.name,
                kind,
                verdict,
                trace: discovery.map(|path| trace(&model, &p, path)),
            }
        })
        .collect();
    Ok(CheckReport {
        nodes,
        late: model.config().late,
        max_faults,
        faults,
        mutation,
        fault_window_s,
        horizon_s,
        states,
        unique_states,
        max_depth,
        seconds,
        complete: !stopped_early && !timed_out,
        properties,
    })
}

/// A path as readable lines: which node did what, in which phase, and the registry after.
/// It ends at the first state that decides the property (violates it, or for a
/// `sometimes` property, reaches it); an `eventually` counterexample is shown whole.
fn trace(
    model: &BootstrapModel,
    property: &stateright::Property<BootstrapModel>,
    path: stateright::Path<World, Step>,
) -> Vec<String> {
    let steps = path.into_vec();
    let decides = |w: &World| match property.expectation {
        Expectation::Always => !(property.condition)(model, w),
        Expectation::Sometimes => (property.condition)(model, w),
        Expectation::Eventually => false,
    };
    let mut lines = Vec::with_capacity(steps.len());
    for pair in steps.windows(2) {
        let (before, Some(step)) = (&pair[0].0, &pair[0].1) else {
            continue;
        };
        lines.push(model.describe_step(before, step, &pair[1].0));
        if decides(&pair[1].0) {
            break;
        }
    }
    lines
}

/// Serves stateright's Explorer for `config` on `address` and blocks for as long as the
/// process runs: click through the state space in a browser. Fails at once if the model is
/// invalid or the address cannot be bound.
pub fn explore(config: CheckConfig, address: std::net::SocketAddr) -> Result<(), ConfigError> {
    let model = BootstrapModel::new(config)?;
    // stateright panics when it cannot bind: find out first, and say so.
    drop(
        std::net::TcpListener::bind(address).map_err(|e| ConfigError::Bind {
            address,
            error: e.to_string(),
        })?,
    );
    let _ = model.checker().threads(1).serve(address);
    Ok(())
}
