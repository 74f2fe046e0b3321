//! Real `constructr node` processes (chitchat gossip on 127.0.0.1) against real etcd and
//! Consul in Docker: formation, a killed member, a restarted member, graceful SIGTERM, a seed
//! killed before anyone joined it, join-only nodes. Each scenario runs once per backend.
//!
//! The process harness (binary, `NodeProcess`, `Setup`) is `integration_tests::process`.

use std::time::{Duration, Instant};

use integration_tests::process::{
    NodeProcess, Setup, addresses_of, converged, free_udp_ports, profile, wait_converged,
    wait_until,
};
use integration_tests::service::Backend;

/// Formation, including joins that time out and start over while a dead seed's entry
/// expires (Consul: up to 2 × TTL + 1 s), on a loaded machine.
const FORMATION: Duration = Duration::from_secs(90);
/// A killed peer leaves the live set after phi-threshold (8) × ~100-200 ms of silence.
const FAILURE_DETECTION: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------
// Setups

/// `backend` with its settings profile (etcd: entry TTL 3 s, a join gives up after 5 s;
/// Consul: entry TTL 12 s, as its sessions last at least 10 s), one retry.
async fn setup(backend: Backend, what: &str) -> Setup {
    let p = profile(backend);
    let toml = format!("{}nr-of-retries = 1\n", p.toml);
    Setup::launch(backend, what, &toml, p.ttl).await
}

// ---------------------------------------------------------------------------------------
// Tests: every scenario on etcd and on Consul

macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {
        on_both_backends!(@on etcd, Etcd, "nodes-etcd", $($scenario),*);
        on_both_backends!(@on consul, Consul, "nodes-consul", $($scenario),*);
    };
    (@on $module:ident, $backend:ident, $what:literal, $($scenario:ident),*) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    integration_tests::require_docker!();
                    let setup = super::setup(super::Backend::$backend, $what).await;
                    super::$scenario(setup).await;
                }
            )*
        }
    };
}

on_both_backends!(
    five_processes_started_at_once_form_one_cluster_of_five,
    a_killed_member_leaves_the_live_set_expires_and_rejoins_the_same_cluster,
    sigterm_removes_the_entry_at_once_and_exits_zero,
    a_seed_killed_before_anyone_joined_it_leaves_exactly_one_cluster_of_three,
    join_only_processes_never_seed_and_join_the_first_node_that_may,
);

// ---------------------------------------------------------------------------------------
// Scenarios

/// Waits until `procs` form one cluster of them all (within [`FORMATION`], else panics with
/// `what`); their sorted addresses and how long it took.
async fn form(procs: &mut [NodeProcess], what: &str) -> (Vec<String>, Duration) {
    let all = addresses_of(procs);
    let took = wait_converged(procs, &all, FORMATION, what).await;
    (all, took)
}

async fn five_processes_started_at_once_form_one_cluster_of_five(setup: Setup) {
    let mut procs = setup.start_all(&free_udp_ports(5));
    let (all, took) = form(&mut procs, "5 processes in one cluster of 5").await;
    println!("5 processes formed one cluster in {took:?}");
    let seeders = procs
        .iter()
        .filter(|p| p.states().iter().any(|s| s == "VerifyingEmpty"))
        .count();
    assert_eq!(seeders, 1, "exactly one process seeded the cluster");
    assert_eq!(setup.registered_addresses().await, all);
    assert!(setup.registry().await.epoch.is_some(), "a cluster epoch");
}

