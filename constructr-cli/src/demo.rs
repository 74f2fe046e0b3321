//! `constructr demo`: N nodes started at once in one process, with a timeline and a summary.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use constructr::driver::{self, TimedEvent};
use constructr::local::LocalCluster;
use constructr::memory::MemoryCoordination;
use constructr::{Coordination, Event, NodeId, Settings, State};
use rand::{Rng, SeedableRng};
use tokio::sync::{broadcast, mpsc};

use crate::backend::{self, BackendArgs, Fallback};
use crate::counting::Counting;
use crate::output::outln;
use crate::settings::BackendFile;

/// What `constructr demo` was asked for, besides the backend and the settings.
pub struct Options {
    /// How many nodes start.
    pub nodes: usize,
    /// One JSON object instead of a timeline.
    pub json: bool,
    /// The seed of the nodes' randomness (random if `None`).
    pub seed: Option<u64>,
    /// Refresh intervals to keep the formed cluster for.
    pub hold_refreshes: u32,
    /// One coordination client per node instead of one shared.
    pub client_per_node: bool,
}

/// Runs the demo on the selected backend.
pub fn run(
    backend: &BackendArgs,
    file: &BackendFile,
    settings: Settings,
    options: Options,
) -> ExitCode {
    let Options {
        nodes,
        json,
        seed,
        hold_refreshes,
        client_per_node,
    } = options;
    let resolved = match backend.resolve(file, Fallback::Memory) {
        Ok(r) => r,
        Err(e) => return backend::fail(&e),
    };
    if let Err(e) = resolved.validate_settings(&settings) {
        return backend::fail(&e);
    }
    let rt = match crate::runtime(&mut tokio::runtime::Builder::new_multi_thread()) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async {
        let demo = Demo {
            backend: resolved.name(),
            settings,
            n: nodes,
            json,
            seed,
            hold_refreshes,
        };
        match resolved.coordination() {
            Ok(None) if client_per_node => backend::fail(
                "--client-per-node needs a coordination service: the memory backend lives in one value",
            ),
            Ok(None) => run_with(vec![Counting::new(MemoryCoordination::default())], demo).await,
            Ok(Some(first)) => {
                let mut clients = vec![Counting::new(first)];
                while client_per_node && clients.len() < nodes {
                    match resolved.coordination() {
                        Ok(Some(c)) => clients.push(Counting::new(c)),
                        Ok(None) => return backend::fail("the backend changed between clients"),
                        Err(e) => return backend::fail(&e),
                    }
                }
                run_with(clients, demo).await
            }
            Err(e) => backend::fail(&e),
        }
    })
}

struct Record {
    at: Duration,
    node: usize,
    event: Event,
}

/// What one demo run does.
pub struct Demo {
    /// The backend's name, for the output.
    pub backend: &'static str,
    /// The nodes' settings.
    pub settings: Settings,
    /// How many nodes start.
    pub n: usize,
    /// One JSON object instead of a timeline.
    pub json: bool,
    /// The seed of the nodes' randomness (random if `None`).
    pub seed: Option<u64>,
    /// Refresh intervals to keep the formed cluster for, counting its requests.
    pub hold_refreshes: u32,
}

/// The clients the demo's nodes use: node `i` uses client `i % len` (one shared client, or
/// one per node).
struct Clients<C>(Vec<Arc<Counting<C>>>);

impl<C: Coordination> Clients<C> {
    fn requests(&self) -> u64 {
        self.0.iter().map(|c| c.requests()).sum()
    }
    fn calls(&self) -> u64 {
        self.0.iter().map(|c| c.calls()).sum()
    }
    fn entries_read(&self) -> u64 {
        self.0.iter().map(|c| c.entries_read()).sum()
    }
    fn for_node(&self, i: usize) -> Arc<Counting<C>> {
        self.0[i % self.0.len()].clone()
    }
}

