//! The live monitor's state: the predictions of the last window per deployed model, in buckets
//! of one evaluation interval, joined by event id with the labels that arrive later. Pure: the
//! caller feeds it what it consumes and asks for each model's [`Window`] at evaluation time.
//!
//! Memory does not grow with the rate beyond a few numbers per prediction: counts, scores,
//! latencies and joined labels are kept whole (the realised metrics are exact), input rows are
//! a uniform sample of at most `sample_rows` per model and bucket (reservoir sampling, seeded by
//! the bucket, so a run is reproducible), and the join index keeps 8 bytes of hashed event id,
//! the model slots and the score per prediction until its label arrives or `label_horizon`
//! passes.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, DefaultHasher, Hash, Hasher};

use quiver_features::Value;
use quiver_models::metrics::sort_pairs;

use crate::report::Window;

/// A model in a deployment slot, as predictions name it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Slot {
    /// Model id.
    pub model_id: String,
    /// `production`, `canary` or `shadow`.
    pub variant: String,
}

/// One model's verdict in a prediction.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// Which model, in which slot.
    pub slot: Slot,
    /// Its score.
    pub score: f64,
    /// Its decision.
    pub decision: bool,
}

/// A prediction as the monitor reads it off the predictions topic.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    /// The event id (the join key with labels).
    pub event_id: String,
    /// The deciding model's verdict, then a shadow's, if any.
    pub verdicts: Vec<Verdict>,
    /// When it was made (µs since the epoch).
    pub prediction_time_us: i64,
    /// Event time → prediction time (ms).
    pub latency_ms: f64,
}

/// How the tracker keeps what it sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The window (µs).
    pub window_us: i64,
    /// The bucket: one evaluation interval (µs).
    pub interval_us: i64,
    /// How long a prediction waits for its label (µs).
    pub label_horizon_us: i64,
    /// Input rows kept per model and bucket.
    pub sample_rows: usize,
}

/// What happened to a prediction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Taken {
    /// Tracked, waiting for its label.
    New,
    /// Tracked and joined at once to its label, which came first (for these models).
    Labelled(Vec<Slot>),
    /// Seen before (a replay re-emits it): not counted twice.
    Repeated,
}

/// What happened to a label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Joined {
    /// Joined to a prediction still in the window (it counts in the realised metrics of every
    /// model that scored the event: these).
    InWindow(Vec<Slot>),
    /// Joined to a prediction older than the window: counted, not in any metric.
    PastWindow(Vec<Slot>),
    /// No prediction for it yet: kept until one arrives or the horizon passes.
    Early,
    /// A second label for an event already labelled: ignored.
    Duplicate,
}

/// Predictions of one model and bucket.
#[derive(Debug, Clone, Default)]
struct Bucket {
    served: usize,
    positive: usize,
    latencies_ms: Vec<f64>,
    scores: Vec<f64>,
    joined: Vec<(f64, bool)>,
    inputs: Vec<String>,
    rows: Vec<Vec<Value>>,
    /// Rows offered to the sample (reservoir sampling's `n`).
    offered: u64,
    rng: u64,
}

/// The inputs of a prediction, read when the sample keeps them.
pub type Inputs<'a> = &'a dyn Fn() -> Vec<(String, Value)>;

/// Where a sampled row goes in its bucket.
#[derive(Debug, Clone, Copy)]
enum Placement {
    Append,
    Replace(usize),
}

/// A prediction waiting for its label.
#[derive(Debug, Clone)]
struct Pending {
    bucket: i64,
    verdicts: Scored,
    labelled: bool,
}

/// The models that scored a prediction (slot, score): the deciding one and a shadow kept
/// inline — no allocation for each of the hour's predictions — more spilled to the heap.
#[derive(Debug, Clone)]
enum Scored {
    Inline(u8, [(usize, f64); 2]),
    Spilled(Vec<(usize, f64)>),
}

impl Scored {
    fn new() -> Self {
        Scored::Inline(0, [(0, 0.0); 2])
    }

    fn push(&mut self, v: (usize, f64)) {
        match self {
            Scored::Inline(n, items) if usize::from(*n) < items.len() => {
                items[usize::from(*n)] = v;
                *n += 1;
            }
            Scored::Inline(_, items) => {
                let mut all = items.to_vec();
                all.push(v);
                *self = Scored::Spilled(all);
            }
            Scored::Spilled(all) => all.push(v),
        }
    }

