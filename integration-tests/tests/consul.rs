//! What is specific to the Consul backend, against a real Consul agent in Docker: the
//! conformance suite, a persistent server's restart, the blocking-query watch, and ACLs with
//! default deny (anonymous reads, a token outside its prefix). The scenarios every backend
//! runs are in `scenarios.rs`.
//!
//! Every test starts its own agent and uses its own cluster name; they run in parallel.
//! Consul sessions have a minimum TTL of 10 s and end between TTL and 2 × TTL, so these
//! tests use TTLs of 10 s and take longer than the etcd ones.

use std::sync::Arc;
use std::time::Duration;

use constructr_consul::{ConsulConfig, ConsulCoordination, ConsulError};
use constructr_core::conformance;
use constructr_core::local::LocalCluster;
use constructr_core::{ClusterName, Coordination, Event, Failure, Settings, State};
use integration_tests::checks::{
    assert_unauthorized, assert_wrong_secret_refused, lock_held_elsewhere_is_asked_once,
    racing_lock_requests_are_one, registration_wakes, spawn_wait_for_change,
    steady_refresh_is_one_request, waiters_share_one_watch,
};
use integration_tests::consul::{ConsulNode, ConsulOptions, consul_settings};
use integration_tests::nodes::{
    all_registered, assert_one_cluster, node_id, registered_nodes, sorted_ids, spawn_nodes,
};
use integration_tests::service::{Backend, ConformanceService};
use integration_tests::{eventually, init_tracing, require_docker, unique_cluster_name};
use tokio::time::Instant;

fn coordination(config: &ConsulConfig) -> Arc<ConsulCoordination> {
    Arc::new(ConsulCoordination::new(config).expect("valid Consul config"))
}

/// `agent` once started, with a client of it.
async fn with_client(
    agent: impl Future<Output = ConsulNode>,
) -> (ConsulNode, Arc<ConsulCoordination>) {
    let node = agent.await;
    let consul = coordination(&node.config());
    (node, consul)
}

/// Settings whose members ride out a Consul restart (degraded, retrying at most every
/// refresh interval) and whose bootstrap retries have no count limit; TTL 20 s.
fn patient_settings(cluster: ClusterName) -> Settings {
    let mut s = consul_settings(cluster);
    s.nr_of_retries = None;
    s.retry_delay = Duration::from_secs(1);
    s.ttl_factor = 4.0;
    s.validate().expect("valid settings");
    constructr_consul::validate_settings(&s).expect("valid for Consul");
    s
}

// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn conformance_suite_passes_against_real_consul() {
    require_docker!();
    init_tracing();
    let backend = ConformanceService::start(Backend::Consul).await;
    let start = Instant::now();
    let report = conformance::run_all(&backend).await;
    assert!(
        report.not_covered.is_empty(),
        "Consul declares every guarantee: {report:?}"
    );
    assert_eq!(report.ran.len(), conformance::CHECKS.len());
    println!(
        "conformance suite against Consul took {:?}",
        start.elapsed()
    );
}

/// Collects every event the nodes emitted so far.
fn drain(
    events: &mut [tokio::sync::broadcast::Receiver<constructr_core::driver::TimedEvent>],
    into: &mut Vec<Event>,
) {
    for rx in events {
        while let Ok(e) = rx.try_recv() {
            into.push(e.event);
        }
    }
}

