//! What the re-seed grace costs when a cluster really died: every `constructr node` process
//! is killed (`kill -9`), their entries expire, and a newcomer starts. It waits the re-seed
//! grace (the epoch still names the dead cluster) before it seeds a new one.
//!
//! `measure_reseed_after_the_whole_cluster_died` is a measuring run (ignored):
//! `CONSTRUCTR_RESEED_BACKEND` (`etcd` default, `consul`, ...) and
//! `CONSTRUCTR_RESEED_SETTINGS_EXTRA` (TOML lines, e.g. `reseed-grace = "0s"` to compare with
//! ConstructR's immediate re-seed). Prints `RESEED_RESULT {json}`.
//!
//! `newcomer_seeds_after_the_grace_once_the_whole_cluster_died` checks it: the newcomer does
//! seed (liveness), and not before the grace (the older cluster had its chance). The
//! newcomer starts once the entries and the dead seed's bootstrap lock are gone, so that
//! only the grace holds it back (without the grace it registers within ~100 ms).

use std::time::{Duration, Instant};

use constructr_core::entry;
use integration_tests::process::{
    ETCD, Setup, addresses_of, free_udp_ports, profile, wait_converged,
};
use integration_tests::service::Backend;
use integration_tests::{eventually, init_tracing};

/// etcd: re-seed grace = 1 s + 2 × 0.7 s + 0.3 s × 1.2 = 2.76 s.
const ETCD_GRACE: Duration = Duration::from_millis(2_760);

struct Reseed {
    /// From the newcomer's start (registry empty, epoch of the dead cluster) to registered.
    newcomer_registered: Duration,
    /// From the kill to the registry reading empty.
    entries_expired: Duration,
    old_epoch: u64,
    new_epoch: u64,
}

async fn reseed(backend: Backend, toml: &str, ttl: Duration) -> Reseed {
    init_tracing();
    let setup = Setup::launch(backend, "reseed", toml, ttl).await;
    let ports = free_udp_ports(4);
    let mut procs = setup.start_all(&ports[..3]);
    let old = addresses_of(&procs);
    let formed = "3 processes in one cluster of 3";
    wait_converged(&mut procs, &old, Duration::from_secs(90), formed).await;
    let old_epoch = setup.registry().await.epoch.expect("an epoch").cluster.0;
    let killed = Instant::now();
    for p in &mut procs {
        p.kill9();
    }
    eventually(
        setup.expiry_bound() + Duration::from_secs(10),
        "the dead members' entries expired",
        || async { setup.registry().await.nodes.is_empty().then_some(()) },
    )
    .await;
    let entries_expired = killed.elapsed();
    // The dead seed's bootstrap lock may outlive the entries: wait for it too, so that what
    // is measured is the grace, not the lock.
    let lock = entry::lock_key(&setup.scope());
    eventually(
        Duration::from_secs(60),
        "the dead seed's bootstrap lock expired",
        || async { (!setup.service.key_exists(&lock).await).then_some(()) },
    )
    .await;
    let started = Instant::now();
    let mut newcomer = setup.start(ports[3]);
    eventually(
        Duration::from_secs(120),
        "the newcomer seeded a new cluster",
        || {
            let registered = newcomer.is_registered();
            async move { registered.then_some(()) }
        },
    )
    .await;
    let newcomer_registered = started.elapsed();
    let new_epoch = setup.registry().await.epoch.expect("an epoch").cluster.0;
    assert!(newcomer.try_exit().is_none(), "{}", newcomer.describe());
    Reseed {
        newcomer_registered,
        entries_expired,
        old_epoch,
        new_epoch,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newcomer_seeds_after_the_grace_once_the_whole_cluster_died() {
    integration_tests::require_docker!();
    let r = reseed(Backend::Etcd, ETCD.toml, ETCD.ttl).await;
    println!(
        "etcd: entries expired {} ms after the kill; the newcomer registered {} ms after its start",
        r.entries_expired.as_millis(),
        r.newcomer_registered.as_millis()
    );
    assert_ne!(r.new_epoch, r.old_epoch, "a new cluster");
    assert!(
        r.newcomer_registered >= ETCD_GRACE,
        "seeded before the grace: {:?}",
        r.newcomer_registered
    );
    assert!(
        r.newcomer_registered < ETCD_GRACE + Duration::from_secs(10),
        "{:?}",
        r.newcomer_registered
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measuring run, not a check"]
async fn measure_reseed_after_the_whole_cluster_died() {
    integration_tests::require_docker!();
    let backend = Backend::from_env("CONSTRUCTR_RESEED_BACKEND");
    let extra = integration_tests::env_setting("CONSTRUCTR_RESEED_SETTINGS_EXTRA");
    let p = profile(backend);
    let r = reseed(backend, &format!("{}{extra}\n", p.toml), p.ttl).await;
    let out = serde_json::json!({
        "backend": backend.name(),
        "settings_extra": extra,
        "entries_expired_after_kill_ms": r.entries_expired.as_millis() as u64,
        "newcomer_registered_ms": r.newcomer_registered.as_millis() as u64,
        "new_cluster": r.new_epoch != r.old_epoch,
    });
    println!("RESEED_RESULT {out}");
}
