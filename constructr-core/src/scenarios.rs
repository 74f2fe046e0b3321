//! The backend scenario suite: whole nodes (the real [`Machine`](crate::Machine) on the
//! tokio [`driver`]) bootstrapping against a running coordination service, the way users
//! break it (feature `scenarios`). It sits beside the [`conformance`](crate::conformance)
//! suite, which checks one request at a time; every backend runs both, ours and third-party
//! ones alike.
//!
//! A backend implements [`ScenarioBackend`] for a service it started (a container, a
//! process): a client, settings the service accepts, its expiry bounds, a way to stop it and
//! bring it back, and a raw write for garbage. Each scenario is a public function that
//! panics with a message naming what went wrong, so that a test harness can run each as its
//! own test (in parallel, on its own service):
//!
//! ```ignore
//! #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
//! async fn twenty_nodes_form_one_cluster() {
//!     let service = MyServiceForTests::start().await;
//!     constructr_core::scenarios::twenty_nodes_started_at_once_form_exactly_one_cluster(&service).await;
//! }
//! ```
//!
//! Every scenario uses its own freshly named cluster.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::coordination::{AddMode, AddOutcome, Coordination, LockOutcome};
use crate::driver::{self, NodeHandle};
use crate::entry;
use crate::local::LocalCluster;
use crate::machine::State;
use crate::node::{ClusterId, ClusterName, NodeId, Scope};
use crate::settings::Settings;

/// What the scenarios need from a running service.
#[async_trait]
pub trait ScenarioBackend: Send + Sync {
    /// The service's name in messages (`etcd`, `etcd-cluster`, `consul`, ...).
    fn name(&self) -> String;

    /// A fresh client of the service.
    fn coordination(&self) -> Arc<dyn Coordination>;

    /// Short settings the service accepts, for cluster `cluster`. The default: refresh 1 s,
    /// TTL 3 s, join timeout 5 s, coordination timeout 700 ms, one retry after 300 ms.
    fn settings(&self, cluster: ClusterName) -> Settings {
        Settings {
            cluster_name: cluster,
            key_prefix: "/constructr-scenarios".into(),
            refresh_interval: Duration::from_secs(1),
            ttl_factor: 3.0,
            join_timeout: Duration::from_secs(5),
            coordination_timeout: Duration::from_millis(700),
            nr_of_retries: Some(1),
            retry_delay: Duration::from_millis(300),
            retry_jitter: 0.2,
            ..Settings::default()
        }
    }

    /// The latest an entry written with `ttl` is gone after its last refresh (the backend's
    /// documented bound: lease rounding, lazy session expiry, ...).
    fn expiry_bound(&self, ttl: Duration) -> Duration;

    /// The latest a bootstrap lock taken with `ttl` can be taken again after its holder
    /// vanished. Default: [`ScenarioBackend::expiry_bound`].
    fn lock_expiry_bound(&self, ttl: Duration) -> Duration {
        self.expiry_bound(ttl)
    }

    /// Takes the whole service down abruptly (SIGKILL; every member of a cluster).
    async fn stop(&self);

    /// Brings a stopped service back on the same addresses; returns once it serves requests.
    async fn start_again(&self);

    /// Whether the service keeps its data across [`ScenarioBackend::stop`] and
    /// [`ScenarioBackend::start_again`] (an in-memory dev agent does not).
    fn keeps_data(&self) -> bool {
        true
    }

    /// Writes `value` verbatim under the core key `key` (as in [`crate::entry`]), without a
    /// TTL, as a third party writing garbage would.
    async fn put_raw(&self, key: &str, value: &[u8]);

    /// Clients of a service that speaks TLS and asks for client certificates (started by
    /// the backend and kept in [`TlsClients::keep`]); `None` if the backend has no TLS.
    async fn with_tls(&self) -> Option<TlsClients> {
        None
    }

    /// Clients of a service that requires credentials (this one with authentication turned
    /// on, or another one the backend starts and keeps in [`Credentials::keep`]); `None` if
    /// the backend has no credentials (the credentials scenario then checks nothing).
    async fn with_credentials(&self) -> Option<Credentials> {
        None
    }

