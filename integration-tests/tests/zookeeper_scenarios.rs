//! The backend scenario suite of [`constructr_core::scenarios`] on a real ZooKeeper 3.8
//! server, each scenario on its own server. ZooKeeper's own client picks among the servers
//! (no endpoint list to fail over: that scenario checks nothing), and the driver has no TLS
//! yet (nor does that scenario); the credentials scenario uses digest auth with an ACL on
//! the key prefix.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use constructr_core::scenarios::{self, Credentials, ScenarioBackend};
use constructr_core::{ClusterName, Coordination, Settings};
use constructr_zookeeper::{ZooKeeperConfig, ZooKeeperCoordination};
use integration_tests::zookeeper::{ZooKeeperServer, image};

/// Sessions of 2 s: within the scenarios' 3 s TTL.
const SESSION: Duration = Duration::from_secs(2);
const PREFIX: &str = "/constructr-scenarios";

struct ZooKeeper {
    server: ZooKeeperServer,
}

impl ZooKeeper {
    fn config(&self) -> ZooKeeperConfig {
        ZooKeeperConfig::new([self.server.address()])
            .with_session_timeout(SESSION)
            .with_connect_timeout(Duration::from_secs(5))
    }
}

#[async_trait]
impl ScenarioBackend for ZooKeeper {
    fn name(&self) -> String {
        "zookeeper".into()
    }

    fn coordination(&self) -> Arc<dyn Coordination> {
        Arc::new(ZooKeeperCoordination::new(&self.config()).expect("valid config"))
    }

    /// The suite's usual short settings under its own key prefix.
    fn settings(&self, cluster: ClusterName) -> Settings {
        let mut s = integration_tests::fast_settings(cluster);
        s.key_prefix = PREFIX.into();
        s
    }

    /// An entry goes with its session: at once when the client closes it, at most the
    /// session timeout (plus a tick of the server's expiry) after the process vanished.
    fn expiry_bound(&self, _ttl: Duration) -> Duration {
        SESSION + Duration::from_secs(1)
    }

    async fn stop(&self) {
        self.server.kill();
    }

    async fn start_again(&self) {
        let server = &self.server;
        tokio::task::block_in_place(|| server.start_again());
    }

    async fn put_raw(&self, key: &str, value: &[u8]) {
        let client = zookeeper_client::Client::connect(&self.server.address())
            .await
            .expect("connect");
        let options = zookeeper_client::CreateMode::Persistent
            .with_acls(zookeeper_client::Acls::anyone_all());
        let parent = &key[..key.rfind('/').expect("a path")];
        let _ = client.mkdir(parent, &options).await;
        client.create(key, value, &options).await.expect("create");
    }

    /// The prefix is created with an ACL for `constructr:right-secret` only; a client that
    /// authenticates with another password cannot create under it.
    async fn with_credentials(&self) -> Option<Credentials> {
        let right = self.config().with_user("constructr", "right-secret");
        let owner = zookeeper_client::Client::connector()
            .with_auth("digest", b"constructr:right-secret")
            .connect(&self.server.address())
            .await
            .expect("connect");
        let options = zookeeper_client::CreateMode::Persistent
            .with_acls(zookeeper_client::Acls::creator_all());
        owner
            .create(PREFIX, b"", &options)
            .await
            .expect("the protected prefix");
        let wrong = self.config().with_user("constructr", "wrong-secret");
        Some(Credentials {
            right: Arc::new(ZooKeeperCoordination::new(&right).unwrap()),
            wrong: Arc::new(ZooKeeperCoordination::new(&wrong).unwrap()),
            wrong_secret: "wrong-secret".into(),
            keep: Box::new(owner),
        })
    }
}

macro_rules! scenarios_on_zookeeper {
    ($($scenario:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $scenario() {
                let Some(image) = image() else { return };
                let backend = ZooKeeper {
                    server: ZooKeeperServer::start(&image, "scenario"),
                };
                scenarios::$scenario(&backend).await;
            }
        )*
    };
}

scenarios_on_zookeeper!(
    twenty_nodes_started_at_once_form_exactly_one_cluster,
    lock_holder_stopped_before_registering_lets_exactly_one_other_node_seed,
    aborted_node_entry_expires_within_the_bound,
    gracefully_shut_down_node_is_removed_at_once,
    garbage_under_the_prefix_does_not_disturb_bootstrap,
    waiting_nodes_wake_when_the_seed_registers,
    backend_restart_while_refreshing_recovers_without_rebootstrap,
    dead_and_hung_endpoints_before_the_live_one_are_skipped,
    wrong_credentials_are_a_permanent_error_that_never_shows_the_secret,
    tls_with_client_certificates_and_refused_handshakes,
);
