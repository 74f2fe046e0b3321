//! Property tests of `CoordinationUrl`: the parser never panics, valid URLs round-trip
//! through `Display`, and a secret never shows in `Display`, `Debug` or an error.

use constructr::url::{CoordinationUrl, CoordinationUrlError};
use proptest::prelude::*;

/// Strings near the URL grammar, so that most reach deep into the parser.
fn url_ish() -> impl Strategy<Value = String> {
    let pieces = prop::sample::select(vec![
        "memory://",
        "etcd://",
        "etcd+https://",
        "consul://",
        "consul+https://",
        "zk://",
        "zookeeper://",
        "ETCD://",
        "://",
        "@",
        ":",
        ",",
        "?",
        "&",
        "=",
        "/",
        "[",
        "]",
        "::1",
        "%",
        "%4",
        "%40",
        "%ff",
        "h1",
        "10.0.0.1",
        "2379",
        "65536",
        "0",
        "ca",
        "cert",
        "key",
        "dc",
        "user",
        "pw",
        "<redacted>",
        " ",
        "\u{0}",
        "é",
    ]);
    prop::collection::vec(pieces, 0..14).prop_map(|v| v.concat())
}

/// Valid URL text: (text, the secret in it if any).
fn valid_url() -> impl Strategy<Value = (String, Option<String>)> {
    let host = prop_oneof![
        "[a-z][a-z0-9-]{0,10}(\\.[a-z0-9]{1,5}){0,2}",
        "(25[0-5]|2[0-4][0-9]|1?[0-9]{1,2})(\\.(25[0-5]|2[0-4][0-9]|1?[0-9]{1,2})){3}",
        Just("[::1]".to_owned()),
        Just("[fe80::1:2]".to_owned()),
    ];
    let host_port = (host, prop::option::of(1u16..)).prop_map(|(h, p)| match p {
        Some(p) => format!("{h}:{p}"),
        None => h,
    });
    let hosts = prop::collection::vec(host_port, 1..4).prop_map(|h| h.join(","));
    let secret = "[A-Za-z0-9!$*+;=~-]{1,12}SECRET";
    let path = "/[a-z]{1,8}(/[a-z.]{1,8}){0,2}";
    let etcd = (
        any::<bool>(),
        prop::option::of(("[a-z][a-z0-9_]{0,8}", prop::option::of(secret))),
        hosts.clone(),
        prop::option::of(path),
        prop::option::of((path, path)),
    )
        .prop_map(|(tls, creds, hosts, ca, identity)| {
            let (userinfo, secret) = match creds {
                Some((u, Some(p))) => (format!("{u}:{p}@"), Some(p)),
                Some((u, None)) => (format!("{u}@"), None),
                None => (String::new(), None),
            };
            let mut options = Vec::new();
            if tls {
                // etcd+https needs a CA.
                options.push(format!(
                    "ca={}",
                    ca.unwrap_or_else(|| "/etc/etcd/ca.pem".into())
                ));
                if let Some((cert, key)) = identity {
                    options.push(format!("cert={cert}&key={key}"));
                }
            }
            let query = if options.is_empty() {
                String::new()
            } else {
                format!("?{}", options.join("&"))
            };
            let scheme = if tls { "etcd+https" } else { "etcd" };
            (format!("{scheme}://{userinfo}{hosts}{query}"), secret)
        });
    let zookeeper = (
        prop::option::of(("[a-z][a-z0-9_]{0,8}", prop::option::of(secret))),
        hosts.clone(),
    )
        .prop_map(|(creds, hosts)| {
            let (userinfo, secret) = match creds {
                Some((u, Some(p))) => (format!("{u}:{p}@"), Some(p)),
                Some((u, None)) => (format!("{u}@"), None),
                None => (String::new(), None),
            };
            (format!("zk://{userinfo}{hosts}"), secret)
        });
    let consul = (
        any::<bool>(),
        prop::option::of(secret),
        hosts,
        prop::option::of("[a-z0-9_.-]{1,8}"),
        prop::option::of(path),
    )
        .prop_map(|(tls, token, hosts, dc, ca)| {
            let userinfo = token.as_ref().map(|t| format!("{t}@")).unwrap_or_default();
            let mut options = Vec::new();
            if let Some(dc) = dc {
                options.push(format!("dc={dc}"));
            }
            if let (true, Some(ca)) = (tls, ca) {
                options.push(format!("ca={ca}"));
            }
            let query = if options.is_empty() {
                String::new()
            } else {
                format!("?{}", options.join("&"))
            };
            let scheme = if tls { "consul+https" } else { "consul" };
            (format!("{scheme}://{userinfo}{hosts}{query}"), token)
        });
    prop_oneof![
        1 => Just(("memory://".to_owned(), None)),
        4 => etcd,
        4 => consul,
        2 => zookeeper,
    ]
}

fn no_secret(shown: &str) {
    assert!(!shown.contains("SECRET"), "{shown}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn the_parser_never_panics_on_arbitrary_strings(s in any::<String>()) {
        let _ = s.parse::<CoordinationUrl>();
    }

    #[test]
    fn the_parser_never_panics_on_url_like_strings(s in url_ish()) {
        if let Ok(url) = s.parse::<CoordinationUrl>() {
            // Whatever it accepts, it can display and read back.
            let again = url.to_string().parse::<CoordinationUrl>();
            if url.secret().is_none() {
                prop_assert_eq!(again.ok(), Some(url));
            }
        }
    }

    #[test]
    fn valid_urls_round_trip_through_display_without_their_secret((text, secret) in valid_url()) {
        let url: CoordinationUrl = text.parse().map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        let shown = url.to_string();
        no_secret(&shown);
        no_secret(&format!("{url:?}"));
        match secret {
            None => {
                let again: CoordinationUrl = shown.parse().map_err(|e| TestCaseError::fail(format!("{shown}: {e}")))?;
                prop_assert_eq!(again, url);
            }
            Some(secret) => {
                prop_assert_eq!(url.secret().map(|s| s.expose().to_owned()), Some(secret));
                // The redacted form is refused instead of sending `<redacted>` as a password.
                let e = shown.parse::<CoordinationUrl>().unwrap_err();
                prop_assert!(matches!(e, CoordinationUrlError::RedactedSecret { .. }), "{:?}", e);
            }
        }
    }

    #[test]
    fn a_secret_never_shows_in_the_error_of_a_broken_url(
        (text, _) in valid_url(),
        cut in 0usize..80,
        junk in prop::sample::select(vec![",", ",,", " ", "/x", "?x=1", "?ca=", ":0", "[", "%"]),
    ) {
        // Break the URL somewhere; a secret must not leak into the error.
        let cut = text.char_indices().map(|(i, _)| i).nth(cut).unwrap_or(text.len());
        let broken = format!("{}{junk}{}", &text[..cut], &text[cut..]);
        if let Err(e) = broken.parse::<CoordinationUrl>() {
            no_secret(&format!("{e} {e:?}"));
        }
    }
}
