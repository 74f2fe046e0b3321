//! What is specific to the etcd backend, against real etcd in Docker: the conformance suite,
//! a leader killed during bootstrap, watches across restarts and compactions, and what
//! etcd says to missing or wrong credentials. The scenarios every backend runs are in
//! `scenarios.rs`.
//!
//! Every test starts its own etcd and uses its own cluster name; they run in parallel.

use std::sync::Arc;
use std::time::Duration;

use constructr_core::conformance;
use constructr_core::local::LocalCluster;
use constructr_core::{
    Coordination, CoordinationError, LockOutcome, NodeId, Scope, Settings, State, WaitOutcome,
};
use constructr_etcd::{EtcdConfig, EtcdCoordination, EtcdError};
use integration_tests::checks::{
    assert_wrong_secret_refused, lock_held_elsewhere_is_asked_once, racing_joins_share_requests,
    racing_lock_requests_are_one, registration_wakes, spawn_wait_for_change,
    steady_refresh_is_one_request, waiters_share_one_watch,
};
use integration_tests::etcd::{EtcdCluster3, EtcdNode};
use integration_tests::nodes::{
    all_registered, assert_one_cluster, registered_nodes, sorted_ids, spawn_nodes,
};
use integration_tests::service::{Backend, ConformanceService};
use integration_tests::{
    eventually, fast_settings, init_tracing, require_docker, unique_cluster_name,
};
use tokio::time::Instant;

fn coordination(config: &EtcdConfig) -> Arc<EtcdCoordination> {
    Arc::new(EtcdCoordination::new(config).expect("valid etcd config"))
}

/// A fresh member, a client of it and the scope of a fresh cluster `what-...`.
async fn member_and_scope(what: &str) -> (EtcdNode, Arc<EtcdCoordination>, Scope) {
    let node = EtcdNode::start().await;
    let etcd = coordination(&node.config());
    let scope = fast_settings(unique_cluster_name(what)).scope().unwrap();
    (node, etcd, scope)
}

// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn conformance_suite_passes_against_real_etcd() {
    require_docker!();
    init_tracing();
    let report = conformance::run_all(&ConformanceService::start(Backend::Etcd).await).await;
    assert!(
        report.not_covered.is_empty(),
        "etcd declares every guarantee: {report:?}"
    );
    assert_eq!(report.ran.len(), conformance::CHECKS.len());
}

/// Settings that ride out an etcd election or restart of a few seconds: no retry count
/// limit (the time budget only), members degrade instead of failing.
fn patient_settings(what: &str) -> Settings {
    let mut s = fast_settings(unique_cluster_name(what));
    s.coordination_timeout = Duration::from_secs(1);
    s.nr_of_retries = None;
    s.retry_delay = Duration::from_millis(500);
    s.ttl_factor = 10.0;
    s.validate().expect("valid");
    s
}

#[tokio::test]
async fn leader_killed_during_bootstrap_still_forms_one_cluster() {
    require_docker!();
    init_tracing();
    let mut cluster = EtcdCluster3::start().await;
    let leader = cluster.leader().await;
    // Requests go to the leader until it dies: the failover to the next endpoint is exercised.
    let etcd = coordination(&cluster.config_starting_at(leader));
    let settings = patient_settings("leader-kill");
    let scope = settings.scope().unwrap();
    let local = LocalCluster::new();

    // Bootstrapping 10 nodes takes ~150 ms, too short to aim a kill at. A node that took the
    // lock and vanished holds everybody in the middle of the bootstrap (locking, waiting on
    // watches) until its lock expires, which must then happen on the new leader.
    let ghost = NodeId::new("ghost.test:2552", 1);
    assert!(matches!(
        etcd.lock(scope.lease(&ghost, Duration::from_secs(2)))
            .await
            .unwrap(),
        LockOutcome::Acquired(_)
    ));
    let start = Instant::now();
    let handles = spawn_nodes(10, &settings, &etcd, &local);
    eventually(
        Duration::from_secs(10),
        "all nodes waiting for the lock holder",
        || async {
            handles
                .iter()
                .all(|h| h.state() == State::WaitingForNodes)
                .then_some(())
        },
    )
    .await;
    cluster.kill(leader).await;
    let killed_at = start.elapsed();
    assert!(
        handles.iter().all(|h| !h.state().is_registered()),
        "the bootstrap finished before the leader was killed"
    );
    println!(
        "killed leader {} at {} ms, during the bootstrap",
        cluster.names()[leader],
        killed_at.as_millis()
    );

    all_registered(&handles, Duration::from_secs(60)).await;
    println!(
        "10 nodes registered {} ms after start despite the leader kill",
        start.elapsed().as_millis()
    );
    assert_one_cluster(&local, 10);
    assert_eq!(registered_nodes(&etcd, &scope).await, sorted_ids(&handles));
}

