//! `ZooKeeperError`, and how it maps to
//! [`CoordinationError`](constructr_core::CoordinationError).

use constructr_core::coordination::ErrorKind;
use constructr_core::plumbing::DriverError;

/// An error of the ZooKeeper backend. Messages never contain the password.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ZooKeeperError {
    /// The configuration is unusable.
    #[error("invalid ZooKeeper configuration: {message}")]
    Config {
        /// Which rule was broken.
        message: String,
    },
    /// No server answered, the connection broke, or the session expired (a new one is
    /// made): retrying may help.
    #[error("ZooKeeper at {servers} unavailable: {detail}")]
    Unavailable {
        /// The connect string.
        servers: String,
        /// The client's message.
        detail: String,
    },
    /// A request timed out.
    #[error("ZooKeeper request to {servers} timed out")]
    Timeout {
        /// The connect string.
        servers: String,
    },
    /// Authentication failed or an ACL refused the request.
    #[error("ZooKeeper at {servers} refused access: {detail}")]
    Unauthorized {
        /// The connect string.
        servers: String,
        /// The client's message.
        detail: String,
    },
    /// ZooKeeper rejected the request for a reason retrying cannot fix.
    #[error("ZooKeeper at {servers} rejected the request: {detail}")]
    Rejected {
        /// The connect string.
        servers: String,
        /// The client's message.
        detail: String,
    },
}

impl ZooKeeperError {
    /// A configuration error.
    pub fn config(message: impl Into<String>) -> Self {
        Self::Config {
            message: message.into(),
        }
    }

    /// Classifies an error of the client.
    pub fn from_client(servers: &str, error: &zookeeper_client::Error) -> Self {
        use zookeeper_client::Error as E;
        let servers = servers.to_owned();
        let detail = error.to_string();
        match error {
            E::Timeout => Self::Timeout { servers },
            E::NoAuth | E::AuthFailed | E::InvalidAcl => Self::Unauthorized { servers, detail },
            E::ConnectionLoss
            | E::SessionExpired
            | E::SessionMoved
            | E::NoHosts
            | E::ClientClosed
            | E::Throttled
            | E::NotReadOnly => Self::Unavailable { servers, detail },
            _ => Self::Rejected { servers, detail },
        }
    }
}

impl DriverError for ZooKeeperError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::Config { .. } => ErrorKind::Invalid,
            Self::Unavailable { .. } => ErrorKind::Unavailable,
            Self::Timeout { .. } => ErrorKind::Timeout,
            Self::Unauthorized { .. } => ErrorKind::Unauthorized,
            Self::Rejected { .. } => ErrorKind::Permanent,
        }
    }
}
