//! Outages: a registered member stays a member (Degraded) and retries with growing waits
//! until the coordination service answers again; bootstrapping rides out outages shorter
//! than the retry budget; an empty registry whose epoch names a cluster is given the
//! re-seed grace before anyone seeds over it (the older cluster wins); a seed recognises
//! its own committed registration after a lost reply.

mod common;

use std::time::{Duration, Instant};

use common::*;
use constructr_core::State::*;
use constructr_core::{
    Action, AddMode, AttemptId, ClusterId, CoordinationError, Epoch, Event, Failure, Machine,
    Registry, Reply, Settings,
};

/// A registered member of [`THEIR_CLUSTER`] (outage settings), registered at `t0`.
fn member() -> Machine {
    driven(outage_settings(), Script::Member, RefreshScheduled).0
}

/// Fires the machine's timer (the refresh or a retry); returns the one action it issued and
/// the time.
fn timer_fires(m: &mut Machine) -> (Action, Instant) {
    let now = fire(m);
    (single(m), now)
}

/// A [`member`] whose first refresh was refused: `Degraded`, waiting to retry (events
/// drained); and the time of the refusal.
fn degraded() -> (Machine, Instant) {
    let mut m = member();
    let (action, now) = timer_fires(&mut m);
    m.handle_reply(now, action.attempt(), refresh_refused());
    events(&mut m);
    (m, now)
}

fn retry_in(events: &[Event]) -> Duration {
    events
        .iter()
        .find_map(|e| match e {
            Event::Retrying { retry_in, .. } => Some(*retry_in),
            _ => None,
        })
        .expect("a Retrying event")
}

fn refresh_refused() -> Reply {
    Reply::Refresh(Err(unavailable()))
}

fn token_revoked() -> CoordinationError {
    CoordinationError::Unauthorized {
        message: "token revoked".into(),
    }
}

/// An empty registry whose epoch names [`THEIR_CLUSTER`] (version 9, revision 20): every
/// member's entry expired.
fn expired_cluster() -> Registry {
    registry(&[], epoch(THEIR_CLUSTER, 9), 20)
}

/// The re-seed grace given to [`THEIR_CLUSTER`].
fn grace_for_theirs(grace: Duration) -> Event {
    Event::ReseedGrace {
        cluster: THEIR_CLUSTER,
        grace,
    }
}

#[test]
fn member_degrades_on_a_failed_refresh_and_keeps_retrying_with_growing_waits() {
    let mut m = member();
    let (mut action, mut now) = timer_fires(&mut m);
    let mut waits = Vec::new();
    // Two hours of refused connections.
    for i in 0..500 {
        m.handle_reply(now, action.attempt(), refresh_refused());
        let ev = events(&mut m);
        if i == 0 {
            assert!(ev.contains(&changed(Refreshing, Degraded)), "{ev:?}");
        }
        assert_eq!(m.state(), Degraded);
        assert_eq!(m.cluster(), Some(THEIR_CLUSTER));
        let wait = retry_in(&ev);
        waits.push(wait.as_secs());
        assert_eq!(m.poll_timeout(), Some(now + wait));
        now += wait;
        m.handle_timeout(now);
        action = single(&mut m);
        assert!(matches!(action, Action::Refresh { .. }), "{action:?}");
    }
    assert!(now - t0() > Duration::from_secs(2 * 3600));
    // Doubling, up to the longest member wait: two tries fit in the re-seed grace
    // ((34 s − 2 s − 0.125 s) / 2 = 15.9 s, below the 16 s cap).
    assert_eq!(&waits[..6], [2, 4, 8, 15, 15, 15]);
    assert_eq!(m.failure(), None);

    // The service is back: the entry is still there.
    m.handle_reply(now, action.attempt(), refreshed());
    assert_eq!(events(&mut m), vec![changed(Degraded, RefreshScheduled)]);
    assert_eq!(m.poll_timeout(), Some(now + REFRESH_INTERVAL));
    // The streak is over: the next failure waits the first delay again.
    let (action, now) = timer_fires(&mut m);
    m.handle_reply(now, action.attempt(), refresh_refused());
    assert_eq!(retry_in(&events(&mut m)), RETRY_DELAY);
}

#[test]
fn degraded_member_waits_at_most_one_refresh_interval() {
    let mut s = outage_settings();
    s.refresh_interval = Duration::from_secs(5);
    s.max_retry_delay = Duration::from_secs(60);
    let (mut m, _) = driven(s, Script::Member, RefreshScheduled);
    let (mut action, mut now) = timer_fires(&mut m);
    for _ in 0..10 {
        now += COORDINATION_TIMEOUT;
        m.handle_timeout(now);
        let wait = retry_in(&events(&mut m));
        assert!(wait <= Duration::from_secs(5), "{wait:?}");
        now += wait;
        m.handle_timeout(now);
        action = single(&mut m);
    }
    assert!(matches!(action, Action::Refresh { .. }));
    assert_eq!(m.state(), Degraded);
}

