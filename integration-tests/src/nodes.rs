//! Starting many bootstrapping nodes in one test process and checking what they formed,
//! shared by every backend's tests: the helpers of [`constructr_core::scenarios`].

use std::sync::Arc;

use constructr_core::driver::NodeHandle;
use constructr_core::local::LocalCluster;
use constructr_core::{Coordination, Settings};

pub use constructr_core::scenarios::{
    all_registered, assert_one_cluster, node_id, registered_nodes, sorted_ids,
};

/// Spawns `n` nodes on one shared backend, each with its own `LocalCluster` handle.
pub fn spawn_nodes<C: Coordination + 'static>(
    n: usize,
    settings: &Settings,
    coordination: &Arc<C>,
    local: &LocalCluster,
) -> Vec<NodeHandle> {
    let c: Arc<dyn Coordination> = coordination.clone();
    constructr_core::scenarios::spawn_nodes(n, settings, || c.clone(), local)
}
