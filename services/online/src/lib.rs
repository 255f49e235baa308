//! The online store in Redis.
//!
//! Layout: one hash per (view, entity) at `<prefix>:<view>:<entity>`, with one field per source
//! partition, `p<partition>`, holding that partition's [`Shard`]: the entity's tile state built
//! from the events of that partition, and the offset of the last event applied. Only the
//! consumer that owns a partition writes its field, so several ingest processes never overwrite
//! each other, and a replayed event (offset ≤ `applied_offset`) is skipped, which makes writes
//! idempotent. A read fetches the whole hash in one round trip and merges the shards in
//! partition order ([`usable_shards`] and `ViewPlan::read_shards`); windows are finalised at read time, so they slide with
//! the clock. Each write refreshes the view's TTL.

use std::collections::BTreeMap;
use std::time::Duration;

use quiver_features::{EntityState, ViewPlan};
use redis::AsyncCommands as _;
use serde::{Deserialize, Serialize};

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

/// Encoding version prefixed to every shard.
const VERSION: u8 = 1;

/// One partition's share of an entity's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Shard {
    /// Offset of the last source event applied (replays at or below it are skipped).
    pub applied_offset: i64,
    /// The tiles.
    pub state: EntityState,
}

impl Shard {
    /// Compact binary encoding (version byte + postcard).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![VERSION];
        // Serializing plain data into a Vec cannot fail.
        if let Ok(bytes) = postcard::to_allocvec(self) {
            out.extend_from_slice(&bytes);
        }
        out
    }

    /// Decodes [`Shard::encode`]'s output.
    pub fn decode(key: &str, field: &str, bytes: &[u8]) -> Result<Self> {
        let err = |detail: String| Error::Decode {
            key: key.to_string(),
            field: field.to_string(),
            detail,
        };
        match bytes.split_first() {
            Some((&VERSION, rest)) => postcard::from_bytes(rest).map_err(|e| err(e.to_string())),
            Some((v, _)) => Err(err(format!("unknown encoding version {v}"))),
            None => Err(err("empty value".to_string())),
        }
    }
}

/// Shards of one entity, by partition.
pub type Shards = BTreeMap<i32, Shard>;

/// Key naming.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix`.
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
        }
    }

    /// The hash of one entity of one view.
    pub fn entity(&self, view: &str, entity: &str) -> String {
        format!("{}:{view}:{entity}", self.prefix)
    }

    /// The keys of `entities` and one pipeline fetching all their hashes.
    fn hgetall(&self, view: &str, entities: &[impl AsRef<str>]) -> (Vec<String>, redis::Pipeline) {
        let keys: Vec<String> = entities
            .iter()
            .map(|e| self.entity(view, e.as_ref()))
            .collect();
        let mut pipe = redis::pipe();
        for key in &keys {
            pipe.hgetall(key);
        }
        (keys, pipe)
    }
}

/// The hash field of a partition.
pub fn field(partition: i32) -> String {
    format!("p{partition}")
}

/// Parses the replies of [`Keys::hgetall`], one per key.
fn parse_hashes(keys: &[String], raw: Vec<BTreeMap<String, Vec<u8>>>) -> Result<Vec<Shards>> {
    keys.iter()
        .zip(raw)
        .map(|(key, raw)| parse_hash(key, raw))
        .collect()
}

fn parse_hash(key: &str, raw: BTreeMap<String, Vec<u8>>) -> Result<Shards> {
    let mut shards = Shards::new();
    for (name, bytes) in raw {
        let Some(partition) = name.strip_prefix('p').and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        shards.insert(partition, Shard::decode(key, &name, &bytes)?);
    }
    Ok(shards)
}

/// An entity's shards usable by `plan` (written under the current definition of the view), in
/// partition order, and how many were not.
pub fn usable_shards<'a>(plan: &ViewPlan, shards: &'a Shards) -> (Vec<&'a EntityState>, usize) {
    let states: Vec<&EntityState> = shards
        .values()
        .map(|s| &s.state)
        .filter(|s| plan.fits(s))
        .collect();
    let stale = shards.len() - states.len();
    (states, stale)
}

/// The synchronous client used by the ingest thread.
pub struct OnlineWriter {
    conn: redis::Connection,
    keys: Keys,
}

