//! The aggregation core on the shape of `quiver-loadtest drain` (issue 22), scaled down ten
//! times with the same density per entity: 100 000 demo events over 7 days of event time,
//! 10 000 users (keyed by user, so one shard each) and 80 merchants (one shard per partition,
//! 4 partitions), both demo views. Per event, as the worker does: apply to the entity's shards,
//! then the vector as of the event and its clock; every 1 000 events of a partition, a "flush"
//! snapshots the shards it touched and publishes them to the other partitions' reads.
//!
//! `cargo bench -p quiver-features --bench drain` gives the core's cost per event without
//! Kafka, Redis or the durable path (with the worker's allocator, mimalloc).
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

const SECOND: i64 = 1_000_000;
const EVENTS: usize = 100_000;
const USERS: u64 = 10_000;
const MERCHANTS: u64 = 80;
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

fn events(plans: &[ViewPlan]) -> Vec<Event> {
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
    (0..EVENTS)
        .map(|i| {
            let user = next() % USERS;
            let merchant = next() % MERCHANTS;
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
                time: start + span / EVENTS as i64 * i as i64,
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
    let mut entities: [HashMap<&str, EntityShards>; 2] = [HashMap::new(), HashMap::new()];
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

fn bench(c: &mut Criterion) {
    let plans = plans();
    let events = events(&plans);
    let mut group = c.benchmark_group("drain");
    group.sample_size(10);
    group.throughput(Throughput::Elements(EVENTS as u64));
    group.bench_function("100k events over 7 days, both demo views", |b| {
        b.iter(|| black_box(drain(&plans, &events)))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
