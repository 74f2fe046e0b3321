//! [`CoordinationUrl`]: one string that says which coordination service to use and how to
//! reach it (`etcd+https://root@10.0.0.1:2379,10.0.0.2:2379?ca=/etc/etcd/ca.pem`).
//!
//! # Forms
//!
//! | URL | backend |
//! |---|---|
//! | `memory://` | [`MemoryCoordination`](crate::memory::MemoryCoordination) (one process) |
//! | `etcd://[USER[:PASSWORD]@]HOST[:PORT],...` | etcd over plain `http://` (port 2379) |
//! | `etcd+https://[USER[:PASSWORD]@]HOST[:PORT],...?ca=FILE[&cert=FILE&key=FILE]` | etcd over TLS |
//! | `consul://[TOKEN@]HOST[:PORT],...[?dc=NAME]` | Consul over plain `http://` (port 8500) |
//! | `consul+https://[TOKEN@]HOST[:PORT],...[?dc=NAME&ca=FILE&cert=FILE&key=FILE]` | Consul over TLS (port 8501) |
//! | `zk://[USER[:PASSWORD]@]HOST[:PORT],...` | ZooKeeper (port 2181; `digest` credentials) |
//!
//! Several hosts are tried in order (the backends' failover). A host is a DNS name, an IPv4
//! address or a bracketed IPv6 address (`[::1]:2379`). User, password, token and query
//! values are percent-decoded (`%40` for `@`, `%2C` for `,`). Query options: `ca` (the CA
//! certificate, PEM), `cert` and `key` (a client certificate and its key, together) for the
//! `+https` forms; `dc` (the datacenter) for Consul. Without `ca`, `consul+https` trusts the
//! built-in web roots; `etcd+https` needs `ca`.
//!
//! # Secrets
//!
//! The password (etcd, ZooKeeper) and the token (Consul) are kept as a [`Secret`]: `Debug`,
//! `Display` and every error print `<redacted>` instead. A command line is visible to
//! other users (`ps`), so prefer leaving them out of the URL and giving them through the
//! environment ([`CoordinationUrl::with_env_credentials`]: `CONSTRUCTR_ETCD_USER`,
//! `CONSTRUCTR_ETCD_PASSWORD`, `CONSTRUCTR_CONSUL_TOKEN`, `CONSTRUCTR_ZOOKEEPER_USER`,
//! `CONSTRUCTR_ZOOKEEPER_PASSWORD`). A URL whose password or token
//! *is* `<redacted>` (a copied `Display`) is refused rather than sent.
//!
//! ```
//! use constructr::url::{CoordinationUrl, UrlBackend};
//!
//! let url: CoordinationUrl = "etcd://root:hunter2@10.0.0.1:2379,10.0.0.2".parse()?;
//! assert_eq!(url.backend(), UrlBackend::Etcd);
//! assert_eq!(url.endpoints(), ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]);
//! assert_eq!(url.to_string(), "etcd://root:<redacted>@10.0.0.1:2379,10.0.0.2:2379");
//! assert!(!format!("{url:?}").contains("hunter2"));
//! # Ok::<(), constructr::url::CoordinationUrlError>(())
//! ```

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use constructr_core::Coordination;
use constructr_core::secret::Secret;

/// What `Display` prints in place of a password or token.
const REDACTED: &str = "<redacted>";

/// The backend a [`CoordinationUrl`] names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum UrlBackend {
    /// `memory://`: the in-process backend.
    Memory,
    /// `etcd://`, `etcd+https://`.
    Etcd,
    /// `consul://`, `consul+https://`.
    Consul,
    /// `zk://` (or `zookeeper://`).
    ZooKeeper,
}

impl UrlBackend {
    /// The backend's name, which is also its cargo feature (`memory` has none).
    pub fn name(self) -> &'static str {
        match self {
            UrlBackend::Memory => "memory",
            UrlBackend::Etcd => "etcd",
            UrlBackend::Consul => "consul",
            UrlBackend::ZooKeeper => "zookeeper",
        }
    }

    /// The URL scheme (without `+https`).
    fn scheme(self) -> &'static str {
        match self {
            UrlBackend::ZooKeeper => "zk",
            other => other.name(),
        }
    }

    fn default_port(self, tls: bool) -> u16 {
        match (self, tls) {
            (UrlBackend::Consul, true) => 8501,
            (UrlBackend::Consul, false) => 8500,
            (UrlBackend::ZooKeeper, _) => 2181,
            _ => 2379,
        }
    }
}

