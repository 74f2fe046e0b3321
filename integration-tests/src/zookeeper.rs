//! A ZooKeeper 3.8 server in Docker (the offline image `constructr-test/zookeeper` of
//! `scripts/images.sh`), started with the `docker` command: run, kill, start again (the
//! container keeps its data directory, so sessions and znodes survive a restart).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A ZooKeeper server on `127.0.0.1:{port}`, removed on drop.
pub struct ZooKeeperServer {
    name: String,
    /// The published client port.
    pub port: u16,
}

impl Drop for ZooKeeperServer {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.name]);
    }
}

fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("the docker command")
}

/// The image (`CONSTRUCTR_ZOOKEEPER_IMAGE`, default `constructr-test/zookeeper:3.8.0`) if
/// it exists; panics with how to build it (unless `CONSTRUCTR_SKIP_DOCKER=1`: `None`).
pub fn image() -> Option<String> {
    let image = std::env::var("CONSTRUCTR_ZOOKEEPER_IMAGE")
        .unwrap_or_else(|_| "constructr-test/zookeeper:3.8.0".to_owned());
    if docker(&["image", "inspect", &image]).status.success() {
        return Some(image);
    }
    if std::env::var("CONSTRUCTR_SKIP_DOCKER").as_deref() == Ok("1") {
        println!("SKIPPED: no image {image} and CONSTRUCTR_SKIP_DOCKER=1");
        return None;
    }
    panic!("no image {image}: run scripts/images.sh (CONSTRUCTR_SKIP_DOCKER=1 skips this)")
}

/// The answer of a four-letter word (`ruok`, `srvr`) on `127.0.0.1:{port}`; empty if the
/// server does not answer.
pub fn four_letters(port: u16, word: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut answer = String::new();
    if s.write_all(word.as_bytes()).is_ok() {
        let _ = s.read_to_string(&mut answer);
    }
    answer
}

/// Whether a server answers `ruok` with `imok` on `127.0.0.1:{port}`.
pub fn ruok(port: u16) -> bool {
    four_letters(port, "ruok") == "imok"
}

impl ZooKeeperServer {
    /// Starts a stand-alone server on a free port and waits until it answers.
    pub fn start(image: &str, what: &str) -> Self {
        let port = crate::container::free_port();
        let name = format!("constructr-zk-{what}-{}-{port}", std::process::id());
        let server = Self::run(image, name, port, &[]);
        server.wait_ready();
        server
    }

    /// `docker run` of the image as `name`, client port published on `port`.
    fn run(image: &str, name: String, port: u16, extra: &[&str]) -> Self {
        let published = format!("127.0.0.1:{port}:2181");
        let mut args = vec![
            "run",
            "-d",
            "--name",
            &name,
            "--hostname",
            &name,
            "-p",
            &published,
        ];
        args.extend_from_slice(extra);
        args.push(image);
        let out = docker(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { name, port }
    }

    /// Its mode in an ensemble (`leader`, `follower`; `standalone`), from `srvr`.
    pub fn mode(&self) -> Option<String> {
        four_letters(self.port, "srvr")
            .lines()
            .find_map(|l| l.strip_prefix("Mode: ").map(str::to_owned))
    }

    /// `host:port` for clients.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ruok(self.port) {
            assert!(
                Instant::now() < deadline,
                "ZooKeeper did not answer within 60 s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGKILL.
    pub fn kill(&self) {
        let out = docker(&["kill", &self.name]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts the killed container again (same port, same data) and waits until it answers.
    pub fn start_again(&self) {
        let out = docker(&["start", &self.name]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.wait_ready();
    }
}

/// Three servers forming one ensemble on their own Docker network, removed on drop.
pub struct Ensemble {
    /// The servers (`ZK_ID` 1, 2, 3).
    pub servers: Vec<ZooKeeperServer>,
    network: String,
}

impl Drop for Ensemble {
    fn drop(&mut self) {
        self.servers.clear();
        let _ = docker(&["network", "rm", &self.network]);
    }
}

impl Ensemble {
    /// Starts three servers and waits until one leads and two follow.
    pub fn start(image: &str) -> Self {
        let tag = format!("{}-{}", std::process::id(), crate::container::free_port());
        let network = format!("constructr-zk-{tag}");
        let out = docker(&["network", "create", &network]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let names: Vec<String> = (1..=3).map(|i| format!("zk{i}-{tag}")).collect();
        let members = names
            .iter()
            .enumerate()
            .map(|(i, n)| format!("server.{}={n}:2888:3888;2181", i + 1))
            .collect::<Vec<_>>()
            .join(" ");
        let mut ensemble = Ensemble {
            servers: Vec::new(),
            network: network.clone(),
        };
        for (i, name) in names.into_iter().enumerate() {
            let port = crate::container::free_port();
            let id = format!("ZK_ID={}", i + 1);
            let servers = format!("ZK_SERVERS={members}");
            let extra = ["--network", network.as_str(), "-e", &id, "-e", &servers];
            ensemble
                .servers
                .push(ZooKeeperServer::run(image, name, port, &extra));
        }
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let modes: Vec<Option<String>> = ensemble.servers.iter().map(|s| s.mode()).collect();
            let count = |m: &str| modes.iter().filter(|x| x.as_deref() == Some(m)).count();
            if count("leader") == 1 && count("follower") == 2 {
                return ensemble;
            }
            assert!(
                Instant::now() < deadline,
                "no quorum within 90 s: {modes:?}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// The index of the current leader.
    pub fn leader(&self) -> Option<usize> {
        self.servers
            .iter()
            .position(|s| s.mode().as_deref() == Some("leader"))
    }

    /// `host:port` of every server.
    pub fn addresses(&self) -> Vec<String> {
        self.servers.iter().map(ZooKeeperServer::address).collect()
    }
}