#[tokio::test]
async fn persistent_consul_restart_while_refreshing_recovers_without_rebootstrap() {
    require_docker!();
    init_tracing();
    let (node, consul) = with_client(ConsulNode::start_persistent()).await;
    let settings = patient_settings(unique_cluster_name("restart"));
    let scope = settings.scope().unwrap();
    let local = LocalCluster::new();
    let handles = spawn_nodes(3, &settings, &consul, &local);
    all_registered(&handles, Duration::from_secs(30)).await;
    let mut events: Vec<_> = handles.iter().map(|h| h.events()).collect();
    let before = consul.get_nodes(&scope).await.unwrap();

    // Down for longer than a refresh interval, so every node's refresh hits the outage.
    let down = Instant::now();
    node.stop().await;
    tokio::time::sleep(settings.refresh_interval + Duration::from_secs(1)).await;
    node.start_again().await;
    let downtime = down.elapsed();
    let mut seen = Vec::new();
    drain(&mut events, &mut seen);
    // Keys, the epoch and the sessions survived the restart.
    let after = consul.get_nodes(&scope).await.unwrap();
    assert_eq!(after.epoch, before.epoch, "the epoch marker survived");

    // Every node completes a refresh after Consul is back (renewing its old session).
    let mut refreshed = vec![false; handles.len()];
    eventually(
        Duration::from_secs(25),
        "a refresh of every node after the restart",
        || {
            for (i, rx) in events.iter_mut().enumerate() {
                while let Ok(e) = rx.try_recv() {
                    if let Event::StateChanged {
                        from: State::Refreshing,
                        to: State::RefreshScheduled,
                    } = e.event
                    {
                        refreshed[i] = true;
                    }
                    seen.push(e.event);
                }
            }
            let done = refreshed.iter().all(|r| *r);
            async move { done.then_some(()) }
        },
    )
    .await;
    let retries = seen
        .iter()
        .filter(|e| matches!(e, Event::Retrying { .. }))
        .count();
    println!(
        "Consul (persistent server) down for {} ms; all nodes refreshed again; {retries} retries",
        downtime.as_millis(),
    );
    assert!(retries > 0, "no refresh hit the outage: {seen:?}");
    for e in &seen {
        if let Event::StateChanged { to, .. } = e {
            assert!(
                !matches!(
                    to,
                    State::Resetting | State::GettingNodes | State::Locking | State::Failed
                ),
                "a node re-bootstrapped or failed: {seen:?}"
            );
        }
    }
    assert!(handles.iter().all(|h| h.state().is_registered()));
    assert_one_cluster(&local, 3);
    assert_eq!(
        registered_nodes(&consul, &scope).await,
        sorted_ids(&handles)
    );
}

/// A refresh of an unchanged entry is one session renewal (the backend's blocking query on
/// its own entries vouches for the key); a key deleted while its session lives is still
/// noticed.
#[tokio::test]
async fn steady_state_refresh_is_one_request_and_still_notices_a_deleted_key() {
    require_docker!();
    init_tracing();
    let (node, consul) = with_client(ConsulNode::start()).await;
    let scope = consul_settings(unique_cluster_name("one-request"))
        .scope()
        .unwrap();
    let key =
        constructr_core::entry::node_key(&scope, &constructr_core::scenarios::node_id(1).address);
    let raw = node.raw();
    let delete = async {
        raw.delete_key(key.trim_start_matches('/')).await;
    };
    // The watch of the own entries re-lists at most once a second after a change.
    let settle = constructr_consul::RELIST_PAUSE + Duration::from_millis(500);
    steady_refresh_is_one_request(&*consul, &scope, Duration::from_secs(10), settle, delete).await;
}

/// 200 nodes of one process waiting on one scope share one blocking query, and all wake on
/// the first registration.
#[tokio::test]
async fn two_hundred_waiters_share_one_blocking_query() {
    require_docker!();
    init_tracing();
    let (_node, consul) = with_client(ConsulNode::start()).await;
    let scope = consul_settings(unique_cluster_name("shared-watch"))
        .scope()
        .unwrap();
    waiters_share_one_watch(&consul, &scope, 200, 1).await;
}

#[tokio::test]
async fn twenty_racing_lock_requests_create_one_session() {
    require_docker!();
    init_tracing();
    let (_node, consul) = with_client(ConsulNode::start()).await;
    let scope = consul_settings(unique_cluster_name("racing-lock"))
        .scope()
        .unwrap();
    // One read of the lock key, one session, one acquire.
    racing_lock_requests_are_one(&consul, &scope, 20, 3).await;
}

/// 50 nodes asking for a lock that a node of another process holds send one request
/// between them (a read of the lock key), not one each in turn.
#[tokio::test]
async fn nodes_asking_for_a_lock_held_elsewhere_send_one_request() {
    require_docker!();
    init_tracing();
    let (node, consul) = with_client(ConsulNode::start()).await;
    let elsewhere = coordination(&node.config());
    let scope = consul_settings(unique_cluster_name("held-elsewhere"))
        .scope()
        .unwrap();
    lock_held_elsewhere_is_asked_once(&consul, &*elsewhere, &scope, 50, 3).await;
}

