//! # constructr-management
//!
//! The management HTTP endpoint of a constructr node (the counterpart of Akka Management's
//! health checks and cluster bootstrap routes), for probes, scrapes and operators:
//!
//! | route | answers |
//! |---|---|
//! | `GET /alive` | 200 while the node's machine runs (not stopped or failed), else 503 |
//! | `GET /ready` | 200 while the node is a registered member, a **degraded** one included (see [`Status::is_ready`]); else 503 with the state |
//! | `GET /bootstrap` | JSON: state and since when, transitions, retries, last error, failure, cluster id, last registry read (nodes, epoch), lock holder, last registration |
//! | `GET /members` | JSON: the live members as the cluster runtime sees them (501 if it does not tell) |
//! | `GET /metrics` | Prometheus/OpenMetrics text ([`Metrics`]) |
//!
//! Mount [`router`] into your own axum application, or run it alone with [`serve`]:
//!
//! ```
//! use std::sync::Arc;
//! use constructr_core::driver::Node;
//! use constructr_core::local::LocalCluster;
//! use constructr_core::memory::MemoryCoordination;
//! use constructr_core::{NodeId, Settings};
//! use constructr_management::Metrics;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let metrics = Metrics::new();
//! let me = NodeId::new("10.0.0.1:7946", 1);
//! let node = Node::builder()
//!     .settings(Settings::default())
//!     .address(me.clone())
//!     .coordination(Arc::new(MemoryCoordination::default()))
//!     .cluster(Arc::new(LocalCluster::new().node(me)))
//!     .observer(metrics.clone()) // counts requests, retries, transitions
//!     .spawn()?;
//! let app = constructr_management::router(node.monitor(), metrics);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! tokio::spawn(constructr_management::serve(listener, app, std::future::pending()));
//! # node.abort();
//! # Ok(())
//! # }
//! ```
//!
//! A Kubernetes pod probes it like this (liveness restarts a node whose machine ended;
//! readiness keeps traffic away from a node that is not yet a member):
//!
//! ```yaml
//! livenessProbe:
//!   httpGet: { path: /alive, port: 8558 }
//! readinessProbe:
//!   httpGet: { path: /ready, port: 8558 }
//! ```
#![deny(missing_docs)]

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, UNIX_EPOCH};

use axum::Router;
use axum::extract::State as Extract;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use constructr_core::driver::{Monitor, Observer, TimedEvent};
use constructr_core::status::{LockHolder, Request, Status};
use constructr_core::{Event, NodeId};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use serde_json::{Value, json};

/// The content type of `GET /metrics` for a client that accepts OpenMetrics (Prometheus
/// asks for it).
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The content type of `GET /metrics` for other clients (curl, `promtool check metrics`):
/// the Prometheus text format 0.0.4.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    operation: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabel {
    operation: &'static str,
}

fn latency_histogram() -> Histogram {
    // 1 ms to about 33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// The node's Prometheus metrics (prefix `constructr_`), kept with the `prometheus-client`
/// crate. It is an [`Observer`]: pass it to `Node::builder().observer(..)`, and to
/// [`router`] for `GET /metrics`.
///
/// | metric | type | labels |
/// |---|---|---|
/// | `constructr_state` | gauge, 1 for the current state | `state` |
/// | `constructr_state_transitions_total` | counter | `state` (the state entered) |
/// | `constructr_coordination_requests_total` | counter | `operation` (`get_nodes`, `lock`, `add_self`, `refresh`, `remove_self`, `wait_for_change`), `outcome` (`ok`, `unavailable`, `timeout`, `unauthorized`, `invalid`, `permanent`) |
/// | `constructr_coordination_request_duration_seconds` | histogram | `operation` |
/// | `constructr_cluster_calls_total` | counter | `operation` (`join`, `leave`), `outcome` (`ok`, `cluster_error`, `timeout`) |
/// | `constructr_retries_total` | counter | |
/// | `constructr_registered` | gauge, 1 while registered (degraded: 0) | |
/// | `constructr_ready` | gauge, what `GET /ready` answers | |
/// | `constructr_last_registration_age_seconds` | gauge, time since the registration was last written or refreshed (NaN before the first) | |
/// | `constructr_cluster_divergence` | gauge, 1 while the cluster runtime and the registry disagree for longer than an entry TTL (a second cluster may run; see `constructr_core::divergence`) | |
///
/// `wait_for_change` is a long poll: its duration is how long the node waited for a change.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    state: Family<StateLabel, Gauge>,
    transitions: Family<StateLabel, Counter>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<OperationLabel, Histogram, fn() -> Histogram>,
    cluster_calls: Family<RequestLabels, Counter>,
    retries: Counter,
    registered: Gauge,
    ready: Gauge,
    registration_age: Gauge<f64, AtomicU64>,
    divergence: Gauge,
}

