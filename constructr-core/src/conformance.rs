//! The conformance suite: the checks every [`Coordination`] backend must pass, ours and
//! third-party ones alike (feature `conformance`).
//!
//! **By capability**: every check declares the [`Guarantees`] it needs ([`CHECKS`]), and
//! [`run_all`] runs every check that the backend's declared guarantees cover (a backend
//! without a watch also shows that it says so), returning which ran. A backend that
//! declares nothing still runs the registry checks.
//!
//! ```ignore
//! #[tokio::test]
//! async fn conformance() {
//!     let backend = MyBackendForTests::start().await;
//!     constructr_core::conformance::run_all(&backend).await;
//! }
//! ```
//!
//! Every check uses its own freshly named cluster, so checks (and test processes) can run
//! in parallel against one service. A failing check panics with a message naming it.

use std::time::Duration;

use async_trait::async_trait;
use rand::Rng as _;

use crate::coordination::{
    AddMode, AddOutcome, Coordination, Guarantees, LockOutcome, RefreshOutcome, WaitOutcome,
};
use crate::node::{ClusterId, ClusterName, NodeId, Scope};

/// What the suite needs from a backend under test.
#[async_trait]
pub trait ConformanceBackend: Send + Sync {
    /// The backend under test.
    type Coordination: Coordination;

    /// The backend.
    fn coordination(&self) -> &Self::Coordination;

    /// Writes `value` verbatim under `{prefix}/{cluster}/nodes/{key_suffix}` with a TTL of
    /// about [`ConformanceBackend::ttl`] (as a third party writing garbage would).
    async fn put_raw_entry(&self, scope: &Scope, key_suffix: &str, value: &[u8]);

    /// Deletes `address`'s node entry behind the backend's back (as an operator's
    /// `etcdctl del` would), leaving its lease or session alive. Backends that declare
    /// `ttl_expiry` implement it for [`refresh_notices_an_entry_deleted_behind_its_back`];
    /// the default panics with that message.
    async fn delete_entry_behind_its_back(&self, scope: &Scope, address: &str) {
        let _ = (scope, address);
        panic!("implement ConformanceBackend::delete_entry_behind_its_back for the refresh checks");
    }

    /// The key prefix to test under. Default `/constructr-conformance`.
    fn prefix(&self) -> &str {
        "/constructr-conformance"
    }

    /// A short TTL the backend supports, used for the expiry checks.
    fn ttl(&self) -> Duration {
        Duration::from_secs(2)
    }

    /// How long after the TTL an entry may still be visible (the backend's documented bound).
    fn expiry_bound(&self) -> Duration {
        Duration::from_secs(2)
    }
}

/// What a check needs: nothing beyond the registry.
const REGISTRY: Guarantees = Guarantees::NONE;
/// What a check needs: the lock, fencing and epoch.
const LOCK: Guarantees = Guarantees {
    linearizable: true,
    exclusive_lock: true,
    ..Guarantees::NONE
};
/// What a check needs: TTL expiry (and the lock, to seed).
const TTL: Guarantees = Guarantees {
    ttl_expiry: true,
    ..LOCK
};
/// What a check needs: a watch.
const WATCH: Guarantees = Guarantees {
    watch: true,
    ..Guarantees::NONE
};

/// Which checks [`run_all`] ran on a backend, and which its guarantees do not cover.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// The checks that ran (and passed: a failing check panics).
    pub ran: Vec<&'static str>,
    /// The checks that need a guarantee the backend does not declare.
    pub not_covered: Vec<&'static str>,
}

