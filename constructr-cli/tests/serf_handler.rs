//! A 3-agent Serf cluster whose first agent runs the real handler process, forwarding to an
//! in-process bridge: join, update, leave, failure, user event, query, members without tags
//! and tag values with spaces, commas and `=`.

// The Serf agents harness of constructr-serf's own tests (std only).
#[path = "../../constructr-serf/tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use constructr::serf::bridge::{Bridge, BridgeConfig, BridgeEvent, MemberState};
use constructr::serf::{QueryParams, QueryRecord, SerfClient, SerfConfig};
use support::{Agent, AgentOptions};
use tokio::sync::mpsc;

/// Waits for the first event `pick` accepts, skipping (and remembering) others.
async fn wait_for<T>(
    rx: &mut mpsc::Receiver<BridgeEvent>,
    what: &str,
    agent: &Agent,
    mut pick: impl FnMut(&BridgeEvent) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(e)) => {
                if let Some(t) = pick(&e) {
                    return t;
                }
                seen.push(format!("{e:?}"));
            }
            _ => panic!(
                "no {what} within 30 s; other events: {seen:#?}\nagent log:\n{}",
                agent.log_text()
            ),
        }
    }
}

fn member_event<'a>(
    e: &'a BridgeEvent,
    kind: &str,
    name: &str,
) -> Option<(&'a str, &'a constructr::serf::protocol::MemberInfo)> {
    let (k, dc, m) = match e {
        BridgeEvent::MemberJoined { dc, member } => ("joined", dc, member),
        BridgeEvent::MemberUpdated { dc, member } => ("updated", dc, member),
        BridgeEvent::MemberLeft { dc, member } => ("left", dc, member),
        BridgeEvent::MemberFailed { dc, member } => ("failed", dc, member),
        BridgeEvent::MemberReaped { dc, member } => ("reaped", dc, member),
        _ => return None,
    };
    (k == kind && m.name == name).then_some((dc.as_str(), m))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_agents_with_the_handler_and_the_bridge() {
    let Some(bin) = support::serf_bin() else {
        return;
    };
    let bridge = Bridge::new(BridgeConfig::default().with_query_timeout(Duration::from_secs(2)));
    let mut rx = bridge.subscribe();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bridge_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(bridge.clone().serve(listener, std::future::pending()));

    let handler = format!(
        "{} serf-handler --bridge {bridge_url} --timeout 3s",
        env!("CARGO_BIN_EXE_constructr")
    );
    let options = AgentOptions::default()
        .tag("dc", "dc1")
        .tag("weird", "a,b=c d")
        .with_handler(handler);
    let a1 = Agent::start(&bin, "e2e-a1", options);
    // The agent's own join, with its own tags parsed exactly (SERF_TAG_* resolves `,`/`=`).
    let (dc, m) = wait_for(&mut rx, "a1's join", &a1, |e| {
        member_event(e, "joined", "e2e-a1").map(|(dc, m)| (dc.to_owned(), m.clone()))
    })
    .await;
    assert_eq!(dc, "dc1");
    assert_eq!(m.tags["weird"], "a,b=c d");
    assert_eq!(m.address, "127.0.0.1");

    // A member without any tag goes to the default dc.
    let mut a2 = Agent::start(&bin, "e2e-a2", AgentOptions::default().joining(a1.bind));
    let (dc, m) = wait_for(&mut rx, "a2's join", &a1, |e| {
        member_event(e, "joined", "e2e-a2").map(|(dc, m)| (dc.to_owned(), m.clone()))
    })
    .await;
    assert_eq!(dc, "default");
    assert!(m.tags.is_empty() && m.role.is_empty(), "{m:?}");

    // Tag values with spaces and commas, and a role.
    let options = AgentOptions::default()
        .tag("dc", "dc2")
        .tag("role", "web worker")
        .tag("note", "hello, big world")
        .joining(a1.bind);
    let mut a3 = Agent::start(&bin, "e2e-a3", options);
    let (dc, m) = wait_for(&mut rx, "a3's join", &a1, |e| {
        member_event(e, "joined", "e2e-a3").map(|(dc, m)| (dc.to_owned(), m.clone()))
    })
    .await;
    assert_eq!(dc, "dc2");
    assert_eq!(m.role, "web worker");
    assert_eq!(m.tags["note"], "hello, big world");

    // Update: a tag change on a3 arrives as MemberUpdated.
    let c3 = SerfClient::new(SerfConfig::new(a3.rpc.to_string())).unwrap();
    c3.tags(&BTreeMap::from([("version".into(), "2".into())]), &[])
        .await
        .unwrap();
    let m = wait_for(&mut rx, "a3's update", &a1, |e| {
        member_event(e, "updated", "e2e-a3").map(|(_, m)| m.clone())
    })
    .await;
    assert_eq!(m.tags["version"], "2");
    assert_eq!(m.tags["note"], "hello, big world");

    // A user event with a payload, fired elsewhere, delivered with a1's dc.
    let c2 = SerfClient::new(SerfConfig::new(a2.rpc.to_string())).unwrap();
    c2.event("deploy", b"release 1.2, now", false)
        .await
        .unwrap();
    let (dc, payload) = wait_for(&mut rx, "the user event", &a1, |e| match e {
        BridgeEvent::UserEvent {
            dc, name, payload, ..
        } if name == "deploy" => Some((dc.clone(), payload.clone())),
        _ => None,
    })
    .await;
    assert_eq!(dc, "dc1");
    assert_eq!(&payload[..], b"release 1.2, now");

    // A query answered by the application through the bridge; an over-long answer is
    // truncated to fit Serf's limit instead of being dropped.
    let answering = {
        let mut rx = bridge.subscribe();
        tokio::spawn(async move {
            let mut answered = 0;
            while let Some(e) = rx.recv().await {
                if let BridgeEvent::Query(q) = e {
                    let answer = if q.name == "long" {
                        vec![b'x'; 5000]
                    } else {
                        let mut a = b"load of ".to_vec();
                        a.extend_from_slice(&q.payload);
                        a
                    };
                    q.respond(answer);
                    answered += 1;
                    if answered == 2 {
                        return;
                    }
                }
            }
        })
    };
    // Every record of the query `name` (payload `cpu`) asked of a1.
    let query = async |name: &str| {
        let params = QueryParams {
            name: name.into(),
            payload: b"cpu".to_vec(),
            filter_nodes: vec!["e2e-a1".into()],
            timeout: Some(Duration::from_secs(8)),
            ..Default::default()
        };
        c2.query(&params).await.unwrap().collect().await.unwrap()
    };
    let records = query("load").await;
    assert!(
        records.contains(&QueryRecord::Response {
            from: "e2e-a1".into(),
            payload: b"load of cpu".to_vec()
        }),
        "{records:?}\n{}",
        a1.log_text()
    );
    let records = query("long").await;
    let long = records
        .iter()
        .find_map(|r| match r {
            QueryRecord::Response { payload, .. } => Some(payload.len()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no response to the long query: {records:?}"));
    assert!((900..1024).contains(&long), "{long}");
    answering.await.unwrap();

    // Graceful leave of a2.
    c2.leave().await.unwrap();
    let dc = wait_for(&mut rx, "a2's leave", &a1, |e| {
        member_event(e, "left", "e2e-a2").map(|(dc, _)| dc.to_owned())
    })
    .await;
    assert_eq!(dc, "default");
    assert!(a2.wait_exit(Duration::from_secs(10)));

    // a3 is killed: Serf's failure detector reports member-failed (never `member-fail`).
    a3.kill();
    let dc = wait_for(&mut rx, "a3's failure", &a1, |e| {
        member_event(e, "failed", "e2e-a3").map(|(dc, _)| dc.to_owned())
    })
    .await;
    assert_eq!(dc, "dc2");

    // The view over HTTP: a1 alive in dc1, a3 failed in dc2, a2 gone.
    let view: serde_json::Value = reqwest::get(format!("{bridge_url}/members"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(view["dc1"][0]["name"], "e2e-a1");
    assert_eq!(view["dc1"][0]["status"], "alive");
    assert_eq!(view["dc2"][0]["name"], "e2e-a3");
    assert_eq!(view["dc2"][0]["status"], "failed");
    assert!(view.get("default").is_none(), "{view}");
    assert_eq!(bridge.members_in("dc2")[0].status, MemberState::Failed);
}

/// A child process that is killed when the test ends, failed or not.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `constructr serf-bridge --quiet` on 127.0.0.1:`port` with `args`, killed (SIGKILL) when
/// dropped.
fn cli_bridge(port: u16, args: &[&str]) -> KillOnDrop {
    let listen = format!("127.0.0.1:{port}");
    KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_constructr"))
            .args(["serf-bridge", "--quiet", "--listen", &listen])
            .args(args)
            .spawn()
            .unwrap(),
    )
}

/// The stand-alone `constructr serf-bridge` answers `serf query` through a subscriber in
/// another language: an SSE client of `GET /events` sees the query with its id and answers
/// with `POST /queries/{id}/response` (before, the bridge answered 504 at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serf_query_is_answered_by_an_sse_subscriber_of_the_cli_bridge() {
    let Some(bin) = support::serf_bin() else {
        return;
    };
    let port = support::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let _bridge = cli_bridge(port, &["--query-timeout", "6s"]);
    let http = reqwest::Client::new();
    let mut events = None;
    for _ in 0..100 {
        if let Ok(r) = http.get(format!("{base}/events")).send().await {
            events = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut events = events.expect("the bridge listens");
    let handler = format!(
        "{} serf-handler --bridge {base} --timeout 8s",
        env!("CARGO_BIN_EXE_constructr")
    );
    let a1 = Agent::start(
        &bin,
        "sse-q1",
        AgentOptions::default().with_handler(handler),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;

    // `serf query` itself, against the agent that runs the handler.
    let asked = tokio::process::Command::new(&bin)
        .arg("query")
        .arg(format!("-rpc-addr={}", a1.rpc))
        .args(["-timeout=10s", "load", "cpu?"])
        .output();
    let answer = async {
        let mut text = String::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            // The query's frame: `event: query` then `data: {...,"id":N,...}`.
            if let Some(frame) = text.split("\n\n").find(|f| f.contains("event: query")) {
                let data = frame.lines().find_map(|l| l.strip_prefix("data:")).unwrap();
                let query: serde_json::Value = serde_json::from_str(data.trim()).unwrap();
                assert_eq!(query["payload"], "cpu?", "{query}");
                let id = query["id"].as_u64().unwrap();
                let url = format!("{base}/queries/{id}/response");
                let resp = http.post(url).body("0.42").send().await.unwrap();
                assert_eq!(resp.status(), 204);
                return;
            }
            let chunk = tokio::time::timeout_at(deadline, events.chunk())
                .await
                .unwrap_or_else(|_| panic!("no query event; agent log:\n{}", a1.log_text()));
            text.push_str(&String::from_utf8_lossy(&chunk.unwrap().unwrap()));
        }
    };
    let (asked, ()) = tokio::join!(asked, answer);
    let out = String::from_utf8_lossy(&asked.unwrap().stdout).into_owned();
    assert!(
        out.contains("Response from 'sse-q1': 0.42"),
        "{out}\nagent log:\n{}",
        a1.log_text()
    );
}

/// The view per datacenter, as `GET /members` of the bridge at `base` answers it.
async fn bridge_view(http: &reqwest::Client, base: &str) -> Option<BTreeMap<String, Vec<String>>> {
    let view: BTreeMap<String, Vec<serde_json::Value>> = http
        .get(format!("{base}/members"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let names = |ms: Vec<serde_json::Value>| {
        let mut n: Vec<String> = ms
            .iter()
            .map(|m| format!("{} {}", m["name"], m["status"]))
            .collect();
        n.sort();
        n
    };
    Some(view.into_iter().map(|(dc, ms)| (dc, names(ms))).collect())
}

/// What the agent says, in the same shape (left members are not in the view).
async fn agent_view(client: &SerfClient) -> BTreeMap<String, Vec<String>> {
    use constructr::serf::MemberStatus;
    let mut view: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in client.members().await.unwrap() {
        let status = match m.status {
            MemberStatus::Alive | MemberStatus::Leaving => "alive",
            MemberStatus::Failed => "failed",
            _ => continue,
        };
        let dc = m
            .tags
            .get("dc")
            .cloned()
            .unwrap_or_else(|| "default".into());
        view.entry(dc)
            .or_default()
            .push(format!("\"{}\" \"{status}\"", m.name));
    }
    view.values_mut().for_each(|v| v.sort());
    view
}

/// kill -9 of the bridge while members join and leave: restarted with `--rpc`, it loads
/// the agent's member list, and `GET /members` equals what Serf says (before, a restarted
/// bridge served `{}` until new events came).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_killed_and_restarted_serves_the_agents_members() {
    let Some(bin) = support::serf_bin() else {
        return;
    };
    let port = support::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let handler = format!(
        "{} serf-handler --bridge {base} --timeout 3s",
        env!("CARGO_BIN_EXE_constructr")
    );
    let a1 = Agent::start(
        &bin,
        "rc-a1",
        AgentOptions::default()
            .tag("dc", "dc1")
            .with_handler(handler),
    );
    let rpc = a1.rpc.to_string();
    let start_bridge = || cli_bridge(port, &["--rpc", &rpc, "--reconcile-interval", "1s"]);
    let bridge = start_bridge();
    let _a2 = Agent::start(
        &bin,
        "rc-a2",
        AgentOptions::default().tag("dc", "dc2").joining(a1.bind),
    );
    let a3 = Agent::start(&bin, "rc-a3", AgentOptions::default().joining(a1.bind));
    let c1 = SerfClient::new(SerfConfig::new(a1.rpc.to_string())).unwrap();
    let http = reqwest::Client::new();
    let converged = async |what: &str| {
        eventually(what, &a1, Duration::from_secs(30), async || {
            let truth = agent_view(&c1).await;
            let view = bridge_view(&http, &base).await;
            let members = truth.values().map(Vec::len).sum::<usize>();
            match view {
                Some(v) if v == truth && members == 3 => Ok(truth),
                v => Err(format!("the bridge shows {v:?}, Serf {truth:?}")),
            }
        })
        .await
    };
    let before = converged("before the kill").await;
    assert_eq!(before.len(), 3, "{before:?}");

    drop(bridge); // SIGKILL
    let _a4 = Agent::start(
        &bin,
        "rc-a4",
        AgentOptions::default().tag("dc", "dc2").joining(a1.bind),
    );
    SerfClient::new(SerfConfig::new(a3.rpc.to_string()))
        .unwrap()
        .leave()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;

    let _bridge = start_bridge();
    let after = converged("after the restart").await;
    assert!(
        after["dc2"].iter().any(|m| m.contains("rc-a4")),
        "{after:?}"
    );
    assert!(
        !after.values().flatten().any(|m| m.contains("rc-a3")),
        "{after:?}"
    );
}

/// Polls `probe` every 200 ms until it is `Ok`; after `within`, fails with its last `Err`
/// and the agent's log.
async fn eventually<T>(
    what: &str,
    agent: &Agent,
    within: Duration,
    mut probe: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match probe().await {
            Ok(t) => return t,
            Err(e) if tokio::time::Instant::now() >= deadline => {
                panic!("{what}: {e}\nagent log:\n{}", agent.log_text())
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Polls the bridge's quorum until `done` accepts it (within 60 s).
async fn wait_quorum(
    bridge: &Bridge,
    agent: &Agent,
    what: &str,
    done: impl Fn(&constructr::serf::quorum::QuorumView) -> bool,
) -> constructr::serf::quorum::QuorumView {
    eventually(what, agent, Duration::from_secs(60), async || {
        let q = bridge.quorum().expect("a quorum");
        if done(&q) {
            Ok(q)
        } else {
            Err(format!("{q:?}"))
        }
    })
    .await
}

/// Four datacenters (dc tags) on real agents: one whole datacenter fails and the quorum
/// holds (3 of 4); a second one fails, as in a 2–2 split seen from dc1, and it halts (2 of
/// 4 is no strict majority); a datacenter comes back and it is high-available again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_datacenters_on_real_agents_keep_a_strict_majority_quorum() {
    use constructr::serf::quorum::QuorumState;
    let Some(bin) = support::serf_bin() else {
        return;
    };
    let bridge = Bridge::new(
        BridgeConfig::default()
            .with_quorum_dc("dc1")
            .with_quorum_ha_after(Duration::from_secs(2))
            .with_quorum_failure_grace(Duration::from_secs(2)),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bridge_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(bridge.clone().serve(listener, std::future::pending()));
    let handler = format!(
        "{} serf-handler --bridge {bridge_url} --timeout 3s",
        env!("CARGO_BIN_EXE_constructr")
    );
    let a1 = Agent::start(
        &bin,
        "qa-dc1",
        AgentOptions::default()
            .tag("dc", "dc1")
            .with_handler(handler),
    );
    let other = |dc: &str| {
        let options = AgentOptions::default().tag("dc", dc).joining(a1.bind);
        Agent::start(&bin, &format!("qa-{dc}"), options)
    };
    let _a2 = other("dc2");
    let mut a3 = other("dc3");
    let mut a4 = other("dc4");
    let state = |s: QuorumState| move |q: &constructr::serf::quorum::QuorumView| q.state == s;
    let q = wait_quorum(&bridge, &a1, "4 dcs", state(QuorumState::HighAvailable)).await;
    assert_eq!(q.known.len(), 4, "{q:?}");

    a3.kill();
    let q = wait_quorum(&bridge, &a1, "dc3 inactive", |q| q.active.len() == 3).await;
    assert_eq!(
        q.state,
        QuorumState::HighAvailable,
        "3 of 4 keep quorum: {q:?}"
    );

    a4.kill();
    let q = wait_quorum(&bridge, &a1, "dc4 inactive", |q| q.active.len() == 2).await;
    assert_eq!(
        q.state,
        QuorumState::Halted,
        "2 of 4 is no strict majority: {q:?}"
    );

    a3.restart();
    let q = wait_quorum(&bridge, &a1, "dc3 back", state(QuorumState::HighAvailable)).await;
    assert_eq!(q.active.len(), 3, "{q:?}");
}
