//! Fencing: a refused registration (the seed's lock was lost, or the epoch names another
//! cluster) makes the node leave and start over; it never registers with the old token.

mod common;

use common::*;
use constructr_core::State::*;
use constructr_core::{
    Action, AttemptId, ClusterError, ClusterId, Event, LockOutcome, LockToken, Machine, Reply,
};

#[test]
fn refused_seed_registration_leaves_and_starts_over() {
    let mut m = machine(settings());
    let add = drive(&mut m, t0(), Script::Seed, AddingSelf);
    let old_cluster = m.cluster().expect("seeded cluster");
    assert_eq!(add, Some(add_seed(4, token(), old_cluster, None)));

    // Refused before the seed formed anything: it leaves (a no-op for the runtime) and
    // starts over.
    m.handle_reply(at(100), AttemptId(4), refused());
    step(
        &mut m,
        vec![Event::SeedRefused, changed(AddingSelf, Resetting)],
        vec![leave(5)],
    );
    assert_eq!(m.state(), Resetting);
    assert_eq!(m.cluster(), None);
    assert_eq!(m.poll_timeout(), Some(at(100) + COORDINATION_TIMEOUT));

    m.handle_reply(at(200), AttemptId(5), left());
    transition(&mut m, Resetting, GettingNodes, &[get_nodes(6)]);
    assert_eq!(m.poll_timeout(), Some(at(200) + COORDINATION_TIMEOUT));

    // The node that took the lock over registered: join it, as a member.
    m.handle_reply(at(300), AttemptId(6), nodes(theirs(&[node(2)], 8)));
    m.handle_reply(at(400), AttemptId(7), joined());
    assert_eq!(
        actions(&mut m),
        vec![join(7, vec![node(2)]), add_member(8, Some(THEIR_CLUSTER))]
    );
}

/// A seed whose registration `AddSelf { 4 }` was refused at `at(1)`: in `Resetting`, with
/// `LeaveCluster { 5 }` queued (events drained); and the cluster it meant to seed.
fn refused_seed() -> (Machine, ClusterId) {
    let (mut m, _) = driven(settings(), Script::Seed, AddingSelf);
    let seeded = m.cluster().expect("seeded cluster");
    m.handle_reply(at(1), AttemptId(4), refused());
    events(&mut m);
    (m, seeded)
}

#[test]
fn after_a_refused_seed_a_new_seed_uses_the_new_lock_token() {
    let (mut m, old_cluster) = refused_seed();
    m.handle_reply(at(2), AttemptId(5), left());
    // Still empty: lock again, with a new token this time.
    let new_token = LockToken("lock-2".into());
    m.handle_reply(at(3), AttemptId(6), nodes(empty(10)));
    let acquired_anew = Reply::Lock(Ok(LockOutcome::Acquired(new_token.clone())));
    m.handle_reply(at(4), AttemptId(7), acquired_anew);
    m.handle_reply(at(5), AttemptId(8), nodes(empty(11)));
    let new_cluster = m.cluster().expect("new cluster");
    assert_ne!(new_cluster, old_cluster);
    assert_eq!(
        actions(&mut m),
        vec![
            leave(5),
            get_nodes(6),
            lock(7),
            get_nodes(8),
            add_seed(9, new_token, new_cluster, None),
        ]
    );
}

#[test]
fn failed_leave_after_refusal_still_starts_over() {
    let (mut m, _) = refused_seed();
    let boom = ClusterError::Leave {
        message: "boom".into(),
    };
    m.handle_reply(at(2), AttemptId(5), Reply::Left(Err(boom)));
    transition(&mut m, Resetting, GettingNodes, &[leave(5), get_nodes(6)]);
}

#[test]
fn unanswered_leave_after_refusal_starts_over_at_its_timeout() {
    let (mut m, _) = refused_seed();
    assert_eq!(actions(&mut m), vec![leave(5)]);
    m.handle_timeout(at(1) + COORDINATION_TIMEOUT);
    transition(&mut m, Resetting, GettingNodes, &[get_nodes(6)]);
}

#[test]
fn seed_registration_retry_keeps_the_same_fence() {
    let (mut m, add) = driven(settings(), Script::Seed, AddingSelf);
    let Some(Action::AddSelf { mode, .. }) = add else {
        panic!("AddSelf expected")
    };
    // The reply is lost: the request times out, and the retry repeats the same condition
    // (the backend accepts it again if the first write went through).
    m.handle_timeout(t0() + COORDINATION_TIMEOUT);
    step(
        &mut m,
        vec![retrying(AddingSelf, timeout_summary())],
        vec![],
    );
    m.handle_timeout(t0() + COORDINATION_TIMEOUT + RETRY_DELAY);
    assert_eq!(
        actions(&mut m),
        vec![Action::AddSelf {
            attempt: AttemptId(5),
            ttl: ttl(),
            mode,
        }]
    );
}

#[test]
fn refused_member_registration_also_resets() {
    let (mut m, add) = driven(settings(), Script::Member, AddingSelf);
    assert_eq!(add, Some(add_member(3, Some(THEIR_CLUSTER))));
    m.handle_reply(at(100), AttemptId(3), refused());
    transition(&mut m, AddingSelf, Resetting, &[leave(4)]);
    assert_eq!(m.cluster(), None);
    m.handle_reply(at(200), AttemptId(4), left());
    transition(&mut m, Resetting, GettingNodes, &[get_nodes(5)]);
}
