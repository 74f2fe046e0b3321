//! Settings with ConstructR's defaults, serde-deserializable, and their validation.

use std::time::Duration;

use derive_setters::Setters;
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
        "ttl-factor {ttl_factor} is too small: the entry must outlive a refresh that times out and its retries (nr-of-retries, 1 when unset) with their waits, i.e. ttl-factor >= 1 + (coordination-timeout * (1 + retries) + sum of retry waits) / refresh-interval = {minimum:.3}"
    )]
    TtlFactorTooSmall {
        /// The configured value.
        ttl_factor: f64,
        /// The minimum for the other settings.
        minimum: f64,
    },
    /// `retry_jitter` is outside `[0, 1]` (or not a number).
    #[error("retry-jitter {0} must be between 0.0 and 1.0")]
    Jitter(f64),
    /// `ttl_factor` is not a finite number.
    #[error("ttl-factor {0} must be a finite number")]
    TtlFactorNotFinite(f64),
    /// A duration that must be positive is shorter than a millisecond (a retry or refresh
    /// storm, not a setting).
    #[error("{name} must be at least 1 ms")]
    TooShort {
        /// The setting's name.
        name: &'static str,
    },
    /// A duration (or the entry TTL derived from one) is longer than [`MAX_DURATION`].
    #[error("{name} must be at most 365 days")]
    TooLong {
        /// The setting's name (`ttl` for `refresh-interval × ttl-factor`).
        name: &'static str,
    },
    /// The coordination backend cannot serve these settings (e.g. Consul's 10 s TTL floor).
    #[error("the {backend} backend cannot serve these settings: {rule}")]
    Backend {
        /// The backend's name.
        backend: &'static str,
        /// The rule, with the values that broke it.
        rule: String,
    },
}

