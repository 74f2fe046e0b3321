//! Real Serf agents as local processes on 127.0.0.1, for this crate's tests.
//!
//! The `serf` binary comes from, in order: `CONSTRUCTR_SERF_BIN`; `serf` on `PATH`; the
//! Docker image `CONSTRUCTR_SERF_IMAGE` (default `constructr-test/serf:0.10.1`), copied out
//! with `docker create` + `docker cp` into the target directory. Without any of them the
//! tests fail with a message saying so, unless `CONSTRUCTR_SKIP_DOCKER=1` (then they print a
//! skip line and pass).
#![allow(dead_code)]

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

const DEFAULT_IMAGE: &str = "constructr-test/serf:0.10.1";

/// Returns the serf binary, or `None` (after printing a skip line) when skipping is allowed.
/// Panics with instructions otherwise.
pub fn serf_bin() -> Option<PathBuf> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BIN.get_or_init(locate) {
        Ok(p) => Some(p.clone()),
        Err(why) if std::env::var("CONSTRUCTR_SKIP_DOCKER").as_deref() == Ok("1") => {
            println!("skipped: no serf binary ({why}) and CONSTRUCTR_SKIP_DOCKER=1");
            None
        }
        Err(why) => panic!(
            "no serf binary for the real-Serf tests: {why}.\n\
             Set CONSTRUCTR_SERF_BIN=/path/to/serf, put `serf` on PATH (Debian: apt-get install serf), \
             or build the image {DEFAULT_IMAGE} (scripts/images.sh) and keep docker running; \
             CONSTRUCTR_SKIP_DOCKER=1 skips these tests."
        ),
    }
}

fn locate() -> Result<PathBuf, String> {
    if let Ok(p) = std::env::var("CONSTRUCTR_SERF_BIN") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("CONSTRUCTR_SERF_BIN={} is not a file", p.display()))
        };
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("serf");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    let image = std::env::var("CONSTRUCTR_SERF_IMAGE").unwrap_or_else(|_| DEFAULT_IMAGE.into());
    extract_from_image(&image)
}

fn target_dir() -> PathBuf {
    // target/<profile>/deps/<test binary>
    let exe = std::env::current_exe().expect("current_exe");
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir)
}

fn extract_from_image(image: &str) -> Result<PathBuf, String> {
    let safe: String = image
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let dir = target_dir().join("serf-bin");
    let dest = dir.join(format!("serf-{safe}"));
    if dest.is_file() {
        return Ok(dest);
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let out = Command::new("docker")
        .args(["create", image])
        .output()
        .map_err(|e| format!("serf not on PATH, and docker cannot run: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "serf not on PATH, and `docker create {image}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let tmp = dir.join(format!("serf-{safe}.{}.tmp", std::process::id()));
    let cp = Command::new("docker")
        .args(["cp", &format!("{id}:/usr/local/bin/serf")])
        .arg(&tmp)
        .output();
    let _ = Command::new("docker")
        .args(["rm", &id])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let cp = cp.map_err(|e| format!("docker cp: {e}"))?;
    if !cp.status.success() {
        return Err(format!(
            "docker cp from {image} failed: {}",
            String::from_utf8_lossy(&cp.stderr).trim()
        ));
    }
    std::fs::rename(&tmp, &dest).map_err(|e| format!("rename: {e}"))?;
    Ok(dest)
}

/// A port free for both TCP and UDP on 127.0.0.1, never handed out twice in this process.
pub fn free_port() -> u16 {
    static USED: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let used = USED.get_or_init(Default::default);
    loop {
        let tcp = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = tcp.local_addr().expect("addr").port();
        if UdpSocket::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        if used.lock().unwrap().insert(port) {
            return port;
        }
    }
}

/// How to start an agent.
#[derive(Clone, Debug, Default)]
pub struct AgentOptions {
    pub tags: Vec<(String, String)>,
    pub event_handler: Option<String>,
    pub join: Option<SocketAddr>,
    pub rpc_auth: Option<String>,
}

impl AgentOptions {
    /// With the tag `key=value` as well.
    pub fn tag(mut self, key: &str, value: &str) -> Self {
        self.tags.push((key.into(), value.into()));
        self
    }

    /// Joining the agent at `bind` at start.
    pub fn joining(mut self, bind: SocketAddr) -> Self {
        self.join = Some(bind);
        self
    }

    /// With `command` as the event handler.
    pub fn with_handler(mut self, command: String) -> Self {
        self.event_handler = Some(command);
        self
    }

    /// With the RPC auth key `key`.
    pub fn with_rpc_auth(mut self, key: &str) -> Self {
        self.rpc_auth = Some(key.into());
        self
    }
}

/// A running `serf agent`, killed on drop.
pub struct Agent {
    pub name: String,
    pub bind: SocketAddr,
    pub rpc: SocketAddr,
    bin: PathBuf,
    options: AgentOptions,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Agent {
    /// Starts an agent with fresh ports and waits until its RPC port accepts connections.
    pub fn start(bin: &Path, name: &str, options: AgentOptions) -> Agent {
        let bind = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let rpc = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let dir = std::env::temp_dir().join("constructr-serf-tests");
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join(format!("{name}-{}.log", rpc.port()));
        let mut a = Agent {
            name: name.to_owned(),
            bind,
            rpc,
            bin: bin.to_owned(),
            options,
            child: None,
            log,
        };
        a.spawn();
        a
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(&self.bin);
        cmd.arg("agent")
            .arg(format!("-node={}", self.name))
            .arg(format!("-bind={}", self.bind))
            .arg(format!("-rpc-addr={}", self.rpc))
            .arg("-profile=local")
            .arg("-log-level=debug");
        for (k, v) in &self.options.tags {
            cmd.arg("-tag").arg(format!("{k}={v}"));
        }
        if let Some(h) = &self.options.event_handler {
            cmd.arg(format!("-event-handler={h}"));
        }
        if let Some(j) = self.options.join {
            cmd.arg(format!("-join={j}"));
        }
        if let Some(a) = &self.options.rpc_auth {
            // serf 0.10.1 has no `-rpc-auth` flag: the key goes into a config file.
            let conf = self.log.with_extension("json");
            std::fs::write(&conf, serde_json::json!({ "rpc_auth": a }).to_string()).unwrap();
            cmd.arg(format!("-config-file={}", conf.display()));
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = cmd.spawn().expect("spawn serf agent");
        self.child = Some(child);
        self.wait_rpc();
    }

    fn wait_rpc(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if std::net::TcpStream::connect_timeout(&self.rpc, Duration::from_millis(200)).is_ok() {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "serf agent {} exited ({status}) at start; log {}:\n{}",
                    self.name,
                    self.log.display(),
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "serf agent {} did not open its RPC port; log {}",
                self.name,
                self.log.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the agent at once (SIGKILL): others see it fail.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills and starts it again with the same name, ports and options.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Waits until the process has exited by itself (after an RPC `leave`).
    pub fn wait_exit(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            match self.child.as_mut().map(|c| c.try_wait()) {
                Some(Ok(Some(_))) | None => {
                    self.child = None;
                    return true;
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        false
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `f` every 100 ms until it returns `Some`, or panics after `within` with `what`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