impl fmt::Display for UrlBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a coordination URL was refused, or why its backend could not be created. Messages
/// never contain a password or token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoordinationUrlError {
    /// No `scheme://` at the start.
    #[error(
        "a coordination URL starts with memory://, etcd://, etcd+https://, consul:// or consul+https://"
    )]
    MissingScheme,
    /// A scheme this crate does not know.
    #[error(
        "unknown coordination URL scheme {scheme:?} (memory, etcd, etcd+https, consul, consul+https, zk)"
    )]
    UnknownScheme {
        /// The scheme as written (only shown when it looks like one).
        scheme: String,
    },
    /// `memory://` followed by something.
    #[error("memory:// takes no hosts, credentials or options")]
    MemoryWithAuthority,
    /// An etcd or Consul URL without a host.
    #[error("the {backend} URL names no host")]
    NoHost {
        /// The backend.
        backend: UrlBackend,
    },
    /// A host that is empty, has a bad character or a bad port.
    #[error("invalid host {position}{} in the {backend} URL: {reason}", .host.as_ref().map(|h| format!(" ({h:?})")).unwrap_or_default())]
    InvalidHost {
        /// The backend.
        backend: UrlBackend,
        /// Which host of the list, from 1.
        position: usize,
        /// The host as written, without the port; left out when it has characters no
        /// host name has (it may be a misplaced secret).
        host: Option<String>,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Credentials that do not fit the backend or do not decode.
    #[error("invalid credentials in the {backend} URL: {reason}")]
    InvalidCredentials {
        /// The backend.
        backend: UrlBackend,
        /// What is wrong (never the secret itself).
        reason: &'static str,
    },
    /// The password or token is the `<redacted>` marker of a displayed URL.
    #[error("the {backend} URL holds a redacted secret: give the real one or use the environment")]
    RedactedSecret {
        /// The backend.
        backend: UrlBackend,
    },
    /// A path after the hosts (`etcd://h:2379/x`).
    #[error("a coordination URL has no path (found one after the hosts)")]
    Path,
    /// A query option this backend does not know, or one given twice.
    #[error("unknown or repeated option {option:?} in the {backend} URL (known: {known})")]
    UnknownOption {
        /// The backend.
        backend: UrlBackend,
        /// The option's name as written.
        option: String,
        /// The options the backend knows.
        known: &'static str,
    },
    /// A query option with a bad value.
    #[error("invalid value of option {option} in the {backend} URL: {reason}")]
    InvalidOption {
        /// The backend.
        backend: UrlBackend,
        /// The option.
        option: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// The URL names a backend this build of `constructr` leaves out.
    #[error(
        "the {backend} backend is not compiled in: enable the `{backend}` feature of constructr"
    )]
    Disabled {
        /// The backend.
        backend: UrlBackend,
    },
    /// The backend refused the configuration made from the URL.
    #[error("cannot create the {backend} backend")]
    Backend {
        /// The backend.
        backend: UrlBackend,
        /// The backend's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A host and port of a [`CoordinationUrl`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct UrlHost {
    /// A DNS name, an IPv4 address, or an IPv6 address in brackets (`[::1]`).
    pub host: String,
    /// The port (the backend's default when the URL gives none).
    pub port: u16,
}

impl fmt::Display for UrlHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// A parsed coordination URL (see [the module docs](self) for the forms).
///
/// `Debug` and `Display` show the password or token as `<redacted>`; parsing a URL's
/// `Display` gives the same URL back when it holds no secret.
#[derive(Clone, PartialEq, Eq)]
pub struct CoordinationUrl {
    backend: UrlBackend,
    tls: bool,
    hosts: Vec<UrlHost>,
    user: Option<String>,
    secret: Option<Secret>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    datacenter: Option<String>,
}

impl CoordinationUrl {
    /// The backend the URL names.
    pub fn backend(&self) -> UrlBackend {
        self.backend
    }

    /// Whether the URL asks for TLS (`+https`).
    pub fn tls(&self) -> bool {
        self.tls
    }

    /// The hosts, in the order they are tried (empty for `memory://`).
    pub fn hosts(&self) -> &[UrlHost] {
        &self.hosts
    }

    /// The hosts as `http://host:port` or `https://host:port`, for a backend's configuration.
    pub fn endpoints(&self) -> Vec<String> {
        let scheme = if self.tls { "https" } else { "http" };
        self.hosts
            .iter()
            .map(|h| format!("{scheme}://{h}"))
            .collect()
    }

    /// The etcd user.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// The etcd password or the Consul ACL token.
    pub fn secret(&self) -> Option<&Secret> {
        self.secret.as_ref()
    }

    /// The CA certificate file (`?ca=`).
    pub fn ca(&self) -> Option<&std::path::Path> {
        self.ca.as_deref()
    }

    /// The client certificate and key files (`?cert=&key=`).
    pub fn client_identity(&self) -> Option<(&std::path::Path, &std::path::Path)> {
        Some((self.cert.as_deref()?, self.key.as_deref()?))
    }

    /// The Consul datacenter (`?dc=`).
    pub fn datacenter(&self) -> Option<&str> {
        self.datacenter.as_deref()
    }

    /// Fills in the credentials the URL leaves out from the process environment:
    /// etcd's user from `CONSTRUCTR_ETCD_USER`, its password from `CONSTRUCTR_ETCD_PASSWORD`
    /// (only when there is a user), Consul's token from `CONSTRUCTR_CONSUL_TOKEN`.
    /// Credentials in the URL win.
    pub fn with_env_credentials(self) -> Self {
        self.with_credentials_from(|name| std::env::var(name).ok())
    }

