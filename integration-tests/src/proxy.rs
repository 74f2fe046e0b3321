//! A TCP proxy between one client and a service, for network faults that concern that client
//! only: a partition ([`Proxy::cut`], [`Proxy::heal`]) and an added latency on the
//! client → server direction.
//!
//! Every chunk the client sends is forwarded `latency` after the proxy read it (in order;
//! the delays overlap, so the throughput is not limited). A cut ends every connection at
//! once, drops whatever is still waiting for its delay (it never reaches the server), and
//! refuses new connections (accepted and closed at once) until [`Proxy::heal`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// A TCP proxy on `127.0.0.1` in front of `upstream` (see the module documentation). It
/// runs on the tokio runtime it was started on; dropping it cuts every connection and
/// closes the port.
pub struct Proxy {
    port: u16,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
}

struct Shared {
    upstream: String,
    cut: AtomicBool,
    /// Bumped by every cut: the connections opened before it end.
    generation: watch::Sender<u64>,
    /// The added latency of the client → server direction, in microseconds.
    latency_us: AtomicU64,
}

impl Shared {
    fn is_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }

    fn latency(&self) -> Duration {
        Duration::from_micros(self.latency_us.load(Ordering::SeqCst))
    }
}

impl Proxy {
    /// A proxy to `upstream` (`host:port`) without added latency.
    pub async fn start(upstream: impl Into<String>) -> Self {
        Self::with_latency(upstream, Duration::ZERO).await
    }

    /// A proxy to `upstream` (`host:port`) that forwards what the client sends `latency`
    /// late.
    pub async fn with_latency(upstream: impl Into<String>, latency: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy port");
        let port = listener.local_addr().expect("proxy address").port();
        let shared = Arc::new(Shared {
            upstream: upstream.into(),
            cut: AtomicBool::new(false),
            generation: watch::channel(0).0,
            latency_us: AtomicU64::new(0),
        });
        let proxy = Proxy {
            port,
            shared: shared.clone(),
            accept: tokio::spawn(accept(listener, shared)),
        };
        proxy.set_latency(latency);
        proxy
    }

    /// `127.0.0.1:{port}`: where the client connects instead of the service.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The proxy's port on `127.0.0.1`.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The added latency of the client → server direction from now on (chunks already
    /// waiting keep theirs).
    pub fn set_latency(&self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.shared.latency_us.store(us, Ordering::SeqCst);
    }

    /// Partitions the client from the service: every connection ends, whatever waits for
    /// its delay is dropped, and new connections are refused until [`Proxy::heal`].
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
        self.shared.generation.send_modify(|g| *g += 1);
    }

    /// Ends the partition: new connections are forwarded again.
    pub fn heal(&self) {
        self.shared.cut.store(false, Ordering::SeqCst);
    }

    /// Whether the proxy is cut.
    pub fn is_cut(&self) -> bool {
        self.shared.is_cut()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    while let Ok((inbound, _)) = listener.accept().await {
        if shared.is_cut() {
            continue; // dropped: the connection closes at once
        }
        tokio::spawn(connection(inbound, shared.clone()));
    }
}

/// Forwards one connection until either side closes it or the proxy is cut.
async fn connection(inbound: TcpStream, shared: Arc<Shared>) {
    // Subscribed before the checks: a cut after them still ends this connection.
    let mut cut = shared.generation.subscribe();
    let Ok(outbound) = TcpStream::connect(&shared.upstream).await else {
        return;
    };
    if shared.is_cut() {
        return;
    }
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (from_client, to_client) = inbound.into_split();
    let (from_server, to_server) = outbound.into_split();
    let up = delayed(from_client, to_server, &shared);
    let down = forward(from_server, to_client);
    tokio::select! {
        _ = async { tokio::join!(up, down) } => {}
        _ = cut.changed() => {}
    }
}

/// Server → client, as it comes.
async fn forward(mut from: OwnedReadHalf, mut to: OwnedWriteHalf) {
    let _ = tokio::io::copy(&mut from, &mut to).await;
    let _ = to.shutdown().await;
}

/// Client → server, every chunk `shared.latency()` after it was read, in order; nothing is
/// written once the proxy is cut.
async fn delayed(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, shared: &Shared) {
    // An empty chunk is the end of the stream.
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let read = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = from.read(&mut buf).await.unwrap_or(0);
            let due = Instant::now() + shared.latency();
            if tx.send((due, buf[..n].to_vec())).is_err() || n == 0 {
                return;
            }
        }
    };
    let write = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if shared.is_cut() {
                return;
            }
            if chunk.is_empty() || to.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(read, write);
}
