//! The management routes against nodes on the memory backend: readiness follows the
//! registration, liveness the machine, a coordination outage leaves a degraded member
//! alive and ready, the bootstrap JSON and the members tell what the node knows, and the
//! metrics move as requests are made.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use constructr_core::driver::{Node, NodeHandle};
use constructr_core::local::LocalCluster;
use constructr_core::memory::{Fault, MemoryCoordination};
use constructr_core::{ClusterName, NodeId, Settings, State};
use constructr_management::{METRICS_CONTENT_TYPE, Metrics, TEXT_CONTENT_TYPE, router};
use proptest::prelude::*;
use serde_json::Value;
use tower::ServiceExt as _;

const BOUND: Duration = Duration::from_secs(5);

fn settings() -> Settings {
    let mut s = Settings::default();
    s.cluster_name = ClusterName::new("management").unwrap();
    s.coordination_timeout = Duration::from_millis(200);
    s.join_timeout = Duration::from_secs(1);
    s.retry_delay = Duration::from_millis(100);
    s.refresh_interval = Duration::from_millis(200);
    s.ttl_factor = 6.0;
    s
}

fn node(i: u16) -> NodeId {
    NodeId::new(format!("127.0.0.1:{}", 2550 + i), 0xABC0 + u64::from(i))
}

struct World {
    coordination: MemoryCoordination,
    cluster: LocalCluster,
}

impl World {
    fn new() -> Self {
        World {
            coordination: MemoryCoordination::default(),
            cluster: LocalCluster::new(),
        }
    }

    fn spawn(&self, i: u16) -> (NodeHandle, axum::Router) {
        let metrics = Metrics::new();
        let h = Node::builder()
            .settings(settings())
            .address(node(i))
            .coordination(Arc::new(self.coordination.clone()))
            .cluster(Arc::new(self.cluster.node(node(i))))
            .observer(metrics.clone())
            .seed(u64::from(i))
            .spawn()
            .unwrap();
        let app = router(h.monitor(), metrics);
        (h, app)
    }
}

async fn get(app: &axum::Router, path: &str) -> (StatusCode, String, String) {
    get_accepting(app, path, "*/*").await
}

