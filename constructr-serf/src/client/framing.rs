//! Framing: complete msgpack values out of a byte stream.

use serde::Serialize;
use tokio::io::AsyncReadExt as _;
use tokio::net::tcp::OwnedReadHalf;

use crate::error::SerfError;

// ---------------------------------------------------------------------------------------
// Framing: complete msgpack values out of a byte stream.

pub(super) struct FrameReader {
    pub(super) rd: OwnedReadHalf,
    pub(super) buf: Vec<u8>,
    pub(super) start: usize,
}

impl FrameReader {
    pub(super) async fn next_value(&mut self) -> std::io::Result<rmpv::Value> {
        loop {
            if self.start < self.buf.len() {
                let mut cur = &self.buf[self.start..];
                let before = cur.len();
                match rmpv::decode::read_value(&mut cur) {
                    Ok(v) => {
                        self.start += before - cur.len();
                        if self.start == self.buf.len() {
                            self.buf.clear();
                            self.start = 0;
                        }
                        return Ok(v);
                    }
                    Err(e) if is_eof(&e) => {}
                    Err(e) => {
                        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e));
                    }
                }
            }
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            self.buf.reserve(16 * 1024);
            if self.rd.read_buf(&mut self.buf).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
    }
}

pub(super) fn is_eof(e: &rmpv::decode::Error) -> bool {
    match e {
        rmpv::decode::Error::InvalidMarkerRead(io) | rmpv::decode::Error::InvalidDataRead(io) => {
            io.kind() == std::io::ErrorKind::UnexpectedEof
        }
        _ => false,
    }
}

pub(super) fn from_value<T: serde::de::DeserializeOwned>(
    v: rmpv::Value,
    what: &str,
) -> Result<T, SerfError> {
    rmpv::ext::from_value(v).map_err(|e| SerfError::protocol(format!("cannot decode {what}: {e}")))
}

pub(super) fn is_done_record(v: &rmpv::Value) -> bool {
    v.as_map().is_some_and(|m| {
        m.iter()
            .any(|(k, v)| k.as_str() == Some("Type") && v.as_str() == Some("done"))
    })
}

pub(super) fn encode<T: Serialize>(out: &mut Vec<u8>, value: &T) {
    // Encoding plain structs of strings, integers, maps and byte slices into a Vec cannot fail.
    rmp_serde::encode::write_named(out, value).expect("msgpack encoding into a Vec");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire;

    #[test]
    fn requests_use_named_pascal_case_fields_and_binary_payloads() {
        let mut out = Vec::new();
        encode(
            &mut out,
            &wire::Event {
                name: "deploy",
                payload: b"v1",
                coalesce: false,
            },
        );
        let v = rmpv::decode::read_value(&mut &out[..]).unwrap();
        let map = v.as_map().unwrap();
        let keys: Vec<_> = map.iter().map(|(k, _)| k.as_str().unwrap()).collect();
        assert_eq!(keys, ["Name", "Payload", "Coalesce"]);
        assert!(matches!(map[1].1, rmpv::Value::Binary(_)));
    }

    #[test]
    fn done_records_are_recognised() {
        let mut out = Vec::new();
        encode(
            &mut out,
            &serde_json::json!({"Type": "done", "From": "", "Payload": null}),
        );
        let v = rmpv::decode::read_value(&mut &out[..]).unwrap();
        assert!(is_done_record(&v));
    }
}
