//! The backend scenario suite of [`constructr_core::scenarios`] on every real service:
//! one etcd member, a three-member etcd cluster and a Consul agent. Each scenario runs as
//! its own test on its own freshly started service.

use constructr_core::scenarios;
use integration_tests::service::{Backend, ScenarioService};

/// One module of tests per `module: Backend` pair, each with a test per scenario.
macro_rules! on_backends {
    ([$($module:ident: $backend:ident),* $(,)?], $scenarios:tt) => {
        $( on_backends!(@tests $module, $backend, $scenarios); )*
    };
    (@tests $module:ident, $backend:ident, [$($scenario:ident),* $(,)?]) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    integration_tests::require_docker!();
                    integration_tests::init_tracing();
                    let service = super::ScenarioService::start(super::Backend::$backend).await;
                    super::scenarios::$scenario(&service).await;
                }
            )*
        }
    };
}

on_backends!(
    [etcd: Etcd, etcd_cluster: EtcdCluster, consul: Consul],
    [
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
    ]
);
