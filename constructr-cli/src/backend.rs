//! Backend selection and options shared by the commands.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use std::sync::Arc;

use clap::{Args, ValueEnum};
use constructr::consul::{ConsulConfig, ConsulCoordination, ConsulTlsConfig};
use constructr::etcd::{EtcdConfig, EtcdCoordination, EtcdTlsConfig, PemSource, Secret};
use constructr::{Coordination, Settings};

/// Which coordination backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// In-process memory backend (the embedded default; `demo` only).
    Memory,
    /// etcd v3.
    Etcd,
    /// Consul (KV + sessions).
    Consul,
}

/// Backend options. `Debug` shows the password and the token as `<redacted>`.
#[derive(Debug, Clone, Args)]
pub struct BackendArgs {
    /// Coordination backend.
    #[arg(long, value_enum, default_value_t = Backend::Memory)]
    pub backend: Backend,
    /// etcd endpoints, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379",
        env = "CONSTRUCTR_ETCD_ENDPOINTS"
    )]
    pub endpoints: Vec<String>,
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
    /// Consul HTTP API addresses, comma-separated (the next is tried when one is down).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "http://127.0.0.1:8500",
        env = "CONSTRUCTR_CONSUL_ADDRESS"
    )]
    pub consul_address: Vec<String>,
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
    /// Timeout of one request to the coordination service.
    #[arg(long, default_value = "3s", value_parser = humantime_duration)]
    pub request_timeout: Duration,
}

fn humantime_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

impl BackendArgs {
    /// The etcd backend from these options; connects lazily.
    pub async fn etcd(&self) -> Result<EtcdCoordination, String> {
        let mut config = EtcdConfig::new(self.endpoints.iter().cloned())
            .with_request_timeout(self.request_timeout)
            .with_connect_timeout(self.request_timeout);
        match (&self.etcd_user, &self.etcd_password) {
            (Some(u), Some(p)) => config = config.with_user(u.clone(), p.clone()),
            (Some(_), None) => {
                return Err("--etcd-user needs a password (CONSTRUCTR_ETCD_PASSWORD)".into());
            }
            (None, Some(_)) => return Err("a password needs --etcd-user".into()),
            (None, None) => {}
        }
        if let Some(ca) = &self.etcd_ca {
            let mut tls = EtcdTlsConfig::new(PemSource::File(ca.clone()));
            if let (Some(cert), Some(key)) = (&self.etcd_cert, &self.etcd_key) {
                tls = tls.with_client_identity(
                    PemSource::File(cert.clone()),
                    PemSource::File(key.clone()),
                );
            }
            config = config.with_tls(tls);
        }
        EtcdCoordination::new(&config).map_err(|e| e.to_string())
    }
}

impl BackendArgs {
    /// The Consul backend from these options; connects lazily.
    pub fn consul(&self) -> Result<ConsulCoordination, String> {
        let mut config = ConsulConfig::new(self.consul_address.iter().cloned())
            .with_request_timeout(self.request_timeout)
            .with_connect_timeout(self.request_timeout);
        if let Some(token) = &self.consul_token {
            config = config.with_token(token.clone());
        }
        if let Some(dc) = &self.consul_datacenter {
            config = config.with_datacenter(dc.clone());
        }
        if let Some(ca) = &self.consul_ca {
            let mut tls = ConsulTlsConfig::new(constructr::consul::PemSource::File(ca.clone()));
            if let (Some(cert), Some(key)) = (&self.consul_cert, &self.consul_key) {
                tls = tls.with_client_identity(
                    constructr::consul::PemSource::File(cert.clone()),
                    constructr::consul::PemSource::File(key.clone()),
                );
            }
            config = config.with_tls(tls);
        }
        ConsulCoordination::new(&config).map_err(|e| e.to_string())
    }

    /// Checks backend-specific limits on the node settings (Consul: TTLs of 10 s to 24 h).
    pub fn validate_settings(&self, settings: &Settings) -> Result<(), String> {
        match self.backend {
            Backend::Consul => constructr::consul::validate_settings(settings)
                .map_err(|e| format!("invalid settings for Consul: {e}")),
            Backend::Memory | Backend::Etcd => Ok(()),
        }
    }

    /// The selected backend for a long-lived node or an inspection; `None` for `memory`,
    /// which only exists inside one process.
    pub async fn coordination(&self) -> Result<Option<Arc<dyn Coordination>>, String> {
        Ok(match self.backend {
            Backend::Memory => None,
            Backend::Etcd => Some(Arc::new(self.etcd().await?)),
            Backend::Consul => Some(Arc::new(self.consul()?)),
        })
    }
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
    }
}
