//! The aggregation core on the demo `user_txn` view (9 features: 1h, 24h, 7d windows, lifetime,
//! a HyperLogLog): applying events to an entity, and reading a vector at a time `t`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use quiver_core::Catalog;
use quiver_features::{Value, ViewCatalog, ViewPlan};

const SECOND: i64 = 1_000_000;

fn plan() -> ViewPlan {
    let schemas = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas");
    let catalog = Catalog::load(&schemas).unwrap();
    let views = ViewCatalog::load(&schemas, &catalog).unwrap();
    ViewPlan::new(Arc::clone(views.view("user_txn").unwrap()))
}

/// Inputs of one demo transaction, in the view's aggregation order.
fn inputs(plan: &ViewPlan, i: i64) -> Vec<Value> {
    plan.input_columns()
        .map(|c| match c {
            None => Value::Null,
            Some("amount") => Value::Float(10.0 + (i % 97) as f64 * 1.37),
            Some("merchant_id") => Value::Str(format!("m-{:05}", i % 40)),
            Some("country") => Value::Str(if i % 10 == 0 { "DE" } else { "FR" }.to_string()),
            Some(other) => panic!("unexpected column {other}"),
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let plan = plan();
    let events: Vec<Vec<Value>> = (0..10_000).map(|i| inputs(&plan, i)).collect();
    let start = 1_795_687_200 * SECOND;

    // One active entity receiving an event every 30 s (so tiles roll over and get evicted).
    let mut group = c.benchmark_group("user_txn");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.bench_function("apply 10k events to one entity", |b| {
        let mut scratch = Vec::new();
        b.iter(|| {
            let mut state = plan.new_state();
            for (i, input) in events.iter().enumerate() {
                plan.apply(
                    &mut state,
                    start + i as i64 * 30 * SECOND,
                    (0, i as i64),
                    input,
                    &mut scratch,
                );
            }
            black_box(state.events)
        });
    });
    group.finish();

    // A week of history (one event every 5 min): read the whole vector, as the API does.
    let mut state = plan.new_state();
    let mut scratch = Vec::new();
    let week: i64 = 7 * 24 * 12;
    for i in 0..week {
        plan.apply(
            &mut state,
            start + i * 300 * SECOND,
            (0, i),
            &events[i as usize % events.len()],
            &mut scratch,
        );
    }
    let t = state.event_time_max.unwrap_or(start);
    let mut group = c.benchmark_group("user_txn");
    group.throughput(Throughput::Elements(1));
    group.bench_function("read 9 features after a week of events", |b| {
        b.iter(|| black_box(plan.read(&state, black_box(t))))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
