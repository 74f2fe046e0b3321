//! `SerfClient`: the Serf agent's RPC protocol (msgpack over TCP, IPC version 1).
//!
//! # Protocol quirks this client respects (verified against serf 0.10.1)
//! - Every request is a header `{Command, Seq}` followed by a body **only if the command
//!   takes one**: `members`, `leave` and `stats` are sent without a body (a body would be
//!   read as the next request header).
//! - Every response is a header `{Seq, Error}`; only `members`, `members-filtered`,
//!   `join` and `stats` follow it with a body (`join` even on error; `force-leave` has
//!   none in 0.10.1). A command refused with `Handshake required` or `Authentication required` has
//!   no body. Which responses carry a body is therefore known per command, and the reader
//!   keeps, per pending seq, what it expects.
//! - `stream` and `query` answer with a header only, then push records reusing the seq of
//!   the request that started them (query records end with one of type `done`). Records of
//!   an event stream may still arrive after `stop` was acknowledged; they are discarded.
//! - An unknown command is answered with `Unsupported command` and the agent then closes
//!   the connection; an invalid regular expression in `members-filtered` closes it without
//!   an answer. Both surface as typed errors ([`SerfError::Agent`],
//!   [`SerfError::ConnectionClosed`]) and the next command reconnects.
//! - `Addr` and `Payload` are msgpack binary; field names are PascalCase.
//!
//! The client connects lazily, handshakes and authenticates on every (re)connection, and
//! reconnects with exponential backoff (bounded by the request timeout) when the agent
//! restarts. An [`EventStream`] re-subscribes by itself and then yields
//! [`StreamEvent::Resynced`] with a full `members` read, so consumers reconcile whatever
//! they missed while the agent was away.

mod connection;
mod framing;
mod streams;
mod types;

pub use streams::{EventStream, QueryStream};
pub use types::{
    Member, MemberEventKind, MemberFilter, MemberStatus, QueryParams, QueryRecord, StreamEvent,
};

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::config::SerfConfig;
use crate::error::SerfError;
use crate::wire;
use constructr_core::plumbing::DriverError;

use connection::{
    AUTH_REQUIRED, Conn, HANDSHAKE_REQUIRED, INVALID_AUTH, Reply, UNSUPPORTED_COMMAND, Waiter,
};
use framing::{FrameReader, encode, from_value};

// ---------------------------------------------------------------------------------------
// The client.

struct Inner {
    config: SerfConfig,
    seq: AtomicU64,
    conn: tokio::sync::Mutex<Option<Arc<Conn>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The reader task holds the connection: end it with the last client.
        if let Some(c) = self.conn.get_mut().take() {
            c.shutdown();
        }
    }
}

