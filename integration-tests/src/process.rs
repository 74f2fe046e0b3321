//! Real `constructr node` processes (chitchat gossip on 127.0.0.1) against a real
//! coordination service ([`crate::service`]), shared by the process-level test files.
//!
//! The binary is the workspace's own `constructr`: `CONSTRUCTR_BIN` if set, else the one next
//! to the running test's profile directory, built first with `cargo build -p constructr-cli`
//! when it is missing or older than the workspace's sources. Every process is killed on drop.
//! Each process prints `--json` lines; every line is kept with the instant it was read.

use std::io::{BufRead as _, BufReader, Read as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use constructr_core::{ClusterName, Coordination, CoordinationError, Registry, Scope};
use serde_json::Value;

use crate::service::{Backend, Service};
use crate::unique_cluster_name;

/// The key prefix every settings file used with [`Setup`] must set (`key-prefix = "..."`).
pub const KEY_PREFIX: &str = "/constructr-it";
/// chitchat gossip interval of every process.
pub const GOSSIP_INTERVAL: &str = "100ms";

// ---------------------------------------------------------------------------------------
// The binary

/// The `constructr` binary (located, or built when missing or stale; once per test process).
pub fn constructr_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("CONSTRUCTR_BIN") {
            return PathBuf::from(bin);
        }
        // This test runs from `{target}/{profile}/deps/`.
        let exe = std::env::current_exe().expect("test executable path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("{target}/{profile}/deps/");
        let bin = profile_dir.join("constructr");
        if !is_fresh(&bin) {
            build_bin(profile_dir);
        }
        assert!(bin.exists(), "{} was not built", bin.display());
        bin
    })
    .clone()
}

/// Whether `bin` exists and is newer than every source and manifest of the workspace.
fn is_fresh(bin: &Path) -> bool {
    let Ok(built) = bin.metadata().and_then(|m| m.modified()) else {
        return false;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    newest_source(root).is_none_or(|newest| newest <= built)
}

fn newest_source(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let t = if path.is_dir() {
            if name.starts_with('.') || name == "target" || name == "tests" || name == "examples" {
                continue;
            }
            newest_source(&path)
        } else if name.ends_with(".rs") || name == "Cargo.toml" || name == "Cargo.lock" {
            entry.metadata().and_then(|m| m.modified()).ok()
        } else {
            None
        };
        newest = newest.max(t);
    }
    newest
}

fn build_bin(profile_dir: &Path) {
    let target_dir = profile_dir.parent().expect("{target}/{profile}");
    let profile = profile_dir
        .file_name()
        .and_then(|p| p.to_str())
        .expect("profile dir name");
    let mut cargo = Command::new(env!("CARGO"));
    cargo
        .args(["build", "-p", "constructr-cli", "--bin", "constructr"])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    match profile {
        "debug" => {}
        "release" => {
            cargo.arg("--release");
        }
        other => {
            cargo.args(["--profile", other]);
        }
    }
    let status = cargo.status().expect("run cargo build");
    assert!(
        status.success(),
        "cargo build of the constructr binary failed"
    );
}

// ---------------------------------------------------------------------------------------
// One `constructr node` process

/// One `--json` line of a process, with the instant the test read it.
#[derive(Clone, Debug)]
pub struct Line {
    /// When the line was read (a few ms after the process printed it).
    pub at: Instant,
    /// The parsed line.
    pub value: Value,
}

impl Line {
    /// The line's `state`.
    pub fn state(&self) -> Option<&str> {
        self.value["state"].as_str()
    }

    /// Whether this line reports a state change (not only a membership change).
    pub fn is_state_change(&self) -> bool {
        self.value["event"] == "state"
    }

