//! The bridge: an HTTP service (axum) that turns the handler's calls into typed events for
//! the application, and keeps a datacenter-aware membership view.
//!
//! # Endpoints (serf-scala-bridge's, unchanged, plus events, queries and reads)
//! | request                                   | effect                         | answer |
//! |-------------------------------------------|--------------------------------|--------|
//! | `POST /dc/{dc}/members` + member JSON     | [`BridgeEvent::MemberJoined`]  | 201, `Location: /dc/{dc}/members/{name}`, the member |
//! | `PUT /dc/{dc}/members/{name}` + JSON      | [`BridgeEvent::MemberUpdated`] (suppressed if nothing changed) | 200, the member |
//! | `DELETE /dc/{dc}/members/{name}` [+ JSON] | [`BridgeEvent::MemberLeft`]    | 204    |
//! | `DELETE /dc/{dc}/members/{name}?reap=true`| [`BridgeEvent::MemberReaped`]  | 204    |
//! | `POST /dc/{dc}/failures` + member JSON    | [`BridgeEvent::MemberFailed`]  | 204    |
//! | `POST /dc/{dc}/events/{name}?ltime=N`     | [`BridgeEvent::UserEvent`] (body = payload) | 204 |
//! | `POST /dc/{dc}/queries/{name}?ltime=N`    | [`BridgeEvent::Query`]; the first answer is the response body | 200; 503 without subscribers; 504 if nobody answers in time |
//! | `GET /dc/{dc}/members`                    | —                              | 200, `[member + "status"]` |
//! | `GET /members`                            | —                              | 200, `{dc: [member + "status"]}` |
//!
//! Member JSON is `{"name","address","role","tags":{...}}`. A member whose body carries the
//! dc tag (configurable, default `dc`) must be posted under that dc. Malformed JSON, a name
//! that does not match the path, unknown paths and methods get a 4xx with
//! `{"error": "..."}`; bodies over the limit (default 64 KiB) get 413.
//!
//! # Delivery
//! Every [`Bridge::subscribe`]r gets every event, in order, through a bounded tokio channel
//! (the Rust counterpart of serf-scala-bridge's actor references). A subscriber that stays
//! full for [`BridgeConfig::delivery_timeout`] makes the request fail with 503, so the
//! handler retries and Serf logs the failure: events are not dropped silently. A dropped
//! receiver unsubscribes.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use derive_setters::Setters;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::handler::encode_segment;
use crate::protocol::MemberInfo;
use crate::quorum::{Quorum, QuorumChange, QuorumConfig, QuorumInput, QuorumView};

/// Settings of the bridge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Setters)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
#[setters(prefix = "with_")]
#[non_exhaustive]
pub struct BridgeConfig {
    /// The tag that holds a member's datacenter. Default `dc`.
    #[setters(into)]
    pub dc_tag: String,
    /// How long a query waits for a subscriber's answer. Default 2 s (keep it below the
    /// handler's `--timeout` and Serf's query timeout).
    #[serde(with = "humantime_serde")]
    pub query_timeout: Duration,
    /// How long a full subscriber may hold up a request before it fails with 503. Default 2 s.
    #[serde(with = "humantime_serde")]
    pub delivery_timeout: Duration,
    /// Queue length per subscriber. Default 1024.
    pub subscriber_capacity: usize,
    /// Largest accepted request body in bytes. Default 64 KiB.
    pub body_limit: usize,
    /// This node's datacenter: when set, the bridge keeps the datacenter quorum
    /// ([`crate::quorum`]), serves it as `GET /quorum` and reports its changes as
    /// [`BridgeEvent::QuorumChanged`]. Default: no quorum.
    #[setters(strip_option, into)]
    pub quorum_dc: Option<String>,
    /// Quorum: how long three or more datacenters hold quorum before `high-available`.
    /// Default 60 s.
    #[serde(with = "humantime_serde")]
    pub quorum_ha_after: Duration,
    /// Quorum: how long a failed member still counts its datacenter as active. Default 60 s.
    #[serde(with = "humantime_serde")]
    pub quorum_failure_grace: Duration,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        Self {
            dc_tag: "dc".into(),
            query_timeout: Duration::from_secs(2),
            delivery_timeout: Duration::from_secs(2),
            subscriber_capacity: 1024,
            body_limit: 64 * 1024,
            quorum_dc: None,
            quorum_ha_after: Duration::from_secs(60),
            quorum_failure_grace: Duration::from_secs(60),
        }
    }
}