/// The longest accepted duration (and entry TTL): 365 days. Longer values are mistakes,
/// and keeping every duration below this keeps all deadline arithmetic far from overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Settings of one node's bootstrap state machine.
///
/// Field names deserialize in kebab-case (`coordination-timeout = "3s"`). In code, start
/// from [`Settings::default`] (or [`Settings::constructr_compat`]) and change fields with
/// the `with_*` setters, as the backend configurations do:
///
/// ```
/// use std::time::Duration;
/// use constructr_core::{ClusterName, Settings};
///
/// let settings = Settings::default()
///     .with_cluster_name(ClusterName::new("orders")?)
///     .with_refresh_interval(Duration::from_secs(10))
///     .with_ttl_factor(3.0)
///     .with_reseed_grace(Duration::ZERO); // seed at once, as ConstructR
/// settings.validate()?;
/// assert_eq!(settings.ttl(), Duration::from_secs(30));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Setters)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
#[setters(prefix = "with_")]
#[non_exhaustive]
pub struct Settings {
    /// Name of the cluster (part of every key). Default `default`.
    pub cluster_name: ClusterName,
    /// Key prefix in the coordination service. Default `/constructr`.
    #[setters(into)]
    pub key_prefix: String,
    /// Maximum time for one coordination request. Default 3 s.
    #[serde(with = "humantime_serde")]
    pub coordination_timeout: Duration,
    /// Maximum time for joining the cluster. Default 15 s.
    #[serde(with = "humantime_serde")]
    pub join_timeout: Duration,
    /// Fail instead of starting over when joining times out. Default false.
    pub abort_on_join_timeout: bool,
    /// Maximum number of seed nodes passed to join (a random subset); 0 = every registered
    /// node (ConstructR's default). Default 5: a joining node then reads at most 6 entries,
    /// however large the cluster (see [`crate::coordination::NodeLimit::for_seeds`]).
    pub max_nr_of_seed_nodes: usize,
    /// A count limit on retries in a row of a node that is not yet a registered member
    /// (tries = retries + 1), on top of `retry-budget`; also the retries of the entry
    /// removal at shutdown. Unset by default (only the time budget counts); ConstructR: 2.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[setters(strip_option)]
    pub nr_of_retries: Option<u32>,
    /// Interval between refreshes of this node's entry. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// Delay before the first retry, and before re-reading nodes after losing the lock
    /// race. Default 3 s. Retry waits double with every failure in a row, up to
    /// `max-retry-delay`.
    #[serde(with = "humantime_serde")]
    pub retry_delay: Duration,
    /// The cap of the growing retry waits (waits never exceed
    /// `max(max-retry-delay, retry-delay)`; a degraded member also retries at least once per
    /// `refresh-interval`). Default 30 s; equal to `retry-delay` gives ConstructR's fixed waits.
    #[serde(with = "humantime_serde")]
    pub max_retry_delay: Duration,
    /// How long the requests of a node that is not yet a registered member may keep failing
    /// before it fails (bootstrapping rides out outages shorter than this). Default 5 min.
    #[serde(with = "humantime_serde")]
    pub retry_budget: Duration,
    /// Entry TTL = refresh-interval × ttl-factor. Default 2.0.
    pub ttl_factor: f64,
    /// A registered member whose refreshes fail stays a member (state `Degraded`) and keeps
    /// retrying, whatever the error, instead of failing. Default true; false is ConstructR's
    /// fail-fast (fail once `nr-of-retries`/`retry-budget` are used up, or on a permanent error).
    pub ignore_refresh_failures: bool,
    /// How long a node that finds no registered node, while the registry's epoch names an
    /// existing cluster, waits (watching) before it seeds a new one, so that live members
    /// of that cluster whose entries vanished can re-register first ("the older cluster
    /// wins"). Unset by default: derived, see [`Settings::reseed_grace`]; `"0s"` seeds at
    /// once (ConstructR).
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    #[setters(strip_option)]
    pub reseed_grace: Option<Duration>,
    /// Random extra delay added to retry waits, as a fraction of `retry_delay` (0 = fixed
    /// waits as in ConstructR). Default 0.2.
    pub retry_jitter: f64,
    /// Wake nodes waiting for a seed through the backend's watch instead of only after
    /// `retry_delay`. Default true (false reproduces ConstructR's polling).
    pub watch: bool,
    /// Whether this node may seed a new cluster. `false` (Akka's
    /// `new-cluster-enabled = off`): a join-only node never takes the lock; while the
    /// registry is empty it waits (watching) for a node to register, then joins. Default true.
    pub new_cluster_enabled: bool,
    /// How often a registered member compares its cluster runtime's live members with the
    /// registry (one registry read each time) and reports a divergence that lasted an entry
    /// TTL (see [`crate::divergence`]). Unset: `4 × refresh-interval` (2 min by default);
    /// `0s`: never.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    #[setters(strip_option)]
    pub divergence_check_interval: Option<Duration>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            cluster_name: ClusterName::new("default").expect("valid"),
            key_prefix: "/constructr".into(),
            coordination_timeout: Duration::from_secs(3),
            join_timeout: Duration::from_secs(15),
            abort_on_join_timeout: false,
            max_nr_of_seed_nodes: 5,
            nr_of_retries: None,
            refresh_interval: Duration::from_secs(30),
            retry_delay: Duration::from_secs(3),
            max_retry_delay: Duration::from_secs(30),
            retry_budget: Duration::from_secs(300),
            ttl_factor: 2.0,
            ignore_refresh_failures: true,
            reseed_grace: None,
            retry_jitter: 0.2,
            watch: true,
            new_cluster_enabled: true,
            divergence_check_interval: None,
        }
    }
}

impl Settings {
    /// ConstructR's behaviour: its defaults, 2 retries at fixed waits, fail-fast members,
    /// no watch, no re-seed grace, every registered node a seed.
    pub fn constructr_compat() -> Self {
        let d = Self::default();
        Self {
            retry_jitter: 0.0,
            watch: false,
            nr_of_retries: Some(2),
            max_retry_delay: d.retry_delay,
            ignore_refresh_failures: false,
            reseed_grace: Some(Duration::ZERO),
            max_nr_of_seed_nodes: 0,
            ..d
        }
    }

