//! A `Coordination` wrapper that counts requests (for the demo's report).

use constructr::coordination::Result;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use constructr::{
    AddMode, AddOutcome, Coordination, Lease, LockOutcome, NodeId, NodeLimit, RefreshOutcome,
    Registry, Scope, WaitOutcome,
};

/// Counts every call that reaches the wrapped backend (watches included).
#[derive(Debug)]
pub struct Counting<C> {
    inner: C,
    calls: Arc<AtomicU64>,
    entries_read: AtomicU64,
}

impl<C> Counting<C> {
    pub fn new(inner: C) -> Self {
        Self {
            inner,
            calls: Arc::default(),
            entries_read: AtomicU64::new(0),
        }
    }

    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// What the demo reports as requests: those the backend sent on the wire where it
    /// counts them (etcd, Consul), else the calls of the `Coordination` trait.
    pub fn requests(&self) -> u64
    where
        C: Coordination,
    {
        self.inner.requests_sent().unwrap_or_else(|| self.calls())
    }

    /// Node entries returned by `get_nodes` calls so far.
    pub fn entries_read(&self) -> u64 {
        self.entries_read.load(Ordering::Relaxed)
    }

    fn count(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
    }
}

#[async_trait]
impl<C: Coordination> Coordination for Counting<C> {
    fn guarantees(&self) -> constructr::coordination::Guarantees {
        self.inner.guarantees()
    }
    fn check_settings(
        &self,
        settings: &constructr::Settings,
    ) -> std::result::Result<(), constructr::SettingsError> {
        self.inner.check_settings(settings)
    }
    async fn get_nodes(&self, scope: &Scope) -> Result<Registry> {
        self.count();
        let r = self.inner.get_nodes(scope).await;
        if let Ok(registry) = &r {
            self.entries_read
                .fetch_add(registry.nodes.len() as u64, Ordering::Relaxed);
        }
        r
    }
    async fn get_some_nodes(&self, scope: &Scope, limit: NodeLimit) -> Result<Registry> {
        self.count();
        let r = self.inner.get_some_nodes(scope, limit).await;
        if let Ok(registry) = &r {
            self.entries_read
                .fetch_add(registry.nodes.len() as u64, Ordering::Relaxed);
        }
        r
    }
    async fn lock(&self, lease: Lease<'_>) -> Result<LockOutcome> {
        self.count();
        self.inner.lock(lease).await
    }
    async fn add_self(&self, lease: Lease<'_>, mode: &AddMode) -> Result<AddOutcome> {
        self.count();
        self.inner.add_self(lease, mode).await
    }
    async fn refresh(&self, lease: Lease<'_>) -> Result<RefreshOutcome> {
        self.count();
        self.inner.refresh(lease).await
    }
    async fn remove_self(&self, scope: &Scope, node: &NodeId) -> Result<()> {
        self.count();
        self.inner.remove_self(scope, node).await
    }
    async fn wait_for_change(&self, scope: &Scope, revision: Option<u64>) -> Result<WaitOutcome> {
        self.count();
        self.inner.wait_for_change(scope, revision).await
    }
    fn requests_sent(&self) -> Option<u64> {
        self.inner.requests_sent()
    }
}
