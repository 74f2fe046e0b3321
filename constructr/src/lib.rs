//! # constructr
//!
//! Bootstraps a cluster of service nodes through a coordination service. This facade
//! re-exports [`constructr_core`] and, behind cargo features, the backends:
//!
//! | feature  | module     | backend |
//! |----------|------------|---------|
//! | `etcd`   | [`etcd`]   | etcd v3 |
//! | `consul` | [`consul`] | Consul  |
//! | `serf`   | [`serf`]   | Serf    |
//! | `chitchat` | [`chitchat`] | chitchat as the cluster (gossip, failure detection) |
//!
//! The in-memory backend ([`memory::MemoryCoordination`]) is always available.
#![deny(missing_docs)]

pub use constructr_core::*;

/// The etcd v3 backend.
#[cfg(feature = "etcd")]
pub use constructr_etcd as etcd;

/// The Consul backend.
#[cfg(feature = "consul")]
pub use constructr_consul as consul;

/// The Serf bridge and backend.
#[cfg(feature = "serf")]
pub use constructr_serf as serf;

/// chitchat as the cluster being bootstrapped.
#[cfg(feature = "chitchat")]
pub use constructr_chitchat as chitchat;
