//! # constructr-serf
//!
//! Serf for constructr.
#![deny(missing_docs)]

pub mod client;
pub mod config;
pub mod error;
mod wire;

pub use client::{
    EventStream, Member, MemberEventKind, MemberFilter, MemberStatus, QueryParams, QueryRecord,
    QueryStream, SerfClient, StreamEvent,
};
pub use config::SerfConfig;
pub use error::SerfError;
