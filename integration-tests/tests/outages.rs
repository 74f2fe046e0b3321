//! A running cluster outlives its coordination service.
//!
//! Once a cluster has formed, the coordination service only keeps its registry: when it is
//! down, or loses entries, the members keep their membership and keep running, and register
//! again once it answers. Each scenario runs on one etcd member, a three-member etcd cluster,
//! a Consul dev agent (which loses everything when it restarts) and a persistent Consul server.
//!
//! - `members_survive_backend_outage`: three `constructr node` processes; the service is
//!   killed for three entry TTLs and started again. Nobody exits, leaves or re-bootstraps;
//!   everybody is registered again within a refresh interval (plus slack) of the service's
//!   return, in the same cluster (epoch).
//! - `newcomer_joins_old_cluster_after_entries_wiped`: the node entries of a running cluster
//!   of three vanish (the epoch stays); a fourth process started right then joins the old
//!   cluster instead of seeding a second one, and nobody of the old cluster starts over.
//! - `seed_keeps_its_cluster_when_its_committed_registration_reply_is_lost` (in-process): a
//!   seed's fenced registration commits, its reply is lost, and the seed is held up past the
//!   lock TTL; it has formed nothing yet (it forms only once its registration is known to
//!   have committed), recognises its own registration, forms the cluster the epoch names,
//!   and a second node then joins it.
//! - `measure_outage_outcome` (ignored): one run of "outage length → outcome" for
//!   `scripts/outage.sh`, parameterised by environment variables.
//!
//! The settings files set no `nr-of-retries`: surviving an outage must not depend on a retry
//! budget. Process-level checks rely only on the `--json` lines (states and live members) and
//! on the registry itself, not on the name of the state a member is in while the service is
//! unreachable.

use constructr_core::coordination::Result;
use std::process::ExitStatus;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use constructr_core::driver::{self, TimedEvent};
use constructr_core::local::LocalCluster;
use constructr_core::{
    AddMode, AddOutcome, ClusterId, ClusterName, Coordination, CoordinationError, Event, Lease,
    LockOutcome, NodeId, RefreshOutcome, Registry, Scope, Settings, State, WaitOutcome, entry,
};
use integration_tests::nodes::node_id;
use integration_tests::process::{
    KEY_PREFIX, NodeProcess, Setup, converged, free_udp_ports, is_registered_state, poll_until,
    profile, sorted, wait_until,
};
use integration_tests::service::{Backend, Service};
use integration_tests::{eventually, init_tracing, unique_cluster_name};
use tokio::sync::{broadcast, watch};

// ---------------------------------------------------------------------------------------
// Settings

/// Formation of a fresh cluster on a loaded machine.
const FORMATION: Duration = Duration::from_secs(60);
/// Slack on top of a refresh interval for every member to be registered again once the
/// service is back (reconnecting, a retry or two, a re-registration).
const REREGISTER_SLACK: Duration = Duration::from_secs(5);
/// How long the outage scenario waits for re-registrations at most (the check is against
/// refresh-interval + [`REREGISTER_SLACK`]; waiting longer measures how late they are).
const REREGISTER_WAIT: Duration = Duration::from_secs(30);
/// States a member that keeps its membership never enters again.
const STARTING_OVER: [&str; 3] = ["Resetting", "Failed", "GettingNodes"];

// ---------------------------------------------------------------------------------------
// Tests: every scenario on every backend

macro_rules! on_every_backend {
    ($($scenario:ident),* $(,)?) => {
        on_every_backend!(@mod etcd, Etcd, $($scenario),*);
        on_every_backend!(@mod etcd_cluster, EtcdCluster, $($scenario),*);
        on_every_backend!(@mod consul, Consul, $($scenario),*);
        on_every_backend!(@mod consul_persistent, ConsulPersistent, $($scenario),*);
    };
    (@mod $module:ident, $backend:ident, $($scenario:ident),*) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    integration_tests::require_docker!();
                    super::$scenario(integration_tests::service::Backend::$backend).await;
                }
            )*
        }
    };
}

on_every_backend!(
    members_survive_backend_outage,
    newcomer_joins_old_cluster_after_entries_wiped,
    seed_keeps_its_cluster_when_its_committed_registration_reply_is_lost,
);

