//! Fencing: a refused registration (the seed's lock was lost, or the epoch names another
//! cluster) makes the node leave and start over; it never registers with the old token.

mod common;

use common::*;
use constructr_core::{
    Action, AddMode, AddOutcome, AttemptId, Event, LockOutcome, LockToken, Reply, State,
};

#[test]
fn refused_seed_registration_leaves_and_starts_over() {
    let mut m = machine(settings());
    let add = drive(&mut m, t0(), Script::Seed, State::AddingSelf).expect("AddSelf");
    let old_cluster = m.cluster().expect("seeded cluster");
    assert_eq!(
        add,
        Action::AddSelf {
            attempt: AttemptId(5),
            ttl: ttl(),
            mode: AddMode::Seed {
                lock: token(),
                cluster: old_cluster,
                expected_epoch_version: None,
            },
        }
    );

    m.handle_reply(
        at(100),
        AttemptId(5),
        Reply::AddSelf(Ok(AddOutcome::Refused)),
    );
    assert_eq!(
        events(&mut m),
        vec![
            Event::SeedRefused,
            changed(State::AddingSelf, State::Resetting)
        ]
    );
    assert_eq!(actions(&mut m), vec![leave(6)]);
    assert_eq!(m.state(), State::Resetting);
    assert_eq!(m.cluster(), None);
    assert_eq!(m.poll_timeout(), Some(at(100) + COORDINATION_TIMEOUT));

    m.handle_reply(at(200), AttemptId(6), Reply::Left(Ok(())));
    expect_step(
        &mut m,
        vec![changed(State::Resetting, State::GettingNodes)],
        vec![get_nodes(7)],
        Some(at(200) + COORDINATION_TIMEOUT),
    );

    // The node that took the lock over registered: join it, as a member.
    m.handle_reply(
        at(300),
        AttemptId(7),
        Reply::Nodes(Ok(registry(&[node(2)], epoch(THEIR_CLUSTER, 8), 8))),
    );
    m.handle_reply(at(400), AttemptId(8), Reply::Joined(Ok(())));
    assert_eq!(
        actions(&mut m),
        vec![
            join(8, vec![node(2)]),
            Action::AddSelf {
                attempt: AttemptId(9),
                ttl: ttl(),
                mode: AddMode::Join {
                    cluster: Some(THEIR_CLUSTER),
                },
            },
        ]
    );
}

#[test]
fn after_a_refused_seed_a_new_seed_uses_the_new_lock_token() {
    let mut m = machine(settings());
    drive(&mut m, t0(), Script::Seed, State::AddingSelf);
    let old_cluster = m.cluster().expect("cluster");
    m.handle_reply(at(1), AttemptId(5), Reply::AddSelf(Ok(AddOutcome::Refused)));
    m.handle_reply(at(2), AttemptId(6), Reply::Left(Ok(())));
    // Still empty: lock again, with a new token this time.
    let new_token = LockToken("lock-2".into());
    m.handle_reply(at(3), AttemptId(7), Reply::Nodes(Ok(empty(10))));
    m.handle_reply(
        at(4),
        AttemptId(8),
        Reply::Lock(Ok(LockOutcome::Acquired(new_token.clone()))),
    );
    m.handle_reply(at(5), AttemptId(9), Reply::Nodes(Ok(empty(11))));
    m.handle_reply(at(6), AttemptId(10), Reply::Joined(Ok(())));
    let new_cluster = m.cluster().expect("new cluster");
    assert_ne!(new_cluster, old_cluster);
    assert_eq!(
        actions(&mut m),
        vec![
            leave(6),
            get_nodes(7),
            lock(8),
            get_nodes(9),
            join(10, vec![me()]),
            Action::AddSelf {
                attempt: AttemptId(11),
                ttl: ttl(),
                mode: AddMode::Seed {
                    lock: new_token,
                    cluster: new_cluster,
                    expected_epoch_version: None,
                },
            },
        ]
    );
}

#[test]
fn failed_leave_after_refusal_still_starts_over() {
    let mut m = machine(settings());
    drive(&mut m, t0(), Script::Seed, State::AddingSelf);
    m.handle_reply(at(1), AttemptId(5), Reply::AddSelf(Ok(AddOutcome::Refused)));
    events(&mut m);
    m.handle_reply(
        at(2),
        AttemptId(6),
        Reply::Left(Err(constructr_core::ClusterError::Leave {
            message: "boom".into(),
        })),
    );
    assert_eq!(
        events(&mut m),
        vec![changed(State::Resetting, State::GettingNodes)]
    );
    assert_eq!(actions(&mut m), vec![leave(6), get_nodes(7)]);
}

#[test]
fn unanswered_leave_after_refusal_starts_over_at_its_timeout() {
    let mut m = machine(settings());
    drive(&mut m, t0(), Script::Seed, State::AddingSelf);
    m.handle_reply(at(1), AttemptId(5), Reply::AddSelf(Ok(AddOutcome::Refused)));
    assert_eq!(actions(&mut m), vec![leave(6)]);
    events(&mut m);
    m.handle_timeout(at(1) + COORDINATION_TIMEOUT);
    assert_eq!(
        events(&mut m),
        vec![changed(State::Resetting, State::GettingNodes)]
    );
    assert_eq!(actions(&mut m), vec![get_nodes(7)]);
}

#[test]
fn seed_registration_retry_keeps_the_same_fence() {
    let mut m = machine(settings());
    let add = drive(&mut m, t0(), Script::Seed, State::AddingSelf).expect("AddSelf");
    let Action::AddSelf { mode, .. } = add else {
        panic!("AddSelf expected")
    };
    // The reply is lost: the request times out, and the retry repeats the same condition
    // (the backend accepts it again if the first write went through).
    m.handle_timeout(t0() + COORDINATION_TIMEOUT);
    assert_eq!(
        events(&mut m),
        vec![Event::Retrying {
            state: State::AddingSelf,
            error: timeout_summary(),
            retry_in: RETRY_DELAY,
        }]
    );
    assert_eq!(actions(&mut m), vec![]);
    m.handle_timeout(t0() + COORDINATION_TIMEOUT + RETRY_DELAY);
    assert_eq!(
        actions(&mut m),
        vec![Action::AddSelf {
            attempt: AttemptId(6),
            ttl: ttl(),
            mode,
        }]
    );
}

#[test]
fn refused_member_registration_also_resets() {
    let mut m = machine(settings());
    let add = drive(&mut m, t0(), Script::Member, State::AddingSelf).expect("AddSelf");
    assert_eq!(
        add,
        Action::AddSelf {
            attempt: AttemptId(3),
            ttl: ttl(),
            mode: AddMode::Join {
                cluster: Some(THEIR_CLUSTER),
            },
        }
    );
    m.handle_reply(
        at(100),
        AttemptId(3),
        Reply::AddSelf(Ok(AddOutcome::Refused)),
    );
    assert_eq!(
        events(&mut m),
        vec![changed(State::AddingSelf, State::Resetting)]
    );
    assert_eq!(actions(&mut m), vec![leave(4)]);
    assert_eq!(m.cluster(), None);
    m.handle_reply(at(200), AttemptId(4), Reply::Left(Ok(())));
    assert_eq!(
        events(&mut m),
        vec![changed(State::Resetting, State::GettingNodes)]
    );
    assert_eq!(actions(&mut m), vec![get_nodes(5)]);
}
