//! Direct contacts: which peers this node heard from itself, and when.
//!
//! chitchat's failure detector counts a peer as live only after it saw two of the peer's
//! heartbeats and ran a liveness update, which happens once per gossip round: a new peer
//! becomes live two to three gossip intervals after its first message (about 2 s with the
//! 1 s default). A peer that just answered this node's gossip, or gossiped to it, is alive
//! *now*: [`ContactTransport`] wraps chitchat's UDP transport and records the source address
//! of every message received, so that the member view can count such a peer at once,
//! for a short window, until the failure detector has judged it (see `cluster::view`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport, UdpTransport};
use chitchat::{ChitchatEnvelope, ChitchatMessage};
use tokio::sync::Notify;
use tokio::time::Instant;

/// At most this many addresses are remembered; the oldest are forgotten first.
const MAX_CONTACTS: usize = 65_536;

/// The peers heard from directly, by source address, with the time of their last message.
#[derive(Debug)]
pub(crate) struct Contacts {
    heard: Mutex<HashMap<SocketAddr, Instant>>,
    /// How long a message counts as proof of life.
    fresh: Duration,
    /// Woken when an address becomes fresh (it was unknown or stale).
    pub(crate) changed: Notify,
}

impl Contacts {
    pub(crate) fn new(fresh: Duration) -> Self {
        Self {
            heard: Mutex::new(HashMap::new()),
            fresh,
            changed: Notify::new(),
        }
    }

    /// Records a message from `from` received now.
    pub(crate) fn record(&self, from: SocketAddr) {
        let now = Instant::now();
        let became_fresh = {
            let mut heard = self.heard.lock().unwrap_or_else(|p| p.into_inner());
            if heard.len() >= MAX_CONTACTS && !heard.contains_key(&from) {
                let fresh = self.fresh;
                heard.retain(|_, at| now.duration_since(*at) < fresh);
                if heard.len() >= MAX_CONTACTS {
                    return;
                }
            }
            heard
                .insert(from, now)
                .is_none_or(|at| now.duration_since(at) >= self.fresh)
        };
        if became_fresh {
            self.changed.notify_one();
        }
    }

    /// The addresses heard from within the window, forgetting the others.
    pub(crate) fn fresh(&self) -> HashMap<SocketAddr, Instant> {
        let now = Instant::now();
        let mut heard = self.heard.lock().unwrap_or_else(|p| p.into_inner());
        heard.retain(|_, at| now.duration_since(*at) < self.fresh);
        heard.clone()
    }
}

/// chitchat's UDP transport, recording every received message's source in [`Contacts`].
pub(crate) struct ContactTransport {
    pub(crate) contacts: Arc<Contacts>,
}

#[async_trait]
impl Transport for ContactTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let inner = UdpTransport.open(listen_addr).await?;
        Ok(Box::new(ContactSocket {
            inner,
            contacts: self.contacts.clone(),
        }))
    }
}

struct ContactSocket {
    inner: Box<dyn Socket>,
    contacts: Arc<Contacts>,
}

#[async_trait]
impl Socket for ContactSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.inner.local_addr()
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        self.inner.send(to, envelope).await
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        let outcome = self.inner.recv().await?;
        // A peer of another cluster answers BadCluster: it is no member.
        if !matches!(outcome.envelope.message, ChitchatMessage::BadCluster) {
            self.contacts.record(outcome.from_addr);
        }
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_address_is_fresh_for_the_window_only_and_wakes_once_per_freshening() {
        let contacts = Contacts::new(Duration::from_secs(3));
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        contacts.record(a);
        // The first record stored a permit: the waiter returns at once.
        tokio::time::timeout(Duration::from_millis(1), contacts.changed.notified())
            .await
            .expect("woken by a new address");
        tokio::time::advance(Duration::from_secs(1)).await;
        contacts.record(a);
        assert!(
            tokio::time::timeout(Duration::from_millis(1), contacts.changed.notified())
                .await
                .is_err(),
            "a still fresh address does not wake the view"
        );
        assert!(contacts.fresh().contains_key(&a));
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(contacts.fresh().is_empty(), "stale after the window");
        contacts.record(a);
        tokio::time::timeout(Duration::from_millis(1), contacts.changed.notified())
            .await
            .expect("woken when fresh again");
    }

    #[tokio::test(start_paused = true)]
    async fn at_most_max_contacts_addresses_are_remembered() {
        let contacts = Contacts::new(Duration::from_secs(3));
        for port in 0..MAX_CONTACTS as u32 + 10 {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + port);
            contacts.record(SocketAddr::from((ip, 7946)));
        }
        assert_eq!(contacts.fresh().len(), MAX_CONTACTS);
        tokio::time::advance(Duration::from_secs(4)).await;
        contacts.record("127.0.0.1:1".parse().unwrap());
        assert_eq!(contacts.fresh().len(), 1, "stale ones make room");
    }
}
