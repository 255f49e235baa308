//! An entity's state split in shards, one per source partition, and the one "vector as of an
//! event" every path computes through ([`EntityShards::vector_as_of`]).
//!
//! Events of one source partition are applied, in offset order, to that partition's shard only;
//! a shard records the offset of the last event it applied, which makes a replay a no-op
//! ([`EntityShards::apply`] returns `None`). An entity whose events span partitions (a merchant
//! when events are keyed by user) has several shards; a read merges them in partition order. The
//! vector as of an event of partition `p` is its own shard right after the event merged with
//! other shards; which offsets of the other partitions it included is its **clock**
//! ([`EntityShards::clock`]), recorded in the feature log so the batch replay can reproduce the
//! vector exactly by advancing those partitions to those offsets first.
//!
//! A shard can also have a **published** version ([`EntityShards::publish`]): what reads from
//! the *other* partitions see instead of the shard itself. The streaming worker publishes the
//! version of each shard that is durable (flushed), so a clock never names an offset that a crash
//! could make it process again — which keeps clocks acyclic, and every logged vector
//! reproducible by the batch replay.
//!
//! The streaming worker, the batch replay and the online API all read through this type; nothing
//! else merges shards.

use std::collections::VecDeque;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::order::Clock;
use crate::state::{Applied, EntityState, ReadCache, ViewPlan};
use crate::value::{AsInput, Value};

/// One partition's share of an entity's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Shard {
    /// Offset of the last source event applied (replays at or below it are skipped).
    pub applied_offset: i64,
    /// The fingerprint of the view definition that wrote it ([`ViewPlan::fingerprint`]), or
    /// [`Shard::LEGACY_DEFINITION`].
    pub definition: u64,
    /// The tiles.
    pub state: EntityState,
}

impl Shard {
    /// The definition of shards written before fingerprints existed: read if their layout fits.
    pub const LEGACY_DEFINITION: u64 = 0;

    /// A shard with no event.
    pub fn empty(plan: &ViewPlan) -> Self {
        Self {
            applied_offset: -1,
            definition: plan.fingerprint(),
            state: plan.new_state(),
        }
    }

    /// Whether this shard was written under another definition of `plan`'s view (a legacy
    /// shard, written before fingerprints existed, is not known to be).
    pub fn of_other_definition(&self, plan: &ViewPlan) -> bool {
        self.definition != plan.fingerprint() && self.definition != Self::LEGACY_DEFINITION
    }

    /// Whether `plan` can read this shard: not of another definition of the view, and of its
    /// layout, every partial well formed.
    pub fn readable_by(&self, plan: &ViewPlan) -> bool {
        !self.of_other_definition(plan) && plan.fits(&self.state)
    }
}

/// How many earlier versions of a shard a versioned replay keeps.
const HISTORY: usize = 8;

/// One partition's share of an entity, and the versions of it other partitions' reads see.
/// Versions share memory with the shard until it changes (copy on write), so a snapshot costs
/// a reference count.
#[derive(Debug, Clone)]
struct Slot {
    partition: i32,
    shard: Arc<Shard>,
    /// What other partitions' reads see instead of `shard` (`Some(None)`: nothing).
    published: Option<Option<Arc<Shard>>>,
    /// Earlier versions, kept by a versioned replay ([`EntityShards::apply_sealed`] with a
    /// seal; boxed: the streaming worker, which keeps none, holds a slot per cached entity).
    history: Option<Box<History>>,
    /// The first offset applied to a slot a replay started empty (`i64::MIN` for one made from
    /// a stored shard): a read that named an earlier offset saw none of this slot's events.
    born: i64,
}

impl Slot {
    fn new(partition: i32, shard: Arc<Shard>) -> Self {
        Self {
            partition,
            shard,
            published: None,
            history: None,
            born: i64::MIN,
        }
    }

    /// The version a read that named `offset` saw: `Some(None)` when it came before every event
    /// of the slot (a replay of a raw store whose older segments retention removed), `None`
    /// when that version is not held.
    fn named(&self, offset: i64) -> Option<Option<&Shard>> {
        if offset < self.born {
            return Some(None);
        }
        self.version_at(offset).map(Some)
    }

