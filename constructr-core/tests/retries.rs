//! Retries: retryable failures are retried after `retry_delay` up to `nr_of_retries` times,
//! the count resets after each success, permanent errors fail at once, and
//! `ignore_refresh_failures` keeps refreshing forever.

mod common;

use common::*;
use constructr_core::State::{self, *};
use constructr_core::{
    Action, AttemptId, CoordinationError, ErrorSummary, Failure, Machine, Reply,
};

/// The error reply matching `action`'s kind.
fn error_reply(action: &Action, error: CoordinationError) -> Reply {
    match action {
        Action::GetNodes { .. } => Reply::Nodes(Err(error)),
        Action::Lock { .. } => Reply::Lock(Err(error)),
        Action::AddSelf { .. } => Reply::AddSelf(Err(error)),
        Action::Refresh { .. } => Reply::Refresh(Err(error)),
        Action::RemoveSelf { .. } => Reply::RemoveSelf(Err(error)),
        a => panic!("no coordination error reply for {a:?}"),
    }
}

/// The same action with another attempt id.
fn with_attempt(action: &Action, n: u64) -> Action {
    let attempt = AttemptId(n);
    match action.clone() {
        Action::GetNodes { limit, .. } => Action::GetNodes { attempt, limit },
        Action::Lock { ttl, .. } => Action::Lock { attempt, ttl },
        Action::AddSelf { ttl, mode, .. } => Action::AddSelf { attempt, ttl, mode },
        Action::Refresh { ttl, .. } => Action::Refresh { attempt, ttl },
        Action::RemoveSelf { .. } => Action::RemoveSelf { attempt },
        a => panic!("not retried: {a:?}"),
    }
}

/// Fails `action` with a retryable error at `now`, asserts the Retrying event and the retry
/// timer, fires it and returns the repeated action and the new `now`.
fn fail_and_retry(
    m: &mut Machine,
    now: std::time::Instant,
    action: &Action,
    state: State,
) -> (Action, std::time::Instant) {
    m.handle_reply(now, action.attempt(), error_reply(action, unavailable()));
    assert_eq!(events(m), vec![retrying(state, unavailable_summary())]);
    assert_eq!(actions(m), vec![]);
    assert_eq!(m.state(), state);
    assert_eq!(m.poll_timeout(), Some(now + RETRY_DELAY));
    let now = now + RETRY_DELAY;
    m.handle_timeout(now);
    assert_eq!(events(m), vec![]);
    let again = with_attempt(action, action.attempt().0 + 1);
    assert_eq!(actions(m), vec![again.clone()]);
    assert_eq!(m.poll_timeout(), Some(now + COORDINATION_TIMEOUT));
    (again, now)
}

#[test]
fn retryable_errors_are_retried_then_retries_exhausted_fails() {
    let mut m = started(settings());
    let (a, now) = fail_and_retry(&mut m, at(100), &get_nodes(1), GettingNodes);
    assert_eq!(a, get_nodes(2));
    let (a, now) = fail_and_retry(&mut m, now, &a, GettingNodes);
    assert_eq!(a, get_nodes(3));

    m.handle_reply(now, AttemptId(3), Reply::Nodes(Err(unavailable())));
    transition(&mut m, GettingNodes, Failed, &[]);
    assert_eq!(m.poll_timeout(), None);
    assert!(m.state().is_terminal());
    let failure = exhausted(GettingNodes, unavailable_summary());
    assert_eq!(m.failure(), Some(&failure));

    // A failed machine ignores everything.
    m.handle_timeout(now + RETRY_DELAY);
    m.handle_reply(now, AttemptId(3), nodes(empty(1)));
    m.shutdown(now);
    nothing(&mut m);
    assert_eq!(m.state(), Failed);
}

#[test]
fn request_timeouts_count_as_retryable_failures() {
    let mut m = started(settings());
    let mut now = t0();
    for attempt in 1..=3 {
        now += COORDINATION_TIMEOUT;
        m.handle_timeout(now);
        if attempt < 3 {
            let timed_out = retrying(GettingNodes, timeout_summary());
            assert_eq!(events(&mut m), vec![timed_out]);
            now += RETRY_DELAY;
            m.handle_timeout(now);
            assert_eq!(actions(&mut m), vec![get_nodes(attempt + 1)]);
        }
    }
    assert_eq!(events(&mut m), vec![changed(GettingNodes, Failed)]);
    let failure = exhausted(GettingNodes, timeout_summary());
    assert_eq!(m.failure(), Some(&failure));
}

