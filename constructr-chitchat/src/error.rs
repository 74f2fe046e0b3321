//! `ChitchatError`: what can go wrong setting up or running the chitchat cluster.

use constructr_core::ClusterError;

/// An error of the chitchat cluster adapter.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChitchatError {
    /// The configuration is unusable; the message names the setting.
    #[error("invalid chitchat configuration: {message}")]
    Config {
        /// Which rule was broken.
        message: String,
    },
    /// A seed's address (from the coordination service) is not an `ip:port` socket address.
    #[error("seed {seed} has no gossip address (ip:port)")]
    SeedAddress {
        /// The seed as registered (`address#incarnation`).
        seed: String,
        /// Why the address does not parse.
        #[source]
        source: std::net::AddrParseError,
    },
    /// chitchat could not start (typically: the gossip address cannot be bound).
    #[error("cannot start chitchat on {listen_addr}: {detail}")]
    Start {
        /// The bind address.
        listen_addr: std::net::SocketAddr,
        /// chitchat's message, e.g. `failed to bind to 127.0.0.1:7946/UDP for gossip`.
        detail: String,
    },
    /// chitchat stopped while this node was joining (a concurrent `leave`).
    #[error("chitchat stopped while joining")]
    Stopped,
    /// Shutting chitchat down failed.
    #[error("chitchat did not shut down cleanly: {detail}")]
    Shutdown {
        /// chitchat's message.
        detail: String,
    },
}

impl ChitchatError {
    pub(crate) fn config(message: impl Into<String>) -> Self {
        Self::Config {
            message: message.into(),
        }
    }

    /// Whether trying again may help (a start or join can, a bad configuration cannot).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Start { .. } | Self::Stopped | Self::Shutdown { .. }
        )
    }

    /// The message with its causes, for [`ClusterError`]'s single message field.
    fn chain(&self) -> String {
        constructr_core::error_chain(self)
    }

    pub(crate) fn into_join(self) -> ClusterError {
        ClusterError::Join {
            message: self.chain(),
        }
    }

    pub(crate) fn into_leave(self) -> ClusterError {
        ClusterError::Leave {
            message: self.chain(),
        }
    }
}