impl Metrics {
    /// New metrics, all at zero.
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("constructr");
        let m = Metrics {
            state: Family::default(),
            transitions: Family::default(),
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            cluster_calls: Family::default(),
            retries: Counter::default(),
            registered: Gauge::default(),
            ready: Gauge::default(),
            registration_age: Gauge::default(),
            divergence: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("state", "The node's current state (1)", m.state.clone());
        registry.register(
            "state_transitions",
            "State changes, by the state entered",
            m.transitions.clone(),
        );
        registry.register(
            "coordination_requests",
            "Coordination requests, by operation and outcome",
            m.requests.clone(),
        );
        registry.register_with_unit(
            "coordination_request_duration",
            "Duration of coordination requests, by operation",
            Unit::Seconds,
            m.latency.clone(),
        );
        registry.register(
            "cluster_calls",
            "Calls to the cluster runtime (join, leave), by outcome",
            m.cluster_calls.clone(),
        );
        registry.register(
            "retries",
            "Failed requests or joins that were retried",
            m.retries.clone(),
        );
        registry.register(
            "registered",
            "1 while the node is registered and its registration confirmed",
            m.registered.clone(),
        );
        registry.register(
            "ready",
            "1 while GET /ready answers 200 (registered, or a degraded member)",
            m.ready.clone(),
        );
        registry.register_with_unit(
            "last_registration_age",
            "Time since the registration was last written or refreshed (NaN before the first)",
            Unit::Seconds,
            m.registration_age.clone(),
        );
        registry.register(
            "cluster_divergence",
            "1 while the cluster runtime and the registry disagree for longer than an entry TTL",
            m.divergence.clone(),
        );
        Arc::new(Metrics { registry, ..m })
    }

