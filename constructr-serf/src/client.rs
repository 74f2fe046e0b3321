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

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::config::SerfConfig;
use crate::error::SerfError;
use crate::wire;

const HANDSHAKE_REQUIRED: &str = "Handshake required";
const AUTH_REQUIRED: &str = "Authentication required";
const INVALID_AUTH: &str = "Invalid authentication token";
const UNSUPPORTED_COMMAND: &str = "Unsupported command";

/// A member's status as Serf reports it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MemberStatus {
    /// Alive.
    Alive,
    /// Leaving gracefully.
    Leaving,
    /// Left gracefully.
    Left,
    /// Failed (unreachable).
    Failed,
    /// Anything else (`none`, or a status of a later Serf).
    Other(String),
}

impl MemberStatus {
    fn parse(s: &str) -> Self {
        match s {
            "alive" => Self::Alive,
            "leaving" => Self::Leaving,
            "left" => Self::Left,
            "failed" => Self::Failed,
            other => Self::Other(other.to_owned()),
        }
    }
}

/// A member of the Serf cluster, as the RPC reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The node name (unique in the Serf cluster).
    pub name: String,
    /// Its gossip address.
    pub addr: IpAddr,
    /// Its gossip port.
    pub port: u16,
    /// Its tags.
    pub tags: BTreeMap<String, String>,
    /// Its status.
    pub status: MemberStatus,
    /// Serf protocol versions `[min, max, current]`.
    pub protocol: [u8; 3],
    /// Delegate protocol versions `[min, max, current]`.
    pub delegate: [u8; 3],
}

impl Member {
    fn from_wire(m: wire::WireMember) -> Result<Self, SerfError> {
        let addr = match m.addr.len() {
            4 => IpAddr::V4(Ipv4Addr::new(m.addr[0], m.addr[1], m.addr[2], m.addr[3])),
            16 => {
                let octets: [u8; 16] = m.addr[..].try_into().expect("length checked");
                IpAddr::V6(Ipv6Addr::from(octets)).to_canonical()
            }
            n => {
                return Err(SerfError::protocol(format!(
                    "member {} has an address of {n} bytes",
                    m.name
                )));
            }
        };
        Ok(Self {
            name: m.name,
            addr,
            port: m.port,
            tags: m.tags.unwrap_or_default(),
            status: MemberStatus::parse(&m.status),
            protocol: [m.protocol_min, m.protocol_max, m.protocol_cur],
            delegate: [m.delegate_min, m.delegate_max, m.delegate_cur],
        })
    }
}

/// Filter of `members-filtered`. Every field is a Go regular expression that Serf anchors
/// (`^...$`); empty fields match everything. An invalid expression makes the agent close
/// the connection ([`SerfError::ConnectionClosed`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberFilter {
    /// Tag name → value expression; a member without the tag is matched against `""`.
    pub tags: BTreeMap<String, String>,
    /// Status expression (`alive`, `failed|left`, ...).
    pub status: String,
    /// Name expression.
    pub name: String,
}

/// Parameters of a query.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueryParams {
    /// The query name.
    pub name: String,
    /// The payload.
    pub payload: Vec<u8>,
    /// Only these nodes answer (empty: all).
    pub filter_nodes: Vec<String>,
    /// Only nodes whose tags match these expressions answer.
    pub filter_tags: BTreeMap<String, String>,
    /// Ask for acks (delivery confirmations) besides responses.
    pub request_ack: bool,
    /// How many extra nodes relay each response (0: none).
    pub relay_factor: u8,
    /// How long the query runs (`None`: the agent's default, which grows with the cluster).
    pub timeout: Option<Duration>,
}

/// A record of a running query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueryRecord {
    /// A node received the query (only with [`QueryParams::request_ack`]).
    Ack {
        /// The node.
        from: String,
    },
    /// A node responded.
    Response {
        /// The node.
        from: String,
        /// Its response.
        payload: Vec<u8>,
    },
}

