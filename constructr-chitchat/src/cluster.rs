//! `ChitchatCluster`: [`Cluster`] on chitchat — join = gossip with the seeds, leave = stop.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chitchat::transport::UdpTransport;
use chitchat::{Chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, NodeState, ProtocolVersion};
use constructr_core::{Cluster, ClusterError, NodeId};
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;

use crate::config::ChitchatClusterConfig;
use crate::error::ChitchatError;

/// The key under which every node publishes its constructr incarnation (16 hex digits).
///
/// With the gossip address it maps a chitchat member back to its [`NodeId`] (see
/// [`member_node`]), which is how `join` recognises the seeds it was given.
pub const INCARNATION_KEY: &str = "constructr.incarnation";

/// The key a node sets when it leaves gracefully: peers drop it from their members at
/// once, instead of after the failure detector's timeout.
pub const LEAVING_KEY: &str = "constructr.leaving";

/// How long a leaving node keeps gossiping after it announced its leave to every live peer
/// (one exchange is a round trip; peers it did not reach hear it from the others).
const LEAVE_GRACE: Duration = Duration::from_millis(200);

/// Whether a member announced its graceful leave ([`LEAVING_KEY`]).
pub fn is_leaving(state: &NodeState) -> bool {
    state.get(LEAVING_KEY).is_some()
}

/// The live members of the cluster as this node sees them (itself included), with their
/// key-values. Empty while chitchat is not running.
pub type Members = BTreeMap<ChitchatId, NodeState>;

/// The [`NodeId`] a live member registered with: its gossip address and the incarnation it
/// publishes under [`INCARNATION_KEY`] (`None` for a peer that does not publish one).
pub fn member_node(id: &ChitchatId, state: &NodeState) -> Option<NodeId> {
    let incarnation = u64::from_str_radix(state.get(INCARNATION_KEY)?, 16).ok()?;
    Some(NodeId::new(
        id.gossip_advertise_addr.to_string(),
        incarnation,
    ))
}

/// An incarnation for [`ChitchatCluster::new`]: random, and increasing across restarts of a
/// process (the upper 44 bits are the Unix time in milliseconds, the lower 20 are random).
///
/// chitchat itself only needs generations to differ; applications that pick "the newest
/// generation" of a node (as Quickwit does) need them to increase.
pub fn time_ordered_incarnation() -> u64 {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    (millis << 20) | (rand::random::<u64>() & 0xF_FFFF)
}

/// One node of a chitchat cluster, bootstrapped by constructr.
///
/// - **join(seeds)** starts chitchat with the seeds' gossip addresses (a [`NodeId`]'s
///   address is its gossip address) and resolves once this node is a member: it sees itself
///   and — unless it seeds the cluster (`seeds == [self]`) — at least one of the seeds
///   (same address and incarnation) among chitchat's live nodes. A running chitchat is
///   restarted, so a join always gossips with exactly the seeds it was given.
/// - **leave()** announces the leave ([`LEAVING_KEY`], gossiped to every live peer at once,
///   so they drop this node within a round trip, not after the failure detector's
///   timeout), then shuts chitchat down; a later `join` starts it again.
///
/// # Generations
/// chitchat's `generation_id` is the incarnation plus the number of earlier starts in this
/// process: every (re)start is a new generation, as chitchat requires of a node that leaves
/// and rejoins (peers would otherwise ignore its restarted heartbeats). A restarted process
/// has a new incarnation, hence a new generation too.
///
/// # The application's view
/// [`members`](Self::members) is a watch of the live members that survives chitchat
/// restarts; [`chitchat`](Self::chitchat) gives the running instance (key-values, dead
/// nodes, ...); [`set_key_value`](Self::set_key_value) publishes a key-value that is
/// published again after a restart.
pub struct ChitchatCluster {
    config: ChitchatClusterConfig,
    node: NodeId,
    node_name: String,
    running: Mutex<Option<Running>>,
    starts: AtomicU64,
    members: watch::Sender<Members>,
    /// The generation whose forwarder may publish members; `None` while stopped. Checked
    /// and published under this lock, so a stopped instance never publishes late.
    publishing: Arc<std::sync::Mutex<Option<u64>>>,
    key_values: std::sync::Mutex<BTreeMap<String, String>>,
}

