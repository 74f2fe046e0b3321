//! The in-memory backend's fault switches and TTLs behave as documented.

use std::sync::Arc;
use std::time::{Duration, Instant};

use constructr_core::memory::{Fault, ManualClock, MemoryCoordination};
use constructr_core::{
    AddMode, AddOutcome, ClusterId, ClusterName, Coordination, CoordinationError, LockOutcome,
    LockToken, NodeId, RefreshOutcome, Scope,
};

const TTL: Duration = Duration::from_secs(60);

fn scope() -> Scope {
    Scope::new("/constructr", ClusterName::new("faults").expect("valid")).expect("valid")
}

fn node(n: u8) -> NodeId {
    NodeId::new(format!("10.0.0.{n}:2552"), u64::from(n))
}

/// The registration of the seed of cluster 7 under `lock`.
fn seed_of_7(lock: LockToken) -> AddMode {
    AddMode::Seed {
        lock,
        cluster: ClusterId(7),
        expected_epoch_version: None,
    }
}

/// `node` asks for the lock; its token if it got it.
async fn try_lock(c: &MemoryCoordination, node: &NodeId) -> Option<LockToken> {
    match c.lock(scope().lease(node, TTL)).await.expect("lock") {
        LockOutcome::Acquired(token) => Some(token),
        LockOutcome::HeldByOther => None,
    }
}

/// `node` takes the lock and registers as the seed of cluster 7.
async fn seed(c: &MemoryCoordination, node: &NodeId) {
    let lock = try_lock(c, node).await.expect("lock not acquired");
    let mode = seed_of_7(lock);
    assert_eq!(
        c.add_self(scope().lease(node, TTL), &mode)
            .await
            .expect("add"),
        AddOutcome::Added
    );
}

#[tokio::test]
async fn retryable_fail_gives_unavailable_without_applying() {
    let c = MemoryCoordination::default();
    c.inject(Fault::Fail { retryable: true }, 1);
    let err = c
        .lock(scope().lease(&node(1), TTL))
        .await
        .expect_err("fault");
    assert!(
        matches!(err, CoordinationError::Unavailable { .. }),
        "{err:?}"
    );
    assert!(err.is_retryable());
    // Not applied: another node gets the lock.
    assert!(try_lock(&c, &node(2)).await.is_some());
}

