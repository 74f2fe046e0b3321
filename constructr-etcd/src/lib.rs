//! # constructr-etcd
//!
//! The etcd v3 backend of constructr: [`EtcdCoordination`] implements
//! [`constructr_core::Coordination`] with etcd leases (node entries and the bootstrap lock
//! expire with their TTL), transactions (the lock, the fenced seed registration, the epoch
//! checks) and watches (nodes waiting for a seed wake as soon as it registers).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use constructr_etcd::{EtcdConfig, EtcdCoordination};
//!
//! let config = EtcdConfig::new(["http://10.0.0.1:2379", "http://10.0.0.2:2379"]);
//! let etcd = Arc::new(EtcdCoordination::new(&config)?);
//! let scope = constructr_core::Settings::default().scope()?;
//! etcd.check(&scope).await?; // optional: fail early on bad credentials, TLS, permissions
//! // hand `etcd` to `constructr_core::driver::Node::builder().coordination(..)` ...
//! # Ok(()) }
//! ```
//!
//! With `etcdctl get --prefix /constructr/` an operator sees
//! `/constructr/{cluster}/nodes/{base64url(address)}` entries with JSON values, the
//! `/constructr/{cluster}/lock` key while a node seeds, and `/constructr/{cluster}/epoch`.
//!
//! See [`coordination`] for the semantics (TTL rounding, the expiry bound),
//! [`EtcdConfig::endpoints`] for endpoint failover, and [`EtcdError`] for the error mapping.
#![deny(missing_docs)]

mod client;
pub mod config;
pub mod coordination;
mod entries;
pub mod error;
mod joins;

pub use config::{EtcdConfig, EtcdTlsConfig, PemSource, TlsConfig};
pub use constructr_core::plumbing::{DriverError, Secret};
pub use coordination::{EtcdCoordination, lease_ttl_secs};
pub use error::EtcdError;
