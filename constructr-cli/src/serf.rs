//! `constructr serf-handler` and `constructr serf-bridge`: their arguments and process exit
//! codes. The handler and the bridge themselves live in `constructr-serf`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use constructr::serf::bridge::{Bridge, BridgeConfig, event_json};
use constructr::serf::handler::{self, HandlerConfig};
use constructr::serf::{SerfClient, SerfConfig};

/// Options of `constructr serf-handler`.
#[derive(Clone, Debug, PartialEq, Eq, clap::Args)]
pub struct HandlerArgs {
    /// Base URL of the bridge.
    #[arg(
        long,
        env = "CONSTRUCTR_SERF_BRIDGE",
        default_value = "http://127.0.0.1:8888",
        value_name = "URL"
    )]
    pub bridge: String,
    /// Name of the tag that holds a member's datacenter.
    #[arg(long, default_value = "dc", value_name = "TAG")]
    pub dc_tag: String,
    /// Datacenter of members without the dc tag.
    #[arg(long, default_value = "default", value_name = "DC")]
    pub default_dc: String,
    /// Timeout of one request to the bridge.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub timeout: Duration,
    /// Retries of a request that failed with a connection error, timeout or 5xx (the
    /// default waits 11 s in all: longer than a supervised restart of the bridge).
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub retries: u32,
    /// Delay before the first retry; it doubles with every retry, up to 2 s.
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub retry_delay: Duration,
    /// The agent's `query_response_size_limit` (bytes of the whole response message).
    #[arg(long, default_value_t = 1024, value_name = "BYTES")]
    pub query_response_limit: usize,
}

impl HandlerArgs {
    fn config(&self) -> HandlerConfig {
        let mut c = HandlerConfig::new(self.bridge.clone());
        c.dc_tag = self.dc_tag.clone();
        c.default_dc = self.default_dc.clone();
        c.timeout = self.timeout;
        c.retries = self.retries;
        c.retry_delay = self.retry_delay;
        c.query_response_limit = self.query_response_limit;
        c
    }
}

/// Runs the handler on this process's stdin and environment; the exit code tells Serf
/// whether the event was forwarded (0), could not be (1) or was malformed (2).
pub fn run_handler(args: &HandlerArgs) -> ExitCode {
    ExitCode::from(handler::run_on_process_io(&args.config()))
}

/// Options of `constructr serf-bridge`.
#[derive(Clone, Debug, PartialEq, Eq, clap::Args)]
pub struct BridgeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8888", value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Name of the tag that holds a member's datacenter.
    #[arg(long, default_value = "dc", value_name = "TAG")]
    pub dc_tag: String,
    /// How long a query waits for an answer (`POST /queries/{id}/response`).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub query_timeout: Duration,
    /// Largest accepted request body.
    #[arg(long, default_value_t = 64 * 1024, value_name = "BYTES")]
    pub body_limit: usize,
    /// Do not print events to stdout.
    #[arg(long)]
    pub quiet: bool,
    /// RPC address of the local Serf agent: the view is loaded from its member list at
    /// start and reconciled with it every `--reconcile-interval` (so a restarted bridge
    /// does not start empty, and events it missed reach the subscribers).
    #[arg(long, value_name = "ADDR")]
    pub rpc: Option<String>,
    /// The agent's RPC auth key (prefer the environment variable: arguments show in `ps`).
    #[arg(
        long,
        env = "CONSTRUCTR_SERF_RPC_AUTH",
        hide_env_values = true,
        requires = "rpc"
    )]
    pub rpc_auth: Option<constructr::serf::Secret>,
    /// How often the view is reconciled with the agent (with `--rpc`).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub reconcile_interval: Duration,
    /// This node's datacenter: keep the datacenter quorum (`GET /quorum`, `quorum` events).
    #[arg(long, value_name = "DC")]
    pub quorum: Option<String>,
    /// Quorum: how long 3+ datacenters hold quorum before `high-available`.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub quorum_ha_after: Duration,
    /// Quorum: how long a failed member still counts its datacenter as active.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub quorum_failure_grace: Duration,
    /// Datacenter of members without the dc tag (with `--rpc`; as the handler's).
    #[arg(long, default_value = "default", value_name = "DC")]
    pub default_dc: String,
}

/// Runs a stand-alone bridge until SIGINT/SIGTERM: serves the endpoints and the membership
/// view, and prints every event as one JSON line to stdout (unless `--quiet`). A query
/// waits up to `--query-timeout` for `POST /queries/{id}/response` (e.g. from a `GET
/// /events` subscriber); unanswered, it gets 504 and the node sends no response. With
/// `--quiet` and no `/events` subscriber, queries get 503 at once.
pub fn run_bridge(args: &BridgeArgs) -> ExitCode {
    let rt = match crate::runtime(tokio::runtime::Builder::new_multi_thread().worker_threads(2)) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async {
        let config = BridgeConfig::default()
            .with_dc_tag(args.dc_tag.clone())
            .with_query_timeout(args.query_timeout)
            .with_body_limit(args.body_limit)
            .with_quorum_ha_after(args.quorum_ha_after)
            .with_quorum_failure_grace(args.quorum_failure_grace);
        let config = match &args.quorum {
            Some(dc) => config.with_quorum_dc(dc.clone()),
            None => config,
        };
        let bridge = Bridge::new(config);
        if let Some(rpc) = &args.rpc {
            let mut serf = SerfConfig::new(rpc.clone());
            serf.auth_key = args.rpc_auth.clone();
            let client = match serf.validate().and_then(|()| SerfClient::new(serf)) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("constructr serf-bridge: --rpc: {e}");
                    return ExitCode::from(2);
                }
            };
            if args.reconcile_interval.is_zero() {
                eprintln!("constructr serf-bridge: --reconcile-interval must be above zero");
                return ExitCode::from(2);
            }
            let follow = bridge.clone().follow_agent(
                client,
                args.default_dc.clone(),
                args.reconcile_interval,
            );
            tokio::spawn(follow);
        }
        if !args.quiet {
            let mut events = bridge.subscribe();
            tokio::spawn(async move {
                while let Some(e) = events.recv().await {
                    crate::output::outln!("{}", event_json(&e));
                }
            });
        }
        let listener = match tokio::net::TcpListener::bind(args.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!(
                    "constructr serf-bridge: cannot listen on {}: {e}",
                    args.listen
                );
                return ExitCode::FAILURE;
            }
        };
        let mut signals = match crate::node::Signals::new() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("constructr serf-bridge: cannot listen for signals: {e}");
                return ExitCode::FAILURE;
            }
        };
        eprintln!("constructr serf-bridge: listening on {}", args.listen);
        match bridge
            .serve(listener, async move { signals.next().await })
            .await
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("constructr serf-bridge: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
