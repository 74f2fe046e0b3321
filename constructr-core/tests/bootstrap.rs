//! Bootstrap: seeding a new cluster on an empty registry, joining a non-empty one, and the
//! refresh loop that follows.

mod common;

use std::time::Duration;

use common::*;
use constructr_core::{
    Action, AddMode, AddOutcome, AttemptId, ClusterId, LockOutcome, RefreshOutcome, Reply, State,
};

const OLD_CLUSTER: ClusterId = ClusterId(0x01D);

#[test]
fn new_machine_reads_the_nodes_first() {
    let mut m = machine(settings());
    assert_eq!(m.state(), State::GettingNodes);
    assert_eq!(actions(&mut m), vec![get_nodes(1)]);
    assert_eq!(events(&mut m), vec![]);
    assert_eq!(m.poll_timeout(), Some(t0() + COORDINATION_TIMEOUT));
    assert_eq!(m.cluster(), None);
}

#[test]
fn empty_registry_seeds_after_lock_and_reread_then_refreshes() {
    let mut m = started(settings());

    // Empty (a marker of an old, dead cluster is left): take the lock.
    m.handle_reply(
        at(100),
        AttemptId(1),
        Reply::Nodes(Ok(registry(&[], epoch(OLD_CLUSTER, 4), 4))),
    );
    expect_step(
        &mut m,
        vec![changed(State::GettingNodes, State::Locking)],
        vec![Action::Lock {
            attempt: AttemptId(2),
            ttl: settings().lock_ttl(),
        }],
        Some(at(100) + COORDINATION_TIMEOUT),
    );

    // Acquired: re-read before seeding.
    m.handle_reply(
        at(200),
        AttemptId(2),
        Reply::Lock(Ok(LockOutcome::Acquired(token()))),
    );
    expect_step(
        &mut m,
        vec![changed(State::Locking, State::VerifyingEmpty)],
        vec![get_nodes(3)],
        Some(at(200) + COORDINATION_TIMEOUT),
    );

    // Still empty (the marker moved on meanwhile): join self.
    m.handle_reply(
        at(300),
        AttemptId(3),
        Reply::Nodes(Ok(registry(&[], epoch(OLD_CLUSTER, 9), 9))),
    );
    expect_step(
        &mut m,
        vec![changed(State::VerifyingEmpty, State::Joining)],
        vec![join(4, vec![me()])],
        Some(at(300) + JOIN_TIMEOUT),
    );
    let cluster = m.cluster().expect("a seeding node knows its new cluster");
    assert_ne!(cluster, OLD_CLUSTER);

    // Member of its own cluster: the fenced registration, expecting the re-read's marker.
    m.handle_reply(at(400), AttemptId(4), Reply::Joined(Ok(())));
    expect_step(
        &mut m,
        vec![changed(State::Joining, State::AddingSelf)],
        vec![Action::AddSelf {
            attempt: AttemptId(5),
            ttl: ttl(),
            mode: AddMode::Seed {
                lock: token(),
                cluster,
                expected_epoch_version: Some(9),
            },
        }],
        Some(at(400) + COORDINATION_TIMEOUT),
    );

    m.handle_reply(at(500), AttemptId(5), Reply::AddSelf(Ok(AddOutcome::Added)));
    assert_eq!(
        events(&mut m),
        vec![changed(State::AddingSelf, State::RefreshScheduled)]
    );
    assert_eq!(actions(&mut m), vec![]);
    let due = at(500) + REFRESH_INTERVAL;
    assert_eq!(m.poll_timeout(), Some(due));
    assert!(m.state().is_registered());

    m.handle_timeout(due);
    expect_step(
        &mut m,
        vec![changed(State::RefreshScheduled, State::Refreshing)],
        vec![refresh(6)],
        Some(due + COORDINATION_TIMEOUT),
    );

    let later = due + Duration::from_millis(100);
    m.handle_reply(
        later,
        AttemptId(6),
        Reply::Refresh(Ok(RefreshOutcome::Refreshed)),
    );
    expect_step(
        &mut m,
        vec![changed(State::Refreshing, State::RefreshScheduled)],
        vec![],
        Some(later + REFRESH_INTERVAL),
    );
    assert_eq!(m.cluster(), Some(cluster));
}

