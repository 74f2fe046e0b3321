//! Real Consul in Docker: one agent as a dev agent (in-memory) or as a single persistent
//! server, optionally with ACLs (default deny) or HTTPS with client certificates, plus a raw
//! HTTP helper for set-up and inspection.

use std::time::Duration;

use constructr_consul::{ConsulConfig, ConsulCoordination, ConsulTlsConfig, PemSource};
use testcontainers::core::{IntoContainerPort as _, WaitFor};
use testcontainers::runners::AsyncRunner as _;
use testcontainers::{ContainerAsync, GenericImage, ImageExt as _};

use crate::tls::TestPki;

/// Environment variable naming the Consul image (`name:tag`).
pub const CONSUL_IMAGE_ENV: &str = "CONSTRUCTR_CONSUL_IMAGE";
/// The official image, used when nothing else is configured.
pub const CONSUL_DEFAULT_IMAGE: &str = "hashicorp/consul:1.8.7";

const HTTP_PORT: u16 = 8500;
const HTTPS_PORT: u16 = 8501;
const READY: &str = "Consul agent running!";
const STARTUP: Duration = Duration::from_secs(60);

fn image() -> GenericImage {
    let (name, tag) = crate::image_from_env(CONSUL_IMAGE_ENV, CONSUL_DEFAULT_IMAGE);
    // The locally built image's ENTRYPOINT is the consul binary, the official image's an
    // entrypoint script that passes `agent ...` on to it: a command starting with `agent`
    // works with both.
    GenericImage::new(name, tag).with_wait_for(WaitFor::message_on_stdout(READY))
}

fn image_hint() -> String {
    let (name, tag) = crate::image_from_env(CONSUL_IMAGE_ENV, CONSUL_DEFAULT_IMAGE);
    format!(
        "could not start Consul image {name}:{tag}. Without registry access build it with \
         `bash scripts/images.sh` and export {CONSUL_IMAGE_ENV} (see target/test-images.env)"
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free local port")
        .port()
}

/// How the agent keeps its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsulMode {
    /// `agent -dev`: in memory; a restart loses every key and session.
    Dev,
    /// A single server (`-bootstrap-expect 1`) with a data dir inside the container: keys
    /// and sessions survive a container restart.
    Persistent,
}

/// How to start an agent.
#[derive(Default)]
pub struct ConsulOptions {
    /// Dev agent (default) or persistent server.
    pub persistent: bool,
    /// Enables ACLs with `default_policy = "deny"` and this master (bootstrap) token.
    pub acl_master_token: Option<String>,
    /// Serves the HTTP API over HTTPS only (port 8501) with `pki`'s server certificate and
    /// requires client certificates signed by its CA.
    pub tls: Option<TestPki>,
}

/// One Consul agent, reachable from the test at a fixed `127.0.0.1` port that survives
/// restarts.
pub struct ConsulNode {
    container: ContainerAsync<GenericImage>,
    host_port: u16,
    mode: ConsulMode,
    master_token: Option<String>,
    pki: Option<TestPki>,
}

impl ConsulNode {
    /// Starts a dev agent and waits until it serves KV requests.
    pub async fn start() -> Self {
        Self::start_with(ConsulOptions::default()).await
    }

    /// Starts a single persistent server and waits until it has a leader.
    pub async fn start_persistent() -> Self {
        Self::start_with(ConsulOptions {
            persistent: true,
            ..ConsulOptions::default()
        })
        .await
    }