/// Whether a member is alive or failed, in the membership view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Joined (or updated) and not failed since.
    Alive,
    /// Reported failed; removed when it leaves or is reaped, alive again if it rejoins.
    Failed,
}

/// A member in the membership view.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    /// The member.
    #[serde(flatten)]
    pub member: MemberInfo,
    /// Alive or failed.
    pub status: MemberState,
}

/// An event for the application.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum BridgeEvent {
    /// `member-join`.
    MemberJoined {
        /// Datacenter.
        dc: String,
        /// The member.
        member: MemberInfo,
    },
    /// `member-update` that changed the member's address, role or tags.
    MemberUpdated {
        /// Datacenter.
        dc: String,
        /// The member, as it is now.
        member: MemberInfo,
    },
    /// `member-leave`.
    MemberLeft {
        /// Datacenter.
        dc: String,
        /// The member.
        member: MemberInfo,
    },
    /// `member-failed`.
    MemberFailed {
        /// Datacenter.
        dc: String,
        /// The member.
        member: MemberInfo,
    },
    /// `member-reap`.
    MemberReaped {
        /// Datacenter.
        dc: String,
        /// The member.
        member: MemberInfo,
    },
    /// A user event.
    UserEvent {
        /// Datacenter of the receiving agent.
        dc: String,
        /// Event name.
        name: String,
        /// Lamport time.
        ltime: u64,
        /// Payload.
        payload: Bytes,
    },
    /// A query: answer with [`Query::respond`].
    Query(Query),
    /// The datacenter quorum changed state (only with [`BridgeConfig::quorum_dc`]).
    QuorumChanged(QuorumChange),
}

/// A query waiting for an answer. Clones share the responder: the first answer wins.
#[derive(Clone, Debug)]
pub struct Query {
    /// Datacenter of the receiving agent.
    pub dc: String,
    /// Query name.
    pub name: String,
    /// Lamport time.
    pub ltime: u64,
    /// Payload.
    pub payload: Bytes,
    /// The bridge's id of this query: `POST /queries/{id}/response` answers it.
    pub id: u64,
    responder: Arc<Mutex<Option<oneshot::Sender<Bytes>>>>,
}

impl Query {
    /// Answers the query (the bytes become this node's Serf response, truncated by the
    /// handler to fit Serf's 1 KiB limit). Returns false if it was answered already or has
    /// timed out.
    pub fn respond(&self, answer: impl Into<Bytes>) -> bool {
        let tx = self
            .responder
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        tx.is_some_and(|tx| tx.send(answer.into()).is_ok())
    }
}

struct Inner {
    config: BridgeConfig,
    subscribers: Mutex<Vec<mpsc::Sender<BridgeEvent>>>,
    view: RwLock<View>,
    /// Queries waiting for an answer, by id (answerable over HTTP until they time out).
    queries: Mutex<HashMap<u64, Query>>,
    next_query: AtomicU64,
    quorum: Option<Mutex<Quorum>>,
    /// Wakes the quorum timer when the membership changed.
    quorum_changed: tokio::sync::Notify,
}

