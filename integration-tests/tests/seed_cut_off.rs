//! A seed cut off from the coordination service right after it took the bootstrap lock and
//! found the registry empty (the moment it sends its fenced registration), for longer than
//! the lock's TTL, while a second node seeds: real `constructr node` processes on etcd,
//! Consul and ZooKeeper.
//!
//! Node A reaches the service through a [`Proxy`] that delays everything A sends by
//! [`LATENCY`]; the test cuts the proxy as soon as A's `--json` output says it left
//! `VerifyingEmpty`, so its registration never reaches the service. Once A's lock has
//! expired, node B starts (connected directly) and seeds. At no moment may A and B both
//! report a cluster without the other (two clusters): a seed that formed its cluster before
//! its registration committed (ConstructR's order) runs a cluster of its own beside B's.
//! When the proxy heals, both end registered in one cluster.
//!
//! The same with SIGSTOP instead of a cut (etcd, Consul): A is frozen the moment it sends
//! its registration, for longer than its entry's TTL and the re-seed grace, while B seeds;
//! when A wakes it must not form its cluster beside B's.

use std::any::Any;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use constructr_core::{ClusterName, Coordination, Registry, Scope};
use integration_tests::process::{
    KEY_PREFIX, Line, NodeProcess, constructr_bin, free_udp_ports, sorted,
};
use integration_tests::proxy::Proxy;
use integration_tests::service::{Backend, Service};
use integration_tests::unique_cluster_name;
use integration_tests::zookeeper::{ZooKeeperServer, image};

