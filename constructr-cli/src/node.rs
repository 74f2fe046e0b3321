//! `constructr node`: one long-lived node of a real (chitchat) cluster, until SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use constructr::chitchat::{
    ChitchatCluster, ChitchatClusterConfig, FailureDetectorSettings, Members, member_node,
    time_ordered_incarnation,
};
use constructr::driver::{self, TimedEvent};
use constructr::management;
use constructr::{Cluster as _, Coordination, Event, Settings, State};
use tokio::sync::broadcast::error::RecvError;

use crate::backend::{self, BackendArgs, Fallback};
use crate::output::outln;
use crate::settings::BackendFile;

/// Options of `constructr node`.
#[derive(Debug, Args)]
pub struct NodeArgs {
    #[command(flatten)]
    backend: BackendArgs,
    /// Gossip (UDP) address to bind, e.g. `0.0.0.0:7946`.
    #[arg(long, value_name = "ADDR")]
    gossip: SocketAddr,
    /// Address peers gossip to, registered in the coordination service (default: --gossip).
    #[arg(long, value_name = "ADDR")]
    advertise: Option<SocketAddr>,
    /// chitchat node id, stable across restarts (default: the advertised address).
    #[arg(long, value_name = "NAME")]
    node_name: Option<String>,
    /// Interval between gossip rounds.
    #[arg(long, default_value = "1s", value_parser = duration)]
    gossip_interval: Duration,
    /// Phi-accrual threshold: a peer is dead after about this many gossip intervals of silence.
    #[arg(long, default_value_t = 8.0)]
    phi_threshold: f64,
    /// Never seed a new cluster: wait (watching) until a node is registered, then join it
    /// (the setting `new-cluster-enabled = false`).
    #[arg(long)]
    join_only: bool,
    /// Print one JSON object per line (`state`, `members`, `time_ms`, ...).
    #[arg(long)]
    json: bool,
    /// Serve the management endpoint on this address: `GET /alive`, `/ready`,
    /// `/bootstrap`, `/members`, `/metrics` (e.g. `0.0.0.0:8558`).
    #[arg(long, value_name = "ADDR")]
    http: Option<SocketAddr>,
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

/// Runs the node until a signal (exit 0 after a graceful leave) or a failure (exit 1).
pub fn run(args: NodeArgs, file: &BackendFile, mut settings: Settings) -> ExitCode {
    let resolved = match args.backend.resolve(file, Fallback::Required) {
        Ok(r) => r,
        Err(e) => return backend::fail(&e),
    };
    if args.join_only {
        settings.new_cluster_enabled = false;
    }
    let mut config = ChitchatClusterConfig::new(settings.cluster_name.as_str(), args.gossip)
        .with_gossip_interval(args.gossip_interval)
        .with_failure_detector(
            FailureDetectorSettings::default()
                .with_phi_threshold(args.phi_threshold)
                // The prior mean heartbeat interval: heartbeats travel with gossip.
                .with_initial_interval(args.gossip_interval * 2),
        );
    if let Some(a) = args.advertise {
        config = config.with_advertise_addr(a);
    }
    if let Some(n) = &args.node_name {
        config = config.with_node_name(n);
    }
    let cluster = match ChitchatCluster::new(config, time_ordered_incarnation()) {
        Ok(c) => Arc::new(c),
        Err(e) => return backend::fail(&e.to_string()),
    };
    if let Err(e) = resolved.validate_settings(&settings) {
        return backend::fail(&e);
    }
    // The machine would retry a join that cannot bind forever: fail fast instead.
    if let Err(e) = std::net::UdpSocket::bind(args.gossip) {
        return backend::fail(&format!(
            "cannot bind the gossip address {}: {e}",
            args.gossip
        ));
    }
    let rt = match crate::runtime(tokio::runtime::Builder::new_multi_thread().worker_threads(2)) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async {
        let coordination = match resolved.coordination() {
            Ok(Some(c)) => c,
            Ok(None) => {
                return backend::fail(
                    "the memory backend lives inside one process: choose --backend etcd or consul",
                );
            }
            Err(e) => return backend::fail(&e),
        };
        let http = match args.http {
            Some(addr) => match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => Some(l),
                Err(e) => {
                    eprintln!("error: cannot listen on --http {addr}: {e}");
                    return ExitCode::FAILURE;
                }
            },
            None => None,
        };
        let service = format!("{} at {}", resolved.name(), resolved.endpoints());
        run_with(coordination, cluster, settings, args.json, http, service).await
    })
}

