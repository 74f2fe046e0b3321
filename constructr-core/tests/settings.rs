//! Settings: ConstructR's defaults, TOML with kebab-case keys and human durations, and
//! validation naming the violated rule.

use std::time::Duration;

use constructr_core::{ClusterName, Scope, Settings, SettingsError};

fn parse(toml_text: &str) -> Result<Settings, toml::de::Error> {
    toml::from_str(toml_text)
}

/// ConstructR's settings with the given retry jitter and TTL factor.
fn compat(retry_jitter: f64, ttl_factor: f64) -> Settings {
    let mut s = Settings::constructr_compat();
    s.retry_jitter = retry_jitter;
    s.ttl_factor = ttl_factor;
    s
}

/// The TTL factor and the minimum that `s.validate()` names as too small.
fn too_small(s: &Settings) -> (f64, f64) {
    match s.validate() {
        Err(SettingsError::TtlFactorTooSmall {
            ttl_factor,
            minimum,
        }) => (ttl_factor, minimum),
        other => panic!("expected TtlFactorTooSmall, got {other:?}"),
    }
}

#[track_caller]
fn assert_close(actual: f64, expected: f64) {
    assert!(
        (actual - expected).abs() < 1e-9,
        "{actual} is not {expected}"
    );
}

#[test]
fn defaults_are_constructrs_timings_with_outage_tolerance() {
    let s = Settings::default();
    assert_eq!(s.coordination_timeout, Duration::from_secs(3));
    assert_eq!(s.join_timeout, Duration::from_secs(15));
    assert!(!s.abort_on_join_timeout);
    assert_eq!(s.max_nr_of_seed_nodes, 5);
    assert_eq!(s.nr_of_retries, None);
    assert_eq!(s.refresh_interval, Duration::from_secs(30));
    assert_eq!(s.retry_delay, Duration::from_secs(3));
    assert_eq!(s.max_retry_delay, Duration::from_secs(30));
    assert_eq!(s.retry_budget, Duration::from_secs(300));
    assert_eq!(s.ttl_factor, 2.0);
    assert!(s.ignore_refresh_failures);
    assert_eq!(s.reseed_grace, None);
    // refresh-interval + 2 × coordination-timeout + retry-delay × (1 + jitter)
    assert_eq!(
        s.reseed_grace(),
        Duration::from_millis(30_000 + 6_000 + 3_600)
    );
    assert_eq!(s.key_prefix, "/constructr");
    assert_eq!(s.cluster_name.as_str(), "default");
    assert_eq!(s.ttl(), Duration::from_secs(60));
    assert_eq!(s.validate(), Ok(()));
}

#[test]
fn constructr_compat_has_fixed_waits_fail_fast_and_no_watch() {
    let s = Settings::constructr_compat();
    assert_eq!(s.retry_jitter, 0.0);
    assert!(!s.watch);
    assert_eq!(s.nr_of_retries, Some(2));
    assert_eq!(s.retry_wait(5, 0.0), s.retry_delay);
    assert!(!s.ignore_refresh_failures);
    assert_eq!(s.reseed_grace(), Duration::ZERO);
    assert_eq!(
        s.coordination_timeout,
        Settings::default().coordination_timeout
    );
    assert_eq!(s.validate(), Ok(()));
}

#[test]
fn empty_toml_gives_the_defaults() {
    assert_eq!(parse("").expect("empty"), Settings::default());
}

