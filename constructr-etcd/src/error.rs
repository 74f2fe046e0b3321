//! `EtcdError`: what can go wrong talking to etcd, and how it maps to
//! [`CoordinationError`](constructr_core::CoordinationError).

use constructr_core::coordination::ErrorKind;
use constructr_core::plumbing::DriverError;

/// An error of the etcd backend.
///
/// Messages never contain secrets: not the password, not the auth token, not key material.
/// `detail` fields carry etcd's own short message (e.g. `etcdserver: no leader`) or the
/// transport's cause (e.g. `tcp connect error: Connection refused`), rendered once when the
/// error is classified.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EtcdError {
    /// The configuration is unusable (no endpoint, a TLS option without an `https` endpoint, ...).
    #[error("invalid etcd configuration: {message}")]
    Config {
        /// Which rule was broken.
        message: String,
    },
    /// A TLS file could not be read.
    #[error(transparent)]
    TlsFile(#[from] constructr_core::tls::PemError),
    /// The endpoint could not be reached, or answered with a transient failure (no leader,
    /// request timed out inside etcd, a stream that broke off). Retrying may help.
    #[error("etcd endpoint {endpoint} unavailable: {detail}")]
    Unavailable {
        /// The endpoint (without any user info).
        endpoint: String,
        /// etcd's or the transport's message.
        detail: String,
    },
    /// The TLS handshake failed over a certificate: etcd's is not trusted (another CA, wrong
    /// name, expired) or etcd refused ours (`--client-cert-auth`). Retrying will not help.
    #[error("TLS handshake with etcd at {endpoint} failed: {detail}")]
    TlsHandshake {
        /// The endpoint (without any user info).
        endpoint: String,
        /// rustls' or the transport's reason, e.g. `invalid peer certificate: UnknownIssuer`.
        detail: String,
    },
    /// The request did not complete within the configured request timeout. Retrying may help.
    #[error("etcd request to {endpoint} timed out")]
    Timeout {
        /// The endpoint (without any user info).
        endpoint: String,
    },
    /// Authentication or authorization failed (wrong user or password, missing permission,
    /// auth not enabled while credentials are configured). Retrying will not help.
    #[error("etcd at {endpoint} refused access: {detail}")]
    Unauthorized {
        /// The endpoint (without any user info).
        endpoint: String,
        /// etcd's message, e.g. `etcdserver: authentication failed, invalid user ID or password`.
        detail: String,
    },
    /// etcd rejected the request for a reason retrying cannot fix.
    #[error("etcd at {endpoint} rejected the request: {detail}")]
    Rejected {
        /// The endpoint (without any user info).
        endpoint: String,
        /// etcd's or the client's message.
        detail: String,
    },
    /// etcd answered something this backend does not expect (e.g. a response without header).
    #[error("unexpected etcd response: {message}")]
    Protocol {
        /// What was unexpected.
        message: String,
    },
}

impl EtcdError {
    constructr_core::plumbing::message_constructors! {
        pub(crate) fn config => Config;
        pub(crate) fn protocol => Protocol;
    }

    /// Whether the error says the endpoint itself is unusable right now, so the request should
    /// be retried on the next endpoint.
    pub(crate) fn is_endpoint_failure(&self) -> bool {
        self.is_retryable()
    }

    /// Classifies an `etcd-client` error of a request sent to `endpoint`.
    pub(crate) fn classify(endpoint: &str, err: etcd_client::Error) -> Self {
        match Self::classify_inner(endpoint, err) {
            // A broken handshake reaches us as a transport error or an `Unavailable` status.
            Self::Unavailable { endpoint, detail }
                if constructr_core::plumbing::is_certificate_failure(&detail) =>
            {
                Self::TlsHandshake { endpoint, detail }
            }
            other => other,
        }
    }

    fn classify_inner(endpoint: &str, err: etcd_client::Error) -> Self {
        use etcd_client::Error as E;
        let endpoint = endpoint.to_owned();
        match err {
            E::GRpcStatus(status) => classify_status(endpoint, &status),
            E::TransportError(e) => Self::Unavailable {
                endpoint,
                detail: constructr_core::error_chain(&e),
            },
            E::IoError(e) => Self::Unavailable {
                endpoint,
                detail: constructr_core::error_chain(&e),
            },
            // Stream set-up/teardown failures of watches and keep-alives: the stream broke off.
            E::WatchError(d) | E::LeaseKeepAliveError(d) => Self::Unavailable {
                endpoint,
                detail: d,
            },
            E::InvalidArgs(d) | E::EndpointError(d) => Self::Config { message: d },
            E::InvalidUri(e) => Self::Config {
                message: format!("endpoint {endpoint} is not a valid URI: {e}"),
            },
            other => Self::Rejected {
                endpoint,
                detail: constructr_core::error_chain(&other),
            },
        }
    }
}

