//! Real Consul in Docker: one agent as a dev agent (in-memory) or as a single persistent
//! server, optionally with ACLs (default deny) or HTTPS with client certificates, plus a raw
//! HTTP helper for set-up and inspection.

use std::time::Duration;

use constructr_consul::{ConsulConfig, ConsulCoordination};
use testcontainers::{GenericImage, ImageExt as _};

use crate::container::{CONSUL_IMAGE, Restartable, STARTUP, random_suffix, start_on_free_port};
use crate::tls::TestPki;

const HTTP_PORT: u16 = 8500;
const HTTPS_PORT: u16 = 8501;

fn image() -> GenericImage {
    // The locally built image's ENTRYPOINT is the consul binary, the official image's an
    // entrypoint script that passes `agent ...` on to it: a command starting with `agent`
    // works with both.
    CONSUL_IMAGE.generic()
}

/// [`crate::fast_settings`] valid for Consul: refresh 5 s × ttl-factor 2 = TTL 10 s (Consul's
/// minimum), lock TTL = join timeout 8 s + 2 × coordination timeout 1 s = 10 s.
pub fn consul_settings(cluster: constructr_core::ClusterName) -> constructr_core::Settings {
    let mut s = crate::fast_settings(cluster);
    s.refresh_interval = Duration::from_secs(5);
    s.ttl_factor = 2.0;
    s.join_timeout = Duration::from_secs(8);
    s.coordination_timeout = Duration::from_secs(1);
    s.retry_delay = Duration::from_millis(500);
    s.validate().expect("valid settings");
    constructr_consul::validate_settings(&s).expect("valid for Consul");
    s
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
    /// More agent configuration, one `-hcl=` argument each.
    pub extra_hcl: Vec<String>,
}

