//! `ZooKeeperCoordination`: the [`Coordination`] contract on ZooKeeper (see the crate docs
//! for the znode layout).

use std::time::Duration;

use async_trait::async_trait;
use constructr_core::coordination::{Guarantees, Result};
use constructr_core::entry;
use constructr_core::{
    AddMode, AddOutcome, ClusterId, Coordination, CoordinationError, Epoch, Lease, LockOutcome,
    LockToken, NodeId, RefreshOutcome, Registry, Scope, Settings, SettingsError, WaitOutcome,
};
use tokio::sync::RwLock;
use zookeeper_client as zk;

use crate::config::ZooKeeperConfig;
use crate::error::ZooKeeperError;
use crate::joins::{Joined, Joins, Pending, Target};

/// How often a registration retries a multi whose epoch version moved under it: every
/// registration bumps the epoch, so registrations of different processes joining at once
/// contend (each round one wins); those of one process are written together (`joins`).
const ROUNDS: u32 = 64;

/// The ZooKeeper backend: one session per value (share it between the nodes of a process;
/// their entries live as long as the session). It connects on first use, and again with a
/// new session when the old one expired.
pub struct ZooKeeperCoordination {
    config: ZooKeeperConfig,
    servers: String,
    client: RwLock<Option<zk::Client>>,
    /// Member registrations written together (`joins`).
    joins: Joins,
}

impl std::fmt::Debug for ZooKeeperCoordination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZooKeeperCoordination")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The paths of one scope.
struct Paths<'s> {
    scope: &'s Scope,
    base: String,
    nodes: String,
    lock: String,
    epoch: String,
}

impl<'s> Paths<'s> {
    fn of(scope: &'s Scope) -> Self {
        let base = scope.base();
        Paths {
            scope,
            nodes: format!("{base}/nodes"),
            lock: entry::lock_key(scope),
            epoch: entry::epoch_key(scope),
            base,
        }
    }

    /// `{nodes}/{base64url(address)}`.
    fn node(&self, address: &str) -> String {
        entry::node_key(self.scope, address)
    }

    /// The znode name of `address`'s entry under `nodes`.
    fn node_name(&self, address: &str) -> String {
        let path = self.node(address);
        path.rsplit('/').next().unwrap_or_default().to_owned()
    }
}

/// The name prefix of `node`'s lock znodes, `{base64url(address)}~{incarnation:x}~`: the
/// holder's identity is in the (unique, ephemeral) name, so a registration fenced by a
/// token can check both who holds the lock and that it still does.
fn lock_prefix(paths: &Paths<'_>, node: &NodeId) -> String {
    format!("{}~{:x}~", paths.node_name(&node.address), node.incarnation)
}

/// One consistent read of a scope.
struct Snapshot {
    /// `(znode name, data, stat)` of every child of `nodes`.
    entries: Vec<(String, Vec<u8>, zk::Stat)>,
    /// The epoch znode's data and stat.
    epoch: Option<(Vec<u8>, zk::Stat)>,
    /// The `nodes` znode's pzxid (moves with every registration or removal).
    revision: u64,
}

impl ZooKeeperCoordination {
    /// A backend for `config`; it connects on first use.
    ///
    /// # Errors
    /// [`ZooKeeperError::Config`] for an invalid configuration.
    pub fn new(config: &ZooKeeperConfig) -> std::result::Result<Self, ZooKeeperError> {
        config.validate()?;
        Ok(Self {
            config: config.clone(),
            servers: config.connect_string(),
            client: RwLock::new(None),
            joins: Joins::default(),
        })
    }

    /// A backend for `config`, connected now (a session with `config.session_timeout`,
    /// authenticated): fails at once if no server answers or the credentials are refused.
    ///
    /// # Errors
    /// [`ZooKeeperError::Config`] for an invalid configuration; otherwise what connecting
    /// failed with.
    pub async fn connect(config: &ZooKeeperConfig) -> std::result::Result<Self, ZooKeeperError> {
        let backend = Self::new(config)?;
        backend.client().await?;
        Ok(backend)
    }

