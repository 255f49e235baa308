//! `EntityShards` against a brute-force reference of the design's semantics: every vector as
//! of an event, read live while partitions interleave, equals the definition computed from
//! scratch over exactly the events its clock names; and rebuilding the other shards at that
//! clock from nothing gives the very same vector (what the batch replay relies on).

use std::sync::Arc;

use super::*;
use crate::definition::tests::catalog;
use crate::definition::{FeatureView, Op, Window};
use crate::duration::{HOUR_US, MINUTE_US};
use crate::hll::{self, Hll};

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const VIEW: &str = r#"
name = "v"
entity = "merchant_id"
source = "transactions"
allowed_lateness = "30m"
[[features]]
name = "n_1h"
op = "count"
window = "1h"
[[features]]
name = "sum_1h"
op = "sum"
column = "amount"
window = "1h"
[[features]]
name = "mean_24h"
op = "mean"
column = "amount"
window = "24h"
[[features]]
name = "min_24h"
op = "min"
column = "amount"
window = "24h"
[[features]]
name = "max_1h"
op = "max"
column = "amount"
window = "1h"
[[features]]
name = "last_country"
op = "last"
column = "country"
window = "lifetime"
[[features]]
name = "users_24h"
op = "distinct_count"
column = "user_id"
window = "24h"
[[features]]
name = "sd_24h"
op = "stddev"
column = "amount"
window = "24h"
[[features]]
name = "n_all"
op = "count"
window = "lifetime"
"#;

fn plan() -> ViewPlan {
    ViewPlan::new(Arc::new(FeatureView::parse("v", VIEW, &catalog()).unwrap()))
}

#[derive(Debug, Clone)]
struct Ev {
    partition: i32,
    offset: i64,
    time: i64,
    inputs: Vec<Value>,
    late: bool,
}

/// Events of three partitions: mostly in time order, some out of order, a few late, and a
/// gap of a day that empties every window.
fn events(seed: u64, per_partition: i64) -> Vec<Vec<Ev>> {
    let mut rng = Rng(seed);
    let base = 500_000 * HOUR_US;
    (0..3)
        .map(|p| {
            let mut clock = base + p as i64 * MINUTE_US;
            (0..per_partition)
                .map(|o| {
                    clock += (rng.below(9) as i64) * MINUTE_US;
                    if o == per_partition / 2 {
                        clock += 26 * HOUR_US;
                    }
                    let back = match rng.below(20) {
                        0 => 50 * MINUTE_US, // late (lateness is 30 minutes)
                        1..=3 => 10 * MINUTE_US,
                        _ => 0,
                    };
                    let amount = if rng.below(10) == 0 {
                        Value::Null
                    } else {
                        Value::Float(rng.below(10_000) as f64 / 7.0)
                    };
                    let inputs = plan()
                        .input_columns()
                        .map(|c| match c {
                            None => Value::Null,
                            Some("amount") => amount.clone(),
                            Some("country") => {
                                Value::Str(["FR", "DE", "ES"][rng.below(3) as usize].into())
                            }
                            Some("user_id") => Value::Str(format!("u{}", rng.below(40))),
                            Some(other) => panic!("unexpected column {other}"),
                        })
                        .collect();
                    Ev {
                        partition: p,
                        offset: o,
                        time: clock - back,
                        inputs,
                        late: false,
                    }
                })
                .collect()
        })
        .collect()
}

/// Marks late events: per partition, in offset order, against the latest kept event time.
fn mark_late(partitions: &mut [Vec<Ev>], lateness: i64) {
    for events in partitions {
        let mut max: Option<i64> = None;
        for e in events.iter_mut() {
            e.late = max.is_some_and(|m| e.time < m - lateness);
            if !e.late {
                max = Some(max.map_or(e.time, |m| m.max(e.time)));
            }
        }
    }
}

