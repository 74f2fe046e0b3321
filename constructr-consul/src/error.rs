//! `ConsulError`: what can go wrong talking to Consul, and how it maps to
//! [`CoordinationError`](constructr_core::CoordinationError).

use std::time::Duration;

use constructr_core::coordination::ErrorKind;
use constructr_core::plumbing::DriverError;

/// An error of the Consul backend.
///
/// Messages never contain secrets: not the ACL token, not key material. `detail` fields carry
/// Consul's own short answer (e.g. `Permission denied`, `No cluster leader`) or the
/// transport's cause (e.g. `tcp connect error: Connection refused`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsulError {
    /// The configuration is unusable (no address, a client key without a certificate, ...).
    #[error("invalid Consul configuration: {message}")]
    Config {
        /// Which rule was broken.
        message: String,
    },
    /// A TLS file could not be read.
    #[error(transparent)]
    TlsFile(#[from] constructr_core::tls::PemError),
    /// TLS material could not be parsed, or the HTTP client could not be built with it.
    #[error("unusable TLS {what}")]
    Tls {
        /// What was unusable.
        what: &'static str,
        /// reqwest's error.
        #[source]
        source: reqwest::Error,
    },
    /// A TTL outside what Consul sessions support (10 s to 24 h).
    #[error(
        "{what} {ttl:?} is not supported by Consul: session TTLs must be between 10s and 24h \
         (with ttl = refresh-interval × ttl-factor, use e.g. refresh-interval = 5s and ttl-factor >= 2)"
    )]
    UnsupportedTtl {
        /// Which TTL (`entry TTL`, `lock TTL`).
        what: &'static str,
        /// The requested TTL.
        ttl: Duration,
    },
    /// The address could not be reached, or Consul answered with a transient failure (5xx,
    /// 429: no leader, an RPC that timed out inside Consul). Retrying may help.
    #[error("Consul at {address} unavailable: {detail}")]
    Unavailable {
        /// The address (without any user info).
        address: String,
        /// Consul's or the transport's message.
        detail: String,
    },
    /// The TLS handshake failed over a certificate: the server's is not trusted (wrong CA,
    /// wrong name, expired) or the server refused ours. Retrying will not help.
    #[error("TLS handshake with Consul at {address} failed: {detail}")]
    TlsHandshake {
        /// The address (without any user info).
        address: String,
        /// rustls' reason, e.g. `invalid peer certificate: UnknownIssuer`.
        detail: String,
    },
    /// The request did not complete within the configured request timeout. Retrying may help.
    #[error("Consul request to {address} timed out")]
    Timeout {
        /// The address (without any user info).
        address: String,
    },
    /// The ACL token is missing, unknown or lacks a permission. Retrying will not help.
    #[error("Consul at {address} refused access: {detail} (check the ACL token and its policy)")]
    Unauthorized {
        /// The address (without any user info).
        address: String,
        /// Consul's message, e.g. `ACL not found` or `Permission denied`.
        detail: String,
    },
    /// Consul rejected the request for a reason retrying cannot fix.
    #[error("Consul at {address} rejected the request ({status}): {detail}")]
    Rejected {
        /// The address (without any user info).
        address: String,
        /// The HTTP status.
        status: u16,
        /// Consul's message.
        detail: String,
    },
    /// Consul answered something this backend does not expect.
    #[error("unexpected Consul response: {message}")]
    Protocol {
        /// What was unexpected.
        message: String,
    },
}

impl DriverError for ConsulError {
    fn kind(&self) -> ErrorKind {
        match self {
            // In the order of the variants.
            Self::Config { .. } | Self::UnsupportedTtl { .. } => ErrorKind::Invalid,
            Self::TlsFile(_) | Self::Tls { .. } => ErrorKind::Permanent,
            Self::Unavailable { .. } => ErrorKind::Unavailable,
            Self::TlsHandshake { .. } => ErrorKind::Permanent,
            Self::Timeout { .. } => ErrorKind::Timeout,
            Self::Unauthorized { .. } => ErrorKind::Unauthorized,
            Self::Rejected { status: 400, .. } => ErrorKind::Invalid,
            Self::Rejected { .. } | Self::Protocol { .. } => ErrorKind::Permanent,
        }
    }
}

