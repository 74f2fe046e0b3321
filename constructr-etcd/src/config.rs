//! `EtcdConfig`: endpoints, timeouts, credentials and TLS of the etcd backend.
//!
//! The key prefix is not configured here: it comes from the core
//! [`Scope`](constructr_core::Scope) (`key-prefix` + `cluster-name` in the node settings).

use std::time::Duration;

use constructr_core::plumbing::{Secret, check_endpoints, config_debug};
pub use constructr_core::tls::{PemSource, TlsConfig};
use derive_setters::Setters;
use serde::{Deserialize, Serialize};

use crate::error::EtcdError;

/// How to reach etcd.
///
/// Deserializes from kebab-case fields (`request-timeout = "2s"`). The password and an
/// inline client key are never serialized and never shown by `Debug`.
///
/// ```
/// use std::time::Duration;
/// use constructr_etcd::EtcdConfig;
///
/// let config = EtcdConfig::new(["http://10.0.0.1:2379", "http://10.0.0.2:2379"])
///     .with_user("constructr", "s3cret")
///     .with_request_timeout(Duration::from_secs(2));
/// assert!(!format!("{config:?}").contains("s3cret"));
/// ```
#[derive(Clone, PartialEq, Serialize, Deserialize, Setters)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
#[setters(prefix = "with_", strip_option)]
#[non_exhaustive]
pub struct EtcdConfig {
    /// etcd client URLs (`http://host:2379`, `https://host:2379`, or `host:2379`, which
    /// means https when `tls` is set). Requests go to one endpoint at a time; when it is
    /// unavailable the request moves on to the next one. Default `http://127.0.0.1:2379`.
    #[setters(skip)] // `new` and `with_endpoints` take any iterator of strings
    pub endpoints: Vec<String>,
    /// Maximum time to establish a connection to one endpoint. Default 3 s.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Maximum time for one request to one endpoint. Default 3 s.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// User name for etcd's authentication (needs `password`).
    #[setters(skip)] // `with_user` sets it together with `password`
    pub user: Option<String>,
    /// Password of `user`. Never serialized, never shown by `Debug`.
    #[serde(skip_serializing)]
    #[setters(skip)]
    pub password: Option<Secret>,
    /// TLS (rustls): CA certificate and an optional client certificate and key.
    pub tls: Option<EtcdTlsConfig>,
}

/// The end of the message for an `https://` endpoint without TLS settings.
const TLS_HINT: &str = "(at least `ca`)";

impl Default for EtcdConfig {
    fn default() -> Self {
        Self {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(3),
            user: None,
            password: None,
            tls: None,
        }
    }
}

impl EtcdConfig {
    /// A configuration for these endpoints with default timeouts, no auth and no TLS.
    pub fn new<I, S>(endpoints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    /// Replaces the endpoints: the first is used until it fails, then the next, and so on.
    pub fn with_endpoints<I, S>(mut self, endpoints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.endpoints = endpoints.into_iter().map(Into::into).collect();
        self
    }

    /// Authenticates as `user` with `password`.
    pub fn with_user(mut self, user: impl Into<String>, password: impl Into<Secret>) -> Self {
        self.user = Some(user.into());
        self.password = Some(password.into());
        self
    }

    /// Checks the rules that can be checked without I/O: credentials, endpoints and
    /// timeouts, TLS files named or given.
    pub fn validate(&self) -> Result<(), EtcdError> {
        match (&self.user, &self.password) {
            (Some(u), Some(_)) if u.is_empty() => {
                return Err(EtcdError::config("user must not be empty"));
            }
            (Some(_), None) | (None, Some(_)) => {
                return Err(EtcdError::config(
                    "user and password must be given together",
                ));
            }
            _ => {}
        }
        let (connect, request) = (self.connect_timeout, self.request_timeout);
        let tls = self.tls.is_some();
        check_endpoints("endpoint", &self.endpoints, tls, TLS_HINT, connect, request)
            .map_err(EtcdError::config)?;
        if let Some(tls) = &self.tls {
            tls.check().map_err(EtcdError::config)?;
        }
        Ok(())
    }
}

config_debug!(EtcdConfig {
    endpoints;
    connect_timeout, request_timeout, user, password, tls
});

/// TLS settings for etcd: the shared [`TlsConfig`]. The CA (required: this backend trusts
/// no built-in roots) verifies etcd's server certificate; `cert` + `key` are the client's
/// identity for etcd's `--client-cert-auth`.
pub type EtcdTlsConfig = TlsConfig;

#[cfg(test)]
mod tests {
    use super::*;

    /// The TLS key's redaction is `TlsConfig`'s own (tested in `constructr-core`).
    #[test]
    fn debug_and_serialization_hide_the_password() {
        let c = EtcdConfig::new(["https://user:pw@etcd:2379"]).with_user("root", "hunter2");
        let d = format!("{c:?}");
        assert!(!d.contains("hunter2") && !d.contains("user:pw"), "{d}");
        assert!(d.contains("root"), "{d}");
        let s = serde_json::to_string(&c).unwrap();
        assert!(!s.contains("hunter2"), "{s}");
    }

    #[test]
    fn deserializes_from_toml() {
        let c: EtcdConfig = toml::from_str(
            r#"
            endpoints = ["https://a:2379", "https://b:2379"]
            request-timeout = "1500ms"
            user = "constructr"
            password = "pw"
            # dotted keys: the same tables as `ca = { file = "..." }`
            tls.ca.file = "/etc/etcd/ca.pem"
            tls.cert.file = "/etc/etcd/client.pem"
            tls.key.file = "/etc/etcd/client-key.pem"
            "#,
        )
        .unwrap();
        c.validate().unwrap();
        let timeouts = (c.request_timeout, c.connect_timeout);
        assert_eq!(
            timeouts,
            (Duration::from_millis(1500), Duration::from_secs(3))
        );
        assert_eq!(c.endpoints.len(), 2);
    }

    #[test]
    fn validation_rules() {
        assert!(EtcdConfig::new(Vec::<String>::new()).validate().is_err());
        assert!(EtcdConfig::new(["http://a:2379"]).validate().is_ok());
        let mut c = EtcdConfig::new(["http://a:2379"]);
        c.user = Some("u".into());
        assert!(c.validate().is_err(), "user without password");
        let c = EtcdConfig::new(["http://a:2379"])
            .with_tls(EtcdTlsConfig::new(PemSource::Pem("x".into())));
        assert!(c.validate().is_err(), "tls with http endpoint");
        assert!(
            EtcdConfig::new(["https://a:2379"]).validate().is_err(),
            "https without tls"
        );
        let c = EtcdConfig::new(["a:2379"]).with_request_timeout(Duration::ZERO);
        assert!(c.validate().is_err());
    }
}