#[test]
fn degraded_member_whose_entry_expired_registers_again_under_its_cluster() {
    let (mut m, _) = degraded();
    let (action, now) = timer_fires(&mut m);
    m.handle_reply(now, action.attempt(), missing());
    assert_eq!(events(&mut m), vec![changed(Degraded, AddingSelf)]);
    let add = single(&mut m);
    assert_eq!(
        add,
        Action::AddSelf {
            attempt: AttemptId(add.attempt().0),
            ttl: outage_settings().ttl(),
            mode: AddMode::Join {
                cluster: Some(THEIR_CLUSTER)
            },
        }
    );
    // The service fails again while re-registering: still a member.
    m.handle_reply(now, add.attempt(), Reply::AddSelf(Err(unavailable())));
    assert!(events(&mut m).contains(&changed(AddingSelf, Degraded)));
    let (action, now) = timer_fires(&mut m);
    m.handle_reply(now, action.attempt(), missing());
    let add = single(&mut m);
    m.handle_reply(now, add.attempt(), added());
    assert_eq!(
        events(&mut m),
        vec![
            changed(Degraded, AddingSelf),
            changed(AddingSelf, RefreshScheduled)
        ]
    );
}

#[test]
fn permanent_errors_keep_a_member_degraded_at_the_longest_wait() {
    let mut m = member();
    let (mut action, mut now) = timer_fires(&mut m);
    let longest = m.settings().longest_member_wait().min(MAX_RETRY_DELAY);
    for _ in 0..5 {
        m.handle_reply(now, action.attempt(), Reply::Refresh(Err(token_revoked())));
        let ev = events(&mut m);
        assert_eq!(retry_in(&ev), longest);
        assert_eq!(m.state(), Degraded);
        now += longest;
        m.handle_timeout(now);
        action = single(&mut m);
    }
}

#[test]
fn fail_fast_member_fails_on_a_permanent_error() {
    let mut s = outage_settings();
    s.ignore_refresh_failures = false;
    let (mut m, action) = driven(s, Script::Member, Refreshing);
    let action = action.expect("Refresh");
    m.handle_reply(
        at(1),
        action.attempt(),
        Reply::Refresh(Err(token_revoked())),
    );
    assert!(matches!(m.failure(), Some(Failure::Permanent { .. })));
}

#[test]
fn bootstrap_rides_out_an_outage_within_the_retry_budget_then_fails() {
    let mut m = started(outage_settings());
    let mut now = t0();
    let mut attempt = 1;
    // 60 s of refused connections: still trying.
    while now - t0() < Duration::from_secs(60) {
        m.handle_reply(now, AttemptId(attempt), Reply::Nodes(Err(unavailable())));
        assert_eq!(m.state(), GettingNodes);
        now = m.poll_timeout().expect("retry timer");
        m.handle_timeout(now);
        attempt = single(&mut m).attempt().0;
    }
    // The service answers: bootstrapping goes on.
    m.handle_reply(now, AttemptId(attempt), nodes(empty(1)));
    assert_eq!(m.state(), Locking);

    // An outage longer than the budget (5 min) fails, naming the state.
    let lock = single(&mut m);
    let mut attempt = lock.attempt().0;
    let start = now;
    loop {
        m.handle_reply(now, AttemptId(attempt), Reply::Lock(Err(unavailable())));
        if m.state() == Failed {
            break;
        }
        now = m.poll_timeout().expect("retry timer");
        m.handle_timeout(now);
        attempt = single(&mut m).attempt().0;
    }
    assert!(now - start >= Duration::from_secs(300), "{:?}", now - start);
    assert!(now - start < Duration::from_secs(300) + MAX_RETRY_DELAY);
    let failure = exhausted(Locking, unavailable_summary());
    assert_eq!(m.failure(), Some(&failure));
}

#[test]
fn empty_registry_whose_epoch_names_a_cluster_waits_the_grace_and_joins_a_reregistered_member() {
    let s = outage_settings();
    let grace = s.reseed_grace();
    let expected_grace = REFRESH_INTERVAL + COORDINATION_TIMEOUT * 2 + RETRY_DELAY;
    assert_eq!(grace, expected_grace);
    let mut m = started(s);
    m.handle_reply(at(10), AttemptId(1), nodes(expired_cluster()));
    // Watching, and polling every retry delay.
    step(
        &mut m,
        vec![
            grace_for_theirs(grace),
            changed(GettingNodes, WaitingForNodes),
        ],
        vec![wait_for_change(2, 20)],
    );
    assert_eq!(m.poll_timeout(), Some(at(10) + RETRY_DELAY));
    // An old member re-registers: the watch fires, the node reads and joins it.
    m.handle_reply(at(900), AttemptId(2), watch_fired());
    assert_eq!(actions(&mut m), vec![get_nodes(3)]);
    m.handle_reply(at(910), AttemptId(3), nodes(theirs(&[node(2)], 21)));
    assert_eq!(actions(&mut m), vec![join(4, vec![node(2)])]);
    assert_eq!(m.cluster(), Some(THEIR_CLUSTER));
}