// ---------------------------------------------------------------------------------------
// 1. The service goes down for a while and comes back

/// What happened to the processes of one outage.
struct OutageOutcome {
    nodes: usize,
    /// How long the service was unreachable (stop until it served again).
    downtime: Duration,
    /// Per process: exit status and when after the outage began it was seen exited.
    exits: Vec<Option<(ExitStatus, Duration)>>,
    /// Per process: the first state of [`STARTING_OVER`] it entered after the cluster had
    /// formed, and when after the outage began.
    started_over: Vec<Option<(String, Duration)>>,
    /// Per process: time from the service's return until it had entered `RefreshScheduled`
    /// again and the registry listed it (`None`: not within [`REREGISTER_WAIT`]).
    reregistered: Vec<Option<Duration>>,
    /// Per process: its live members at the end, if not every process.
    members_lost: Vec<Option<Vec<String>>>,
    epoch_before: ClusterId,
    /// The epoch at the end (`None`: none, or the registry did not answer).
    epoch_after: Option<ClusterId>,
    /// Registered addresses at the end.
    registered_after: Vec<String>,
    /// Every process's address, in start order, and sorted.
    gossip: Vec<String>,
    all: Vec<String>,
    dump: String,
}

impl OutageOutcome {
    /// `#{i} ({address})` of process `i` (in start order).
    fn name(&self, i: usize) -> String {
        format!("#{i} ({})", self.gossip[i])
    }

    fn exited(&self) -> usize {
        self.exits.iter().flatten().count()
    }

    /// Processes that exited or started over: no longer the members they were.
    fn left_cluster(&self) -> usize {
        self.exits
            .iter()
            .zip(&self.started_over)
            .filter(|(e, s)| e.is_some() || s.is_some())
            .count()
    }

    /// The slowest re-registration, if every process still running re-registered.
    fn max_time_to_reregister(&self) -> Option<Duration> {
        let alive: Vec<Option<Duration>> = self
            .exits
            .iter()
            .zip(&self.reregistered)
            .filter(|(e, _)| e.is_none())
            .map(|(_, r)| *r)
            .collect();
        if alive.is_empty() {
            return None;
        }
        alive
            .into_iter()
            .collect::<Option<Vec<_>>>()
            .and_then(|r| r.into_iter().max())
    }
}

