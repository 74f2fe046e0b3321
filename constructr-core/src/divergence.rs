//! Divergence detection: the second line behind the bootstrap protocol.
//!
//! The protocol keeps one cluster where the application lives, within the bounds the README
//! states (a freeze longer than [`Settings::max_safe_pause`](crate::Settings::max_safe_pause)
//! can still let a cluster form beside a sleeping member). Whatever remains possible must not
//! go unnoticed: a registered member periodically compares the members its cluster runtime
//! sees with the registry, and reports a divergence that lasts.
//!
//! A [`DivergenceMonitor`] is sans-IO like the [`Machine`](crate::Machine): the driver reads
//! the registry and asks the runtime for its live members every
//! [`Settings::divergence_check_interval`](crate::Settings::divergence_check_interval), and
//! feeds both to [`DivergenceMonitor::observe`]. What counts as a divergence:
//! - **unseen**: a node registered in the scope that the runtime does not show as a live
//!   member (a member of another cluster, or one cut off from this one);
//! - **unregistered**: a live member of this node's cluster that is not registered (a member
//!   of another epoch, or one whose registration keeps failing);
//! - **foreign epoch**: the registry's epoch names another cluster than the one this node
//!   registered in.
//!
//! Joins, leaves and crashes make the first two appear for a while (a crashed member stays
//! registered until its entry's TTL runs out), so they are reported only once they lasted
//! `bound` (the entry TTL in the driver); a foreign epoch is reported at once.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use constructr_core::divergence::DivergenceMonitor;
//! use constructr_core::{ClusterId, Epoch, Event, NodeId, Registry};
//!
//! let (a, b) = (NodeId::new("10.0.0.1:7946", 1), NodeId::new("10.0.0.2:7946", 1));
//! let mine = ClusterId(7);
//! let registry = Registry {
//!     nodes: vec![a.clone(), b.clone()],
//!     epoch: Some(Epoch { cluster: mine, version: 3 }),
//!     revision: None,
//!     lock: None,
//! };
//! let mut monitor = DivergenceMonitor::new(Duration::from_secs(60));
//! let t0 = Instant::now();
//! // b is registered, but this node's runtime does not see it.
//! assert_eq!(monitor.observe(t0, Some(mine), &registry, &[a.clone()]), None);
//! let later = t0 + Duration::from_secs(60);
//! let event = monitor.observe(later, Some(mine), &registry, &[a.clone()]);
//! assert!(matches!(event, Some(Event::ClusterDivergence { unseen: 1, .. })));
//! assert!(monitor.is_diverging());
//! // Both see each other again: it ended.
//! let event = monitor.observe(later, Some(mine), &registry, &[a, b]);
//! assert!(matches!(event, Some(Event::ClusterDivergenceEnded { .. })));
//! ```

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::coordination::Registry;
use crate::machine::Event;
use crate::node::{ClusterId, NodeId};

/// What one comparison of the runtime's members with the registry found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Divergence {
    /// Registered nodes the runtime does not show as live members.
    pub unseen: Vec<NodeId>,
    /// Live members of this node's cluster that are not registered.
    pub unregistered: Vec<NodeId>,
    /// The registry's epoch names another cluster than this node's.
    pub foreign_epoch: bool,
}

impl Divergence {
    /// Compares `live` (the runtime's members) with `registry`, for a node that registered
    /// in `cluster` (`None`: a registry without epoch). Nodes are matched by address: a
    /// runtime and a registry may see different incarnations of one restarted node.
    pub fn between(cluster: Option<ClusterId>, registry: &Registry, live: &[NodeId]) -> Self {
        let live_addresses: HashSet<&str> = live.iter().map(|n| n.address.as_str()).collect();
        let registered: HashSet<&str> = registry.nodes.iter().map(|n| n.address.as_str()).collect();
        Self {
            unseen: registry
                .nodes
                .iter()
                .filter(|n| !live_addresses.contains(n.address.as_str()))
                .cloned()
                .collect(),
            unregistered: live
                .iter()
                .filter(|n| !registered.contains(n.address.as_str()))
                .cloned()
                .collect(),
            foreign_epoch: cluster.is_some() && registry.epoch.map(|e| e.cluster) != cluster,
        }
    }

    /// Whether the runtime and the registry agree.
    pub fn is_none(&self) -> bool {
        self.unseen.is_empty() && self.unregistered.is_empty() && !self.foreign_epoch
    }
}

/// Tracks divergences over successive comparisons; see the [module docs](self).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DivergenceMonitor {
    bound: Duration,
    since: Option<Instant>,
    reported: bool,
}

impl DivergenceMonitor {
    /// A monitor that reports a divergence once it lasted `bound`.
    pub fn new(bound: Duration) -> Self {
        Self {
            bound,
            since: None,
            reported: false,
        }
    }

    /// Whether a divergence was reported and has not ended.
    pub fn is_diverging(&self) -> bool {
        self.reported
    }

