//! The values the Serf RPC speaks about: members, filters, queries, stream events.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use crate::error::SerfError;
use crate::wire;

/// A member's status as Serf reports it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MemberStatus {
    /// Alive.
    Alive,
    /// Leaving gracefully.
    Leaving,
    /// Left gracefully.
    Left,
    /// Failed (unreachable).
    Failed,
    /// Anything else (`none`, or a status of a later Serf).
    Other(String),
}

impl MemberStatus {
    fn parse(s: &str) -> Self {
        match s {
            "alive" => Self::Alive,
            "leaving" => Self::Leaving,
            "left" => Self::Left,
            "failed" => Self::Failed,
            other => Self::Other(other.to_owned()),
        }
    }
}

/// A member of the Serf cluster, as the RPC reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The node name (unique in the Serf cluster).
    pub name: String,
    /// Its gossip address.
    pub addr: IpAddr,
    /// Its gossip port.
    pub port: u16,
    /// Its tags.
    pub tags: BTreeMap<String, String>,
    /// Its status.
    pub status: MemberStatus,
    /// Serf protocol versions `[min, max, current]`.
    pub protocol: [u8; 3],
    /// Delegate protocol versions `[min, max, current]`.
    pub delegate: [u8; 3],
}

impl Member {
    pub(super) fn from_wire(m: wire::WireMember) -> Result<Self, SerfError> {
        let addr = match m.addr.len() {
            4 => IpAddr::V4(Ipv4Addr::new(m.addr[0], m.addr[1], m.addr[2], m.addr[3])),
            16 => {
                let octets: [u8; 16] = m.addr[..].try_into().expect("length checked");
                IpAddr::V6(Ipv6Addr::from(octets)).to_canonical()
            }
            n => {
                return Err(SerfError::protocol(format!(
                    "member {} has an address of {n} bytes",
                    m.name
                )));
            }
        };
        Ok(Self {
            name: m.name,
            addr,
            port: m.port,
            tags: m.tags.unwrap_or_default(),
            status: MemberStatus::parse(&m.status),
            protocol: [m.protocol_min, m.protocol_max, m.protocol_cur],
            delegate: [m.delegate_min, m.delegate_max, m.delegate_cur],
        })
    }
}

/// Filter of `members-filtered`. Every field is a Go regular expression that Serf anchors
/// (`^...$`); empty fields match everything. An invalid expression makes the agent close
/// the connection ([`SerfError::ConnectionClosed`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberFilter {
    /// Tag name → value expression; a member without the tag is matched against `""`.
    pub tags: BTreeMap<String, String>,
    /// Status expression (`alive`, `failed|left`, ...).
    pub status: String,
    /// Name expression.
    pub name: String,
}

/// Parameters of a query.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueryParams {
    /// The query name.
    pub name: String,
    /// The payload.
    pub payload: Vec<u8>,
    /// Only these nodes answer (empty: all).
    pub filter_nodes: Vec<String>,
    /// Only nodes whose tags match these expressions answer.
    pub filter_tags: BTreeMap<String, String>,
    /// Ask for acks (delivery confirmations) besides responses.
    pub request_ack: bool,
    /// How many extra nodes relay each response (0: none).
    pub relay_factor: u8,
    /// How long the query runs (`None`: the agent's default, which grows with the cluster).
    pub timeout: Option<Duration>,
}

/// A record of a running query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueryRecord {
    /// A node received the query (only with [`QueryParams::request_ack`]).
    Ack {
        /// The node.
        from: String,
    },
    /// A node responded.
    Response {
        /// The node.
        from: String,
        /// Its response.
        payload: Vec<u8>,
    },
}

/// Kinds of member events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MemberEventKind {
    /// `member-join`.
    Join,
    /// `member-leave`.
    Leave,
    /// `member-failed`.
    Failed,
    /// `member-update`.
    Update,
    /// `member-reap`.
    Reap,
}

impl MemberEventKind {
    /// Serf's name of the event (`member-join`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Join => "member-join",
            Self::Leave => "member-leave",
            Self::Failed => "member-failed",
            Self::Update => "member-update",
            Self::Reap => "member-reap",
        }
    }

    /// Parses Serf's name of the event.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "member-join" => Self::Join,
            "member-leave" => Self::Leave,
            "member-failed" => Self::Failed,
            "member-update" => Self::Update,
            "member-reap" => Self::Reap,
            _ => return None,
        })
    }
}

/// An event of a `stream` subscription.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamEvent {
    /// Members joined, left, failed, changed tags or were reaped.
    Member {
        /// Which event.
        kind: MemberEventKind,
        /// The members concerned.
        members: Vec<Member>,
    },
    /// A user event.
    User {
        /// Its name.
        name: String,
        /// Its Lamport time.
        ltime: u64,
        /// Its payload.
        payload: Vec<u8>,
        /// Whether Serf may coalesce it.
        coalesce: bool,
    },
    /// A query; answer it with [`SerfClient::respond`](super::SerfClient::respond) and `id` (on the same connection,
    /// before the query's deadline).
    Query {
        /// The id to respond with.
        id: u64,
        /// Its name.
        name: String,
        /// Its Lamport time.
        ltime: u64,
        /// Its payload.
        payload: Vec<u8>,
    },
    /// The connection to the agent was re-established and the subscription renewed; events
    /// in between may have been missed. `members` is a full read to reconcile with.
    Resynced {
        /// All members the agent knows, right after re-subscribing.
        members: Vec<Member>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_addresses_decode_from_4_and_16_bytes() {
        let mut w = wire::WireMember {
            name: "a".into(),
            addr: vec![127, 0, 0, 1],
            port: 7946,
            tags: None,
            status: "alive".into(),
            protocol_min: 1,
            protocol_max: 5,
            protocol_cur: 2,
            delegate_min: 2,
            delegate_max: 5,
            delegate_cur: 4,
        };
        let m = Member::from_wire(w.clone()).unwrap();
        assert_eq!(m.addr, IpAddr::from([127, 0, 0, 1]));
        assert!(m.tags.is_empty());
        w.addr = Ipv4Addr::new(10, 0, 0, 7)
            .to_ipv6_mapped()
            .octets()
            .to_vec();
        assert_eq!(
            Member::from_wire(w.clone()).unwrap().addr,
            IpAddr::from([10, 0, 0, 7])
        );
        w.addr = vec![1, 2, 3];
        assert!(Member::from_wire(w).is_err());
    }
}
