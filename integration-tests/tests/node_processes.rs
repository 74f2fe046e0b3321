//! Real `constructr node` processes (chitchat gossip on 127.0.0.1) against real etcd and
//! Consul in Docker: formation, a killed member, a restarted member, graceful SIGTERM, a seed
//! killed before anyone joined it. Each scenario runs once per backend.
//!
//! The binary is the workspace's own `constructr`: `CONSTRUCTR_BIN` if set, else the one next
//! to this test's profile directory, built first with `cargo build -p constructr-cli` when it
//! is missing or older than the workspace's sources. Every process is killed on drop.

use std::io::{BufRead as _, BufReader, Read as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use constructr_consul::ConsulCoordination;
use constructr_core::{ClusterName, Coordination, Registry, Scope};
use constructr_etcd::{EtcdCoordination, lease_ttl_secs};
use integration_tests::consul::ConsulNode;
use integration_tests::etcd::EtcdNode;
use integration_tests::unique_cluster_name;
use serde_json::Value;

const KEY_PREFIX: &str = "/constructr-it";
/// etcd: entry TTL = refresh-interval × ttl-factor = 3 s; a join gives up after 5 s.
const ETCD_SETTINGS: &str = r#"
key-prefix = "/constructr-it"
refresh-interval = "1s"
ttl-factor = 3.0
join-timeout = "5s"
coordination-timeout = "700ms"
nr-of-retries = 1
retry-delay = "300ms"
"#;
const ETCD_TTL: Duration = Duration::from_secs(3);
/// Consul: session TTLs are at least 10 s (entry TTL 12 s, lock TTL 10 s).
const CONSUL_SETTINGS: &str = r#"
key-prefix = "/constructr-it"
refresh-interval = "4s"
ttl-factor = 3.0
join-timeout = "8s"
coordination-timeout = "1s"
nr-of-retries = 1
retry-delay = "300ms"
"#;
const CONSUL_TTL: Duration = Duration::from_secs(12);
const GOSSIP_INTERVAL: &str = "100ms";
/// Formation, including joins that time out and start over while a dead seed's entry
/// expires (Consul: up to 2 × TTL + 1 s), on a loaded machine.
const FORMATION: Duration = Duration::from_secs(90);
/// A killed peer leaves the live set after phi-threshold (8) × ~100-200 ms of silence.
const FAILURE_DETECTION: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------
// The binary

fn constructr_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("CONSTRUCTR_BIN") {
            return PathBuf::from(bin);
        }
        // This test runs from `{target}/{profile}/deps/`.
        let exe = std::env::current_exe().expect("test executable path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("{target}/{profile}/deps/");
        let bin = profile_dir.join("constructr");
        if !is_fresh(&bin) {
            build_bin(profile_dir);
        }
        assert!(bin.exists(), "{} was not built", bin.display());
        bin
    })
    .clone()
}

/// Whether `bin` exists and is newer than every source and manifest of the workspace.
fn is_fresh(bin: &Path) -> bool {
    let Ok(built) = bin.metadata().and_then(|m| m.modified()) else {
        return false;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    newest_source(root).is_none_or(|newest| newest <= built)
}

fn newest_source(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let t = if path.is_dir() {
            if name.starts_with('.') || name == "target" || name == "tests" || name == "examples" {
                continue;
            }
            newest_source(&path)
        } else if name.ends_with(".rs") || name == "Cargo.toml" || name == "Cargo.lock" {
            entry.metadata().and_then(|m| m.modified()).ok()
        } else {
            None
        };
        newest = newest.max(t);
    }
    newest
}

fn build_bin(profile_dir: &Path) {
    let target_dir = profile_dir.parent().expect("{target}/{profile}");
    let profile = profile_dir
        .file_name()
        .and_then(|p| p.to_str())
        .expect("profile dir name");
    let mut cargo = Command::new(env!("CARGO"));
    cargo
        .args(["build", "-p", "constructr-cli", "--bin", "constructr"])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    match profile {
        "debug" => {}
        "release" => {
            cargo.arg("--release");
        }
        other => {
            cargo.args(["--profile", other]);
        }
    }
    let status = cargo.status().expect("run cargo build");
    assert!(
        status.success(),
        "cargo build of the constructr binary failed"
    );
}

// ---------------------------------------------------------------------------------------
// One `constructr node` process

struct NodeProcess {
    gossip: String,
    child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
    stderr: Arc<Mutex<String>>,
    exit: Option<ExitStatus>,
}

