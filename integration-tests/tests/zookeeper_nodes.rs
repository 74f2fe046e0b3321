//! `constructr node` processes on a real ZooKeeper 3.8 server (`--coordination zk://...`):
//! three started at once form one cluster of three; SIGTERM removes an entry at once; a
//! `kill -9`ed process's entry disappears with its session; it restarts into the same
//! cluster.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use constructr_core::scenarios::unique_cluster_name;
use integration_tests::process::{
    ETCD, NodeProcess, addresses_of, free_udp_ports, wait_converged, wait_until,
};
use integration_tests::zookeeper::{ZooKeeperServer, image};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_processes_on_zookeeper_form_one_cluster_leave_and_expire() {
    let Some(image) = image() else { return };
    let zk = ZooKeeperServer::start(&image, "nodes");
    let cluster = unique_cluster_name("zk-nodes");
    let settings = std::env::temp_dir().join(format!("constructr-{cluster}.toml"));
    std::fs::write(&settings, ETCD.toml).unwrap(); // refresh 1 s, TTL 3 s
    let _cleanup = RemoveOnDrop(settings.clone());
    let url = format!("zk://127.0.0.1:{}", zk.port);
    // Sessions of 2 s (at most the TTL): a killed process's entry goes within 2 s.
    let backend: Vec<String> = ["--coordination", &url, "--zookeeper-session-timeout", "2s"]
        .map(String::from)
        .to_vec();
    let ports = free_udp_ports(4);
    let mut procs: Vec<NodeProcess> = ports[..3]
        .iter()
        .map(|&p| NodeProcess::start(&backend, &cluster, &settings, p))
        .collect();
    let all = addresses_of(&procs);
    let took = wait_converged(&mut procs, &all, Duration::from_secs(90), "3 on ZooKeeper").await;
    println!("3 processes formed one cluster on ZooKeeper in {took:?}");
    let seeders = procs
        .iter()
        .filter(|p| p.states().iter().any(|s| s == "VerifyingEmpty"))
        .count();
    assert_eq!(seeders, 1, "exactly one node seeded");

    let reader = constructr_zookeeper_reader(zk.port);
    let scope =
        constructr_core::Scope::new(integration_tests::process::KEY_PREFIX, cluster.clone())
            .unwrap();
    let registered = |nodes: Vec<constructr_core::NodeId>| {
        let mut a: Vec<String> = nodes.into_iter().map(|n| n.address).collect();
        a.sort();
        a
    };
    use constructr_core::Coordination as _;
    assert_eq!(
        registered(reader.get_nodes(&scope).await.unwrap().nodes),
        all
    );

    // SIGTERM: exit 0, entry removed at once.
    procs[2].sigterm();
    wait_until(
        &mut [&mut procs[2]],
        Duration::from_secs(15),
        "exit",
        |ps| ps[0].try_exit().is_some(),
    )
    .await;
    assert!(procs[2].exit.unwrap().success(), "{}", procs[2].describe());
    let left = registered(reader.get_nodes(&scope).await.unwrap().nodes);
    assert!(!left.contains(&procs[2].gossip), "{left:?}");

    // kill -9: the entry goes with the session (2 s), not later.
    let killed = procs[1].gossip.clone();
    procs[1].kill9();
    let killed_at = Instant::now();
    loop {
        let now = registered(reader.get_nodes(&scope).await.unwrap().nodes);
        if !now.contains(&killed) {
            break;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(15),
            "the killed process's entry outlived its session: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "the killed process's entry was gone {:?} after kill -9",
        killed_at.elapsed()
    );

    // A new process joins the running cluster; nobody seeds a second one.
    let joiner = NodeProcess::start(&backend, &cluster, &settings, ports[3]);
    let mut two = vec![procs.remove(0), joiner];
    let expected = addresses_of(&two);
    wait_converged(&mut two, &expected, Duration::from_secs(60), "a joiner").await;
    assert!(
        !two[1].states().iter().any(|s| s == "VerifyingEmpty"),
        "the joiner seeded: {}",
        two[1].describe()
    );
}

fn constructr_zookeeper_reader(port: u16) -> constructr_zookeeper::ZooKeeperCoordination {
    constructr_zookeeper::ZooKeeperCoordination::new(&constructr_zookeeper::ZooKeeperConfig::new([
        format!("127.0.0.1:{port}"),
    ]))
    .unwrap()
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
