//! Bootstrap: seeding a new cluster on an empty registry, joining a non-empty one, and the
//! refresh loop that follows.

mod common;

use std::time::Duration;

use common::*;
use constructr_core::State::*;
use constructr_core::{AttemptId, ClusterId, Event};

const OLD_CLUSTER: ClusterId = ClusterId(0x01D);

#[test]
fn new_machine_reads_the_nodes_first() {
    let mut m = machine(settings());
    assert_eq!(m.state(), GettingNodes);
    assert_eq!(actions(&mut m), vec![get_nodes(1)]);
    assert_eq!(events(&mut m), vec![]);
    assert_eq!(m.poll_timeout(), Some(t0() + COORDINATION_TIMEOUT));
    assert_eq!(m.cluster(), None);
}

#[test]
fn empty_registry_seeds_after_lock_and_reread_then_refreshes() {
    let mut m = started(settings());

    // Empty (a marker of an old, dead cluster is left): take the lock.
    let old_marker = registry(&[], epoch(OLD_CLUSTER, 4), 4);
    m.handle_reply(at(100), AttemptId(1), nodes(old_marker));
    transition(&mut m, GettingNodes, Locking, &[lock(2)]);
    assert_eq!(m.poll_timeout(), Some(at(100) + COORDINATION_TIMEOUT));

    // Acquired: re-read before seeding.
    m.handle_reply(at(200), AttemptId(2), acquired());
    transition(&mut m, Locking, VerifyingEmpty, &[get_nodes(3)]);
    assert_eq!(m.poll_timeout(), Some(at(200) + COORDINATION_TIMEOUT));

    // Still empty (the marker moved on meanwhile): the fenced registration of a new
    // cluster, expecting the re-read's marker — before any cluster exists.
    let moved_marker = registry(&[], epoch(OLD_CLUSTER, 9), 9);
    m.handle_reply(at(300), AttemptId(3), nodes(moved_marker));
    let cluster = m.cluster().expect("a seeding node knows its new cluster");
    assert_ne!(cluster, OLD_CLUSTER);
    let registration = add_seed(4, token(), cluster, Some(9));
    transition(&mut m, VerifyingEmpty, AddingSelf, &[registration]);
    assert_eq!(m.poll_timeout(), Some(at(300) + COORDINATION_TIMEOUT));

    // Written: now it forms its cluster (joins itself).
    m.handle_reply(at(400), AttemptId(4), added());
    transition(&mut m, AddingSelf, Forming, &[join(5, vec![me()])]);
    assert_eq!(m.poll_timeout(), Some(at(400) + JOIN_TIMEOUT));
    assert!(!m.state().is_registered());

    // Formed: the first refresh counts from the registration (sent at 300 ms).
    m.handle_reply(at(500), AttemptId(5), joined());
    transition(&mut m, Forming, RefreshScheduled, &[]);
    let due = at(300) + REFRESH_INTERVAL;
    assert_eq!(m.poll_timeout(), Some(due));
    assert!(m.state().is_registered());

    m.handle_timeout(due);
    transition(&mut m, RefreshScheduled, Refreshing, &[refresh(6)]);
    assert_eq!(m.poll_timeout(), Some(due + COORDINATION_TIMEOUT));

    let later = due + Duration::from_millis(100);
    m.handle_reply(later, AttemptId(6), refreshed());
    transition(&mut m, Refreshing, RefreshScheduled, &[]);
    assert_eq!(m.poll_timeout(), Some(later + REFRESH_INTERVAL));
    assert_eq!(m.cluster(), Some(cluster));
}

#[test]
fn seed_without_any_epoch_marker_expects_none() {
    let mut m = started(settings());
    m.handle_reply(at(1), AttemptId(1), nodes(empty(0)));
    m.handle_reply(at(2), AttemptId(2), acquired());
    m.handle_reply(at(3), AttemptId(3), nodes(empty(1)));
    let cluster = m.cluster().expect("cluster");
    m.handle_reply(at(4), AttemptId(4), added());
    assert_eq!(
        actions(&mut m),
        vec![
            lock(2),
            get_nodes(3),
            add_seed(4, token(), cluster, None),
            join(5, vec![me()]),
        ]
    );
}