macro_rules! checks {
    ($($check:ident: $needs:expr),* $(,)?) => {
        /// Every check with the guarantees it needs.
        pub const CHECKS: &[(&str, Guarantees)] = &[$((stringify!($check), $needs)),*];

        /// Runs every check the backend's [`Coordination::guarantees`] cover; says which.
        pub async fn run_all<B: ConformanceBackend>(b: &B) -> Report {
            let declared = b.coordination().guarantees();
            let mut report = Report::default();
            $(
                if declared.covers(&$needs) {
                    let started = std::time::Instant::now();
                    $check(b).await;
                    println!("conformance: {} passed in {:?}", stringify!($check), started.elapsed());
                    report.ran.push(stringify!($check));
                } else {
                    report.not_covered.push(stringify!($check));
                }
            )*
            if !declared.watch {
                wait_for_change_answers_unsupported_without_a_watch(b).await;
                report.ran.push("wait_for_change_answers_unsupported_without_a_watch");
            }
            println!(
                "conformance ({declared:?}): ran {} checks {:?}; not covered: {:?}",
                report.ran.len(),
                report.ran,
                report.not_covered
            );
            report
        }
    };
}

checks! {
    empty_registry_reads_empty: REGISTRY,
    a_registration_is_read_refreshed_and_removed: REGISTRY,
    garbage_entries_are_skipped: REGISTRY,
    bounded_reads_return_min_of_limit_and_registered: LOCK,
    lock_is_exclusive: LOCK,
    relock_by_holder_returns_same_token: LOCK,
    seed_registration_is_fenced_by_the_lock: LOCK,
    seed_registration_refused_after_lock_loss: LOCK,
    seed_registration_refused_when_epoch_moved: LOCK,
    seed_registration_retry_is_idempotent: LOCK,
    join_registration_checks_the_epoch: LOCK,
    join_registration_recreates_a_lost_epoch: LOCK,
    refresh_extends_and_detects_missing: TTL,
    entries_expire_after_ttl: TTL,
    refresh_notices_an_entry_deleted_behind_its_back: TTL,
    remove_self_only_removes_own_incarnation: LOCK,
    wait_for_change_wakes_on_registration: WATCH,
    wait_for_change_without_a_revision_waits_for_a_change: WATCH,
}

/// Registers `n` as the first node of `scope`: seeded under the lock where the backend
/// has one, else as a member of a new cluster.
async fn register_first<B: ConformanceBackend>(b: &B, scope: &Scope, n: &NodeId) -> ClusterId {
    if b.coordination().guarantees().exclusive_lock {
        return seed(b, scope, n).await;
    }
    let cluster = ClusterId(rand::rng().random());
    let mode = AddMode::Join {
        cluster: Some(cluster),
    };
    assert_eq!(
        b.coordination()
            .add_self(scope.lease(n, LONG), &mode)
            .await
            .expect("add_self"),
        AddOutcome::Added,
        "the first registration of a fresh scope must be written"
    );
    cluster
}

/// One node's registration: read back, refreshed, left alone by another incarnation,
/// removed, and removed again without error.
pub async fn a_registration_is_read_refreshed_and_removed<B: ConformanceBackend>(b: &B) {
    let scope = fresh_scope(b.prefix(), "one");
    let c = b.coordination();
    let me = node(1);
    let cluster = register_first(b, &scope, &me).await;
    let r = c.get_nodes(&scope).await.expect("get_nodes");
    assert_eq!(
        r.nodes,
        vec![me.clone()],
        "a_registration_is_read_refreshed_and_removed"
    );
    assert_eq!(
        r.epoch.map(|e| e.cluster),
        Some(cluster),
        "the epoch names the cluster"
    );
    assert_eq!(
        c.refresh(scope.lease(&me, LONG)).await.expect("refresh"),
        RefreshOutcome::Refreshed
    );
    let other = NodeId::new(me.address.clone(), me.incarnation + 1);
    assert_eq!(
        c.refresh(scope.lease(&other, LONG)).await.expect("refresh"),
        RefreshOutcome::Missing,
        "another incarnation does not own the entry"
    );
    c.remove_self(&scope, &other).await.expect("remove_self");
    assert_eq!(
        c.get_nodes(&scope).await.expect("get").nodes,
        vec![me.clone()]
    );
    c.remove_self(&scope, &me).await.expect("remove_self");
    assert!(c.get_nodes(&scope).await.expect("get").nodes.is_empty());
    assert_eq!(
        c.refresh(scope.lease(&me, LONG)).await.expect("refresh"),
        RefreshOutcome::Missing
    );
    c.remove_self(&scope, &me)
        .await
        .expect("remove_self of an absent entry");
}

