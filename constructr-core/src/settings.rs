//! Settings with ConstructR's defaults, serde-deserializable, and their validation.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::node::{ClusterName, Scope};

/// An invalid setting. The message names the violated rule.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    /// The cluster name could escape the key prefix or is otherwise unusable.
    #[error("invalid cluster name \"{name}\": {rule}")]
    InvalidClusterName {
        /// The offending name (escaped).
        name: String,
        /// The rule it broke.
        rule: &'static str,
    },
    /// The key prefix contains `.`/`..` segments, empty segments or control characters.
    #[error(
        "invalid key prefix \"{prefix}\": segments must not be empty, `.` or `..`, and no control characters"
    )]
    InvalidKeyPrefix {
        /// The offending prefix (escaped).
        prefix: String,
    },
    /// A duration that must be positive is zero.
    #[error("{name} must be greater than zero")]
    Zero {
        /// The setting's name.
        name: &'static str,
    },
    /// `ttl_factor` is below ConstructR's bound.
    #[error(
        "ttl-factor {ttl_factor} is too small: it must be >= 1 + (coordination-timeout * (1 + nr-of-retries) + retry-delay * (1 + retry-jitter) * nr-of-retries) / refresh-interval = {minimum:.3}"
    )]
    TtlFactorTooSmall {
        /// The configured value.
        ttl_factor: f64,
        /// The minimum for the other settings.
        minimum: f64,
    },
    /// `retry_jitter` is outside `[0, 1]`.
    #[error("retry-jitter {0} must be between 0.0 and 1.0")]
    Jitter(f64),
}

/// Settings of one node's bootstrap state machine.
///
/// Field names deserialize in kebab-case (`coordination-timeout = "3s"`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Settings {
    /// Name of the cluster (part of every key). Default `default`.
    pub cluster_name: ClusterName,
    /// Key prefix in the coordination service. Default `/constructr`.
    pub key_prefix: String,
    /// Maximum time for one coordination request. Default 3 s.
    #[serde(with = "humantime_serde")]
    pub coordination_timeout: Duration,
    /// Maximum time for joining the cluster. Default 15 s.
    #[serde(with = "humantime_serde")]
    pub join_timeout: Duration,
    /// Fail instead of starting over when joining times out. Default false.
    pub abort_on_join_timeout: bool,
    /// Maximum number of seed nodes passed to join (a random subset); 0 = unlimited.
    pub max_nr_of_seed_nodes: usize,
    /// Retries of a failed coordination request (tries = retries + 1). Default 2.
    pub nr_of_retries: u32,
    /// Interval between refreshes of this node's entry. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// Delay before retrying, and before re-reading nodes after losing the lock race. Default 3 s.
    #[serde(with = "humantime_serde")]
    pub retry_delay: Duration,
    /// Entry TTL = refresh-interval × ttl-factor. Default 2.0.
    pub ttl_factor: f64,
    /// Keep refreshing forever instead of failing once retries are exhausted. Default false.
    pub ignore_refresh_failures: bool,
    /// Random extra delay added to retry waits, as a fraction of `retry_delay` (0 = fixed
    /// waits as in ConstructR). Default 0.2.
    pub retry_jitter: f64,
    /// Wake nodes waiting for a seed through the backend's watch instead of only after
    /// `retry_delay`. Default true (false reproduces ConstructR's polling).
    pub watch: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            cluster_name: ClusterName::new("default").expect("valid"),
            key_prefix: "/constructr".into(),
            coordination_timeout: Duration::from_secs(3),
            join_timeout: Duration::from_secs(15),
            abort_on_join_timeout: false,
            max_nr_of_seed_nodes: 0,
            nr_of_retries: 2,
            refresh_interval: Duration::from_secs(30),
            retry_delay: Duration::from_secs(3),
            ttl_factor: 2.0,
            ignore_refresh_failures: false,
            retry_jitter: 0.2,
            watch: true,
        }
    }
}

impl Settings {
    /// ConstructR's behaviour: its defaults, fixed retry waits, no watch.
    pub fn constructr_compat() -> Self {
        Self {
            retry_jitter: 0.0,
            watch: false,
            ..Self::default()
        }
    }

    /// Checks every rule; returns the first violated one.
    pub fn validate(&self) -> Result<(), SettingsError> {
        for (name, d) in [
            ("coordination-timeout", self.coordination_timeout),
            ("join-timeout", self.join_timeout),
            ("refresh-interval", self.refresh_interval),
            ("retry-delay", self.retry_delay),
        ] {
            if d.is_zero() {
                return Err(SettingsError::Zero { name });
            }
        }
        if !(0.0..=1.0).contains(&self.retry_jitter) || self.retry_jitter.is_nan() {
            return Err(SettingsError::Jitter(self.retry_jitter));
        }
        // Worst case between two successful refreshes: every try of a refresh times out and
        // every retry waits (with jitter) — the entry must outlive it.
        let retries = f64::from(self.nr_of_retries);
        let retry_wait = self.retry_delay.as_secs_f64() * (1.0 + self.retry_jitter);
        let minimum = 1.0
            + (self.coordination_timeout.as_secs_f64() * (1.0 + retries) + retry_wait * retries)
                / self.refresh_interval.as_secs_f64();
        if self.ttl_factor.is_nan() || self.ttl_factor < minimum {
            return Err(SettingsError::TtlFactorTooSmall {
                ttl_factor: self.ttl_factor,
                minimum,
            });
        }
        self.scope().map(|_| ())
    }

    /// The registry scope (`key_prefix` + `cluster_name`).
    pub fn scope(&self) -> Result<Scope, SettingsError> {
        Scope::new(&self.key_prefix, self.cluster_name.clone())
    }

    /// TTL of this node's entry: `refresh_interval × ttl_factor`.
    pub fn ttl(&self) -> Duration {
        self.refresh_interval.mul_f64(self.ttl_factor)
    }

    /// TTL of the bootstrap lock: long enough to re-read the nodes, join and write the
    /// fenced registration (`join_timeout + 2 × coordination_timeout`).
    pub fn lock_ttl(&self) -> Duration {
        self.join_timeout + self.coordination_timeout * 2
    }
}
