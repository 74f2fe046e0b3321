//! The model checker on the real machine: every property holds for 2 and 3 nodes with
//! faults, and removing a safety mechanism makes it find a counterexample.

use std::time::Duration;

use constructr_check::{
    CheckConfig, CheckOptions, CheckReport, FaultKind, Mutation, PROPERTIES, Verdict, check,
};

const ONE_CLUSTER: &str = "at most one cluster among registered live members";
const ONE_LIVE_CLUSTER: &str = "at most one cluster among live members";
const REREAD: &str = "a node seeds only after reading the registry empty under the lock";
const OUTAGE: &str = "no member leaves its cluster for an outage alone";
const ALL_REGISTERED: &str = "one cluster with every node registered";
const RESEED: &str = "a re-seed after the whole cluster died";
const LIVENESS: &str = "every node ends registered or terminal";

/// One cluster of every node is reached, and so is a re-seed after the whole cluster died.
const FORMED_AND_RESEEDED: [(&str, Verdict); 2] = [
    (ALL_REGISTERED, Verdict::Reached),
    (RESEED, Verdict::Reached),
];

fn run(config: CheckConfig) -> CheckReport {
    let report = check(config, &CheckOptions::default()).expect("valid configuration");
    eprintln!(
        "{} nodes, {} faults, mutation {:?}: {} states ({} unique), depth {}, {:.1} s",
        report.nodes,
        report.max_faults,
        report.mutation,
        report.states,
        report.unique_states,
        report.max_depth,
        report.seconds
    );
    report
}

fn verdict(report: &CheckReport, name: &str) -> Verdict {
    report.property(name).expect("known property").verdict
}

fn assert_all_hold(report: &CheckReport) {
    assert!(
        report.complete,
        "the state space was not explored to its end"
    );
    for p in &report.properties {
        assert_ne!(
            p.verdict,
            Verdict::Violated,
            "{} violated:\n{}",
            p.name,
            p.trace.as_deref().unwrap_or_default().join("\n")
        );
    }
    assert_eq!(report.properties.len(), PROPERTIES.len());
}

/// Asserts that every property holds (see [`assert_all_hold`]) and that each named one has
/// the given verdict.
#[track_caller]
fn assert_verdicts(report: &CheckReport, expected: &[(&str, Verdict)]) {
    assert_all_hold(report);
    for &(name, want) in expected {
        assert_eq!(verdict(report, name), want, "{name}");
    }
}

#[test]
fn two_nodes_with_up_to_two_faults_keep_every_property() {
    let report = run(CheckConfig::new(2, 2));
    assert_verdicts(&report, &FORMED_AND_RESEEDED);
    assert!(
        report.unique_states > 1_000_000,
        "suspiciously small: {report:?}"
    );
}

/// The application's view, not the registry's: a seed cut off from the service (an outage,
/// or its lock lost) right after it took the lock never runs its cluster beside the cluster
/// of the next seed. (Before the seed registered first and formed after, both faults found
/// two live clusters.)
#[test]
fn a_seed_cut_off_after_its_lock_never_runs_beside_another_cluster() {
    for fault in [FaultKind::Outage, FaultKind::LockLost] {
        let report = run(CheckConfig::new(2, 1).with_faults(&[fault]));
        assert_verdicts(&report, &[(ONE_LIVE_CLUSTER, Verdict::Holds)]);
    }
}

/// ConstructR's order (form the cluster, then register) is what the property catches: a seed
/// cut off before its registration commits runs a cluster beside the next seed's, while the
/// registry never holds two.
#[test]
fn forming_before_registering_lets_a_cut_off_seed_run_beside_the_next() {
    for fault in [FaultKind::Outage, FaultKind::LockLost] {
        let config = CheckConfig::new(2, 1)
            .with_faults(&[fault])
            .with_mutation(Some(Mutation::FormBeforeRegister));
        let report = run(config);
        let trace = assert_counterexample(&report, ONE_LIVE_CLUSTER);
        assert!(trace.iter().any(|l| l.contains("FAULT")), "{trace:#?}");
        let last = trace.last().unwrap();
        assert!(last.contains("-> c2"), "{last}");
        assert_eq!(verdict(&report, ONE_CLUSTER), Verdict::Holds);
    }
}

