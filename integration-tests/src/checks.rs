//! Checks that the etcd and the Consul tests both make: a watch that wakes on a
//! registration, and how refused credentials are reported.

use std::sync::Arc;
use std::time::Duration;

use constructr_core::{
    AddMode, AddOutcome, Coordination, CoordinationError, LockOutcome, Scope, WaitOutcome,
    scenarios::node_id,
};
use tokio::task::JoinHandle;

/// A running `wait_for_change` on `scope`, from the revision of a read of it now.
pub async fn spawn_wait_for_change<C: Coordination>(
    coordination: &Arc<C>,
    scope: &Scope,
) -> JoinHandle<Result<WaitOutcome, CoordinationError>> {
    let read = coordination.get_nodes(scope).await.unwrap();
    let coordination = coordination.clone();
    let scope = scope.clone();
    tokio::spawn(async move { coordination.wait_for_change(&scope, read.revision).await })
}

/// Registers node 1 under `scope` and checks that `waiter` then wakes (within 10 s, `what`
/// in the message) with [`WaitOutcome::Changed`].
pub async fn registration_wakes<C: Coordination>(
    coordination: &C,
    scope: &Scope,
    waiter: JoinHandle<Result<WaitOutcome, CoordinationError>>,
    what: &str,
) {
    let added = coordination
        .add_self(
            scope.lease(&node_id(1), Duration::from_secs(10)),
            &AddMode::Join { cluster: None },
        )
        .await
        .unwrap();
    assert_eq!(added, AddOutcome::Added);
    let out = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .unwrap_or_else(|_| panic!("{what}"))
        .unwrap()
        .unwrap();
    assert_eq!(out, WaitOutcome::Changed);
}

/// `err` is [`CoordinationError::Unauthorized`].
pub fn assert_unauthorized(err: &CoordinationError) {
    assert!(
        matches!(err, CoordinationError::Unauthorized { .. }),
        "{err:?}"
    );
}

/// `err`, the answer to a wrong `secret` (printed as `what`), is unauthorized, not retryable,
/// says `says`, and shows the secret neither in its message nor in its `Debug`.
pub fn assert_wrong_secret_refused(err: &CoordinationError, what: &str, says: &str, secret: &str) {
    let msg = err.to_string();
    println!("{what}: {msg}");
    assert_unauthorized(err);
    assert!(!err.is_retryable());
    assert!(msg.contains(says), "{msg}");
    assert!(!msg.contains(secret) && !format!("{err:?}").contains(secret));
}

/// Node 1 registers, refreshes once (the checking path), and after `settle` (the backend's
/// watch of its own entries lists it) every further refresh sends exactly **one** request.
/// Then an entry deleted behind the backend's back (`delete`) is still reported `Missing`
/// by the next refresh.
pub async fn steady_refresh_is_one_request<C, D>(
    coordination: &C,
    scope: &Scope,
    ttl: Duration,
    settle: Duration,
    delete: D,
) where
    C: Coordination,
    D: std::future::Future<Output = ()>,
{
    use constructr_core::RefreshOutcome;
    let me = node_id(1);
    let added = coordination
        .add_self(scope.lease(&me, ttl), &AddMode::Join { cluster: None })
        .await
        .unwrap();
    assert_eq!(added, AddOutcome::Added);
    let refreshed = coordination.refresh(scope.lease(&me, ttl)).await.unwrap();
    assert_eq!(refreshed, RefreshOutcome::Refreshed);
    tokio::time::sleep(settle).await;
    let sent = || {
        coordination
            .requests_sent()
            .expect("the backend counts its requests")
    };
    let before = sent();
    for _ in 0..5 {
        let refreshed = coordination.refresh(scope.lease(&me, ttl)).await.unwrap();
        assert_eq!(refreshed, RefreshOutcome::Refreshed);
    }
    assert_eq!(
        sent() - before,
        5,
        "requests for 5 refreshes of an unchanged entry"
    );
    delete.await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refreshed = coordination.refresh(scope.lease(&me, ttl)).await.unwrap();
    assert_eq!(
        refreshed,
        RefreshOutcome::Missing,
        "the deleted entry was refreshed"
    );
}

