//! One entity's state for one view: tiles of partial aggregates, and reads at any time `t`.
//!
//! Aggregations are grouped by (hop, window); each group keeps a map from tile start (a multiple of the
//! hop, in µs since the epoch) to one partial per aggregation of the group. `lifetime`
//! aggregations keep a single partial each. The value of a windowed aggregation (window `W`,
//! hop `h`) read at time `t` merges, in tile order, the tiles whose start `s` satisfies
//! `floor((t − W) / h) · h ≤ s ≤ t` — i.e. exactly the events with
//! `floor((t − W) / h) · h ≤ event_time ≤ t` when no event is later than `t` (reads happen at
//! or after the entity's latest event time). Windows thus slide with the read clock.
//!
//! An event older than the entity's latest event time by more than the view's allowed lateness
//! is dropped ([`Applied::Late`]). Tiles that no read at or after the latest event time can
//! reach are evicted, so state is bounded by the longest window over the hop.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::definition::{FeatureView, Op, Window};
use crate::order::Seq;
use crate::partial::Partial;
use crate::tiles::Tiles;
use crate::value::{AsInput, Value};

/// Where an aggregation's partial lives.
#[derive(Debug, Clone, Copy)]
enum Slot {
    Lifetime(usize),
    Windowed {
        group: usize,
        index: usize,
        size: i64,
    },
}

#[derive(Debug, Clone)]
struct HopGroup {
    hop: i64,
    max_size: i64,
    ops: Vec<Op>,
}

/// A view compiled for evaluation.
#[derive(Debug, Clone)]
pub struct ViewPlan {
    view: Arc<FeatureView>,
    slots: Vec<Slot>,
    groups: Vec<HopGroup>,
    lifetime_ops: Vec<Op>,
    fingerprint: u64,
    /// [`FeatureView::smallest_hop`], taken once.
    smallest_hop: Option<i64>,
}

/// An entity's state: everything needed to answer a read at any later time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntityState {
    /// Greatest event time applied (µs).
    pub event_time_max: Option<i64>,
    /// Events applied (late ones excluded).
    pub events: u64,
    lifetime: Vec<Partial>,
    tiles: Vec<Tiles>,
}

/// What a read memoises of one aggregation: everything but the reading shard's newest tile —
/// the window's tiles in `[lower, boundary)` of every shard, and the other shards' tile at
/// `boundary` (for a lifetime aggregation: the other shards' partials; `hop` is 0). It holds
/// while the window's start and its newest hop stay the same and the other shards do not
/// change (the caller starts a new memo when they do).
#[derive(Debug, Clone)]
struct Prefix {
    lower: i64,
    boundary: i64,
    hop: i64,
    partial: Partial,
    /// The rank histogram of a dense distinct-count partial, for union estimates (boxed: the
    /// other aggregations' prefixes, which live with every cached entity, do not carry its
    /// 256 bytes).
    ranks: Option<Box<crate::hll::RankHistogram>>,
}

impl Prefix {
    fn new(lower: i64, boundary: i64, hop: i64, partial: Partial) -> Self {
        let ranks = match &partial {
            Partial::Distinct(sketch) => sketch.ranks().map(Box::new),
            _ => None,
        };
        Self {
            lower,
            boundary,
            hop,
            partial,
            ranks,
        }
    }

    /// The value of the memo merged with `newest` (the reading shard's newest tile).
    fn finish_with(&self, newest: Option<&Partial>) -> Value {
        match (newest, &self.partial, &self.ranks) {
            (None, partial, _) => partial.finish(),
            (Some(Partial::Distinct(theirs)), Partial::Distinct(mine), Some(ranks)) => Value::Int(
                mine.estimate_union(ranks, theirs)
                    .unwrap_or_else(|| mine.union_estimate(theirs)),
            ),
            (Some(newest), partial, _) => partial.finish_merged(newest),
        }
    }
}

/// Memo of window prefixes for repeated reads of one entity (see
/// [`ViewPlan::read_shards_with`]).
#[derive(Debug, Clone, Default)]
pub struct ReadCache {
    prefixes: Vec<Option<Prefix>>,
}

impl ReadCache {
    /// Forgets every prefix (what the memo was computed over changed), keeping the room for
    /// them: a memo starts again without an allocation.
    pub fn clear(&mut self) {
        self.prefixes.iter_mut().for_each(|prefix| *prefix = None);
    }

    /// Forgets the prefixes an event at `time` may have changed (it landed before their end).
    pub fn invalidate(&mut self, time: i64) {
        for memo in &mut self.prefixes {
            // `lower` and `boundary` are multiples of the hop: the event's tile lies in
            // [lower, boundary) exactly when its time does.
            if memo
                .as_ref()
                .is_some_and(|p| p.hop > 0 && p.lower <= time && time < p.boundary)
            {
                *memo = None;
            }
        }
    }
}

