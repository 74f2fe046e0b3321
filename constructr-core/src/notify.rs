//! A runtime-agnostic "something changed" signal (a version counter plus wakers).

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};

#[derive(Debug, Default)]
pub(crate) struct Notifier {
    version: AtomicU64,
    wakers: Mutex<Vec<Waker>>,
}

impl Notifier {
    pub(crate) fn version(&self) -> u64 {
        self.version.load(Ordering::SeqCst)
    }

    pub(crate) fn notify(&self) {
        self.version.fetch_add(1, Ordering::SeqCst);
        let wakers = std::mem::take(&mut *self.wakers.lock().unwrap_or_else(|e| e.into_inner()));
        for w in wakers {
            w.wake();
        }
    }

    /// Resolves once `notify` was called after `seen` was read from `version`.
    pub(crate) fn changed_since(&self, seen: u64) -> Changed<'_> {
        Changed { n: self, seen }
    }
}

pub(crate) struct Changed<'a> {
    n: &'a Notifier,
    seen: u64,
}

impl Future for Changed<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.n.version() != self.seen {
            return Poll::Ready(());
        }
        let mut wakers = self.n.wakers.lock().unwrap_or_else(|e| e.into_inner());
        // Re-check under the lock: a notify between the check and the push is not lost.
        if self.n.version() != self.seen {
            return Poll::Ready(());
        }
        if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
            wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}