/// Runs the demo against any backend, with one client shared by every node or one per node.
pub async fn run_with<C: Coordination>(clients: Vec<Counting<C>>, demo: Demo) -> ExitCode {
    assert!(!clients.is_empty(), "at least one client");
    let Demo {
        backend,
        settings,
        n,
        json,
        seed,
        hold_refreshes,
    } = demo;
    let seed = seed.unwrap_or_else(|| rand::rng().random());
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let shared = clients.len() == 1;
    let clients = Clients(clients.into_iter().map(Arc::new).collect());
    let coordination = clients.for_node(0);
    let cluster = LocalCluster::new();
    let (tx, mut rx) = mpsc::unbounded_channel::<Record>();
    let start = Instant::now();
    let mut handles = Vec::with_capacity(n);
    let mut forwarders = Vec::with_capacity(n);
    for i in 0..n {
        let node = NodeId::new(format!("127.0.0.1:{}", 20_000 + i), rng.random());
        let offset = start.elapsed();
        let built = driver::Node::builder()
            .settings(settings.clone())
            .address(node.clone())
            .coordination(clients.for_node(i))
            .cluster(Arc::new(cluster.node(node)))
            .seed(rng.random())
            .spawn();
        let mut handle = match built {
            Ok(h) => h,
            Err(e) => {
                eprintln!("error: invalid settings: {e}");
                return ExitCode::from(2);
            }
        };
        let mut events = handle.take_events().expect("first call");
        let tx = tx.clone();
        forwarders.push(tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(TimedEvent { elapsed, event }) => {
                        let _ = tx.send(Record {
                            at: offset + elapsed,
                            node: i,
                            event,
                        });
                    }
                    // A timeline with a gap is still a timeline.
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        }));
        handles.push(handle);
    }
    drop(tx);
    // Generous bound: everyone registered, or ended.
    let bound = settings.lock_ttl() * 3 + settings.retry_delay * 10 + Duration::from_secs(10);
    let all = futures_all(handles.iter().map(|h| h.registered()).collect());
    let finished = tokio::time::timeout(bound, all).await;
    let formation = start.elapsed();
    let registered = handles.iter().filter(|h| h.state().is_registered()).count();
    let requests_to_form = clients.requests();
    let calls_to_form = clients.calls();
    let entries_read = clients.entries_read();
    let clusters = cluster.clusters();
    let sizes: Vec<usize> = clusters.values().map(|m| m.len()).collect();
    let failures: Vec<String> = handles
        .iter()
        .filter(|h| h.state() == State::Failed)
        .map(|h| h.node().to_string())
        .collect();
    // Steady state: the requests of the formed cluster over `hold_refreshes` intervals.
    let per_refresh = if hold_refreshes > 0 && finished.is_ok() {
        let before = clients.requests();
        tokio::time::sleep(settings.refresh_interval * hold_refreshes).await;
        let held = clients.requests() - before;
        Some(held as f64 / (n as f64 * f64::from(hold_refreshes)))
    } else {
        None
    };

    // Graceful shutdown of every node: entries are removed at once.
    for h in &handles {
        h.shutdown();
    }
    let mut stop_errors = Vec::new();
    for h in handles {
        let node = h.node().clone();
        if let Err(e) = h.stopped().await {
            stop_errors.push(format!("{node}: {e}"));
        }
    }
    let left_over = match coordination
        .get_nodes(&settings.scope().expect("validated"))
        .await
    {
        Ok(r) => Some(r.nodes.len()),
        Err(_) => None,
    };
    // Every node has stopped, so its event channel closes once its forwarder has sent
    // everything: wait for that, or the timeline misses the events not yet forwarded.
    for f in forwarders {
        let _ = tokio::time::timeout(Duration::from_secs(5), f).await;
    }
    let mut records = Vec::new();
    while let Ok(r) = rx.try_recv() {
        records.push(r);
    }
    records.sort_by_key(|r| (r.at, r.node));
    let formation_ms = records
        .iter()
        .filter(|r| {
            matches!(
                r.event,
                Event::StateChanged {
                    to: State::RefreshScheduled,
                    from: State::AddingSelf | State::Forming
                }
            )
        })
        .map(|r| r.at)
        .max()
        .unwrap_or(formation)
        .as_secs_f64()
        * 1000.0;
    let peak_rss_kib = peak_rss_kib();
    let ok = finished.is_ok() && sizes.len() == 1 && registered == n;
    if json {
        let out = serde_json::json!({
            "backend": backend,
            "nodes": n,
            "clients": if shared { "shared" } else { "per-node" },
            "seed": seed,
            "clusters": sizes.len(),
            "clusters_formed": cluster.clusters_formed(),
            "members": sizes.iter().sum::<usize>(),
            "cluster_sizes": sizes,
            "registered": registered,
            "formation_ms": (formation_ms * 1000.0).round() / 1000.0,
            "coordination_requests": requests_to_form,
            "requests_counted_on": if coordination.requests_sent().is_some() { "wire" } else { "calls" },
            "coordination_calls": calls_to_form,
            "entries_read_per_node": (entries_read as f64 / n as f64 * 100.0).round() / 100.0,
            "requests_per_node": (requests_to_form as f64 / n as f64 * 100.0).round() / 100.0,
            "hold_refreshes": hold_refreshes,
            "requests_per_node_per_refresh": per_refresh.map(|r| (r * 100.0).round() / 100.0),
            "failed_nodes": failures,
            "stop_errors": stop_errors,
            "entries_after_shutdown": left_over,
            "peak_rss_kib": peak_rss_kib,
        });
        outln!("{out}");
    } else {
        outln!("timeline ({n} nodes, backend {backend}, seed {seed}):");
        for r in &records {
            let what = &r.event;
            outln!(
                "  {:>9.3} ms  127.0.0.1:{:<6} {what}",
                r.at.as_secs_f64() * 1000.0,
                20_000 + r.node
            );
        }
        outln!();
        outln!(
            "{} cluster(s) {:?}, {registered}/{n} registered, formed in {formation_ms:.1} ms with {requests_to_form} coordination requests",
            sizes.len(),
            sizes
        );
        if let Some(r) = per_refresh {
            outln!(
                "steady state: {r:.2} coordination requests per node per refresh ({hold_refreshes} refreshes)"
            );
        }
        if !failures.is_empty() {
            outln!("failed nodes: {failures:?}");
        }
        match left_over {
            Some(k) => outln!("after graceful shutdown: {k} entries left in the registry"),
            None => outln!("after graceful shutdown: registry not readable"),
        }
        if let Some(kib) = peak_rss_kib {
            outln!("peak memory (RSS): {:.1} MiB", kib as f64 / 1024.0);
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn futures_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut out = Vec::with_capacity(futures.len());
    for f in futures {
        out.push(f.await);
    }
    out
}

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}