/// `n` waiters on one scope, all from the same read, hold at most `max_requests` requests
/// between them (one shared watch, not one each), and all wake when node 1 registers.
pub async fn waiters_share_one_watch<C: Coordination>(
    coordination: &Arc<C>,
    scope: &Scope,
    n: usize,
    max_requests: u64,
) {
    let read = coordination.get_nodes(scope).await.unwrap();
    let before = coordination
        .requests_sent()
        .expect("the backend counts its requests");
    let waiters: Vec<_> = (0..n)
        .map(|_| {
            let c = coordination.clone();
            let scope = scope.clone();
            let revision = read.revision;
            tokio::spawn(async move { c.wait_for_change(&scope, revision).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let waiting = coordination.requests_sent().unwrap() - before;
    assert!(
        waiting <= max_requests,
        "{n} waiters sent {waiting} requests (at most {max_requests} expected)"
    );
    assert!(
        waiters.iter().all(|w| !w.is_finished()),
        "woke without a change"
    );
    let added = coordination
        .add_self(
            scope.lease(&node_id(1), Duration::from_secs(10)),
            &AddMode::Join { cluster: None },
        )
        .await
        .unwrap();
    assert_eq!(added, AddOutcome::Added);
    for w in waiters {
        let out = tokio::time::timeout(Duration::from_secs(10), w)
            .await
            .expect("a waiter did not wake")
            .unwrap()
            .unwrap();
        assert_eq!(out, WaitOutcome::Changed);
    }
}

/// `n` nodes of one backend value that ask for one scope's lock at once send the requests of
/// one lock attempt (`max_requests`), not `n` attempts: one takes it, the others hear
/// `HeldByOther` without granting a lease or creating a session.
pub async fn racing_lock_requests_are_one<C: Coordination>(
    coordination: &Arc<C>,
    scope: &Scope,
    n: usize,
    max_requests: u64,
) {
    let before = coordination
        .requests_sent()
        .expect("the backend counts its requests");
    let attempts: Vec<_> = (1..=n)
        .map(|i| {
            let c = coordination.clone();
            let scope = scope.clone();
            tokio::spawn(async move {
                c.lock(scope.lease(&node_id(i), Duration::from_secs(10)))
                    .await
            })
        })
        .collect();
    let mut acquired = 0;
    for a in attempts {
        match a.await.unwrap().expect("lock") {
            LockOutcome::Acquired(_) => acquired += 1,
            LockOutcome::HeldByOther => {}
        }
    }
    assert_eq!(
        acquired, 1,
        "exactly one of {n} racing nodes takes the lock"
    );
    let sent = coordination.requests_sent().unwrap() - before;
    assert!(
        sent <= max_requests,
        "{n} racing lock requests sent {sent} requests (at most {max_requests} expected)"
    );
}

/// `n` members of one process joining a seeded cluster at once, and `n / 10` nodes of
/// another cluster joining beside them: every member is added, the others refused, and
/// (registrations being written together) at most `max_requests` requests are sent.
pub async fn racing_joins_share_requests<C: Coordination>(
    coordination: &Arc<C>,
    scope: &Scope,
    n: usize,
    max_requests: u64,
) {
    let ttl = Duration::from_secs(30);
    let seed = node_id(0);
    let LockOutcome::Acquired(lock) = coordination.lock(scope.lease(&seed, ttl)).await.unwrap()
    else {
        panic!("a fresh scope's lock is free");
    };
    let cluster = constructr_core::ClusterId(0x5eed);
    let seeded = coordination
        .add_self(
            scope.lease(&seed, ttl),
            &AddMode::Seed {
                lock,
                cluster,
                expected_epoch_version: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(seeded, AddOutcome::Added);
    let before = coordination
        .requests_sent()
        .expect("the backend counts its requests");
    let strangers = n / 10;
    let joins: Vec<_> = (1..=n + strangers)
        .map(|i| {
            let c = coordination.clone();
            let scope = scope.clone();
            let cluster = if i > n {
                constructr_core::ClusterId(0xbad)
            } else {
                cluster
            };
            tokio::spawn(async move {
                c.add_self(
                    scope.lease(&node_id(i), ttl),
                    &AddMode::Join {
                        cluster: Some(cluster),
                    },
                )
                .await
            })
        })
        .collect();
    for (i, j) in joins.into_iter().enumerate() {
        let outcome = j.await.unwrap().expect("registration");
        let expected = if i < n {
            AddOutcome::Added
        } else {
            AddOutcome::Refused
        };
        assert_eq!(outcome, expected, "node {}", i + 1);
    }
    let sent = coordination.requests_sent().unwrap() - before;
    println!(
        "{} racing registrations sent {sent} requests",
        n + strangers
    );
    let registered = coordination.get_nodes(scope).await.unwrap();
    assert_eq!(
        registered.nodes.len(),
        n + 1,
        "the seed and its {n} members, none of the other cluster"
    );
    assert_eq!(
        registered.epoch.map(|e| e.cluster),
        Some(cluster),
        "the marker still names the seed's cluster"
    );
    assert!(
        sent <= max_requests,
        "{} racing registrations sent {sent} requests (at most {max_requests} expected)",
        n + strangers
    );
}

/// A lock that another process's node holds: `n` nodes of this process asking for it at
/// once all hear `HeldByOther`, and send at most `max_requests` requests between them (the
/// first request names the holder, which answers the others).
pub async fn lock_held_elsewhere_is_asked_once<C: Coordination>(
    ours: &Arc<C>,
    theirs: &C,
    scope: &Scope,
    n: usize,
    max_requests: u64,
) {
    let ttl = Duration::from_secs(30);
    let taken = theirs.lock(scope.lease(&node_id(0), ttl)).await.unwrap();
    assert!(matches!(taken, LockOutcome::Acquired(_)), "{taken:?}");
    let before = ours
        .requests_sent()
        .expect("the backend counts its requests");
    let attempts: Vec<_> = (1..=n)
        .map(|i| {
            let c = ours.clone();
            let scope = scope.clone();
            tokio::spawn(async move { c.lock(scope.lease(&node_id(i), ttl)).await })
        })
        .collect();
    for a in attempts {
        assert_eq!(a.await.unwrap().expect("lock"), LockOutcome::HeldByOther);
    }
    let sent = ours.requests_sent().unwrap() - before;
    println!("{n} nodes asking for a lock held elsewhere sent {sent} requests");
    assert!(
        sent <= max_requests,
        "{n} nodes asking for a lock held elsewhere sent {sent} requests (at most {max_requests} expected)"
    );
}
