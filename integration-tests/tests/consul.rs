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

use async_trait::async_trait;
use constructr_consul::{ConsulConfig, ConsulCoordination, ConsulError};
use constructr_core::conformance::{self, ConformanceBackend};
use constructr_core::entry;
use constructr_core::local::LocalCluster;
use constructr_core::{
    AddMode, AddOutcome, ClusterName, Coordination, CoordinationError, Event, Failure, Scope,
    Settings, State, WaitOutcome,
};
use integration_tests::consul::{ConsulNode, ConsulOptions};
use integration_tests::nodes::{
    all_registered, assert_one_cluster, node_id, registered_nodes, sorted_ids, spawn_nodes,
};
use integration_tests::{eventually, init_tracing, require_docker, unique_cluster_name};
use tokio::time::Instant;

fn coordination(config: &ConsulConfig) -> Arc<ConsulCoordination> {
    Arc::new(ConsulCoordination::new(config).expect("valid Consul config"))
}

/// Short settings valid for Consul: refresh 5 s × ttl-factor 2 = TTL 10 s (Consul's minimum),
/// lock TTL = join timeout 8 s + 2 × coordination timeout 1 s = 10 s.
fn consul_settings(cluster: ClusterName) -> Settings {
    let mut s = Settings::default();
    s.cluster_name = cluster;
    s.key_prefix = "/constructr-it".into();
    s.refresh_interval = Duration::from_secs(5);
    s.ttl_factor = 2.0;
    s.join_timeout = Duration::from_secs(8);
    s.coordination_timeout = Duration::from_secs(1);
    s.nr_of_retries = Some(1);
    s.retry_delay = Duration::from_millis(500);
    s.retry_jitter = 0.2;
    s.validate().expect("valid settings");
    constructr_consul::validate_settings(&s).expect("valid for Consul");
    s
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

/// A core key (`/prefix/...`) as a Consul key.
fn consul_key(key: &str) -> String {
    key.trim_start_matches('/').to_owned()
}

// ---------------------------------------------------------------------------------------

struct ConsulConformance {
    consul: ConsulCoordination,
    node: ConsulNode,
}

#[async_trait]
impl ConformanceBackend for ConsulConformance {
    type Coordination = ConsulCoordination;

    fn coordination(&self) -> &ConsulCoordination {
        &self.consul
    }

    async fn put_raw_entry(&self, scope: &Scope, key_suffix: &str, value: &[u8]) {
        let key = format!("{}{key_suffix}", consul_key(&entry::nodes_prefix(scope)));
        self.node
            .raw()
            .put_with_session(&key, value, self.ttl())
            .await;
    }

    /// Consul's minimum session TTL.
    fn ttl(&self) -> Duration {
        Duration::from_secs(10)
    }

    /// Consul ends a session up to one more TTL after it (2 × TTL), plus 1 s.
    fn expiry_bound(&self) -> Duration {
        ConsulCoordination::expiry_bound(self.ttl())
    }
}

#[tokio::test]
async fn conformance_suite_passes_against_real_consul() {
    require_docker!();
    init_tracing();
    let node = ConsulNode::start().await;
    let backend = ConsulConformance {
        consul: ConsulCoordination::new(&node.config()).unwrap(),
        node,
    };
    let start = Instant::now();
    conformance::run_all(&backend).await;
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
    let node = ConsulNode::start_persistent().await;
    let consul = coordination(&node.config());
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

/// A dev agent keeps everything in memory: after its restart the epoch marker and every
/// session are gone. Nodes see their entries missing, their member re-registration is refused
/// (the epoch no longer names their cluster), and they start over: they form exactly one new
/// cluster, never two side by side.
#[tokio::test]
async fn wait_for_change_ignores_writes_elsewhere_and_wakes_on_registration() {
    require_docker!();
    init_tracing();
    let node = ConsulNode::start().await;
    let consul = coordination(&node.config());
    let scope = consul_settings(unique_cluster_name("watch"))
        .scope()
        .unwrap();
    let read = consul.get_nodes(&scope).await.unwrap();
    let waiter = {
        let consul = consul.clone();
        let scope = scope.clone();
        tokio::spawn(async move { consul.wait_for_change(&scope, read.revision).await })
    };
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
    let n = node_id(1);
    assert_eq!(
        consul
            .add_self(
                &scope,
                &n,
                Duration::from_secs(10),
                &AddMode::Join { cluster: None }
            )
            .await
            .unwrap(),
        AddOutcome::Added
    );
    let out = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the blocking query woke")
        .unwrap()
        .unwrap();
    assert_eq!(out, WaitOutcome::Changed);
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
    let plain = ConsulConfig::new(node.address());

    // A token Consul does not know: a clear, permanent error.
    let wrong_secret = "00000000-dead-beef-0000-000000000000";
    let wrong = coordination(&plain.clone().with_token(wrong_secret));
    let err = wrong.get_nodes(&scope).await.unwrap_err();
    let msg = err.to_string();
    println!("wrong token: {msg}");
    assert!(
        matches!(err, CoordinationError::Unauthorized { .. }),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    assert!(msg.contains("ACL not found"), "{msg}");
    assert!(!msg.contains(wrong_secret) && !format!("{err:?}").contains(wrong_secret));
    assert!(matches!(
        wrong.check().await,
        Err(ConsulError::Unauthorized { .. })
    ));

    // A node with the wrong token: the scenario suite
    // (`wrong_credentials_are_a_permanent_error_that_never_shows_the_secret`).
    let local = LocalCluster::new();

    // Without a token: Consul filters reads (an empty registry) but refuses the lock.
    let anonymous = coordination(&plain);
    let err = anonymous
        .lock(&scope, &node_id(9), settings.lock_ttl())
        .await
        .unwrap_err();
    println!("no token: {err}");
    assert!(
        matches!(err, CoordinationError::Unauthorized { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("Permission denied"), "{err}");
    let handle = spawn_nodes(1, &settings, &anonymous, &local).remove(0);
    let failure = tokio::time::timeout(Duration::from_secs(10), handle.stopped())
        .await
        .expect("the node without a token stops")
        .unwrap_err();
    assert!(matches!(failure, Failure::Permanent { .. }), "{failure:?}");

    // The token with the policy works.
    let right = coordination(&plain.clone().with_token(token.clone()));
    right.check().await.expect("known token");
    let handles = spawn_nodes(3, &settings, &right, &local);
    all_registered(&handles, Duration::from_secs(30)).await;
    assert_eq!(registered_nodes(&right, &scope).await, sorted_ids(&handles));

    // Outside its prefix the same token is refused.
    let mut other = consul_settings(unique_cluster_name("acl"));
    other.key_prefix = "/not-allowed".into();
    let err = right
        .lock(&other.scope().unwrap(), &node_id(1), other.lock_ttl())
        .await
        .unwrap_err();
    assert!(
        matches!(err, CoordinationError::Unauthorized { .. }),
        "{err:?}"
    );
}
