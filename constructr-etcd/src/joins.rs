//! Member registrations of one process, written together (group commit).
//!
//! A member's registration is a transaction that checks the epoch marker's value, writes
//! the node's entry on its own lease and rewrites the marker (so that a seeding which read
//! the registry before it is refused). Such transactions do not conflict with each other,
//! but each is one raft entry: 1,000 nodes of one process joining at once sent 1,000
//! transactions and as many lease grants, and etcd applied them one by one.
//!
//! So the registrations of one backend value for the same scope and cluster are queued.
//! Up to [`IN_FLIGHT`] writers take what is queued, up to [`BATCH`] nodes each, and write
//! it with one transaction: the epoch's check, every entry (each on its own lease, so each
//! still expires by itself), and one rewrite of the marker. A lone registration goes out at
//! once; only those that arrive while writers are busy wait, and then share a transaction.
//!
//! The leases of a batch are granted under ids this process picks, sent together with the
//! transaction (see `EtcdClient::grant_with_txn`): when etcd applies the transaction before
//! some grant, it refuses it as a whole ("requested lease not found") and it is sent again
//! once the grants are answered. A node whose id turns out to be someone else's lease gets
//! its key undone (where it still sits on that lease) and a retryable error.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse, TxnResponse};
use tokio::sync::oneshot;

use crate::client::EtcdClient;
use crate::error::EtcdError;

/// Nodes per transaction: etcd allows 128 operations per transaction by default
/// (`--max-txn-ops`); one is the marker's rewrite. A server configured with fewer makes the
/// writers halve their batches until they fit.
pub(crate) const BATCH: usize = 100;
/// Node entry bytes (keys and values) per transaction, well below etcd's default request
/// limit of 1.5 MiB (`--max-request-bytes`).
const BATCH_BYTES: usize = 512 * 1024;
/// Writers of one queue at once.
pub(crate) const IN_FLIGHT: usize = 4;

/// How a queued registration ended.
#[derive(Debug)]
pub(crate) enum Joined {
    /// The entry is written on `lease`, at `revision`.
    Added {
        /// The entry's lease.
        lease: i64,
        /// The revision of the transaction that wrote it.
        revision: i64,
    },
    /// The marker names another cluster (or another member re-created it first).
    Refused,
}

/// One queued registration.
pub(crate) struct Pending {
    pub(crate) node_key: String,
    pub(crate) node_value: Vec<u8>,
    /// The lease TTL in whole seconds.
    pub(crate) ttl: i64,
    pub(crate) reply: oneshot::Sender<Result<Joined, EtcdError>>,
}

impl Pending {
    fn put(&self, lease: i64) -> TxnOp {
        TxnOp::put(
            self.node_key.as_str(),
            self.node_value.clone(),
            Some(PutOptions::new().with_lease(lease).with_prev_key()),
        )
    }

    fn size(&self) -> usize {
        self.node_key.len() + self.node_value.len()
    }
}

/// The registrations of one (marker key, marker value) and its writers.
#[derive(Default)]
struct Queue {
    pending: Vec<Pending>,
    writers: usize,
}

/// (epoch key, epoch value) → its queue.
type Queues = Arc<Mutex<HashMap<(String, Vec<u8>), Queue>>>;

/// The queues of one backend value.
pub(crate) struct Joins {
    queues: Queues,
    /// Nodes per transaction; lowered when etcd refuses a transaction as too large.
    batch: Arc<std::sync::atomic::AtomicUsize>,
}

impl Default for Joins {
    fn default() -> Self {
        Self {
            queues: Queues::default(),
            batch: Arc::new(std::sync::atomic::AtomicUsize::new(BATCH)),
        }
    }
}