#[test]
fn toml_with_kebab_case_keys_and_human_durations() {
    let s = parse(
        r#"
        cluster-name = "orders-1"
        key-prefix = "/services"
        coordination-timeout = "500ms"
        join-timeout = "1m 30s"
        abort-on-join-timeout = true
        max-nr-of-seed-nodes = 3
        nr-of-retries = 5
        refresh-interval = "1m"
        retry-delay = "2s"
        ttl-factor = 3.5
        ignore-refresh-failures = true
        retry-jitter = 0.0
        watch = false
        "#,
    )
    .expect("valid toml");
    assert_eq!(s.cluster_name.as_str(), "orders-1");
    assert_eq!(s.key_prefix, "/services");
    assert_eq!(s.coordination_timeout, Duration::from_millis(500));
    assert_eq!(s.join_timeout, Duration::from_secs(90));
    assert!(s.abort_on_join_timeout);
    assert_eq!(s.max_nr_of_seed_nodes, 3);
    assert_eq!(s.nr_of_retries, Some(5));
    assert_eq!(s.refresh_interval, Duration::from_secs(60));
    assert_eq!(s.retry_delay, Duration::from_secs(2));
    assert_eq!(s.ttl_factor, 3.5);
    assert!(s.ignore_refresh_failures);
    assert_eq!(s.retry_jitter, 0.0);
    assert!(!s.watch);
    assert_eq!(s.validate(), Ok(()));
}

