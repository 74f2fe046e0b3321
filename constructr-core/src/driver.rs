//! The tokio driver: runs a [`Machine`] against a real [`Coordination`] and [`Cluster`].
//!
//! It never exits the process: when the machine stops or fails, [`NodeHandle::stopped`]
//! resolves and the application decides what to do (ConstructR issues #95/#171).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument as _;

use crate::cluster::Cluster;
use crate::coordination::Coordination;
use crate::machine::{Action, AttemptId, Event, Failure, Machine, Reply, State};
use crate::node::{NodeId, Scope};
use crate::settings::{Settings, SettingsError};

/// An [`Event`] with the time since the node started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimedEvent {
    /// Time since [`spawn`].
    pub elapsed: Duration,
    /// The event.
    pub event: Event,
}

/// The handle of a running node.
#[derive(Debug)]
pub struct NodeHandle {
    node: NodeId,
    state: watch::Receiver<State>,
    events: broadcast::Sender<TimedEvent>,
    shutdown: Arc<Notify>,
    task: JoinHandle<Result<(), Failure>>,
    first_events: Option<broadcast::Receiver<TimedEvent>>,
}

impl NodeHandle {
    /// The receiver of **all** events since the start (only once; later calls get `None`).
    /// Use [`NodeHandle::events`] for later subscriptions.
    pub fn take_events(&mut self) -> Option<broadcast::Receiver<TimedEvent>> {
        self.first_events.take()
    }

    /// This node.
    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// The current state.
    pub fn state(&self) -> State {
        *self.state.borrow()
    }

    /// A receiver of state changes.
    pub fn watch_state(&self) -> watch::Receiver<State> {
        self.state.clone()
    }

    /// Subscribes to events from now on (a slow subscriber misses old events, never blocks the node).
    pub fn events(&self) -> broadcast::Receiver<TimedEvent> {
        self.events.subscribe()
    }

    /// Resolves once this node is registered (or the machine ended).
    pub async fn registered(&self) -> State {
        let mut rx = self.state.clone();
        let s = rx
            .wait_for(|s| s.is_registered() || s.is_terminal())
            .await
            .map(|s| *s);
        s.unwrap_or(State::Stopped)
    }

    /// Starts a graceful shutdown: leave the cluster, remove the entry, stop.
    pub fn shutdown(&self) {
        self.shutdown.notify_one();
    }

    /// Resolves when the machine has stopped (`Ok`) or failed (`Err` with the reason; a
    /// panic of the node task itself is [`Failure::Panicked`] too, never a hang).
    pub async fn stopped(self) -> Result<(), Failure> {
        match self.task.await {
            Ok(r) => r,
            Err(e) if e.is_panic() => Err(Failure::Panicked {
                what: "the node task".into(),
                message: panic_message(e.into_panic()),
            }),
            Err(_) => Ok(()),
        }
    }

    /// Stops the node at once without leaving (as if the process crashed). Its entry
    /// expires with its TTL; [`NodeHandle::stopped`] then returns `Ok(())`.
    pub fn abort(&self) {
        self.task.abort();
    }
}

/// Validates the settings (the general rules, then the backend's own limits through
/// [`Coordination::check_settings`]) and starts a node on the current tokio runtime.
///
/// `seed` drives the machine's randomness; `node.incarnation` should be random per start.
pub fn spawn(
    settings: Settings,
    node: NodeId,
    coordination: Arc<dyn Coordination>,
    cluster: Arc<dyn Cluster>,
    seed: u64,
) -> Result<NodeHandle, SettingsError> {
    let scope = settings.scope()?;
    settings.validate()?;
    coordination.check_settings(&settings)?;
    let start = Instant::now();
    let machine = Machine::new(settings, node.clone(), seed, start.into_std())?;
    let (state_tx, state_rx) = watch::channel(machine.state());
    let (events, first_events) = broadcast::channel(256);
    let shutdown = Arc::new(Notify::new());
    let run = Runner {
        machine,
        scope,
        coordination,
        cluster,
        state_tx,
        events: events.clone(),
        shutdown: shutdown.clone(),
        start,
    };
    let span = tracing::info_span!("constructr", node = %node);
    let task = tokio::spawn(run.run().instrument(span));
    Ok(NodeHandle {
        node,
        state: state_rx,
        events,
        shutdown,
        task,
        first_events: Some(first_events),
    })
}

