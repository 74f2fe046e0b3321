//! `ConsulConfig`: addresses, ACL token, TLS, datacenter, lock delay and timeouts of the
//! Consul backend, and the check of node settings against Consul's session TTL range.
//!
//! The key prefix is not configured here: it comes from the core
//! [`Scope`](constructr_core::Scope) (`key-prefix` + `cluster-name` in the node settings;
//! Consul keys have no leading `/`, so the default prefix `/constructr` becomes `constructr/`).

use std::time::Duration;

use constructr_core::Settings;
use constructr_core::plumbing::{Secret, check_endpoints, config_debug};
pub use constructr_core::tls::{PemSource, TlsConfig};
use derive_setters::Setters;
use serde::{Deserialize, Serialize};

use crate::error::ConsulError;

/// The smallest session TTL Consul accepts.
pub const MIN_SESSION_TTL: Duration = Duration::from_secs(10);
/// The largest session TTL Consul accepts (24 h).
pub const MAX_SESSION_TTL: Duration = Duration::from_secs(86_400);

/// The largest `max-connections` (far above any agent's sensible limit).
pub const MAX_CONNECTIONS: usize = 65_536;

/// How to reach Consul.
///
/// Deserializes from kebab-case fields (`request-timeout = "2s"`). The ACL token and an
/// inline client key are never serialized and never shown by `Debug`.
///
/// ```
/// use std::time::Duration;
/// use constructr_consul::ConsulConfig;
///
/// let config = ConsulConfig::new(["http://10.0.0.1:8500", "http://10.0.0.2:8500"])
///     .with_token("b3a4c5d6-secret")
///     .with_datacenter("dc1")
///     .with_request_timeout(Duration::from_secs(2));
/// assert!(!format!("{config:?}").contains("secret"));
/// ```
#[derive(Clone, PartialEq, Serialize, Deserialize, Setters)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
#[setters(prefix = "with_", strip_option)]
#[non_exhaustive]
pub struct ConsulConfig {
    /// Consul HTTP API addresses (`http://host:8500`, `https://host:8501`, or `host:8500`,
    /// which means https when `tls` is set). Usually the local agent. Requests go to one
    /// address at a time; when it is unreachable or answers with a transient failure the
    /// request moves on to the next one. Default `http://127.0.0.1:8500`.
    #[setters(skip)] // `with_addresses` takes any iterator of strings
    pub addresses: Vec<String>,
    /// ACL token, sent as `X-Consul-Token`. Never serialized, never shown by `Debug`, never
    /// logged. Its policy needs `key_prefix "<prefix>" { policy = "write" }` and
    /// `session_prefix "" { policy = "write" }`.
    #[serde(skip_serializing)]
    #[setters(into)]
    pub token: Option<Secret>,
    /// Datacenter to use (`?dc=`); default: the agent's own.
    #[setters(into)]
    pub datacenter: Option<String>,
    /// TLS (rustls): CA certificate and an optional client certificate and key.
    pub tls: Option<ConsulTlsConfig>,
    /// Consul's lock delay of the **bootstrap lock's** session: after the lock holder's session
    /// expires, nobody can take the lock for this long. Default 0 s: safety does not depend on
    /// it (the seed registration checks the lock session in the same transaction, so a holder
    /// that lost its session cannot write), and Consul's own default of 15 s would only delay
    /// the next seeding. Node entries always use 0 s, so a node restarting on the same address
    /// can register at once.
    #[serde(with = "humantime_serde")]
    pub lock_delay: Duration,
    /// Maximum time to establish a connection to one address. Default 3 s.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Maximum time for one request to one address (blocking queries get their wait time on
    /// top). Default 3 s.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Requests in flight at once through this backend value, blocking queries aside (the
    /// nodes of one value share one blocking query per scope), and so the HTTP connections
    /// it opens. Keep it below the agent's `limits.http_max_conns_per_client` (200 by
    /// default) minus what else of this host talks to the agent: Consul closes the
    /// connections beyond it. Default 64; 1 to 65,536.
    pub max_connections: usize,
}

/// The end of the message for an `https://` address without TLS settings.
const TLS_HINT: &str = "(an empty `[tls]` trusts the built-in web roots)";

impl Default for ConsulConfig {
    fn default() -> Self {
        Self {
            addresses: vec!["http://127.0.0.1:8500".into()],
            token: None,
            datacenter: None,
            tls: None,
            lock_delay: Duration::ZERO,
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(3),
            max_connections: 64,
        }
    }
}

