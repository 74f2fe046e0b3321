//! The tokio driver on real time with short settings: many nodes started at once form one
//! cluster; shutdown removes the entry at once; an aborted node's entry expires; a
//! permanent fault ends the node with `Err`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use constructr_core::coordination::ErrorKind;
use constructr_core::driver::{Node, NodeHandle, Observer, SpawnError};
use constructr_core::local::LocalCluster;
use constructr_core::memory::{Fault, MemoryCoordination};
use constructr_core::status::{LockHolder, Operation, Outcome, Request};
use constructr_core::{
    AddMode, AddOutcome, ClusterName, Coordination, CoordinationError, Failure, Lease, LockOutcome,
    NodeId, RefreshOutcome, Registry, Scope, Settings, SettingsError, State,
};

const BOUND: Duration = Duration::from_secs(5);

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

fn settings() -> Settings {
    let mut s = Settings::default();
    s.cluster_name = ClusterName::new("driver").expect("valid");
    s.coordination_timeout = ms(200);
    s.join_timeout = ms(1_000);
    s.retry_delay = ms(100);
    s.refresh_interval = ms(200);
    // Minimum: 1 + (0.2 × 3 + 0.1 × 1.2 × 2) / 0.2 = 5.2.
    s.ttl_factor = 6.0;
    s
}

fn node(i: u16) -> NodeId {
    NodeId::new(
        format!("127.0.0.1:{}", 2550 + i),
        0x5EED_0000 + u64::from(i),
    )
}

/// Spawns `node(0)` with `settings` on `coordination`, as a member of `cluster`.
fn spawn_node0(
    settings: Settings,
    coordination: Arc<dyn Coordination>,
    cluster: &LocalCluster,
) -> Result<NodeHandle, SettingsError> {
    Node::builder()
        .settings(settings)
        .address(node(0))
        .coordination(coordination)
        .cluster(Arc::new(cluster.node(node(0))))
        .seed(1)
        .spawn()
        .map_err(|e| match e {
            SpawnError::Settings(e) => e,
            other => panic!("{other}"),
        })
}

struct World {
    coordination: MemoryCoordination,
    cluster: LocalCluster,
}

impl World {
    fn new() -> Self {
        Self {
            coordination: MemoryCoordination::default(),
            cluster: LocalCluster::new(),
        }
    }

    fn spawn(&self, i: u16) -> NodeHandle {
        let n = node(i);
        Node::builder()
            .settings(settings())
            .address(n.clone())
            .coordination(Arc::new(self.coordination.clone()))
            .cluster(Arc::new(self.cluster.node(n)))
            .seed(u64::from(i))
            .spawn()
            .expect("valid settings")
    }

    fn registered_nodes(&self) -> Vec<NodeId> {
        let scope = settings().scope().expect("scope");
        self.coordination.get_nodes_at(Instant::now(), &scope).nodes
    }

