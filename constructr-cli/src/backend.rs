//! Backend selection and options shared by the commands: `--coordination URL`, or
//! `--backend` with its options, over the `[etcd]`/`[consul]` sections of the settings file.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use constructr::consul::{ConsulConfig, ConsulCoordination, ConsulTlsConfig};
use constructr::etcd::{EtcdConfig, EtcdCoordination, EtcdTlsConfig, PemSource, Secret};
use constructr::url::{CoordinationUrl, CoordinationUrlError, UrlBackend};
use constructr::zookeeper::{ZooKeeperConfig, ZooKeeperCoordination};
use constructr::{Coordination, Settings};

use crate::settings::BackendFile;

/// Which coordination backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// In-process memory backend (the embedded default; `demo` only).
    Memory,
    /// etcd v3.
    Etcd,
    /// Consul (KV + sessions).
    Consul,
    /// ZooKeeper (ephemeral znodes on the session).
    Zookeeper,
}

/// The options `--coordination` replaces (their environment variables count as given).
const URL_CONFLICTS: [&str; 11] = [
    "backend",
    "endpoints",
    "etcd_ca",
    "etcd_cert",
    "etcd_key",
    "consul_address",
    "consul_datacenter",
    "consul_ca",
    "consul_cert",
    "consul_key",
    "zookeeper",
];

/// Backend options. `Debug` shows the URL, the password and the token as `<redacted>`.
#[derive(Debug, Clone, Args)]
pub struct BackendArgs {
    /// Coordination service as one URL: memory://, etcd://HOST:PORT,...,
    /// etcd+https://[USER@]HOST,...?ca=FILE, consul://[TOKEN@]HOST,...?dc=DC,
    /// consul+https://..., zk://[USER@]HOST:PORT,... (instead of --backend and its
    /// options; see the README).
    #[arg(
        long,
        value_name = "URL",
        env = "CONSTRUCTR_COORDINATION",
        hide_env_values = true,
        conflicts_with_all = URL_CONFLICTS
    )]
    pub coordination: Option<Secret>,
    /// Coordination backend (node and nodes: etcd or consul; demo: memory by default).
    #[arg(long, value_enum)]
    pub backend: Option<Backend>,
    /// etcd endpoints, comma-separated (default http://127.0.0.1:2379).
    #[arg(long, value_delimiter = ',', env = "CONSTRUCTR_ETCD_ENDPOINTS")]
    pub endpoints: Option<Vec<String>>,
    /// etcd user (with --etcd-password or CONSTRUCTR_ETCD_PASSWORD).
    #[arg(long, env = "CONSTRUCTR_ETCD_USER")]
    pub etcd_user: Option<String>,
    /// etcd password (prefer the environment variable: arguments are visible in `ps`).
    #[arg(long, env = "CONSTRUCTR_ETCD_PASSWORD", hide_env_values = true)]
    pub etcd_password: Option<Secret>,
    /// CA certificate (PEM) for TLS to etcd.
    #[arg(long)]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM) for TLS to etcd (with --etcd-key).
    #[arg(long, requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    /// Client key (PEM) for TLS to etcd.
    #[arg(long, requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
    /// Consul HTTP API addresses, comma-separated (the next is tried when one is down;
    /// default http://127.0.0.1:8500).
    #[arg(long, value_delimiter = ',', env = "CONSTRUCTR_CONSUL_ADDRESS")]
    pub consul_address: Option<Vec<String>>,
    /// Consul ACL token (prefer the environment variable: arguments are visible in `ps`).
    #[arg(long, env = "CONSTRUCTR_CONSUL_TOKEN", hide_env_values = true)]
    pub consul_token: Option<Secret>,
    /// Consul datacenter.
    #[arg(long, env = "CONSTRUCTR_CONSUL_DATACENTER")]
    pub consul_datacenter: Option<String>,
    /// CA certificate (PEM) for HTTPS to Consul.
    #[arg(long)]
    pub consul_ca: Option<PathBuf>,
    /// Client certificate (PEM) for HTTPS to Consul (with --consul-key).
    #[arg(long, requires = "consul_key")]
    pub consul_cert: Option<PathBuf>,
    /// Client key (PEM) for HTTPS to Consul.
    #[arg(long, requires = "consul_cert")]
    pub consul_key: Option<PathBuf>,
    /// ZooKeeper servers, comma-separated `HOST:PORT` (default 127.0.0.1:2181).
    #[arg(
        long,
        value_delimiter = ',',
        env = "CONSTRUCTR_ZOOKEEPER",
        value_name = "HOST:PORT"
    )]
    pub zookeeper: Option<Vec<String>>,
    /// ZooKeeper `digest` user (with CONSTRUCTR_ZOOKEEPER_PASSWORD).
    #[arg(long, env = "CONSTRUCTR_ZOOKEEPER_USER")]
    pub zookeeper_user: Option<String>,
    /// ZooKeeper `digest` password (prefer the environment variable).
    #[arg(long, env = "CONSTRUCTR_ZOOKEEPER_PASSWORD", hide_env_values = true)]
    pub zookeeper_password: Option<Secret>,
    /// ZooKeeper session timeout: how long after this process died its entry disappears
    /// (at most the entry TTL).
    #[arg(long, default_value = "10s", value_parser = humantime_duration, value_name = "DURATION")]
    pub zookeeper_session_timeout: Duration,
    /// Timeout of one request to the coordination service.
    #[arg(long, default_value = "3s", value_parser = humantime_duration)]
    pub request_timeout: Duration,
}