impl NodeProcess {
    fn start(backend: &[String], cluster: &ClusterName, settings: &Path, port: u16) -> Self {
        let gossip = format!("127.0.0.1:{port}");
        let mut child = Command::new(constructr_bin())
            .arg("node")
            .args(backend)
            .arg("--cluster")
            .arg(cluster.as_str())
            .arg("--config")
            .arg(settings)
            .args(["--gossip", &gossip, "--gossip-interval", GOSSIP_INTERVAL])
            .arg("--json")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start constructr node");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let out = child.stdout.take().expect("piped");
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
                sink.lock().expect("not poisoned").push(value);
            }
        });
        let mut err = child.stderr.take().expect("piped");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .expect("not poisoned")
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Self {
            gossip,
            child,
            lines,
            stderr,
            exit: None,
        }
    }

    fn last(&self) -> Option<Value> {
        self.lines.lock().expect("not poisoned").last().cloned()
    }

    /// The state of the last line.
    fn state(&self) -> Option<String> {
        Some(self.last()?["state"].as_str()?.to_owned())
    }

    /// The live members of the last line (sorted gossip addresses).
    fn members(&self) -> Vec<String> {
        self.last()
            .and_then(|l| {
                l["members"].as_array().map(|m| {
                    m.iter()
                        .filter_map(|a| a.as_str().map(str::to_owned))
                        .collect()
                })
            })
            .unwrap_or_default()
    }

    fn is_registered(&self) -> bool {
        matches!(
            self.state().as_deref(),
            Some("RefreshScheduled" | "Refreshing")
        )
    }

    /// Every state this process went through, in order.
    fn states(&self) -> Vec<String> {
        self.lines
            .lock()
            .expect("not poisoned")
            .iter()
            .filter(|l| l["event"] == "state")
            .filter_map(|l| l["state"].as_str().map(str::to_owned))
            .collect()
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        self.exit = self.child.wait().ok();
    }

    fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {}", self.child.id());
    }

    fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().expect("try_wait");
        }
        self.exit
    }

    fn describe(&self) -> String {
        let lines = self.lines.lock().expect("not poisoned");
        let tail: Vec<String> = lines
            .iter()
            .rev()
            .take(6)
            .rev()
            .map(Value::to_string)
            .collect();
        format!(
            "--- {} (exit {:?})\n{}\nstderr: {}",
            self.gossip,
            self.exit,
            tail.join("\n"),
            self.stderr.lock().expect("not poisoned").trim()
        )
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// Helpers

enum Service {
    Etcd(EtcdNode),
    Consul(ConsulNode),
}

struct Setup {
    service: Service,
    cluster: ClusterName,
    settings: PathBuf,
    ttl: Duration,
}

impl Setup {
    async fn etcd(what: &str) -> Self {
        let bin = tokio::task::spawn_blocking(constructr_bin);
        let etcd = EtcdNode::start().await;
        bin.await.expect("binary located or built");
        Self::new(Service::Etcd(etcd), what, ETCD_SETTINGS, ETCD_TTL)
    }

    async fn consul(what: &str) -> Self {
        let bin = tokio::task::spawn_blocking(constructr_bin);
        let consul = ConsulNode::start().await;
        bin.await.expect("binary located or built");
        Self::new(Service::Consul(consul), what, CONSUL_SETTINGS, CONSUL_TTL)
    }

    fn new(service: Service, what: &str, settings_toml: &str, ttl: Duration) -> Self {
        let cluster = unique_cluster_name(what);
        let settings = std::env::temp_dir().join(format!("constructr-{cluster}.toml"));
        std::fs::write(&settings, settings_toml).expect("write settings file");
        Self {
            service,
            cluster,
            settings,
            ttl,
        }
    }

    fn backend_args(&self) -> Vec<String> {
        match &self.service {
            Service::Etcd(etcd) => vec![
                "--backend".into(),
                "etcd".into(),
                "--endpoints".into(),
                etcd.endpoint(),
            ],
            Service::Consul(consul) => vec![
                "--backend".into(),
                "consul".into(),
                "--consul-address".into(),
                consul.address(),
            ],
        }
    }

    /// The latest an unrefreshed entry disappears after its last refresh.
    fn expiry_bound(&self) -> Duration {
        match &self.service {
            Service::Etcd(_) => {
                Duration::from_secs(lease_ttl_secs(self.ttl) as u64)
                    + EtcdCoordination::EXPIRY_BOUND
            }
            Service::Consul(_) => self.ttl + ConsulCoordination::expiry_bound(self.ttl),
        }
    }

    fn start(&self, port: u16) -> NodeProcess {
        NodeProcess::start(&self.backend_args(), &self.cluster, &self.settings, port)
    }

    async fn registry(&self) -> Registry {
        let coordination: Box<dyn Coordination> = match &self.service {
            Service::Etcd(etcd) => {
                Box::new(EtcdCoordination::new(&etcd.config()).expect("valid config"))
            }
            Service::Consul(consul) => {
                Box::new(ConsulCoordination::new(&consul.config()).expect("valid config"))
            }
        };
        let scope = Scope::new(KEY_PREFIX, self.cluster.clone()).expect("valid scope");
        coordination
            .get_nodes(&scope)
            .await
            .expect("read the registry")
    }

    async fn registered_addresses(&self) -> Vec<String> {
        let mut a: Vec<String> = self
            .registry()
            .await
            .nodes
            .into_iter()
            .map(|n| n.address)
            .collect();
        a.sort();
        a
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.settings);
    }
}

