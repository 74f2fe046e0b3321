//! `EtcdClient`: the wire calls, with per-request timeouts and endpoint failover.
//!
//! etcd-client balances over all endpoints of one client, but its balancer keeps sending
//! requests to an endpoint that is down. So this client keeps **one `etcd_client::Client`
//! per endpoint** and sends each request to the *current* endpoint; when that fails with a
//! transient error (unreachable, no leader, timed out) the request is retried once on each
//! following endpoint, the first that answers becomes current, and the failed endpoint's
//! connection is dropped so its next use reconnects from scratch (this also covers an etcd
//! that restarted under an open connection).
//!
//! Streams are never kept across calls: every refresh opens a fresh lease keep-alive stream
//! (a long-lived one dies with the etcd process it was opened on), and watches are re-opened
//! by the caller when they end.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use constructr_core::plumbing::{Failover, display_url, spawn_background};
use constructr_core::tls::load_pem;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, GetResponse, Identity,
    KeyValue, LeaseGrantOptions, TlsOptions, Txn, TxnOp, TxnResponse, WatchOptions, WatchStream,
};
use tokio::sync::Mutex;

use crate::config::EtcdConfig;
use crate::error::EtcdError;

/// Interval of HTTP/2 pings on open connections, so a connection to a vanished member is
/// noticed. etcd answers pings more frequent than `--grpc-keepalive-min-time` (5 s by
/// default) with GOAWAY.
const HTTP2_KEEP_ALIVE: Duration = Duration::from_secs(10);

struct Endpoint {
    url: String,
    shown: String,
    /// The connected client and its generation (to drop only the connection that failed).
    slot: Mutex<Option<(u64, Client)>>,
}

/// Which connection served a request, to report its failure later (watch streams).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ticket {
    index: usize,
    generation: u64,
}

/// The etcd connections of one backend value. Never `Debug`: its options hold the password.
pub(crate) struct EtcdClient {
    endpoints: Failover<Endpoint>,
    options: ConnectOptions,
    connect_timeout: Duration,
    request_timeout: Duration,
    generations: AtomicU64,
    /// Requests sent (every try on every endpoint; a watch counts when opened).
    sent: AtomicU64,
    /// Lease ids to try before random ones (tests of a taken id).
    next_lease_ids: std::sync::Mutex<Vec<i64>>,
}

