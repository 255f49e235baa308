//! The asynchronous reader of the online API.

use std::collections::BTreeMap;
use std::time::Duration;

use quiver_features::EntityShards;
use redis::AsyncCommands as _;

use crate::Result;
use crate::encoding::parse_hash;
use crate::keys::Keys;

/// The async reader used by the API: one multiplexed connection serves concurrent requests,
/// and it reconnects by itself after Redis restarts (requests made while Redis is down fail
/// with a transient error, which the API answers with 503).
#[derive(Clone)]
pub struct OnlineReader {
    conn: redis::aio::ConnectionManager,
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
    /// Connects, failing after `timeout`.
    pub async fn connect(url: &str, prefix: &str, timeout: Duration) -> Result<Self> {
        let client = redis::Client::open(url)?;
        // One quick retry per request: while Redis is down a request fails in about the
        // connect timeout rather than waiting through a long backoff.
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(Duration::from_secs(5))
            .set_number_of_retries(1)
            .set_max_delay(100);
        let conn = redis::aio::ConnectionManager::new_with_config(client, config).await?;
        Ok(Self {
            conn,
            keys: Keys::new(prefix),
        })
    }

    /// The shards of one entity (none: unknown entity).
    pub async fn fetch(&self, view: &str, entity: &str) -> Result<EntityShards> {
        let key = self.keys.entity(view, entity);
        let raw: BTreeMap<String, Vec<u8>> = self.conn.clone().hgetall(&key).await?;
        Ok(EntityShards::from_shards(parse_hash(&key, raw)?))
    }

    /// The shards of many entities, in one round trip.
    pub async fn fetch_many(&self, view: &str, entities: &[String]) -> Result<Vec<EntityShards>> {
        let keys: Vec<String> = entities.iter().map(|e| self.keys.entity(view, e)).collect();
        let mut pipe = redis::pipe();
        for key in &keys {
            pipe.hgetall(key);
        }
        let raw: Vec<BTreeMap<String, Vec<u8>>> = pipe.query_async(&mut self.conn.clone()).await?;
        keys.iter()
            .zip(raw)
            .map(|(key, hash)| Ok(EntityShards::from_shards(parse_hash(key, hash)?)))
            .collect()
    }

    /// `PING`.
    pub async fn ping(&self) -> Result<()> {
        redis::cmd("PING")
            .query_async::<String>(&mut self.conn.clone())
            .await?;
        Ok(())
    }
}
