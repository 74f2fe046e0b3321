//! Plumbing shared by the network drivers (etcd, Consul, Serf, and yours): secrets that do
//! not leak, endpoint lists with **one** failover policy, URLs shown without credentials,
//! and cleanup that runs in the background when a runtime is there.
//!
//! Drivers keep only their wire calls, their configuration and their mapping to the
//! [`Coordination`](crate::Coordination) contract; PEM loading is [`crate::tls::load_pem`],
//! error messages with their causes are [`crate::error_chain`].
//!
//! # The failover policy
//! A driver that is given several endpoints of one service sends every request to the
//! **current** endpoint. When that attempt fails *transiently* (unreachable, timed out, no
//! leader, 5xx) the current endpoint moves past it and the request is tried once on each
//! following endpoint, in list order, wrapping around; the first endpoint that answers
//! becomes current. A *permanent* failure (refused credentials, a rejected request) is
//! returned at once: another member of the same service would answer the same. When every
//! endpoint failed, the last failure is returned and the next request starts from where
//! the current one stopped. Concurrent requests share the current endpoint: a failure
//! moves it only if nobody moved it meanwhile, so two requests failing at once skip one
//! endpoint, not two.
//!
//! ```
//! use constructr_core::plumbing::Failover;
//!
//! # tokio_test_block_on(async {
//! let endpoints = Failover::new(vec!["http://a:2379", "http://b:2379"]).expect("not empty");
//! // `a` is down, `b` answers.
//! let answer: Result<&str, String> = endpoints
//!     .run(|_, e| async move { if e.contains("a:") { Err(format!("{e} down")) } else { Ok(*e) } },
//!          |_| true)
//!     .await;
//! assert_eq!(answer.unwrap(), "http://b:2379");
//! assert_eq!(*endpoints.current(), "http://b:2379");
//! # });
//! # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
//! # }
//! ```

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::CoordinationError;
use crate::coordination::ErrorKind;

pub use crate::secret::Secret;
pub use crate::shared_wait::{LockAttempt, SharedLocks, SharedReads, SharedWaits};

