//! `SerfCoordination`: a **best-effort** [`Coordination`] backend on Serf tags.
//!
//! # Layout
//! One `SerfCoordination` talks to one agent (normally the one on the same host) and stands
//! for that agent's member: it registers **one** node per scope. For the scope with key
//! prefix `/constructr` and cluster `orders` it uses two tags on the agent:
//! - `constructr-orders` = `{address}#{incarnation:016x}#{cluster id:016x}`: the
//!   registration (prefix without its slashes, `-`, cluster name). `serf members` shows it.
//! - `constructr-orders/lock` = `{address}#{incarnation:016x}`: a bootstrap candidate.
//!
//! `get_nodes` reads the **alive** members carrying the registration tag; `refresh` checks
//! that the agent still carries this node's registration; `remove_self` deletes it;
//! `wait_for_change` follows the agent's member events (RPC `stream`).
//!
//! # What this backend does not give (read before choosing it)
//! Serf is an eventually consistent gossip system (AP), and its maintainers say that leader
//! election on Serf alone cannot be made safe. Compared with the [`Coordination`] contract:
//! - **Not linearizable.** Each read is the local agent's view; a tag set on one agent
//!   reaches the others by gossip, usually within a second on a LAN.
//! - **Lock: a best-effort bootstrap guard, no mutual exclusion.** `lock` tags this node as a
//!   candidate and returns [`LockOutcome::Acquired`] only when the set of alive candidates
//!   has stayed unchanged for [`SerfConfig::stability_margin`] (default 5 s), has at least
//!   [`SerfConfig::required_members`] (default 1; set it to the initial cluster size) and
//!   this node's member has the lowest Serf name among them. Every other call returns
//!   `HeldByOther`, so nodes poll until a seed registers. Under a network partition at
//!   bootstrap each side can elect its own lowest candidate: **two clusters can form.**
//!   The lock TTL is ignored: a candidacy ends when the node registers, removes itself, or
//!   its agent fails or leaves.
//! - **Fencing and epoch are best-effort.** A seed registration is written only if the
//!   agent's view still shows this node as the lowest candidate and no registration of
//!   another cluster; a join only if the registered members (in the agent's view) belong to
//!   its cluster. The check and the tag update are not atomic across the cluster. The epoch
//!   is derived from the alive registrations (the cluster id in their values): it does not
//!   outlive them, and its version is a hash of them. If registrations of two clusters are
//!   visible (after a partition heals), the cluster with more members (then: with the
//!   lowest member name) is reported and only its nodes are returned.
//! - **TTL: Serf's failure detector replaces it.** The TTL arguments are ignored. A
//!   registration disappears when its agent is marked failed (seconds, depending on the
//!   gossip profile) or leaves — **not** when only the application process dies while its
//!   agent lives on: run the two together (one systemd unit `BindsTo=` the other, or one
//!   container). A restarted node overwrites its predecessor's tag on the same agent.
//! - **One node per agent and scope.** Two `NodeId`s registering through the same agent
//!   overwrite each other; the conformance suite's multi-node checks therefore do not apply.
//! - Serf limits all tags of an agent together to 512 bytes (encoded): long cluster names and
//!   addresses, or many scopes per agent, make `tags` fail ([`CoordinationError::Permanent`](constructr_core::CoordinationError::Permanent)).
//!
//! Prefer etcd or Consul when two clusters must never form (they give a linearizable lock
//! and fenced writes), and use Serf where it is already the membership layer, a short
//! split-brain window at bootstrap is acceptable, or the initial members are known
//! (`required_members`).

use constructr_core::coordination::{Guarantees, Result};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use constructr_core::{
    AddMode, AddOutcome, ClusterId, Coordination, Epoch, Lease, LockOutcome, LockToken, NodeId,
    RefreshOutcome, Registry, Scope, WaitOutcome,
};
use tokio::sync::{OnceCell, watch};
use tokio::time::Instant;

use crate::client::{Member, MemberFilter, SerfClient, StreamEvent};
use crate::config::SerfConfig;
use crate::error::SerfError;

/// The registration tag of a scope: `{prefix without slashes}-{cluster}` (`constructr-orders`).
pub fn registration_tag(scope: &Scope) -> String {
    let prefix = scope.prefix().trim_matches('/');
    if prefix.is_empty() {
        scope.cluster().to_string()
    } else {
        format!("{prefix}-{}", scope.cluster())
    }
}

/// The candidate tag of a scope: `{registration tag}/lock`.
pub fn candidate_tag(scope: &Scope) -> String {
    format!("{}/lock", registration_tag(scope))
}

