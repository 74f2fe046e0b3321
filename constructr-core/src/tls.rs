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