    /// [`with_env_credentials`](Self::with_env_credentials) with another source of the
    /// variables (`lookup(name)`), e.g. a map in a test. Empty values count as unset.
    pub fn with_credentials_from(mut self, lookup: impl Fn(&str) -> Option<String>) -> Self {
        let get = |name: &str| lookup(name).filter(|v| !v.is_empty());
        match self.backend {
            UrlBackend::Memory => {}
            UrlBackend::Etcd => {
                if self.user.is_none() {
                    self.user = get("CONSTRUCTR_ETCD_USER");
                }
                if self.user.is_some() && self.secret.is_none() {
                    self.secret = get("CONSTRUCTR_ETCD_PASSWORD").map(Secret::from);
                }
            }
            UrlBackend::Consul => {
                if self.secret.is_none() {
                    self.secret = get("CONSTRUCTR_CONSUL_TOKEN").map(Secret::from);
                }
            }
            UrlBackend::ZooKeeper => {
                if self.user.is_none() {
                    self.user = get("CONSTRUCTR_ZOOKEEPER_USER");
                }
                if self.user.is_some() && self.secret.is_none() {
                    self.secret = get("CONSTRUCTR_ZOOKEEPER_PASSWORD").map(Secret::from);
                }
            }
        }
        self
    }

    /// Fills in etcd's (or ZooKeeper's) user and password where the URL has none
    /// (credentials given some other way, e.g. command-line options): `etcd://root@h`
    /// takes only the password.
    pub fn with_default_user(mut self, user: Option<String>, password: Option<Secret>) -> Self {
        if matches!(self.backend, UrlBackend::Etcd | UrlBackend::ZooKeeper) {
            if self.user.is_none() {
                self.user = user;
            }
            if self.user.is_some() && self.secret.is_none() {
                self.secret = password;
            }
        }
        self
    }

    /// Sets Consul's token when the URL has none.
    pub fn with_default_token(mut self, token: Option<Secret>) -> Self {
        if self.backend == UrlBackend::Consul && self.secret.is_none() {
            self.secret = token;
        }
        self
    }

    /// The etcd configuration this URL describes (default timeouts), or `None` for a URL
    /// of another backend.
    #[cfg(feature = "etcd")]
    #[cfg_attr(docsrs, doc(cfg(feature = "etcd")))]
    pub fn etcd_config(&self) -> Option<crate::etcd::EtcdConfig> {
        use crate::etcd::{EtcdConfig, EtcdTlsConfig, PemSource};
        if self.backend != UrlBackend::Etcd {
            return None;
        }
        let mut config = EtcdConfig::new(self.endpoints());
        if let Some(user) = &self.user {
            // A missing password stays missing, so that validation says so.
            config.user = Some(user.clone());
            config.password = self.secret.clone();
        }
        if self.tls {
            let mut tls = match &self.ca {
                Some(ca) => EtcdTlsConfig::new(PemSource::File(ca.clone())),
                None => EtcdTlsConfig::default(),
            };
            if let Some((cert, key)) = self.client_identity() {
                tls = tls.with_client_identity(
                    PemSource::File(cert.to_path_buf()),
                    PemSource::File(key.to_path_buf()),
                );
            }
            config = config.with_tls(tls);
        }
        Some(config)
    }

    /// The Consul configuration this URL describes (default timeouts), or `None` for a URL
    /// of another backend.
    #[cfg(feature = "consul")]
    #[cfg_attr(docsrs, doc(cfg(feature = "consul")))]
    pub fn consul_config(&self) -> Option<crate::consul::ConsulConfig> {
        use crate::consul::{ConsulConfig, ConsulTlsConfig, PemSource};
        if self.backend != UrlBackend::Consul {
            return None;
        }
        let mut config = ConsulConfig::default().with_addresses(self.endpoints());
        if let Some(token) = &self.secret {
            config = config.with_token(token.clone());
        }
        if let Some(dc) = &self.datacenter {
            config = config.with_datacenter(dc.clone());
        }
        if self.tls {
            let mut tls = ConsulTlsConfig::default();
            if let Some(ca) = &self.ca {
                tls.ca = Some(PemSource::File(ca.clone()));
            }
            if let Some((cert, key)) = self.client_identity() {
                tls = tls.with_client_identity(
                    PemSource::File(cert.to_path_buf()),
                    PemSource::File(key.to_path_buf()),
                );
            }
            config = config.with_tls(tls);
        }
        Some(config)
    }

    /// The ZooKeeper configuration this URL describes (default timeouts), or `None` for a
    /// URL of another backend.
    #[cfg(feature = "zookeeper")]
    #[cfg_attr(docsrs, doc(cfg(feature = "zookeeper")))]
    pub fn zookeeper_config(&self) -> Option<crate::zookeeper::ZooKeeperConfig> {
        if self.backend != UrlBackend::ZooKeeper {
            return None;
        }
        let servers = self.hosts.iter().map(ToString::to_string);
        let mut config = crate::zookeeper::ZooKeeperConfig::new(servers);
        if let Some(user) = &self.user {
            // A missing password stays missing, so that validation says so.
            config.user = Some(user.clone());
            config.password = self.secret.clone();
        }
        Some(config)
    }

