//! The bridge's HTTP API in-process: status codes, events, the view, and 4xx for bad input.

use std::time::Duration;

use constructr_serf::bridge::{Bridge, BridgeConfig, BridgeEvent, MemberState};
use serde_json::json;
use tokio::sync::mpsc;

struct Running {
    base: String,
    bridge: Bridge,
    http: reqwest::Client,
}

async fn start(config: BridgeConfig) -> Running {
    let bridge = Bridge::new(config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(bridge.clone().serve(listener, std::future::pending()));
    Running {
        base,
        bridge,
        http: reqwest::Client::new(),
    }
}

impl Running {
    /// Sends `method` to `path` (under the bridge's base URL), with `member` as JSON body.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        member: Option<&serde_json::Value>,
    ) -> reqwest::Response {
        let request = self.http.request(method, format!("{}{path}", self.base));
        let request = match member {
            Some(m) => request.json(m),
            None => request,
        };
        request.send().await.unwrap()
    }

    /// The JSON the bridge answers to a GET of `path`.
    async fn view(&self, path: &str) -> serde_json::Value {
        let resp = self.send(reqwest::Method::GET, path, None).await;
        resp.json().await.unwrap()
    }
}

async fn recv(rx: &mut mpsc::Receiver<BridgeEvent>) -> BridgeEvent {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("no event")
        .expect("closed")
}

fn member(name: &str, dc: &str) -> serde_json::Value {
    json!({"name": name, "address": "10.0.0.1", "role": "web", "tags": {"dc": dc, "role": "web"}})
}

#[tokio::test]
async fn member_lifecycle_status_codes_events_and_view() {
    use reqwest::Method;
    let r = start(BridgeConfig::default()).await;
    let mut rx = r.bridge.subscribe();

    let resp = r
        .send(Method::POST, "/dc/dc1/members", Some(&member("n 1", "dc1")))
        .await;
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["location"], "/dc/dc1/members/n%201");
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap(),
        member("n 1", "dc1")
    );
    assert!(
        matches!(recv(&mut rx).await, BridgeEvent::MemberJoined { dc, member } if dc == "dc1" && member.name == "n 1")
    );

    // An update with unchanged tags: 200 echo, no event.
    let resp = r
        .send(
            Method::PUT,
            "/dc/dc1/members/n%201",
            Some(&member("n 1", "dc1")),
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap(),
        member("n 1", "dc1")
    );
    // A changed one: an event.
    let mut changed = member("n 1", "dc1");
    changed["tags"]["version"] = json!("2");
    let resp = r
        .send(Method::PUT, "/dc/dc1/members/n%201", Some(&changed))
        .await;
    assert_eq!(resp.status(), 200);
    match recv(&mut rx).await {
        BridgeEvent::MemberUpdated { member, .. } => assert_eq!(member.tags["version"], "2"),
        other => {
            panic!("expected MemberUpdated (the unchanged update is suppressed), got {other:?}")
        }
    }

    // Failure, then the view shows it failed, per dc and overall.
    let resp = r
        .send(Method::POST, "/dc/dc1/failures", Some(&changed))
        .await;
    assert_eq!(resp.status(), 204);
    assert!(matches!(
        recv(&mut rx).await,
        BridgeEvent::MemberFailed { .. }
    ));
    let view = r.view("/dc/dc1/members").await;
    assert_eq!(view[0]["status"], "failed");
    assert_eq!(view[0]["name"], "n 1");
    assert_eq!(r.bridge.members_in("dc1")[0].status, MemberState::Failed);

    // Another dc, a member without tags.
    let bare = json!({"name": "bare", "address": "10.0.0.9", "role": "", "tags": {}});
    let resp = r
        .send(Method::POST, "/dc/default/members", Some(&bare))
        .await;
    assert_eq!(resp.status(), 201);
    recv(&mut rx).await;
    let all = r.view("/members").await;
    assert_eq!(all["default"][0]["status"], "alive");
    assert_eq!(all["dc1"][0]["status"], "failed");

    // Leave (with and without body) and reap: 204 each, removed from the view.
    let resp = r
        .send(Method::DELETE, "/dc/dc1/members/n%201", Some(&changed))
        .await;
    assert_eq!(resp.status(), 204);
    assert!(
        matches!(recv(&mut rx).await, BridgeEvent::MemberLeft { member, .. } if member.name == "n 1")
    );
    let resp = r
        .send(Method::DELETE, "/dc/default/members/bare?reap=true", None)
        .await;
    assert_eq!(resp.status(), 204);
    assert!(
        matches!(recv(&mut rx).await, BridgeEvent::MemberReaped { member, .. } if member.address == "10.0.0.9")
    );
    assert!(r.bridge.members().is_empty());
}

