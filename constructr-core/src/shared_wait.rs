//! [`SharedWaits`]: one watch per scope for all the nodes of a process that wait on it, and
//! [`SharedReads`]: one read in flight per scope for all the nodes of a process that read it,
//! and [`SharedLocks`]: one lock request in flight per scope for all the nodes of a process
//! that try to take it.
//!
//! Without it every waiting node holds its own watch (an etcd watch stream, a Consul
//! blocking query): a process with 1,000 nodes opens 1,000 watches against one service,
//! and Consul closes the connections above its per-client limit
//! (`limits.http_max_conns_per_client`, 200 by default). With it, the nodes of one backend
//! value that wait on the same scope share **one** watch: it runs while at least one of them
//! waits, and every change it reports wakes all of them at once.
//!
//! A driver gives [`SharedWaits::wait`] a function `next(after)` that resolves with the
//! revision of the first relevant change after revision `after` (after *now* for `None`),
//! retrying transient failures itself, or with `u64::MAX` when the service's state was reset
//! (everything may have changed: every waiter wakes and the watch ends). Waiters are woken when the shared watch reports a
//! revision above the one they read. A waiter whose read is older than the shared watch's
//! starting point is woken at once (a spurious wake-up: it re-reads), because the watch
//! cannot say what changed before it started.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use constructr_core::WaitOutcome;
//! use constructr_core::plumbing::SharedWaits;
//!
//! let waits = SharedWaits::default();
//! let opened = Arc::new(AtomicU64::new(0));
//! // A "watch" that reports a change at revision 8 after 10 ms.
//! let next = {
//!     let opened = opened.clone();
//!     move |_after: Option<u64>| {
//!         opened.fetch_add(1, Ordering::Relaxed);
//!         async {
//!             tokio::time::sleep(std::time::Duration::from_millis(10)).await;
//!             Ok(8)
//!         }
//!     }
//! };
//! let (a, b) = tokio::join!(
//!     waits.wait("scope", Some(7), next.clone()),
//!     waits.wait("scope", Some(7), next),
//! );
//! assert_eq!((a.unwrap(), b.unwrap()), (WaitOutcome::Changed, WaitOutcome::Changed));
//! assert_eq!(opened.load(Ordering::Relaxed), 1, "the two waiters shared one watch");
//! # }
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::coordination::{
    CoordinationError, ErrorKind, LockOutcome, LockToken, Result, WaitOutcome,
};
use crate::node::NodeId;

/// What a shared watch has seen so far.
#[derive(Clone, Debug)]
enum Seen {
    /// Running; the latest revision it reported (`None`: nothing yet).
    Running(Option<u64>),
    /// Ended with a permanent error (kind and message), shared by every waiter.
    Failed(ErrorKind, String),
}

struct Hub {
    /// The revision the watch started after (`None`: after the moment it started).
    from: Option<u64>,
    seen: watch::Sender<Seen>,
    /// The newest read of a waiter that subscribed (changed under the hubs' lock): a report
    /// above it satisfies every waiter, and the watch ends instead of re-opening.
    newest_read: Mutex<Option<u64>>,
}

type Hubs = Arc<Mutex<HashMap<String, Arc<Hub>>>>;

/// The shared watches of one backend value, keyed by scope. See the module docs.
#[derive(Default)]
pub struct SharedWaits {
    hubs: Hubs,
}

impl std::fmt::Debug for SharedWaits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedWaits")
            .field("running", &self.running())
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct SharedFailure(String);

fn failure(kind: ErrorKind, message: String) -> CoordinationError {
    CoordinationError::of_kind(kind, SharedFailure(message))
}

/// An error as its kind and its message (without the prefix its `Display` adds), to hand
/// to many waiters and rebuild with [`failure`].
fn parts(e: &CoordinationError) -> (ErrorKind, String) {
    let message = match e {
        CoordinationError::Unavailable { message, .. }
        | CoordinationError::Unauthorized { message }
        | CoordinationError::Invalid { message }
        | CoordinationError::Permanent { message, .. } => message.clone(),
        other => other.to_string(),
    };
    (e.kind(), message)
}

impl SharedWaits {
    /// How many shared watches run now.
    pub fn running(&self) -> usize {
        self.hubs.lock().map(|h| h.len()).unwrap_or(0)
    }