impl ConsulError {
    constructr_core::plumbing::message_constructors! {
        pub(crate) fn config => Config;
        pub(crate) fn protocol => Protocol;
    }

    /// Classifies a transport error of a request sent to `address`.
    pub(crate) fn transport(address: &str, err: &reqwest::Error) -> Self {
        let address = address.to_owned();
        if err.is_timeout() {
            return Self::Timeout { address };
        }
        // reqwest's messages name the URL; ours carries no secrets (the token is a header).
        let detail = constructr_core::error_chain(err);
        if constructr_core::plumbing::is_certificate_failure(&detail) {
            return Self::TlsHandshake { address, detail };
        }
        Self::Unavailable { address, detail }
    }

    /// Classifies a non-success HTTP answer. Consul's ACL denials come as 403 (and, from
    /// some RPC paths, as a 500 whose body says so): the body decides first.
    pub(crate) fn from_status(address: &str, status: u16, body: &str) -> Self {
        let address = address.to_owned();
        let detail = short(body);
        if is_acl_denial(body) || status == 401 || status == 403 {
            return Self::Unauthorized { address, detail };
        }
        match status {
            429 | 500..=599 => Self::Unavailable { address, detail },
            _ => Self::Rejected {
                address,
                status,
                detail,
            },
        }
    }
}

/// Whether a Consul message is an ACL denial.
pub(crate) fn is_acl_denial(message: &str) -> bool {
    ["Permission denied", "ACL not found"]
        .iter()
        .any(|m| message.contains(m))
}

/// Consul's answers are short plain text; keep a bounded, single-line version.
fn short(body: &str) -> String {
    let line = body.trim().replace(['\n', '\r'], " ");
    if line.is_empty() {
        return "(empty answer)".to_owned();
    }
    match line.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &line[..i]),
        None => line,
    }
}

#[cfg(test)]
mod tests {
    use constructr_core::CoordinationError;

    use super::*;

    #[test]
    fn acl_answers_are_unauthorized_and_permanent() {
        for (status, body) in [
            (403, "ACL not found"),
            (403, "Permission denied"),
            (500, "rpc error making call: Permission denied"),
        ] {
            let e = ConsulError::from_status("http://c:8500", status, body);
            assert!(matches!(e, ConsulError::Unauthorized { .. }), "{e:?}");
            assert!(!e.is_retryable());
            let c = CoordinationError::from(e);
            assert!(matches!(c, CoordinationError::Unauthorized { .. }), "{c:?}");
            assert!(c.to_string().contains(body), "{c}");
        }
    }

    #[test]
    fn server_errors_are_retryable() {
        let e = ConsulError::from_status("x", 500, "No cluster leader");
        assert!(e.is_retryable(), "{e:?}");
        let c = CoordinationError::from(e);
        assert!(c.is_retryable());
        assert!(c.to_string().contains("No cluster leader"), "{c}");
        assert!(ConsulError::from_status("x", 429, "").is_retryable());
    }

    #[test]
    fn bad_request_is_invalid() {
        let c = CoordinationError::from(ConsulError::from_status("x", 400, "Bad request"));
        assert!(matches!(c, CoordinationError::Invalid { .. }), "{c:?}");
        let c = CoordinationError::from(ConsulError::from_status("x", 405, "Method"));
        assert!(matches!(c, CoordinationError::Permanent { .. }), "{c:?}");
    }

    #[test]
    fn unsupported_ttl_is_invalid_with_a_clear_message() {
        let c = CoordinationError::from(ConsulError::UnsupportedTtl {
            what: "entry TTL",
            ttl: Duration::from_secs(3),
        });
        assert!(matches!(c, CoordinationError::Invalid { .. }), "{c:?}");
        assert!(c.to_string().contains("between 10s and 24h"), "{c}");
    }

    #[test]
    fn timeout_maps_to_timeout() {
        let c = CoordinationError::from(ConsulError::Timeout {
            address: "x".into(),
        });
        assert!(matches!(c, CoordinationError::Timeout));
    }

    #[test]
    fn long_answers_are_shortened() {
        let e = ConsulError::from_status("x", 500, &"y".repeat(1000));
        assert!(e.to_string().len() < 400);
    }
}