    /// What a read for another partition's event sees now.
    fn seen(&self) -> Option<&Shard> {
        match &self.published {
            Some(version) => version.as_deref(),
            None => Some(&self.shard),
        }
    }

    /// The version whose applied offset is `offset`, if kept.
    fn version_at(&self, offset: i64) -> Option<&Shard> {
        std::iter::once(&self.shard)
            .chain(self.published.iter().flatten())
            .chain(self.history.iter().flat_map(|h| h.versions.iter().rev()))
            .map(|s| &**s)
            .find(|s| s.applied_offset == offset)
    }
}

/// The earlier versions of a slot a versioned replay keeps.
#[derive(Debug, Clone)]
struct History {
    /// The seal a version was last kept for.
    sealed: u64,
    /// Oldest first, at most [`HISTORY`].
    versions: VecDeque<Arc<Shard>>,
}

impl History {
    /// No version kept, the slot's state being that of `seal`.
    fn sealed_at(seal: u64) -> Self {
        Self {
            sealed: seal,
            versions: VecDeque::new(),
        }
    }

    /// Keeps `version`, the slot's state as of every seal before `seal`.
    fn keep(&mut self, seal: u64, version: Arc<Shard>) {
        self.sealed = seal;
        self.versions.push_back(version);
        if self.versions.len() > HISTORY {
            self.versions.pop_front();
        }
    }
}

/// An entity's shards in partition order, their published versions, and the memos of its
/// repeated reads.
#[derive(Debug, Clone)]
pub struct EntityShards {
    slots: Vec<Slot>,
    /// One memo per reading partition.
    memos: Vec<Memo>,
    /// The time of the last read that saw the reading shard alone (`i64::MIN`: none). Such an
    /// entity (keyed as its source is, like a card holder) keeps a memo only while its reads
    /// come within one hop of each other: most are read once a hop or less, and a memo would
    /// double their memory for nothing.
    lone_read_at: i64,
}

impl Default for EntityShards {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            memos: Vec::new(),
            lone_read_at: i64::MIN,
        }
    }
}

/// The memo of the reads made for events of one partition.
#[derive(Debug, Clone)]
struct Memo {
    reader: i32,
    /// What the memo was computed over: the reader's partition (offset -1) and each other
    /// partition with the applied offset of the version read. Reading anything else starts a
    /// new memo.
    /// (A `Vec`: it lives with every cached entity, where inline room would cost memory.)
    key: Vec<(i32, i64)>,
    cache: ReadCache,
}

impl EntityShards {
    /// No shard.
    pub fn new() -> Self {
        Self::default()
    }

    /// From `(partition, shard)` pairs in any order.
    pub fn from_shards(shards: impl IntoIterator<Item = (i32, Shard)>) -> Self {
        let mut slots: Vec<Slot> = shards
            .into_iter()
            .map(|(p, s)| Slot::new(p, Arc::new(s)))
            .collect();
        slots.sort_by_key(|s| s.partition);
        slots.dedup_by_key(|s| s.partition);
        Self {
            slots,
            ..Self::default()
        }
    }

    fn position(&self, partition: i32) -> Result<usize, usize> {
        self.slots.binary_search_by_key(&partition, |s| s.partition)
    }

    fn slot(&self, partition: i32) -> Option<&Slot> {
        self.position(partition).ok().map(|i| &self.slots[i])
    }

    /// Whether the entity has no shard.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// How many partitions have a shard.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// The shards, in partition order.
    pub fn iter(&self) -> impl Iterator<Item = (i32, &Shard)> {
        self.slots.iter().map(|s| (s.partition, &*s.shard))
    }

    /// The shard of `partition`.
    pub fn get(&self, partition: i32) -> Option<&Shard> {
        self.slot(partition).map(|s| &*s.shard)
    }

    /// A snapshot of the shard of `partition` as it stands (it shares memory with the shard
    /// until the shard changes).
    pub fn snapshot(&self, partition: i32) -> Option<Arc<Shard>> {
        self.slot(partition).map(|s| Arc::clone(&s.shard))
    }

    /// The offset of the last event of `partition` applied (-1: none).
    pub fn applied_offset(&self, partition: i32) -> i64 {
        self.get(partition).map_or(-1, |s| s.applied_offset)
    }