impl std::fmt::Debug for OnlineWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnlineWriter")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl OnlineWriter {
    /// Connects, failing after `timeout`.
    pub fn connect(url: &str, prefix: &str, timeout: Duration) -> Result<Self> {
        let client = redis::Client::open(url)?;
        let mut conn = client.get_connection_with_timeout(timeout)?;
        conn.set_read_timeout(Some(Duration::from_secs(30)))?;
        conn.set_write_timeout(Some(Duration::from_secs(30)))?;
        redis::cmd("PING").query::<String>(&mut conn)?;
        Ok(Self {
            conn,
            keys: Keys::new(prefix),
        })
    }

    /// Fetches the shards of many entities of a view in one round trip.
    pub fn fetch(&mut self, view: &str, entities: &[&str]) -> Result<Vec<Shards>> {
        if entities.is_empty() {
            return Ok(Vec::new());
        }
        let (keys, pipe) = self.keys.hgetall(view, entities);
        parse_hashes(&keys, pipe.query(&mut self.conn)?)
    }

    /// Deletes every entity of a view (its source topic was re-created, so the offsets its
    /// shards recorded mean nothing any more). Returns how many keys were removed.
    pub fn clear_view(&mut self, view: &str) -> Result<u64> {
        let pattern = format!("{}:{view}:*", self.keys.prefix);
        let mut cursor: u64 = 0;
        let mut removed = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query(&mut self.conn)?;
            if !keys.is_empty() {
                removed += redis::cmd("UNLINK")
                    .arg(&keys)
                    .query::<u64>(&mut self.conn)?;
            }
            if next == 0 {
                return Ok(removed);
            }
            cursor = next;
        }
    }

    /// Records each prediction `(key, json)` unless one is already recorded for its key
    /// (`SET NX GET`, one round trip); returns, per key, the prediction recorded earlier — the
    /// one to re-emit, so a replay never emits a second, different decision.
    pub fn claim(
        &mut self,
        claims: &[(String, String)],
        ttl: Duration,
    ) -> Result<Vec<Option<String>>> {
        if claims.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for (key, json) in claims {
            pipe.cmd("SET")
                .arg(format!("{}:prediction:{key}", self.keys.prefix))
                .arg(json)
                .arg("NX")
                .arg("GET")
                .arg("EX")
                .arg(ttl.as_secs().max(1));
        }
        Ok(pipe.query(&mut self.conn)?)
    }

    /// Writes shards (entity, partition, shard) and refreshes the TTL, in one round trip.
    pub fn write(
        &mut self,
        view: &str,
        ttl: Duration,
        shards: &[(&str, i32, &Shard)],
    ) -> Result<()> {
        if shards.is_empty() {
            return Ok(());
        }
        let ttl = ttl.as_secs().max(1) as i64;
        let mut pipe = redis::pipe();
        for (entity, partition, shard) in shards {
            let key = self.keys.entity(view, entity);
            pipe.hset(&key, field(*partition), shard.encode()).ignore();
            pipe.expire(&key, ttl).ignore();
        }
        pipe.query::<()>(&mut self.conn)?;
        Ok(())
    }
}

/// The async reader used by the API.
#[derive(Clone)]
pub struct OnlineReader {
    conn: redis::aio::MultiplexedConnection,
    keys: Keys,
}

impl std::fmt::Debug for OnlineReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnlineReader")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl OnlineReader {
    /// Connects (multiplexed: one connection serves concurrent requests).
    pub async fn connect(url: &str, prefix: &str, timeout: Duration) -> Result<Self> {
        let client = redis::Client::open(url)?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(Duration::from_secs(5));
        let conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        Ok(Self {
            conn,
            keys: Keys::new(prefix),
        })
    }

    /// The shards of one entity (empty: unknown entity).
    pub async fn fetch(&self, view: &str, entity: &str) -> Result<Shards> {
        let key = self.keys.entity(view, entity);
        let raw: BTreeMap<String, Vec<u8>> = self.conn.clone().hgetall(&key).await?;
        parse_hash(&key, raw)
    }

    /// The shards of many entities, in one round trip.
    pub async fn fetch_many(&self, view: &str, entities: &[String]) -> Result<Vec<Shards>> {
        let (keys, pipe) = self.keys.hgetall(view, entities);
        parse_hashes(&keys, pipe.query_async(&mut self.conn.clone()).await?)
    }

    /// `PING`.
    pub async fn ping(&self) -> Result<()> {
        redis::cmd("PING")
            .query_async::<String>(&mut self.conn.clone())
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use quiver_core::Catalog;
    use quiver_features::{Value, ViewCatalog};

    use super::*;

    #[test]
    fn shards_of_every_operation_round_trip() {
        let catalog = Catalog::from_texts([(
            "t.toml",
            "name = \"t\"\nevent_time = \"ts\"\nkeys = [\"k\"]\n[fields]\nk = \"string\"\nx = \"float\"\ns = \"string\"\nts = \"timestamp\"\n",
        )])
        .unwrap();
        let mut view = String::from("name = \"v\"\nentity = \"k\"\nsource = \"t\"\n");
        for (name, op, column) in [
            ("a", "count", None),
            ("b", "sum", Some("x")),
            ("c", "mean", Some("x")),
            ("d", "min", Some("x")),
            ("e", "max", Some("x")),
            ("f", "last", Some("s")),
            ("g", "distinct_count", Some("s")),
            ("h", "stddev", Some("x")),
        ] {
            view.push_str(&format!(
                "[[features]]\nname = \"{name}\"\nop = \"{op}\"\nwindow = \"1h\"\n"
            ));
            if let Some(c) = column {
                view.push_str(&format!("column = \"{c}\"\n"));
            }
        }
        let views = ViewCatalog::from_texts([("v.toml", view.as_str())], &catalog).unwrap();
        let plan = ViewPlan::new(Arc::clone(&views.views[0]));
        let mut state = plan.new_state();
        let mut scratch = Vec::new();
        for i in 0..5 {
            let x = Value::Float(i as f64);
            let s = Value::Str(format!("s{i}"));
            let inputs = [
                Value::Null,
                x.clone(),
                x.clone(),
                x.clone(),
                x.clone(),
                s.clone(),
                s,
                x,
            ];
            plan.apply(&mut state, 1_000_000 * i, (0, i), &inputs, &mut scratch);
        }
        let shard = Shard {
            applied_offset: 4,
            state,
        };
        let decoded = Shard::decode("k", "p0", &shard.encode()).unwrap();
        assert_eq!(decoded, shard);
        assert!(Shard::decode("k", "p0", &[9, 1, 2]).is_err());
    }
}
