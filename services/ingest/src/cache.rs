//! The worker's state cache: per view, the shards of recently seen entities, kept between
//! batches so the hot path never waits for Redis for an entity it has seen.
//!
//! An entity's shards of the partitions this member owns are authoritative in memory (Redis
//! holds them as of the last durable flush); shards of partitions it does not own are copies
//! read from Redis, refreshed when older than the foreign TTL. After any change of ownership an
//! entity is re-read once on its next use: shards of a partition owned since before the last
//! read stay as they are in memory, the others are taken from Redis.
//!
//! The cache is an LRU bounded by `ingest.state_cache_entities` per view. An entity is evicted
//! only when every shard it holds of an owned partition is durable (its applied offset at or
//! below what that partition has flushed), so an eviction never loses an update; Redis is the
//! backing store a miss reads from.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quiver_features::{EntityShards, Shard};

/// How long a copy of another member's shards is used before it is read again.
pub(crate) const FOREIGN_TTL: Duration = Duration::from_millis(500);

/// Which partitions of a source this member owns, and since when.
#[derive(Debug, Default)]
pub(crate) struct Ownership {
    /// Owned partition → the epoch it became owned (or was reset) at.
    owned: BTreeMap<i32, u64>,
    /// Bumped by every change.
    epoch: u64,
    /// The source topic's partition count, when known.
    partitions: Option<usize>,
}

impl Ownership {
    pub(crate) fn set_partition_count(&mut self, n: usize) {
        self.partitions = Some(n);
    }

    /// `partition` is owned from now on (newly, or again after a reset): its shards are read
    /// from Redis again.
    pub(crate) fn own(&mut self, partition: i32) {
        self.epoch += 1;
        self.owned.insert(partition, self.epoch);
    }

    /// `partition` is not owned any more.
    pub(crate) fn disown(&mut self, partition: i32) {
        self.epoch += 1;
        self.owned.remove(&partition);
    }

    pub(crate) fn owns(&self, partition: i32) -> bool {
        self.owned.contains_key(&partition)
    }

    /// Whether every partition of the source is owned here (then no shard is foreign).
    fn owns_all(&self) -> bool {
        self.partitions.is_some_and(|n| self.owned.len() >= n)
    }
}

/// One cached entity.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) shards: EntityShards,
    /// The ownership epoch it was last read from Redis at.
    synced: u64,
    /// When the other members' shards were last read.
    read_at: Instant,
    /// Recency, for eviction.
    used: u64,
}

/// One view's cache.
#[derive(Debug)]
pub(crate) struct ViewCache {
    entries: HashMap<String, Entry>,
    bound: usize,
    clock: u64,
}

impl ViewCache {
    pub(crate) fn new(bound: usize) -> Self {
        Self {
            entries: HashMap::new(),
            bound: bound.max(1),
            clock: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Of `keys` (deduplicated, in first-seen order), those that must be read from Redis
    /// before events of partition `reader` use them: unknown, read before the last change of
    /// ownership, holding copies of other members' shards older than [`FOREIGN_TTL`], or holding
    /// a shard of another owned partition that is not durable and whose durable version is not
    /// known here (`durable(q)`: the last offset of partition `q` flushed).
    pub(crate) fn to_read<'a>(
        &self,
        keys: impl IntoIterator<Item = &'a str>,
        own: &Ownership,
        now: Instant,
        reader: i32,
        durable: impl Fn(i32) -> i64,
    ) -> Vec<&'a str> {
        let mut seen = std::collections::HashSet::new();
        keys.into_iter()
            .filter(|k| seen.insert(*k))
            .filter(|k| match self.entries.get(*k) {
                None => true,
                Some(e) => {
                    e.synced < own.epoch
                        || (!own.owns_all() && now.duration_since(e.read_at) >= FOREIGN_TTL)
                        || e.shards.iter().any(|(q, s)| {
                            q != reader
                                && own.owns(q)
                                && !e.shards.is_published(q)
                                && s.applied_offset > durable(q)
                        })
                }
            })
            .collect()
    }

    /// Publishes the durable versions of `partition`'s shards just flushed, for the entities
    /// other partitions read (those with shards in several partitions).
    pub(crate) fn publish(&mut self, partition: i32, flushed: Vec<(String, Arc<Shard>)>) {
        for (key, shard) in flushed {
            if let Some(entry) = self.entries.get_mut(&key)
                && entry.shards.len() > 1
            {
                entry.shards.publish(partition, Some(shard));
            }
        }
    }