/// Serf sends a member's events under its current `dc` tag: after `serf tags -set dc=dc3`
/// the update comes under dc3, and its leave and reap too. The member must move, not be
/// listed twice, and leave no ghost behind in its old datacenter.
#[tokio::test]
async fn a_member_that_changes_datacenter_moves_and_leaves_no_ghost() {
    use reqwest::Method;
    let r = start(BridgeConfig::default()).await;
    let mut rx = r.bridge.subscribe();
    let post = r
        .send(Method::POST, "/dc/dc1/members", Some(&member("a", "dc1")))
        .await;
    assert_eq!(post.status(), 201);
    recv(&mut rx).await;

    let put = r
        .send(Method::PUT, "/dc/dc3/members/a", Some(&member("a", "dc3")))
        .await;
    assert_eq!(put.status(), 200);
    assert!(
        matches!(recv(&mut rx).await, BridgeEvent::MemberUpdated { dc, .. } if dc == "dc3"),
        "a move is an update under the new datacenter"
    );
    let all = r.view("/members").await;
    assert_eq!(
        all,
        json!({"dc3": [{"name": "a", "address": "10.0.0.1", "role": "web",
        "tags": {"dc": "dc3", "role": "web"}, "status": "alive"}]})
    );
    assert_eq!(r.view("/dc/dc1/members").await, json!([]));

    // A failure reported under the new datacenter, then the leave and the reap.
    let failed = r
        .send(Method::POST, "/dc/dc3/failures", Some(&member("a", "dc3")))
        .await;
    assert_eq!(failed.status(), 204);
    recv(&mut rx).await;
    assert_eq!(r.bridge.members().len(), 1, "{:?}", r.bridge.members());
    let left = r.send(Method::DELETE, "/dc/dc3/members/a", None).await;
    assert_eq!(left.status(), 204);
    recv(&mut rx).await;
    assert!(r.bridge.members().is_empty(), "{:?}", r.bridge.members());

    // A leave that arrives under the old datacenter (a handler that saw the old tags)
    // removes the member too.
    r.send(Method::POST, "/dc/dc1/members", Some(&member("b", "dc1")))
        .await;
    r.send(Method::PUT, "/dc/dc2/members/b", Some(&member("b", "dc2")))
        .await;
    r.send(Method::DELETE, "/dc/dc1/members/b?reap=true", None)
        .await;
    assert!(r.bridge.members().is_empty(), "{:?}", r.bridge.members());
}

/// A handler started with another `--dc-tag` than the bridge would file every member
/// under the wrong datacenter; the bridge refuses its requests and says why.
#[tokio::test]
async fn a_handler_with_another_dc_tag_is_refused_with_the_reason() {
    let r = start(BridgeConfig::default()).await;
    let post = |tag: Option<&'static str>| {
        let mut request = r
            .http
            .post(format!("{}/dc/dc1/members", r.base))
            .json(&member("a", "dc1"));
        if let Some(tag) = tag {
            request = request.header(constructr_serf::handler::DC_TAG_HEADER, tag);
        }
        request.send()
    };
    let refused = post(Some("datacenter")).await.unwrap();
    assert_eq!(refused.status(), 400);
    let body: serde_json::Value = refused.json().await.unwrap();
    let text = body["error"].as_str().unwrap();
    assert!(
        text.contains("\"datacenter\"") && text.contains("--dc-tag"),
        "{text}"
    );
    assert!(r.bridge.members().is_empty());
    // The same tag, and a client that does not say (not a handler of ours): accepted.
    assert_eq!(post(Some("dc")).await.unwrap().status(), 201);
    assert_eq!(post(None).await.unwrap().status(), 201);
}

