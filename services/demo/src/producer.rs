//! Paced production of the demo stream.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use quiver_core::{Catalog, Config};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rdkafka::client::ClientContext;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use tracing::warn;

use crate::generator::{Generator, GeneratorOptions};
use crate::{Error, Result};

/// What to produce.
#[derive(Debug, Clone)]
pub struct ProduceOptions {
    /// Transactions per second; 0 means as fast as possible.
    pub rate: u64,
    /// Transactions to produce; 0 means until stopped.
    pub count: u64,
    /// Generator seed.
    pub seed: u64,
    /// Delay between a transaction and its label.
    pub label_delay: Duration,
    /// Fraction of transactions replaced by malformed events.
    pub malformed_ratio: f64,
    /// Population shape.
    pub generator: GeneratorOptions,
    /// When the events happen.
    pub clock: EventClock,
    /// Transactions of this seed generated and dropped before the first one sent: a run that
    /// goes on where an earlier run of the same seed stopped (the same card holders, the next
    /// transaction ids) instead of starting the sequence again.
    pub skip: u64,
}

/// When the demo's transactions happen (their `event_time`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventClock {
    /// Now: events are stamped with the wall clock as they are sent.
    Wall,
    /// Time-lapse: transaction `first + i` (the i-th of this run) happens at
    /// `anchor + (first + i) × step_ms`, so a run covers days of event time in minutes and the
    /// features' hour-to-week windows behave as in production. Keep the last event at or before
    /// now (`anchor = now − count × step`): the worker refuses events dated in the future.
    Lapse {
        /// The first event's time.
        anchor: DateTime<Utc>,
        /// Event time between two transactions (ms).
        step_ms: i64,
        /// The index of this run's first transaction (a second run continues a first).
        first: u64,
    },
}

impl EventClock {
    /// The event time of this run's `i`-th transaction, sent at `now`.
    pub fn at(&self, i: u64, now: DateTime<Utc>) -> DateTime<Utc> {
        match *self {
            EventClock::Wall => now,
            EventClock::Lapse {
                anchor,
                step_ms,
                first,
            } => {
                let index = i64::try_from(first.saturating_add(i)).unwrap_or(i64::MAX);
                anchor + chrono::Duration::milliseconds(step_ms.saturating_mul(index))
            }
        }
    }
}

impl Default for ProduceOptions {
    fn default() -> Self {
        Self {
            rate: 1_000,
            count: 10_000,
            seed: 42,
            label_delay: Duration::from_secs(5),
            malformed_ratio: 0.0,
            generator: GeneratorOptions::default(),
            clock: EventClock::Wall,
            skip: 0,
        }
    }
}

/// Progress, reported about once a second.
#[derive(Debug, Clone, Copy)]
pub struct ProduceProgress {
    /// Transactions sent (valid + malformed).
    pub transactions: u64,
    /// Labels sent.
    pub labels: u64,
    /// Malformed events among the transactions.
    pub malformed: u64,
    /// Fraudulent transactions.
    pub fraud: u64,
    /// Seconds since start.
    pub elapsed: f64,
    /// Target count (0: unbounded).
    pub count: u64,
}

/// What a run produced.
#[derive(Debug, Clone, Copy)]
pub struct ProduceReport {
    /// Final counters.
    pub progress: ProduceProgress,
    /// Labels not sent because the run was stopped before they were due.
    pub labels_dropped: u64,
}

#[derive(Debug, Default)]
struct Deliveries {
    failed: AtomicU64,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, _)) = result
            && self.failed.fetch_add(1, Ordering::AcqRel) == 0
        {
            warn!(%error, "delivery failed");
        }
    }
}

fn send(
    producer: &ThreadedProducer<Deliveries>,
    topic: &str,
    key: &str,
    payload: &[u8],
    timestamp_ms: i64,
) -> Result<()> {
    let mut record = BaseRecord::to(topic)
        .key(key)
        .payload(payload)
        .timestamp(timestamp_ms);
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((e, back)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                std::thread::sleep(Duration::from_millis(2));
                record = back;
            }
            Err((e, _)) => return Err(e.into()),
        }
    }
}

type Pending = VecDeque<(DateTime<Utc>, String, String)>;

/// Sends the labels whose time has come.
fn send_due_labels(
    producer: &ThreadedProducer<Deliveries>,
    topic: &str,
    pending: &mut Pending,
    p: &mut ProduceProgress,
    now: DateTime<Utc>,
) -> Result<()> {
    while pending.front().is_some_and(|(due, _, _)| *due <= now) {
        if let Some((due, key, json)) = pending.pop_front() {
            send(
                producer,
                topic,
                &key,
                json.as_bytes(),
                due.timestamp_millis(),
            )?;
            p.labels += 1;
        }
    }
    Ok(())
}

