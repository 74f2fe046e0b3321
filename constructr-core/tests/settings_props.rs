//! Property tests: nothing that validation accepts may panic later (every accepted setting
//! runs through a simulated, faulty bootstrap), and nothing from a TOML file may panic.

use std::time::Duration;

use constructr_core::Settings;
use constructr_core::sim::{SimConfig, run_trial};
use proptest::prelude::*;

fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::from_nanos(1)),
        Just(Duration::MAX),
        (1u64..5_000).prop_map(Duration::from_millis),
        (1u64..1_000_000).prop_map(Duration::from_secs),
        any::<u64>().prop_map(Duration::from_nanos),
        any::<u64>().prop_map(Duration::from_secs),
    ]
}

fn factor() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(1e300),
        Just(-1.0),
        0.0f64..100.0,
        any::<f64>(),
    ]
}

prop_compose! {
    fn settings()(
        coordination_timeout in duration(),
        join_timeout in duration(),
        refresh_interval in duration(),
        retry_delay in duration(),
        max_retry_delay in duration(),
        retry_budget in duration(),
        reseed_grace in proptest::option::of(duration()),
        divergence_check_interval in proptest::option::of(duration()),
        ttl_factor in factor(),
        retry_jitter in factor(),
        nr_of_retries in proptest::option::of(any::<u32>()),
        max_nr_of_seed_nodes in any::<usize>(),
        flags in any::<(bool, bool, bool, bool)>(),
    ) -> Settings {
        let mut s = Settings::default();
        s.coordination_timeout = coordination_timeout;
        s.join_timeout = join_timeout;
        s.refresh_interval = refresh_interval;
        s.retry_delay = retry_delay;
        s.max_retry_delay = max_retry_delay;
        s.retry_budget = retry_budget;
        s.reseed_grace = reseed_grace;
        s.divergence_check_interval = divergence_check_interval;
        s.ttl_factor = ttl_factor;
        s.retry_jitter = retry_jitter;
        s.nr_of_retries = nr_of_retries;
        s.max_nr_of_seed_nodes = max_nr_of_seed_nodes;
        (s.abort_on_join_timeout, s.ignore_refresh_failures, s.watch, s.new_cluster_enabled) = flags;
        s
    }
}

// Settings near the accepted edge: short, long and mixed values that mostly validate.
prop_compose! {
    fn plausible_settings()(
        ms in proptest::array::uniform5(1u64..20_000),
        big in proptest::array::uniform2(prop_oneof![Just(0u64), 1u64..100_000, Just(365 * 24 * 3600)]),
        ttl_factor in 1.0f64..50.0,
        retry_jitter in 0.0f64..=1.0,
        nr_of_retries in proptest::option::of(0u32..10),
        grace in proptest::option::of(0u64..20_000),
        flags in any::<(bool, bool, bool)>(),
    ) -> Settings {
        let mut s = Settings::default();
        s.coordination_timeout = Duration::from_millis(ms[0]);
        s.join_timeout = Duration::from_millis(ms[1]);
        s.refresh_interval = Duration::from_millis(ms[2]);
        s.retry_delay = Duration::from_millis(ms[3]);
        s.max_retry_delay = Duration::from_millis(ms[4]);
        s.retry_budget = Duration::from_secs(big[0]);
        s.reseed_grace = grace.map(Duration::from_millis);
        s.ttl_factor = ttl_factor.max(s.minimum_ttl_factor());
        s.retry_jitter = retry_jitter;
        s.nr_of_retries = nr_of_retries;
        if big[1] > 0 {
            s.join_timeout = Duration::from_secs(big[1]);
        }
        (s.abort_on_join_timeout, s.ignore_refresh_failures, s.watch) = flags;
        s
    }
}

fn simulate(settings: Settings) {
    let config = SimConfig {
        nodes: 3,
        settings,
        ..SimConfig::default()
    };
    for seed in 0..3 {
        let _ = run_trial(&config, seed);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn arbitrary_settings_either_fail_validation_or_bootstrap_without_panicking(s in settings()) {
        // Derived values never panic, valid or not.
        let _ = (s.ttl(), s.lock_ttl(), s.reseed_grace(), s.minimum_ttl_factor(), s.retry_wait(u32::MAX, 1.0));
        let _ = (s.max_safe_pause(), s.longest_member_wait(), s.member_retry_wait(u32::MAX, 1.0), s.divergence_check_interval());
        if s.validate().is_ok() {
            simulate(s);
        }
    }

    #[test]
    fn plausible_settings_that_validate_bootstrap_without_panicking(s in plausible_settings()) {
        // Most of these validate (proptest fails the test if too many are rejected).
        prop_assume!(s.validate().is_ok());
        simulate(s);
    }

    #[test]
    fn any_toml_text_parses_or_errs_without_panicking(text in ".{0,200}") {
        if let Ok(s) = toml::from_str::<Settings>(&text) {
            let _ = s.validate();
        }
    }

    #[test]
    fn toml_with_absurd_values_is_refused_or_accepted_without_panicking(
        key in prop_oneof![
            Just("coordination-timeout"), Just("join-timeout"), Just("refresh-interval"),
            Just("retry-delay"), Just("max-retry-delay"), Just("retry-budget"), Just("reseed-grace"),
            Just("divergence-check-interval"),
        ],
        value in prop_oneof![
            Just("0s".to_owned()), Just("1ns".to_owned()), Just("99999999999999999999s".to_owned()),
            Just("584942417355years".to_owned()), (0u64..u64::MAX).prop_map(|n| format!("{n}ms")),
        ],
        factor in prop_oneof![Just("inf".to_owned()), Just("nan".to_owned()), Just("1e300".to_owned()), Just("-2.0".to_owned()), Just("3.0".to_owned())],
    ) {
        let text = format!("{key} = \"{value}\"\nttl-factor = {factor}\n");
        if let Ok(s) = toml::from_str::<Settings>(&text)
            && s.validate().is_ok()
        {
            simulate(s);
        }
    }
}