    /// A client that has the endpoint URLs `first` in front of the service's own, with
    /// connect and request timeouts of `timeout`; `None` if the backend takes no endpoint
    /// list (the failover scenario then passes without checking anything).
    fn coordination_behind(
        &self,
        first: &[String],
        timeout: Duration,
    ) -> Option<Arc<dyn Coordination>> {
        let _ = (first, timeout);
        None
    }
}

/// Clients of a service that requires credentials, for
/// [`wrong_credentials_are_a_permanent_error_that_never_shows_the_secret`].
pub struct Credentials {
    /// A client with credentials the service accepts for the scenario's key prefix.
    pub right: Arc<dyn Coordination>,
    /// A client with credentials the service refuses.
    pub wrong: Arc<dyn Coordination>,
    /// The secret (password, token) of `wrong`: no error or `Debug` may contain it.
    pub wrong_secret: String,
    /// Whatever must live as long as the clients (a service started for them).
    pub keep: Box<dyn std::any::Any + Send + Sync>,
}

/// Clients of a service that speaks TLS and asks for client certificates, for
/// [`tls_with_client_certificates_and_refused_handshakes`].
pub struct TlsClients {
    /// The service's CA and a client certificate it accepts.
    pub trusted: Arc<dyn Coordination>,
    /// Another CA (and a client certificate of that CA): the server is not trusted.
    pub untrusted_ca: Arc<dyn Coordination>,
    /// The service's CA but no client certificate.
    pub no_client_certificate: Arc<dyn Coordination>,
    /// Whatever must live as long as the clients (the service started for them).
    pub keep: Box<dyn std::any::Any + Send + Sync>,
}

// ---------------------------------------------------------------------------------------
// Helpers, also for a backend's own tests

/// A fresh cluster name `{what}-{random}`.
pub fn unique_cluster_name(what: &str) -> ClusterName {
    let n: u32 = rand::random();
    ClusterName::new(format!("{what}-{n:08x}")).expect("a valid cluster name")
}

/// A node identity `node-{i}.test:2552` with a random incarnation.
pub fn node_id(i: usize) -> NodeId {
    NodeId::new(format!("node-{i}.test:2552"), rand::random())
}

/// Spawns `n` nodes, each with its own client from `coordination` (as each node of a real
/// cluster runs in its own process: a killed node takes its connection and session with
/// it) and its own [`LocalCluster`] handle.
pub fn spawn_nodes(
    n: usize,
    settings: &Settings,
    coordination: impl Fn() -> Arc<dyn Coordination>,
    local: &LocalCluster,
) -> Vec<NodeHandle> {
    (0..n)
        .map(|i| {
            let node = node_id(i);
            driver::Node::builder()
                .settings(settings.clone())
                .address(node.clone())
                .coordination(coordination())
                .cluster(Arc::new(local.node(node)))
                .spawn()
                .expect("valid settings")
        })
        .collect()
}

/// Waits until every node is registered; panics naming the stragglers and their states.
pub async fn all_registered(handles: &[NodeHandle], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    for h in handles {
        match tokio::time::timeout_at(deadline, h.registered()).await {
            Ok(Ok(_)) => {}
            Ok(Err(failure)) => panic!("{} did not register: {failure}", h.node()),
            Err(_) => {
                let states: Vec<_> = handles
                    .iter()
                    .map(|h| (h.node().clone(), h.state()))
                    .collect();
                panic!("not all nodes registered within {timeout:?}: {states:?}");
            }
        }
    }
}

/// Exactly one cluster was ever formed, and it has exactly `members` members.
pub fn assert_one_cluster(local: &LocalCluster, members: usize) {
    let clusters = local.clusters();
    assert_eq!(
        local.clusters_formed(),
        1,
        "more than one cluster was formed: {clusters:?}"
    );
    assert_eq!(clusters.len(), 1, "islands: {clusters:?}");
    assert_eq!(clusters.values().next().map(|m| m.len()), Some(members));
}

