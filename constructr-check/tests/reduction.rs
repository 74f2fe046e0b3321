//! The reductions are sound. Symmetry: renaming the nodes of a state commutes with every
//! step of the model and with every property, so a checker that counts a state and its
//! renamed twin once misses nothing. Local timers first: the timer the model fires before
//! every other step commutes with each of them, so the other orders reach nothing new.

use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};

use std::time::Duration;

use constructr_check::{
    BootstrapModel, CheckConfig, CheckOptions, Mutation, PROPERTIES, Step, World, check, permuted,
    representative,
};
use proptest::prelude::*;
use stateright::Model;

fn fingerprint(w: &World) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    w.hash(&mut h);
    h.finish()
}

/// Every ordering of `n` indices.
fn permutations(n: usize) -> Vec<Vec<usize>> {
    if n == 0 {
        return vec![Vec::new()];
    }
    let mut out = Vec::new();
    for rest in permutations(n - 1) {
        for at in 0..=rest.len() {
            let mut p = rest.clone();
            p.insert(at, n - 1);
            out.push(p);
        }
    }
    out
}

/// The step a random walk takes: time passes on half the choices where it can (or walks
/// would spend their length on the first instant's interleavings), a fault on one in
/// sixteen (most steps offered are faults: walks would use up their faults at once), else
/// any other step.
fn pick(steps: &[Step], choice: u32) -> Step {
    let any = |c: u32| steps[c as usize % steps.len()].clone();
    match choice % 16 {
        0..8 if steps.contains(&Step::Tick) => Step::Tick,
        15 => any(choice / 16),
        _ => {
            let calm: Vec<&Step> = steps
                .iter()
                .filter(|s| !matches!(s, Step::Fault(_)))
                .collect();
            if calm.is_empty() {
                any(choice / 16)
            } else {
                calm[(choice / 16) as usize % calm.len()].clone()
            }
        }
    }
}

/// The smallest fingerprint among all renamings of `w`: equal exactly for states that are
/// renamings of each other (up to hash collisions).
fn canonical(w: &World) -> u64 {
    permutations(w.nodes.len())
        .iter()
        .map(|p| fingerprint(&permuted(w, p)))
        .min()
        .expect("at least one permutation")
}

/// The states one step away from `w`, each up to renaming.
fn successors(model: &BootstrapModel, w: &World) -> BTreeSet<u64> {
    let mut steps = Vec::new();
    model.actions(w, &mut steps);
    steps
        .into_iter()
        .filter_map(|s| model.next_state(w, s))
        .map(|next| canonical(&next))
        .collect()
}

fn verdicts(model: &BootstrapModel, w: &World) -> Vec<bool> {
    model
        .properties()
        .iter()
        .map(|p| (p.condition)(model, w))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Along random walks with faults of every kind (late nodes too): a renamed state has
    /// the same successors, renamed, and the same property verdicts; the representative is
    /// a renaming and picking it twice changes nothing.
    #[test]
    fn renaming_the_nodes_commutes_with_every_step_and_property(
        nodes in 2usize..=3,
        late in 0usize..=1,
        mutation in proptest::option::of(proptest::sample::select(Mutation::ALL.to_vec())),
        walk in proptest::collection::vec(any::<u32>(), 1..120),
        renaming in any::<proptest::sample::Index>(),
    ) {
        let mut config = CheckConfig::new(nodes, 2).with_late_nodes(late).with_mutation(mutation);
        // Every order: the symmetry is the full model's (the reduced one fires the local timer
        // of the first node that has one, which a renaming may change).
        config.reduce_local_timers = false;
        let model = BootstrapModel::new(config).expect("valid");
        let orders = permutations(nodes);
        let mut w = model.init_states().remove(0);
        for (k, choice) in walk.into_iter().enumerate() {
            if k % 4 == 0 {
                let order = renaming.get(&orders);
                let twin = permuted(&w, order);
                prop_assert_eq!(canonical(&twin), canonical(&w));
                prop_assert_eq!(successors(&model, &twin), successors(&model, &w));
                prop_assert_eq!(verdicts(&model, &twin), verdicts(&model, &w));
                let rep = representative(&w);
                prop_assert_eq!(canonical(&rep), canonical(&w));
                prop_assert_eq!(&representative(&rep), &rep);
            }
            let mut steps = Vec::new();
            model.actions(&w, &mut steps);
            if steps.is_empty() {
                break;
            }
            let step = pick(&steps, choice);
            if let Some(next) = model.next_state(&w, step) {
                w = next;
            }
        }
    }
}