/// `{address}#{incarnation:016x}#{cluster:016x or -}`.
pub fn encode_registration(node: &NodeId, cluster: Option<ClusterId>) -> String {
    let cluster = cluster.map_or_else(|| "-".to_owned(), |c| c.to_string());
    format!("{}#{:016x}#{cluster}", node.address, node.incarnation)
}

/// Decodes a registration value; `None` if it is not one.
pub fn decode_registration(value: &str) -> Option<(NodeId, Option<ClusterId>)> {
    let mut parts = value.rsplitn(3, '#');
    let cluster = parts.next()?;
    let incarnation = u64::from_str_radix(parts.next()?, 16).ok()?;
    let address = parts.next().filter(|a| !a.is_empty())?;
    let cluster = match cluster {
        "-" => None,
        c => Some(c.parse().ok()?),
    };
    Some((NodeId::new(address, incarnation), cluster))
}

fn encode_candidate(node: &NodeId) -> String {
    format!("{}#{:016x}", node.address, node.incarnation)
}

fn decode_candidate(value: &str) -> Option<NodeId> {
    let (address, incarnation) = value.rsplit_once('#')?;
    let incarnation = u64::from_str_radix(incarnation, 16).ok()?;
    (!address.is_empty()).then(|| NodeId::new(address, incarnation))
}

