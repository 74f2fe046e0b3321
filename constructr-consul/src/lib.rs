//! Consul backend for constructr: not implemented yet (see the Consul issue).