/// The design's definition, from scratch: the vector as of `e` over `e`'s partition through
/// `e` and every other partition through its clock offset.
fn reference(plan: &ViewPlan, partitions: &[Vec<Ev>], e: &Ev, clock: &Clock) -> Vec<Value> {
    let included: Vec<&Ev> = partitions
        .iter()
        .flatten()
        .filter(|x| !x.late)
        .filter(|x| {
            if x.partition == e.partition {
                x.offset <= e.offset
            } else {
                clock.get(&x.partition).is_some_and(|&o| x.offset <= o)
            }
        })
        .collect();
    let t = included.iter().map(|x| x.time).max().unwrap_or(e.time);
    plan.view()
        .aggregations
        .iter()
        .enumerate()
        .map(|(i, agg)| {
            let in_window: Vec<&&Ev> = included
                .iter()
                .filter(|x| match agg.window {
                    Window::Lifetime => true,
                    Window::Sliding { size, hop } => {
                        (t - size).div_euclid(hop) * hop <= x.time && x.time <= t
                    }
                })
                .collect();
            let nums: Vec<f64> = in_window
                .iter()
                .filter_map(|x| x.inputs[i].as_f64())
                .collect();
            match agg.op {
                Op::Count => Value::Int(in_window.len() as i64),
                Op::Sum => Value::Float(nums.iter().sum()),
                Op::Mean if nums.is_empty() => Value::Null,
                Op::Mean => Value::Float(nums.iter().sum::<f64>() / nums.len() as f64),
                Op::Min => nums
                    .iter()
                    .copied()
                    .reduce(f64::min)
                    .map_or(Value::Null, Value::Float),
                Op::Max => nums
                    .iter()
                    .copied()
                    .reduce(f64::max)
                    .map_or(Value::Null, Value::Float),
                Op::Stddev if nums.is_empty() => Value::Null,
                Op::Stddev => {
                    let mean = nums.iter().sum::<f64>() / nums.len() as f64;
                    let var =
                        nums.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / nums.len() as f64;
                    Value::Float(var.sqrt())
                }
                Op::Last => in_window
                    .iter()
                    .filter(|x| x.inputs[i] != Value::Null)
                    .max_by_key(|x| (x.time, x.partition, x.offset))
                    .map_or(Value::Null, |x| x.inputs[i].clone()),
                Op::DistinctCount => {
                    let mut sketch = Hll::default();
                    let mut bytes = Vec::new();
                    for x in &in_window {
                        if x.inputs[i] != Value::Null {
                            x.inputs[i].identity_bytes(&mut bytes);
                            sketch.add_hash(hll::hash(&bytes));
                        }
                    }
                    Value::Int(sketch.estimate())
                }
            }
        })
        .collect()
}

fn agree(op: Op, a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Float(x), Value::Float(y)) if matches!(op, Op::Sum | Op::Mean | Op::Stddev) => {
            (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0)
        }
        _ => a == b,
    }
}

/// A vector read live: the event, its clock, and (read time, values).
type Row = (Ev, Clock, (i64, Vec<Value>));

/// One run: partitions interleaved at random, a vector read after every event.
fn live(seed: u64) -> (Vec<Vec<Ev>>, Vec<Row>) {
    let plan = plan();
    let mut partitions = events(seed, 120);
    mark_late(&mut partitions, plan.view().allowed_lateness);
    let mut rng = Rng(seed ^ 0xfeed);
    let mut heads = [0usize; 3];
    let mut entity = EntityShards::new();
    let mut scratch = Vec::new();
    let mut rows = Vec::new();
    while heads.iter().zip(&partitions).any(|(h, p)| *h < p.len()) {
        let p = rng.below(3) as usize;
        // Bursts, as micro-batches of a partition arrive.
        for _ in 0..=rng.below(4) {
            let Some(e) = partitions[p].get(heads[p]).cloned() else {
                break;
            };
            heads[p] += 1;
            let applied = entity.apply(
                &plan,
                e.partition,
                e.offset,
                e.time,
                &e.inputs,
                &mut scratch,
            );
            assert_eq!(applied == Some(Applied::Late), e.late, "{e:?}");
            // A replay of the same offset changes nothing.
            assert_eq!(
                entity.apply(
                    &plan,
                    e.partition,
                    e.offset,
                    e.time,
                    &e.inputs,
                    &mut scratch
                ),
                None
            );
            let clock = entity.clock(e.partition);
            let vector = entity.vector_as_of(&plan, e.partition, e.time, None);
            rows.push((e, clock, vector));
        }
    }
    (partitions, rows)
}

