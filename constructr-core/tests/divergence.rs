//! Divergence detection in the tokio driver: a registered member whose cluster runtime and
//! registry disagree for an entry TTL reports it (an event and a warn line), once, and
//! reports its end.

use std::sync::Arc;
use std::time::Duration;

use constructr_core::driver::{Node, TimedEvent};
use constructr_core::local::LocalCluster;
use constructr_core::memory::MemoryCoordination;
use constructr_core::{
    AddMode, AddOutcome, ClusterName, Coordination, Event, NodeId, Settings, State,
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

/// A node registered in this node's epoch whose cluster the runtime does not know (the
/// registry and the runtime disagree, as when a second cluster runs) is reported once it
/// lasted an entry TTL; when it is gone, the end is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_node_the_runtime_does_not_see_is_reported_and_so_is_the_end() {
    let s = settings();
    let scope = s.scope().unwrap();
    let memory = Arc::new(MemoryCoordination::default());
    let world = LocalCluster::new();
    let me = NodeId::new("127.0.0.1:2550", 1);
    let mut node = Node::builder()
        .settings(s.clone())
        .address(me.clone())
        .coordination(memory.clone())
        .cluster(Arc::new(world.node(me)))
        .seed(1)
        .spawn()
        .unwrap();
    let mut events = node.take_events().unwrap();
    assert_eq!(node.registered().await.unwrap(), State::RefreshScheduled);

    // In agreement: nothing to report over several checks.
    assert_eq!(next_divergence(&mut events, ms(600)).await, None);

    // A node registers under the epoch, but is a member of no cluster this runtime knows.
    let cluster = memory
        .get_nodes(&scope)
        .await
        .unwrap()
        .epoch
        .map(|e| e.cluster);
    let stranger = NodeId::new("127.0.0.1:2551", 1);
    let mode = AddMode::Join { cluster };
    let lease = scope.lease(&stranger, Duration::from_secs(3600));
    assert_eq!(
        memory.add_self(lease, &mode).await.unwrap(),
        AddOutcome::Added
    );
    let started = tokio::time::Instant::now();
    let event = next_divergence(&mut events, Duration::from_secs(5)).await;
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
    assert_eq!(next_divergence(&mut events, ms(500)).await, None);

    memory.remove_self(&scope, &stranger).await.unwrap();
    let ended = next_divergence(&mut events, Duration::from_secs(2)).await;
    assert!(
        matches!(ended, Some(Event::ClusterDivergenceEnded { .. })),
        "{ended:?}"
    );
    node.shutdown();
    node.stopped().await.unwrap();
}

/// `divergence-check-interval = "0s"` turns the checks off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_checks_when_turned_off() {
    let mut s = settings();
    s.divergence_check_interval = Some(Duration::ZERO);
    assert_eq!(s.divergence_check_interval(), None);
    let scope = s.scope().unwrap();
    let memory = Arc::new(MemoryCoordination::default());
    let world = LocalCluster::new();
    let me = NodeId::new("127.0.0.1:2560", 1);
    let mut node = Node::builder()
        .settings(s)
        .address(me.clone())
        .coordination(memory.clone())
        .cluster(Arc::new(world.node(me)))
        .seed(1)
        .spawn()
        .unwrap();
    let mut events = node.take_events().unwrap();
    node.registered().await.unwrap();
    let stranger = NodeId::new("127.0.0.1:2561", 1);
    let cluster = memory
        .get_nodes(&scope)
        .await
        .unwrap()
        .epoch
        .map(|e| e.cluster);
    let lease = scope.lease(&stranger, Duration::from_secs(3600));
    memory
        .add_self(lease, &AddMode::Join { cluster })
        .await
        .unwrap();
    assert_eq!(next_divergence(&mut events, ms(2_000)).await, None);
    node.shutdown();
    node.stopped().await.unwrap();
}
