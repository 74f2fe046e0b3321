//! Docker-based integration harness: real services in containers (testcontainers), shared by
//! the backend test files in `tests/`.
//!
//! - [`require_docker!`]: every test starts with it. If Docker is unreachable the test
//!   **fails** with a clear message, unless `CONSTRUCTR_SKIP_DOCKER=1` is set, in which case
//!   it prints a skip line and returns.
//! - [`etcd::EtcdNode`] (one member) and [`etcd::EtcdCluster3`] (three members on their own
//!   Docker network), with fault injection (restart, kill, stop and start all).
//! - [`consul::ConsulNode`] (a dev agent or a persistent single server, optionally with ACLs
//!   or HTTPS), with fault injection (stop and start again).
//! - [`service::Service`]: any of those behind one interface (start, stop, start again,
//!   delete keys), for scenarios that run once per backend.
//! - [`process`]: real `constructr node` processes against a service, with their `--json`
//!   lines.
//! - [`proxy::Proxy`]: a TCP proxy between one client and a service: a partition (cut,
//!   heal) and an added latency on the client → server direction.
//! - Images come from environment variables (`CONSTRUCTR_ETCD_IMAGE`, ...) with the official
//!   upstream images as defaults; when the variable is unset, `target/test-images.env`
//!   (written by `scripts/images.sh`) is consulted first, so a machine without registry
//!   access uses its locally built images.

use std::io::{Read as _, Write as _};
use std::time::Duration;

use constructr_core::{ClusterName, Settings};

pub mod checks;
pub mod consul;
pub mod container;
pub mod etcd;
pub mod nodes;
pub mod process;
pub mod proxy;
pub mod service;
pub mod tls;
pub mod zookeeper;

/// Set to `1` to skip (not fail) the Docker-based tests on a machine without Docker.
pub const SKIP_ENV: &str = "CONSTRUCTR_SKIP_DOCKER";

/// Returns `true` if the test should run, `false` (after printing a skip line) if Docker
/// tests are explicitly skipped. Panics with a clear message if Docker is unreachable.
pub fn docker_or_skip(test: &str) -> bool {
    if std::env::var(SKIP_ENV).is_ok_and(|v| v == "1") {
        println!("SKIPPED {test}: {SKIP_ENV}=1 (Docker-based integration test)");
        return false;
    }
    if let Err(e) = probe_docker() {
        panic!(
            "{test}: Docker is unreachable: {e}.\n\
             The integration tests need a running Docker engine (DOCKER_HOST or \
             /var/run/docker.sock). Set {SKIP_ENV}=1 to skip them explicitly."
        );
    }
    true
}

/// Starts a Docker-based test: returns from the test early if Docker tests are skipped.
#[macro_export]
macro_rules! require_docker {
    () => {
        fn here() {}
        let name = std::any::type_name_of_val(&here);
        let name = name.strip_suffix("::here").unwrap_or(name);
        if !$crate::docker_or_skip(name.trim_end_matches("::{{closure}}")) {
            return;
        }
    };
}

fn probe_docker() -> Result<(), String> {
    let host = std::env::var("DOCKER_HOST").unwrap_or_default();
    let timeout = Duration::from_secs(5);
    if let Some(addr) = host.strip_prefix("tcp://") {
        let addr = addr.trim_end_matches('/');
        let sock = std::net::ToSocketAddrs::to_socket_addrs(addr)
            .map_err(|e| format!("DOCKER_HOST={host}: {e}"))?
            .next()
            .ok_or_else(|| format!("DOCKER_HOST={host} resolves to nothing"))?;
        std::net::TcpStream::connect_timeout(&sock, timeout)
            .map_err(|e| format!("cannot connect to DOCKER_HOST={host}: {e}"))?;
        return Ok(());
    }
    let path = host
        .strip_prefix("unix://")
        .filter(|p| !p.is_empty())
        .unwrap_or("/var/run/docker.sock");
    let mut s = std::os::unix::net::UnixStream::connect(path)
        .map_err(|e| format!("cannot connect to {path}: {e}"))?;
    s.set_read_timeout(Some(timeout)).ok();
    s.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        .map_err(|e| format!("{path}: {e}"))?;
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    if answer.starts_with("HTTP/1.") && answer.contains(" 200 ") {
        Ok(())
    } else {
        Err(format!(
            "{path} did not answer the Docker ping: {:?}",
            answer.lines().next().unwrap_or("")
        ))
    }
}

/// The image named by `var`, else by `target/test-images.env`, else `default`; split into
/// name and tag.
pub fn image_from_env(var: &str, default: &str) -> (String, String) {
    let image = std::env::var(var)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .or_else(|| images_env_file(var))
        .unwrap_or_else(|| default.to_owned());
    split_image(&image)
}

fn images_env_file(var: &str) -> Option<String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
    let text = std::fs::read_to_string(root.join("target/test-images.env")).ok()?;
    text.lines().find_map(|line| {
        let line = line.trim().strip_prefix("export ").unwrap_or(line.trim());
        let (k, v) = line.split_once('=')?;
        (k.trim() == var).then(|| v.trim().trim_matches('"').trim_matches('\'').to_owned())
    })
}

/// `registry:5000/ns/name:tag` → (`registry:5000/ns/name`, `tag`); no tag → `latest`.
pub fn split_image(image: &str) -> (String, String) {
    let last_slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[last_slash..].rfind(':') {
        Some(i) => (
            image[..last_slash + i].to_owned(),
            image[last_slash + i + 1..].to_owned(),
        ),
        None => (image.to_owned(), "latest".to_owned()),
    }
}

pub use constructr_core::scenarios::unique_cluster_name;

/// Short settings for tests (validated): refresh 1 s, TTL 3 s, join timeout 5 s,
/// coordination timeout 700 ms, one retry after 300 ms.
pub fn fast_settings(cluster: ClusterName) -> Settings {
    let mut s = Settings::default();
    s.cluster_name = cluster;
    s.key_prefix = "/constructr-it".into();
    s.refresh_interval = Duration::from_secs(1);
    s.ttl_factor = 3.0;
    s.join_timeout = Duration::from_secs(5);
    s.coordination_timeout = Duration::from_millis(700);
    s.nr_of_retries = Some(1);
    s.retry_delay = Duration::from_millis(300);
    s.retry_jitter = 0.2;
    s.validate().expect("fast test settings are valid");
    s
}

/// The environment variable `var` of a measuring run, `""` when unset or blank.
pub fn env_setting(var: &str) -> String {
    std::env::var(var)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_default()
}

/// Installs a test-friendly tracing subscriber once (`RUST_LOG` filters it).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

pub use constructr_core::scenarios::eventually;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_split_into_name_and_tag() {
        assert_eq!(
            split_image("quay.io/coreos/etcd:v3.5.16"),
            ("quay.io/coreos/etcd".into(), "v3.5.16".into())
        );
        assert_eq!(
            split_image("localhost:5000/etcd"),
            ("localhost:5000/etcd".into(), "latest".into())
        );
        assert_eq!(
            split_image("constructr-test/etcd:3.5.16"),
            ("constructr-test/etcd".into(), "3.5.16".into())
        );
    }

    #[test]
    fn fast_settings_validate() {
        let s = fast_settings(unique_cluster_name("x"));
        assert_eq!(s.ttl(), Duration::from_secs(3));
    }
}
