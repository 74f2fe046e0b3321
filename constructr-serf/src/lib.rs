//! # constructr-serf
//!
//! Serf for constructr:
//! - [`handler`]: the Serf event handler (`constructr serf-handler`), which parses
//!   Serf's handler protocol ([`protocol`]) strictly and forwards each event to the bridge.
//! - [`bridge`]: the HTTP bridge (`constructr serf-bridge`), serf-scala-bridge's REST API
//!   turned into typed events on tokio channels plus a datacenter-aware membership view.
//! - [`SerfClient`]: the agent's msgpack RPC (members, tags, join, leave, events, queries,
//!   streams), reconnecting when the agent restarts.
//! - [`SerfCoordination`]: a **best-effort** [`constructr_core::Coordination`] backend on
//!   Serf tags: no linearizability, and a bootstrap guard instead of a lock, so a network
//!   partition at bootstrap can form two clusters (see [`coordination`] for what it gives).
#![deny(missing_docs)]

pub mod bridge;
pub mod client;
pub mod config;
pub mod coordination;
pub mod error;
pub mod handler;
pub mod protocol;
pub mod quorum;
mod wire;

/// Re-exported on purpose: [`Bridge::router`](bridge::Bridge::router) returns an
/// [`axum::Router`] to merge into an application's own routes, so the application names
/// the same axum version.
pub use axum;
/// Re-exported on purpose: query payloads and answers ([`bridge::Query`]) are
/// [`bytes::Bytes`].
pub use bytes;
pub use client::{
    EventStream, Member, MemberEventKind, MemberFilter, MemberStatus, QueryParams, QueryRecord,
    QueryStream, SerfClient, StreamEvent,
};
pub use config::SerfConfig;
pub use constructr_core::plumbing::{DriverError, Secret};
pub use coordination::SerfCoordination;
pub use error::SerfError;