/// The bridge: membership view, subscribers, and the HTTP routes. Cheap to clone.
///
/// ```no_run
/// # async fn demo() -> std::io::Result<()> {
/// use constructr_serf::bridge::{Bridge, BridgeConfig, BridgeEvent};
///
/// let bridge = Bridge::new(BridgeConfig::default());
/// let mut events = bridge.subscribe();
/// tokio::spawn(async move {
///     while let Some(event) = events.recv().await {
///         match event {
///             BridgeEvent::MemberJoined { dc, member } => println!("{} joined {dc}", member.name),
///             BridgeEvent::Query(q) => { q.respond("ok"); }
///             _ => {}
///         }
///     }
/// });
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8888").await?;
/// bridge.serve(listener, std::future::pending()).await
/// # }
/// ```
#[derive(Clone)]
pub struct Bridge {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridge")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Bridge {
    /// A bridge with no subscribers and an empty view.
    pub fn new(config: BridgeConfig) -> Self {
        let quorum = config.quorum_dc.as_ref().map(|dc| {
            let mut q = QuorumConfig::new(dc.clone());
            q.ha_after = config.quorum_ha_after;
            q.failure_grace = config.quorum_failure_grace;
            Mutex::new(Quorum::new(q, Instant::now()))
        });
        Self {
            inner: Arc::new(Inner {
                config,
                subscribers: Mutex::new(Vec::new()),
                view: RwLock::new(BTreeMap::new()),
                queries: Mutex::new(HashMap::new()),
                next_query: AtomicU64::new(1),
                quorum,
                quorum_changed: tokio::sync::Notify::new(),
            }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &BridgeConfig {
        &self.inner.config
    }

    /// A new subscriber: receives every event from now on.
    pub fn subscribe(&self) -> mpsc::Receiver<BridgeEvent> {
        let (tx, rx) = mpsc::channel(self.inner.config.subscriber_capacity.max(1));
        self.subscribers().push(tx);
        rx
    }

    fn queries(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Query>> {
        self.inner.queries.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn subscribers(&self) -> std::sync::MutexGuard<'_, Vec<mpsc::Sender<BridgeEvent>>> {
        self.inner
            .subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The membership view: dc → members (alive and failed), by name.
    pub fn members(&self) -> BTreeMap<String, Vec<MemberView>> {
        self.inner
            .view
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(dc, ms)| (dc.clone(), ms.values().cloned().collect()))
            .collect()
    }

    /// The members of one datacenter (empty for an unknown one).
    pub fn members_in(&self, dc: &str) -> Vec<MemberView> {
        self.inner
            .view
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(dc)
            .map(|ms| ms.values().cloned().collect())
            .unwrap_or_default()
    }

    fn with_view<T>(&self, f: impl FnOnce(&mut View) -> T) -> T {
        f(&mut self.inner.view.write().unwrap_or_else(|e| e.into_inner()))
    }

    /// Records `member` in datacenter `dc` of the membership view with `status`.
    fn set_member(&self, dc: &str, member: &MemberInfo, status: MemberState) {
        self.with_view(|v| place(v, dc, member, status));
    }

    /// Makes the view Serf's truth: `members` as the agent lists them (`SerfClient::members`)
    /// become the whole view (alive and leaving members alive, failed ones failed, left
    /// ones gone; the datacenter from the dc tag, else `default_dc`), and subscribers get an
    /// event for every difference the view had (a join, failure, update or leave they
    /// missed, e.g. while the bridge restarted). Returns how many members changed.
    pub async fn reconcile(&self, members: &[crate::client::Member], default_dc: &str) -> usize {
        use crate::client::MemberStatus;
        let dc_tag = self.inner.config.dc_tag.clone();
        let mut truth = View::new();
        for m in members {
            let status = match m.status {
                MemberStatus::Alive | MemberStatus::Leaving => MemberState::Alive,
                MemberStatus::Failed => MemberState::Failed,
                _ => continue,
            };
            let info = MemberInfo {
                name: m.name.clone(),
                address: m.addr.to_string(),
                role: m.tags.get("role").cloned().unwrap_or_default(),
                tags: m.tags.clone(),
            };
            let dc = m
                .tags
                .get(&dc_tag)
                .filter(|dc| !dc.is_empty())
                .map_or(default_dc, String::as_str);
            place(&mut truth, dc, &info, status);
        }
        let old = self.with_view(|v| std::mem::replace(v, truth.clone()));
        self.update_quorum().await;
        let events = differences(&old, &truth);
        let changed = events.len();
        for e in events {
            if let Err(e) = self.deliver(e).await {
                tracing::warn!(error = %e.message, "a reconciled change was not delivered");
            }
        }
        changed
    }

    /// Keeps the view equal to what the agent at `client` reports: reconciles at once and
    /// then every `interval` (each time over the client's connection, which reconnects on
    /// its own after the agent restarted). Runs until dropped; failures are logged.
    pub async fn follow_agent(
        self,
        client: crate::client::SerfClient,
        default_dc: String,
        interval: Duration,
    ) {
        loop {
            match client.members().await {
                Ok(members) => {
                    let changed = self.reconcile(&members, &default_dc).await;
                    if changed > 0 {
                        tracing::info!(changed, "membership view reconciled with the agent");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot list the agent's members"),
            }
            tokio::time::sleep(interval).await;
        }
    }

    /// The datacenter quorum now, if this bridge keeps one ([`BridgeConfig::quorum_dc`]).
    pub fn quorum(&self) -> Option<QuorumView> {
        let q = self.inner.quorum.as_ref()?;
        Some(
            q.lock()
                .unwrap_or_else(|e| e.into_inner())
                .view(Instant::now()),
        )
    }

    /// Feeds the view to the quorum; a change is delivered as an event.
    async fn update_quorum(&self) {
        let Some(q) = &self.inner.quorum else {
            return;
        };
        let change = {
            let view = self.inner.view.read().unwrap_or_else(|e| e.into_inner());
            let members = view.iter().flat_map(|(dc, ms)| {
                ms.values().map(move |m| {
                    (
                        dc.as_str(),
                        m.member.name.as_str(),
                        m.status == MemberState::Alive,
                    )
                })
            });
            q.lock()
                .unwrap_or_else(|e| e.into_inner())
                .observe(Instant::now(), members)
        };
        self.inner.quorum_changed.notify_one();
        if let Some(change) = change {
            tracing::info!(from = ?change.from, to = ?change.to, "datacenter quorum changed");
            if let Err(e) = self.deliver(BridgeEvent::QuorumChanged(change)).await {
                tracing::warn!(error = %e.message, "a quorum change was not delivered");
            }
        }
    }

    /// Runs the quorum's timers (failure graces, the way to `high-available`): ticks it when
    /// [`Quorum::poll_timeout`] says. [`Bridge::serve`] runs it; an application that mounts
    /// [`Bridge::router`] itself spawns it. Returns at once without a quorum.
    pub async fn quorum_timer(self) {
        let Some(q) = &self.inner.quorum else {
            return;
        };
        loop {
            let next = q.lock().unwrap_or_else(|e| e.into_inner()).poll_timeout();
            let changed = self.inner.quorum_changed.notified();
            match next {
                Some(at) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(at.into()) => {}
                        () = changed => continue,
                    }
                }
                None => {
                    changed.await;
                    continue;
                }
            }
            let change = q
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .step(Instant::now(), QuorumInput::Tick);
            if let Some(change) = change {
                tracing::info!(from = ?change.from, to = ?change.to, "datacenter quorum changed");
                if let Err(e) = self.deliver(BridgeEvent::QuorumChanged(change)).await {
                    tracing::warn!(error = %e.message, "a quorum change was not delivered");
                }
            }
        }
    }

    /// Delivers to every subscriber; fails if one stays full beyond the delivery timeout.
    async fn deliver(&self, event: BridgeEvent) -> Result<(), ApiError> {
        let subs: Vec<_> = self.subscribers().clone();
        let mut closed = false;
        for s in subs {
            match tokio::time::timeout(self.inner.config.delivery_timeout, s.send(event.clone()))
                .await
            {
                Ok(Ok(())) => {}
                Ok(Err(_)) => closed = true,
                Err(_) => {
                    return Err(ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "a subscriber's queue is full; retry later",
                    ));
                }
            }
        }
        if closed {
            self.subscribers().retain(|s| !s.is_closed());
        }
        Ok(())
    }

    /// The HTTP routes (mount them into your own server, or use [`Bridge::serve`]).
    pub fn router(&self) -> Router {
        Router::new()
            .route("/members", get(all_members))
            .route("/dc/{dc}/members", post(member_joined).get(dc_members))
            .route(
                "/dc/{dc}/members/{name}",
                put(member_updated).delete(member_removed),
            )
            .route("/dc/{dc}/failures", post(member_failed))
            .route("/dc/{dc}/events/{name}", post(user_event))
            .route("/dc/{dc}/queries/{name}", post(query))
            .route("/events", get(event_stream))
            .route("/quorum", get(quorum_view))
            .route("/queries/{id}/response", post(query_response))
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .route_layer(axum::middleware::from_fn_with_state(
                self.clone(),
                refuse_other_dc_tag,
            ))
            .layer(DefaultBodyLimit::max(self.inner.config.body_limit))
            .with_state(self.clone())
    }

    /// Serves the routes on `listener` until `shutdown` resolves.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let timer = tokio::spawn(self.clone().quorum_timer());
        let served = axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await;
        timer.abort();
        served
    }
}

// ---------------------------------------------------------------------------------------
// Handlers.

struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
    fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no such endpoint: {method} {}", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}", uri.path()),
    )
}

