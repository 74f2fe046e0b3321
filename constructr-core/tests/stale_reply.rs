//! Stale replies: a reply carrying an attempt id that is not the current one (or of the
//! wrong kind) is ignored, so a late reply is never mistaken for the reply of a retry.

mod common;

use common::*;
use constructr_core::AttemptId;
use constructr_core::State::*;

#[test]
fn request_timeout_retries_with_a_new_attempt_after_retry_delay() {
    let mut m = started(settings());
    let timed_out = t0() + COORDINATION_TIMEOUT;
    m.handle_timeout(timed_out);
    step(
        &mut m,
        vec![retrying(GettingNodes, timeout_summary())],
        vec![],
    );
    assert_eq!(m.state(), GettingNodes);
    assert_eq!(m.poll_timeout(), Some(timed_out + RETRY_DELAY));

    let retry = timed_out + RETRY_DELAY;
    m.handle_timeout(retry);
    step(&mut m, vec![], vec![get_nodes(2)]);
    assert_eq!(m.poll_timeout(), Some(retry + COORDINATION_TIMEOUT));
}

#[test]
fn late_reply_to_the_old_attempt_is_ignored_and_the_new_one_accepted() {
    let mut m = started(settings());
    m.handle_timeout(t0() + COORDINATION_TIMEOUT);
    let retry = t0() + COORDINATION_TIMEOUT + RETRY_DELAY;
    m.handle_timeout(retry);
    assert_eq!(actions(&mut m), vec![get_nodes(2)]);
    events(&mut m);

    // The first read answers late, with a registry that would make the node join.
    m.handle_reply(retry, AttemptId(1), nodes(theirs(&[node(2)], 3)));
    ignored(&mut m, GettingNodes, Some(retry + COORDINATION_TIMEOUT));

    m.handle_reply(retry, AttemptId(2), nodes(empty(4)));
    transition(&mut m, GettingNodes, Locking, &[lock(3)]);
}

#[test]
fn late_reply_during_the_retry_wait_is_ignored() {
    let mut m = started(settings());
    let timed_out = t0() + COORDINATION_TIMEOUT;
    m.handle_timeout(timed_out);
    events(&mut m);
    m.handle_reply(timed_out, AttemptId(1), nodes(empty(1)));
    ignored(&mut m, GettingNodes, Some(timed_out + RETRY_DELAY));
    // The retry still happens.
    m.handle_timeout(timed_out + RETRY_DELAY);
    assert_eq!(actions(&mut m), vec![get_nodes(2)]);
}

#[test]
fn late_lock_reply_after_a_retry_is_ignored() {
    let mut m = started(settings());
    m.handle_reply(at(0), AttemptId(1), nodes(empty(1)));
    assert_eq!(actions(&mut m), vec![lock(2)]);
    m.handle_timeout(t0() + COORDINATION_TIMEOUT);
    m.handle_timeout(t0() + COORDINATION_TIMEOUT + RETRY_DELAY);
    assert_eq!(actions(&mut m), vec![lock(3)]);
    events(&mut m);

    m.handle_reply(at(3500), AttemptId(2), acquired());
    nothing(&mut m);
    assert_eq!(m.state(), Locking);

    m.handle_reply(at(3600), AttemptId(3), acquired());
    transition(&mut m, Locking, VerifyingEmpty, &[get_nodes(4)]);
}

#[test]
fn reply_of_the_wrong_kind_for_the_current_attempt_is_ignored() {
    let mut m = started(settings());
    m.handle_reply(at(10), AttemptId(1), acquired());
    ignored(&mut m, GettingNodes, Some(t0() + COORDINATION_TIMEOUT));

    // The real reply is still accepted.
    m.handle_reply(at(20), AttemptId(1), nodes(empty(1)));
    assert_eq!(actions(&mut m), vec![lock(2)]);
}

#[test]
fn reply_with_an_unknown_attempt_is_ignored() {
    let mut m = started(settings());
    m.handle_reply(at(10), AttemptId(99), nodes(empty(1)));
    nothing(&mut m);
    assert_eq!(m.state(), GettingNodes);
}

#[test]
fn stale_reply_in_a_later_state_is_ignored() {
    let (mut m, _) = driven(settings(), Script::Seed, RefreshScheduled);
    let due = m.poll_timeout();
    // A duplicate of the (already accepted) registration reply, and an old read.
    m.handle_reply(at(1), AttemptId(5), refused());
    m.handle_reply(at(1), AttemptId(1), nodes(empty(1)));
    ignored(&mut m, RefreshScheduled, due);
}

#[test]
fn spurious_early_timeout_is_a_no_op() {
    let mut m = started(settings());
    m.handle_timeout(t0() + COORDINATION_TIMEOUT / 2);
    ignored(&mut m, GettingNodes, Some(t0() + COORDINATION_TIMEOUT));

    // And while registered.
    let (mut m, _) = driven(settings(), Script::Seed, RefreshScheduled);
    m.handle_timeout(t0() + REFRESH_INTERVAL / 2);
    ignored(&mut m, RefreshScheduled, Some(t0() + REFRESH_INTERVAL));
}
