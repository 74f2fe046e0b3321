//! The Serf event handler (`constructr serf-handler`): parses one invocation and forwards it
//! to the bridge.
//!
//! ```text
//! serf agent -event-handler "constructr serf-handler --bridge http://127.0.0.1:8888" ...
//! ```
//!
//! | `SERF_EVENT`    | request to the bridge (one per member)                  | expected |
//! |-----------------|----------------------------------------------------------|----------|
//! | `member-join`   | `POST /dc/{dc}/members` with the member JSON             | 201      |
//! | `member-update` | `PUT /dc/{dc}/members/{name}` with the member JSON       | 200      |
//! | `member-leave`  | `DELETE /dc/{dc}/members/{name}` with the member JSON    | 204      |
//! | `member-failed` | `POST /dc/{dc}/failures` with the member JSON            | 204      |
//! | `member-reap`   | `DELETE /dc/{dc}/members/{name}?reap=true` with the JSON | 204      |
//! | `user`          | `POST /dc/{dc}/events/{name}?ltime=N`, body = payload    | 204      |
//! | `query`         | `POST /dc/{dc}/queries/{name}?ltime=N`, body = payload   | 200      |
//!
//! `{dc}` of a member event is the member's dc tag (`--dc-tag`, default `dc`); of a user
//! event or query, the agent's own (`SERF_TAG_DC`); without the tag, `--default-dc`.
//!
//! # Failure behaviour
//! - Malformed input (a member line without its four tab-separated fields, an unknown
//!   `SERF_EVENT`, ...) is refused as a whole: nothing is forwarded, one line goes to stderr,
//!   the exit code is 2. The handler never panics on input.
//! - `--bridge` must be an `http://` or `https://` URL with a host; anything else is
//!   refused with exit code 2 before any request.
//! - Each request has a timeout (`--timeout`, default 5 s) and is retried (`--retries`,
//!   default 8, after `--retry-delay` = 200 ms, doubling up to 2 s: 11 s in all, longer than
//!   a supervised restart of the bridge) on connection errors, timeouts and 5xx answers.
//!   A request the bridge refuses (4xx) is reported on stderr and the handler goes on with
//!   the other members of the event; a bridge still unreachable after every retry ends the
//!   invocation (the other requests would wait as long). Either way the exit code is 1 and
//!   Serf logs the handler's stderr. Serf runs handlers one at a time with no timeout, so
//!   these bounds are what keeps a dead bridge from stalling every later event.
//! - Every request names the handler's `--dc-tag` (header `x-constructr-dc-tag`); a
//!   bridge with another `--dc-tag` refuses it (400, saying both tags).
//! - For a query, the bridge's answer is printed to stdout and becomes this node's
//!   response. Serf limits a response message to 1024 bytes (`query_response_size_limit`)
//!   **including** about 45 bytes of framing and the responding node's name, and drops a
//!   larger response entirely; the handler therefore truncates the answer to
//!   `--query-response-limit` (1024) − 64 − len(node name) bytes. A failed query writes
//!   nothing to stdout (stderr would become the response too) and exits 1: Serf then sends
//!   no response for this node. 503/504 (no subscriber, no answer in time) are not retried.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::Duration;

use crate::client::MemberEventKind;
use crate::protocol::{self, HandlerEvent, HandlerInput, MemberInfo};

/// Framing and node name Serf adds to a query response, kept free of the payload budget.
const QUERY_RESPONSE_OVERHEAD: usize = 64;

/// Options of the handler (`constructr serf-handler` parses them from its arguments).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HandlerConfig {
    /// Base URL of the bridge. Default `http://127.0.0.1:8888`.
    pub bridge: String,
    /// Name of the tag that holds a member's datacenter. Default `dc`.
    pub dc_tag: String,
    /// Datacenter of members without the dc tag. Default `default`.
    pub default_dc: String,
    /// Timeout of one request to the bridge. Default 5 s.
    pub timeout: Duration,
    /// Retries of a request that failed with a connection error, timeout or 5xx. Default 8:
    /// with the default delays the handler waits 11 s in all, which outlasts a supervised
    /// restart of the bridge (systemd's `RestartSec=1s` plus its start).
    pub retries: u32,
    /// Delay before the first retry; it doubles with every retry, up to
    /// [`MAX_RETRY_DELAY`]. Default 200 ms.
    pub retry_delay: Duration,
    /// The agent's `query_response_size_limit` (bytes of the whole response message).
    /// Default 1024.
    pub query_response_limit: usize,
}