/// The registered nodes of `scope`, sorted.
pub async fn registered_nodes<C: Coordination + ?Sized>(c: &C, scope: &Scope) -> Vec<NodeId> {
    let mut nodes = c.get_nodes(scope).await.expect("get_nodes").nodes;
    nodes.sort();
    nodes
}

/// The nodes of `handles`, sorted.
pub fn sorted_ids(handles: &[NodeHandle]) -> Vec<NodeId> {
    let mut ids: Vec<_> = handles.iter().map(|h| h.node().clone()).collect();
    ids.sort();
    ids
}

/// Polls `check` every 100 ms until it returns `Some`; panics after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn scenario_settings<B: ScenarioBackend + ?Sized>(backend: &B, what: &str) -> Settings {
    let s = backend.settings(unique_cluster_name(what));
    s.validate()
        .expect("the backend's scenario settings are valid");
    backend
        .coordination()
        .check_settings(&s)
        .expect("the backend accepts its own scenario settings");
    s
}

// ---------------------------------------------------------------------------------------
// The scenarios

/// 20 nodes started at the same moment form exactly one cluster, all 20 are registered and
/// the epoch marker names their cluster.
pub async fn twenty_nodes_started_at_once_form_exactly_one_cluster<B: ScenarioBackend + ?Sized>(
    backend: &B,
) {
    let c = backend.coordination();
    let settings = scenario_settings(backend, "twenty");
    let scope = settings.scope().expect("scope");
    let local = LocalCluster::new();
    let start = Instant::now();
    let handles = spawn_nodes(20, &settings, || backend.coordination(), &local);
    all_registered(&handles, settings.lock_ttl() * 4 + Duration::from_secs(20)).await;
    println!(
        "{}: 20 nodes registered after {} ms",
        backend.name(),
        start.elapsed().as_millis()
    );
    assert_one_cluster(&local, 20);
    let registry = c.get_nodes(&scope).await.expect("get_nodes");
    let mut nodes = registry.nodes.clone();
    nodes.sort();
    assert_eq!(nodes, sorted_ids(&handles));
    let epoch = registry.epoch.map(|e| e.cluster);
    assert!(
        epoch.is_some_and(|c| c != ClusterId::UNREADABLE),
        "the epoch marker names the cluster: {epoch:?}"
    );
}

/// A node takes the bootstrap lock and vanishes: the others wait for the lock to expire
/// (not less than its TTL, not more than the backend's bound), exactly one of them seeds,
/// and the vanished holder's late seeding is fenced off.
pub async fn lock_holder_stopped_before_registering_lets_exactly_one_other_node_seed<
    B: ScenarioBackend + ?Sized,
>(
    backend: &B,
) {
    let c = backend.coordination();
    let settings = scenario_settings(backend, "lock-holder");
    let scope = settings.scope().expect("scope");
    let ghost = NodeId::new("ghost.test:2552", 1);
    let LockOutcome::Acquired(ghost_token) = c
        .lock(scope.lease(&ghost, settings.lock_ttl()))
        .await
        .expect("lock")
    else {
        panic!("{}: the lock of a fresh scope is held", backend.name());
    };
    let bound = backend.lock_expiry_bound(settings.lock_ttl());
    let local = LocalCluster::new();
    let start = Instant::now();
    let handles = spawn_nodes(5, &settings, || backend.coordination(), &local);
    all_registered(&handles, bound + Duration::from_secs(20)).await;
    let elapsed = start.elapsed();
    println!(
        "{}: lock TTL {:?} (bound {bound:?}): 5 nodes registered after {} ms",
        backend.name(),
        settings.lock_ttl(),
        elapsed.as_millis()
    );
    assert!(
        elapsed + Duration::from_millis(500) >= settings.lock_ttl(),
        "a node seeded while the ghost still held the lock ({elapsed:?})"
    );
    // Registering everybody after the lock is free takes a few requests more.
    assert!(
        elapsed <= bound + Duration::from_secs(5),
        "nodes registered only after {elapsed:?}, lock bound {bound:?}"
    );
    assert_one_cluster(&local, 5);
    assert_eq!(registered_nodes(&*c, &scope).await, sorted_ids(&handles));

    let r = c.get_nodes(&scope).await.expect("get_nodes");
    let late = AddMode::Seed {
        lock: ghost_token,
        cluster: ClusterId(42),
        expected_epoch_version: r.epoch.map(|e| e.version),
    };
    assert_eq!(
        c.add_self(scope.lease(&ghost, settings.ttl()), &late)
            .await
            .expect("add_self"),
        AddOutcome::Refused,
        "the vanished lock holder's late seeding is fenced off"
    );
}

