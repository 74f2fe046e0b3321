//! Serf's event-handler protocol: what `serf agent -event-handler` passes to the handler
//! through the environment and stdin, parsed strictly.
//!
//! # The format (verified with serf 0.10.1)
//! - Environment: `SERF_EVENT` (`member-join`, `member-leave`, `member-failed`,
//!   `member-update`, `member-reap`, `user`, `query`), `SERF_SELF_NAME`, `SERF_SELF_ROLE`,
//!   `SERF_TAG_<NAME>` for each of the agent's own tags (name upper-cased, every character
//!   outside `[A-Z0-9_]` replaced by `_`), `SERF_USER_EVENT` + `SERF_USER_LTIME` for user
//!   events, `SERF_QUERY_NAME` + `SERF_QUERY_LTIME` for queries.
//! - Member events: one stdin line per member, `NAME\tADDR\tROLE\tTAGS`. Tabs and newlines
//!   inside the name, role and tags are escaped as `\t` and `\n` (backslashes are **not**
//!   escaped, so a literal `\t` in a name reads back as a tab). Role and tags may be empty.
//!   Tags are `k=v` joined by `,`, in random order, **without any escaping of `,` or `=`**.
//! - User events and queries: the payload on stdin. Serf appends a `\n` when the payload does
//!   not end with one; the parser removes one trailing `\n`, so a payload that really ended
//!   with `\n` loses it.
//!
//! # Tag values with `,` or `=`
//! Serf writes the tag `k` = `a,b=c` as `k=a,b=c`, which is exactly how it writes two tags
//! `k=a` and `b=c`: the stdin line cannot tell them apart. The parser reads a `,`-separated
//! piece without `=` as part of the previous value (so `k=a,b` is one tag `k` = `a,b`) and a
//! piece with `=` as a new tag. For the agent's **own** member line it resolves the
//! ambiguity exactly, using the unambiguous `SERF_TAG_*` variables. For other members, tag
//! values that contain `,` followed by `=` are split wrongly: keep such values out of tags
//! (or encode them, e.g. base64) if other nodes must read them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::client::MemberEventKind;

/// A member as the handler protocol describes it, and as the bridge's JSON carries it:
/// `{"name","address","role","tags":{...}}`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberInfo {
    /// Node name.
    pub name: String,
    /// Gossip address (IP, as Serf prints it).
    pub address: String,
    /// The `role` tag (empty if none).
    #[serde(default)]
    pub role: String,
    /// All tags (including `role`, if set).
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

/// One event as passed to a handler.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandlerEvent {
    /// A member event with its members.
    Members {
        /// Which event.
        kind: MemberEventKind,
        /// The members, in stdin order (at least one).
        members: Vec<MemberInfo>,
    },
    /// A user event.
    User {
        /// `SERF_USER_EVENT`.
        name: String,
        /// `SERF_USER_LTIME`.
        ltime: u64,
        /// stdin, without the trailing `\n` Serf adds.
        payload: Vec<u8>,
    },
    /// A query; whatever the handler prints becomes this node's response.
    Query {
        /// `SERF_QUERY_NAME`.
        name: String,
        /// `SERF_QUERY_LTIME`.
        ltime: u64,
        /// stdin, without the trailing `\n` Serf adds.
        payload: Vec<u8>,
    },
}

/// A handler invocation: the agent itself and the event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandlerInput {
    /// `SERF_SELF_NAME`.
    pub self_name: String,
    /// `SERF_SELF_ROLE` (empty if the agent has no role).
    pub self_role: String,
    /// `SERF_TAG_*`, keyed by the sanitized name (`SERF_TAG_DC` → `DC`).
    pub self_tags: BTreeMap<String, String>,
    /// The event.
    pub event: HandlerEvent,
}

impl HandlerInput {
    /// The agent's own tag `name` (looked up by its sanitized form).
    pub fn self_tag(&self, name: &str) -> Option<&str> {
        self.self_tags
            .get(&sanitize_tag_name(name))
            .map(String::as_str)
    }
}