impl Joins {
    /// Queues `pending` as a member of the cluster whose marker under `epoch_key` is
    /// `epoch_value`, starting a writer if fewer than [`IN_FLIGHT`] run for that queue.
    pub(crate) fn submit(
        &self,
        client: &Arc<EtcdClient>,
        epoch_key: &str,
        epoch_value: Vec<u8>,
        pending: Pending,
    ) {
        let key = (epoch_key.to_owned(), epoch_value);
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let queue = queues.entry(key.clone()).or_default();
        queue.pending.push(pending);
        if queue.writers < IN_FLIGHT {
            queue.writers += 1;
            tokio::spawn(write_queue(
                client.clone(),
                self.queues.clone(),
                self.batch.clone(),
                key,
            ));
        }
    }
}

/// Writes batches of the queue `key` until it is empty, then stops (removing the queue
/// when it was the last writer).
async fn write_queue(
    client: Arc<EtcdClient>,
    queues: Queues,
    limit: Arc<std::sync::atomic::AtomicUsize>,
    key: (String, Vec<u8>),
) {
    loop {
        let batch = {
            let mut map = queues.lock().unwrap_or_else(|p| p.into_inner());
            let Some(queue) = map.get_mut(&key) else {
                return;
            };
            let limit = limit.load(std::sync::atomic::Ordering::Relaxed).max(1);
            let batch = take_batch(&mut queue.pending, limit);
            if batch.is_empty() {
                queue.writers -= 1;
                if queue.writers == 0 && queue.pending.is_empty() {
                    map.remove(&key);
                }
                return;
            }
            batch
        };
        if let Some(mut back) = write_batch(&client, &key.0, &key.1, batch).await {
            if back.len() == 1 {
                let p = back.remove(0);
                let _ = p.reply.send(Err(EtcdError::Rejected {
                    endpoint: "-".into(),
                    detail: "etcd refuses even a one-node registration as too many \
                             operations (--max-txn-ops below 2)"
                        .into(),
                }));
                continue;
            }
            // Too many operations for this server: smaller batches, and these again.
            let smaller = (back.len() / 2).max(1);
            limit.fetch_min(smaller, std::sync::atomic::Ordering::Relaxed);
            let mut map = queues.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(queue) = map.get_mut(&key) {
                queue.pending.splice(0..0, back);
            }
        }
    }
}

/// Takes up to `limit` registrations (and [`BATCH_BYTES`]) from the front of `pending`,
/// at most one per key (etcd refuses a transaction that writes a key twice), dropping those
/// whose caller gave up.
fn take_batch(pending: &mut Vec<Pending>, limit: usize) -> Vec<Pending> {
    pending.retain(|p| !p.reply.is_closed());
    let mut keys = HashSet::new();
    let mut bytes = 0;
    let mut batch = Vec::new();
    let mut rest = Vec::new();
    for p in pending.drain(..) {
        let fits = batch.len() < limit && (batch.is_empty() || bytes + p.size() <= BATCH_BYTES);
        if fits && keys.insert(p.node_key.clone()) {
            bytes += p.size();
            batch.push(p);
        } else {
            rest.push(p);
        }
    }
    *pending = rest;
    batch
}

