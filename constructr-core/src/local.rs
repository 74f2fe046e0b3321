//! `LocalCluster`: an in-process cluster runtime that records which cluster each node is in,
//! so tests can count islands.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

use crate::cluster::{Cluster, ClusterError};
use crate::node::NodeId;
use crate::notify::Notifier;

/// Identifies one cluster formed in a [`LocalCluster`].
pub type LocalClusterId = u64;

#[derive(Debug, Default)]
struct World {
    members: HashMap<NodeId, LocalClusterId>,
    next_cluster: LocalClusterId,
    formed: u64,
}

/// Outcome of [`LocalCluster::try_join`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinAttempt {
    /// The node is now a member of this cluster.
    Member(LocalClusterId),
    /// No seed is a member of any cluster (yet): joining must wait.
    NoSeedUp,
}

/// An in-process "cluster runtime" shared by many nodes (the analog of Akka Cluster for
/// tests, demos and simulations). Cloning shares it.
///
/// Joining `[self]` forms a new cluster; joining other seeds makes the node a member of the
/// cluster of the first seed (in the given order) that is a member; if none is, the join
/// waits until one is (like Akka's seed-node retries).
#[derive(Clone, Debug, Default)]
pub struct LocalCluster {
    world: Arc<Mutex<World>>,
    changed: Arc<Notifier>,
}

impl LocalCluster {
    /// An empty world.
    pub fn new() -> Self {
        Self::default()
    }

    fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tries to join now.
    pub fn try_join(&self, node: &NodeId, seeds: &[NodeId]) -> JoinAttempt {
        let mut w = self.world();
        if let Some(c) = w.members.get(node) {
            return JoinAttempt::Member(*c);
        }
        let cluster = if seeds.len() == 1 && &seeds[0] == node {
            w.next_cluster += 1;
            w.formed += 1;
            Some(w.next_cluster)
        } else {
            seeds
                .iter()
                .filter(|s| *s != node)
                .find_map(|s| w.members.get(s).copied())
        };
        match cluster {
            Some(c) => {
                w.members.insert(node.clone(), c);
                drop(w);
                self.changed.notify();
                JoinAttempt::Member(c)
            }
            None => JoinAttempt::NoSeedUp,
        }
    }

    /// Removes `node` from its cluster (graceful leave or crash alike).
    pub fn remove(&self, node: &NodeId) {
        if self.world().members.remove(node).is_some() {
            self.changed.notify();
        }
    }

    /// The cluster `node` is a member of.
    pub fn cluster_of(&self, node: &NodeId) -> Option<LocalClusterId> {
        self.world().members.get(node).copied()
    }

    /// Current clusters with their members.
    pub fn clusters(&self) -> BTreeMap<LocalClusterId, BTreeSet<NodeId>> {
        let mut out: BTreeMap<_, BTreeSet<_>> = BTreeMap::new();
        for (n, c) in &self.world().members {
            out.entry(*c).or_default().insert(n.clone());
        }
        out
    }

    /// How many clusters were ever formed (seedings that produced a member).
    pub fn clusters_formed(&self) -> u64 {
        self.world().formed
    }

    /// The [`Cluster`] handle of one node.
    pub fn node(&self, node: NodeId) -> LocalNode {
        LocalNode {
            cluster: self.clone(),
            node,
        }
    }
}

/// One node's view of a [`LocalCluster`]; implements [`Cluster`].
#[derive(Clone, Debug)]
pub struct LocalNode {
    cluster: LocalCluster,
    node: NodeId,
}

#[async_trait]
impl Cluster for LocalNode {
    async fn join(&self, seeds: &[NodeId]) -> Result<(), ClusterError> {
        loop {
            let seen = self.cluster.changed.version();
            if let JoinAttempt::Member(_) = self.cluster.try_join(&self.node, seeds) {
                return Ok(());
            }
            self.cluster.changed.changed_since(seen).await;
        }
    }

    async fn leave(&self) -> Result<(), ClusterError> {
        self.cluster.remove(&self.node);
        Ok(())
    }

    async fn live_members(&self) -> Option<Vec<NodeId>> {
        let Some(mine) = self.cluster.cluster_of(&self.node) else {
            return Some(Vec::new());
        };
        let members = self.cluster.clusters().remove(&mine).unwrap_or_default();
        Some(members.into_iter().collect())
    }
}