/// 500 nodes of one process register while etcd is frozen for 2 s (`docker pause`, like
/// SIGSTOP) and then killed (SIGKILL) and started again: the registrations written together
/// that time out, fail or lose their reply leave no node out and form no second cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_nodes_registering_through_an_etcd_freeze_and_kill_form_one_cluster() {
    require_docker!();
    init_tracing();
    let node = EtcdNode::start().await;
    let etcd = coordination(&node.config());
    let settings = patient_settings("freeze-joins");
    let scope = settings.scope().unwrap();
    let local = LocalCluster::new();
    let start = Instant::now();
    let handles = spawn_nodes(500, &settings, &etcd, &local);
    // The seed registered: the members' registrations are on their way.
    while !handles.iter().any(|h| h.state().is_registered()) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no seed registered"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    node.freeze().await;
    let at_freeze = handles.iter().filter(|h| h.state().is_registered()).count();
    println!(
        "froze etcd {} ms after start with {at_freeze} of 500 registered",
        start.elapsed().as_millis()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    node.thaw().await;
    node.restart().await;
    println!("etcd back {} ms after start", start.elapsed().as_millis());
    all_registered(&handles, Duration::from_secs(90)).await;
    println!(
        "500 nodes registered {} ms after start",
        start.elapsed().as_millis()
    );
    assert_one_cluster(&local, 500);
    assert_eq!(registered_nodes(&*etcd, &scope).await, sorted_ids(&handles));
}

/// A refresh of an unchanged entry is one lease keep-alive (the backend's watch vouches for
/// the key); a key deleted by an operator while its lease lives is still noticed.
#[tokio::test]
async fn steady_state_refresh_is_one_request_and_still_notices_a_deleted_key() {
    require_docker!();
    init_tracing();
    let (node, etcd, scope) = member_and_scope("one-request").await;
    let key =
        constructr_core::entry::node_key(&scope, &constructr_core::scenarios::node_id(1).address);
    let delete = async {
        node.client().await.delete(key, None).await.unwrap();
    };
    steady_refresh_is_one_request(
        &*etcd,
        &scope,
        Duration::from_secs(10),
        Duration::from_millis(300),
        delete,
    )
    .await;
}

/// 200 nodes of one process waiting on one scope share one watch (two streams: from the
/// read, and from now on), and all wake on the first registration.
#[tokio::test]
async fn two_hundred_waiters_share_one_watch() {
    require_docker!();
    init_tracing();
    let (_node, etcd, scope) = member_and_scope("shared-watch").await;
    waiters_share_one_watch(&etcd, &scope, 200, 2).await;
}

/// 200 members of one process registering at once are written together: one lease grant
/// each, and a few transactions for all (not one each), while 20 nodes naming another
/// cluster beside them are refused.
#[tokio::test]
async fn two_hundred_racing_joins_share_a_few_transactions() {
    require_docker!();
    init_tracing();
    let (_node, etcd, scope) = member_and_scope("racing-joins").await;
    racing_joins_share_requests(&etcd, &scope, 200, 300).await;
}

