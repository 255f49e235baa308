//! The online store in Redis: entity state for the API and the streaming worker, and the
//! worker's claims.
//!
//! **Layout.** One hash per (view, entity) at `<prefix>:<view>:<entity>`, with two fields per
//! source partition: `p<partition>` holds that partition's [`Shard`] (the entity's tiles built
//! from the events of that partition, and the offset of the last one applied; encoded by
//! [`encoding`]) and `o<partition>` the same applied offset as a decimal, so Redis itself can
//! compare it. Only the owner of a partition writes its fields, and a write is refused when it
//! would move `o<partition>` backwards ([`scripts`]): a member that lost its partition can never
//! roll the state back. A read fetches the whole hash in one round trip and merges the shards in
//! partition order (`quiver_features::EntityShards`); windows are finalised at read time, so
//! they slide with the clock. Each write refreshes the view's TTL.
//!
//! **Claims.** Before the worker lets a prediction leave the process it records, per source
//! partition, what it decided for each event (`<prefix>:#claims:<source>:<partition>`, one field
//! per range of offsets); a replay after a crash, or a second member racing a fenced one, finds
//! the record and repeats it instead of deciding again. Claims are deleted once the offsets they
//! cover are committed, and the partition's floor rises with them: a late claim below it (from
//! a member that lost the partition without knowing yet) is refused. The bytes are opaque here.
//!
//! Owns: the Redis key layout and every Redis command Quiver sends. Must not: know Kafka, files
//! or models.

pub mod encoding;
mod keys;
mod reader;
pub mod scripts;
mod store;

pub use encoding::Fetched;
pub use keys::Keys;
pub use quiver_features::Shard;
pub use reader::OnlineReader;
pub use store::{Applied, Claim, ClaimedRange, Floor, OnlineStore, ShardWrites};

use quiver_core::Retry;

/// Result alias used across `quiver-online`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors of the online store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Redis failed or is unreachable.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A stored shard does not decode.
    #[error("cannot decode shard {key} {field}: {detail}")]
    Decode {
        /// Key.
        key: String,
        /// Field.
        field: String,
        /// Cause.
        detail: String,
    },
}

impl Error {
    /// Connection problems, timeouts and a Redis that is loading or paused are transient; a
    /// shard that does not decode or a command Redis rejects is not.
    pub fn retry(&self) -> Retry {
        match self {
            Error::Redis(e)
                if e.is_io_error()
                    || e.is_timeout()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || matches!(
                        e.kind(),
                        redis::ErrorKind::BusyLoadingError
                            | redis::ErrorKind::TryAgain
                            | redis::ErrorKind::ClusterDown
                            | redis::ErrorKind::MasterDown
                            | redis::ErrorKind::NoScriptError
                            | redis::ErrorKind::ReadOnly
                    ) =>
            {
                Retry::Transient
            }
            Error::Redis(_) | Error::Decode { .. } => Retry::Permanent,
        }
    }
}

/// The hash field of a partition's shard.
pub fn field(partition: i32) -> String {
    format!("p{partition}")
}