    /// Resolves with [`WaitOutcome::Changed`] when the shared watch of `key` reports a
    /// revision above `after` (for `None`: any revision it reports after this call). Starts
    /// the shared watch with `next` if none runs for `key`; the watch stops when its last
    /// waiter is dropped, and ends every waiter with its error when it fails permanently.
    ///
    /// A waiter with `Some(after)` that joins a watch started with `None` and not reporting
    /// yet is woken by that watch's next report only (no backend of this workspace reads
    /// without a revision and waits with one).
    pub async fn wait<N, F>(&self, key: &str, after: Option<u64>, next: N) -> Result<WaitOutcome>
    where
        N: Fn(Option<u64>) -> F + Send + 'static,
        F: Future<Output = Result<u64>> + Send + 'static,
    {
        let mut rx = {
            let mut hubs = self.hubs.lock().unwrap_or_else(|p| p.into_inner());
            let hub = match hubs.get(key) {
                Some(h) => h.clone(),
                None => {
                    let (seen, _) = watch::channel(Seen::Running(None));
                    let hub = Arc::new(Hub {
                        from: after,
                        seen,
                        newest_read: Mutex::new(None),
                    });
                    hubs.insert(key.to_owned(), hub.clone());
                    // The task waits for this lock before it may stop, so the subscription
                    // below is in place by then.
                    spawn_hub(self.hubs.clone(), key.to_owned(), hub.clone(), next);
                    hub
                }
            };
            // A read older than the watch's start: what changed in between is unknown.
            if let (Some(a), Some(from)) = (after, hub.from)
                && a < from
            {
                return Ok(WaitOutcome::Changed);
            }
            if let Some(a) = after {
                let mut newest = hub.newest_read.lock().unwrap_or_else(|p| p.into_inner());
                *newest = Some(newest.map_or(a, |n| n.max(a)));
            }
            hub.seen.subscribe()
        };
        // For `None`, the baseline is what the watch had reported when we subscribed.
        let baseline = match (*rx.borrow_and_update()).clone() {
            Seen::Running(latest) => after.or(latest),
            Seen::Failed(kind, message) => return Err(failure(kind, message)),
        };
        loop {
            match (*rx.borrow_and_update()).clone() {
                Seen::Running(Some(latest)) if baseline.is_none_or(|b| latest > b) => {
                    return Ok(WaitOutcome::Changed);
                }
                Seen::Running(_) => {}
                Seen::Failed(kind, message) => return Err(failure(kind, message)),
            }
            if rx.changed().await.is_err() {
                return Err(CoordinationError::unavailable("the shared watch ended"));
            }
        }
    }
}

/// Reads of one scope by many nodes of one backend value, coalesced: while a read is in
/// flight, the calls that arrive wait for the **next** read, which starts when it returns
/// and answers all of them. Every caller gets a read that started after its call (so
/// reads stay linearizable), and a process never has more than one read of a scope in
/// flight: 1,000 nodes woken by the same registration send one read, not 1,000.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use constructr_core::plumbing::SharedReads;
///
/// let reads = Arc::new(SharedReads::default());
/// let sent = Arc::new(AtomicU64::new(0));
/// let read = {
///     let sent = sent.clone();
///     move || {
///         let n = sent.fetch_add(1, Ordering::Relaxed);
///         async move {
///             tokio::time::sleep(std::time::Duration::from_millis(10)).await;
///             Ok(n)
///         }
///     }
/// };
/// let mut all = tokio::task::JoinSet::new();
/// for _ in 0..100 {
///     let (reads, read) = (reads.clone(), read.clone());
///     all.spawn(async move { reads.read("scope", read).await });
/// }
/// while let Some(answer) = all.join_next().await {
///     assert!(answer.unwrap().is_ok());
/// }
/// assert!(sent.load(Ordering::Relaxed) <= 2, "100 calls, at most two reads");
/// # }
/// ```
pub struct SharedReads<T> {
    queues: Arc<Mutex<HashMap<String, ReadQueue<T>>>>,
}

type Answer<T> = std::result::Result<T, (ErrorKind, String)>;

struct ReadQueue<T> {
    waiting: Vec<tokio::sync::oneshot::Sender<Answer<T>>>,
}

impl<T> Default for SharedReads<T> {
    fn default() -> Self {
        Self {
            queues: Arc::default(),
        }
    }
}

