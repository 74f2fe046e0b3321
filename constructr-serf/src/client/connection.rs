//! One connection to the agent: the writer, the reader task and the pending requests by seq.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::AsyncWriteExt as _;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{mpsc, oneshot};

use crate::error::SerfError;
use crate::wire;

use super::framing::{FrameReader, from_value, is_done_record};

pub(super) const HANDSHAKE_REQUIRED: &str = "Handshake required";
pub(super) const AUTH_REQUIRED: &str = "Authentication required";
pub(super) const INVALID_AUTH: &str = "Invalid authentication token";
pub(super) const UNSUPPORTED_COMMAND: &str = "Unsupported command";

// ---------------------------------------------------------------------------------------
// One connection.

pub(super) struct Reply {
    pub(super) error: String,
    pub(super) body: Option<rmpv::Value>,
}

pub(super) type RecordTx = mpsc::UnboundedSender<rmpv::Value>;

pub(super) enum Waiter {
    Once {
        command: String,
        body: bool,
        tx: oneshot::Sender<Result<Reply, SerfError>>,
    },
    Stream {
        command: String,
        started: Option<oneshot::Sender<Result<Reply, SerfError>>>,
        records: RecordTx,
        ends_on_done: bool,
    },
    /// A stopped stream: records may still arrive; read and drop them.
    Discard,
}

pub(super) struct Conn {
    pub(super) addr: String,
    pub(super) writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pub(super) pending: Mutex<HashMap<u64, Waiter>>,
    pub(super) closed: AtomicBool,
    pub(super) reader: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(h) = self.reader.lock().unwrap_or_else(|e| e.into_inner()).take() {
            h.abort();
        }
    }
}

impl Conn {
    pub(super) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    pub(super) fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Waiter>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fails every pending request and marks the connection dead.
    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let waiters: Vec<Waiter> = self.pending().drain().map(|(_, w)| w).collect();
        for w in waiters {
            match w {
                Waiter::Once { command, tx, .. } => {
                    let _ = tx.send(Err(SerfError::ConnectionClosed {
                        addr: self.addr.clone(),
                        command: Some(command),
                    }));
                }
                Waiter::Stream {
                    command,
                    started: Some(tx),
                    ..
                } => {
                    let _ = tx.send(Err(SerfError::ConnectionClosed {
                        addr: self.addr.clone(),
                        command: Some(command),
                    }));
                }
                // Dropping the record sender ends the stream's receiver.
                Waiter::Stream { .. } | Waiter::Discard => {}
            }
        }
    }

    pub(super) fn register(&self, seq: u64, waiter: Waiter) -> Result<(), SerfError> {
        let mut p = self.pending();
        // Checked under the lock that `close` takes, so no waiter is left behind.
        if self.is_closed() {
            return Err(SerfError::ConnectionClosed {
                addr: self.addr.clone(),
                command: None,
            });
        }
        p.insert(seq, waiter);
        Ok(())
    }

    pub(super) async fn write(&self, bytes: &[u8]) -> Result<(), SerfError> {
        let mut w = self.writer.lock().await;
        let r = async {
            w.write_all(bytes).await?;
            w.flush().await
        }
        .await;
        if let Err(source) = r {
            drop(w);
            self.close();
            return Err(SerfError::Io {
                addr: self.addr.clone(),
                source,
            });
        }
        Ok(())
    }

    pub(super) async fn read_loop(self: Arc<Self>, mut frames: FrameReader) {
        let result = self.read_records(&mut frames).await;
        if let Err(e) = result
            && !self.is_closed()
        {
            tracing::debug!(addr = %self.addr, error = %e, "Serf RPC connection ended");
        }
        self.close();
    }

    pub(super) async fn read_records(&self, frames: &mut FrameReader) -> Result<(), SerfError> {
        let io = |source| SerfError::Io {
            addr: self.addr.clone(),
            source,
        };
        loop {
            let header: wire::ResponseHeader =
                from_value(frames.next_value().await.map_err(io)?, "response header")?;
            let seq = header.seq;
            let no_body_error = [HANDSHAKE_REQUIRED, AUTH_REQUIRED, UNSUPPORTED_COMMAND]
                .contains(&header.error.as_str());
            // Decide under the lock what follows, read outside of it.
            enum Next {
                Once(oneshot::Sender<Result<Reply, SerfError>>, bool),
                Started(oneshot::Sender<Result<Reply, SerfError>>),
                Record(Option<RecordTx>, bool),
            }
            let next = {
                let mut p = self.pending();
                match p.remove(&seq) {
                    None => {
                        return Err(SerfError::protocol(format!(
                            "response for unknown seq {seq}"
                        )));
                    }
                    Some(Waiter::Once { body, tx, .. }) => Next::Once(tx, body && !no_body_error),
                    Some(Waiter::Stream {
                        command,
                        started,
                        records,
                        ends_on_done,
                    }) => {
                        let next = match started {
                            Some(tx) => Next::Started(tx),
                            None => Next::Record(Some(records.clone()), ends_on_done),
                        };
                        // A refused start ends the stream; anything else keeps it open.
                        if header.error.is_empty() || matches!(next, Next::Record(..)) {
                            let started = None;
                            let stream = Waiter::Stream {
                                command,
                                started,
                                records,
                                ends_on_done,
                            };
                            p.insert(seq, stream);
                        }
                        next
                    }
                    Some(Waiter::Discard) => {
                        p.insert(seq, Waiter::Discard);
                        Next::Record(None, false)
                    }
                }
            };
            match next {
                Next::Once(tx, body) => {
                    let body = if body {
                        Some(frames.next_value().await.map_err(io)?)
                    } else {
                        None
                    };
                    let _ = tx.send(Ok(Reply {
                        error: header.error,
                        body,
                    }));
                }
                Next::Started(tx) => {
                    let _ = tx.send(Ok(Reply {
                        error: header.error,
                        body: None,
                    }));
                }
                Next::Record(tx, ends_on_done) => {
                    let record = frames.next_value().await.map_err(io)?;
                    let done = ends_on_done && is_done_record(&record);
                    if done {
                        self.pending().remove(&seq);
                    }
                    if let Some(tx) = tx
                        && tx.send(record).is_err()
                        && !done
                    {
                        // The consumer is gone: keep framing its records, drop them.
                        self.pending().insert(seq, Waiter::Discard);
                    }
                }
            }
        }
    }
}