fn parse_member(body: &[u8]) -> Result<MemberInfo, ApiError> {
    let m: MemberInfo = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad(format!("body is not a member JSON object: {e}")))?;
    if m.name.is_empty() {
        return Err(ApiError::bad("member name must not be empty"));
    }
    Ok(m)
}

/// The membership view: datacenter → member name → member.
type View = BTreeMap<String, BTreeMap<String, MemberView>>;

/// Takes member `name` out of the view, from whichever datacenter holds it (a Serf node
/// name is unique in its cluster); datacenters left empty are dropped.
fn unplace(v: &mut View, name: &str) -> Option<(String, MemberView)> {
    let dc = v.iter().find(|(_, ms)| ms.contains_key(name))?.0.clone();
    let members = v.get_mut(&dc)?;
    let old = members.remove(name)?;
    if members.is_empty() {
        v.remove(&dc);
    }
    Some((dc, old))
}

/// Puts `member` into datacenter `dc` with `status`, out of any other datacenter it was in
/// (a changed datacenter tag moves it); returns where it was and what it was.
fn place(
    v: &mut View,
    dc: &str,
    member: &MemberInfo,
    status: MemberState,
) -> Option<(String, MemberView)> {
    let old = unplace(v, &member.name);
    let view = MemberView {
        member: member.clone(),
        status,
    };
    v.entry(dc.to_owned())
        .or_default()
        .insert(member.name.clone(), view);
    old
}