/// Why an invocation was refused. Nothing of a refused invocation is forwarded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A required environment variable is missing.
    #[error("environment variable {0} is not set (is this running as a Serf event handler?)")]
    MissingEnv(&'static str),
    /// `SERF_EVENT` names no known event.
    #[error("unknown SERF_EVENT {0:?}")]
    UnknownEvent(String),
    /// A Lamport time is not a number.
    #[error("{var} is not a number: {value:?}")]
    BadLtime {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
    },
    /// A member event without any member line.
    #[error("member event without member lines on stdin")]
    NoMembers,
    /// A member line is malformed.
    #[error("stdin line {line}: {reason}")]
    MemberLine {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// Serf's environment-variable form of a tag name: upper-cased, every character outside
/// `[A-Z0-9_]` replaced by `_`.
pub fn sanitize_tag_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            let c = c.to_ascii_uppercase();
            if c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn escape(s: &str) -> String {
    s.replace('\t', "\\t").replace('\n', "\\n")
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.peek() {
                Some('t') => {
                    chars.next();
                    out.push('\t');
                    continue;
                }
                Some('n') => {
                    chars.next();
                    out.push('\n');
                    continue;
                }
                _ => {}
            }
        }
        out.push(c);
    }
    out
}

/// Formats a member line exactly as Serf does (tags in the map's order; Serf's is random).
pub fn format_member_line(m: &MemberInfo) -> String {
    let tags: Vec<String> = m.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!(
        "{}\t{}\t{}\t{}\n",
        escape(&m.name),
        m.address,
        escape(&m.role),
        escape(&tags.join(","))
    )
}

/// Parses the tags field (still escaped). `hints`: sanitized name → raw value of tags known
/// exactly (the agent's own, from `SERF_TAG_*`).
fn parse_tags(
    raw: &str,
    hints: Option<&BTreeMap<String, String>>,
) -> Result<BTreeMap<String, String>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    if raw.is_empty() {
        return Ok(BTreeMap::new());
    }
    let segs: Vec<&str> = raw.split(',').collect();
    let mut i = 0;
    while i < segs.len() {
        let seg = segs[i];
        let Some((key, value)) = seg.split_once('=') else {
            match out.last_mut() {
                Some((_, v)) => {
                    v.push(',');
                    v.push_str(seg);
                    i += 1;
                    continue;
                }
                None => return Err(format!("tag {seg:?} has no `=`")),
            }
        };
        if key.is_empty() {
            return Err(format!("tag {seg:?} has an empty name"));
        }
        if let Some(hint) = hints.and_then(|h| h.get(&sanitize_tag_name(&unescape(key)))) {
            let hint = escape(hint);
            let n = hint.matches(',').count();
            let ends_there = segs.get(i + n + 1).is_none_or(|next| next.contains('='));
            if i + n < segs.len()
                && ends_there
                && segs[i..=i + n].join(",") == format!("{key}={hint}")
            {
                out.push((key.to_owned(), hint));
                i += n + 1;
                continue;
            }
        }
        out.push((key.to_owned(), value.to_owned()));
        i += 1;
    }
    Ok(out
        .into_iter()
        .map(|(k, v)| (unescape(&k), unescape(&v)))
        .collect())
}

fn parse_member_line(
    line: &str,
    self_name: &str,
    self_tags: &BTreeMap<String, String>,
) -> Result<MemberInfo, String> {
    let fields: Vec<&str> = line.split('\t').collect();
    if fields.len() != 4 {
        return Err(format!(
            "expected 4 tab-separated fields (NAME, ADDR, ROLE, TAGS), found {}",
            fields.len()
        ));
    }
    let name = unescape(fields[0]);
    if name.is_empty() {
        return Err("empty member name".into());
    }
    let address = fields[1].to_owned();
    if address.is_empty() {
        return Err(format!("member {name:?} has an empty address"));
    }
    let hints = (name == self_name).then_some(self_tags);
    let tags = parse_tags(fields[3], hints).map_err(|e| format!("member {name:?}: {e}"))?;
    Ok(MemberInfo {
        name,
        address,
        role: unescape(fields[2]),
        tags,
    })
}

