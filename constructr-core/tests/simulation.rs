//! Randomized simulation: exactly one cluster forms under concurrency and faults.

use constructr_core::machine::Mutations;
use constructr_core::sim::{SimConfig, run_trial, run_trials};

fn threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// Base seed; override with `CONSTRUCTR_SIM_SEED` to explore, replay one trial with
/// `CONSTRUCTR_SIM_REPLAY`.
fn base_seed() -> u64 {
    std::env::var("CONSTRUCTR_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x00C0_FFEE)
}

fn assert_clean(report: &constructr_core::sim::SimReport) {
    assert!(
        report.failed_seeds.is_empty(),
        "{} of {} trials failed; first failing seed {} ({}); replay with CONSTRUCTR_SIM_REPLAY={}",
        report.failed_seeds.len(),
        report.trials,
        report.failed_seeds[0],
        report.failures[0],
        report.failed_seeds[0],
    );
}

#[test]
fn ten_thousand_faulty_trials_form_exactly_one_cluster() {
    let config = SimConfig::default();
    let report = run_trials(&config, base_seed(), 10_000, threads());
    eprintln!(
        "trials={} islands={} seeds_refused={} requests={}",
        report.trials, report.islands, report.seeds_refused, report.coordination_requests
    );
    assert_eq!(report.trials, 10_000);
    assert_eq!(report.islands, 0);
    assert_clean(&report);
}

#[test]
fn replay_a_trial_from_its_seed() {
    let config = SimConfig::default();
    let seed = std::env::var("CONSTRUCTR_SIM_REPLAY")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(42);
    let a = run_trial(&config, seed);
    let b = run_trial(&config, seed);
    assert_eq!(a, b, "a trial is not a pure function of its seed");
    assert!(a.ok(), "trial {seed} failed: {a:?}");
}

/// Without fencing (the backend writes every registration regardless of lock and epoch),
/// the same simulation finds split clusters: the mechanism is what keeps them out.
#[test]
fn without_fencing_the_simulation_finds_split_clusters() {
    let config = SimConfig {
        unfenced_backend: true,
        ..SimConfig::default()
    };
    let report = run_trials(&config, base_seed(), 5_000, threads());
    eprintln!(
        "unfenced: {} of {} trials failed, islands={}",
        report.failed_seeds.len(),
        report.trials,
        report.islands
    );
    assert!(
        !report.failed_seeds.is_empty(),
        "the simulation did not notice that fencing was removed"
    );
}

/// Without the re-read after taking the lock, a node that lost the race seeds anyway; the
/// fenced registration still stops a second cluster, but only by refusing it and making the
/// node start over. With the re-read such refusals are rarer (FSM-level proof of the
/// re-read itself: `tests/lock_contention.rs`).
#[test]
fn without_reread_after_lock_more_seed_registrations_are_refused() {
    let with = run_trials(&SimConfig::default(), base_seed(), 3_000, threads());
    let without = run_trials(
        &SimConfig {
            mutations: Mutations {
                skip_reread_after_lock: true,
            },
            ..SimConfig::default()
        },
        base_seed(),
        3_000,
        threads(),
    );
    eprintln!(
        "seed registrations refused: with re-read {}, without {}",
        with.seeds_refused, without.seeds_refused
    );
    assert_clean(&with);
    assert_clean(&without);
    assert!(without.seeds_refused > with.seeds_refused);
}
