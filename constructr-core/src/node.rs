//! Identities: node, cluster name, registry scope, cluster epoch.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One start of one node: its address plus an incarnation that is random per start.
///
/// The incarnation keeps a node that restarts on the same address from being mistaken
/// for its own stale registry entry (and from refreshing or removing it).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId {
    /// The address other nodes use to reach this node (e.g. `10.0.0.7:7946`).
    pub address: String,
    /// Random per process start.
    pub incarnation: u64,
}

impl NodeId {
    /// A node identity.
    pub fn new(address: impl Into<String>, incarnation: u64) -> Self {
        Self {
            address: address.into(),
            incarnation,
        }
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{:016x}", self.address, self.incarnation)
    }
}

/// Identifies one formed cluster (one seeding), chosen at random by the seeding node.
///
/// The registry stores it next to the node entries (the *cluster epoch*); registrations of
/// members of any other cluster are refused, which is what keeps two clusters from
/// registering side by side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ClusterId(pub u64);

impl ClusterId {
    /// Stands for an epoch marker whose value cannot be decoded (written by someone else).
    /// Backends report such a marker with this id and its real version, so a seeding node
    /// can replace it (the seed's condition is on the version); no member can join it.
    /// Seeding nodes never choose this id.
    pub const UNREADABLE: ClusterId = ClusterId(0);
}

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl std::str::FromStr for ClusterId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        u64::from_str_radix(s, 16).map(ClusterId)
    }
}

/// The epoch marker as read from the registry: which cluster owns it, and a version that
/// changes on every registration (etcd: mod revision, Consul: modify index).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Epoch {
    /// The cluster currently owning the registry.
    pub cluster: ClusterId,
    /// Changes with every successful `add_self`.
    pub version: u64,
}

/// A validated cluster name: non-empty, at most 128 bytes, none of `/`, `\`, `..`,
/// whitespace or control characters, so it can never escape the key prefix.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ClusterName(String);

impl ClusterName {
    /// Validates a cluster name.
    pub fn new(name: impl Into<String>) -> Result<Self, crate::SettingsError> {
        let name = name.into();
        let bad = |rule: &'static str| crate::SettingsError::InvalidClusterName {
            name: name.escape_debug().to_string(),
            rule,
        };
        if name.is_empty() {
            return Err(bad("must not be empty"));
        }
        if name.len() > 128 {
            return Err(bad("must be at most 128 bytes"));
        }
        if name == "." || name.contains("..") {
            return Err(bad("must not be `.` or contain `..`"));
        }
        if name.chars().any(|c| c == '/' || c == '\\') {
            return Err(bad("must not contain `/` or `\\`"));
        }
        if name.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(bad("must not contain whitespace or control characters"));
        }
        Ok(Self(name))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for ClusterName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ClusterName::new(s).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for ClusterName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where one cluster's registry lives in a backend: key prefix plus cluster name.
///
/// Backends lay their keys out as `{prefix}/{cluster}/nodes/{base64url(address)}`,
/// `{prefix}/{cluster}/lock` and `{prefix}/{cluster}/epoch`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope {
    prefix: String,
    cluster: ClusterName,
}

impl Scope {
    /// A scope; the prefix is normalised to start with `/` and not end with one.
    pub fn new(prefix: &str, cluster: ClusterName) -> Result<Self, crate::SettingsError> {
        let trimmed = prefix.trim_matches('/');
        if trimmed
            .split('/')
            .any(|seg| seg == ".." || seg == "." || (seg.is_empty() && !trimmed.is_empty()))
            || prefix.chars().any(|c| c.is_control())
        {
            return Err(crate::SettingsError::InvalidKeyPrefix {
                prefix: prefix.escape_debug().to_string(),
            });
        }
        Ok(Self {
            prefix: format!("/{trimmed}"),
            cluster,
        })
    }

    /// The key prefix, e.g. `/constructr` (`/` when the prefix is empty).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The cluster name.
    pub fn cluster(&self) -> &ClusterName {
        &self.cluster
    }

    /// `{prefix}/{cluster}` without a trailing slash, e.g. `/constructr/orders`.
    pub fn base(&self) -> String {
        if self.prefix == "/" {
            format!("/{}", self.cluster)
        } else {
            format!("{}/{}", self.prefix, self.cluster)
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.base())
    }
}