    async fn session(
        config: &ZooKeeperConfig,
        servers: &str,
    ) -> std::result::Result<zk::Client, ZooKeeperError> {
        let mut connector = zk::Client::connector()
            .with_session_timeout(config.session_timeout)
            .with_connection_timeout(config.connect_timeout);
        if let (Some(user), Some(password)) = (&config.user, &config.password) {
            let auth = format!("{user}:{}", password.expose());
            connector = connector.with_auth("digest", auth.as_bytes());
        }
        let connect = connector.connect(servers);
        match tokio::time::timeout(config.connect_timeout, connect).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(ZooKeeperError::from_client(servers, &e)),
            Err(_) => Err(ZooKeeperError::Unavailable {
                servers: servers.to_owned(),
                detail: format!("no server answered within {:?}", config.connect_timeout),
            }),
        }
    }

    /// The session's client; a new session once the old one expired or was closed (its
    /// ephemeral znodes are gone: nodes find their entries missing and register again).
    async fn client(&self) -> std::result::Result<zk::Client, ZooKeeperError> {
        if let Some(current) = self.client.read().await.as_ref()
            && !is_terminal(current.state())
        {
            return Ok(current.clone());
        }
        let mut slot = self.client.write().await;
        match slot.as_ref() {
            Some(c) if !is_terminal(c.state()) => return Ok(c.clone()),
            Some(_) => {
                tracing::warn!(servers = %self.servers, "ZooKeeper session ended; starting a new one");
            }
            None => {}
        }
        let client = Self::session(&self.config, &self.servers).await?;
        *slot = Some(client.clone());
        Ok(client)
    }

    /// The current session (for tests that end it from another client, as a server that
    /// expired it would).
    #[doc(hidden)]
    pub async fn session_info(&self) -> Option<zk::SessionInfo> {
        self.client
            .read()
            .await
            .as_ref()
            .map(|c| c.session().clone())
    }

    fn error(&self, e: &zk::Error) -> CoordinationError {
        ZooKeeperError::from_client(&self.servers, e).into()
    }

    /// The ACL of created znodes: the digest user's only, when there is one.
    fn acls(&self) -> zk::Acls<'static> {
        if self.config.user.is_some() {
            zk::Acls::creator_all()
        } else {
            zk::Acls::anyone_all()
        }
    }

    /// Creates the persistent parents of a scope (idempotent).
    async fn ensure_parents(&self, client: &zk::Client, paths: &Paths<'_>) -> Result<()> {
        let options = zk::CreateMode::Persistent.with_acls(self.acls());
        for dir in [&paths.nodes, &paths.lock] {
            match client.mkdir(dir, &options).await {
                Ok(()) | Err(zk::Error::NodeExists) => {}
                Err(e) => return Err(self.error(&e)),
            }
        }
        Ok(())
    }

    /// A linearizable read of the scope: `sync`, then one multi-read of the children,
    /// their data and the epoch.
    async fn snapshot(&self, client: &zk::Client, paths: &Paths<'_>) -> Result<Snapshot> {
        match client.sync(&paths.base).await {
            Ok(()) | Err(zk::Error::NoNode) => {}
            Err(e) => return Err(self.error(&e)),
        }
        let (children, pzxid) = match client.get_children(&paths.nodes).await {
            Ok((children, stat)) => (children, stat.pzxid),
            Err(zk::Error::NoNode) => (Vec::new(), 0),
            Err(e) => return Err(self.error(&e)),
        };
        let mut reader = client.new_multi_reader();
        reader
            .add_get_data(&paths.epoch)
            .map_err(|e| self.error(&e))?;
        for child in &children {
            reader
                .add_get_data(&format!("{}/{child}", paths.nodes))
                .map_err(|e| self.error(&e))?;
        }
        let mut results = reader
            .commit()
            .await
            .map_err(|e| self.error(&e))?
            .into_iter();
        let epoch = match results.next() {
            Some(zk::MultiReadResult::Data { data, stat }) => Some((data, stat)),
            Some(zk::MultiReadResult::Error {
                err: zk::Error::NoNode,
            })
            | None => None,
            Some(zk::MultiReadResult::Error { err }) => return Err(self.error(&err)),
            Some(_) => None,
        };
        let mut entries = Vec::with_capacity(children.len());
        for (child, result) in children.into_iter().zip(results) {
            match result {
                zk::MultiReadResult::Data { data, stat } => entries.push((child, data, stat)),
                // Removed between the two reads.
                zk::MultiReadResult::Error {
                    err: zk::Error::NoNode,
                } => {}
                zk::MultiReadResult::Error { err } => return Err(self.error(&err)),
                _ => {}
            }
        }
        Ok(Snapshot {
            entries,
            epoch,
            revision: u64::try_from(pzxid.max(0)).unwrap_or(0),
        })
    }

    /// The entry at `address` in a snapshot.
    fn entry_of<'a>(
        snapshot: &'a Snapshot,
        paths: &Paths<'_>,
        address: &str,
    ) -> Option<&'a zk::Stat> {
        let key = paths.node_name(address);
        snapshot
            .entries
            .iter()
            .find(|(name, _, _)| *name == key)
            .map(|(_, _, stat)| stat)
    }

    /// Deletes this node's lock znode `name` after another held the lock.
    async fn withdraw(
        &self,
        client: &zk::Client,
        paths: &Paths<'_>,
        name: &str,
    ) -> Result<LockOutcome> {
        match client.delete(&format!("{}/{name}", paths.lock), None).await {
            Ok(()) | Err(zk::Error::NoNode) => Ok(LockOutcome::HeldByOther),
            Err(e) => Err(self.error(&e)),
        }
    }

    /// The held lock znode: the lowest sequential child of `lock`.
    async fn lowest_lock(&self, client: &zk::Client, paths: &Paths<'_>) -> Result<Option<String>> {
        let mut children = match client.list_children(&paths.lock).await {
            Ok(c) => c,
            Err(zk::Error::NoNode) => return Ok(None),
            Err(e) => return Err(self.error(&e)),
        };
        children.sort_by_key(|c| sequence_of(c));
        Ok(children.into_iter().next())
    }
}