/// Refuses a request from a handler that reads datacenters from another tag than this
/// bridge ([`crate::handler::DC_TAG_HEADER`]): its paths and this bridge's checks would
/// disagree about every member. Requests without the header (other clients) pass.
async fn refuse_other_dc_tag(
    State(b): State<Bridge>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Result<Response, ApiError> {
    let theirs = request.headers().get(crate::handler::DC_TAG_HEADER);
    let ours = &b.inner.config.dc_tag;
    match theirs {
        Some(tag) if tag.as_bytes() != ours.as_bytes() => Err(ApiError::bad(format!(
            "the handler reads datacenters from tag {:?}, this bridge from {ours:?}: \
             give both the same --dc-tag",
            String::from_utf8_lossy(tag.as_bytes())
        ))),
        _ => Ok(next.run(request).await),
    }
}

/// The events that turn view `old` into view `new`, member by member.
fn differences(old: &View, new: &View) -> Vec<BridgeEvent> {
    let find = |v: &View, name: &str| {
        v.iter()
            .find_map(|(dc, ms)| ms.get(name).map(|m| (dc.clone(), m.clone())))
    };
    let mut events = Vec::new();
    for (dc, members) in new {
        for (name, now) in members {
            let member = now.member.clone();
            let dc = dc.clone();
            let event = match (find(old, name), now.status) {
                (Some((old_dc, was)), _) if old_dc == dc && was == *now => continue,
                // Changed tags, or a changed dc tag that moved it (as a PUT would).
                (Some((_, was)), MemberState::Alive) if was.status == MemberState::Alive => {
                    BridgeEvent::MemberUpdated { dc, member }
                }
                (_, MemberState::Failed) => BridgeEvent::MemberFailed { dc, member },
                (_, MemberState::Alive) => BridgeEvent::MemberJoined { dc, member },
            };
            events.push(event);
        }
    }
    for (dc, members) in old {
        for (name, was) in members {
            if find(new, name).is_none() {
                let (dc, member) = (dc.clone(), was.member.clone());
                events.push(BridgeEvent::MemberLeft { dc, member });
            }
        }
    }
    events
}

fn check_dc(bridge: &Bridge, dc: &str, m: &MemberInfo) -> Result<(), ApiError> {
    match m.tags.get(&bridge.inner.config.dc_tag) {
        Some(tag) if !tag.is_empty() && tag != dc => Err(ApiError::bad(format!(
            "member {} has {}={tag} but was posted under /dc/{dc}",
            m.name, bridge.inner.config.dc_tag
        ))),
        _ => Ok(()),
    }
}

fn query_param<'a>(raw: &'a Option<String>, key: &str) -> Option<&'a str> {
    raw.as_deref()?
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