/// A freeze (GC pause, SIGSTOP) of a node that refreshes normally, at any step, shorter than
/// `ttl + grace − refresh-interval` (11 s − 2 s here; the settings' real-world bound also
/// subtracts a coordination timeout: 8 s) never splits the cluster. At 9 s a member frozen
/// right before its refresh wakes beside the cluster that formed while it slept: the
/// remaining window is real, and exactly where the bound says.
#[test]
fn freezes_of_a_refreshing_member_up_to_the_bound_keep_one_cluster_longer_ones_do_not() {
    let s = CheckConfig::settings();
    let bound = s.ttl() + s.reseed_grace() - s.refresh_interval - s.coordination_timeout;
    assert_eq!(bound, Duration::from_secs(8));
    // A late second node: the first is a cluster of its own when it freezes.
    let config = CheckConfig::new(2, 1)
        .with_late_nodes(1)
        .with_faults(&[FaultKind::Pause])
        .with_max_pause(bound);
    let safe = run(config.clone());
    assert_verdicts(&safe, &[(ONE_LIVE_CLUSTER, Verdict::Holds)]);
    let longer = config.with_max_pause(bound + Duration::from_secs(1));
    let trace = assert_counterexample(&run(longer), ONE_LIVE_CLUSTER);
    assert!(trace.iter().any(|l| l.contains("freezes")), "{trace:#?}");
}

/// The tightest moment for a freeze is a member's first try after an outage that outlasted
/// its entry (a 10 s fault window lets the outage span the entry's expiry): a newcomer
/// that read the registry empty when the service came back seeds after the re-seed grace.
/// Up to `Settings::max_safe_pause` (5 s grace − 1.44 s longest member wait − 1 s = 2.56 s
/// here) the member registers again first; a 4 s freeze right there lets the newcomer's
/// cluster form while it sleeps. (Before the member's waits were capped to fit two tries
/// into the grace, even a 1 s freeze, or a single slow request, lost the race.)
#[test]
fn a_freeze_right_after_a_long_outage_is_safe_up_to_the_max_safe_pause() {
    let bound = CheckConfig::settings().max_safe_pause();
    assert_eq!(bound, Duration::from_micros(2_562_500));
    let config = CheckConfig::new(2, 2)
        .with_late_nodes(1)
        .with_faults(&[FaultKind::Outage, FaultKind::Pause])
        .with_times(Duration::from_secs(10), Duration::from_secs(24));
    assert_eq!(config.max_pause, bound);
    let safe = run(config.clone());
    assert_verdicts(&safe, &[(ONE_LIVE_CLUSTER, Verdict::Holds)]);
    let longer = config.with_max_pause(Duration::from_secs(4));
    let trace = assert_counterexample(&run(longer), ONE_LIVE_CLUSTER);
    assert!(trace.iter().any(|l| l.contains("freezes")), "{trace:#?}");
}

#[test]
fn three_nodes_with_one_fault_keep_every_property() {
    assert_verdicts(&run(CheckConfig::new(3, 1)), &FORMED_AND_RESEEDED);
}

#[test]
fn three_nodes_without_faults_always_form_one_cluster_of_all() {
    let report = run(CheckConfig::new(3, 0));
    // Nothing dies without faults, so nothing is re-seeded.
    let expected = [
        (ALL_REGISTERED, Verdict::Reached),
        (RESEED, Verdict::NotReached),
    ];
    assert_verdicts(&report, &expected);
}

#[test]
fn two_nodes_through_two_outages_keep_their_cluster() {
    let report = run(CheckConfig::new(2, 2).with_faults(&[FaultKind::Outage]));
    assert_verdicts(&report, &[(OUTAGE, Verdict::Holds)]);
}

/// The outage issue's scenario: a newcomer starts at any time, also during one of two
/// outages that outlast the member's entry; the member keeps its cluster and the newcomer
/// joins it. (Removing the re-seed grace breaks exactly this: see below.)
#[test]
fn a_newcomer_during_an_outage_joins_the_older_cluster() {
    let config = CheckConfig::new(2, 2)
        .with_late_nodes(1)
        .with_faults(&[FaultKind::Outage]);
    let report = run(config.clone());
    let expected = [(OUTAGE, Verdict::Holds), (ALL_REGISTERED, Verdict::Reached)];
    assert_verdicts(&report, &expected);
    let without_grace = run(config.with_mutation(Some(Mutation::NoReseedGrace)));
    let trace = assert_counterexample(&without_grace, OUTAGE);
    assert!(trace.iter().any(|l| l.contains("n2: starts")), "{trace:#?}");
}