#[test]
fn grace_runs_once_across_rereads_then_the_node_seeds() {
    let s = outage_settings();
    let grace = s.reseed_grace();
    let mut m = started(s);
    let mut now = at(10);
    let deadline = now + grace;
    let mut attempt = 1;
    let mut graces = 0;
    loop {
        m.handle_reply(now, AttemptId(attempt), nodes(expired_cluster()));
        graces += events(&mut m)
            .iter()
            .filter(|e| matches!(e, Event::ReseedGrace { .. }))
            .count();
        let acts = actions(&mut m);
        if m.state() == Locking {
            assert_eq!(acts.len(), 1);
            break;
        }
        assert_eq!(m.state(), WaitingForNodes);
        let wake = m.poll_timeout().expect("timer");
        assert!(wake <= deadline, "the wait never passes the grace deadline");
        now = wake;
        m.handle_timeout(now);
        attempt = single(&mut m).attempt().0;
    }
    assert_eq!(graces, 1, "the grace is not restarted by re-reads");
    assert!(now >= deadline);
    // Losing the lock race does not restart the grace either.
    m.handle_reply(now, AttemptId(attempt + 1), held_by_other());
    now = fire(&mut m);
    let get = actions(&mut m)
        .into_iter()
        .find(|a| matches!(a, Action::GetNodes { .. }))
        .expect("re-read");
    m.handle_reply(now, get.attempt(), nodes(expired_cluster()));
    assert_eq!(m.state(), Locking);
}

#[test]
fn no_grace_without_an_epoch_or_for_an_unreadable_one() {
    for epoch in [None, epoch(ClusterId::UNREADABLE, 3)] {
        let mut m = started(outage_settings());
        m.handle_reply(at(10), AttemptId(1), nodes(registry(&[], epoch, 4)));
        assert_eq!(m.state(), Locking, "{epoch:?}");
    }
}

/// Drives a seed to its fenced registration; returns the AddSelf action.
fn seeding() -> (Machine, Action) {
    let (m, add) = driven(outage_settings(), Script::Seed, AddingSelf);
    let add = add.expect("AddSelf");
    assert!(matches!(
        add,
        Action::AddSelf {
            mode: AddMode::Seed { .. },
            ..
        }
    ));
    (m, add)
}

/// A seed whose fenced write timed out (it may have committed) and whose retry was refused
/// (the lock expired meanwhile): the machine in `ConfirmingSeed`, its registry read, its
/// cluster and the time.
fn seed_refused_after_an_uncertain_try() -> (Machine, Action, ClusterId, Instant) {
    let (mut m, add) = seeding();
    let cluster = m.cluster().expect("seeded cluster");
    m.handle_timeout(t0() + COORDINATION_TIMEOUT);
    events(&mut m);
    let (retry, now) = timer_fires(&mut m);
    m.handle_reply(now, retry.attempt(), refused());
    assert_eq!(events(&mut m), vec![changed(AddingSelf, ConfirmingSeed)]);
    let read = single(&mut m);
    assert_eq!(read, get_all_nodes(add.attempt().0 + 2));
    (m, read, cluster, now)
}

/// `nodes` registered in `cluster`, epoch version and revision 12.
fn registered_in(cluster: ClusterId, nodes: &[constructr_core::NodeId]) -> Registry {
    let epoch = Epoch {
        cluster,
        version: 12,
    };
    registry(nodes, Some(epoch), 12)
}

#[test]
fn seed_whose_committed_registration_reply_was_lost_recognises_it_and_forms() {
    // The write committed, the reply was lost (timeout); the lock expired meanwhile.
    let (mut m, read, cluster, now) = seed_refused_after_an_uncertain_try();
    let committed = registered_in(cluster, &[me()]);
    m.handle_reply(now, read.attempt(), nodes(committed));
    assert_eq!(
        events(&mut m),
        vec![Event::SeedConfirmed, changed(ConfirmingSeed, Forming)]
    );
    assert_eq!(m.cluster(), Some(cluster));
    // Its registration is certain now: it forms its cluster.
    assert_eq!(
        actions(&mut m),
        vec![join(read.attempt().0 + 1, vec![me()])]
    );
}