    async fn spawn_registered(&self, n: u16) -> Vec<NodeHandle> {
        let handles: Vec<_> = (0..n).map(|i| self.spawn(i)).collect();
        for h in &handles {
            let state = tokio::time::timeout(BOUND, h.registered())
                .await
                .expect("registered within 5 s");
            assert!(
                state.as_ref().is_ok_and(|s| s.is_registered()),
                "{} ended in {state:?}",
                h.node()
            );
        }
        handles
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_nodes_started_at_once_form_one_cluster() {
    let w = World::new();
    let handles = w.spawn_registered(20).await;

    let clusters = w.cluster.clusters();
    assert_eq!(clusters.len(), 1, "islands: {clusters:?}");
    let members = clusters.values().next().expect("one cluster");
    assert_eq!(members.len(), 20);
    assert_eq!(w.cluster.clusters_formed(), 1);

    let mut registered = w.registered_nodes();
    registered.sort();
    let mut expected: Vec<_> = (0..20).map(node).collect();
    expected.sort();
    assert_eq!(registered, expected);

    // They stay registered across refreshes.
    tokio::time::sleep(settings().refresh_interval * 3).await;
    assert_eq!(w.registered_nodes().len(), 20);
    assert!(handles.iter().all(|h| h.state().is_registered()));
    for h in &handles {
        h.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_removes_the_entry_at_once() {
    let w = World::new();
    let mut handles = w.spawn_registered(3).await;
    let leaving = handles.remove(1);
    let gone = leaving.node().clone();
    let mut states = leaving.watch_state();
    leaving.shutdown();
    let result = tokio::time::timeout(BOUND, leaving.stopped())
        .await
        .expect("stopped within 5 s");
    assert_eq!(result, Ok(()));
    assert_eq!(*states.borrow_and_update(), State::Stopped);
    assert!(!w.registered_nodes().contains(&gone), "entry still there");
    assert_eq!(w.registered_nodes().len(), 2);
    assert_eq!(w.cluster.cluster_of(&gone), None, "still a cluster member");
    for h in &handles {
        h.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_node_entry_expires_after_its_ttl() {
    let w = World::new();
    let handles = w.spawn_registered(2).await;
    let crashed = handles[0].node().clone();
    handles[0].abort();
    let aborted_at = Instant::now();
    assert!(w.registered_nodes().contains(&crashed));
    let ttl = settings().ttl();
    while w.registered_nodes().contains(&crashed) {
        assert!(
            aborted_at.elapsed() <= ttl + Duration::from_millis(500),
            "entry outlived its TTL"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Not long before the TTL of its last refresh (at most one refresh interval ago) ran out.
    assert!(aborted_at.elapsed() + settings().refresh_interval + Duration::from_millis(100) >= ttl);
    assert!(w.registered_nodes().contains(handles[1].node()));
    handles[1].abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_fault_ends_the_node_with_err() {
    let w = World::new();
    w.coordination.inject(Fault::Fail { retryable: false }, 1);
    let h = w.spawn(0);
    let result = tokio::time::timeout(BOUND, h.stopped())
        .await
        .expect("ended within 5 s");
    match result {
        Err(Failure::Permanent { state, error }) => {
            assert_eq!(state, State::GettingNodes);
            assert!(!error.retryable);
        }
        other => panic!("expected Failure::Permanent, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retryable_faults_are_ridden_out() {
    let w = World::new();
    w.coordination.inject(Fault::Fail { retryable: true }, 2);
    let handles = w.spawn_registered(1).await;
    assert_eq!(w.registered_nodes(), vec![node(0)]);
    handles[0].abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_report_state_changes() {
    let w = World::new();
    let h = w.spawn(0);
    let mut events = h.events();
    tokio::time::timeout(BOUND, h.registered())
        .await
        .expect("in time")
        .expect("registered");
    h.shutdown();
    let mut seen = Vec::new();
    while let Ok(Ok(e)) = tokio::time::timeout(BOUND, events.recv()).await {
        let stop = e.event
            == (constructr_core::Event::StateChanged {
                from: State::RemovingSelf,
                to: State::Stopped,
            });
        seen.push(e.event);
        if stop {
            break;
        }
    }
    assert!(
        seen.contains(&constructr_core::Event::StateChanged {
            from: State::Leaving,
            to: State::RemovingSelf,
        }),
        "{seen:?}"
    );
    assert_eq!(h.stopped().await, Ok(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_members_survive_a_coordination_outage_of_several_ttls() {
    let w = World::new();
    let handles = w.spawn_registered(3).await;
    let ttl = settings().ttl();
    // Every call fails (connection refused) for about three entry TTLs.
    let outage = Instant::now();
    w.coordination.inject(Fault::Fail { retryable: true }, 60);
    tokio::time::sleep(ttl * 3).await;
    for h in &handles {
        assert!(
            !h.state().is_terminal(),
            "{} ended in {:?} during the outage",
            h.node(),
            h.state()
        );
    }
    for h in &handles {
        let state = tokio::time::timeout(BOUND * 4, async {
            let mut rx = h.watch_state();
            // Registered again after the outage (not just still registered from before).
            rx.wait_for(|s| s.is_registered() && outage.elapsed() > ttl * 3)
                .await
                .map(|s| *s)
        })
        .await
        .expect("registered again after the outage")
        .expect("state channel open");
        assert!(state.is_registered());
    }
    let mut registered = w.registered_nodes();
    registered.sort();
    assert_eq!(registered, vec![node(0), node(1), node(2)]);
    for h in &handles {
        h.abort();
    }
}

/// A backend that counts how many of its calls run at once, and hangs the first `hang` calls.
struct Overlap {
    inner: MemoryCoordination,
    running: std::sync::atomic::AtomicUsize,
    most: std::sync::atomic::AtomicUsize,
    hang: std::sync::atomic::AtomicUsize,
    panic_on_refresh: bool,
    /// `check_settings` refuses entry TTLs below this.
    min_ttl: Duration,
}

struct Running<'a>(&'a Overlap);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0
            .running
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Overlap {
    fn new(hang: usize, panic_on_refresh: bool) -> Self {
        Self {
            inner: MemoryCoordination::default(),
            running: Default::default(),
            most: Default::default(),
            hang: hang.into(),
            panic_on_refresh,
            min_ttl: Duration::ZERO,
        }
    }

    async fn call<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        use std::sync::atomic::Ordering::SeqCst;
        let now = self.running.fetch_add(1, SeqCst) + 1;
        let _guard = Running(self);
        self.most.fetch_max(now, SeqCst);
        let hang = self
            .hang
            .fetch_update(SeqCst, SeqCst, |h| h.checked_sub(1))
            .is_ok();
        if hang {
            std::future::pending::<()>().await;
        }
        f.await
    }
}

/// What a coordination call answers.
type Answer<T> = Result<T, CoordinationError>;

#[async_trait::async_trait]
impl Coordination for Overlap {
    fn guarantees(&self) -> constructr_core::coordination::Guarantees {
        constructr_core::coordination::Guarantees::STRONG
    }
    fn check_settings(&self, s: &Settings) -> Result<(), SettingsError> {
        if s.ttl() < self.min_ttl {
            return Err(SettingsError::Backend {
                backend: "picky",
                rule: format!("entry TTL {:?} is below {:?}", s.ttl(), self.min_ttl),
            });
        }
        Ok(())
    }
    async fn get_nodes(&self, scope: &Scope) -> Answer<Registry> {
        self.call(self.inner.get_nodes(scope)).await
    }
    async fn lock(&self, lease: Lease<'_>) -> Answer<LockOutcome> {
        self.call(self.inner.lock(lease)).await
    }
    async fn add_self(&self, lease: Lease<'_>, mode: &AddMode) -> Answer<AddOutcome> {
        self.call(self.inner.add_self(lease, mode)).await
    }
    async fn refresh(&self, lease: Lease<'_>) -> Answer<RefreshOutcome> {
        assert!(!self.panic_on_refresh, "backend bug in refresh");
        self.call(self.inner.refresh(lease)).await
    }
    async fn remove_self(&self, scope: &Scope, node: &NodeId) -> Answer<()> {
        self.call(self.inner.remove_self(scope, node)).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_call_is_dropped_before_its_retry_starts() {
    let backend = Arc::new(Overlap::new(3, false));
    let h = spawn_node0(settings(), backend.clone(), &LocalCluster::new()).expect("valid");
    let state = tokio::time::timeout(BOUND, h.registered())
        .await
        .expect("registered after three hung calls");
    assert!(state.as_ref().is_ok_and(|s| s.is_registered()));
    assert_eq!(
        backend.most.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "a superseded call still ran beside its retry"
    );
    h.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_backend_fails_the_node_with_the_panic_message() {
    let backend = Arc::new(Overlap::new(0, true));
    let h = spawn_node0(settings(), backend, &LocalCluster::new()).expect("valid");
    let result = tokio::time::timeout(BOUND, h.stopped())
        .await
        .expect("ended, no hang");
    match result {
        Err(Failure::Panicked { what, message }) => {
            assert_eq!(what, "Coordination::refresh");
            assert!(message.contains("backend bug in refresh"), "{message}");
        }
        other => panic!("expected Failure::Panicked, got {other:?}"),
    }
}

#[tokio::test]
async fn spawn_refuses_settings_the_backend_cannot_serve() {
    let picky = Overlap {
        min_ttl: Duration::from_secs(10),
        ..Overlap::new(0, false)
    };
    let err = spawn_node0(settings(), Arc::new(picky), &LocalCluster::new()).expect_err("refused");
    assert!(err.to_string().contains("below 10s"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_only_node_waits_for_a_seed_then_joins_it() {
    let w = World::new();
    let mut s = settings();
    s.new_cluster_enabled = false;
    let joiner = spawn_node0(s, Arc::new(w.coordination.clone()), &w.cluster).expect("valid");
    // Alone, it never seeds: no registration, no cluster, however long.
    tokio::time::sleep(settings().ttl()).await;
    assert!(w.registered_nodes().is_empty());
    assert!(!joiner.state().is_terminal() && !joiner.state().is_registered());
    assert!(
        w.cluster.clusters().is_empty(),
        "{:?}",
        w.cluster.clusters()
    );
    // A node that may seed starts: the join-only node joins its cluster.
    let seed = w.spawn(1);
    for h in [&joiner, &seed] {
        let state = tokio::time::timeout(BOUND, h.registered())
            .await
            .expect("registered");
        assert!(
            state.as_ref().is_ok_and(|s| s.is_registered()),
            "{} {state:?}",
            h.node()
        );
    }
    assert_eq!(w.cluster.clusters().len(), 1);
    joiner.abort();
    seed.abort();
}

/// Records every finished call.
#[derive(Default)]
struct Recorder(std::sync::Mutex<Vec<Request>>);

impl Observer for Recorder {
    fn request(&self, request: &Request) {
        self.0.lock().unwrap().push(*request);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_is_an_error_with_the_failure_kind_when_the_node_fails_first() {
    let w = World::new();
    w.coordination.inject(Fault::Fail { retryable: false }, 1);
    let h = w.spawn(0);
    let result = tokio::time::timeout(BOUND, h.registered())
        .await
        .expect("ended within 5 s");
    match result {
        Err(failure @ Failure::Permanent { .. }) => {
            assert_eq!(failure.kind(), Some(ErrorKind::Permanent));
            assert_eq!(h.status().failure, Some(failure));
        }
        other => panic!("a failed node must not look registered: {other:?}"),
    }
    assert!(!h.status().is_alive() && !h.status().is_ready());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_is_an_error_when_the_node_is_shut_down_before_it_registers() {
    let w = World::new();
    // The first reads hang for longer than the test: the node never gets to register.
    w.coordination
        .inject(Fault::Delay(Duration::from_secs(60)), 100);
    let h = w.spawn(0);
    h.shutdown();
    let result = tokio::time::timeout(BOUND, h.registered())
        .await
        .expect("ended within 5 s");
    assert_eq!(result, Err(Failure::StoppedBeforeRegistering));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_tells_the_cluster_the_registry_the_lock_and_the_retries() {
    let w = World::new();
    w.coordination.inject(Fault::Fail { retryable: true }, 2);
    let seed = w.spawn(0);
    assert_eq!(
        tokio::time::timeout(BOUND, seed.registered())
            .await
            .unwrap(),
        Ok(State::RefreshScheduled)
    );
    let s = seed.status();
    assert!(s.is_alive() && s.is_ready());
    assert_eq!(s.state, State::RefreshScheduled);
    assert_eq!(s.retries, 2, "{s:?}");
    assert!(
        s.last_error.as_deref().unwrap().contains("injected fault"),
        "{s:?}"
    );
    assert_eq!(s.lock, Some(LockHolder::ThisNode));
    let cluster = s.cluster.expect("the seed's cluster");
    assert!(s.last_registered.is_some());
    assert!(s.transitions >= 5, "{s:?}");

    let joiner = w.spawn(1);
    tokio::time::timeout(BOUND, joiner.registered())
        .await
        .unwrap()
        .unwrap();
    let j = joiner.status();
    assert_eq!(j.cluster, Some(cluster));
    let read = j.registry.expect("a registry read");
    assert_eq!(read.nodes, vec![node(0)]);
    assert_eq!(read.epoch, Some(cluster));
    assert_eq!(j.lock, None, "a joiner never asks for the lock");
    let mut members = joiner.monitor().members().await.expect("local members");
    members.sort();
    assert_eq!(members, vec![node(0), node(1)]);
    seed.abort();
    joiner.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_degraded_member_stays_ready_and_alive() {
    let w = World::new();
    let h = w.spawn(0);
    tokio::time::timeout(BOUND, h.registered())
        .await
        .unwrap()
        .unwrap();
    w.coordination
        .inject(Fault::Fail { retryable: true }, 1_000);
    let mut status = h.monitor().watch_status();
    let s = tokio::time::timeout(BOUND, status.wait_for(|s| s.state == State::Degraded))
        .await
        .expect("degraded within 5 s")
        .unwrap()
        .clone();
    assert!(s.is_alive() && s.is_ready(), "{s:?}");
    h.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observers_see_every_call_with_its_outcome_and_latency() {
    let w = World::new();
    w.coordination.inject(Fault::Fail { retryable: true }, 1);
    let recorder = Arc::new(Recorder::default());
    let n = node(0);
    let h = Node::builder()
        .settings(settings())
        .address(n.clone())
        .coordination(Arc::new(w.coordination.clone()))
        .cluster(Arc::new(w.cluster.node(n)))
        .observer(recorder.clone())
        .spawn()
        .unwrap();
    tokio::time::timeout(BOUND, h.registered())
        .await
        .unwrap()
        .unwrap();
    h.shutdown();
    h.stopped().await.unwrap();
    let calls: Vec<(Operation, Outcome)> = recorder
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|r| (r.operation, r.outcome))
        .collect();
    assert_eq!(
        calls[..2],
        [
            (Operation::GetNodes, Outcome::Error(ErrorKind::Unavailable)),
            (Operation::GetNodes, Outcome::Ok)
        ]
    );
    for op in [
        Operation::Lock,
        Operation::AddSelf,
        Operation::Join,
        Operation::RemoveSelf,
        Operation::Leave,
    ] {
        assert!(
            calls.contains(&(op, Outcome::Ok)),
            "{op:?} missing: {calls:?}"
        );
    }
}

#[tokio::test]
async fn the_builder_names_a_missing_part() {
    let w = World::new();
    let err = Node::builder()
        .address(node(0))
        .coordination(Arc::new(w.coordination.clone()))
        .spawn()
        .unwrap_err();
    assert!(matches!(err, SpawnError::Missing("a cluster")), "{err}");
    assert_eq!(err.to_string(), "the node builder needs a cluster");
}

/// The memory backend declaring less than it has: as a gossip backend would (Serf).
struct Weak(MemoryCoordination);

#[async_trait::async_trait]
impl Coordination for Weak {
    fn guarantees(&self) -> constructr_core::coordination::Guarantees {
        constructr_core::coordination::Guarantees {
            watch: true,
            ..constructr_core::coordination::Guarantees::NONE
        }
    }
    async fn get_nodes(&self, scope: &Scope) -> Answer<Registry> {
        self.0.get_nodes(scope).await
    }
    async fn lock(&self, lease: Lease<'_>) -> Answer<LockOutcome> {
        self.0.lock(lease).await
    }
    async fn add_self(&self, lease: Lease<'_>, mode: &AddMode) -> Answer<AddOutcome> {
        self.0.add_self(lease, mode).await
    }
    async fn refresh(&self, lease: Lease<'_>) -> Answer<RefreshOutcome> {
        self.0.refresh(lease).await
    }
    async fn remove_self(&self, scope: &Scope, node: &NodeId) -> Answer<()> {
        self.0.remove_self(scope, node).await
    }
}

#[tokio::test]
async fn a_backend_without_an_exclusive_lock_is_refused_unless_the_risk_is_accepted() {
    let w = World::new();
    let weak = Arc::new(Weak(w.coordination.clone()));
    let build = || {
        Node::builder()
            .settings(settings())
            .address(node(0))
            .coordination(weak.clone())
            .cluster(Arc::new(w.cluster.node(node(0))))
    };
    match build().spawn() {
        Err(SpawnError::UnsafeCoordination { missing }) => {
            assert_eq!(missing, ["linearizable", "exclusive_lock"]);
        }
        other => panic!("a weak backend was accepted: {other:?}"),
    }
    let err = build().spawn().unwrap_err().to_string();
    assert!(
        err.contains("two clusters can form") && err.contains("accept_split_brain_risk"),
        "{err}"
    );
    let h = build().accept_split_brain_risk().spawn().expect("accepted");
    tokio::time::timeout(BOUND, h.registered())
        .await
        .unwrap()
        .unwrap();
    h.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_registered_resolves_the_state_says_registered_too() {
    // `registered()` and `state()` agree at once (the demo counts registered nodes by state
    // right after `registered()`): 50 rounds of 10 nodes.
    for _ in 0..50 {
        let w = World::new();
        let handles: Vec<_> = (0..10).map(|i| w.spawn(i)).collect();
        for h in &handles {
            let state = tokio::time::timeout(BOUND, h.registered())
                .await
                .unwrap()
                .unwrap();
            assert!(state.is_registered());
            assert!(
                h.state().is_registered(),
                "registered() said {state:?}, state() {:?}",
                h.state()
            );
        }
        for h in handles {
            h.abort();
        }
    }
}
