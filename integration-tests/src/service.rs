//! One coordination service of any kind the tests run (a single etcd member, a three-member
//! etcd cluster, a Consul dev agent or persistent server) behind one interface, for scenarios
//! that run once per backend: start it, point nodes at it, take it down and bring it back,
//! and touch its keys directly.

use std::sync::Arc;
use std::time::Duration;

use constructr_consul::ConsulCoordination;
use constructr_core::Coordination;
use constructr_etcd::{EtcdCoordination, lease_ttl_secs};

use crate::consul::ConsulNode;
use crate::etcd::{EtcdCluster3, EtcdNode};

/// Which coordination service to start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// One etcd member.
    Etcd,
    /// Three etcd members on their own network (clients know all three).
    EtcdCluster,
    /// A Consul dev agent: in memory, a restart loses every key and session.
    Consul,
    /// A single persistent Consul server: keys and sessions survive a restart.
    ConsulPersistent,
}

impl Backend {
    /// Every backend, in a stable order.
    pub const ALL: [Backend; 4] = [
        Backend::Etcd,
        Backend::EtcdCluster,
        Backend::Consul,
        Backend::ConsulPersistent,
    ];

    /// `etcd`, `etcd-cluster`, `consul`, `consul-persistent`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Etcd => "etcd",
            Backend::EtcdCluster => "etcd-cluster",
            Backend::Consul => "consul",
            Backend::ConsulPersistent => "consul-persistent",
        }
    }

    /// The backend called `name` (see [`Backend::name`]).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.name() == name)
    }

    /// The backend the environment variable `var` names (see [`Backend::name`]), `etcd` when
    /// it is unset or blank; panics on an unknown name.
    pub fn from_env(var: &str) -> Self {
        let name = crate::env_setting(var);
        let name = if name.is_empty() { "etcd" } else { &name };
        Self::from_name(name).unwrap_or_else(|| panic!("{var}: unknown backend {name}"))
    }

    /// Whether this is an etcd backend (else Consul).
    pub fn is_etcd(self) -> bool {
        matches!(self, Backend::Etcd | Backend::EtcdCluster)
    }
}

/// A running coordination service.
pub enum Service {
    /// One etcd member.
    Etcd(EtcdNode),
    /// Three etcd members.
    EtcdCluster(EtcdCluster3),
    /// One Consul agent (dev or persistent).
    Consul(ConsulNode),
}

impl Service {
    /// Starts `backend` and waits until it serves requests.
    pub async fn start(backend: Backend) -> Self {
        match backend {
            Backend::Etcd => Service::Etcd(EtcdNode::start().await),
            Backend::EtcdCluster => Service::EtcdCluster(EtcdCluster3::start().await),
            Backend::Consul => Service::Consul(ConsulNode::start().await),
            Backend::ConsulPersistent => Service::Consul(ConsulNode::start_persistent().await),
        }
    }

    /// The `constructr` command-line options that select this service.
    pub fn backend_args(&self) -> Vec<String> {
        match self {
            Service::Etcd(etcd) => vec![
                "--backend".into(),
                "etcd".into(),
                "--endpoints".into(),
                etcd.endpoint(),
            ],
            Service::EtcdCluster(etcd) => vec![
                "--backend".into(),
                "etcd".into(),
                "--endpoints".into(),
                etcd.endpoints().join(","),
            ],
            Service::Consul(consul) => vec![
                "--backend".into(),
                "consul".into(),
                "--consul-address".into(),
                consul.address(),
            ],
        }
    }

    /// A fresh backend client of this service.
    pub fn coordination(&self) -> Arc<dyn Coordination> {
        match self {
            Service::Etcd(etcd) => {
                Arc::new(EtcdCoordination::new(&etcd.config()).expect("valid config"))
            }
            Service::EtcdCluster(etcd) => {
                Arc::new(EtcdCoordination::new(&etcd.config()).expect("valid config"))
            }
            Service::Consul(consul) => {
                Arc::new(ConsulCoordination::new(&consul.config()).expect("valid config"))
            }
        }
    }