impl ConsulConfig {
    /// A configuration for these addresses with default timeouts, no token and no TLS. The
    /// first address is used until it fails, then the next, and so on (the same shape as
    /// `EtcdConfig::new` with its endpoints).
    pub fn new<I, S>(addresses: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            addresses: addresses.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    /// Replaces the addresses: the first is used until it fails, then the next, and so on.
    pub fn with_addresses<I, S>(mut self, addresses: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.addresses = addresses.into_iter().map(Into::into).collect();
        self
    }

    /// Checks the rules that can be checked without I/O.
    pub fn validate(&self) -> Result<(), ConsulError> {
        let (tls, connect, request) = (
            self.tls.is_some(),
            self.connect_timeout,
            self.request_timeout,
        );
        check_endpoints("address", &self.addresses, tls, TLS_HINT, connect, request)
            .map_err(ConsulError::config)?;
        if !(1..=MAX_CONNECTIONS).contains(&self.max_connections) {
            return Err(ConsulError::config(format!(
                "max-connections must be between 1 and {MAX_CONNECTIONS}"
            )));
        }
        if self.lock_delay > Duration::from_secs(60) {
            return Err(ConsulError::config(
                "lock-delay must be at most 60s (Consul's maximum)",
            ));
        }
        if let Some(t) = &self.token
            && (t.is_empty()
                || t.expose()
                    .chars()
                    .any(|c| c.is_control() || c.is_whitespace()))
        {
            return Err(ConsulError::config(
                "the ACL token must not be empty or contain whitespace",
            ));
        }
        if let Some(dc) = &self.datacenter
            && (dc.is_empty()
                || !dc
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)))
        {
            return Err(ConsulError::config(
                "datacenter must be a non-empty name of letters, digits, `-`, `_` and `.`",
            ));
        }
        if let Some(tls) = &self.tls {
            tls.check().map_err(ConsulError::config)?;
            if tls.domain_name.is_some() {
                return Err(ConsulError::config(
                    "TLS domain-name is not supported by the Consul backend: \
                     use an address whose host the server certificate names",
                ));
            }
        }
        Ok(())
    }
}

/// Checks node settings against Consul's session TTL range (10 s to 24 h): the entry TTL
/// (`refresh-interval × ttl-factor`) and the lock TTL (`join-timeout + 2 × coordination-timeout`).
///
/// Consul expires a session between its TTL and twice its TTL after the last renewal, so
/// with Consul an entry of a dead node stays visible up to `2 × ttl` (see
/// [`crate::coordination`]).
///
/// ```
/// use std::time::Duration;
/// let mut s = constructr_core::Settings::default(); // refresh 30 s × ttl-factor 2 = 60 s
/// assert!(constructr_consul::validate_settings(&s).is_ok());
/// s.refresh_interval = Duration::from_secs(2);        // 4 s: below Consul's 10 s
/// assert!(constructr_consul::validate_settings(&s).is_err());
/// ```
pub fn validate_settings(settings: &Settings) -> Result<(), ConsulError> {
    check_session_ttl("entry TTL (refresh-interval × ttl-factor)", settings.ttl())?;
    check_session_ttl(
        "lock TTL (join-timeout + 2 × coordination-timeout)",
        settings.lock_ttl(),
    )
}

/// Rejects a TTL Consul sessions cannot have.
pub(crate) fn check_session_ttl(what: &'static str, ttl: Duration) -> Result<(), ConsulError> {
    if (MIN_SESSION_TTL..=MAX_SESSION_TTL).contains(&ttl) {
        Ok(())
    } else {
        Err(ConsulError::UnsupportedTtl { what, ttl })
    }
}

config_debug!(ConsulConfig {
    addresses;
    token, datacenter, tls, lock_delay, connect_timeout, request_timeout, max_connections
});

/// TLS settings for Consul: the shared [`TlsConfig`]. The CA verifies Consul's server
/// certificate (without `ca`, the built-in web roots do); `cert` + `key` are the client's
/// identity for Consul's `verify_incoming`. `domain-name` is not supported (the HTTP
/// client verifies the address's host): [`ConsulConfig::validate`] refuses it.
pub type ConsulTlsConfig = TlsConfig;

#[cfg(test)]
mod tests {
    use super::*;

