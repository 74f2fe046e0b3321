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

/// Whether a server answers `ruok` with `imok` on `127.0.0.1:{port}`.
pub fn ruok(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut answer = String::new();
    s.write_all(b"ruok").is_ok() && s.read_to_string(&mut answer).is_ok() && answer == "imok"
}

impl ZooKeeperServer {
    /// Starts a stand-alone server on a free port and waits until it answers.
    pub fn start(image: &str, what: &str) -> Self {
        let port = crate::container::free_port();
        let name = format!("constructr-zk-{what}-{}-{port}", std::process::id());
        let published = format!("127.0.0.1:{port}:2181");
        let out = docker(&["run", "-d", "--name", &name, "-p", &published, image]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let server = Self { name, port };
        server.wait_ready();
        server
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
