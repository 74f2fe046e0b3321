//! Lock contention: losing the lock race means waiting for the winner's registration (watch
//! or `retry_delay`), and winning it means re-reading the nodes before seeding.

mod common;

use common::*;
use constructr_core::State::*;
use constructr_core::machine::Mutations;
use constructr_core::{Action, AttemptId, Machine, Reply, Settings, WaitOutcome};

/// GetNodes{1} → empty (revision 4) → Lock{2} → held by another at `at(200)`.
fn lose_lock_race(settings: Settings) -> Machine {
    let mut m = started(settings);
    m.handle_reply(at(100), AttemptId(1), nodes(empty(4)));
    assert_eq!(actions(&mut m), vec![lock(2)]);
    events(&mut m);
    m.handle_reply(at(200), AttemptId(2), held_by_other());
    m
}

/// [`lose_lock_race`] with the watch `WaitForChange { 3 }` and the events drained.
fn watching() -> Machine {
    let mut m = lose_lock_race(settings());
    actions(&mut m);
    events(&mut m);
    m
}

fn without_watch() -> Settings {
    let mut s = settings();
    s.watch = false;
    s
}

#[test]
fn held_by_other_waits_for_a_change_with_watch() {
    let mut m = lose_lock_race(settings());
    transition(&mut m, Locking, WaitingForNodes, &[wait_for_change(3, 4)]);
    assert_eq!(m.poll_timeout(), Some(at(200) + RETRY_DELAY));
}

#[test]
fn held_by_other_only_polls_without_watch() {
    let mut m = lose_lock_race(without_watch());
    transition(&mut m, Locking, WaitingForNodes, &[]);
    assert_eq!(m.poll_timeout(), Some(at(200) + RETRY_DELAY));
}

#[test]
fn change_reply_rereads_the_nodes_at_once() {
    let mut m = watching();
    m.handle_reply(at(300), AttemptId(3), watch_fired());
    transition(&mut m, WaitingForNodes, GettingNodes, &[get_nodes(4)]);
    assert_eq!(m.poll_timeout(), Some(at(300) + COORDINATION_TIMEOUT));
}

#[test]
fn unsupported_or_failed_watch_leaves_the_timer_in_charge() {
    let cases = [
        ("unsupported", Reply::Changed(Ok(WaitOutcome::Unsupported))),
        ("failed", Reply::Changed(Err(unavailable()))),
    ];
    for (case, reply) in cases {
        let mut m = watching();
        m.handle_reply(at(300), AttemptId(3), reply);
        assert_eq!(events(&mut m), vec![], "{case}: events");
        assert_eq!(actions(&mut m), vec![], "{case}: actions");
        assert_eq!(m.state(), WaitingForNodes, "{case}: state");
        let timer = Some(at(200) + RETRY_DELAY);
        assert_eq!(m.poll_timeout(), timer, "{case}: poll_timeout");
    }
}

#[test]
fn wait_timer_rereads_the_nodes() {
    let mut m = lose_lock_race(without_watch());
    events(&mut m);

    // Early wake-up: nothing happens.
    m.handle_timeout(at(200) + RETRY_DELAY / 2);
    nothing(&mut m);

    let due = at(200) + RETRY_DELAY;
    m.handle_timeout(due);
    transition(&mut m, WaitingForNodes, GettingNodes, &[get_nodes(3)]);
    assert_eq!(m.poll_timeout(), Some(due + COORDINATION_TIMEOUT));
}

#[test]
fn change_reply_after_the_timer_fired_is_ignored() {
    let mut m = watching();
    let due = at(200) + RETRY_DELAY;
    m.handle_timeout(due);
    assert_eq!(actions(&mut m), vec![get_nodes(4)]);
    events(&mut m);

    m.handle_reply(due, AttemptId(3), watch_fired());
    ignored(&mut m, GettingNodes, Some(due + COORDINATION_TIMEOUT));
}

#[test]
fn change_reply_with_a_stale_attempt_is_ignored_in_a_later_wait() {
    let mut m = lose_lock_race(settings());
    actions(&mut m);
    let due = at(200) + RETRY_DELAY;
    m.handle_timeout(due);
    // Second round: still empty, still held by the other node.
    m.handle_reply(due, AttemptId(4), nodes(empty(6)));
    m.handle_reply(due, AttemptId(5), held_by_other());
    let second_round = vec![get_nodes(4), lock(5), wait_for_change(6, 6)];
    assert_eq!(actions(&mut m), second_round);
    events(&mut m);

    // The first round's watch answers late.
    m.handle_reply(due, AttemptId(3), watch_fired());
    ignored(&mut m, WaitingForNodes, Some(due + RETRY_DELAY));

    // The current one is accepted.
    m.handle_reply(due, AttemptId(6), watch_fired());
    transition(&mut m, WaitingForNodes, GettingNodes, &[get_nodes(7)]);
}

