//! The aggregation core on the shape of `quiver-loadtest drain` (issue 22), scaled down ten
//! times with the same density per entity: 100 000 demo events over 7 days of event time,
//! 10 000 users (keyed by user, so one shard each) and 80 merchants (one shard per partition,
//! 4 partitions), both demo views. Per event, as the worker does: apply to the entity's shards,
//! then the vector as of the event and its clock; every 1 000 events of a partition, a "flush"
//! snapshots the shards it touched and publishes them to the other partitions' reads.
//!
//! `cargo bench -p quiver-features --bench drain` gives the core's cost per event without
//! Kafka, Redis or the durable path (with the worker's allocator, mimalloc). Before timing, it
//! prints the resident memory the state adds per entity in one pass, on this shape and on the
//! sparse shape of `quiver-loadtest memory` (two events per user).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use quiver_core::Catalog;
use quiver_features::{EntityShards, Value, ViewCatalog, ViewPlan};

/// The worker's allocator, so allocation costs are the worker's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The process's resident memory (bytes), from `/proc/self/statm`.
fn resident_bytes() -> i64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: i64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|field| field.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

const SECOND: i64 = 1_000_000;
/// The events, users and merchants of a run.
#[derive(Clone, Copy)]
struct Shape {
    events: usize,
    users: u64,
    merchants: u64,
}

/// The timed shape: the drain's density per entity.
const DRAIN: Shape = Shape {
    events: 100_000,
    users: 10_000,
    merchants: 80,
};

/// The shape of `quiver-loadtest memory`: about two events per user.
const SPARSE: Shape = Shape {
    events: 200_000,
    users: 100_000,
    merchants: 80,
};
const PARTITIONS: i32 = 4;
const FLUSH_EVERY: usize = 1_000;

fn plans() -> Vec<ViewPlan> {
    let schemas = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas");
    let catalog = Catalog::load(&schemas).unwrap();
    let views = ViewCatalog::load(&schemas, &catalog).unwrap();
    ["user_txn", "merchant_txn"]
        .iter()
        .map(|name| ViewPlan::new(Arc::clone(views.view(name).unwrap())))
        .collect()
}

struct Event {
    time: i64,
    partition: i32,
    offset: i64,
    /// Entity key per view.
    keys: [String; 2],
    /// Inputs per view, in the view's aggregation order.
    inputs: [Vec<Value>; 2],
}

fn events(plans: &[ViewPlan], shape: Shape) -> Vec<Event> {
    let start = 1_795_687_200 * SECOND;
    let span = 7 * 24 * 3_600 * SECOND;
    let mut random = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        random ^= random << 13;
        random ^= random >> 7;
        random ^= random << 17;
        random
    };
    let mut offsets = [0i64; PARTITIONS as usize];
    (0..shape.events)
        .map(|i| {
            let user = next() % shape.users;
            let merchant = next() % shape.merchants;
            let partition = (user % PARTITIONS as u64) as i32;
            let offset = offsets[partition as usize];
            offsets[partition as usize] += 1;
            let amount = Value::Float((next() % 50_000) as f64 / 100.0);
            let country = Value::Str(["FR", "DE", "US"][(next() % 3) as usize].to_string());
            let user_id = Value::Str(format!("u-{user:06}"));
            let merchant_id = Value::Str(format!("m-{merchant:05}"));
            let inputs = |plan: &ViewPlan| -> Vec<Value> {
                plan.input_columns()
                    .map(|column| match column {
                        None => Value::Null,
                        Some("amount") => amount.clone(),
                        Some("country") => country.clone(),
                        Some("user_id") => user_id.clone(),
                        Some("merchant_id") => merchant_id.clone(),
                        Some(other) => panic!("unexpected column {other}"),
                    })
                    .collect()
            };
            Event {
                time: start + span / shape.events as i64 * i as i64,
                partition,
                offset,
                keys: [format!("u-{user:06}"), format!("m-{merchant:05}")],
                inputs: [inputs(&plans[0]), inputs(&plans[1])],
            }
        })
        .collect()
}

/// One pass over the events from empty state; returns a checksum of the vectors.
fn drain(plans: &[ViewPlan], events: &[Event]) -> usize {
    drain_into(plans, events, &mut [HashMap::new(), HashMap::new()])
}

/// [`drain`] into `entities` (per view, by key), which keeps the state.
fn drain_into<'e>(
    plans: &[ViewPlan],
    events: &'e [Event],
    entities: &mut [HashMap<&'e str, EntityShards>; 2],
) -> usize {
    let mut touched: Vec<[HashSet<&str>; 2]> = (0..PARTITIONS)
        .map(|_| [HashSet::new(), HashSet::new()])
        .collect();
    let mut since_flush = [0usize; PARTITIONS as usize];
    let mut scratch = Vec::new();
    let mut checksum = 0usize;
    for event in events {
        let p = event.partition;
        for (v, plan) in plans.iter().enumerate() {
            let key = event.keys[v].as_str();
            let shards = entities[v].entry(key).or_default();
            shards.apply(
                plan,
                p,
                event.offset,
                event.time,
                &event.inputs[v],
                &mut scratch,
            );
            let clock = shards.clock(p);
            let (as_of, values) = shards.vector_as_of(plan, p, event.time, None);
            checksum += values.len() + clock.len() + (as_of & 1) as usize;
            touched[p as usize][v].insert(key);
        }
        since_flush[p as usize] += 1;
        if since_flush[p as usize] == FLUSH_EVERY {
            since_flush[p as usize] = 0;
            for (v, keys) in touched[p as usize].iter_mut().enumerate() {
                for key in keys.drain() {
                    if let Some(shards) = entities[v].get_mut(key)
                        && shards.len() > 1
                    {
                        let version = shards.snapshot(p);
                        shards.publish(p, version);
                    }
                }
            }
        }
    }
    checksum
}

/// Prints the resident memory the state adds per entity in a pass over `shape`'s events (the
/// map's own table and the allocator's rounding included, the events' not; on Linux).
fn report_state_bytes(plans: &[ViewPlan], shape: Shape, label: &str) {
    let events = events(plans, shape);
    let before = resident_bytes();
    let mut entities = [HashMap::new(), HashMap::new()];
    black_box(drain_into(plans, &events, &mut entities));
    let held = resident_bytes() - before;
    let count = entities.iter().map(HashMap::len).sum::<usize>();
    println!(
        "state after {} events ({label}): {count} entities, {} bytes per entity",
        shape.events,
        held / count.max(1) as i64
    );
}

fn bench(c: &mut Criterion) {
    let plans = plans();
    report_state_bytes(&plans, DRAIN, "the timed shape");
    report_state_bytes(&plans, SPARSE, "two events per user");
    let events = events(&plans, DRAIN);
    let mut group = c.benchmark_group("drain");
    group.sample_size(10);
    group.throughput(Throughput::Elements(DRAIN.events as u64));
    group.bench_function("100k events over 7 days, both demo views", |b| {
        b.iter(|| black_box(drain(&plans, &events)))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