fn humantime_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

/// Whether a command may fall back to the in-process memory backend when none is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// `demo`: memory unless told otherwise.
    Memory,
    /// `node`, `nodes`: a backend must be chosen.
    Required,
}

/// The chosen backend and its whole configuration.
#[derive(Debug, Clone)]
pub enum Resolved {
    /// In-process memory.
    Memory,
    /// etcd.
    Etcd(EtcdConfig),
    /// Consul.
    Consul(ConsulConfig),
    /// ZooKeeper.
    ZooKeeper(ZooKeeperConfig),
}

impl Resolved {
    /// The backend's name.
    pub fn name(&self) -> &'static str {
        match self {
            Resolved::Memory => "memory",
            Resolved::Etcd(_) => "etcd",
            Resolved::Consul(_) => "consul",
            Resolved::ZooKeeper(_) => "zookeeper",
        }
    }

    /// The endpoints, without credentials, for messages.
    pub fn endpoints(&self) -> String {
        let urls = match self {
            Resolved::Memory => return "memory".into(),
            Resolved::Etcd(c) => &c.endpoints,
            Resolved::Consul(c) => &c.addresses,
            Resolved::ZooKeeper(c) => return c.servers.join(", "),
        };
        constructr::plumbing::display_urls(urls).join(", ")
    }

    /// Checks backend-specific limits on the node settings (Consul: TTLs of 10 s to 24 h).
    pub fn validate_settings(&self, settings: &Settings) -> Result<(), String> {
        match self {
            Resolved::Consul(_) => constructr::consul::validate_settings(settings)
                .map_err(|e| format!("invalid settings for Consul: {e}")),
            Resolved::ZooKeeper(c) if c.session_timeout > settings.ttl() => Err(format!(
                "invalid settings for ZooKeeper: the session timeout ({:?}, \
                 --zookeeper-session-timeout) must not exceed the entry TTL ({:?})",
                c.session_timeout,
                settings.ttl()
            )),
            Resolved::Memory | Resolved::Etcd(_) | Resolved::ZooKeeper(_) => Ok(()),
        }
    }

    /// The backend for a long-lived node or an inspection (connects lazily); `None` for
    /// `memory`, which only exists inside one process.
    pub fn coordination(&self) -> Result<Option<Arc<dyn Coordination>>, String> {
        Ok(match self {
            Resolved::Memory => None,
            Resolved::Etcd(c) => Some(Arc::new(
                EtcdCoordination::new(c).map_err(|e| e.to_string())?,
            )),
            Resolved::Consul(c) => Some(Arc::new(
                ConsulCoordination::new(c).map_err(|e| e.to_string())?,
            )),
            Resolved::ZooKeeper(c) => Some(Arc::new(
                ZooKeeperCoordination::new(c).map_err(|e| e.to_string())?,
            )),
        })
    }
}

/// What `node` and `nodes` say when no backend is chosen.
const CHOOSE: &str = "choose a coordination service: --coordination URL (or CONSTRUCTR_COORDINATION), \
     --backend etcd|consul|zookeeper, or an [etcd] or [consul] section in the --config file";