    /// Starts an agent as described.
    pub async fn start_with(options: ConsulOptions) -> Self {
        let mode = if options.persistent {
            ConsulMode::Persistent
        } else {
            ConsulMode::Dev
        };
        let mut args: Vec<String> = match mode {
            ConsulMode::Dev => vec!["agent".into(), "-dev".into()],
            ConsulMode::Persistent => vec![
                "agent".into(),
                "-server".into(),
                "-bootstrap-expect=1".into(),
                "-data-dir=/tmp/consul-data".into(),
                // A fixed bind address: a restarted container may get another IP, which a
                // single-server raft configuration would not recognise.
                "-bind=127.0.0.1".into(),
                // Fast elections (dev agents use the same).
                "-hcl=performance { raft_multiplier = 1 }".into(),
            ],
        };
        args.push("-client=0.0.0.0".into());
        if let Some(master) = &options.acl_master_token {
            args.push(format!(
                "-hcl=acl {{ enabled = true, default_policy = \"deny\", tokens {{ master = \"{master}\" }} }}"
            ));
        }
        let mut copies = Vec::new();
        if let Some(pki) = &options.tls {
            args.push(format!(
                "-hcl=ports {{ http = -1, https = {HTTPS_PORT} }} \
                 ca_file = \"/certs/ca.pem\" cert_file = \"/certs/server.pem\" \
                 key_file = \"/certs/server-key.pem\" verify_incoming_https = true"
            ));
            copies = vec![
                ("/certs/ca.pem", pki.ca_pem.clone()),
                ("/certs/server.pem", pki.server_cert_pem.clone()),
                ("/certs/server-key.pem", pki.server_key_pem.clone()),
            ];
        }
        let container_port = if options.tls.is_some() {
            HTTPS_PORT
        } else {
            HTTP_PORT
        };
        let mut last_error = String::new();
        // A fixed host port can be taken by someone else between picking and binding it.
        for _ in 0..3 {
            let host_port = free_port();
            let mut request = image()
                .with_container_name(format!("constructr-consul-{:08x}", rand::random::<u32>()));
            for (path, pem) in &copies {
                request = request.with_copy_to(*path, pem.clone().into_bytes());
            }
            let request = request
                .with_cmd(args.clone())
                .with_mapped_port(host_port, container_port.tcp())
                .with_startup_timeout(STARTUP);
            match request.start().await {
                Ok(container) => {
                    let node = Self {
                        container,
                        host_port,
                        mode,
                        master_token: options.acl_master_token.clone(),
                        pki: options.tls,
                    };
                    node.wait_ready().await;
                    return node;
                }
                Err(e) => last_error = e.to_string(),
            }
        }
        panic!("{}: {last_error}", image_hint());
    }

    /// `http(s)://127.0.0.1:{port}`.
    pub fn address(&self) -> String {
        let scheme = if self.pki.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.host_port)
    }

    /// How this agent keeps its data.
    pub fn mode(&self) -> ConsulMode {
        self.mode
    }

    /// A backend configuration for this agent (with the master token when ACLs are on, and
    /// the client certificate when TLS is on), with short timeouts.
    pub fn config(&self) -> ConsulConfig {
        let mut config = ConsulConfig::new(self.address())
            .with_connect_timeout(Duration::from_secs(1))
            .with_request_timeout(Duration::from_secs(2));
        if let Some(t) = &self.master_token {
            config = config.with_token(t.clone());
        }
        if let Some(pki) = &self.pki {
            config = config.with_tls(
                ConsulTlsConfig::new(PemSource::Pem(pki.ca_pem.clone())).with_client_identity(
                    PemSource::Pem(pki.client_cert_pem.clone()),
                    PemSource::Pem(pki.client_key_pem.clone()),
                ),
            );
        }
        config
    }

    /// A raw HTTP helper for set-up and inspection (plain HTTP agents only), with the master
    /// token when ACLs are on.
    pub fn raw(&self) -> RawConsul {
        assert!(self.pki.is_none(), "raw access is for plain-HTTP agents");
        RawConsul {
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("http client"),
            base: self.address(),
            token: self.master_token.clone(),
        }
    }

    /// Waits until the agent answers with a leader (and knows the token, if any).
    async fn wait_ready(&self) {
        let consul = ConsulCoordination::new(&self.config()).expect("valid config");
        crate::eventually(STARTUP, "Consul has a leader", || async {
            consul.check().await.ok()
        })
        .await;
        // A server that was just elected may still refuse writes for a moment: wait for a
        // session to be created (and destroyed) successfully.
        if self.pki.is_none() {
            let raw = self.raw();
            crate::eventually(STARTUP, "Consul accepts writes", || async {
                raw.try_create_session(Duration::from_secs(10)).await.ok()
            })
            .await;
        }
    }

    /// Stops Consul abruptly (SIGKILL) and starts it again on the same port; returns once it
    /// has a leader again. A dev agent comes back empty, a persistent server with its data.
    pub async fn restart(&self) {
        self.stop().await;
        self.start_again().await;
    }

    /// Stops Consul abruptly (SIGKILL).
    pub async fn stop(&self) {
        self.container
            .stop_with_timeout(Some(0))
            .await
            .expect("stop Consul");
    }

    /// Starts a stopped Consul again on the same port; returns once it has a leader.
    pub async fn start_again(&self) {
        self.container.start().await.expect("start Consul again");
        self.wait_ready().await;
    }
}