/// A node killed without a goodbye disappears from the registry within the backend's
/// expiry bound; the others keep refreshing.
pub async fn aborted_node_entry_expires_within_the_bound<B: ScenarioBackend + ?Sized>(backend: &B) {
    let c = backend.coordination();
    let settings = scenario_settings(backend, "abort");
    let scope = settings.scope().expect("scope");
    let local = LocalCluster::new();
    let handles = spawn_nodes(3, &settings, || backend.coordination(), &local);
    all_registered(&handles, settings.lock_ttl() * 2 + Duration::from_secs(20)).await;

    let victim = handles[2].node().clone();
    handles[2].abort();
    let aborted = Instant::now();
    // The last refresh happened at most one interval before the abort.
    let bound = backend.expiry_bound(settings.ttl());
    eventually(
        bound + Duration::from_secs(5),
        "the aborted node's entry expires",
        || async { (!registered_nodes(&*c, &scope).await.contains(&victim)).then_some(()) },
    )
    .await;
    let gone_after = aborted.elapsed();
    println!(
        "{}: aborted node's entry gone {} ms after the abort (TTL {:?}, bound {bound:?})",
        backend.name(),
        gone_after.as_millis(),
        settings.ttl()
    );
    assert!(
        gone_after <= bound,
        "entry outlived the bound: {gone_after:?} > {bound:?}"
    );
    assert_eq!(
        registered_nodes(&*c, &scope).await,
        sorted_ids(&handles[..2])
    );
}

/// A node shut down gracefully is gone from the registry as soon as its shutdown returns,
/// without waiting for a TTL.
pub async fn gracefully_shut_down_node_is_removed_at_once<B: ScenarioBackend + ?Sized>(
    backend: &B,
) {
    let c = backend.coordination();
    let settings = scenario_settings(backend, "graceful");
    let scope = settings.scope().expect("scope");
    let local = LocalCluster::new();
    let mut handles = spawn_nodes(3, &settings, || backend.coordination(), &local);
    all_registered(&handles, settings.lock_ttl() * 2 + Duration::from_secs(20)).await;

    let leaving = handles.remove(0);
    let id = leaving.node().clone();
    leaving.shutdown();
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), leaving.stopped())
        .await
        .expect("shutdown completes")
        .expect("clean shutdown");
    println!(
        "{}: graceful shutdown took {} ms",
        backend.name(),
        started.elapsed().as_millis()
    );
    let nodes = registered_nodes(&*c, &scope).await;
    assert!(!nodes.contains(&id), "entry still there after shutdown");
    assert_eq!(nodes, sorted_ids(&handles));
    assert_eq!(local.cluster_of(&id), None);
}

