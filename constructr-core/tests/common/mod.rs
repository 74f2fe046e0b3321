//! Helpers shared by the state-machine tests: a fixed time base, fixed settings, node ids,
//! and small drivers that script a machine into a given state.
//!
//! Every test calls one handler and then asserts the exact list of actions (and events)
//! it produced, openraft-engine style.
#![allow(dead_code)]

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use constructr_core::{
    Action, AddMode, AddOutcome, AttemptId, ClusterId, CoordinationError, Epoch, ErrorSummary,
    Event, Failure, LockOutcome, LockToken, Machine, NodeId, NodeLimit, RefreshOutcome, Registry,
    Reply, Settings, State, WaitOutcome,
};

static BASE: LazyLock<Instant> = LazyLock::new(Instant::now);

/// The fixed time base of every test.
pub fn t0() -> Instant {
    *BASE
}

/// `t0 + ms`.
pub fn at(ms: u64) -> Instant {
    t0() + Duration::from_millis(ms)
}

pub const COORDINATION_TIMEOUT: Duration = Duration::from_secs(1);
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(10);
pub const RETRY_DELAY: Duration = Duration::from_secs(2);
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(30);
/// The rng seed of [`machine`].
pub const SEED: u64 = 7;
/// The cluster named by the registry's epoch in the member scripts.
pub const THEIR_CLUSTER: ClusterId = ClusterId(0xC1);

/// The cap of the growing retry waits in [`outage_settings`].
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(16);

/// `base` with the coordination, join and refresh durations of the scripts.
pub fn with_test_timings(mut base: Settings) -> Settings {
    base.coordination_timeout = COORDINATION_TIMEOUT;
    base.join_timeout = JOIN_TIMEOUT;
    base.refresh_interval = REFRESH_INTERVAL;
    base
}

/// constructr's defaults (degrade, time budget, growing waits, re-seed grace) with the
/// durations of [`with_test_timings`], [`RETRY_DELAY`], a 16 s wait cap and no jitter.
pub fn outage_settings() -> Settings {
    let mut s = with_test_timings(Settings::default());
    s.retry_delay = RETRY_DELAY;
    s.max_retry_delay = MAX_RETRY_DELAY;
    s.retry_jitter = 0.0;
    s
}

/// ConstructR's fail-fast behaviour (2 retries at fixed waits, no re-seed grace, members
/// fail once retries are used up) with the durations of [`outage_settings`] and no jitter,
/// so every wait is exact. The outage behaviour has its own tests with [`outage_settings`].
pub fn settings() -> Settings {
    let mut s = outage_settings();
    s.max_retry_delay = RETRY_DELAY;
    s.nr_of_retries = Some(2);
    s.ignore_refresh_failures = false;
    s.reseed_grace = Some(Duration::ZERO);
    s
}

/// Entry TTL of [`settings`]: `refresh_interval × ttl_factor`.
pub fn ttl() -> Duration {
    settings().ttl()
}

/// This node.
pub fn me() -> NodeId {
    NodeId::new("10.0.0.1:2552", 0xA1)
}

/// Another node.
pub fn node(n: u8) -> NodeId {
    NodeId::new(format!("10.0.0.{n}:2552"), 0x100 + u64::from(n))
}

/// This node's stale entry: same address, another incarnation.
pub fn my_stale_entry() -> NodeId {
    NodeId::new(me().address, 0xDEAD)
}

/// A machine for [`me`] with [`SEED`], created at `t0`.
pub fn machine(settings: Settings) -> Machine {
    Machine::new(settings, me(), SEED, t0()).expect("valid settings")
}

/// A machine created at `t0` with its first action (`GetNodes { 1 }`) and events drained.
pub fn started(settings: Settings) -> Machine {
    let mut m = machine(settings);
    assert_eq!(actions(&mut m), vec![get_nodes(1)]);
    assert_eq!(events(&mut m), vec![]);
    m
}

/// Drains every queued action.
pub fn actions(m: &mut Machine) -> Vec<Action> {
    std::iter::from_fn(|| m.poll_action()).collect()
}

/// Drains every queued event.
pub fn events(m: &mut Machine) -> Vec<Event> {
    std::iter::from_fn(|| m.poll_event()).collect()
}

/// `Event::StateChanged`.
pub fn changed(from: State, to: State) -> Event {
    Event::StateChanged { from, to }
}

/// The bounded read of a node with the default `max-nr-of-seed-nodes`.
pub fn get_nodes(attempt: u64) -> Action {
    Action::GetNodes {
        attempt: AttemptId(attempt),
        limit: NodeLimit::for_seeds(Settings::default().max_nr_of_seed_nodes),
    }
}