impl Default for HandlerConfig {
    fn default() -> Self {
        Self {
            bridge: "http://127.0.0.1:8888".into(),
            dc_tag: "dc".into(),
            default_dc: "default".into(),
            timeout: Duration::from_secs(5),
            retries: 8,
            retry_delay: Duration::from_millis(200),
            query_response_limit: 1024,
        }
    }
}

impl HandlerConfig {
    /// Options for a bridge at this base URL, with the defaults otherwise.
    pub fn new(bridge: impl Into<String>) -> Self {
        Self {
            bridge: bridge.into(),
            ..Self::default()
        }
    }

    /// The waits before each retry of one request: `retry_delay`, doubling, capped at
    /// [`MAX_RETRY_DELAY`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use constructr_serf::handler::HandlerConfig;
    ///
    /// let waits: Vec<Duration> = HandlerConfig::default().retry_waits().collect();
    /// assert_eq!(waits.len(), 8);
    /// assert!(waits.iter().sum::<Duration>() >= Duration::from_secs(10));
    /// ```
    pub fn retry_waits(&self) -> impl Iterator<Item = Duration> + use<> {
        let first = self.retry_delay.min(MAX_RETRY_DELAY);
        std::iter::successors(Some(first), |d| {
            Some(d.saturating_mul(2).min(MAX_RETRY_DELAY))
        })
        .take(usize::try_from(self.retries).unwrap_or(usize::MAX))
    }
}

/// The longest wait between two attempts of one request.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(2);

/// Header naming the tag the handler reads datacenters from, so that the bridge can refuse
/// a handler whose `--dc-tag` differs from its own.
pub const DC_TAG_HEADER: &str = "x-constructr-dc-tag";

/// Exit code: everything was forwarded.
pub const EXIT_OK: u8 = 0;
/// Exit code: the bridge could not be reached or refused a request.
pub const EXIT_FORWARD_FAILED: u8 = 1;
/// Exit code: the invocation was malformed (nothing was forwarded) or the options are invalid.
pub const EXIT_MALFORMED: u8 = 2;

/// The HTTP method of a [`BridgeRequest`]: the three the bridge's write endpoints take.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BridgeMethod {
    /// `POST`: a member joined or failed, a user event, a query.
    Post,
    /// `PUT`: a member's tags changed.
    Put,
    /// `DELETE`: a member left or was reaped.
    Delete,
}

impl BridgeMethod {
    /// The method as HTTP spells it (`POST`, `PUT`, `DELETE`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Delete => "DELETE",
        }
    }

    fn to_reqwest(self) -> reqwest::Method {
        match self {
            Self::Post => reqwest::Method::POST,
            Self::Put => reqwest::Method::PUT,
            Self::Delete => reqwest::Method::DELETE,
        }
    }
}

impl std::fmt::Display for BridgeMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One request to the bridge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BridgeRequest {
    /// HTTP method.
    pub method: BridgeMethod,
    /// Path and query, percent-encoded (`/dc/dc1/members/a%20b`).
    pub path: String,
    /// JSON body (member events) or the payload (user events, queries).
    pub body: Vec<u8>,
    /// `application/json` or `application/octet-stream`.
    pub content_type: &'static str,
    /// Whether this is a query (its answer is printed; 503/504 are not retried).
    pub is_query: bool,
    /// For a member event: the tag its datacenter was read from (sent as
    /// [`DC_TAG_HEADER`], so the bridge can refuse a mismatch).
    pub dc_tag: Option<String>,
}

