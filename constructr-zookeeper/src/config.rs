//! `ZooKeeperConfig`: servers, timeouts and digest credentials.

use std::time::Duration;

use constructr_core::plumbing::Secret;
use serde::{Deserialize, Serialize};

use crate::error::ZooKeeperError;

/// How to reach ZooKeeper.
///
/// ```
/// use std::time::Duration;
/// use constructr_zookeeper::ZooKeeperConfig;
///
/// let config = ZooKeeperConfig::new(["zk1:2181", "zk2:2181"])
///     .with_session_timeout(Duration::from_secs(10))
///     .with_user("constructr", "s3cret");
/// config.validate().unwrap();
/// assert!(!format!("{config:?}").contains("s3cret"));
/// ```
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ZooKeeperConfig {
    /// The servers, `host:port` (the client moves to the next one when one is down).
    /// Default `127.0.0.1:2181`.
    pub servers: Vec<String>,
    /// The session timeout: how long after this process died (or lost ZooKeeper) its
    /// entries and lock disappear. The server bounds it (by default to 2–20 tick times,
    /// 4–40 s). Default 10 s; it must not exceed the nodes' TTL.
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// How long to try to connect. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// `digest` user (with `password`): created znodes are then readable and writable by
    /// this user only (`creator_all` ACL).
    pub user: Option<String>,
    /// The `digest` password. Never serialized, never shown by `Debug`.
    #[serde(skip_serializing)]
    pub password: Option<Secret>,
}

impl Default for ZooKeeperConfig {
    fn default() -> Self {
        Self {
            servers: vec!["127.0.0.1:2181".into()],
            session_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            user: None,
            password: None,
        }
    }
}

impl std::fmt::Debug for ZooKeeperConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZooKeeperConfig")
            .field("servers", &self.servers)
            .field("session_timeout", &self.session_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("user", &self.user)
            .field("password", &self.password)
            .finish()
    }
}

impl ZooKeeperConfig {
    /// A configuration for these servers with default timeouts and no credentials.
    pub fn new<I, S>(servers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            servers: servers.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    /// Sets the session timeout.
    pub fn with_session_timeout(mut self, timeout: Duration) -> Self {
        self.session_timeout = timeout;
        self
    }

    /// Sets the connect timeout.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Authenticates with the `digest` scheme as `user` with `password`.
    pub fn with_user(mut self, user: impl Into<String>, password: impl Into<Secret>) -> Self {
        self.user = Some(user.into());
        self.password = Some(password.into());
        self
    }

    /// The connect string, `h1:2181,h2:2181`.
    pub fn connect_string(&self) -> String {
        self.servers.join(",")
    }

    /// Checks what can be checked without I/O: servers as `host:port`, timeouts above zero,
    /// credentials given together.
    pub fn validate(&self) -> Result<(), ZooKeeperError> {
        if self.servers.is_empty() {
            return Err(ZooKeeperError::config("at least one server is needed"));
        }
        for s in &self.servers {
            let valid = s.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty()
                    && !host.contains(['/', ',', ' ', '@'])
                    && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if !valid {
                return Err(ZooKeeperError::config(format!(
                    "server {s:?} is not host:port"
                )));
            }
        }
        if self.session_timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(ZooKeeperError::config("timeouts must be above zero"));
        }
        if self.session_timeout > Duration::from_secs(i32::MAX as u64 / 1000) {
            return Err(ZooKeeperError::config("session timeout too large"));
        }
        match (&self.user, &self.password) {
            (Some(u), Some(_)) if u.is_empty() || u.contains(':') => Err(ZooKeeperError::config(
                "user must be non-empty and without ':'",
            )),
            (Some(_), None) | (None, Some(_)) => Err(ZooKeeperError::config(
                "user and password must be given together",
            )),
            _ => Ok(()),
        }
    }
}