/// The full read of a seed that confirms its registration.
pub fn get_all_nodes(attempt: u64) -> Action {
    Action::GetNodes {
        attempt: AttemptId(attempt),
        limit: None,
    }
}

pub fn lock(attempt: u64) -> Action {
    Action::Lock {
        attempt: AttemptId(attempt),
        ttl: settings().lock_ttl(),
    }
}

pub fn join(attempt: u64, seeds: Vec<NodeId>) -> Action {
    Action::JoinCluster {
        attempt: AttemptId(attempt),
        seeds,
    }
}

pub fn leave(attempt: u64) -> Action {
    Action::LeaveCluster {
        attempt: AttemptId(attempt),
    }
}

pub fn refresh(attempt: u64) -> Action {
    Action::Refresh {
        attempt: AttemptId(attempt),
        ttl: ttl(),
    }
}

pub fn remove_self(attempt: u64) -> Action {
    Action::RemoveSelf {
        attempt: AttemptId(attempt),
    }
}

/// This node's registration as a member of `cluster` (`None`: a registry without epoch).
pub fn add_member(attempt: u64, cluster: Option<ClusterId>) -> Action {
    Action::AddSelf {
        attempt: AttemptId(attempt),
        ttl: ttl(),
        mode: AddMode::Join { cluster },
    }
}

/// This node's fenced registration as the seed of `cluster`, under `lock`.
pub fn add_seed(
    attempt: u64,
    lock: LockToken,
    cluster: ClusterId,
    expected_epoch_version: Option<u64>,
) -> Action {
    Action::AddSelf {
        attempt: AttemptId(attempt),
        ttl: ttl(),
        mode: AddMode::Seed {
            lock,
            cluster,
            expected_epoch_version,
        },
    }
}

/// A watch for changes after registry revision `after`.
pub fn wait_for_change(attempt: u64, after: u64) -> Action {
    Action::WaitForChange {
        attempt: AttemptId(attempt),
        after: Some(after),
    }
}

pub fn nodes(registry: Registry) -> Reply {
    Reply::Nodes(Ok(registry))
}

/// The lock, acquired with [`token`].
pub fn acquired() -> Reply {
    Reply::Lock(Ok(LockOutcome::Acquired(token())))
}

pub fn held_by_other() -> Reply {
    Reply::Lock(Ok(LockOutcome::HeldByOther))
}

pub fn joined() -> Reply {
    Reply::Joined(Ok(()))
}

pub fn added() -> Reply {
    Reply::AddSelf(Ok(AddOutcome::Added))
}

/// The registration refused by its fence.
pub fn refused() -> Reply {
    Reply::AddSelf(Ok(AddOutcome::Refused))
}

pub fn refreshed() -> Reply {
    Reply::Refresh(Ok(RefreshOutcome::Refreshed))
}

/// The refresh found no entry of this node.
pub fn missing() -> Reply {
    Reply::Refresh(Ok(RefreshOutcome::Missing))
}

/// The cluster runtime refused the join.
pub fn join_failed() -> Reply {
    Reply::Joined(Err(constructr_core::ClusterError::Join {
        message: "boom".into(),
    }))
}

pub fn left() -> Reply {
    Reply::Left(Ok(()))
}

pub fn removed() -> Reply {
    Reply::RemoveSelf(Ok(()))
}

/// The watch saw a change.
pub fn watch_fired() -> Reply {
    Reply::Changed(Ok(WaitOutcome::Changed))
}

/// A registry read.
pub fn registry(nodes: &[NodeId], epoch: Option<Epoch>, revision: u64) -> Registry {
    Registry {
        nodes: nodes.to_vec(),
        epoch,
        revision: Some(revision),
        lock: None,
    }
}

/// An empty registry without epoch marker.
pub fn empty(revision: u64) -> Registry {
    registry(&[], None, revision)
}

pub fn epoch(cluster: ClusterId, version: u64) -> Option<Epoch> {
    Some(Epoch { cluster, version })
}

/// `nodes` registered in [`THEIR_CLUSTER`], epoch version and revision `version`.
pub fn theirs(nodes: &[NodeId], version: u64) -> Registry {
    registry(nodes, epoch(THEIR_CLUSTER, version), version)
}

/// The lock token of the scripts.
pub fn token() -> LockToken {
    LockToken("lock-1".into())
}

pub fn unavailable() -> CoordinationError {
    CoordinationError::unavailable("connection refused")
}

pub fn unavailable_summary() -> ErrorSummary {
    unavailable().summary()
}

pub fn timeout_summary() -> ErrorSummary {
    CoordinationError::Timeout.summary()
}