/// One running backend or cluster call.
struct Call {
    attempt: AttemptId,
    what: &'static str,
    handle: tokio::task::AbortHandle,
}

struct Runner {
    machine: Machine,
    scope: Scope,
    coordination: Arc<dyn Coordination>,
    cluster: Arc<dyn Cluster>,
    state_tx: watch::Sender<State>,
    events: broadcast::Sender<TimedEvent>,
    shutdown: Arc<Notify>,
    start: Instant,
}

impl Runner {
    async fn run(mut self) -> Result<(), Failure> {
        let (tx, mut rx) = mpsc::unbounded_channel::<(AttemptId, Reply)>();
        let mut tasks = tokio::task::JoinSet::new();
        // The running calls: which attempt (to drop superseded ones) and what (for panics).
        let mut running: HashMap<tokio::task::Id, Call> = HashMap::new();
        loop {
            while let Some(action) = self.machine.poll_action() {
                let what = action_name(&action);
                let attempt = action.attempt();
                let handle = tasks.spawn(self.execute(action, tx.clone()));
                running.insert(
                    handle.id(),
                    Call {
                        attempt,
                        what,
                        handle,
                    },
                );
            }
            // A superseded attempt (timed out, retried, or its phase left) is dropped, so a
            // slow call never overlaps its retry (no extra leases or sessions).
            running.retain(|_, call| {
                let live = self.machine.is_awaiting(call.attempt);
                if !live {
                    call.handle.abort();
                }
                live
            });
            while let Some(event) = self.machine.poll_event() {
                self.report(event);
            }
            let state = self.machine.state();
            if state.is_terminal() {
                tasks.abort_all();
                return match self.machine.failure() {
                    Some(f) => Err(f.clone()),
                    None => Ok(()),
                };
            }
            let deadline = self.machine.poll_timeout();
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(Instant::from_std(at)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some((attempt, reply)) = rx.recv() => {
                    self.machine.handle_reply(Instant::now().into_std(), attempt, reply);
                }
                () = sleep => self.machine.handle_timeout(Instant::now().into_std()),
                () = self.shutdown.notified() => self.machine.shutdown(Instant::now().into_std()),
                Some(done) = tasks.join_next_with_id() => {
                    match done {
                        Ok((id, ())) => {
                            running.remove(&id);
                        }
                        Err(e) if e.is_panic() => {
                            let what = running.remove(&e.id()).map_or("a call", |c| c.what);
                            let failure = Failure::Panicked {
                                what: what.to_owned(),
                                message: panic_message(e.into_panic()),
                            };
                            tracing::error!(reason = %failure, "bootstrap failed");
                            let _ = self.state_tx.send(State::Failed);
                            tasks.abort_all();
                            return Err(failure);
                        }
                        Err(e) => {
                            running.remove(&e.id());
                        }
                    }
                }
            }
        }
    }