    /// The backend this URL names, with default timeouts; it connects lazily. `memory://`
    /// gives a new, empty in-process registry.
    ///
    /// # Errors
    /// [`CoordinationUrlError::Disabled`] when the backend's cargo feature is off,
    /// [`CoordinationUrlError::Backend`] when the backend refuses the configuration (a
    /// user without a password, an unreadable CA file, ...).
    pub fn connect(&self) -> Result<Arc<dyn Coordination>, CoordinationUrlError> {
        match self.backend {
            UrlBackend::Memory => Ok(Arc::new(crate::memory::MemoryCoordination::default())),
            UrlBackend::Etcd => self.connect_etcd(),
            UrlBackend::Consul => self.connect_consul(),
            UrlBackend::ZooKeeper => self.connect_zookeeper(),
        }
    }

    #[cfg(feature = "zookeeper")]
    fn connect_zookeeper(&self) -> Result<Arc<dyn Coordination>, CoordinationUrlError> {
        let config = self.zookeeper_config().expect("a ZooKeeper URL");
        built(
            UrlBackend::ZooKeeper,
            crate::zookeeper::ZooKeeperCoordination::new(&config),
        )
    }

    #[cfg(not(feature = "zookeeper"))]
    fn connect_zookeeper(&self) -> Result<Arc<dyn Coordination>, CoordinationUrlError> {
        Err(CoordinationUrlError::Disabled {
            backend: UrlBackend::ZooKeeper,
        })
    }

    #[cfg(feature = "etcd")]
    fn connect_etcd(&self) -> Result<Arc<dyn Coordination>, CoordinationUrlError> {
        let config = self.etcd_config().expect("an etcd URL");
        built(
            UrlBackend::Etcd,
            crate::etcd::EtcdCoordination::new(&config),
        )
    }

    #[cfg(not(feature = "etcd"))]
    fn connect_etcd(&self) -> Result<Arc<dyn Coordination>, CoordinationUrlError> {
        Err(CoordinationUrlError::Disabled {
            backend: UrlBackend::Etcd,
        })
    }

    #[cfg(feature = "consul")]
    fn connect_consul(&self) -> Result<Arc<dyn Coordination>, CoordinationUrlError> {
        let config = self.consul_config().expect("a Consul URL");
        built(
            UrlBackend::Consul,
            crate::consul::ConsulCoordination::new(&config),
        )
    }

    #[cfg(not(feature = "consul"))]
    fn connect_consul(&self) -> Result<Arc<dyn Coordination>, CoordinationUrlError> {
        Err(CoordinationUrlError::Disabled {
            backend: UrlBackend::Consul,
        })
    }
}

/// A backend `backend` built from a URL's configuration, or why it refused it.
#[cfg(any(feature = "etcd", feature = "consul", feature = "zookeeper"))]
fn built<C: Coordination, E: std::error::Error + Send + Sync + 'static>(
    backend: UrlBackend,
    result: Result<C, E>,
) -> Result<Arc<dyn Coordination>, CoordinationUrlError> {
    result
        .map(|c| Arc::new(c) as Arc<dyn Coordination>)
        .map_err(|e| CoordinationUrlError::Backend {
            backend,
            source: Box::new(e),
        })
}

impl fmt::Debug for CoordinationUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CoordinationUrl")
            .field("backend", &self.backend)
            .field("tls", &self.tls)
            .field("hosts", &self.hosts)
            .field("user", &self.user)
            .field("secret", &self.secret)
            .field("ca", &self.ca)
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("datacenter", &self.datacenter)
            .finish()
    }
}

impl fmt::Display for CoordinationUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.backend.scheme())?;
        if self.tls {
            f.write_str("+https")?;
        }
        f.write_str("://")?;
        match (&self.user, &self.secret) {
            (Some(user), Some(_)) => write!(f, "{}:{REDACTED}@", encode(user))?,
            (Some(user), None) => write!(f, "{}@", encode(user))?,
            (None, Some(_)) => write!(f, "{REDACTED}@")?,
            (None, None) => {}
        }
        for (i, host) in self.hosts.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{host}")?;
        }
        let options = [
            ("dc", self.datacenter.as_deref().map(str::to_owned)),
            (
                "ca",
                self.ca.as_ref().map(|p| p.to_string_lossy().into_owned()),
            ),
            (
                "cert",
                self.cert.as_ref().map(|p| p.to_string_lossy().into_owned()),
            ),
            (
                "key",
                self.key.as_ref().map(|p| p.to_string_lossy().into_owned()),
            ),
        ];
        let mut sep = '?';
        for (name, value) in options {
            if let Some(value) = value {
                write!(f, "{sep}{name}={}", encode(&value))?;
                sep = '&';
            }
        }
        Ok(())
    }
}