struct Running {
    handle: ChitchatHandle,
    forward: JoinHandle<()>,
    /// Keeps the subscription to peers' [`LEAVING_KEY`] alive.
    _leaves: chitchat::ListenerHandle,
}

impl std::fmt::Debug for ChitchatCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChitchatCluster")
            .field("node", &self.node)
            .field("node_name", &self.node_name)
            .field("cluster_id", &self.config.cluster_id)
            .field("listen_addr", &self.config.listen_addr)
            .finish_non_exhaustive()
    }
}

impl ChitchatCluster {
    /// A node with this configuration and incarnation (random per process start, e.g.
    /// [`time_ordered_incarnation`]). chitchat starts on the first `join`.
    pub fn new(config: ChitchatClusterConfig, incarnation: u64) -> Result<Self, ChitchatError> {
        config.validate()?;
        let advertised = config.advertised()?;
        let node = NodeId::new(advertised.to_string(), incarnation);
        let node_name = config
            .node_name
            .clone()
            .unwrap_or_else(|| advertised.to_string());
        let mut key_values = config.key_values.clone();
        key_values.insert(INCARNATION_KEY.into(), format!("{incarnation:016x}"));
        Ok(Self {
            config,
            node,
            node_name,
            running: Mutex::new(None),
            starts: AtomicU64::new(0),
            members: watch::channel(Members::new()).0,
            publishing: Arc::new(std::sync::Mutex::new(None)),
            key_values: std::sync::Mutex::new(key_values),
        })
    }

    /// This node as registered in the coordination service (advertised gossip address and
    /// incarnation): pass it to `Node::builder().address(..)`.
    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// The configuration.
    pub fn config(&self) -> &ChitchatClusterConfig {
        &self.config
    }

    /// A watch of the live members (empty while chitchat is not running). It fires when a
    /// member comes or goes and when a member's key-values change.
    pub fn members(&self) -> watch::Receiver<Members> {
        self.members.subscribe()
    }

    /// The running chitchat instance (key-values, live and dead nodes), `None` while stopped.
    ///
    /// Hold its lock briefly: gossip waits for it.
    pub async fn chitchat(&self) -> Option<Arc<Mutex<Chitchat>>> {
        self.running
            .lock()
            .await
            .as_ref()
            .map(|r| r.handle.chitchat())
    }

    /// The running instance's chitchat id (its generation changes with every start).
    pub async fn chitchat_id(&self) -> Option<ChitchatId> {
        let running = self.running.lock().await;
        running.as_ref().map(|r| r.handle.chitchat_id().clone())
    }

    /// Publishes a key-value now (if running) and on every later start.
    pub async fn set_key_value(&self, key: impl Into<String>, value: impl Into<String>) {
        let (key, value) = (key.into(), value.into());
        self.key_values
            .lock()
            .expect("not poisoned")
            .insert(key.clone(), value.clone());
        if let Some(chitchat) = self.chitchat().await {
            chitchat.lock().await.self_node_state().set(key, value);
        }
    }

