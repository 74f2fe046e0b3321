//! The msgpack records of Serf's RPC protocol (IPC version 1), as the agent encodes them.
//!
//! Field names are PascalCase on the wire; `[]byte` fields (`Payload`, `Addr`) are msgpack
//! binary. Requests are encoded with named fields (maps), which Serf's decoder requires.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct RequestHeader<'a> {
    pub command: &'a str,
    pub seq: u64,
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ResponseHeader {
    pub seq: u64,
    #[serde(default)]
    pub error: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Handshake {
    pub version: i32,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Auth<'a> {
    pub auth_key: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Event<'a> {
    pub name: &'a str,
    #[serde(with = "serde_bytes")]
    pub payload: &'a [u8],
    pub coalesce: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Join<'a> {
    pub existing: &'a [String],
    pub replay: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct JoinResponse {
    pub num: i32,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ForceLeave<'a> {
    pub node: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct MembersFiltered<'a> {
    pub tags: &'a BTreeMap<String, String>,
    pub status: &'a str,
    pub name: &'a str,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct MembersResponse {
    pub members: Vec<WireMember>,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct WireMember {
    pub name: String,
    #[serde(with = "serde_bytes", default)]
    pub addr: Vec<u8>,
    #[serde(default)]
    pub port: u16,
    #[serde(default)]
    pub tags: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub protocol_min: u8,
    #[serde(default)]
    pub protocol_max: u8,
    #[serde(default)]
    pub protocol_cur: u8,
    #[serde(default)]
    pub delegate_min: u8,
    #[serde(default)]
    pub delegate_max: u8,
    #[serde(default)]
    pub delegate_cur: u8,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Stream<'a> {
    #[serde(rename = "Type")]
    pub kind: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Stop {
    pub stop: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Tags<'a> {
    pub tags: &'a BTreeMap<String, String>,
    pub delete_tags: &'a [String],
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Query<'a> {
    pub filter_nodes: &'a [String],
    pub filter_tags: &'a BTreeMap<String, String>,
    pub request_ack: bool,
    pub relay_factor: u8,
    /// Go `time.Duration`: nanoseconds. 0 = the agent's default timeout.
    pub timeout: u64,
    pub name: &'a str,
    #[serde(with = "serde_bytes")]
    pub payload: &'a [u8],
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Respond<'a> {
    #[serde(rename = "ID")]
    pub id: u64,
    #[serde(with = "serde_bytes")]
    pub payload: &'a [u8],
}

/// A record of a `query` response stream.
#[derive(Deserialize, Debug)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct QueryRecord {
    #[serde(rename = "Type")]
    pub kind: String,
    #[serde(default)]
    pub from: String,
    #[serde(with = "serde_bytes", default)]
    pub payload: Option<Vec<u8>>,
}

/// A record of a `stream` subscription: member event, user event or query, told apart
/// by `Event`.
#[derive(Deserialize, Debug)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct StreamRecord {
    pub event: String,
    #[serde(default)]
    pub members: Option<Vec<WireMember>>,
    #[serde(rename = "LTime", default)]
    pub ltime: u64,
    #[serde(default)]
    pub name: String,
    #[serde(with = "serde_bytes", default)]
    pub payload: Option<Vec<u8>>,
    #[serde(default)]
    pub coalesce: bool,
    #[serde(rename = "ID", default)]
    pub id: u64,
}