/// Percent-encodes one path segment (everything but RFC 3986 unreserved characters).
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn dc_of<'a>(tags: &'a BTreeMap<String, String>, config: &'a HandlerConfig) -> &'a str {
    tags.get(&config.dc_tag)
        .map(String::as_str)
        .filter(|dc| !dc.is_empty())
        .unwrap_or(&config.default_dc)
}

fn member_request(kind: MemberEventKind, m: &MemberInfo, config: &HandlerConfig) -> BridgeRequest {
    use BridgeMethod as Method;
    let dc = encode_segment(dc_of(&m.tags, config));
    let name = encode_segment(&m.name);
    let (method, path) = match kind {
        MemberEventKind::Join => (Method::Post, format!("/dc/{dc}/members")),
        MemberEventKind::Update => (Method::Put, format!("/dc/{dc}/members/{name}")),
        MemberEventKind::Leave => (Method::Delete, format!("/dc/{dc}/members/{name}")),
        MemberEventKind::Reap => (Method::Delete, format!("/dc/{dc}/members/{name}?reap=true")),
        MemberEventKind::Failed => (Method::Post, format!("/dc/{dc}/failures")),
    };
    BridgeRequest {
        method,
        path,
        body: serde_json::to_vec(m).expect("a member serialises"),
        content_type: "application/json",
        is_query: false,
        dc_tag: Some(config.dc_tag.clone()),
    }
}

/// The requests one invocation turns into, in order.
pub fn requests(input: &HandlerInput, config: &HandlerConfig) -> Vec<BridgeRequest> {
    let own_dc = || {
        encode_segment(
            input
                .self_tag(&config.dc_tag)
                .filter(|dc| !dc.is_empty())
                .unwrap_or(&config.default_dc),
        )
    };
    match &input.event {
        HandlerEvent::Members { kind, members } => members
            .iter()
            .map(|m| member_request(*kind, m, config))
            .collect(),
        HandlerEvent::User {
            name,
            ltime,
            payload,
        } => vec![BridgeRequest {
            method: BridgeMethod::Post,
            path: format!(
                "/dc/{}/events/{}?ltime={ltime}",
                own_dc(),
                encode_segment(name)
            ),
            body: payload.clone(),
            content_type: "application/octet-stream",
            is_query: false,
            dc_tag: Some(config.dc_tag.clone()),
        }],
        HandlerEvent::Query {
            name,
            ltime,
            payload,
        } => vec![BridgeRequest {
            method: BridgeMethod::Post,
            path: format!(
                "/dc/{}/queries/{}?ltime={ltime}",
                own_dc(),
                encode_segment(name)
            ),
            body: payload.clone(),
            content_type: "application/octet-stream",
            is_query: true,
            dc_tag: Some(config.dc_tag.clone()),
        }],
    }
}

/// Checks that `--bridge` is an `http://` or `https://` URL with a host (and no secrets to
/// hide: the URL is shown in the message as given).
pub fn check_bridge_url(base: &str) -> Result<(), String> {
    let bad =
        |why: String| format!("--bridge must be an http:// or https:// URL ({why}), got {base:?}");
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(bad("no http:// or https:// scheme".into()));
    }
    let url = reqwest::Url::parse(base).map_err(|e| bad(e.to_string()))?;
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host".into()));
    }
    Ok(())
}

/// How many bytes of a query answer fit into Serf's response limit for this node.
pub fn query_response_budget(limit: usize, self_name: &str) -> usize {
    limit.saturating_sub(QUERY_RESPONSE_OVERHEAD + self_name.len())
}

/// Runs the handler on the process's real stdin, environment, stdout and stderr; returns
/// the exit code for Serf ([`EXIT_OK`], [`EXIT_FORWARD_FAILED`], [`EXIT_MALFORMED`]).
pub fn run_on_process_io(config: &HandlerConfig) -> u8 {
    let mut stdin = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
        eprintln!("constructr serf-handler: cannot read stdin: {e}");
        return EXIT_MALFORMED;
    }
    // Non-UTF-8 variables are not Serf's; skip them rather than fail.
    let env = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
    run_from_env(
        config,
        &stdin,
        env,
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    )
}