async fn get_accepting(
    app: &axum::Router,
    path: &str,
    accept: &str,
) -> (StatusCode, String, String) {
    let request = Request::get(path)
        .header("accept", accept)
        .body(Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let code = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        code,
        content_type,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

async fn get_json(app: &axum::Router, path: &str) -> (StatusCode, Value) {
    let (code, _, body) = get(app, path).await;
    (code, serde_json::from_str(&body).unwrap())
}

/// The value of the sample `name` (with its labels, as printed) in a metrics text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_turns_200_once_registered_and_bootstrap_tells_why_not_before() {
    let w = World::new();
    // The first reads fail: the node cannot register for a while.
    w.coordination.inject(Fault::Fail { retryable: true }, 3);
    let (h, app) = w.spawn(0);
    let (code, body) = get_json(&app, "/ready").await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["ready"], false);
    assert_eq!(get_json(&app, "/alive").await.0, StatusCode::OK);

    tokio::time::timeout(BOUND, h.registered())
        .await
        .unwrap()
        .unwrap();
    let (code, body) = get_json(&app, "/ready").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let (code, b) = get_json(&app, "/bootstrap").await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(b["state"], "RefreshScheduled");
    assert_eq!(b["retries"], 3);
    assert!(
        b["last_error"].as_str().unwrap().contains("injected fault"),
        "{b}"
    );
    assert_eq!(b["lock"], "this-node");
    assert_eq!(b["node"]["incarnation"], "000000000000abc0");
    assert_eq!(b["cluster"].as_str().unwrap().len(), 16, "{b}");
    assert!(b["failure"].is_null());
    assert!(b["last_registered_ms"].as_u64().is_some(), "{b}");
    h.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_degraded_member_is_alive_and_ready_and_a_failed_node_is_neither() {
    let w = World::new();
    let (h, app) = w.spawn(0);
    tokio::time::timeout(BOUND, h.registered())
        .await
        .unwrap()
        .unwrap();
    // A coordination outage: the member degrades but stays alive and ready.
    w.coordination
        .inject(Fault::Fail { retryable: true }, 1_000_000);
    let mut status = h.monitor().watch_status();
    tokio::time::timeout(BOUND, status.wait_for(|s| s.state == State::Degraded))
        .await
        .unwrap()
        .unwrap();
    let (code, body) = get_json(&app, "/ready").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["degraded"], true);
    assert_eq!(get_json(&app, "/alive").await.0, StatusCode::OK);
    let (_, _, text) = get(&app, "/metrics").await;
    assert_eq!(sample(&text, "constructr_registered"), Some(0.0), "{text}");
    assert_eq!(sample(&text, "constructr_ready"), Some(1.0), "{text}");
    h.abort();

    // A permanent error ends a node: not alive, not ready, and the failure's kind shows.
    let w = World::new();
    w.coordination.inject(Fault::Fail { retryable: false }, 1);
    let (h, app) = w.spawn(1);
    assert!(
        tokio::time::timeout(BOUND, h.registered())
            .await
            .unwrap()
            .is_err()
    );
    let (code, body) = get_json(&app, "/alive").await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(
        get_json(&app, "/ready").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let (_, b) = get_json(&app, "/bootstrap").await;
    assert_eq!(b["state"], "Failed");
    assert_eq!(b["failure"]["kind"], "Permanent", "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_and_the_registry_read_show_the_cluster() {
    let w = World::new();
    let (seed, _) = w.spawn(0);
    tokio::time::timeout(BOUND, seed.registered())
        .await
        .unwrap()
        .unwrap();
    let (joiner, app) = w.spawn(1);
    tokio::time::timeout(BOUND, joiner.registered())
        .await
        .unwrap()
        .unwrap();
    let (code, body) = get_json(&app, "/members").await;
    assert_eq!(code, StatusCode::OK);
    let addresses: Vec<&str> = body["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["address"].as_str().unwrap())
        .collect();
    assert_eq!(addresses, ["127.0.0.1:2550", "127.0.0.1:2551"]);
    let (_, b) = get_json(&app, "/bootstrap").await;
    assert_eq!(
        b["registry"]["nodes"][0]["address"], "127.0.0.1:2550",
        "{b}"
    );
    assert_eq!(b["registry"]["epoch"], b["cluster"], "{b}");
    assert!(b["lock"].is_null(), "a joiner never asks for the lock: {b}");
    seed.abort();
    joiner.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_count_requests_by_operation_and_outcome_as_they_are_made() {
    let w = World::new();
    w.coordination.inject(Fault::Fail { retryable: true }, 2);
    let (h, app) = w.spawn(0);
    tokio::time::timeout(BOUND, h.registered())
        .await
        .unwrap()
        .unwrap();
    // What Prometheus asks for.
    let accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
    let (code, content_type, open) = get_accepting(&app, "/metrics", accept).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(content_type, METRICS_CONTENT_TYPE);
    assert!(open.ends_with("# EOF\n"), "{open}");
    assert!(
        open.contains("# TYPE constructr_retries counter\n"),
        "{open}"
    );
    // Everyone else: the Prometheus text format, counters named with `_total` throughout.
    let (code, content_type, text) = get(&app, "/metrics").await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(content_type, TEXT_CONTENT_TYPE);
    assert!(
        text.contains("# TYPE constructr_retries_total counter\n"),
        "{text}"
    );
    assert!(text.contains("# HELP constructr_retries_total "), "{text}");
    assert!(
        !text.contains("# EOF") && !text.contains("# UNIT"),
        "{text}"
    );
    let failed =
        r#"constructr_coordination_requests_total{operation="get_nodes",outcome="unavailable"}"#;
    let ok = r#"constructr_coordination_requests_total{operation="get_nodes",outcome="ok"}"#;
    assert_eq!(sample(&text, failed), Some(2.0), "{text}");
    assert_eq!(sample(&text, ok), Some(2.0), "{text}");
    assert_eq!(
        sample(&text, "constructr_retries_total"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(sample(&text, "constructr_registered"), Some(1.0), "{text}");
    assert_eq!(
        sample(&text, r#"constructr_state{state="RefreshScheduled"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"constructr_cluster_calls_total{operation="join",outcome="ok"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert!(text.contains("constructr_coordination_request_duration_seconds_bucket"));
    let age = sample(&text, "constructr_last_registration_age_seconds").unwrap();
    assert!((0.0..1.0).contains(&age), "{age}");

    // Refreshes keep coming: the counter moves between two scrapes.
    let refreshes = |t: &str| {
        sample(
            t,
            r#"constructr_coordination_requests_total{operation="refresh",outcome="ok"}"#,
        )
        .unwrap_or(0.0)
    };
    let before = refreshes(&text);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (_, _, later) = get(&app, "/metrics").await;
    assert!(refreshes(&later) >= before + 2.0, "{before} then {later}");
    h.abort();
}

#[test]
fn the_age_of_a_registration_is_nan_before_the_first() {
    let metrics = Metrics::new();
    let status =
        constructr_core::Status::new(node(0), State::GettingNodes, std::time::SystemTime::now());
    let text = metrics.encode(&status, Duration::from_secs(3));
    assert!(
        text.contains("constructr_last_registration_age_seconds NaN"),
        "{text}"
    );
}

/// `constructr_cluster_divergence` is 1 from a reported divergence until its end.
#[test]
fn the_divergence_gauge_follows_the_divergence_events() {
    use constructr_core::Event;
    use constructr_core::driver::{Observer, TimedEvent};
    let metrics = Metrics::new();
    let status = constructr_core::Status::new(
        node(0),
        State::RefreshScheduled,
        std::time::SystemTime::now(),
    );
    let gauge = |m: &Metrics| {
        sample(
            &m.encode(&status, Duration::from_secs(3)),
            "constructr_cluster_divergence",
        )
    };
    assert_eq!(gauge(&metrics), Some(0.0));
    let event = |event| TimedEvent {
        elapsed: Duration::from_secs(1),
        event,
    };
    metrics.event(
        &event(Event::ClusterDivergence {
            unseen: 1,
            unregistered: 0,
            foreign_epoch: false,
            lasting: Duration::from_secs(60),
        }),
        &status,
    );
    assert_eq!(gauge(&metrics), Some(1.0));
    metrics.event(
        &event(Event::ClusterDivergenceEnded {
            lasted: Duration::from_secs(90),
        }),
        &status,
    );
    assert_eq!(gauge(&metrics), Some(0.0));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any path, any method: an answer, never a panic.
    #[test]
    fn any_request_gets_an_answer(path in "/[ -~]{0,40}", method in "GET|POST|PUT|DELETE|HEAD|PATCH") {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let w = World::new();
            let (h, app) = w.spawn(0);
            let uri: String = path.chars().filter(|c| !c.is_whitespace() && *c != '#' && *c != '%').collect();
            if let Ok(request) = Request::builder().method(method.as_str()).uri(&uri).body(Body::empty()) {
                let response = app.oneshot(request).await.unwrap();
                prop_assert!(!response.status().is_server_error() || response.status() == StatusCode::SERVICE_UNAVAILABLE);
            }
            h.abort();
            Ok(())
        })?;
    }
}
