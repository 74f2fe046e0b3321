//! # constructr-consul
//!
//! The Consul backend of constructr: [`ConsulCoordination`] implements
//! [`constructr_core::Coordination`] with Consul sessions (node entries and the bootstrap
//! lock are KV keys locked by TTL sessions and vanish with them), transactions (the fenced
//! seed registration, the epoch checks) and blocking queries (nodes waiting for a seed wake
//! as soon as it registers).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use constructr_consul::{ConsulConfig, ConsulCoordination};
//!
//! let config = ConsulConfig::new(["http://127.0.0.1:8500"]).with_token("my-acl-token");
//! let consul = Arc::new(ConsulCoordination::new(&config)?);
//! let scope = constructr_core::Settings::default().scope()?;
//! consul.check(&scope).await?; // optional: fail early on an unreachable Consul or an unknown token
//! // check the node settings against Consul's session TTL range (10 s to 24 h):
//! constructr_consul::validate_settings(&constructr_core::Settings::default())?;
//! // hand `consul` to `constructr_core::driver::Node::builder().coordination(..)` ...
//! # Ok(()) }
//! ```
//!
//! With `consul kv get -recurse constructr/` an operator sees
//! `constructr/{cluster}/nodes/{base64url(address)}` entries with JSON values, the
//! `constructr/{cluster}/lock` key while a node seeds, and `constructr/{cluster}/epoch`.
//!
//! **Expiry:** Consul ends a session between its TTL and twice its TTL after the last
//! renewal, so a dead node's entry stays visible for up to `2 × ttl`. See [`coordination`]
//! for the semantics, [`ConsulConfig`] for failover, ACL token and TLS, and [`ConsulError`]
//! for the error mapping. Why this crate has its own small HTTP client instead of using the
//! `consul`, `rs-consul` or `consulrs` crates is explained in the `client` module: in short,
//! blocking I/O and no check-and-set, private sessions, or an unmaintained HTTP stack.
#![deny(missing_docs)]

mod client;
pub mod config;
pub mod coordination;
mod entries;
pub mod error;
mod joins;

pub use config::{
    ConsulConfig, ConsulTlsConfig, MAX_SESSION_TTL, MIN_SESSION_TTL, PemSource, TlsConfig,
    validate_settings,
};
pub use constructr_core::plumbing::{DriverError, Secret};
pub use coordination::{ConsulCoordination, session_ttl_secs};
pub use entries::RELIST_PAUSE;
pub use error::ConsulError;