#[test]
fn waiting_node_joins_the_winner_once_it_registered() {
    let mut m = lose_lock_race(settings());
    actions(&mut m);
    m.handle_reply(at(300), AttemptId(3), watch_fired());
    events(&mut m);
    m.handle_reply(at(400), AttemptId(4), nodes(theirs(&[node(2)], 7)));
    let reread_and_join = [get_nodes(4), join(5, vec![node(2)])];
    transition(&mut m, GettingNodes, Joining, &reread_and_join);
}

/// Runs the "lock won, but someone registered meanwhile" script: the registry is empty at
/// the first read, `node(2)` registers, then this node's lock request succeeds (the other
/// node's lock expired or it registered without needing it). Answers every `GetNodes` with
/// the registry as it is then and returns all actions from the lock reply on.
fn lock_won_after_registry_filled(mutations: Mutations) -> Vec<Action> {
    let mut m = started(settings());
    m.set_mutations(mutations);
    m.handle_reply(at(100), AttemptId(1), nodes(empty(4)));
    assert_eq!(actions(&mut m), vec![lock(2)]);
    // Meanwhile node(2) registered.
    let now_registry = theirs(&[node(2)], 6);
    m.handle_reply(at(200), AttemptId(2), acquired());
    let mut out = Vec::new();
    let mut queue = actions(&mut m);
    while !queue.is_empty() {
        let a = queue.remove(0);
        out.push(a.clone());
        if let Action::GetNodes { attempt, .. } = a {
            m.handle_reply(at(300), attempt, nodes(now_registry.clone()));
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
    // The mutation shows the test above depends on the re-read: without it this node writes
    // the registration of a new cluster.
    let actions = lock_won_after_registry_filled(Mutations {
        skip_reread_after_lock: true,
        ..Mutations::default()
    });
    assert!(
        matches!(
            actions.as_slice(),
            [Action::AddSelf {
                mode: constructr_core::coordination::AddMode::Seed { .. },
                ..
            }]
        ),
        "{actions:?}"
    );
}

#[test]
fn lock_acquired_and_reread_nonempty_transitions_to_joining() {
    let (mut m, reread) = driven(settings(), Script::Seed, VerifyingEmpty);
    assert_eq!(reread, Some(get_nodes(3)));
    m.handle_reply(at(300), AttemptId(3), nodes(theirs(&[node(2)], 6)));
    transition(&mut m, VerifyingEmpty, Joining, &[join(4, vec![node(2)])]);
    assert_eq!(m.cluster(), Some(THEIR_CLUSTER));
    m.handle_reply(at(400), AttemptId(4), joined());
    let registration = add_member(5, Some(THEIR_CLUSTER));
    assert_eq!(actions(&mut m), vec![registration]);
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
        m.handle_reply(now, AttemptId(attempt), nodes(empty(3)));
        assert_eq!(m.state(), WaitingForNodes);
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
    m.handle_reply(now, AttemptId(attempt), nodes(theirs(&[node(2)], 4)));
    assert_eq!(m.state(), Joining);
    assert_eq!(m.cluster(), Some(THEIR_CLUSTER));
}

/// A read that shows the lock held by another node: no lock request (no lease for nothing),
/// the node waits for the holder's registration at once, watching from the read.
#[test]
fn a_lock_read_as_held_by_another_is_not_asked_for() {
    let mut m = started(settings());
    let mut read = empty(4);
    read.lock = Some(node(2));
    m.handle_reply(at(100), AttemptId(1), nodes(read));
    transition(
        &mut m,
        GettingNodes,
        WaitingForNodes,
        &[wait_for_change(2, 4)],
    );
    assert_eq!(m.poll_timeout(), Some(at(100) + RETRY_DELAY));
}

/// A read that shows the lock held by this very node (a restart that kept its identity):
/// it asks for the lock, which is re-entrant.
#[test]
fn a_lock_read_as_held_by_this_node_is_asked_for() {
    let mut m = started(settings());
    let mut read = empty(4);
    read.lock = Some(me());
    m.handle_reply(at(100), AttemptId(1), nodes(read));
    assert_eq!(actions(&mut m), vec![lock(2)]);
}
