//! Deterministic simulation (work in progress).
