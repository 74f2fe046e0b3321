//! Checks that the etcd and the Consul tests both make: a watch that wakes on a
//! registration, and how refused credentials are reported.

use std::sync::Arc;
use std::time::Duration;

use constructr_core::{
    AddMode, AddOutcome, Coordination, CoordinationError, Scope, WaitOutcome, scenarios::node_id,
};
use tokio::task::JoinHandle;

/// A running `wait_for_change` on `scope`, from the revision of a read of it now.
pub async fn spawn_wait_for_change<C: Coordination>(
    coordination: &Arc<C>,
    scope: &Scope,
) -> JoinHandle<Result<WaitOutcome, CoordinationError>> {
    let read = coordination.get_nodes(scope).await.unwrap();
    let coordination = coordination.clone();
    let scope = scope.clone();
    tokio::spawn(async move { coordination.wait_for_change(&scope, read.revision).await })
}

/// Registers node 1 under `scope` and checks that `waiter` then wakes (within 10 s, `what`
/// in the message) with [`WaitOutcome::Changed`].
pub async fn registration_wakes<C: Coordination>(
    coordination: &C,
    scope: &Scope,
    waiter: JoinHandle<Result<WaitOutcome, CoordinationError>>,
    what: &str,
) {
    let added = coordination
        .add_self(
            scope.lease(&node_id(1), Duration::from_secs(10)),
            &AddMode::Join { cluster: None },
        )
        .await
        .unwrap();
    assert_eq!(added, AddOutcome::Added);
    let out = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .unwrap_or_else(|_| panic!("{what}"))
        .unwrap()
        .unwrap();
    assert_eq!(out, WaitOutcome::Changed);
}

/// `err` is [`CoordinationError::Unauthorized`].
pub fn assert_unauthorized(err: &CoordinationError) {
    assert!(
        matches!(err, CoordinationError::Unauthorized { .. }),
        "{err:?}"
    );
}

/// `err`, the answer to a wrong `secret` (printed as `what`), is unauthorized, not retryable,
/// says `says`, and shows the secret neither in its message nor in its `Debug`.
pub fn assert_wrong_secret_refused(err: &CoordinationError, what: &str, says: &str, secret: &str) {
    let msg = err.to_string();
    println!("{what}: {msg}");
    assert_unauthorized(err);
    assert!(!err.is_retryable());
    assert!(msg.contains(says), "{msg}");
    assert!(!msg.contains(secret) && !format!("{err:?}").contains(secret));
}