async fn a_killed_member_leaves_the_live_set_expires_and_rejoins_the_same_cluster(setup: Setup) {
    let ports = free_udp_ports(3);
    let mut procs = setup.start_all(&ports);
    let (all, _) = form(&mut procs, "3 processes in one cluster of 3").await;
    let epoch = setup.registry().await.epoch.expect("an epoch").cluster;

    // kill -9 one member: the others see it leave chitchat's live set ...
    let victim = 1;
    let killed_at = Instant::now();
    procs[victim].kill9();
    let gone = procs[victim].gossip.clone();
    let rest: Vec<String> = all.iter().filter(|a| **a != gone).cloned().collect();
    let (before, after) = procs.split_at_mut(victim);
    let mut survivors: Vec<&mut NodeProcess> = before.iter_mut().chain(&mut after[1..]).collect();
    let detected = wait_until(
        &mut survivors,
        FAILURE_DETECTION,
        "the survivors see the killed member leave",
        |ps| converged(ps, &rest),
    )
    .await;
    println!("the killed member left the live set after {detected:?}");

    // ... and its registry entry expires within its TTL bound.
    let bound = setup.expiry_bound();
    loop {
        if setup.registered_addresses().await == rest {
            break;
        }
        assert!(
            killed_at.elapsed() < bound + Duration::from_secs(2),
            "the killed member's entry outlived its TTL bound {bound:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "the killed member's entry expired {:?} after the kill (bound {bound:?})",
        killed_at.elapsed()
    );

    // A new process on the same address rejoins the same cluster and does not seed one.
    procs[victim] = setup.start(ports[victim]);
    let back = "the restarted member back in the cluster of 3";
    wait_converged(&mut procs, &all, FORMATION, back).await;
    let states = procs[victim].states();
    assert!(
        !states
            .iter()
            .any(|s| s == "Locking" || s == "VerifyingEmpty"),
        "the restarted member tried to seed: {states:?}"
    );
    let registry = setup.registry().await;
    assert_eq!(
        registry.epoch.map(|e| e.cluster),
        Some(epoch),
        "same cluster"
    );
    assert_eq!(setup.registered_addresses().await, all);
}

async fn sigterm_removes_the_entry_at_once_and_exits_zero(setup: Setup) {
    let mut procs = setup.start_all(&free_udp_ports(2));
    form(&mut procs, "2 processes in one cluster of 2").await;

    let leaving = procs[1].gossip.clone();
    let sigterm_at = Instant::now();
    procs[1].sigterm();
    let took = wait_until(
        &mut [&mut procs[1]],
        Duration::from_secs(10),
        "the process exits after SIGTERM",
        |ps| ps[0].try_exit().is_some(),
    )
    .await;
    let status = procs[1].exit.expect("exited");
    assert!(status.success(), "{status}\n{}", procs[1].describe());
    // "At once": no TTL wait, the entry is gone when the process has exited.
    let left = setup.registered_addresses().await;
    assert_eq!(left, vec![procs[0].gossip.clone()], "entry removed at exit");
    println!("exited 0 {took:?} after SIGTERM with its entry removed");
    let states = procs[1].states();
    assert_eq!(
        states[states.len() - 3..],
        ["Leaving", "RemovingSelf", "Stopped"],
        "graceful leave"
    );
    let (stay, _) = procs.split_at_mut(1);
    wait_until(
        &mut [&mut stay[0]],
        FAILURE_DETECTION,
        "the remaining member sees it leave",
        |ps| ps[0].members() == [ps[0].gossip.clone()],
    )
    .await;
    assert!(!procs[0].members().contains(&leaving));
    // The leave is gossiped: the peer dropped it within a second of the SIGTERM, not
    // after its failure detector's timeout.
    let dropped = procs[0]
        .lines_after(sigterm_at)
        .into_iter()
        .find(|l| !l.members().is_empty() && !l.members().contains(&leaving))
        .expect("a members line without the leaving node");
    let took = dropped.at - sigterm_at;
    println!("the remaining member dropped the leaving one {took:?} after SIGTERM");
    assert!(
        took <= Duration::from_secs(1),
        "the leave took {took:?} to reach the peer\n{}",
        procs[0].describe()
    );
}

async fn a_seed_killed_before_anyone_joined_it_leaves_exactly_one_cluster_of_three(setup: Setup) {
    let ports = free_udp_ports(4);
    let mut seed = setup.start(ports[0]);
    wait_until(&mut [&mut seed], FORMATION, "the seed registered", |ps| {
        ps[0].is_registered()
    })
    .await;
    assert_eq!(
        setup.registered_addresses().await,
        vec![seed.gossip.clone()]
    );
    let dead_epoch = setup.registry().await.epoch.expect("an epoch").cluster;
    seed.kill9();

    // Three more find only the dead seed: their joins time out until its entry expires,
    // then exactly one of them seeds a new cluster and the others join it.
    let mut procs = setup.start_all(&ports[1..]);
    let (three, took) = form(&mut procs, "the three in one cluster of 3").await;
    println!("three processes formed one cluster {took:?} after the seed was killed");
    assert_eq!(setup.registered_addresses().await, three);
    let epoch = setup.registry().await.epoch.expect("an epoch").cluster;
    assert_ne!(epoch, dead_epoch, "a new cluster, not the dead seed's");
    // Stable: still one cluster of three a few gossip rounds later.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for p in &procs {
        assert_eq!(p.members(), three, "{}", p.describe());
    }
}

async fn join_only_processes_never_seed_and_join_the_first_node_that_may(setup: Setup) {
    let ports = free_udp_ports(3);
    let mut procs: Vec<NodeProcess> = ports[..2]
        .iter()
        .map(|&p| setup.start_with(p, &["--join-only"]))
        .collect();
    // Alone, join-only nodes wait: nobody seeds (10 re-reads' worth at retry-delay 300 ms).
    tokio::time::sleep(Duration::from_secs(3)).await;
    for p in &mut procs {
        assert!(p.try_exit().is_none(), "{}", p.describe());
        let states = p.states();
        assert!(
            !states.iter().any(|s| s == "Locking" || s == "Joining"),
            "a join-only node went for the lock: {states:?}"
        );
    }
    assert!(setup.registered_addresses().await.is_empty());
    assert!(setup.registry().await.epoch.is_none(), "nobody seeded");
    // A node that may seed starts: everyone joins its cluster.
    procs.push(setup.start(ports[2]));
    let (all, took) = form(&mut procs, "one cluster of 3").await;
    println!("join-only nodes joined the seed {took:?} after it started");
    assert_eq!(setup.registered_addresses().await, all);
}
