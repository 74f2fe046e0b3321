//! `SerfConfig`: how to reach the local Serf agent's RPC, and the bootstrap-guard settings
//! of the Serf backend.

use std::time::Duration;

use constructr_core::plumbing::Secret;
use derive_setters::Setters;
use serde::{Deserialize, Serialize};

use crate::error::SerfError;

/// How to reach a Serf agent's RPC endpoint, and how the Serf backend guards bootstrap.
///
/// Deserializes from kebab-case fields (`rpc-addr = "127.0.0.1:7373"`,
/// `stability-margin = "5s"`). The auth key is never serialized and never shown by `Debug`
/// (a [`Secret`] prints as `<redacted>`).
///
/// ```
/// use std::time::Duration;
/// use constructr_serf::{SerfConfig, SerfCoordination};
///
/// let config = SerfConfig::new("127.0.0.1:7373")
///     .with_auth_key("s3cret")
///     .with_request_timeout(Duration::from_secs(2))
///     .with_required_members(3);
/// config.validate()?;
/// assert!(!format!("{config:?}").contains("s3cret"));
/// // Connects lazily: `check().await` (or the first request) reaches the agent.
/// let serf = SerfCoordination::new(&config)?;
/// # drop(serf);
/// # Ok::<(), constructr_serf::SerfError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Setters)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
#[setters(prefix = "with_")]
#[non_exhaustive]
pub struct SerfConfig {
    /// The agent's RPC address (`serf agent -rpc-addr`). Default `127.0.0.1:7373`.
    #[setters(skip)] // set by `new`
    pub rpc_addr: String,
    /// The agent's RPC auth key (`serf agent -rpc-auth`). Never serialized nor shown.
    #[serde(skip_serializing)]
    #[setters(into, strip_option)]
    pub auth_key: Option<Secret>,
    /// Maximum time to connect, handshake and authenticate. Default 3 s.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Maximum time for one RPC command, including reconnecting. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// First delay between reconnection attempts; doubles up to `reconnect-max`. Default 100 ms.
    #[serde(with = "humantime_serde")]
    #[setters(skip)]
    pub reconnect_min: Duration,
    /// Longest delay between reconnection attempts. Default 5 s.
    #[serde(with = "humantime_serde")]
    #[setters(skip)]
    pub reconnect_max: Duration,
    /// Bootstrap guard: how many alive candidates must be tagged before the lowest-named
    /// one may seed. Set it to the initial cluster size. Default 1.
    pub required_members: usize,
    /// Bootstrap guard: how long the set of alive candidates must stay unchanged before the
    /// lowest-named one may seed. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub stability_margin: Duration,
}

impl Default for SerfConfig {
    fn default() -> Self {
        Self {
            rpc_addr: "127.0.0.1:7373".into(),
            auth_key: None,
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(5),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            required_members: 1,
            stability_margin: Duration::from_secs(5),
        }
    }
}

impl SerfConfig {
    /// A configuration for this RPC address with the defaults.
    pub fn new(rpc_addr: impl Into<String>) -> Self {
        Self {
            rpc_addr: rpc_addr.into(),
            ..Self::default()
        }
    }

    /// Checks the rules that can be checked without I/O.
    pub fn validate(&self) -> Result<(), SerfError> {
        if self.rpc_addr.trim().is_empty() {
            return Err(SerfError::config("rpc-addr must not be empty"));
        }
        if self.connect_timeout.is_zero() || self.request_timeout.is_zero() {
            return Err(SerfError::config(
                "connect-timeout and request-timeout must be greater than zero",
            ));
        }
        if self.reconnect_min.is_zero() || self.reconnect_max < self.reconnect_min {
            return Err(SerfError::config(
                "reconnect-min must be greater than zero and at most reconnect-max",
            ));
        }
        if self.required_members == 0 {
            return Err(SerfError::config("required-members must be at least 1"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deserializes_kebab_case_and_hides_the_key() {
        let c: SerfConfig = serde_json::from_str(
            r#"{"rpc-addr":"10.0.0.1:7373","auth-key":"k3y","stability-margin":"2s","required-members":3}"#,
        )
        .unwrap();
        assert_eq!(c.rpc_addr, "10.0.0.1:7373");
        assert_eq!(c.stability_margin, Duration::from_secs(2));
        assert_eq!(c.required_members, 3);
        assert!(!format!("{c:?}").contains("k3y"));
        assert!(
            format!("{c:?}").contains("auth_key: Some(<redacted>)"),
            "{c:?}"
        );
        assert!(!serde_json::to_string(&c).unwrap().contains("k3y"));
        c.validate().unwrap();
    }

    #[test]
    fn rejects_zero_required_members() {
        let c = SerfConfig::default().with_required_members(0);
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("required-members")
        );
    }
}