/// FNV-1a: a stable hash, the same in every process (unlike `DefaultHasher`'s contract).
fn fnv(parts: impl IntoIterator<Item = impl AsRef<[u8]>>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.as_ref().iter().chain(&[0xff]) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// One read of the agent's view of a scope.
struct Snapshot {
    me: String,
    my_tags: BTreeMap<String, String>,
    /// (member name, node, cluster), sorted by member name.
    registrations: Vec<(String, NodeId, Option<ClusterId>)>,
    /// (member name, node), sorted by member name.
    candidates: Vec<(String, NodeId)>,
    revision: u64,
}

impl Snapshot {
    fn registry(&self) -> Registry {
        // Which cluster owns the scope: most members, then the lowest member name.
        let mut counts: HashMap<Option<ClusterId>, usize> = HashMap::new();
        for (_, _, c) in &self.registrations {
            *counts.entry(*c).or_default() += 1;
        }
        let winner = self
            .registrations
            .iter()
            .max_by_key(|(name, _, c)| (counts[c], std::cmp::Reverse(name.clone())))
            .map(|(_, _, c)| *c);
        if counts.len() > 1 {
            tracing::warn!(
                clusters = counts.len(),
                "registrations of several clusters are visible (split brain at bootstrap?); reporting the largest"
            );
        }
        let owned: Vec<_> = self
            .registrations
            .iter()
            .filter(|(_, _, c)| Some(*c) == winner)
            .collect();
        // One entry per address: the highest incarnation.
        let mut by_address: BTreeMap<&str, &NodeId> = BTreeMap::new();
        for (_, n, _) in &owned {
            let e = by_address.entry(n.address.as_str()).or_insert(n);
            if n.incarnation > e.incarnation {
                *e = n;
            }
        }
        let epoch = winner.flatten().map(|cluster| Epoch {
            cluster,
            version: fnv(owned.iter().map(|(name, n, _)| format!("{name}\0{n}"))),
        });
        Registry {
            nodes: by_address.into_values().cloned().collect(),
            epoch,
            revision: Some(self.revision),
            lock: None,
        }
    }

    fn lowest_candidate(&self) -> Option<&(String, NodeId)> {
        self.candidates.first()
    }
}

#[derive(Debug)]
struct Observed {
    candidates: Vec<(String, NodeId)>,
    since: Instant,
}

/// The Serf backend: see the [module docs](self) for what it can and cannot guarantee.
pub struct SerfCoordination {
    client: SerfClient,
    required_members: usize,
    stability_margin: Duration,
    self_name: OnceCell<String>,
    observed: Mutex<HashMap<String, Observed>>,
    changes: watch::Sender<u64>,
    watcher: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for SerfCoordination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerfCoordination")
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

impl Drop for SerfCoordination {
    fn drop(&mut self) {
        if let Some(h) = self
            .watcher
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            h.abort();
        }
    }
}

impl SerfCoordination {
    /// A backend for the agent in `config`. Connects lazily.
    pub fn new(config: &SerfConfig) -> Result<Self, SerfError> {
        Ok(Self::with_client(SerfClient::new(config.clone())?))
    }

    /// A backend on an existing client (sharing its connection).
    pub fn with_client(client: SerfClient) -> Self {
        let config = client.config().clone();
        Self {
            client,
            required_members: config.required_members.max(1),
            stability_margin: config.stability_margin,
            self_name: OnceCell::new(),
            observed: Mutex::new(HashMap::new()),
            changes: watch::channel(0).0,
            watcher: Mutex::new(None),
        }
    }

    /// The RPC client.
    pub fn client(&self) -> &SerfClient {
        &self.client
    }

    /// Connects now and reads the agent's name: fails early on a wrong address or auth key.
    pub async fn check(&self) -> Result<(), SerfError> {
        self.me().await.map(|_| ())
    }

    async fn me(&self) -> Result<&str, SerfError> {
        self.self_name
            .get_or_try_init(|| self.client.agent_name())
            .await
            .map(String::as_str)
    }

    async fn snapshot(&self, scope: &Scope) -> Result<Snapshot, SerfError> {
        let me = self.me().await?.to_owned();
        let reg_tag = registration_tag(scope);
        let cand_tag = candidate_tag(scope);
        let filter = MemberFilter {
            status: "alive".into(),
            ..MemberFilter::default()
        };
        let members = self.client.members_filtered(&filter).await?;
        Ok(snapshot_of(me, &members, &reg_tag, &cand_tag))
    }

    async fn set_tags(&self, set: &[(&str, String)], delete: &[&str]) -> Result<(), SerfError> {
        let set: BTreeMap<String, String> = set
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        let delete: Vec<String> = delete.iter().map(|d| (*d).to_owned()).collect();
        self.client.tags(&set, &delete).await
    }

    fn lock_token(me: &str, node: &NodeId) -> LockToken {
        LockToken(format!("serf:{me}:{}", encode_candidate(node)))
    }

    /// Starts (once) the task that follows member events and bumps `changes`.
    fn ensure_watcher(&self) {
        let mut w = self.watcher.lock().unwrap_or_else(|e| e.into_inner());
        if w.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        let client = self.client.clone();
        let changes = self.changes.clone();
        *w = Some(tokio::spawn(async move {
            let filter = "member-join,member-leave,member-failed,member-update,member-reap";
            loop {
                match client.stream(filter).await {
                    Ok(mut stream) => {
                        while let Some(e) = stream.next().await {
                            match e {
                                Ok(StreamEvent::Member { .. } | StreamEvent::Resynced { .. }) => {
                                    changes.send_modify(|v| *v += 1);
                                }
                                Ok(_) => {}
                                Err(e) => {
                                    tracing::warn!(error = %e, "Serf member-event stream failed");
                                    break;
                                }
                            }
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "cannot subscribe to Serf member events"),
                }
                // Whoever waits re-reads on this bump, so nothing is missed across the gap.
                changes.send_modify(|v| *v += 1);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }));
    }
}

fn snapshot_of(me: String, members: &[Member], reg_tag: &str, cand_tag: &str) -> Snapshot {
    let mut registrations = Vec::new();
    let mut candidates = Vec::new();
    let mut my_tags = BTreeMap::new();
    for m in members {
        if m.name == me {
            my_tags = m.tags.clone();
        }
        if let Some(v) = m.tags.get(reg_tag) {
            match decode_registration(v) {
                Some((n, c)) => registrations.push((m.name.clone(), n, c)),
                None => {
                    tracing::warn!(member = %m.name, tag = reg_tag, value = %v, "skipping undecodable registration tag")
                }
            }
        }
        if let Some(v) = m.tags.get(cand_tag) {
            match decode_candidate(v) {
                Some(n) => candidates.push((m.name.clone(), n)),
                None => {
                    tracing::warn!(member = %m.name, tag = cand_tag, value = %v, "skipping undecodable candidate tag")
                }
            }
        }
    }
    registrations.sort_by(|a, b| a.0.cmp(&b.0));
    candidates.sort_by(|a, b| a.0.cmp(&b.0));
    let revision = fnv(registrations
        .iter()
        .map(|(name, n, c)| format!("r{name}\0{}", encode_registration(n, *c)))
        .chain(
            candidates
                .iter()
                .map(|(name, n)| format!("c{name}\0{}", encode_candidate(n))),
        ));
    Snapshot {
        me,
        my_tags,
        registrations,
        candidates,
        revision,
    }
}

#[async_trait]
impl Coordination for SerfCoordination {
    /// Serf is eventually consistent and has no lock (a best-effort bootstrap guard), and a
    /// registration lives as long as its agent (no TTL): only the watch (member events).
    fn guarantees(&self) -> Guarantees {
        Guarantees {
            watch: true,
            ..Guarantees::NONE
        }
    }

    async fn get_nodes(&self, scope: &Scope) -> Result<Registry> {
        Ok(self.snapshot(scope).await?.registry())
    }

    async fn lock(&self, lease: Lease<'_>) -> Result<LockOutcome> {
        let Lease {
            scope,
            node: holder,
            ..
        } = lease;
        let cand_tag = candidate_tag(scope);
        let mut snap = self.snapshot(scope).await?;
        let value = encode_candidate(holder);
        if snap.my_tags.get(&cand_tag) != Some(&value) {
            self.set_tags(&[(&cand_tag, value.clone())], &[]).await?;
            snap.candidates.retain(|(name, _)| *name != snap.me);
            snap.candidates.push((snap.me.clone(), holder.clone()));
            snap.candidates.sort_by(|a, b| a.0.cmp(&b.0));
        }
        if !snap.registrations.is_empty() {
            return Ok(LockOutcome::HeldByOther);
        }
        let now = Instant::now();
        let stable_since = {
            let mut observed = self.observed.lock().unwrap_or_else(|e| e.into_inner());
            let o = observed.entry(scope.base()).or_insert_with(|| Observed {
                candidates: snap.candidates.clone(),
                since: now,
            });
            if o.candidates != snap.candidates {
                o.candidates = snap.candidates.clone();
                o.since = now;
            }
            o.since
        };
        let lowest_is_me = snap
            .lowest_candidate()
            .is_some_and(|(name, n)| *name == snap.me && n == holder);
        if lowest_is_me
            && snap.candidates.len() >= self.required_members
            && now.duration_since(stable_since) >= self.stability_margin
        {
            Ok(LockOutcome::Acquired(Self::lock_token(&snap.me, holder)))
        } else {
            tracing::debug!(
                candidates = snap.candidates.len(),
                required = self.required_members,
                stable_for = ?now.duration_since(stable_since),
                lowest = ?snap.lowest_candidate().map(|c| &c.0),
                "bootstrap guard: not seeding (yet)"
            );
            Ok(LockOutcome::HeldByOther)
        }
    }

    async fn add_self(&self, lease: Lease<'_>, mode: &AddMode) -> Result<AddOutcome> {
        let Lease { scope, node, .. } = lease;
        let reg_tag = registration_tag(scope);
        let cand_tag = candidate_tag(scope);
        let snap = self.snapshot(scope).await?;
        let registry = snap.registry();
        let current = registry.epoch.map(|e| e.cluster);
        let cluster = match mode {
            AddMode::Seed {
                lock,
                cluster,
                expected_epoch_version,
            } => {
                let mine = encode_registration(node, Some(*cluster));
                let retry = snap.my_tags.get(&reg_tag) == Some(&mine);
                if !retry {
                    let holds = *lock == Self::lock_token(&snap.me, node)
                        && snap
                            .lowest_candidate()
                            .is_some_and(|(name, n)| *name == snap.me && n == node);
                    let epoch_ok = match (registry.epoch, expected_epoch_version) {
                        (None, None) => true,
                        (Some(e), Some(v)) => e.version == *v || e.cluster == *cluster,
                        (Some(e), None) => e.cluster == *cluster,
                        (None, Some(_)) => false,
                    };
                    if !holds || !epoch_ok {
                        return Ok(AddOutcome::Refused);
                    }
                }
                Some(*cluster)
            }
            AddMode::Join { cluster } => {
                // No epoch left (every registration gone): a member re-creates its own.
                if current.is_some() && current != *cluster {
                    return Ok(AddOutcome::Refused);
                }
                *cluster
            }
        };
        let mut delete = Vec::new();
        if snap.my_tags.contains_key(&cand_tag) {
            delete.push(cand_tag.as_str());
        }
        self.set_tags(&[(&reg_tag, encode_registration(node, cluster))], &delete)
            .await?;
        Ok(AddOutcome::Added)
    }

    async fn refresh(&self, lease: Lease<'_>) -> Result<RefreshOutcome> {
        let Lease { scope, node, .. } = lease;
        let snap = self.snapshot(scope).await?;
        let registered = snap
            .my_tags
            .get(&registration_tag(scope))
            .and_then(|v| decode_registration(v))
            .is_some_and(|(n, _)| n == *node);
        Ok(if registered {
            RefreshOutcome::Refreshed
        } else {
            RefreshOutcome::Missing
        })
    }

    async fn remove_self(&self, scope: &Scope, node: &NodeId) -> Result<()> {
        let reg_tag = registration_tag(scope);
        let cand_tag = candidate_tag(scope);
        let snap = self.snapshot(scope).await?;
        let mut delete = Vec::new();
        if snap
            .my_tags
            .get(&reg_tag)
            .and_then(|v| decode_registration(v))
            .is_some_and(|(n, _)| n == *node)
        {
            delete.push(reg_tag.as_str());
        }
        if snap
            .my_tags
            .get(&cand_tag)
            .and_then(|v| decode_candidate(v))
            .is_some_and(|n| n == *node)
        {
            delete.push(cand_tag.as_str());
        }
        if !delete.is_empty() {
            self.set_tags(&[], &delete).await?;
        }
        Ok(())
    }

    async fn wait_for_change(&self, scope: &Scope, revision: Option<u64>) -> Result<WaitOutcome> {
        self.ensure_watcher();
        let mut changes = self.changes.subscribe();
        // Without a revision: the first change after the call (never at once).
        let revision = match revision {
            Some(r) => r,
            None => self.snapshot(scope).await?.revision,
        };
        loop {
            changes.mark_unchanged();
            if self.snapshot(scope).await?.revision != revision {
                return Ok(WaitOutcome::Changed);
            }
            if changes.changed().await.is_err() {
                return Ok(WaitOutcome::Unsupported);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use constructr_core::ClusterName;

    fn scope(prefix: &str, cluster: &str) -> Scope {
        Scope::new(prefix, ClusterName::new(cluster).unwrap()).unwrap()
    }

    #[test]
    fn tag_names_follow_the_issue() {
        assert_eq!(
            registration_tag(&scope("/constructr", "orders")),
            "constructr-orders"
        );
        assert_eq!(
            candidate_tag(&scope("/constructr", "orders")),
            "constructr-orders/lock"
        );
        assert_eq!(registration_tag(&scope("/", "orders")), "orders");
        assert_eq!(registration_tag(&scope("/a/b/", "c")), "a/b-c");
    }

    #[test]
    fn values_round_trip_even_with_hashes_in_addresses() {
        let n = NodeId::new("akka://sys@10.0.0.1:2552#x", 0xdead_beef);
        let v = encode_registration(&n, Some(ClusterId(42)));
        assert_eq!(
            decode_registration(&v),
            Some((n.clone(), Some(ClusterId(42))))
        );
        assert_eq!(
            decode_registration(&encode_registration(&n, None)),
            Some((n.clone(), None))
        );
        assert_eq!(decode_candidate(&encode_candidate(&n)), Some(n));
        for bad in ["", "x", "#1#2", "a#zz#1", "a#1#qq"] {
            assert_eq!(decode_registration(bad), None, "{bad}");
        }
    }

    fn member(name: &str, tags: &[(&str, &str)]) -> Member {
        Member {
            name: name.into(),
            addr: [127, 0, 0, 1].into(),
            port: 7946,
            tags: tags
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            status: crate::client::MemberStatus::Alive,
            protocol: [0; 3],
            delegate: [0; 3],
        }
    }

    #[test]
    fn registry_reports_the_larger_cluster_and_skips_garbage() {
        let n = |i: u64| NodeId::new(format!("10.0.0.{i}:1"), i);
        let reg = |i, c| encode_registration(&n(i), Some(ClusterId(c)));
        let members = vec![
            member("a", &[("t", &reg(1, 7))]),
            member("b", &[("t", &reg(2, 9))]),
            member("c", &[("t", &reg(3, 9))]),
            member("d", &[("t", "garbage")]),
            member("e", &[("t/lock", &encode_candidate(&n(5)))]),
        ];
        let snap = snapshot_of("a".into(), &members, "t", "t/lock");
        let r = snap.registry();
        assert_eq!(r.nodes, vec![n(2), n(3)]);
        assert_eq!(r.epoch.unwrap().cluster, ClusterId(9));
        assert_eq!(snap.candidates, vec![("e".to_string(), n(5))]);
        // The version changes with the registered set; the revision with candidates too.
        let fewer = snapshot_of("a".into(), &members[..2], "t", "t/lock");
        assert_ne!(fewer.revision, snap.revision);
        let without_candidate = snapshot_of("a".into(), &members[..4], "t", "t/lock");
        assert_ne!(without_candidate.revision, snap.revision);
        assert_eq!(
            without_candidate.registry().epoch.unwrap().version,
            r.epoch.unwrap().version
        );
    }
}
