//! Docker-based integration harness (work in progress).