/// Garbage under the prefix (undecodable keys and values, unrelated keys, an unreadable
/// epoch marker) is skipped, not an error, and does not keep nodes from bootstrapping.
pub async fn garbage_under_the_prefix_does_not_disturb_bootstrap<B: ScenarioBackend + ?Sized>(
    backend: &B,
) {
    let c = backend.coordination();
    let settings = scenario_settings(backend, "garbage");
    let scope = settings.scope().expect("scope");
    let nodes = entry::nodes_prefix(&scope);
    for (k, v) in [
        (format!("{nodes}not-base64!"), b"{\"address\":1}".to_vec()),
        (
            format!("{nodes}bm9kZS0wLnRlc3Q6MjU1Mg"),
            b"\xff\xfe garbage".to_vec(),
        ),
        (
            format!("{nodes}eHl6"),
            br#"{"address":"10.9.9.9:1","incarnation":1}"#.to_vec(),
        ),
        (format!("{}/unrelated", scope.base()), b"hello".to_vec()),
        // An epoch marker nobody can read must not block seeding forever.
        (entry::epoch_key(&scope), b"not an epoch".to_vec()),
    ] {
        backend.put_raw(&k, &v).await;
    }
    let r = c.get_nodes(&scope).await.expect("garbage is not an error");
    assert!(r.nodes.is_empty(), "{r:?}");
    assert_eq!(r.epoch.map(|e| e.cluster), Some(ClusterId::UNREADABLE));

    let local = LocalCluster::new();
    let handles = spawn_nodes(5, &settings, || backend.coordination(), &local);
    all_registered(&handles, settings.lock_ttl() * 2 + Duration::from_secs(20)).await;
    assert_one_cluster(&local, 5);
    assert_eq!(registered_nodes(&*c, &scope).await, sorted_ids(&handles));
    let epoch = c.get_nodes(&scope).await.expect("get_nodes").epoch;
    assert_ne!(
        epoch.map(|e| e.cluster),
        Some(ClusterId::UNREADABLE),
        "the seed replaced the unreadable epoch marker"
    );
}

/// A node waiting on an empty registry wakes (through the backend's watch) as soon as a
/// seed registers, long before its retry delay would have re-read the registry.
pub async fn waiting_nodes_wake_when_the_seed_registers<B: ScenarioBackend + ?Sized>(backend: &B) {
    let c = backend.coordination();
    let mut settings = scenario_settings(backend, "wake");
    // Without a watch, a waiter would notice the seed only after this delay.
    settings.retry_delay = Duration::from_secs(30);
    settings.max_retry_delay = Duration::from_secs(30);
    settings.retry_jitter = 0.0;
    settings.ttl_factor = settings.ttl_factor.max(settings.minimum_ttl_factor());
    let scope = settings.scope().expect("scope");
    let ghost = NodeId::new("ghost.test:2552", 1);
    let LockOutcome::Acquired(token) = c
        .lock(scope.lease(&ghost, settings.lock_ttl()))
        .await
        .expect("lock")
    else {
        panic!("{}: the lock of a fresh scope is held", backend.name());
    };
    let local = LocalCluster::new();
    // The ghost stands for a seed that is about to register: a member of its own cluster.
    local.try_join(&ghost, std::slice::from_ref(&ghost));
    let handles = spawn_nodes(3, &settings, || backend.coordination(), &local);
    // Let them find the lock held and start waiting.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let seed = AddMode::Seed {
        lock: token,
        cluster: ClusterId(7),
        expected_epoch_version: None,
    };
    assert_eq!(
        c.add_self(scope.lease(&ghost, settings.ttl()), &seed)
            .await
            .expect("add_self"),
        AddOutcome::Added
    );
    let seeded = Instant::now();
    all_registered(&handles, Duration::from_secs(10)).await;
    let woke = seeded.elapsed();
    println!(
        "{}: waiters registered {} ms after the seed",
        backend.name(),
        woke.as_millis()
    );
    // Without a wake-up they would re-read only when a timer fires: after the retry delay
    // (30 s) or, at the earliest, when the lock could have expired (seconds away).
    assert!(
        woke < Duration::from_secs(2),
        "the waiters did not wake on the registration ({woke:?})"
    );
    assert_one_cluster(&local, 4);
}

/// The service is killed while a cluster refreshes and comes back: the members ride it out
/// (degraded, retrying) and register again without a new bootstrap; the epoch marker still
/// names their cluster (a service that loses its data gets it re-created for the same one).
pub async fn backend_restart_while_refreshing_recovers_without_rebootstrap<
    B: ScenarioBackend + ?Sized,
