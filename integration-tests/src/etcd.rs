//! Real etcd in Docker: a single member ([`EtcdNode`]) and a three-member cluster on its own
//! network ([`EtcdCluster3`]), with fault injection.

use std::time::Duration;

use constructr_etcd::EtcdConfig;
use testcontainers::core::IntoContainerPort as _;
use testcontainers::runners::AsyncRunner as _;
use testcontainers::{ContainerAsync, GenericImage, ImageExt as _};

use crate::container::{
    ETCD_IMAGE, Restartable, STARTUP, free_port, random_suffix, start_on_free_port, with_retries,
};
use crate::tls::TestPki;

const CLIENT_PORT: u16 = 2379;
const PEER_PORT: u16 = 2380;

fn image() -> GenericImage {
    // The official image has no ENTRYPOINT (its CMD is the binary), the locally built one
    // has: name the binary explicitly so both work.
    ETCD_IMAGE.generic().with_entrypoint("/usr/local/bin/etcd")
}

/// Test members skip fsync (etcd >= 3.5; older versions ignore the variable with a
/// warning): on a loaded 2-core machine fsync latency would otherwise dominate lease expiry
/// and election timings. Data still survives a container restart (the host's page cache).
const NO_FSYNC: (&str, &str) = ("ETCD_UNSAFE_NO_FSYNC", "true");

/// A scope nobody writes to, for readiness probes.
/// A scope of its own for the readiness probes (`check`) of the harnesses.
pub(crate) fn probe_scope() -> constructr_core::Scope {
    constructr_core::Scope::new("/constructr-probe", crate::unique_cluster_name("ready"))
        .expect("valid scope")
}

/// One etcd member, reachable from the test at a fixed `127.0.0.1` port that survives
/// restarts.
pub struct EtcdNode {
    container: Restartable,
    host_port: u16,
    pki: Option<TestPki>,
}

impl EtcdNode {
    /// Starts a plain-HTTP member and waits until it serves requests.
    pub async fn start() -> Self {
        Self::start_inner(None, &[]).await
    }

    /// Starts a plain-HTTP member with extra command-line flags, e.g. `--max-txn-ops=8`.
    pub async fn start_with_flags(flags: &[&str]) -> Self {
        Self::start_inner(None, flags).await
    }

    /// Starts a member serving clients over TLS with `pki`'s server certificate and
    /// requiring client certificates signed by its CA.
    pub async fn start_tls(pki: TestPki) -> Self {
        Self::start_inner(Some(pki), &[]).await
    }

    async fn start_inner(pki: Option<TestPki>, flags: &[&str]) -> Self {
        let scheme = if pki.is_some() { "https" } else { "http" };
        let (container, host_port) = start_on_free_port(&ETCD_IMAGE, CLIENT_PORT, || {
            let name = format!("constructr-etcd-{}", random_suffix());
            let mut args = vec![
                "--name".to_owned(),
                name.clone(),
                "--data-dir".into(),
                "/tmp/etcd-data".into(),
                "--listen-client-urls".into(),
                format!("{scheme}://0.0.0.0:{CLIENT_PORT}"),
                "--advertise-client-urls".into(),
                format!("{scheme}://127.0.0.1:{CLIENT_PORT}"),
                "--listen-peer-urls".into(),
                format!("http://127.0.0.1:{PEER_PORT}"),
                "--initial-advertise-peer-urls".into(),
                format!("http://127.0.0.1:{PEER_PORT}"),
                "--initial-cluster".into(),
                format!("{name}=http://127.0.0.1:{PEER_PORT}"),
            ];
            args.extend(flags.iter().map(|f| (*f).to_owned()));
            let mut request = image()
                .with_container_name(name)
                .with_env_var(NO_FSYNC.0, NO_FSYNC.1);
            if let Some(pki) = &pki {
                args.extend([
                    "--cert-file=/certs/server.pem".into(),
                    "--key-file=/certs/server-key.pem".into(),
                    "--trusted-ca-file=/certs/ca.pem".into(),
                    "--client-cert-auth".into(),
                ]);
                request = pki.copy_server_files(request);
            }
            request.with_cmd(args)
        })
        .await;
        let node = Self {
            container,
            host_port,
            pki,
        };
        node.wait_ready().await;
        node
    }

    /// `http(s)://127.0.0.1:{port}`.
    pub fn endpoint(&self) -> String {
        crate::container::local_url(self.pki.is_some(), self.host_port)
    }

