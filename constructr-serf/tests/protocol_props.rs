//! Property tests of the handler-protocol parser: it never panics on any input, and what
//! Serf writes reads back as what it described.

use std::collections::BTreeMap;

use constructr_serf::MemberEventKind;
use constructr_serf::handler::{HandlerConfig, check_bridge_url, requests};
use constructr_serf::protocol::{
    HandlerEvent, MemberInfo, format_member_line, parse_env, sanitize_tag_name,
};
use proptest::prelude::*;

/// Text Serf may carry in a name or role: anything but a backslash before `t`/`n` (Serf does
/// not escape backslashes, so such text is ambiguous by design).
fn field() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 .:_\\-\t\n\u{e9}\u{4e2d}]{0,12}"
}

fn name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 .:_\\-\t\n\u{e9}]{1,12}"
}

/// Tag names never contain `,` or `=`; values of *other* members must not contain `,`
/// followed by `=` (see the protocol docs), so generate values without `=`.
fn tags() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map("[a-z][a-z0-9_\\-]{0,8}", "[a-zA-Z0-9 ,.:/\t\n]{0,12}", 0..5)
        .prop_filter("a value must not start with `,`", |t| {
            t.values().all(|v| !v.starts_with(','))
        })
}

fn member() -> impl Strategy<Value = MemberInfo> {
    (
        name(),
        "[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}",
        field(),
        tags(),
    )
        .prop_map(|(name, address, role, tags)| MemberInfo {
            name,
            address,
            role,
            tags,
        })
}

fn kind() -> impl Strategy<Value = MemberEventKind> {
    prop_oneof![
        Just(MemberEventKind::Join),
        Just(MemberEventKind::Leave),
        Just(MemberEventKind::Failed),
        Just(MemberEventKind::Update),
        Just(MemberEventKind::Reap),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// `--bridge` comes from the command line: any text is accepted or refused, never a
    /// panic, and what is accepted parses as an http(s) URL with a host.
    #[test]
    fn bridge_urls_never_panic_and_accepted_ones_have_a_host(
        url in prop_oneof!["\\PC{0,40}", "(http|https)://[a-z0-9 .:\\[\\]@%/-]{0,30}"]
    ) {
        if check_bridge_url(&url).is_ok() {
            let parsed = reqwest::Url::parse(&url).unwrap();
            prop_assert!(matches!(parsed.scheme(), "http" | "https"));
            prop_assert!(parsed.host_str().is_some_and(|h| !h.is_empty()));
        }
    }

    #[test]
    fn member_lines_round_trip(kind in kind(), members in prop::collection::vec(member(), 1..6)) {
        let stdin: String = members.iter().map(format_member_line).collect();
        let input = parse_env(
            [("SERF_EVENT", kind.as_str()), ("SERF_SELF_NAME", "self-node")],
            stdin.as_bytes(),
        ).unwrap();
        prop_assert_eq!(input.event, HandlerEvent::Members { kind, members });
    }

    /// The agent's own tags are exact even with `,` and `=` in values, thanks to SERF_TAG_*.
    #[test]
    fn own_tags_round_trip_with_any_value(
        values in prop::collection::btree_map("[a-z][a-z0-9]{0,6}", "[a-z =,\t]{0,10}", 1..5),
    ) {
        prop_assume!(values.values().all(|v| !v.starts_with(',')));
        let me = MemberInfo {
            name: "me".into(),
            address: "10.0.0.1".into(),
            role: String::new(),
            tags: values.clone(),
        };
        let mut env: Vec<(String, String)> = vec![
            ("SERF_EVENT".into(), "member-join".into()),
            ("SERF_SELF_NAME".into(), "me".into()),
        ];
        for (k, v) in &values {
            env.push((format!("SERF_TAG_{}", sanitize_tag_name(k)), v.clone()));
        }
        let input = parse_env(env, format_member_line(&me).as_bytes()).unwrap();
        prop_assert_eq!(input.event, HandlerEvent::Members { kind: MemberEventKind::Join, members: vec![me] });
    }

    #[test]
    fn never_panics_on_arbitrary_input(
        event in prop_oneof![
            Just("member-join".to_string()), Just("user".to_string()),
            Just("query".to_string()), "[a-z\\-]{0,14}"
        ],
        stdin in prop::collection::vec(any::<u8>(), 0..300),
        extra in prop::collection::vec(("SERF_[A-Z_]{1,12}", "[ -~\t]{0,12}"), 0..6),
    ) {
        let mut env = vec![
            ("SERF_EVENT".to_string(), event),
            ("SERF_SELF_NAME".to_string(), "n".to_string()),
        ];
        env.extend(extra);
        if let Ok(input) = parse_env(env, &stdin) {
            // Whatever parses also maps to requests without panicking.
            let _ = requests(&input, &HandlerConfig::default());
        }
    }

    #[test]
    fn never_panics_on_line_noise(lines in prop::collection::vec("[a-z\t=,\\\\\n ]{0,30}", 0..8)) {
        let stdin = lines.join("\n");
        let _ = parse_env([("SERF_EVENT", "member-update"), ("SERF_SELF_NAME", "a")], stdin.as_bytes());
    }

    /// A member line with any number of fields but four is refused, whole.
    #[test]
    fn wrong_field_counts_are_refused(good in member(), fields in prop::sample::select(vec![1usize, 2, 3, 5, 6])) {
        let line: Vec<&str> = std::iter::repeat_n("x", fields).collect();
        let stdin = format!("{}{}\n", format_member_line(&good), line.join("\t"));
        let err = parse_env([("SERF_EVENT", "member-join"), ("SERF_SELF_NAME", "a")], stdin.as_bytes()).unwrap_err();
        prop_assert!(err.to_string().contains("line 2"), "{}", err);
    }
}