/// Runs the handler on the given input; returns the exit code ([`EXIT_OK`],
/// [`EXIT_FORWARD_FAILED`], [`EXIT_MALFORMED`]). Must not be called from within a tokio
/// runtime (it runs its own, single-threaded).
pub fn run_from_env<I, K, V>(
    config: &HandlerConfig,
    stdin: &[u8],
    env: I,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> u8
where
    I: IntoIterator<Item = (K, V)>,
    K: Into<String>,
    V: Into<String>,
{
    let input = match protocol::parse_env(env, stdin) {
        Ok(i) => i,
        Err(e) => {
            let _ = writeln!(
                stderr,
                "constructr serf-handler: refusing the event, nothing forwarded: {e}"
            );
            return EXIT_MALFORMED;
        }
    };
    let base = config.bridge.trim_end_matches('/');
    if let Err(e) = check_bridge_url(base) {
        let _ = writeln!(stderr, "constructr serf-handler: {e}");
        return EXIT_MALFORMED;
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(
                stderr,
                "constructr serf-handler: cannot start a runtime: {e}"
            );
            return EXIT_FORWARD_FAILED;
        }
    };
    let client = match reqwest::Client::builder()
        .timeout(config.timeout)
        .connect_timeout(config.timeout)
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(
                stderr,
                "constructr serf-handler: cannot build the HTTP client: {e}"
            );
            return EXIT_FORWARD_FAILED;
        }
    };
    // A refused request (one member the bridge will not take) does not drop the others of
    // the same event; a bridge that stays unreachable through every retry ends the
    // invocation, since the remaining requests would wait as long for the same answer.
    let mut failed = false;
    for req in requests(&input, config) {
        match rt.block_on(forward(&client, base, &req, config)) {
            Ok(answer) => {
                if req.is_query {
                    let budget =
                        query_response_budget(config.query_response_limit, &input.self_name);
                    let answer = &answer[..answer.len().min(budget)];
                    if stdout
                        .write_all(answer)
                        .and_then(|()| stdout.flush())
                        .is_err()
                    {
                        return EXIT_FORWARD_FAILED;
                    }
                }
            }
            Err(e) => {
                let _ = writeln!(
                    stderr,
                    "constructr serf-handler: {} {}{}: {e}",
                    req.method, base, req.path
                );
                failed = true;
                if matches!(e, Failure::Unreachable(_)) {
                    break;
                }
            }
        }
    }
    if failed { EXIT_FORWARD_FAILED } else { EXIT_OK }
}

/// Why a request was not forwarded.
#[derive(Debug)]
enum Failure {
    /// The bridge answered and refused this request (4xx; for a query also 503/504).
    Refused(String),
    /// The bridge could not be reached, or kept failing, through every retry.
    Unreachable(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused(m) | Self::Unreachable(m) => f.write_str(m),
        }
    }
}

