//! Join timeout: a join not answered within `join_timeout` makes the node leave and start
//! over (or fail with `abort_on_join_timeout`); unrelated cluster events never push the
//! deadline back; `SelfUp` counts as joined.

mod common;

use std::time::Duration;

use common::*;
use constructr_core::State::*;
use constructr_core::{
    AttemptId, ClusterError, ClusterEvent, ErrorSummary, Event, Failure, Machine, Reply, Settings,
};

/// A member-script machine in `Joining` with `JoinCluster { 2, [node2, node3] }` sent at t0.
fn joining(settings: Settings) -> Machine {
    let (m, join_action) = driven(settings, Script::Member, Joining);
    assert_eq!(join_action, Some(join(2, vec![node(2), node(3)])));
    assert_eq!(m.poll_timeout(), Some(t0() + JOIN_TIMEOUT));
    m
}

fn add_self_as_member(attempt: u64) -> constructr_core::Action {
    add_member(attempt, Some(THEIR_CLUSTER))
}

#[test]
fn join_timeout_leaves_and_starts_over() {
    let mut m = joining(settings());
    let deadline = t0() + JOIN_TIMEOUT;

    m.handle_timeout(deadline - Duration::from_millis(1));
    nothing(&mut m);

    m.handle_timeout(deadline);
    transition(&mut m, Joining, Resetting, &[leave(3)]);
    assert_eq!(m.cluster(), None);
    assert_eq!(m.poll_timeout(), Some(deadline + COORDINATION_TIMEOUT));

    // The join answers late: ignored.
    m.handle_reply(deadline, AttemptId(2), joined());
    nothing(&mut m);

    m.handle_reply(deadline + Duration::from_millis(5), AttemptId(3), left());
    transition(&mut m, Resetting, GettingNodes, &[get_nodes(4)]);
}

#[test]
fn a_seed_whose_formation_times_out_forms_again_under_its_registration() {
    let (mut m, join_action) = driven(settings(), Script::Seed, Forming);
    assert_eq!(join_action, Some(join(5, vec![me()])));
    let cluster = m.cluster();
    m.handle_timeout(t0() + JOIN_TIMEOUT);
    let events = events(&mut m);
    assert!(
        matches!(
            events.as_slice(),
            [Event::Retrying {
                state: Forming,
                retry_in: RETRY_DELAY,
                ..
            }]
        ),
        "{events:?}"
    );
    assert_eq!(actions(&mut m), vec![]);
    assert_eq!(m.cluster(), cluster);
    // Still within the registration's lease: join itself again, no read, no leave.
    fire(&mut m);
    assert_eq!(actions(&mut m), vec![join(6, vec![me()])]);
}

#[test]
fn abort_on_join_timeout_fails() {
    let mut s = settings();
    s.abort_on_join_timeout = true;
    let mut m = joining(s);
    m.handle_timeout(t0() + JOIN_TIMEOUT);
    transition(&mut m, Joining, Failed, &[]);
    assert_eq!(m.poll_timeout(), None);
    assert_eq!(m.failure(), Some(&Failure::JoinTimeout));
}

#[test]
fn unrelated_cluster_events_do_not_move_the_join_deadline() {
    let mut m = joining(settings());
    let deadline = t0() + JOIN_TIMEOUT;
    for (i, event) in [
        ClusterEvent::MemberUp(node(4)),
        ClusterEvent::MemberRemoved(node(3)),
        ClusterEvent::MemberUp(node(5)),
    ]
    .into_iter()
    .enumerate()
    {
        m.handle_cluster_event(at(1000 * (i as u64 + 1)), event);
        ignored(&mut m, Joining, Some(deadline));
    }
    m.handle_timeout(deadline);
    assert_eq!(actions(&mut m), vec![leave(3)]);
}

#[test]
fn self_up_while_joining_counts_as_joined() {
    let mut m = joining(settings());
    m.handle_cluster_event(at(500), ClusterEvent::SelfUp);
    transition(&mut m, Joining, AddingSelf, &[add_self_as_member(3)]);
    assert_eq!(m.poll_timeout(), Some(at(500) + COORDINATION_TIMEOUT));

    // The join's own reply arriving afterwards is stale.
    m.handle_reply(at(600), AttemptId(2), joined());
    nothing(&mut m);
}

#[test]
fn self_up_outside_joining_is_ignored() {
    let mut m = started(settings());
    m.handle_cluster_event(at(1), ClusterEvent::SelfUp);
    nothing(&mut m);
    assert_eq!(m.state(), GettingNodes);

    let (mut m, _) = driven(settings(), Script::Member, RefreshScheduled);
    m.handle_cluster_event(at(1), ClusterEvent::SelfUp);
    nothing(&mut m);
    assert_eq!(m.poll_timeout(), Some(t0() + REFRESH_INTERVAL));
}

#[test]
fn joined_ok_adds_self() {
    let mut m = joining(settings());
    m.handle_reply(at(500), AttemptId(2), joined());
    transition(&mut m, Joining, AddingSelf, &[add_self_as_member(3)]);
}

fn join_error() -> Reply {
    Reply::Joined(Err(ClusterError::Join {
        message: "no seed answered".into(),
    }))
}

fn join_error_summary() -> ErrorSummary {
    ErrorSummary {
        retryable: true,
        kind: None,
        message: "joining the cluster failed: no seed answered".into(),
    }
}

#[test]
fn join_error_is_reported_then_leaves_and_reads_again_after_a_backoff() {
    let mut m = joining(settings());
    m.handle_reply(at(500), AttemptId(2), join_error());
    let reported = retrying(Joining, join_error_summary());
    step(
        &mut m,
        vec![reported, changed(Joining, Resetting)],
        vec![leave(3)],
    );
    m.handle_reply(at(600), AttemptId(3), left());
    // Not at once: a join that fails at once must not spin.
    transition(&mut m, Resetting, GettingNodes, &[]);
    assert_eq!(m.poll_timeout(), Some(at(600) + RETRY_DELAY));
    m.handle_timeout(at(600) + RETRY_DELAY);
    assert_eq!(actions(&mut m), vec![get_nodes(4)]);
}

#[test]
fn join_errors_back_off_with_growing_waits_and_exhaust_into_failed() {
    let mut s = outage_settings();
    s.retry_budget = Duration::from_secs(60);
    let mut m = joining(s);
    let mut now = at(500);
    let mut attempt = 2;
    let mut waits = Vec::new();
    loop {
        m.handle_reply(now, AttemptId(attempt), join_error());
        if m.state() == Failed {
            break;
        }
        let retry_in = events(&mut m)
            .into_iter()
            .find_map(|e| match e {
                Event::Retrying { retry_in, .. } => Some(retry_in),
                _ => None,
            })
            .expect("a Retrying event per join error");
        waits.push(retry_in.as_secs());
        let leave = single(&mut m);
        m.handle_reply(now, leave.attempt(), left());
        now = m.poll_timeout().expect("backoff timer");
        m.handle_timeout(now);
        let get = single(&mut m);
        m.handle_reply(now, get.attempt(), nodes(theirs(&[node(2)], 5)));
        attempt = single(&mut m).attempt().0;
        assert!(waits.len() < 50, "never failed: {waits:?}");
    }
    // 2, 4, 8, 16, 16, ... s until 60 s of join errors in a row.
    assert_eq!(waits, [2, 4, 8, 16, 16, 16]);
    assert_eq!(
        m.failure(),
        Some(&Failure::JoinFailed {
            error: "joining the cluster failed: no seed answered".into()
        })
    );
}
