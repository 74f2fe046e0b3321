//! Property tests of the driver plumbing: arbitrary endpoint text never panics, and a URL's
//! user info never shows.

use std::time::Duration;

use constructr_core::plumbing::{Secret, check_endpoints, display_url};
use proptest::prelude::*;

proptest! {
    #[test]
    fn display_url_never_panics_and_drops_user_info(
        scheme in prop_oneof![Just(""), Just("http://"), Just("https://"), Just("etcd+https://")],
        user in "[a-z]{1,8}",
        password in "[A-Za-z0-9!$%]{8,16}",
        host in "[a-z0-9.-]{1,20}(:[0-9]{1,5})?",
        path in "(/[a-z@]{0,8})?",
    ) {
        let url = format!("{scheme}{user}:{password}@{host}{path}");
        let shown = display_url(&url);
        prop_assert!(!shown.contains(&password), "{shown}");
        prop_assert_eq!(shown, format!("{scheme}{host}{path}"));
    }

    #[test]
    fn arbitrary_text_is_shown_or_refused_without_panicking(
        endpoints in proptest::collection::vec(".{0,40}", 0..4),
        tls in any::<bool>(),
        ms in 0u64..3,
    ) {
        for e in &endpoints {
            let _ = display_url(e);
        }
        let t = Duration::from_millis(ms);
        let r = check_endpoints("endpoint", &endpoints, tls, "", t, t);
        if endpoints.is_empty() || ms == 0 {
            prop_assert!(r.is_err());
        }
    }

    #[test]
    fn a_secret_never_shows(text in ".{1,40}") {
        let s = Secret::from(text.as_str());
        prop_assert_eq!(format!("{s:?}"), "<redacted>");
        prop_assert_eq!(format!("{s}"), "<redacted>");
        prop_assert_eq!(s.expose(), text.as_str());
    }
}
