//! What the etcd and Consul harnesses share about their containers: free host ports,
//! starting on one (again on another when it was taken), the hint for a missing image, and
//! stopping and starting a container again.

use std::future::Future;
use std::time::Duration;

use testcontainers::core::{IntoContainerPort as _, WaitFor};
use testcontainers::runners::AsyncRunner as _;
use testcontainers::{ContainerAsync, ContainerRequest, GenericImage, ImageExt as _};

/// A TCP port free on 127.0.0.1 at the time of asking.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free local port")
        .port()
}

/// `https://127.0.0.1:{port}` with `tls`, else `http://...`.
pub fn local_url(tls: bool, port: u16) -> String {
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://127.0.0.1:{port}")
}

/// Eight random hex digits, for container and network names.
pub fn random_suffix() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// How long a container may take to start (and a service to be ready).
pub const STARTUP: Duration = Duration::from_secs(60);

/// The etcd image, ready once it says so on stderr.
pub const ETCD_IMAGE: ServiceImage = ServiceImage {
    service: "etcd",
    env: "CONSTRUCTR_ETCD_IMAGE",
    default: "quay.io/coreos/etcd:v3.5.16",
    ready: Ready::Stderr("ready to serve client requests"),
};
/// The Consul image, ready once it says so on stdout.
pub const CONSUL_IMAGE: ServiceImage = ServiceImage {
    service: "Consul",
    env: "CONSTRUCTR_CONSUL_IMAGE",
    default: "hashicorp/consul:1.8.7",
    ready: Ready::Stdout("Consul agent running!"),
};

/// The line a service's container prints once it is ready.
pub enum Ready {
    /// This line on stdout.
    Stdout(&'static str),
    /// This line on stderr.
    Stderr(&'static str),
}

/// Which image a service runs in: the one the environment variable `env` names (or
/// `target/test-images.env`, see [`crate::image_from_env`]), else `default`.
pub struct ServiceImage {
    /// The service, for messages.
    pub service: &'static str,
    /// The environment variable naming the image (`name:tag`).
    pub env: &'static str,
    /// The official image, used when nothing else is configured.
    pub default: &'static str,
    /// When a container of it is ready.
    pub ready: Ready,
}

impl ServiceImage {
    /// The image, waited for until it is ready.
    pub fn generic(&self) -> GenericImage {
        let (name, tag) = crate::image_from_env(self.env, self.default);
        GenericImage::new(name, tag).with_wait_for(match self.ready {
            Ready::Stdout(line) => WaitFor::message_on_stdout(line),
            Ready::Stderr(line) => WaitFor::message_on_stderr(line),
        })
    }

    /// What to say when the image does not start.
    pub fn hint(&self) -> String {
        let (name, tag) = crate::image_from_env(self.env, self.default);
        format!(
            "could not start {} image {name}:{tag}. Without registry access build it with \
             `bash scripts/images.sh` and export {} (see target/test-images.env)",
            self.service, self.env
        )
    }
}

/// Runs `attempt` up to three times, until it succeeds: a host port picked as free can be
/// taken by someone else before the container binds it. Panics with `hint` and the last
/// error when all three fail.
pub async fn with_retries<T, F, Fut>(hint: impl FnOnce() -> String, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let mut last_error = String::new();
    for _ in 0..3 {
        match attempt().await {
            Ok(t) => return t,
            Err(e) => last_error = e,
        }
    }
    panic!("{}: {last_error}", hint());
}

/// Starts a container of `image` as `request()` describes, with `container_port` mapped to
/// a free host port (see [`with_retries`]); the container and the host port.
pub async fn start_on_free_port(
    image: &ServiceImage,
    container_port: u16,
    request: impl Fn() -> ContainerRequest<GenericImage>,
) -> (Restartable, u16) {
    with_retries(
        || image.hint(),
        || {
            let host_port = free_port();
            let started = request()
                .with_mapped_port(host_port, container_port.tcp())
                .with_startup_timeout(STARTUP)
                .start();
            async move {
                match started.await {
                    Ok(container) => Ok((Restartable::new(container, image.service), host_port)),
                    Err(e) => Err(e.to_string()),
                }
            }
        },
    )
    .await
}

/// A service's container that tests stop abruptly and start again: its ports, and the data
/// it keeps inside, stay.
pub struct Restartable {
    container: ContainerAsync<GenericImage>,
    service: &'static str,
}

impl Restartable {
    /// `container` of `service` (`etcd`, `Consul`: for messages).
    pub fn new(container: ContainerAsync<GenericImage>, service: &'static str) -> Self {
        Self { container, service }
    }

    /// Stops the container abruptly (SIGKILL).
    pub async fn stop(&self) {
        if let Err(e) = self.container.stop_with_timeout(Some(0)).await {
            panic!("stop {}: {e}", self.service);
        }
    }

    /// Freezes every process of the container (`docker pause`: the cgroup freezer, like
    /// SIGSTOP); connections stay open and go silent.
    pub async fn freeze(&self) {
        if let Err(e) = self.container.pause().await {
            panic!("pause {}: {e}", self.service);
        }
    }

    /// Lets a frozen container run on.
    pub async fn thaw(&self) {
        if let Err(e) = self.container.unpause().await {
            panic!("unpause {}: {e}", self.service);
        }
    }

    /// Starts the stopped container again.
    pub async fn start(&self) {
        if let Err(e) = self.container.start().await {
            panic!("start {} again: {e}", self.service);
        }
    }
}