    /// The TLS key's redaction is `TlsConfig`'s own (tested in `constructr-core`).
    #[test]
    fn debug_and_serialization_hide_the_token() {
        let c = ConsulConfig::new(["https://user:pw@consul:8501"]).with_token("hunter2-token");
        let (debug, toml) = (format!("{c:?}"), toml::to_string(&c).unwrap());
        for shown in [&debug, &toml] {
            assert!(!shown.contains("hunter2"), "{shown}");
        }
        assert!(
            !debug.contains("user:pw") && debug.contains("<redacted>"),
            "{debug}"
        );
    }

    #[test]
    fn deserializes_from_toml() {
        let c: ConsulConfig = toml::from_str(
            r#"
            addresses = ["https://a:8501", "https://b:8501"]
            token = "t0k3n"
            datacenter = "eu-west"
            lock-delay = "1s"
            request-timeout = "1500ms"
            [tls]
            ca = { file = "/etc/consul/ca.pem" }
            cert = { file = "/etc/consul/client.pem" }
            key = { file = "/etc/consul/client-key.pem" }
            "#,
        )
        .unwrap();
        assert_eq!(c.addresses.len(), 2);
        assert_eq!(c.token.as_ref().map(Secret::expose), Some("t0k3n"));
        assert_eq!(c.lock_delay, Duration::from_secs(1));
        assert_eq!(c.request_timeout, Duration::from_millis(1500));
        assert_eq!(c.connect_timeout, Duration::from_secs(3));
        c.validate().unwrap();
    }

    #[test]
    fn validation_rules() {
        assert!(ConsulConfig::default().validate().is_ok());
        assert!(ConsulConfig::new([""]).validate().is_err());
        assert!(
            ConsulConfig::new(["a:8500"])
                .with_addresses(Vec::<String>::new())
                .validate()
                .is_err()
        );
        assert!(
            ConsulConfig::new(["http://a:8500"])
                .with_tls(ConsulTlsConfig::default())
                .validate()
                .is_err(),
            "tls with http address"
        );
        assert!(ConsulConfig::new(["https://a:8501"]).validate().is_err());
        assert!(
            ConsulConfig::new(["https://a:8501"])
                .with_tls(ConsulTlsConfig::default())
                .validate()
                .is_ok()
        );
        let mut tls = ConsulTlsConfig::default();
        tls.cert = Some(PemSource::Pem("x".into()));
        assert!(
            ConsulConfig::new(["a:8501"])
                .with_tls(tls)
                .validate()
                .is_err(),
            "cert without key"
        );
        assert!(
            ConsulConfig::new(["https://a:8501"])
                .with_tls(ConsulTlsConfig::default().with_domain_name("consul.internal"))
                .validate()
                .is_err(),
            "domain-name, which the HTTP client cannot honour"
        );
        assert!(ConsulConfig::new(["a"]).with_token("").validate().is_err());
        assert!(
            ConsulConfig::new(["a"])
                .with_token("a b")
                .validate()
                .is_err()
        );
        assert!(
            ConsulConfig::new(["a"])
                .with_datacenter("dc1&x=y")
                .validate()
                .is_err()
        );
        assert!(
            ConsulConfig::new(["a"])
                .with_request_timeout(Duration::ZERO)
                .validate()
                .is_err()
        );
        assert!(
            ConsulConfig::new(["a"])
                .with_lock_delay(Duration::from_secs(61))
                .validate()
                .is_err()
        );
    }

    #[test]
    fn settings_must_fit_consul_session_ttls() {
        let mut s = Settings::default();
        validate_settings(&s).unwrap();
        s.refresh_interval = Duration::from_secs(4); // ttl 8 s
        let e = validate_settings(&s).unwrap_err();
        assert!(e.to_string().contains("entry TTL"), "{e}");
        assert!(e.to_string().contains("between 10s and 24h"), "{e}");
        s.refresh_interval = Duration::from_secs(5); // ttl 10 s
        validate_settings(&s).unwrap();
        s.join_timeout = Duration::from_secs(2); // lock ttl 8 s
        let e = validate_settings(&s).unwrap_err();
        assert!(e.to_string().contains("lock TTL"), "{e}");
        s.join_timeout = Duration::from_secs(8);
        s.coordination_timeout = Duration::from_secs(1);
        validate_settings(&s).unwrap();
        s.refresh_interval = Duration::from_secs(50_000); // ttl 100,000 s > 24 h
        assert!(validate_settings(&s).is_err());
    }
}