impl<T> std::fmt::Debug for SharedReads<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedReads").finish_non_exhaustive()
    }
}

impl<T: Clone + Send + 'static> SharedReads<T> {
    /// The answer of a `read` of `key` that starts after this call: its own, or one shared
    /// with the calls that arrived while the previous read was in flight.
    pub async fn read<R, F>(&self, key: &str, read: R) -> Result<T>
    where
        R: Fn() -> F + Send + 'static,
        F: Future<Output = Result<T>> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        {
            let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
            match queues.get_mut(key) {
                Some(q) => q.waiting.push(tx),
                None => {
                    queues.insert(key.to_owned(), ReadQueue { waiting: vec![tx] });
                    tokio::spawn(serve_reads(self.queues.clone(), key.to_owned(), read));
                }
            }
        }
        match rx.await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err((kind, message))) => Err(failure(kind, message)),
            Err(_) => Err(CoordinationError::unavailable(
                "the shared read was dropped",
            )),
        }
    }
}

/// Reads for the waiting callers of `key`, one read per round, until none waits.
async fn serve_reads<T, R, F>(
    queues: Arc<Mutex<HashMap<String, ReadQueue<T>>>>,
    key: String,
    read: R,
) where
    T: Clone + Send + 'static,
    R: Fn() -> F + Send + 'static,
    F: Future<Output = Result<T>> + Send + 'static,
{
    loop {
        let waiting = {
            let mut queues = queues.lock().unwrap_or_else(|p| p.into_inner());
            let Some(q) = queues.get_mut(&key) else {
                return;
            };
            q.waiting.retain(|w| !w.is_closed());
            if q.waiting.is_empty() {
                queues.remove(&key);
                return;
            }
            std::mem::take(&mut q.waiting)
        };
        let answer = read().await.map_err(|e| parts(&e));
        for w in waiting {
            let _ = w.send(answer.clone());
        }
    }
}

/// Runs the shared watch of `hub` until its last waiter is gone or it fails permanently,
/// then removes it from `hubs`.
fn spawn_hub<N, F>(hubs: Hubs, key: String, hub: Arc<Hub>, next: N)
where
    N: Fn(Option<u64>) -> F + Send + 'static,
    F: Future<Output = Result<u64>> + Send + 'static,
{
    let remove = move |hubs: &mut HashMap<String, Arc<Hub>>, hub: &Arc<Hub>| {
        if hubs.get(&key).is_some_and(|h| Arc::ptr_eq(h, hub)) {
            hubs.remove(&key);
        }
    };
    tokio::spawn(async move {
        let mut known = hub.from;
        loop {
            let step = tokio::select! {
                r = next(known) => Some(r),
                () = hub.seen.closed() => None,
            };
            let mut map = hubs.lock().unwrap_or_else(|p| p.into_inner());
            match step {
                Some(Ok(u64::MAX)) => {
                    // Everything may have changed (the service's state was reset): wake
                    // every waiter; the next wait starts a new watch from its own read.
                    remove(&mut map, &hub);
                    hub.seen.send_replace(Seen::Running(Some(u64::MAX)));
                    return;
                }
                Some(Ok(revision)) => {
                    known = Some(known.map_or(revision, |k| k.max(revision)));
                    hub.seen.send_replace(Seen::Running(known));
                    let newest = *hub.newest_read.lock().unwrap_or_else(|p| p.into_inner());
                    if newest.is_none_or(|n| revision > n) {
                        // Every waiter is woken: none needs the watch any more.
                        remove(&mut map, &hub);
                        return;
                    }
                }
                Some(Err(e)) => {
                    remove(&mut map, &hub);
                    let (kind, message) = parts(&e);
                    hub.seen.send_replace(Seen::Failed(kind, message));
                    return;
                }
                None => {}
            }
            // Waiters subscribe under the lock held here: none is left, and none can come.
            if hub.seen.receiver_count() == 0 {
                remove(&mut map, &hub);
                return;
            }
        }
    });
}

/// What one lock request found: its outcome and, when it found the lock held, the holder
/// if the backend read it (see [`SharedLocks`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockAttempt {
    /// The outcome for the node that sent the request.
    pub outcome: LockOutcome,
    /// The node that holds the lock, when the outcome is [`LockOutcome::HeldByOther`] and
    /// the backend saw who; `None` if it did not (then the waiting nodes ask themselves).
    pub holder: Option<NodeId>,
}