/// `n` distinct free UDP ports on 127.0.0.1 (held together while picking, so distinct).
fn free_udp_ports(n: usize) -> Vec<u16> {
    let sockets: Vec<std::net::UdpSocket> = (0..n)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").expect("a free UDP port"))
        .collect();
    sockets
        .iter()
        .map(|s| s.local_addr().expect("addr").port())
        .collect()
}

fn sorted(addresses: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut a: Vec<String> = addresses.into_iter().collect();
    a.sort();
    a
}

/// Polls `check` every 100 ms; on timeout panics with `what` and every process's last lines.
async fn wait_until(
    procs: &mut [&mut NodeProcess],
    timeout: Duration,
    what: &str,
    mut check: impl FnMut(&mut [&mut NodeProcess]) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        if check(procs) {
            return start.elapsed();
        }
        if start.elapsed() > timeout {
            for p in procs.iter_mut() {
                p.try_exit();
            }
            let dump: Vec<String> = procs.iter().map(|p| p.describe()).collect();
            panic!(
                "timed out after {timeout:?} waiting for: {what}\n{}",
                dump.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every process registered and seeing exactly `expected` as live members.
fn converged(procs: &mut [&mut NodeProcess], expected: &[String]) -> bool {
    procs
        .iter()
        .all(|p| p.is_registered() && p.members() == expected)
}

// ---------------------------------------------------------------------------------------
// Tests: every scenario on etcd and on Consul

macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    integration_tests::require_docker!();
                    super::$scenario(super::Setup::etcd("nodes-etcd").await).await;
                }
            )*
        }
        mod consul {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    integration_tests::require_docker!();
                    super::$scenario(super::Setup::consul("nodes-consul").await).await;
                }
            )*
        }
    };
}

on_both_backends!(
    five_processes_started_at_once_form_one_cluster_of_five,
    a_killed_member_leaves_the_live_set_expires_and_rejoins_the_same_cluster,
    sigterm_removes_the_entry_at_once_and_exits_zero,
    a_seed_killed_before_anyone_joined_it_leaves_exactly_one_cluster_of_three,
);

// ---------------------------------------------------------------------------------------
// Scenarios

async fn five_processes_started_at_once_form_one_cluster_of_five(setup: Setup) {
    let ports = free_udp_ports(5);
    let mut procs: Vec<NodeProcess> = ports.iter().map(|&p| setup.start(p)).collect();
    let all = sorted(procs.iter().map(|p| p.gossip.clone()));
    let mut refs: Vec<&mut NodeProcess> = procs.iter_mut().collect();
    let took = wait_until(
        &mut refs,
        FORMATION,
        "5 processes in one cluster of 5",
        |ps| converged(ps, &all),
    )
    .await;
    println!("5 processes formed one cluster in {took:?}");
    let seeders = procs
        .iter()
        .filter(|p| p.states().iter().any(|s| s == "VerifyingEmpty"))
        .count();
    assert_eq!(seeders, 1, "exactly one process seeded the cluster");
    assert_eq!(setup.registered_addresses().await, all);
    assert!(setup.registry().await.epoch.is_some(), "a cluster epoch");
}