#[test]
fn retry_count_resets_after_each_success() {
    let mut m = started(settings());
    let (a, now) = fail_and_retry(&mut m, at(0), &get_nodes(1), GettingNodes);
    let (a, now) = fail_and_retry(&mut m, now, &a, GettingNodes);
    m.handle_reply(now, a.attempt(), nodes(empty(1)));
    assert_eq!(actions(&mut m), vec![lock(4)]);
    events(&mut m);

    // Two more failures in the next state are still fine.
    let (a, now) = fail_and_retry(&mut m, now, &lock(4), Locking);
    let (a, now) = fail_and_retry(&mut m, now, &a, Locking);
    assert_eq!(a, lock(6));
    m.handle_reply(now, AttemptId(6), acquired());
    transition(&mut m, Locking, VerifyingEmpty, &[get_nodes(7)]);

    // And two more again.
    let (a, now) = fail_and_retry(&mut m, now, &get_nodes(7), VerifyingEmpty);
    let (a, _) = fail_and_retry(&mut m, now, &a, VerifyingEmpty);
    assert_eq!(a, get_nodes(9));
    assert_eq!(m.failure(), None);
}

fn assert_fails_permanently_at_once(error: CoordinationError, summary: ErrorSummary) {
    let mut m = started(settings());
    m.handle_reply(at(100), AttemptId(1), Reply::Nodes(Err(error)));
    transition(&mut m, GettingNodes, Failed, &[]);
    assert_eq!(m.poll_timeout(), None);
    assert_eq!(
        m.failure(),
        Some(&Failure::Permanent {
            state: GettingNodes,
            error: summary,
        })
    );
}

#[test]
fn permanent_error_fails_at_once() {
    assert_fails_permanently_at_once(
        CoordinationError::permanent("no such cluster"),
        CoordinationError::permanent("no such cluster").summary(),
    );
}

#[test]
fn unauthorized_fails_at_once() {
    let e = || CoordinationError::Unauthorized {
        message: "bad token".into(),
    };
    assert!(!e().summary().retryable);
    assert_fails_permanently_at_once(e(), e().summary());
}

#[test]
fn invalid_request_fails_at_once() {
    let e = || CoordinationError::Invalid {
        message: "ttl too long".into(),
    };
    assert_fails_permanently_at_once(e(), e().summary());
}

#[test]
fn permanent_error_after_retries_is_still_permanent() {
    let mut m = started(settings());
    let (a, now) = fail_and_retry(&mut m, at(0), &get_nodes(1), GettingNodes);
    m.handle_reply(
        now,
        a.attempt(),
        Reply::Nodes(Err(CoordinationError::permanent("gone"))),
    );
    assert_eq!(
        m.failure(),
        Some(&Failure::Permanent {
            state: GettingNodes,
            error: CoordinationError::permanent("gone").summary(),
        })
    );
}

#[test]
fn retries_exhausted_in_each_state_that_retries_fails() {
    // Each case: the script that drives the machine into the state, and the state. The
    // request made there fails `nr_of_retries + 1` times.
    let cases = [
        ("while getting nodes", Script::Seed, GettingNodes),
        ("while locking", Script::Seed, Locking),
        ("while verifying empty", Script::Seed, VerifyingEmpty),
        ("while adding self as seed", Script::Seed, AddingSelf),
        ("while adding self as member", Script::Member, AddingSelf),
    ];
    for (case, script, state) in cases {
        let (mut m, action) = driven(settings(), script, state);
        let mut action = action.expect("an action in this state");
        let mut now = at(1);
        for _ in 0..settings().nr_of_retries.expect("set") {
            (action, now) = fail_and_retry(&mut m, now, &action, state);
        }
        m.handle_reply(now, action.attempt(), error_reply(&action, unavailable()));
        let failed = vec![changed(state, Failed)];
        assert_eq!(events(&mut m), failed, "{case}: events");
        assert_eq!(actions(&mut m), vec![], "{case}: actions");
        assert_eq!(m.poll_timeout(), None, "{case}: poll_timeout");
        let failure = exhausted(state, unavailable_summary());
        assert_eq!(m.failure(), Some(&failure), "{case}: failure");
    }
}

