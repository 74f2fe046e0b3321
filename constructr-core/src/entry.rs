//! The wire encoding of registry entries that every key-value backend shares.
//!
//! Node key: `{base}/nodes/{base64url(address)}` (ConstructR's layout, readable with
//! `etcdctl get --prefix`). Node value: JSON `{"address":"..","incarnation":N}`.
//! Epoch value: the cluster id as 16 hex digits.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::node::{ClusterId, NodeId, Scope};

/// Why an entry could not be decoded (the backend skips it with a warning).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EntryError {
    /// The value is not the expected JSON.
    #[error("registry entry value is not a node entry")]
    Value(#[source] serde_json::Error),
    /// The key's last segment is not base64url of the value's address.
    #[error("registry entry key does not match its address")]
    KeyMismatch,
    /// The epoch value is not a cluster id.
    #[error("epoch marker is not a cluster id")]
    Epoch,
}

#[derive(Serialize, Deserialize)]
struct EntryValue<'a> {
    address: std::borrow::Cow<'a, str>,
    incarnation: u64,
}

/// `{base}/nodes/`: the prefix under which node entries live.
pub fn nodes_prefix(scope: &Scope) -> String {
    format!("{}/nodes/", scope.base())
}

/// `{base}/lock`.
pub fn lock_key(scope: &Scope) -> String {
    format!("{}/lock", scope.base())
}

/// `{base}/epoch`.
pub fn epoch_key(scope: &Scope) -> String {
    format!("{}/epoch", scope.base())
}

/// `{base}/nodes/{base64url(address)}`.
pub fn node_key(scope: &Scope, address: &str) -> String {
    format!("{}{}", nodes_prefix(scope), URL_SAFE_NO_PAD.encode(address))
}

/// Encodes a node entry's value.
pub fn encode_node(node: &NodeId) -> Vec<u8> {
    serde_json::to_vec(&EntryValue {
        address: node.address.as_str().into(),
        incarnation: node.incarnation,
    })
    .expect("serialising two plain fields cannot fail")
}

/// Decodes a node entry; `key_suffix` is the part after [`nodes_prefix`].
pub fn decode_node(key_suffix: &str, value: &[u8]) -> Result<NodeId, EntryError> {
    let v: EntryValue<'_> = serde_json::from_slice(value).map_err(EntryError::Value)?;
    if URL_SAFE_NO_PAD.encode(v.address.as_bytes()) != key_suffix {
        return Err(EntryError::KeyMismatch);
    }
    Ok(NodeId::new(v.address.into_owned(), v.incarnation))
}

/// Decodes the lock's value: its holder (encoded like a node entry, under no address key).
///
/// ```
/// use constructr_core::{NodeId, entry};
/// let holder = NodeId::new("10.0.0.1:2552", 7);
/// assert_eq!(entry::decode_lock(&entry::encode_node(&holder)).unwrap(), holder);
/// assert!(entry::decode_lock(b"\xff not json").is_err());
/// ```
pub fn decode_lock(value: &[u8]) -> Result<NodeId, EntryError> {
    let v: EntryValue<'_> = serde_json::from_slice(value).map_err(EntryError::Value)?;
    Ok(NodeId::new(v.address.into_owned(), v.incarnation))
}

/// Encodes the epoch marker's value.
pub fn encode_epoch(cluster: ClusterId) -> Vec<u8> {
    cluster.to_string().into_bytes()
}

/// Decodes the epoch marker's value.
pub fn decode_epoch(value: &[u8]) -> Result<ClusterId, EntryError> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(EntryError::Epoch)
}
