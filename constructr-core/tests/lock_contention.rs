//! Lock contention: losing the lock race means waiting for the winner's registration (watch
//! or `retry_delay`), and winning it means re-reading the nodes before seeding.

mod common;

use common::*;
use constructr_core::machine::Mutations;
use constructr_core::{Action, AttemptId, LockOutcome, Machine, Reply, State, WaitOutcome};

/// GetNodes{1} → empty (revision 4) → Lock{2} → held by another at `at(200)`.
fn lose_lock_race(settings: constructr_core::Settings) -> Machine {
    let mut m = started(settings);
    m.handle_reply(at(100), AttemptId(1), Reply::Nodes(Ok(empty(4))));
    assert_eq!(actions(&mut m), vec![lock(2)]);
    events(&mut m);
    m.handle_reply(
        at(200),
        AttemptId(2),
        Reply::Lock(Ok(LockOutcome::HeldByOther)),
    );
    m
}

#[test]
fn held_by_other_waits_for_a_change_with_watch() {
    let mut m = lose_lock_race(settings());
    expect_step(
        &mut m,
        vec![changed(State::Locking, State::WaitingForNodes)],
        vec![Action::WaitForChange {
            attempt: AttemptId(3),
            after: Some(4),
        }],
        Some(at(200) + RETRY_DELAY),
    );
}

#[test]
fn held_by_other_only_polls_without_watch() {
    let mut s = settings();
    s.watch = false;
    let mut m = lose_lock_race(s);
    expect_step(
        &mut m,
        vec![changed(State::Locking, State::WaitingForNodes)],
        vec![],
        Some(at(200) + RETRY_DELAY),
    );
}

#[test]
fn change_reply_rereads_the_nodes_at_once() {
    let mut m = lose_lock_race(settings());
    actions(&mut m);
    events(&mut m);
    m.handle_reply(
        at(300),
        AttemptId(3),
        Reply::Changed(Ok(WaitOutcome::Changed)),
    );
    expect_step(
        &mut m,
        vec![changed(State::WaitingForNodes, State::GettingNodes)],
        vec![get_nodes(4)],
        Some(at(300) + COORDINATION_TIMEOUT),
    );
}

#[test]
fn unsupported_watch_leaves_the_timer_in_charge() {
    let mut m = lose_lock_race(settings());
    actions(&mut m);
    events(&mut m);
    m.handle_reply(
        at(300),
        AttemptId(3),
        Reply::Changed(Ok(WaitOutcome::Unsupported)),
    );
    assert_eq!(events(&mut m), vec![]);
    assert_eq!(actions(&mut m), vec![]);
    assert_eq!(m.state(), State::WaitingForNodes);
    assert_eq!(m.poll_timeout(), Some(at(200) + RETRY_DELAY));
}

#[test]
fn failed_watch_leaves_the_timer_in_charge() {
    let mut m = lose_lock_race(settings());
    actions(&mut m);
    events(&mut m);
    m.handle_reply(at(300), AttemptId(3), Reply::Changed(Err(unavailable())));
    assert_eq!(events(&mut m), vec![]);
    assert_eq!(actions(&mut m), vec![]);
    assert_eq!(m.state(), State::WaitingForNodes);
    assert_eq!(m.poll_timeout(), Some(at(200) + RETRY_DELAY));
}

#[test]
fn wait_timer_rereads_the_nodes() {
    let mut s = settings();
    s.watch = false;
    let mut m = lose_lock_race(s);
    events(&mut m);

    // Early wake-up: nothing happens.
    m.handle_timeout(at(200) + RETRY_DELAY / 2);
    assert_eq!(events(&mut m), vec![]);
    assert_eq!(actions(&mut m), vec![]);

    let due = at(200) + RETRY_DELAY;
    m.handle_timeout(due);
    expect_step(
        &mut m,
        vec![changed(State::WaitingForNodes, State::GettingNodes)],
        vec![get_nodes(3)],
        Some(due + COORDINATION_TIMEOUT),
    );
}

#[test]
fn change_reply_after_the_timer_fired_is_ignored() {
    let mut m = lose_lock_race(settings());
    actions(&mut m);
    events(&mut m);
    let due = at(200) + RETRY_DELAY;
    m.handle_timeout(due);
    assert_eq!(actions(&mut m), vec![get_nodes(4)]);
    events(&mut m);

    m.handle_reply(due, AttemptId(3), Reply::Changed(Ok(WaitOutcome::Changed)));
    assert_eq!(events(&mut m), vec![]);
    assert_eq!(actions(&mut m), vec![]);
    assert_eq!(m.state(), State::GettingNodes);
    assert_eq!(m.poll_timeout(), Some(due + COORDINATION_TIMEOUT));
}

#[test]
fn change_reply_with_a_stale_attempt_is_ignored_in_a_later_wait() {
    let mut m = lose_lock_race(settings());
    actions(&mut m);
    let due = at(200) + RETRY_DELAY;
    m.handle_timeout(due);
    // Second round: still empty, still held by the other node.
    m.handle_reply(due, AttemptId(4), Reply::Nodes(Ok(empty(6))));
    m.handle_reply(due, AttemptId(5), Reply::Lock(Ok(LockOutcome::HeldByOther)));
    assert_eq!(
        actions(&mut m),
        vec![
            get_nodes(4),
            lock(5),
            Action::WaitForChange {
                attempt: AttemptId(6),
                after: Some(6),
            },
        ]
    );
    events(&mut m);

    // The first round's watch answers late.
    m.handle_reply(due, AttemptId(3), Reply::Changed(Ok(WaitOutcome::Changed)));
    assert_eq!(events(&mut m), vec![]);
    assert_eq!(actions(&mut m), vec![]);
    assert_eq!(m.state(), State::WaitingForNodes);
    assert_eq!(m.poll_timeout(), Some(due + RETRY_DELAY));

    // The current one is accepted.
    m.handle_reply(due, AttemptId(6), Reply::Changed(Ok(WaitOutcome::Changed)));
    assert_eq!(
        events(&mut m),
        vec![changed(State::WaitingForNodes, State::GettingNodes)]
    );
    assert_eq!(actions(&mut m), vec![get_nodes(7)]);
}