#[tokio::test]
async fn permanent_fail_gives_a_permanent_error() {
    let c = MemoryCoordination::default();
    c.inject(Fault::Fail { retryable: false }, 1);
    let err = c.get_nodes(&scope()).await.expect_err("fault");
    assert!(
        matches!(err, CoordinationError::Permanent { .. }),
        "{err:?}"
    );
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn faults_apply_to_the_next_n_calls_only() {
    let c = MemoryCoordination::default();
    c.inject(Fault::Fail { retryable: true }, 2);
    assert!(c.get_nodes(&scope()).await.is_err());
    assert!(c.get_nodes(&scope()).await.is_err());
    assert!(c.get_nodes(&scope()).await.is_ok());
}

#[tokio::test]
async fn failed_registration_is_not_written() {
    let c = MemoryCoordination::default();
    let lock = try_lock(&c, &node(1)).await.expect("lock");
    c.inject(Fault::Fail { retryable: true }, 1);
    let mode = seed_of_7(lock);
    assert!(
        c.add_self(scope().lease(&node(1), TTL), &mode)
            .await
            .is_err()
    );
    let r = c.get_nodes(&scope()).await.expect("get");
    assert!(r.nodes.is_empty());
    assert_eq!(r.epoch, None);
}

#[tokio::test]
async fn drop_reply_applies_but_never_answers() {
    let c = MemoryCoordination::default();
    c.inject(Fault::DropReply, 1);
    let out = tokio::time::timeout(
        Duration::from_millis(200),
        c.lock(scope().lease(&node(1), TTL)),
    )
    .await;
    assert!(out.is_err(), "the reply was not dropped: {out:?}");
    // Applied: node 1 holds the lock.
    assert_eq!(try_lock(&c, &node(2)).await, None, "held by node 1");
    assert!(try_lock(&c, &node(1)).await.is_some());
}

#[tokio::test]
async fn delay_applies_then_answers_late() {
    let c = MemoryCoordination::default();
    seed(&c, &node(1)).await;
    c.inject(Fault::Delay(Duration::from_millis(150)), 1);
    let start = tokio::time::Instant::now();
    let r = c.get_nodes(&scope()).await.expect("get");
    assert!(start.elapsed() >= Duration::from_millis(150));
    assert_eq!(r.nodes, vec![node(1)]);
}

#[tokio::test]
async fn expire_lock_lets_another_node_lock_and_fences_the_old_holder() {
    let c = MemoryCoordination::default();
    let old = try_lock(&c, &node(1)).await.expect("lock");
    assert_eq!(try_lock(&c, &node(2)).await, None, "held by node 1");
    c.expire_lock(&scope());
    let new = try_lock(&c, &node(2)).await;
    let new = new.expect("lock not acquired after expire_lock");
    assert_ne!(old, new, "a token was reused for a later holder");
    let mode = seed_of_7(old);
    assert_eq!(
        c.add_self(scope().lease(&node(1), TTL), &mode)
            .await
            .expect("add"),
        AddOutcome::Refused
    );
}

#[tokio::test]
async fn expire_entry_makes_refresh_return_missing() {
    let c = MemoryCoordination::default();
    seed(&c, &node(1)).await;
    assert_eq!(
        c.refresh(scope().lease(&node(1), TTL))
            .await
            .expect("refresh"),
        RefreshOutcome::Refreshed
    );
    c.expire_entry(&scope(), &node(1).address);
    assert_eq!(
        c.refresh(scope().lease(&node(1), TTL))
            .await
            .expect("refresh"),
        RefreshOutcome::Missing
    );
    let r = c.get_nodes(&scope()).await.expect("get");
    assert!(r.nodes.is_empty());
    // The epoch marker stays.
    assert_eq!(r.epoch.map(|e| e.cluster), Some(ClusterId(7)));
}

#[test]
fn ttls_run_on_the_injected_clock() {
    let t0 = Instant::now();
    let clock = ManualClock::new(t0);
    let c = MemoryCoordination::new(Arc::new(clock.clone()));
    let s = scope();
    let ttl = Duration::from_secs(10);
    let LockOutcome::Acquired(lock) = c.lock_at(t0, s.lease(&node(1), ttl)) else {
        panic!("lock")
    };
    let mode = seed_of_7(lock);
    assert_eq!(
        c.add_self_at(t0, s.lease(&node(1), ttl), &mode),
        AddOutcome::Added
    );
    let almost = t0 + ttl - Duration::from_millis(1);
    assert_eq!(c.get_nodes_at(almost, &s).nodes, vec![node(1)]);
    assert_eq!(
        c.lock_at(almost, s.lease(&node(2), ttl)),
        LockOutcome::HeldByOther
    );
    assert!(c.get_nodes_at(t0 + ttl, &s).nodes.is_empty());
    assert!(matches!(
        c.lock_at(t0 + ttl, s.lease(&node(2), ttl)),
        LockOutcome::Acquired(_)
    ));
}

#[tokio::test]
async fn async_api_reads_the_injected_clock() {
    let t0 = Instant::now();
    let clock = ManualClock::new(t0);
    let c = MemoryCoordination::new(Arc::new(clock.clone()));
    seed(&c, &node(1)).await;
    assert_eq!(
        c.get_nodes(&scope()).await.expect("get").nodes,
        vec![node(1)]
    );
    clock.advance(TTL);
    assert!(c.get_nodes(&scope()).await.expect("get").nodes.is_empty());
    assert_eq!(
        c.refresh(scope().lease(&node(1), TTL))
            .await
            .expect("refresh"),
        RefreshOutcome::Missing
    );
}

#[tokio::test]
async fn calls_are_counted() {
    let c = MemoryCoordination::default();
    assert_eq!(c.calls(), 0);
    c.get_nodes(&scope()).await.expect("get");
    c.lock(scope().lease(&node(1), TTL)).await.expect("lock");
    assert_eq!(c.calls(), 2);
}
