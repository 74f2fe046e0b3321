//! `ChitchatCluster`: [`Cluster`] on chitchat — join = gossip with the seeds, leave = stop.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chitchat::{Chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, NodeState, ProtocolVersion};
use constructr_core::{Cluster, ClusterError, NodeId};
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::ChitchatClusterConfig;
use crate::contacts::{ContactTransport, Contacts};
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

/// How many seeds a joining node gossips with at once (and again each gossip round, the
/// next ones, until one answered).
const JOIN_FANOUT: usize = 3;

/// The pause after a joining node's first gossip with the seeds; it doubles with every try
/// up to a gossip interval.
const JOIN_FIRST_RETRY: Duration = Duration::from_millis(20);

/// How long the member view waits after it was computed, per node known, before it is
/// computed again (at most half a gossip round).
const PAUSE_PER_MEMBER: Duration = Duration::from_millis(1);

/// How many gossip intervals a message from a peer, or its heartbeat advancing, counts as
/// proof that it is alive, for the member view, until chitchat's failure detector has
/// judged it.
const FRESH_ROUNDS: u32 = 3;

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
    /// Keep the subscriptions to peers' [`LEAVING_KEY`] and [`INCARNATION_KEY`] alive.
    _leaves: chitchat::ListenerHandle,
    _arrivals: chitchat::ListenerHandle,
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

    /// (Re)starts chitchat; returns this generation's member view, the generation, and the
    /// flag its `join` sets once this node is a member (the application sees members only
    /// from then on).
    async fn start(
        &self,
        seeds: &[SocketAddr],
    ) -> Result<
        (
            watch::Receiver<Members>,
            u64,
            Arc<std::sync::atomic::AtomicBool>,
        ),
        ChitchatError,
    > {
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
        let contacts = Arc::new(Contacts::new(self.config.gossip_interval * FRESH_ROUNDS));
        let transport = ContactTransport {
            contacts: contacts.clone(),
        };
        let handle = chitchat::spawn_chitchat(config, key_values, &transport)
            .await
            .map_err(|e| ChitchatError::Start {
                listen_addr: self.config.listen_addr,
                detail: format!("{e:#}"),
            })?;
        // chitchat refreshes its live nodes once per gossip round; a peer's leave is
        // applied at once, as soon as its key arrives, and a peer heard from directly is
        // counted as soon as its state (its incarnation) arrives.
        let (leaves_tx, leaves_rx) = tokio::sync::mpsc::unbounded_channel();
        let (arrivals_tx, arrivals_rx) = tokio::sync::mpsc::unbounded_channel();
        let (live, leaves, arrivals) = {
            let chitchat = handle.chitchat();
            let chitchat = chitchat.lock().await;
            let leaves = chitchat.subscribe_event(LEAVING_KEY, move |event| {
                let _ = leaves_tx.send(event.node.clone());
            });
            let arrivals = chitchat.subscribe_event(INCARNATION_KEY, move |_| {
                let _ = arrivals_tx.send(());
            });
            (chitchat.live_nodes_watcher(), leaves, arrivals)
        };
        *self.publishing.lock().expect("not poisoned") = Some(generation);
        let joined = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (view_tx, view_rx) = watch::channel(Members::new());
        let forward = tokio::spawn(
            Forwarder {
                chitchat: handle.chitchat(),
                live,
                leaves: leaves_rx,
                arrivals: arrivals_rx,
                contacts,
                view: view_tx,
                members: self.members.clone(),
                publishing: self.publishing.clone(),
                joined: joined.clone(),
                generation,
                round: self.config.gossip_interval,
            }
            .run(),
        );
        tracing::debug!(generation, ?seeds, "chitchat started");
        *running = Some(Running {
            handle,
            forward,
            _leaves: leaves,
            _arrivals: arrivals,
        });
        Ok((view_rx, generation, joined))
    }

    /// Gossips at once with `peers`, if `generation` still runs.
    async fn gossip_with(&self, generation: u64, peers: &[SocketAddr]) {
        let running = self.running.lock().await;
        let Some(running) = running.as_ref() else {
            return;
        };
        if running.handle.chitchat_id().generation_id != generation {
            return;
        }
        for peer in peers {
            if let Err(e) = running.handle.gossip(*peer) {
                tracing::debug!(%peer, error = %e, "cannot gossip");
            }
        }
    }

    async fn stop(&self, old: Running) -> Result<(), ChitchatError> {
        let members = {
            let mut publishing = self.publishing.lock().expect("not poisoned");
            *publishing = None;
            self.members.send_replace(Members::new())
        };
        old.forward.abort();
        let me = old.handle.chitchat_id().clone();
        let peers: Vec<SocketAddr> = members
            .keys()
            .filter(|id| **id != me)
            .map(|id| id.gossip_advertise_addr)
            .collect();
        announce_leave(&old.handle, &peers).await;
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

/// Sets [`LEAVING_KEY`], gossips with every member of the view (`peers`) at once, and gives
/// the exchanges [`LEAVE_GRACE`] to complete.
async fn announce_leave(handle: &ChitchatHandle, peers: &[SocketAddr]) {
    {
        let chitchat = handle.chitchat();
        let mut chitchat = chitchat.lock().await;
        chitchat.self_node_state().set(LEAVING_KEY, "1");
    }
    if peers.is_empty() {
        return;
    }
    for peer in peers {
        if let Err(e) = handle.gossip(*peer) {
            tracing::debug!(%peer, error = %e, "cannot gossip the leave");
        }
    }
    tokio::time::sleep(LEAVE_GRACE).await;
    tracing::debug!(peers = peers.len(), "leave announced");
}

/// The member view: chitchat's live nodes, and the peers this node has recent proof of
/// (within [`FRESH_ROUNDS`] gossip intervals) that the failure detector has not judged yet
/// — it counts a new peer only after two heartbeats and a gossip round, two to four rounds
/// in all — without those that announced their leave. Proof is a message heard from the
/// peer directly (`heard`: it is alive now), or its heartbeat seen advancing (`advanced`:
/// only a live node advances it; the state of a dead one, relayed by others, stands
/// still). Only the newest generation on an address, with an incarnation, counts so.
fn view<'a>(
    chitchat: &'a Chitchat,
    heard: &HashMap<SocketAddr, Instant>,
    heartbeats: &Heartbeats,
    leaving: &HashSet<ChitchatId>,
) -> Vec<(&'a ChitchatId, &'a NodeState)> {
    let live: HashSet<&ChitchatId> = chitchat.live_nodes().collect();
    let mut newest: HashMap<SocketAddr, u64> = HashMap::new();
    for id in chitchat.node_states().keys() {
        let g = newest.entry(id.gossip_advertise_addr).or_default();
        *g = (*g).max(id.generation_id);
    }
    chitchat
        .node_states()
        .iter()
        .filter(|(id, state)| {
            live.contains(id)
                || ((heard.contains_key(&id.gossip_advertise_addr) || heartbeats.advanced(id))
                    && newest.get(&id.gossip_advertise_addr) == Some(&id.generation_id)
                    && state.get(INCARNATION_KEY).is_some())
        })
        .filter(|(id, state)| !is_leaving(state) && !leaving.contains(*id))
        .collect()
}

