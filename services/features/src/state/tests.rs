use super::*;
use crate::definition::tests::catalog;
use crate::duration::{HOUR_US, MINUTE_US};

fn plan(features: &str) -> ViewPlan {
    let text = format!("name = \"v\"\nentity = \"user_id\"\nsource = \"transactions\"\n{features}");
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
    let min = "[[features]]\nname = \"m\"\nop = \"min\"\ncolumn = \"amount\"\nwindow = \"1h\"\n";
    assert!(!plan(&format!("{min}{COUNT_1H}")).fits(&state));
    // Same count of partials, another kind.
    let sum = "[[features]]\nname = \"n\"\nop = \"sum\"\ncolumn = \"amount\"\nwindow = \"1h\"\n";
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
            p.read_shards_with(&[&state], Some(0), t, Some(&mut cache)),
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

/// A small deterministic generator (the property tests need no other randomness).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Every kind of aggregation over windows of four (size, hop) groups and lifetime.
const PROPERTY_VIEW: &str = "\
[[features]]\nname = \"n1h\"\nop = \"count\"\nwindow = \"1h\"\n\
[[features]]\nname = \"s1h\"\nop = \"sum\"\ncolumn = \"amount\"\nwindow = \"1h\"\n\
[[features]]\nname = \"mean24\"\nop = \"mean\"\ncolumn = \"amount\"\nwindow = \"24h\"\n\
[[features]]\nname = \"max24\"\nop = \"max\"\ncolumn = \"amount\"\nwindow = \"24h\"\n\
[[features]]\nname = \"min24\"\nop = \"min\"\ncolumn = \"amount\"\nwindow = \"24h\"\n\
[[features]]\nname = \"d24\"\nop = \"distinct_count\"\ncolumn = \"country\"\nwindow = \"24h\"\n\
[[features]]\nname = \"sd7\"\nop = \"stddev\"\ncolumn = \"amount\"\nwindow = \"7d\"\nhop = \"6h\"\n\
[[features]]\nname = \"s7\"\nop = \"sum\"\ncolumn = \"amount\"\nwindow = \"7d\"\nhop = \"6h\"\n\
[[features]]\nname = \"last2\"\nop = \"last\"\ncolumn = \"country\"\nwindow = \"2h\"\nhop = \"30m\"\n\
[[features]]\nname = \"last\"\nop = \"last\"\ncolumn = \"country\"\nwindow = \"lifetime\"\n\
[[features]]\nname = \"n\"\nop = \"count\"\nwindow = \"lifetime\"\n";

/// One generated event: its time, partition and one input per aggregation.
#[derive(Debug, Clone)]
struct Event {
    time: i64,
    partition: i32,
    inputs: Vec<Value>,
}

/// Events mostly in time order, some out of order (some beyond the allowed lateness), jumps of
/// days (evictions, empty windows), amounts from 1e-300 to ±1e300, missing values, a few
/// countries.
fn events(seed: u64, count: usize, partitions: u64) -> Vec<Event> {
    let mut random = Lcg(seed);
    let mut clock = 1_000 * HOUR_US;
    (0..count)
        .map(|_| {
            clock += match random.below(100) {
                0..=1 => (1 + random.below(72)) as i64 * HOUR_US,
                _ => random.below(25 * MINUTE_US as u64) as i64,
            };
            let time = match random.below(10) {
                0 => clock - random.below(2 * HOUR_US as u64) as i64,
                _ => clock,
            };
            let amount = match random.below(20) {
                0 => Value::Null,
                1 => Value::Float(1e300),
                2 => Value::Float(-1e300),
                3 => Value::Float(1e-300),
                4 => Value::Int(random.below(1_000) as i64),
                _ => Value::Float(random.below(1_000_000) as f64 / 100.0 - 2_000.0),
            };
            let country = match random.below(12) {
                0 => Value::Null,
                n => Value::Str(format!("c{}", n % 7 + random.below(2))),
            };
            let inputs = vec![
                Value::Null,
                amount.clone(),
                amount.clone(),
                amount.clone(),
                amount.clone(),
                country.clone(),
                amount.clone(),
                amount,
                country.clone(),
                country,
                Value::Null,
            ];
            Event {
                time,
                partition: random.below(partitions) as i32,
                inputs,
            }
        })
        .collect()
}

/// The tile merge written out plainly, as the reference: per state, the events each window
/// group admitted (not late, not before the group's eviction floor when they came) and the
/// lifetime ones; a read merges, per aggregation, the tiles `[lower, boundary)` of every state
/// in state order, then each state's tiles `[boundary, t]`, each tile the fold of its events in
/// arrival order — exactly the order the uncached read merges in.
struct Reference {
    view: Arc<FeatureView>,
    lateness: i64,
    states: Vec<ReferenceState>,
}

#[derive(Default)]
struct ReferenceState {
    event_time_max: Option<i64>,
    /// The events applied, in arrival order.
    admitted: Vec<Admitted>,
}

/// An event applied: (the event, its seq, the (size, hop) groups that admitted it).
type Admitted = (Event, Seq, Vec<(i64, i64)>);

impl Reference {
    fn new(plan: &ViewPlan, states: usize) -> Self {
        Self {
            view: Arc::clone(plan.view()),
            lateness: plan.view().allowed_lateness,
            states: (0..states).map(|_| ReferenceState::default()).collect(),
        }
    }

    fn apply(&mut self, state: usize, event: &Event, seq: Seq) -> Applied {
        let reference = &mut self.states[state];
        if let Some(max) = reference.event_time_max
            && event.time < max.saturating_sub(self.lateness)
        {
            return Applied::Late;
        }
        let max = reference
            .event_time_max
            .map_or(event.time, |m| m.max(event.time));
        reference.event_time_max = Some(max);
        let mut groups: Vec<(i64, i64)> = Vec::new();
        for aggregation in &self.view.aggregations {
            if let Window::Sliding { size, hop } = aggregation.window
                && floor_to(event.time, hop) >= floor_to(max.saturating_sub(size), hop)
                && !groups.contains(&(size, hop))
            {
                groups.push((size, hop));
            }
        }
        reference.admitted.push((event.clone(), seq, groups));
        Applied::Applied
    }

    /// The fold of one state's events of aggregation `index` whose tile (of `hop`; 0 for
    /// lifetime) starts at `start`.
    fn tile(&self, state: usize, index: usize, group: Option<(i64, i64)>, start: i64) -> Partial {
        let op = self.view.aggregations[index].op;
        let mut partial = Partial::new(op);
        let mut scratch = Vec::new();
        for (event, seq, groups) in &self.states[state].admitted {
            let belongs = match group {
                None => true,
                Some((size, hop)) => {
                    groups.contains(&(size, hop)) && floor_to(event.time, hop) == start
                }
            };
            if belongs {
                partial.add(
                    event.inputs[index].as_input(),
                    event.time,
                    *seq,
                    &mut scratch,
                );
            }
        }
        partial
    }

    /// The starts of one state's tiles of (size, hop) in `[from, through]`, ascending.
    fn starts(&self, state: usize, (size, hop): (i64, i64), from: i64, through: i64) -> Vec<i64> {
        let mut starts: Vec<i64> = self.states[state]
            .admitted
            .iter()
            .filter(|(_, _, groups)| groups.contains(&(size, hop)))
            .map(|(event, _, _)| floor_to(event.time, hop))
            .filter(|start| (from..=through).contains(start))
            .collect();
        starts.sort_unstable();
        starts.dedup();
        starts
    }

    fn read(&self, t: i64) -> Vec<Value> {
        let states = 0..self.states.len();
        (0..self.view.aggregations.len())
            .map(|index| {
                let op = self.view.aggregations[index].op;
                let mut merged = Partial::new(op);
                match self.view.aggregations[index].window {
                    Window::Lifetime => {
                        for state in states.clone() {
                            merged.merge(&self.tile(state, index, None, 0));
                        }
                    }
                    Window::Sliding { size, hop } => {
                        let lower = floor_to(t.saturating_sub(size), hop);
                        let boundary = floor_to(t, hop).max(lower);
                        let group = Some((size, hop));
                        for state in states.clone() {
                            for start in self.starts(state, (size, hop), lower, boundary - 1) {
                                merged.merge(&self.tile(state, index, group, start));
                            }
                        }
                        for state in states.clone() {
                            for start in self.starts(state, (size, hop), boundary, t) {
                                merged.merge(&self.tile(state, index, group, start));
                            }
                        }
                    }
                }
                merged.finish()
            })
            .collect()
    }
}

/// Values equal bit for bit (a `NaN` equals a `NaN`).
fn identical(a: &[Value], b: &[Value]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|pair| match pair {
            (Value::Float(x), Value::Float(y)) => x.to_bits() == y.to_bits(),
            (x, y) => x == y,
        })
}

