//! `EtcdConfig`: endpoints, timeouts, credentials and TLS of the etcd backend.
//!
//! The key prefix is not configured here: it comes from the core
//! [`Scope`](constructr_core::Scope) (`key-prefix` + `cluster-name` in the node settings).

use std::fmt;
use std::time::Duration;

use constructr_core::plumbing::{Secret, check_endpoints, display_url};
pub use constructr_core::tls::PemSource;
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
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
#[non_exhaustive]
pub struct EtcdConfig {
    /// etcd client URLs (`http://host:2379`, `https://host:2379`, or `host:2379`, which
    /// means https when `tls` is set). Requests go to one endpoint at a time; when it is
    /// unavailable the request moves on to the next one. Default `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// Maximum time to establish a connection to one endpoint. Default 3 s.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Maximum time for one request to one endpoint. Default 3 s.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// User name for etcd's authentication (needs `password`).
    pub user: Option<String>,
    /// Password of `user`. Never serialized, never shown by `Debug`.
    #[serde(skip_serializing)]
    pub password: Option<Secret>,
    /// TLS (rustls): CA certificate and an optional client certificate and key.
    pub tls: Option<EtcdTlsConfig>,
}

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

    /// Authenticates as `user` with `password`.
    pub fn with_user(mut self, user: impl Into<String>, password: impl Into<Secret>) -> Self {
        self.user = Some(user.into());
        self.password = Some(password.into());
        self
    }

    /// Uses TLS.
    pub fn with_tls(mut self, tls: EtcdTlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Sets the connect timeout.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the per-request timeout.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Checks the rules that can be checked without I/O.
    pub fn validate(&self) -> Result<(), EtcdError> {
        check_endpoints(
            "endpoint",
            &self.endpoints,
            self.tls.is_some(),
            "(at least `ca`)",
            self.connect_timeout,
            self.request_timeout,
        )
        .map_err(EtcdError::config)?;
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
        if let Some(tls) = &self.tls
            && tls.cert.is_some() != tls.key.is_some()
        {
            return Err(EtcdError::config(
                "TLS client cert and key must be given together",
            ));
        }
        Ok(())
    }
}

impl fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdConfig")
            .field(
                "endpoints",
                &self
                    .endpoints
                    .iter()
                    .map(|e| display_url(e))
                    .collect::<Vec<_>>(),
            )
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("user", &self.user)
            .field("password", &self.password)
            .field("tls", &self.tls)
            .finish()
    }
}

/// TLS settings (rustls). The CA verifies etcd's server certificate; `cert` + `key` are the
/// client's identity for etcd's `--client-cert-auth`.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
#[non_exhaustive]
pub struct EtcdTlsConfig {
    /// CA certificate(s) in PEM. Required: this backend trusts no built-in roots.
    pub ca: Option<PemSource>,
    /// Client certificate in PEM.
    pub cert: Option<PemSource>,
    /// Client private key in PEM. An inline key is never serialized nor shown by `Debug`.
    #[serde(skip_serializing_if = "PemSource::is_inline_or_none")]
    pub key: Option<PemSource>,
    /// Server name to verify instead of the endpoint's host.
    pub domain_name: Option<String>,
}

impl EtcdTlsConfig {
    /// TLS verifying the server with this CA.
    pub fn new(ca: PemSource) -> Self {
        Self {
            ca: Some(ca),
            ..Self::default()
        }
    }

    /// Presents a client certificate.
    pub fn with_client_identity(mut self, cert: PemSource, key: PemSource) -> Self {
        self.cert = Some(cert);
        self.key = Some(key);
        self
    }

    /// Verifies the server certificate for this name.
    pub fn with_domain_name(mut self, name: impl Into<String>) -> Self {
        self.domain_name = Some(name.into());
        self
    }
}

impl fmt::Debug for EtcdTlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdTlsConfig")
            .field("ca", &self.ca)
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("domain_name", &self.domain_name)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_password_and_inline_key() {
        let c = EtcdConfig::new(["https://user:pw@etcd:2379"])
            .with_user("root", "hunter2")
            .with_tls(
                EtcdTlsConfig::new(PemSource::File("/ca.pem".into())).with_client_identity(
                    PemSource::File("/c.pem".into()),
                    PemSource::Pem("-----BEGIN PRIVATE KEY----- SECRETKEY".into()),
                ),
            );
        let d = format!("{c:?}");
        assert!(!d.contains("hunter2"), "{d}");
        assert!(!d.contains("SECRETKEY"), "{d}");
        assert!(!d.contains("user:pw"), "{d}");
        assert!(d.contains("root") && d.contains("/ca.pem"), "{d}");
    }

    #[test]
    fn serialization_skips_secrets() {
        let c = EtcdConfig::new(["https://etcd:2379"])
            .with_user("root", "hunter2")
            .with_tls(
                EtcdTlsConfig::new(PemSource::File("/ca.pem".into())).with_client_identity(
                    PemSource::File("/c.pem".into()),
                    PemSource::Pem("SECRETKEY".into()),
                ),
            );
        let s = serde_json::to_string(&c).unwrap();
        assert!(!s.contains("hunter2") && !s.contains("SECRETKEY"), "{s}");
    }

    #[test]
    fn deserializes_from_toml() {
        let c: EtcdConfig = toml::from_str(
            r#"
            endpoints = ["https://a:2379", "https://b:2379"]
            request-timeout = "1500ms"
            user = "constructr"
            password = "pw"
            [tls]
            ca = { file = "/etc/etcd/ca.pem" }
            cert = { file = "/etc/etcd/client.pem" }
            key = { file = "/etc/etcd/client-key.pem" }
            "#,
        )
        .unwrap();
        assert_eq!(c.endpoints.len(), 2);
        assert_eq!(c.request_timeout, Duration::from_millis(1500));
        assert_eq!(c.connect_timeout, Duration::from_secs(3));
        c.validate().unwrap();
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
