//! The datacenter quorum, driven through whole scenarios on virtual time: each step is
//! (seconds since start, input, the state after it).

use std::time::{Duration, Instant};

use QuorumState::{Halted, HighAvailable, HighAvailableTransitional, Independent, Standalone};
use constructr_serf::quorum::{Quorum, QuorumConfig, QuorumInput, QuorumState};

fn joined(dc: &str, name: &str) -> QuorumInput {
    QuorumInput::Joined {
        dc: dc.into(),
        name: name.into(),
    }
}

fn failed(dc: &str, name: &str) -> QuorumInput {
    QuorumInput::Failed {
        dc: dc.into(),
        name: name.into(),
    }
}

fn left(name: &str) -> QuorumInput {
    QuorumInput::Left { name: name.into() }
}

/// Runs `steps` on a quorum of a node in dc1 and checks the state after each.
fn run(steps: &[(u64, QuorumInput, QuorumState)]) -> Quorum {
    let t0 = Instant::now();
    let mut q = Quorum::new(QuorumConfig::new("dc1"), t0);
    assert_eq!(q.state(), Standalone);
    for (i, (at, input, expected)) in steps.iter().enumerate() {
        q.step(t0 + Duration::from_secs(*at), input.clone());
        assert_eq!(q.state(), *expected, "step {i} at {at} s: {input:?}");
    }
    q
}

#[test]
fn datacenters_joining_lead_to_high_availability_after_the_timer() {
    let q = run(&[
        (0, joined("dc1", "a"), Standalone),
        (1, joined("dc2", "b"), Independent),
        (2, joined("dc3", "c"), HighAvailableTransitional),
        (61, QuorumInput::Tick, HighAvailableTransitional),
        (62, QuorumInput::Tick, HighAvailable),
        (63, joined("dc3", "c2"), HighAvailable),
    ]);
    assert_eq!(q.poll_timeout(), None);
}

#[test]
fn the_timer_to_high_availability_is_announced_by_poll_timeout() {
    let t0 = Instant::now();
    let mut q = Quorum::new(QuorumConfig::new("dc1"), t0);
    q.step(t0, joined("dc2", "b"));
    q.step(t0, joined("dc3", "c"));
    let at = q.poll_timeout().expect("the ha-after timer");
    assert_eq!(at, t0 + Duration::from_secs(60));
    let change = q.step(at, QuorumInput::Tick).expect("a change");
    assert_eq!(
        (change.from, change.to),
        (HighAvailableTransitional, HighAvailable)
    );
}

/// Four datacenters split two against two: neither half may think it has quorum (the
/// sample's `active >= ceil(total / 2)` said both had).
#[test]
fn a_two_two_split_halts_both_halves() {
    // The member of each datacenter: dc2 → b, dc3 → c, dc4 → d.
    let member = |dc: &str| ["b", "c", "d"][usize::from(dc.as_bytes()[2] - b'2')].to_owned();
    let side = |lost: &str, also_lost: &str| {
        let steps = [
            (0, joined("dc1", "a"), Standalone),
            (0, joined("dc2", "b"), Independent),
            (0, joined("dc3", "c"), HighAvailableTransitional),
            (0, joined("dc4", "d"), HighAvailableTransitional),
            (60, QuorumInput::Tick, HighAvailable),
            (70, failed(lost, &member(lost)), HighAvailable),
            (70, failed(also_lost, &member(also_lost)), HighAvailable),
            // Within the grace both still count as active.
            (129, QuorumInput::Tick, HighAvailable),
            (130, QuorumInput::Tick, Halted),
        ];
        run(&steps)
    };
    // dc1 with dc2 loses dc3 and dc4; dc1 with dc3 loses dc2 and dc4.
    let _ = side("dc3", "dc4");
    let _ = side("dc2", "dc4");
}