#[test]
fn seed_without_any_epoch_marker_expects_none() {
    let mut m = started(settings());
    m.handle_reply(at(1), AttemptId(1), Reply::Nodes(Ok(empty(0))));
    m.handle_reply(
        at(2),
        AttemptId(2),
        Reply::Lock(Ok(LockOutcome::Acquired(token()))),
    );
    m.handle_reply(at(3), AttemptId(3), Reply::Nodes(Ok(empty(1))));
    m.handle_reply(at(4), AttemptId(4), Reply::Joined(Ok(())));
    let cluster = m.cluster().expect("cluster");
    assert_eq!(
        actions(&mut m),
        vec![
            lock(2),
            get_nodes(3),
            join(4, vec![me()]),
            Action::AddSelf {
                attempt: AttemptId(5),
                ttl: ttl(),
                mode: AddMode::Seed {
                    lock: token(),
                    cluster,
                    expected_epoch_version: None,
                },
            },
        ]
    );
}

#[test]
fn non_empty_registry_joins_the_others_without_own_stale_entry() {
    let mut m = started(settings());

    m.handle_reply(
        at(100),
        AttemptId(1),
        Reply::Nodes(Ok(registry(
            &[node(2), my_stale_entry(), node(3)],
            epoch(THEIR_CLUSTER, 5),
            5,
        ))),
    );
    expect_step(
        &mut m,
        vec![changed(State::GettingNodes, State::Joining)],
        vec![join(2, vec![node(2), node(3)])],
        Some(at(100) + JOIN_TIMEOUT),
    );
    assert_eq!(m.cluster(), Some(THEIR_CLUSTER));

    m.handle_reply(at(200), AttemptId(2), Reply::Joined(Ok(())));
    assert_eq!(
        events(&mut m),
        vec![changed(State::Joining, State::AddingSelf)]
    );
    assert_eq!(
        actions(&mut m),
        vec![Action::AddSelf {
            attempt: AttemptId(3),
            ttl: ttl(),
            mode: AddMode::Join {
                cluster: Some(THEIR_CLUSTER),
            },
        }]
    );

    m.handle_reply(at(300), AttemptId(3), Reply::AddSelf(Ok(AddOutcome::Added)));
    expect_step(
        &mut m,
        vec![changed(State::AddingSelf, State::RefreshScheduled)],
        vec![],
        Some(at(300) + REFRESH_INTERVAL),
    );
}

#[test]
fn registry_with_only_own_stale_entry_counts_as_empty() {
    let mut m = started(settings());
    m.handle_reply(
        at(100),
        AttemptId(1),
        Reply::Nodes(Ok(registry(&[my_stale_entry()], epoch(OLD_CLUSTER, 3), 3))),
    );
    assert_eq!(
        events(&mut m),
        vec![changed(State::GettingNodes, State::Locking)]
    );
    assert_eq!(actions(&mut m), vec![lock(2)]);
}

#[test]
fn registry_without_epoch_marker_joins_with_no_cluster() {
    let mut m = started(settings());
    m.handle_reply(
        at(1),
        AttemptId(1),
        Reply::Nodes(Ok(registry(&[node(2)], None, 2))),
    );
    m.handle_reply(at(2), AttemptId(2), Reply::Joined(Ok(())));
    assert_eq!(
        actions(&mut m),
        vec![
            join(2, vec![node(2)]),
            Action::AddSelf {
                attempt: AttemptId(3),
                ttl: ttl(),
                mode: AddMode::Join { cluster: None },
            },
        ]
    );
    assert_eq!(m.cluster(), None);
}

#[test]
fn same_seed_and_inputs_give_the_same_outputs() {
    let run = || {
        let mut m = machine(settings());
        drive(&mut m, t0(), Script::Seed, State::RefreshScheduled);
        m.cluster()
    };
    assert_eq!(run(), run());
}
