//! `ChitchatCluster` on real UDP sockets on 127.0.0.1: join, membership, leave and rejoin,
//! and three nodes bootstrapped by the driver on the in-memory backend.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use constructr_chitchat::{
    ChitchatCluster, ChitchatClusterConfig, FailureDetectorSettings, Members, member_node,
};
use constructr_core::memory::MemoryCoordination;
use constructr_core::{Cluster, NodeId, Settings, driver};

fn free_udp_addr() -> SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free UDP port")
}

fn node(cluster_id: &str) -> ChitchatCluster {
    let config = ChitchatClusterConfig::new(cluster_id, free_udp_addr())
        .with_gossip_interval(Duration::from_millis(50))
        .with_failure_detector(
            FailureDetectorSettings::default().with_initial_interval(Duration::from_millis(100)),
        );
    ChitchatCluster::new(config, rand::random()).expect("valid config")
}

/// A node of `cluster_id` that seeded it (joined itself).
async fn seed(cluster_id: &str) -> ChitchatCluster {
    let seed = node(cluster_id);
    seed.join(std::slice::from_ref(seed.node()))
        .await
        .expect("seeding");
    seed
}

fn addresses(members: &Members) -> Vec<String> {
    members
        .iter()
        .filter_map(|(id, s)| member_node(id, s))
        .map(|n| n.address)
        .collect()
}

async fn wait_members(cluster: &ChitchatCluster, n: usize) -> Members {
    let mut rx = cluster.members();
    tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|m| m.len() == n))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{} did not see {n} members: {:?}",
                cluster.node(),
                addresses(&cluster.members().borrow())
            )
        })
        .expect("cluster alive")
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joiners_become_members_of_the_seed_and_see_each_other() {
    let seed = seed("join-test").await;
    let a = node("join-test");
    let b = node("join-test");
    let seeds = [seed.node().clone()];
    let (ra, rb) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(10), a.join(&seeds)),
        tokio::time::timeout(Duration::from_secs(10), b.join(&seeds)),
    );
    ra.expect("a joined in time").expect("a joined");
    rb.expect("b joined in time").expect("b joined");
    for c in [&a, &b] {
        let seen = addresses(&c.members().borrow());
        assert!(
            seen.contains(&seed.node().address) && seen.contains(&c.node().address),
            "members() shows the seed and itself once join resolved: {seen:?}"
        );
    }
    for c in [&seed, &a, &b] {
        let members = wait_members(c, 3).await;
        let mut seen = addresses(&members);
        seen.sort();
        let mut all = vec![
            seed.node().address.clone(),
            a.node().address.clone(),
            b.node().address.clone(),
        ];
        all.sort();
        assert_eq!(seen, all);
    }
    for c in [&seed, &a, &b] {
        c.leave().await.expect("leave");
        assert!(c.members().borrow().is_empty());
        assert!(c.chitchat().await.is_none());
    }
}

/// A node whose gossip rounds are a minute apart: after the one at start, chitchat's own
/// rounds (and with them its failure detector's liveness updates) never come in a test.
fn slow_node(cluster_id: &str) -> ChitchatCluster {
    let config = ChitchatClusterConfig::new(cluster_id, free_udp_addr())
        .with_gossip_interval(Duration::from_secs(60));
    ChitchatCluster::new(config, rand::random()).expect("valid config")
}