    /// Sets the shard of `partition` (e.g. as read from the online store); its published
    /// version and history are dropped.
    pub fn insert(&mut self, partition: i32, shard: Shard) {
        let slot = Slot::new(partition, Arc::new(shard));
        match self.position(partition) {
            Ok(i) => self.slots[i] = slot,
            Err(i) => self.slots.insert(i, slot),
        }
        self.memos.clear();
    }

    /// Removes the shard of `partition` (with its published version and history).
    pub fn remove(&mut self, partition: i32) -> Option<Shard> {
        let i = self.position(partition).ok()?;
        self.memos.clear();
        let shard = self.slots.remove(i).shard;
        Some(Arc::unwrap_or_clone(shard))
    }

    /// Makes reads for the other partitions' events see `version` of `partition`'s shard
    /// (`None`: no shard) instead of the shard itself. No-op without a shard of `partition`.
    pub fn publish(&mut self, partition: i32, version: Option<Arc<Shard>>) {
        if let Ok(i) = self.position(partition) {
            self.slots[i].published = Some(version);
        }
    }

    /// Reads for the other partitions see `partition`'s shard itself again.
    pub fn unpublish(&mut self, partition: i32) {
        if let Ok(i) = self.position(partition) {
            self.slots[i].published = None;
        }
    }

    /// Whether `partition`'s shard has a published version.
    pub fn is_published(&self, partition: i32) -> bool {
        self.slot(partition).is_some_and(|s| s.published.is_some())
    }

    /// Drops the shards `plan` cannot read (written under another definition of the view, or
    /// malformed);
    /// returns how many.
    pub fn retain_fitting(&mut self, plan: &ViewPlan) -> usize {
        let before = self.slots.len();
        self.slots.retain(|s| s.shard.readable_by(plan));
        for slot in &mut self.slots {
            if slot
                .published
                .as_ref()
                .is_some_and(|v| v.as_deref().is_some_and(|v| !v.readable_by(plan)))
            {
                slot.published = None;
            }
        }
        let dropped = before - self.slots.len();
        if dropped > 0 {
            self.memos.clear();
        }
        dropped
    }

    /// Applies an event of `partition` at `offset` to that partition's shard (created empty if
    /// missing). `None` when the shard already holds the offset (a replay).
    pub fn apply<I: AsInput>(
        &mut self,
        plan: &ViewPlan,
        partition: i32,
        offset: i64,
        time: i64,
        inputs: &[I],
        scratch: &mut Vec<u8>,
    ) -> Option<Applied> {
        self.apply_sealed(plan, partition, (offset, time), inputs, scratch, 0)
    }

    /// [`EntityShards::apply`] that first keeps the shard's version as of `seal` when this is
    /// the first change since (the batch replay seals a partition at the end of each of its
    /// segments, so the versions other partitions' reads may name stay available).
    pub fn apply_sealed<I: AsInput>(
        &mut self,
        plan: &ViewPlan,
        partition: i32,
        (offset, time): (i64, i64),
        inputs: &[I],
        scratch: &mut Vec<u8>,
        seal: u64,
    ) -> Option<Applied> {
        let i = match self.position(partition) {
            Ok(i) => i,
            Err(i) => {
                let mut slot = Slot::new(partition, Arc::new(Shard::empty(plan)));
                if seal > 0 {
                    slot.history = Some(Box::new(History::sealed_at(seal)));
                }
                slot.born = offset;
                self.slots.insert(i, slot);
                i
            }
        };
        let slot = &mut self.slots[i];
        if offset <= slot.shard.applied_offset {
            return None;
        }
        if slot.history.as_ref().map_or(0, |h| h.sealed) < seal {
            let history = slot
                .history
                .get_or_insert_with(|| Box::new(History::sealed_at(seal)));
            history.keep(seal, Arc::clone(&slot.shard));
        }
        let shard = Arc::make_mut(&mut slot.shard);
        let applied = plan.apply(&mut shard.state, time, (partition, offset), inputs, scratch);
        shard.applied_offset = offset;
        // Reads of this partition's events see the shard itself: forget what the event may
        // change. Other partitions' memos name the version they read and notice by themselves.
        for memo in self.memos.iter_mut().filter(|m| m.reader == partition) {
            memo.cache.invalidate(time);
        }
        Some(applied)
    }