#[tokio::test]
async fn user_events_and_queries() {
    let r = start(BridgeConfig::default().with_query_timeout(Duration::from_millis(300))).await;

    // No subscriber: a query is refused at once with 503.
    let resp = r
        .http
        .post(format!("{}/dc/dc1/queries/load", r.base))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);

    let mut rx = r.bridge.subscribe();
    let resp = r
        .http
        .post(format!("{}/dc/dc1/events/deploy?ltime=7", r.base))
        .body(&b"v1\0"[..])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    match recv(&mut rx).await {
        BridgeEvent::UserEvent {
            dc,
            name,
            ltime,
            payload,
        } => {
            assert_eq!((dc.as_str(), name.as_str(), ltime), ("dc1", "deploy", 7));
            assert_eq!(&payload[..], b"v1\0");
        }
        other => panic!("{other:?}"),
    }

    // A subscriber answers a query: the body is the answer.
    let http = r.http.clone();
    let url = format!("{}/dc/dc1/queries/load?ltime=3", r.base);
    let pending = tokio::spawn(async move { http.post(url).body("q?").send().await.unwrap() });
    match recv(&mut rx).await {
        BridgeEvent::Query(q) => {
            assert_eq!(
                (q.name.as_str(), q.ltime, &q.payload[..]),
                ("load", 3, &b"q?"[..])
            );
            assert!(q.respond("0.42"));
            assert!(!q.respond("again"), "a query is answered once");
        }
        other => panic!("{other:?}"),
    }
    let resp = pending.await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "0.42");

    // A subscriber that does not answer: 504 after the query timeout, not a hang.
    let started = std::time::Instant::now();
    let resp = r
        .http
        .post(format!("{}/dc/dc1/queries/slow", r.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 504);
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(
        resp.text()
            .await
            .unwrap()
            .contains("no subscriber answered")
    );
}