#[test]
fn every_live_vector_equals_the_definition_over_its_clock() {
    let plan = plan();
    for seed in [1, 7, 42] {
        let (partitions, rows) = live(seed);
        let mut cross = 0;
        for (e, clock, (_, values)) in &rows {
            cross += usize::from(!clock.is_empty());
            let expected = reference(&plan, &partitions, e, clock);
            for ((agg, got), want) in plan.view().aggregations.iter().zip(values).zip(&expected) {
                assert!(
                    agree(agg.op, got, want),
                    "seed {seed}, {} as of {:?}: {got:?} vs {want:?} (clock {clock:?})",
                    agg.name,
                    (e.partition, e.offset)
                );
            }
        }
        assert!(
            cross > rows.len() / 2,
            "most vectors merge other partitions"
        );
        assert!(rows.iter().any(|(e, _, _)| e.late), "some events are late");
    }
}

#[test]
fn other_shards_rebuilt_at_the_clock_give_the_same_vector_bit_for_bit() {
    let plan = plan();
    let (partitions, rows) = live(3);
    let mut scratch = Vec::new();
    for (e, clock, (as_of, values)) in rows.iter().step_by(7) {
        // Every shard from nothing: the own one through the event, the others through the
        // clock, plus a partition ahead of the clock that must not be read.
        let mut rebuilt = EntityShards::new();
        for x in partitions.iter().flatten() {
            let bound = if x.partition == e.partition {
                Some(e.offset)
            } else {
                clock.get(&x.partition).copied()
            };
            if bound.is_none_or(|b| x.offset <= b) {
                rebuilt.apply(
                    &plan,
                    x.partition,
                    x.offset,
                    x.time,
                    &x.inputs,
                    &mut scratch,
                );
            }
        }
        let again = rebuilt.vector_as_of(&plan, e.partition, e.time, Some(clock));
        assert_eq!(&again, &(*as_of, values.clone()), "as of {e:?}");
        // And again through a warm memo.
        let warm = rebuilt.vector_as_of(&plan, e.partition, e.time, Some(clock));
        assert_eq!(warm, again);
    }
}

#[test]
fn reads_over_all_shards_and_the_clock_of_each_partition() {
    let plan = plan();
    let (partitions, _) = live(9);
    let mut entity = EntityShards::new();
    let mut scratch = Vec::new();
    for x in partitions.iter().flatten() {
        entity.apply(
            &plan,
            x.partition,
            x.offset,
            x.time,
            &x.inputs,
            &mut scratch,
        );
    }
    let clock = entity.clock(1);
    assert_eq!(clock, Clock::from([(0, 119), (2, 119)]));
    let t = entity.event_time_max().unwrap();
    let last = &partitions[1][119];
    let as_of = entity.vector_as_of(&plan, 1, last.time, None);
    assert_eq!(as_of, (t, entity.read_at(&plan, t)));
    // Shards under another definition are dropped, not misread.
    let other = ViewPlan::new(Arc::new(
        FeatureView::parse(
            "w",
            "name = \"w\"\nentity = \"merchant_id\"\nsource = \"transactions\"\n\
             [[features]]\nname = \"n\"\nop = \"count\"\nwindow = \"lifetime\"\n",
            &catalog(),
        )
        .unwrap(),
    ));
    let mut copy = entity.clone();
    assert_eq!(copy.retain_fitting(&other), 3);
    assert!(copy.is_empty());
    assert_eq!(entity.remove(2).map(|s| s.applied_offset), Some(119));
    assert_eq!(entity.clock(1), Clock::from([(0, 119)]));
    assert_eq!(entity.applied_offset(2), -1);
}