    /// The line's live members (sorted gossip addresses).
    pub fn members(&self) -> Vec<String> {
        self.value["members"]
            .as_array()
            .map(|m| {
                m.iter()
                    .filter_map(|a| a.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Whether `state` is a registered member's (`RefreshScheduled` or `Refreshing`).
pub fn is_registered_state(state: &str) -> bool {
    matches!(state, "RefreshScheduled" | "Refreshing")
}

/// A running (or exited) `constructr node --json` process.
pub struct NodeProcess {
    /// Its gossip address (`127.0.0.1:{port}`), also its registered address.
    pub gossip: String,
    child: Child,
    lines: Arc<Mutex<Vec<Line>>>,
    stderr: Arc<Mutex<String>>,
    /// Its exit status, once seen by [`NodeProcess::try_exit`] or [`NodeProcess::kill9`].
    pub exit: Option<ExitStatus>,
}

impl NodeProcess {
    /// Starts `constructr node` with these backend options, cluster and settings file,
    /// gossiping on `127.0.0.1:{port}`.
    pub fn start(backend: &[String], cluster: &ClusterName, settings: &Path, port: u16) -> Self {
        let gossip = format!("127.0.0.1:{port}");
        let mut child = Command::new(constructr_bin())
            .arg("node")
            .args(backend)
            .arg("--cluster")
            .arg(cluster.as_str())
            .arg("--config")
            .arg(settings)
            .args(["--gossip", &gossip, "--gossip-interval", GOSSIP_INTERVAL])
            .arg("--json")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start constructr node");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let out = child.stdout.take().expect("piped");
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
                sink.lock().expect("not poisoned").push(Line {
                    at: Instant::now(),
                    value,
                });
            }
        });
        let mut err = child.stderr.take().expect("piped");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .expect("not poisoned")
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Self {
            gossip,
            child,
            lines,
            stderr,
            exit: None,
        }
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<Line> {
        self.lines.lock().expect("not poisoned").clone()
    }

    /// The lines read after `at`.
    pub fn lines_after(&self, at: Instant) -> Vec<Line> {
        self.lines
            .lock()
            .expect("not poisoned")
            .iter()
            .filter(|l| l.at > at)
            .cloned()
            .collect()
    }

    /// The last line.
    pub fn last(&self) -> Option<Value> {
        self.lines
            .lock()
            .expect("not poisoned")
            .last()
            .map(|l| l.value.clone())
    }

    /// The state of the last line.
    pub fn state(&self) -> Option<String> {
        Some(self.last()?["state"].as_str()?.to_owned())
    }

    /// The live members of the last line (sorted gossip addresses).
    pub fn members(&self) -> Vec<String> {
        self.last()
            .and_then(|l| {
                l["members"].as_array().map(|m| {
                    m.iter()
                        .filter_map(|a| a.as_str().map(str::to_owned))
                        .collect()
                })
            })
            .unwrap_or_default()
    }

    /// Whether the last line says registered (`RefreshScheduled` or `Refreshing`).
    pub fn is_registered(&self) -> bool {
        self.state().as_deref().is_some_and(is_registered_state)
    }

    /// Every state this process went through, in order.
    pub fn states(&self) -> Vec<String> {
        self.lines
            .lock()
            .expect("not poisoned")
            .iter()
            .filter(|l| l.is_state_change())
            .filter_map(|l| l.state().map(str::to_owned))
            .collect()
    }

    /// When this process last entered `state`.
    pub fn last_entered(&self, state: &str) -> Option<Instant> {
        self.lines
            .lock()
            .expect("not poisoned")
            .iter()
            .rev()
            .find(|l| l.is_state_change() && l.state() == Some(state))
            .map(|l| l.at)
    }

    /// When this process first entered `state` after `at`.
    pub fn first_entered_after(&self, state: &str, at: Instant) -> Option<Instant> {
        self.lines
            .lock()
            .expect("not poisoned")
            .iter()
            .find(|l| l.at > at && l.is_state_change() && l.state() == Some(state))
            .map(|l| l.at)
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        self.exit = self.child.wait().ok();
    }

    /// Sends SIGTERM (graceful leave).
    pub fn sigterm(&self) {
        self.signal("TERM");
    }

    /// Sends SIGSTOP: the process freezes (as in a long GC pause) until [`Self::sigcont`].
    pub fn sigstop(&self) {
        self.signal("STOP");
    }

    /// Sends SIGCONT: a frozen process goes on.
    pub fn sigcont(&self) {
        self.signal("CONT");
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {}", self.child.id());
    }

    /// The exit status, if the process has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().expect("try_wait");
        }
        self.exit
    }

    /// Its gossip address, exit status, last lines and stderr, for failure messages.
    pub fn describe(&self) -> String {
        self.describe_last(6)
    }

    /// Like [`NodeProcess::describe`] with the last `n` lines.
    pub fn describe_last(&self, n: usize) -> String {
        let lines = self.lines.lock().expect("not poisoned");
        let tail: Vec<String> = lines
            .iter()
            .rev()
            .take(n)
            .rev()
            .map(|l| l.value.to_string())
            .collect();
        format!(
            "--- {} (exit {:?})\n{}\nstderr: {}",
            self.gossip,
            self.exit,
            tail.join("\n"),
            self.stderr.lock().expect("not poisoned").trim()
        )
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// A service, a cluster name and a settings file

/// A running coordination service, a fresh cluster name and a settings file for the
/// processes of one test.
pub struct Setup {
    /// The coordination service.
    pub service: Service,
    /// The cluster name (unique to the test).
    pub cluster: ClusterName,
    settings: PathBuf,
    /// The entry TTL the settings file gives (refresh-interval × ttl-factor).
    pub ttl: Duration,
}

impl Setup {
    /// Starts `backend` (and locates or builds the binary meanwhile), names a cluster
    /// `{what}-{random}` and writes `settings_toml`, whose entry TTL is `ttl`.
    pub async fn launch(backend: Backend, what: &str, settings_toml: &str, ttl: Duration) -> Self {
        let bin = tokio::task::spawn_blocking(constructr_bin);
        let service = Service::start(backend).await;
        bin.await.expect("binary located or built");
        Self::new(service, what, settings_toml, ttl)
    }

    /// A setup on a running service.
    pub fn new(service: Service, what: &str, settings_toml: &str, ttl: Duration) -> Self {
        assert!(
            settings_toml.contains(&format!("key-prefix = \"{KEY_PREFIX}\"")),
            "the settings must use key-prefix {KEY_PREFIX}"
        );
        let cluster = unique_cluster_name(what);
        let settings = std::env::temp_dir().join(format!("constructr-{cluster}.toml"));
        std::fs::write(&settings, settings_toml).expect("write settings file");
        Self {
            service,
            cluster,
            settings,
            ttl,
        }
    }

    /// The registry scope of the cluster.
    pub fn scope(&self) -> Scope {
        Scope::new(KEY_PREFIX, self.cluster.clone()).expect("valid scope")
    }

    /// The latest an unrefreshed entry disappears after its last refresh.
    pub fn expiry_bound(&self) -> Duration {
        self.service.expiry_bound(self.ttl)
    }

    /// Starts a `constructr node` of the cluster gossiping on `127.0.0.1:{port}`.
    pub fn start(&self, port: u16) -> NodeProcess {
        self.start_with(port, &[])
    }

    /// Starts a process (see [`Setup::start`]) on each of `ports`.
    pub fn start_all(&self, ports: &[u16]) -> Vec<NodeProcess> {
        ports.iter().map(|&port| self.start(port)).collect()
    }

    /// As [`Setup::start`], with extra `constructr node` options (e.g. `--join-only`).
    pub fn start_with(&self, port: u16, extra: &[&str]) -> NodeProcess {
        let mut args = self.service.backend_args();
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        NodeProcess::start(&args, &self.cluster, &self.settings, port)
    }

    /// Reads the registry of the cluster.
    pub async fn try_registry(&self) -> Result<Registry, CoordinationError> {
        self.service.coordination().get_nodes(&self.scope()).await
    }

    /// Reads the registry of the cluster; panics if the service does not answer.
    pub async fn registry(&self) -> Registry {
        self.try_registry().await.expect("read the registry")
    }

    /// The registered addresses, sorted.
    pub async fn registered_addresses(&self) -> Vec<String> {
        sorted(self.registry().await.nodes.into_iter().map(|n| n.address))
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.settings);
    }
}

// ---------------------------------------------------------------------------------------
// Helpers

/// `n` distinct free UDP ports on 127.0.0.1 (held together while picking, so distinct).
pub fn free_udp_ports(n: usize) -> Vec<u16> {
    let sockets: Vec<std::net::UdpSocket> = (0..n)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").expect("a free UDP port"))
        .collect();
    sockets
        .iter()
        .map(|s| s.local_addr().expect("addr").port())
        .collect()
}

/// The addresses, sorted.
pub fn sorted(addresses: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut a: Vec<String> = addresses.into_iter().collect();
    a.sort();
    a
}

/// Polls `check` every 100 ms; on timeout panics with `what` and every process's last lines.
pub async fn wait_until(
    procs: &mut [&mut NodeProcess],
    timeout: Duration,
    what: &str,
    check: impl FnMut(&mut [&mut NodeProcess]) -> bool,
) -> Duration {
    match poll_until(procs, timeout, check).await {
        Some(took) => took,
        None => {
            for p in procs.iter_mut() {
                p.try_exit();
            }
            let dump: Vec<String> = procs.iter().map(|p| p.describe()).collect();
            panic!(
                "timed out after {timeout:?} waiting for: {what}\n{}",
                dump.join("\n")
            );
        }
    }
}

/// Polls `check` every 100 ms for at most `timeout`; how long it took, `None` on timeout.
pub async fn poll_until(
    procs: &mut [&mut NodeProcess],
    timeout: Duration,
    mut check: impl FnMut(&mut [&mut NodeProcess]) -> bool,
) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if check(procs) {
            return Some(start.elapsed());
        }
        if start.elapsed() > timeout {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The gossip addresses of `procs`, sorted.
pub fn addresses_of(procs: &[NodeProcess]) -> Vec<String> {
    sorted(procs.iter().map(|p| p.gossip.clone()))
}

/// Waits (see [`wait_until`]) until every one of `procs` is registered and sees exactly
/// `expected` as live members; how long it took.
pub async fn wait_converged(
    procs: &mut [NodeProcess],
    expected: &[String],
    timeout: Duration,
    what: &str,
) -> Duration {
    let mut refs: Vec<&mut NodeProcess> = procs.iter_mut().collect();
    wait_until(&mut refs, timeout, what, |ps| converged(ps, expected)).await
}

/// Every process registered and seeing exactly `expected` as live members.
pub fn converged(procs: &mut [&mut NodeProcess], expected: &[String]) -> bool {
    procs
        .iter()
        .all(|p| p.is_registered() && p.members() == expected)
}

/// The timings of one backend's settings file (the outage and re-seed tests share them).
pub struct Profile {
    /// The settings file: [`KEY_PREFIX`] and the timings below.
    pub toml: &'static str,
    pub refresh_interval: Duration,
    /// Entry TTL: refresh-interval × ttl-factor.
    pub ttl: Duration,
    pub coordination_timeout: Duration,
    pub retry_delay: Duration,
    pub join_timeout: Duration,
}

impl Profile {
    /// The profile of refresh interval, join timeout, coordination timeout and retry delay
    /// (in ms), with a ttl-factor of 3; its settings file says the same.
    fn new(millis: [u64; 4]) -> Self {
        let [
            refresh_interval,
            join_timeout,
            coordination_timeout,
            retry_delay,
        ] = millis.map(Duration::from_millis);
        let toml = format!(
            "\nkey-prefix = \"{KEY_PREFIX}\"\nrefresh-interval = \"{}\"\nttl-factor = 3.0\n\
             join-timeout = \"{}\"\ncoordination-timeout = \"{}\"\nretry-delay = \"{}\"\n",
            toml_duration(refresh_interval),
            toml_duration(join_timeout),
            toml_duration(coordination_timeout),
            toml_duration(retry_delay),
        );
        Self {
            toml: toml.leak(),
            refresh_interval,
            ttl: refresh_interval * 3,
            coordination_timeout,
            retry_delay,
            join_timeout,
        }
    }
}

/// `1s`, `700ms`: a duration as a settings file writes it.
fn toml_duration(d: Duration) -> String {
    match d.as_millis() {
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

/// etcd: refresh 1 s (entry TTL 3 s), join timeout 5 s, coordination timeout 700 ms, retry
/// delay 300 ms.
pub static ETCD: LazyLock<Profile> = LazyLock::new(|| Profile::new([1000, 5000, 700, 300]));

/// Consul: session TTLs are at least 10 s: refresh 4 s (entry TTL 12 s), join timeout 8 s
/// (lock TTL 10 s), coordination timeout 1 s, retry delay 300 ms.
pub static CONSUL: LazyLock<Profile> = LazyLock::new(|| Profile::new([4000, 8000, 1000, 300]));

/// The settings profile of `backend`.
pub fn profile(backend: Backend) -> &'static Profile {
    if backend.is_etcd() { &ETCD } else { &CONSUL }
}

#[cfg(test)]
mod tests {
    #[test]
    fn profiles_write_their_timings_into_the_settings_file() {
        assert_eq!(
            super::ETCD.toml,
            "\nkey-prefix = \"/constructr-it\"\nrefresh-interval = \"1s\"\nttl-factor = 3.0\n\
             join-timeout = \"5s\"\ncoordination-timeout = \"700ms\"\nretry-delay = \"300ms\"\n"
        );
        assert_eq!(
            super::CONSUL.toml,
            "\nkey-prefix = \"/constructr-it\"\nrefresh-interval = \"4s\"\nttl-factor = 3.0\n\
             join-timeout = \"8s\"\ncoordination-timeout = \"1s\"\nretry-delay = \"300ms\"\n"
        );
        assert_eq!(super::ETCD.ttl, std::time::Duration::from_secs(3));
        assert_eq!(super::CONSUL.ttl, std::time::Duration::from_secs(12));
    }
}