    /// The latest an entry written with `ttl` disappears after its last refresh.
    pub fn expiry_bound(&self, ttl: Duration) -> Duration {
        match self {
            Service::Etcd(_) | Service::EtcdCluster(_) => {
                Duration::from_secs(lease_ttl_secs(ttl) as u64) + EtcdCoordination::EXPIRY_BOUND
            }
            Service::Consul(_) => ttl + ConsulCoordination::expiry_bound(ttl),
        }
    }

    /// Takes the whole service down abruptly (SIGKILL; every member of a cluster).
    pub async fn stop(&self) {
        match self {
            Service::Etcd(etcd) => etcd.stop().await,
            Service::EtcdCluster(etcd) => etcd.stop_all().await,
            Service::Consul(consul) => consul.stop().await,
        }
    }

    /// Brings a stopped service back on the same ports (and data, where it keeps any);
    /// returns once it serves requests.
    pub async fn start_again(&self) {
        match self {
            Service::Etcd(etcd) => etcd.start_again().await,
            Service::EtcdCluster(etcd) => etcd.start_all().await,
            Service::Consul(consul) => consul.start_again().await,
        }
    }

    /// Deletes every key under the core key `prefix` (`/prefix/cluster/...`, as in
    /// [`constructr_core::entry`]), whoever holds them.
    pub async fn delete_prefix(&self, prefix: &str) {
        match self {
            Service::Etcd(_) | Service::EtcdCluster(_) => {
                let mut client = self.etcd_client().await;
                client
                    .delete(
                        prefix,
                        Some(etcd_client::DeleteOptions::new().with_prefix()),
                    )
                    .await
                    .expect("delete the prefix");
            }
            Service::Consul(consul) => {
                consul
                    .raw()
                    .delete_prefix(prefix.trim_start_matches('/'))
                    .await
            }
        }
    }

    /// Whether the core key `key` exists.
    pub async fn key_exists(&self, key: &str) -> bool {
        match self {
            Service::Etcd(_) | Service::EtcdCluster(_) => {
                let mut client = self.etcd_client().await;
                let r = client
                    .get(key, Some(etcd_client::GetOptions::new().with_count_only()))
                    .await
                    .expect("read the key");
                r.count() > 0
            }
            Service::Consul(consul) => {
                let key = key.trim_start_matches('/');
                consul.raw().keys(key).await.iter().any(|k| k == key)
            }
        }
    }

    async fn etcd_client(&self) -> etcd_client::Client {
        match self {
            Service::Etcd(etcd) => etcd.client().await,
            Service::EtcdCluster(etcd) => etcd.client().await,
            Service::Consul(_) => unreachable!("not etcd"),
        }
    }
}

/// A started service as the backend of the conformance suite of
/// [`constructr_core::conformance`]: raw entries expire with an etcd lease of the suite's
/// default TTL, or with a Consul session of Consul's minimum TTL.
pub struct ConformanceService {
    /// The running service.
    pub service: Service,
    coordination: Arc<dyn Coordination>,
}

impl ConformanceService {
    /// Starts `backend` and waits until it serves requests.
    pub async fn start(backend: Backend) -> Self {
        let service = Service::start(backend).await;
        Self {
            coordination: service.coordination(),
            service,
        }
    }
}

#[async_trait::async_trait]
impl constructr_core::conformance::ConformanceBackend for ConformanceService {
    type Coordination = Arc<dyn Coordination>;

    fn coordination(&self) -> &Arc<dyn Coordination> {
        &self.coordination
    }

    async fn put_raw_entry(&self, scope: &constructr_core::Scope, key_suffix: &str, value: &[u8]) {
        let key = format!(
            "{}{key_suffix}",
            constructr_core::entry::nodes_prefix(scope)
        );
        match &self.service {
            Service::Consul(consul) => {
                let key = key.trim_start_matches('/');
                consul.raw().put_with_session(key, value, self.ttl()).await
            }
            Service::Etcd(_) | Service::EtcdCluster(_) => {
                let mut c = self.service.etcd_client().await;
                let ttl = lease_ttl_secs(self.ttl());
                let lease = c.lease_grant(ttl, None).await.expect("grant").id();
                let lease = etcd_client::PutOptions::new().with_lease(lease);
                c.put(key, value, Some(lease)).await.expect("put raw entry");
            }
        }
    }