async fn forward(
    client: &reqwest::Client,
    base: &str,
    req: &BridgeRequest,
    config: &HandlerConfig,
) -> Result<Vec<u8>, Failure> {
    let url = format!("{base}{}", req.path);
    let mut attempt = 0;
    let mut waits = config.retry_waits();
    loop {
        let mut request = client
            .request(req.method.to_reqwest(), &url)
            .header(reqwest::header::CONTENT_TYPE, req.content_type);
        if let Some(tag) = &req.dc_tag {
            request = request.header(DC_TAG_HEADER, tag.as_str());
        }
        let result = request.body(req.body.clone()).send().await;
        let retryable_error = match result {
            Ok(resp) => {
                let status = resp.status();
                let body = resp.bytes().await.map(|b| b.to_vec());
                if status.is_success() {
                    return body
                        .map_err(|e| Failure::Unreachable(format!("reading the answer: {e}")));
                }
                let text: String = body
                    .map(|b| {
                        String::from_utf8_lossy(&b)
                            .trim()
                            .chars()
                            .take(300)
                            .collect()
                    })
                    .unwrap_or_default();
                let message = format!("bridge answered {status}: {text}");
                let no_answer = req.is_query
                    && matches!(
                        status,
                        reqwest::StatusCode::SERVICE_UNAVAILABLE
                            | reqwest::StatusCode::GATEWAY_TIMEOUT
                    );
                if !status.is_server_error() || no_answer {
                    return Err(Failure::Refused(message));
                }
                message
            }
            Err(e) => constructr_core::error_chain(&e),
        };
        attempt += 1;
        let Some(wait) = waits.next() else {
            return Err(Failure::Unreachable(format!(
                "{retryable_error} (after {attempt} attempts)"
            )));
        };
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(event: &str, stdin: &[u8], extra: &[(&str, &str)]) -> HandlerInput {
        let mut vars = vec![
            ("SERF_EVENT", event),
            ("SERF_SELF_NAME", "self"),
            ("SERF_SELF_ROLE", ""),
        ];
        vars.extend_from_slice(extra);
        protocol::parse_env(vars, stdin).unwrap()
    }

    #[test]
    fn maps_every_event_type() {
        let config = HandlerConfig::default();
        let line = b"n 1\t10.0.0.1\tweb\tdc=eu/1,role=web\n";
        let cases = [
            ("member-join", "POST", "/dc/eu%2F1/members"),
            ("member-update", "PUT", "/dc/eu%2F1/members/n%201"),
            ("member-leave", "DELETE", "/dc/eu%2F1/members/n%201"),
            ("member-failed", "POST", "/dc/eu%2F1/failures"),
            (
                "member-reap",
                "DELETE",
                "/dc/eu%2F1/members/n%201?reap=true",
            ),
        ];
        for (event, method, path) in cases {
            let r = requests(&input(event, line, &[]), &config);
            assert_eq!(r.len(), 1);
            assert_eq!(r[0].method.as_str(), method, "{event}");
            assert_eq!(r[0].path, path, "{event}");
            let m: MemberInfo = serde_json::from_slice(&r[0].body).unwrap();
            assert_eq!(m.name, "n 1");
            assert_eq!(m.role, "web");
        }
        let r = requests(
            &input(
                "user",
                b"payload\n",
                &[
                    ("SERF_USER_EVENT", "deploy"),
                    ("SERF_USER_LTIME", "3"),
                    ("SERF_TAG_DC", "dc1"),
                ],
            ),
            &config,
        );
        assert_eq!(r[0].path, "/dc/dc1/events/deploy?ltime=3");
        assert_eq!(r[0].body, b"payload");
        let r = requests(
            &input(
                "query",
                b"",
                &[("SERF_QUERY_NAME", "load"), ("SERF_QUERY_LTIME", "9")],
            ),
            &config,
        );
        assert_eq!(r[0].path, "/dc/default/queries/load?ltime=9");
        assert!(r[0].is_query);
    }

    #[test]
    fn members_without_the_dc_tag_go_to_the_default_dc() {
        let config = HandlerConfig {
            dc_tag: "zone".into(),
            default_dc: "main".into(),
            ..HandlerConfig::default()
        };
        let r = requests(
            &input(
                "member-join",
                b"a\t1.1.1.1\t\t\nb\t1.1.1.2\t\tzone=z2\n",
                &[],
            ),
            &config,
        );
        assert_eq!(r[0].path, "/dc/main/members");
        assert_eq!(r[1].path, "/dc/z2/members");
    }

    /// Runs the handler on a `member-join` event with `stdin`: (exit code, stdout, stderr).
    fn run_member_join(config: &HandlerConfig, stdin: &[u8]) -> (u8, String, String) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let env = [("SERF_EVENT", "member-join"), ("SERF_SELF_NAME", "a")];
        let code = run_from_env(config, stdin, env, &mut out, &mut err);
        let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
        (code, text(out), text(err))
    }

    /// A stand-in bridge on its own thread (the handler runs its own runtime): records
    /// every path, answers 400 to paths that contain `refuse` and 201 to the others.
    fn recording_bridge(
        listener: std::net::TcpListener,
        refuse: &'static str,
    ) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = seen.clone();
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
                    record.lock().unwrap().push(uri.path().to_owned());
                    let refused = uri.path().contains(refuse);
                    async move {
                        if refused {
                            axum::http::StatusCode::BAD_REQUEST
                        } else {
                            axum::http::StatusCode::CREATED
                        }
                    }
                });
                axum::serve(listener, app).await.unwrap();
            });
        });
        seen
    }

    fn free_listener() -> std::net::TcpListener {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap()
    }

    #[test]
    fn a_refused_member_does_not_drop_the_later_members_of_the_event() {
        let listener = free_listener();
        let config = HandlerConfig::new(format!("http://{}", listener.local_addr().unwrap()));
        let seen = recording_bridge(listener, "/b");
        let stdin = b"a\t1.1.1.1\t\t\nb\t1.1.1.2\t\t\nc\t1.1.1.3\t\t\n";
        let env = [("SERF_EVENT", "member-update"), ("SERF_SELF_NAME", "a")];
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = run_from_env(&config, stdin, env, &mut out, &mut err);
        let err = String::from_utf8(err).unwrap();
        assert_eq!(code, EXIT_FORWARD_FAILED, "{err}");
        let seen = seen.lock().unwrap().clone();
        let paths = [
            "/dc/default/members/a",
            "/dc/default/members/b",
            "/dc/default/members/c",
        ];
        assert_eq!(seen, paths, "{err}");
        assert!(err.contains("members/b") && err.contains("400"), "{err}");
        assert!(!err.contains("members/c"), "{err}");
    }

    #[test]
    fn the_default_retries_outlast_a_supervised_bridge_restart() {
        // The bridge is down for 3 s (systemd's RestartSec=1s plus a slow start).
        let port = free_listener().local_addr().unwrap().port();
        let config = HandlerConfig::new(format!("http://127.0.0.1:{port}"));
        let restart = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(3));
            let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
            recording_bridge(listener, "nothing")
        });
        let (code, _, err) = run_member_join(&config, b"a\t1.1.1.1\t\t\n");
        assert_eq!(code, EXIT_OK, "{err}");
        let seen = restart.join().unwrap();
        assert_eq!(*seen.lock().unwrap(), ["/dc/default/members"]);
    }

    #[test]
    fn an_invalid_bridge_url_is_refused_with_exit_2_before_any_request() {
        for url in [
            "http://exa mple",
            "http://",
            "https://[::1",
            "ftp://bridge",
            "bridge:8888",
        ] {
            let (code, out, err) = run_member_join(&HandlerConfig::new(url), b"a\t1.1.1.1\t\t\n");
            assert_eq!(code, EXIT_MALFORMED, "{url}: {err}");
            assert!(
                err.contains("--bridge must be") && out.is_empty(),
                "{url}: {err}"
            );
            assert!(
                !err.contains("attempts"),
                "{url}: nothing may be sent: {err}"
            );
        }
    }

    #[test]
    fn malformed_input_forwards_nothing_and_exits_2() {
        // The bridge URL points nowhere: any forwarding attempt would show as exit 1.
        let config = HandlerConfig::new("http://127.0.0.1:1");
        let (code, out, err) = run_member_join(&config, b"a\t1.1.1.1\t\t\nbroken line\n");
        assert_eq!(code, EXIT_MALFORMED);
        assert!(
            err.contains("line 2") && err.contains("nothing forwarded"),
            "{err}"
        );
        assert!(out.is_empty());
    }

    #[test]
    fn unreachable_bridge_exits_1_after_retries() {
        let config = HandlerConfig {
            retries: 1,
            retry_delay: Duration::from_millis(10),
            ..HandlerConfig::new("http://127.0.0.1:1")
        };
        let (code, _, err) = run_member_join(&config, b"a\t1.1.1.1\t\t\n");
        assert_eq!(code, EXIT_FORWARD_FAILED);
        assert!(err.contains("after 2 attempts"), "{err}");
    }

    #[test]
    fn query_budget_leaves_room_for_framing() {
        // serf 0.10.1 accepted 981 payload bytes for node `a1` and refused 982.
        assert!(query_response_budget(1024, "a1") <= 981);
        assert_eq!(query_response_budget(10, "a1"), 0);
    }
}
