//! Refresh loss: when this node's entry is missing at refresh (expired, removed, replaced),
//! it registers again as a member of its own cluster.

mod common;

use common::*;
use constructr_core::{
    Action, AddMode, AddOutcome, AttemptId, Event, Machine, RefreshOutcome, Reply, State,
};

fn refreshing(script: Script) -> (Machine, Action) {
    let mut m = machine(settings());
    let a = drive(&mut m, t0(), script, State::Refreshing).expect("Refresh");
    (m, a)
}

#[test]
fn missing_entry_of_a_seed_is_added_again_as_member_of_its_cluster() {
    let (mut m, refresh_action) = refreshing(Script::Seed);
    assert_eq!(refresh_action, refresh(6));
    let own = m.cluster().expect("own cluster");
    let now = t0() + REFRESH_INTERVAL;

    m.handle_reply(
        now,
        AttemptId(6),
        Reply::Refresh(Ok(RefreshOutcome::Missing)),
    );
    expect_step(
        &mut m,
        vec![changed(State::Refreshing, State::AddingSelf)],
        vec![Action::AddSelf {
            attempt: AttemptId(7),
            ttl: ttl(),
            mode: AddMode::Join { cluster: Some(own) },
        }],
        Some(now + COORDINATION_TIMEOUT),
    );

    m.handle_reply(now, AttemptId(7), Reply::AddSelf(Ok(AddOutcome::Added)));
    expect_step(
        &mut m,
        vec![changed(State::AddingSelf, State::RefreshScheduled)],
        vec![],
        Some(now + REFRESH_INTERVAL),
    );
    assert_eq!(m.cluster(), Some(own));
}

#[test]
fn missing_entry_of_a_member_is_added_again_with_the_epochs_cluster() {
    let (mut m, refresh_action) = refreshing(Script::Member);
    assert_eq!(refresh_action, refresh(4));
    let now = t0() + REFRESH_INTERVAL;
    m.handle_reply(
        now,
        AttemptId(4),
        Reply::Refresh(Ok(RefreshOutcome::Missing)),
    );
    assert_eq!(
        events(&mut m),
        vec![changed(State::Refreshing, State::AddingSelf)]
    );
    assert_eq!(
        actions(&mut m),
        vec![Action::AddSelf {
            attempt: AttemptId(5),
            ttl: ttl(),
            mode: AddMode::Join {
                cluster: Some(THEIR_CLUSTER),
            },
        }]
    );
}

#[test]
fn missing_entry_refused_because_another_cluster_took_over_resets() {
    let (mut m, _) = refreshing(Script::Member);
    let now = t0() + REFRESH_INTERVAL;
    m.handle_reply(
        now,
        AttemptId(4),
        Reply::Refresh(Ok(RefreshOutcome::Missing)),
    );
    events(&mut m);
    actions(&mut m);
    m.handle_reply(now, AttemptId(5), Reply::AddSelf(Ok(AddOutcome::Refused)));
    assert_eq!(
        events(&mut m),
        vec![
            Event::ClusterLost {
                cluster: Some(THEIR_CLUSTER)
            },
            changed(State::AddingSelf, State::Resetting)
        ]
    );
    assert_eq!(actions(&mut m), vec![leave(6)]);
}

#[test]
fn refreshed_entry_schedules_the_next_refresh() {
    let (mut m, _) = refreshing(Script::Member);
    let now = t0() + REFRESH_INTERVAL + COORDINATION_TIMEOUT / 2;
    m.handle_reply(
        now,
        AttemptId(4),
        Reply::Refresh(Ok(RefreshOutcome::Refreshed)),
    );
    expect_step(
        &mut m,
        vec![changed(State::Refreshing, State::RefreshScheduled)],
        vec![],
        Some(now + REFRESH_INTERVAL),
    );
}