    /// (Re)starts chitchat; returns its live-nodes watch and the generation.
    async fn start(
        &self,
        seeds: &[SocketAddr],
    ) -> Result<(watch::Receiver<Members>, u64), ChitchatError> {
        let mut running = self.running.lock().await;
        if let Some(old) = running.take() {
            self.stop(old).await?;
        }
        let start = self.starts.fetch_add(1, Ordering::Relaxed);
        let generation = self.node.incarnation.wrapping_add(start);
        let advertised = self.config.advertised()?;
        let config = ChitchatConfig {
            chitchat_id: ChitchatId::new(self.node_name.as_str(), generation, advertised),
            cluster_id: self.config.cluster_id.clone(),
            gossip_interval: self.config.gossip_interval,
            listen_addr: self.config.listen_addr,
            seed_nodes: seeds.iter().map(ToString::to_string).collect(),
            failure_detector_config: self.config.failure_detector.to_chitchat(),
            marked_for_deletion_grace_period: self.config.marked_for_deletion_grace_period,
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: ProtocolVersion::V0,
        };
        let key_values: Vec<(String, String)> = self
            .key_values
            .lock()
            .expect("not poisoned")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let handle = chitchat::spawn_chitchat(config, key_values, &UdpTransport)
            .await
            .map_err(|e| ChitchatError::Start {
                listen_addr: self.config.listen_addr,
                detail: format!("{e:#}"),
            })?;
        // chitchat refreshes its live nodes once per gossip round; a peer's leave is
        // applied at once, as soon as its key arrives.
        let (leaves_tx, leaves_rx) = tokio::sync::mpsc::unbounded_channel();
        let (live, leaves) = {
            let chitchat = handle.chitchat();
            let chitchat = chitchat.lock().await;
            let leaves = chitchat.subscribe_event(LEAVING_KEY, move |event| {
                let _ = leaves_tx.send(event.node.clone());
            });
            (chitchat.live_nodes_watcher(), leaves)
        };
        *self.publishing.lock().expect("not poisoned") = Some(generation);
        let forward = tokio::spawn(forward_members(
            live.clone(),
            leaves_rx,
            self.members.clone(),
            self.publishing.clone(),
            generation,
        ));
        tracing::debug!(generation, ?seeds, "chitchat started");
        *running = Some(Running {
            handle,
            forward,
            _leaves: leaves,
        });
        Ok((live, generation))
    }

    async fn stop(&self, old: Running) -> Result<(), ChitchatError> {
        {
            let mut publishing = self.publishing.lock().expect("not poisoned");
            *publishing = None;
            self.members.send_replace(Members::new());
        }
        old.forward.abort();
        announce_leave(&old.handle).await;
        let generation = old.handle.chitchat_id().generation_id;
        let result = old
            .handle
            .shutdown()
            .await
            .map_err(|e| ChitchatError::Shutdown {
                detail: format!("{e:#}"),
            });
        tracing::debug!(generation, "chitchat stopped");
        result
    }
}

/// Sets [`LEAVING_KEY`], gossips with every live peer at once, and gives the exchanges
/// [`LEAVE_GRACE`] to complete.
async fn announce_leave(handle: &ChitchatHandle) {
    let peers: Vec<SocketAddr> = {
        let chitchat = handle.chitchat();
        let mut chitchat = chitchat.lock().await;
        chitchat.self_node_state().set(LEAVING_KEY, "1");
        let me = chitchat.self_chitchat_id().clone();
        chitchat
            .live_nodes()
            .filter(|id| **id != me)
            .map(|id| id.gossip_advertise_addr)
            .collect()
    };
    if peers.is_empty() {
        return;
    }
    for peer in &peers {
        if let Err(e) = handle.gossip(*peer) {
            tracing::debug!(%peer, error = %e, "cannot gossip the leave");
        }
    }
    tokio::time::sleep(LEAVE_GRACE).await;
    tracing::debug!(peers = peers.len(), "leave announced");
}

/// Live members without those that announced their leave (in their state, or in `leaving`).
fn without_leaving(members: &Members, leaving: &HashSet<ChitchatId>) -> Members {
    members
        .iter()
        .filter(|(id, state)| !is_leaving(state) && !leaving.contains(*id))
        .map(|(id, state)| (id.clone(), state.clone()))
        .collect()
}

