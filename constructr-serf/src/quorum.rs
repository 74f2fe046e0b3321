//! The datacenter quorum: the successor of serf-scala-bridge's sample `QuorumWebServer`, as
//! a sans-IO component like the core state machine (time is an input, outputs are plain
//! data, every transition in [`Quorum::step`]).
//!
//! # Rules
//! - A datacenter is **known** from its first member until its last member left or was
//!   reaped (a planned shrink takes it out of the count).
//! - It is **active** while it has an alive member, or a member that failed less than
//!   `failure-grace` ago (60 s). The own datacenter is always active: this node runs.
//! - **Quorum** is a *strict* majority of the known datacenters: `2 × active > known`. (The
//!   sample's `active ≥ ⌈known / 2⌉` let both halves of a 2–2 split think they had it.)
//!
//! | state | when |
//! |---|---|
//! | `Standalone` | only the own datacenter is known |
//! | `Independent` | two datacenters, both active |
//! | `HighAvailableTransitional` | three or more, quorum, for less than `ha-after` (60 s) |
//! | `HighAvailable` | three or more, quorum, for `ha-after` |
//! | `Halted` | no quorum |
//!
//! ```
//! use std::time::{Duration, Instant};
//! use constructr_serf::quorum::{Quorum, QuorumConfig, QuorumInput, QuorumState};
//!
//! let t0 = Instant::now();
//! let mut q = Quorum::new(QuorumConfig::new("dc1"), t0);
//! assert_eq!(q.state(), QuorumState::Standalone);
//! q.step(t0, QuorumInput::Joined { dc: "dc2".into(), name: "b".into() });
//! assert_eq!(q.state(), QuorumState::Independent);
//! ```

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Timers of the quorum.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct QuorumConfig {
    /// This node's datacenter (always active).
    pub own_dc: String,
    /// How long three or more datacenters must hold quorum before `HighAvailable`. 60 s.
    pub ha_after: Duration,
    /// How long a failed member still counts its datacenter as active. 60 s.
    pub failure_grace: Duration,
}

impl QuorumConfig {
    /// The default timers for a node in `own_dc`.
    pub fn new(own_dc: impl Into<String>) -> Self {
        Self {
            own_dc: own_dc.into(),
            ha_after: Duration::from_secs(60),
            failure_grace: Duration::from_secs(60),
        }
    }
}

/// The quorum state (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum QuorumState {
    /// Only the own datacenter is known.
    Standalone,
    /// Two datacenters, both active.
    Independent,
    /// Three or more with quorum, for less than `ha_after`.
    HighAvailableTransitional,
    /// Three or more with quorum, for `ha_after` or longer.
    HighAvailable,
    /// The active datacenters are no strict majority of the known ones.
    Halted,
}

/// What the quorum learns: membership events (by datacenter and member name), or only that
/// time passed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QuorumInput {
    /// A member joined, or was updated (possibly into another datacenter), and is alive.
    Joined {
        /// Its datacenter.
        dc: String,
        /// Its name.
        name: String,
    },
    /// A member failed.
    Failed {
        /// Its datacenter.
        dc: String,
        /// Its name.
        name: String,
    },
    /// A member left gracefully or was reaped.
    Left {
        /// Its name.
        name: String,
    },
    /// Time passed (at [`Quorum::poll_timeout`] or any time).
    Tick,
}

/// A change the quorum reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct QuorumChange {
    /// The state before.
    pub from: QuorumState,
    /// The state now.
    pub to: QuorumState,
}

/// A snapshot for `GET /quorum`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct QuorumView {
    /// The state.
    pub state: QuorumState,
    /// Known datacenters.
    pub known: Vec<String>,
    /// Active datacenters.
    pub active: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Health {
    Alive,
    FailedAt(Instant),
}

/// The datacenter quorum of one node.
#[derive(Clone, Debug)]
pub struct Quorum {
    config: QuorumConfig,
    /// Member name → (datacenter, health).
    members: BTreeMap<String, (String, Health)>,
    state: QuorumState,
    /// Since when three or more datacenters hold quorum.
    quorate_since: Option<Instant>,
}

