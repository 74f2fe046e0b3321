//! # constructr-chitchat
//!
//! [chitchat](https://docs.rs/chitchat) (gossip with scuttlebutt reconciliation and a
//! phi-accrual failure detector, from Quickwit) as the cluster constructr bootstraps:
//! [`ChitchatCluster`] implements [`constructr_core::Cluster`].
//!
//! - **join**: chitchat starts gossiping with the seeds the coordination service returned
//!   (their registered addresses are their gossip addresses); the node is a member once it
//!   sees itself and, unless it seeded the cluster, one of those seeds among the live nodes.
//! - **leave**: chitchat shuts down; the next join starts it again with a new generation.
//! - After bootstrap the application reads live members and key-values through
//!   [`ChitchatCluster::members`] and [`ChitchatCluster::chitchat`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use constructr_chitchat::{ChitchatCluster, ChitchatClusterConfig, time_ordered_incarnation};
//! use constructr_core::{Settings, driver::Node, memory::MemoryCoordination};
//!
//! let settings = Settings::default();
//! let config = ChitchatClusterConfig::new(settings.cluster_name.as_str(), "0.0.0.0:7946".parse()?)
//!     .with_advertise_addr("10.0.0.7:7946".parse()?);
//! let cluster = Arc::new(ChitchatCluster::new(config, time_ordered_incarnation())?);
//! let coordination = Arc::new(MemoryCoordination::default()); // etcd or Consul in production
//! let node = Node::builder()
//!     .settings(settings)
//!     .address(cluster.node().clone())
//!     .coordination(coordination)
//!     .cluster(cluster.clone())
//!     .spawn()?;
//! node.registered().await?;
//! println!("live members: {}", cluster.members().borrow().len());
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

pub mod cluster;
pub mod config;
mod contacts;
pub mod error;

/// Re-exported on purpose: [`ChitchatCluster::chitchat`], [`Members`] and [`member_node`]
/// hand out chitchat's own types (`Chitchat`, `ChitchatId`, `NodeState`), so the
/// application reads key-values and node states with the same chitchat version.
pub use chitchat;
pub use cluster::{
    ChitchatCluster, INCARNATION_KEY, LEAVING_KEY, Members, is_leaving, member_node,
    time_ordered_incarnation,
};
pub use config::{
    ChitchatClusterConfig, DEFAULT_GOSSIP_INTERVAL, DEFAULT_PHI_THRESHOLD, FailureDetectorSettings,
};
pub use error::ChitchatError;
