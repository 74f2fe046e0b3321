//! `constructr check`: exhaustive model checking of the real state machine.

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use constructr::Settings;
use constructr_check::{CheckConfig, CheckOptions, CheckReport, FaultKind, Mutation, Verdict};

/// Arguments of `constructr check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Nodes (all start at time 0).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=4))]
    nodes: u8,
    /// The last N nodes start at any time within the fault window instead of at 0.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=4))]
    late: u8,
    /// Faults per path at most.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=8))]
    max_faults: u8,
    /// Fault kinds, comma-separated (default: all): outage, crash, shutdown, lost-reply,
    /// slow, timeout, late-write, lock-lost, entry-lost, pause.
    #[arg(long, value_delimiter = ',', value_parser = parse_fault)]
    faults: Option<Vec<FaultKind>>,
    /// Faults happen only up to this virtual time (default 5s).
    #[arg(long, value_parser = humantime::parse_duration)]
    fault_window: Option<Duration>,
    /// Paths are explored up to this virtual time (default 18s, at most 1h).
    #[arg(long, value_parser = humantime::parse_duration)]
    horizon: Option<Duration>,
    /// The longest freeze of a `pause` fault (default: the settings' safe bound,
    /// TTL + re-seed grace − refresh interval − coordination timeout).
    #[arg(long, value_parser = humantime::parse_duration)]
    max_pause: Option<Duration>,
    /// Remove a safety mechanism to see the checker catch it: skip-reread-after-lock,
    /// unfenced-seed-write, no-reseed-grace, form-before-register.
    #[arg(long, value_parser = parse_mutation)]
    mutation: Option<Mutation>,
    /// Checker threads (default: available cores).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256))]
    threads: Option<u16>,
    /// Stop after this long (the verdicts then cover only the explored states; exit 3).
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// Explore depth first: far less memory than breadth first (the default) for deep
    /// checks; counterexamples are then not the shortest.
    #[arg(long)]
    dfs: bool,
    /// Count a state and the same state with its nodes renamed once (symmetry reduction,
    /// depth first): up to N! fewer states for the same proof.
    #[arg(long)]
    symmetry: bool,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Serve stateright's Explorer on this address instead (e.g. 127.0.0.1:3000) and
    /// click through the state space in a browser; runs until interrupted.
    #[arg(long, value_name = "ADDR", conflicts_with_all = ["json", "timeout"])]
    explore: Option<SocketAddr>,
}

fn parse_fault(s: &str) -> Result<FaultKind, String> {
    s.trim().parse()
}

fn parse_mutation(s: &str) -> Result<Mutation, String> {
    s.parse()
}

/// Runs the check. `settings`: the machines' settings from `--config`/`--compat`, if given
/// (else the checker's short round timings).
pub fn run(args: CheckArgs, settings: Option<Settings>) -> ExitCode {
    let mut config = CheckConfig::new(usize::from(args.nodes), args.max_faults)
        .with_mutation(args.mutation)
        .with_late_nodes(usize::from(args.late));
    if let Some(s) = settings {
        config.settings = s;
    }
    config.max_pause = args
        .max_pause
        .unwrap_or_else(|| config.settings.max_safe_pause());
    if let Some(f) = &args.faults {
        config = config.with_faults(f);
    }
    let (window, horizon) = (
        args.fault_window.unwrap_or(config.fault_window),
        args.horizon.unwrap_or(config.horizon),
    );
    config = config.with_times(window, horizon);
    if let Some(address) = args.explore {
        eprintln!("serving the state space explorer on http://{address}/ (Ctrl-C stops)");
        return match constructr_check::explore(config, address) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        };
    }
    let mut options = CheckOptions {
        timeout: args.timeout,
        depth_first: args.dfs || args.symmetry,
        symmetry: args.symmetry,
        ..CheckOptions::default()
    };
    if let Some(t) = args.threads {
        options.threads = usize::from(t);
    }
    let report = match constructr_check::check(config, &options) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let text = if args.json {
        serde_json::to_string(&report).expect("the report serialises") + "\n"
    } else {
        render(&report)
    };
    // A closed pipe (`| head`) is not an error of the check.
    let _ = std::io::stdout().write_all(text.as_bytes());
    if !report.passed() {
        ExitCode::FAILURE
    } else if !report.complete {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    }
}

fn render(r: &CheckReport) -> String {
    let kinds: Vec<_> = r.faults.iter().map(|k| k.name()).collect();
    let mut out = format!(
        "model check of the real machine: {} node(s) ({} starting late), at most {} fault(s) ({}) within {} s, horizon {} s, mutation: {}\n",
        r.nodes,
        r.late,
        r.max_faults,
        kinds.join(", "),
        r.fault_window_s,
        r.horizon_s,
        r.mutation.map_or("none", |m| m.name()),
    );
    out += &format!(
        "explored {} states ({} unique), depth {}, in {:.1} s{}\n",
        r.states,
        r.unique_states,
        r.max_depth,
        r.seconds,
        if r.complete {
            ""
        } else {
            " -- INCOMPLETE: verdicts cover only the explored states"
        }
    );
    for p in &r.properties {
        let verdict = match p.verdict {
            Verdict::Holds => "holds",
            Verdict::Violated => "VIOLATED",
            Verdict::Reached => "reached",
            Verdict::NotReached => "not reached",
        };
        out += &format!("  {verdict:<12} {:<10} {}\n", p.kind, p.name);
        if let Some(trace) = &p.trace
            && p.verdict == Verdict::Violated
        {
            for line in trace {
                out += &format!("      {line}\n");
            }
        }
    }
    out
}