impl Quorum {
    /// A quorum that knows only its own datacenter.
    pub fn new(config: QuorumConfig, now: Instant) -> Self {
        let mut q = Self {
            config,
            members: BTreeMap::new(),
            state: QuorumState::Standalone,
            quorate_since: None,
        };
        q.evaluate(now);
        q
    }

    /// The current state.
    pub fn state(&self) -> QuorumState {
        self.state
    }

    /// Feeds one input at `now`; returns the state change it caused, if any.
    pub fn step(&mut self, now: Instant, input: QuorumInput) -> Option<QuorumChange> {
        match input {
            QuorumInput::Joined { dc, name } => {
                self.members.insert(name, (dc, Health::Alive));
            }
            QuorumInput::Failed { dc, name } => {
                // A repeated failure report does not restart the grace.
                let since = match self.members.get(&name) {
                    Some((_, Health::FailedAt(t))) => *t,
                    _ => now,
                };
                self.members.insert(name, (dc, Health::FailedAt(since)));
            }
            QuorumInput::Left { name } => {
                self.members.remove(&name);
            }
            QuorumInput::Tick => {}
        }
        let from = self.state;
        self.evaluate(now);
        (self.state != from).then_some(QuorumChange {
            from,
            to: self.state,
        })
    }

    /// Makes `members` (datacenter, name, alive) the whole membership at `now` (members
    /// not in it left; a member still failed keeps the time it failed at); returns the
    /// state change, if any.
    pub fn observe<'a>(
        &mut self,
        now: Instant,
        members: impl IntoIterator<Item = (&'a str, &'a str, bool)>,
    ) -> Option<QuorumChange> {
        let mut next = BTreeMap::new();
        for (dc, name, alive) in members {
            let health = match (alive, self.members.get(name)) {
                (true, _) => Health::Alive,
                (false, Some((_, Health::FailedAt(t)))) => Health::FailedAt(*t),
                (false, _) => Health::FailedAt(now),
            };
            next.insert(name.to_owned(), (dc.to_owned(), health));
        }
        self.members = next;
        self.step(now, QuorumInput::Tick)
    }

    /// When the state may change without an input (a grace or the `ha_after` timer ends):
    /// feed [`QuorumInput::Tick`] then.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let grace_ends = self.members.values().filter_map(|(_, h)| match h {
            Health::FailedAt(t) => t.checked_add(self.config.failure_grace),
            Health::Alive => None,
        });
        let ha = match (self.state, self.quorate_since) {
            (QuorumState::HighAvailableTransitional, Some(t)) => {
                t.checked_add(self.config.ha_after)
            }
            _ => None,
        };
        grace_ends.chain(ha).min()
    }

    /// The state with the known and active datacenters at `now`.
    pub fn view(&self, now: Instant) -> QuorumView {
        let (known, active) = self.datacenters(now);
        QuorumView {
            state: self.state,
            known,
            active,
        }
    }

    fn datacenters(&self, now: Instant) -> (Vec<String>, Vec<String>) {
        let mut known: BTreeMap<&str, bool> = BTreeMap::from([(self.config.own_dc.as_str(), true)]);
        for (dc, health) in self.members.values() {
            let active = match health {
                Health::Alive => true,
                // A grace beyond what an `Instant` holds never ends.
                Health::FailedAt(t) => t
                    .checked_add(self.config.failure_grace)
                    .is_none_or(|end| now < end),
            };
            *known.entry(dc).or_default() |= active;
        }
        let active = known
            .iter()
            .filter(|(_, a)| **a)
            .map(|(dc, _)| dc.to_string());
        let active = active.collect();
        (known.into_keys().map(str::to_owned).collect(), active)
    }

    fn evaluate(&mut self, now: Instant) {
        let (known, active) = self.datacenters(now);
        let quorate = 2 * active.len() > known.len();
        if !quorate || known.len() < 3 {
            self.quorate_since = None;
        }
        self.state = match known.len() {
            _ if !quorate => QuorumState::Halted,
            1 => QuorumState::Standalone,
            2 => QuorumState::Independent,
            _ => {
                let since = *self.quorate_since.get_or_insert(now);
                if now.saturating_duration_since(since) >= self.config.ha_after {
                    QuorumState::HighAvailable
                } else {
                    QuorumState::HighAvailableTransitional
                }
            }
        };
    }
}