fn classify_status(endpoint: String, status: &tonic::Status) -> EtcdError {
    use tonic::Code;
    let message = status.message();
    let mut detail = format!("{:?}: {}", status.code(), message);
    if let Some(source) = std::error::Error::source(status) {
        detail.push_str(": ");
        detail.push_str(&constructr_core::error_chain(source));
    }
    // etcd reports bad credentials as InvalidArgument and "auth not enabled" as
    // FailedPrecondition (etcdserver/api/v3rpc/rpctypes), so the message decides.
    let auth_message = [
        "authentication failed",
        "user name is empty",
        "authentication is not enabled",
        "invalid auth token",
        "permission denied",
        "user name not found",
    ]
    .iter()
    .any(|m| message.contains(m));
    match status.code() {
        Code::Unauthenticated | Code::PermissionDenied => {
            EtcdError::Unauthorized { endpoint, detail }
        }
        _ if auth_message => EtcdError::Unauthorized { endpoint, detail },
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Cancelled
        | Code::Unknown
        | Code::Aborted
        | Code::ResourceExhausted
        | Code::Internal => EtcdError::Unavailable { endpoint, detail },
        _ => EtcdError::Rejected { endpoint, detail },
    }
}

impl DriverError for EtcdError {
    fn kind(&self) -> ErrorKind {
        match self {
            // In the order of the variants.
            Self::Config { .. } => ErrorKind::Invalid,
            Self::Unavailable { .. } => ErrorKind::Unavailable,
            Self::Timeout { .. } => ErrorKind::Timeout,
            Self::Unauthorized { .. } => ErrorKind::Unauthorized,
            Self::TlsFile(_) | Self::TlsHandshake { .. } | Self::Rejected { .. } => {
                ErrorKind::Permanent
            }
            Self::Protocol { .. } => ErrorKind::Permanent,
        }
    }
}

#[cfg(test)]
mod tests {
    use constructr_core::CoordinationError;

    use super::*;

    fn status(code: tonic::Code, msg: &str) -> etcd_client::Error {
        etcd_client::Error::GRpcStatus(tonic::Status::new(code, msg))
    }

    /// Each case: what etcd answers, the `EtcdError` it is classified as, the kind that
    /// error and its `CoordinationError` have, and what the coordination message says.
    #[test]
    fn statuses_are_classified_by_code_and_message() {
        use tonic::Code;
        type Case = (
            Code,
            &'static str,
            fn(&EtcdError) -> bool,
            ErrorKind,
            &'static str,
        );
        let cases: [Case; 5] = [
            (
                Code::Unavailable,
                "invalid peer certificate: BadSignature",
                |e| matches!(e, EtcdError::TlsHandshake { .. }),
                ErrorKind::Permanent,
                "TLS handshake",
            ),
            (
                Code::InvalidArgument,
                "etcdserver: authentication failed, invalid user ID or password",
                |e| matches!(e, EtcdError::Unauthorized { .. }),
                ErrorKind::Unauthorized,
                "authentication failed",
            ),
            (
                Code::Unavailable,
                "etcdserver: no leader",
                |e| matches!(e, EtcdError::Unavailable { .. }),
                ErrorKind::Unavailable,
                "no leader",
            ),
            (
                Code::PermissionDenied,
                "etcdserver: permission denied",
                |e| matches!(e, EtcdError::Unauthorized { .. }),
                ErrorKind::Unauthorized,
                "permission denied",
            ),
            (
                Code::InvalidArgument,
                "etcdserver: key is not provided",
                |e| matches!(e, EtcdError::Rejected { .. }),
                ErrorKind::Permanent,
                "key is not provided",
            ),
        ];
        for (code, message, is_expected, kind, says) in cases {
            let e = EtcdError::classify("https://etcd:2379", status(code, message));
            assert!(is_expected(&e), "{message}: {e:?}");
            assert_eq!(e.kind(), kind, "{e:?}");
            assert_eq!(e.is_retryable(), kind.is_retryable(), "{e:?}");
            assert_eq!(e.is_endpoint_failure(), kind.is_retryable(), "{e:?}");
            let c = CoordinationError::from(e);
            assert_eq!(c.kind(), kind, "{c:?}");
            assert_eq!(c.is_retryable(), kind.is_retryable(), "{c:?}");
            assert!(c.to_string().contains(says), "{c}");
        }
    }

    #[test]
    fn timeout_maps_to_timeout() {
        let c = CoordinationError::from(EtcdError::Timeout {
            endpoint: "x".into(),
        });
        assert!(matches!(c, CoordinationError::Timeout));
    }
}