impl BackendArgs {
    /// The backend these options, over the settings file's sections, select; every
    /// endpoint checked. Errors are bad input (exit code 2).
    pub fn resolve(&self, file: &BackendFile, fallback: Fallback) -> Result<Resolved, String> {
        let resolved = self.resolve_any(file, fallback)?;
        if fallback == Fallback::Required && matches!(resolved, Resolved::Memory) {
            return Err(format!(
                "the memory backend lives inside one process; {CHOOSE}"
            ));
        }
        Ok(resolved)
    }

    fn resolve_any(&self, file: &BackendFile, fallback: Fallback) -> Result<Resolved, String> {
        if let Some(url) = &self.coordination {
            return self.resolve_url(url.expose());
        }
        let backend = match (self.backend, &file.etcd, &file.consul) {
            (Some(b), _, _) => b,
            (None, Some(_), None) => Backend::Etcd,
            (None, None, Some(_)) => Backend::Consul,
            (None, Some(_), Some(_)) if fallback == Fallback::Required => {
                return Err(format!(
                    "the settings file has both [etcd] and [consul]: {CHOOSE}"
                ));
            }
            (None, _, _) => match fallback {
                Fallback::Memory => Backend::Memory,
                Fallback::Required => return Err(CHOOSE.into()),
            },
        };
        match backend {
            Backend::Memory => Ok(Resolved::Memory),
            Backend::Etcd => self.etcd(file).map(Resolved::Etcd),
            Backend::Consul => self.consul(file).map(Resolved::Consul),
            Backend::Zookeeper => {
                let servers = self
                    .zookeeper
                    .clone()
                    .unwrap_or_else(|| vec!["127.0.0.1:2181".into()]);
                self.zookeeper_config(ZooKeeperConfig::new(servers))
                    .map(Resolved::ZooKeeper)
            }
        }
    }

    fn resolve_url(&self, text: &str) -> Result<Resolved, String> {
        let url: CoordinationUrl = text
            .parse()
            .map_err(|e: CoordinationUrlError| format!("invalid --coordination URL: {e}"))?;
        let url = match url.backend() {
            UrlBackend::ZooKeeper => {
                url.with_default_user(self.zookeeper_user.clone(), self.zookeeper_password.clone())
            }
            _ => url.with_default_user(self.etcd_user.clone(), self.etcd_password.clone()),
        }
        .with_default_token(self.consul_token.clone());
        let t = self.request_timeout;
        Ok(match url.backend() {
            UrlBackend::Etcd => Resolved::Etcd(check_etcd(
                url.etcd_config()
                    .expect("an etcd URL")
                    .with_request_timeout(t)
                    .with_connect_timeout(t),
            )?),
            UrlBackend::Consul => Resolved::Consul(check_consul(
                url.consul_config()
                    .expect("a Consul URL")
                    .with_request_timeout(t)
                    .with_connect_timeout(t),
            )?),
            UrlBackend::ZooKeeper => Resolved::ZooKeeper(
                self.zookeeper_config(url.zookeeper_config().expect("a ZooKeeper URL"))?,
            ),
            _ => Resolved::Memory,
        })
    }

    /// `config` with the ZooKeeper options (timeouts, credentials the URL leaves out).
    fn zookeeper_config(&self, mut config: ZooKeeperConfig) -> Result<ZooKeeperConfig, String> {
        config = config
            .with_session_timeout(self.zookeeper_session_timeout)
            .with_connect_timeout(self.request_timeout);
        if config.user.is_none() {
            config.user = self.zookeeper_user.clone();
        }
        if config.user.is_some() && config.password.is_none() {
            config.password = self.zookeeper_password.clone();
        }
        match (&config.user, &config.password) {
            (Some(_), None) => {
                return Err(
                    "--zookeeper-user needs a password (CONSTRUCTR_ZOOKEEPER_PASSWORD)".into(),
                );
            }
            (None, _) if self.zookeeper_password.is_some() => {
                return Err("a ZooKeeper password needs --zookeeper-user".into());
            }
            _ => {}
        }
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }

    /// The etcd configuration: options and environment over the file's `[etcd]`.
    fn etcd(&self, file: &BackendFile) -> Result<EtcdConfig, String> {
        let f = file.etcd.clone().unwrap_or_default();
        let (endpoints, option) = match (&self.endpoints, f.endpoints) {
            (Some(e), _) => (e.clone(), "--endpoints"),
            (None, Some(e)) => (e, "[etcd] endpoints"),
            (None, None) => (vec!["http://127.0.0.1:2379".into()], "--endpoints"),
        };
        check_endpoints(option, &endpoints)?;
        let mut config = EtcdConfig::new(endpoints)
            .with_request_timeout(self.request_timeout)
            .with_connect_timeout(self.request_timeout);
        let user = self.etcd_user.clone().or(f.user);
        let password = self.etcd_password.clone().or(f.password);
        match (user, password) {
            (Some(u), Some(p)) => config = config.with_user(u, p),
            (Some(_), None) => {
                return Err("--etcd-user needs a password (CONSTRUCTR_ETCD_PASSWORD)".into());
            }
            (None, Some(_)) => return Err("a password needs --etcd-user".into()),
            (None, None) => {}
        }
        let (ca, cert, key) = match (&self.etcd_ca, &self.etcd_cert) {
            // Command-line TLS options replace the file's as a whole.
            (None, None) => (f.ca, f.cert, f.key),
            _ => (
                self.etcd_ca.clone(),
                self.etcd_cert.clone(),
                self.etcd_key.clone(),
            ),
        };
        if let Some(ca) = ca {
            let mut tls = EtcdTlsConfig::new(PemSource::File(ca));
            match (cert, key) {
                (Some(cert), Some(key)) => {
                    tls = tls.with_client_identity(PemSource::File(cert), PemSource::File(key));
                }
                (None, None) => {}
                _ => return Err("the etcd client certificate and key go together".into()),
            }
            config = config.with_tls(tls);
        }
        check_etcd(config)
    }

    /// The Consul configuration: options and environment over the file's `[consul]`.
    fn consul(&self, file: &BackendFile) -> Result<ConsulConfig, String> {
        let f = file.consul.clone().unwrap_or_default();
        let (addresses, option) = match (&self.consul_address, f.address) {
            (Some(a), _) => (a.clone(), "--consul-address"),
            (None, Some(a)) => (a, "[consul] address"),
            (None, None) => (vec!["http://127.0.0.1:8500".into()], "--consul-address"),
        };
        check_endpoints(option, &addresses)?;
        let mut config = ConsulConfig::default()
            .with_addresses(addresses)
            .with_request_timeout(self.request_timeout)
            .with_connect_timeout(self.request_timeout);
        if let Some(token) = self.consul_token.clone().or(f.token) {
            config = config.with_token(token);
        }
        if let Some(dc) = self.consul_datacenter.clone().or(f.datacenter) {
            config = config.with_datacenter(dc);
        }
        if let Some(n) = f.max_connections {
            config = config.with_max_connections(n);
        }
        let (ca, cert, key) = match (&self.consul_ca, &self.consul_cert) {
            (None, None) => (f.ca, f.cert, f.key),
            _ => (
                self.consul_ca.clone(),
                self.consul_cert.clone(),
                self.consul_key.clone(),
            ),
        };
        if let Some(ca) = ca {
            let mut tls = ConsulTlsConfig::new(constructr::consul::PemSource::File(ca));
            match (cert, key) {
                (Some(cert), Some(key)) => {
                    tls = tls.with_client_identity(
                        constructr::consul::PemSource::File(cert),
                        constructr::consul::PemSource::File(key),
                    );
                }
                (None, None) => {}
                _ => return Err("the Consul client certificate and key go together".into()),
            }
            config = config.with_tls(tls);
        }
        check_consul(config)
    }
}