/// The event of a retryable failure in `state`: the retry follows after [`RETRY_DELAY`].
pub fn retrying(state: State, error: ErrorSummary) -> Event {
    Event::Retrying {
        state,
        error,
        retry_in: RETRY_DELAY,
    }
}

/// The failure of a machine whose retries in `state` are used up.
pub fn exhausted(state: State, error: ErrorSummary) -> Failure {
    Failure::RetriesExhausted { state, error }
}

/// Drains the actions and returns the only one.
pub fn single(m: &mut Machine) -> Action {
    let mut a = actions(m);
    assert_eq!(a.len(), 1, "expected exactly one action, got {a:?}");
    a.remove(0)
}

/// Which registry the scripted coordination service shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Script {
    /// Empty registry, lock free: this node seeds.
    Seed,
    /// `node(2)` and `node(3)` registered in [`THEIR_CLUSTER`]: this node joins.
    Member,
}

/// Answers the machine's actions (all at `now`) as `script` dictates until it is in
/// `target`; returns the action issued on entering `target` (`None` if there is none, e.g.
/// `RefreshScheduled`). Events are drained. To reach `Refreshing` the refresh timer is fired
/// at its deadline.
pub fn drive(m: &mut Machine, now: Instant, script: Script, target: State) -> Option<Action> {
    let mut last = actions(m).pop();
    let mut now = now;
    for _ in 0..20 {
        if m.state() == target {
            events(m);
            return last;
        }
        if m.state() == State::RefreshScheduled {
            now = m.poll_timeout().expect("refresh timer");
            m.handle_timeout(now);
            last = actions(m).pop();
            continue;
        }
        let action = last.take().expect("an action to answer");
        let reply = match (&action, script) {
            (Action::GetNodes { .. }, Script::Seed) => nodes(empty(1)),
            (Action::GetNodes { .. }, Script::Member) => nodes(theirs(&[node(2), node(3)], 5)),
            (Action::Lock { .. }, _) => acquired(),
            (Action::JoinCluster { .. }, _) => joined(),
            (Action::AddSelf { .. }, _) => added(),
            (Action::Refresh { .. }, _) => refreshed(),
            (Action::LeaveCluster { .. }, _) => left(),
            (Action::RemoveSelf { .. }, _) => removed(),
            (a, _) => panic!("unexpected action {a:?}"),
        };
        m.handle_reply(now, action.attempt(), reply);
        let mut a = actions(m);
        assert!(a.len() <= 1, "expected at most one action, got {a:?}");
        last = a.pop();
    }
    panic!("did not reach {target:?}; in {:?}", m.state());
}

/// A machine created at `t0` and [`drive`]n by `script` into `target`; the action it issued on
/// entering `target`, if any.
pub fn driven(settings: Settings, script: Script, target: State) -> (Machine, Option<Action>) {
    let mut m = machine(settings);
    let action = drive(&mut m, t0(), script, target);
    (m, action)
}

/// Fires the machine's timer at its deadline; returns the deadline.
pub fn fire(m: &mut Machine) -> Instant {
    let now = m.poll_timeout().expect("a timer");
    m.handle_timeout(now);
    now
}

/// Asserts one step of the machine: the events and the actions it queued (both drained).
#[track_caller]
pub fn step(m: &mut Machine, events: Vec<Event>, actions: Vec<Action>) {
    assert_eq!(self::events(m), events, "events");
    assert_eq!(self::actions(m), actions, "actions");
}

/// Asserts a step that only moved the machine from `from` to `to`: that one event, and
/// exactly `actions` (both drained).
#[track_caller]
pub fn transition(m: &mut Machine, from: State, to: State, actions: &[Action]) {
    assert_eq!(self::events(m), vec![changed(from, to)], "events");
    assert_eq!(self::actions(m), actions, "actions");
}

/// [`step`], and when the machine next wants to be polled.
#[track_caller]
pub fn expect_step(
    m: &mut Machine,
    events: Vec<Event>,
    actions: Vec<Action>,
    timeout: Option<Instant>,
) {
    step(m, events, actions);
    assert_eq!(m.poll_timeout(), timeout, "poll_timeout");
}

/// Asserts that the last call changed nothing visible: no event, no action.
#[track_caller]
pub fn nothing(m: &mut Machine) {
    step(m, vec![], vec![]);
}

/// Asserts that the last call was ignored: no event, no action, still in `state`, the timer
/// still at `timeout`.
#[track_caller]
pub fn ignored(m: &mut Machine, state: State, timeout: Option<Instant>) {
    nothing(m);
    assert_eq!(m.state(), state, "state");
    assert_eq!(m.poll_timeout(), timeout, "poll_timeout");
}