impl FromStr for CoordinationUrl {
    type Err = CoordinationUrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (scheme, rest) = s
            .split_once("://")
            .ok_or(CoordinationUrlError::MissingScheme)?;
        let (backend, tls) = match scheme.to_ascii_lowercase().as_str() {
            "memory" => (UrlBackend::Memory, false),
            "etcd" => (UrlBackend::Etcd, false),
            "etcd+https" => (UrlBackend::Etcd, true),
            "consul" => (UrlBackend::Consul, false),
            "consul+https" => (UrlBackend::Consul, true),
            "zk" | "zookeeper" => (UrlBackend::ZooKeeper, false),
            other => {
                // Echo the scheme only when it looks like one: anything else may be a
                // mistyped secret.
                let looks_like_a_scheme = other.len() <= 32
                    && other
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
                return Err(CoordinationUrlError::UnknownScheme {
                    scheme: if looks_like_a_scheme {
                        other.to_owned()
                    } else {
                        "?".to_owned()
                    },
                });
            }
        };
        let mut url = CoordinationUrl {
            backend,
            tls,
            hosts: Vec::new(),
            user: None,
            secret: None,
            ca: None,
            cert: None,
            key: None,
            datacenter: None,
        };
        if backend == UrlBackend::Memory {
            return if rest.is_empty() || rest == "/" {
                Ok(url)
            } else {
                Err(CoordinationUrlError::MemoryWithAuthority)
            };
        }
        let (authority, query) = match rest.split_once('?') {
            Some((a, q)) => (a, Some(q)),
            None => (rest, None),
        };
        // The last `@`: an unencoded `@` in a password still works.
        let (userinfo, hosts) = match authority.rfind('@') {
            Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
            None => (None, authority),
        };
        if let Some(userinfo) = userinfo {
            url.parse_credentials(userinfo)?;
        }
        let hosts = hosts.strip_suffix('/').unwrap_or(hosts);
        if hosts.contains(['/', '#']) {
            return Err(CoordinationUrlError::Path);
        }
        if hosts.is_empty() {
            return Err(CoordinationUrlError::NoHost { backend });
        }
        for (i, host) in hosts.split(',').enumerate() {
            url.hosts.push(parse_host(backend, tls, i + 1, host)?);
        }
        if let Some(query) = query {
            url.parse_query(query)?;
        }
        url.check_required()?;
        Ok(url)
    }
}

impl CoordinationUrl {
    fn parse_credentials(&mut self, userinfo: &str) -> Result<(), CoordinationUrlError> {
        let backend = self.backend;
        let bad = |reason| CoordinationUrlError::InvalidCredentials { backend, reason };
        let text = |part: &str| {
            decode(part)
                .filter(|t| !t.chars().any(char::is_control))
                .ok_or(bad("not valid percent-encoded text"))
        };
        match backend {
            UrlBackend::Etcd | UrlBackend::ZooKeeper => {
                let (user, password) = match userinfo.split_once(':') {
                    Some((u, p)) => (u, Some(p)),
                    None => (userinfo, None),
                };
                let user = text(user)?;
                if user.is_empty() {
                    return Err(bad(
                        "the user is empty (etcd://USER:PASSWORD@HOST, zk://USER:PASSWORD@HOST)",
                    ));
                }
                self.user = Some(user);
                if let Some(password) = password {
                    let password = text(password)?;
                    if password == REDACTED {
                        return Err(CoordinationUrlError::RedactedSecret { backend });
                    }
                    self.secret = Some(Secret::from(password));
                }
            }
            UrlBackend::Consul => {
                if userinfo.contains(':') {
                    return Err(bad(
                        "Consul takes a token (consul://TOKEN@HOST), not USER:PASSWORD",
                    ));
                }
                let token = text(userinfo)?;
                if token.is_empty() {
                    return Err(bad("the token is empty"));
                }
                if token == REDACTED {
                    return Err(CoordinationUrlError::RedactedSecret { backend });
                }
                self.secret = Some(Secret::from(token));
            }
            UrlBackend::Memory => return Err(CoordinationUrlError::MemoryWithAuthority),
        }
        Ok(())
    }

