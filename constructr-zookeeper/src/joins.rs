//! Member registrations of one process, written together (as the etcd and Consul drivers
//! do).
//!
//! A member's registration rewrites the epoch znode with a check of its version (a multi
//! can compare versions only, not values; see the crate docs): registrations racing on that
//! version succeed one per round, and each round re-read the registry, so 1,000 nodes of one
//! process took 66.5 s. So the registrations of one backend value for the same scope and
//! cluster are queued, and one task writes them together: one read of the epoch and one
//! multi (the epoch's versioned rewrite, then every queued node's ephemeral entry) for up to
//! [`BATCH`] nodes.
//!
//! A node whose entry exists already (an earlier incarnation on its address) fails the
//! multi at its own create: it leaves the batch and registers alone, through the path that
//! replaces the old entry; the others go again at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use constructr_core::CoordinationError;
use tokio::sync::oneshot;
use zookeeper_client as zk;

use crate::error::ZooKeeperError;

/// Nodes per multi. ZooKeeper bounds a request by `jute.maxbuffer` (1 MiB by default); an
/// entry is well under 1 KiB.
pub(crate) const BATCH: usize = 100;
/// Rounds of one batch racing other processes' registrations on the epoch's version.
const ROUNDS: u32 = 64;

/// How a queued registration ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Joined {
    /// The entry is written.
    Added,
    /// The epoch names another cluster.
    Refused,
    /// An entry exists at the node's path: register alone (it replaces that entry).
    Alone,
}

/// One queued registration.
pub(crate) struct Pending {
    pub(crate) client: zk::Client,
    pub(crate) path: String,
    pub(crate) data: Vec<u8>,
    pub(crate) reply: oneshot::Sender<Result<Joined, CoordinationError>>,
}

/// What the writer of a queue needs besides the registrations.
#[derive(Clone)]
pub(crate) struct Target {
    /// The epoch znode's path.
    pub(crate) epoch: String,
    /// The epoch's value this cluster's members register under.
    pub(crate) value: Vec<u8>,
    /// The ACL of the entries (and of an epoch re-created after a data loss).
    pub(crate) acls: zk::Acls<'static>,
    /// The servers, for error messages.
    pub(crate) servers: String,
}

impl Target {
    fn error(&self, e: &zk::Error) -> CoordinationError {
        ZooKeeperError::from_client(&self.servers, e).into()
    }
}

/// (epoch path, epoch value) → the registrations waiting for the writer of that queue.
type Queues = Arc<Mutex<HashMap<(String, Vec<u8>), Vec<Pending>>>>;

/// The queues of one backend value.
#[derive(Default)]
pub(crate) struct Joins {
    queues: Queues,
}

impl Joins {
    /// Queues `pending` as a member of the cluster whose epoch is `target`, starting the
    /// queue's writer if none runs.
    pub(crate) fn submit(&self, target: Target, pending: Pending) {
        let key = (target.epoch.clone(), target.value.clone());
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        match queues.get_mut(&key) {
            Some(queue) => queue.push(pending),
            None => {
                queues.insert(key.clone(), vec![pending]);
                tokio::spawn(write_queue(self.queues.clone(), key, target));
            }
        }
    }
}

/// Writes the queue `key` batch by batch until it is empty, then removes it.
async fn write_queue(queues: Queues, key: (String, Vec<u8>), target: Target) {
    loop {
        let batch: Vec<Pending> = {
            let mut map = queues.lock().unwrap_or_else(|p| p.into_inner());
            let Some(queue) = map.get_mut(&key) else {
                return;
            };
            // Registrations whose caller gave up are dropped here.
            queue.retain(|p| !p.reply.is_closed());
            if queue.is_empty() {
                map.remove(&key);
                return;
            }
            let n = queue.len().min(BATCH);
            queue.drain(..n).collect()
        };
        write_batch(&target, batch).await;
    }
}

/// Registers `batch` under the epoch of `target`, answering each node.
async fn write_batch(target: &Target, mut batch: Vec<Pending>) {
    let ephemeral = zk::CreateMode::Ephemeral.with_acls(target.acls);
    let persistent = zk::CreateMode::Persistent.with_acls(target.acls);
    let mut round = 0;
    while !batch.is_empty() {
        if round == ROUNDS {
            answer_all(batch, || {
                Err(CoordinationError::unavailable(
                    "the ZooKeeper epoch kept changing while registering",
                ))
            });
            return;
        }
        round += 1;
        // The newest session of the batch: an older one may have ended meanwhile.
        let client = batch[batch.len() - 1].client.clone();
        // A linearizable read: a lagging server must not refuse a member of the new epoch.
        if let Err(e) = client.sync(&target.epoch).await
            && e != zk::Error::NoNode
        {
            answer_all(batch, || Err(target.error(&e)));
            return;
        }
        let mut writer = client.new_multi_writer();
        let epoch_op = match client.get_data(&target.epoch).await {
            Ok((data, _)) if data != target.value => {
                answer_all(batch, || Ok(Joined::Refused));
                return;
            }
            // Rewriting the epoch with the same value moves its version, which refuses any
            // seeding that read the registry before this.
            Ok((_, stat)) => writer.add_set_data(&target.epoch, &target.value, Some(stat.version)),
            // The epoch is gone (the ensemble lost its data): a member re-creates it for its
            // cluster, unless someone else created one first.
            Err(zk::Error::NoNode) => writer.add_create(&target.epoch, &target.value, &persistent),
            Err(e) => {
                answer_all(batch, || Err(target.error(&e)));
                return;
            }
        };
        if let Err(e) = epoch_op {
            answer_all(batch, || Err(target.error(&e)));
            return;
        }
        for p in &batch {
            if let Err(e) = writer.add_create(&p.path, &p.data, &ephemeral) {
                answer_all(batch, || Err(target.error(&e)));
                return;
            }
        }
        match writer.commit().await {
            Ok(_) => {
                answer_all(batch, || Ok(Joined::Added));
                return;
            }
            Err(zk::MultiWriteError::OperationFailed { index: 0, source }) => match source {
                // Another registration moved the epoch: read again, after a short random
                // pause so that racing writers spread out.
                zk::Error::BadVersion | zk::Error::NodeExists | zk::Error::NoNode => {
                    let ms = rand::random_range(0..=(2 * u64::from(round.min(10))));
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                e => {
                    answer_all(batch, || Err(target.error(&e)));
                    return;
                }
            },
            Err(zk::MultiWriteError::OperationFailed { index, source }) => {
                let i = index - 1;
                if i >= batch.len() {
                    answer_all(batch, || Err(target.error(&source)));
                    return;
                }
                let p = batch.remove(i);
                let outcome = match source {
                    zk::Error::NodeExists => Ok(Joined::Alone),
                    e => Err(target.error(&e)),
                };
                let _ = p.reply.send(outcome);
            }
            Err(zk::MultiWriteError::RequestFailed { source }) => {
                answer_all(batch, || Err(target.error(&source)));
                return;
            }
        }
    }
}

/// Answers every node of `batch` with an outcome of its own (errors are not `Clone`).
fn answer_all(batch: Vec<Pending>, outcome: impl Fn() -> Result<Joined, CoordinationError>) {
    for p in batch {
        let _ = p.reply.send(outcome());
    }
}
