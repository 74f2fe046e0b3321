//! The conformance suite every backend runs (in progress).
