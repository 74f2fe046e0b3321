//! Nothing the configuration accepts panics later; no mutation name panics the parser.

use std::time::Duration;

use constructr_check::{BootstrapModel, CheckConfig, Mutation};
use proptest::prelude::*;
use stateright::Model;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_mutation_name_parses_or_is_refused_with_the_known_names(s in ".{0,40}") {
        match s.parse::<Mutation>() {
            Ok(m) => prop_assert_eq!(m.name(), s.as_str()),
            Err(e) => prop_assert!(e.contains("no-reseed-grace")),
        }
    }

    /// Random walks through any accepted configuration: every step the model offers can
    /// be taken, and time never passes the horizon.
    #[test]
    fn accepted_configurations_walk_without_panicking(
        nodes in prop_oneof![1 => Just(0usize), 1 => Just(5usize), 8 => 1usize..5],
        faults in 0u8..4,
        window_ms in 0u64..20_000,
        horizon_ms in 0u64..4_000_000,
        coordination_ms in 0u64..1_000,
        refresh_ms in 900u64..20_000,
        ttl_factor in prop_oneof![1 => Just(f64::NAN), 1 => Just(f64::INFINITY), 8 => 0.0f64..20.0],
        mutation in proptest::option::of(proptest::sample::select(Mutation::ALL.to_vec())),
        walk in proptest::collection::vec(any::<u32>(), 0..400),
    ) {
        let mut config = CheckConfig::new(nodes, faults)
            .with_times(Duration::from_millis(window_ms), Duration::from_millis(horizon_ms))
            .with_mutation(mutation);
        config.settings.coordination_timeout = Duration::from_millis(coordination_ms);
        config.settings.refresh_interval = Duration::from_millis(refresh_ms);
        config.settings.ttl_factor = ttl_factor;
        let horizon = config.horizon;
        let Ok(model) = BootstrapModel::new(config) else {
            return Ok(());
        };
        let mut state = model.init_states().remove(0);
        for choice in walk {
            let mut steps = Vec::new();
            model.actions(&state, &mut steps);
            if steps.is_empty() {
                break;
            }
            let step = steps[choice as usize % steps.len()].clone();
            let Some(next) = model.next_state(&state, step) else {
                continue;
            };
            prop_assert!(next.now <= horizon);
            state = next;
        }
    }
}
