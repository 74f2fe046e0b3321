//! The management endpoint (`constructr node --http ADDR`) of real node processes on real
//! etcd, probed the way Kubernetes and Prometheus would: `/ready` is 503 until the node is
//! registered and 200 after; `/alive` stays 200 through an etcd outage (and `/ready` too,
//! the member being degraded, not gone); `/metrics` passes `promtool check metrics` and its
//! counters move as requests are made; SIGTERM still ends the process cleanly.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use integration_tests::container::free_port;
use integration_tests::process::{NodeProcess, Setup, free_udp_ports, profile, wait_until};
use integration_tests::service::Backend;
use serde_json::Value;

const FORMATION: Duration = Duration::from_secs(90);

struct Probe {
    base: String,
    client: reqwest::Client,
}

impl Probe {
    fn new(port: u16) -> Self {
        Probe {
            base: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .unwrap(),
        }
    }

    /// The status code and body of `GET path`, or `None` while nothing answers.
    async fn get(&self, path: &str) -> Option<(u16, String)> {
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .ok()?;
        let code = r.status().as_u16();
        Some((code, r.text().await.ok()?))
    }

    async fn json(&self, path: &str) -> (u16, Value) {
        let (code, body) = self.get(path).await.expect("the endpoint answers");
        (code, serde_json::from_str(&body).expect("JSON"))
    }

    /// Polls `GET path` until its status code is `code`.
    async fn wait_for(&self, path: &str, code: u16, within: Duration, node: &NodeProcess) {
        let deadline = Instant::now() + within;
        loop {
            let got = self.get(path).await;
            if got.as_ref().is_some_and(|(c, _)| *c == code) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{path} did not answer {code} within {within:?} (last {got:?})\n{}",
                node.describe()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A sample's value in a metrics text (`name{labels}` as printed).
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// `promtool check metrics` (Debian's prometheus package; scripts/install-deps.sh puts it
/// on the PATH) on a scraped text.
fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool on the PATH (scripts/install-deps.sh installs it)");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- the metrics:\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_management_endpoint_of_node_processes_on_etcd() {
    integration_tests::require_docker!();
    let p = profile(Backend::Etcd);
    let setup = Setup::launch(Backend::Etcd, "mgmt", p.toml, p.ttl).await;
    let gossip = free_udp_ports(2);
    let http = [free_port(), free_port()];
    let probes = [Probe::new(http[0]), Probe::new(http[1])];

    // A join-only node cannot register while no node may seed: alive, not ready.
    let mut joiner = setup.start_with(
        gossip[0],
        &["--join-only", "--http", &format!("127.0.0.1:{}", http[0])],
    );
    probes[0]
        .wait_for("/alive", 200, Duration::from_secs(30), &joiner)
        .await;
    let (code, body) = probes[0].json("/ready").await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["state"], "WaitingForNodes", "{body}");
    let (_, b) = probes[0].json("/bootstrap").await;
    assert_eq!(b["registry"]["nodes"], Value::Array(vec![]), "{b}");

    // A node that may seed starts: both become ready.
    let mut seed = setup.start_with(gossip[1], &["--http", &format!("127.0.0.1:{}", http[1])]);
    for (probe, node) in probes.iter().zip([&joiner, &seed]) {
        probe.wait_for("/ready", 200, FORMATION, node).await;
    }
    let (_, s) = probes[1].json("/bootstrap").await;
    let (_, j) = probes[0].json("/bootstrap").await;
    assert_eq!(s["lock"], "this-node", "{s}");
    assert_eq!(s["cluster"], j["cluster"], "one cluster: {s} {j}");
    let expected = {
        let mut a = vec![joiner.gossip.clone(), seed.gossip.clone()];
        a.sort();
        a
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, m) = probes[0].json("/members").await;
        assert_eq!(code, 200);
        let mut got: Vec<String> = m["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["address"].as_str().unwrap().to_owned())
            .collect();
        got.sort();
        if got == expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "members {got:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // /metrics: valid for promtool, and its refresh counter moves.
    let refreshes = r#"constructr_coordination_requests_total{operation="refresh",outcome="ok"}"#;
    let (code, first) = probes[1].get("/metrics").await.unwrap();
    assert_eq!(code, 200);
    promtool_check(&first);
    assert_eq!(sample(&first, "constructr_registered"), 1.0, "{first}");
    tokio::time::sleep(p.ttl).await; // three refresh intervals
    let (_, later) = probes[1].get("/metrics").await.unwrap();
    assert!(
        sample(&later, refreshes) >= sample(&first, refreshes) + 2.0,
        "refreshes did not move:\n{first}\n---\n{later}"
    );

    // An etcd outage of 3 TTLs: /alive stays 200 on every probe, /ready too (degraded).
    setup.service.stop().await;
    let outage = Instant::now();
    let mut degraded = false;
    while outage.elapsed() < p.ttl * 3 {
        for (probe, node) in probes.iter().zip([&joiner, &seed]) {
            let (code, body) = probe.json("/alive").await;
            assert_eq!(
                code,
                200,
                "not alive during the outage: {body}\n{}",
                node.describe()
            );
            let (code, body) = probe.json("/ready").await;
            assert_eq!(code, 200, "not ready during the outage: {body}");
            degraded |= body["degraded"] == true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(degraded, "no member reported the outage as degraded");
    let (_, during) = probes[1].get("/metrics").await.unwrap();
    promtool_check(&during);
    let failed: f64 = ["unavailable", "timeout"]
        .iter()
        .map(|o| {
            sample(
                &during,
                &format!(
                    r#"constructr_coordination_requests_total{{operation="refresh",outcome="{o}"}}"#
                ),
            )
        })
        .sum();
    assert!(failed >= 1.0, "no failed refresh counted:\n{during}");
    assert!(
        sample(&during, "constructr_retries_total") >= 1.0,
        "{during}"
    );
    let (_, b) = probes[1].json("/bootstrap").await;
    assert!(b["last_error"].is_string(), "{b}");

    setup.service.start_again().await;
    for (probe, node) in probes.iter().zip([&joiner, &seed]) {
        let deadline = Instant::now() + FORMATION;
        loop {
            let (_, b) = probe.json("/bootstrap").await;
            if b["state"] == "RefreshScheduled" || b["state"] == "Refreshing" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "not registered again after the outage: {b}\n{}",
                node.describe()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // SIGTERM: a clean exit, the endpoint goes with the process.
    seed.sigterm();
    wait_until(
        &mut [&mut seed],
        Duration::from_secs(15),
        "exit after SIGTERM",
        |ps| ps[0].try_exit().is_some(),
    )
    .await;
    let status = seed.exit.expect("exited");
    assert!(status.success(), "{status}\n{}", seed.describe());
    assert!(
        probes[1].get("/alive").await.is_none(),
        "the endpoint outlived its process"
    );
    joiner.sigterm();
    wait_until(
        &mut [&mut joiner],
        Duration::from_secs(15),
        "exit after SIGTERM",
        |ps| ps[0].try_exit().is_some(),
    )
    .await;
    assert!(
        joiner.exit.expect("exited").success(),
        "{}",
        joiner.describe()
    );
}