#[test]
fn a_whole_datacenter_fails_and_returns() {
    run(&[
        (0, joined("dc2", "b"), Independent),
        (0, joined("dc3", "c1"), HighAvailableTransitional),
        (0, joined("dc3", "c2"), HighAvailableTransitional),
        (60, QuorumInput::Tick, HighAvailable),
        (100, failed("dc3", "c1"), HighAvailable),
        // A repeated failure report does not extend the grace.
        (120, failed("dc3", "c1"), HighAvailable),
        (101, failed("dc3", "c2"), HighAvailable),
        // dc3 inactive: 2 of 3 is still a strict majority.
        (161, QuorumInput::Tick, HighAvailable),
        (170, failed("dc2", "b"), HighAvailable),
        (230, QuorumInput::Tick, Halted),
        // dc3 returns: 2 of 3 again, and the timer starts over.
        (240, joined("dc3", "c1"), HighAvailableTransitional),
        (300, QuorumInput::Tick, HighAvailable),
    ]);
}

#[test]
fn a_two_datacenter_system_halts_when_the_other_fails() {
    run(&[
        (0, joined("dc2", "b"), Independent),
        (10, failed("dc2", "b"), Independent),
        (70, QuorumInput::Tick, Halted),
        (80, joined("dc2", "b"), Independent),
    ]);
}

/// Leaving and reaping are planned: the datacenter leaves the count, nobody halts.
#[test]
fn datacenters_that_leave_gracefully_shrink_the_count() {
    run(&[
        (0, joined("dc2", "b"), Independent),
        (0, joined("dc3", "c"), HighAvailableTransitional),
        (5, left("c"), Independent),
        (6, left("b"), Standalone),
        // A member moved to another datacenter leaves its old one.
        (7, joined("dc2", "m"), Independent),
        (8, joined("dc1", "m"), Standalone),
    ]);
}

#[test]
fn the_own_datacenter_is_always_active() {
    let t0 = Instant::now();
    let mut q = Quorum::new(QuorumConfig::new("dc1"), t0);
    q.step(t0, failed("dc1", "other-node-here"));
    q.step(t0 + Duration::from_secs(600), QuorumInput::Tick);
    assert_eq!(q.state(), Standalone);
    let view = q.view(t0 + Duration::from_secs(600));
    assert_eq!(
        (view.known, view.active),
        (vec!["dc1".to_owned()], vec!["dc1".to_owned()])
    );
}

mod props {
    use super::*;
    use proptest::prelude::*;

    fn input() -> impl Strategy<Value = QuorumInput> {
        let dc = "dc[1-5]";
        let name = "[a-e]";
        prop_oneof![
            (dc, name).prop_map(|(dc, name)| QuorumInput::Joined { dc, name }),
            (dc, name).prop_map(|(dc, name)| QuorumInput::Failed { dc, name }),
            name.prop_map(|name| QuorumInput::Left { name }),
            Just(QuorumInput::Tick),
        ]
    }

    fn duration() -> impl Strategy<Value = Duration> {
        prop_oneof![
            Just(Duration::ZERO),
            Just(Duration::MAX),
            (0u64..200).prop_map(Duration::from_secs),
            any::<u64>().prop_map(Duration::from_secs),
        ]
    }

    proptest! {
        /// Any timers (zero, huge) and any inputs at any (non-decreasing) times: never a
        /// panic, and `Halted` exactly when the active datacenters are no strict majority.
        #[test]
        fn any_timers_and_inputs_keep_the_majority_rule(
            ha_after in duration(),
            grace in duration(),
            steps in prop::collection::vec((0u64..100, input()), 0..40),
        ) {
            let t0 = Instant::now();
            let mut config = QuorumConfig::new("dc1");
            config.ha_after = ha_after;
            config.failure_grace = grace;
            let mut q = Quorum::new(config, t0);
            let mut now = t0;
            for (dt, input) in steps {
                now += Duration::from_secs(dt);
                q.step(now, input);
                let _ = q.poll_timeout();
                let view = q.view(now);
                let quorate = 2 * view.active.len() > view.known.len();
                prop_assert_eq!(q.state() == Halted, !quorate, "{:?}", view);
                prop_assert!(view.active.contains(&"dc1".to_owned()));
            }
        }
    }
}