    /// Checks every rule; returns the first violated one. Every accepted value runs
    /// through the machine without overflow or panic.
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
            if d < Duration::from_millis(1) {
                return Err(SettingsError::TooShort { name });
            }
        }
        for (name, d) in [
            ("coordination-timeout", self.coordination_timeout),
            ("join-timeout", self.join_timeout),
            ("refresh-interval", self.refresh_interval),
            ("retry-delay", self.retry_delay),
            ("max-retry-delay", self.max_retry_delay),
            ("retry-budget", self.retry_budget),
            ("reseed-grace", self.reseed_grace.unwrap_or_default()),
            (
                "divergence-check-interval",
                self.divergence_check_interval.unwrap_or_default(),
            ),
        ] {
            if d > MAX_DURATION {
                return Err(SettingsError::TooLong { name });
            }
        }
        if !(0.0..=1.0).contains(&self.retry_jitter) || self.retry_jitter.is_nan() {
            return Err(SettingsError::Jitter(self.retry_jitter));
        }
        if !self.ttl_factor.is_finite() {
            return Err(SettingsError::TtlFactorNotFinite(self.ttl_factor));
        }
        let minimum = self.minimum_ttl_factor();
        if self.ttl_factor < minimum {
            return Err(SettingsError::TtlFactorTooSmall {
                ttl_factor: self.ttl_factor,
                minimum,
            });
        }
        if self.refresh_interval.as_secs_f64() * self.ttl_factor > MAX_DURATION.as_secs_f64() {
            return Err(SettingsError::TooLong { name: "ttl" });
        }
        self.scope().map(|_| ())
    }

    /// The smallest `ttl_factor` these settings allow: the entry must outlive a refresh whose
    /// tries all time out, with the (growing, jittered) waits between them:
    /// `1 + (coordination-timeout × (1 + r) + Σ waits) / refresh-interval`, with
    /// `r = nr-of-retries` (1 when unset).
    pub fn minimum_ttl_factor(&self) -> f64 {
        let retries = self.nr_of_retries.unwrap_or(1);
        let mut waits = 0.0;
        for k in 0..retries.min(64) {
            waits += self.member_retry_wait(k, 1.0).as_secs_f64();
        }
        let tries = 1.0 + f64::from(retries);
        1.0 + (self.coordination_timeout.as_secs_f64() * tries + waits)
            / self.refresh_interval.as_secs_f64()
    }

    /// The wait before retry number `k + 1` of a node that is not yet a registered member:
    /// `retry-delay × 2^k`, capped at `max(max-retry-delay, retry-delay)`, times
    /// `1 + jitter × retry-jitter` (`jitter` in `[0, 1)`, drawn by the caller).
    pub fn retry_wait(&self, k: u32, jitter: f64) -> Duration {
        let cap = self.max_retry_delay.max(self.retry_delay);
        let grown = self.retry_delay.saturating_mul(1u32 << k.min(31)).min(cap);
        saturating_mul_f64(grown, 1.0 + jitter * self.retry_jitter)
    }

    /// The wait before retry number `k + 1` of a registered member: as
    /// [`Settings::retry_wait`], at most `refresh-interval` (a degraded member tries at
    /// least once per refresh interval), and at most [`Settings::longest_member_wait`].
    pub fn member_retry_wait(&self, k: u32, jitter: f64) -> Duration {
        self.retry_wait(k, jitter)
            .min(self.refresh_interval)
            .min(self.longest_member_wait())
    }

    /// The longest wait between two tries of a registered member:
    /// `(reseed-grace − 2 × coordination-timeout − coordination-timeout / 8) / 2`, but at
    /// least `retry-delay × (1 + retry-jitter)` (16.6 s with the defaults); no limit
    /// without a re-seed grace.
    ///
    /// After an outage longer than its entry's TTL, a member's entry is gone, and a node that
    /// reads the registry empty once the service is back seeds after the re-seed grace. The
    /// member must register again before: its first try after the outage may fail (a slow
    /// request times out), and the try after it must still be in time, so two waits and two
    /// requests must fit in the grace. (A longer wait, as the grown backoff of a long outage
    /// would be, lets one slow request cost the member its cluster.)
    pub fn longest_member_wait(&self) -> Duration {
        let grace = self.reseed_grace();
        if grace.is_zero() {
            // No grace to fit the tries into (ConstructR's behaviour).
            return MAX_DURATION;
        }
        let two_tries = grace
            .saturating_sub(self.coordination_timeout.saturating_mul(2))
            .saturating_sub(self.late_wake());
        (two_tries / 2).max(saturating_mul_f64(
            self.retry_delay,
            1.0 + self.retry_jitter,
        ))
    }

    /// How late a timer must fire for the machine to take it that the node was frozen
    /// (a GC pause, SIGSTOP, a starved runtime) rather than that the service was slow:
    /// `coordination-timeout / 8`.
    pub fn late_wake(&self) -> Duration {
        self.coordination_timeout / 8
    }

    /// How long a node that reads an empty registry whose epoch names a cluster waits
    /// before seeding: `reseed-grace` if set, else
    /// `refresh-interval + 2 × coordination-timeout + retry-delay × (1 + retry-jitter)` —
    /// a live member notices a vanished entry at its next refresh, and may need one failed
    /// try and one retry to re-register.
    pub fn reseed_grace(&self) -> Duration {
        self.reseed_grace.unwrap_or_else(|| {
            self.refresh_interval
                .saturating_add(self.coordination_timeout.saturating_mul(2))
                .saturating_add(saturating_mul_f64(
                    self.retry_delay,
                    1.0 + self.retry_jitter,
                ))
        })
    }

    /// The longest a node may be frozen (a GC pause, SIGSTOP, a starved runtime) at any
    /// moment without any risk of two clusters: `reseed-grace −` the longest wait of a
    /// member ([`Settings::member_retry_wait`]) `− coordination-timeout` (zero if negative);
    /// 20.0 s with the defaults.
    ///
    /// The tightest moment is a degraded member's first try after a coordination outage
    /// longer than its entry's TTL: a node that read the registry empty once the service was
    /// back seeds after the re-seed grace, and the member must have written its registration
    /// again by then. (A freeze longer than [`Settings::late_wake`] past a request's deadline
    /// makes the member try again at once, without a wait.) A member that refreshes
    /// normally is safe through much longer freezes, up to
    /// `ttl + reseed-grace − refresh-interval − coordination-timeout` (66.6 s with the
    /// defaults); a seed through any freeze before it forms (it forms only within its
    /// registration's lease), and through `ttl + reseed-grace` while its join is in flight.
    /// A longer freeze may let a cluster form while the member sleeps: it wakes beside it
    /// until its re-registration is refused (one or two requests). That is the remaining
    /// window, which divergence detection reports.
    ///
    /// ```
    /// use std::time::Duration;
    /// use constructr_core::Settings;
    ///
    /// // 39.6 s grace − 16.6 s (the longest wait of a member) − 3 s.
    /// let s = Settings::default();
    /// assert_eq!(s.longest_member_wait(), Duration::from_micros(16_612_500));
    /// assert_eq!(s.max_safe_pause(), Duration::from_micros(19_987_500));
    /// ```
    pub fn max_safe_pause(&self) -> Duration {
        let longest_member_wait = self.member_retry_wait(u32::MAX, 1.0);
        self.reseed_grace()
            .saturating_sub(longest_member_wait)
            .saturating_sub(self.coordination_timeout)
    }

    /// How often a registered member checks for a divergence between its runtime and the
    /// registry: `divergence-check-interval`, else `4 × refresh-interval`; `None`: never.
    pub fn divergence_check_interval(&self) -> Option<Duration> {
        let interval = self
            .divergence_check_interval
            .unwrap_or_else(|| self.refresh_interval.saturating_mul(4));
        (!interval.is_zero()).then_some(interval)
    }

    /// The registry scope (`key_prefix` + `cluster_name`).
    pub fn scope(&self) -> Result<Scope, SettingsError> {
        Scope::new(&self.key_prefix, self.cluster_name.clone())
    }

    /// TTL of this node's entry: `refresh_interval × ttl_factor` (saturating; validated
    /// settings keep it at most [`MAX_DURATION`]).
    pub fn ttl(&self) -> Duration {
        saturating_mul_f64(self.refresh_interval, self.ttl_factor)
    }

    /// TTL of the bootstrap lock: long enough to re-read the nodes, join and write the
    /// fenced registration (`join_timeout + 2 × coordination_timeout`).
    pub fn lock_ttl(&self) -> Duration {
        self.join_timeout
            .saturating_add(self.coordination_timeout.saturating_mul(2))
    }
}

/// `d × f` without panicking: `Duration::MAX` on overflow or infinity, zero for NaN or
/// negative factors.
fn saturating_mul_f64(d: Duration, f: f64) -> Duration {
    if f.is_nan() || f <= 0.0 {
        return Duration::ZERO;
    }
    Duration::try_from_secs_f64(d.as_secs_f64() * f).unwrap_or(Duration::MAX)
}