#[tokio::test]
async fn malformed_requests_get_4xx_with_a_message() {
    let r = start(BridgeConfig::default().with_body_limit(1024)).await;
    let mut rx = r.bridge.subscribe();
    // (method, path, body, status, a part of the message)
    #[rustfmt::skip]
    let cases: [(&str, &str, &[u8], u16, &str); 13] = [
        ("POST", "/dc/dc1/members", b"{not json", 400, "not a member JSON"),
        ("POST", "/dc/dc1/members", br#"{"name":"a"}"#, 400, "address"),
        ("POST", "/dc/dc1/members", br#"{"name":"","address":"x"}"#, 400, "empty"),
        ("POST", "/dc/dc1/members", br#"{"name":"a","address":"x","extra":1}"#, 400, "extra"),
        ("POST", "/dc/dc1/members", b"[1,2]", 400, "member JSON"),
        ("POST", "/dc/dc1/members", br#"{"name":"a","address":"x","tags":{"dc":"dc2"}}"#, 400, "posted under /dc/dc1"),
        ("PUT", "/dc/dc1/members/b", br#"{"name":"a","address":"x"}"#, 400, "path names member"),
        ("DELETE", "/dc/dc1/members/a?reap=maybe", b"", 400, "reap"),
        ("POST", "/dc/dc1/events/e?ltime=soon", b"", 400, "ltime"),
        ("POST", "/dc/dc1/failures", b"", 400, "member JSON"),
        ("GET", "/nope", b"", 404, "no such endpoint"),
        ("PATCH", "/dc/dc1/members/a", b"", 405, "not allowed"),
        ("POST", "/dc/dc1/events/big", &[b'x'; 4096], 413, ""),
    ];
    for (method, path, body, status, message) in cases {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let resp = r
            .http
            .request(method.clone(), format!("{}{path}", r.base))
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), status, "{method} {path}");
        let text = resp.text().await.unwrap();
        assert!(text.contains(message), "{method} {path}: {text}");
    }
    // Nothing of the refused requests reached the subscriber.
    assert!(rx.try_recv().is_err());
    assert!(r.bridge.members().is_empty());
}

#[tokio::test]
async fn a_full_subscriber_makes_requests_fail_instead_of_dropping_events() {
    let r = start(
        BridgeConfig::default()
            .with_subscriber_capacity(1)
            .with_delivery_timeout(Duration::from_millis(200)),
    )
    .await;
    let mut rx = r.bridge.subscribe();
    let post = |name: &str| {
        r.http
            .post(format!("{}/dc/dc1/events/{name}", r.base))
            .send()
    };
    assert_eq!(post("one").await.unwrap().status(), 204);
    assert_eq!(post("two").await.unwrap().status(), 503);
    assert!(matches!(recv(&mut rx).await, BridgeEvent::UserEvent { name, .. } if name == "one"));
    assert_eq!(post("three").await.unwrap().status(), 204);
    // A dropped receiver unsubscribes.
    drop(rx);
    assert_eq!(post("four").await.unwrap().status(), 204);
}

/// Reads server-sent events from `resp` until one named `name` arrives; returns its data.
async fn next_sse(resp: &mut reqwest::Response, buf: &mut String, name: &str) -> serde_json::Value {
    loop {
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            let field = |key: &str| {
                frame
                    .lines()
                    .find_map(|l| l.strip_prefix(key))
                    .map(str::trim)
                    .map(str::to_owned)
            };
            if field("event:").as_deref() == Some(name) {
                return serde_json::from_str(&field("data:").expect("data")).unwrap();
            }
        }
        let chunk = tokio::time::timeout(Duration::from_secs(5), resp.chunk())
            .await
            .expect("no event within 5 s")
            .unwrap()
            .expect("stream ended");
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

/// A subscriber in any language: `GET /events` streams every event as JSON; a query comes
/// with an id and `POST /queries/{id}/response` answers it.
#[tokio::test]
async fn sse_subscribers_see_events_and_answer_queries_over_http() {
    let r = start(BridgeConfig::default().with_query_timeout(Duration::from_secs(5))).await;
    let mut events = r
        .http
        .get(format!("{}/events", r.base))
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    assert_eq!(events.headers()["content-type"], "text/event-stream");
    let mut buf = String::new();

    let joined = r
        .send(
            reqwest::Method::POST,
            "/dc/dc1/members",
            Some(&member("a", "dc1")),
        )
        .await;
    assert_eq!(joined.status(), 201);
    let e = next_sse(&mut events, &mut buf, "member-joined").await;
    assert_eq!(
        (e["dc"].as_str(), e["member"]["name"].as_str()),
        (Some("dc1"), Some("a"))
    );

    let http = r.http.clone();
    let url = format!("{}/dc/dc1/queries/load?ltime=9", r.base);
    let asked = tokio::spawn(async move { http.post(url).body("cpu?").send().await.unwrap() });
    let q = next_sse(&mut events, &mut buf, "query").await;
    assert_eq!(
        (
            q["name"].as_str(),
            q["ltime"].as_u64(),
            q["payload"].as_str()
        ),
        (Some("load"), Some(9), Some("cpu?"))
    );
    let answer = |id: String, body: &'static str| {
        r.http
            .post(format!("{}/queries/{id}/response", r.base))
            .body(body)
            .send()
    };
    let id = q["id"].as_u64().expect("a query has an id").to_string();
    assert_eq!(answer(id.clone(), "0.42").await.unwrap().status(), 204);
    let asked = asked.await.unwrap();
    assert_eq!(asked.status(), 200);
    assert_eq!(asked.text().await.unwrap(), "0.42");
    // Answered and gone; never asked; not a number.
    assert_eq!(answer(id, "late").await.unwrap().status(), 404);
    assert_eq!(answer("999999".into(), "x").await.unwrap().status(), 404);
    assert_eq!(answer("x".into(), "x").await.unwrap().status(), 400);
}

/// `constructr serf-bridge` prints queries and drops them: the query must still wait its
/// timeout for an answer over HTTP, not fail at once with 504.
#[tokio::test]
async fn a_query_dropped_by_its_subscriber_can_still_be_answered_over_http() {
    let r = start(BridgeConfig::default().with_query_timeout(Duration::from_secs(5))).await;
    let mut rx = r.bridge.subscribe();
    let http = r.http.clone();
    let url = format!("{}/dc/dc1/queries/ping", r.base);
    let asked = tokio::spawn(async move { http.post(url).send().await.unwrap() });
    let id = match recv(&mut rx).await {
        BridgeEvent::Query(q) => q.id,
        other => panic!("{other:?}"),
    }; // the query is dropped here, unanswered
    tokio::time::sleep(Duration::from_millis(200)).await;
    let resp = r
        .http
        .post(format!("{}/queries/{id}/response", r.base))
        .body("pong")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let asked = asked.await.unwrap();
    assert_eq!(asked.status(), 200);
    assert_eq!(asked.text().await.unwrap(), "pong");
}

/// Waits until the bridge reports the quorum change to `to` (skipping other events).
async fn quorum_change(rx: &mut mpsc::Receiver<BridgeEvent>, to: &str) {
    loop {
        if let BridgeEvent::QuorumChanged(c) = recv(rx).await
            && serde_json::to_value(c.to).unwrap() == to
        {
            return;
        }
    }
}

/// `GET /quorum` and the quorum events follow the members the handler reports, with the
/// timers running on their own (the way to high availability, the failure grace).
#[tokio::test]
async fn the_quorum_follows_the_members_and_its_timers() {
    use reqwest::Method;
    let config = BridgeConfig::default()
        .with_quorum_dc("dc1")
        .with_quorum_ha_after(Duration::from_millis(300))
        .with_quorum_failure_grace(Duration::from_millis(300));
    let r = start(config).await;
    let mut rx = r.bridge.subscribe();
    assert_eq!(r.view("/quorum").await["state"], "standalone");
    for (name, dc) in [("a", "dc1"), ("b", "dc2"), ("c", "dc3")] {
        let path = format!("/dc/{dc}/members");
        r.send(Method::POST, &path, Some(&member(name, dc))).await;
    }
    quorum_change(&mut rx, "high-available-transitional").await;
    quorum_change(&mut rx, "high-available").await;
    let q = r.view("/quorum").await;
    assert_eq!(q["known"], json!(["dc1", "dc2", "dc3"]));
    // dc2 and dc3 fail: after the grace, 1 of 3 active is no majority.
    r.send(Method::POST, "/dc/dc2/failures", Some(&member("b", "dc2")))
        .await;
    r.send(Method::POST, "/dc/dc3/failures", Some(&member("c", "dc3")))
        .await;
    assert_eq!(r.view("/quorum").await["state"], "high-available");
    quorum_change(&mut rx, "halted").await;
    assert_eq!(r.view("/quorum").await["active"], json!(["dc1"]));
    // dc3 is back: 2 of 3.
    r.send(Method::PUT, "/dc/dc3/members/c", Some(&member("c", "dc3")))
        .await;
    quorum_change(&mut rx, "high-available-transitional").await;
    // Without --quorum there is none.
    let plain = start(BridgeConfig::default()).await;
    let resp = plain.send(Method::GET, "/quorum", None).await;
    assert_eq!(resp.status(), 404);
}