impl LockAttempt {
    /// The request took (or extended) the lock.
    pub fn acquired(token: LockToken) -> Self {
        Self {
            outcome: LockOutcome::Acquired(token),
            holder: None,
        }
    }

    /// The request found the lock held, by `holder` if known.
    pub fn held_by(holder: Option<NodeId>) -> Self {
        Self {
            outcome: LockOutcome::HeldByOther,
            holder,
        }
    }
}

/// What a waiting node learns from the request it waited for.
#[derive(Clone, Debug)]
enum Found {
    /// That request took the lock.
    Taken,
    /// It found the lock held by this node (or by a node it could not name).
    Held(Option<NodeId>),
    /// It failed or was dropped.
    Nothing,
}

/// The lock attempts of the nodes of one backend value, keyed by scope: while one node's
/// request for a scope's lock is in flight, the others that ask for it wait for its outcome
/// instead of sending their own. If it takes the lock, or finds it held by a node it names
/// ([`LockAttempt::holder`]), they answer [`LockOutcome::HeldByOther`], which is true:
/// another node held the lock during their call. The named holder itself, and every waiter
/// when the holder is unknown, the request failed or was dropped, tries next (a holder
/// asking again must hear `Acquired`).
///
/// Without it, the nodes of a process that start together each grant a lease and send a
/// lock transaction, and all but one lose: raft writes queued in front of the winner's.
/// Without the holder, the nodes that ask after the lock was taken would each send a
/// request in turn (at 5,000 nodes on a 3-member etcd, 450 such requests one after the
/// other took 7 s).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use constructr_core::{LockOutcome, LockToken, NodeId};
/// use constructr_core::plumbing::{LockAttempt, SharedLocks};
///
/// let locks = SharedLocks::default();
/// let sent = AtomicU64::new(0);
/// let attempt = || async {
///     sent.fetch_add(1, Ordering::Relaxed);
///     tokio::time::sleep(std::time::Duration::from_millis(10)).await;
///     Ok(LockAttempt::acquired(LockToken("7".into())))
/// };
/// let (a, b) = (NodeId::new("10.0.0.1:1", 1), NodeId::new("10.0.0.2:1", 1));
/// let (first, second) = tokio::join!(
///     locks.lock("scope", &a, attempt()),
///     locks.lock("scope", &b, attempt()),
/// );
/// assert_eq!(first.unwrap(), LockOutcome::Acquired(LockToken("7".into())));
/// assert_eq!(second.unwrap(), LockOutcome::HeldByOther);
/// assert_eq!(sent.load(Ordering::Relaxed), 1, "one request for both");
/// # }
/// ```
#[derive(Default)]
pub struct SharedLocks {
    attempts: Arc<Mutex<HashMap<String, InFlight>>>,
    next_id: std::sync::atomic::AtomicU64,
}

/// One node's lock request in flight; its outcome once answered.
struct InFlight {
    id: u64,
    node: NodeId,
    outcome: watch::Receiver<Option<Found>>,
}

impl std::fmt::Debug for SharedLocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLocks").finish_non_exhaustive()
    }
}

/// Removes its attempt from the map when the attempt ends or is dropped.
struct Leave<'a> {
    attempts: &'a Mutex<HashMap<String, InFlight>>,
    key: &'a str,
    id: u64,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        let mut attempts = self.attempts.lock().unwrap_or_else(|p| p.into_inner());
        if attempts.get(self.key).is_some_and(|a| a.id == self.id) {
            attempts.remove(self.key);
        }
    }
}

