//! `ConsulClient`: the handful of Consul HTTP API calls this backend needs, with per-request
//! timeouts and address failover.
//!
//! # Why an own client
//! The existing crates do not fit: `consul` (0.4) is blocking, has no check-and-set on KV
//! puts and pulls in OpenSSL; `rs-consul` keeps sessions private; `consulrs` is unmaintained
//! on an old HTTP stack. The backend needs eight calls (KV get/list/acquire/delete, session
//! create/renew/destroy, transactions), so they are written here on `reqwest` with rustls:
//! async, binary-safe for values (KV values travel base64-encoded in JSON), and without a
//! C TLS library.
//!
//! # Failover
//! The shared policy of [`constructr_core::plumbing`]: requests go to the *current* address;
//! when it fails with a transient error (unreachable, timed out, 5xx such as `No cluster
//! leader`) the current address moves past it, the request is retried once on each following
//! address and the first that answers becomes current.
//!
//! # Secrets
//! The ACL token travels only in the `X-Consul-Token` header (marked sensitive); URLs carry
//! no secrets, so transport errors that name the URL are safe to show.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use reqwest::header::HeaderValue;
use reqwest::{Method, Url};
use serde::{Deserialize, Serialize};

use constructr_core::plumbing::{Failover, display_url};
use constructr_core::tls::load_pem;

use crate::config::ConsulConfig;
use crate::error::{ConsulError, is_acl_denial};
use constructr_core::plumbing::DriverError;

const TOKEN_HEADER: &str = "X-Consul-Token";

const INDEX_HEADER: &str = "X-Consul-Index";

struct Address {
    base: Url,
    shown: String,
}

/// One KV entry as Consul returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct KvEntry {
    pub(crate) key: String,
    pub(crate) value: Vec<u8>,
    /// The session holding the key's lock, if any.
    pub(crate) session: Option<String>,
    pub(crate) modify_index: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct KvJson {
    key: String,
    value: Option<String>,
    session: Option<String>,
    modify_index: u64,
}

impl KvJson {
    fn into_entry(self) -> Result<KvEntry, ConsulError> {
        let value = match self.value {
            Some(v) => STANDARD.decode(v.as_bytes()).map_err(|_| {
                ConsulError::protocol(format!("value of {} is not base64", self.key))
            })?,
            None => Vec::new(),
        };
        Ok(KvEntry {
            key: self.key,
            value,
            session: self.session.filter(|s| !s.is_empty()),
            modify_index: self.modify_index,
        })
    }
}

/// A recursive listing and its `X-Consul-Index`.
#[derive(Debug)]
pub(crate) struct Listing {
    pub(crate) entries: Vec<KvEntry>,
    pub(crate) index: u64,
}

/// One KV operation of a transaction.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct TxnOp {
    verb: &'static str,
    key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    flags: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session: Option<String>,
}

impl TxnOp {
    fn new(verb: &'static str, key: &str) -> Self {
        Self {
            verb,
            key: key.to_owned(),
            value: None,
            flags: None,
            index: None,
            session: None,
        }
    }

    /// Fails the transaction unless `key` is locked by `session`.
    pub(crate) fn check_session(key: &str, session: &str) -> Self {
        Self {
            session: Some(session.to_owned()),
            ..Self::new("check-session", key)
        }
    }

    /// Fails the transaction unless `key`'s modify index is `index`.
    pub(crate) fn check_index(key: &str, index: u64) -> Self {
        Self {
            index: Some(index),
            ..Self::new("check-index", key)
        }
    }

    /// Fails the transaction if `key` exists.
    pub(crate) fn check_not_exists(key: &str) -> Self {
        Self::new("check-not-exists", key)
    }

    /// Sets `key` (value and flags) if its modify index is `index` (0: only if it does not
    /// exist). Consul skips writes that change neither value nor flags, and then keeps the
    /// modify index: callers that rewrite the same value pass different flags.
    pub(crate) fn cas(key: &str, value: &[u8], flags: u64, index: u64) -> Self {
        Self {
            value: Some(STANDARD.encode(value)),
            flags: Some(flags),
            index: Some(index),
            ..Self::new("cas", key)
        }
    }