fn ltime(raw: &Option<String>) -> Result<u64, ApiError> {
    match query_param(raw, "ltime") {
        None => Ok(0),
        Some(v) => v
            .parse()
            .map_err(|_| ApiError::bad(format!("ltime must be a number, got {v:?}"))),
    }
}

async fn member_joined(
    State(b): State<Bridge>,
    Path(dc): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let m = parse_member(&body)?;
    check_dc(&b, &dc, &m)?;
    b.set_member(&dc, &m, MemberState::Alive);
    b.update_quorum().await;
    b.deliver(BridgeEvent::MemberJoined {
        dc: dc.clone(),
        member: m.clone(),
    })
    .await?;
    let location = format!(
        "/dc/{}/members/{}",
        encode_segment(&dc),
        encode_segment(&m.name)
    );
    let mut resp = (StatusCode::CREATED, axum::Json(m)).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

async fn member_updated(
    State(b): State<Bridge>,
    Path((dc, name)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let m = parse_member(&body)?;
    if m.name != name {
        return Err(ApiError::bad(format!(
            "path names member {name:?} but the body names {:?}",
            m.name
        )));
    }
    check_dc(&b, &dc, &m)?;
    let changed = b.with_view(|v| {
        let old = place(v, &dc, &m, MemberState::Alive);
        old.is_none_or(|(old_dc, old)| {
            old_dc != dc || old.member != m || old.status != MemberState::Alive
        })
    });
    b.update_quorum().await;
    if changed {
        b.deliver(BridgeEvent::MemberUpdated {
            dc,
            member: m.clone(),
        })
        .await?;
    }
    Ok((StatusCode::OK, axum::Json(m)).into_response())
}

async fn member_removed(
    State(b): State<Bridge>,
    Path((dc, name)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let reap = match query_param(&raw, "reap") {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::bad(format!(
                "reap must be true or false, got {other:?}"
            )));
        }
    };
    let from_body = if body.is_empty() {
        None
    } else {
        let m = parse_member(&body)?;
        if m.name != name {
            return Err(ApiError::bad(format!(
                "path names member {name:?} but the body names {:?}",
                m.name
            )));
        }
        Some(m)
    };
    // Wherever the view has it: a member is in one datacenter, and the one it left
    // under may be its older one (Serf sends the event with the current tags).
    let known = b.with_view(|v| unplace(v, &name)).map(|(_, old)| old);
    b.update_quorum().await;
    let member = from_body
        .or(known.map(|k| k.member))
        .unwrap_or_else(|| MemberInfo {
            name: name.clone(),
            address: String::new(),
            role: String::new(),
            tags: BTreeMap::new(),
        });
    let event = if reap {
        BridgeEvent::MemberReaped { dc, member }
    } else {
        BridgeEvent::MemberLeft { dc, member }
    };
    b.deliver(event).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn member_failed(
    State(b): State<Bridge>,
    Path(dc): Path<String>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let m = parse_member(&body)?;
    check_dc(&b, &dc, &m)?;
    b.set_member(&dc, &m, MemberState::Failed);
    b.update_quorum().await;
    b.deliver(BridgeEvent::MemberFailed { dc, member: m })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn user_event(
    State(b): State<Bridge>,
    Path((dc, name)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let ltime = ltime(&raw)?;
    b.deliver(BridgeEvent::UserEvent {
        dc,
        name,
        ltime,
        payload: body,
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Takes a waiting query out of the bridge's table when its request ends.
struct PendingQuery<'a> {
    bridge: &'a Bridge,
    id: u64,
}

impl Drop for PendingQuery<'_> {
    fn drop(&mut self) {
        self.bridge.queries().remove(&self.id);
    }
}

async fn query(
    State(b): State<Bridge>,
    Path((dc, name)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let ltime = ltime(&raw)?;
    if b.subscribers().iter().all(|s| s.is_closed()) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no subscriber to answer queries",
        ));
    }
    let (tx, rx) = oneshot::channel();
    let id = b.inner.next_query.fetch_add(1, Ordering::Relaxed);
    let q = Query {
        dc,
        name: name.clone(),
        ltime,
        payload: body,
        id,
        responder: Arc::new(Mutex::new(Some(tx))),
    };
    // The bridge keeps a clone until the timeout: a subscriber that only prints the query
    // (or an SSE client) can still answer it over HTTP. Removed however this ends (also
    // when the handler hangs up).
    b.queries().insert(id, q.clone());
    let _pending = PendingQuery { bridge: &b, id };
    b.deliver(BridgeEvent::Query(q)).await?;
    match tokio::time::timeout(b.inner.config.query_timeout, rx).await {
        Ok(Ok(answer)) => Ok((
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/octet-stream")],
            answer,
        )
            .into_response()),
        // Every clone of the responder was dropped unanswered, or time ran out.
        _ => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "no subscriber answered query {name:?} within {:?}",
                b.inner.config.query_timeout
            ),
        )),
    }
}