#[test]
fn fail_fast_member_degrades_then_fails_once_retries_are_used_up() {
    let (mut m, action) = driven(settings(), Script::Member, Refreshing);
    let mut action = action.expect("Refresh");
    let mut now = t0() + REFRESH_INTERVAL;
    for i in 0..2 {
        m.handle_reply(now, action.attempt(), error_reply(&action, unavailable()));
        let state = if i == 0 { Refreshing } else { Degraded };
        let mut expected = vec![retrying(state, unavailable_summary())];
        if i == 0 {
            expected.push(changed(Refreshing, Degraded));
        }
        assert_eq!(events(&mut m), expected);
        now += RETRY_DELAY;
        m.handle_timeout(now);
        action = with_attempt(&action, action.attempt().0 + 1);
        assert_eq!(actions(&mut m), vec![action.clone()]);
    }
    m.handle_reply(now, action.attempt(), error_reply(&action, unavailable()));
    assert_eq!(events(&mut m), vec![changed(Degraded, Failed)]);
    let failure = exhausted(Degraded, unavailable_summary());
    assert_eq!(m.failure(), Some(&failure));
}

/// [`settings`] with `ignore_refresh_failures`.
fn ignoring_refresh_failures() -> constructr_core::Settings {
    let mut s = settings();
    s.ignore_refresh_failures = true;
    s
}

#[test]
fn ignore_refresh_failures_keeps_a_degraded_member_refreshing_forever() {
    let (mut m, action) = driven(ignoring_refresh_failures(), Script::Seed, Refreshing);
    let mut action = action.expect("Refresh");
    assert_eq!(action, refresh(6));
    let mut now = t0() + REFRESH_INTERVAL;
    for i in 0..10u64 {
        let state = if i == 0 { Refreshing } else { Degraded };
        if i % 2 == 0 {
            m.handle_reply(now, action.attempt(), error_reply(&action, unavailable()));
        } else {
            // A timeout this time.
            now += COORDINATION_TIMEOUT;
            m.handle_timeout(now);
        }
        let error = if i % 2 == 0 {
            unavailable_summary()
        } else {
            timeout_summary()
        };
        let mut expected = vec![retrying(state, error)];
        if i == 0 {
            expected.push(changed(Refreshing, Degraded));
        }
        assert_eq!(events(&mut m), expected);
        assert_eq!(m.state(), Degraded);
        now += RETRY_DELAY;
        m.handle_timeout(now);
        action = with_attempt(&action, action.attempt().0 + 1);
        assert_eq!(actions(&mut m), vec![action.clone()]);
    }
    assert_eq!(action, refresh(16));
    assert_eq!(m.failure(), None);
    m.handle_reply(now, AttemptId(16), refreshed());
    assert_eq!(events(&mut m), vec![changed(Degraded, RefreshScheduled)]);
    assert_eq!(m.poll_timeout(), Some(now + REFRESH_INTERVAL));
}

#[test]
fn ignore_refresh_failures_does_not_apply_to_other_states() {
    let (mut m, action) = driven(ignoring_refresh_failures(), Script::Member, AddingSelf);
    let mut action = action.expect("AddSelf");
    let mut now = at(1);
    for _ in 0..2 {
        (action, now) = fail_and_retry(&mut m, now, &action, AddingSelf);
    }
    m.handle_reply(now, action.attempt(), error_reply(&action, unavailable()));
    assert_eq!(m.state(), Failed);
}

#[test]
fn zero_retries_fail_on_the_first_error() {
    let mut s = settings();
    s.nr_of_retries = Some(0);
    let mut m = started(s);
    m.handle_reply(at(1), AttemptId(1), Reply::Nodes(Err(unavailable())));
    transition(&mut m, GettingNodes, Failed, &[]);
}

#[test]
fn retry_wait_jitter_stays_within_its_fraction_and_is_replayable() {
    let wait = |seed: u64| {
        let mut s = settings();
        s.retry_jitter = 0.5;
        let mut m = Machine::new(s, me(), seed, t0()).expect("valid");
        m.handle_reply(at(0), AttemptId(1), Reply::Nodes(Err(unavailable())));
        m.poll_timeout().expect("retry timer") - at(0)
    };
    let waits: Vec<_> = (0..20).map(wait).collect();
    for w in &waits {
        assert!(*w >= RETRY_DELAY && *w < RETRY_DELAY.mul_f64(1.5), "{w:?}");
    }
    assert!(waits.iter().any(|w| *w != waits[0]), "no jitter: {waits:?}");
    assert_eq!(wait(3), wait(3));
}