fn payload(stdin: &[u8]) -> Vec<u8> {
    let mut p = stdin.to_vec();
    if p.last() == Some(&b'\n') {
        p.pop();
    }
    p
}

/// Parses one handler invocation. `env` looks up an environment variable.
pub fn parse(
    env: impl Fn(&str) -> Option<String>,
    self_tags: BTreeMap<String, String>,
    stdin: &[u8],
) -> Result<HandlerInput, ProtocolError> {
    let event = env("SERF_EVENT").ok_or(ProtocolError::MissingEnv("SERF_EVENT"))?;
    let self_name = env("SERF_SELF_NAME").ok_or(ProtocolError::MissingEnv("SERF_SELF_NAME"))?;
    let self_role = env("SERF_SELF_ROLE").unwrap_or_default();
    let ltime = |var: &'static str| -> Result<u64, ProtocolError> {
        let v = env(var).ok_or(ProtocolError::MissingEnv(var))?;
        v.trim()
            .parse()
            .map_err(|_| ProtocolError::BadLtime { var, value: v })
    };
    let event = if let Some(kind) = MemberEventKind::parse(&event) {
        let text = std::str::from_utf8(stdin).map_err(|e| {
            let line = stdin[..e.valid_up_to()]
                .iter()
                .filter(|b| **b == b'\n')
                .count()
                + 1;
            ProtocolError::MemberLine {
                line,
                reason: "not valid UTF-8".into(),
            }
        })?;
        let body = text.strip_suffix('\n').unwrap_or(text);
        if body.is_empty() {
            return Err(ProtocolError::NoMembers);
        }
        let members = body
            .split('\n')
            .enumerate()
            .map(|(i, line)| {
                parse_member_line(line, &self_name, &self_tags).map_err(|reason| {
                    ProtocolError::MemberLine {
                        line: i + 1,
                        reason,
                    }
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        HandlerEvent::Members { kind, members }
    } else {
        match event.as_str() {
            "user" => HandlerEvent::User {
                name: env("SERF_USER_EVENT").ok_or(ProtocolError::MissingEnv("SERF_USER_EVENT"))?,
                ltime: ltime("SERF_USER_LTIME")?,
                payload: payload(stdin),
            },
            "query" => HandlerEvent::Query {
                name: env("SERF_QUERY_NAME").ok_or(ProtocolError::MissingEnv("SERF_QUERY_NAME"))?,
                ltime: ltime("SERF_QUERY_LTIME")?,
                payload: payload(stdin),
            },
            _ => return Err(ProtocolError::UnknownEvent(event)),
        }
    };
    Ok(HandlerInput {
        self_name,
        self_role,
        self_tags,
        event,
    })
}

/// Parses an invocation from a full environment (`SERF_TAG_*` collected from it).
pub fn parse_env<I, K, V>(vars: I, stdin: &[u8]) -> Result<HandlerInput, ProtocolError>
where
    I: IntoIterator<Item = (K, V)>,
    K: Into<String>,
    V: Into<String>,
{
    let vars: BTreeMap<String, String> = vars
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
    let self_tags = vars
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix("SERF_TAG_")
                .map(|n| (n.to_owned(), v.clone()))
        })
        .collect();
    parse(|k| vars.get(k).cloned(), self_tags, stdin)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(event: &str) -> Vec<(String, String)> {
        vec![
            ("SERF_EVENT".into(), event.into()),
            ("SERF_SELF_NAME".into(), "a1".into()),
            ("SERF_SELF_ROLE".into(), "".into()),
        ]
    }

    #[test]
    fn parses_the_lines_a_real_agent_sent() {
        // Captured from serf 0.10.1 (see the crate docs): a2 without tags, a1 with tags
        // `weird` = `a,b=c d`, `tab` = "x\ty", `dc` = `dc1`.
        let stdin = b"a2\t127.0.0.1\t\t\na1\t127.0.0.1\t\tweird=a,b=c d,tab=x\\ty,dc=dc1\n";
        let mut vars = env("member-join");
        vars.push(("SERF_TAG_WEIRD".into(), "a,b=c d".into()));
        vars.push(("SERF_TAG_TAB".into(), "x\ty".into()));
        vars.push(("SERF_TAG_DC".into(), "dc1".into()));
        let input = parse_env(vars, stdin).unwrap();
        let HandlerEvent::Members { kind, members } = input.event else {
            panic!()
        };
        assert_eq!(kind, MemberEventKind::Join);
        assert_eq!(members[0].name, "a2");
        assert!(members[0].tags.is_empty());
        assert_eq!(members[0].role, "");
        assert_eq!(
            members[1].tags,
            BTreeMap::from([
                ("weird".into(), "a,b=c d".into()),
                ("tab".into(), "x\ty".into()),
                ("dc".into(), "dc1".into()),
            ])
        );
        assert_eq!(input.self_tags["DC"], "dc1");
    }

    #[test]
    fn other_members_tag_values_with_commas_are_kept_when_unambiguous() {
        let stdin = b"b\t10.0.0.2\tweb\trole=web,note=hello, world,dc=x\n";
        let input = parse_env(env("member-update"), stdin).unwrap();
        let HandlerEvent::Members { members, .. } = input.event else {
            panic!()
        };
        assert_eq!(members[0].tags["note"], "hello, world");
        assert_eq!(members[0].tags["dc"], "x");
        assert_eq!(members[0].role, "web");
    }

    #[test]
    fn malformed_input_is_refused_whole() {
        for (event, stdin, what) in [
            (
                "member-join",
                &b"a\t1.2.3.4\t\t\nb\t1.2.3.5\t\n"[..],
                "line 2",
            ),
            ("member-join", b"", "without member lines"),
            (
                "member-join",
                b"a\t1.2.3.4\t\t\n\nb\t1.2.3.4\t\t\n",
                "line 2",
            ),
            ("member-join", b"a\t1.2.3.4\t\tnoequals\n", "no `=`"),
            ("member-join", b"a\t1.2.3.4\t\t\tx\n", "found 5"),
            ("member-join", b"\xff\t1.2.3.4\t\t\n", "UTF-8"),
            ("member-fail", b"a\t1.2.3.4\t\t\n", "unknown SERF_EVENT"),
        ] {
            let err = parse_env(env(event), stdin).unwrap_err();
            assert!(err.to_string().contains(what), "{event} {stdin:?}: {err}");
        }
        let err = parse_env(env("user"), b"x").unwrap_err();
        assert_eq!(err, ProtocolError::MissingEnv("SERF_USER_EVENT"));
        let mut vars = env("query");
        vars.push(("SERF_QUERY_NAME".into(), "q".into()));
        vars.push(("SERF_QUERY_LTIME".into(), "x1".into()));
        assert!(matches!(
            parse_env(vars, b"").unwrap_err(),
            ProtocolError::BadLtime { .. }
        ));
    }

    #[test]
    fn payloads_lose_the_newline_serf_adds() {
        let mut vars = env("user");
        vars.push(("SERF_USER_EVENT".into(), "deploy".into()));
        vars.push(("SERF_USER_LTIME".into(), "7".into()));
        let input = parse_env(vars, b"hello world\n").unwrap();
        assert_eq!(
            input.event,
            HandlerEvent::User {
                name: "deploy".into(),
                ltime: 7,
                payload: b"hello world".to_vec()
            }
        );
    }

    #[test]
    fn sanitizes_like_serf() {
        assert_eq!(sanitize_tag_name("dc"), "DC");
        assert_eq!(
            sanitize_tag_name("constructr-orders/lock"),
            "CONSTRUCTR_ORDERS_LOCK"
        );
        assert_eq!(sanitize_tag_name("é1"), "_1");
    }
}