/// 50 nodes asking for a lock that a node of another process holds send one request
/// between them, not one each in turn.
#[tokio::test]
async fn nodes_asking_for_a_lock_held_elsewhere_send_one_request() {
    require_docker!();
    init_tracing();
    let (node, etcd, scope) = member_and_scope("held-elsewhere").await;
    let elsewhere = coordination(&node.config());
    lock_held_elsewhere_is_asked_once(&etcd, &*elsewhere, &scope, 50, 3).await;
}

/// A node that finds the lock held sends one request, and grants no lease: nodes with
/// clients of their own (separate processes) that lose the lock race cost one request each.
#[tokio::test]
async fn a_node_asking_for_a_lock_held_elsewhere_sends_one_request() {
    require_docker!();
    init_tracing();
    let (node, etcd, scope) = member_and_scope("held-elsewhere-one").await;
    let elsewhere = coordination(&node.config());
    lock_held_elsewhere_is_asked_once(&etcd, &*elsewhere, &scope, 1, 1).await;
}

/// Leaving is one request: the revoke of the entry's lease, which deletes the entry; an
/// entry that another incarnation wrote over it stays.
#[tokio::test]
async fn removing_an_entry_is_one_revoke_and_spares_another_incarnations_entry() {
    require_docker!();
    init_tracing();
    let (node, etcd, scope) = member_and_scope("remove-revoke").await;
    let ttl = Duration::from_secs(30);
    let join = constructr_core::AddMode::Join { cluster: None };
    let me = NodeId::new("10.0.0.1:2552", 1);
    let added = etcd.add_self(scope.lease(&me, ttl), &join).await.unwrap();
    assert_eq!(added, constructr_core::AddOutcome::Added);
    // The backend's watch of its own entries opens in the background: let it.
    let mut before = etcd.requests_sent().unwrap();
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = etcd.requests_sent().unwrap();
        if now == before {
            break;
        }
        before = now;
    }
    etcd.remove_self(&scope, &me).await.unwrap();
    assert_eq!(etcd.requests_sent().unwrap() - before, 1, "one revoke");
    assert!(etcd.get_nodes(&scope).await.unwrap().nodes.is_empty());

    // Registered again, then overwritten by its next incarnation through another value:
    // removing the old one leaves the new one's entry alone.
    let added = etcd.add_self(scope.lease(&me, ttl), &join).await.unwrap();
    assert_eq!(added, constructr_core::AddOutcome::Added);
    let restarted = NodeId::new("10.0.0.1:2552", 2);
    let other = coordination(&node.config());
    let overwrite = constructr_core::AddMode::Join { cluster: None };
    // The marker is absent (no seed), so the newer incarnation registers the same way.
    let added = other
        .add_self(scope.lease(&restarted, ttl), &overwrite)
        .await
        .unwrap();
    assert_eq!(added, constructr_core::AddOutcome::Added);
    etcd.remove_self(&scope, &me).await.unwrap();
    assert_eq!(
        etcd.get_nodes(&scope).await.unwrap().nodes,
        vec![restarted],
        "the newer incarnation's entry stays"
    );
}

/// A server that allows fewer operations per transaction than a batch holds
/// (`--max-txn-ops=8`): the batches shrink until they fit, and every member is added.
#[tokio::test]
async fn racing_joins_fit_a_server_that_allows_few_operations_per_transaction() {
    require_docker!();
    init_tracing();
    let node = EtcdNode::start_with_flags(&["--max-txn-ops=8"]).await;
    let etcd = coordination(&node.config());
    let scope = fast_settings(unique_cluster_name("small-txns"))
        .scope()
        .unwrap();
    racing_joins_share_requests(&etcd, &scope, 60, 1_000).await;
}