/// A URL without user info, for messages and logs: `https://user:pw@host:2379/x` →
/// `https://host:2379/x`, `user@host:2379` → `host:2379`. Anything else is returned as is.
///
/// ```
/// use constructr_core::plumbing::display_url;
/// assert_eq!(display_url("https://root:pw@etcd:2379"), "https://etcd:2379");
/// ```
pub fn display_url(url: &str) -> String {
    let url = url.trim();
    let (scheme, rest) = match url.find("://") {
        Some(i) => (&url[..i + 3], &url[i + 3..]),
        None => ("", url),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

/// [`display_url`] of each URL of a list, for the `Debug` of a driver's configuration.
///
/// ```
/// use constructr_core::plumbing::display_urls;
/// let urls = ["https://root:pw@a:2379".to_owned(), "b:2379".to_owned()];
/// assert_eq!(display_urls(&urls), ["https://a:2379", "b:2379"]);
/// ```
pub fn display_urls(urls: &[String]) -> Vec<String> {
    urls.iter().map(|url| display_url(url)).collect()
}

/// Implements `Debug` for a driver's configuration the way `#[derive(Debug)]` would, except
/// that its list of URLs is shown through [`display_urls`] (without user info). Name the URL
/// field first, then the others in the order to show them.
///
/// ```
/// use constructr_core::plumbing::{Secret, config_debug};
///
/// struct MyConfig {
///     urls: Vec<String>,
///     token: Option<Secret>,
/// }
/// config_debug!(MyConfig { urls; token });
///
/// let c = MyConfig { urls: vec!["https://u:pw@a:1".into()], token: Some("t0k3n".into()) };
/// assert_eq!(format!("{c:?}"), r#"MyConfig { urls: ["https://a:1"], token: Some(<redacted>) }"#);
/// ```
#[macro_export]
macro_rules! config_debug {
    ($config:ident { $urls:ident; $($field:ident),* $(,)? }) => {
        impl ::std::fmt::Debug for $config {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.debug_struct(::std::stringify!($config))
                    .field(
                        ::std::stringify!($urls),
                        &$crate::plumbing::display_urls(&self.$urls),
                    )
                    $(.field(::std::stringify!($field), &self.$field))*
                    .finish()
            }
        }
    };
}
#[doc(inline)]
pub use crate::config_debug;

/// Checks a driver's endpoint list and timeouts without I/O; the message says which rule
/// is broken (the driver wraps it in its configuration error). `noun` names an entry
/// (`endpoint`, `address`); `tls` says whether TLS settings are given; `tls_hint` ends the
/// message for an `https://` entry without them.
///
/// Rules: at least one entry, none empty, both timeouts above zero, no `http://` entry with
/// TLS and no `https://` entry without it (entries are shown without user info).
///
/// ```
/// use std::time::Duration;
/// use constructr_core::plumbing::check_endpoints;
///
/// let s = Duration::from_secs(1);
/// assert!(check_endpoints("endpoint", &["http://a:2379".into()], false, "", s, s).is_ok());
/// let e = check_endpoints("endpoint", &["https://u:pw@a:2379".into()], false, "(set `ca`)", s, s);
/// assert_eq!(e.unwrap_err(), "endpoint https://a:2379 uses https:// but no TLS settings are given (set `ca`)");
/// ```
pub fn check_endpoints(
    noun: &str,
    endpoints: &[String],
    tls: bool,
    tls_hint: &str,
    connect_timeout: std::time::Duration,
    request_timeout: std::time::Duration,
) -> Result<(), String> {
    if endpoints.is_empty() {
        return Err(format!("at least one {noun} is required"));
    }
    if endpoints.iter().any(|e| e.trim().is_empty()) {
        return Err(format!("an {noun} is empty"));
    }
    if connect_timeout.is_zero() || request_timeout.is_zero() {
        return Err("connect-timeout and request-timeout must be greater than zero".into());
    }
    let scheme = |s: &str| endpoints.iter().find(|e| e.trim().starts_with(s));
    if tls {
        if let Some(e) = scheme("http://") {
            return Err(format!(
                "TLS is configured but {noun} {} uses http://",
                display_url(e)
            ));
        }
    } else if let Some(e) = scheme("https://") {
        return Err(format!(
            "{noun} {} uses https:// but no TLS settings are given {tls_hint}",
            display_url(e)
        )
        .trim_end()
        .to_owned());
    }
    Ok(())
}

/// Whether a transport error's text (its whole chain) says that a TLS handshake failed over
/// a certificate: the server's is not trusted (another CA, wrong name, expired) or the
/// server refused ours. Retrying cannot fix that, so drivers report it as permanent.
///
/// ```
/// use constructr_core::plumbing::is_certificate_failure;
/// assert!(is_certificate_failure("transport error: invalid peer certificate: UnknownIssuer"));
/// assert!(is_certificate_failure("received fatal alert: BadCertificate"));
/// assert!(!is_certificate_failure("tcp connect error: Connection refused"));
/// ```
pub fn is_certificate_failure(detail: &str) -> bool {
    detail.contains("certificate") || detail.contains("Certificate")
}

/// A non-empty list of endpoints of one service and which of them is current, with the
/// failover policy of this module's documentation.
#[derive(Debug)]
pub struct Failover<E> {
    endpoints: Vec<E>,
    current: AtomicUsize,
}

impl<E> Failover<E> {
    /// The list, with the first endpoint current; `None` if it is empty.
    pub fn new(endpoints: Vec<E>) -> Option<Self> {
        (!endpoints.is_empty()).then(|| Self {
            endpoints,
            current: AtomicUsize::new(0),
        })
    }

    /// All endpoints, in configured order.
    pub fn endpoints(&self) -> &[E] {
        &self.endpoints
    }

    /// The index of the current endpoint.
    pub fn current_index(&self) -> usize {
        self.current.load(Ordering::Relaxed) % self.endpoints.len()
    }

    /// The current endpoint.
    pub fn current(&self) -> &E {
        &self.endpoints[self.current_index()]
    }

    /// The endpoints in the order one request tries them: the current one first.
    pub fn order(&self) -> impl Iterator<Item = (usize, &E)> + '_ {
        let n = self.endpoints.len();
        let start = self.current_index();
        (0..n).map(move |k| {
            let i = (start + k) % n;
            (i, &self.endpoints[i])
        })
    }

    /// Endpoint `index` failed transiently: if it is still current, the next one becomes
    /// current (a concurrent failure that already moved on is not moved again).
    pub fn failed(&self, index: usize) {
        let next = (index + 1) % self.endpoints.len();
        let _ = self
            .current
            .compare_exchange(index, next, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Endpoint `index` answered: it becomes current. Returns whether that changed the
    /// current endpoint (for a log line on a switch).
    pub fn answered(&self, index: usize) -> bool {
        self.current.swap(index, Ordering::Relaxed) % self.endpoints.len() != index
    }

    /// Runs one request under the policy: `attempt(index, endpoint)` on the current endpoint,
    /// then on each following one while `is_transient` says the failure is. Each endpoint is
    /// tried at most once; bounding an attempt in time is the caller's (`attempt`'s) job.
    pub async fn run<'a, T, Err, F, Fut>(
        &'a self,
        mut attempt: F,
        is_transient: impl Fn(&Err) -> bool,
    ) -> Result<T, Err>
    where
        F: FnMut(usize, &'a E) -> Fut,
        Fut: Future<Output = Result<T, Err>>,
    {
        let mut last = None;
        for (index, endpoint) in self.order() {
            match attempt(index, endpoint).await {
                Ok(v) => {
                    self.answered(index);
                    return Ok(v);
                }
                Err(e) if is_transient(&e) => {
                    self.failed(index);
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("a failover list is never empty"))
    }
}

/// Runs cleanup (revoking a lease, destroying a session) on the current tokio runtime
/// without waiting for it; returns `false` and does nothing outside a runtime (a future
/// dropped after its runtime): the driver's TTL cleans up then.
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub fn spawn_background<F>(cleanup: F) -> bool
where
    F: Future<Output = ()> + Send + 'static,
{
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            handle.spawn(cleanup);
            true
        }
        Err(_) => false,
    }
}

/// A network driver's own error type, and which [`ErrorKind`] of [`CoordinationError`] each
/// of its errors is.
///
/// Implementing it gives the driver's error [`is_retryable`](Self::is_retryable) and
/// `From<E> for CoordinationError`: the coordination error of [`kind`](Self::kind), whose
/// message is the whole chain and whose source is the driver's error.
///
/// ```
/// use constructr_core::CoordinationError;
/// use constructr_core::coordination::ErrorKind;
/// use constructr_core::plumbing::DriverError;
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("no leader")]
/// struct NoLeader;
///
/// impl DriverError for NoLeader {
///     fn kind(&self) -> ErrorKind {
///         ErrorKind::Unavailable
///     }
/// }
///
/// assert!(NoLeader.is_retryable());
/// assert!(CoordinationError::from(NoLeader).is_retryable());
/// ```
pub trait DriverError: std::error::Error + Send + Sync + 'static {
    /// What kind of coordination error this is ([`CoordinationError::kind`] of its mapping).
    fn kind(&self) -> ErrorKind;

    /// Whether retrying the same request (possibly on another endpoint) may succeed.
    fn is_retryable(&self) -> bool {
        self.kind().is_retryable()
    }
}

