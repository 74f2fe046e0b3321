//! Starting many bootstrapping nodes in one test process and checking what they formed,
//! shared by every backend's tests.

use std::sync::Arc;
use std::time::Duration;

use constructr_core::driver::{self, NodeHandle};
use constructr_core::local::LocalCluster;
use constructr_core::{Coordination, NodeId, Scope, Settings};

/// A node identity `node-{i}.test:2552` with a random incarnation.
pub fn node_id(i: usize) -> NodeId {
    NodeId::new(format!("node-{i}.test:2552"), rand::random())
}

/// Spawns `n` nodes on one shared backend, each with its own `LocalCluster` handle.
pub fn spawn_nodes<C: Coordination>(
    n: usize,
    settings: &Settings,
    coordination: &Arc<C>,
    local: &LocalCluster,
) -> Vec<NodeHandle> {
    (0..n)
        .map(|i| {
            let node = node_id(i);
            driver::spawn(
                settings.clone(),
                node.clone(),
                coordination.clone(),
                Arc::new(local.node(node)),
                rand::random(),
            )
            .expect("valid settings")
        })
        .collect()
}

/// Waits until every node is registered; panics naming the stragglers and their states.
pub async fn all_registered(handles: &[NodeHandle], timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    for h in handles {
        match tokio::time::timeout_at(deadline, h.registered()).await {
            Ok(s) => assert!(s.is_registered(), "{} ended in {s:?}", h.node()),
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
