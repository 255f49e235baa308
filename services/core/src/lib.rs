//! Quiver's pure core: configuration, event schemas and event decoding.
//!
//! This crate owns the types every service shares and the logic that must behave the same
//! everywhere (what a valid event is, how JSON becomes Arrow). It performs no network I/O; the
//! only file access is the thin loading of configuration and schema files, whose parsing is
//! exposed separately so it can be unit tested without touching the disk.

pub mod config;
pub mod decode;
pub mod duration;
pub mod error;
pub mod schema;

pub use config::Config;
pub use decode::{DecodeOutcome, EventDecoder, RejectReason, Rejection};
pub use error::{Error, Result, Retry};
pub use schema::{Catalog, FieldType, SourceSchema};