/// Kinds of member events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MemberEventKind {
    /// `member-join`.
    Join,
    /// `member-leave`.
    Leave,
    /// `member-failed`.
    Failed,
    /// `member-update`.
    Update,
    /// `member-reap`.
    Reap,
}

impl MemberEventKind {
    /// Serf's name of the event (`member-join`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Join => "member-join",
            Self::Leave => "member-leave",
            Self::Failed => "member-failed",
            Self::Update => "member-update",
            Self::Reap => "member-reap",
        }
    }

    /// Parses Serf's name of the event.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "member-join" => Self::Join,
            "member-leave" => Self::Leave,
            "member-failed" => Self::Failed,
            "member-update" => Self::Update,
            "member-reap" => Self::Reap,
            _ => return None,
        })
    }
}

/// An event of a `stream` subscription.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamEvent {
    /// Members joined, left, failed, changed tags or were reaped.
    Member {
        /// Which event.
        kind: MemberEventKind,
        /// The members concerned.
        members: Vec<Member>,
    },
    /// A user event.
    User {
        /// Its name.
        name: String,
        /// Its Lamport time.
        ltime: u64,
        /// Its payload.
        payload: Vec<u8>,
        /// Whether Serf may coalesce it.
        coalesce: bool,
    },
    /// A query; answer it with [`SerfClient::respond`] and `id` (on the same connection,
    /// before the query's deadline).
    Query {
        /// The id to respond with.
        id: u64,
        /// Its name.
        name: String,
        /// Its Lamport time.
        ltime: u64,
        /// Its payload.
        payload: Vec<u8>,
    },
    /// The connection to the agent was re-established and the subscription renewed; events
    /// in between may have been missed. `members` is a full read to reconcile with.
    Resynced {
        /// All members the agent knows, right after re-subscribing.
        members: Vec<Member>,
    },
}

// ---------------------------------------------------------------------------------------
// Framing: complete msgpack values out of a byte stream.

struct FrameReader {
    rd: OwnedReadHalf,
    buf: Vec<u8>,
    start: usize,
}

impl FrameReader {
    async fn next_value(&mut self) -> std::io::Result<rmpv::Value> {
        loop {
            if self.start < self.buf.len() {
                let mut cur = &self.buf[self.start..];
                let before = cur.len();
                match rmpv::decode::read_value(&mut cur) {
                    Ok(v) => {
                        self.start += before - cur.len();
                        if self.start == self.buf.len() {
                            self.buf.clear();
                            self.start = 0;
                        }
                        return Ok(v);
                    }
                    Err(e) if is_eof(&e) => {}
                    Err(e) => {
                        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e));
                    }
                }
            }
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            self.buf.reserve(16 * 1024);
            if self.rd.read_buf(&mut self.buf).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
    }
}

fn is_eof(e: &rmpv::decode::Error) -> bool {
    match e {
        rmpv::decode::Error::InvalidMarkerRead(io) | rmpv::decode::Error::InvalidDataRead(io) => {
            io.kind() == std::io::ErrorKind::UnexpectedEof
        }
        _ => false,
    }
}

fn from_value<T: serde::de::DeserializeOwned>(v: rmpv::Value, what: &str) -> Result<T, SerfError> {
    rmpv::ext::from_value(v).map_err(|e| SerfError::protocol(format!("cannot decode {what}: {e}")))
}

// ---------------------------------------------------------------------------------------
// One connection.

struct Reply {
    error: String,
    body: Option<rmpv::Value>,
}

type RecordTx = mpsc::UnboundedSender<rmpv::Value>;

enum Waiter {
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

struct Conn {
    addr: String,
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Mutex<HashMap<u64, Waiter>>,
    closed: AtomicBool,
    reader: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(h) = self.reader.lock().unwrap_or_else(|e| e.into_inner()).take() {
            h.abort();
        }
    }
}