/// Registers `batch` under the marker `epoch_value`, answering each node; or hands the
/// batch back unanswered when etcd refused the transaction as having too many operations.
async fn write_batch(
    client: &Arc<EtcdClient>,
    epoch_key: &str,
    epoch_value: &[u8],
    batch: Vec<Pending>,
) -> Option<Vec<Pending>> {
    let batch: Vec<(Pending, i64)> = batch
        .into_iter()
        .map(|p| (p, client.next_lease_id()))
        .collect();
    // The member's transaction, and (when the marker is gone because etcd lost its data)
    // the one that re-creates it for its cluster, unless someone else created one first.
    let txn = |batch: &[(Pending, i64)], marker_absent: bool| {
        let check = if marker_absent {
            Compare::create_revision(epoch_key, CompareOp::Equal, 0)
        } else {
            Compare::value(epoch_key, CompareOp::Equal, epoch_value)
        };
        let mut writes: Vec<TxnOp> = batch.iter().map(|(p, id)| p.put(*id)).collect();
        // Rewriting the marker with the same value moves its mod revision, which refuses
        // any seeding that read the registry before this.
        writes.push(TxnOp::put(epoch_key, epoch_value, None));
        Txn::new().when([check]).and_then(writes)
    };
    // Each grant its own task, so that all go out at once.
    let grants: Vec<_> = batch
        .iter()
        .map(|(p, id)| {
            let (client, ttl, id) = (client.clone(), p.ttl, *id);
            tokio::spawn(async move { client.grant_id(ttl, id).await })
        })
        .collect();
    let grants = async move {
        let mut granted = Vec::with_capacity(grants.len());
        for g in grants {
            granted.push(g.await.unwrap_or_else(|e| {
                Err(EtcdError::Unavailable {
                    endpoint: "-".into(),
                    detail: format!("the lease grant task failed: {e}"),
                })
            }));
        }
        granted
    };
    let (granted, first) = tokio::join!(grants, client.txn_unless_no_lease(txn(&batch, false)));
    if let Err(e) = &first
        && is_too_many_ops(e)
    {
        for ((_, id), g) in batch.iter().zip(&granted) {
            if !matches!(g, Ok(false)) {
                client.revoke_in_background(*id);
            }
        }
        return Some(batch.into_iter().map(|(p, _)| p).collect());
    }
    let committed = matches!(&first, Ok(Some(r)) if r.succeeded());
    tracing::debug!(
        nodes = batch.len(),
        committed,
        lease_not_found = matches!(&first, Ok(None)),
        "etcd registration batch"
    );
    // Settle the grants: a node whose id was someone else's lease, or whose grant failed
    // (unless the committed transaction shows that its lease exists), leaves the batch.
    let mut kept = Vec::with_capacity(batch.len());
    for ((p, id), g) in batch.into_iter().zip(granted) {
        match g {
            Ok(true) => kept.push((p, id)),
            Err(_) if committed => kept.push((p, id)),
            Ok(false) => {
                if committed {
                    undo(client, &p.node_key, id).await;
                }
                let _ = p.reply.send(Err(EtcdError::Unavailable {
                    endpoint: "-".into(),
                    detail: "the chosen lease id is taken; register again".into(),
                }));
            }
            Err(e) => {
                client.revoke_in_background(id);
                let _ = p.reply.send(Err(e));
            }
        }
    }
    let batch = kept;
    if batch.is_empty() {
        return None;
    }
    let mut resp = match first {
        Ok(Some(r)) => Ok(r),
        // Applied before some grant: now all are granted.
        Ok(None) => resend(client, txn(&batch, false)).await,
        Err(e) => Err(e),
    };
    if matches!(&resp, Ok(r) if !r.succeeded()) {
        resp = resend(client, txn(&batch, true)).await;
    }
    match resp {
        Ok(r) if r.succeeded() => {
            let revision = r.header().map_or(0, |h| h.revision());
            revoke_replaced(client, &r, &batch);
            for (p, lease) in batch {
                let _ = p.reply.send(Ok(Joined::Added { lease, revision }));
            }
        }
        Ok(_) => {
            for (p, id) in batch {
                client.revoke_in_background(id);
                let _ = p.reply.send(Ok(Joined::Refused));
            }
        }
        Err(e) => {
            for (p, id) in batch {
                client.revoke_in_background(id);
                let _ = p.reply.send(Err(shared(&e)));
            }
        }
    }
    None
}

/// Sends `txn` once more; a lease it writes on that is still unknown now is an error.
async fn resend(client: &EtcdClient, txn: Txn) -> Result<TxnResponse, EtcdError> {
    client
        .txn_unless_no_lease(txn)
        .await?
        .ok_or_else(|| EtcdError::Unavailable {
            endpoint: "-".into(),
            detail: "a granted lease of the registration was not found".into(),
        })
}

/// Deletes `key` where it sits on lease `id` (someone else's: ours was never granted).
async fn undo(client: &EtcdClient, key: &str, id: i64) {
    let txn = Txn::new()
        .when([Compare::lease(key, CompareOp::Equal, id)])
        .and_then([TxnOp::delete(key, None)]);
    if let Err(e) = client.txn(txn).await {
        tracing::warn!(key, error = %e, "could not undo an entry written on a taken lease id");
    }
}