/// The peers' heartbeats as this node last saw them, and whether each advanced within the
/// window.
struct Heartbeats {
    seen: HashMap<ChitchatId, (chitchat::Heartbeat, Option<Instant>)>,
    window: Duration,
    now: Instant,
}

impl Heartbeats {
    fn new(window: Duration) -> Self {
        Self {
            seen: HashMap::new(),
            window,
            now: Instant::now(),
        }
    }

    /// Records the heartbeats of `chitchat`'s nodes now.
    fn observe(&mut self, chitchat: &Chitchat) {
        self.now = Instant::now();
        let states = chitchat.node_states();
        if self.seen.len() > states.len() {
            self.seen.retain(|id, _| states.contains_key(id));
        }
        for (id, state) in states {
            let heartbeat = state.heartbeat();
            match self.seen.get_mut(id) {
                Some(entry) if heartbeat > entry.0 => *entry = (heartbeat, Some(self.now)),
                Some(_) => {}
                None => {
                    self.seen.insert(id.clone(), (heartbeat, None));
                }
            }
        }
    }

    /// Whether `id`'s heartbeat advanced within the window before the last observation.
    fn advanced(&self, id: &ChitchatId) -> bool {
        self.seen
            .get(id)
            .is_some_and(|(_, at)| at.is_some_and(|at| self.now.duration_since(at) < self.window))
    }
}

/// What a change of the view is: a member came or went, or its key-values changed.
type Signature = Vec<(ChitchatId, chitchat::Version)>;

/// Whether `current` differs from what was published (compared without allocating).
fn differs(published: Option<&Signature>, current: &[(&ChitchatId, &NodeState)]) -> bool {
    published.is_none_or(|p| {
        !p.iter()
            .map(|(id, v)| (id, *v))
            .eq(current.iter().map(|(id, s)| (*id, s.max_version())))
    })
}

/// Computes one generation's member view ([`view`]) whenever chitchat's live nodes change,
/// a peer's state or leave arrives, a peer is heard from anew, and twice per gossip round
/// (heartbeats advance, proofs go stale); publishes it to the generation's watch and, while this
/// generation is the one publishing, to the watch that outlives restarts.
struct Forwarder {
    chitchat: Arc<Mutex<Chitchat>>,
    live: watch::Receiver<Members>,
    leaves: tokio::sync::mpsc::UnboundedReceiver<ChitchatId>,
    arrivals: tokio::sync::mpsc::UnboundedReceiver<()>,
    contacts: Arc<Contacts>,
    view: watch::Sender<Members>,
    members: watch::Sender<Members>,
    publishing: Arc<std::sync::Mutex<Option<u64>>>,
    /// Set by `join` once this node is a member: before, the application sees no members
    /// (a node alone while joining is no cluster).
    joined: Arc<std::sync::atomic::AtomicBool>,
    generation: u64,
    round: Duration,
}