fn is_terminal(state: zk::SessionState) -> bool {
    matches!(
        state,
        zk::SessionState::Expired | zk::SessionState::Closed | zk::SessionState::AuthFailed
    )
}

/// The sequence number of a lock znode `{prefix}0000000012` (garbage sorts last).
fn sequence_of(name: &str) -> u64 {
    name.rsplit('~')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(u64::MAX)
}

/// The TTL a lock znode's holder gave it (its data), if readable.
fn lock_ttl_ms(data: &[u8]) -> Option<i64> {
    std::str::from_utf8(data).ok()?.parse().ok()
}

fn epoch_of(snapshot: &Snapshot) -> Option<Epoch> {
    snapshot.epoch.as_ref().map(|(data, stat)| Epoch {
        cluster: entry::decode_epoch(data).unwrap_or_else(|_| {
            tracing::warn!("undecodable ZooKeeper epoch marker");
            ClusterId::UNREADABLE
        }),
        version: u64::try_from(stat.version.max(0)).unwrap_or(0),
    })
}

#[async_trait]
impl Coordination for ZooKeeperCoordination {
    /// Linearizable (`sync` before reads, one leader orders writes), a fenced sequential
    /// lock and an epoch znode, child watches. Entries live as long as the session, not
    /// for a TTL per entry: a process that stops refreshing but keeps its session keeps
    /// its entries, so `ttl_expiry` is not declared.
    fn guarantees(&self) -> Guarantees {
        Guarantees {
            ttl_expiry: false,
            ..Guarantees::STRONG
        }
    }

    /// The session timeout must not exceed the TTL: a dead process's entries must be gone
    /// within its TTL (plus the session timeout's own bound).
    fn check_settings(&self, settings: &Settings) -> std::result::Result<(), SettingsError> {
        if self.config.session_timeout > settings.ttl() {
            return Err(SettingsError::Backend {
                backend: "ZooKeeper",
                rule: format!(
                    "the session timeout ({:?}) must not exceed the entry TTL ({:?})",
                    self.config.session_timeout,
                    settings.ttl()
                ),
            });
        }
        Ok(())
    }

