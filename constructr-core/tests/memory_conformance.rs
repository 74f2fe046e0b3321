//! The in-memory backend passes the conformance suite every backend runs.

use std::time::Duration;

use async_trait::async_trait;
use constructr_core::Scope;
use constructr_core::conformance::{CHECKS, ConformanceBackend, run_all};
use constructr_core::memory::MemoryCoordination;

/// `MemoryCoordination` on the system clock.
struct Memory(MemoryCoordination);

#[async_trait]
impl ConformanceBackend for Memory {
    type Coordination = MemoryCoordination;

    fn coordination(&self) -> &MemoryCoordination {
        &self.0
    }

    async fn put_raw_entry(&self, scope: &Scope, key_suffix: &str, value: &[u8]) {
        self.0.put_raw(scope, key_suffix, value, self.ttl());
    }

    async fn delete_entry_behind_its_back(&self, scope: &Scope, address: &str) {
        self.0.expire_entry(scope, address);
    }

    fn ttl(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn expiry_bound(&self) -> Duration {
        Duration::from_millis(500)
    }
}

#[tokio::test]
async fn memory_backend_passes_the_conformance_suite() {
    let report = run_all(&Memory(MemoryCoordination::default())).await;
    // It declares every guarantee: every check ran.
    assert!(report.not_covered.is_empty(), "{report:?}");
    assert_eq!(report.ran.len(), CHECKS.len());
}