/// Consul closes the connections of one client beyond `limits.http_max_conns_per_client`;
/// 300 nodes in one process against an agent that allows 100 still all register (the
/// backend bounds its requests in flight, 64 by default, and shares blocking queries).
#[tokio::test]
async fn many_nodes_in_one_process_stay_within_the_agents_connection_limit() {
    require_docker!();
    init_tracing();
    let (_node, consul) = with_client(ConsulNode::start_with(ConsulOptions {
        extra_hcl: vec!["limits { http_max_conns_per_client = 100 }".into()],
        ..ConsulOptions::default()
    }))
    .await;
    let settings = consul_settings(unique_cluster_name("conn-limit"));
    let local = LocalCluster::new();
    let handles = spawn_nodes(300, &settings, &consul, &local);
    all_registered(&handles, Duration::from_secs(60)).await;
    assert_one_cluster(&local, 300);
}

/// A blocking query on an empty prefix: Consul's KV index moves with writes anywhere, which
/// must not wake the watch; a registration under the prefix does.
#[tokio::test]
async fn wait_for_change_ignores_writes_elsewhere_and_wakes_on_registration() {
    require_docker!();
    init_tracing();
    let (node, consul) = with_client(ConsulNode::start()).await;
    let scope = consul_settings(unique_cluster_name("watch"))
        .scope()
        .unwrap();
    let waiter = spawn_wait_for_change(&consul, &scope).await;
    // Writes under another prefix move Consul's KV index, which an empty prefix reports.
    let raw = node.raw();
    for i in 0..5 {
        raw.put(&format!("elsewhere/key-{i}"), b"x").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiter.is_finished(),
        "woke without a change under the scope"
    );
    registration_wakes(&*consul, &scope, waiter, "the blocking query woke").await;
}

#[tokio::test]
async fn acl_default_deny_needs_a_token_with_prefix_and_session_policy() {
    require_docker!();
    init_tracing();
    let master = "root-secret-4f1a";
    let node = ConsulNode::start_with(ConsulOptions {
        acl_master_token: Some(master.into()),
        ..ConsulOptions::default()
    })
    .await;
    let settings = consul_settings(unique_cluster_name("acl"));
    let scope = settings.scope().unwrap();
    let token = node.raw().constructr_token().await;
    let plain = ConsulConfig::new([node.address()]);

    // A token Consul does not know: a clear, permanent error.
    let wrong_secret = "00000000-dead-beef-0000-000000000000";
    let wrong = coordination(&plain.clone().with_token(wrong_secret));
    let err = wrong.get_nodes(&scope).await.unwrap_err();
    assert_wrong_secret_refused(&err, "wrong token", "ACL not found", wrong_secret);
    assert!(matches!(
        wrong.check(&scope).await,
        Err(ConsulError::Unauthorized { .. })
    ));

    // A node with the wrong token: the scenario suite
    // (`wrong_credentials_are_a_permanent_error_that_never_shows_the_secret`).
    let local = LocalCluster::new();

    // Without a token: Consul filters reads (an empty registry) but refuses the lock.
    let anonymous = coordination(&plain);
    let err = anonymous
        .lock(scope.lease(&node_id(9), settings.lock_ttl()))
        .await
        .unwrap_err();
    println!("no token: {err}");
    assert_unauthorized(&err);
    assert!(err.to_string().contains("Permission denied"), "{err}");
    let handle = spawn_nodes(1, &settings, &anonymous, &local).remove(0);
    let failure = tokio::time::timeout(Duration::from_secs(10), handle.stopped())
        .await
        .expect("the node without a token stops")
        .unwrap_err();
    assert!(matches!(failure, Failure::Permanent { .. }), "{failure:?}");

    // The token with the policy works.
    let right = coordination(&plain.clone().with_token(token.clone()));
    right.check(&scope).await.expect("known token");
    let handles = spawn_nodes(3, &settings, &right, &local);
    all_registered(&handles, Duration::from_secs(30)).await;
    assert_eq!(registered_nodes(&right, &scope).await, sorted_ids(&handles));

    // Outside its prefix the same token is refused.
    let mut other = consul_settings(unique_cluster_name("acl"));
    other.key_prefix = "/not-allowed".into();
    let err = right
        .lock(other.scope().unwrap().lease(&node_id(1), other.lock_ttl()))
        .await
        .unwrap_err();
    assert_unauthorized(&err);
}