fn walk_config(nodes: usize, late: usize, mutation: Option<Mutation>) -> CheckConfig {
    // Timers fire inside the fault window too (where they must not go first) and after it.
    CheckConfig::new(nodes, 1)
        .with_late_nodes(late)
        .with_mutation(mutation)
        .with_times(Duration::from_secs(6), Duration::from_secs(18))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Along random walks: whenever the model fires a node's timer before every other step,
    /// each other step is still possible after it, the timer after that step, and both
    /// orders end in the same state (so exploring only one order loses nothing).
    #[test]
    fn the_timer_fired_first_commutes_with_every_other_step(
        nodes in 2usize..=3,
        late in 0usize..=1,
        mutation in proptest::option::of(proptest::sample::select(Mutation::ALL.to_vec())),
        walk in proptest::collection::vec(any::<u32>(), 1..150),
    ) {
        let mut config = walk_config(nodes, late, mutation);
        config.reduce_local_timers = false;
        let full = BootstrapModel::new(config).expect("valid");
        let steps_of = |w: &World| {
            let mut steps = Vec::new();
            full.actions(w, &mut steps);
            steps
        };
        let mut w = full.init_states().remove(0);
        for choice in walk {
            let steps = steps_of(&w);
            if steps.is_empty() {
                break;
            }
            if let Some(i) = full.local_timer(&w) {
                let timer = Step::Timer { node: i };
                prop_assert!(steps.contains(&timer));
                let after_timer = full.next_state(&w, timer.clone()).expect("enabled");
                for other in steps.iter().filter(|s| **s != timer) {
                    let Some(after_other) = full.next_state(&w, other.clone()) else {
                        continue;
                    };
                    prop_assert!(steps_of(&after_timer).contains(other), "{:?} disabled", other);
                    prop_assert!(steps_of(&after_other).contains(&timer), "{:?} disables it", other);
                    let a = full.next_state(&after_timer, other.clone());
                    let b = full.next_state(&after_other, timer.clone());
                    prop_assert_eq!(a, b, "{:?} does not commute with {:?}", other, timer);
                }
            }
            if let Some(next) = full.next_state(&w, pick(&steps, choice)) {
                w = next;
            }
        }
    }
}

/// Firing local timers first finds the same verdicts as every order, in fewer states, and
/// still catches each removed safety mechanism.
#[test]
fn local_timers_first_keep_every_verdict_in_fewer_states() {
    for mutation in std::iter::once(None).chain(Mutation::ALL.map(Some)) {
        let config = CheckConfig::new(2, 1).with_mutation(mutation);
        let mut every_order = config.clone();
        every_order.reduce_local_timers = false;
        let reduced = check(config, &CheckOptions::default()).unwrap();
        let full = check(every_order, &CheckOptions::default()).unwrap();
        for (f, r) in full.properties.iter().zip(&reduced.properties) {
            assert_eq!(f.verdict, r.verdict, "{mutation:?}: {}", f.name);
        }
        assert_eq!(mutation.is_none(), reduced.passed(), "{mutation:?}");
        assert!(
            reduced.unique_states < full.unique_states,
            "{mutation:?}: {} of {}",
            reduced.unique_states,
            full.unique_states
        );
    }
}

/// The reduction finds every verdict the full exploration finds, in about 1/N! of the
/// states, and still catches each removed safety mechanism.
#[test]
fn symmetry_reduction_keeps_every_verdict_in_fewer_states() {
    let depth_first = CheckOptions {
        depth_first: true,
        ..CheckOptions::default()
    };
    let symmetric = CheckOptions {
        symmetry: true,
        ..depth_first.clone()
    };
    let config = CheckConfig::new(3, 0);
    let full = check(config.clone(), &depth_first).unwrap();
    let reduced = check(config, &symmetric).unwrap();
    assert!(full.complete && reduced.complete);
    assert_eq!(reduced.properties.len(), PROPERTIES.len());
    for (f, r) in full.properties.iter().zip(&reduced.properties) {
        assert_eq!(f.verdict, r.verdict, "{}", f.name);
    }
    eprintln!(
        "3 nodes, no fault: {} unique states, {} with symmetry",
        full.unique_states, reduced.unique_states
    );
    assert!(
        reduced.unique_states * 4 < full.unique_states,
        "{} of {}",
        reduced.unique_states,
        full.unique_states
    );
    for mutation in Mutation::ALL {
        let config = CheckConfig::new(2, 1).with_mutation(Some(mutation));
        let full = check(config.clone(), &depth_first).unwrap();
        let reduced = check(config, &symmetric).unwrap();
        for (f, r) in full.properties.iter().zip(&reduced.properties) {
            assert_eq!(f.verdict, r.verdict, "{mutation:?}: {}", f.name);
        }
        assert!(
            !reduced.passed(),
            "{mutation:?} is caught with symmetry too"
        );
    }
}