#[test]
fn reads_equal_the_plain_tile_merge_through_random_streams() {
    let p = plan(PROPERTY_VIEW);
    let mut scratch = Vec::new();
    for seed in 0..40u64 {
        let partitions = 1 + seed % 3;
        let stream = events(seed, 400, partitions);
        let mut states: Vec<EntityState> = (0..partitions).map(|_| p.new_state()).collect();
        let mut reference = Reference::new(&p, partitions as usize);
        for (offset, event) in stream.iter().enumerate() {
            let shard = event.partition as usize;
            let seq = (event.partition, offset as i64);
            let applied = p.apply(
                &mut states[shard],
                event.time,
                seq,
                &event.inputs,
                &mut scratch,
            );
            assert_eq!(applied, reference.apply(shard, event, seq), "seed {seed}");
            let refs: Vec<&EntityState> = states.iter().collect();
            let Some(t) = ViewPlan::event_time_max(&refs) else {
                continue;
            };
            // At the latest event time, and later (windows emptying as the clock slides).
            let later = t + (offset as i64 % 9) * 3 * HOUR_US;
            for at in [t, later] {
                let read = p.read_shards(&refs, at);
                let expected = reference.read(at);
                assert!(
                    identical(&read, &expected),
                    "seed {seed}, event {offset}, at {at}:\n{read:?}\n{expected:?}"
                );
            }
        }
    }
}
