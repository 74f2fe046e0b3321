//! Settings types shared by the backends' TLS configuration.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where PEM data comes from: `{ file = "/etc/ssl/ca.pem" }` or `{ pem = "-----BEGIN ..." }`.
///
/// `Debug` never shows inline PEM text (it may be a private key); backends never serialize
/// an inline key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PemSource {
    /// A file read when the backend is created.
    File(PathBuf),
    /// The PEM text itself.
    Pem(String),
}

impl PemSource {
    /// Reads the PEM bytes (from the file, or the inline text).
    pub fn read(&self) -> std::io::Result<Vec<u8>> {
        match self {
            PemSource::File(path) => std::fs::read(path),
            PemSource::Pem(pem) => Ok(pem.clone().into_bytes()),
        }
    }

    /// The file, for a file source.
    pub fn path(&self) -> Option<&Path> {
        match self {
            PemSource::File(path) => Some(path),
            PemSource::Pem(_) => None,
        }
    }

    /// `skip_serializing_if` helper for private keys: only a file path may be written out.
    pub fn is_inline_or_none(source: &Option<PemSource>) -> bool {
        !matches!(source, Some(PemSource::File(_)))
    }
}

impl fmt::Debug for PemSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PemSource::File(p) => write!(f, "file {}", p.display()),
            PemSource::Pem(_) => f.write_str("<inline PEM>"),
        }
    }
}

/// A PEM source that could not be read, naming what it was for.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the TLS {what} {}", match .path { Some(p) => format!("file {}", p.display()), None => "(inline PEM)".to_owned() })]
pub struct PemError {
    /// `CA certificate`, `client certificate` or `client key`.
    pub what: &'static str,
    /// The configured file (none for inline PEM).
    pub path: Option<PathBuf>,
    /// The I/O error.
    #[source]
    pub source: std::io::Error,
}

/// Reads a PEM source; the error names `what` it is (`"CA certificate"`, ...) and the file.
///
/// ```
/// use constructr_core::tls::{load_pem, PemSource};
///
/// let pem = load_pem(&PemSource::Pem("-----BEGIN CERTIFICATE-----".into()), "CA certificate");
/// assert!(pem.unwrap().starts_with(b"-----BEGIN"));
/// let missing = load_pem(&PemSource::File("/no/such/ca.pem".into()), "CA certificate");
/// assert_eq!(missing.unwrap_err().to_string(), "cannot read the TLS CA certificate file /no/such/ca.pem");
/// ```
pub fn load_pem(source: &PemSource, what: &'static str) -> Result<Vec<u8>, PemError> {
    source.read().map_err(|e| PemError {
        what,
        path: source.path().map(Path::to_path_buf),
        source: e,
    })
}

/// A backend's TLS settings (rustls): the CA that verifies the server's certificate, the
/// client's own certificate and key (for servers that verify clients), and a server name
/// to verify instead of the endpoint's host.
///
/// It is the `[tls]` table of a backend's settings. Inline PEM is never shown by `Debug`;
/// an inline key is never serialized (only a key *file* is written out).
///
/// ```
/// use constructr_core::tls::{PemSource, TlsConfig};
///
/// let tls = TlsConfig::new(PemSource::File("/etc/ssl/ca.pem".into()))
///     .with_client_identity(
///         PemSource::File("/etc/ssl/node.pem".into()),
///         PemSource::Pem("-----BEGIN PRIVATE KEY----- secret".into()),
///     );
/// assert!(tls.check().is_ok());
/// assert!(!format!("{tls:?}").contains("secret"));
/// let mut half = tls.clone();
/// half.key = None;
/// assert_eq!(half.check().unwrap_err(), "TLS client cert and key must be given together");
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
#[non_exhaustive]
pub struct TlsConfig {
    /// CA certificate(s) in PEM. When set, only these are trusted (whether a backend
    /// falls back to built-in roots without it is the backend's to document).
    pub ca: Option<PemSource>,
    /// Client certificate in PEM.
    pub cert: Option<PemSource>,
    /// Client private key in PEM. An inline key is never serialized nor shown by `Debug`.
    #[serde(skip_serializing_if = "PemSource::is_inline_or_none")]
    pub key: Option<PemSource>,
    /// Server name to verify instead of the endpoint's host.
    pub domain_name: Option<String>,
}

impl TlsConfig {
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

    /// Checks the rules that hold for every backend: a client certificate and its key come
    /// together, and a server name is not empty.
    pub fn check(&self) -> Result<(), &'static str> {
        if self.cert.is_some() != self.key.is_some() {
            return Err("TLS client cert and key must be given together");
        }
        if self
            .domain_name
            .as_deref()
            .is_some_and(|n| n.trim().is_empty())
        {
            return Err("TLS domain-name must not be empty");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_inline_key() -> TlsConfig {
        TlsConfig::new(PemSource::File("/ca.pem".into())).with_client_identity(
            PemSource::File("/c.pem".into()),
            PemSource::Pem("-----BEGIN PRIVATE KEY----- SECRETKEY".into()),
        )
    }

    #[test]
    fn debug_hides_an_inline_key_and_shows_files() {
        let d = format!("{:?}", with_inline_key());
        assert!(!d.contains("SECRETKEY"), "{d}");
        assert!(d.contains("/ca.pem") && d.contains("/c.pem"), "{d}");
    }

    #[test]
    fn serialization_skips_an_inline_key_but_keeps_a_key_file() {
        let s = serde_json::to_string(&with_inline_key()).unwrap();
        assert!(!s.contains("SECRETKEY") && !s.contains("\"key\""), "{s}");
        assert!(s.contains("/c.pem"), "{s}");
        let file_key = TlsConfig {
            key: Some(PemSource::File("/k.pem".into())),
            ..with_inline_key()
        };
        let s = serde_json::to_string(&file_key).unwrap();
        assert!(s.contains("/k.pem"), "{s}");
    }

    #[test]
    fn deserializes_the_tls_table_and_refuses_unknown_keys() {
        let t: TlsConfig =
            serde_json::from_str(r#"{"ca":{"file":"/ca.pem"},"domain-name":"etcd.internal"}"#)
                .unwrap();
        assert_eq!(t.domain_name.as_deref(), Some("etcd.internal"));
        assert!(serde_json::from_str::<TlsConfig>(r#"{"cafile":"/ca.pem"}"#).is_err());
    }

    #[test]
    fn check_refuses_half_an_identity_and_an_empty_name() {
        assert!(with_inline_key().check().is_ok());
        assert!(TlsConfig::default().check().is_ok());
        let no_key = TlsConfig {
            key: None,
            ..with_inline_key()
        };
        assert!(no_key.check().is_err());
        assert!(TlsConfig::default().with_domain_name(" ").check().is_err());
    }
}
