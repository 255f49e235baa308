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

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::definition::{FeatureView, Op, Window};
use crate::order::Seq;
use crate::partial::Partial;
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
}

/// An entity's state: everything needed to answer a read at any later time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntityState {
    /// Greatest event time applied (µs).
    pub event_time_max: Option<i64>,
    /// Events applied (late ones excluded).
    pub events: u64,
    lifetime: Vec<Partial>,
    tiles: Vec<BTreeMap<i64, Vec<Partial>>>,
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
/// [`ViewPlan::read_shards_cached`]).
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
            tiles: vec![BTreeMap::new(); self.groups.len()],
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
            while let Some((&start, _)) = tiles.first_key_value() {
                if start >= floor {
                    break;
                }
                tiles.pop_first();
            }
            let start = floor_to(time, group.hop);
            if start < floor {
                continue;
            }
            let partials = tiles
                .entry(start)
                .or_insert_with(|| group.ops.iter().map(|op| Partial::new(*op)).collect());
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
        self.read_shards_cached(shards, None, t, &mut ReadCache::default())
    }

    /// [`ViewPlan::read_shards`] with a memo, for repeated reads of one entity for events of
    /// its shard `own` (the feature log reads after every event). Each aggregation merges the
    /// memo (see `Prefix`: the window's older tiles of every shard, and the other shards'
    /// newest tile — what does not change from one event of `own` to the next) with `own`'s
    /// newest tile. The memo is built by the very same merges an uncached read makes, so cached
    /// and uncached reads give identical values. After applying an event to `own`, call
    /// [`ReadCache::invalidate`] with its time; when another shard changes, start a new memo.
    pub fn read_shards_cached(
        &self,
        shards: &[&EntityState],
        own: Option<usize>,
        t: i64,
        cache: &mut ReadCache,
    ) -> Vec<Value> {
        if cache.prefixes.len() != self.slots.len() {
            cache.prefixes.clear();
            cache.prefixes.resize_with(self.slots.len(), || None);
        }
        let others = || {
            shards
                .iter()
                .enumerate()
                .filter(move |(i, _)| Some(*i) != own)
                .map(|(_, s)| s)
        };
        let own_state = own.and_then(|i| shards.get(i));
        self.slots
            .iter()
            .zip(&self.view.aggregations)
            .zip(cache.prefixes.iter_mut())
            .map(|((slot, agg), memo)| match *slot {
                Slot::Lifetime(i) => {
                    if memo.is_none() {
                        let mut merged = Partial::new(agg.op);
                        for state in others() {
                            merged.merge(&state.lifetime[i]);
                        }
                        *memo = Some(Prefix::new(i64::MIN, i64::MIN, 0, merged));
                    }
                    let newest = own_state.map(|s| &s.lifetime[i]);
                    memo.as_ref().map_or(Value::Null, |p| p.finish_with(newest))
                }
                Slot::Windowed { group, index, size } => {
                    let hop = self.groups[group].hop;
                    let lower = floor_to(t.saturating_sub(size), hop);
                    let boundary = floor_to(t, hop).max(lower);
                    let fresh = memo
                        .as_ref()
                        .is_some_and(|p| p.lower == lower && p.boundary == boundary);
                    if !fresh {
                        let mut prefix = Partial::new(agg.op);
                        for state in shards {
                            for partials in
                                state.tiles[group].range(lower..boundary).map(|(_, p)| p)
                            {
                                prefix.merge(&partials[index]);
                            }
                        }
                        for state in others() {
                            for partials in state.tiles[group].range(boundary..=t).map(|(_, p)| p) {
                                prefix.merge(&partials[index]);
                            }
                        }
                        *memo = Some(Prefix::new(lower, boundary, hop, prefix));
                    }
                    // The reading shard's tiles in [boundary, t]: at most the one at boundary.
                    let newest = own_state
                        .and_then(|s| s.tiles[group].range(boundary..=t).next())
                        .map(|(_, p)| &p[index]);
                    memo.as_ref().map_or(Value::Null, |p| p.finish_with(newest))
                }
            })
            .collect()
    }

    /// The greatest event time over shards.
    pub fn event_time_max(shards: &[&EntityState]) -> Option<i64> {
        shards.iter().filter_map(|s| s.event_time_max).max()
    }

    /// Whether a state has this plan's layout, every partial of the kind its aggregation keeps
    /// and well formed (so reads can index it without checks): the lifetime partials, the
    /// groups, and each tile's partials.
    pub fn fits(&self, state: &EntityState) -> bool {
        let valid = |partials: &[Partial], ops: &[Op]| {
            partials.len() == ops.len()
                && partials.iter().zip(ops).all(|(p, op)| p.is_valid_for(*op))
        };
        valid(&state.lifetime, &self.lifetime_ops)
            && state.tiles.len() == self.groups.len()
            && state
                .tiles
                .iter()
                .zip(&self.groups)
                .all(|(tiles, group)| tiles.values().all(|p| valid(p, &group.ops)))
    }

    /// The view definition's fingerprint ([`FeatureView::fingerprint`]).
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// Number of tiles held (for memory accounting).
    pub fn tile_count(&self, state: &EntityState) -> usize {
        state.tiles.iter().map(BTreeMap::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::tests::catalog;
    use crate::duration::{HOUR_US, MINUTE_US};

    fn plan(features: &str) -> ViewPlan {
        let text =
            format!("name = \"v\"\nentity = \"user_id\"\nsource = \"transactions\"\n{features}");
        ViewPlan::new(Arc::new(
            FeatureView::parse("v", &text, &catalog()).unwrap(),
        ))
    }

    const COUNT_1H: &str = "[[features]]\nname = \"n\"\nop = \"count\"\nwindow = \"1h\"\n";

    #[test]
    fn a_state_of_another_layout_does_not_fit() {
        let old = plan(COUNT_1H);
        let mut state = old.new_state();
        old.apply(&mut state, HOUR_US, (0, 0), &[Value::Null], &mut Vec::new());
        assert!(old.fits(&state));
        // A feature added in the same window: same lifetime and group counts, but each tile
        // holds one partial where the new plan reads two.
        let min =
            "[[features]]\nname = \"m\"\nop = \"min\"\ncolumn = \"amount\"\nwindow = \"1h\"\n";
        assert!(!plan(&format!("{min}{COUNT_1H}")).fits(&state));
        // Same count of partials, another kind.
        let sum =
            "[[features]]\nname = \"n\"\nop = \"sum\"\ncolumn = \"amount\"\nwindow = \"1h\"\n";
        assert!(!plan(sum).fits(&state));
    }

    #[test]
    fn sawtooth_keeps_the_whole_oldest_hop_and_slides_with_the_clock() {
        let p = plan(COUNT_1H);
        let mut s = p.new_state();
        let mut scratch = Vec::new();
        let base = 1_000 * HOUR_US;
        for minutes in [0, 4, 30, 59] {
            p.apply(
                &mut s,
                base + minutes * MINUTE_US,
                (0, minutes),
                &[Value::Null],
                &mut scratch,
            );
        }
        // At base + 1h + 2 min the window starts at floor(base + 2min, 5min) = base: all four.
        assert_eq!(
            p.read(&s, base + HOUR_US + 2 * MINUTE_US),
            vec![Value::Int(4)]
        );
        // At base + 1h + 5 min the first 5-minute tile (events at 0 and 4) has aged out.
        assert_eq!(
            p.read(&s, base + HOUR_US + 5 * MINUTE_US),
            vec![Value::Int(2)]
        );
        // Long after, with no new event, the window is empty.
        assert_eq!(p.read(&s, base + 3 * HOUR_US), vec![Value::Int(0)]);
    }

    #[test]
    fn merged_shards_read_like_one_stream() {
        let p = plan(
            "[[features]]\nname = \"n\"\nop = \"count\"\nwindow = \"1h\"\n\
             [[features]]\nname = \"s\"\nop = \"sum\"\ncolumn = \"amount\"\nwindow = \"24h\"\n\
             [[features]]\nname = \"l\"\nop = \"last\"\ncolumn = \"country\"\nwindow = \"lifetime\"\n",
        );
        let base = 1_000 * HOUR_US;
        let events: Vec<(i64, i32, Vec<Value>)> = (0..40)
            .map(|i| {
                let input = vec![
                    Value::Null,
                    Value::Float(i as f64),
                    Value::Str(format!("c{i}")),
                ];
                (base + i * 7 * MINUTE_US, (i % 3) as i32, input)
            })
            .collect();
        let mut scratch = Vec::new();
        let mut whole = p.new_state();
        let mut shards = [p.new_state(), p.new_state(), p.new_state()];
        for (i, (time, partition, input)) in events.iter().enumerate() {
            p.apply(
                &mut whole,
                *time,
                (*partition, i as i64),
                input,
                &mut scratch,
            );
            p.apply(
                &mut shards[*partition as usize],
                *time,
                (*partition, i as i64),
                input,
                &mut scratch,
            );
        }
        let t = base + 5 * HOUR_US;
        let refs: Vec<&EntityState> = shards.iter().collect();
        assert_eq!(p.read_shards(&refs, t), p.read(&whole, t));
        assert_eq!(ViewPlan::event_time_max(&refs), whole.event_time_max);
        assert!(p.fits(&shards[0]));
    }

    #[test]
    fn cached_reads_equal_uncached_ones_through_out_of_order_events() {
        let p = plan(
            "[[features]]\nname = \"s\"\nop = \"sum\"\ncolumn = \"amount\"\nwindow = \"1h\"\n\
             [[features]]\nname = \"d\"\nop = \"distinct_count\"\ncolumn = \"country\"\nwindow = \"24h\"\n\
             [[features]]\nname = \"v\"\nop = \"stddev\"\ncolumn = \"amount\"\nwindow = \"7d\"\n",
        );
        let base = 1_000 * HOUR_US;
        let mut state = p.new_state();
        let mut cache = ReadCache::default();
        let mut scratch = Vec::new();
        for i in 0..400i64 {
            // Mostly in order, every 7th event 40 minutes in the past.
            let time = base + i * 3 * MINUTE_US - if i % 7 == 0 { 40 * MINUTE_US } else { 0 };
            let inputs = [
                Value::Float(0.1 * i as f64),
                Value::Str(format!("c{}", i % 13)),
                Value::Float(i as f64),
            ];
            p.apply(&mut state, time, (0, i), &inputs, &mut scratch);
            cache.invalidate(time);
            let t = state.event_time_max.unwrap_or(time);
            assert_eq!(
                p.read_shards_cached(&[&state], Some(0), t, &mut cache),
                p.read(&state, t),
                "after event {i}"
            );
        }
    }

    #[test]
    fn late_events_are_dropped_and_old_tiles_evicted() {
        let p = plan(COUNT_1H);
        let mut s = p.new_state();
        let mut scratch = Vec::new();
        let base = 1_000 * HOUR_US;
        assert_eq!(
            p.apply(&mut s, base, (0, 0), &[Value::Null], &mut scratch),
            Applied::Applied
        );
        assert_eq!(
            p.apply(
                &mut s,
                base + 5 * HOUR_US,
                (0, 1),
                &[Value::Null],
                &mut scratch
            ),
            Applied::Applied
        );
        assert_eq!(
            p.tile_count(&s),
            1,
            "the tile 5 h back can never be read again"
        );
        assert_eq!(
            p.apply(
                &mut s,
                base + 3 * HOUR_US,
                (0, 2),
                &[Value::Null],
                &mut scratch
            ),
            Applied::Late
        );
        assert_eq!(
            p.apply(
                &mut s,
                base + 4 * HOUR_US + MINUTE_US,
                (0, 3),
                &[Value::Null],
                &mut scratch
            ),
            Applied::Applied
        );
        assert_eq!(p.read(&s, s.event_time_max.unwrap()), vec![Value::Int(2)]);
        assert_eq!(s.events, 3);
    }
}