#[test]
fn other_partitions_read_the_published_versions() {
    let plan = plan();
    let mut partitions = events(11, 90);
    mark_late(&mut partitions, plan.view().allowed_lateness);
    let mut rng = Rng(77);
    let mut heads = [0usize; 3];
    let mut entity = EntityShards::new();
    let mut scratch = Vec::new();
    let mut checked = 0;
    while heads.iter().zip(&partitions).any(|(h, p)| *h < p.len()) {
        let p = rng.below(3) as usize;
        let Some(e) = partitions[p].get(heads[p]).cloned() else {
            continue;
        };
        heads[p] += 1;
        entity.apply(
            &plan,
            e.partition,
            e.offset,
            e.time,
            &e.inputs,
            &mut scratch,
        );
        // Now and then a partition's shard is made durable: published as it stands.
        if rng.below(5) == 0 {
            let q = rng.below(3) as i32;
            let version = entity.snapshot(q);
            entity.publish(q, version);
        }
        let clock = entity.clock(e.partition);
        for (q, o) in &clock {
            assert!(
                *o <= entity.applied_offset(*q),
                "a published version is never ahead of its shard"
            );
        }
        let (as_of, values) = entity.vector_as_of(&plan, e.partition, e.time, None);
        let expected = reference(&plan, &partitions, &e, &clock);
        for ((agg, got), want) in plan.view().aggregations.iter().zip(&values).zip(&expected) {
            assert!(
                agree(agg.op, got, want),
                "{}: {got:?} vs {want:?}",
                agg.name
            );
        }
        // The same vector from shards rebuilt at the clock.
        let mut rebuilt = EntityShards::new();
        for x in partitions.iter().flatten() {
            let bound = if x.partition == e.partition {
                Some(e.offset)
            } else {
                clock.get(&x.partition).copied()
            };
            if bound.is_some_and(|b| x.offset <= b) {
                rebuilt.apply(
                    &plan,
                    x.partition,
                    x.offset,
                    x.time,
                    &x.inputs,
                    &mut scratch,
                );
            }
        }
        assert_eq!(
            rebuilt.vector_as_of(&plan, e.partition, e.time, Some(&clock)),
            (as_of, values)
        );
        checked += 1;
    }
    assert_eq!(checked, 270);
    // Unpublished, the shard itself is read again.
    entity.unpublish(0);
    assert_eq!(entity.clock(1)[&0], entity.applied_offset(0));
}

/// The streaming worker's reads see other partitions as last published (durable), which lags
/// behind their shards; a replay in the same order, sealing each partition at the end of its
/// segments, still reproduces every vector from the clocks alone.
#[test]
fn a_sealed_replay_reproduces_reads_of_published_versions() {
    let plan = plan();
    let mut partitions = events(5, 150);
    mark_late(&mut partitions, plan.view().allowed_lateness);
    let mut rng = Rng(99);
    // Streaming: bursts (segments) of one partition at a time; a segment's end state is
    // published one or two bursts later, as a flush completes.
    let mut heads = [0usize; 3];
    let mut live = EntityShards::new();
    let mut scratch = Vec::new();
    let mut pending: Vec<(i32, Option<std::sync::Arc<Shard>>, u32)> = Vec::new();
    let mut bursts: Vec<(usize, usize, usize)> = Vec::new();
    let mut rows = Vec::new();
    while heads.iter().zip(&partitions).any(|(h, p)| *h < p.len()) {
        let p = rng.below(3) as usize;
        let start = heads[p];
        let end = (start + 1 + rng.below(6) as usize).min(partitions[p].len());
        if start == end {
            continue;
        }
        for e in &partitions[p][start..end] {
            live.apply(
                &plan,
                e.partition,
                e.offset,
                e.time,
                &e.inputs,
                &mut scratch,
            );
            let clock = live.clock(e.partition);
            let vector = live.vector_as_of(&plan, e.partition, e.time, None);
            rows.push((e.clone(), clock, vector));
        }
        heads[p] = end;
        bursts.push((p, start, end));
        for (_, _, wait) in &mut pending {
            *wait = wait.saturating_sub(1);
        }
        for (q, version, _) in pending.iter().filter(|(_, _, w)| *w == 0) {
            live.publish(*q, version.clone());
        }
        pending.retain(|(_, _, w)| *w > 0);
        pending.push((p as i32, live.snapshot(p as i32), 1 + rng.below(2) as u32));
    }
    // Replay: the same segments in the same order, each partition sealed after its segment.
    let mut replay = EntityShards::new();
    let mut seals = [0u64; 3];
    let mut row = 0;
    for (p, start, end) in bursts {
        for e in &partitions[p][start..end] {
            replay.apply_sealed(
                &plan,
                e.partition,
                (e.offset, e.time),
                &e.inputs,
                &mut scratch,
                seals[p],
            );
            let (logged, clock, vector) = &rows[row];
            assert_eq!(logged.offset, e.offset);
            assert!(replay.meets(e.partition, clock), "row {row}: {clock:?}");
            assert_eq!(
                &replay.vector_as_of(&plan, e.partition, e.time, Some(clock)),
                vector,
                "row {row}"
            );
            row += 1;
        }
        seals[p] += 1;
    }
    assert_eq!(row, 450);
}

