//! Divergence detection in the tokio driver: a registered member whose cluster runtime and
//! registry disagree for an entry TTL reports it (an event and a warn line), once, and
//! reports its end.

use std::sync::Arc;
use std::time::Duration;

use constructr_core::driver::{Node, NodeHandle, TimedEvent};
use constructr_core::local::LocalCluster;
use constructr_core::memory::MemoryCoordination;
use constructr_core::{
    AddMode, AddOutcome, ClusterName, Coordination, Event, NodeId, Scope, Settings, State,
};
use tokio::sync::broadcast;

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

fn settings() -> Settings {
    let mut s = Settings::default();
    s.cluster_name = ClusterName::new("divergence").expect("valid");
    s.coordination_timeout = ms(200);
    s.join_timeout = ms(1_000);
    s.retry_delay = ms(100);
    s.refresh_interval = ms(200);
    s.ttl_factor = 6.0; // entry TTL 1.2 s: the bound of a reported divergence
    s.divergence_check_interval = Some(ms(100));
    s
}

/// The next divergence event within `within`.
async fn next_divergence(
    events: &mut broadcast::Receiver<TimedEvent>,
    within: Duration,
) -> Option<Event> {
    tokio::time::timeout(within, async {
        loop {
            match events.recv().await {
                Ok(TimedEvent {
                    event:
                        e @ (Event::ClusterDivergence { .. } | Event::ClusterDivergenceEnded { .. }),
                    ..
                }) => return e,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
            }
        }
    })
    .await
    .ok()
}

/// A registered node on the memory backend, alone in its own `LocalCluster`, with its events.
struct Registered {
    node: NodeHandle,
    memory: Arc<MemoryCoordination>,
    scope: Scope,
    events: broadcast::Receiver<TimedEvent>,
}

/// Spawns a node at `127.0.0.1:{port}` with `s` and waits until it is registered.
async fn registered(s: Settings, port: u16) -> Registered {
    let scope = s.scope().unwrap();
    let memory = Arc::new(MemoryCoordination::default());
    let me = NodeId::new(format!("127.0.0.1:{port}"), 1);
    let mut node = Node::builder()
        .settings(s)
        .address(me.clone())
        .coordination(memory.clone())
        .cluster(Arc::new(LocalCluster::new().node(me)))
        .seed(1)
        .spawn()
        .unwrap();
    let events = node.take_events().unwrap();
    assert_eq!(node.registered().await.unwrap(), State::RefreshScheduled);
    Registered {
        node,
        memory,
        scope,
        events,
    }
}

impl Registered {
    /// Registers a stranger under the node's epoch: a member of no cluster its runtime
    /// knows, for an hour.
    async fn register_stranger(&self, port: u16) -> NodeId {
        let stranger = NodeId::new(format!("127.0.0.1:{port}"), 1);
        let epoch = self.memory.get_nodes(&self.scope).await.unwrap().epoch;
        let mode = AddMode::Join {
            cluster: epoch.map(|e| e.cluster),
        };
        let lease = self.scope.lease(&stranger, Duration::from_secs(3600));
        let added = self.memory.add_self(lease, &mode).await.unwrap();
        assert_eq!(added, AddOutcome::Added);
        stranger
    }

    async fn stop(self) {
        self.node.shutdown();
        self.node.stopped().await.unwrap();
    }
}

/// A node registered in this node's epoch whose cluster the runtime does not know (the
/// registry and the runtime disagree, as when a second cluster runs) is reported once it
/// lasted an entry TTL; when it is gone, the end is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_node_the_runtime_does_not_see_is_reported_and_so_is_the_end() {
    let s = settings();
    let mut r = registered(s.clone(), 2550).await;

    // In agreement: nothing to report over several checks.
    assert_eq!(next_divergence(&mut r.events, ms(600)).await, None);

    let stranger = r.register_stranger(2551).await;
    let started = tokio::time::Instant::now();
    let event = next_divergence(&mut r.events, Duration::from_secs(5)).await;
    let reported_after = started.elapsed();
    match event {
        Some(Event::ClusterDivergence {
            unseen: 1,
            unregistered: 0,
            foreign_epoch: false,
            lasting,
        }) => assert!(lasting >= s.ttl(), "{lasting:?}"),
        other => panic!("expected a divergence of one unseen node, got {other:?}"),
    }
    assert!(reported_after >= s.ttl(), "{reported_after:?}");
    // Reported once, not on every check.
    assert_eq!(next_divergence(&mut r.events, ms(500)).await, None);

    r.memory.remove_self(&r.scope, &stranger).await.unwrap();
    let ended = next_divergence(&mut r.events, Duration::from_secs(2)).await;
    assert!(
        matches!(ended, Some(Event::ClusterDivergenceEnded { .. })),
        "{ended:?}"
    );
    r.stop().await;
}

/// `divergence-check-interval = "0s"` turns the checks off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_checks_when_turned_off() {
    let mut s = settings();
    s.divergence_check_interval = Some(Duration::ZERO);
    assert_eq!(s.divergence_check_interval(), None);
    let mut r = registered(s, 2560).await;
    r.register_stranger(2561).await;
    assert_eq!(next_divergence(&mut r.events, ms(2_000)).await, None);
    r.stop().await;
}