/// One Consul agent, reachable from the test at a fixed `127.0.0.1` port that survives
/// restarts.
pub struct ConsulNode {
    container: Restartable,
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
        if options.tls.is_some() {
            args.push(format!(
                "-hcl=ports {{ http = -1, https = {HTTPS_PORT} }} \
                 ca_file = \"/certs/ca.pem\" cert_file = \"/certs/server.pem\" \
                 key_file = \"/certs/server-key.pem\" verify_incoming_https = true"
            ));
        }
        for hcl in &options.extra_hcl {
            args.push(format!("-hcl={hcl}"));
        }
        let container_port = if options.tls.is_some() {
            HTTPS_PORT
        } else {
            HTTP_PORT
        };
        let (container, host_port) = start_on_free_port(&CONSUL_IMAGE, container_port, || {
            let mut request =
                image().with_container_name(format!("constructr-consul-{}", random_suffix()));
            if let Some(pki) = &options.tls {
                request = pki.copy_server_files(request);
            }
            request.with_cmd(args.clone())
        })
        .await;
        let node = Self {
            container,
            host_port,
            mode,
            master_token: options.acl_master_token,
            pki: options.tls,
        };
        node.wait_ready().await;
        node
    }

    /// `http(s)://127.0.0.1:{port}`.
    pub fn address(&self) -> String {
        crate::container::local_url(self.pki.is_some(), self.host_port)
    }

    /// How this agent keeps its data.
    pub fn mode(&self) -> ConsulMode {
        self.mode
    }

    /// A backend configuration for this agent (with the master token when ACLs are on, and
    /// the client certificate when TLS is on), with short timeouts.
    pub fn config(&self) -> ConsulConfig {
        let mut config = ConsulConfig::new([self.address()])
            .with_connect_timeout(Duration::from_secs(1))
            .with_request_timeout(Duration::from_secs(2));
        if let Some(t) = &self.master_token {
            config = config.with_token(t.clone());
        }
        if let Some(pki) = &self.pki {
            config = config.with_tls(pki.client_tls());
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
        let scope = crate::etcd::probe_scope();
        crate::eventually(STARTUP, "Consul has a leader", || async {
            consul.check(&scope).await.ok()
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

    /// Stops Consul abruptly (SIGKILL).
    pub async fn stop(&self) {
        self.container.stop().await
    }

    /// Starts a stopped Consul again on the same port; returns once it has a leader. A dev
    /// agent comes back empty, a persistent server with its data.
    pub async fn start_again(&self) {
        self.container.start().await;
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

    /// Sends `request` (`what` for messages); panics unless Consul answers with success.
    async fn send_ok(&self, request: reqwest::RequestBuilder, what: &str) -> reqwest::Response {
        let resp = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        ok(resp, what).await
    }

    /// Writes `value` under `key` (no leading `/`), locked by a fresh TTL session so it
    /// expires like a node entry.
    pub async fn put_with_session(&self, key: &str, value: &[u8], ttl: Duration) {
        let session = self.try_create_session(ttl).await.expect("create session");
        let path = format!("/v1/kv/{}?acquire={session}", encode_key(key));
        let request = self
            .request(reqwest::Method::PUT, &path)
            .body(value.to_vec());
        let resp = self.send_ok(request, &format!("put {key}")).await;
        assert_eq!(resp.text().await.unwrap().trim(), "true", "acquire {key}");
    }

    /// Writes `value` under `key` (no leading `/`) without a session.
    pub async fn put(&self, key: &str, value: &[u8]) {
        let path = format!("/v1/kv/{}", encode_key(key));
        let request = self
            .request(reqwest::Method::PUT, &path)
            .body(value.to_vec());
        self.send_ok(request, &format!("put {key}")).await;
    }

    /// Deletes `key` (no leading `/`), whoever holds it; its session lives on.
    pub async fn delete_key(&self, key: &str) {
        let path = format!("/v1/kv/{}", encode_key(key));
        let request = self.request(reqwest::Method::DELETE, &path);
        self.send_ok(request, &format!("delete {key}")).await;
    }

    /// Deletes every key under `prefix` (no leading `/`), whoever holds them.
    pub async fn delete_prefix(&self, prefix: &str) {
        let path = format!("/v1/kv/{}?recurse", encode_key(prefix));
        let request = self.request(reqwest::Method::DELETE, &path);
        self.send_ok(request, &format!("delete {prefix}")).await;
    }

    /// The keys under `prefix` (no leading `/`).
    pub async fn keys(&self, prefix: &str) -> Vec<String> {
        let path = format!("/v1/kv/{}?keys", encode_key(prefix));
        let resp = self
            .request(reqwest::Method::GET, &path)
            .send()
            .await
            .expect("list keys");
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Vec::new();
        }
        let resp = ok(resp, &format!("keys {prefix}")).await;
        let mut keys: Vec<String> = resp.json().await.expect("key list");
        keys.sort();
        keys
    }

    /// Number of sessions Consul knows.
    pub async fn session_count(&self) -> usize {
        let request = self.request(reqwest::Method::GET, "/v1/session/list");
        let resp = self.send_ok(request, "list sessions").await;
        let v: Vec<serde_json::Value> = resp.json().await.expect("session list");
        v.len()
    }

    /// Creates an ACL policy with `rules` (HCL) and a token for it; returns the token's secret.
    /// Needs the master token.
    pub async fn create_token(&self, name: &str, rules: &str) -> String {
        let policy = serde_json::json!({ "Name": name, "Rules": rules });
        let request = self.request(reqwest::Method::PUT, "/v1/acl/policy");
        self.send_ok(request.json(&policy), "create policy").await;
        let token = serde_json::json!({ "Description": name, "Policies": [{ "Name": name }] });
        let request = self.request(reqwest::Method::PUT, "/v1/acl/token");
        let resp = self.send_ok(request.json(&token), "create token").await;
        let v: serde_json::Value = resp.json().await.expect("token answer");
        v["SecretID"].as_str().expect("SecretID").to_owned()
    }
}

/// `resp`, which must be a success (else a panic with `what`, the status and the body).
async fn ok(resp: reqwest::Response, what: &str) -> reqwest::Response {
    let status = resp.status();
    if !status.is_success() {
        panic!("{what}: {status} {}", resp.text().await.unwrap_or_default());
    }
    resp
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
