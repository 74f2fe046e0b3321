//! The `constructr` command as a user runs it.

use assert_cmd::Command;

fn constructr() -> Command {
    Command::cargo_bin("constructr").expect("binary built")
}

fn json(out: &[u8]) -> serde_json::Value {
    serde_json::from_slice(out).expect("stdout is one JSON object")
}

/// Runs `constructr args`, which must exit 0; its output.
fn succeed(args: &[&str]) -> std::process::Output {
    let out = constructr().args(args).output().expect("runs");
    assert!(
        out.status.success(),
        "constructr {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A settings file `name` holding `text`, in a directory of this test process.
fn settings_file(name: &str, text: &str) -> String {
    let dir = std::env::temp_dir().join(format!("constructr-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(name);
    std::fs::write(&file, text).unwrap();
    file.to_str().unwrap().to_owned()
}

/// Runs `constructr --config <a file holding text> args` (at most 30 s); exit code and stderr.
fn with_settings(text: &str, args: &[&str]) -> (Option<i32>, String) {
    // One file per call: the tests run in parallel.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let file = settings_file(&format!("settings-{n}.toml"), text);
    let out = constructr()
        .args(["--config", &file])
        .args(args)
        .timeout(std::time::Duration::from_secs(30))
        .output()
        .expect("runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn demo_json_reports_one_cluster_of_all_nodes() {
    let v = json(&succeed(&["demo", "--nodes", "12", "--json"]).stdout);
    assert_eq!(v["clusters"], 1);
    assert_eq!(v["members"], 12);
    assert_eq!(v["registered"], 12);
    assert_eq!(v["entries_after_shutdown"], 0);
    assert!(v["formation_ms"].as_f64().is_some());
    // At least a read and a registration per node.
    assert!(v["coordination_requests"].as_u64().unwrap() >= 12 * 2);
    let per_node = v["requests_per_node"].as_f64().unwrap();
    let total = v["coordination_requests"].as_f64().unwrap();
    assert!((per_node - total / 12.0).abs() < 0.01, "{v}");
    assert!(
        v["requests_per_node_per_refresh"].is_null(),
        "no hold asked: {v}"
    );
}

/// `--hold-refreshes K` keeps the formed cluster for K refresh intervals and reports its
/// steady-state requests per node per refresh (the memory backend: one refresh each).
#[test]
fn demo_reports_steady_state_requests_per_refresh() {
    let settings =
        std::env::temp_dir().join(format!("constructr-hold-{}.toml", std::process::id()));
    std::fs::write(
        &settings,
        "refresh-interval = \"200ms\"\ncoordination-timeout = \"100ms\"\nretry-delay = \"50ms\"\nttl-factor = 10.0\n",
    )
    .unwrap();
    let out = succeed(&[
        "demo",
        "--nodes",
        "5",
        "--json",
        "--hold-refreshes",
        "5",
        "--config",
        settings.to_str().unwrap(),
    ]);
    let _ = std::fs::remove_file(&settings);
    let v = json(&out.stdout);
    assert_eq!(v["hold_refreshes"], 5);
    let r = v["requests_per_node_per_refresh"]
        .as_f64()
        .expect("a number");
    assert!(
        (0.6..=1.4).contains(&r),
        "about one refresh per node per interval: {v}"
    );
}

#[test]
fn demo_prints_a_timeline_and_summary() {
    let out = succeed(&["demo", "--nodes", "3"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("GettingNodes -> Locking"), "{text}");
    assert!(text.contains("AddingSelf -> RefreshScheduled"), "{text}");
    assert!(text.contains("1 cluster(s) [3], 3/3 registered"), "{text}");
}

/// Every node's timeline is whole, from its first read to its stop: the demo waits for each
/// node's events before it prints (it once printed before a node's events had been
/// forwarded, and a node's whole timeline was missing).
#[test]
fn demo_timeline_shows_every_node_from_its_first_read_to_its_stop() {
    for _ in 0..5 {
        let out = succeed(&["demo", "--nodes", "10"]);
        let text = String::from_utf8_lossy(&out.stdout);
        for i in 0..10 {
            let node = format!("127.0.0.1:{} ", 20_000 + i);
            let lines: Vec<&str> = text.lines().filter(|l| l.contains(&node)).collect();
            assert!(
                lines
                    .first()
                    .is_some_and(|l| l.contains("GettingNodes -> ")),
                "{node}:\n{text}"
            );
            assert!(
                lines.last().is_some_and(|l| l.ends_with("-> Stopped")),
                "{node}:\n{text}"
            );
        }
    }
}

#[test]
fn sim_json_reports_trials_and_islands() {
    let out = succeed(&[
        "sim", "--trials", "50", "--nodes", "5", "--faults", "--seed", "9", "--json",
    ]);
    let v = json(&out.stdout);
    assert_eq!(v["trials"], 50);
    assert_eq!(v["islands"], 0);
    assert_eq!(v["failed_seeds"], serde_json::json!([]));
    assert!(v["elapsed_ms"].as_u64().is_some());
    assert_eq!(v["clusters_lost"], 0);
    let scenarios = &v["scenarios"];
    let total: u64 = ["random_faults", "outage", "wipe", "join_errors"]
        .iter()
        .map(|k| scenarios[k].as_u64().expect("a count per scenario"))
        .sum();
    assert_eq!(total, 50);
}

#[test]
fn invalid_settings_file_exits_2_naming_the_rule() {
    for (text, rule) in [
        (
            "ttl-factor = 1.1\nrefresh-interval = \"30s\"\n",
            "ttl-factor 1.1 is too small",
        ),
        ("no-such-key = 1\n", "unknown field"),
        // Any message: the duration does not parse.
        ("retry-delay = \"soon\"\n", ""),
    ] {
        let (code, stderr) = with_settings(text, &["demo"]);
        assert_eq!(code, Some(2), "{text}: {stderr}");
        assert!(stderr.contains(rule), "{text}: {stderr}");
    }
}

#[test]
fn settings_file_and_cluster_flag_are_applied() {
    let file = settings_file(
        "ok.toml",
        "coordination-timeout = \"1s\"\nretry-delay = \"200ms\"\n",
    );
    let out = succeed(&[
        "--config",
        &file,
        "--cluster",
        "orders",
        "demo",
        "--nodes",
        "4",
        "--json",
    ]);
    assert_eq!(json(&out.stdout)["members"], 4);
}

#[test]
fn cluster_names_that_escape_the_prefix_exit_2() {
    for bad in ["a/b", "..", ""] {
        let out = constructr()
            .args(["--cluster", bad, "demo"])
            .output()
            .expect("runs");
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("invalid cluster name"));
    }
}

#[test]
fn bad_arguments_get_clap_errors() {
    let out = constructr()
        .args(["demo", "--nodes", "zero"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid value"));
}

#[test]
fn serf_handler_refuses_malformed_input_with_exit_2() {
    // (case, SERF_EVENT, standard input, what the handler says)
    #[rustfmt::skip]
    let cases = [
        ("a member line without tabs", "member-join", "n2\t10.0.0.2 no tabs here\n", "nothing forwarded"),
        ("an event Serf never sends", "member-fail", "", "unknown SERF_EVENT \"member-fail\""),
    ];
    for (case, event, stdin, says) in cases {
        let out = constructr()
            .args(["serf-handler", "--bridge", "http://127.0.0.1:9"])
            .env("SERF_EVENT", event)
            .env("SERF_SELF_NAME", "n1")
            .write_stdin(stdin)
            .output()
            .expect("runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{case}: {stderr}");
        assert!(out.stdout.is_empty(), "{case}: nothing on stdout");
        assert!(stderr.contains(says), "{case}: {stderr}");
    }
}

#[test]
fn non_finite_or_huge_settings_exit_2_instead_of_hanging() {
    for (text, rule) in [
        (
            "ttl-factor = inf\n",
            "ttl-factor inf must be a finite number",
        ),
        ("ttl-factor = 1e300\n", "ttl must be at most 365 days"),
        ("ttl-factor = nan\n", "must be a finite number"),
        (
            "join-timeout = \"1000years\"\n",
            "join-timeout must be at most 365 days",
        ),
        (
            "retry-delay = \"1ns\"\n",
            "retry-delay must be at least 1 ms",
        ),
    ] {
        let (code, stderr) = with_settings(text, &["demo", "--nodes", "3"]);
        assert_eq!(code, Some(2), "{text}: {stderr}");
        assert!(stderr.contains(rule), "{text}: {stderr}");
    }
}

#[test]
fn compat_preset_applies_to_every_command() {
    // ConstructR mode: no watch, fixed waits; the demo still forms one cluster.
    let out = succeed(&["--compat", "constructr", "demo", "--nodes", "3", "--json"]);
    assert_eq!(json(&out.stdout)["clusters"], 1);
    // It is a global option: accepted after the subcommand as well.
    succeed(&["sim", "--trials", "5", "--compat", "constructr", "--json"]);
}

#[test]
fn check_json_reports_every_property_holding_for_two_nodes() {
    let v = json(&succeed(&["check", "--nodes", "2", "--max-faults", "0", "--json"]).stdout);
    assert_eq!(v["nodes"], 2);
    assert_eq!(v["complete"], true);
    assert!(v["unique_states"].as_u64().unwrap() > 100);
    let props = v["properties"].as_array().unwrap();
    assert_eq!(props.len(), 10);
    assert_eq!(props[0]["name"], "at most one cluster among live members");
    for p in props {
        assert!(
            p["verdict"] == "holds" || p["verdict"] == "reached" || p["verdict"] == "not-reached",
            "{p}"
        );
    }
}

#[test]
fn check_with_a_mutation_prints_the_counterexample_and_exits_1() {
    let out = constructr()
        .args([
            "check",
            "--nodes",
            "2",
            "--max-faults",
            "0",
            "--mutation",
            "skip-reread-after-lock",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("VIOLATED     always     a node seeds only after reading the registry empty under the lock"),
        "{text}"
    );
    assert!(text.contains("lock -> acquired"), "{text}");
}

#[test]
fn check_refuses_bad_bounds_mutations_and_addresses_with_exit_2() {
    for args in [
        vec!["check", "--nodes", "5"],
        vec!["check", "--mutation", "none-such"],
        vec!["check", "--faults", "outage,meteor"],
        vec!["check", "--horizon", "2s"],
        vec!["check", "--horizon", "2h"],
        vec!["check", "--fault-window", "forever"],
    ] {
        let out = constructr().args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(!out.stderr.is_empty(), "{args:?}");
    }
    // The explorer on an address in use: a clear error, not stateright's panic.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = busy.local_addr().unwrap().to_string();
    let out = constructr()
        .args(["check", "--explore", &address])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot serve the explorer"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_explorer_serves_the_state_space() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let bin = assert_cmd::cargo::cargo_bin("constructr");
    let mut child = std::process::Command::new(bin)
        .args(["check", "--nodes", "2", "--max-faults", "0"])
        .args(["--explore", &format!("127.0.0.1:{port}")])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut body = String::new();
    for _ in 0..100 {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read, Write};
            s.write_all(b"GET /.states HTTP/1.0\r\nHost: x\r\n\r\n")
                .unwrap();
            s.read_to_string(&mut body).unwrap();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        body.starts_with("HTTP/1.1 200") || body.starts_with("HTTP/1.0 200"),
        "{body}"
    );
    assert!(body.contains("GettingNodes"), "{body}");
}

/// A port on which a TCP listener accepts connections (into its backlog) and never answers:
/// every request to it times out. The listener lives as long as the returned value.
fn silent_endpoint() -> (std::net::TcpListener, u16) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    (listener, port)
}

/// A fake Consul agent whose KV store holds one node entry, `10.0.0.7:7946` with
/// incarnation 0x1a200f073a1f058f, in the cluster `default`; its address.
fn fake_consul() -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let body = r#"[{"Key":"constructr/default/nodes/MTAuMC4wLjc6Nzk0Ng","Value":"eyJhZGRyZXNzIjoiMTAuMC4wLjc6Nzk0NiIsImluY2FybmF0aW9uIjoxODgyNTIxMTY3OTU1MTY2NjA3fQ==","ModifyIndex":5,"CreateIndex":5,"LockIndex":0,"Flags":0}]"#;
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Consul-Index: 7\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    address
}

/// Runs `constructr args` with stdout a pipe whose read end is already closed (as after
/// `| head -1` has read its line); exit code and stderr.
fn with_closed_stdout(args: &[&str]) -> (Option<i32>, String) {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = std::process::Command::new(assert_cmd::cargo::cargo_bin("constructr"))
        .args(args)
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_closed_stdout_pipe_is_not_a_panic() {
    let consul = fake_consul();
    for args in [
        vec!["demo", "--nodes", "3"],
        vec!["demo", "--nodes", "3", "--json"],
        vec!["sim", "--trials", "5", "--nodes", "3"],
        vec!["check", "--nodes", "1", "--max-faults", "0"],
        vec!["nodes", "--backend", "consul", "--consul-address", &consul],
        vec![
            "nodes",
            "--backend",
            "consul",
            "--consul-address",
            &consul,
            "--json",
        ],
    ] {
        let (code, stderr) = with_closed_stdout(&args);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_ne!(code, Some(101), "{args:?}: {stderr}");
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
    }
}

#[test]
fn nodes_prints_the_incarnation_as_the_same_hex_in_text_and_json() {
    let consul = fake_consul();
    let text = succeed(&["nodes", "--backend", "consul", "--consul-address", &consul]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("10.0.0.7:7946  incarnation 1a200f073a1f058f"),
        "{text}"
    );
    let v = json(
        &succeed(&[
            "nodes",
            "--backend",
            "consul",
            "--consul-address",
            &consul,
            "--json",
        ])
        .stdout,
    );
    assert_eq!(v["nodes"][0]["address"], "10.0.0.7:7946");
    assert_eq!(v["nodes"][0]["incarnation"], "1a200f073a1f058f");
}

#[test]
fn nodes_reads_the_registry_through_a_coordination_url() {
    let consul = fake_consul();
    let url = consul.replace("http://", "consul://");
    let v = json(&succeed(&["nodes", "--coordination", &url, "--json"]).stdout);
    assert_eq!(v["nodes"][0]["address"], "10.0.0.7:7946");
    // The environment variable works the same way.
    let out = constructr()
        .args(["nodes", "--json"])
        .env("CONSTRUCTR_COORDINATION", &url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json(&out.stdout)["nodes"][0]["address"], "10.0.0.7:7946");
}

#[test]
fn logs_are_not_coloured_when_stderr_is_not_a_terminal() {
    let out = constructr()
        .args(["demo", "--nodes", "2"])
        .env("CONSTRUCTR_LOG", "debug")
        .env_remove("NO_COLOR")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("state changed"), "logs are on: {stderr}");
    assert!(!stderr.contains('\u{1b}'), "no escape codes: {stderr:?}");
}

#[test]
fn logs_are_coloured_on_a_terminal_unless_no_color_is_set() {
    // util-linux `script` gives the command a terminal.
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: no `script` (util-linux) to run the CLI on a terminal");
        return;
    }
    let bin = assert_cmd::cargo::cargo_bin("constructr");
    let on_a_terminal = |no_color: Option<&str>| {
        let mut cmd = std::process::Command::new("script");
        cmd.args([
            "-qec",
            &format!("{} demo --nodes 1", bin.display()),
            "/dev/null",
        ])
        .env("CONSTRUCTR_LOG", "info")
        .env_remove("NO_COLOR");
        if let Some(v) = no_color {
            cmd.env("NO_COLOR", v);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(text.contains("state changed"), "{text}");
        text
    };
    assert!(
        on_a_terminal(None).contains('\u{1b}'),
        "colours on a terminal"
    );
    assert!(!on_a_terminal(Some("1")).contains('\u{1b}'), "NO_COLOR=1");
    // An empty NO_COLOR does not count (no-color.org).
    assert!(on_a_terminal(Some("")).contains('\u{1b}'), "NO_COLOR empty");
}

#[test]
fn node_and_nodes_need_a_backend_and_say_how_to_choose_one() {
    for args in [
        vec!["nodes"],
        vec!["nodes", "--json"],
        vec!["node", "--gossip", "127.0.0.1:0"],
        vec!["nodes", "--backend", "memory"],
        vec!["nodes", "--coordination", "memory://"],
        vec![
            "node",
            "--coordination",
            "memory://",
            "--gossip",
            "127.0.0.1:0",
        ],
    ] {
        let out = constructr()
            .args(&args)
            .env_remove("CONSTRUCTR_COORDINATION")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        for option in ["--coordination", "--backend", "[etcd]"] {
            assert!(stderr.contains(option), "{args:?}: {stderr}");
        }
    }
    // And the help does not claim a default they refuse.
    let help = succeed(&["nodes", "--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(!help.contains("[default: memory]"), "{help}");
}

#[test]
fn bad_endpoints_exit_2_naming_the_endpoint() {
    for (args, shown) in [
        (
            vec![
                "nodes",
                "--backend",
                "etcd",
                "--endpoints",
                "http://exa mple:2379",
            ],
            "http://exa mple:2379",
        ),
        (
            vec!["nodes", "--backend", "etcd", "--endpoints", "ftp://x"],
            "ftp://x",
        ),
        (
            vec![
                "nodes",
                "--backend",
                "etcd",
                "--endpoints",
                "http://a:2379,http://b:99999",
            ],
            "http://b:99999",
        ),
        (
            vec![
                "nodes",
                "--backend",
                "consul",
                "--consul-address",
                "ftp://x",
            ],
            "ftp://x",
        ),
        (
            vec![
                "demo",
                "--backend",
                "etcd",
                "--endpoints",
                "http://exa mple:2379",
            ],
            "http://exa mple:2379",
        ),
        (
            vec![
                "node",
                "--backend",
                "etcd",
                "--endpoints",
                "ftp://x",
                "--gossip",
                "127.0.0.1:0",
            ],
            "ftp://x",
        ),
    ] {
        let out = constructr().args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(shown), "{args:?}: {stderr}");
    }
}

#[test]
fn invalid_coordination_urls_exit_2_without_their_secret() {
    for url in [
        "etcd://root:hunter2@exa mple:2379",
        "mongodb://h:27017",
        "etcd://root:hunter2@h?ca=/x",
        "consul://root:hunter2@h",
        "h1:2379",
    ] {
        for (args, env) in [
            (vec!["nodes", "--coordination", url], None),
            (vec!["nodes"], Some(url)),
            (vec!["demo", "--coordination", url], None),
        ] {
            let mut cmd = constructr();
            cmd.args(&args);
            if let Some(url) = env {
                cmd.env("CONSTRUCTR_COORDINATION", url);
            }
            let out = cmd.output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?} {url}: {stderr}");
            assert!(
                stderr.contains("invalid --coordination URL"),
                "{url}: {stderr}"
            );
            assert!(!stderr.contains("hunter2"), "{url}: {stderr}");
        }
    }
    // The environment variable's value stays out of the help.
    let out = constructr()
        .args(["nodes", "--help"])
        .env("CONSTRUCTR_COORDINATION", "etcd://root:hunter2@h")
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains("hunter2"));
}

#[test]
fn coordination_conflicts_with_the_old_backend_options() {
    for extra in [
        ["--backend", "etcd"],
        ["--endpoints", "http://a:2379"],
        ["--consul-address", "http://a:8500"],
    ] {
        let out = constructr()
            .args(["nodes", "--coordination", "etcd://a:2379"])
            .args(extra)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {stderr}");
        assert!(
            stderr.contains("cannot be used with"),
            "{extra:?}: {stderr}"
        );
    }
}

#[test]
fn a_timeout_names_the_endpoint() {
    let (_listener, port) = silent_endpoint();
    let endpoint = format!("127.0.0.1:{port}");
    for args in [
        vec![
            "--backend",
            "etcd",
            "--endpoints",
            &format!("http://{endpoint}"),
        ],
        vec![
            "--backend",
            "consul",
            "--consul-address",
            &format!("http://{endpoint}"),
        ],
        vec!["--coordination", &format!("consul://{endpoint}")],
    ] {
        let out = constructr()
            .arg("nodes")
            .args(&args)
            .args(["--request-timeout", "500ms"])
            .timeout(std::time::Duration::from_secs(30))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains("timed out"), "{args:?}: {stderr}");
        assert!(stderr.contains(&endpoint), "{args:?}: {stderr}");
    }
}

#[test]
fn the_settings_file_holds_backend_options_that_the_command_line_overrides() {
    let consul = fake_consul();
    let (_silent, port) = silent_endpoint();
    let silent = format!("http://127.0.0.1:{port}");
    // The [consul] section chooses the backend and its address.
    let (code, stderr) = with_settings(
        &format!("[consul]\naddress = [\"{consul}\"]\ndatacenter = \"dc1\"\n"),
        &["nodes"],
    );
    assert_eq!(code, Some(0), "{stderr}");
    // --consul-address overrides it: the file's address never answers.
    let file = format!("[consul]\naddress = [\"{silent}\"]\n");
    let (code, stderr) = with_settings(
        &file,
        &[
            "nodes",
            "--request-timeout",
            "300ms",
            "--consul-address",
            &consul,
        ],
    );
    assert_eq!(code, Some(0), "{stderr}");
    let (code, stderr) = with_settings(&file, &["nodes", "--request-timeout", "300ms"]);
    assert_eq!(code, Some(1), "{stderr}");
    // An [etcd] section chooses etcd (its endpoint never answers: exit 1, not 2).
    let (code, stderr) = with_settings(
        &format!("[etcd]\nendpoints = [\"{silent}\"]\n"),
        &["nodes", "--request-timeout", "300ms"],
    );
    assert_eq!(code, Some(1), "{stderr}");
}

#[test]
fn bad_backend_sections_exit_2_and_never_show_a_secret() {
    for (text, says) in [
        (
            "[etcd]\nendpoint = [\"http://a:2379\"]\n",
            "unknown field `endpoint`",
        ),
        ("[consul]\ntoken = \"x\"\nacl = 1\n", "unknown field `acl`"),
        ("[etcd]\npassword = \"hunter2\nuser = \"u\"\n", "line 2"),
        ("[etcd]\npassword = 12345hunter2\n", "line 2"),
        (
            "[etcd]\nuser = \"u\"\npassword = [\"hunter2\"]\n",
            "must be a string",
        ),
        (
            "[etcd]\nendpoints = [\"ftp://x\"]\n",
            "invalid [etcd] endpoints entry \"ftp://x\"",
        ),
        (
            "[consul]\naddress = [\"http://a b\"]\n",
            "invalid [consul] address entry",
        ),
    ] {
        let (code, stderr) = with_settings(text, &["nodes"]);
        assert_eq!(code, Some(2), "{text}: {stderr}");
        assert!(stderr.contains(says), "{text}: {stderr}");
        assert!(!stderr.contains("hunter2"), "{text}: {stderr}");
    }
}

#[test]
fn the_top_level_help_describes_every_subcommand() {
    let out = succeed(&["--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    let commands: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .collect();
    let names: Vec<&str> = commands
        .iter()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    for name in [
        "demo",
        "node",
        "nodes",
        "sim",
        "check",
        "serf-handler",
        "serf-bridge",
    ] {
        assert!(names.contains(&name), "{name} in {help}");
    }
    for line in &commands {
        let mut words = line.split_whitespace();
        let name = words.next().unwrap();
        let about: Vec<&str> = words.collect();
        assert!(about.len() >= 3, "{name} has a description: {line:?}");
        assert!(line.len() <= 100, "{name}: one short line: {line:?}");
    }
}

#[test]
fn secrets_from_the_file_the_url_or_the_environment_never_reach_the_logs() {
    let (_silent, port) = silent_endpoint();
    let file = settings_file(
        "secret-in-file.toml",
        &format!(
            "[etcd]\nendpoints = [\"http://127.0.0.1:{port}\"]\nuser = \"u\"\npassword = \"hunter2-file\"\n"
        ),
    );
    // (arguments, an environment variable)
    type Case = (Vec<String>, Option<(&'static str, &'static str)>);
    let cases: [Case; 3] = [
        (vec!["--config".into(), file], None),
        (
            vec![
                "--coordination".into(),
                format!("etcd://u:hunter2-url@127.0.0.1:{port}"),
            ],
            None,
        ),
        (
            vec![
                "--coordination".into(),
                format!("consul://127.0.0.1:{port}"),
            ],
            Some(("CONSTRUCTR_CONSUL_TOKEN", "hunter2-env")),
        ),
    ];
    for (args, env) in cases {
        let mut cmd = constructr();
        cmd.arg("nodes")
            .args(&args)
            .args(["--request-timeout", "300ms"])
            .env("CONSTRUCTR_LOG", "trace")
            .timeout(std::time::Duration::from_secs(30));
        if let Some((k, v)) = env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("TRACE") || stderr.contains("DEBUG"),
            "logs on: {stderr}"
        );
        assert!(!stderr.contains("hunter2"), "{args:?}: {stderr}");
    }
}

#[test]
fn a_url_takes_the_password_it_leaves_out_from_the_environment() {
    let (_silent, port) = silent_endpoint();
    let url = format!("etcd://root@127.0.0.1:{port}");
    let run = |password: Option<&str>| {
        let mut cmd = constructr();
        cmd.args([
            "nodes",
            "--coordination",
            &url,
            "--request-timeout",
            "300ms",
        ])
        .env_remove("CONSTRUCTR_ETCD_PASSWORD")
        .timeout(std::time::Duration::from_secs(30));
        if let Some(p) = password {
            cmd.env("CONSTRUCTR_ETCD_PASSWORD", p);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Without it the configuration is refused; with it the request goes out (and times out).
    let (code, stderr) = run(None);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("user and password"), "{stderr}");
    let (code, stderr) = run(Some("hunter2"));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("timed out"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

/// One HTTP/1.1 request on a fresh connection; the status code (0 if nothing answered).
fn http_status(port: u16, method: &str, path: &str) -> u16 {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(5)));
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    if s.write_all(request.as_bytes()).is_err() {
        return 0;
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// The stand-alone bridge prints every event to stdout: a closed stdout must not take down
/// the task that prints (before: `println!` panicked on EPIPE in it).
#[test]
fn the_serf_bridge_keeps_serving_when_its_stdout_is_closed() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut bridge = std::process::Command::new(assert_cmd::cargo::cargo_bin("constructr"))
        .args(["serf-bridge", "--listen", &format!("127.0.0.1:{port}")])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while http_status(port, "GET", "/members") != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the bridge did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    for ltime in 1..=3 {
        assert_eq!(
            http_status(
                port,
                "POST",
                &format!("/dc/dc1/events/deploy?ltime={ltime}")
            ),
            204
        );
    }
    assert_eq!(http_status(port, "GET", "/members"), 200);
    assert!(bridge.try_wait().unwrap().is_none(), "the bridge exited");
    sigterm(bridge.id());
    let out = bridge.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}

fn sigterm(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// A node that cannot reach its coordination service fails naming the service and its
/// endpoint (before: only "coordination request timed out").
#[test]
fn a_failed_node_names_its_coordination_endpoint() {
    let (_listener, port) = silent_endpoint();
    let endpoint = format!("127.0.0.1:{port}");
    let settings = std::env::temp_dir().join(format!("constructr-fail-{port}.toml"));
    std::fs::write(
        &settings,
        "nr-of-retries = 1\ncoordination-timeout = \"300ms\"\nretry-delay = \"100ms\"\n",
    )
    .unwrap();
    let gossip = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = constructr()
        .args(["node", "--coordination", &format!("consul://{endpoint}")])
        .args([
            "--request-timeout",
            "300ms",
            "--gossip",
            &gossip.to_string(),
        ])
        .arg("--config")
        .arg(&settings)
        .timeout(std::time::Duration::from_secs(60))
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&settings);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "coordination service: consul at http://{endpoint}"
        )),
        "{stderr}"
    );
}
