//! Three nodes of one process bootstrap a cluster on the in-memory backend.
//!
//! `cargo run -p constructr --example memory`

use std::sync::Arc;

use constructr::driver::Node;
use constructr::local::LocalCluster;
use constructr::memory::MemoryCoordination;
use constructr::{NodeId, Settings};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let coordination = Arc::new(MemoryCoordination::default());
    let cluster = LocalCluster::new();
    let settings = Settings::default();

    let mut nodes = Vec::new();
    for port in 7001..=7003 {
        let me = NodeId::new(format!("127.0.0.1:{port}"), rand::random());
        let handle = Node::builder()
            .settings(settings.clone())
            .address(me.clone())
            .coordination(coordination.clone())
            .cluster(Arc::new(cluster.node(me)))
            .spawn()?;
        nodes.push(handle);
    }
    for node in &nodes {
        let state = node.registered().await?;
        println!("{} is {state:?}", node.node());
    }
    println!("clusters: {:?}", cluster.clusters());

    for node in &nodes {
        node.shutdown(); // leave, remove the entry, stop
    }
    for node in nodes {
        node.stopped().await?;
    }
    Ok(())
}