>(
    backend: &B,
) {
    let c = backend.coordination();
    let mut settings = backend.settings(unique_cluster_name("restart"));
    // Ride out the outage: the time budget only, and an entry TTL longer than the outage.
    settings.nr_of_retries = None;
    settings.ttl_factor = settings.ttl_factor.max(10.0);
    settings.validate().expect("valid settings");
    let scope = settings.scope().expect("scope");
    let local = LocalCluster::new();
    let handles = spawn_nodes(3, &settings, || backend.coordination(), &local);
    all_registered(&handles, settings.lock_ttl() * 2 + Duration::from_secs(20)).await;
    let cluster = local.cluster_of(handles[0].node()).expect("a member");
    let epoch = c
        .get_nodes(&scope)
        .await
        .expect("get_nodes")
        .epoch
        .map(|e| e.cluster);
    let mut events: Vec<_> = handles.iter().map(|h| h.events()).collect();

    backend.stop().await;
    tokio::time::sleep(settings.refresh_interval * 2).await;
    backend.start_again().await;

    let ids = sorted_ids(&handles);
    eventually(
        settings.refresh_interval * 4 + Duration::from_secs(30),
        "every member registered again",
        || async {
            let r = c.get_nodes(&scope).await.ok()?;
            let mut nodes = r.nodes;
            nodes.sort();
            (nodes == ids && r.epoch.map(|e| e.cluster) == epoch).then_some(())
        },
    )
    .await;
    for (h, rx) in handles.iter().zip(&mut events) {
        while let Ok(e) = rx.try_recv() {
            if let crate::Event::StateChanged { to, .. } = e.event {
                assert!(
                    !matches!(
                        to,
                        State::Resetting | State::GettingNodes | State::Locking | State::Failed
                    ),
                    "{}: {} started over or failed during the restart ({to:?})",
                    backend.name(),
                    h.node()
                );
            }
        }
        assert!(
            !h.state().is_terminal(),
            "{} ended in {:?}",
            h.node(),
            h.state()
        );
        assert_eq!(
            local.cluster_of(h.node()),
            Some(cluster),
            "{} left its cluster",
            h.node()
        );
    }
    assert_eq!(
        local.clusters_formed(),
        1,
        "a second cluster was bootstrapped"
    );
    println!(
        "{}: members registered again after the restart (data kept: {})",
        backend.name(),
        backend.keeps_data()
    );
}

/// A refused endpoint and a hung one (it accepts TCP connections and never answers) in
/// front of the live service: the first request fails over within the timeouts, the next
/// goes straight to the endpoint that answered, and nodes bootstrap through the list.
pub async fn dead_and_hung_endpoints_before_the_live_one_are_skipped<
    B: ScenarioBackend + ?Sized,
>(
    backend: &B,
) {
    let hung = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let hung_url = format!("http://{}", hung.local_addr().expect("local address"));
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}", l.local_addr().expect("local address"))
    }; // dropped: connection refused from now on
    let timeout = Duration::from_millis(300);
    let Some(c) = backend.coordination_behind(&[refused, hung_url], timeout) else {
        println!("{}: no endpoint list, nothing to fail over", backend.name());
        return;
    };
    let settings = scenario_settings(backend, "failover");
    let scope = settings.scope().expect("scope");
    let first = Instant::now();
    c.get_nodes(&scope)
        .await
        .expect("failover to the live endpoint");
    println!(
        "{}: first request with a refused and a hung endpoint first: {} ms",
        backend.name(),
        first.elapsed().as_millis()
    );
    // Connections the hung endpoint received (accepted and dropped here).
    hung.set_nonblocking(true).expect("non-blocking");
    let attempts = || std::iter::from_fn(|| hung.accept().ok()).count();
    let before = attempts();
    c.get_nodes(&scope).await.expect("get_nodes");
    assert_eq!(
        attempts(),
        0,
        "the next request tried the hung endpoint again ({before} connection(s) before)"
    );
    let local = LocalCluster::new();
    let handles = spawn_nodes(3, &settings, || c.clone(), &local);
    all_registered(&handles, settings.lock_ttl() * 2 + Duration::from_secs(20)).await;
    assert_one_cluster(&local, 3);
    drop(hung);
}

