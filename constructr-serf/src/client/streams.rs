//! Long-lived answers: query responses and event streams.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::error::SerfError;
use crate::wire;
use constructr_core::plumbing::DriverError;

use super::SerfClient;
use super::connection::Conn;
use super::framing::from_value;
use super::types::{Member, MemberEventKind, QueryRecord, StreamEvent};

/// The acks and responses of one query. Ends (`None`) at the query's deadline.
#[derive(Debug)]
pub struct QueryStream {
    pub(super) rx: mpsc::UnboundedReceiver<rmpv::Value>,
    pub(super) addr: String,
    pub(super) done: bool,
}

impl QueryStream {
    /// The next ack or response; `None` once the query is over. A lost connection yields
    /// one [`SerfError::ConnectionClosed`].
    pub async fn next(&mut self) -> Option<Result<QueryRecord, SerfError>> {
        if self.done {
            return None;
        }
        loop {
            let Some(v) = self.rx.recv().await else {
                self.done = true;
                return Some(Err(SerfError::ConnectionClosed {
                    addr: self.addr.clone(),
                    command: Some("query".into()),
                }));
            };
            let rec: wire::QueryRecord = match from_value(v, "query record") {
                Ok(r) => r,
                Err(e) => return Some(Err(e)),
            };
            return match rec.kind.as_str() {
                "ack" => Some(Ok(QueryRecord::Ack { from: rec.from })),
                "response" => Some(Ok(QueryRecord::Response {
                    from: rec.from,
                    payload: rec.payload.unwrap_or_default(),
                })),
                "done" => {
                    self.done = true;
                    None
                }
                other => {
                    tracing::debug!(kind = other, "unknown query record type; skipped");
                    continue;
                }
            };
        }
    }

    /// Collects every record until the query is over.
    pub async fn collect(mut self) -> Result<Vec<QueryRecord>, SerfError> {
        let mut out = Vec::new();
        while let Some(r) = self.next().await {
            out.push(r?);
        }
        Ok(out)
    }
}

/// A `stream` subscription that survives agent restarts. Dropping it sends `stop`.
pub struct EventStream {
    pub(super) client: SerfClient,
    pub(super) filter: String,
    pub(super) conn: Option<Arc<Conn>>,
    pub(super) seq: u64,
    pub(super) rx: mpsc::UnboundedReceiver<rmpv::Value>,
    pub(super) ended: bool,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("filter", &self.filter)
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl EventStream {
    /// The next event. After the connection broke it reconnects with backoff (for as long
    /// as it takes), re-subscribes and yields [`StreamEvent::Resynced`]. Yields an error and
    /// then `None` only when reconnecting cannot succeed (e.g. the auth key is refused).
    pub async fn next(&mut self) -> Option<Result<StreamEvent, SerfError>> {
        if self.ended {
            return None;
        }
        loop {
            if let Some(v) = self.rx.recv().await {
                match parse_stream_record(v) {
                    Ok(Some(e)) => return Some(Ok(e)),
                    Ok(None) => continue,
                    Err(e) => return Some(Err(e)),
                }
            }
            return match self.resubscribe().await {
                Ok(e) => Some(Ok(e)),
                Err(e) => {
                    self.ended = true;
                    Some(Err(e))
                }
            };
        }
    }

    async fn resubscribe(&mut self) -> Result<StreamEvent, SerfError> {
        let config = self.client.config().clone();
        let mut delay = config.reconnect_min;
        loop {
            let deadline = Instant::now() + config.request_timeout;
            let attempt = async {
                let started = self
                    .client
                    .start_stream(
                        "stream",
                        &wire::Stream { kind: &self.filter },
                        false,
                        deadline,
                    )
                    .await?;
                let members = self.client.members().await?;
                Ok::<_, SerfError>((started, members))
            }
            .await;
            match attempt {
                Ok(((conn, seq, rx), members)) => {
                    self.conn = Some(conn);
                    self.seq = seq;
                    self.rx = rx;
                    return Ok(StreamEvent::Resynced { members });
                }
                Err(e) if !e.is_retryable() => return Err(e),
                Err(e) => {
                    tracing::debug!(error = %e, ?delay, "Serf event stream: reconnecting");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(config.reconnect_max);
                }
            }
        }
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            conn.stop_stream(&self.client, self.seq);
        }
    }
}

fn parse_stream_record(v: rmpv::Value) -> Result<Option<StreamEvent>, SerfError> {
    let rec: wire::StreamRecord = from_value(v, "stream record")?;
    if let Some(kind) = MemberEventKind::parse(&rec.event) {
        let members = rec
            .members
            .unwrap_or_default()
            .into_iter()
            .map(Member::from_wire)
            .collect::<Result<_, _>>()?;
        return Ok(Some(StreamEvent::Member { kind, members }));
    }
    Ok(match rec.event.as_str() {
        "user" => Some(StreamEvent::User {
            name: rec.name,
            ltime: rec.ltime,
            payload: rec.payload.unwrap_or_default(),
            coalesce: rec.coalesce,
        }),
        "query" => Some(StreamEvent::Query {
            id: rec.id,
            name: rec.name,
            ltime: rec.ltime,
            payload: rec.payload.unwrap_or_default(),
        }),
        other => {
            tracing::debug!(event = other, "unknown Serf stream event; skipped");
            None
        }
    })
}