    async fn get_nodes(&self, scope: &Scope) -> Result<Registry> {
        let client = self.client().await?;
        let paths = Paths::of(scope);
        let snapshot = self.snapshot(&client, &paths).await?;
        let mut nodes = Vec::new();
        for (name, data, _) in &snapshot.entries {
            match entry::decode_node(name, data) {
                Ok(n) => nodes.push(n),
                Err(e) => {
                    tracing::warn!(znode = %name, error = %e, "skipping an undecodable entry")
                }
            }
        }
        Ok(Registry {
            nodes,
            epoch: epoch_of(&snapshot),
            revision: Some(snapshot.revision),
            lock: None,
        })
    }

    /// The lowest lock znode holds the lock. Besides its session, a lock has a TTL (the
    /// contract's): the holder extends it by writing its znode again (re-entrant
    /// `lock`), and a contender deletes a lower znode that was not written for `ttl`,
    /// measured in ZooKeeper's own clock (the contender's new znode's creation time
    /// against the old one's last modification time), so a lock of a node that stopped
    /// while its process (and session) lives on still expires.
    async fn lock(&self, lease: Lease<'_>) -> Result<LockOutcome> {
        let client = self.client().await?;
        let paths = Paths::of(lease.scope);
        self.ensure_parents(&client, &paths).await?;
        // The data is the holder's TTL in milliseconds (the name says who holds it).
        let ttl_ms = i64::try_from(lease.ttl.as_millis()).unwrap_or(i64::MAX);
        let mine = ttl_ms.to_string().into_bytes();
        let prefix = lock_prefix(&paths, lease.node);
        let session = client.session_id().0;
        // Re-entrant: the lowest lock znode is this node's, in this session: extend it.
        if let Some(lowest) = self.lowest_lock(&client, &paths).await? {
            let path = format!("{}/{lowest}", paths.lock);
            if lowest.starts_with(&prefix) {
                match client.check_stat(&path).await {
                    Ok(Some(stat)) if stat.ephemeral_owner == session => {
                        match client.set_data(&path, &mine, Some(stat.version)).await {
                            Ok(_) => return Ok(LockOutcome::Acquired(LockToken(lowest))),
                            // Deleted as expired in between: contend below.
                            Err(zk::Error::NoNode | zk::Error::BadVersion) => {}
                            Err(e) => return Err(self.error(&e)),
                        }
                    }
                    Ok(_) => {}
                    Err(e) => return Err(self.error(&e)),
                }
            }
        }
        let options = zk::CreateMode::EphemeralSequential.with_acls(self.acls());
        let (created, sequence) = client
            .create(&format!("{}/{prefix}", paths.lock), &mine, &options)
            .await
            .map_err(|e| self.error(&e))?;
        let name = format!("{prefix}{sequence}");
        let now = created.ctime;
        let mut children = match client.list_children(&paths.lock).await {
            Ok(c) => c,
            Err(e) => return Err(self.error(&e)),
        };
        children.sort_by_key(|c| sequence_of(c));
        for lower in children.iter().take_while(|c| **c != name) {
            let path = format!("{}/{lower}", paths.lock);
            let held = match client.get_data(&path).await {
                Ok((data, stat)) => Some((lock_ttl_ms(&data).unwrap_or(ttl_ms), stat)),
                Err(zk::Error::NoNode) => None,
                Err(e) => return Err(self.error(&e)),
            };
            match held {
                Some((ttl, stat)) if stat.mtime.saturating_add(ttl) < now => {
                    tracing::debug!(lock = %lower, "deleting an expired lock znode");
                    match client.delete(&path, Some(stat.version)).await {
                        Ok(()) | Err(zk::Error::NoNode) => {}
                        // Extended meanwhile: it holds.
                        Err(zk::Error::BadVersion) => {
                            return self.withdraw(&client, &paths, &name).await;
                        }
                        Err(e) => return Err(self.error(&e)),
                    }
                }
                None => {}
                Some(_) => return self.withdraw(&client, &paths, &name).await,
            }
        }
        Ok(LockOutcome::Acquired(LockToken(name)))
    }