    /// A backend configuration for this member (with the client certificate when TLS is on).
    pub fn config(&self) -> EtcdConfig {
        let config = EtcdConfig::new([self.endpoint()])
            .with_connect_timeout(Duration::from_secs(1))
            .with_request_timeout(Duration::from_millis(500));
        match &self.pki {
            Some(pki) => config.with_tls(pki.client_tls()),
            None => config,
        }
    }

    /// A raw etcd client (plain HTTP members only) for set-up and inspection.
    pub async fn client(&self) -> etcd_client::Client {
        assert!(self.pki.is_none(), "raw clients are for plain members");
        etcd_client::Client::connect([self.endpoint()], None)
            .await
            .expect("raw etcd client")
    }

    async fn wait_ready(&self) {
        let config = self.config();
        let etcd = constructr_etcd::EtcdCoordination::new(&config).expect("valid config");
        crate::eventually(STARTUP, "etcd answers requests", || async {
            etcd.check(&probe_scope()).await.ok()
        })
        .await;
    }

    /// Stops etcd abruptly (SIGKILL) and starts it again on the same data and port; returns
    /// once it serves requests again.
    pub async fn restart(&self) {
        self.stop().await;
        self.start_again().await;
    }

    /// Freezes etcd (`docker pause`, like SIGSTOP): it neither answers nor closes
    /// connections until [`Self::thaw`].
    pub async fn freeze(&self) {
        self.container.freeze().await
    }

    /// Lets a frozen etcd run on.
    pub async fn thaw(&self) {
        self.container.thaw().await
    }

    /// Stops etcd abruptly (SIGKILL); its container, data and port stay.
    pub async fn stop(&self) {
        self.container.stop().await
    }

    /// Starts a stopped etcd again on the same data and port; returns once it serves
    /// requests.
    pub async fn start_again(&self) {
        self.container.start().await;
        self.wait_ready().await;
    }

    /// Enables authentication with a `root` user of password `root_password`.
    pub async fn enable_auth(&self, root_password: &str) {
        enable_auth(self.client().await, root_password).await
    }
}

/// Enables authentication on the etcd behind `c` with a `root` user of password
/// `root_password`.
pub async fn enable_auth(mut c: etcd_client::Client, root_password: &str) {
    c.user_add("root", root_password, None)
        .await
        .expect("add root user");
    // The root role exists in etcd >= 3.4 only after it is added; ignore "already exists".
    let _ = c.role_add("root").await;
    c.user_grant_role("root", "root")
        .await
        .expect("grant root role");
    c.auth_enable().await.expect("enable auth");
}

/// Three etcd members on their own Docker network, each reachable from the test at a fixed
/// `127.0.0.1` port that survives restarts.
pub struct EtcdCluster3 {
    members: Vec<Option<ContainerAsync<GenericImage>>>,
    names: Vec<String>,
    endpoints: Vec<String>,
}

impl EtcdCluster3 {
    /// Starts three members at once and waits until all serve requests.
    pub async fn start() -> Self {
        let cluster = with_retries(|| ETCD_IMAGE.hint(), Self::try_start).await;
        cluster.wait_all_ready().await;
        cluster
    }

    async fn try_start() -> Result<Self, String> {
        let suffix = random_suffix();
        let network = format!("constructr-etcd-net-{suffix}");
        let names: Vec<String> = (0..3)
            .map(|i| format!("constructr-etcd-{suffix}-m{i}"))
            .collect();
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let initial_cluster = names
            .iter()
            .map(|n| format!("{n}=http://{n}:{PEER_PORT}"))
            .collect::<Vec<_>>()
            .join(",");
        let start = |name: String, host_port: u16| {
            let args = vec![
                "--name".to_owned(),
                name.clone(),
                "--data-dir".into(),
                "/tmp/etcd-data".into(),
                "--listen-client-urls".into(),
                format!("http://0.0.0.0:{CLIENT_PORT}"),
                "--advertise-client-urls".into(),
                format!("http://{name}:{CLIENT_PORT}"),
                "--listen-peer-urls".into(),
                format!("http://0.0.0.0:{PEER_PORT}"),
                "--initial-advertise-peer-urls".into(),
                format!("http://{name}:{PEER_PORT}"),
                "--initial-cluster".into(),
                initial_cluster.clone(),
                "--initial-cluster-token".into(),
                format!("constructr-{suffix}"),
                "--initial-cluster-state".into(),
                "new".into(),
            ];
            image()
                .with_mapped_port(host_port, CLIENT_PORT.tcp())
                .with_container_name(name.clone())
                .with_env_var(NO_FSYNC.0, NO_FSYNC.1)
                .with_hostname(name)
                .with_network(network.clone())
                .with_cmd(args)
                .with_startup_timeout(STARTUP)
                .start()
        };
        // Each member reports ready only once a quorum is up: start them together.
        let (a, b, c) = tokio::join!(
            start(names[0].clone(), ports[0]),
            start(names[1].clone(), ports[1]),
            start(names[2].clone(), ports[2])
        );
        let mut members = Vec::new();
        let mut error = None;
        for r in [a, b, c] {
            match r {
                Ok(container) => members.push(Some(container)),
                Err(e) => error = Some(e.to_string()),
            }
        }
        if let Some(e) = error {
            // Dropping the started members removes them.
            return Err(e);
        }
        let endpoints = ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect();
        Ok(Self {
            members,
            names,
            endpoints,
        })
    }