/// Raw Consul HTTP calls for tests (not the backend's client).
pub struct RawConsul {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl RawConsul {
    /// A token for constructr under the tests' key prefix (`constructr-it/`): write on the
    /// keys, write on sessions.
    pub async fn constructr_token(&self) -> String {
        self.create_token(
            "constructr",
            r#"key_prefix "constructr-it/" { policy = "write" }
               session_prefix "" { policy = "write" }"#,
        )
        .await
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => r.header("X-Consul-Token", t),
            None => r,
        }
    }

    async fn try_create_session(&self, ttl: Duration) -> Result<String, String> {
        let body = format!(
            r#"{{"TTL":"{}s","Behavior":"delete","NodeChecks":[],"LockDelay":"0s"}}"#,
            ttl.as_secs().max(10)
        );
        let resp = self
            .request(reqwest::Method::PUT, "/v1/session/create")
            .body(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("session create: {}", resp.status()));
        }
        let text = resp.text().await.map_err(|e| e.to_string())?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        v["ID"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("session create answer without ID: {text}"))
    }

    /// Writes `value` under `key` (no leading `/`), locked by a fresh TTL session so it
    /// expires like a node entry.
    pub async fn put_with_session(&self, key: &str, value: &[u8], ttl: Duration) {
        let session = self.try_create_session(ttl).await.expect("create session");
        let resp = self
            .request(
                reqwest::Method::PUT,
                &format!("/v1/kv/{}?acquire={session}", encode_key(key)),
            )
            .body(value.to_vec())
            .send()
            .await
            .expect("put");
        assert!(resp.status().is_success(), "put {key}: {}", resp.status());
        assert_eq!(resp.text().await.unwrap().trim(), "true", "acquire {key}");
    }

    /// Writes `value` under `key` (no leading `/`) without a session.
    pub async fn put(&self, key: &str, value: &[u8]) {
        let resp = self
            .request(reqwest::Method::PUT, &format!("/v1/kv/{}", encode_key(key)))
            .body(value.to_vec())
            .send()
            .await
            .expect("put");
        assert!(resp.status().is_success(), "put {key}: {}", resp.status());
    }

    /// Deletes every key under `prefix` (no leading `/`), whoever holds them.
    pub async fn delete_prefix(&self, prefix: &str) {
        let resp = self
            .request(
                reqwest::Method::DELETE,
                &format!("/v1/kv/{}?recurse", encode_key(prefix)),
            )
            .send()
            .await
            .expect("delete");
        assert!(
            resp.status().is_success(),
            "delete {prefix}: {}",
            resp.status()
        );
    }

    /// The keys under `prefix` (no leading `/`).
    pub async fn keys(&self, prefix: &str) -> Vec<String> {
        let resp = self
            .request(
                reqwest::Method::GET,
                &format!("/v1/kv/{}?keys", encode_key(prefix)),
            )
            .send()
            .await
            .expect("list keys");
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Vec::new();
        }
        assert!(
            resp.status().is_success(),
            "keys {prefix}: {}",
            resp.status()
        );
        let mut keys: Vec<String> = resp.json().await.expect("key list");
        keys.sort();
        keys
    }

    /// Number of sessions Consul knows.
    pub async fn session_count(&self) -> usize {
        let resp = self
            .request(reqwest::Method::GET, "/v1/session/list")
            .send()
            .await
            .expect("list sessions");
        let v: Vec<serde_json::Value> = resp.json().await.expect("session list");
        v.len()
    }

    /// Creates an ACL policy with `rules` (HCL) and a token for it; returns the token's secret.
    /// Needs the master token.
    pub async fn create_token(&self, name: &str, rules: &str) -> String {
        let policy = serde_json::json!({ "Name": name, "Rules": rules });
        let resp = self
            .request(reqwest::Method::PUT, "/v1/acl/policy")
            .json(&policy)
            .send()
            .await
            .expect("create policy");
        assert!(
            resp.status().is_success(),
            "create policy: {} {}",
            resp.status(),
            resp.text().await.unwrap_or_default()
        );
        let token = serde_json::json!({ "Description": name, "Policies": [{ "Name": name }] });
        let resp = self
            .request(reqwest::Method::PUT, "/v1/acl/token")
            .json(&token)
            .send()
            .await
            .expect("create token");
        assert!(
            resp.status().is_success(),
            "create token: {}",
            resp.status()
        );
        let v: serde_json::Value = resp.json().await.expect("token answer");
        v["SecretID"].as_str().expect("SecretID").to_owned()
    }
}

/// Percent-encodes a key's segments, keeping the `/` separators.
fn encode_key(key: &str) -> String {
    key.split('/')
        .map(|seg| {
            seg.bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("/")
}