#[test]
fn partial_toml_keeps_the_other_defaults() {
    let s = parse(r#"coordination-timeout = "500ms""#).expect("valid");
    let mut expected = Settings::default();
    expected.coordination_timeout = Duration::from_millis(500);
    assert_eq!(s, expected);
}

#[test]
fn unknown_key_is_rejected() {
    let e = parse(r#"coordination-timeot = "1s""#).expect_err("unknown key");
    assert!(e.to_string().contains("coordination-timeot"), "{e}");
    // snake_case is not the format either.
    parse(r#"coordination_timeout = "1s""#).expect_err("snake_case key");
}

#[test]
fn bad_duration_is_rejected() {
    parse(r#"retry-delay = "soon""#).expect_err("not a duration");
    parse("retry-delay = 3").expect_err("a bare number is not a duration");
}

#[test]
fn invalid_cluster_name_in_toml_is_rejected() {
    let e = parse(r#"cluster-name = "a/b""#).expect_err("slash");
    assert!(e.to_string().contains("invalid cluster name"), "{e}");
}

#[test]
fn ttl_factor_too_small_names_the_computed_minimum() {
    let mut s = compat(0.0, 1.2);
    // 1 + (3s × (1 + 2) + 3s × 2) / 30s = 1.5
    let (ttl_factor, minimum) = too_small(&s);
    assert_eq!(ttl_factor, 1.2);
    assert_close(minimum, 1.5);
    let msg = s.validate().unwrap_err().to_string();
    assert!(msg.contains("ttl-factor 1.2 is too small"), "{msg}");
    assert!(msg.contains("1.500"), "{msg}");

    s.ttl_factor = 1.5;
    assert_eq!(s.validate(), Ok(()));
}

#[test]
fn ttl_factor_minimum_includes_the_jitter() {
    // 1 + (9s + 3s × 1.2 × 2) / 30s = 1.54
    assert_close(too_small(&compat(0.2, 1.5)).1, 1.54);
}

#[test]
fn ttl_factor_minimum_counts_growing_waits_and_one_retry_by_default() {
    let mut s = Settings::default();
    s.retry_jitter = 0.0;
    // r = 1: 1 + (3s × 2 + 3s) / 30s = 1.3
    assert_close(s.minimum_ttl_factor(), 1.3);
    s.nr_of_retries = Some(3);
    // waits 3 + 6 + 12 s: 1 + (12s + 21s) / 30s = 2.1
    assert_close(s.minimum_ttl_factor(), 2.1);
}

#[test]
fn non_finite_ttl_factors_are_rejected() {
    for f in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let mut s = Settings::default();
        s.ttl_factor = f;
        assert!(
            matches!(s.validate(), Err(SettingsError::TtlFactorNotFinite(_))),
            "{f}"
        );
        // Never a panic, even unvalidated.
        let _ = s.ttl();
    }
}

#[test]
fn huge_ttl_factor_is_rejected_as_too_long() {
    let mut s = Settings::default();
    s.ttl_factor = 1e300;
    assert_eq!(s.validate(), Err(SettingsError::TooLong { name: "ttl" }));
    assert_eq!(s.ttl(), Duration::MAX);
    assert!(
        s.validate()
            .unwrap_err()
            .to_string()
            .contains("ttl must be at most 365 days")
    );
}

/// Sets one duration setting.
type SetDuration = fn(&mut Settings, Duration);

/// Every duration setting by its TOML key, and how to set it.
const DURATIONS: [(&str, SetDuration); 7] = [
    ("coordination-timeout", |s, d| s.coordination_timeout = d),
    ("join-timeout", |s, d| s.join_timeout = d),
    ("refresh-interval", |s, d| s.refresh_interval = d),
    ("retry-delay", |s, d| s.retry_delay = d),
    ("max-retry-delay", |s, d| s.max_retry_delay = d),
    ("retry-budget", |s, d| s.retry_budget = d),
    ("reseed-grace", |s, d| s.reseed_grace = Some(d)),
];

/// The defaults with the duration setting `name` (see [`DURATIONS`]) set to `d`.
fn with_duration(name: &str, d: Duration) -> Settings {
    let (_, set) = DURATIONS
        .iter()
        .find(|(key, _)| *key == name)
        .expect("a duration setting");
    let mut s = Settings::default();
    set(&mut s, d);
    s
}

#[test]
fn durations_beyond_a_year_are_rejected() {
    let long = Duration::from_secs(400 * 24 * 3600);
    for (name, _) in DURATIONS {
        let s = with_duration(name, Duration::MAX);
        assert_eq!(s.validate(), Err(SettingsError::TooLong { name }), "{name}");
    }
    let s: Settings = parse(r#"join-timeout = "400days""#).expect("parses");
    assert!(s.join_timeout >= long);
    assert_eq!(
        s.validate(),
        Err(SettingsError::TooLong {
            name: "join-timeout"
        })
    );
}

#[test]
fn new_settings_parse_from_toml() {
    let s = parse(
        r#"
        max-retry-delay = "1m"
        retry-budget = "10m"
        reseed-grace = "0s"
        "#,
    )
    .expect("valid");
    assert_eq!(s.max_retry_delay, Duration::from_secs(60));
    assert_eq!(s.retry_budget, Duration::from_secs(600));
    assert_eq!(s.reseed_grace(), Duration::ZERO);
    // Settings survive a TOML round trip (the CLI merges presets through it).
    let text = toml::to_string(&Settings::constructr_compat()).expect("serialize");
    assert_eq!(
        parse(&text).expect("parse back"),
        Settings::constructr_compat()
    );
    let text = toml::to_string(&Settings::default()).expect("serialize");
    assert_eq!(parse(&text).expect("parse back"), Settings::default());
}

#[test]
fn retry_waits_double_up_to_the_cap_and_members_to_the_refresh_interval() {
    let mut s = Settings::default();
    s.retry_jitter = 0.0;
    let waits: Vec<u64> = (0..6).map(|k| s.retry_wait(k, 0.0).as_secs()).collect();
    assert_eq!(waits, [3, 6, 12, 24, 30, 30]);
    assert_eq!(s.retry_wait(u32::MAX, 0.0), Duration::from_secs(30));
    s.refresh_interval = Duration::from_secs(10);
    s.ttl_factor = 3.0;
    // Two tries must fit in the re-seed grace (10 s + 6 s + 3 s): (19 s − 6 s − 0.375 s) / 2.
    assert_eq!(
        s.member_retry_wait(4, 0.0),
        Duration::from_micros(6_312_500)
    );
    assert_eq!(s.longest_member_wait(), Duration::from_micros(6_312_500));
    // With a long grace, the refresh interval caps a member's waits.
    s.reseed_grace = Some(Duration::from_secs(100));
    assert_eq!(s.member_retry_wait(4, 0.0), Duration::from_secs(10));
    // Without a grace (ConstructR), nothing else does.
    s.reseed_grace = Some(Duration::ZERO);
    assert_eq!(s.member_retry_wait(4, 0.0), Duration::from_secs(10));
    s.reseed_grace = None;
    s.retry_jitter = 0.5;
    assert_eq!(s.retry_wait(0, 1.0), Duration::from_millis(4_500));
}

#[test]
fn zero_durations_are_rejected() {
    let must_not_be_zero = [
        "coordination-timeout",
        "join-timeout",
        "refresh-interval",
        "retry-delay",
    ];
    for name in must_not_be_zero {
        let s = with_duration(name, Duration::ZERO);
        assert_eq!(s.validate(), Err(SettingsError::Zero { name }), "{name}");
        assert_eq!(
            s.validate().unwrap_err().to_string(),
            format!("{name} must be greater than zero")
        );
    }
}

#[test]
fn jitter_outside_zero_to_one_is_rejected() {
    for j in [-0.1, 1.5, f64::NAN] {
        let mut s = Settings::default();
        s.retry_jitter = j;
        assert!(
            matches!(s.validate(), Err(SettingsError::Jitter(_))),
            "jitter {j}"
        );
    }
}

#[test]
fn cluster_names_that_could_escape_the_prefix_are_rejected() {
    for bad in [
        "",
        "a/b",
        "..",
        "x\ny",
        "a b",
        ".",
        "a\\b",
        "a..b",
        "tab\there",
    ] {
        match ClusterName::new(bad) {
            Err(SettingsError::InvalidClusterName { .. }) => {}
            other => panic!("{bad:?} accepted: {other:?}"),
        }
    }
    assert!(ClusterName::new("x".repeat(129)).is_err());
}

#[test]
fn ordinary_cluster_names_are_accepted() {
    for good in ["orders-1", "default", "a.b", "Orders_2", &"x".repeat(128)] {
        assert_eq!(ClusterName::new(good).expect(good).as_str(), good);
    }
}

#[test]
fn invalid_cluster_name_error_names_the_rule() {
    let e = ClusterName::new("a/b").unwrap_err();
    assert_eq!(
        e,
        SettingsError::InvalidClusterName {
            name: "a/b".into(),
            rule: "must not contain `/` or `\\`",
        }
    );
    // Control characters are escaped in the message.
    let e = ClusterName::new("x\ny").unwrap_err().to_string();
    assert!(e.contains(r"x\ny"), "{e}");
}

#[test]
fn key_prefix_with_dot_dot_is_rejected() {
    for bad in ["/constructr/../etc", "..", "/a//b", "/a/./b", "/a\u{7}"] {
        let mut s = Settings::default();
        s.key_prefix = bad.into();
        assert!(
            matches!(s.validate(), Err(SettingsError::InvalidKeyPrefix { .. })),
            "{bad:?} accepted"
        );
    }
}

#[test]
fn scope_base_formats() {
    let orders = || ClusterName::new("orders").expect("valid");
    let base = |prefix: &str| Scope::new(prefix, orders()).expect(prefix).base();
    for (prefix, expected) in [
        ("/constructr", "/constructr/orders"),
        ("constructr", "/constructr/orders"),
        ("/constructr/", "/constructr/orders"),
        ("/a/b", "/a/b/orders"),
        ("", "/orders"),
        ("/", "/orders"),
    ] {
        assert_eq!(base(prefix), expected, "prefix {prefix:?}");
    }
    let scope = Scope::new("/constructr", orders()).expect("valid");
    assert_eq!(scope.prefix(), "/constructr");
    assert_eq!(scope.cluster().as_str(), "orders");
    assert_eq!(scope.to_string(), "/constructr/orders");

    let mut s = Settings::default();
    s.cluster_name = orders();
    assert_eq!(s.scope().expect("valid").base(), "/constructr/orders");
}

#[test]
fn machine_rejects_invalid_settings() {
    let mut s = Settings::default();
    s.ttl_factor = 1.0;
    let err = constructr_core::Machine::new(
        s,
        constructr_core::NodeId::new("a:1", 1),
        0,
        std::time::Instant::now(),
    )
    .unwrap_err();
    assert!(matches!(err, SettingsError::TtlFactorTooSmall { .. }));
}

#[test]
fn lock_ttl_covers_reread_join_and_registration() {
    let s = Settings::default();
    assert_eq!(s.lock_ttl(), Duration::from_secs(15 + 2 * 3));
}