/// `GET /events`: every event from now on as server-sent events, one JSON object each
/// ([`event_json`]; the SSE event name is its `event` field). Queries carry their `id`.
async fn event_stream(
    State(b): State<Bridge>,
) -> axum::response::Sse<
    impl tokio_stream::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>,
> {
    use tokio_stream::StreamExt as _;
    let events = tokio_stream::wrappers::ReceiverStream::new(b.subscribe()).map(|e| {
        let json = event_json(&e);
        let name = json["event"].as_str().unwrap_or("event").to_owned();
        let sse = axum::response::sse::Event::default().event(name);
        // A `serde_json::Value` always serializes.
        Ok(sse.json_data(&json).unwrap_or_default())
    });
    axum::response::Sse::new(events).keep_alive(axum::response::sse::KeepAlive::default())
}

/// `POST /queries/{id}/response`: the body answers query `id` (204); 404 if no such query
/// waits (answered, timed out, or never asked), 409 if it was answered already.
async fn query_response(
    State(b): State<Bridge>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let id: u64 = id
        .parse()
        .map_err(|_| ApiError::bad(format!("query id must be a number, got {id:?}")))?;
    let Some(q) = b.queries().get(&id).cloned() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no query {id} is waiting (answered, timed out or unknown)"),
        ));
    };
    if q.respond(body) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("query {id} was answered already"),
        ))
    }
}

