//! The synchronous client of the streaming worker: shard reads and conditional writes, and
//! claims. It reconnects by itself: a failed connection is dropped and the next call opens a
//! new one (and loads the scripts again), so a Redis restart costs the calls made while it was
//! down, which fail with a transient error the caller retries.

use std::collections::BTreeMap;
use std::time::Duration;

use quiver_features::Shard;
use redis::{Connection, RedisResult};

use crate::Result;
use crate::encoding::{Fetched, encode, split_hash};
use crate::keys::Keys;
use crate::scripts::{ADVANCE_APPLIED, CLAIM, RELEASE_CLAIMS, WRITE_SHARDS};

/// Keys per `EVALSHA` of a shard write. Redis runs a script to its end before it serves anyone
/// else, and a 512-key write was seen taking 11.5 ms of Redis time (SLOWLOG) while the worker's
/// hot path waited behind it for a claim; 64 keys keep each call near 1 ms.
const KEYS_PER_SCRIPT: usize = 64;

/// What a shard write did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardWrites {
    /// Shards written.
    pub written: usize,
    /// Shards refused because Redis already held a later one (a newer owner wrote it).
    pub refused: usize,
}

/// What Redis said when a flush moved a partition's applied watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Moved (or already past: another member got further).
    Advanced,
    /// Redis holds less than the writer last saw there (`None`: nothing at all): it lost
    /// acknowledged writes, and nothing was written.
    Behind {
        /// What it holds.
        held: Option<i64>,
    },
}

/// The answer to a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Recorded: the caller's decisions stand.
    Recorded,
    /// Not recorded: these claims, recorded first, overlap the range (their opaque bytes).
    Clashed(Vec<Vec<u8>>),
    /// Not recorded: the range starts below offsets another member committed (and whose claims
    /// it deleted). The caller lost the partition and must not decide these offsets.
    Fenced,
}

/// How a release moves a partition's claim floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Floor {
    /// After a commit: only upwards.
    Raise,
    /// At an assignment, to the group's committed offset, even downwards (the offsets went
    /// back: a reset, a recreated topic).
    Set,
}

/// One recorded claim: an offset range and its opaque bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedRange {
    /// First offset.
    pub first: i64,
    /// Last offset (inclusive).
    pub last: i64,
    /// What was recorded.
    pub bytes: Vec<u8>,
}

/// The worker's Redis client.
pub struct OnlineStore {
    client: redis::Client,
    conn: Option<Connection>,
    keys: Keys,
    connect_timeout: Duration,
    command_timeout: Duration,
    write_shards: redis::Script,
    claim: redis::Script,
    release_claims: redis::Script,
    advance_applied: redis::Script,
}

impl std::fmt::Debug for OnlineStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnlineStore")
            .field("keys", &self.keys)
            .field("connected", &self.conn.is_some())
            .finish_non_exhaustive()
    }
}

impl OnlineStore {
    /// Connects (failing after `connect_timeout`); every command then waits at most
    /// `command_timeout` for its reply.
    pub fn connect(
        url: &str,
        prefix: &str,
        connect_timeout: Duration,
        command_timeout: Duration,
    ) -> Result<Self> {
        let mut store = Self {
            client: redis::Client::open(url)?,
            conn: None,
            keys: Keys::new(prefix),
            connect_timeout,
            command_timeout,
            write_shards: redis::Script::new(WRITE_SHARDS),
            claim: redis::Script::new(CLAIM),
            release_claims: redis::Script::new(RELEASE_CLAIMS),
            advance_applied: redis::Script::new(ADVANCE_APPLIED),
        };
        store.ping()?;
        Ok(store)
    }