    /// Waits until every live member answers requests.
    async fn wait_all_ready(&self) {
        for i in 0..3 {
            if self.members[i].is_none() {
                continue;
            }
            let config = EtcdConfig::new([self.endpoints[i].clone()]);
            let etcd = constructr_etcd::EtcdCoordination::new(&config).expect("valid config");
            crate::eventually(STARTUP, "etcd member answers requests", || async {
                etcd.check(&probe_scope()).await.ok()
            })
            .await;
        }
    }

    /// Stops every live member abruptly (SIGKILL), one right after the other (the cluster
    /// loses its quorum with the second); containers, data and ports stay.
    pub async fn stop_all(&self) {
        for c in self.members.iter().flatten() {
            c.stop_with_timeout(Some(0))
                .await
                .expect("stop etcd member");
        }
    }

    /// Starts every stopped member again (none serves before a quorum is back); returns once
    /// all serve requests.
    pub async fn start_all(&self) {
        for c in self.members.iter().flatten() {
            c.start().await.expect("start etcd member again");
        }
        self.wait_all_ready().await;
    }

    /// The client URLs of all three members (also of killed ones).
    pub fn endpoints(&self) -> Vec<String> {
        self.endpoints.clone()
    }

    /// A backend configuration listing all three members, with short timeouts so a dead
    /// member is skipped quickly.
    pub fn config(&self) -> EtcdConfig {
        self.config_starting_at(0)
    }

    /// Like [`Self::config`], with member `first` listed first (the one requests go to until
    /// it fails).
    pub fn config_starting_at(&self, first: usize) -> EtcdConfig {
        let mut endpoints = self.endpoints();
        endpoints.rotate_left(first);
        EtcdConfig::new(endpoints)
            .with_connect_timeout(Duration::from_millis(300))
            .with_request_timeout(Duration::from_millis(500))
    }

    /// A raw etcd client over all members, for set-up and inspection.
    pub async fn client(&self) -> etcd_client::Client {
        etcd_client::Client::connect(self.endpoints(), None)
            .await
            .expect("raw etcd client")
    }

    /// The member names (container names).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The index of the current leader, asked from the live members.
    pub async fn leader(&self) -> usize {
        crate::eventually(Duration::from_secs(30), "an etcd leader", || async {
            for (i, m) in self.members.iter().enumerate() {
                if m.is_none() {
                    continue;
                }
                let Ok(mut c) =
                    etcd_client::Client::connect([self.endpoints[i].clone()], None).await
                else {
                    continue;
                };
                let Ok(status) = c.status().await else {
                    continue;
                };
                let leader = status.leader();
                for (j, e) in self.endpoints.iter().enumerate() {
                    if self.members[j].is_none() {
                        continue;
                    }
                    if let Ok(mut cj) = etcd_client::Client::connect([e.clone()], None).await
                        && let Ok(sj) = cj.status().await
                        && sj.header().map(|h| h.member_id()) == Some(leader)
                    {
                        return Some(j);
                    }
                }
            }
            None
        })
        .await
    }

    /// Kills member `i` (SIGKILL) and removes its container.
    pub async fn kill(&mut self, i: usize) {
        if let Some(c) = self.members[i].take() {
            c.stop_with_timeout(Some(0)).await.expect("kill member");
            c.rm().await.expect("remove member");
        }
    }
}