impl EtcdClient {
    /// Validates the configuration and reads the TLS files. No I/O on the network: each
    /// endpoint connects on first use.
    pub(crate) fn new(config: &EtcdConfig) -> Result<Self, EtcdError> {
        config.validate()?;
        let mut options = ConnectOptions::new()
            .with_connect_timeout(config.connect_timeout)
            .with_keep_alive(HTTP2_KEEP_ALIVE, config.request_timeout)
            // Fail fast on a member that lost its leader instead of waiting for an election.
            .with_require_leader(true)
            // etcd's simple tokens expire (5 min by default): re-authenticate when they do.
            .with_auto_token_refresh(true);
        if let (Some(user), Some(password)) = (&config.user, &config.password) {
            options = options.with_user(user.clone(), password.expose());
        }
        if let Some(tls) = &config.tls {
            let mut t = TlsOptions::new();
            if let Some(ca) = &tls.ca {
                t = t.ca_certificate(Certificate::from_pem(load_pem(ca, "CA certificate")?));
            }
            if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
                t = t.identity(Identity::from_pem(
                    load_pem(cert, "client certificate")?,
                    load_pem(key, "client key")?,
                ));
            }
            if let Some(name) = &tls.domain_name {
                t = t.domain_name(name.clone());
            }
            options = options.with_tls(t);
        }
        let endpoints = config
            .endpoints
            .iter()
            .map(|url| Endpoint {
                url: url.trim().to_owned(),
                shown: display_url(url),
                slot: Mutex::new(None),
            })
            .collect();
        let endpoints = Failover::new(endpoints)
            .ok_or_else(|| EtcdError::config("at least one endpoint is required"))?;
        Ok(Self {
            endpoints,
            options,
            connect_timeout: config.connect_timeout,
            request_timeout: config.request_timeout,
            generations: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            next_lease_ids: std::sync::Mutex::default(),
        })
    }

    /// The connected client of endpoint `index`, connecting (and authenticating) if needed.
    async fn connected(&self, index: usize) -> Result<(Ticket, Client), EtcdError> {
        let ep = &self.endpoints.endpoints()[index];
        let mut slot = ep.slot.lock().await;
        if let Some((generation, client)) = &*slot {
            return Ok((
                Ticket {
                    index,
                    generation: *generation,
                },
                client.clone(),
            ));
        }
        // Connecting is lazy unless credentials are set: then it authenticates (one request).
        let connect = Client::connect([ep.url.as_str()], Some(self.options.clone()));
        let client = match tokio::time::timeout(
            self.connect_timeout + self.request_timeout,
            connect,
        )
        .await
        {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(EtcdError::classify(&ep.shown, e)),
            Err(_) => {
                return Err(EtcdError::Timeout {
                    endpoint: ep.shown.clone(),
                });
            }
        };
        let generation = self.generations.fetch_add(1, Ordering::Relaxed);
        *slot = Some((generation, client.clone()));
        Ok((Ticket { index, generation }, client))
    }

    /// Drops the connection that served `ticket` (if it is still the current one of its
    /// endpoint) and moves on to the next endpoint.
    pub(crate) async fn report_failure(&self, ticket: Ticket, error: &EtcdError) {
        self.drop_connection(ticket, error).await;
        self.endpoints.failed(ticket.index);
    }

    /// Drops the connection that served `ticket` if it is still its endpoint's, so the
    /// endpoint's next use reconnects (an etcd that restarted under an open connection).
    async fn drop_connection(&self, ticket: Ticket, error: &EtcdError) {
        let ep = &self.endpoints.endpoints()[ticket.index];
        tracing::debug!(endpoint = %ep.shown, %error, "etcd endpoint failed");
        let mut slot = ep.slot.lock().await;
        if matches!(&*slot, Some((g, _)) if *g == ticket.generation) {
            *slot = None;
        }
    }

    /// Runs `request` under the shared failover policy
    /// ([`constructr_core::plumbing`]): the current endpoint first, then each following one
    /// while the failure is transient. Each try is bounded by the request timeout; a
    /// connection whose request failed is dropped, so the endpoint's next use reconnects.
    async fn call<T, F, Fut>(&self, request: F) -> Result<(Ticket, T), EtcdError>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        self.endpoints
            .run(
                |index, ep| {
                    let request = &request;
                    async move {
                        let (ticket, client) = self.connected(index).await?;
                        self.sent.fetch_add(1, Ordering::Relaxed);
                        let result =
                            match tokio::time::timeout(self.request_timeout, request(client)).await
                            {
                                Ok(Ok(v)) => return Ok((ticket, v)),
                                Ok(Err(e)) => EtcdError::classify(&ep.shown, e),
                                Err(_) => EtcdError::Timeout {
                                    endpoint: ep.shown.clone(),
                                },
                            };
                        if result.is_endpoint_failure() {
                            // The policy moves the current endpoint on.
                            self.drop_connection(ticket, &result).await;
                        }
                        Err(result)
                    }
                },
                EtcdError::is_endpoint_failure,
            )
            .await
    }

    /// A linearizable read of at most `limit` keys (`None`: all) of `[from, end)` in key
    /// order, at `revision` (`None`: the current one).
    pub(crate) async fn get_range(
        &self,
        from: &[u8],
        end: &[u8],
        limit: Option<i64>,
        revision: Option<i64>,
    ) -> Result<GetResponse, EtcdError> {
        let mut options = GetOptions::new().with_range(end);
        if let Some(limit) = limit {
            options = options.with_limit(limit);
        }
        if let Some(revision) = revision {
            options = options.with_revision(revision);
        }
        let (_, r) = self
            .call(|mut c| {
                let (from, options) = (from.to_owned(), options.clone());
                async move { c.get(from, Some(options)).await }
            })
            .await?;
        Ok(r)
    }

    /// How many keys are under `prefix` (a linearizable read that transfers no values).
    pub(crate) async fn count_prefix(&self, prefix: &str) -> Result<i64, EtcdError> {
        let (_, r) = self
            .call(|mut c| {
                let prefix = prefix.to_owned();
                async move {
                    c.get(
                        prefix,
                        Some(GetOptions::new().with_prefix().with_count_only()),
                    )
                    .await
                }
            })
            .await?;
        Ok(r.count())
    }

    /// Requests sent so far (every try on every endpoint; a watch counts when opened).
    pub(crate) fn requests_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// A linearizable read of one key, and the revision it was read at.
    pub(crate) async fn get(&self, key: &str) -> Result<(Option<KeyValue>, i64), EtcdError> {
        let (_, mut r) = self
            .call(|mut c| {
                let key = key.to_owned();
                async move { c.get(key, None).await }
            })
            .await?;
        let revision = r.header().map_or(0, |h| h.revision());
        Ok((r.take_kvs().into_iter().next(), revision))
    }

    /// One transaction.
    pub(crate) async fn txn(&self, txn: Txn) -> Result<TxnResponse, EtcdError> {
        let (_, r) = self
            .call(|mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await?;
        Ok(r)
    }

    /// Grants a lease of `ttl` seconds with an id of our choosing and, at the same time, runs
    /// `txn(id)`, the transaction that writes `leased_keys` on it: both reach etcd together
    /// and commit in one raft round (one fsync), not one after the other. When etcd applies
    /// the transaction before the grant, it refuses it as a whole ("requested lease not
    /// found", nothing written), and it runs again once the grant is answered.
    ///
    /// A random id that happens to be a lease of someone else's ("lease already exists";
    /// about one in 2^63 per live lease) is not ours: the keys the transaction put on it are
    /// deleted again (only where they still sit on that lease) and it starts over with another
    /// id. On a failure the lease, if it was granted, is revoked in the background.
    pub(crate) async fn grant_with_txn(
        self: &Arc<Self>,
        ttl: i64,
        leased_keys: &[&str],
        txn: impl Fn(i64) -> Txn,
    ) -> Result<(i64, TxnResponse), EtcdError> {
        for _ in 0..3 {
            let id = self.next_lease_id();
            let (granted, written) =
                tokio::join!(self.grant_id(ttl, id), self.txn_unless_no_lease(txn(id)));
            match granted {
                Ok(true) => {}
                Ok(false) => {
                    if let Ok(Some(r)) = &written
                        && r.succeeded()
                    {
                        for key in leased_keys {
                            let undo = Txn::new()
                                .when([Compare::lease(*key, CompareOp::Equal, id)])
                                .and_then([TxnOp::delete(*key, None)]);
                            self.txn(undo).await?;
                        }
                    }
                    continue;
                }
                Err(e) => {
                    // The grant's answer was lost, but a transaction that wrote on the
                    // lease shows that it exists.
                    if let Ok(Some(r)) = written
                        && r.succeeded()
                    {
                        return Ok((id, r));
                    }
                    self.revoke_in_background(id);
                    return Err(e);
                }
            }
            let written = match written {
                Ok(Some(r)) => Ok(r),
                // Applied before the grant: now it is granted.
                Ok(None) => self.txn(txn(id)).await,
                Err(e) => Err(e),
            };
            return match written {
                Ok(r) => Ok((id, r)),
                Err(e) => {
                    self.revoke_in_background(id);
                    Err(e)
                }
            };
        }
        Err(EtcdError::protocol(
            "three random lease ids in a row were taken",
        ))
    }

    /// Makes the next grants try `ids` (in order) before random ids.
    pub(crate) fn try_lease_ids_first(&self, mut ids: Vec<i64>) {
        ids.reverse();
        *self
            .next_lease_ids
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = ids;
    }

    pub(crate) fn next_lease_id(&self) -> i64 {
        let queued = self
            .next_lease_ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop();
        queued.unwrap_or_else(|| rand::random_range(1..=i64::MAX))
    }

    /// Grants a lease of `ttl` seconds with id `id`; `false` if a lease with that id exists.
    pub(crate) async fn grant_id(&self, ttl: i64, id: i64) -> Result<bool, EtcdError> {
        let (_, granted) = self
            .call(|mut c| async move {
                let options = LeaseGrantOptions::new().with_id(id);
                match c.lease_grant(ttl, Some(options)).await {
                    Ok(_) => Ok(true),
                    Err(etcd_client::Error::GRpcStatus(s))
                        if s.message().contains("lease already exists") =>
                    {
                        Ok(false)
                    }
                    Err(e) => Err(e),
                }
            })
            .await?;
        Ok(granted)
    }

    /// One transaction; `None` if etcd refused it because a lease it writes on does not
    /// exist (yet).
    pub(crate) async fn txn_unless_no_lease(
        &self,
        txn: Txn,
    ) -> Result<Option<TxnResponse>, EtcdError> {
        let (_, r) = self
            .call(|mut c| {
                let txn = txn.clone();
                async move {
                    match c.txn(txn).await {
                        Ok(r) => Ok(Some(r)),
                        Err(etcd_client::Error::GRpcStatus(s)) if is_lease_not_found(&s) => {
                            Ok(None)
                        }
                        Err(e) => Err(e),
                    }
                }
            })
            .await?;
        Ok(r)
    }

    /// Revokes a lease; `false` if etcd no longer knows it.
    pub(crate) async fn revoke(&self, id: i64) -> Result<bool, EtcdError> {
        let r = self
            .call(|mut c| async move {
                match c.lease_revoke(id).await {
                    Ok(_) => Ok(true),
                    Err(etcd_client::Error::GRpcStatus(s)) if is_lease_not_found(&s) => Ok(false),
                    Err(e) => Err(e),
                }
            })
            .await?;
        Ok(r.1)
    }

    /// Revokes a lease without waiting (cleanup of a lease granted for a refused write); if
    /// this fails the lease expires with its TTL anyway.
    /// Runs `txn`, written on `lease`; when it fails, the lease (which then holds nothing
    /// of this request) is revoked in the background.
    pub(crate) async fn txn_on_lease(
        self: &Arc<Self>,
        txn: Txn,
        lease: i64,
    ) -> Result<TxnResponse, EtcdError> {
        let r = self.txn(txn).await;
        if r.is_err() {
            self.revoke_in_background(lease);
        }
        r
    }

    pub(crate) fn revoke_in_background(self: &Arc<Self>, id: i64) {
        let this = self.clone();
        spawn_background(async move {
            if let Err(e) = this.revoke(id).await {
                tracing::debug!(lease = id, error = %e, "could not revoke an unused lease; it expires by itself");
            }
        });
    }

    /// One keep-alive of lease `id` on a fresh stream; `false` if the lease is gone.
    pub(crate) async fn keep_alive(&self, id: i64) -> Result<bool, EtcdError> {
        let r = self
            .call(|mut c| async move {
                // `keep_alive` opens the stream, sends one request and waits for its answer;
                // dropping keeper and stream closes the stream again.
                match c.lease_keep_alive(id).await {
                    Ok(_) => Ok(true),
                    // The answer carried TTL 0: the lease expired or was revoked.
                    Err(etcd_client::Error::LeaseKeepAliveError(m)) if m == "lease not found" => {
                        Ok(false)
                    }
                    Err(etcd_client::Error::GRpcStatus(s)) if is_lease_not_found(&s) => Ok(false),
                    Err(e) => Err(e),
                }
            })
            .await?;
        Ok(r.1)
    }

    /// Opens a watch; the ticket identifies the connection for [`Self::report_failure`].
    pub(crate) async fn watch(
        &self,
        key: &str,
        options: WatchOptions,
    ) -> Result<(Ticket, WatchStream), EtcdError> {
        self.call(|mut c| {
            let key = key.to_owned();
            let options = options.clone();
            async move { c.watch(key, Some(options)).await }
        })
        .await
    }

    /// The endpoint a ticket refers to, for messages.
    pub(crate) fn endpoint_of(&self, ticket: Ticket) -> &str {
        &self.endpoints.endpoints()[ticket.index].shown
    }
}

fn is_lease_not_found(s: &tonic::Status) -> bool {
    s.code() == tonic::Code::NotFound || s.message().contains("requested lease not found")
}

#[cfg(test)]
mod tests {
    use super::*;
    use constructr_core::plumbing::DriverError;

    /// Connection refused on every endpoint: the error names the last one and is retryable.
    #[tokio::test]
    async fn all_endpoints_down_is_unavailable() {
        let config = EtcdConfig::new(["http://127.0.0.1:1", "http://127.0.0.1:2"])
            .with_request_timeout(Duration::from_millis(500))
            .with_connect_timeout(Duration::from_millis(500));
        let c = EtcdClient::new(&config).unwrap();
        let e = c.get("/x").await.unwrap_err();
        assert!(e.is_retryable(), "{e:?}");
        // Both endpoints were tried: the current one moved past both.
        assert_eq!(c.endpoints.current_index(), 0);
    }
}