/// A client of one Serf agent's RPC endpoint. Cheap to clone; clones share the connection.
///
/// ```no_run
/// # async fn demo() -> Result<(), constructr_serf::SerfError> {
/// use constructr_serf::{SerfClient, SerfConfig};
///
/// let client = SerfClient::new(SerfConfig::new("127.0.0.1:7373"))?;
/// for m in client.members().await? {
///     println!("{} {}:{} {:?} {:?}", m.name, m.addr, m.port, m.status, m.tags);
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SerfClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SerfClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerfClient")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl SerfClient {
    /// A client for the configured agent. Connects lazily, on the first command.
    pub fn new(config: SerfConfig) -> Result<Self, SerfError> {
        config.validate()?;
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                seq: AtomicU64::new(0),
                conn: tokio::sync::Mutex::new(None),
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &SerfConfig {
        &self.inner.config
    }

    fn next_seq(&self) -> u64 {
        self.inner.seq.fetch_add(1, Ordering::Relaxed)
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.inner.config.request_timeout
    }

    /// Connects (handshake + auth) now if not connected: fails early on a wrong address or
    /// a wrong auth key.
    pub async fn check(&self) -> Result<(), SerfError> {
        self.connection(self.deadline()).await.map(|_| ())
    }

    /// The live connection, or a new one: retries with backoff until `deadline`.
    async fn connection(&self, deadline: Instant) -> Result<Arc<Conn>, SerfError> {
        let mut guard = self.inner.conn.lock().await;
        if let Some(c) = guard.as_ref()
            && !c.is_closed()
        {
            return Ok(c.clone());
        }
        if let Some(old) = guard.take() {
            old.shutdown();
        }
        let config = &self.inner.config;
        let mut delay = config.reconnect_min;
        loop {
            let attempt = tokio::time::timeout_at(
                deadline.min(Instant::now() + config.connect_timeout),
                self.open(),
            )
            .await;
            let err = match attempt {
                Ok(Ok(conn)) => {
                    *guard = Some(conn.clone());
                    return Ok(conn);
                }
                Ok(Err(e)) if !e.is_retryable() => return Err(e),
                Ok(Err(e)) => e,
                Err(_) => SerfError::Timeout {
                    command: "connect".into(),
                },
            };
            if Instant::now() + delay >= deadline {
                return Err(err);
            }
            tracing::debug!(addr = %config.rpc_addr, error = %err, ?delay, "Serf RPC connect failed; retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(config.reconnect_max);
        }
    }

    async fn open(&self) -> Result<Arc<Conn>, SerfError> {
        let addr = self.inner.config.rpc_addr.clone();
        let stream = TcpStream::connect(&addr)
            .await
            .map_err(|source| SerfError::Io {
                addr: addr.clone(),
                source,
            })?;
        let _ = stream.set_nodelay(true);
        let (rd, wr) = stream.into_split();
        let conn = Arc::new(Conn {
            addr,
            writer: tokio::sync::Mutex::new(wr),
            pending: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
            reader: Mutex::new(None),
        });
        let frames = FrameReader {
            rd,
            buf: Vec::new(),
            start: 0,
        };
        // The reader task holds the connection; `shutdown` (on replacement, and when the
        // last client is dropped) aborts it.
        let task = tokio::spawn(conn.clone().read_loop(frames));
        *conn.reader.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        let r = async {
            let reply = self
                .send_on(
                    &conn,
                    "handshake",
                    Some(&wire::Handshake { version: 1 }),
                    false,
                )
                .await?;
            check_reply("handshake", reply)?;
            if let Some(key) = &self.inner.config.auth_key {
                let reply = self
                    .send_on(
                        &conn,
                        "auth",
                        Some(&wire::Auth {
                            auth_key: key.expose(),
                        }),
                        false,
                    )
                    .await?;
                check_reply("auth", reply)?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = r {
            conn.shutdown();
            return Err(e);
        }
        Ok(conn)
    }

    async fn send_on<B: Serialize>(
        &self,
        conn: &Conn,
        command: &str,
        body: Option<&B>,
        expects_body: bool,
    ) -> Result<Reply, SerfError> {
        let seq = self.next_seq();
        let (tx, rx) = oneshot::channel();
        conn.register(
            seq,
            Waiter::Once {
                command: command.to_owned(),
                body: expects_body,
                tx,
            },
        )?;
        let mut bytes = Vec::with_capacity(64);
        encode(&mut bytes, &wire::RequestHeader { command, seq });
        if let Some(b) = body {
            encode(&mut bytes, b);
        }
        conn.write(&bytes).await?;
        rx.await.unwrap_or_else(|_| {
            Err(SerfError::ConnectionClosed {
                addr: conn.addr.clone(),
                command: Some(command.to_owned()),
            })
        })
    }

    /// One command on the live connection (reconnecting first if needed), bounded by the
    /// request timeout.
    async fn call<B: Serialize>(
        &self,
        command: &str,
        body: Option<&B>,
        expects_body: bool,
    ) -> Result<Option<rmpv::Value>, SerfError> {
        let deadline = self.deadline();
        let conn = tokio::time::timeout_at(deadline, self.connection(deadline))
            .await
            .unwrap_or_else(|_| {
                Err(SerfError::Timeout {
                    command: command.to_owned(),
                })
            })?;
        let reply = match tokio::time::timeout_at(
            deadline,
            self.send_on(&conn, command, body, expects_body),
        )
        .await
        {
            Ok(r) => r?,
            Err(_) => {
                // The reader may be waiting for this command's body: the connection's
                // framing is unknown now, so start over on a fresh one.
                conn.shutdown();
                return Err(SerfError::Timeout {
                    command: command.to_owned(),
                });
            }
        };
        if [AUTH_REQUIRED, HANDSHAKE_REQUIRED, UNSUPPORTED_COMMAND].contains(&reply.error.as_str())
        {
            // Serf did not read this request's body (auth/handshake), or closes the
            // connection after this answer (unknown command): start over on a fresh one.
            conn.shutdown();
        }
        check_reply(command, reply)
    }

    /// `members`: every member the agent knows (alive, leaving, left, failed).
    pub async fn members(&self) -> Result<Vec<Member>, SerfError> {
        let body = self.call::<()>("members", None, true).await?;
        members_from(body)
    }

    /// `members-filtered`.
    pub async fn members_filtered(&self, filter: &MemberFilter) -> Result<Vec<Member>, SerfError> {
        let req = wire::MembersFiltered {
            tags: &filter.tags,
            status: &filter.status,
            name: &filter.name,
        };
        let body = self.call("members-filtered", Some(&req), true).await?;
        members_from(body)
    }

    /// `tags`: sets `set` and deletes `delete` on this agent in one update.
    pub async fn tags(
        &self,
        set: &BTreeMap<String, String>,
        delete: &[String],
    ) -> Result<(), SerfError> {
        let req = wire::Tags {
            tags: set,
            delete_tags: delete,
        };
        self.call("tags", Some(&req), false).await.map(|_| ())
    }

    /// `join`: joins the agents at `addrs` (`host:port`); returns how many were joined.
    /// `replay` replays past user events.
    pub async fn join(&self, addrs: &[String], replay: bool) -> Result<u32, SerfError> {
        let req = wire::Join {
            existing: addrs,
            replay,
        };
        let body = self.call("join", Some(&req), true).await?;
        let r: wire::JoinResponse = from_value(
            body.ok_or_else(|| SerfError::protocol("join response without body"))?,
            "join response",
        )?;
        Ok(r.num.max(0) as u32)
    }

    /// `force-leave`: marks a failed member as left. (serf 0.10.1 answers with a header
    /// only; later versions that add a body are not supported by this call.)
    pub async fn force_leave(&self, node: &str) -> Result<(), SerfError> {
        let req = wire::ForceLeave { node };
        self.call("force-leave", Some(&req), false)
            .await
            .map(|_| ())
    }

    /// `leave`: the agent leaves the cluster gracefully **and shuts down**.
    pub async fn leave(&self) -> Result<(), SerfError> {
        self.call::<()>("leave", None, false).await.map(|_| ())
    }

    /// `event`: fires a user event.
    pub async fn event(&self, name: &str, payload: &[u8], coalesce: bool) -> Result<(), SerfError> {
        let req = wire::Event {
            name,
            payload,
            coalesce,
        };
        self.call("event", Some(&req), false).await.map(|_| ())
    }

    /// `respond`: answers a query received through [`SerfClient::stream`].
    pub async fn respond(&self, id: u64, payload: &[u8]) -> Result<(), SerfError> {
        let req = wire::Respond { id, payload };
        self.call("respond", Some(&req), false).await.map(|_| ())
    }

    /// `stats`: the agent's statistics (`agent.name`, `serf.members`, ...).
    pub async fn stats(&self) -> Result<BTreeMap<String, BTreeMap<String, String>>, SerfError> {
        let body = self.call::<()>("stats", None, true).await?;
        from_value(
            body.ok_or_else(|| SerfError::protocol("stats response without body"))?,
            "stats",
        )
    }

    /// The agent's own node name (`stats` → `agent.name`).
    pub async fn agent_name(&self) -> Result<String, SerfError> {
        self.stats()
            .await?
            .get("agent")
            .and_then(|a| a.get("name"))
            .cloned()
            .ok_or_else(|| SerfError::protocol("stats without agent.name"))
    }

    /// Sends a command that takes no body and expects no body, by name. For commands this
    /// client does not wrap, and to probe the agent: an unknown command yields
    /// [`SerfError::Agent`] with `Unsupported command`, and the connection is replaced.
    pub async fn command_without_body(&self, command: &str) -> Result<(), SerfError> {
        self.call::<()>(command, None, false).await.map(|_| ())
    }

    /// Starts a stream-type command and returns its record receiver.
    async fn start_stream<B: Serialize>(
        &self,
        command: &str,
        body: &B,
        ends_on_done: bool,
        deadline: Instant,
    ) -> Result<(Arc<Conn>, u64, mpsc::UnboundedReceiver<rmpv::Value>), SerfError> {
        let r = tokio::time::timeout_at(deadline, async {
            let conn = self.connection(deadline).await?;
            let seq = self.next_seq();
            let (tx, rx) = oneshot::channel();
            let (records_tx, records_rx) = mpsc::unbounded_channel();
            conn.register(
                seq,
                Waiter::Stream {
                    command: command.to_owned(),
                    started: Some(tx),
                    records: records_tx,
                    ends_on_done,
                },
            )?;
            let mut bytes = Vec::with_capacity(64);
            encode(&mut bytes, &wire::RequestHeader { command, seq });
            encode(&mut bytes, body);
            conn.write(&bytes).await?;
            let reply = rx.await.unwrap_or_else(|_| {
                Err(SerfError::ConnectionClosed {
                    addr: conn.addr.clone(),
                    command: Some(command.to_owned()),
                })
            })?;
            check_reply(command, reply)?;
            Ok((conn, seq, records_rx))
        })
        .await;
        r.unwrap_or_else(|_| {
            Err(SerfError::Timeout {
                command: command.to_owned(),
            })
        })
    }

    /// `query`: sends a query; the returned stream yields acks and responses until the
    /// query's deadline.
    pub async fn query(&self, params: &QueryParams) -> Result<QueryStream, SerfError> {
        let req = wire::Query {
            filter_nodes: &params.filter_nodes,
            filter_tags: &params.filter_tags,
            request_ack: params.request_ack,
            relay_factor: params.relay_factor,
            timeout: params
                .timeout
                .map(|t| t.as_nanos().min(i64::MAX as u128) as u64)
                .unwrap_or(0),
            name: &params.name,
            payload: &params.payload,
        };
        let (conn, _seq, rx) = self
            .start_stream("query", &req, true, self.deadline())
            .await?;
        Ok(QueryStream {
            rx,
            addr: conn.addr.clone(),
            done: false,
        })
    }

    /// `stream`: subscribes to events. `filter` is Serf's event filter
    /// (`*`, `member-join,user:deploy`, `query`, ...). The stream survives agent restarts
    /// (see [`StreamEvent::Resynced`]); dropping it sends `stop`.
    pub async fn stream(&self, filter: &str) -> Result<EventStream, SerfError> {
        let (conn, seq, rx) = self
            .start_stream(
                "stream",
                &wire::Stream { kind: filter },
                false,
                self.deadline(),
            )
            .await?;
        Ok(EventStream {
            client: self.clone(),
            filter: filter.to_owned(),
            conn: Some(conn),
            seq,
            rx,
            ended: false,
        })
    }
}

impl Conn {
    /// Closes the socket (aborting the reader) and fails every pending request.
    fn shutdown(&self) {
        if let Some(h) = self.reader.lock().unwrap_or_else(|e| e.into_inner()).take() {
            h.abort();
        }
        self.close();
    }

    /// Stops an event stream: its late records are discarded.
    fn stop_stream(self: &Arc<Self>, client: &SerfClient, seq: u64) {
        if self.is_closed() {
            return;
        }
        {
            let mut p = self.pending();
            if p.contains_key(&seq) {
                p.insert(seq, Waiter::Discard);
            }
        }
        let conn = self.clone();
        let client = client.clone();
        constructr_core::plumbing::spawn_background(async move {
            let _ = tokio::time::timeout(
                client.inner.config.request_timeout,
                client.send_on(&conn, "stop", Some(&wire::Stop { stop: seq }), false),
            )
            .await;
        });
    }
}

fn check_reply(command: &str, reply: Reply) -> Result<Option<rmpv::Value>, SerfError> {
    if reply.error.is_empty() {
        return Ok(reply.body);
    }
    if reply.error == AUTH_REQUIRED || reply.error == INVALID_AUTH {
        return Err(SerfError::Unauthorized {
            message: reply.error,
        });
    }
    Err(SerfError::Agent {
        command: command.to_owned(),
        message: reply.error,
    })
}

fn members_from(body: Option<rmpv::Value>) -> Result<Vec<Member>, SerfError> {
    let r: wire::MembersResponse = from_value(
        body.ok_or_else(|| SerfError::protocol("members response without body"))?,
        "members response",
    )?;
    r.members.into_iter().map(Member::from_wire).collect()
}
