//! Graceful shutdown: leave the cluster, remove this node's entry, stop.

mod common;

use std::time::Instant;

use common::*;
use constructr_core::State::{self, *};
use constructr_core::{AttemptId, CoordinationError, Machine, Reply};

fn registered() -> Machine {
    driven(settings(), Script::Member, RefreshScheduled).0
}

/// A member driven into `state` and shut down at `now`.
fn shut_down_in(state: State, now: Instant) -> Machine {
    let (mut m, _) = driven(settings(), Script::Member, state);
    m.shutdown(now);
    m
}

/// A registered member shut down at `at(100)`: `LeaveCluster { 4 }` sent, events drained.
fn leaving() -> Machine {
    let mut m = registered();
    m.shutdown(at(100));
    assert_eq!(actions(&mut m), vec![leave(4)]);
    events(&mut m);
    m
}

#[test]
fn registered_node_leaves_removes_its_entry_and_stops() {
    let mut m = registered();
    m.shutdown(at(100));
    transition(&mut m, RefreshScheduled, Leaving, &[leave(4)]);
    assert_eq!(m.poll_timeout(), Some(at(100) + COORDINATION_TIMEOUT));

    m.handle_reply(at(200), AttemptId(4), left());
    transition(&mut m, Leaving, RemovingSelf, &[remove_self(5)]);
    assert_eq!(m.poll_timeout(), Some(at(200) + COORDINATION_TIMEOUT));

    m.handle_reply(at(300), AttemptId(5), removed());
    transition(&mut m, RemovingSelf, Stopped, &[]);
    assert_eq!(m.poll_timeout(), None);
    assert!(m.state().is_terminal());
    assert_eq!(m.failure(), None);
}

#[test]
fn shutdown_while_refreshing_leaves_and_removes() {
    let now = t0() + REFRESH_INTERVAL;
    let mut m = shut_down_in(Refreshing, now);
    transition(&mut m, Refreshing, Leaving, &[leave(5)]);
    // The refresh reply is stale now.
    m.handle_reply(now, AttemptId(4), refreshed());
    assert_eq!(events(&mut m), vec![]);
    m.handle_reply(now, AttemptId(5), left());
    assert_eq!(actions(&mut m), vec![remove_self(6)]);
}

#[test]
fn shutdown_while_adding_self_removes_the_possibly_written_entry() {
    let mut m = shut_down_in(AddingSelf, at(1));
    transition(&mut m, AddingSelf, Leaving, &[leave(4)]);
    m.handle_reply(at(2), AttemptId(4), left());
    assert_eq!(actions(&mut m), vec![remove_self(5)]);
}

#[test]
fn shutdown_before_joining_stops_at_once() {
    let mut m = started(settings());
    m.shutdown(at(10));
    transition(&mut m, GettingNodes, Stopped, &[]);
    assert_eq!(m.poll_timeout(), None);
    // Late replies change nothing.
    m.handle_reply(at(20), AttemptId(1), nodes(empty(1)));
    m.handle_timeout(at(10) + COORDINATION_TIMEOUT);
    nothing(&mut m);
    assert_eq!(m.state(), Stopped);
}

#[test]
fn shutdown_while_locking_stops_at_once() {
    let (mut m, lock_action) = driven(settings(), Script::Seed, Locking);
    assert_eq!(lock_action, Some(lock(2)));
    m.shutdown(at(2));
    transition(&mut m, Locking, Stopped, &[]);
    m.handle_reply(at(3), AttemptId(2), acquired());
    assert_eq!(actions(&mut m), vec![]);
    assert_eq!(m.state(), Stopped);
}

#[test]
fn shutdown_while_waiting_for_nodes_stops_at_once() {
    let mut m = started(settings());
    m.handle_reply(at(1), AttemptId(1), nodes(empty(1)));
    m.handle_reply(at(2), AttemptId(2), held_by_other());
    events(&mut m);
    actions(&mut m);
    m.shutdown(at(3));
    transition(&mut m, WaitingForNodes, Stopped, &[]);
    assert_eq!(m.poll_timeout(), None);
    m.handle_reply(at(4), AttemptId(3), watch_fired());
    nothing(&mut m);
}

#[test]
fn shutdown_while_joining_leaves_without_removing() {
    let mut m = shut_down_in(Joining, at(100));
    transition(&mut m, Joining, Leaving, &[leave(3)]);
    // The join completing now is stale.
    m.handle_reply(at(150), AttemptId(2), joined());
    nothing(&mut m);

    m.handle_reply(at(200), AttemptId(3), left());
    transition(&mut m, Leaving, Stopped, &[]);
    assert_eq!(m.poll_timeout(), None);
}

#[test]
fn shutdown_while_resetting_keeps_the_pending_leave() {
    let (mut m, _) = driven(settings(), Script::Member, AddingSelf);
    m.handle_reply(at(1), AttemptId(3), refused());
    assert_eq!(actions(&mut m), vec![leave(4)]);
    events(&mut m);
    m.shutdown(at(2));
    transition(&mut m, Resetting, Leaving, &[]);
    m.handle_reply(at(3), AttemptId(4), left());
    transition(&mut m, Leaving, Stopped, &[]);
}

#[test]
fn unanswered_leave_goes_on_to_remove_self() {
    let mut m = leaving();
    m.handle_timeout(at(100) + COORDINATION_TIMEOUT);
    transition(&mut m, Leaving, RemovingSelf, &[remove_self(5)]);
}

#[test]
fn remove_self_failing_all_retries_still_stops() {
    let mut m = registered();
    m.shutdown(at(0));
    m.handle_reply(at(0), AttemptId(4), left());
    assert_eq!(actions(&mut m), vec![leave(4), remove_self(5)]);
    events(&mut m);
    let mut now = at(0);
    let retrying = retrying(RemovingSelf, unavailable_summary());
    for attempt in 5..7 {
        let failed = Reply::RemoveSelf(Err(unavailable()));
        m.handle_reply(now, AttemptId(attempt), failed);
        step(&mut m, vec![retrying.clone()], vec![]);
        now += RETRY_DELAY;
        m.handle_timeout(now);
        assert_eq!(actions(&mut m), vec![remove_self(attempt + 1)]);
    }
    m.handle_reply(now, AttemptId(7), Reply::RemoveSelf(Err(unavailable())));
    transition(&mut m, RemovingSelf, Stopped, &[]);
    assert_eq!(m.poll_timeout(), None);
    assert_eq!(m.failure(), None);
}

#[test]
fn remove_self_permanent_error_still_stops() {
    let mut m = registered();
    m.shutdown(at(0));
    m.handle_reply(at(0), AttemptId(4), left());
    events(&mut m);
    actions(&mut m);
    let denied = CoordinationError::permanent("denied");
    m.handle_reply(at(1), AttemptId(5), Reply::RemoveSelf(Err(denied)));
    assert_eq!(events(&mut m), vec![changed(RemovingSelf, Stopped)]);
    assert_eq!(m.failure(), None);
}

#[test]
fn shutdown_twice_is_a_no_op() {
    let mut m = leaving();
    m.shutdown(at(200));
    ignored(&mut m, Leaving, Some(at(100) + COORDINATION_TIMEOUT));

    // And after stopping.
    let mut m = started(settings());
    m.shutdown(at(1));
    events(&mut m);
    m.shutdown(at(2));
    nothing(&mut m);
}
