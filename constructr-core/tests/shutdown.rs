//! Graceful shutdown: leave the cluster, remove this node's entry, stop.

mod common;

use common::*;
use constructr_core::{AttemptId, Event, LockOutcome, Machine, Reply, State, WaitOutcome};

fn registered() -> Machine {
    let mut m = machine(settings());
    drive(&mut m, t0(), Script::Member, State::RefreshScheduled);
    m
}

#[test]
fn registered_node_leaves_removes_its_entry_and_stops() {
    let mut m = registered();
    m.shutdown(at(100));
    expect_step(
        &mut m,
        vec![changed(State::RefreshScheduled, State::Leaving)],
        vec![leave(4)],
        Some(at(100) + COORDINATION_TIMEOUT),
    );

    m.handle_reply(at(200), AttemptId(4), Reply::Left(Ok(())));
    expect_step(
        &mut m,
        vec![changed(State::Leaving, State::RemovingSelf)],
        vec![remove_self(5)],
        Some(at(200) + COORDINATION_TIMEOUT),
    );

    m.handle_reply(at(300), AttemptId(5), Reply::RemoveSelf(Ok(())));
    expect_step(
        &mut m,
        vec![changed(State::RemovingSelf, State::Stopped)],
        vec![],
        None,
    );
    assert!(m.state().is_terminal());
    assert_eq!(m.failure(), None);
}

#[test]
fn shutdown_while_refreshing_leaves_and_removes() {
    let mut m = machine(settings());
    drive(&mut m, t0(), Script::Member, State::Refreshing);
    let now = t0() + REFRESH_INTERVAL;
    m.shutdown(now);
    assert_eq!(
        events(&mut m),
        vec![changed(State::Refreshing, State::Leaving)]
    );
    assert_eq!(actions(&mut m), vec![leave(5)]);
    // The refresh reply is stale now.
    m.handle_reply(
        now,
        AttemptId(4),
        Reply::Refresh(Ok(constructr_core::RefreshOutcome::Refreshed)),
    );
    assert_eq!(events(&mut m), vec![]);
    m.handle_reply(now, AttemptId(5), Reply::Left(Ok(())));
    assert_eq!(actions(&mut m), vec![remove_self(6)]);
}

#[test]
fn shutdown_while_adding_self_removes_the_possibly_written_entry() {
    let mut m = machine(settings());
    drive(&mut m, t0(), Script::Member, State::AddingSelf);
    m.shutdown(at(1));
    assert_eq!(
        events(&mut m),
        vec![changed(State::AddingSelf, State::Leaving)]
    );
    assert_eq!(actions(&mut m), vec![leave(4)]);
    m.handle_reply(at(2), AttemptId(4), Reply::Left(Ok(())));
    assert_eq!(actions(&mut m), vec![remove_self(5)]);
}

#[test]
fn shutdown_before_joining_stops_at_once() {
    let mut m = started(settings());
    m.shutdown(at(10));
    expect_step(
        &mut m,
        vec![changed(State::GettingNodes, State::Stopped)],
        vec![],
        None,
    );
    // Late replies change nothing.
    m.handle_reply(at(20), AttemptId(1), Reply::Nodes(Ok(empty(1))));
    m.handle_timeout(at(10) + COORDINATION_TIMEOUT);
    assert_eq!(events(&mut m), vec![]);
    assert_eq!(actions(&mut m), vec![]);
    assert_eq!(m.state(), State::Stopped);
}

#[test]
fn shutdown_while_locking_stops_at_once() {
    let mut m = started(settings());
    m.handle_reply(at(1), AttemptId(1), Reply::Nodes(Ok(empty(1))));
    events(&mut m);
    actions(&mut m);
    m.shutdown(at(2));
    assert_eq!(
        events(&mut m),
        vec![changed(State::Locking, State::Stopped)]
    );
    assert_eq!(actions(&mut m), vec![]);
    m.handle_reply(
        at(3),
        AttemptId(2),
        Reply::Lock(Ok(LockOutcome::Acquired(token()))),
    );
    assert_eq!(actions(&mut m), vec![]);
    assert_eq!(m.state(), State::Stopped);
}

#[test]
fn shutdown_while_waiting_for_nodes_stops_at_once() {
    let mut m = started(settings());
    m.handle_reply(at(1), AttemptId(1), Reply::Nodes(Ok(empty(1))));
    m.handle_reply(
        at(2),
        AttemptId(2),
        Reply::Lock(Ok(LockOutcome::HeldByOther)),
    );
    events(&mut m);
    actions(&mut m);
    m.shutdown(at(3));
    expect_step(
        &mut m,
        vec![changed(State::WaitingForNodes, State::Stopped)],
        vec![],
        None,
    );
    m.handle_reply(
        at(4),
        AttemptId(3),
        Reply::Changed(Ok(WaitOutcome::Changed)),
    );
    assert_eq!(events(&mut m), vec![]);
    assert_eq!(actions(&mut m), vec![]);
}

