//! # constructr-zookeeper
//!
//! The ZooKeeper backend of constructr (ZooKeeper 3.5 or later), on the async
//! [`zookeeper-client`](https://docs.rs/zookeeper-client) crate.
//!
//! Layout under the scope `{prefix}/{cluster}` (persistent parents, created on demand):
//! - `nodes/{base64url(address)}`: one **ephemeral** znode per registered node, owned by
//!   this process's session: it disappears when the process dies (after the session
//!   timeout) or the node leaves. `refresh` checks that the entry is still this session's
//!   (the client keeps the session alive; an expired session is replaced by a new one and
//!   the entry reads as missing, so the node registers again).
//! - `lock/n-{sequence}`: the bootstrap lock, an **ephemeral sequential** znode; the lowest
//!   one holds it. Its unique name is the lock token: a seed's registration is one `multi`
//!   that checks the lock znode still exists and the epoch znode's version is unchanged,
//!   creates the entry and writes the epoch.
//! - `epoch`: the cluster epoch marker (persistent); every registration bumps its version.
//!
//! Reads are linearizable (`sync` first, then one multi-read); `wait_for_change` is a
//! child watch on `nodes`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use constructr_zookeeper::{ZooKeeperConfig, ZooKeeperCoordination};
//! let config = ZooKeeperConfig::new(["zk1:2181", "zk2:2181", "zk3:2181"])
//!     .with_session_timeout(std::time::Duration::from_secs(10));
//! let zookeeper = ZooKeeperCoordination::connect(&config).await?; // or `new`: on first use
//! // hand `zookeeper` to `constructr_core::driver::Node::builder().coordination(..)` ...
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

pub mod config;
pub mod coordination;
pub mod error;
mod joins;

pub use config::ZooKeeperConfig;
pub use constructr_core::plumbing::Secret;
pub use coordination::ZooKeeperCoordination;
pub use error::ZooKeeperError;