#[test]
fn waiting_node_joins_the_winner_once_it_registered() {
    let mut m = lose_lock_race(settings());
    actions(&mut m);
    m.handle_reply(
        at(300),
        AttemptId(3),
        Reply::Changed(Ok(WaitOutcome::Changed)),
    );
    events(&mut m);
    m.handle_reply(
        at(400),
        AttemptId(4),
        Reply::Nodes(Ok(registry(&[node(2)], epoch(THEIR_CLUSTER, 7), 7))),
    );
    assert_eq!(
        events(&mut m),
        vec![changed(State::GettingNodes, State::Joining)]
    );
    assert_eq!(actions(&mut m), vec![get_nodes(4), join(5, vec![node(2)])]);
}

/// Runs the "lock won, but someone registered meanwhile" script: the registry is empty at
/// the first read, `node(2)` registers, then this node's lock request succeeds (the other
/// node's lock expired or it registered without needing it). Answers every `GetNodes` with
/// the registry as it is then and returns all actions from the lock reply on.
fn lock_won_after_registry_filled(mutations: Mutations) -> Vec<Action> {
    let mut m = started(settings());
    m.set_mutations(mutations);
    m.handle_reply(at(100), AttemptId(1), Reply::Nodes(Ok(empty(4))));
    assert_eq!(actions(&mut m), vec![lock(2)]);
    // Meanwhile node(2) registered.
    let now_registry = registry(&[node(2)], epoch(THEIR_CLUSTER, 6), 6);
    m.handle_reply(
        at(200),
        AttemptId(2),
        Reply::Lock(Ok(LockOutcome::Acquired(token()))),
    );
    let mut out = Vec::new();
    let mut queue = actions(&mut m);
    while !queue.is_empty() {
        let a = queue.remove(0);
        out.push(a.clone());
        if let Action::GetNodes { attempt } = a {
            m.handle_reply(at(300), attempt, Reply::Nodes(Ok(now_registry.clone())));
            queue.extend(actions(&mut m));
        }
    }
    out
}

#[test]
fn lock_acquired_rereads_and_joins_nodes_that_appeared() {
    assert_eq!(
        lock_won_after_registry_filled(Mutations::default()),
        vec![get_nodes(3), join(4, vec![node(2)])]
    );
}

#[test]
fn without_the_reread_the_same_script_seeds_a_second_cluster() {
    // The mutation shows the test above depends on the re-read: without it this node seeds.
    assert_eq!(
        lock_won_after_registry_filled(Mutations {
            skip_reread_after_lock: true,
        }),
        vec![join(3, vec![me()])]
    );
}

#[test]
fn lock_acquired_and_reread_nonempty_transitions_to_joining() {
    let mut m = started(settings());
    m.handle_reply(at(100), AttemptId(1), Reply::Nodes(Ok(empty(4))));
    m.handle_reply(
        at(200),
        AttemptId(2),
        Reply::Lock(Ok(LockOutcome::Acquired(token()))),
    );
    events(&mut m);
    actions(&mut m);
    m.handle_reply(
        at(300),
        AttemptId(3),
        Reply::Nodes(Ok(registry(&[node(2)], epoch(THEIR_CLUSTER, 6), 6))),
    );
    assert_eq!(
        events(&mut m),
        vec![changed(State::VerifyingEmpty, State::Joining)]
    );
    assert_eq!(actions(&mut m), vec![join(4, vec![node(2)])]);
    assert_eq!(m.cluster(), Some(THEIR_CLUSTER));
    m.handle_reply(at(400), AttemptId(4), Reply::Joined(Ok(())));
    assert_eq!(
        actions(&mut m),
        vec![Action::AddSelf {
            attempt: AttemptId(5),
            ttl: ttl(),
            mode: constructr_core::AddMode::Join {
                cluster: Some(THEIR_CLUSTER),
            },
        }]
    );
}

#[test]
fn join_only_node_never_locks_it_waits_watching_then_joins() {
    let mut s = settings();
    s.new_cluster_enabled = false;
    let mut m = started(s);
    let mut now = at(0);
    let mut attempt = 1;
    // An empty registry, again and again: the node waits, watching, and never takes the lock.
    for _ in 0..5 {
        m.handle_reply(now, AttemptId(attempt), Reply::Nodes(Ok(empty(3))));
        assert_eq!(m.state(), State::WaitingForNodes);
        let acts = actions(&mut m);
        assert!(
            matches!(
                acts.as_slice(),
                [Action::WaitForChange { after: Some(3), .. }]
            ),
            "{acts:?}"
        );
        assert_eq!(m.poll_timeout(), Some(now + RETRY_DELAY));
        now += RETRY_DELAY;
        m.handle_timeout(now);
        let get = single(&mut m);
        assert!(matches!(get, Action::GetNodes { .. }), "{get:?}");
        attempt = get.attempt().0;
    }
    assert_eq!(m.failure(), None);
    // A node registered: join it.
    m.handle_reply(
        now,
        AttemptId(attempt),
        Reply::Nodes(Ok(registry(&[node(2)], epoch(THEIR_CLUSTER, 4), 4))),
    );
    assert_eq!(m.state(), State::Joining);
    assert_eq!(m.cluster(), Some(THEIR_CLUSTER));
}
