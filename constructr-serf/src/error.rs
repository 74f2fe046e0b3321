//! `SerfError`: what can go wrong talking to a Serf agent, and how it maps to
//! [`CoordinationError`](constructr_core::CoordinationError).

use constructr_core::coordination::ErrorKind;
use constructr_core::plumbing::DriverError;

/// An error of the Serf RPC client or the Serf backend.
///
/// Messages never contain the RPC auth key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SerfError {
    /// The configuration is unusable.
    #[error("invalid Serf configuration: {message}")]
    Config {
        /// Which rule was broken.
        message: String,
    },
    /// The agent's RPC address could not be reached or the connection broke. Retrying
    /// (after the agent restarted) may help.
    #[error("Serf agent at {addr} unavailable")]
    Io {
        /// The RPC address.
        addr: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The agent closed the connection. Serf does this after an unknown command or an
    /// invalid regular expression in `members-filtered`, and when it shuts down.
    #[error("Serf agent at {addr} closed the RPC connection{}", while_doing(.command))]
    ConnectionClosed {
        /// The RPC address.
        addr: String,
        /// The command that was pending, if any.
        command: Option<String>,
    },
    /// The request did not complete in time. Retrying may help.
    #[error("Serf RPC command `{command}` timed out")]
    Timeout {
        /// The command.
        command: String,
    },
    /// The agent refused the auth key (`Invalid authentication token`), or requires one
    /// that is not configured (`Authentication required`). Retrying will not help.
    #[error("Serf agent refused RPC access: {message}")]
    Unauthorized {
        /// Serf's message.
        message: String,
    },
    /// The agent answered a command with an error (e.g. `Unsupported command`, a failed
    /// join, `No pending queries matching ID`, tags over Serf's 512-byte limit).
    #[error("Serf RPC command `{command}` failed: {message}")]
    Agent {
        /// The command.
        command: String,
        /// Serf's message.
        message: String,
    },
    /// The agent sent something this client does not understand.
    #[error("unexpected Serf RPC data: {message}")]
    Protocol {
        /// What was unexpected.
        message: String,
    },
}

fn while_doing(command: &Option<String>) -> String {
    match command {
        Some(c) => format!(" while `{c}` was pending"),
        None => String::new(),
    }
}

impl SerfError {
    constructr_core::plumbing::message_constructors! {
        pub(crate) fn config => Config;
        pub(crate) fn protocol => Protocol;
    }
}

impl DriverError for SerfError {
    fn kind(&self) -> ErrorKind {
        match self {
            // In the order of the variants.
            Self::Config { .. } => ErrorKind::Invalid,
            Self::Io { .. } | Self::ConnectionClosed { .. } => ErrorKind::Unavailable,
            Self::Timeout { .. } => ErrorKind::Timeout,
            Self::Unauthorized { .. } => ErrorKind::Unauthorized,
            Self::Agent { .. } | Self::Protocol { .. } => ErrorKind::Permanent,
        }
    }
}

#[cfg(test)]
mod tests {
    use constructr_core::CoordinationError;

    use super::*;

    #[test]
    fn mapping_keeps_retryability() {
        let io = SerfError::Io {
            addr: "127.0.0.1:7373".into(),
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        };
        assert!(io.is_retryable());
        let c = CoordinationError::from(io);
        assert!(c.is_retryable());
        assert!(c.to_string().contains("127.0.0.1:7373"), "{c}");

        let auth = SerfError::Unauthorized {
            message: "Invalid authentication token".into(),
        };
        assert!(!auth.is_retryable());
        assert!(matches!(
            CoordinationError::from(auth),
            CoordinationError::Unauthorized { .. }
        ));
        assert!(matches!(
            CoordinationError::from(SerfError::Timeout {
                command: "members".into()
            }),
            CoordinationError::Timeout
        ));
        let closed = SerfError::ConnectionClosed {
            addr: "a".into(),
            command: Some("bogus".into()),
        };
        assert_eq!(
            closed.to_string(),
            "Serf agent at a closed the RPC connection while `bogus` was pending"
        );
    }
}