/// A seed paused between its registration's reply and forming for longer than the
/// registration's TTL forms nothing until a refresh shows the registration still stands;
/// if it lapsed, the seed starts over without ever having formed.
#[test]
fn a_seed_paused_past_its_lease_rechecks_its_registration_before_forming() {
    for (outcome, then) in [(refreshed(), Forming), (missing(), Resetting)] {
        let mut m = started(settings());
        m.handle_reply(at(1), AttemptId(1), nodes(empty(0)));
        m.handle_reply(at(2), AttemptId(2), acquired());
        m.handle_reply(at(3), AttemptId(3), nodes(empty(1)));
        let cluster = m.cluster().expect("cluster");
        let _ = actions(&mut m);
        let _ = events(&mut m);
        // The reply arrives in time, but the node handles it only after a long pause.
        let woke = at(3) + ttl();
        m.handle_reply(woke, AttemptId(4), added());
        transition(&mut m, AddingSelf, Forming, &[refresh(5)]);
        m.handle_reply(woke, AttemptId(5), outcome);
        if then == Forming {
            assert_eq!(actions(&mut m), vec![join(6, vec![me()])]);
            assert_eq!(events(&mut m), vec![]);
            assert_eq!(m.cluster(), Some(cluster));
        } else {
            assert_eq!(actions(&mut m), vec![leave(6)]);
            assert_eq!(
                events(&mut m),
                vec![Event::SeedLapsed, changed(Forming, Resetting)]
            );
        }
    }
}

/// A seed whose self-join fails keeps its registration and tries to form again, instead of
/// leaving an entry behind that every joiner would try in vain.
#[test]
fn a_seed_whose_formation_fails_tries_again_under_its_registration() {
    let mut m = started(settings());
    m.handle_reply(at(1), AttemptId(1), nodes(empty(0)));
    m.handle_reply(at(2), AttemptId(2), acquired());
    m.handle_reply(at(3), AttemptId(3), nodes(empty(1)));
    m.handle_reply(at(4), AttemptId(4), added());
    let _ = actions(&mut m);
    let _ = events(&mut m);
    m.handle_reply(at(5), AttemptId(5), join_failed());
    assert_eq!(actions(&mut m), vec![]);
    assert_eq!(m.state(), Forming);
    let retry = m.poll_timeout().expect("a retry is scheduled");
    m.handle_timeout(retry);
    assert_eq!(actions(&mut m), vec![join(6, vec![me()])]);
    m.handle_reply(retry, AttemptId(6), joined());
    assert_eq!(m.state(), RefreshScheduled);
}

#[test]
fn non_empty_registry_joins_the_others_without_own_stale_entry() {
    let mut m = started(settings());

    let read = theirs(&[node(2), my_stale_entry(), node(3)], 5);
    m.handle_reply(at(100), AttemptId(1), nodes(read));
    let join_them = join(2, vec![node(2), node(3)]);
    transition(&mut m, GettingNodes, Joining, &[join_them]);
    assert_eq!(m.poll_timeout(), Some(at(100) + JOIN_TIMEOUT));
    assert_eq!(m.cluster(), Some(THEIR_CLUSTER));

    m.handle_reply(at(200), AttemptId(2), joined());
    transition(
        &mut m,
        Joining,
        AddingSelf,
        &[add_member(3, Some(THEIR_CLUSTER))],
    );

    m.handle_reply(at(300), AttemptId(3), added());
    transition(&mut m, AddingSelf, RefreshScheduled, &[]);
    assert_eq!(m.poll_timeout(), Some(at(300) + REFRESH_INTERVAL));
}

#[test]
fn registry_with_only_own_stale_entry_counts_as_empty() {
    let mut m = started(settings());
    let read = registry(&[my_stale_entry()], epoch(OLD_CLUSTER, 3), 3);
    m.handle_reply(at(100), AttemptId(1), nodes(read));
    transition(&mut m, GettingNodes, Locking, &[lock(2)]);
}

#[test]
fn registry_without_epoch_marker_joins_with_no_cluster() {
    let mut m = started(settings());
    m.handle_reply(at(1), AttemptId(1), nodes(registry(&[node(2)], None, 2)));
    m.handle_reply(at(2), AttemptId(2), joined());
    let expected = vec![join(2, vec![node(2)]), add_member(3, None)];
    assert_eq!(actions(&mut m), expected);
    assert_eq!(m.cluster(), None);
}

#[test]
fn same_seed_and_inputs_give_the_same_outputs() {
    let run = || {
        driven(settings(), Script::Seed, RefreshScheduled)
            .0
            .cluster()
    };
    assert_eq!(run(), run());
}
