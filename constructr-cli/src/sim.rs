//! `constructr sim`: the deterministic simulation from the command line.

use std::process::ExitCode;
use std::time::Instant;

use constructr::Settings;
use constructr::sim::{SimConfig, run_trial, run_trials};

use crate::output::outln;

pub struct SimArgs {
    pub settings: Option<Settings>,
    pub trials: u64,
    pub nodes: usize,
    pub seed: u64,
    pub faults: bool,
    pub replay: Option<u64>,
    pub threads: Option<usize>,
    pub json: bool,
}

pub fn run(args: SimArgs) -> ExitCode {
    let mut config = SimConfig {
        nodes: args.nodes,
        faults: args.faults,
        ..SimConfig::default()
    };
    if let Some(s) = args.settings {
        config.settings = s;
    }
    let started = Instant::now();
    let report = match args.replay {
        Some(seed) => {
            let o = run_trial(&config, seed);
            let mut r = constructr::sim::SimReport {
                trials: 1,
                islands: o.islands as u64,
                coordination_requests: o.coordination_requests,
                seeds_refused: o.seeds_refused,
                failed_machines: o.failed_machines,
                clusters_lost: o.clusters_lost,
                ..Default::default()
            };
            eprintln!("scenario: {:?}", o.scenario);
            if !o.ok() {
                r.failed_seeds.push(seed);
                r.failures.extend(o.violations.iter().cloned());
                if o.islands > 0 {
                    r.failures.push(format!("{} islands", o.islands));
                }
            }
            r
        }
        None => {
            let threads = args
                .threads
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            run_trials(&config, args.seed, args.trials, threads)
        }
    };
    let elapsed = started.elapsed();
    let per_sec = report.trials as f64 / elapsed.as_secs_f64().max(1e-9);
    if args.json {
        let out = serde_json::json!({
            "trials": report.trials,
            "nodes": args.nodes,
            "faults": args.faults,
            "seed": args.seed,
            "islands": report.islands,
            "failed_seeds": report.failed_seeds,
            "failures": report.failures,
            "coordination_requests": report.coordination_requests,
            "seeds_refused": report.seeds_refused,
            "failed_machines": report.failed_machines,
            "clusters_lost": report.clusters_lost,
            "scenarios": {
                "random_faults": report.scenarios[0],
                "outage": report.scenarios[1],
                "wipe": report.scenarios[2],
                "join_errors": report.scenarios[3],
            },
            "elapsed_ms": elapsed.as_millis() as u64,
            "trials_per_sec": per_sec.round(),
        });
        outln!("{out}");
    } else {
        outln!(
            "{} trials of {} nodes{} in {:.2} s ({:.0} trials/s): {} islands, {} failed trials, {} refused seed registrations, {} failed machines, {} members lost their cluster",
            report.trials,
            args.nodes,
            if args.faults { " with faults" } else { "" },
            elapsed.as_secs_f64(),
            per_sec,
            report.islands,
            report.failed_seeds.len(),
            report.seeds_refused,
            report.failed_machines,
            report.clusters_lost,
        );
        for (seed, why) in report.failed_seeds.iter().zip(&report.failures).take(20) {
            outln!(
                "  failed trial seed {seed}: {why}  (replay: constructr sim --replay {seed}{})",
                if args.faults { " --faults" } else { "" }
            );
        }
    }
    if report.failed_seeds.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