    /// The key layout.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    fn open(&self) -> RedisResult<Connection> {
        let mut conn = self
            .client
            .get_connection_with_timeout(self.connect_timeout)?;
        conn.set_read_timeout(Some(self.command_timeout))?;
        conn.set_write_timeout(Some(self.command_timeout))?;
        self.load_scripts(&mut conn)?;
        Ok(conn)
    }

    fn load_scripts(&self, conn: &mut Connection) -> RedisResult<()> {
        for script in [
            &self.write_shards,
            &self.claim,
            &self.release_claims,
            &self.advance_applied,
        ] {
            script.load(conn)?;
        }
        Ok(())
    }

    /// Runs `op` on a live connection: opens one if needed, reloads the scripts once if Redis
    /// forgot them, and drops the connection on any error that may have left it unusable.
    fn run<T>(&mut self, mut op: impl FnMut(&mut Connection) -> RedisResult<T>) -> Result<T> {
        let mut reloaded = false;
        loop {
            let conn = match self.conn.take() {
                Some(conn) => conn,
                None => self.open()?,
            };
            let mut conn = conn;
            match op(&mut conn) {
                Ok(v) => {
                    self.conn = Some(conn);
                    return Ok(v);
                }
                Err(e) if e.kind() == redis::ErrorKind::NoScriptError && !reloaded => {
                    reloaded = true;
                    self.load_scripts(&mut conn)?;
                    self.conn = Some(conn);
                }
                Err(e) => {
                    // A reply error leaves the connection in sync; anything else may not.
                    if e.kind() == redis::ErrorKind::ResponseError && !e.is_timeout() {
                        self.conn = Some(conn);
                    }
                    return Err(e.into());
                }
            }
        }
    }

    /// `PING`.
    pub fn ping(&mut self) -> Result<()> {
        self.run(|c| redis::cmd("PING").query::<String>(c))?;
        Ok(())
    }

    /// The shards of many entities of a view, in one round trip, each in partition order (a
    /// shard that does not decode is returned apart, with why).
    pub fn fetch(&mut self, view: &str, entities: &[&str]) -> Result<Vec<Fetched>> {
        if entities.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = entities.iter().map(|e| self.keys.entity(view, e)).collect();
        let mut pipe = redis::pipe();
        for key in &keys {
            pipe.hgetall(key);
        }
        let raw: Vec<BTreeMap<String, Vec<u8>>> = self.run(|c| pipe.query(c))?;
        Ok(keys
            .iter()
            .zip(raw)
            .map(|(key, hash)| split_hash(key, hash))
            .collect())
    }

    /// Writes one partition's shard of many entities with the view's TTL, [`KEYS_PER_SCRIPT`]
    /// per round trip; a shard whose stored applied offset is later is left as it is (see
    /// [`crate::scripts::WRITE_SHARDS`]).
    pub fn write_shards(
        &mut self,
        view: &str,
        partition: i32,
        ttl: Duration,
        shards: &[(&str, &Shard)],
    ) -> Result<ShardWrites> {
        if shards.is_empty() {
            return Ok(ShardWrites::default());
        }
        let ttl_ms = ttl.as_millis().max(1) as u64;
        let hash = self.write_shards.get_hash().to_string();
        let mut refused = 0;
        // One call per round trip (not one pipeline): other clients are served in between.
        for chunk in shards.chunks(KEYS_PER_SCRIPT) {
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(&hash)
                .arg(chunk.len())
                .arg(
                    chunk
                        .iter()
                        .map(|(e, _)| self.keys.entity(view, e))
                        .collect::<Vec<_>>(),
                )
                .arg(ttl_ms)
                .arg(partition);
            for (_, shard) in chunk {
                cmd.arg(shard.applied_offset).arg(encode(shard));
            }
            let indexes: Vec<i64> = self.run(|c| cmd.query(c))?;
            refused += indexes.len();
        }
        Ok(ShardWrites {
            written: shards.len() - refused,
            refused,
        })
    }

    /// How far each view's shards of `partition` are written, as recorded by
    /// [`Self::advance_applied`] (`None`: never recorded), in one round trip.
    pub fn applied(&mut self, views: &[&str], partition: i32) -> Result<Vec<Option<i64>>> {
        let mut pipe = redis::pipe();
        for view in views {
            pipe.hget(self.keys.applied(view), partition);
        }
        let held: Vec<Option<i64>> = self.run(|c| pipe.query(c))?;
        Ok(held)
    }

    /// Records that the shards of `partition` of a view are written through offset `last`,
    /// after checking that Redis still holds `expected` (what this writer last recorded or
    /// read there; `None`: nothing known). See [`crate::scripts::ADVANCE_APPLIED`].
    pub fn advance_applied(
        &mut self,
        view: &str,
        partition: i32,
        last: i64,
        expected: Option<i64>,
    ) -> Result<Applied> {
        let key = self.keys.applied(view);
        let hash = self.advance_applied.get_hash().to_string();
        let (behind, held): (i64, i64) = self.run(|c| {
            redis::cmd("EVALSHA")
                .arg(&hash)
                .arg(1)
                .arg(&key)
                .arg(partition)
                .arg(last)
                .arg(expected.unwrap_or(-1))
                .query(c)
        })?;
        Ok(if behind == 1 {
            Applied::Behind {
                held: (held >= 0).then_some(held),
            }
        } else {
            Applied::Advanced
        })
    }

    /// Records `bytes` as the claim of offsets `first..=last` of a source partition, unless a
    /// recorded claim overlaps the range or the range starts below the partition's committed
    /// floor (see [`Claim`]).
    pub fn claim(
        &mut self,
        source: &str,
        partition: i32,
        (first, last): (i64, i64),
        bytes: &[u8],
        ttl: Duration,
    ) -> Result<Claim> {
        let key = self.keys.claims(source, partition);
        let hash = self.claim.get_hash().to_string();
        let ttl_ms = ttl.as_millis().max(1) as u64;
        let (status, clashes): (i64, Vec<Vec<u8>>) = self.run(|c| {
            redis::cmd("EVALSHA")
                .arg(&hash)
                .arg(1)
                .arg(&key)
                .arg(first)
                .arg(last)
                .arg(bytes)
                .arg(ttl_ms)
                .query(c)
        })?;
        Ok(match status {
            0 => Claim::Recorded,
            2 => Claim::Fenced,
            _ => Claim::Clashed(clashes),
        })
    }

    /// Every claim recorded for a source partition, by first offset.
    pub fn claims(&mut self, source: &str, partition: i32) -> Result<Vec<ClaimedRange>> {
        let key = self.keys.claims(source, partition);
        let raw: BTreeMap<String, Vec<u8>> =
            self.run(|c| redis::cmd("HGETALL").arg(&key).query(c))?;
        let mut out: Vec<ClaimedRange> = raw
            .into_iter()
            .filter_map(|(field, bytes)| {
                let (first, last) = field.split_once(':')?;
                Some(ClaimedRange {
                    first: first.parse().ok()?,
                    last: last.parse().ok()?,
                    bytes,
                })
            })
            .collect();
        out.sort_by_key(|c| c.first);
        Ok(out)
    }

    /// Deletes claims of a source partition whose offsets are committed, and moves its floor
    /// to `committed_next` (see [`Floor`]): from then on a claim below it is refused
    /// ([`Claim::Fenced`]). The floor expires with the claims, `ttl` after the last write.
    pub fn release_claims(
        &mut self,
        source: &str,
        partition: i32,
        (committed_next, floor): (i64, Floor),
        ranges: &[(i64, i64)],
        ttl: Duration,
    ) -> Result<()> {
        let key = self.keys.claims(source, partition);
        let hash = self.release_claims.get_hash().to_string();
        let mode = match floor {
            Floor::Raise => "raise",
            Floor::Set => "set",
        };
        let ttl_ms = ttl.as_millis().max(1) as u64;
        let fields: Vec<String> = ranges.iter().map(|(a, b)| format!("{a}:{b}")).collect();
        self.run(|c| {
            redis::cmd("EVALSHA")
                .arg(&hash)
                .arg(1)
                .arg(&key)
                .arg(committed_next)
                .arg(mode)
                .arg(ttl_ms)
                .arg(&fields)
                .query::<i64>(c)
        })?;
        Ok(())
    }

    /// Deletes every key matching `pattern`; returns how many.
    fn clear(&mut self, pattern: &str) -> Result<u64> {
        let mut cursor: u64 = 0;
        let mut removed = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = self.run(|c| {
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query(c)
            })?;
            if !keys.is_empty() {
                removed += self.run(|c| redis::cmd("UNLINK").arg(&keys).query::<u64>(c))?;
            }
            if next == 0 {
                return Ok(removed);
            }
            cursor = next;
        }
    }

    /// Deletes every entity of a view (its source topic was re-created, so the offsets its
    /// shards recorded mean nothing any more), its definition record and its watermarks. Returns how many
    /// keys were removed.
    pub fn clear_view(&mut self, view: &str) -> Result<u64> {
        let pattern = self.keys.view_pattern(view);
        let records = [self.keys.definition(view), self.keys.applied(view)];
        let removed = self.run(|c| redis::cmd("DEL").arg(&records).query::<u64>(c))?;
        Ok(removed + self.clear(&pattern)?)
    }

    /// The fingerprint of the definition a view's online state was written under, if recorded.
    pub fn definition(&mut self, view: &str) -> Result<Option<u64>> {
        let key = self.keys.definition(view);
        let recorded: Option<String> = self.run(|c| redis::cmd("GET").arg(&key).query(c))?;
        parse_definition(&key, recorded)
    }

    /// Records `fingerprint` as the definition of a view's online state unless one is recorded
    /// already; returns the one recorded before (`None`: this call recorded it).
    pub fn record_definition_once(&mut self, view: &str, fingerprint: u64) -> Result<Option<u64>> {
        let key = self.keys.definition(view);
        let value = definition_text(fingerprint);
        let previous: Option<String> = self.run(|c| {
            redis::cmd("SET")
                .arg(&key)
                .arg(&value)
                .arg("NX")
                .arg("GET")
                .query(c)
        })?;
        parse_definition(&key, previous)
    }

    /// Records `fingerprint` as the definition of a view's online state (after a rebuild).
    pub fn record_definition(&mut self, view: &str, fingerprint: u64) -> Result<()> {
        let key = self.keys.definition(view);
        let value = definition_text(fingerprint);
        self.run(|c| redis::cmd("SET").arg(&key).arg(&value).query::<()>(c))
    }

    /// Deletes every claim of a source (same reason).
    pub fn clear_claims(&mut self, source: &str) -> Result<u64> {
        let pattern = self.keys.claims_pattern(source);
        self.clear(&pattern)
    }
}

/// How a definition fingerprint is recorded: 16 hex digits.
fn definition_text(fingerprint: u64) -> String {
    format!("{fingerprint:016x}")
}

/// A recorded definition fingerprint ([`definition_text`]), if any.
fn parse_definition(key: &str, recorded: Option<String>) -> Result<Option<u64>> {
    recorded
        .map(|text| {
            u64::from_str_radix(&text, 16).map_err(|_| crate::Error::Decode {
                key: key.to_string(),
                field: String::new(),
                detail: format!("`{text}` is not a definition fingerprint"),
            })
        })
        .transpose()
}