    fn parse_query(&mut self, query: &str) -> Result<(), CoordinationUrlError> {
        let backend = self.backend;
        let known = match (backend, self.tls) {
            (UrlBackend::Consul, true) => "dc, ca, cert, key",
            (UrlBackend::Consul, false) => "dc",
            (_, true) => "ca, cert, key",
            (_, false) => "none without +https",
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let slot = match (name, backend, self.tls) {
                ("ca", _, true) => Some(("ca", &mut self.ca)),
                ("cert", _, true) => Some(("cert", &mut self.cert)),
                ("key", _, true) => Some(("key", &mut self.key)),
                _ => None,
            };
            let invalid = |option, reason| CoordinationUrlError::InvalidOption {
                backend,
                option,
                reason,
            };
            let value = decode(value)
                .filter(|v| !v.is_empty() && !v.chars().any(char::is_control))
                .ok_or(match slot {
                    Some((option, _)) => invalid(option, "empty or not valid percent-encoded text"),
                    None if name == "dc" && backend == UrlBackend::Consul => {
                        invalid("dc", "empty or not valid percent-encoded text")
                    }
                    None => CoordinationUrlError::UnknownOption {
                        backend,
                        option: shown_option(name),
                        known,
                    },
                })?;
            let unknown = || CoordinationUrlError::UnknownOption {
                backend,
                option: shown_option(name),
                known,
            };
            match slot {
                Some((_, path)) if path.is_none() => *path = Some(PathBuf::from(value)),
                Some(_) => return Err(unknown()),
                None if name == "dc" && backend == UrlBackend::Consul => {
                    if self.datacenter.is_some() {
                        return Err(unknown());
                    }
                    if !value
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                    {
                        return Err(invalid("dc", "letters, digits, `-`, `_` and `.` only"));
                    }
                    self.datacenter = Some(value);
                }
                None => return Err(unknown()),
            }
        }
        if self.cert.is_some() != self.key.is_some() {
            return Err(CoordinationUrlError::InvalidOption {
                backend,
                option: if self.cert.is_some() { "cert" } else { "key" },
                reason: "cert and key go together",
            });
        }
        Ok(())
    }

    /// The options a URL needs whatever else it says.
    fn check_required(&self) -> Result<(), CoordinationUrlError> {
        if self.backend == UrlBackend::Etcd && self.tls && self.ca.is_none() {
            return Err(CoordinationUrlError::InvalidOption {
                backend: self.backend,
                option: "ca",
                reason: "etcd+https needs ?ca=FILE (the etcd backend trusts no built-in roots)",
            });
        }
        Ok(())
    }
}

/// An option name for a message: only when it looks like one.
fn shown_option(name: &str) -> String {
    if name.len() <= 32 && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        name.to_owned()
    } else {
        "?".to_owned()
    }
}

fn parse_host(
    backend: UrlBackend,
    tls: bool,
    position: usize,
    text: &str,
) -> Result<UrlHost, CoordinationUrlError> {
    // Shown without what follows a `:` (`root:pw,h2`, a forgotten `@`), and only when it
    // looks like a mistyped host name: a misplaced secret must not reach the message.
    let shown = text.split(':').next().unwrap_or_default();
    let shown = (shown.len() <= 64
        && shown
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._ []".contains(c)))
    .then(|| shown.to_owned());
    let invalid = |reason| CoordinationUrlError::InvalidHost {
        backend,
        position,
        host: shown.clone(),
        reason,
    };
    if text.is_empty() {
        return Err(invalid("empty (two commas in a row?)"));
    }
    let (host, port) = if let Some(v6) = text.strip_prefix('[') {
        let (address, after) = v6
            .split_once(']')
            .ok_or(invalid("an IPv6 address needs its closing `]`"))?;
        if address.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(invalid("not an IPv6 address"));
        }
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or(invalid("text after `]`"))?),
        };
        (format!("[{address}]"), port)
    } else {
        let (host, port) = match text.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (text, None),
        };
        let valid = !host.is_empty()
            && host.len() <= 253
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
            && !host.starts_with(['-', '.'])
            && !host.contains("..");
        if !valid {
            return Err(invalid(
                "a host is a DNS name, an IPv4 address or an [IPv6] address",
            ));
        }
        (host.to_ascii_lowercase(), port)
    };
    let port = match port {
        None => backend.default_port(tls),
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return Err(invalid("the port must be a number from 1 to 65535")),
        },
    };
    Ok(UrlHost { host, port })
}