/// What [`ViewPlan::apply`] did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Folded into the state.
    Applied,
    /// Older than the latest event time by more than the allowed lateness: dropped.
    Late,
}

/// What one read is over: the shards in partition order, the reading one (`own`) among them,
/// and the read time.
struct ShardsReader<'a> {
    shards: &'a [&'a EntityState],
    own: Option<usize>,
    t: i64,
}

impl<'a> ShardsReader<'a> {
    /// The shards but the reading one.
    fn others(&self) -> impl Iterator<Item = &'a EntityState> + '_ {
        self.shards
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != self.own)
            .map(|(_, state)| *state)
    }
}

fn floor_to(t: i64, hop: i64) -> i64 {
    t.div_euclid(hop) * hop
}

impl ViewPlan {
    /// Compiles a view.
    pub fn new(view: Arc<FeatureView>) -> Self {
        let mut groups: Vec<HopGroup> = Vec::new();
        let mut lifetime_ops = Vec::new();
        let mut slots = Vec::with_capacity(view.aggregations.len());
        for agg in &view.aggregations {
            match agg.window {
                Window::Lifetime => {
                    slots.push(Slot::Lifetime(lifetime_ops.len()));
                    lifetime_ops.push(agg.op);
                }
                Window::Sliding { size, hop } => {
                    // One group per (hop, window): each keeps only the tiles its window can read.
                    let group = match groups
                        .iter()
                        .position(|g| g.hop == hop && g.max_size == size)
                    {
                        Some(g) => g,
                        None => {
                            groups.push(HopGroup {
                                hop,
                                max_size: 0,
                                ops: Vec::new(),
                            });
                            groups.len() - 1
                        }
                    };
                    let g = &mut groups[group];
                    g.max_size = g.max_size.max(size);
                    slots.push(Slot::Windowed {
                        group,
                        index: g.ops.len(),
                        size,
                    });
                    g.ops.push(agg.op);
                }
            }
        }
        Self {
            fingerprint: view.fingerprint(),
            smallest_hop: view.smallest_hop(),
            view,
            slots,
            groups,
            lifetime_ops,
        }
    }

    /// The view.
    pub fn view(&self) -> &Arc<FeatureView> {
        &self.view
    }

    /// The input column of each aggregation, in order (`None` for `count`).
    pub fn input_columns(&self) -> impl Iterator<Item = Option<&str>> {
        self.view.aggregations.iter().map(|a| a.column.as_deref())
    }

    /// A state with no events.
    pub fn new_state(&self) -> EntityState {
        EntityState {
            event_time_max: None,
            events: 0,
            lifetime: self
                .lifetime_ops
                .iter()
                .map(|op| Partial::new(*op))
                .collect(),
            tiles: vec![Tiles::default(); self.groups.len()],
        }
    }

    /// Applies one event: `inputs` holds one value per aggregation, in declaration order.
    pub fn apply<I: AsInput>(
        &self,
        state: &mut EntityState,
        time: i64,
        seq: Seq,
        inputs: &[I],
        scratch: &mut Vec<u8>,
    ) -> Applied {
        if let Some(max) = state.event_time_max
            && time < max.saturating_sub(self.view.allowed_lateness)
        {
            return Applied::Late;
        }
        let max = state.event_time_max.map_or(time, |m| m.max(time));
        state.event_time_max = Some(max);
        state.events += 1;
        for (slot, input) in self.slots.iter().zip(inputs) {
            if let Slot::Lifetime(i) = slot {
                state.lifetime[*i].add(input.as_input(), time, seq, scratch);
            }
        }
        for (g, group) in self.groups.iter().enumerate() {
            let floor = floor_to(max.saturating_sub(group.max_size), group.hop);
            let tiles = &mut state.tiles[g];
            // Evict what no read at or after `max` can reach.
            tiles.evict_before(floor);
            let start = floor_to(time, group.hop);
            if start < floor {
                continue;
            }
            let partials = tiles.tile_mut(start, &group.ops);
            for (slot, input) in self.slots.iter().zip(inputs) {
                if let Slot::Windowed {
                    group: sg, index, ..
                } = slot
                    && *sg == g
                {
                    partials[*index].add(input.as_input(), time, seq, scratch);
                }
            }
        }
        Applied::Applied
    }

    /// The feature values at time `t`, in declaration order.
    pub fn read(&self, state: &EntityState, t: i64) -> Vec<Value> {
        self.read_shards(&[state], t)
    }

    /// The feature values at `t` of an entity whose state is split in shards (one per source
    /// partition, given in partition order). This is the one read the API and the feature log
    /// use, so they agree exactly.
    pub fn read_shards(&self, shards: &[&EntityState], t: i64) -> Vec<Value> {
        self.read_shards_with(shards, None, t, None)
    }

