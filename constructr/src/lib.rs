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
//! | `zookeeper` | [`zookeeper`] | ZooKeeper |
//! | `chitchat` | [`chitchat`] | chitchat as the cluster (gossip, failure detection) |
//! | `management` | [`management`] | the management HTTP endpoint: probes, bootstrap status, members, Prometheus metrics |
//!
//! The in-memory backend ([`memory::MemoryCoordination`]) is always available.
//! [`CoordinationUrl`] names a backend and how to reach it in one string
//! (`etcd://h1:2379,h2:2379`, `consul+https://TOKEN@h:8501`).
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use constructr_core::*;

/// The etcd v3 backend.
#[cfg(feature = "etcd")]
#[cfg_attr(docsrs, doc(cfg(feature = "etcd")))]
pub use constructr_etcd as etcd;

/// The Consul backend.
#[cfg(feature = "consul")]
#[cfg_attr(docsrs, doc(cfg(feature = "consul")))]
pub use constructr_consul as consul;

/// The Serf bridge and backend.
#[cfg(feature = "serf")]
#[cfg_attr(docsrs, doc(cfg(feature = "serf")))]
pub use constructr_serf as serf;

/// The ZooKeeper backend.
#[cfg(feature = "zookeeper")]
#[cfg_attr(docsrs, doc(cfg(feature = "zookeeper")))]
pub use constructr_zookeeper as zookeeper;

/// The management HTTP endpoint (`/alive`, `/ready`, `/bootstrap`, `/members`, `/metrics`).
#[cfg(feature = "management")]
#[cfg_attr(docsrs, doc(cfg(feature = "management")))]
pub use constructr_management as management;

/// chitchat as the cluster being bootstrapped.
#[cfg(feature = "chitchat")]
#[cfg_attr(docsrs, doc(cfg(feature = "chitchat")))]
pub use constructr_chitchat as chitchat;

pub mod url;
pub use url::{CoordinationUrl, CoordinationUrlError};