#[test]
fn shutdown_while_joining_leaves_without_removing() {
    let mut m = machine(settings());
    drive(&mut m, t0(), Script::Member, State::Joining);
    m.shutdown(at(100));
    assert_eq!(
        events(&mut m),
        vec![changed(State::Joining, State::Leaving)]
    );
    assert_eq!(actions(&mut m), vec![leave(3)]);
    // The join completing now is stale.
    m.handle_reply(at(150), AttemptId(2), Reply::Joined(Ok(())));
    assert_eq!(events(&mut m), vec![]);
    assert_eq!(actions(&mut m), vec![]);

    m.handle_reply(at(200), AttemptId(3), Reply::Left(Ok(())));
    expect_step(
        &mut m,
        vec![changed(State::Leaving, State::Stopped)],
        vec![],
        None,
    );
}

#[test]
fn shutdown_while_resetting_keeps_the_pending_leave() {
    let mut m = machine(settings());
    drive(&mut m, t0(), Script::Member, State::AddingSelf);
    m.handle_reply(
        at(1),
        AttemptId(3),
        Reply::AddSelf(Ok(constructr_core::AddOutcome::Refused)),
    );
    assert_eq!(actions(&mut m), vec![leave(4)]);
    events(&mut m);
    m.shutdown(at(2));
    assert_eq!(
        events(&mut m),
        vec![changed(State::Resetting, State::Leaving)]
    );
    assert_eq!(actions(&mut m), vec![]);
    m.handle_reply(at(3), AttemptId(4), Reply::Left(Ok(())));
    assert_eq!(
        events(&mut m),
        vec![changed(State::Leaving, State::Stopped)]
    );
    assert_eq!(actions(&mut m), vec![]);
}

#[test]
fn unanswered_leave_goes_on_to_remove_self() {
    let mut m = registered();
    m.shutdown(at(100));
    assert_eq!(actions(&mut m), vec![leave(4)]);
    events(&mut m);
    m.handle_timeout(at(100) + COORDINATION_TIMEOUT);
    assert_eq!(
        events(&mut m),
        vec![changed(State::Leaving, State::RemovingSelf)]
    );
    assert_eq!(actions(&mut m), vec![remove_self(5)]);
}

#[test]
fn remove_self_failing_all_retries_still_stops() {
    let mut m = registered();
    m.shutdown(at(0));
    m.handle_reply(at(0), AttemptId(4), Reply::Left(Ok(())));
    assert_eq!(actions(&mut m), vec![leave(4), remove_self(5)]);
    events(&mut m);
    let mut now = at(0);
    for attempt in 5..7 {
        m.handle_reply(
            now,
            AttemptId(attempt),
            Reply::RemoveSelf(Err(unavailable())),
        );
        assert_eq!(
            events(&mut m),
            vec![Event::Retrying {
                state: State::RemovingSelf,
                error: unavailable_summary(),
                retry_in: RETRY_DELAY,
            }]
        );
        assert_eq!(actions(&mut m), vec![]);
        now += RETRY_DELAY;
        m.handle_timeout(now);
        assert_eq!(actions(&mut m), vec![remove_self(attempt + 1)]);
    }
    m.handle_reply(now, AttemptId(7), Reply::RemoveSelf(Err(unavailable())));
    expect_step(
        &mut m,
        vec![changed(State::RemovingSelf, State::Stopped)],
        vec![],
        None,
    );
    assert_eq!(m.failure(), None);
}

#[test]
fn remove_self_permanent_error_still_stops() {
    let mut m = registered();
    m.shutdown(at(0));
    m.handle_reply(at(0), AttemptId(4), Reply::Left(Ok(())));
    events(&mut m);
    actions(&mut m);
    m.handle_reply(
        at(1),
        AttemptId(5),
        Reply::RemoveSelf(Err(constructr_core::CoordinationError::permanent("denied"))),
    );
    assert_eq!(
        events(&mut m),
        vec![changed(State::RemovingSelf, State::Stopped)]
    );
    assert_eq!(m.failure(), None);
}

#[test]
fn shutdown_twice_is_a_no_op() {
    let mut m = registered();
    m.shutdown(at(100));
    assert_eq!(actions(&mut m), vec![leave(4)]);
    events(&mut m);
    m.shutdown(at(200));
    assert_eq!(events(&mut m), vec![]);
    assert_eq!(actions(&mut m), vec![]);
    assert_eq!(m.state(), State::Leaving);
    assert_eq!(m.poll_timeout(), Some(at(100) + COORDINATION_TIMEOUT));

    // And after stopping.
    let mut m = started(settings());
    m.shutdown(at(1));
    events(&mut m);
    m.shutdown(at(2));
    assert_eq!(events(&mut m), vec![]);
    assert_eq!(actions(&mut m), vec![]);
}