/// The mechanisms: each mutation is caught by the property it protects, with a trace.
fn mutated(mutation: Mutation) -> CheckReport {
    run(CheckConfig::new(2, 1).with_mutation(Some(mutation)))
}

fn assert_counterexample(report: &CheckReport, name: &str) -> Vec<String> {
    let p = report.property(name).expect("known property");
    assert_eq!(p.verdict, Verdict::Violated, "{name} not violated");
    let trace = p.trace.clone().expect("a counterexample has a trace");
    eprintln!("counterexample for {name:?}:\n{}", trace.join("\n"));
    assert!(!trace.is_empty());
    trace
}

#[test]
fn without_the_reread_after_locking_a_node_seeds_on_a_stale_read() {
    let report = mutated(Mutation::SkipRereadAfterLock);
    let trace = assert_counterexample(&report, REREAD);
    // The seed joins itself right after its lock, without a read of its own in between.
    let join = trace.last().unwrap();
    let seed = &join[join.find("  n").unwrap() + 2..][..2];
    assert!(join.contains(&format!("{seed}: join [{seed}#")), "{join}");
    let lock = trace
        .iter()
        .rposition(|l| l.contains(&format!("{seed}: lock -> acquired")))
        .unwrap();
    assert!(
        !trace[lock..]
            .iter()
            .any(|l| l.contains(&format!("{seed}: get-nodes"))),
        "{trace:#?}"
    );
    // The fencing still keeps the registry to one cluster.
    assert_eq!(verdict(&report, ONE_CLUSTER), Verdict::Holds);
}

#[test]
fn with_an_unconditional_seed_write_two_clusters_register() {
    let report = mutated(Mutation::UnfencedSeedWrite);
    let trace = assert_counterexample(&report, ONE_CLUSTER);
    assert!(trace.iter().any(|l| l.contains("FAULT")), "{trace:#?}");
    let last = trace.last().unwrap();
    assert!(last.contains("@c1") && last.contains("@c2"), "{last}");
    assert_counterexample(
        &report,
        "a seed's first registration only while it holds the lock",
    );
}

#[test]
fn without_the_reseed_grace_an_outage_costs_a_member_its_cluster() {
    let report = mutated(Mutation::NoReseedGrace);
    let trace = assert_counterexample(&report, OUTAGE);
    assert!(
        trace.iter().any(|l| l.contains("outage begins")),
        "{trace:#?}"
    );
    assert!(trace.iter().any(|l| l.contains("REFUSED")), "{trace:#?}");
    // Still one registered cluster: the older one lost, it did not split.
    assert_eq!(verdict(&report, ONE_CLUSTER), Verdict::Holds);
}

/// The liveness check is not vacuous: a horizon that ends before a crashed cluster can be
/// re-seeded leaves a node unregistered, and the checker says so.
#[test]
fn a_horizon_too_short_for_recovery_is_a_liveness_violation() {
    let config = CheckConfig::new(2, 1)
        .with_faults(&[FaultKind::Crash])
        .with_times(Duration::from_secs(3), Duration::from_secs(6));
    let report = run(config);
    assert_counterexample(&report, LIVENESS);
    assert_eq!(verdict(&report, ONE_CLUSTER), Verdict::Holds);
}

/// Depth first (little memory, for deep checks) visits exactly the states breadth first
/// does, and finds the same violations.
#[test]
fn depth_first_explores_the_same_state_space() {
    let config = CheckConfig::new(2, 1);
    let bfs = run(config.clone());
    let depth_first = CheckOptions {
        depth_first: true,
        ..CheckOptions::default()
    };
    let dfs = check(config.clone(), &depth_first).unwrap();
    assert!(dfs.complete);
    assert_eq!(bfs.unique_states, dfs.unique_states);
    assert_all_hold(&dfs);
    let unfenced = config.with_mutation(Some(Mutation::UnfencedSeedWrite));
    let mutated = check(unfenced, &depth_first).unwrap();
    assert_counterexample(&mutated, ONE_CLUSTER);
}
