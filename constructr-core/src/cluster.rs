//! The `Cluster` trait: the thing being bootstrapped (the analog of Akka Cluster).

use async_trait::async_trait;

use crate::node::NodeId;

/// An error of the cluster being bootstrapped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// Joining failed (the machine restarts from `GettingNodes`).
    #[error("joining the cluster failed: {message}")]
    Join {
        /// What went wrong.
        message: String,
    },
    /// Leaving failed (the machine goes on as if it had left).
    #[error("leaving the cluster failed: {message}")]
    Leave {
        /// What went wrong.
        message: String,
    },
}

/// A membership event reported by the cluster runtime.
///
/// Only [`ClusterEvent::SelfUp`] matters to the state machine; others are accepted and
/// ignored, and in particular never push back a pending join deadline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterEvent {
    /// This node became a member.
    SelfUp,
    /// Another node became a member.
    MemberUp(NodeId),
    /// Another node left or was removed.
    MemberRemoved(NodeId),
}

/// The cluster runtime of one node.
///
/// # Contract
/// - `join(seeds)` makes this node a member of the cluster that `seeds` belong to and
///   resolves once this node is a member. If `seeds` is exactly this node, it forms a new
///   cluster of one. It may never resolve if no seed answers; the caller bounds it with
///   the join timeout.
/// - `leave()` leaves the cluster; afterwards `join` may be called again (the state
///   machine leaves and starts over when its fenced registration is refused or a join
///   times out).
///
/// # Errors
/// [`ClusterError::Join`] makes the machine start over; a failed `leave` is logged and
/// treated as done.
///
/// # Cancellation
/// The driver drops a `join` future that outlived the join timeout, then calls `leave`.
#[async_trait]
pub trait Cluster: Send + Sync + 'static {
    /// Joins the cluster of `seeds`; resolves when this node is a member.
    async fn join(&self, seeds: &[NodeId]) -> Result<(), ClusterError>;
    /// Leaves the cluster.
    async fn leave(&self) -> Result<(), ClusterError>;
    /// The live members as this node's cluster runtime sees them, this node included
    /// when it is a member (`GET /members`); `None` if the runtime does not tell.
    async fn live_members(&self) -> Option<Vec<NodeId>> {
        None
    }
}