    /// One comparison at `now` (see [`Divergence::between`]). Returns
    /// [`Event::ClusterDivergence`] when a divergence has lasted `bound` (at once for a foreign
    /// epoch), once, and [`Event::ClusterDivergenceEnded`] when a reported one is gone.
    pub fn observe(
        &mut self,
        now: Instant,
        cluster: Option<ClusterId>,
        registry: &Registry,
        live: &[NodeId],
    ) -> Option<Event> {
        let divergence = Divergence::between(cluster, registry, live);
        if divergence.is_none() {
            let since = self.since.take();
            if std::mem::take(&mut self.reported) {
                let lasted = since.map_or(Duration::ZERO, |s| now.saturating_duration_since(s));
                return Some(Event::ClusterDivergenceEnded { lasted });
            }
            return None;
        }
        let since = *self.since.get_or_insert(now);
        let lasting = now.saturating_duration_since(since);
        if self.reported || !(divergence.foreign_epoch || lasting >= self.bound) {
            return None;
        }
        self.reported = true;
        Some(Event::ClusterDivergence {
            unseen: divergence.unseen.len(),
            unregistered: divergence.unregistered.len(),
            foreign_epoch: divergence.foreign_epoch,
            lasting,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::Epoch;

    fn node(i: u8) -> NodeId {
        NodeId::new(format!("10.0.0.{i}:7946"), 1)
    }

    fn registry(nodes: &[NodeId], cluster: u64) -> Registry {
        Registry {
            nodes: nodes.to_vec(),
            epoch: Some(Epoch {
                cluster: ClusterId(cluster),
                version: 1,
            }),
            revision: None,
            lock: None,
        }
    }

    #[test]
    fn agreement_is_no_divergence_and_reports_nothing() {
        let mut m = DivergenceMonitor::new(Duration::from_secs(1));
        let t = Instant::now();
        let r = registry(&[node(1), node(2)], 7);
        for k in 0..3 {
            let now = t + Duration::from_secs(k);
            assert_eq!(
                m.observe(now, Some(ClusterId(7)), &r, &[node(2), node(1)]),
                None
            );
        }
        assert!(!m.is_diverging());
    }

    #[test]
    fn a_short_divergence_such_as_a_join_is_not_reported() {
        let mut m = DivergenceMonitor::new(Duration::from_secs(10));
        let t = Instant::now();
        let r = registry(&[node(1)], 7);
        // node(2) joined the runtime, its registration follows within the bound.
        assert_eq!(
            m.observe(t, Some(ClusterId(7)), &r, &[node(1), node(2)]),
            None
        );
        let r = registry(&[node(1), node(2)], 7);
        let later = t + Duration::from_secs(5);
        assert_eq!(
            m.observe(later, Some(ClusterId(7)), &r, &[node(1), node(2)]),
            None
        );
        // A new divergence starts its own clock.
        let r = registry(&[node(1)], 7);
        let much_later = t + Duration::from_secs(12);
        let live = [node(1), node(3)];
        assert_eq!(m.observe(much_later, Some(ClusterId(7)), &r, &live), None);
    }

    #[test]
    fn a_lasting_divergence_is_reported_once_and_its_end_too() {
        let mut m = DivergenceMonitor::new(Duration::from_secs(10));
        let t = Instant::now();
        let r = registry(&[node(1), node(2)], 7);
        let live = [node(1), node(3)];
        assert_eq!(m.observe(t, Some(ClusterId(7)), &r, &live), None);
        let at = t + Duration::from_secs(10);
        assert_eq!(
            m.observe(at, Some(ClusterId(7)), &r, &live),
            Some(Event::ClusterDivergence {
                unseen: 1,
                unregistered: 1,
                foreign_epoch: false,
                lasting: Duration::from_secs(10),
            })
        );
        assert_eq!(m.observe(at, Some(ClusterId(7)), &r, &live), None);
        let end = t + Duration::from_secs(15);
        assert_eq!(
            m.observe(end, Some(ClusterId(7)), &r, &[node(1), node(2)]),
            Some(Event::ClusterDivergenceEnded {
                lasted: Duration::from_secs(15)
            })
        );
        assert!(!m.is_diverging());
    }

    #[test]
    fn another_clusters_epoch_is_reported_at_once() {
        let mut m = DivergenceMonitor::new(Duration::from_secs(3600));
        let r = registry(&[node(1)], 8);
        let event = m.observe(Instant::now(), Some(ClusterId(7)), &r, &[node(1)]);
        assert!(
            matches!(
                event,
                Some(Event::ClusterDivergence {
                    foreign_epoch: true,
                    ..
                })
            ),
            "{event:?}"
        );
    }

    #[test]
    fn nodes_are_matched_by_address_across_incarnations() {
        let restarted = NodeId::new("10.0.0.2:7946", 2);
        let r = registry(&[node(1), restarted], 7);
        let d = Divergence::between(Some(ClusterId(7)), &r, &[node(1), node(2)]);
        assert!(d.is_none(), "{d:?}");
    }
}