#[test]
fn seed_paused_past_its_entry_ttl_after_its_committed_write_registers_again_then_forms() {
    let (mut m, read, cluster, now) = seed_refused_after_an_uncertain_try();
    // The epoch names its cluster, but its entry expired while it was paused.
    m.handle_reply(now, read.attempt(), nodes(registered_in(cluster, &[])));
    assert_eq!(
        events(&mut m),
        vec![Event::SeedConfirmed, changed(ConfirmingSeed, AddingSelf)]
    );
    let add = single(&mut m);
    assert!(
        matches!(
            &add,
            Action::AddSelf { mode: AddMode::Join { cluster: Some(c) }, .. } if *c == cluster
        ),
        "{add:?}"
    );
    // Registered again under its epoch: only now it forms.
    m.handle_reply(now, add.attempt(), added());
    assert_eq!(events(&mut m), vec![changed(AddingSelf, Forming)]);
    assert_eq!(actions(&mut m), vec![join(add.attempt().0 + 1, vec![me()])]);
}

#[test]
fn seed_whose_uncertain_registration_is_not_there_starts_over() {
    let (mut m, read, _, now) = seed_refused_after_an_uncertain_try();
    // Someone else seeded: this node's entry is not there.
    m.handle_reply(now, read.attempt(), nodes(theirs(&[node(2)], 5)));
    assert_eq!(
        events(&mut m),
        vec![Event::SeedRefused, changed(ConfirmingSeed, Resetting)]
    );
    assert!(matches!(single(&mut m), Action::LeaveCluster { .. }));
}

#[test]
fn shutdown_of_a_degraded_member_removes_its_entry() {
    let (mut m, now) = degraded();
    m.shutdown(now);
    assert_eq!(events(&mut m), vec![changed(Degraded, Leaving)]);
    let leave = single(&mut m);
    m.handle_reply(now, leave.attempt(), left());
    assert!(matches!(single(&mut m), Action::RemoveSelf { .. }));
}

#[test]
fn compat_settings_keep_constructrs_fail_fast_for_members() {
    let s = with_test_timings(Settings::constructr_compat());
    let (mut m, action) = driven(s, Script::Member, Refreshing);
    let mut action = action.expect("Refresh");
    let mut now = t0() + REFRESH_INTERVAL;
    for _ in 0..3 {
        m.handle_reply(now, action.attempt(), refresh_refused());
        if m.state() == Failed {
            break;
        }
        (action, now) = timer_fires(&mut m);
    }
    assert!(matches!(
        m.failure(),
        Some(Failure::RetriesExhausted { .. })
    ));
}

#[test]
fn a_node_that_locked_before_the_cluster_formed_gives_the_grace_on_its_reread() {
    // Found by the simulation: the lock was taken while the registry had no epoch, an outage
    // followed, and the re-read under the lock found the (now formed) cluster's epoch with
    // every entry expired. Seeding there would split the cluster.
    let mut m = started(outage_settings());
    m.handle_reply(at(1), AttemptId(1), nodes(empty(1)));
    assert!(matches!(single(&mut m), Action::Lock { .. }));
    m.handle_reply(at(2), AttemptId(2), acquired());
    assert_eq!(actions(&mut m), vec![get_nodes(3)]);
    events(&mut m);
    m.handle_reply(at(3), AttemptId(3), nodes(expired_cluster()));
    let grace = grace_for_theirs(outage_settings().reseed_grace());
    assert_eq!(
        events(&mut m),
        vec![grace, changed(VerifyingEmpty, WaitingForNodes)]
    );
    assert!(matches!(single(&mut m), Action::WaitForChange { .. }));
}

#[test]
fn a_failed_request_during_the_grace_restarts_it_once_the_service_answers() {
    // Found by the simulation: a grace that ran out during a second outage let a newcomer
    // seed before the members could re-register.
    let s = outage_settings();
    let grace = s.reseed_grace();
    let mut m = started(s);
    m.handle_reply(at(0), AttemptId(1), nodes(expired_cluster()));
    actions(&mut m);
    // The wait is over; the re-read fails for longer than the grace.
    let (get, mut now) = timer_fires(&mut m);
    let mut attempt = get.attempt();
    while now < at(0) + grace * 3 {
        m.handle_reply(now, attempt, Reply::Nodes(Err(unavailable())));
        let (get, then) = timer_fires(&mut m);
        (attempt, now) = (get.attempt(), then);
    }
    events(&mut m);
    // The service answers: the grace starts over instead of seeding at once.
    m.handle_reply(now, attempt, nodes(expired_cluster()));
    assert_eq!(
        events(&mut m),
        vec![
            grace_for_theirs(grace),
            changed(GettingNodes, WaitingForNodes)
        ]
    );
}
