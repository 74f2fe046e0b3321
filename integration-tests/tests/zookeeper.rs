//! The ZooKeeper backend against real ZooKeeper 3.8 servers (the image
//! `constructr-test/zookeeper` that `scripts/images.sh` builds from Debian's packages):
//! the conformance checks its guarantees cover, nodes forming one cluster through the
//! driver, digest auth with an ACL that refuses others, and a killed session's entries
//! and lock disappearing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use constructr_core::conformance::{ConformanceBackend, run_all};
use constructr_core::driver::Node;
use constructr_core::local::LocalCluster;
use constructr_core::{ClusterName, Coordination, CoordinationError, NodeId, Scope, Settings};
use constructr_zookeeper::{ZooKeeperConfig, ZooKeeperCoordination};
use integration_tests::proxy::Proxy;
use integration_tests::zookeeper::{Ensemble, ZooKeeperServer, image};

struct Suite {
    coordination: ZooKeeperCoordination,
    raw: zookeeper_client::Client,
}

#[async_trait::async_trait]
impl ConformanceBackend for Suite {
    type Coordination = ZooKeeperCoordination;

    fn coordination(&self) -> &ZooKeeperCoordination {
        &self.coordination
    }

    async fn put_raw_entry(&self, scope: &Scope, key_suffix: &str, value: &[u8]) {
        let path = format!("{}/nodes/{key_suffix}", scope.base());
        let options =
            zookeeper_client::CreateMode::Ephemeral.with_acls(zookeeper_client::Acls::anyone_all());
        self.raw.create(&path, value, &options).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_zookeeper_backend_passes_the_conformance_checks_its_guarantees_cover() {
    let Some(image) = image() else { return };
    let server = ZooKeeperServer::start(&image, "conformance");
    let config = ZooKeeperConfig::new([server.address()]);
    let suite = Suite {
        coordination: ZooKeeperCoordination::connect(&config).await.unwrap(),
        raw: zookeeper_client::Client::connect(&server.address())
            .await
            .unwrap(),
    };
    let report = run_all(&suite).await;
    // Entries live as long as the session, not per-entry TTLs: only the TTL checks.
    assert_eq!(
        report.not_covered,
        [
            "refresh_extends_and_detects_missing",
            "entries_expire_after_ttl",
            "refresh_notices_an_entry_deleted_behind_its_back"
        ],
        "{report:?}"
    );
    assert_eq!(report.ran.len(), 15, "{report:?}");
}

/// Node `i` with its own client, hence its own session (as one process per node would).
fn spawn_on_own_session(
    config: &ZooKeeperConfig,
    settings: &Settings,
    local: &LocalCluster,
    i: u16,
) -> constructr_core::driver::NodeHandle {
    let zk = Arc::new(ZooKeeperCoordination::new(config).unwrap());
    let me = NodeId::new(format!("10.0.0.{i}:2552"), rand::random());
    Node::builder()
        .settings(settings.clone())
        .address(me.clone())
        .coordination(zk)
        .cluster(Arc::new(local.node(me)))
        .spawn()
        .unwrap()
}

fn settings(what: &str) -> Settings {
    let n: u32 = rand::random();
    let mut s = Settings::default();
    s.cluster_name = ClusterName::new(format!("{what}-{n:08x}")).unwrap();
    s.refresh_interval = Duration::from_secs(1);
    s.ttl_factor = 8.0;
    s.retry_delay = Duration::from_millis(200);
    s.coordination_timeout = Duration::from_secs(2);
    s
}

/// Registrations of one process are written together: 200 members joining at once move
/// the epoch's version a few times (once per multi), not once each in turn; members of
/// another cluster are refused, and a node whose address holds an old entry still
/// registers (alone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_racing_joins_share_a_few_multis() {
    use constructr_core::{AddMode, AddOutcome, ClusterId, LockOutcome};
    let Some(image) = image() else { return };
    let server = ZooKeeperServer::start(&image, "racing-joins");
    let config = ZooKeeperConfig::new([server.address()]);
    let zk = Arc::new(ZooKeeperCoordination::connect(&config).await.unwrap());
    let scope = settings("racing-joins").scope().unwrap();
    let ttl = Duration::from_secs(30);
    let node = |i: usize| NodeId::new(format!("10.0.{}.{}:7946", i / 256, i % 256), 1);
    let LockOutcome::Acquired(lock) = zk.lock(scope.lease(&node(0), ttl)).await.unwrap() else {
        panic!("a fresh scope's lock is free");
    };
    let cluster = ClusterId(0x5eed);
    let seed = AddMode::Seed {
        lock,
        cluster,
        expected_epoch_version: None,
    };
    assert_eq!(
        zk.add_self(scope.lease(&node(0), ttl), &seed)
            .await
            .unwrap(),
        AddOutcome::Added
    );
    // An old incarnation's entry at node 7's address.
    let old = NodeId::new(node(7).address, 0);
    let member = AddMode::Join {
        cluster: Some(cluster),
    };
    assert_eq!(
        zk.add_self(scope.lease(&old, ttl), &member).await.unwrap(),
        AddOutcome::Added
    );
    let before = zk.get_nodes(&scope).await.unwrap().epoch.unwrap().version;
    let (n, strangers) = (200, 20);
    let joins: Vec<_> = (1..=n + strangers)
        .map(|i| {
            let (zk, scope) = (zk.clone(), scope.clone());
            let mode = AddMode::Join {
                cluster: Some(if i > n { ClusterId(0xbad) } else { cluster }),
            };
            tokio::spawn(async move { zk.add_self(scope.lease(&node(i), ttl), &mode).await })
        })
        .collect();
    for (i, j) in joins.into_iter().enumerate() {
        let expected = if i < n {
            AddOutcome::Added
        } else {
            AddOutcome::Refused
        };
        assert_eq!(j.await.unwrap().unwrap(), expected, "node {}", i + 1);
    }
    let registry = zk.get_nodes(&scope).await.unwrap();
    assert_eq!(registry.nodes.len(), n + 1, "the seed and its members");
    assert!(
        registry.nodes.contains(&node(7)),
        "the new incarnation replaced the old"
    );
    let moves = registry.epoch.unwrap().version - before;
    println!("{n} racing registrations moved the epoch's version {moves} times");
    assert!(
        moves <= 20,
        "{n} racing registrations moved the epoch's version {moves} times"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_nodes_on_zookeeper_form_one_cluster_and_a_closed_session_takes_its_entries() {
    let Some(image) = image() else { return };
    let server = ZooKeeperServer::start(&image, "nodes");
    let settings = settings("nodes");
    let config =
        ZooKeeperConfig::new([server.address()]).with_session_timeout(Duration::from_secs(2));
    let local = LocalCluster::new();
    // Each node has its own session (as one process per node would).
    let mut handles = Vec::new();
    for i in 0..20u16 {
        handles.push(spawn_on_own_session(&config, &settings, &local, i));
    }
    for h in &handles {
        tokio::time::timeout(Duration::from_secs(60), h.registered())
            .await
            .expect("registered in time")
            .expect("registered");
    }
    assert_eq!(local.clusters().len(), 1, "{:?}", local.clusters());
    assert_eq!(local.clusters_formed(), 1);
    let reader = ZooKeeperCoordination::connect(&config).await.unwrap();
    let scope = settings.scope().unwrap();
    assert_eq!(reader.get_nodes(&scope).await.unwrap().nodes.len(), 20);
    // Abort one node and drop its session: its entry goes with the session.
    let gone = handles.remove(3);
    let gone_node = gone.node().clone();
    gone.abort();
    tokio::time::sleep(Duration::from_millis(200)).await; // the task drops its client
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let nodes = reader.get_nodes(&scope).await.unwrap().nodes;
        if !nodes.contains(&gone_node) {
            assert_eq!(nodes.len(), 19);
            break;
        }
        assert!(Instant::now() < deadline, "the entry outlived its session");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for h in &handles {
        h.shutdown();
    }
    for h in handles {
        h.stopped().await.unwrap();
    }
    assert!(reader.get_nodes(&scope).await.unwrap().nodes.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_auth_protects_the_znodes_and_a_wrong_password_is_unauthorized() {
    let Some(image) = image() else { return };
    let server = ZooKeeperServer::start(&image, "auth");
    let scope = settings("auth").scope().unwrap();
    let owner = ZooKeeperCoordination::connect(
        &ZooKeeperConfig::new([server.address()]).with_user("constructr", "right-secret"),
    )
    .await
    .unwrap();
    let me = NodeId::new("10.0.0.1:2552", 1);
    let mode = constructr_core::AddMode::Join {
        cluster: Some(constructr_core::ClusterId(7)),
    };
    owner
        .add_self(scope.lease(&me, Duration::from_secs(30)), &mode)
        .await
        .unwrap();
    // Another user (or none) cannot read what the owner's ACL protects.
    let intruder = ZooKeeperCoordination::connect(
        &ZooKeeperConfig::new([server.address()]).with_user("constructr", "wrong-secret"),
    )
    .await
    .unwrap();
    let err = intruder.get_nodes(&scope).await.unwrap_err();
    assert!(
        matches!(err, CoordinationError::Unauthorized { .. }),
        "{err:?}"
    );
    let text = format!("{err} {err:?}");
    assert!(
        !text.contains("wrong-secret") && !text.contains("right-secret"),
        "{text}"
    );
    assert_eq!(owner.get_nodes(&scope).await.unwrap().nodes, vec![me]);
}

/// A partition longer than the session timeout: the server expires the node's session
/// (its entry goes); when the network heals the client sees the expiry, the backend starts
/// a new session and the member registers again in the same cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_session_expired_in_a_partition_registers_again_on_a_new_session() {
    let Some(image) = image() else { return };
    let server = ZooKeeperServer::start(&image, "session");
    // A TCP proxy that can cut every connection and refuse new ones (a network partition
    // between the client and ZooKeeper).
    let partition = Proxy::start(server.address()).await;
    let mut settings = settings("session");
    settings.nr_of_retries = None; // ride out the partition
    // A generous connect timeout: the first connect through the proxy timed out once on
    // a loaded machine (CI runs the Docker tests in parallel).
    let config = ZooKeeperConfig::new([partition.address()])
        .with_session_timeout(Duration::from_secs(2))
        .with_connect_timeout(Duration::from_secs(15));
    let zk = Arc::new(ZooKeeperCoordination::connect(&config).await.unwrap());
    let local = LocalCluster::new();
    let me = NodeId::new("10.0.0.1:2552", 1);
    let node = Node::builder()
        .settings(settings.clone())
        .address(me.clone())
        .coordination(zk.clone())
        .cluster(Arc::new(local.node(me.clone())))
        .spawn()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(30), node.registered())
        .await
        .unwrap()
        .unwrap();
    let cluster = node.status().cluster;
    let first_session = zk.session_info().await.expect("connected");
    let reader = ZooKeeperCoordination::connect(&ZooKeeperConfig::new([server.address()]))
        .await
        .unwrap();
    let scope = settings.scope().unwrap();
    assert_eq!(
        reader.get_nodes(&scope).await.unwrap().nodes,
        vec![me.clone()]
    );

    // Cut the node off for three session timeouts: the server expires its session.
    partition.cut();
    let cut = Instant::now();
    let deadline = cut + Duration::from_secs(20);
    while !reader.get_nodes(&scope).await.unwrap().nodes.is_empty() {
        assert!(Instant::now() < deadline, "the session did not expire");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "the partitioned node's entry expired {:?} after the cut",
        cut.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    partition.heal();
    let healed = Instant::now();
    let deadline = healed + Duration::from_secs(30);
    loop {
        let nodes = reader.get_nodes(&scope).await.unwrap().nodes;
        if nodes == vec![me.clone()] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not registered again: {nodes:?}, {:?}",
            node.status()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "registered again {:?} after the partition healed",
        healed.elapsed()
    );
    let second_session = zk.session_info().await.expect("connected");
    assert_ne!(
        format!("{first_session:?}"),
        format!("{second_session:?}"),
        "a new session"
    );
    // The same node of the same cluster; nobody seeded a second one.
    assert_eq!(node.status().cluster, cluster);
    assert_eq!(local.clusters_formed(), 1);
    node.shutdown();
    node.stopped().await.unwrap();
}

/// Ten nodes start while the ensemble's leader is killed: they form exactly one cluster on
/// the two servers left (a new leader is elected), and their entries survive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ensemble_whose_leader_is_killed_during_bootstrap_still_forms_one_cluster() {
    let Some(image) = image() else { return };
    let ensemble = Ensemble::start(&image);
    let leader = ensemble.leader().expect("a leader");
    let addresses = ensemble.addresses();
    let mut settings = settings("ensemble");
    // Ride out the election: no retry limit, a generous TTL.
    settings.nr_of_retries = None;
    settings.ttl_factor = 10.0;
    let config =
        ZooKeeperConfig::new(addresses.clone()).with_session_timeout(Duration::from_secs(6));
    let local = LocalCluster::new();
    let mut handles = Vec::new();
    for i in 0..10u16 {
        handles.push(spawn_on_own_session(&config, &settings, &local, i));
        if i == 2 {
            // The leader goes down while the first nodes bootstrap.
            ensemble.servers[leader].kill();
        }
    }
    let started = Instant::now();
    for h in &handles {
        tokio::time::timeout(Duration::from_secs(90), h.registered())
            .await
            .expect("registered in time")
            .expect("registered");
    }
    println!(
        "10 nodes registered {:?} after the leader was killed",
        started.elapsed()
    );
    assert_eq!(local.clusters_formed(), 1, "{:?}", local.clusters());
    assert_eq!(local.clusters().len(), 1);
    let live: Vec<String> = addresses
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != leader)
        .map(|(_, a)| a.clone())
        .collect();
    let reader = ZooKeeperCoordination::connect(&ZooKeeperConfig::new(live))
        .await
        .unwrap();
    let scope = settings.scope().unwrap();
    assert_eq!(reader.get_nodes(&scope).await.unwrap().nodes.len(), 10);
    for h in &handles {
        h.shutdown();
    }
    for h in handles {
        h.stopped().await.unwrap();
    }
}