    /// Merges what Redis holds for `key` (shards by partition) into the cache: an owned
    /// partition's shard held since before this entry's last read stays as it is in memory,
    /// and Redis's version of it (the durable one) is what the other partitions read; every
    /// other shard is Redis's.
    pub(crate) fn load(
        &mut self,
        key: &str,
        fetched: Vec<(i32, Shard)>,
        own: &Ownership,
        now: Instant,
        durable: impl Fn(i32) -> i64,
    ) {
        let synced = own.epoch;
        let entry = self
            .entries
            .entry(key.to_string())
            .or_insert_with(|| Entry {
                shards: EntityShards::new(),
                synced: 0,
                read_at: now,
                used: 0,
            });
        let previous = entry.synced;
        let keep = |p: i32| own.owned.get(&p).is_some_and(|since| *since <= previous);
        let held: Vec<i32> = entry.shards.iter().map(|(p, _)| p).collect();
        for p in held {
            if !keep(p) {
                entry.shards.remove(p);
            }
        }
        // Kept shards that moved past what is durable: the others read Redis's version.
        let mut dirty: Vec<(i32, Option<Arc<Shard>>)> = entry
            .shards
            .iter()
            .filter(|(p, s)| s.applied_offset > durable(*p))
            .map(|(p, _)| (p, None))
            .collect();
        for (p, shard) in fetched {
            if let Some((_, version)) = dirty.iter_mut().find(|(q, _)| *q == p) {
                *version = Some(Arc::new(shard));
            } else if entry.shards.get(p).is_none() {
                entry.shards.insert(p, shard);
            }
        }
        for (p, version) in dirty {
            entry.shards.publish(p, version);
        }
        entry.synced = synced;
        entry.read_at = now;
    }

    /// The entity, marked as just used; `None` if it was never loaded.
    pub(crate) fn get_mut(&mut self, key: &str) -> Option<&mut Entry> {
        self.clock += 1;
        let clock = self.clock;
        let entry = self.entries.get_mut(key)?;
        entry.used = clock;
        Some(entry)
    }

    /// The shard of `partition` of a cached entity.
    #[cfg(test)]
    pub(crate) fn shard(&self, key: &str, partition: i32) -> Option<&Shard> {
        self.entries.get(key)?.shards.get(partition)
    }

    /// A snapshot of the shard of `partition` of a cached entity (shared until it changes).
    pub(crate) fn snapshot(&self, key: &str, partition: i32) -> Option<Arc<Shard>> {
        self.entries.get(key)?.shards.snapshot(partition)
    }

