//! The tokio driver on real time with short settings: many nodes started at once form one
//! cluster; shutdown removes the entry at once; an aborted node's entry expires; a
//! permanent fault ends the node with `Err`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use constructr_core::driver::{NodeHandle, spawn};
use constructr_core::local::LocalCluster;
use constructr_core::memory::{Fault, MemoryCoordination};
use constructr_core::{ClusterName, Failure, NodeId, Settings, State};

const BOUND: Duration = Duration::from_secs(5);

fn settings() -> Settings {
    let mut s = Settings::default();
    s.cluster_name = ClusterName::new("driver").expect("valid");
    s.coordination_timeout = Duration::from_millis(200);
    s.join_timeout = Duration::from_secs(1);
    s.retry_delay = Duration::from_millis(100);
    s.refresh_interval = Duration::from_millis(200);
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
        spawn(
            settings(),
            n.clone(),
            Arc::new(self.coordination.clone()),
            Arc::new(self.cluster.node(n)),
            u64::from(i),
        )
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
            assert!(state.is_registered(), "{} ended in {state:?}", h.node());
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
