//! The ZooKeeper backend against a real ZooKeeper 3.8 server (the image
//! `constructr-test/zookeeper` that `scripts/images.sh` builds from Debian's packages):
//! the conformance checks its guarantees cover, nodes forming one cluster through the
//! driver, digest auth with an ACL that refuses others, and a killed session's entries
//! and lock disappearing.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use constructr_core::conformance::{ConformanceBackend, run_all};
use constructr_core::driver::Node;
use constructr_core::local::LocalCluster;
use constructr_core::{ClusterName, Coordination, CoordinationError, NodeId, Scope, Settings};
use constructr_zookeeper::{ZooKeeperConfig, ZooKeeperCoordination};

/// A ZooKeeper server in a container, removed on drop.
struct Server {
    name: String,
    address: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn image() -> Option<String> {
    let image = std::env::var("CONSTRUCTR_ZOOKEEPER_IMAGE")
        .unwrap_or_else(|_| "constructr-test/zookeeper:3.8.0".to_owned());
    let found = Command::new("docker")
        .args(["image", "inspect", &image])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return Some(image);
    }
    if std::env::var("CONSTRUCTR_SKIP_DOCKER").as_deref() == Ok("1") {
        println!("SKIPPED: no image {image} and CONSTRUCTR_SKIP_DOCKER=1");
        return None;
    }
    panic!("no image {image}: run scripts/images.sh (CONSTRUCTR_SKIP_DOCKER=1 skips this test)")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// Starts a stand-alone server and waits until it answers `ruok`.
fn start(image: &str, what: &str) -> Server {
    let port = free_port();
    let name = format!("constructr-zk-{what}-{}-{port}", std::process::id());
    let out = Command::new("docker")
        .args(["run", "-d", "--name", &name, "-p"])
        .arg(format!("127.0.0.1:{port}:2181"))
        .arg(image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let server = Server {
        name,
        address: format!("127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if ruok(&server.address) {
            return server;
        }
        assert!(
            Instant::now() < deadline,
            "ZooKeeper did not start within 60 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn ruok(address: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(address) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut answer = String::new();
    s.write_all(b"ruok").is_ok() && s.read_to_string(&mut answer).is_ok() && answer == "imok"
}

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
    let server = start(&image, "conformance");
    let config = ZooKeeperConfig::new([server.address.clone()]);
    let suite = Suite {
        coordination: ZooKeeperCoordination::connect(&config).await.unwrap(),
        raw: zookeeper_client::Client::connect(&server.address)
            .await
            .unwrap(),
    };
    let report = run_all(&suite).await;
    // Entries live as long as the session, not per-entry TTLs: only those two checks.
    assert_eq!(
        report.not_covered,
        [
            "refresh_extends_and_detects_missing",
            "entries_expire_after_ttl"
        ],
        "{report:?}"
    );
    assert_eq!(report.ran.len(), 14, "{report:?}");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_nodes_on_zookeeper_form_one_cluster_and_a_closed_session_takes_its_entries() {
    let Some(image) = image() else { return };
    let server = start(&image, "nodes");
    let settings = settings("nodes");
    let config =
        ZooKeeperConfig::new([server.address.clone()]).with_session_timeout(Duration::from_secs(2));
    let local = LocalCluster::new();
    // Each node has its own session (as one process per node would).
    let mut handles = Vec::new();
    for i in 0..20u16 {
        let zk = Arc::new(ZooKeeperCoordination::connect(&config).await.unwrap());
        let me = NodeId::new(format!("10.0.0.{i}:2552"), rand::random());
        handles.push(
            Node::builder()
                .settings(settings.clone())
                .address(me.clone())
                .coordination(zk)
                .cluster(Arc::new(local.node(me)))
                .spawn()
                .unwrap(),
        );
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
    let server = start(&image, "auth");
    let scope = settings("auth").scope().unwrap();
    let owner = ZooKeeperCoordination::connect(
        &ZooKeeperConfig::new([server.address.clone()]).with_user("constructr", "right-secret"),
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
        &ZooKeeperConfig::new([server.address.clone()]).with_user("constructr", "wrong-secret"),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_session_ended_registers_again_on_a_new_session() {
    let Some(image) = image() else { return };
    let server = start(&image, "session");
    let settings = settings("session");
    let config =
        ZooKeeperConfig::new([server.address.clone()]).with_session_timeout(Duration::from_secs(2));
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
    let reader = ZooKeeperCoordination::connect(&config).await.unwrap();
    let scope = settings.scope().unwrap();
    assert_eq!(
        reader.get_nodes(&scope).await.unwrap().nodes,
        vec![me.clone()]
    );

    // End the node's session from outside: its ephemeral entry is gone at once.
    let session = zk.session_info().await.expect("connected");
    let thief = zookeeper_client::Client::connector()
        .with_session(session)
        .with_session_timeout(Duration::from_secs(2))
        .with_connection_timeout(Duration::from_secs(10))
        .connect(&server.address)
        .await
        .unwrap();
    drop(thief); // closes the session
    let ended = Instant::now();
    let deadline = ended + Duration::from_secs(30);
    let mut saw_gone = false;
    loop {
        let nodes = reader.get_nodes(&scope).await.unwrap().nodes;
        saw_gone |= nodes.is_empty();
        if saw_gone && nodes == vec![me.clone()] {
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
        "registered again {:?} after its session ended",
        ended.elapsed()
    );
    // Still the same node of the same cluster, on a new session.
    assert_eq!(node.status().cluster, cluster);
    assert!(node.state().is_registered() || node.state() == constructr_core::State::Refreshing);
    assert_eq!(local.clusters_formed(), 1);
    node.shutdown();
    node.stopped().await.unwrap();
}

/// A three-server ensemble on its own Docker network, removed on drop.
struct Ensemble {
    servers: Vec<Server>,
    network: String,
}

impl Drop for Ensemble {
    fn drop(&mut self) {
        self.servers.clear();
        let _ = Command::new("docker")
            .args(["network", "rm", &self.network])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The answer of a four-letter word (`srvr`), empty if the server does not answer.
fn four_letters(address: &str, word: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(address) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut answer = String::new();
    if s.write_all(word.as_bytes()).is_ok() {
        let _ = s.read_to_string(&mut answer);
    }
    answer
}

fn start_ensemble(image: &str) -> Ensemble {
    let tag = format!("{}-{}", std::process::id(), free_port());
    let network = format!("constructr-zk-{tag}");
    assert!(
        Command::new("docker")
            .args(["network", "create", &network])
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success()
    );
    let names: Vec<String> = (1..=3).map(|i| format!("zk{i}-{tag}")).collect();
    let members = names
        .iter()
        .enumerate()
        .map(|(i, n)| format!("server.{}={n}:2888:3888;2181", i + 1))
        .collect::<Vec<_>>()
        .join(" ");
    let mut ensemble = Ensemble {
        servers: Vec::new(),
        network: network.clone(),
    };
    for (i, name) in names.iter().enumerate() {
        let port = free_port();
        let out = Command::new("docker")
            .args([
                "run",
                "-d",
                "--name",
                name,
                "--hostname",
                name,
                "--network",
                &network,
            ])
            .args([
                "-e",
                &format!("ZK_ID={}", i + 1),
                "-e",
                &format!("ZK_SERVERS={members}"),
            ])
            .arg("-p")
            .arg(format!("127.0.0.1:{port}:2181"))
            .arg(image)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        ensemble.servers.push(Server {
            name: name.clone(),
            address: format!("127.0.0.1:{port}"),
        });
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let modes: Vec<String> = ensemble
            .servers
            .iter()
            .map(|s| four_letters(&s.address, "srvr"))
            .collect();
        let leaders = modes.iter().filter(|m| m.contains("Mode: leader")).count();
        let followers = modes
            .iter()
            .filter(|m| m.contains("Mode: follower"))
            .count();
        if leaders == 1 && followers == 2 {
            return ensemble;
        }
        assert!(
            Instant::now() < deadline,
            "no quorum within 90 s: {modes:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Ten nodes start while the ensemble's leader is killed: they form exactly one cluster on
/// the two servers left (a new leader is elected), and their entries survive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ensemble_whose_leader_is_killed_during_bootstrap_still_forms_one_cluster() {
    let Some(image) = image() else { return };
    let ensemble = start_ensemble(&image);
    let leader = ensemble
        .servers
        .iter()
        .position(|s| four_letters(&s.address, "srvr").contains("Mode: leader"))
        .expect("a leader");
    let addresses: Vec<String> = ensemble.servers.iter().map(|s| s.address.clone()).collect();
    let mut settings = settings("ensemble");
    // Ride out the election: no retry limit, a generous TTL.
    settings.nr_of_retries = None;
    settings.ttl_factor = 10.0;
    let config =
        ZooKeeperConfig::new(addresses.clone()).with_session_timeout(Duration::from_secs(6));
    let local = LocalCluster::new();
    let mut handles = Vec::new();
    for i in 0..10u16 {
        let zk = Arc::new(ZooKeeperCoordination::new(&config).unwrap());
        let me = NodeId::new(format!("10.0.1.{i}:2552"), rand::random());
        handles.push(
            Node::builder()
                .settings(settings.clone())
                .address(me.clone())
                .coordination(zk)
                .cluster(Arc::new(local.node(me)))
                .spawn()
                .unwrap(),
        );
        if i == 2 {
            // The leader goes down while the first nodes bootstrap.
            let out = Command::new("docker")
                .args(["kill", &ensemble.servers[leader].name])
                .output()
                .unwrap();
            assert!(out.status.success());
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