/// The lease of a lock or an entry is granted together with the transaction that writes on
/// it, under an id this process picks. An id that is someone else's lease must not carry
/// our keys: the lock and the entry end up on leases of their own, and the other lease holds
/// nothing of ours.
#[tokio::test]
async fn a_lease_id_someone_else_holds_carries_neither_the_lock_nor_an_entry() {
    require_docker!();
    init_tracing();
    let (node, etcd, scope) = member_and_scope("taken-lease").await;
    let mut raw = node.client().await;
    let foreign = raw
        .lease_grant(
            600,
            Some(etcd_client::LeaseGrantOptions::new().with_id(4242)),
        )
        .await
        .unwrap()
        .id();
    let me = NodeId::new("10.0.0.1:2552", 1);
    let lease_of = |key: String| {
        let mut raw = raw.clone();
        async move {
            let r = raw.get(key, None).await.unwrap();
            r.kvs().first().map(|kv| kv.lease())
        }
    };
    let holds_nothing = |id: i64| {
        let mut raw = raw.clone();
        async move {
            let keys = raw
                .lease_time_to_live(
                    id,
                    Some(etcd_client::LeaseTimeToLiveOptions::new().with_keys()),
                )
                .await
                .unwrap();
            assert!(
                keys.keys().is_empty(),
                "the foreign lease holds {:?}",
                keys.keys()
            );
        }
    };
    etcd.try_lease_ids_first(vec![foreign]);
    let LockOutcome::Acquired(token) = etcd
        .lock(scope.lease(&me, Duration::from_secs(10)))
        .await
        .unwrap()
    else {
        panic!("a fresh lock is free");
    };
    let lock = lease_of(constructr_core::entry::lock_key(&scope)).await;
    assert!(
        lock.is_some_and(|l| l != foreign && l != 0),
        "lock lease {lock:?}"
    );
    holds_nothing(foreign).await;
    etcd.try_lease_ids_first(vec![foreign]);
    let mode = constructr_core::AddMode::Seed {
        lock: token,
        cluster: constructr_core::ClusterId(7),
        expected_epoch_version: None,
    };
    let added = etcd
        .add_self(scope.lease(&me, Duration::from_secs(10)), &mode)
        .await
        .unwrap();
    assert_eq!(added, constructr_core::AddOutcome::Added);
    let entry = lease_of(constructr_core::entry::node_key(&scope, &me.address)).await;
    assert!(
        entry.is_some_and(|l| l != foreign && l != 0),
        "entry lease {entry:?}"
    );
    holds_nothing(foreign).await;
    // A member's registration, written by the batch writer, too.
    let member = NodeId::new("10.0.0.2:2552", 1);
    etcd.try_lease_ids_first(vec![foreign]);
    let join = constructr_core::AddMode::Join {
        cluster: Some(constructr_core::ClusterId(7)),
    };
    let outcome = etcd
        .add_self(scope.lease(&member, Duration::from_secs(10)), &join)
        .await;
    match outcome {
        Ok(added) => assert_eq!(added, constructr_core::AddOutcome::Added),
        Err(e) => {
            // The taken id may be reported as retryable; the next try draws another.
            assert!(e.is_retryable(), "{e}");
            let again = etcd
                .add_self(scope.lease(&member, Duration::from_secs(10)), &join)
                .await
                .unwrap();
            assert_eq!(again, constructr_core::AddOutcome::Added);
        }
    }
    let entry = lease_of(constructr_core::entry::node_key(&scope, &member.address)).await;
    assert!(
        entry.is_some_and(|l| l != foreign && l != 0),
        "member entry lease {entry:?}"
    );
    holds_nothing(foreign).await;
    let mut registry = etcd.get_nodes(&scope).await.unwrap().nodes;
    registry.sort();
    let mut expected = vec![me, member];
    expected.sort();
    assert_eq!(registry, expected);
    let _ = &mut raw;
}