async fn run_with(
    coordination: Arc<dyn Coordination>,
    cluster: Arc<ChitchatCluster>,
    settings: Settings,
    json: bool,
    http: Option<tokio::net::TcpListener>,
    service: String,
) -> ExitCode {
    let mut out = Printer {
        json,
        node: cluster.node().to_string(),
        start: Instant::now(),
        members: Vec::new(),
        coordination: coordination.clone(),
    };
    let metrics = management::Metrics::new();
    let built = driver::Node::builder()
        .settings(settings)
        .address(cluster.node().clone())
        .coordination(coordination)
        .cluster(cluster.clone())
        .observer(metrics.clone())
        .spawn();
    let mut handle = match built {
        Ok(h) => h,
        Err(e) => return backend::fail(&format!("invalid settings: {e}")),
    };
    // The endpoint answers until the process exits (a probe sees the last state).
    if let Some(listener) = http {
        if let Ok(addr) = listener.local_addr() {
            eprintln!("management endpoint on http://{addr}");
        }
        let app = management::router(handle.monitor(), metrics);
        tokio::spawn(async move {
            if let Err(e) = management::serve(listener, app, std::future::pending()).await {
                eprintln!("error: management endpoint: {e}");
            }
        });
    }
    let mut events = handle.take_events().expect("first call");
    let mut members = cluster.members();
    let mut signals = match Signals::new() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot listen for signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut state = handle.state();
    out.state(None, state);
    let mut shutting_down = false;
    while !state.is_terminal() {
        tokio::select! {
            event = events.recv() => match event {
                Ok(TimedEvent {
                    event: Event::StateChanged { from, to },
                    ..
                }) => {
                    state = to;
                    out.members = addresses(&members.borrow_and_update());
                    out.state(Some(from), to);
                    // A joiner is a member once it registers; a seed once it formed.
                    let member_now = (to == State::AddingSelf && !out.members.is_empty())
                        || from == State::Forming;
                    if member_now && !json {
                        out.members_changed(to);
                    }
                }
                Ok(_) => {}
                Err(RecvError::Lagged(_)) => state = handle.state(),
                Err(RecvError::Closed) => break,
            },
            Ok(()) = members.changed() => {
                let now = addresses(&members.borrow_and_update());
                if now != out.members {
                    out.members = now;
                    if matches!(state, State::AddingSelf | State::RefreshScheduled | State::Refreshing) {
                        out.members_changed(state);
                    }
                }
            }
            () = signals.next() => {
                if shutting_down {
                    eprintln!("second signal: exiting without leaving");
                    return ExitCode::from(130);
                }
                shutting_down = true;
                handle.shutdown();
            }
        }
    }
    let result = handle.stopped().await;
    // The machine leaves on a graceful shutdown; after a failure chitchat may still run.
    let _ = cluster.leave().await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            // The machine's message says what failed; this says where.
            eprintln!("error: {failure} (coordination service: {service})");
            ExitCode::FAILURE
        }
    }
}

/// The live members' gossip addresses, sorted.
fn addresses(members: &Members) -> Vec<String> {
    let mut all: Vec<String> = members
        .iter()
        .map(|(id, s)| {
            member_node(id, s).map_or_else(|| id.gossip_advertise_addr.to_string(), |n| n.address)
        })
        .collect();
    all.sort();
    all.dedup();
    all
}

struct Printer {
    json: bool,
    node: String,
    start: Instant,
    members: Vec<String>,
    coordination: Arc<dyn Coordination>,
}

impl Printer {
    fn time_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// The fields every JSON line carries: the time since start and since the Unix epoch (to
    /// line up the lines of many processes), and the requests sent on the wire so far
    /// (where the backend counts them).
    fn line(&self, event: &str, state: State) -> serde_json::Value {
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        serde_json::json!({
            "time_ms": self.time_ms(),
            "unix_ms": unix_ms,
            "node": self.node,
            "event": event,
            "state": format!("{state:?}"),
            "members": self.members,
            "requests": self.coordination.requests_sent(),
        })
    }

    fn state(&self, from: Option<State>, to: State) {
        if self.json {
            let mut line = self.line("state", to);
            if let Some(from) = from {
                line["from"] = format!("{from:?}").into();
            }
            outln!("{line}");
        } else {
            let from = from.map(|f| format!("{f:?} -> ")).unwrap_or_default();
            outln!(
                "{:>9.3}s  {}  {from}{to:?}",
                self.start.elapsed().as_secs_f64(),
                self.node
            );
        }
    }

    fn members_changed(&self, state: State) {
        if self.json {
            let line = self.line("members", state);
            outln!("{line}");
        } else {
            outln!(
                "{:>9.3}s  {}  members ({}): {}",
                self.start.elapsed().as_secs_f64(),
                self.node,
                self.members.len(),
                self.members.join(" ")
            );
        }
    }
}

/// SIGINT and SIGTERM.
pub(crate) struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    pub(crate) fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    pub(crate) async fn next(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