impl Forwarder {
    async fn run(mut self) {
        let mut leaving: HashSet<ChitchatId> = HashSet::new();
        let mut published: Option<Signature> = None;
        let mut heartbeats = Heartbeats::new(self.round * FRESH_ROUNDS);
        // Twice a round: a peer's heartbeat is seen advancing within about a round.
        let mut round = tokio::time::interval(self.round / 2);
        round.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let (current, known, settled) = {
                let chitchat = self.chitchat.lock().await;
                let known = chitchat.node_states().len();
                // Every known node judged live by the failure detector: until that changes
                // (a live change or an arrival), direct contacts and heartbeats add nothing.
                let settled = chitchat.live_nodes().count() >= known;
                // A node that left is forgotten once chitchat forgets it.
                leaving.retain(|id| chitchat.node_state(id).is_some());
                heartbeats.observe(&chitchat);
                let current = view(&chitchat, &self.contacts.fresh(), &heartbeats, &leaving);
                // Copied only when it changed.
                let current = differs(published.as_ref(), &current).then(|| {
                    published = Some(
                        current
                            .iter()
                            .map(|(id, s)| ((*id).clone(), s.max_version()))
                            .collect(),
                    );
                    current
                        .into_iter()
                        .map(|(id, s)| (id.clone(), s.clone()))
                        .collect::<Members>()
                });
                (current, known, settled)
            };
            // Computing the view costs time in proportion to the nodes known, and a forming
            // cluster wakes it at every arrival: the next computation waits a while,
            // growing with them (1 ms a node, at most half a round). A small cluster, as
            // while joining, is computed again at once; a leave never waits.
            let pause = (PAUSE_PER_MEMBER * known as u32).min(self.round / 2);
            let next_publish = tokio::time::Instant::now() + pause;
            if let Some(current) = current {
                self.view.send_replace(current.clone());
                let publishing = self.publishing.lock().expect("not poisoned");
                if *publishing != Some(self.generation) {
                    return;
                }
                if self.joined.load(std::sync::atomic::Ordering::Acquire) {
                    self.members.send_replace(current);
                }
            }
            let urgent = loop {
                tokio::select! {
                    changed = self.live.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        // Seen: the view reads chitchat's state itself.
                        self.live.borrow_and_update();
                        break false;
                    }
                    // A leave is never held back.
                    Some(id) = self.leaves.recv() => {
                        leaving.insert(id);
                        break true;
                    }
                    Some(()) = self.arrivals.recv() => {
                        while self.arrivals.try_recv().is_ok() {}
                        break false;
                    }
                    () = self.contacts.changed.notified() => if !settled {
                        break false;
                    },
                    _ = round.tick() => if !settled {
                        break false;
                    },
                }
            };
            if !urgent {
                tokio::time::sleep_until(next_publish).await;
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
        let mut gossip_to: Vec<SocketAddr> = if seeding {
            Vec::new()
        } else {
            addresses.keys().copied().filter(|a| *a != me).collect()
        };
        let (mut view, generation, joined) = self
            .start(&gossip_to)
            .await
            .map_err(ChitchatError::into_join)?;
        // Gossip with a few seeds at once, and with the next few every gossip round until
        // one answered: the join takes a round trip, not gossip rounds.
        {
            use rand::seq::SliceRandom;
            gossip_to.shuffle(&mut rand::rng());
        }
        // A seed registers before it starts gossiping: the first tries may find no one
        // listening, so the next come soon, then less often, up to a gossip interval.
        let mut batches = gossip_to.chunks(JOIN_FANOUT).cycle();
        let mut pause = JOIN_FIRST_RETRY.min(self.config.gossip_interval);
        let mut next_try = tokio::time::Instant::now();
        let members = loop {
            tokio::select! {
                members = async {
                    view.wait_for(|m| is_member(m, &self.node, seeding, &addresses))
                        .await
                        .map(|m| (*m).clone())
                } => break members,
                () = tokio::time::sleep_until(next_try) => {
                    if let Some(batch) = batches.next() {
                        self.gossip_with(generation, batch).await;
                    }
                    next_try += pause;
                    pause = (pause * 2).min(self.config.gossip_interval);
                }
            }
        }
        .map_err(|_| ChitchatError::Stopped.into_join())?;
        // Once more with the seeds that answered: both failure detectors then hold two
        // heartbeats, and judge each other live at their next gossip round.
        let answered: Vec<SocketAddr> = members
            .keys()
            .map(|id| id.gossip_advertise_addr)
            .filter(|a| *a != me && addresses.contains_key(a))
            .take(JOIN_FANOUT)
            .collect();
        self.gossip_with(generation, &answered).await;
        // Once `join` resolves, `members()` shows what made this node a member.
        let publishing = self.publishing.lock().expect("not poisoned");
        if *publishing == Some(generation) {
            joined.store(true, std::sync::atomic::Ordering::Release);
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