/// Shared reads of one scope must never answer a read of another: a bounded read of
/// cluster `c` and a full read of cluster `c#32` (a valid name) run at once, many times.
#[tokio::test]
async fn a_bounded_read_never_shares_another_clusters_full_read() {
    require_docker!();
    init_tracing();
    let (_node, etcd, scope) = member_and_scope("shared-key").await;
    let other = Scope::new(
        scope.prefix(),
        constructr_core::ClusterName::new(format!("{}#32", scope.cluster().as_str())).unwrap(),
    )
    .unwrap();
    let stranger = NodeId::new("10.9.9.9:1", 1);
    let added = etcd
        .add_self(
            other.lease(&stranger, Duration::from_secs(30)),
            &constructr_core::AddMode::Join { cluster: None },
        )
        .await
        .unwrap();
    assert_eq!(added, constructr_core::AddOutcome::Added);
    let limit = constructr_core::NodeLimit::new(6).unwrap();
    for _ in 0..50 {
        let (full, bounded) =
            tokio::join!(etcd.get_nodes(&other), etcd.get_some_nodes(&scope, limit));
        assert_eq!(full.unwrap().nodes, vec![stranger.clone()]);
        let bounded = bounded.unwrap();
        assert!(bounded.nodes.is_empty(), "{scope} read {:?}", bounded.nodes);
    }
}

#[tokio::test]
async fn twenty_racing_lock_requests_grant_one_lease() {
    require_docker!();
    init_tracing();
    let (_node, etcd, scope) = member_and_scope("racing-lock").await;
    // The transaction alone (refused: no lease), then one lease grant and one transaction,
    // sent together, and the transaction once more if etcd applied it before the grant.
    racing_lock_requests_are_one(&etcd, &scope, 20, 4).await;
}

#[tokio::test]
async fn wait_for_change_resumes_after_etcd_restart() {
    require_docker!();
    init_tracing();
    let (node, etcd, scope) = member_and_scope("watch-restart").await;
    let waiter = spawn_wait_for_change(&etcd, &scope).await;
    node.restart().await;
    assert!(!waiter.is_finished(), "woke without a change");
    registration_wakes(&*etcd, &scope, waiter, "watch woke after the restart").await;
}

#[tokio::test]
async fn wait_for_change_from_a_compacted_revision_reports_changed() {
    require_docker!();
    init_tracing();
    let (node, etcd, scope) = member_and_scope("compacted").await;
    let read = etcd.get_nodes(&scope).await.unwrap();
    // Writes elsewhere, then a compaction past the revision of the read: the watch cannot
    // start there any more, and nothing under the scope changed.
    let mut raw = node.client().await;
    for i in 0..3 {
        raw.put(format!("/elsewhere/{i}"), "x", None).await.unwrap();
    }
    let head = raw
        .get("/elsewhere/2", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    raw.compact(head, None).await.unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(5),
        etcd.wait_for_change(&scope, read.revision),
    )
    .await
    .expect("a compacted start revision resolves at once")
    .unwrap();
    assert_eq!(out, WaitOutcome::Changed);
}

#[tokio::test]
async fn wrong_password_is_a_permanent_unauthorized_error() {
    require_docker!();
    init_tracing();
    let node = EtcdNode::start().await;
    node.enable_auth("root-pw-3e1f").await;
    let settings = fast_settings(unique_cluster_name("auth"));
    let scope = settings.scope().unwrap();

    let wrong = coordination(&node.config().with_user("root", "WRONG-pw-77aa"));
    let err = wrong.get_nodes(&scope).await.unwrap_err();
    assert_wrong_secret_refused(
        &err,
        "wrong password",
        "authentication failed",
        "WRONG-pw-77aa",
    );
    assert!(matches!(
        wrong.check(&scope).await,
        Err(EtcdError::Unauthorized { .. })
    ));

    // A node with the wrong password, and the right password: the scenario suite
    // (`wrong_credentials_are_a_permanent_error_that_never_shows_the_secret`).

    // Without credentials: refused as well (auth is on).
    let anonymous = coordination(&node.config());
    assert!(matches!(
        anonymous.get_nodes(&scope).await,
        Err(CoordinationError::Unauthorized { .. })
    ));
    assert!(matches!(
        anonymous.check(&scope).await,
        Err(EtcdError::Unauthorized { .. })
    ));
}