/// Produces the demo stream; blocking. `stop` is polled between events; `progress` is called
/// about once a second and at the end.
pub fn produce(
    config: &Config,
    catalog: &Catalog,
    options: &ProduceOptions,
    stop: &dyn Fn() -> bool,
    progress: &mut dyn FnMut(&ProduceProgress),
) -> Result<ProduceReport> {
    let txn_source = catalog
        .source("transactions")
        .ok_or_else(|| Error::MissingSource("transactions".into()))?;
    let label_source = catalog
        .source("labels")
        .ok_or_else(|| Error::MissingSource("labels".into()))?;
    let txn_topic = config.kafka.topic(&txn_source.topic);
    let label_topic = config.kafka.topic(&label_source.topic);
    quiver_kafka::require_topics(&config.kafka, &[txn_topic.clone(), label_topic.clone()])?;
    let producer: ThreadedProducer<Deliveries> = quiver_kafka::producer_config(&config.kafka)
        .set("linger.ms", "5")
        .set("enable.idempotence", "true")
        .create_with_context(Deliveries::default())?;

    let mut generator = Generator::new(options.seed, options.generator.clone());
    generator.skip(options.skip);
    let mut noise = ChaCha8Rng::seed_from_u64(options.seed ^ 0x5eed);
    let mut pending = Pending::new();
    let label_delay = chrono::Duration::from_std(options.label_delay)
        .unwrap_or_else(|_| chrono::Duration::seconds(5));
    let start = Instant::now();
    let mut p = ProduceProgress {
        transactions: 0,
        labels: 0,
        malformed: 0,
        fraud: 0,
        elapsed: 0.0,
        count: options.count,
    };
    let mut last_report = Instant::now();

    while (options.count == 0 || p.transactions < options.count) && !stop() {
        if options.rate > 0 {
            let target = Duration::from_secs_f64(p.transactions as f64 / options.rate as f64);
            let ahead = target.saturating_sub(start.elapsed());
            if ahead > Duration::from_millis(1) {
                std::thread::sleep(ahead);
            }
        }
        let now = Utc::now();
        let at = options.clock.at(p.transactions, now);
        if options.malformed_ratio > 0.0 && noise.random_bool(options.malformed_ratio.min(1.0)) {
            let bad = generator.malformed(at);
            send(
                &producer,
                &txn_topic,
                "malformed",
                bad.as_bytes(),
                now.timestamp_millis(),
            )?;
            p.malformed += 1;
        } else {
            let txn = generator.next_transaction(at);
            send(
                &producer,
                &txn_topic,
                &txn.user_id,
                txn.to_json().as_bytes(),
                now.timestamp_millis(),
            )?;
            if txn.is_fraud {
                p.fraud += 1;
            }
            let due = now + label_delay;
            pending.push_back((due, txn.user_id.clone(), txn.label_json(due)));
        }
        p.transactions += 1;
        send_due_labels(&producer, &label_topic, &mut pending, &mut p, now)?;
        if last_report.elapsed() >= Duration::from_secs(1) {
            last_report = Instant::now();
            p.elapsed = start.elapsed().as_secs_f64();
            progress(&p);
        }
    }
    // Labels are only sent once due, as in real life; wait for the last ones unless stopped.
    while !pending.is_empty() && !stop() {
        std::thread::sleep(Duration::from_millis(50));
        send_due_labels(&producer, &label_topic, &mut pending, &mut p, Utc::now())?;
        if last_report.elapsed() >= Duration::from_secs(1) {
            last_report = Instant::now();
            p.elapsed = start.elapsed().as_secs_f64();
            progress(&p);
        }
    }
    let labels_dropped = pending.len() as u64;
    producer.flush(Duration::from_secs(30))?;
    let failed = producer.context().failed.load(Ordering::Acquire);
    if failed > 0 {
        return Err(Error::Undelivered(failed));
    }
    p.elapsed = start.elapsed().as_secs_f64();
    progress(&p);
    Ok(ProduceReport {
        progress: p,
        labels_dropped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_time_lapse_spaces_events_from_the_anchor_and_a_second_run_continues_the_first() {
        let now = DateTime::<Utc>::from_timestamp(1_795_687_200, 0).unwrap();
        assert_eq!(EventClock::Wall.at(7, now), now);
        let anchor = now - chrono::Duration::minutes(100);
        let first = EventClock::Lapse {
            anchor,
            step_ms: 60_000,
            first: 0,
        };
        let second = EventClock::Lapse {
            anchor,
            step_ms: 60_000,
            first: 40,
        };
        assert_eq!(first.at(0, now), anchor);
        assert_eq!(first.at(40, now), second.at(0, now));
        assert_eq!(second.at(60, now), now, "the 100th event is now");
    }
}