/// A fresh scope with a random cluster name.
pub fn fresh_scope(prefix: &str, what: &str) -> Scope {
    let n: u64 = rand::rng().random();
    let name = ClusterName::new(format!("{what}-{n:016x}")).expect("valid name");
    Scope::new(prefix, name).expect("valid prefix")
}

fn node(n: u32) -> NodeId {
    NodeId::new(format!("10.0.0.{n}:7000"), 1000 + u64::from(n))
}

const LONG: Duration = Duration::from_secs(60);

/// A scope nobody wrote to reads as empty, without an epoch.
pub async fn empty_registry_reads_empty<B: ConformanceBackend>(b: &B) {
    let scope = fresh_scope(b.prefix(), "empty");
    let r = b.coordination().get_nodes(&scope).await.expect("get_nodes");
    assert!(r.nodes.is_empty(), "empty_registry_reads_empty: {r:?}");
    assert!(r.epoch.is_none(), "empty_registry_reads_empty: {r:?}");
}

async fn seed<B: ConformanceBackend>(b: &B, scope: &Scope, n: &NodeId) -> ClusterId {
    let c = b.coordination();
    let LockOutcome::Acquired(lock) = c.lock(scope.lease(n, LONG)).await.expect("lock") else {
        panic!("seeding: lock not acquired on a fresh scope");
    };
    let r = c.get_nodes(scope).await.expect("get_nodes");
    let cluster = ClusterId(rand::rng().random());
    let mode = AddMode::Seed {
        lock,
        cluster,
        expected_epoch_version: r.epoch.map(|e| e.version),
    };
    assert_eq!(
        c.add_self(scope.lease(n, LONG), &mode)
            .await
            .expect("add_self"),
        AddOutcome::Added,
        "seeding: fenced registration with a held lock must be written"
    );
    cluster
}

/// Only one holder at a time.
pub async fn lock_is_exclusive<B: ConformanceBackend>(b: &B) {
    let scope = fresh_scope(b.prefix(), "lock-exclusive");
    let c = b.coordination();
    assert!(matches!(
        c.lock(scope.lease(&node(1), LONG)).await.expect("lock"),
        LockOutcome::Acquired(_)
    ));
    assert_eq!(
        c.lock(scope.lease(&node(2), LONG)).await.expect("lock"),
        LockOutcome::HeldByOther,
        "lock_is_exclusive: a second node got the lock"
    );
    // Same address, other incarnation: another holder.
    let restarted = NodeId::new(node(1).address, 1);
    assert_eq!(
        c.lock(scope.lease(&restarted, LONG)).await.expect("lock"),
        LockOutcome::HeldByOther,
        "lock_is_exclusive: a new incarnation of the holder got the lock"
    );
}

/// Locking again while holding returns the same token.
pub async fn relock_by_holder_returns_same_token<B: ConformanceBackend>(b: &B) {
    let scope = fresh_scope(b.prefix(), "relock");
    let c = b.coordination();
    let first = c.lock(scope.lease(&node(1), LONG)).await.expect("lock");
    let second = c.lock(scope.lease(&node(1), LONG)).await.expect("lock");
    assert!(matches!(first, LockOutcome::Acquired(_)));
    assert_eq!(first, second, "relock_by_holder_returns_same_token");
}

/// A seed registration with a token the node does not hold is refused.
pub async fn seed_registration_is_fenced_by_the_lock<B: ConformanceBackend>(b: &B) {
    let scope = fresh_scope(b.prefix(), "fence");
    let c = b.coordination();
    let LockOutcome::Acquired(token) = c.lock(scope.lease(&node(1), LONG)).await.expect("lock")
    else {
        panic!("lock not acquired")
    };
    // Node 2 presents node 1's token: refused.
    let mode = AddMode::Seed {
        lock: token,
        cluster: ClusterId(2),
        expected_epoch_version: None,
    };
    assert_eq!(
        c.add_self(scope.lease(&node(2), LONG), &mode)
            .await
            .expect("add_self"),
        AddOutcome::Refused,
        "seed_registration_is_fenced_by_the_lock: a non-holder's seed registration was written"
    );
    let r = c.get_nodes(&scope).await.expect("get_nodes");
    assert!(
        r.nodes.is_empty() && r.epoch.is_none(),
        "refused write left data: {r:?}"
    );
}