/// `GET /quorum`: the state with the known and active datacenters; 404 if this bridge
/// keeps no quorum.
async fn quorum_view(State(b): State<Bridge>) -> Result<axum::Json<QuorumView>, ApiError> {
    b.quorum().map(axum::Json).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "this bridge keeps no quorum (start it with --quorum DC)",
        )
    })
}

async fn all_members(State(b): State<Bridge>) -> axum::Json<BTreeMap<String, Vec<MemberView>>> {
    axum::Json(b.members())
}

async fn dc_members(
    State(b): State<Bridge>,
    Path(dc): Path<String>,
) -> axum::Json<Vec<MemberView>> {
    axum::Json(b.members_in(&dc))
}

/// An event as one JSON object (what `constructr serf-bridge` prints).
pub fn event_json(e: &BridgeEvent) -> serde_json::Value {
    use serde_json::json;
    let member =
        |kind: &str, dc: &str, m: &MemberInfo| json!({"event": kind, "dc": dc, "member": m});
    match e {
        BridgeEvent::MemberJoined { dc, member: m } => member("member-joined", dc, m),
        BridgeEvent::MemberUpdated { dc, member: m } => member("member-updated", dc, m),
        BridgeEvent::MemberLeft { dc, member: m } => member("member-left", dc, m),
        BridgeEvent::MemberFailed { dc, member: m } => member("member-failed", dc, m),
        BridgeEvent::MemberReaped { dc, member: m } => member("member-reaped", dc, m),
        BridgeEvent::UserEvent {
            dc,
            name,
            ltime,
            payload,
        } => json!({"event": "user", "dc": dc, "name": name, "ltime": ltime,
                    "payload": String::from_utf8_lossy(payload)}),
        BridgeEvent::QuorumChanged(c) => json!({"event": "quorum", "from": c.from, "to": c.to}),
        BridgeEvent::Query(q) => json!({"event": "query", "id": q.id, "dc": q.dc,
                    "name": q.name, "ltime": q.ltime,
                    "payload": String::from_utf8_lossy(&q.payload)}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(entries: &[(&str, &str, &str, MemberState)]) -> View {
        let mut v = View::new();
        for (dc, name, version, status) in entries {
            let member = MemberInfo {
                name: (*name).into(),
                address: "10.0.0.1".into(),
                role: String::new(),
                tags: BTreeMap::from([("version".to_owned(), (*version).to_owned())]),
            };
            place(&mut v, dc, &member, *status);
        }
        v
    }

    /// What a bridge missed while it was down reaches the subscribers on reconciliation:
    /// one event per member that differs, none for the unchanged.
    #[test]
    fn differences_are_one_event_per_changed_member() {
        use MemberState::{Alive, Failed};
        let old = view(&[
            ("dc1", "same", "1", Alive),
            ("dc1", "gone", "1", Alive),
            ("dc1", "retagged", "1", Alive),
            ("dc1", "moved", "1", Alive),
            ("dc1", "back", "1", Failed),
        ]);
        let new = view(&[
            ("dc1", "same", "1", Alive),
            ("dc1", "retagged", "2", Alive),
            ("dc2", "moved", "1", Alive),
            ("dc1", "back", "1", Alive),
            ("dc1", "failing", "1", Failed),
            ("dc3", "new", "1", Alive),
        ]);
        let mut got: Vec<String> = differences(&old, &new)
            .iter()
            .map(|e| {
                let json = event_json(e);
                format!(
                    "{} {} {}",
                    json["event"], json["dc"], json["member"]["name"]
                )
            })
            .map(|s| s.replace('"', ""))
            .collect();
        got.sort();
        assert_eq!(
            got,
            [
                "member-failed dc1 failing",
                "member-joined dc1 back",
                "member-joined dc3 new",
                "member-left dc1 gone",
                "member-updated dc1 retagged",
                "member-updated dc2 moved",
            ]
        );
        assert!(differences(&new, &new).is_empty());
    }
}