impl Conn {
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Waiter>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fails every pending request and marks the connection dead.
    fn close(&self) {
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

    fn register(&self, seq: u64, waiter: Waiter) -> Result<(), SerfError> {
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

    async fn write(&self, bytes: &[u8]) -> Result<(), SerfError> {
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

    async fn read_loop(self: Arc<Self>, mut frames: FrameReader) {
        let result = self.read_records(&mut frames).await;
        if let Err(e) = result
            && !self.is_closed()
        {
            tracing::debug!(addr = %self.addr, error = %e, "Serf RPC connection ended");
        }
        self.close();
    }

    async fn read_records(&self, frames: &mut FrameReader) -> Result<(), SerfError> {
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
                        started: Some(tx),
                        records,
                        ends_on_done,
                    }) => {
                        if header.error.is_empty() {
                            p.insert(
                                seq,
                                Waiter::Stream {
                                    command,
                                    started: None,
                                    records,
                                    ends_on_done,
                                },
                            );
                        }
                        Next::Started(tx)
                    }
                    Some(Waiter::Stream {
                        command,
                        started: None,
                        records,
                        ends_on_done,
                    }) => {
                        let tx = records.clone();
                        p.insert(
                            seq,
                            Waiter::Stream {
                                command,
                                started: None,
                                records,
                                ends_on_done,
                            },
                        );
                        Next::Record(Some(tx), ends_on_done)
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

fn is_done_record(v: &rmpv::Value) -> bool {
    v.as_map().is_some_and(|m| {
        m.iter()
            .any(|(k, v)| k.as_str() == Some("Type") && v.as_str() == Some("done"))
    })
}

fn encode<T: Serialize>(out: &mut Vec<u8>, value: &T) {
    // Encoding plain structs of strings, integers, maps and byte slices into a Vec cannot fail.
    rmp_serde::encode::write_named(out, value).expect("msgpack encoding into a Vec");
}

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

/// The acks and responses of one query. Ends (`None`) at the query's deadline.
#[derive(Debug)]
pub struct QueryStream {
    rx: mpsc::UnboundedReceiver<rmpv::Value>,
    addr: String,
    done: bool,
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
    client: SerfClient,
    filter: String,
    conn: Option<Arc<Conn>>,
    seq: u64,
    rx: mpsc::UnboundedReceiver<rmpv::Value>,
    ended: bool,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_use_named_pascal_case_fields_and_binary_payloads() {
        let mut out = Vec::new();
        encode(
            &mut out,
            &wire::Event {
                name: "deploy",
                payload: b"v1",
                coalesce: false,
            },
        );
        let v = rmpv::decode::read_value(&mut &out[..]).unwrap();
        let map = v.as_map().unwrap();
        let keys: Vec<_> = map.iter().map(|(k, _)| k.as_str().unwrap()).collect();
        assert_eq!(keys, ["Name", "Payload", "Coalesce"]);
        assert!(matches!(map[1].1, rmpv::Value::Binary(_)));
    }

    #[test]
    fn member_addresses_decode_from_4_and_16_bytes() {
        let mut w = wire::WireMember {
            name: "a".into(),
            addr: vec![127, 0, 0, 1],
            port: 7946,
            tags: None,
            status: "alive".into(),
            protocol_min: 1,
            protocol_max: 5,
            protocol_cur: 2,
            delegate_min: 2,
            delegate_max: 5,
            delegate_cur: 4,
        };
        let m = Member::from_wire(w.clone()).unwrap();
        assert_eq!(m.addr, IpAddr::from([127, 0, 0, 1]));
        assert!(m.tags.is_empty());
        w.addr = Ipv4Addr::new(10, 0, 0, 7)
            .to_ipv6_mapped()
            .octets()
            .to_vec();
        assert_eq!(
            Member::from_wire(w.clone()).unwrap().addr,
            IpAddr::from([10, 0, 0, 7])
        );
        w.addr = vec![1, 2, 3];
        assert!(Member::from_wire(w).is_err());
    }

    #[test]
    fn done_records_are_recognised() {
        let mut out = Vec::new();
        encode(
            &mut out,
            &serde_json::json!({"Type": "done", "From": "", "Payload": null}),
        );
        let v = rmpv::decode::read_value(&mut &out[..]).unwrap();
        assert!(is_done_record(&v));
    }
}
