//! What a running node reports about itself, as plain data: its [`Status`] (for probes and
//! `GET /bootstrap`) and the [`Request`] records of every coordination and cluster call (for
//! metrics). The driver keeps the status current; the management endpoint serves it.

use std::time::{Duration, SystemTime};

use crate::coordination::{ErrorKind, Registry};
use crate::machine::{Failure, State};
use crate::node::{ClusterId, NodeId};

/// The last registry this node read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryView {
    /// The registered nodes.
    pub nodes: Vec<NodeId>,
    /// The cluster the epoch marker names, if any.
    pub epoch: Option<ClusterId>,
    /// How long after the start it was read.
    pub read_at: Duration,
}

/// Who held the bootstrap lock at this node's last lock attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockHolder {
    /// This node took it.
    ThisNode,
    /// Another node held it (the backends do not say which).
    AnotherNode,
}

/// A snapshot of a running node.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Status {
    /// This node.
    pub node: NodeId,
    /// When the node started (wall clock, for display).
    pub started_at: SystemTime,
    /// The current state.
    pub state: State,
    /// How long after the start the current state was entered.
    pub state_since: Duration,
    /// The state changes so far.
    pub transitions: u64,
    /// Failed requests (or joins) that were retried.
    pub retries: u64,
    /// The last error of a failed request (or join), without secrets.
    pub last_error: Option<String>,
    /// Why the node failed, once it has.
    pub failure: Option<Failure>,
    /// The cluster this node joined or seeded, once known.
    pub cluster: Option<ClusterId>,
    /// The last registry read.
    pub registry: Option<RegistryView>,
    /// Who held the lock at the last lock attempt.
    pub lock: Option<LockHolder>,
    /// How long after the start the registration was last written or refreshed.
    pub last_registered: Option<Duration>,
}

impl Status {
    /// The status of a node that has just started in `state`.
    pub fn new(node: NodeId, state: State, started_at: SystemTime) -> Self {
        Status {
            node,
            started_at,
            state,
            state_since: Duration::ZERO,
            transitions: 0,
            retries: 0,
            last_error: None,
            failure: None,
            cluster: None,
            registry: None,
            lock: None,
            last_registered: None,
        }
    }

    /// Whether the node runs (neither stopped nor failed): what `GET /alive` answers.
    pub fn is_alive(&self) -> bool {
        !self.state.is_terminal()
    }

    /// Whether the node is a registered member: what `GET /ready` answers. A
    /// [`State::Degraded`] member counts as ready: it is still a member of its cluster and
    /// serves it while the coordination service is down (failing readiness then would take
    /// every member out of service at once, for an outage the cluster itself survives).
    pub fn is_ready(&self) -> bool {
        self.state.is_registered() || self.state == State::Degraded
    }

    /// Records a registry read at `at` (since the start).
    pub fn saw_registry(&mut self, registry: &Registry, at: Duration) {
        self.registry = Some(RegistryView {
            nodes: registry.nodes.clone(),
            epoch: registry.epoch.as_ref().map(|e| e.cluster),
            read_at: at,
        });
    }
}

/// The kind of a call the driver made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Operation {
    /// `Coordination::get_nodes`.
    GetNodes,
    /// `Coordination::lock`.
    Lock,
    /// `Coordination::add_self`.
    AddSelf,
    /// `Coordination::refresh`.
    Refresh,
    /// `Coordination::remove_self`.
    RemoveSelf,
    /// `Coordination::wait_for_change`.
    WaitForChange,
    /// `Cluster::join`.
    Join,
    /// `Cluster::leave`.
    Leave,
}

impl Operation {
    /// Every operation.
    pub const ALL: [Operation; 8] = [
        Operation::GetNodes,
        Operation::Lock,
        Operation::AddSelf,
        Operation::Refresh,
        Operation::RemoveSelf,
        Operation::WaitForChange,
        Operation::Join,
        Operation::Leave,
    ];

    /// A snake_case name (a metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::GetNodes => "get_nodes",
            Operation::Lock => "lock",
            Operation::AddSelf => "add_self",
            Operation::Refresh => "refresh",
            Operation::RemoveSelf => "remove_self",
            Operation::WaitForChange => "wait_for_change",
            Operation::Join => "join",
            Operation::Leave => "leave",
        }
    }

    /// Whether it is a call to the coordination service (not to the cluster).
    pub fn is_coordination(self) -> bool {
        !matches!(self, Operation::Join | Operation::Leave)
    }
}

/// How a call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// It answered (a refused lock or registration is an answer too).
    Ok,
    /// It failed with a coordination error of this kind (a call the driver gave up
    /// waiting for is a [`ErrorKind::Timeout`]).
    Error(ErrorKind),
    /// The cluster call failed.
    ClusterError,
}

impl Outcome {
    /// A snake_case name (a metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error(ErrorKind::Unavailable) => "unavailable",
            Outcome::Error(ErrorKind::Timeout) => "timeout",
            Outcome::Error(ErrorKind::Unauthorized) => "unauthorized",
            Outcome::Error(ErrorKind::Invalid) => "invalid",
            Outcome::Error(ErrorKind::Permanent) => "permanent",
            Outcome::ClusterError => "cluster_error",
        }
    }
}

/// One finished call of the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// What was called.
    pub operation: Operation,
    /// How it ended.
    pub outcome: Outcome,
    /// How long it took.
    pub latency: Duration,
}
