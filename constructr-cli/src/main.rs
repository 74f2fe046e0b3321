//! `constructr`: run a node or a demo cluster, inspect a registry, simulate and model-check
//! the state machine, bridge Serf.

mod backend;
mod check;
mod counting;
mod demo;
mod node;
mod nodes;
mod output;
mod serf;
mod settings;
mod sim;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Bootstrap clusters of service nodes through a coordination service (etcd, Consul, Serf).
#[derive(Debug, Parser)]
#[command(name = "constructr", version)]
struct Cli {
    /// Settings file (TOML: the settings' keys, `coordination-timeout = "3s"`, ..., and the
    /// backend options in `[etcd]` and `[consul]`).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Cluster name (overrides the settings file).
    #[arg(long, global = true, value_name = "NAME")]
    cluster: Option<String>,
    /// Start from a settings preset instead of constructr's defaults (the settings file
    /// overrides single keys of it).
    #[arg(long, global = true, value_enum)]
    compat: Option<Compat>,
    #[command(subcommand)]
    command: Command,
}

/// Settings preset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Compat {
    /// ConstructR's behaviour: its defaults, no watch, 2 retries at fixed `retry-delay`
    /// waits, members fail once those are used up, no re-seed grace.
    Constructr,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start N nodes at once in this process and report how the cluster formed.
    Demo {
        /// Number of nodes.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        nodes: u32,
        #[command(flatten)]
        backend: backend::BackendArgs,
        /// Print one JSON object instead of a timeline.
        #[arg(long)]
        json: bool,
        /// Seed of the nodes' randomness (default: random).
        #[arg(long)]
        seed: Option<u64>,
        /// Keep the formed cluster for this many refresh intervals and report the
        /// steady-state requests per node per refresh.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=10_000))]
        hold_refreshes: u32,
        /// Give every node its own client of the coordination service, as separate
        /// processes have (default: the nodes share one, with its shared reads, watches,
        /// lock requests and grouped registrations).
        #[arg(long)]
        client_per_node: bool,
    },
    /// List the registered nodes of a cluster (what an operator needs to inspect it).
    Nodes {
        #[command(flatten)]
        backend: backend::BackendArgs,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Run one node of a real cluster (chitchat gossip) until SIGINT/SIGTERM.
    Node(node::NodeArgs),
    /// Serf event handler: forwards one Serf event (env + stdin) to the bridge.
    ///
    /// Use as `serf agent -event-handler "constructr serf-handler --bridge http://127.0.0.1:8888"`.
    SerfHandler(serf::HandlerArgs),
    /// Serf bridge: the handler's REST API, typed events, membership per datacenter.
    SerfBridge(serf::BridgeArgs),
    /// Model-check the real state machine: every interleaving of 1-4 nodes, up to K faults.
    ///
    /// Prints each safety and liveness property's verdict, counterexamples as traces.
    Check(check::CheckArgs),
    /// Run the deterministic simulation (virtual time, optional faults).
    Sim {
        /// Number of trials.
        #[arg(long, default_value_t = 1000)]
        trials: u64,
        /// Nodes per trial.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        nodes: u32,
        /// Base seed; trial i uses a seed derived from it (printed for failing trials).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Inject faults (errors, lost/slow replies, crashes, pauses, lock/TTL expiry).
        #[arg(long)]
        faults: bool,
        /// Replay exactly one trial with this trial seed.
        #[arg(long, conflicts_with = "trials")]
        replay: Option<u64>,
        /// Worker threads (default: available cores).
        #[arg(long)]
        threads: Option<usize>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The Serf commands run before any logging is set up: a query handler's stderr would
    // become part of the query's response.
    match &cli.command {
        Command::SerfHandler(args) => return serf::run_handler(args),
        Command::SerfBridge(args) => return serf::run_bridge(args),
        _ => {}
    }
    let _ = tracing_subscriber::fmt()
        .with_ansi(colours(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CONSTRUCTR_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let preset = cli
        .compat
        .map(|Compat::Constructr| constructr::Settings::constructr_compat());
    let (base, backend_file) =
        match settings::load(cli.config.as_deref(), cli.cluster.as_deref(), preset) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        };
    match cli.command {
        Command::Nodes { backend, json } => nodes::run(&backend, &backend_file, base, json),
        Command::Node(args) => node::run(args, &backend_file, base),
        Command::SerfHandler(_) | Command::SerfBridge(_) => unreachable!("dispatched above"),
        Command::Check(args) => check::run(
            args,
            (cli.config.is_some() || cli.compat.is_some()).then_some(base),
        ),
        Command::Demo {
            nodes,
            backend,
            json,
            seed,
            hold_refreshes,
            client_per_node,
        } => {
            // A fresh cluster name per run, unless the user named one: a demo must not meet
            // the lock or entries of an earlier run in a shared coordination service.
            let mut settings = base;
            if cli.cluster.is_none() && cli.config.is_none() {
                settings.cluster_name =
                    constructr::ClusterName::new(format!("demo-{:08x}", rand::random::<u32>()))
                        .expect("valid name");
            }
            demo::run(
                &backend,
                &backend_file,
                settings,
                demo::Options {
                    nodes: nodes as usize,
                    json,
                    seed,
                    hold_refreshes,
                    client_per_node,
                },
            )
        }
        Command::Sim {
            trials,
            nodes,
            seed,
            faults,
            replay,
            threads,
            json,
        } => sim::run(sim::SimArgs {
            settings: (cli.config.is_some() || cli.compat.is_some()).then_some(base),
            trials,
            nodes: nodes as usize,
            seed,
            faults,
            replay,
            threads,
            json,
        }),
    }
}

/// A tokio runtime (all drivers enabled) for a command, or the exit code after saying on
/// stderr why there is none.
pub(crate) fn runtime(
    builder: &mut tokio::runtime::Builder,
) -> Result<tokio::runtime::Runtime, ExitCode> {
    builder.enable_all().build().map_err(|e| {
        eprintln!("error: cannot start the runtime: {e}");
        ExitCode::FAILURE
    })
}

/// Whether to colour what goes to `stream`: only a terminal, and never with `NO_COLOR` set
/// to anything but the empty string (<https://no-color.org>).
fn colours(stream: &impl std::io::IsTerminal) -> bool {
    stream.is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