    /// [`ViewPlan::read_shards`] for an event of the shard `own`, with a memo for the repeated
    /// reads of one entity (the feature log reads after every event). Each aggregation merges
    /// a prefix (see `Prefix`: the window's older tiles of every shard, and the other shards'
    /// newest tile — what does not change from one event of `own` to the next) with `own`'s
    /// newest tile; `cache` keeps the prefixes for the next read, which without it are built
    /// for this read only. Either way the prefix is built by the same merges, so memoised and
    /// plain reads give identical values. After applying an event to `own`, call
    /// [`ReadCache::invalidate`] with its time; when another shard changes, start a new memo.
    pub fn read_shards_with(
        &self,
        shards: &[&EntityState],
        own: Option<usize>,
        t: i64,
        cache: Option<&mut ReadCache>,
    ) -> Vec<Value> {
        let reader = ShardsReader { shards, own, t };
        match cache {
            Some(cache) => {
                if cache.prefixes.len() != self.slots.len() {
                    cache.prefixes.clear();
                    cache.prefixes.resize_with(self.slots.len(), || None);
                }
                (0..self.slots.len())
                    .zip(cache.prefixes.iter_mut())
                    .map(|(aggregation, memo)| self.read_one(&reader, aggregation, memo))
                    .collect()
            }
            None => (0..self.slots.len())
                .map(|aggregation| self.read_one(&reader, aggregation, &mut None))
                .collect(),
        }
    }

    /// The value of aggregation `aggregation` for `reader`, through `memo` (its prefix, rebuilt
    /// unless it covers the read's window).
    fn read_one(
        &self,
        reader: &ShardsReader<'_>,
        aggregation: usize,
        memo: &mut Option<Prefix>,
    ) -> Value {
        let op = self.view.aggregations[aggregation].op;
        let own_state = reader.own.and_then(|i| reader.shards.get(i));
        match self.slots[aggregation] {
            Slot::Lifetime(i) => {
                if memo.is_none() {
                    let merged = Partial::merged(op, reader.others().map(|s| &s.lifetime[i]));
                    *memo = Some(Prefix::new(i64::MIN, i64::MIN, 0, merged));
                }
                let newest = own_state.map(|s| &s.lifetime[i]);
                memo.as_ref().map_or(Value::Null, |p| p.finish_with(newest))
            }
            Slot::Windowed { group, index, size } => {
                let hop = self.groups[group].hop;
                let t = reader.t;
                let lower = floor_to(t.saturating_sub(size), hop);
                let boundary = floor_to(t, hop).max(lower);
                let fresh = memo
                    .as_ref()
                    .is_some_and(|p| p.lower == lower && p.boundary == boundary);
                if !fresh {
                    let older = reader
                        .shards
                        .iter()
                        .flat_map(|state| state.tiles[group].range(lower..boundary));
                    let others_newest = reader
                        .others()
                        .flat_map(|state| state.tiles[group].range(boundary..=t));
                    let prefix = Partial::merged(
                        op,
                        older.chain(others_newest).map(|(_, tile)| &tile[index]),
                    );
                    *memo = Some(Prefix::new(lower, boundary, hop, prefix));
                }
                // The reading shard's tiles in [boundary, t]: at most the one at boundary.
                let newest = own_state
                    .and_then(|s| s.tiles[group].range(boundary..=t).next())
                    .map(|(_, p)| &p[index]);
                memo.as_ref().map_or(Value::Null, |p| p.finish_with(newest))
            }
        }
    }

    /// Whether times `a` and `b` lie in one tile of the view's smallest hop (always, for a view
    /// of lifetime aggregations only): reads at both then mostly see the same window bounds,
    /// which makes a memo of the first worth keeping for the second.
    pub fn within_smallest_hop(&self, a: i64, b: i64) -> bool {
        match self.smallest_hop {
            Some(hop) => a.div_euclid(hop) == b.div_euclid(hop),
            None => true,
        }
    }

    /// The greatest event time over shards.
    pub fn event_time_max(shards: &[&EntityState]) -> Option<i64> {
        shards.iter().filter_map(|s| s.event_time_max).max()
    }

    /// Whether a state has this plan's layout, every partial of the kind its aggregation keeps
    /// and well formed (so reads can index it without checks): the lifetime partials, the
    /// groups, and each tile's partials.
    pub fn fits(&self, state: &EntityState) -> bool {
        Partial::all_valid_for(&state.lifetime, &self.lifetime_ops)
            && state.tiles.len() == self.groups.len()
            && state
                .tiles
                .iter()
                .zip(&self.groups)
                .all(|(tiles, group)| tiles.fit(&group.ops))
    }

    /// The view definition's fingerprint ([`FeatureView::fingerprint`]).
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// Number of tiles held (for memory accounting).
    pub fn tile_count(&self, state: &EntityState) -> usize {
        state.tiles.iter().map(Tiles::len).sum()
    }
}

#[cfg(test)]
mod tests;