/// Percent-decodes `text`; `None` for a bad escape or text that is not UTF-8.
fn decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Percent-encodes everything but RFC 3986's unreserved characters and `/`.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<CoordinationUrl, CoordinationUrlError> {
        s.parse()
    }

    #[test]
    fn forms() {
        let u = parse("memory://").unwrap();
        assert_eq!((u.backend(), u.hosts().len()), (UrlBackend::Memory, 0));
        let u = parse("etcd://h1:2379,h2:2380").unwrap();
        assert_eq!(u.endpoints(), ["http://h1:2379", "http://h2:2380"]);
        let u = parse("etcd+https://h1,[::1]:12?ca=/etc/ca.pem&cert=/c.pem&key=/k.pem").unwrap();
        assert_eq!(u.endpoints(), ["https://h1:2379", "https://[::1]:12"]);
        assert_eq!(u.ca(), Some(std::path::Path::new("/etc/ca.pem")));
        assert!(u.client_identity().is_some());
        let u = parse("consul://t0k3n@c1,c2:9500?dc=eu-west").unwrap();
        assert_eq!(u.endpoints(), ["http://c1:8500", "http://c2:9500"]);
        assert_eq!(u.secret().map(Secret::expose), Some("t0k3n"));
        assert_eq!(u.datacenter(), Some("eu-west"));
        let e = parse("etcd+https://h1").unwrap_err();
        assert!(e.to_string().contains("?ca=FILE"), "{e}");
        let u = parse("consul+https://c1").unwrap();
        assert_eq!(u.endpoints(), ["https://c1:8501"]);
        let u = parse("etcd://root:p%40ss:w@rd@h").unwrap();
        assert_eq!(u.user(), Some("root"));
        assert_eq!(u.secret().map(Secret::expose), Some("p@ss:w@rd"));
        let u = parse("zk://app:s3cret@z1,z2:2182,[::1]").unwrap();
        assert_eq!(u.backend(), UrlBackend::ZooKeeper);
        assert_eq!(u.user(), Some("app"));
        assert_eq!(
            u.to_string(),
            "zk://app:<redacted>@z1:2181,z2:2182,[::1]:2181"
        );
        assert_eq!(parse("zookeeper://z1").unwrap().to_string(), "zk://z1:2181");
    }

    #[cfg(feature = "zookeeper")]
    #[test]
    fn a_zk_url_gives_the_zookeeper_config() {
        let u = parse("zk://app:s3cret@z1,z2:2182").unwrap();
        let c = u.zookeeper_config().unwrap();
        assert_eq!(c.servers, ["z1:2181", "z2:2182"]);
        assert_eq!(c.user.as_deref(), Some("app"));
        assert_eq!(c.password.as_ref().map(Secret::expose), Some("s3cret"));
        c.validate().unwrap();
        let env = parse("zk://z1")
            .unwrap()
            .with_credentials_from(|n| match n {
                "CONSTRUCTR_ZOOKEEPER_USER" => Some("u".into()),
                "CONSTRUCTR_ZOOKEEPER_PASSWORD" => Some("pw".into()),
                _ => None,
            });
        assert_eq!(env.user(), Some("u"));
        assert!(u.connect().is_ok());
    }

    #[test]
    fn invalid_urls_are_typed_errors() {
        use CoordinationUrlError as E;
        type Expected = fn(&E) -> bool;
        let cases: &[(&str, Expected)] = &[
            ("", |e| matches!(e, E::MissingScheme)),
            ("h1:2379", |e| matches!(e, E::MissingScheme)),
            (
                "mongodb://h",
                |e| matches!(e, E::UnknownScheme { scheme } if scheme == "mongodb"),
            ),
            ("zk://h:2181?ca=x", |e| matches!(e, E::UnknownOption { .. })),
            ("memory://x", |e| matches!(e, E::MemoryWithAuthority)),
            ("etcd://", |e| matches!(e, E::NoHost { .. })),
            ("etcd://h1,,h2", |e| matches!(e, E::InvalidHost { .. })),
            ("etcd://exa mple:2379", |e| {
                matches!(e, E::InvalidHost { .. })
            }),
            ("etcd://h:0", |e| matches!(e, E::InvalidHost { .. })),
            ("etcd://h:65536", |e| matches!(e, E::InvalidHost { .. })),
            ("etcd://h:+1", |e| matches!(e, E::InvalidHost { .. })),
            ("etcd://[::1", |e| matches!(e, E::InvalidHost { .. })),
            ("etcd://h/v3", |e| matches!(e, E::Path)),
            ("etcd://h?ca=/x", |e| matches!(e, E::UnknownOption { .. })),
            ("etcd+https://h?dc=x", |e| {
                matches!(e, E::UnknownOption { .. })
            }),
            ("etcd+https://h?ca=/x&ca=/y", |e| {
                matches!(e, E::UnknownOption { .. })
            }),
            ("etcd+https://h?cert=/x", |e| {
                matches!(e, E::InvalidOption { option: "cert", .. })
            }),
            ("etcd+https://h", |e| {
                matches!(e, E::InvalidOption { option: "ca", .. })
            }),
            ("consul://h?dc=a%26b", |e| {
                matches!(e, E::InvalidOption { option: "dc", .. })
            }),
            ("consul://u:p@h", |e| {
                matches!(e, E::InvalidCredentials { .. })
            }),
            ("etcd://:p@h", |e| matches!(e, E::InvalidCredentials { .. })),
            ("etcd://u:%zz@h", |e| {
                matches!(e, E::InvalidCredentials { .. })
            }),
            ("etcd://u:<redacted>@h", |e| {
                matches!(e, E::RedactedSecret { .. })
            }),
        ];
        for (url, expected) in cases {
            let e = parse(url).expect_err(url);
            assert!(expected(&e), "{url}: {e:?}");
            assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn secrets_never_show() {
        for (url, secret) in [
            ("etcd://root:hunter2@h1:2379,h2:2379", "hunter2"),
            ("etcd+https://root:hunter2@h1?ca=/ca.pem", "hunter2"),
            ("consul://hunter2-token@h:8500", "hunter2-token"),
        ] {
            let u = parse(url).unwrap();
            assert_eq!(u.secret().map(Secret::expose), Some(secret));
            let (debug, display) = (format!("{u:?}"), u.to_string());
            for shown in [&debug, &display] {
                assert!(!shown.contains(secret), "{shown}");
                assert!(shown.contains(REDACTED), "{shown}");
            }
            // The displayed URL parses to the redaction error, which names no secret.
            let e = parse(&display).unwrap_err();
            assert!(
                matches!(e, CoordinationUrlError::RedactedSecret { .. }),
                "{e:?}"
            );
        }
        // Errors of URLs with a secret elsewhere broken.
        for url in [
            "etcd://root:hunter2@h1,,h2",
            "etcd://root:hunter2@h1/x",
            "etcd://root:hunter2@h1?password=hunter2",
            "etcd://root:hunter2@bad host",
            "consul://root:hunter2@h",
            "etcd://root:hunter2,h2",
            "etcd://[::1]:hunter2",
        ] {
            let e = parse(url).unwrap_err();
            let shown = format!("{e} {e:?}");
            assert!(!shown.contains("hunter2"), "{url}: {shown}");
        }
    }

    #[test]
    fn credentials_from_the_environment_fill_only_what_the_url_leaves_out() {
        let env = |name: &str| {
            Some(match name {
                "CONSTRUCTR_ETCD_USER" => "envuser".to_owned(),
                "CONSTRUCTR_ETCD_PASSWORD" => "envpw".to_owned(),
                "CONSTRUCTR_CONSUL_TOKEN" => "envtoken".to_owned(),
                _ => return None,
            })
        };
        let u = parse("etcd://h").unwrap().with_credentials_from(env);
        assert_eq!(u.user(), Some("envuser"));
        assert_eq!(u.secret().map(Secret::expose), Some("envpw"));
        let u = parse("etcd://me:pw@h").unwrap().with_credentials_from(env);
        assert_eq!(
            (u.user(), u.secret().map(Secret::expose)),
            (Some("me"), Some("pw"))
        );
        let u = parse("etcd://me@h").unwrap().with_credentials_from(env);
        assert_eq!(
            (u.user(), u.secret().map(Secret::expose)),
            (Some("me"), Some("envpw"))
        );
        // The same from given values, e.g. command-line options.
        let given = |url: &str| {
            parse(url)
                .unwrap()
                .with_default_user(Some("opt".into()), Some("optpw".into()))
        };
        let u = given("etcd://me@h");
        assert_eq!(
            (u.user(), u.secret().map(Secret::expose)),
            (Some("me"), Some("optpw"))
        );
        let u = given("etcd://h");
        assert_eq!(
            (u.user(), u.secret().map(Secret::expose)),
            (Some("opt"), Some("optpw"))
        );
        let u = given("etcd://me:pw@h");
        assert_eq!(u.secret().map(Secret::expose), Some("pw"));
        let u = parse("consul://h").unwrap().with_credentials_from(env);
        assert_eq!(u.secret().map(Secret::expose), Some("envtoken"));
        let u = parse("consul://mine@h").unwrap().with_credentials_from(env);
        assert_eq!(u.secret().map(Secret::expose), Some("mine"));
    }

    #[test]
    fn connect_memory_gives_a_backend() {
        assert!(parse("memory://").unwrap().connect().is_ok());
    }

    #[cfg(not(feature = "etcd"))]
    #[test]
    fn connect_without_the_etcd_feature_is_a_typed_error() {
        let e = parse("etcd://h").unwrap().connect().err().expect("no etcd");
        assert!(
            matches!(
                e,
                CoordinationUrlError::Disabled {
                    backend: UrlBackend::Etcd
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("`etcd` feature"), "{e}");
    }

    #[cfg(not(feature = "consul"))]
    #[test]
    fn connect_without_the_consul_feature_is_a_typed_error() {
        let e = parse("consul://h")
            .unwrap()
            .connect()
            .err()
            .expect("no consul");
        assert!(matches!(
            e,
            CoordinationUrlError::Disabled {
                backend: UrlBackend::Consul
            }
        ));
    }

    #[cfg(feature = "etcd")]
    #[test]
    fn etcd_config_from_a_url() {
        let c = parse("etcd+https://root:pw@h1,h2:1?ca=/ca.pem")
            .unwrap()
            .etcd_config()
            .unwrap();
        assert_eq!(c.endpoints, ["https://h1:2379", "https://h2:1"]);
        assert_eq!(c.user.as_deref(), Some("root"));
        assert_eq!(c.password.as_ref().map(Secret::expose), Some("pw"));
        assert!(c.tls.is_some());
        c.validate().unwrap();
        // A user without a password: the backend's validation says so.
        let e = parse("etcd://root@h").unwrap().connect().err().unwrap();
        assert!(matches!(e, CoordinationUrlError::Backend { .. }), "{e:?}");
        assert!(parse("consul://h").unwrap().etcd_config().is_none());
    }

    #[cfg(feature = "consul")]
    #[test]
    fn consul_config_from_a_url() {
        let c = parse("consul+https://tok@c1,c2?dc=dc1")
            .unwrap()
            .consul_config()
            .unwrap();
        assert_eq!(c.addresses, ["https://c1:8501", "https://c2:8501"]);
        assert_eq!(c.token.as_ref().map(Secret::expose), Some("tok"));
        assert_eq!(c.datacenter.as_deref(), Some("dc1"));
        c.validate().unwrap();
        assert!(parse("consul://c").unwrap().connect().is_ok());
    }
}