    /// The metrics in the OpenMetrics text format, with the gauges taken from `status`
    /// (`elapsed`: the time since the node started).
    pub fn encode(&self, status: &Status, elapsed: Duration) -> String {
        self.state.clear();
        self.state
            .get_or_create(&StateLabel {
                state: format!("{:?}", status.state),
            })
            .set(1);
        self.registered.set(i64::from(status.state.is_registered()));
        self.ready.set(i64::from(status.is_ready()));
        let age = status
            .last_registered
            .map_or(f64::NAN, |at| elapsed.saturating_sub(at).as_secs_f64());
        self.registration_age.set(age);
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Observer for Metrics {
    fn request(&self, request: &Request) {
        let labels = RequestLabels {
            operation: request.operation.as_str(),
            outcome: request.outcome.as_str(),
        };
        if request.operation.is_coordination() {
            self.requests.get_or_create(&labels).inc();
            self.latency
                .get_or_create(&OperationLabel {
                    operation: request.operation.as_str(),
                })
                .observe(request.latency.as_secs_f64());
        } else {
            self.cluster_calls.get_or_create(&labels).inc();
        }
    }

    fn event(&self, event: &TimedEvent, _status: &Status) {
        match &event.event {
            Event::StateChanged { to, .. } => {
                self.transitions
                    .get_or_create(&StateLabel {
                        state: format!("{to:?}"),
                    })
                    .inc();
            }
            Event::Retrying { .. } => {
                self.retries.inc();
            }
            Event::ClusterDivergence { .. } => {
                self.divergence.set(1);
            }
            Event::ClusterDivergenceEnded { .. } => {
                self.divergence.set(0);
            }
            _ => {}
        }
    }
}

#[derive(Clone)]
struct Shared {
    monitor: Monitor,
    metrics: Arc<Metrics>,
}

/// The management routes (`/alive`, `/ready`, `/bootstrap`, `/members`, `/metrics`) of
/// the node behind `monitor`; `metrics` should be the observer the node was built with.
pub fn router(monitor: Monitor, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/alive", get(alive))
        .route("/ready", get(ready))
        .route("/bootstrap", get(bootstrap))
        .route("/members", get(members))
        .route("/metrics", get(metrics_text))
        .with_state(Shared { monitor, metrics })
}

/// Serves `router` on `listener` until `shutdown` resolves.
///
/// # Errors
/// What accepting connections fails with.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

fn json_response(code: StatusCode, body: Value) -> Response {
    (code, axum::Json(body)).into_response()
}

fn verdict(ok: bool) -> StatusCode {
    if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

async fn alive(Extract(s): Extract<Shared>) -> Response {
    let status = s.monitor.status();
    json_response(
        verdict(status.is_alive()),
        json!({ "alive": status.is_alive(), "state": format!("{:?}", status.state) }),
    )
}

async fn ready(Extract(s): Extract<Shared>) -> Response {
    let status = s.monitor.status();
    json_response(
        verdict(status.is_ready()),
        json!({
            "ready": status.is_ready(),
            "state": format!("{:?}", status.state),
            "degraded": status.state == constructr_core::State::Degraded,
        }),
    )
}

async fn bootstrap(Extract(s): Extract<Shared>) -> Response {
    json_response(StatusCode::OK, bootstrap_json(&s.monitor.status()))
}

async fn members(Extract(s): Extract<Shared>) -> Response {
    match s.monitor.members().await {
        Some(mut members) => {
            members.sort();
            let list: Vec<Value> = members.iter().map(node_json).collect();
            json_response(StatusCode::OK, json!({ "members": list }))
        }
        None => json_response(
            StatusCode::NOT_IMPLEMENTED,
            json!({ "error": "this node's cluster runtime does not report its members" }),
        ),
    }
}

async fn metrics_text(Extract(s): Extract<Shared>, headers: axum::http::HeaderMap) -> Response {
    let status = s.monitor.status();
    let elapsed = status.started_at.elapsed().unwrap_or_default();
    let text = s.metrics.encode(&status, elapsed);
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    if openmetrics {
        ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], text).into_response()
    } else {
        (
            [(header::CONTENT_TYPE, TEXT_CONTENT_TYPE)],
            prometheus_text(&text),
        )
            .into_response()
    }
}

/// The OpenMetrics text of `prometheus-client` as the Prometheus text format 0.0.4: a
/// counter family's `HELP` and `TYPE` lines name it with its `_total` suffix (as its
/// samples already do), and the `UNIT` and `EOF` lines, which that format lacks, go.
/// (`prometheus-client` writes OpenMetrics only: prometheus/client_rust#194.)
pub fn prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let rest = line
            .strip_prefix("# HELP ")
            .map(|r| ("# HELP ", r))
            .or_else(|| line.strip_prefix("# TYPE ").map(|r| ("# TYPE ", r)));
        match rest {
            Some((kind, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(kind);
                out.push_str(name);
                if counters.contains(name) {
                    out.push_str("_total");
                }
                out.push(' ');
                out.push_str(tail);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// A node as JSON: `{"address": "...", "incarnation": "<16 hex digits>"}` (the incarnation
/// as in the node's `Display`, `address#incarnation`).
pub fn node_json(node: &NodeId) -> Value {
    json!({
        "address": node.address,
        "incarnation": format!("{:016x}", node.incarnation),
    })
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The body of `GET /bootstrap`. Times are milliseconds since the node started (`*_ms`)
/// and the wall-clock start (`started_at_ms`, Unix time).
pub fn bootstrap_json(status: &Status) -> Value {
    json!({
        "node": node_json(&status.node),
        "started_at_ms": status
            .started_at
            .duration_since(UNIX_EPOCH)
            .map_or(0, millis),
        "state": format!("{:?}", status.state),
        "state_since_ms": millis(status.state_since),
        "alive": status.is_alive(),
        "ready": status.is_ready(),
        "transitions": status.transitions,
        "retries": status.retries,
        "last_error": status.last_error,
        "failure": status.failure.as_ref().map(|f| json!({
            "kind": f.kind().map(|k| format!("{k:?}")),
            "message": f.to_string(),
        })),
        "cluster": status.cluster.map(|c| c.to_string()),
        "registry": status.registry.as_ref().map(|r| json!({
            "nodes": r.nodes.iter().map(node_json).collect::<Vec<_>>(),
            "epoch": r.epoch.map(|c| c.to_string()),
            "read_at_ms": millis(r.read_at),
        })),
        "lock": status.lock.map(|l| match l {
            LockHolder::ThisNode => "this-node",
            LockHolder::AnotherNode => "another-node",
        }),
        "last_registered_ms": status.last_registered.map(millis),
    })
}