    async fn add_self(&self, lease: Lease<'_>, mode: &AddMode) -> Result<AddOutcome> {
        let Lease { scope, node, .. } = lease;
        let client = self.client().await?;
        let paths = Paths::of(scope);
        self.ensure_parents(&client, &paths).await?;
        let node_path = paths.node(&node.address);
        let data = entry::encode_node(node);
        if let AddMode::Join {
            cluster: Some(cluster),
        } = mode
        {
            // Written together with the other registrations of this value (`joins`).
            let (reply, answer) = tokio::sync::oneshot::channel();
            self.joins.submit(
                Target {
                    epoch: paths.epoch.clone(),
                    value: entry::encode_epoch(*cluster),
                    acls: self.acls(),
                    servers: self.servers.clone(),
                },
                Pending {
                    client: client.clone(),
                    path: node_path.clone(),
                    data: data.clone(),
                    reply,
                },
            );
            let joined = answer.await.unwrap_or_else(|_| {
                Err(CoordinationError::unavailable(
                    "the registration writer stopped",
                ))
            })?;
            match joined {
                Joined::Added => return Ok(AddOutcome::Added),
                Joined::Refused => return Ok(AddOutcome::Refused),
                // An entry exists at this address: the path below replaces it.
                Joined::Alone => {}
            }
        }
        let ephemeral = zk::CreateMode::Ephemeral.with_acls(self.acls());
        let persistent = zk::CreateMode::Persistent.with_acls(self.acls());
        for round in 0..ROUNDS {
            if round > 0 {
                // Spread the contenders out: a few ms, growing, with jitter.
                let ms = rand::random_range(0..=(2 * round.min(10) as u64));
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            let snapshot = self.snapshot(&client, &paths).await?;
            let epoch = epoch_of(&snapshot);
            let cluster = match mode {
                AddMode::Seed {
                    cluster,
                    expected_epoch_version,
                    ..
                } => {
                    let unchanged = match (epoch, expected_epoch_version) {
                        (None, None) => true,
                        (Some(e), Some(v)) => e.version == *v,
                        _ => false,
                    };
                    // A retry after a lost reply: the marker already names our cluster.
                    if !unchanged && epoch.map(|e| e.cluster) != Some(*cluster) {
                        return Ok(AddOutcome::Refused);
                    }
                    Some(*cluster)
                }
                AddMode::Join { cluster } => {
                    if epoch.is_some_and(|e| Some(e.cluster) != *cluster) {
                        return Ok(AddOutcome::Refused);
                    }
                    *cluster
                }
            };
            let mut writer = client.new_multi_writer();
            if let AddMode::Seed { lock, .. } = mode {
                // The token names this node's lock znode, which exists only while this
                // node holds the lock (ephemeral, unique name, the lowest when taken).
                if !lock.0.starts_with(&lock_prefix(&paths, node)) || lock.0.contains('/') {
                    return Ok(AddOutcome::Refused);
                }
                let lock_path = format!("{}/{}", paths.lock, lock.0);
                writer
                    .add_check_version(&lock_path, 0)
                    .map_err(|e| self.error(&e))?;
            }
            // The epoch: unchanged since this read, then written (its version moves).
            match (&snapshot.epoch, cluster) {
                (Some((_, stat)), Some(c)) => {
                    writer
                        .add_set_data(&paths.epoch, &entry::encode_epoch(c), Some(stat.version))
                        .map_err(|e| self.error(&e))?;
                }
                (Some((_, stat)), None) => {
                    writer
                        .add_check_version(&paths.epoch, stat.version)
                        .map_err(|e| self.error(&e))?;
                }
                (None, Some(c)) => {
                    writer
                        .add_create(&paths.epoch, &entry::encode_epoch(c), &persistent)
                        .map_err(|e| self.error(&e))?;
                }
                (None, None) => {}
            }
            // One entry per address: a new incarnation replaces the old one.
            if let Some(stat) = Self::entry_of(&snapshot, &paths, &node.address) {
                writer
                    .add_delete(&node_path, Some(stat.version))
                    .map_err(|e| self.error(&e))?;
            }
            writer
                .add_create(&node_path, &data, &ephemeral)
                .map_err(|e| self.error(&e))?;
            match writer.commit().await {
                Ok(_) => return Ok(AddOutcome::Added),
                Err(zk::MultiWriteError::OperationFailed { index, source }) => {
                    let lock_check = matches!(mode, AddMode::Seed { .. }) && index == 0;
                    match source {
                        // The lock is gone: this node no longer holds it.
                        zk::Error::NoNode | zk::Error::BadVersion if lock_check => {
                            return Ok(AddOutcome::Refused);
                        }
                        // The epoch or the entry moved since the read: read again.
                        zk::Error::NoNode | zk::Error::BadVersion | zk::Error::NodeExists => {
                            continue;
                        }
                        e => return Err(self.error(&e)),
                    }
                }
                Err(zk::MultiWriteError::RequestFailed { source }) => {
                    return Err(self.error(&source));
                }
            }
        }
        Err(CoordinationError::unavailable(
            "the ZooKeeper epoch kept changing while registering",
        ))
    }

    async fn refresh(&self, lease: Lease<'_>) -> Result<RefreshOutcome> {
        let client = self.client().await?;
        let path = Paths::of(lease.scope).node(&lease.node.address);
        let mine = entry::encode_node(lease.node);
        match client.get_data(&path).await {
            // The session keeps the entry alive; it must be this session's.
            Ok((data, stat)) if data == mine && stat.ephemeral_owner == client.session_id().0 => {
                Ok(RefreshOutcome::Refreshed)
            }
            Ok(_) | Err(zk::Error::NoNode) => Ok(RefreshOutcome::Missing),
            Err(e) => Err(self.error(&e)),
        }
    }

    async fn remove_self(&self, scope: &Scope, node: &NodeId) -> Result<()> {
        let client = self.client().await?;
        let path = Paths::of(scope).node(&node.address);
        match client.get_data(&path).await {
            Ok((data, stat)) if data == entry::encode_node(node) => {
                match client.delete(&path, Some(stat.version)).await {
                    Ok(()) | Err(zk::Error::NoNode) | Err(zk::Error::BadVersion) => Ok(()),
                    Err(e) => Err(self.error(&e)),
                }
            }
            Ok(_) | Err(zk::Error::NoNode) => Ok(()),
            Err(e) => Err(self.error(&e)),
        }
    }

    async fn wait_for_change(&self, scope: &Scope, revision: Option<u64>) -> Result<WaitOutcome> {
        let client = self.client().await?;
        let paths = Paths::of(scope);
        self.ensure_parents(&client, &paths).await?;
        let mut first = None;
        loop {
            let (_, stat, watcher) = client
                .get_and_watch_children(&paths.nodes)
                .await
                .map_err(|e| self.error(&e))?;
            let now = u64::try_from(stat.pzxid.max(0)).unwrap_or(0);
            let base = match revision {
                // The read found no `nodes` znode (revision 0): changes since its creation.
                Some(0) => u64::try_from(stat.czxid.max(0)).unwrap_or(0),
                Some(r) => r,
                // No revision: the first change after the call.
                None => *first.get_or_insert(now),
            };
            if now > base {
                return Ok(WaitOutcome::Changed);
            }
            let event = watcher.changed().await;
            match event.event_type {
                zk::EventType::NodeChildrenChanged
                | zk::EventType::NodeCreated
                | zk::EventType::NodeDeleted => return Ok(WaitOutcome::Changed),
                // A session event: the watch is gone; the caller re-reads after its delay.
                zk::EventType::Session => {
                    if is_terminal(event.session_state) {
                        return Err(ZooKeeperError::Unavailable {
                            servers: self.servers.clone(),
                            detail: "the session ended while watching".into(),
                        }
                        .into());
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                zk::EventType::NodeDataChanged => {}
            }
        }
    }
}
