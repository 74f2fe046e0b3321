//! `ChitchatClusterConfig`: identity, addresses, gossip and failure-detector settings.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use derive_setters::Setters;
use serde::{Deserialize, Serialize};

use crate::error::ChitchatError;

/// How one node takes part in the chitchat cluster.
///
/// Deserializes from kebab-case fields (`gossip-interval = "500ms"`); only `cluster-id` and
/// `listen-addr` are required.
///
/// The node binds its gossip socket to [`listen_addr`](Self::listen_addr) and tells its
/// peers to reach it at [`advertise_addr`](Self::advertise_addr) (for a node behind NAT or in
/// a container, ConstructR PR #158). The advertised address is the node's address in the
/// coordination service: [`ChitchatCluster::node`](crate::ChitchatCluster::node) returns it.
///
/// ```
/// use constructr_chitchat::ChitchatClusterConfig;
///
/// let config = ChitchatClusterConfig::new("orders", "0.0.0.0:7946".parse().unwrap())
///     .with_advertise_addr("10.0.0.7:7946".parse().unwrap());
/// assert_eq!(config.advertised().unwrap().to_string(), "10.0.0.7:7946");
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Setters)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[setters(prefix = "with_", strip_option)]
#[non_exhaustive]
pub struct ChitchatClusterConfig {
    /// chitchat's cluster id: nodes with another id reject each other's gossip. Use the
    /// cluster name of the constructr settings.
    #[setters(skip)] // set by `new`
    pub cluster_id: String,
    /// chitchat's node id, unique in the cluster and stable across restarts (default: the
    /// advertised address). A restart is told apart by the generation, see
    /// [`ChitchatCluster`](crate::ChitchatCluster).
    #[serde(default)]
    #[setters(into)]
    pub node_name: Option<String>,
    /// Where the gossip socket (UDP) binds, e.g. `0.0.0.0:7946`.
    #[setters(skip)] // set by `new`
    pub listen_addr: SocketAddr,
    /// The address peers gossip to (default: `listen_addr`, which then must not be an
    /// unspecified address like `0.0.0.0`).
    #[serde(default)]
    pub advertise_addr: Option<SocketAddr>,
    /// Interval between gossip rounds. Default 1 s (chitchat's). Every message carries a
    /// digest of every member, so the cost of gossip grows with the cluster and with the
    /// rate: 200 ms makes a cluster converge five times sooner (100 processes see each
    /// other within about 1.3 s) at five times the CPU and bandwidth (README).
    #[serde(default = "default_gossip_interval", with = "humantime_serde")]
    pub gossip_interval: Duration,
    /// The phi-accrual failure detector.
    #[serde(default)]
    pub failure_detector: FailureDetectorSettings,
    /// How long deleted key-values are kept as tombstones. Default 1 h.
    #[serde(
        default = "default_marked_for_deletion_grace_period",
        with = "humantime_serde"
    )]
    #[setters(skip)]
    pub marked_for_deletion_grace_period: Duration,
    /// Key-values this node publishes from its start (see also
    /// [`ChitchatCluster::set_key_value`](crate::ChitchatCluster::set_key_value)).
    #[serde(default)]
    #[setters(skip)] // `with_key_value` adds one entry
    pub key_values: BTreeMap<String, String>,
}

/// Settings of chitchat's phi-accrual failure detector.
///
/// A peer is considered dead once no heartbeat arrived for `phi-threshold` times the mean
/// interval between its heartbeats (smoothed towards `initial-interval` while few samples
/// exist). Heartbeats travel with gossip, so the mean is about the gossip interval.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Setters)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
#[setters(prefix = "with_")]
#[non_exhaustive]
pub struct FailureDetectorSettings {
    /// Phi above which a peer is dead: a silent peer is dead after about this many mean
    /// heartbeat intervals (at most a gossip interval). Default 8.0: 7–8 s measured with the
    /// default 1 s gossip interval.
    pub phi_threshold: f64,
    /// Number of heartbeat intervals kept per peer. Default 1000.
    #[setters(skip)]
    pub sampling_window_size: usize,
    /// Heartbeat intervals longer than this are not sampled. Default 10 s.
    #[serde(with = "humantime_serde")]
    #[setters(skip)]
    pub max_interval: Duration,
    /// The prior mean interval, used while few samples exist. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub initial_interval: Duration,
    /// How long a dead peer's state is kept before it is forgotten. Default 1 h.
    #[serde(with = "humantime_serde")]
    pub dead_node_grace_period: Duration,
}

impl Default for FailureDetectorSettings {
    fn default() -> Self {
        Self {
            phi_threshold: DEFAULT_PHI_THRESHOLD,
            sampling_window_size: 1_000,
            max_interval: Duration::from_secs(10),
            initial_interval: Duration::from_secs(5),
            dead_node_grace_period: Duration::from_secs(3600),
        }
    }
}

impl FailureDetectorSettings {
    pub(crate) fn to_chitchat(&self) -> chitchat::FailureDetectorConfig {
        chitchat::FailureDetectorConfig::new(
            self.phi_threshold,
            self.sampling_window_size,
            self.max_interval,
            self.initial_interval,
            self.dead_node_grace_period,
        )
    }
}

