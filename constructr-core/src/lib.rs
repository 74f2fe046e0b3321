//! # constructr-core
//!
//! Bootstraps a cluster of service nodes through a coordination service: a node reads the
//! registered nodes of its cluster; if there are none it takes a lock and seeds a new
//! cluster with itself, otherwise it joins them; then it registers itself with a TTL and
//! refreshes the registration for as long as it lives.
//!
//! - [`Machine`]: the sans-IO state machine. **It never does I/O and never reads the
//!   clock**: time comes in as `now`, results come in through `handle_*`, effects go out as
//!   plain-data [`Action`]s through `poll_action`. **After every `handle_*` call, drain
//!   `poll_action` and `poll_event`.** `poll_timeout` says when to call `handle_timeout`.
//! - [`Coordination`] and [`Cluster`]: the traits a backend and a cluster runtime implement.
//! - [`memory::MemoryCoordination`] and [`local::LocalCluster`]: in-process implementations
//!   for tests, demos and single-process deployments.
//! - [`sim`] (feature `sim`): deterministic simulation of many nodes with faults on virtual time.
//! - [`driver`] (feature `tokio`): runs a machine against real backends.
//! - [`conformance`] (feature `conformance`): the checks every backend must pass.
//! - [`scenarios`] (feature `scenarios`): whole nodes against a running service, the way
//!   users break it; every backend runs them.
//! - [`plumbing`] (feature `plumbing`): what network drivers share (secrets, failover).
//! - [`secret::Secret`]: passwords and tokens that never show up in `Debug` or logs.
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod cluster;
pub mod coordination;
pub mod divergence;
pub mod entry;
pub mod local;
pub mod machine;
pub mod memory;
pub mod node;
mod notify;
#[cfg(feature = "plumbing")]
#[cfg_attr(docsrs, doc(cfg(feature = "plumbing")))]
pub mod plumbing;
pub mod secret;
pub mod settings;
#[cfg(feature = "plumbing")]
mod shared_wait;
#[cfg(feature = "sim")]
#[cfg_attr(docsrs, doc(cfg(feature = "sim")))]
pub mod sim;
pub mod status;
pub mod tls;

#[cfg(feature = "conformance")]
#[cfg_attr(docsrs, doc(cfg(feature = "conformance")))]
pub mod conformance;
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub mod driver;
#[cfg(feature = "scenarios")]
#[cfg_attr(docsrs, doc(cfg(feature = "scenarios")))]
pub mod scenarios;

pub use cluster::{Cluster, ClusterError, ClusterEvent};
pub use coordination::{
    AddMode, AddOutcome, Coordination, CoordinationError, ErrorSummary, Lease, LockOutcome,
    LockToken, NodeLimit, RefreshOutcome, Registry, WaitOutcome, error_chain,
};
pub use machine::{Action, AttemptId, Event, Failure, Machine, Reply, State};
pub use node::{ClusterId, ClusterName, Epoch, NodeId, Scope};
pub use settings::{Settings, SettingsError};
pub use status::Status;