/// An earlier registration of the same incarnation, replaced by this one: its lease now
/// holds no key, so it is revoked.
fn revoke_replaced(client: &Arc<EtcdClient>, resp: &TxnResponse, batch: &[(Pending, i64)]) {
    for (r, (p, lease)) in resp.op_responses().into_iter().zip(batch) {
        if let TxnOpResponse::Put(put) = r
            && let Some(prev) = put.prev_key()
            && prev.key() == p.node_key.as_bytes()
            && prev.lease() != 0
            && prev.lease() != *lease
            && prev.value() == p.node_value.as_slice()
        {
            client.revoke_in_background(prev.lease());
        }
    }
}

/// Whether etcd refused a transaction for holding more operations than `--max-txn-ops`.
fn is_too_many_ops(e: &EtcdError) -> bool {
    matches!(e, EtcdError::Rejected { detail, .. } if detail.contains("too many operations"))
}

/// The same failure for every node of a batch: of the same kind, with the same message.
fn shared(e: &EtcdError) -> EtcdError {
    match e {
        EtcdError::Unavailable { endpoint, detail } => EtcdError::Unavailable {
            endpoint: endpoint.clone(),
            detail: detail.clone(),
        },
        EtcdError::Timeout { endpoint } => EtcdError::Timeout {
            endpoint: endpoint.clone(),
        },
        EtcdError::Unauthorized { endpoint, detail } => EtcdError::Unauthorized {
            endpoint: endpoint.clone(),
            detail: detail.clone(),
        },
        EtcdError::Rejected { endpoint, detail } => EtcdError::Rejected {
            endpoint: endpoint.clone(),
            detail: detail.clone(),
        },
        EtcdError::TlsHandshake { endpoint, detail } => EtcdError::TlsHandshake {
            endpoint: endpoint.clone(),
            detail: detail.clone(),
        },
        other => EtcdError::protocol(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(key: &str, bytes: usize) -> (Pending, oneshot::Receiver<Result<Joined, EtcdError>>) {
        let (reply, rx) = oneshot::channel();
        (
            Pending {
                node_key: key.to_owned(),
                node_value: vec![b'x'; bytes],
                ttl: 10,
                reply,
            },
            rx,
        )
    }

    #[test]
    fn a_batch_writes_each_key_once_and_leaves_the_rest_queued() {
        let (a1, _r1) = pending("a", 1);
        let (b, _r2) = pending("b", 1);
        let (a2, _r3) = pending("a", 1);
        let mut queue = vec![a1, b, a2];
        let batch = take_batch(&mut queue, 10);
        let keys: Vec<_> = batch.iter().map(|p| p.node_key.as_str()).collect();
        assert_eq!(keys, ["a", "b"]);
        assert_eq!(queue.len(), 1);
        assert_eq!(queue[0].node_key, "a");
    }

    #[test]
    fn a_batch_stays_within_its_count_and_bytes_but_takes_one_oversized_entry() {
        let mut queue = Vec::new();
        let mut replies = Vec::new();
        for i in 0..5 {
            let (p, r) = pending(&format!("k{i}"), BATCH_BYTES / 2);
            queue.push(p);
            replies.push(r);
        }
        assert_eq!(
            take_batch(&mut queue, 10).len(),
            1,
            "two halves exceed the bytes"
        );
        assert_eq!(take_batch(&mut queue, 1).len(), 1);
        let (huge, _r) = pending("huge", BATCH_BYTES * 2);
        let mut alone = vec![huge];
        assert_eq!(
            take_batch(&mut alone, 10).len(),
            1,
            "never stuck on one entry"
        );
    }

    #[test]
    fn registrations_whose_caller_gave_up_are_dropped() {
        let (a, ra) = pending("a", 1);
        let (b, _rb) = pending("b", 1);
        drop(ra);
        let mut queue = vec![a, b];
        let batch = take_batch(&mut queue, 10);
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].node_key, "b");
    }
}
