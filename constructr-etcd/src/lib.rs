//! etcd v3 backend for constructr: work in progress.