impl<E: DriverError> From<E> for CoordinationError {
    /// The message is the whole chain; the driver's error stays available as the source.
    fn from(e: E) -> Self {
        CoordinationError::of_kind(e.kind(), e)
    }
}

/// Writes constructors `fn name(message: impl Into<String>) -> Self` for the variants of an
/// error enum that carry only a `message: String`, inside that enum's `impl` block.
///
/// ```
/// #[derive(Debug)]
/// enum MyError {
///     Config { message: String },
/// }
///
/// impl MyError {
///     constructr_core::plumbing::message_constructors! {
///         /// A broken configuration rule.
///         pub fn config => Config;
///     }
/// }
///
/// assert!(matches!(MyError::config("no endpoint"), MyError::Config { message } if message == "no endpoint"));
/// ```
#[macro_export]
macro_rules! message_constructors {
    ($($(#[$attr:meta])* $vis:vis fn $name:ident => $variant:ident;)+) => {
        $(
            $(#[$attr])*
            $vis fn $name(message: impl ::std::convert::Into<::std::string::String>) -> Self {
                Self::$variant { message: message.into() }
            }
        )+
    };
}
#[doc(inline)]
pub use crate::message_constructors;

/// Exponential backoff between the attempts of a long-lived request that fails
/// transiently (an etcd watch, a Consul blocking query): 50 ms, doubling up to 1 s.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::time::Duration;
/// use constructr_core::plumbing::Backoff;
///
/// let mut backoff = Backoff::default();
/// assert_eq!(backoff.next_wait(), Duration::from_millis(50));
/// backoff.wait().await;
/// assert_eq!(backoff.next_wait(), Duration::from_millis(100));
/// backoff.reset();
/// assert_eq!(backoff.next_wait(), Duration::from_millis(50));
/// # }
/// ```
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
#[derive(Clone, Debug)]
pub struct Backoff {
    next: Duration,
}

#[cfg(feature = "tokio")]
impl Backoff {
    const FIRST: Duration = Duration::from_millis(50);
    const MAX: Duration = Duration::from_secs(1);

    /// How long the next [`Backoff::wait`] sleeps.
    pub fn next_wait(&self) -> Duration {
        self.next
    }

    /// Sleeps, then doubles the next wait (up to 1 s).
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(Self::MAX);
    }

    /// Starts again from the shortest wait (after a success).
    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    /// `Some(value)` of a success; after a retryable error, logs it (as `what` failed),
    /// waits and returns `None` (the caller tries again); any other error is returned.
    pub async fn retry<T, E: DriverError>(
        &mut self,
        result: Result<T, E>,
        what: &str,
    ) -> Result<Option<T>, E> {
        match result {
            Ok(value) => Ok(Some(value)),
            Err(e) if e.is_retryable() => {
                tracing::debug!(error = %e, "{what} failed; retrying");
                self.wait().await;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(feature = "tokio")]
impl Default for Backoff {
    fn default() -> Self {
        Self { next: Self::FIRST }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn secret_is_redacted_in_debug_and_display() {
        let s: Secret = "hunter2".parse().unwrap();
        assert!(!format!("{s:?}{s}{:?}", Some(&s)).contains("hunter2"));
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn secret_deserializes_from_a_string() {
        let s: Secret = serde_json::from_str("\"tok\"").unwrap();
        assert_eq!(s.expose(), "tok");
    }

    #[test]
    fn urls_are_shown_without_user_info() {
        assert_eq!(display_url("https://u:p@h:2379"), "https://h:2379");
        assert_eq!(display_url("u:p@h:2379"), "h:2379");
        assert_eq!(display_url(" http://h:2379/x@y "), "http://h:2379/x@y");
        assert_eq!(display_url("http://h:2379?q=a@b"), "http://h:2379?q=a@b");
        assert_eq!(display_url("h:2379"), "h:2379");
        assert_eq!(display_url(""), "");
    }

    #[test]
    fn empty_list_is_refused() {
        assert!(Failover::<u8>::new(vec![]).is_none());
    }

    /// Runs one request where endpoints in `down` fail with a transient error and the
    /// endpoint in `refuses` fails permanently; returns the answer and the tried indexes.
    fn request(
        f: &Failover<usize>,
        down: &[usize],
        refuses: Option<usize>,
    ) -> (Result<usize, (bool, usize)>, Vec<usize>) {
        let tried = Mutex::new(Vec::new());
        let r = block_on(f.run(
            |i, &e| {
                tried.lock().unwrap().push(i);
                let r = if Some(e) == refuses {
                    Err((false, e))
                } else if down.contains(&e) {
                    Err((true, e))
                } else {
                    Ok(e)
                };
                async move { r }
            },
            |e| e.0,
        ));
        (r, tried.into_inner().unwrap())
    }

    #[test]
    fn a_transient_failure_moves_on_and_the_answering_endpoint_becomes_current() {
        let f = Failover::new(vec![0, 1, 2]).unwrap();
        assert_eq!(request(&f, &[0], None), (Ok(1), vec![0, 1]));
        assert_eq!(f.current_index(), 1);
        // The next request starts at the new current endpoint, not at the first.
        assert_eq!(request(&f, &[0], None), (Ok(1), vec![1]));
    }

    #[test]
    fn failover_wraps_around_to_earlier_endpoints() {
        let f = Failover::new(vec![0, 1, 2]).unwrap();
        let _ = request(&f, &[0, 1], None);
        assert_eq!(f.current_index(), 2);
        assert_eq!(request(&f, &[2], None), (Ok(0), vec![2, 0]));
        assert_eq!(f.current_index(), 0);
    }

    #[test]
    fn a_permanent_failure_is_returned_at_once() {
        let f = Failover::new(vec![0, 1, 2]).unwrap();
        assert_eq!(request(&f, &[], Some(0)), (Err((false, 0)), vec![0]));
        assert_eq!(
            f.current_index(),
            0,
            "a refusal does not move the current endpoint"
        );
    }

    #[test]
    fn all_down_tries_each_once_and_returns_the_last_failure() {
        let f = Failover::new(vec![0, 1, 2]).unwrap();
        assert_eq!(
            request(&f, &[0, 1, 2], None),
            (Err((true, 2)), vec![0, 1, 2])
        );
        // Every endpoint moved the current one on: it went round to the first again.
        assert_eq!(f.current_index(), 0);
    }

    #[test]
    fn a_stale_failure_does_not_move_the_current_endpoint_again() {
        let f = Failover::new(vec![0, 1, 2]).unwrap();
        f.failed(0);
        f.failed(0); // a second request that failed on 0 at the same time
        assert_eq!(f.current_index(), 1);
        assert!(f.answered(2));
        assert!(!f.answered(2));
    }

    #[test]
    fn background_cleanup_needs_a_runtime() {
        assert!(!spawn_background(async {}));
        let (tx, rx) = tokio::sync::oneshot::channel();
        block_on(async {
            assert!(spawn_background(async move {
                let _ = tx.send(());
            }));
            rx.await.unwrap();
        });
    }
}