    fn as_slice(&self) -> &[(usize, f64)] {
        match self {
            Scored::Inline(n, items) => &items[..usize::from(*n)],
            Scored::Spilled(all) => all,
        }
    }
}

/// Keys that are hashes already (of event ids): used as they are.
#[derive(Debug, Clone, Copy, Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed with it; anything else folds in, byte by byte.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type ByHash<V> = HashMap<u64, V, BuildHasherDefault<Prehashed>>;

/// The live monitor's state.
#[derive(Debug, Clone)]
pub struct Tracker {
    limits: Limits,
    slots: Vec<Slot>,
    /// `(slot, bucket index)` → its predictions.
    buckets: BTreeMap<(usize, i64), Bucket>,
    pending: ByHash<Pending>,
    pending_expiry: VecDeque<(i64, u64)>,
    early: ByHash<bool>,
    early_expiry: VecDeque<(i64, u64)>,
    /// Predictions seen again (a replay re-emits them): not counted twice.
    pub repeated: u64,
}

impl Tracker {
    /// An empty tracker.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            slots: Vec::new(),
            buckets: BTreeMap::new(),
            pending: ByHash::default(),
            pending_expiry: VecDeque::new(),
            early: ByHash::default(),
            early_expiry: VecDeque::new(),
            repeated: 0,
        }
    }

    /// Takes in a prediction, read at `now_us`, with its inputs scored (`<view>__<feature>` →
    /// value) read by `inputs` only if the sample keeps the row (at most once). One made before
    /// the window (read while catching up) only waits for its label, to be counted.
    pub fn prediction(&mut self, seen: Seen, inputs: Inputs<'_>, now_us: i64) -> Taken {
        let key = id_hash(&seen.event_id);
        if self.pending.contains_key(&key) {
            self.repeated += 1;
            return Taken::Repeated;
        }
        let bucket = seen.prediction_time_us.div_euclid(self.limits.interval_us);
        let in_window = bucket >= self.first_bucket(now_us);
        let label = self.early.remove(&key);
        let mut read: Option<Vec<(String, Value)>> = None;
        let mut verdicts = Scored::new();
        for v in &seen.verdicts {
            let slot = self.slot(&v.slot);
            verdicts.push((slot, v.score));
            if !in_window {
                continue;
            }
            let sample_rows = self.limits.sample_rows;
            let b = self
                .buckets
                .entry((slot, bucket))
                .or_insert_with(|| Bucket {
                    rng: splitmix(bucket as u64 ^ ((slot as u64) << 48)),
                    ..Bucket::default()
                });
            b.served += 1;
            b.positive += usize::from(v.decision);
            b.latencies_ms.push(seen.latency_ms);
            b.scores.push(v.score);
            if let Some(l) = label {
                b.joined.push((v.score, l));
            }
            if let Some(at) = b.sample_at(sample_rows) {
                let features = read.get_or_insert_with(inputs);
                b.place(at, features);
            }
        }
        self.pending.insert(
            key,
            Pending {
                bucket,
                verdicts,
                labelled: label.is_some(),
            },
        );
        // Deadlines from the arrival time, which only grows (a prediction's own time may be
        // skewed, and would hold up everything queued behind it).
        self.pending_expiry
            .push_back((now_us.saturating_add(self.limits.label_horizon_us), key));
        if label.is_some() {
            Taken::Labelled(seen.verdicts.into_iter().map(|v| v.slot).collect())
        } else {
            Taken::New
        }
    }

    /// Takes in a label for `event_id`, read at `now_us` (which also decides whether the
    /// prediction it joins is still in the window). The first label of an event wins.
    pub fn label(&mut self, event_id: &str, label: bool, now_us: i64) -> Joined {
        let key = id_hash(event_id);
        let first = self.first_bucket(now_us);
        let Some(p) = self.pending.get_mut(&key) else {
            if self.early.contains_key(&key) {
                return Joined::Duplicate;
            }
            self.early.insert(key, label);
            self.early_expiry
                .push_back((now_us.saturating_add(self.limits.label_horizon_us), key));
            return Joined::Early;
        };
        if p.labelled {
            return Joined::Duplicate;
        }
        p.labelled = true;
        let models: Vec<Slot> = p
            .verdicts
            .as_slice()
            .iter()
            .map(|(slot, _)| self.slots[*slot].clone())
            .collect();
        if p.bucket < first {
            return Joined::PastWindow(models);
        }
        for &(slot, score) in p.verdicts.as_slice() {
            if let Some(b) = self.buckets.get_mut(&(slot, p.bucket)) {
                b.joined.push((score, label));
            }
        }
        Joined::InWindow(models)
    }

    /// Drops buckets that left the window and predictions (and early labels) past the horizon.
    pub fn expire(&mut self, now_us: i64) {
        let first = self.first_bucket(now_us);
        self.buckets.retain(|(_, bucket), _| *bucket >= first);
        while let Some(&(until, key)) = self.pending_expiry.front() {
            if until > now_us {
                break;
            }
            self.pending_expiry.pop_front();
            self.pending.remove(&key);
        }
        while let Some(&(until, key)) = self.early_expiry.front() {
            if until > now_us {
                break;
            }
            self.early_expiry.pop_front();
            self.early.remove(&key);
        }
    }

    /// The first bucket of the window ending at `now_us`, and when it starts (µs).
    pub fn window_start(&self, now_us: i64) -> i64 {
        self.first_bucket(now_us) * self.limits.interval_us
    }

    /// The window is the buckets from the one holding `now − window` on: at least `window`
    /// long, at most one interval more.
    fn first_bucket(&self, now_us: i64) -> i64 {
        now_us
            .saturating_sub(self.limits.window_us)
            .div_euclid(self.limits.interval_us)
    }

    /// Each model's window ending at `now_us` (every model with a prediction in it). Its
    /// scores and joined pairs come as one sorted run per bucket, so sorting them costs
    /// little more than reading them.
    pub fn windows(&mut self, now_us: i64) -> Vec<(Slot, Window)> {
        self.windows_from(self.first_bucket(now_us))
    }

    /// Each model's predictions of the window made from `since_us` on (whole buckets: from the
    /// first bucket starting at or after it) — to compare two models over the same span.
    pub fn windows_since(&mut self, now_us: i64, since_us: i64) -> Vec<(Slot, Window)> {
        let since = since_us
            .saturating_add(self.limits.interval_us - 1)
            .div_euclid(self.limits.interval_us);
        self.windows_from(self.first_bucket(now_us).max(since))
    }

    fn windows_from(&mut self, first: i64) -> Vec<(Slot, Window)> {
        for (_, b) in self
            .buckets
            .iter_mut()
            .filter(|((_, bucket), _)| *bucket >= first)
        {
            b.sort();
        }
        // Sized first: growing vectors of millions of scores page-faults at every doubling.
        let mut sizes: BTreeMap<usize, (usize, usize)> = BTreeMap::new();
        for ((slot, _), b) in self
            .buckets
            .iter()
            .filter(|((_, bucket), _)| *bucket >= first)
        {
            let size = sizes.entry(*slot).or_default();
            size.0 += b.scores.len();
            size.1 += b.joined.len();
        }
        let mut out: BTreeMap<usize, Window> = sizes
            .into_iter()
            .map(|(slot, (scores, joined))| {
                let window = Window {
                    latencies_ms: Vec::with_capacity(scores),
                    scores: Vec::with_capacity(scores),
                    joined: Vec::with_capacity(joined),
                    ..Window::default()
                };
                (slot, window)
            })
            .collect();
        for ((slot, _), b) in self
            .buckets
            .iter()
            .filter(|((_, bucket), _)| *bucket >= first)
        {
            let w = out.entry(*slot).or_default();
            w.served += b.served;
            w.positive += b.positive;
            w.latencies_ms.extend_from_slice(&b.latencies_ms);
            w.scores.extend_from_slice(&b.scores);
            w.joined.extend_from_slice(&b.joined);
            append_rows(w, b);
        }
        out.into_iter()
            .map(|(slot, w)| (self.slots[slot].clone(), w))
            .collect()
    }

    /// Predictions waiting for their label.
    pub fn pending(&self) -> usize {
        self.pending.values().filter(|p| !p.labelled).count()
    }

    fn slot(&mut self, slot: &Slot) -> usize {
        match self.slots.iter().position(|s| s == slot) {
            Some(i) => i,
            None => {
                self.slots.push(slot.clone());
                self.slots.len() - 1
            }
        }
    }
}