/// Wrong credentials: a clear `Unauthorized` error, not retryable, whose text and `Debug`
/// never contain the secret; a node with them stops at once with a permanent failure
/// instead of retrying forever. The right credentials bootstrap a cluster.
pub async fn wrong_credentials_are_a_permanent_error_that_never_shows_the_secret<
    B: ScenarioBackend + ?Sized,
>(
    backend: &B,
) {
    let Some(creds) = backend.with_credentials().await else {
        println!("{}: no credentials, nothing to refuse", backend.name());
        return;
    };
    let settings = scenario_settings(backend, "auth");
    let scope = settings.scope().expect("scope");
    let err = creds
        .wrong
        .lock(scope.lease(&node_id(9), settings.lock_ttl()))
        .await
        .expect_err("wrong credentials are refused");
    let shown = format!("{err} {err:?}");
    println!("{}: wrong credentials: {err}", backend.name());
    assert!(
        matches!(err, crate::CoordinationError::Unauthorized { .. }),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    assert!(
        !shown.contains(&creds.wrong_secret),
        "the secret shows: {shown}"
    );

    let local = LocalCluster::new();
    let handle = spawn_nodes(1, &settings, || creds.wrong.clone(), &local).remove(0);
    let failure = tokio::time::timeout(
        settings.lock_ttl() + Duration::from_secs(5),
        handle.stopped(),
    )
    .await
    .expect("the node with wrong credentials stops")
    .expect_err("it fails");
    assert!(
        matches!(failure, crate::Failure::Permanent { .. }),
        "{failure:?}"
    );
    assert!(
        !format!("{failure} {failure:?}").contains(&creds.wrong_secret),
        "the secret shows in the failure"
    );

    let handles = spawn_nodes(3, &settings, || creds.right.clone(), &local);
    all_registered(&handles, settings.lock_ttl() * 2 + Duration::from_secs(20)).await;
    assert_one_cluster(&local, 3);
    assert_eq!(
        registered_nodes(&*creds.right, &scope).await,
        sorted_ids(&handles)
    );
    drop(creds.keep);
}

/// TLS with client certificates: nodes bootstrap through it; a server certificate of
/// another CA is refused with a permanent error (retrying cannot fix a certificate, so a
/// node with it stops at once instead of waiting forever); a missing client certificate is
/// refused.
pub async fn tls_with_client_certificates_and_refused_handshakes<B: ScenarioBackend + ?Sized>(
    backend: &B,
) {
    let Some(tls) = backend.with_tls().await else {
        println!("{}: no TLS, nothing to check", backend.name());
        return;
    };
    let settings = scenario_settings(backend, "tls");
    let scope = settings.scope().expect("scope");
    let local = LocalCluster::new();
    let handles = spawn_nodes(3, &settings, || tls.trusted.clone(), &local);
    all_registered(&handles, settings.lock_ttl() * 2 + Duration::from_secs(20)).await;
    assert_one_cluster(&local, 3);
    assert_eq!(
        registered_nodes(&*tls.trusted, &scope).await,
        sorted_ids(&handles)
    );

    // The client checks the server's certificate itself: always a clear, permanent error.
    let err = tls
        .untrusted_ca
        .get_nodes(&scope)
        .await
        .expect_err("a server certificate of another CA is refused");
    println!(
        "{}: a server certificate of another CA: {err}",
        backend.name()
    );
    assert!(
        !err.is_retryable(),
        "{}: an untrusted server certificate is retried as if the service were down: {err:?}",
        backend.name()
    );
    // The server refuses a missing client certificate with an alert after the client's side
    // of the TLS 1.3 handshake; whether the client reads that alert or only sees the
    // connection close is a race, so only the refusal itself is certain.
    let err = tls
        .no_client_certificate
        .get_nodes(&scope)
        .await
        .expect_err("a missing client certificate is refused");
    println!(
        "{}: no client certificate: {err} (retryable: {})",
        backend.name(),
        err.is_retryable()
    );
    drop(tls.keep);
}