/// After the lock expired and another node took it, the old holder's seed registration is refused.
pub async fn seed_registration_refused_after_lock_loss<B: ConformanceBackend>(b: &B) {
    let scope = fresh_scope(b.prefix(), "lock-loss");
    let c = b.coordination();
    let ttl = b.ttl();
    let LockOutcome::Acquired(old) = c.lock(scope.lease(&node(1), ttl)).await.expect("lock") else {
        panic!("lock not acquired")
    };
    let deadline = tokio::time::Instant::now() + ttl + b.expiry_bound() + Duration::from_secs(5);
    let new = loop {
        match c.lock(scope.lease(&node(2), LONG)).await.expect("lock") {
            LockOutcome::Acquired(t) => break t,
            LockOutcome::HeldByOther => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "seed_registration_refused_after_lock_loss: lock did not expire within its TTL bound"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert_ne!(old, new, "a lock token was reused for a later holder");
    let stale = AddMode::Seed {
        lock: old,
        cluster: ClusterId(1),
        expected_epoch_version: None,
    };
    assert_eq!(
        c.add_self(scope.lease(&node(1), LONG), &stale)
            .await
            .expect("add_self"),
        AddOutcome::Refused,
        "seed_registration_refused_after_lock_loss: fenced write with a lost lock was written"
    );
    assert!(
        c.get_nodes(&scope)
            .await
            .expect("get_nodes")
            .nodes
            .is_empty()
    );
}

/// A seed registration is refused if someone registered since the read that found no nodes.
pub async fn seed_registration_refused_when_epoch_moved<B: ConformanceBackend>(b: &B) {
    let scope = fresh_scope(b.prefix(), "epoch-moved");
    let c = b.coordination();
    let cluster = seed(b, &scope, &node(1)).await;
    let read = c.get_nodes(&scope).await.expect("get_nodes");
    let version = read.epoch.expect("epoch after seeding").version;
    assert_eq!(read.epoch.map(|e| e.cluster), Some(cluster));
    // A member registers: the epoch version moves.
    assert_eq!(
        c.add_self(
            scope.lease(&node(2), LONG),
            &AddMode::Join {
                cluster: Some(cluster)
            }
        )
        .await
        .expect("add_self"),
        AddOutcome::Added
    );
    let after = c.get_nodes(&scope).await.expect("get_nodes");
    assert_ne!(
        after.epoch.map(|e| e.version),
        Some(version),
        "join did not change the epoch version"
    );
    // Node 1 still holds the lock but read an older epoch version: a second seeding is refused.
    let LockOutcome::Acquired(lock) = c.lock(scope.lease(&node(1), LONG)).await.expect("lock")
    else {
        panic!("holder lost its lock")
    };
    let reseed = AddMode::Seed {
        lock,
        cluster: ClusterId(cluster.0.wrapping_add(1)),
        expected_epoch_version: Some(version),
    };
    assert_eq!(
        c.add_self(scope.lease(&node(1), LONG), &reseed)
            .await
            .expect("add_self"),
        AddOutcome::Refused,
        "seed_registration_refused_when_epoch_moved"
    );
    assert_eq!(
        c.get_nodes(&scope)
            .await
            .expect("get")
            .epoch
            .map(|e| e.cluster),
        Some(cluster)
    );
}

/// Repeating the same seed registration (a retry after a lost reply) succeeds.
pub async fn seed_registration_retry_is_idempotent<B: ConformanceBackend>(b: &B) {
    let scope = fresh_scope(b.prefix(), "seed-retry");
    let c = b.coordination();
    let LockOutcome::Acquired(lock) = c.lock(scope.lease(&node(1), LONG)).await.expect("lock")
    else {
        panic!("lock not acquired")
    };
    let mode = AddMode::Seed {
        lock,
        cluster: ClusterId(77),
        expected_epoch_version: None,
    };
    for _ in 0..2 {
        assert_eq!(
            c.add_self(scope.lease(&node(1), LONG), &mode)
                .await
                .expect("add_self"),
            AddOutcome::Added,
            "seed_registration_retry_is_idempotent"
        );
    }
    let r = c.get_nodes(&scope).await.expect("get_nodes");
    assert_eq!(r.nodes, vec![node(1)]);
    assert_eq!(r.epoch.map(|e| e.cluster), Some(ClusterId(77)));
}

/// A member's registration is written only while the epoch names its cluster.
pub async fn join_registration_checks_the_epoch<B: ConformanceBackend>(b: &B) {
    let scope = fresh_scope(b.prefix(), "join-epoch");
    let c = b.coordination();
    let cluster = seed(b, &scope, &node(1)).await;
    let other = ClusterId(cluster.0 ^ 1);
    assert_eq!(
        c.add_self(
            scope.lease(&node(2), LONG),
            &AddMode::Join {
                cluster: Some(other)
            }
        )
        .await
        .expect("add_self"),
        AddOutcome::Refused,
        "join_registration_checks_the_epoch: member of another cluster was registered"
    );
    assert_eq!(
        c.add_self(
            scope.lease(&node(2), LONG),
            &AddMode::Join { cluster: None }
        )
        .await
        .expect("add_self"),
        AddOutcome::Refused,
        "join_registration_checks_the_epoch: epoch-less join was registered over an epoch"
    );
    assert_eq!(
        c.add_self(
            scope.lease(&node(3), LONG),
            &AddMode::Join {
                cluster: Some(cluster)
            }
        )
        .await
        .expect("add_self"),
        AddOutcome::Added
    );
    let mut nodes = c.get_nodes(&scope).await.expect("get_nodes").nodes;
    nodes.sort();
    assert_eq!(nodes, vec![node(1), node(3)]);
}

/// A member whose epoch marker is gone (the backend lost its data) re-creates it for its
/// cluster; from then on the marker fences as usual.
pub async fn join_registration_recreates_a_lost_epoch<B: ConformanceBackend>(b: &B) {
    let scope = fresh_scope(b.prefix(), "join-lost-epoch");
    let c = b.coordination();
    let cluster = ClusterId(0x0dd_c105);
    let join = |cluster| AddMode::Join {
        cluster: Some(cluster),
    };
    assert_eq!(
        c.add_self(scope.lease(&node(1), LONG), &join(cluster))
            .await
            .expect("add_self"),
        AddOutcome::Added,
        "join_registration_recreates_a_lost_epoch: member not registered without a marker"
    );
    let r = c.get_nodes(&scope).await.expect("get_nodes");
    assert_eq!(r.nodes, vec![node(1)]);
    assert_eq!(
        r.epoch.map(|e| e.cluster),
        Some(cluster),
        "join_registration_recreates_a_lost_epoch: marker not re-created"
    );
    assert_eq!(
        c.add_self(scope.lease(&node(2), LONG), &join(ClusterId(cluster.0 ^ 1)))
            .await
            .expect("add_self"),
        AddOutcome::Refused,
        "join_registration_recreates_a_lost_epoch: a second cluster re-created the marker too"
    );
    // A seed that read the registry before the marker came back is refused.
    let lock = match c.lock(scope.lease(&node(3), LONG)).await.expect("lock") {
        LockOutcome::Acquired(t) => t,
        LockOutcome::HeldByOther => panic!("lock free"),
    };
    let seed = AddMode::Seed {
        lock,
        cluster: ClusterId(cluster.0 ^ 2),
        expected_epoch_version: None,
    };
    assert_eq!(
        c.add_self(scope.lease(&node(3), LONG), &seed)
            .await
            .expect("add_self"),
        AddOutcome::Refused,
        "join_registration_recreates_a_lost_epoch: seed over a re-created marker"
    );
}

/// Refresh keeps an entry alive beyond its first TTL and reports a missing entry.
pub async fn refresh_extends_and_detects_missing<B: ConformanceBackend>(b: &B) {
    let scope = fresh_scope(b.prefix(), "refresh");
    let c = b.coordination();
    let ttl = b.ttl();
    let cluster = seed(b, &scope, &node(1)).await;
    assert_eq!(
        c.add_self(
            scope.lease(&node(2), ttl),
            &AddMode::Join {
                cluster: Some(cluster)
            }
        )
        .await
        .expect("add_self"),
        AddOutcome::Added
    );
    // Refresh at half the TTL, three times: the entry outlives its first TTL by far.
    for _ in 0..3 {
        tokio::time::sleep(ttl / 2).await;
        assert_eq!(
            c.refresh(scope.lease(&node(2), ttl))
                .await
                .expect("refresh"),
            RefreshOutcome::Refreshed,
            "refresh_extends_and_detects_missing: refresh of a live entry"
        );
    }
    assert!(
        c.get_nodes(&scope)
            .await
            .expect("get")
            .nodes
            .contains(&node(2))
    );
    // Another incarnation at the same address does not own that entry.
    let other = NodeId::new(node(2).address, 9);
    assert_eq!(
        c.refresh(scope.lease(&other, ttl)).await.expect("refresh"),
        RefreshOutcome::Missing
    );
    assert_eq!(
        c.refresh(scope.lease(&node(9), ttl))
            .await
            .expect("refresh"),
        RefreshOutcome::Missing
    );
}

/// A refresh reports `Missing` once the node's entry was deleted by someone else, although
/// its lease or session lives on, also after earlier refreshes succeeded (a backend that
/// skips reading the entry on refresh must still notice).
pub async fn refresh_notices_an_entry_deleted_behind_its_back<B: ConformanceBackend>(b: &B) {
    let scope = fresh_scope(b.prefix(), "deleted");
    let c = b.coordination();
    let ttl = b.ttl();
    let me = node(1);
    seed(b, &scope, &me).await;
    for _ in 0..2 {
        assert_eq!(
            c.refresh(scope.lease(&me, ttl)).await.expect("refresh"),
            RefreshOutcome::Refreshed,
            "refresh_notices_an_entry_deleted_behind_its_back: refresh of a live entry"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    b.delete_entry_behind_its_back(&scope, &me.address).await;
    // A watch may take a moment to report the deletion.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        c.refresh(scope.lease(&me, ttl)).await.expect("refresh"),
        RefreshOutcome::Missing,
        "refresh_notices_an_entry_deleted_behind_its_back: the deleted entry was refreshed"
    );
    // Registering again makes it refreshable again.
    let cluster = c
        .get_nodes(&scope)
        .await
        .expect("get")
        .epoch
        .map(|e| e.cluster);
    assert_eq!(
        c.add_self(scope.lease(&me, ttl), &AddMode::Join { cluster })
            .await
            .expect("add_self"),
        AddOutcome::Added
    );
    assert_eq!(
        c.refresh(scope.lease(&me, ttl)).await.expect("refresh"),
        RefreshOutcome::Refreshed
    );
}

/// An entry that is not refreshed disappears within TTL plus the backend's bound.
pub async fn entries_expire_after_ttl<B: ConformanceBackend>(b: &B) {
    let scope = fresh_scope(b.prefix(), "expiry");
    let c = b.coordination();
    let ttl = b.ttl();
    let LockOutcome::Acquired(lock) = c.lock(scope.lease(&node(1), LONG)).await.expect("lock")
    else {
        panic!("lock")
    };
    let mode = AddMode::Seed {
        lock,
        cluster: ClusterId(5),
        expected_epoch_version: None,
    };
    assert_eq!(
        c.add_self(scope.lease(&node(1), ttl), &mode)
            .await
            .expect("add"),
        AddOutcome::Added
    );
    let start = tokio::time::Instant::now();
    assert!(
        c.get_nodes(&scope)
            .await
            .expect("get")
            .nodes
            .contains(&node(1))
    );
    loop {
        let r = c.get_nodes(&scope).await.expect("get_nodes");
        if r.nodes.is_empty() {
            assert!(
                start.elapsed() + Duration::from_millis(100) >= ttl / 2,
                "entries_expire_after_ttl: entry vanished long before its TTL"
            );
            // The epoch marker outlives the entries.
            assert_eq!(r.epoch.map(|e| e.cluster), Some(ClusterId(5)));
            break;
        }
        assert!(
            start.elapsed() <= ttl + b.expiry_bound(),
            "entries_expire_after_ttl: entry still there after TTL + bound"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        c.refresh(scope.lease(&node(1), ttl))
            .await
            .expect("refresh"),
        RefreshOutcome::Missing
    );
}

/// `remove_self` removes this incarnation's entry, not another's, and is idempotent.
pub async fn remove_self_only_removes_own_incarnation<B: ConformanceBackend>(b: &B) {
    let scope = fresh_scope(b.prefix(), "remove");
    let c = b.coordination();
    seed(b, &scope, &node(1)).await;
    let stale = NodeId::new(node(1).address, 1);
    c.remove_self(&scope, &stale).await.expect("remove_self");
    assert_eq!(
        c.get_nodes(&scope).await.expect("get").nodes,
        vec![node(1)],
        "removed another incarnation's entry"
    );
    c.remove_self(&scope, &node(1)).await.expect("remove_self");
    assert!(
        c.get_nodes(&scope).await.expect("get").nodes.is_empty(),
        "entry not removed"
    );
    c.remove_self(&scope, &node(1))
        .await
        .expect("remove_self of an absent entry");
}

/// Undecodable entries under the prefix are skipped, not errors.
pub async fn garbage_entries_are_skipped<B: ConformanceBackend>(b: &B) {
    let scope = fresh_scope(b.prefix(), "garbage");
    let c = b.coordination();
    register_first(b, &scope, &node(1)).await;
    b.put_raw_entry(&scope, "not-base64!", b"{\"address\":1}")
        .await;
    b.put_raw_entry(&scope, "MTAuMC4wLjI6NzAwMA", b"\xff\xfe garbage")
        .await;
    // Valid JSON, but the key does not match the address.
    b.put_raw_entry(
        &scope,
        "eHl6",
        br#"{"address":"10.9.9.9:1","incarnation":1}"#,
    )
    .await;
    let r = c
        .get_nodes(&scope)
        .await
        .expect("get_nodes must not fail on garbage");
    assert_eq!(r.nodes, vec![node(1)], "garbage_entries_are_skipped");
}

/// `get_some_nodes(limit)` returns exactly `min(limit, registered)` distinct registered
/// entries and the epoch of a full read, also when undecodable entries sort before every
/// valid one (a backend that pages must read past them), so that "no other node" read
/// from a bounded answer is true. It needs the lock: that is where the answer decides
/// whether a node seeds (it also registers 40 nodes through one backend value).
pub async fn bounded_reads_return_min_of_limit_and_registered<B: ConformanceBackend>(b: &B) {
    const CHECK: &str = "bounded_reads_return_min_of_limit_and_registered";
    let scope = fresh_scope(b.prefix(), "bounded");
    let c = b.coordination();
    let limit = |n| crate::coordination::NodeLimit::new(n).expect("n >= 2");
    let empty = c
        .get_some_nodes(&scope, limit(2))
        .await
        .expect("get_some_nodes");
    assert!(
        empty.nodes.is_empty(),
        "{CHECK}: an empty scope read {empty:?}"
    );
    let cluster = register_first(b, &scope, &node(1)).await;
    let alone = c
        .get_some_nodes(&scope, limit(2))
        .await
        .expect("get_some_nodes");
    assert_eq!(alone.nodes, vec![node(1)], "{CHECK}: one registered node");
    let mode = AddMode::Join {
        cluster: Some(cluster),
    };
    let registered: Vec<NodeId> = (1..=40).map(node).collect();
    for n in &registered[1..] {
        assert_eq!(
            c.add_self(scope.lease(n, LONG), &mode)
                .await
                .expect("add_self"),
            AddOutcome::Added,
            "{CHECK}: a member's registration"
        );
    }
    // Garbage whose keys sort before every valid entry's (base64url of "10.…" is "MTAu…").
    for i in 0..40 {
        b.put_raw_entry(&scope, &format!("A{i:03}"), b"\xff garbage")
            .await;
    }
    let full = c.get_nodes(&scope).await.expect("get_nodes");
    assert_eq!(full.nodes.len(), 40, "{CHECK}: the full read");
    for n in [2, 3, 6, 33, 40, 41, 1000, usize::MAX] {
        let some = c
            .get_some_nodes(&scope, limit(n))
            .await
            .expect("get_some_nodes");
        assert_eq!(
            some.nodes.len(),
            n.min(40),
            "{CHECK}: limit {n} read {:?}",
            some.nodes
        );
        let distinct: std::collections::BTreeSet<_> = some.nodes.iter().collect();
        assert_eq!(
            distinct.len(),
            some.nodes.len(),
            "{CHECK}: limit {n}: duplicates"
        );
        assert!(
            some.nodes.iter().all(|x| registered.contains(x)),
            "{CHECK}: limit {n} read an unregistered node: {:?}",
            some.nodes
        );
        assert_eq!(
            some.epoch.map(|e| e.cluster),
            Some(cluster),
            "{CHECK}: limit {n}: the epoch"
        );
    }
}

/// A backend that does not declare a watch says so: `Unsupported`, at once.
pub async fn wait_for_change_answers_unsupported_without_a_watch<B: ConformanceBackend>(b: &B) {
    let scope = fresh_scope(b.prefix(), "nowatch");
    let out = tokio::time::timeout(
        Duration::from_secs(5),
        b.coordination().wait_for_change(&scope, Some(0)),
    )
    .await
    .expect("wait_for_change_answers_unsupported_without_a_watch: it waited")
    .expect("wait");
    assert_eq!(out, WaitOutcome::Unsupported);
}

/// `wait_for_change(None)` (a read without a revision) waits for the first change after
/// the call: it never answers `Changed` at once (the machine would re-read in a loop).
pub async fn wait_for_change_without_a_revision_waits_for_a_change<B: ConformanceBackend>(b: &B) {
    let scope = fresh_scope(b.prefix(), "watch-none");
    let c = b.coordination();
    let wait = c.wait_for_change(&scope, None);
    tokio::pin!(wait);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut wait)
            .await
            .is_err(),
        "wait_for_change_without_a_revision_waits_for_a_change: resolved without a change"
    );
    let first = node(1);
    let (out, _) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(10), &mut wait),
        register_first(b, &scope, &first)
    );
    assert_eq!(
        out.expect("wait_for_change_without_a_revision_waits_for_a_change: no wake-up")
            .expect("wait"),
        WaitOutcome::Changed
    );
}

/// `wait_for_change` from the revision of a read resolves when a node registers.
pub async fn wait_for_change_wakes_on_registration<B: ConformanceBackend>(b: &B) {
    let scope = fresh_scope(b.prefix(), "watch");
    let c = b.coordination();
    let r = c.get_nodes(&scope).await.expect("get_nodes");
    let wait = c.wait_for_change(&scope, r.revision);
    tokio::pin!(wait);
    // Nothing changed yet: still waiting after a while.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut wait)
            .await
            .is_err(),
        "wait_for_change resolved without a change"
    );
    let first = node(1);
    let seeding = register_first(b, &scope, &first);
    let (out, _) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(10), &mut wait),
        seeding
    );
    assert_eq!(
        out.expect("wait_for_change_wakes_on_registration: no wake-up within 10 s")
            .expect("wait"),
        WaitOutcome::Changed
    );
}
