//! Member registrations of one process, written together.
//!
//! A member's registration rewrites the epoch marker with a check-and-set on its modify
//! index (Consul transactions cannot compare values; see the module docs of
//! `coordination`). Registrations racing on that index succeed one per round: 1,000 nodes
//! of one process registering at once took 35 s, most of it in retries. So the
//! registrations of one backend value for the same scope and cluster are queued, and one
//! task writes them together: one epoch read and one transaction (check-and-set of the
//! epoch, then every queued node entry) for up to [`BATCH`] nodes.
//!
//! A transaction whose node write fails (not the epoch's check) answers that node with the
//! error and retries without it, so one bad entry does not hold the others back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use constructr_core::coordination::AddOutcome;
use constructr_core::plumbing::DriverError as _;
use rand::Rng as _;
use tokio::sync::oneshot;

use crate::client::{ConsulClient, TxnOp, TxnOutcome};
use crate::error::ConsulError;

/// Nodes per transaction: Consul allows 64 operations, one is the epoch's, each node needs
/// two (delete any other incarnation's entry, then write and lock its own).
pub(crate) const BATCH: usize = 31;
/// Rounds of one batch racing other registrations on the epoch's index.
const ATTEMPTS: u32 = 30;

/// One queued registration.
pub(crate) struct Pending {
    pub(crate) node_key: String,
    pub(crate) node_value: Vec<u8>,
    pub(crate) session: String,
    pub(crate) reply: oneshot::Sender<Result<AddOutcome, ConsulError>>,
}

impl Pending {
    fn ops(&self) -> [TxnOp; 2] {
        [
            TxnOp::delete(&self.node_key),
            TxnOp::lock(&self.node_key, &self.node_value, &self.session),
        ]
    }
}

/// (epoch key, epoch value) → the registrations waiting for the writer of that queue.
type Queues = Arc<Mutex<HashMap<(String, Vec<u8>), Vec<Pending>>>>;

/// The queues of one backend value.
#[derive(Default)]
pub(crate) struct Joins {
    queues: Queues,
}

impl Joins {
    /// Queues `pending` as a member of the cluster whose marker under `epoch_key` is
    /// `epoch_value`, starting the queue's writer if none runs.
    pub(crate) fn submit(
        &self,
        client: &Arc<ConsulClient>,
        epoch_key: &str,
        epoch_value: Vec<u8>,
        pending: Pending,
    ) {
        let key = (epoch_key.to_owned(), epoch_value);
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        match queues.get_mut(&key) {
            Some(queue) => queue.push(pending),
            None => {
                queues.insert(key.clone(), vec![pending]);
                tokio::spawn(write_queue(client.clone(), self.queues.clone(), key));
            }
        }
    }
}

/// Writes the queue `key` batch by batch until it is empty, then removes it.
async fn write_queue(client: Arc<ConsulClient>, queues: Queues, key: (String, Vec<u8>)) {
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
        write_batch(&client, &key.0, &key.1, batch).await;
    }
}

/// Registers `batch` as members under the marker `epoch_value`, answering each.
async fn write_batch(
    client: &ConsulClient,
    epoch_key: &str,
    epoch_value: &[u8],
    batch: Vec<Pending>,
) {
    let mut batch = batch;
    let mut attempt = 0;
    while !batch.is_empty() {
        if attempt == ATTEMPTS {
            for p in batch {
                let _ = p.reply.send(Err(ConsulError::Unavailable {
                    address: "-".into(),
                    detail: "the epoch marker kept changing during the registration".into(),
                }));
            }
            return;
        }
        attempt += 1;
        let epoch = match client.kv_get(epoch_key).await {
            Ok(e) => e,
            Err(e) => {
                for p in batch {
                    let _ = p.reply.send(Err(shared(&e)));
                }
                return;
            }
        };
        // Absent marker (the agent lost its data): a member re-creates it for its cluster,
        // unless someone else created one first (index 0 = must not exist).
        let index = match &epoch {
            None => 0,
            Some(e) if e.value != epoch_value => {
                for p in batch {
                    let _ = p.reply.send(Ok(AddOutcome::Refused));
                }
                return;
            }
            // Rewriting the marker with the same value moves its modify index, which
            // refuses any seeding that read the registry before this.
            Some(e) => e.modify_index,
        };
        let mut ops = vec![TxnOp::cas(epoch_key, epoch_value, index, index)];
        ops.extend(batch.iter().flat_map(Pending::ops));
        match client.txn(&ops).await {
            Ok(TxnOutcome::Committed) => {
                for p in batch {
                    let _ = p.reply.send(Ok(AddOutcome::Added));
                }
                return;
            }
            Ok(TxnOutcome::Failed { op_index: 0, .. }) => {
                // Another registration moved the index: read again, after a short random
                // pause so that racing writers spread out.
                let pause = rand::rng().random_range(5..=20 * u64::from(attempt));
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            Ok(TxnOutcome::Failed { op_index, what }) => {
                // One node's write failed: answer it, retry the others.
                let bad = (op_index - 1) / 2;
                if bad < batch.len() {
                    let p = batch.remove(bad);
                    let _ = p.reply.send(Err(ConsulError::Unavailable {
                        address: "-".into(),
                        detail: format!("registration transaction failed: {what}"),
                    }));
                } else {
                    for p in batch {
                        let _ = p.reply.send(Err(ConsulError::protocol(format!(
                            "registration transaction failed at operation {op_index}: {what}"
                        ))));
                    }
                    return;
                }
            }
            Err(e) => {
                for p in batch {
                    let _ = p.reply.send(Err(shared(&e)));
                }
                return;
            }
        }
    }
}

/// The same failure for every node of a batch: of the same kind, with the same message.
fn shared(e: &ConsulError) -> ConsulError {
    let detail = e.to_string();
    match e {
        ConsulError::Unauthorized { address, .. } => ConsulError::Unauthorized {
            address: address.clone(),
            detail,
        },
        ConsulError::Timeout { address } => ConsulError::Timeout {
            address: address.clone(),
        },
        _ if e.is_retryable() => ConsulError::Unavailable {
            address: "-".into(),
            detail,
        },
        _ => ConsulError::protocol(detail),
    }
}