    /// Deletes `key` (locked or not; absent is fine).
    pub(crate) fn delete(key: &str) -> Self {
        Self::new("delete", key)
    }

    /// Sets `key` and locks it with `session` (fails if another session holds it).
    pub(crate) fn lock(key: &str, value: &[u8], session: &str) -> Self {
        Self {
            value: Some(STANDARD.encode(value)),
            session: Some(session.to_owned()),
            ..Self::new("lock", key)
        }
    }
}

#[derive(Serialize)]
struct TxnOpJson<'a> {
    #[serde(rename = "KV")]
    kv: &'a TxnOp,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TxnAnswerJson {
    #[serde(default)]
    errors: Option<Vec<TxnErrorJson>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TxnErrorJson {
    op_index: usize,
    what: String,
}

/// How a transaction ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TxnOutcome {
    /// Every operation was applied.
    Committed,
    /// Nothing was applied: operation `op_index` failed (a check or a cas did not hold).
    Failed {
        /// The failing operation.
        op_index: usize,
        /// Consul's reason.
        what: String,
    },
}

/// What a session is created with.
pub(crate) struct SessionSpec<'a> {
    pub(crate) name: &'a str,
    pub(crate) ttl_secs: u64,
    pub(crate) lock_delay: Duration,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct SessionCreateJson<'a> {
    name: &'a str,
    #[serde(rename = "TTL")]
    ttl: String,
    behavior: &'static str,
    lock_delay: String,
    /// TTL-only: without this the session also dies with the agent's `serfHealth` check.
    /// `NodeChecks` is the field since Consul 1.7, `Checks` the older one; 1.8 takes both.
    node_checks: [&'static str; 0],
    checks: [&'static str; 0],
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SessionIdJson {
    #[serde(rename = "ID")]
    id: String,
}

struct Answer {
    status: u16,
    index: Option<u64>,
    body: Vec<u8>,
}

/// The HTTP side of one backend value. Never `Debug`: it holds the token.
pub(crate) struct ConsulClient {
    http: reqwest::Client,
    addresses: Failover<Address>,
    token: Option<HeaderValue>,
    datacenter: Option<String>,
    request_timeout: Duration,
    /// Bounds the requests in flight (each needs its own HTTP/1.1 connection) to
    /// `max_connections`: Consul closes the connections of one client beyond
    /// `limits.http_max_conns_per_client`.
    in_flight: tokio::sync::Semaphore,
    /// Requests sent (every try on every address).
    sent: std::sync::atomic::AtomicU64,
}

impl ConsulClient {
    /// Validates the configuration and reads the TLS files. No network I/O.
    pub(crate) fn new(config: &ConsulConfig) -> Result<Self, ConsulError> {
        config.validate()?;
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(config.connect_timeout)
            // Proxies from the environment would route a local agent's traffic away.
            .no_proxy()
            .pool_max_idle_per_host(config.max_connections);
        if let Some(tls) = &config.tls {
            if let Some(ca) = &tls.ca {
                let pem = load_pem(ca, "CA certificate")?;
                let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| {
                    ConsulError::Tls {
                        what: "CA certificate",
                        source,
                    }
                })?;
                if certs.is_empty() {
                    return Err(ConsulError::config(
                        "the TLS CA file contains no PEM certificate",
                    ));
                }
                builder = builder.tls_built_in_root_certs(false);
                for cert in certs {
                    builder = builder.add_root_certificate(cert);
                }
            }
            if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
                let mut pem = load_pem(cert, "client certificate")?;
                pem.push(b'\n');
                pem.extend(load_pem(key, "client key")?);
                let identity =
                    reqwest::Identity::from_pem(&pem).map_err(|source| ConsulError::Tls {
                        what: "client certificate or key",
                        source,
                    })?;
                builder = builder.identity(identity);
            }
        }
        let http = builder.build().map_err(|source| ConsulError::Tls {
            what: "client settings",
            source,
        })?;
        let default_scheme = if config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let addresses = config
            .addresses
            .iter()
            .map(|a| {
                let a = a.trim();
                let full = if a.contains("://") {
                    a.to_owned()
                } else {
                    format!("{default_scheme}://{a}")
                };
                let shown = display_url(&full);
                let base = Url::parse(&full).map_err(|e| {
                    ConsulError::config(format!("address {shown} is not a valid URL: {e}"))
                })?;
                if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
                    return Err(ConsulError::config(format!(
                        "address {shown} must be an http:// or https:// URL"
                    )));
                }
                Ok(Address { base, shown })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let addresses = Failover::new(addresses)
            .ok_or_else(|| ConsulError::config("at least one address is required"))?;
        let token = match &config.token {
            Some(t) => {
                let mut v = HeaderValue::from_str(t.expose()).map_err(|_| {
                    ConsulError::config("the ACL token is not a valid header value")
                })?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        Ok(Self {
            http,
            addresses,
            token,
            datacenter: config.datacenter.clone(),
            request_timeout: config.request_timeout,
            in_flight: tokio::sync::Semaphore::new(config.max_connections),
            sent: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// `{base}/{api}/{key}?{flags}&dc=..`, every key segment percent-encoded.
    fn url(&self, base: &Url, api: &str, key: &str, flags: &[(&str, Option<String>)]) -> Url {
        let mut url = base.clone();
        {
            let mut segments = url
                .path_segments_mut()
                .expect("addresses are checked to be http(s) base URLs");
            segments.pop_if_empty();
            segments.extend(api.split('/'));
            if !key.is_empty() {
                segments.extend(key.split('/'));
            }
        }
        {
            let mut query = url.query_pairs_mut();
            for (name, value) in flags {
                match value {
                    Some(v) => query.append_pair(name, v),
                    None => query.append_key_only(name),
                };
            }
            if let Some(dc) = &self.datacenter {
                query.append_pair("dc", dc);
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        url
    }

    async fn execute(
        &self,
        method: Method,
        api: &str,
        key: &str,
        flags: &[(&str, Option<String>)],
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Answer, ConsulError> {
        // Blocking queries (`index=`) wait long and are few (one per watched scope).
        let _permit = if flags.iter().any(|(name, _)| *name == "index") {
            None
        } else {
            Some(
                self.in_flight
                    .acquire()
                    .await
                    .map_err(|_| ConsulError::protocol("request limiter closed"))?,
            )
        };
        let before = self.addresses.current_index();
        let answer = self
            .addresses
            .run(
                |_, address| {
                    let url = self.url(&address.base, api, key, flags);
                    let mut request = self.http.request(method.clone(), url).timeout(timeout);
                    if let Some(token) = &self.token {
                        request = request.header(TOKEN_HEADER, token.clone());
                    }
                    if let Some(body) = &body {
                        request = request.body(body.clone());
                    }
                    self.sent
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    async move {
                        let r = attempt(&address.shown, request).await;
                        if let Err(e) = &r
                            && e.is_retryable()
                        {
                            tracing::debug!(error = %e, "Consul address failed; trying the next one");
                        }
                        r
                    }
                },
                ConsulError::is_retryable,
            )
            .await;
        if answer.is_ok() && self.addresses.current_index() != before {
            tracing::info!(address = %self.addresses.current().shown, "switched to another Consul address");
        }
        answer
    }

    fn timeout(&self) -> Duration {
        self.request_timeout
    }

    /// Requests sent so far (every try on every address).
    pub(crate) fn requests_sent(&self) -> u64 {
        self.sent.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// One key, read consistently; `None` if absent.
    pub(crate) async fn kv_get(&self, key: &str) -> Result<Option<KvEntry>, ConsulError> {
        let a = self
            .execute(
                Method::GET,
                "v1/kv",
                key,
                &[("consistent", None)],
                None,
                self.timeout(),
            )
            .await?;
        match a.status {
            404 => Ok(None),
            200 => Ok(parse_entries(&a.body)?.into_iter().find(|e| e.key == key)),
            s => Err(unexpected_status(s)),
        }
    }

    /// Everything under `prefix` (which ends with `/`). Without `block`: one consistent read.
    /// With `block = (index, wait)`: a blocking query that returns when the prefix's index
    /// passes `index` or after about `wait`.
    pub(crate) async fn kv_list(
        &self,
        prefix: &str,
        block: Option<(u64, Duration)>,
    ) -> Result<Listing, ConsulError> {
        let (flags, timeout) = match block {
            None => (
                vec![("recurse", None), ("consistent", None)],
                self.timeout(),
            ),
            Some((index, wait)) => (
                vec![
                    ("recurse", None),
                    ("index", Some(index.to_string())),
                    ("wait", Some(format!("{}ms", wait.as_millis()))),
                ],
                // Consul adds up to wait/16 of jitter to a blocking query.
                wait + wait / 16 + self.timeout(),
            ),
        };
        let a = self
            .execute(Method::GET, "v1/kv", prefix, &flags, None, timeout)
            .await?;
        let index = a
            .index
            .ok_or_else(|| ConsulError::protocol("KV listing without X-Consul-Index"))?;
        let entries = match a.status {
            404 => Vec::new(),
            200 => parse_entries(&a.body)?,
            s => return Err(unexpected_status(s)),
        };
        Ok(Listing { entries, index })
    }

    /// `PUT ?acquire=`: writes and locks `key` with `session` unless another session holds it.
    pub(crate) async fn kv_acquire(
        &self,
        key: &str,
        value: Vec<u8>,
        session: &str,
    ) -> Result<bool, ConsulError> {
        let a = self
            .execute(
                Method::PUT,
                "v1/kv",
                key,
                &[("acquire", Some(session.to_owned()))],
                Some(value),
                self.timeout(),
            )
            .await?;
        parse_bool(&a)
    }

    /// `DELETE ?cas=`: deletes `key` if its modify index is still `index`.
    pub(crate) async fn kv_delete_cas(&self, key: &str, index: u64) -> Result<bool, ConsulError> {
        let a = self
            .execute(
                Method::DELETE,
                "v1/kv",
                key,
                &[("cas", Some(index.to_string()))],
                None,
                self.timeout(),
            )
            .await?;
        parse_bool(&a)
    }

    /// Creates a TTL-only session whose locked keys are deleted when it ends.
    pub(crate) async fn session_create(
        &self,
        spec: &SessionSpec<'_>,
    ) -> Result<String, ConsulError> {
        let body = serde_json::to_vec(&SessionCreateJson {
            name: spec.name,
            ttl: format!("{}s", spec.ttl_secs),
            behavior: "delete",
            lock_delay: format!("{}ms", spec.lock_delay.as_millis()),
            node_checks: [],
            checks: [],
        })
        .expect("plain fields serialize");
        let a = self
            .execute(
                Method::PUT,
                "v1/session/create",
                "",
                &[],
                Some(body),
                self.timeout(),
            )
            .await?;
        if a.status != 200 {
            return Err(unexpected_status(a.status));
        }
        let id: SessionIdJson = serde_json::from_slice(&a.body)
            .map_err(|e| ConsulError::protocol(format!("session create answer: {e}")))?;
        Ok(id.id)
    }

    /// Renews a session; `false` if Consul does not know it (expired or destroyed).
    pub(crate) async fn session_renew(&self, id: &str) -> Result<bool, ConsulError> {
        self.session_put("v1/session/renew", id).await
    }

    /// Destroys a session (its locked keys are deleted); unknown sessions are fine.
    pub(crate) async fn session_destroy(&self, id: &str) -> Result<(), ConsulError> {
        self.session_put("v1/session/destroy", id).await.map(|_| ())
    }

    /// `PUT {path}/{id}` of a session operation: `true` on 200, `false` if Consul does not
    /// know the session (404).
    async fn session_put(&self, path: &str, id: &str) -> Result<bool, ConsulError> {
        let a = self
            .execute(Method::PUT, path, id, &[], None, self.timeout())
            .await?;
        match a.status {
            200 => Ok(true),
            404 => Ok(false),
            s => Err(unexpected_status(s)),
        }
    }

    /// Runs a transaction: all operations or none.
    pub(crate) async fn txn(&self, ops: &[TxnOp]) -> Result<TxnOutcome, ConsulError> {
        let json: Vec<TxnOpJson<'_>> = ops.iter().map(|kv| TxnOpJson { kv }).collect();
        let body = serde_json::to_vec(&json).expect("plain fields serialize");
        let a = self
            .execute(Method::PUT, "v1/txn", "", &[], Some(body), self.timeout())
            .await?;
        match a.status {
            200 => Ok(TxnOutcome::Committed),
            409 => {
                let answer: TxnAnswerJson = serde_json::from_slice(&a.body)
                    .map_err(|e| ConsulError::protocol(format!("transaction answer: {e}")))?;
                let errors = answer.errors.unwrap_or_default();
                if let Some(denied) = errors.iter().find(|e| is_acl_denial(&e.what)) {
                    return Err(ConsulError::from_status(
                        &self.current_shown(),
                        403,
                        &denied.what,
                    ));
                }
                let first = errors
                    .into_iter()
                    .min_by_key(|e| e.op_index)
                    .ok_or_else(|| ConsulError::protocol("failed transaction without errors"))?;
                Ok(TxnOutcome::Failed {
                    op_index: first.op_index,
                    what: first.what,
                })
            }
            s => Err(unexpected_status(s)),
        }
    }

    /// The raft leader's address as the agent sees it (empty: no leader).
    pub(crate) async fn leader(&self) -> Result<String, ConsulError> {
        let a = self
            .execute(
                Method::GET,
                "v1/status/leader",
                "",
                &[],
                None,
                self.timeout(),
            )
            .await?;
        if a.status != 200 {
            return Err(unexpected_status(a.status));
        }
        serde_json::from_slice(&a.body)
            .map_err(|e| ConsulError::protocol(format!("status/leader answer: {e}")))
    }

    /// Reads the configured token's own record: fails with `Unauthorized` if Consul does not
    /// know the token. Without ACLs (401 `ACL support disabled`) it succeeds.
    pub(crate) async fn token_self(&self) -> Result<(), ConsulError> {
        match self
            .execute(
                Method::GET,
                "v1/acl/token/self",
                "",
                &[],
                None,
                self.timeout(),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(ConsulError::Unauthorized { detail, .. })
                if detail.contains("ACL support disabled") =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn current_shown(&self) -> String {
        self.addresses.current().shown.clone()
    }
}

async fn attempt(shown: &str, request: reqwest::RequestBuilder) -> Result<Answer, ConsulError> {
    let response = request
        .send()
        .await
        .map_err(|e| ConsulError::transport(shown, &e))?;
    let status = response.status().as_u16();
    let index = response
        .headers()
        .get(INDEX_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse().ok());
    let body = response
        .bytes()
        .await
        .map_err(|e| ConsulError::transport(shown, &e))?
        .to_vec();
    match status {
        200..=299 | 404 | 409 => Ok(Answer {
            status,
            index,
            body,
        }),
        _ => Err(ConsulError::from_status(
            shown,
            status,
            &String::from_utf8_lossy(&body),
        )),
    }
}

fn parse_entries(body: &[u8]) -> Result<Vec<KvEntry>, ConsulError> {
    let raw: Vec<KvJson> = serde_json::from_slice(body)
        .map_err(|e| ConsulError::protocol(format!("KV answer: {e}")))?;
    raw.into_iter().map(KvJson::into_entry).collect()
}

fn parse_bool(a: &Answer) -> Result<bool, ConsulError> {
    if a.status != 200 {
        return Err(unexpected_status(a.status));
    }
    match String::from_utf8_lossy(&a.body).trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(ConsulError::protocol(format!(
            "expected true or false, got {other:?}"
        ))),
    }
}

fn unexpected_status(status: u16) -> ConsulError {
    ConsulError::protocol(format!("unexpected HTTP status {status}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(config: ConsulConfig) -> ConsulClient {
        ConsulClient::new(&config).unwrap()
    }

    #[test]
    fn urls_encode_key_segments_and_add_the_datacenter() {
        let c = client(ConsulConfig::new(["127.0.0.1:8500"]).with_datacenter("dc-2"));
        let base = &c.addresses.endpoints()[0].base;
        assert_eq!(base.as_str(), "http://127.0.0.1:8500/");
        let url = c.url(
            base,
            "v1/kv",
            "constructr/a?b#c %/nodes/",
            &[("recurse", None), ("index", Some("7".into()))],
        );
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:8500/v1/kv/constructr/a%3Fb%23c%20%25/nodes/?recurse&index=7&dc=dc-2"
        );
        let url = c.url(base, "v1/session/renew", "abc-123", &[]);
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:8500/v1/session/renew/abc-123?dc=dc-2"
        );
    }

    #[test]
    fn urls_keep_a_base_path_and_drop_an_empty_query() {
        let c = client(ConsulConfig::new(["http://proxy:8080/consul/"]));
        let url = c.url(&c.addresses.endpoints()[0].base, "v1/txn", "", &[]);
        assert_eq!(url.as_str(), "http://proxy:8080/consul/v1/txn");
    }

    #[test]
    fn addresses_without_scheme_follow_tls() {
        let c =
            client(ConsulConfig::new(["consul:8501"]).with_tls(crate::ConsulTlsConfig::default()));
        assert_eq!(c.addresses.endpoints()[0].base.scheme(), "https");
        assert!(ConsulClient::new(&ConsulConfig::new(["ftp://x"])).is_err());
    }

    #[test]
    fn txn_ops_serialize_like_the_consul_api() {
        let ops = [
            TxnOp::check_session("k/lock", "s1"),
            TxnOp::cas("k/epoch", b"\x00\xff", 7, 0),
            TxnOp::lock("k/nodes/x", b"v", "s2"),
        ];
        let json: Vec<TxnOpJson<'_>> = ops.iter().map(|kv| TxnOpJson { kv }).collect();
        assert_eq!(
            serde_json::to_string(&json).unwrap(),
            r#"[{"KV":{"Verb":"check-session","Key":"k/lock","Session":"s1"}},{"KV":{"Verb":"cas","Key":"k/epoch","Value":"AP8=","Flags":7,"Index":0}},{"KV":{"Verb":"lock","Key":"k/nodes/x","Value":"dg==","Session":"s2"}}]"#
        );
    }

    #[test]
    fn kv_answers_decode_binary_values_and_missing_sessions() {
        let body = br#"[{"LockIndex":0,"Key":"a/epoch","Flags":0,"Value":"AP8=","CreateIndex":3,"ModifyIndex":4},
                        {"LockIndex":1,"Key":"a/nodes/x","Flags":0,"Value":null,"Session":"s","CreateIndex":5,"ModifyIndex":5}]"#;
        let e = parse_entries(body).unwrap();
        assert_eq!(e[0].value, vec![0, 255]);
        assert_eq!(e[0].session, None);
        assert_eq!(e[0].modify_index, 4);
        assert_eq!(e[1].value, Vec::<u8>::new());
        assert_eq!(e[1].session.as_deref(), Some("s"));
    }

    #[test]
    fn session_create_body_is_ttl_only_with_delete_behavior() {
        let body = serde_json::to_string(&SessionCreateJson {
            name: "n",
            ttl: "10s".into(),
            behavior: "delete",
            lock_delay: "0ms".into(),
            node_checks: [],
            checks: [],
        })
        .unwrap();
        assert_eq!(
            body,
            r#"{"Name":"n","TTL":"10s","Behavior":"delete","LockDelay":"0ms","NodeChecks":[],"Checks":[]}"#
        );
    }
}