impl Bucket {
    /// Sorts the bucket's scores and joined pairs. What an earlier evaluation sorted is one run
    /// the sort finds and keeps, so this costs time linear in the bucket plus the newcomers'
    /// sort.
    fn sort(&mut self) {
        self.scores.sort_by(f64::total_cmp);
        sort_pairs(&mut self.joined);
    }

    /// Reservoir sampling (algorithm R) of the bucket's input rows: where the row offered now
    /// goes, if it is kept — decided before the row is read, so a row left out costs nothing.
    fn sample_at(&mut self, capacity: usize) -> Option<Placement> {
        self.offered += 1;
        if self.rows.len() < capacity {
            return Some(Placement::Append);
        }
        self.rng = splitmix(self.rng);
        let j = self.rng % self.offered;
        match usize::try_from(j) {
            Ok(j) if j < capacity => Some(Placement::Replace(j)),
            _ => None,
        }
    }

    /// Keeps `features` where [`Bucket::sample_at`] said.
    fn place(&mut self, at: Placement, features: &[(String, Value)]) {
        let row = self.row(features);
        match at {
            Placement::Append => self.rows.push(row),
            Placement::Replace(j) => self.rows[j] = row,
        }
    }

    /// `features` in the bucket's column order (a new input adds a column).
    fn row(&mut self, features: &[(String, Value)]) -> Vec<Value> {
        for (name, _) in features {
            if !self.inputs.contains(name) {
                self.inputs.push(name.clone());
                for row in &mut self.rows {
                    row.push(Value::Null);
                }
            }
        }
        self.inputs
            .iter()
            .map(|name| {
                features
                    .iter()
                    .find(|(n, _)| n == name)
                    .map_or(Value::Null, |(_, v)| v.clone())
            })
            .collect()
    }
}

