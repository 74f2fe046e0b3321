//! Serf bridge and backend for constructr: not implemented yet (see the Serf issue).