/// Added to everything node A sends: the test's time to cut the proxy after A's output
/// says it is about to register (A's registration is dropped with the cut).
const LATENCY: Duration = Duration::from_millis(300);
/// How often both processes' last reports are compared (and their every line replayed).
const SAMPLE: Duration = Duration::from_millis(50);
/// How often A's output is read while the test waits to cut.
const CUT_POLL: Duration = Duration::from_millis(1);
/// A reaches `VerifyingEmpty` through the slow proxy.
const TO_LOCK: Duration = Duration::from_secs(60);
/// After the heal, both register in one cluster (A's retries wait at most 1 s).
const TO_ONE_CLUSTER: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------
// Tests: one per backend

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_a_seed_cut_off_after_its_lock_never_runs_beside_the_next_seed() {
    integration_tests::require_docker!();
    a_seed_cut_off_after_its_lock_never_runs_beside_the_next_seed(etcd().await, "cut-off-etcd")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_a_seed_cut_off_after_its_lock_never_runs_beside_the_next_seed() {
    integration_tests::require_docker!();
    let target = consul().await;
    a_seed_cut_off_after_its_lock_never_runs_beside_the_next_seed(target, "cut-off-consul").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_a_seed_cut_off_after_its_lock_never_runs_beside_the_next_seed() {
    integration_tests::require_docker!();
    let Some(target) = zookeeper().await else {
        return;
    };
    a_seed_cut_off_after_its_lock_never_runs_beside_the_next_seed(target, "cut-off-zk").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_a_seed_frozen_after_sending_its_registration_never_runs_beside_the_next_seed() {
    integration_tests::require_docker!();
    a_seed_frozen_after_sending_its_registration(etcd().await, "frozen-etcd").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_a_seed_frozen_after_sending_its_registration_never_runs_beside_the_next_seed() {
    integration_tests::require_docker!();
    a_seed_frozen_after_sending_its_registration(consul().await, "frozen-consul").await;
}

// ---------------------------------------------------------------------------------------
// Setups

/// etcd: entry TTL 6 s (at least 1 + (2 × 2 s + retry) / 1 s), lock TTL 3 s + 2 × 2 s =
/// 7 s; requests through the proxy take 300 ms more: a coordination timeout of 2 s.
async fn etcd() -> Target {
    let toml = settings_toml("1s", 6.0, "3s", "2s");
    on_service(Backend::Etcd, toml, Duration::from_secs(7)).await
}

/// Consul: its sessions last at least 10 s: entry TTL 12 s, lock TTL 6 s + 2 × 2 s = 10 s.
async fn consul() -> Target {
    let toml = settings_toml("4s", 3.0, "6s", "2s");
    on_service(Backend::Consul, toml, Duration::from_secs(10)).await
}

/// ZooKeeper (`None`: its image is missing). A call takes several round trips, each 300 ms
/// more through the proxy: a coordination timeout of 3 s; entry TTL 8 s (at least
/// 1 + (2 × 3 s + retry) / 1 s), lock TTL 3 s + 2 × 3 s = 9 s (its znode also goes with
/// A's 3 s session).
async fn zookeeper() -> Option<Target> {
    let image = image()?;
    let bin = tokio::task::spawn_blocking(constructr_bin);
    let server = ZooKeeperServer::start(&image, "cut-off");
    bin.await.expect("binary located or built");
    let reader = constructr_zookeeper::ZooKeeperCoordination::new(
        &constructr_zookeeper::ZooKeeperConfig::new([server.address()]),
    )
    .expect("valid config");
    Some(Target {
        upstream: server.address(),
        args: Box::new(|address: &str| {
            [
                "--coordination",
                &format!("zk://{address}"),
                "--zookeeper-session-timeout",
                "3s",
            ]
            .map(String::from)
            .to_vec()
        }),
        reader: Arc::new(reader),
        toml: settings_toml("1s", 8.0, "3s", "3s"),
        lock_ttl: Duration::from_secs(9),
        _service: Box::new(server),
    })
}

/// A coordination service and how the processes use it.
struct Target {
    /// `host:port` of the service (A's proxy forwards there).
    upstream: String,
    /// The `constructr node` options that select the service at `host:port`.
    args: BackendArgs,
    /// A client of the service (not through the proxy), to read the registry.
    reader: Arc<dyn Coordination>,
    /// The settings file.
    toml: String,
    /// The lock TTL the settings give (join-timeout + 2 × coordination-timeout).
    lock_ttl: Duration,
    /// Keeps the service running.
    _service: Box<dyn Any>,
}

/// The `constructr node` options that select the service at an address (`host:port`).
type BackendArgs = Box<dyn Fn(&str) -> Vec<String>>;

/// A settings file of these timings; retries wait 300 ms, at most 1 s (so that A retries
/// soon after the heal); no count limit (A rides out the cut).
fn settings_toml(refresh: &str, ttl_factor: f64, join: &str, coordination: &str) -> String {
    format!(
        "key-prefix = \"{KEY_PREFIX}\"\nrefresh-interval = \"{refresh}\"\n\
         ttl-factor = {ttl_factor:.1}\njoin-timeout = \"{join}\"\n\
         coordination-timeout = \"{coordination}\"\nretry-delay = \"300ms\"\n\
         max-retry-delay = \"1s\"\n"
    )
}

/// `backend` (etcd or Consul) as a [`Target`] (and the binary located or built meanwhile).
async fn on_service(backend: Backend, toml: String, lock_ttl: Duration) -> Target {
    let bin = tokio::task::spawn_blocking(constructr_bin);
    let service = Service::start(backend).await;
    bin.await.expect("binary located or built");
    let args = service.backend_args();
    // `--endpoints http://127.0.0.1:{port}` or `--consul-address http://127.0.0.1:{port}`.
    let upstream = args
        .iter()
        .find_map(|a| a.strip_prefix("http://"))
        .expect("a plain-HTTP service address")
        .to_owned();
    let replaced = upstream.clone();
    Target {
        upstream,
        args: Box::new(move |address: &str| {
            args.iter().map(|a| a.replace(&replaced, address)).collect()
        }),
        reader: service.coordination(),
        toml,
        lock_ttl,
        _service: Box::new(service),
    }
}

// ---------------------------------------------------------------------------------------
// The scenario

async fn a_seed_cut_off_after_its_lock_never_runs_beside_the_next_seed(t: Target, what: &str) {
    // A, through the slow proxy: cut it as soon as A leaves VerifyingEmpty (it holds the
    // lock and read the registry empty): what it sends next never reaches the service.
    let Started {
        mut run,
        scope,
        proxy,
        cluster,
        settings,
        ports,
        _cleanup,
    } = Started::new(&t, what).await;
    let left = run.a_leaves_verifying_empty().await;
    proxy.cut();
    let cut_at = Instant::now();
    let reaction = cut_at - left.at;
    let locked_at = run
        .a
        .lines()
        .into_iter()
        .find(|l| l.is_state_change() && l.state() == Some("VerifyingEmpty"))
        .expect("A entered VerifyingEmpty")
        .at;
    println!(
        "{:>7.3}s A: VerifyingEmpty -> {} {:?}, cut {reaction:?} after that line (A's path: {})",
        run.secs(left.at),
        left.state().unwrap_or("?"),
        left.members(),
        run.a.states().join(" -> ")
    );
    assert!(
        reaction < LATENCY,
        "the cut came {reaction:?} after A left VerifyingEmpty, not within the proxy's \
         latency {LATENCY:?}: A's registration may have reached the service"
    );
    let registry = read(&*t.reader, &scope).await;
    assert!(
        registry.nodes.is_empty() && registry.epoch.is_none(),
        "A's registration reached the service despite the cut: {registry:?}"
    );

    // A's lock expires (it was taken before A entered VerifyingEmpty).
    let expired_at = locked_at + t.lock_ttl;
    run.wait("A's lock TTL to pass", t.lock_ttl + LATENCY, |_| {
        Instant::now() >= expired_at
    })
    .await;
    let a_node = run.a.gossip.clone();
    let deadline = Instant::now() + t.lock_ttl + Duration::from_secs(5);
    loop {
        run.check();
        let registry = read(&*t.reader, &scope).await;
        if registry.lock.as_ref().is_none_or(|n| n.address != a_node) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "A's lock outlived its TTL {:?} by more than {:?}: {registry:?}",
            t.lock_ttl,
            t.lock_ttl + Duration::from_secs(5)
        );
        tokio::time::sleep(SAMPLE).await;
    }
    println!(
        "{:>7.3}s A's lock expired ({:?} after A took it; lock TTL {:?})",
        run.secs(Instant::now()),
        Instant::now() - locked_at,
        t.lock_ttl
    );

    // B, connected directly: it seeds and registers its cluster of one.
    let b_started = Instant::now();
    run.b = Some(NodeProcess::start(
        &(t.args)(&t.upstream),
        &cluster,
        &settings,
        ports[1],
    ));
    let b_node = run.b().gossip.clone();
    run.wait(
        "B seeds and registers its cluster of one",
        2 * t.lock_ttl + Duration::from_secs(30),
        |r| r.b().is_registered() && r.b().members() == [r.b().gossip.clone()],
    )
    .await;
    assert!(
        run.b().states().iter().any(|s| s == "VerifyingEmpty"),
        "B did not seed: {}",
        run.b().describe()
    );
    assert_eq!(
        registered(&*t.reader, &scope).await,
        std::slice::from_ref(&b_node),
        "only B is registered"
    );
    println!(
        "{:>7.3}s B seeded and registered {:?} after it started (path: {}); A: {} {:?}",
        run.secs(Instant::now()),
        b_started.elapsed(),
        run.b().states().join(" -> "),
        run.a.state().unwrap_or_default(),
        run.a.members()
    );
    // Still cut off for a few more samples.
    let hold = Instant::now() + Duration::from_secs(1);
    run.wait("a second more of the cut", Duration::from_secs(2), |_| {
        Instant::now() >= hold
    })
    .await;

    // Heal: A ends in B's cluster, both registered.
    proxy.heal();
    let healed = Instant::now();
    let both = sorted([a_node.clone(), b_node.clone()]);
    run.one_cluster_of(&both, &*t.reader, &scope, "the heal")
        .await;
    println!(
        "{:>7.3}s one cluster {both:?}, both registered, {:?} after the heal (A's path: {})",
        run.secs(Instant::now()),
        healed.elapsed(),
        run.a.states().join(" -> ")
    );
}

/// A seed frozen (SIGSTOP) the moment it sends its fenced registration — which may still
/// reach the service and commit, [`LATENCY`] later — for longer than its entry's TTL and
/// the re-seed grace, while B seeds: A must not form its cluster when it wakes (its
/// registration's lease is over: it refreshes first, finds the entry gone and starts over),
/// and at no moment may A and B both report a cluster without the other. In ConstructR's
/// order A has formed `[A]` before it froze.
async fn a_seed_frozen_after_sending_its_registration(t: Target, what: &str) {
    let Started {
        mut run,
        scope,
        proxy: _proxy,
        cluster,
        settings,
        ports,
        _cleanup,
    } = Started::new(&t, what).await;
    run.a_leaves_verifying_empty().await;
    run.a.sigstop();
    let frozen_at = Instant::now();
    // The registration was on its way: on etcd (one transaction) it commits while A
    // sleeps; on Consul the entry's session is created first and the transaction is never
    // sent. Either way A must not run a cluster beside B's.
    let a_node = run.a.gossip.clone();
    tokio::time::sleep(LATENCY * 3).await;
    let committed = registered(&*t.reader, &scope).await.contains(&a_node);
    println!(
        "{:>7.3}s A frozen after {}; its registration {} while it sleeps",
        run.secs(frozen_at),
        run.a.states().join(" -> "),
        if committed {
            "committed"
        } else {
            "did not commit"
        }
    );

    // B, connected directly: it cannot join the frozen A; once A's entry expired and the
    // re-seed grace passed, it seeds.
    run.b = Some(NodeProcess::start(
        &(t.args)(&t.upstream),
        &cluster,
        &settings,
        ports[1],
    ));
    run.wait(
        "B seeds and registers its cluster of one while A is frozen",
        Duration::from_secs(120),
        |r| r.b().is_registered() && r.b().members() == [r.b().gossip.clone()],
    )
    .await;
    let frozen_for = frozen_at.elapsed();
    let states = run.b().states();
    println!(
        "{:>7.3}s B registered [B] (path: … {}); A frozen for {frozen_for:?}",
        run.secs(Instant::now()),
        states[states.len().saturating_sub(6)..].join(" -> ")
    );

    // A wakes, long past its registration's lease.
    run.a.sigcont();
    let woke = Instant::now();
    let b_node = run.b().gossip.clone();
    let both = sorted([a_node, b_node]);
    run.one_cluster_of(&both, &*t.reader, &scope, "A woke")
        .await;
    println!(
        "{:>7.3}s one cluster {both:?} {:?} after A woke (A's path: {})",
        run.secs(Instant::now()),
        woke.elapsed(),
        run.a.states().join(" -> ")
    );
}

/// The registry of `scope`, read directly; panics if the service does not answer.
async fn read(reader: &dyn Coordination, scope: &Scope) -> Registry {
    reader.get_nodes(scope).await.expect("read the registry")
}

/// The registered addresses of `scope`, sorted.
async fn registered(reader: &dyn Coordination, scope: &Scope) -> Vec<String> {
    sorted(
        read(reader, scope)
            .await
            .nodes
            .into_iter()
            .map(|n| n.address),
    )
}

/// A started through the slow proxy, and what B needs to start beside it.
struct Started {
    run: Run,
    scope: Scope,
    proxy: Proxy,
    cluster: ClusterName,
    settings: PathBuf,
    ports: Vec<u16>,
    _cleanup: RemoveOnDrop,
}

impl Started {
    /// Writes the settings, starts the proxy and A (through it) in a fresh cluster.
    async fn new(t: &Target, what: &str) -> Self {
        let cluster = unique_cluster_name(what);
        let settings = std::env::temp_dir().join(format!("constructr-{cluster}.toml"));
        std::fs::write(&settings, &t.toml).expect("write the settings file");
        let scope = Scope::new(KEY_PREFIX, cluster.clone()).expect("valid scope");
        let proxy = Proxy::with_latency(t.upstream.clone(), LATENCY).await;
        let ports = free_udp_ports(2);
        let run = Run {
            started: Instant::now(),
            a: NodeProcess::start(&(t.args)(&proxy.address()), &cluster, &settings, ports[0]),
            b: None,
        };
        Self {
            run,
            scope,
            proxy,
            cluster,
            _cleanup: RemoveOnDrop(settings.clone()),
            settings,
            ports,
        }
    }
}

/// Both processes, and the invariant checked on them: never two clusters.
struct Run {
    started: Instant,
    a: NodeProcess,
    b: Option<NodeProcess>,
}

impl Run {
    fn b(&self) -> &NodeProcess {
        self.b.as_ref().expect("B started")
    }

    /// Waits (polling every [`CUT_POLL`]) until A's output leaves `VerifyingEmpty`: it
    /// holds the lock, read the registry empty, and sends its registration next.
    async fn a_leaves_verifying_empty(&mut self) -> Line {
        loop {
            if let Some(line) = self
                .a
                .lines()
                .into_iter()
                .find(|l| l.is_state_change() && l.value["from"] == "VerifyingEmpty")
            {
                return line;
            }
            if self.started.elapsed() > TO_LOCK || self.a.try_exit().is_some() {
                panic!(
                    "A did not leave VerifyingEmpty within {TO_LOCK:?}\n{}",
                    self.a.describe()
                );
            }
            tokio::time::sleep(CUT_POLL).await;
        }
    }

    /// Samples until both processes report one cluster of `both`, registered, and the
    /// registry holds exactly them; panics after [`TO_ONE_CLUSTER`] (since `after`).
    async fn one_cluster_of(
        &mut self,
        both: &[String],
        reader: &dyn Coordination,
        scope: &Scope,
        after: &str,
    ) {
        let deadline = Instant::now() + TO_ONE_CLUSTER;
        let mut in_registry = Vec::new();
        loop {
            self.check();
            let converged = [&self.a, self.b()]
                .iter()
                .all(|p| p.is_registered() && p.members() == both);
            if converged {
                in_registry = registered(reader, scope).await;
                if in_registry == both {
                    break;
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "not one registered cluster of A and B {TO_ONE_CLUSTER:?} after {after} \
                     (registry: {in_registry:?})\n{}\n{}",
                    self.a.describe_last(12),
                    self.b().describe_last(12)
                );
            }
            tokio::time::sleep(SAMPLE).await;
        }
        self.check();
    }

    /// Seconds since A started, at `at`.
    fn secs(&self, at: Instant) -> f64 {
        (at - self.started).as_secs_f64()
    }

    /// Panics if A and B report two clusters now (their last lines), or did at any of
    /// their lines so far (replayed in the order they were read).
    fn check(&mut self) {
        if let Some(split) = self.two_clusters() {
            self.fail(&split);
        }
    }

    fn two_clusters(&self) -> Option<String> {
        let b = self.b.as_ref()?;
        let (a_lines, b_lines) = (self.a.lines(), b.lines());
        if let (Some(a), Some(b)) = (a_lines.last(), b_lines.last())
            && let Some(split) = self.split(a, b)
        {
            return Some(format!("now: {split}"));
        }
        let mut timeline: Vec<(usize, Line)> = a_lines
            .into_iter()
            .map(|l| (0, l))
            .chain(b_lines.into_iter().map(|l| (1, l)))
            .collect();
        timeline.sort_by_key(|(_, l)| l.at);
        let mut last: [Option<Line>; 2] = [None, None];
        for (who, line) in timeline {
            last[who] = Some(line);
            if let [Some(a), Some(b)] = &last
                && let Some(split) = self.split(a, b)
            {
                return Some(split);
            }
        }
        None
    }

    /// Two clusters: both report members, and neither's include the other.
    fn split(&self, a: &Line, b: &Line) -> Option<String> {
        let (a_node, b_node) = (&self.a.gossip, &self.b().gossip);
        let (am, bm) = (a.members(), b.members());
        let two = !am.is_empty() && !bm.is_empty() && !am.contains(b_node) && !bm.contains(a_node);
        two.then(|| {
            format!(
                "at {:.3}s A ({a_node}) reports {} with members {am:?}, at {:.3}s B ({b_node}) \
                 reports {} with members {bm:?}",
                self.secs(a.at),
                a.state().unwrap_or("?"),
                self.secs(b.at),
                b.state().unwrap_or("?"),
            )
        })
    }

    fn fail(&mut self, split: &str) -> ! {
        self.a.try_exit();
        if let Some(b) = &mut self.b {
            b.try_exit();
        }
        panic!(
            "TWO CLUSTERS: {split}\nA's states: {}\nB's states: {}\n{}\n{}",
            self.a.states().join(" -> "),
            self.b().states().join(" -> "),
            self.a.describe_last(12),
            self.b().describe_last(12)
        );
    }

    /// Samples (see [`Run::check`]) every [`SAMPLE`] until `done`; panics after `timeout`.
    async fn wait(&mut self, what: &str, timeout: Duration, mut done: impl FnMut(&Self) -> bool) {
        let start = Instant::now();
        loop {
            self.check();
            if done(self) {
                return;
            }
            if start.elapsed() > timeout {
                self.a.try_exit();
                let b = self
                    .b
                    .as_ref()
                    .map(|b| b.describe_last(12))
                    .unwrap_or_default();
                panic!(
                    "timed out after {timeout:?} waiting for: {what}\n{}\n{b}",
                    self.a.describe_last(12)
                );
            }
            tokio::time::sleep(SAMPLE).await;
        }
    }
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
