//! Refresh loss: when this node's entry is missing at refresh (expired, removed, replaced),
//! it registers again as a member of its own cluster.

mod common;

use common::*;
use constructr_core::State::*;
use constructr_core::{Action, AttemptId, Event, Machine};

fn refreshing(script: Script) -> (Machine, Action) {
    let (m, a) = driven(settings(), script, Refreshing);
    (m, a.expect("Refresh"))
}

#[test]
fn missing_entry_of_a_seed_is_added_again_as_member_of_its_cluster() {
    let (mut m, refresh_action) = refreshing(Script::Seed);
    assert_eq!(refresh_action, refresh(6));
    let own = m.cluster().expect("own cluster");
    let now = t0() + REFRESH_INTERVAL;

    m.handle_reply(now, AttemptId(6), missing());
    transition(&mut m, Refreshing, AddingSelf, &[add_member(7, Some(own))]);
    assert_eq!(m.poll_timeout(), Some(now + COORDINATION_TIMEOUT));

    m.handle_reply(now, AttemptId(7), added());
    transition(&mut m, AddingSelf, RefreshScheduled, &[]);
    assert_eq!(m.cluster(), Some(own));
    assert_eq!(m.poll_timeout(), Some(now + REFRESH_INTERVAL));
}

#[test]
fn missing_entry_of_a_member_is_added_again_with_the_epochs_cluster() {
    let (mut m, refresh_action) = refreshing(Script::Member);
    assert_eq!(refresh_action, refresh(4));
    m.handle_reply(t0() + REFRESH_INTERVAL, AttemptId(4), missing());
    let registration = add_member(5, Some(THEIR_CLUSTER));
    transition(&mut m, Refreshing, AddingSelf, &[registration]);
}

#[test]
fn missing_entry_refused_because_another_cluster_took_over_resets() {
    let (mut m, _) = refreshing(Script::Member);
    let now = t0() + REFRESH_INTERVAL;
    m.handle_reply(now, AttemptId(4), missing());
    events(&mut m);
    actions(&mut m);
    m.handle_reply(now, AttemptId(5), refused());
    let lost = Event::ClusterLost {
        cluster: Some(THEIR_CLUSTER),
    };
    step(
        &mut m,
        vec![lost, changed(AddingSelf, Resetting)],
        vec![leave(6)],
    );
}

#[test]
fn refreshed_entry_schedules_the_next_refresh() {
    let (mut m, _) = refreshing(Script::Member);
    let now = t0() + REFRESH_INTERVAL + COORDINATION_TIMEOUT / 2;
    m.handle_reply(now, AttemptId(4), refreshed());
    transition(&mut m, Refreshing, RefreshScheduled, &[]);
    assert_eq!(m.poll_timeout(), Some(now + REFRESH_INTERVAL));
}
