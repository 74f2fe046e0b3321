//! `max_nr_of_seed_nodes`: join a random subset of the registered nodes (replayable from the
//! machine's seed), not always the first N; 0 means all.

mod common;

use std::collections::BTreeSet;

use common::*;
use constructr_core::{Action, AttemptId, Machine, NodeId, NodeLimit, Reply, Settings};

fn six_nodes() -> Vec<NodeId> {
    (2..=7).map(node).collect()
}

/// The seeds a machine with rng `seed` passes to join for `registered`.
fn seeds_chosen(max: usize, seed: u64, registered: &[NodeId]) -> Vec<NodeId> {
    let mut s = settings();
    s.max_nr_of_seed_nodes = max;
    let mut m = Machine::new(s, me(), seed, t0()).expect("valid settings");
    assert_eq!(
        actions(&mut m),
        vec![Action::GetNodes {
            attempt: AttemptId(1),
            limit: NodeLimit::for_seeds(max),
        }]
    );
    m.handle_reply(
        at(1),
        AttemptId(1),
        Reply::Nodes(Ok(registry(registered, epoch(THEIR_CLUSTER, 9), 9))),
    );
    match single(&mut m) {
        Action::JoinCluster { attempt, seeds } => {
            assert_eq!(attempt, AttemptId(2));
            seeds
        }
        a => panic!("expected JoinCluster, got {a:?}"),
    }
}

#[test]
fn limit_picks_exactly_that_many_distinct_registered_nodes() {
    let all = six_nodes();
    for seed in 0..50 {
        let seeds = seeds_chosen(2, seed, &all);
        assert_eq!(seeds.len(), 2, "seed {seed}: {seeds:?}");
        assert_ne!(seeds[0], seeds[1], "seed {seed}: duplicate seed node");
        assert!(
            seeds.iter().all(|s| all.contains(s)),
            "seed {seed}: {seeds:?} not all registered"
        );
    }
}

#[test]
fn different_machine_seeds_pick_different_subsets() {
    let all = six_nodes();
    let subsets: BTreeSet<BTreeSet<NodeId>> = (0..50)
        .map(|seed| seeds_chosen(2, seed, &all).into_iter().collect())
        .collect();
    assert!(
        subsets.len() > 3,
        "only {} distinct subsets over 50 seeds: {subsets:?}",
        subsets.len()
    );
    let first_two: BTreeSet<NodeId> = all[..2].iter().cloned().collect();
    assert!(
        subsets.iter().any(|s| *s != first_two),
        "always the first two nodes"
    );
}

#[test]
fn same_machine_seed_picks_the_same_subset() {
    let all = six_nodes();
    for seed in [0, 1, 42, u64::MAX] {
        assert_eq!(seeds_chosen(2, seed, &all), seeds_chosen(2, seed, &all));
    }
}

#[test]
fn zero_means_all_registered_nodes_in_registry_order() {
    assert_eq!(seeds_chosen(0, 3, &six_nodes()), six_nodes());
}

#[test]
fn limit_at_or_above_the_number_of_nodes_passes_all() {
    assert_eq!(seeds_chosen(6, 3, &six_nodes()), six_nodes());
    assert_eq!(seeds_chosen(10, 3, &six_nodes()), six_nodes());
}

#[test]
fn own_stale_entry_is_filtered_before_picking() {
    let registered = vec![node(2), my_stale_entry(), node(3)];
    for seed in 0..20 {
        assert_eq!(
            seeds_chosen(2, seed, &registered),
            vec![node(2), node(3)],
            "seed {seed}"
        );
    }
}

#[test]
fn a_joiner_reads_one_entry_more_than_it_has_seeds_and_all_of_them_for_zero() {
    for (max, limit) in [
        (0, None),
        (1, Some(2)),
        (5, Some(6)),
        (usize::MAX, Some(usize::MAX)),
    ] {
        let mut s = settings();
        s.max_nr_of_seed_nodes = max;
        let mut m = Machine::new(s, me(), 1, t0()).expect("valid settings");
        let read = single(&mut m);
        assert!(
            matches!(read, Action::GetNodes { limit: l, .. } if l.map(NodeLimit::get) == limit),
            "max {max}: {read:?}"
        );
    }
    // The default reads 6 entries, however large the cluster; ConstructR's mode all.
    assert_eq!(Settings::default().max_nr_of_seed_nodes, 5);
    assert_eq!(Settings::constructr_compat().max_nr_of_seed_nodes, 0);
}

#[test]
fn a_bounded_read_with_only_this_nodes_entry_seeds_and_with_one_other_joins() {
    // With `limit >= 2`, an answer without another entry means there is none.
    let mut m = Machine::new(settings(), me(), 1, t0()).expect("valid settings");
    let read = single(&mut m);
    m.handle_reply(
        at(1),
        read.attempt(),
        Reply::Nodes(Ok(registry(&[me()], None, 3))),
    );
    assert!(matches!(single(&mut m), Action::Lock { .. }));
    let mut m = Machine::new(settings(), me(), 1, t0()).expect("valid settings");
    let read = single(&mut m);
    m.handle_reply(
        at(1),
        read.attempt(),
        Reply::Nodes(Ok(registry(&[me(), node(2)], epoch(THEIR_CLUSTER, 9), 9))),
    );
    match single(&mut m) {
        Action::JoinCluster { seeds, .. } => assert_eq!(seeds, vec![node(2)]),
        a => panic!("expected JoinCluster, got {a:?}"),
    }
}