    async fn delete_entry_behind_its_back(&self, scope: &constructr_core::Scope, address: &str) {
        let key = constructr_core::entry::node_key(scope, address);
        match &self.service {
            Service::Consul(consul) => consul.raw().delete_key(key.trim_start_matches('/')).await,
            Service::Etcd(_) | Service::EtcdCluster(_) => {
                let mut c = self.service.etcd_client().await;
                c.delete(key, None).await.expect("delete the entry");
            }
        }
    }

    /// etcd: the suite's default of 2 s; Consul: its minimum session TTL.
    fn ttl(&self) -> Duration {
        match self.service {
            Service::Consul(_) => Duration::from_secs(10),
            Service::Etcd(_) | Service::EtcdCluster(_) => Duration::from_secs(2),
        }
    }

    /// Consul ends a session up to one more TTL after it (2 × TTL), plus 1 s.
    fn expiry_bound(&self) -> Duration {
        match self.service {
            Service::Consul(_) => ConsulCoordination::expiry_bound(self.ttl()),
            Service::Etcd(_) | Service::EtcdCluster(_) => EtcdCoordination::EXPIRY_BOUND,
        }
    }
}

/// A started service of a known [`Backend`], for the scenario suite of
/// [`constructr_core::scenarios`].
pub struct ScenarioService {
    /// Which backend runs.
    pub backend: Backend,
    /// The running service.
    pub service: Service,
}

impl ScenarioService {
    /// Starts `backend` and waits until it serves requests.
    pub async fn start(backend: Backend) -> Self {
        Self {
            backend,
            service: Service::start(backend).await,
        }
    }
}

#[async_trait::async_trait]
impl constructr_core::scenarios::ScenarioBackend for ScenarioService {
    fn name(&self) -> String {
        self.backend.name().to_owned()
    }

    fn coordination(&self) -> Arc<dyn Coordination> {
        self.service.coordination()
    }

    /// The suite's defaults on etcd; on Consul, TTLs of at least Consul's minimum of 10 s
    /// ([`crate::consul::consul_settings`]).
    fn settings(&self, cluster: constructr_core::ClusterName) -> constructr_core::Settings {
        if self.backend.is_etcd() {
            crate::fast_settings(cluster)
        } else {
            crate::consul::consul_settings(cluster)
        }
    }

    fn expiry_bound(&self, ttl: Duration) -> Duration {
        self.service.expiry_bound(ttl)
    }

    async fn stop(&self) {
        self.service.stop().await
    }

    async fn start_again(&self) {
        self.service.start_again().await
    }

    fn keeps_data(&self) -> bool {
        self.backend != Backend::Consul
    }

    /// Starts another service with TLS and client certificates of a fresh test CA (etcd: a
    /// single member, also for the 3-member backend).
    async fn with_tls(&self) -> Option<constructr_core::scenarios::TlsClients> {
        let other_ca = crate::tls::TestPki::generate().client_tls();
        Some(if self.backend.is_etcd() {
            let node = EtcdNode::start_tls(crate::tls::TestPki::generate()).await;
            let config = node.config();
            tls_clients(&config.tls, other_ca, Box::new(node), |tls| {
                let c = config.clone().with_tls(tls);
                Arc::new(EtcdCoordination::new(&c).expect("valid config"))
            })
        } else {
            let node = ConsulNode::start_with(crate::consul::ConsulOptions {
                tls: Some(crate::tls::TestPki::generate()),
                ..crate::consul::ConsulOptions::default()
            })
            .await;
            let config = node.config();
            tls_clients(&config.tls, other_ca, Box::new(node), |tls| {
                let c = config.clone().with_tls(tls);
                Arc::new(ConsulCoordination::new(&c).expect("valid config"))
            })
        })
    }