fn check_etcd(config: EtcdConfig) -> Result<EtcdConfig, String> {
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

fn check_consul(config: ConsulConfig) -> Result<ConsulConfig, String> {
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

/// Checks each endpoint: `http://HOST[:PORT]`, `https://HOST[:PORT]` or `HOST[:PORT]`; the
/// message names the option and the bad endpoint (without credentials).
pub fn check_endpoints(option: &str, endpoints: &[String]) -> Result<(), String> {
    if endpoints.is_empty() {
        return Err(format!("{option} names no endpoint"));
    }
    for endpoint in endpoints {
        let shown = constructr::plumbing::display_url(endpoint);
        let bad = |why: String| format!("invalid {option} entry {shown:?}: {why}");
        let trimmed = endpoint.trim();
        let rest = match trimmed.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => rest,
            Some(_) => return Err(bad("the scheme must be http:// or https://".into())),
            None => trimmed,
        };
        // The part after any user info: the host and port, checked like a URL's host.
        let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(',') {
            return Err(bad("one host per entry".into()));
        }
        match format!("etcd://{rest}").parse::<CoordinationUrl>() {
            Ok(_) => {}
            Err(CoordinationUrlError::InvalidHost { reason, .. }) => {
                return Err(bad(reason.into()));
            }
            Err(CoordinationUrlError::NoHost { .. }) => return Err(bad("no host".into())),
            Err(CoordinationUrlError::Path) => {
                return Err(bad("an endpoint has no path".into()));
            }
            Err(_) => return Err(bad("not HOST:PORT".into())),
        }
    }
    Ok(())
}

/// Prints a backend set-up error and returns the exit code for it.
pub fn fail(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        backend: BackendArgs,
    }

    #[test]
    fn debug_of_backend_args_hides_password_and_token() {
        let cli = Cli::try_parse_from([
            "x",
            "--etcd-user",
            "root",
            "--etcd-password",
            "hunter2",
            "--consul-token",
            "t0k3n-secret",
        ])
        .unwrap();
        let shown = format!("{cli:?}");
        assert!(shown.contains("root"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("t0k3n-secret"), "{shown}");
        assert_eq!(
            cli.backend.etcd_password.as_ref().map(Secret::expose),
            Some("hunter2")
        );
        let cli = Cli::try_parse_from(["x", "--coordination", "etcd://root:hunter2@h"]).unwrap();
        let shown = format!("{cli:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn endpoints_are_checked_one_by_one() {
        for ok in [
            "http://a:2379",
            "https://10.0.0.1:2379/",
            "a:2379",
            "a",
            "http://[::1]:2379",
        ] {
            check_endpoints("--endpoints", &[ok.into()]).unwrap();
        }
        for (bad, says) in [
            ("http://exa mple:2379", "\"http://exa mple:2379\""),
            ("ftp://x", "http:// or https://"),
            ("http://a:99999", "port"),
            ("http://a:2379/v3", "no path"),
            ("http://", "no host"),
        ] {
            let e =
                check_endpoints("--endpoints", &["http://ok:1".into(), bad.into()]).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
            assert!(e.contains("--endpoints"), "{bad}: {e}");
        }
        let e =
            check_endpoints("--endpoints", &["http://root:hunter2@exa mple".into()]).unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn options_override_the_file_and_the_file_chooses_the_backend() {
        let file: BackendFile = crate::settings::parse_backend_file(
            "[etcd]\nendpoints = [\"http://file:2379\"]\nuser = \"fileuser\"\npassword = \"pw\"\n",
        )
        .unwrap();
        let cli = Cli::try_parse_from(["x"]).unwrap();
        let Resolved::Etcd(c) = cli.backend.resolve(&file, Fallback::Required).unwrap() else {
            panic!("etcd from the file")
        };
        assert_eq!(c.endpoints, ["http://file:2379"]);
        assert_eq!(c.user.as_deref(), Some("fileuser"));
        let cli = Cli::try_parse_from(["x", "--endpoints", "http://cli:2379"]).unwrap();
        let Resolved::Etcd(c) = cli.backend.resolve(&file, Fallback::Required).unwrap() else {
            panic!("etcd from the file")
        };
        assert_eq!(c.endpoints, ["http://cli:2379"]);
        // Without a file section or option, node and nodes refuse; demo takes memory.
        let none = BackendFile::default();
        let e = cli.backend.resolve(&none, Fallback::Required).unwrap_err();
        assert!(
            e.contains("--coordination") && e.contains("--backend"),
            "{e}"
        );
        assert!(matches!(
            cli.backend.resolve(&none, Fallback::Memory),
            Ok(Resolved::Memory)
        ));
    }

    #[test]
    fn coordination_conflicts_with_the_backend_options() {
        for other in [
            ["--backend", "etcd"],
            ["--endpoints", "http://a:2379"],
            ["--consul-address", "http://a:8500"],
        ] {
            let e =
                Cli::try_parse_from(["x", "--coordination", "etcd://a"].into_iter().chain(other))
                    .unwrap_err();
            assert_eq!(
                e.kind(),
                clap::error::ErrorKind::ArgumentConflict,
                "{other:?}"
            );
        }
        // Credentials complete a URL instead.
        let cli = Cli::try_parse_from([
            "x",
            "--coordination",
            "etcd://a",
            "--etcd-user",
            "u",
            "--etcd-password",
            "p",
        ])
        .unwrap();
        let Resolved::Etcd(c) = cli
            .backend
            .resolve(&BackendFile::default(), Fallback::Required)
            .unwrap()
        else {
            panic!("etcd")
        };
        assert_eq!(c.user.as_deref(), Some("u"));
    }
}
