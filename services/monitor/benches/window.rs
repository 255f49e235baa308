//! The live monitor's two costs at 5 000 predictions/s with the default settings (a 10-minute
//! window evaluated every 30 s, 2 000 sampled rows per interval, a 1-hour label horizon):
//! taking in one prediction and its label, and one evaluation of a full window (3 M
//! predictions, every one labelled) against a training baseline of 12 inputs.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use quiver_features::Value;
use quiver_models::baseline::Baseline;
use quiver_models::metrics::evaluate;
use quiver_monitor::report::{Settings, report};
use quiver_monitor::tracker::{Limits, Seen, Slot, Tracker, Verdict};

const S: i64 = 1_000_000;
const RATE: i64 = 5_000;
const INPUTS: usize = 12;

fn limits() -> Limits {
    Limits {
        window_us: 600 * S,
        interval_us: 30 * S,
        label_horizon_us: 3_600 * S,
        sample_rows: 2_000,
    }
}

/// A deterministic score in (0, 1) and its label for prediction `i`.
fn score(i: i64) -> (f64, bool) {
    let x = ((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) as f64 / (1u64 << 53) as f64;
    (x, x > 0.97)
}

fn inputs(i: i64) -> Vec<(String, Value)> {
    (0..INPUTS)
        .map(|f| {
            let v = if f % 4 == 3 {
                Value::Str(format!("c{}", (i + f as i64) % 7))
            } else {
                Value::Float(((i * 31 + f as i64 * 7) % 1000) as f64 / 10.0)
            };
            (format!("v__f{f}"), v)
        })
        .collect()
}

fn seen(i: i64, at_us: i64) -> Seen {
    let (s, _) = score(i);
    Seen {
        event_id: format!("txn-{i:012}"),
        verdicts: vec![Verdict {
            slot: Slot {
                model_id: "m1".into(),
                variant: "production".into(),
            },
            score: s,
            decision: s >= 0.5,
        }],
        prediction_time_us: at_us,
        latency_ms: 20.0 + (i % 100) as f64,
    }
}

/// A tracker holding `seconds` of predictions at the rate, each labelled, ending at `end_us`.
fn filled(seconds: i64, end_us: i64) -> Tracker {
    let mut t = Tracker::new(limits());
    let n = seconds * RATE;
    for i in 0..n {
        let at = end_us - seconds * S + i * S / RATE;
        t.prediction(seen(i, at), &|| inputs(i), at);
        t.label(&format!("txn-{i:012}"), score(i).1, at);
    }
    t
}

fn baseline() -> Baseline {
    let names: Vec<String> = (0..INPUTS).map(|f| format!("v__f{f}")).collect();
    let rows: Vec<Vec<(String, Value)>> = (0..20_000).map(inputs).collect();
    let columns: Vec<Vec<Value>> = (0..INPUTS)
        .map(|f| rows.iter().map(|r| r[f].1.clone()).collect())
        .collect();
    let scores: Vec<f64> = (0..20_000).map(|i| score(i).0).collect();
    Baseline::of(&names, &columns, &scores, 7)
}

fn bench(c: &mut Criterion) {
    let end = 1_795_687_200 * S;

    let mut group = c.benchmark_group("monitor");
    group.throughput(Throughput::Elements(1));
    // Intake in steady state: a tracker already holding a full window.
    let mut t = filled(600, end);
    let mut i = 600 * RATE;
    group.bench_function("prediction and its label", |b| {
        b.iter(|| {
            let at = end + (i - 600 * RATE) * S / RATE;
            t.prediction(black_box(seen(i, at)), &|| inputs(i), at);
            t.label(&format!("txn-{i:012}"), score(i).1, at);
            i += 1;
        })
    });
    group.finish();

    let mut t = filled(600, end);
    let base = baseline();
    let test = {
        let (s, l): (Vec<f64>, Vec<bool>) = (0..20_000).map(score).unzip();
        evaluate(&s, &l, 0.5)
    };
    let settings = Settings::default();
    let mut group = c.benchmark_group("monitor");
    group.sample_size(10);
    group.bench_function("evaluation of a full window (3 M predictions)", |b| {
        b.iter(|| {
            let windows = t.windows(end);
            for (slot, w) in &windows {
                black_box(report(
                    &slot.model_id,
                    &slot.variant,
                    &base,
                    &test,
                    w,
                    &settings,
                ));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