/// The default interval between gossip rounds.
pub const DEFAULT_GOSSIP_INTERVAL: Duration = Duration::from_secs(1);

/// The default phi threshold of the failure detector.
pub const DEFAULT_PHI_THRESHOLD: f64 = 8.0;

fn default_gossip_interval() -> Duration {
    DEFAULT_GOSSIP_INTERVAL
}

fn default_marked_for_deletion_grace_period() -> Duration {
    Duration::from_secs(3600)
}

impl ChitchatClusterConfig {
    /// A configuration with chitchat's defaults, advertising `listen_addr`.
    pub fn new(cluster_id: impl Into<String>, listen_addr: SocketAddr) -> Self {
        Self {
            cluster_id: cluster_id.into(),
            node_name: None,
            listen_addr,
            advertise_addr: None,
            gossip_interval: default_gossip_interval(),
            failure_detector: FailureDetectorSettings::default(),
            marked_for_deletion_grace_period: default_marked_for_deletion_grace_period(),
            key_values: BTreeMap::new(),
        }
    }

    /// Publishes a key-value from the start.
    pub fn with_key_value(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.key_values.insert(key.into(), value.into());
        self
    }

    /// The address peers gossip to; an error if it would be an unspecified address.
    pub fn advertised(&self) -> Result<SocketAddr, ChitchatError> {
        let addr = self.advertise_addr.unwrap_or(self.listen_addr);
        if addr.ip().is_unspecified() {
            return Err(ChitchatError::config(format!(
                "the advertised gossip address {addr} is unspecified: set advertise-addr to an \
                 address peers can reach"
            )));
        }
        if addr.port() == 0 {
            return Err(ChitchatError::config(format!(
                "the advertised gossip address {addr} has port 0: peers need a fixed port"
            )));
        }
        Ok(addr)
    }

    /// Checks every rule; returns the first violated one.
    pub fn validate(&self) -> Result<(), ChitchatError> {
        if self.cluster_id.is_empty() {
            return Err(ChitchatError::config("cluster-id must not be empty"));
        }
        if self.node_name.as_deref() == Some("") {
            return Err(ChitchatError::config("node-name must not be empty"));
        }
        self.advertised()?;
        if self.advertise_addr.is_none() && self.listen_addr.port() == 0 {
            return Err(ChitchatError::config(
                "listen-addr has port 0: peers need a fixed port",
            ));
        }
        if self.gossip_interval.is_zero() {
            return Err(ChitchatError::config(
                "gossip-interval must be greater than zero",
            ));
        }
        let fd = &self.failure_detector;
        if fd.phi_threshold.is_nan() || fd.phi_threshold <= 0.0 {
            return Err(ChitchatError::config(
                "failure-detector.phi-threshold must be greater than zero",
            ));
        }
        if fd.sampling_window_size == 0 {
            return Err(ChitchatError::config(
                "failure-detector.sampling-window-size must be greater than zero",
            ));
        }
        for (name, d) in [
            ("failure-detector.max-interval", fd.max_interval),
            ("failure-detector.initial-interval", fd.initial_interval),
        ] {
            if d.is_zero() {
                return Err(ChitchatError::config(format!(
                    "{name} must be greater than zero"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deserializes_kebab_case_with_defaults() {
        let config: ChitchatClusterConfig = toml::from_str(
            r#"
            cluster-id = "orders"
            listen-addr = "0.0.0.0:7946"
            advertise-addr = "10.0.0.7:7946"
            gossip-interval = "200ms"
            [failure-detector]
            phi-threshold = 6.0
            "#,
        )
        .expect("valid");
        assert_eq!(config.gossip_interval, Duration::from_millis(200));
        assert_eq!(config.failure_detector.phi_threshold, 6.0);
        assert_eq!(
            config.failure_detector.initial_interval,
            Duration::from_secs(5)
        );
        assert_eq!(config.advertised().unwrap().to_string(), "10.0.0.7:7946");
        config.validate().expect("valid");
    }

    #[test]
    fn unspecified_advertised_address_is_refused() {
        let config = ChitchatClusterConfig::new("c", "0.0.0.0:7946".parse().unwrap());
        let e = config.validate().unwrap_err().to_string();
        assert!(e.contains("advertise-addr"), "{e}");
    }

    #[test]
    fn bad_values_name_the_setting() {
        let base = ChitchatClusterConfig::new("c", "127.0.0.1:7946".parse().unwrap());
        let e = base
            .clone()
            .with_gossip_interval(Duration::ZERO)
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("gossip-interval"), "{e}");
        let mut empty = base.clone();
        empty.cluster_id.clear();
        assert!(
            empty
                .validate()
                .unwrap_err()
                .to_string()
                .contains("cluster-id")
        );
        let e = base
            .with_failure_detector(FailureDetectorSettings::default().with_phi_threshold(0.0))
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("phi-threshold"), "{e}");
    }
}