    /// etcd: turns authentication on for this service (user `root`). Consul: starts another
    /// agent with ACLs (default deny) and a token for the scenario prefix and sessions.
    async fn with_credentials(&self) -> Option<constructr_core::scenarios::Credentials> {
        Some(match &self.service {
            Service::Etcd(_) | Service::EtcdCluster(_) => {
                crate::etcd::enable_auth(self.service.etcd_client().await, "root-pw-3e1f").await;
                let config = match &self.service {
                    Service::Etcd(node) => node.config(),
                    Service::EtcdCluster(cluster) => cluster.config(),
                    Service::Consul(_) => unreachable!("etcd"),
                };
                let client = |password: &str| -> Arc<dyn Coordination> {
                    let c = config.clone().with_user("root", password);
                    Arc::new(EtcdCoordination::new(&c).expect("valid config"))
                };
                let wrong_secret = "WRONG-pw-77aa".to_owned();
                constructr_core::scenarios::Credentials {
                    right: client("root-pw-3e1f"),
                    wrong: client(&wrong_secret),
                    wrong_secret,
                    keep: Box::new(()),
                }
            }
            Service::Consul(_) => {
                let node = ConsulNode::start_with(crate::consul::ConsulOptions {
                    acl_master_token: Some("root-secret-4f1a".into()),
                    ..crate::consul::ConsulOptions::default()
                })
                .await;
                let token = node.raw().constructr_token().await;
                let client = |token: &str| -> Arc<dyn Coordination> {
                    let c =
                        constructr_consul::ConsulConfig::new([node.address()]).with_token(token);
                    Arc::new(ConsulCoordination::new(&c).expect("valid config"))
                };
                let wrong_secret = "00000000-dead-beef-0000-000000000000".to_owned();
                constructr_core::scenarios::Credentials {
                    right: client(&token),
                    wrong: client(&wrong_secret),
                    wrong_secret,
                    keep: Box::new(node),
                }
            }
        })
    }

    fn coordination_behind(
        &self,
        first: &[String],
        timeout: Duration,
    ) -> Option<Arc<dyn Coordination>> {
        let etcd = |mut config: constructr_etcd::EtcdConfig| -> Arc<dyn Coordination> {
            config.endpoints = first.iter().cloned().chain(config.endpoints).collect();
            let config = config
                .with_connect_timeout(timeout)
                .with_request_timeout(timeout);
            Arc::new(EtcdCoordination::new(&config).expect("valid config"))
        };
        Some(match &self.service {
            Service::Etcd(node) => etcd(node.config()),
            Service::EtcdCluster(cluster) => etcd(cluster.config()),
            Service::Consul(consul) => {
                let config = consul
                    .config()
                    .with_addresses(first.iter().cloned().chain([consul.address()]))
                    .with_connect_timeout(timeout)
                    .with_request_timeout(timeout);
                Arc::new(ConsulCoordination::new(&config).expect("valid config"))
            }
        })
    }

    async fn put_raw(&self, key: &str, value: &[u8]) {
        match &self.service {
            Service::Etcd(_) | Service::EtcdCluster(_) => {
                let mut client = self.service.etcd_client().await;
                client.put(key, value, None).await.expect("put a raw key");
            }
            Service::Consul(consul) => consul.raw().put(key.trim_start_matches('/'), value).await,
        }
    }
}

/// The clients of the TLS scenario: with the `trusted` settings of a service, with those of
/// `other_ca`, and with the trusted CA but no client certificate; `client(tls)` is a client of
/// the service with `tls`; `keep` is the service.
fn tls_clients(
    trusted: &Option<constructr_core::tls::TlsConfig>,
    other_ca: constructr_core::tls::TlsConfig,
    keep: Box<dyn std::any::Any + Send + Sync>,
    client: impl Fn(constructr_core::tls::TlsConfig) -> Arc<dyn Coordination>,
) -> constructr_core::scenarios::TlsClients {
    let trusted = trusted.clone().expect("a service with TLS");
    let mut anonymous = trusted.clone();
    anonymous.cert = None;
    anonymous.key = None;
    constructr_core::scenarios::TlsClients {
        trusted: client(trusted),
        untrusted_ca: client(other_ca),
        no_client_certificate: client(anonymous),
        keep,
    }
}