    /// The clock of a vector as of an event of `partition` read now: the applied offset of
    /// what it sees of every other partition.
    pub fn clock(&self, partition: i32) -> Clock {
        self.slots
            .iter()
            .filter(|s| s.partition != partition)
            .filter_map(|s| Some((s.partition, s.seen()?.applied_offset)))
            .collect()
    }

    /// Whether every version `clock` names is held (the shard itself, its published version or
    /// a kept earlier one), so a read with it reproduces the vector exactly.
    pub fn meets(&self, partition: i32, clock: &Clock) -> bool {
        clock
            .iter()
            .all(|(q, o)| *q == partition || self.slot(*q).is_some_and(|s| s.named(*o).is_some()))
    }

    /// The vector as of an event of `partition`: that partition's shard merged, in partition
    /// order, with what the read sees of the other partitions — with `clock`, exactly the
    /// versions it names (where held: see [`EntityShards::meets`]); without, the published
    /// versions (or the shards themselves). Read at their greatest event time (`fallback` if
    /// none has one). Returns the read time and the values, in the view's feature order.
    pub fn vector_as_of(
        &mut self,
        plan: &ViewPlan,
        partition: i32,
        fallback: i64,
        clock: Option<&Clock>,
    ) -> (i64, Vec<Value>) {
        let mut key: SmallVec<[(i32, i64); 8]> = SmallVec::with_capacity(self.slots.len());
        let mut states: SmallVec<[&EntityState; 8]> = SmallVec::with_capacity(self.slots.len());
        let mut own = None;
        for slot in &self.slots {
            let seen = if slot.partition == partition {
                Some(&*slot.shard)
            } else {
                match clock {
                    None => slot.seen(),
                    Some(c) => c
                        .get(&slot.partition)
                        .and_then(|o| slot.named(*o).unwrap_or_else(|| slot.seen())),
                }
            };
            if let Some(shard) = seen {
                let offset = if slot.partition == partition {
                    own = Some(states.len());
                    -1
                } else {
                    shard.applied_offset
                };
                key.push((slot.partition, offset));
                states.push(&shard.state);
            }
        }
        let as_of = ViewPlan::event_time_max(&states).unwrap_or(fallback);
        let memo_index = self.memos.iter().position(|m| m.reader == partition);
        if own.is_some() && states.len() == 1 {
            let within_a_hop = plan.within_smallest_hop(self.lone_read_at, as_of);
            self.lone_read_at = as_of;
            if !within_a_hop {
                if let Some(i) = memo_index {
                    self.memos.swap_remove(i);
                    if self.memos.is_empty() {
                        self.memos = Vec::new();
                    }
                }
                return (as_of, plan.read_shards_with(&states, own, as_of, None));
            }
        }
        let memo = match memo_index {
            Some(i) => &mut self.memos[i],
            None => {
                self.memos.push(Memo {
                    reader: partition,
                    key: Vec::new(),
                    cache: ReadCache::default(),
                });
                let last = self.memos.len() - 1;
                &mut self.memos[last]
            }
        };
        if memo.key[..] != key[..] {
            memo.cache.clear();
            memo.key.clear();
            memo.key.extend_from_slice(&key);
        }
        (
            as_of,
            plan.read_shards_with(&states, own, as_of, Some(&mut memo.cache)),
        )
    }

    /// The values at time `t` over every shard (the online API's read).
    pub fn read_at(&self, plan: &ViewPlan, t: i64) -> Vec<Value> {
        plan.read_shards(&self.states(), t)
    }

    /// The greatest event time over every shard.
    pub fn event_time_max(&self) -> Option<i64> {
        ViewPlan::event_time_max(&self.states())
    }

    fn states(&self) -> Vec<&EntityState> {
        self.slots.iter().map(|s| &s.shard.state).collect()
    }

    /// Tiles held over every shard (for memory accounting).
    pub fn tile_count(&self, plan: &ViewPlan) -> usize {
        self.slots
            .iter()
            .map(|s| plan.tile_count(&s.shard.state))
            .sum()
    }
}

#[cfg(test)]
mod tests;