impl SharedLocks {
    /// Runs `attempt` (`node`'s lock request for `key`) unless another node's request for
    /// `key` is in flight: then waits for that one and answers `HeldByOther` if it took the
    /// lock or found it held by a node other than `node`, or runs `attempt` after it if not.
    /// A node's own requests (the re-entrant extension of a lock it holds) are never held
    /// back.
    pub async fn lock<F>(&self, key: &str, node: &NodeId, attempt: F) -> Result<LockOutcome>
    where
        F: Future<Output = Result<LockAttempt>>,
    {
        enum Next {
            Wait(watch::Receiver<Option<Found>>),
            Own,
            Try(u64, watch::Sender<Option<Found>>),
        }
        let (id, tx) = loop {
            let next = {
                let mut attempts = self.attempts.lock().unwrap_or_else(|p| p.into_inner());
                match attempts.get(key) {
                    Some(a) if a.node != *node => Next::Wait(a.outcome.clone()),
                    Some(_) => Next::Own,
                    None => {
                        let id = self
                            .next_id
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let (tx, rx) = watch::channel(None);
                        attempts.insert(
                            key.to_owned(),
                            InFlight {
                                id,
                                node: node.clone(),
                                outcome: rx,
                            },
                        );
                        Next::Try(id, tx)
                    }
                }
            };
            match next {
                Next::Own => return attempt.await.map(|a| a.outcome),
                Next::Try(id, tx) => break (id, tx),
                Next::Wait(mut outcome) => {
                    // An error (the other request was dropped), a failure, or the lock held
                    // by this node or by a node nobody named: try.
                    let found = outcome
                        .wait_for(Option::is_some)
                        .await
                        .ok()
                        .and_then(|f| f.clone());
                    match found {
                        Some(Found::Taken) => return Ok(LockOutcome::HeldByOther),
                        Some(Found::Held(Some(holder))) if holder != *node => {
                            return Ok(LockOutcome::HeldByOther);
                        }
                        _ => {}
                    }
                }
            }
        };
        let leave = Leave {
            attempts: &self.attempts,
            key,
            id,
        };
        let attempt = attempt.await;
        // Out of the map first: a waiter that must try itself tries next.
        drop(leave);
        let found = match &attempt {
            Ok(LockAttempt {
                outcome: LockOutcome::Acquired(_),
                ..
            }) => Found::Taken,
            Ok(LockAttempt { holder, .. }) => Found::Held(holder.clone()),
            Err(_) => Found::Nothing,
        };
        let _ = tx.send(Some(found));
        attempt.map(|a| a.outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    /// A fake watch: reports `revision` (incremented per report) every `every`.
    fn ticking(
        opened: Arc<AtomicU64>,
        every: Duration,
    ) -> impl Fn(Option<u64>) -> std::pin::Pin<Box<dyn Future<Output = Result<u64>> + Send>>
    + Send
    + 'static {
        move |after| {
            opened.fetch_add(1, Ordering::Relaxed);
            Box::pin(async move {
                tokio::time::sleep(every).await;
                Ok(after.unwrap_or(100) + 1)
            })
        }
    }

    #[tokio::test]
    async fn a_thousand_waiters_share_one_watch_and_all_wake() {
        let waits = Arc::new(SharedWaits::default());
        let opened = Arc::new(AtomicU64::new(0));
        let mut all = Vec::new();
        for _ in 0..1000 {
            let w = waits.clone();
            let next = ticking(opened.clone(), Duration::from_millis(50));
            all.push(tokio::spawn(
                async move { w.wait("s", Some(5), next).await },
            ));
        }
        for t in all {
            assert_eq!(t.await.unwrap().unwrap(), WaitOutcome::Changed);
        }
        assert_eq!(opened.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_report_not_above_the_waiters_read_does_not_wake_it() {
        let waits = SharedWaits::default();
        let opened = Arc::new(AtomicU64::new(0));
        // The watch starts after 5 and reports 6, 7, 8...; a waiter that read 7 wakes on 8.
        let first = waits.wait(
            "s",
            Some(5),
            ticking(opened.clone(), Duration::from_millis(20)),
        );
        let second = async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let t = std::time::Instant::now();
            let out = waits
                .wait(
                    "s",
                    Some(7),
                    ticking(opened.clone(), Duration::from_millis(20)),
                )
                .await;
            (out, t.elapsed())
        };
        let (a, (b, waited)) = tokio::join!(first, second);
        assert_eq!(a.unwrap(), WaitOutcome::Changed);
        assert_eq!(b.unwrap(), WaitOutcome::Changed);
        assert!(waited >= Duration::from_millis(40), "woke after {waited:?}");
    }

    #[tokio::test]
    async fn a_read_older_than_the_watch_wakes_at_once() {
        let waits = SharedWaits::default();
        let opened = Arc::new(AtomicU64::new(0));
        let first = waits.wait(
            "s",
            Some(9),
            ticking(opened.clone(), Duration::from_secs(60)),
        );
        tokio::pin!(first);
        assert!(
            tokio::time::timeout(Duration::from_millis(20), &mut first)
                .await
                .is_err()
        );
        let older = waits.wait(
            "s",
            Some(3),
            ticking(opened.clone(), Duration::from_secs(60)),
        );
        assert_eq!(older.await.unwrap(), WaitOutcome::Changed);
    }

    #[tokio::test]
    async fn the_watch_stops_with_its_last_waiter_and_a_new_one_starts() {
        let waits = SharedWaits::default();
        let opened = Arc::new(AtomicU64::new(0));
        let w = waits.wait(
            "s",
            Some(1),
            ticking(opened.clone(), Duration::from_secs(60)),
        );
        assert!(
            tokio::time::timeout(Duration::from_millis(20), w)
                .await
                .is_err()
        );
        for _ in 0..100 {
            if waits.running() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(waits.running(), 0, "the watch outlived its waiters");
        let out = waits
            .wait(
                "s",
                Some(1),
                ticking(opened.clone(), Duration::from_millis(5)),
            )
            .await;
        assert_eq!(out.unwrap(), WaitOutcome::Changed);
        assert_eq!(opened.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn a_permanent_failure_reaches_every_waiter_and_the_next_wait_starts_afresh() {
        let waits = SharedWaits::default();
        let failing = |_: Option<u64>| async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Err::<u64, _>(CoordinationError::Unauthorized {
                message: "denied".into(),
            })
        };
        let (a, b) = tokio::join!(
            waits.wait("s", Some(1), failing),
            waits.wait("s", Some(1), failing)
        );
        for e in [a.unwrap_err(), b.unwrap_err()] {
            assert_eq!(e.kind(), ErrorKind::Unauthorized);
            assert!(e.to_string().contains("denied"), "{e}");
        }
        let ok = waits.wait("s", Some(1), |_| async { Ok(2) }).await.unwrap();
        assert_eq!(ok, WaitOutcome::Changed);
    }

    fn lock_node(i: u32) -> NodeId {
        NodeId::new(format!("10.0.0.{i}:1"), 1)
    }

    /// A lock request that counts itself, takes `delay` and answers `outcome`.
    async fn counted(
        sent: &AtomicU64,
        delay: Duration,
        outcome: Result<LockAttempt>,
    ) -> Result<LockAttempt> {
        sent.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(delay).await;
        outcome
    }

    fn acquired() -> Result<LockAttempt> {
        Ok(LockAttempt::acquired(crate::LockToken("1".into())))
    }

    fn taken() -> LockOutcome {
        LockOutcome::Acquired(crate::LockToken("1".into()))
    }

    /// Nodes 1..=`n` ask for scope `s` at once, each request answering `answer` after 10 ms.
    async fn race(
        locks: &Arc<SharedLocks>,
        sent: &Arc<AtomicU64>,
        n: u32,
        answer: fn() -> Result<LockAttempt>,
    ) -> Vec<LockOutcome> {
        let mut racing = tokio::task::JoinSet::new();
        for i in 1..=n {
            let (locks, sent) = (locks.clone(), sent.clone());
            racing.spawn(async move {
                let attempt = counted(&sent, Duration::from_millis(10), answer());
                locks.lock("s", &lock_node(i), attempt).await
            });
        }
        racing.join_all().await.into_iter().flatten().collect()
    }

    /// `other`'s request answers `theirs` while `holder` (which holds the lock) asks again:
    /// both outcomes and the requests sent.
    async fn holder_asking_beside(theirs: Result<LockAttempt>) -> (LockOutcome, LockOutcome, u64) {
        let locks = SharedLocks::default();
        let sent = AtomicU64::new(0);
        let d = Duration::from_millis(10);
        let (other, holder) = (lock_node(1), lock_node(2));
        let (theirs, mine) = tokio::join!(
            locks.lock("s", &other, counted(&sent, d, theirs)),
            locks.lock("s", &holder, counted(&sent, d, acquired())),
        );
        (theirs.unwrap(), mine.unwrap(), sent.load(Ordering::Relaxed))
    }

    #[tokio::test(start_paused = true)]
    async fn racing_nodes_send_one_lock_request_and_hear_held_by_other() {
        let locks = Arc::new(SharedLocks::default());
        let sent = Arc::new(AtomicU64::new(0));
        let d = Duration::from_millis(10);
        let outcomes = race(&locks, &sent, 20, acquired).await;
        assert_eq!(sent.load(Ordering::Relaxed), 1);
        assert_eq!(outcomes.len(), 20);
        let held = outcomes
            .iter()
            .filter(|o| **o == LockOutcome::HeldByOther)
            .count();
        assert_eq!(held, 19, "{outcomes:?}");
        // Nothing in flight any more: the next request is sent.
        locks
            .lock("s", &lock_node(2), counted(&sent, d, acquired()))
            .await
            .unwrap();
        assert_eq!(sent.load(Ordering::Relaxed), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_failed_or_dropped_request_a_waiting_node_sends_its_own() {
        let locks = SharedLocks::default();
        let sent = AtomicU64::new(0);
        let d = Duration::from_millis(10);
        let (a, b) = (lock_node(1), lock_node(2));
        let failed = || Err(CoordinationError::unavailable("down"));
        let (first, second) = tokio::join!(
            locks.lock("s", &a, counted(&sent, d, failed())),
            locks.lock("s", &b, counted(&sent, d, acquired())),
        );
        assert!(first.is_err());
        assert_eq!(second.unwrap(), taken(), "b tried after a failed");
        assert_eq!(sent.load(Ordering::Relaxed), 2);
        // a's request is dropped (its caller timed out): b sends its own.
        let (first, second) = tokio::join!(
            tokio::time::timeout(d / 2, locks.lock("s", &a, counted(&sent, d, acquired()))),
            locks.lock("s", &b, counted(&sent, d, acquired())),
        );
        assert!(first.is_err(), "a timed out");
        assert_eq!(second.unwrap(), taken());
        assert_eq!(sent.load(Ordering::Relaxed), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn the_holder_asking_again_while_another_finds_the_lock_held_hears_acquired() {
        // `other`'s request finds the lock held (by `holder`); `holder` re-locks meanwhile.
        let named = Ok(LockAttempt::held_by(Some(lock_node(2))));
        let (theirs, mine, sent) = holder_asking_beside(named).await;
        assert_eq!(theirs, LockOutcome::HeldByOther);
        assert_eq!(mine, taken(), "the holder keeps its lock");
        assert_eq!(sent, 2);
    }

    /// Nodes that ask after the lock was taken (by a node of another process): one request
    /// finds it held by a named holder, and the others hear `HeldByOther` without asking.
    #[tokio::test(start_paused = true)]
    async fn nodes_asking_for_a_lock_held_by_a_named_node_send_one_request() {
        let locks = Arc::new(SharedLocks::default());
        let sent = Arc::new(AtomicU64::new(0));
        let held = || Ok(LockAttempt::held_by(Some(lock_node(99))));
        let outcomes = race(&locks, &sent, 20, held).await;
        assert_eq!(outcomes, vec![LockOutcome::HeldByOther; 20]);
        assert_eq!(sent.load(Ordering::Relaxed), 1);
    }

    /// A request that found the lock held but could not say by whom answers only itself:
    /// the holder may be one of the waiting nodes.
    #[tokio::test(start_paused = true)]
    async fn after_a_request_finds_the_lock_held_by_an_unnamed_node_each_waiter_asks() {
        let (theirs, mine, sent) = holder_asking_beside(Ok(LockAttempt::held_by(None))).await;
        assert_eq!(theirs, LockOutcome::HeldByOther);
        assert_eq!(mine, taken(), "the holder asked itself");
        assert_eq!(sent, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_nodes_own_requests_and_other_scopes_are_not_held_back() {
        let locks = SharedLocks::default();
        let sent = AtomicU64::new(0);
        let d = Duration::from_millis(10);
        let (a, b) = (lock_node(1), lock_node(2));
        let (x, y, z) = tokio::join!(
            locks.lock("s", &a, counted(&sent, d, acquired())),
            locks.lock("s", &a, counted(&sent, d, acquired())),
            locks.lock("t", &b, counted(&sent, d, acquired())),
        );
        for o in [x, y, z] {
            assert_eq!(o.unwrap(), taken());
        }
        assert_eq!(sent.load(Ordering::Relaxed), 3);
    }
}