/// A [`slow_node`] of `cluster_id` that seeded it.
async fn slow_seed(cluster_id: &str) -> ChitchatCluster {
    let seed = slow_node(cluster_id);
    seed.join(std::slice::from_ref(seed.node()))
        .await
        .expect("seeding");
    seed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joiner_and_its_seed_see_each_other_within_round_trips_not_gossip_rounds() {
    let seed = slow_seed("round-trip-test").await;
    let joiners = [slow_node("round-trip-test"), slow_node("round-trip-test")];
    let seeds = [seed.node().clone()];
    for joiner in &joiners {
        tokio::time::timeout(Duration::from_secs(5), joiner.join(&seeds))
            .await
            .expect("joined without waiting for a gossip round")
            .expect("joined");
        let seen = addresses(&joiner.members().borrow());
        assert!(seen.contains(&seed.node().address), "{seen:?}");
    }
    // The seed heard each joiner directly: it counts them without its failure detector.
    let members = wait_members(&seed, 3).await;
    assert_eq!(members.len(), 3);
    for c in [&seed, &joiners[0], &joiners[1]] {
        c.leave().await.expect("leave");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_leaves_before_any_gossip_round_is_dropped_at_once() {
    let seed = slow_seed("early-leave-test").await;
    let joiner = slow_node("early-leave-test");
    joiner
        .join(std::slice::from_ref(seed.node()))
        .await
        .expect("joined");
    wait_members(&seed, 2).await;
    // Neither failure detector has judged the other: the leave goes to the view's members.
    joiner.leave().await.expect("leave");
    let mut rx = seed.members();
    tokio::time::timeout(Duration::from_millis(500), rx.wait_for(|m| m.len() == 1))
        .await
        .expect("the seed dropped the node that left")
        .expect("the seed runs");
    seed.leave().await.expect("leave");
}

/// A node alone while its join waits is no cluster: the application sees no members until
/// a seed answered (a node that reported itself would look like a second cluster).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_node_shows_no_members_until_a_seed_answered() {
    let joiner = node("silent-seed-test");
    let silent = NodeId::new(free_udp_addr().to_string(), 7);
    let pending = tokio::time::timeout(Duration::from_millis(500), joiner.join(&[silent])).await;
    assert!(pending.is_err(), "joined a seed that never answered");
    let members = addresses(&joiner.members().borrow());
    assert!(members.is_empty(), "a joining node reported {members:?}");
    joiner.leave().await.expect("leave");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_of_another_incarnation_does_not_count() {
    let seed = seed("incarnation-test").await;
    let joiner = node("incarnation-test");
    let stale = NodeId::new(seed.node().address.clone(), seed.node().incarnation ^ 1);
    let r = tokio::time::timeout(Duration::from_secs(2), joiner.join(&[stale])).await;
    assert!(r.is_err(), "joined a seed whose incarnation does not match");
    // It does gossip with the address, so the seed sees it; the joiner, not a member, shows
    // no members.
    wait_members(&seed, 2).await;
    assert!(joiner.members().borrow().is_empty());
    joiner.leave().await.expect("leave");
    seed.leave().await.expect("leave");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leave_then_join_again_starts_a_new_generation() {
    let seed = seed("rejoin-test").await;
    let a = node("rejoin-test");
    let seeds = [seed.node().clone()];
    a.join(&seeds).await.expect("join");
    let first = a.chitchat_id().await.expect("running").generation_id;
    a.leave().await.expect("leave");
    tokio::time::timeout(Duration::from_secs(10), a.join(&seeds))
        .await
        .expect("rejoined in time")
        .expect("rejoined");
    let second = a.chitchat_id().await.expect("running").generation_id;
    assert_ne!(first, second);
    // The seed sees the new generation live.
    let mut rx = seed.members();
    tokio::time::timeout(
        Duration::from_secs(10),
        rx.wait_for(|m| m.keys().any(|id| id.generation_id == second)),
    )
    .await
    .expect("seed sees the new generation")
    .expect("alive");
    a.leave().await.expect("leave");
    seed.leave().await.expect("leave");
}

#[tokio::test]
async fn a_seed_without_a_socket_address_fails_the_join_clearly() {
    let a = node("bad-seed");
    let e = a
        .join(&[NodeId::new("not-an-address", 1)])
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("not-an-address") && e.contains("ip:port"), "{e}");
    assert!(a.chitchat().await.is_none(), "nothing started");
}

#[tokio::test]
async fn a_taken_gossip_port_fails_the_join_clearly() {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let a = ChitchatCluster::new(ChitchatClusterConfig::new("taken", addr), 1).expect("valid");
    let e = a.join(std::slice::from_ref(a.node())).await.unwrap_err();
    assert!(e.to_string().contains(&addr.to_string()), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_bootstrap_through_the_driver() {
    let coordination = Arc::new(MemoryCoordination::default());
    let mut settings = Settings::default();
    settings.join_timeout = Duration::from_secs(5);
    settings.retry_delay = Duration::from_millis(200);
    let clusters: Vec<Arc<ChitchatCluster>> =
        (0..3).map(|_| Arc::new(node("driver-test"))).collect();
    let handles: Vec<_> = clusters
        .iter()
        .map(|c| {
            driver::Node::builder()
                .settings(settings.clone())
                .address(c.node().clone())
                .coordination(coordination.clone())
                .cluster(c.clone())
                .spawn()
                .expect("valid settings")
        })
        .collect();
    for h in &handles {
        let state = tokio::time::timeout(Duration::from_secs(20), h.registered())
            .await
            .expect("registered in time");
        assert!(
            state.as_ref().is_ok_and(|s| s.is_registered()),
            "{}: {state:?}",
            h.node()
        );
    }
    for c in &clusters {
        wait_members(c, 3).await;
    }
    // What `GET /members` serves: every node as registered, address and incarnation.
    let mut expected: Vec<_> = clusters.iter().map(|c| c.node().clone()).collect();
    expected.sort();
    for h in &handles {
        let mut live = h.monitor().members().await.expect("chitchat tells");
        live.sort();
        assert_eq!(live, expected);
    }
    for h in &handles {
        h.shutdown();
    }
    for h in handles {
        h.stopped().await.expect("stopped cleanly");
    }
    for c in &clusters {
        assert!(c.chitchat().await.is_none(), "left on shutdown");
    }
}

/// With chitchat's default gossip interval (1 s) a silent peer is declared dead only after
/// several seconds, and chitchat refreshes its live set once per round; a graceful leave
/// reaches the peers within a round trip (the test allows half a second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_drop_a_gracefully_leaving_node_within_half_a_second() {
    let slow = |_: ()| {
        let config = ChitchatClusterConfig::new("leave-test", free_udp_addr())
            .with_gossip_interval(Duration::from_secs(1));
        ChitchatCluster::new(config, rand::random()).expect("valid config")
    };
    let seed = slow(());
    seed.join(std::slice::from_ref(seed.node())).await.unwrap();
    let a = slow(());
    let b = slow(());
    let seeds = [seed.node().clone()];
    let (ra, rb) = tokio::join!(a.join(&seeds), b.join(&seeds));
    ra.unwrap();
    rb.unwrap();
    for c in [&seed, &a, &b] {
        wait_members(c, 3).await;
    }
    let leaving = b.node().address.clone();
    let started = std::time::Instant::now();
    b.leave().await.expect("leave");
    for c in [&seed, &a] {
        let mut rx = c.members();
        let dropped = tokio::time::timeout(
            Duration::from_millis(500).saturating_sub(started.elapsed()),
            rx.wait_for(|m| !addresses(m).contains(&leaving)),
        )
        .await;
        assert!(
            dropped.is_ok(),
            "{} still lists the leaving node {:?} after it left",
            c.node(),
            started.elapsed()
        );
    }
    println!(
        "peers dropped the leaving node {:?} after leave()",
        started.elapsed()
    );
    // The node that left can come back: its new generation is a member again.
    b.join(&seeds).await.expect("rejoin");
    for c in [&seed, &a, &b] {
        wait_members(c, 3).await;
    }
}