/// `nodes` processes form one cluster; the service is killed for `outage` and started
/// again; then the processes get [`REREGISTER_WAIT`] to be registered again.
async fn run_outage(setup: &Setup, nodes: usize, outage: Duration) -> OutageOutcome {
    let ports = free_udp_ports(nodes);
    let mut procs: Vec<NodeProcess> = ports.iter().map(|&p| setup.start(p)).collect();
    let all = sorted(procs.iter().map(|p| p.gossip.clone()));
    wait_until(
        &mut procs.iter_mut().collect::<Vec<_>>(),
        FORMATION,
        &format!("{nodes} processes in one cluster of {nodes}"),
        |ps| converged(ps, &all),
    )
    .await;
    let epoch_before = setup.registry().await.epoch.expect("an epoch").cluster;
    let formed = Instant::now();

    setup.service.stop().await;
    let down = Instant::now();
    let mut exits: Vec<Option<(ExitStatus, Duration)>> = vec![None; nodes];
    let watch_exits = |procs: &mut [NodeProcess], exits: &mut [Option<(ExitStatus, Duration)>]| {
        for (p, e) in procs.iter_mut().zip(exits.iter_mut()) {
            if e.is_none()
                && let Some(status) = p.try_exit()
            {
                *e = Some((status, down.elapsed()));
            }
        }
    };
    while down.elapsed() < outage {
        watch_exits(&mut procs, &mut exits);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    setup.service.start_again().await;
    let back = Instant::now();
    let downtime = back - down;

    // Registered again: entered RefreshScheduled after the return, registered now, and
    // listed by the registry.
    let mut listed: Vec<Option<Duration>> = vec![None; nodes];
    let mut reregistered: Vec<Option<Duration>> = vec![None; nodes];
    loop {
        watch_exits(&mut procs, &mut exits);
        if let Ok(registry) = setup.try_registry().await {
            let seen = back.elapsed();
            for (p, l) in procs.iter().zip(listed.iter_mut()) {
                if l.is_none() && registry.nodes.iter().any(|n| n.address == p.gossip) {
                    *l = Some(seen);
                }
            }
        }
        for ((p, r), l) in procs.iter().zip(reregistered.iter_mut()).zip(&listed) {
            if r.is_none()
                && let (Some(entered), Some(listed)) =
                    (p.first_entered_after("RefreshScheduled", back), l)
                && p.is_registered()
            {
                *r = Some((entered - back).max(*listed));
            }
        }
        let done = exits
            .iter()
            .zip(&reregistered)
            .all(|(e, r)| e.is_some() || r.is_some());
        if done || back.elapsed() > REREGISTER_WAIT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    watch_exits(&mut procs, &mut exits);

    let started_over = procs
        .iter()
        .map(|p| {
            p.lines_after(formed)
                .into_iter()
                .filter(|l| l.is_state_change())
                .find(|l| l.state().is_some_and(|s| STARTING_OVER.contains(&s)))
                .map(|l| {
                    let state = l.state().unwrap_or_default().to_owned();
                    let at = l.at.saturating_duration_since(down);
                    (state, at)
                })
        })
        .collect();
    let members_lost = procs
        .iter()
        .zip(&exits)
        .map(|(p, e)| {
            let m = p.members();
            (e.is_none() && m != all).then_some(m)
        })
        .collect();
    let registry = setup.try_registry().await.ok();
    let dump: Vec<String> = procs.iter().map(|p| p.describe_last(8)).collect();
    OutageOutcome {
        nodes,
        downtime,
        exits,
        started_over,
        reregistered,
        members_lost,
        epoch_before,
        epoch_after: registry.as_ref().and_then(|r| r.epoch).map(|e| e.cluster),
        registered_after: sorted(
            registry
                .into_iter()
                .flat_map(|r| r.nodes)
                .map(|n| n.address),
        ),
        gossip: procs.iter().map(|p| p.gossip.clone()).collect(),
        all,
        dump: dump.join("\n"),
    }
}

async fn members_survive_backend_outage(backend: Backend) {
    let p = profile(backend);
    let setup = Setup::launch(backend, "outage", p.toml, p.ttl).await;
    let outage = p.ttl * 3;
    let o = run_outage(&setup, 3, outage).await;
    let bound = p.refresh_interval + REREGISTER_SLACK;
    println!(
        "{}: down for {} ms; {} of {} exited, {} left the cluster; re-registered after {:?} \
         (slowest: {:?}, bound {bound:?})",
        backend.name(),
        o.downtime.as_millis(),
        o.exited(),
        o.nodes,
        o.left_cluster(),
        o.reregistered,
        o.max_time_to_reregister(),
    );

    let mut problems = Vec::new();
    let exits = o
        .exits
        .iter()
        .map(|e| e.as_ref().map(|(s, at)| (format!("exited ({s})"), at)));
    let restarts = o.started_over.iter().map(|s| {
        s.as_ref()
            .map(|(state, at)| (format!("entered {state}"), at))
    });
    for (i, (what, at)) in exits
        .enumerate()
        .chain(restarts.enumerate())
        .filter_map(|(i, e)| Some((i, e?)))
    {
        problems.push(format!(
            "process {} {what} {} ms after the outage began",
            o.name(i),
            at.as_millis()
        ));
    }
    for (i, m) in o.members_lost.iter().enumerate() {
        if let Some(m) = m {
            problems.push(format!(
                "process {} sees live members {m:?}, not {:?}",
                o.name(i),
                o.all
            ));
        }
    }
    for (i, (r, e)) in o.reregistered.iter().zip(&o.exits).enumerate() {
        match r {
            Some(t) if *t > bound => problems.push(format!(
                "process {} registered again only {} ms after the service was back (bound {} ms)",
                o.name(i),
                t.as_millis(),
                bound.as_millis()
            )),
            Some(_) => {}
            None if e.is_none() => problems.push(format!(
                "process {} was not registered again within {REREGISTER_WAIT:?} of the service's return",
                o.name(i)
            )),
            None => {}
        }
    }
    if o.registered_after != o.all {
        problems.push(format!(
            "the registry lists {:?} at the end, not {:?}",
            o.registered_after, o.all
        ));
    }
    if o.epoch_after != Some(o.epoch_before) {
        problems.push(format!(
            "the registry's epoch is {:?} at the end, not the cluster's {}",
            o.epoch_after, o.epoch_before
        ));
    }
    assert!(
        problems.is_empty(),
        "{}: the cluster did not outlive a {} ms outage of its coordination service:\n- {}\n{}",
        backend.name(),
        o.downtime.as_millis(),
        problems.join("\n- "),
        o.dump
    );
}

// ---------------------------------------------------------------------------------------
// 2. The entries vanish and a newcomer arrives

async fn newcomer_joins_old_cluster_after_entries_wiped(backend: Backend) {
    let p = profile(backend);
    let setup = Setup::launch(backend, "wiped", p.toml, p.ttl).await;
    let ports = free_udp_ports(4);
    let mut procs: Vec<NodeProcess> = ports[..3].iter().map(|&port| setup.start(port)).collect();
    let old = sorted(procs.iter().map(|p| p.gossip.clone()));
    wait_until(
        &mut procs.iter_mut().collect::<Vec<_>>(),
        FORMATION,
        "3 processes in one cluster of 3",
        |ps| converged(ps, &old),
    )
    .await;
    let epoch = setup.registry().await.epoch.expect("an epoch").cluster;
    // Long after bootstrap: the seed's bootstrap lock has expired (a newcomer could take it).
    let lock_ttl = p.join_timeout + p.coordination_timeout * 2;
    let lock_key = entry::lock_key(&setup.scope());
    eventually(
        setup.service.expiry_bound(lock_ttl) + Duration::from_secs(5),
        "the bootstrap lock expired",
        || async { (!setup.service.key_exists(&lock_key).await).then_some(()) },
    )
    .await;

    // Wipe right after the members refreshed, so that the newcomer reads the empty registry
    // before any member notices that its entry is gone.
    let gap = wait_for_refresh_gap(&procs, p.refresh_interval).await;
    let wiped = Instant::now();
    setup
        .service
        .delete_prefix(&entry::nodes_prefix(&setup.scope()))
        .await;
    procs.push(setup.start(ports[3]));
    let newcomer = procs[3].gossip.clone();
    let all = sorted(procs.iter().map(|p| p.gossip.clone()));
    println!(
        "{}: wiped the node entries {} ms before the next refresh was due; newcomer {newcomer}",
        backend.name(),
        gap.as_millis()
    );

    // The newcomer waits for the members to re-register, then joins them.
    let timeout = p.refresh_interval
        + p.coordination_timeout * 2
        + p.retry_delay
        + p.join_timeout
        + Duration::from_secs(30);
    let took = poll_until(&mut procs.iter_mut().collect::<Vec<_>>(), timeout, |ps| {
        converged(ps, &all)
    })
    .await;
    println!(
        "{}: one cluster of 4 {took:?} after the wipe",
        backend.name()
    );

    for (i, member) in procs.iter().enumerate() {
        let states: Vec<String> = member
            .lines_after(wiped)
            .iter()
            .filter(|l| l.is_state_change())
            .map(|l| {
                format!(
                    "+{}ms {}",
                    l.at.saturating_duration_since(wiped).as_millis(),
                    l.state().unwrap_or_default()
                )
            })
            .collect();
        println!(
            "#{i} ({}) after the wipe: {}",
            member.gossip,
            states.join(", ")
        );
    }

    let mut problems = Vec::new();
    if took.is_none() {
        problems.push(format!(
            "the 4 processes were not one cluster of 4 within {timeout:?}"
        ));
    }
    for line in procs[3].lines() {
        let in_cluster = line
            .state()
            .is_some_and(|s| s == "AddingSelf" || s == "Forming" || is_registered_state(s));
        if in_cluster && line.members() == [newcomer.clone()] {
            problems.push(format!(
                "the newcomer formed a cluster of its own: {}",
                line.value
            ));
            break;
        }
    }
    for (i, member) in procs[..3].iter_mut().enumerate() {
        if let Some(status) = member.try_exit() {
            problems.push(format!(
                "old member #{i} ({}) exited ({status})",
                member.gossip
            ));
        }
        let after = member.lines_after(wiped);
        if let Some(l) = after
            .iter()
            .find(|l| l.is_state_change() && l.state().is_some_and(|s| STARTING_OVER.contains(&s)))
        {
            problems.push(format!(
                "old member #{i} ({}) started over {} ms after the wipe: {}",
                member.gossip,
                l.at.saturating_duration_since(wiped).as_millis(),
                l.value
            ));
        }
        if let Some(l) = after.iter().find(|l| l.members().len() == 1) {
            problems.push(format!(
                "old member #{i} ({}) was alone: {}",
                member.gossip, l.value
            ));
        }
    }
    // Every member re-registers on its next refresh, at most one refresh interval (and a
    // request) after the wipe; gossip can show one cluster of 4 before the last of them has.
    let reregistered_by = wiped + p.refresh_interval + p.coordination_timeout * 2;
    let mut read = setup.try_registry().await;
    while Instant::now() < reregistered_by
        && !read
            .as_ref()
            .is_ok_and(|r| sorted(r.nodes.iter().map(|n| n.address.clone())) == all)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
        read = setup.try_registry().await;
    }
    match read {
        Ok(registry) => {
            let cluster = registry.epoch.map(|e| e.cluster);
            if cluster != Some(epoch) {
                problems.push(format!(
                    "the registry's epoch names {cluster:?}, not the old cluster {epoch}"
                ));
            }
            let registered = sorted(registry.nodes.into_iter().map(|n| n.address));
            if registered != all {
                problems.push(format!("the registry lists {registered:?}, not {all:?}"));
            }
        }
        Err(e) => problems.push(format!("the registry did not answer: {e}")),
    }
    let dump: Vec<String> = procs.iter().map(|p| p.describe_last(10)).collect();
    assert!(
        problems.is_empty(),
        "{}: the newcomer did not join the old cluster after the entries were wiped:\n- {}\n{}",
        backend.name(),
        problems.join("\n- "),
        dump.join("\n")
    );
}

/// Waits until every process's next refresh (due a refresh interval after it last entered
/// `RefreshScheduled`) is at least 40 % of an interval away; returns how far away it is.
/// Gives up (returning zero) after five intervals.
async fn wait_for_refresh_gap(procs: &[NodeProcess], interval: Duration) -> Duration {
    let want = interval.mul_f64(0.4);
    let give_up = Instant::now() + interval * 5;
    loop {
        let now = Instant::now();
        let soonest = procs
            .iter()
            .map(|p| {
                let scheduled = p.last_entered("RefreshScheduled")?;
                // A refresh in flight (Refreshing after the last RefreshScheduled) is due now.
                match p.last_entered("Refreshing") {
                    Some(r) if r > scheduled => None,
                    _ => Some(scheduled + interval),
                }
            })
            .collect::<Option<Vec<_>>>()
            .and_then(|next| next.into_iter().min());
        if let Some(soonest) = soonest
            && soonest > now
            && soonest - now >= want
        {
            return soonest - now;
        }
        if now > give_up {
            return Duration::ZERO;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---------------------------------------------------------------------------------------
// 3. A seed's committed registration whose reply is lost

/// What the wrapper saw of the seed's first (fenced) registration.
#[derive(Clone, Debug)]
struct Committed {
    at: Instant,
    outcome: Result<AddOutcome, String>,
    /// The registry right after it.
    registry: Option<Registry>,
}

/// One node's coordination: the first `AddMode::Seed` registration is performed for real,
/// then its reply and every later call of the node wait until the test opens the gate (the
/// node is held up); the first registration then reports `Timeout`, later calls go through.
struct LoseSeedReply {
    inner: Arc<dyn Coordination>,
    tripped: AtomicBool,
    gate: watch::Receiver<bool>,
    committed: watch::Sender<Option<Committed>>,
}

impl LoseSeedReply {
    async fn hold(&self) {
        if self.tripped.load(Ordering::SeqCst) {
            let mut gate = self.gate.clone();
            let _ = gate.wait_for(|open| *open).await;
        }
    }
}

#[async_trait]
impl Coordination for LoseSeedReply {
    fn guarantees(&self) -> constructr_core::coordination::Guarantees {
        self.inner.guarantees()
    }

    async fn get_nodes(&self, scope: &Scope) -> Result<Registry> {
        self.hold().await;
        self.inner.get_nodes(scope).await
    }

    async fn lock(&self, lease: Lease<'_>) -> Result<LockOutcome> {
        self.hold().await;
        self.inner.lock(lease).await
    }

    async fn add_self(&self, lease: Lease<'_>, mode: &AddMode) -> Result<AddOutcome> {
        if matches!(mode, AddMode::Seed { .. }) && !self.tripped.swap(true, Ordering::SeqCst) {
            let outcome = self.inner.add_self(lease, mode).await;
            let registry = self.inner.get_nodes(lease.scope).await.ok();
            self.committed.send_replace(Some(Committed {
                at: Instant::now(),
                outcome: outcome.map_err(|e| e.to_string()),
                registry,
            }));
            let mut gate = self.gate.clone();
            let _ = gate.wait_for(|open| *open).await;
            return Err(CoordinationError::Timeout);
        }
        self.hold().await;
        self.inner.add_self(lease, mode).await
    }

    async fn refresh(&self, lease: Lease<'_>) -> Result<RefreshOutcome> {
        self.hold().await;
        self.inner.refresh(lease).await
    }

    async fn remove_self(&self, scope: &Scope, node: &NodeId) -> Result<()> {
        self.hold().await;
        self.inner.remove_self(scope, node).await
    }

    async fn wait_for_change(&self, scope: &Scope, revision: Option<u64>) -> Result<WaitOutcome> {
        self.hold().await;
        self.inner.wait_for_change(scope, revision).await
    }
}

/// The backend's timings with the default retry budget (5 min), which outlasts the
/// hold-up (about 2 × lock TTL on Consul, whose lock session may live up to twice its TTL).
fn lost_reply_settings(backend: Backend, cluster: ClusterName) -> Settings {
    let p = profile(backend);
    let mut s = Settings::default();
    s.cluster_name = cluster;
    s.key_prefix = KEY_PREFIX.into();
    s.refresh_interval = p.refresh_interval;
    s.join_timeout = p.join_timeout;
    s.coordination_timeout = p.coordination_timeout;
    s.retry_delay = p.retry_delay;
    s.ttl_factor = 3.0;
    s.validate().expect("valid settings");
    s
}

/// Every event received so far.
fn drain(rx: &mut broadcast::Receiver<TimedEvent>, into: &mut Vec<TimedEvent>) {
    loop {
        match rx.try_recv() {
            Ok(e) => into.push(e),
            Err(broadcast::error::TryRecvError::Lagged(_)) => continue,
            Err(_) => return,
        }
    }
}

async fn seed_keeps_its_cluster_when_its_committed_registration_reply_is_lost(backend: Backend) {
    init_tracing();
    let service = Service::start(backend).await;
    let settings = lost_reply_settings(backend, unique_cluster_name("lost-reply"));
    let scope = settings.scope().expect("valid scope");
    let real = service.coordination();
    let (open_gate, gate) = watch::channel(false);
    let (committed_tx, mut committed_rx) = watch::channel(None);
    let wrapped = Arc::new(LoseSeedReply {
        inner: real.clone(),
        tripped: AtomicBool::new(false),
        gate,
        committed: committed_tx,
    });
    let local = LocalCluster::new();
    let seed_id = node_id(0);
    let mut seed = driver::Node::builder()
        .settings(settings.clone())
        .address(seed_id.clone())
        .coordination(wrapped)
        .cluster(Arc::new(local.node(seed_id.clone())))
        .spawn()
        .expect("valid settings");
    let mut events = seed.take_events().expect("first call");

    let committed = tokio::time::timeout(
        Duration::from_secs(30),
        committed_rx.wait_for(|c| c.is_some()),
    )
    .await
    .expect("the seed registered within 30 s")
    .expect("the wrapper lives")
    .clone()
    .expect("checked");
    assert_eq!(
        committed.outcome,
        Ok(AddOutcome::Added),
        "the seed's fenced registration committed"
    );
    let registry = committed.registry.expect("the registry after the commit");
    assert!(registry.nodes.contains(&seed_id), "{registry:?}");
    let epoch = registry.epoch.expect("the seed wrote the epoch").cluster;
    assert_eq!(
        local.cluster_of(&seed_id),
        None,
        "the seed formed its cluster before its registration was known to have committed"
    );

    // Held up past the lock TTL: the lock it registered under is gone when it goes on.
    tokio::time::sleep_until((committed.at + settings.lock_ttl() + Duration::from_secs(1)).into())
        .await;
    let lock_key = entry::lock_key(&scope);
    eventually(
        settings.lock_ttl() * 2 + Duration::from_secs(10),
        "the seed's lock expired",
        || async { (!service.key_exists(&lock_key).await).then_some(()) },
    )
    .await;
    let held_for = committed.at.elapsed();
    let resumed = Instant::now();
    open_gate.send_replace(true);

    let state = match tokio::time::timeout(Duration::from_secs(60), seed.registered()).await {
        Ok(Ok(state)) => state,
        Ok(Err(_)) | Err(_) => seed.state(),
    };
    let took = resumed.elapsed();
    // Settle: a late start-over would show within a couple of refreshes.
    tokio::time::sleep(settings.refresh_interval * 2).await;
    println!(
        "{}: held up {} ms after the committed seed registration; {:?} {} ms after resuming, \
         {:?} {} ms later",
        backend.name(),
        held_for.as_millis(),
        state,
        took.as_millis(),
        seed.state(),
        (settings.refresh_interval * 2).as_millis()
    );

    let mut seen = Vec::new();
    drain(&mut events, &mut seen);
    let mut problems = Vec::new();
    if !seed.state().is_registered() {
        problems.push(format!("the seed is {:?}, not registered", seed.state()));
    }
    for e in &seen {
        if let Event::StateChanged { from, to } = &e.event
            && matches!(to, State::Resetting | State::Failed)
        {
            problems.push(format!(
                "the seed went {from:?} -> {to:?} {} ms after it started",
                e.elapsed.as_millis()
            ));
        }
    }
    let seeded = local.cluster_of(&seed_id);
    if seeded.is_none() {
        problems.push(format!(
            "the seed formed no cluster after confirming its registration; clusters: {:?}",
            local.clusters()
        ));
    }
    match real.get_nodes(&scope).await {
        Ok(r) => {
            if r.epoch.map(|e| e.cluster) != Some(epoch) {
                problems.push(format!(
                    "the registry's epoch is {:?}, not the seeded cluster {epoch}",
                    r.epoch
                ));
            }
            if !r.nodes.contains(&seed_id) {
                problems.push(format!("the seed is not registered: {:?}", r.nodes));
            }
        }
        Err(e) => problems.push(format!("the registry did not answer: {e}")),
    }

    // A second node joins the seed's cluster.
    let second_id = node_id(1);
    let second = driver::Node::builder()
        .settings(settings.clone())
        .address(second_id.clone())
        .coordination(real.clone())
        .cluster(Arc::new(local.node(second_id.clone())))
        .spawn()
        .expect("valid settings");
    match tokio::time::timeout(Duration::from_secs(30), second.registered()).await {
        Ok(Ok(_)) => {}
        other => problems.push(format!(
            "the second node did not register within 30 s: {other:?}"
        )),
    }
    if local.cluster_of(&second_id) != seeded {
        problems.push(format!(
            "the second node is in local cluster {:?}, not the seed's {seeded:?}",
            local.cluster_of(&second_id)
        ));
    }
    if local.clusters_formed() != 1 {
        problems.push(format!(
            "{} clusters were formed: {:?}",
            local.clusters_formed(),
            local.clusters()
        ));
    }
    if let Ok(r) = real.get_nodes(&scope).await {
        let mut expected = vec![seed_id.clone(), second_id.clone()];
        expected.sort();
        let mut nodes = r.nodes;
        nodes.sort();
        if nodes != expected {
            problems.push(format!("the registry lists {nodes:?}, not {expected:?}"));
        }
        if r.epoch.map(|e| e.cluster) != Some(epoch) {
            problems.push(format!(
                "after the second joined, the epoch is {:?}, not {epoch}",
                r.epoch
            ));
        }
    }
    drain(&mut events, &mut seen);
    seed.shutdown();
    second.shutdown();
    let states: Vec<String> = seen
        .iter()
        .filter_map(|e| match &e.event {
            Event::StateChanged { to, .. } => Some(format!("{}ms {to:?}", e.elapsed.as_millis())),
            _ => None,
        })
        .collect();
    assert!(
        problems.is_empty(),
        "{}: the seed did not keep its cluster after its committed registration's reply was \
         lost:\n- {}\nthe seed's states: {}",
        backend.name(),
        problems.join("\n- "),
        states.join(", ")
    );
    let _ = tokio::time::timeout(Duration::from_secs(10), seed.stopped()).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), second.stopped()).await;
}

// ---------------------------------------------------------------------------------------
// 4. Measuring: outage length → outcome

/// One run for `scripts/outage.sh`. Environment:
/// - `CONSTRUCTR_OUTAGE_BACKEND`: `etcd` (default), `etcd-cluster`, `consul`, `consul-persistent`
/// - `CONSTRUCTR_OUTAGE_SECONDS`: how long the service is down (default: 3 entry TTLs)
/// - `CONSTRUCTR_OUTAGE_NODES`: number of processes (default 3)
/// - `CONSTRUCTR_OUTAGE_SETTINGS_EXTRA`: TOML lines appended to the settings file
///
/// Prints `OUTAGE_RESULT {json}` (backend, outage_s, nodes, nodes_exited,
/// nodes_left_cluster, max_time_to_reregister_ms, and more) and `OUTAGE_ROW | ... |`, a
/// markdown table row: backend, outage (s), down (s, until it served again), nodes, exited,
/// left the cluster, max time to re-register (ms), same epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measuring run for scripts/outage.sh, not a check"]
async fn measure_outage_outcome() {
    integration_tests::require_docker!();
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let backend_name = var("CONSTRUCTR_OUTAGE_BACKEND").unwrap_or_else(|| "etcd".into());
    let backend = Backend::from_name(&backend_name)
        .unwrap_or_else(|| panic!("unknown CONSTRUCTR_OUTAGE_BACKEND {backend_name}"));
    let p = profile(backend);
    let outage = var("CONSTRUCTR_OUTAGE_SECONDS")
        .map(|s| Duration::from_secs_f64(s.parse().expect("CONSTRUCTR_OUTAGE_SECONDS: seconds")))
        .unwrap_or(p.ttl * 3);
    let nodes: usize = var("CONSTRUCTR_OUTAGE_NODES")
        .map(|n| n.parse().expect("CONSTRUCTR_OUTAGE_NODES: a count"))
        .unwrap_or(3);
    let extra = var("CONSTRUCTR_OUTAGE_SETTINGS_EXTRA").unwrap_or_default();
    let toml = format!("{}{extra}\n", p.toml);
    let setup = Setup::launch(backend, "measure", &toml, p.ttl).await;
    let o = run_outage(&setup, nodes, outage).await;
    let max = o.max_time_to_reregister();
    let result = serde_json::json!({
        "backend": backend.name(),
        "outage_s": outage.as_secs_f64(),
        "nodes": nodes,
        "nodes_exited": o.exited(),
        "nodes_left_cluster": o.left_cluster(),
        "max_time_to_reregister_ms": max.map(|d| d.as_millis() as u64),
        "downtime_ms": o.downtime.as_millis() as u64,
        "same_epoch": o.epoch_after == Some(o.epoch_before),
        "entry_ttl_s": p.ttl.as_secs_f64(),
        "refresh_interval_s": p.refresh_interval.as_secs_f64(),
    });
    println!("{}", o.dump);
    println!("OUTAGE_RESULT {result}");
    println!(
        "OUTAGE_ROW | {} | {} | {:.1} | {} | {} | {} | {} | {} |",
        backend.name(),
        outage.as_secs_f64(),
        o.downtime.as_secs_f64(),
        nodes,
        o.exited(),
        o.left_cluster(),
        max.map_or_else(|| "—".to_owned(), |d| d.as_millis().to_string()),
        if o.epoch_after == Some(o.epoch_before) {
            "yes"
        } else {
            "no"
        },
    );
}
