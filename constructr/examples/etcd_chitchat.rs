//! A minimal service that bootstraps a chitchat cluster through etcd and watches its members.
//!
//! `cargo run -p constructr --features etcd,chitchat --example etcd_chitchat -- 127.0.0.1:7001`
//! (then `127.0.0.1:7002`, ... in other terminals; etcd from `ETCD_ENDPOINTS`, default
//! `http://127.0.0.1:2379`). Ctrl-C or SIGTERM (what `kill`, systemd and Kubernetes send)
//! leaves the cluster and removes the registry entry.

use std::sync::Arc;

use constructr::Settings;
use constructr::chitchat::{ChitchatCluster, ChitchatClusterConfig, member_node};
use constructr::driver::Node;
use constructr::etcd::{EtcdConfig, EtcdCoordination};
use tokio::signal::unix::{SignalKind, signal};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let gossip = std::env::args()
        .nth(1)
        .unwrap_or("127.0.0.1:7001".into())
        .parse()?;
    let endpoints = std::env::var("ETCD_ENDPOINTS").unwrap_or("http://127.0.0.1:2379".into());
    let etcd = Arc::new(EtcdCoordination::new(&EtcdConfig::new(
        endpoints.split(','),
    ))?);
    let settings = Settings::default(); // cluster `default`, refresh every 30 s, TTL 60 s

    // The node's registered address is its gossip address; the incarnation is new per start.
    let config = ChitchatClusterConfig::new(settings.cluster_name.as_str(), gossip);
    let incarnation = constructr::chitchat::time_ordered_incarnation();
    let cluster = Arc::new(ChitchatCluster::new(config, incarnation)?);
    let me = cluster.node().clone();
    let node = Node::builder()
        .settings(settings)
        .address(me)
        .coordination(etcd)
        .cluster(cluster.clone())
        .spawn()?;
    // Listen for SIGTERM before anything can send it.
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::select! {
        registered = node.registered() => println!("{} is {:?}", node.node(), registered?),
        _ = tokio::signal::ctrl_c() => return leave(node).await,
        _ = terminate.recv() => return leave(node).await,
    }

    // The application's view: live members and their key-values, across chitchat restarts.
    cluster
        .set_key_value("http", format!("{}:8080", gossip.ip()))
        .await;
    let mut members = cluster.members();
    members.mark_changed();
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
            Ok(()) = members.changed() => {
                let live: Vec<String> = members.borrow_and_update().iter()
                    .filter_map(|(id, state)| Some(format!("{} (http {})",
                        member_node(id, state)?.address, state.get("http").unwrap_or("?"))))
                    .collect();
                println!("live: {live:?}");
            }
        }
    }
    leave(node).await
}

/// Leaves chitchat, removes the registry entry and waits until the node stopped.
async fn leave(node: constructr::driver::NodeHandle) -> Result<(), Box<dyn std::error::Error>> {
    node.shutdown();
    node.stopped().await?;
    Ok(())
}