async fn a_killed_member_leaves_the_live_set_expires_and_rejoins_the_same_cluster(setup: Setup) {
    let ports = free_udp_ports(3);
    let mut procs: Vec<NodeProcess> = ports.iter().map(|&p| setup.start(p)).collect();
    let all = sorted(procs.iter().map(|p| p.gossip.clone()));
    wait_until(
        &mut procs.iter_mut().collect::<Vec<_>>(),
        FORMATION,
        "3 processes in one cluster of 3",
        |ps| converged(ps, &all),
    )
    .await;
    let epoch = setup.registry().await.epoch.expect("an epoch").cluster;

    // kill -9 one member: the others see it leave chitchat's live set ...
    let victim = 1;
    let killed_at = Instant::now();
    procs[victim].kill9();
    let gone = procs[victim].gossip.clone();
    let rest: Vec<String> = all.iter().filter(|a| **a != gone).cloned().collect();
    let (before, after) = procs.split_at_mut(victim);
    let mut survivors: Vec<&mut NodeProcess> = before.iter_mut().chain(&mut after[1..]).collect();
    let detected = wait_until(
        &mut survivors,
        FAILURE_DETECTION,
        "the survivors see the killed member leave",
        |ps| converged(ps, &rest),
    )
    .await;
    println!("the killed member left the live set after {detected:?}");

    // ... and its registry entry expires within its TTL bound.
    let bound = setup.expiry_bound();
    loop {
        if setup.registered_addresses().await == rest {
            break;
        }
        assert!(
            killed_at.elapsed() < bound + Duration::from_secs(2),
            "the killed member's entry outlived its TTL bound {bound:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "the killed member's entry expired {:?} after the kill (bound {bound:?})",
        killed_at.elapsed()
    );

    // A new process on the same address rejoins the same cluster and does not seed one.
    procs[victim] = setup.start(ports[victim]);
    wait_until(
        &mut procs.iter_mut().collect::<Vec<_>>(),
        FORMATION,
        "the restarted member back in the cluster of 3",
        |ps| converged(ps, &all),
    )
    .await;
    let states = procs[victim].states();
    assert!(
        !states
            .iter()
            .any(|s| s == "Locking" || s == "VerifyingEmpty"),
        "the restarted member tried to seed: {states:?}"
    );
    let registry = setup.registry().await;
    assert_eq!(
        registry.epoch.map(|e| e.cluster),
        Some(epoch),
        "same cluster"
    );
    assert_eq!(setup.registered_addresses().await, all);
}

async fn sigterm_removes_the_entry_at_once_and_exits_zero(setup: Setup) {
    let ports = free_udp_ports(2);
    let mut procs: Vec<NodeProcess> = ports.iter().map(|&p| setup.start(p)).collect();
    let all = sorted(procs.iter().map(|p| p.gossip.clone()));
    wait_until(
        &mut procs.iter_mut().collect::<Vec<_>>(),
        FORMATION,
        "2 processes in one cluster of 2",
        |ps| converged(ps, &all),
    )
    .await;

    let leaving = procs[1].gossip.clone();
    procs[1].sigterm();
    let took = wait_until(
        &mut [&mut procs[1]],
        Duration::from_secs(10),
        "the process exits after SIGTERM",
        |ps| ps[0].try_exit().is_some(),
    )
    .await;
    let status = procs[1].exit.expect("exited");
    assert!(status.success(), "{status}\n{}", procs[1].describe());
    // "At once": no TTL wait, the entry is gone when the process has exited.
    let left = setup.registered_addresses().await;
    assert_eq!(left, vec![procs[0].gossip.clone()], "entry removed at exit");
    println!("exited 0 {took:?} after SIGTERM with its entry removed");
    let states = procs[1].states();
    assert_eq!(
        states[states.len() - 3..],
        ["Leaving", "RemovingSelf", "Stopped"],
        "graceful leave"
    );
    let (stay, _) = procs.split_at_mut(1);
    wait_until(
        &mut [&mut stay[0]],
        FAILURE_DETECTION,
        "the remaining member sees it leave",
        |ps| ps[0].members() == [ps[0].gossip.clone()],
    )
    .await;
    assert!(!procs[0].members().contains(&leaving));
}

async fn a_seed_killed_before_anyone_joined_it_leaves_exactly_one_cluster_of_three(setup: Setup) {
    let ports = free_udp_ports(4);
    let mut seed = setup.start(ports[0]);
    wait_until(&mut [&mut seed], FORMATION, "the seed registered", |ps| {
        ps[0].is_registered()
    })
    .await;
    assert_eq!(
        setup.registered_addresses().await,
        vec![seed.gossip.clone()]
    );
    let dead_epoch = setup.registry().await.epoch.expect("an epoch").cluster;
    seed.kill9();

    // Three more find only the dead seed: their joins time out until its entry expires,
    // then exactly one of them seeds a new cluster and the others join it.
    let mut procs: Vec<NodeProcess> = ports[1..].iter().map(|&p| setup.start(p)).collect();
    let three = sorted(procs.iter().map(|p| p.gossip.clone()));
    let took = wait_until(
        &mut procs.iter_mut().collect::<Vec<_>>(),
        FORMATION,
        "the three in one cluster of 3",
        |ps| converged(ps, &three),
    )
    .await;
    println!("three processes formed one cluster {took:?} after the seed was killed");
    assert_eq!(setup.registered_addresses().await, three);
    let epoch = setup.registry().await.epoch.expect("an epoch").cluster;
    assert_ne!(epoch, dead_epoch, "a new cluster, not the dead seed's");
    // Stable: still one cluster of three a few gossip rounds later.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for p in &procs {
        assert_eq!(p.members(), three, "{}", p.describe());
    }
}