    /// Evicts least recently used entities down to 90 % of the bound, among those whose owned
    /// shards are all durable (`flushed(p)`: the highest offset of partition `p` flushed, for
    /// an owned `p`). Returns how many went.
    pub(crate) fn evict(&mut self, flushed: impl Fn(i32) -> Option<i64>) -> usize {
        if self.entries.len() <= self.bound {
            return 0;
        }
        let target = self.bound - self.bound / 10;
        let mut clean: Vec<(u64, &String)> = self
            .entries
            .iter()
            .filter(|(_, e)| {
                e.shards
                    .iter()
                    .all(|(p, s)| flushed(p).is_none_or(|f| s.applied_offset <= f))
            })
            .map(|(k, e)| (e.used, k))
            .collect();
        let excess = (self.entries.len() - target).min(clean.len());
        if excess == 0 {
            return 0;
        }
        clean.select_nth_unstable_by_key(excess - 1, |(used, _)| *used);
        let victims: Vec<String> = clean[..excess].iter().map(|(_, k)| (*k).clone()).collect();
        for k in &victims {
            self.entries.remove(k);
        }
        victims.len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use quiver_core::Catalog;
    use quiver_features::{Value, ViewCatalog, ViewPlan};

    use super::*;

    fn plan() -> ViewPlan {
        let catalog = Catalog::from_texts([(
            "t.toml",
            "name = \"t\"\nevent_time = \"ts\"\nkeys = [\"k\"]\n[fields]\nk = \"string\"\nts = \"timestamp\"\n",
        )])
        .unwrap();
        let views = ViewCatalog::from_texts(
            [(
                "v.toml",
                "name = \"v\"\nentity = \"k\"\nsource = \"t\"\n[[features]]\nname = \"n\"\nop = \"count\"\nwindow = \"lifetime\"\n",
            )],
            &catalog,
        )
        .unwrap();
        ViewPlan::new(Arc::clone(&views.views[0]))
    }

    fn shard(plan: &ViewPlan, partition: i32, events: i64) -> Shard {
        let mut s = Shard::empty(plan);
        for o in 0..events {
            plan.apply(
                &mut s.state,
                o,
                (partition, o),
                &[Value::Null],
                &mut Vec::new(),
            );
            s.applied_offset = o;
        }
        s
    }

    #[test]
    fn owned_shards_stay_in_memory_and_foreign_ones_follow_redis() {
        let plan = plan();
        let now = Instant::now();
        let mut own = Ownership::default();
        own.set_partition_count(2);
        own.own(0);
        let mut cache = ViewCache::new(10);
        let clean = |_: i32| i64::MAX;
        assert_eq!(cache.to_read(["a", "a"], &own, now, 0, clean), vec!["a"]);
        cache.load(
            "a",
            vec![(0, shard(&plan, 0, 2)), (1, shard(&plan, 1, 3))],
            &own,
            now,
            clean,
        );
        assert!(cache.to_read(["a"], &own, now, 0, clean).is_empty());
        // The owned shard moves on in memory.
        let entry = cache.get_mut("a").unwrap();
        entry
            .shards
            .apply(&plan, 0, 5, 5, &[Value::Null], &mut Vec::new());
        // Later, Redis has a newer copy of partition 1 and an older one of partition 0.
        let later = now + FOREIGN_TTL;
        assert_eq!(cache.to_read(["a"], &own, later, 0, clean), vec!["a"]);
        cache.load(
            "a",
            vec![(0, shard(&plan, 0, 2)), (1, shard(&plan, 1, 9))],
            &own,
            later,
            clean,
        );
        assert_eq!(cache.shard("a", 0).unwrap().applied_offset, 5);
        assert_eq!(cache.shard("a", 1).unwrap().applied_offset, 8);
        // Partition 1 becomes owned: it is read from Redis once, then kept.
        own.own(1);
        assert_eq!(cache.to_read(["a"], &own, later, 0, clean), vec!["a"]);
        cache.load(
            "a",
            vec![(0, shard(&plan, 0, 2)), (1, shard(&plan, 1, 10))],
            &own,
            later,
            clean,
        );
        assert_eq!(cache.shard("a", 0).unwrap().applied_offset, 5);
        assert_eq!(cache.shard("a", 1).unwrap().applied_offset, 9);
        let all = later + FOREIGN_TTL;
        assert!(
            cache.to_read(["a"], &own, all, 1, clean).is_empty(),
            "all owned"
        );
        // Partition 0's shard is past what is durable (offset 1) and not published: reading it
        // for partition 1 needs Redis's version, which the other partitions then see.
        let durable = |q: i32| if q == 0 { 1 } else { 9 };
        assert_eq!(cache.to_read(["a"], &own, all, 1, durable), vec!["a"]);
        assert!(cache.to_read(["a"], &own, all, 0, durable).is_empty());
        cache.load(
            "a",
            vec![(0, shard(&plan, 0, 2)), (1, shard(&plan, 1, 10))],
            &own,
            all,
            durable,
        );
        assert!(cache.to_read(["a"], &own, all, 1, durable).is_empty());
        let entry = cache.get_mut("a").unwrap();
        assert_eq!(
            entry.shards.clock(1)[&0],
            1,
            "partition 1 reads the durable version"
        );
        assert_eq!(entry.shards.applied_offset(0), 5);
        // Partition 0 is reset: its shard is taken from Redis again.
        own.own(0);
        cache.load(
            "a",
            vec![(0, shard(&plan, 0, 2)), (1, shard(&plan, 1, 10))],
            &own,
            later,
            clean,
        );
        assert_eq!(cache.shard("a", 0).unwrap().applied_offset, 1);
    }

    #[test]
    fn eviction_takes_the_least_recently_used_durable_entities_only() {
        let plan = plan();
        let now = Instant::now();
        let mut own = Ownership::default();
        own.own(0);
        let mut cache = ViewCache::new(10);
        for i in 0..14 {
            let key = format!("e{i}");
            cache.load(&key, vec![(0, shard(&plan, 0, i + 1))], &own, now, |_| {
                i64::MAX
            });
            cache.get_mut(&key);
        }
        // e0..e13 applied offsets 0..13; partition 0 flushed through offset 9: e10..e13 dirty.
        cache.get_mut("e0");
        assert_eq!(cache.evict(|p| (p == 0).then_some(9)), 5);
        assert_eq!(cache.len(), 9);
        for kept in ["e0", "e10", "e11", "e12", "e13"] {
            assert!(cache.shard(kept, 0).is_some(), "{kept} kept");
        }
        assert_eq!(cache.evict(|_| Some(100)), 0, "under the bound");
    }
}