/// Copies chitchat's live nodes (but those leaving) into the watch that outlives restarts.
async fn forward_members(
    mut live: watch::Receiver<Members>,
    mut leaves: tokio::sync::mpsc::UnboundedReceiver<ChitchatId>,
    members: watch::Sender<Members>,
    publishing: Arc<std::sync::Mutex<Option<u64>>>,
    generation: u64,
) {
    let mut leaving: HashSet<ChitchatId> = HashSet::new();
    loop {
        let current = {
            let live = live.borrow_and_update();
            // A node that left is forgotten once chitchat no longer lists it as live.
            leaving.retain(|id| live.contains_key(id));
            without_leaving(&live, &leaving)
        };
        {
            let publishing = publishing.lock().expect("not poisoned");
            if *publishing != Some(generation) {
                return;
            }
            members.send_replace(current);
        }
        tokio::select! {
            changed = live.changed() => if changed.is_err() {
                return;
            },
            Some(id) = leaves.recv() => {
                leaving.insert(id);
            }
        }
    }
}

/// Parses the seeds' gossip addresses; the incarnation tells a seed from a later process on
/// the same address.
fn seed_addresses(seeds: &[NodeId]) -> Result<HashMap<SocketAddr, u64>, ChitchatError> {
    seeds
        .iter()
        .map(|s| {
            s.address
                .parse::<SocketAddr>()
                .map(|a| (a, s.incarnation))
                .map_err(|source| ChitchatError::SeedAddress {
                    seed: s.to_string(),
                    source,
                })
        })
        .collect()
}

/// Member = sees itself and (unless seeding) one of `seeds` (address and incarnation).
fn is_member(
    members: &Members,
    me: &NodeId,
    seeding: bool,
    seeds: &HashMap<SocketAddr, u64>,
) -> bool {
    let mut nodes = members
        .iter()
        .filter(|(_, state)| !is_leaving(state))
        .filter_map(|(id, state)| member_node(id, state));
    let mut sees_itself = false;
    let mut sees_seed = seeding;
    for node in &mut nodes {
        sees_itself |= node == *me;
        sees_seed |= node != *me
            && node
                .address
                .parse::<SocketAddr>()
                .is_ok_and(|a| seeds.get(&a) == Some(&node.incarnation));
    }
    sees_itself && sees_seed
}

#[async_trait]
impl Cluster for ChitchatCluster {
    async fn join(&self, seeds: &[NodeId]) -> Result<(), ClusterError> {
        let addresses = seed_addresses(seeds).map_err(ChitchatError::into_join)?;
        let seeding = seeds.len() == 1 && seeds[0] == self.node;
        // The core never passes this node's own address as a seed, except when seeding.
        let me = self.config.advertised().map_err(ChitchatError::into_join)?;
        let gossip_to: Vec<SocketAddr> = if seeding {
            Vec::new()
        } else {
            addresses.keys().copied().filter(|a| *a != me).collect()
        };
        let (mut live, generation) = self
            .start(&gossip_to)
            .await
            .map_err(ChitchatError::into_join)?;
        let members = live
            .wait_for(|m| is_member(m, &self.node, seeding, &addresses))
            .await
            .map_err(|_| ChitchatError::Stopped.into_join())?
            .clone();
        // Once `join` resolves, `members()` shows what made this node a member (the
        // forwarder may not have run yet).
        let publishing = self.publishing.lock().expect("not poisoned");
        if *publishing == Some(generation) {
            self.members.send_replace(members);
        }
        Ok(())
    }

    async fn leave(&self) -> Result<(), ClusterError> {
        let old = self.running.lock().await.take();
        match old {
            Some(old) => self.stop(old).await.map_err(ChitchatError::into_leave),
            None => Ok(()),
        }
    }

    async fn live_members(&self) -> Option<Vec<NodeId>> {
        let members = self.members.borrow();
        Some(
            members
                .iter()
                .filter_map(|(id, state)| member_node(id, state))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_addresses_must_be_socket_addresses() {
        let e = seed_addresses(&[NodeId::new("node-1.svc:7946", 1)]).unwrap_err();
        assert!(e.to_string().contains("node-1.svc:7946"), "{e}");
        let ok = seed_addresses(&[NodeId::new("127.0.0.1:7946", 7)]).unwrap();
        assert_eq!(ok[&"127.0.0.1:7946".parse().unwrap()], 7);
    }

    #[test]
    fn time_ordered_incarnations_increase() {
        let a = time_ordered_incarnation();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(time_ordered_incarnation() > a);
    }
}