/// Adds a bucket's sampled rows to a window, aligning its columns with the window's.
fn append_rows(w: &mut Window, b: &Bucket) {
    let columns: Vec<usize> = b
        .inputs
        .iter()
        .map(|name| match w.inputs.iter().position(|i| i == name) {
            Some(i) => i,
            None => {
                w.inputs.push(name.clone());
                for row in &mut w.rows {
                    row.push(Value::Null);
                }
                w.inputs.len() - 1
            }
        })
        .collect();
    for row in &b.rows {
        let mut aligned = vec![Value::Null; w.inputs.len()];
        for (value, &column) in row.iter().zip(&columns) {
            aligned[column] = value.clone();
        }
        w.rows.push(aligned);
    }
}

fn id_hash(id: &str) -> u64 {
    let mut h = DefaultHasher::new();
    id.hash(&mut h);
    h.finish()
}

/// SplitMix64: a small, good-enough generator for the reservoir.
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    fn limits() -> Limits {
        Limits {
            window_us: 60 * S,
            interval_us: 10 * S,
            label_horizon_us: 120 * S,
            sample_rows: 50,
        }
    }

    fn seen(id: usize, at_s: i64, model: &str, shadow: bool) -> (Seen, Vec<(String, Value)>) {
        let score = (id % 100) as f64 / 100.0;
        let mut verdicts = vec![Verdict {
            slot: Slot {
                model_id: model.into(),
                variant: "production".into(),
            },
            score,
            decision: score >= 0.5,
        }];
        if shadow {
            verdicts.push(Verdict {
                slot: Slot {
                    model_id: "s".into(),
                    variant: "shadow".into(),
                },
                score: 1.0 - score,
                decision: score < 0.5,
            });
        }
        let seen = Seen {
            event_id: format!("t{id}"),
            verdicts,
            prediction_time_us: at_s * S,
            latency_ms: 5.0,
        };
        let features = vec![
            ("v__amount".into(), Value::Float(id as f64)),
            ("v__country".into(), Value::Str("FR".into())),
        ];
        (seen, features)
    }

    /// Takes in a prediction with its inputs.
    fn take(t: &mut Tracker, (seen, features): (Seen, Vec<(String, Value)>), now: i64) -> Taken {
        t.prediction(seen, &|| features.clone(), now)
    }

    #[test]
    fn scores_stay_inline_for_two_models_and_spill_beyond() {
        let mut s = Scored::new();
        assert!(s.as_slice().is_empty());
        s.push((0, 0.1));
        s.push((1, 0.2));
        assert!(matches!(s, Scored::Inline(2, _)));
        s.push((2, 0.3));
        assert_eq!(s.as_slice(), &[(0, 0.1), (1, 0.2), (2, 0.3)]);
        let mut by_hash: ByHash<u8> = ByHash::default();
        by_hash.insert(id_hash("t1"), 1);
        assert_eq!(by_hash.get(&id_hash("t1")), Some(&1));
        assert_eq!(by_hash.get(&id_hash("t2")), None);
    }

    #[test]
    fn labels_join_their_prediction_in_any_order_and_count_once() {
        let mut t = Tracker::new(limits());
        assert_eq!(take(&mut t, seen(1, 100, "m", true), 100 * S), Taken::New);
        assert_eq!(
            take(&mut t, seen(1, 100, "m", true), 100 * S),
            Taken::Repeated
        );
        assert_eq!(t.repeated, 1);
        let Joined::InWindow(both) = t.label("t1", true, 101 * S) else {
            panic!("in the window")
        };
        assert_eq!(both.len(), 2);
        assert_eq!(t.label("t1", false, 102 * S), Joined::Duplicate);
        // A label before its prediction waits for it.
        assert_eq!(t.label("t2", false, 101 * S), Joined::Early);
        assert_eq!(
            t.label("t2", true, 101 * S),
            Joined::Duplicate,
            "the first one wins"
        );
        assert!(matches!(
            take(&mut t, seen(2, 102, "m", false), 102 * S),
            Taken::Labelled(m) if m.len() == 1
        ));
        let windows = t.windows(105 * S);
        assert_eq!(windows.len(), 2);
        let (slot, w) = &windows[0];
        assert_eq!((slot.model_id.as_str(), w.served), ("m", 2));
        assert_eq!(w.joined, vec![(0.01, true), (0.02, false)]);
        let (shadow, ws) = &windows[1];
        assert_eq!((shadow.variant.as_str(), ws.served), ("shadow", 1));
        assert_eq!(ws.joined, vec![(0.99, true)]);
        assert_eq!(t.pending(), 0);
    }

    #[test]
    fn the_window_slides_by_buckets_and_late_labels_are_counted_outside_it() {
        let mut t = Tracker::new(limits());
        for i in 0..30 {
            take(&mut t, seen(i, i as i64 * 3, "m", false), 50 * S);
        }
        // At 75 s the window holds the buckets from the one holding 15 s on: predictions made
        // at 10 s or later (a window of 65 s).
        let w = &t.windows(75 * S)[0].1;
        assert_eq!(w.served, 30 - 4, "those at 0, 3, 6, 9 s left");
        // From 41 s: the buckets from 50 s on (predictions at 51 … 87 s).
        assert_eq!(t.windows_since(75 * S, 41 * S)[0].1.served, 13);
        assert_eq!(t.window_start(75 * S), 10 * S);
        assert!(matches!(
            t.label("t0", true, 75 * S),
            Joined::PastWindow(m) if m.len() == 1
        ));
        t.expire(75 * S);
        assert_eq!(t.windows(75 * S)[0].1.served, 26);
        // A prediction read late, from before the window, only waits for its label.
        take(&mut t, seen(99, 1, "m", false), 75 * S);
        assert_eq!(t.windows(75 * S)[0].1.served, 26);
        assert!(matches!(
            t.label("t99", true, 76 * S),
            Joined::PastWindow(_)
        ));
        // Past the horizon (from when they were read) predictions are given up on; a label
        // then is early, and expires in turn.
        t.expire(300 * S);
        assert!(t.windows(300 * S).is_empty());
        assert_eq!(t.pending(), 0);
        assert_eq!(t.label("t5", true, 300 * S), Joined::Early);
        t.expire(500 * S);
        assert!(t.early.is_empty());
    }

    #[test]
    fn input_rows_are_a_bounded_uniform_sample_and_counts_stay_whole() {
        let mut t = Tracker::new(limits());
        for i in 0..1_000 {
            take(&mut t, seen(i, 100, "m", false), 100 * S);
        }
        let w = &t.windows(100 * S)[0].1;
        assert_eq!((w.served, w.scores.len(), w.rows.len()), (1_000, 1_000, 50));
        assert_eq!(w.inputs, ["v__amount", "v__country"]);
        // Uniform: the sample's mean amount is near the stream's (499.5).
        let mean = w.rows.iter().filter_map(|r| r[0].as_f64()).sum::<f64>() / 50.0;
        assert!((mean - 499.5).abs() < 120.0, "{mean}");
    }
}