/// A replay of a raw store whose older segments retention removed: a logged clock that names
/// a removed offset of another partition read none of what the replay holds of that shard.
#[test]
fn a_clock_naming_removed_history_reads_nothing_of_that_shard() {
    let plan = plan();
    let partitions = events(7, 20);
    let mut scratch = Vec::new();
    let mut apply = |shards: &mut EntityShards, events: &[Ev]| {
        for e in events {
            shards.apply(
                &plan,
                e.partition,
                e.offset,
                e.time,
                &e.inputs,
                &mut scratch,
            );
        }
    };
    let first = std::slice::from_ref(&partitions[0][0]);
    let mut replay = EntityShards::new();
    apply(&mut replay, &partitions[1][10..]);
    apply(&mut replay, first);
    let mut alone = EntityShards::new();
    apply(&mut alone, first);
    let time = first[0].time;
    let clock: Clock = [(1, partitions[1][4].offset)].into_iter().collect();
    assert!(replay.meets(0, &clock));
    assert_eq!(
        replay.vector_as_of(&plan, 0, time, Some(&clock)),
        alone.vector_as_of(&plan, 0, time, None)
    );
    // A clock naming an offset the replay holds still reads that version.
    let held: Clock = [(1, partitions[1][19].offset)].into_iter().collect();
    assert_ne!(
        replay.vector_as_of(&plan, 0, time, Some(&held)),
        alone.vector_as_of(&plan, 0, time, None)
    );
}

/// An entity of one shard (keyed as its source is) keeps a memo only while consecutive reads
/// fall in one tile of the smallest hop, and reads the same either way.
#[test]
fn a_lone_shard_keeps_a_memo_only_while_read_within_a_hop() {
    let plan = plan();
    let mut partitions = events(5, 120);
    partitions.truncate(1);
    mark_late(&mut partitions, plan.view().allowed_lateness);
    let mut entity = EntityShards::new();
    let mut scratch = Vec::new();
    let mut previous_read: Option<i64> = None;
    let (mut with_memo, mut without) = (0, 0);
    for e in partitions[0].clone() {
        entity.apply(&plan, 0, e.offset, e.time, &e.inputs, &mut scratch);
        let (as_of, values) = entity.vector_as_of(&plan, 0, e.time, None);
        let expected = reference(&plan, &partitions, &e, &Clock::default());
        for ((agg, got), want) in plan.view().aggregations.iter().zip(&values).zip(&expected) {
            assert!(
                agree(agg.op, got, want),
                "{}: {got:?} vs {want:?}",
                agg.name
            );
        }
        let within = previous_read.is_some_and(|at| plan.within_smallest_hop(at, as_of));
        assert_eq!(!entity.memos.is_empty(), within, "read at {as_of}");
        if within {
            with_memo += 1;
        } else {
            assert_eq!(entity.memos.capacity(), 0, "the memo's room is freed too");
            without += 1;
        }
        previous_read = Some(as_of);
    }
    assert!(with_memo > 10 && without > 10, "{with_memo} / {without}");
}