    fn report(&self, event: Event) {
        let elapsed = self.start.elapsed();
        match &event {
            Event::StateChanged { from, to } => {
                let _ = self.state_tx.send(*to);
                if *to == State::Failed {
                    let reason = self.machine.failure().map(|f| f.to_string());
                    tracing::error!(?from, reason = reason.as_deref(), "bootstrap failed");
                } else {
                    tracing::info!(
                        ?from,
                        ?to,
                        elapsed_ms = elapsed.as_millis() as u64,
                        "state changed"
                    );
                }
            }
            Event::Retrying {
                state,
                error,
                retry_in,
            } => {
                tracing::warn!(?state, %error, retry_in_ms = retry_in.as_millis() as u64, "request failed; retrying")
            }
            Event::SeedRefused => {
                tracing::warn!("fenced seed registration refused (lost the lock); starting over")
            }
            Event::SeedConfirmed => {
                tracing::info!("found the seed registration committed despite the lost reply")
            }
            Event::ReseedGrace { cluster, grace } => tracing::info!(
                %cluster,
                grace_ms = grace.as_millis() as u64,
                "registry empty but its epoch names a cluster: waiting for its members to re-register before seeding"
            ),
            Event::ClusterLost { cluster } => tracing::warn!(
                cluster = cluster.map(|c| c.to_string()),
                "re-registration refused: another cluster owns the registry; leaving to join it"
            ),
        }
        let _ = self.events.send(TimedEvent { elapsed, event });
    }

    /// Runs one action to completion and sends its reply. Each call is bounded here too,
    /// so superseded calls end by themselves.
    fn execute(
        &self,
        action: Action,
        tx: mpsc::UnboundedSender<(AttemptId, Reply)>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let coordination = self.coordination.clone();
        let cluster = self.cluster.clone();
        let scope = self.scope.clone();
        let node = self.machine.node().clone();
        let s = self.machine.settings();
        let bound = s.coordination_timeout * 2;
        let join_bound = s.join_timeout * 2;
        let wait_bound = s.retry_delay * 3;
        let span = tracing::debug_span!("action", state = ?self.machine.state());
        async move {
            let attempt = action.attempt();
            let c = &*coordination;
            let reply = match action {
                Action::GetNodes { .. } => {
                    bounded(bound, c.get_nodes(&scope)).await.map(Reply::Nodes)
                }
                Action::Lock { ttl, .. } => bounded(bound, c.lock(scope.lease(&node, ttl)))
                    .await
                    .map(Reply::Lock),
                Action::AddSelf { ttl, mode, .. } => {
                    bounded(bound, c.add_self(scope.lease(&node, ttl), &mode))
                        .await
                        .map(Reply::AddSelf)
                }
                Action::Refresh { ttl, .. } => bounded(bound, c.refresh(scope.lease(&node, ttl)))
                    .await
                    .map(Reply::Refresh),
                Action::RemoveSelf { .. } => bounded(bound, c.remove_self(&scope, &node))
                    .await
                    .map(Reply::RemoveSelf),
                Action::WaitForChange { after, .. } => {
                    bounded(wait_bound, c.wait_for_change(&scope, after))
                        .await
                        .map(Reply::Changed)
                }
                Action::JoinCluster { seeds, .. } => {
                    tokio::time::timeout(join_bound, cluster.join(&seeds))
                        .await
                        .ok()
                        .map(Reply::Joined)
                }
                Action::LeaveCluster { .. } => tokio::time::timeout(bound, cluster.leave())
                    .await
                    .ok()
                    .map(Reply::Left),
            };
            if let Some(reply) = reply {
                let _ = tx.send((attempt, reply));
            }
        }
        .instrument(span)
    }
}

fn action_name(action: &Action) -> &'static str {
    match action {
        Action::GetNodes { .. } => "Coordination::get_nodes",
        Action::Lock { .. } => "Coordination::lock",
        Action::AddSelf { .. } => "Coordination::add_self",
        Action::Refresh { .. } => "Coordination::refresh",
        Action::RemoveSelf { .. } => "Coordination::remove_self",
        Action::WaitForChange { .. } => "Coordination::wait_for_change",
        Action::JoinCluster { .. } => "Cluster::join",
        Action::LeaveCluster { .. } => "Cluster::leave",
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

async fn bounded<T>(bound: Duration, f: impl std::future::Future<Output = T>) -> Option<T> {
    tokio::time::timeout(bound, f).await.ok()
}
