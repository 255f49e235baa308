//! The scoring worker (`quiver score`): a consumer-group member on the scoreable source topics.
//! For each event it assembles the feature vector **as of that event, including it**, scores it
//! with the production model (a canary decides its share of events; a shadow is scored
//! alongside), emits a prediction JSON to the predictions topic keyed by the entity, and
//! appends it to the score store (Parquet, table `scores`).
//!
//! **Point in time.** The scorer reads the entity's shards from Redis (what ingest has applied)
//! and folds in the events ingest has not applied yet: its own partition's shard is taken at its
//! applied offset `a`, then the events of that entity and partition this scorer has consumed
//! after `a` (it keeps them until ingest catches up), then the event itself — exactly the
//! state ingest will log for the event. When ingest is already past the event (`a ≥ offset`,
//! the scorer is catching up a backlog), the vector is read back from the feature log, which
//! ingest writes before Redis. When the scorer cannot know the events between `a` and the event
//! (it started after them, while ingest had not applied them yet), it waits for ingest to pass the event (`score.wait_for_ingest_ms`), then reads the
//! log; past the wait it scores what it has and counts a fallback. Other partitions' shards
//! (entities spanning partitions) are merged as they are at scoring time.
//!
//! **Delivery.** Each prediction is recorded in Redis under its event (source, partition,
//! offset and event id) before it is produced (`SET NX`): a replayed event re-emits the
//! recorded prediction, so one event id never gets two different decisions. Offsets are stored only after the broker acknowledged the
//! prediction and the score store holds it, in offset order, and committed every
//! `score.commit_interval_ms` and at shutdown. Malformed events are skipped (ingest sends them to
//! the dead-letter topic). Without a production model the scorer waits (consumes nothing), so
//! the first model promoted scores the backlog.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema};
use chrono::{DateTime, Utc};
use futures::FutureExt as _;
use metrics::{counter, histogram};
use quiver_core::decode::{EventDecoder, RawEvent};
use quiver_core::schema::{SourceSchema, timestamp_type};
use quiver_core::{Catalog, Config};
use quiver_features::log::Column;
use quiver_features::{EntityState, FeatureView, Value, ViewCatalog, ViewPlan};
use quiver_models::{Deployment, Model, Registry};
use quiver_online::{OnlineWriter, Shard};
use quiver_store::{OfflineStore, ScoreStore, SegmentFile, SegmentId};
use quiver_telemetry::names;
use rdkafka::Message as _;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tracing::{info, warn};

/// Result alias used across `quiver-score`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors of the scoring worker.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Configuration or schemas are unusable.
    #[error(transparent)]
    Core(#[from] quiver_core::Error),
    /// The broker is unreachable or topics are missing.
    #[error(transparent)]
    Kafka(#[from] quiver_kafka::Error),
    /// A client operation failed.
    #[error("kafka: {0}")]
    Client(#[from] rdkafka::error::KafkaError),
    /// Redis failed.
    #[error(transparent)]
    Online(#[from] quiver_online::Error),
    /// The score store or feature log failed.
    #[error(transparent)]
    Store(#[from] quiver_store::Error),
    /// The registry or a model failed.
    #[error(transparent)]
    Models(#[from] quiver_models::Error),
    /// Arrow or Parquet failed.
    #[error("arrow: {0}")]
    Arrow(String),
    /// Nothing to score, or an unrecoverable condition.
    #[error("score: {0}")]
    Fatal(String),
}

impl From<arrow::error::ArrowError> for Error {
    fn from(e: arrow::error::ArrowError) -> Self {
        Self::Arrow(e.to_string())
    }
}

impl From<parquet::errors::ParquetError> for Error {
    fn from(e: parquet::errors::ParquetError) -> Self {
        Self::Arrow(e.to_string())
    }
}

/// Live counters (for `quiver up`'s status line and tests).
#[derive(Debug, Default)]
pub struct ScoreStats {
    /// Events consumed.
    pub events: AtomicU64,
    /// Predictions acknowledged.
    pub predictions: AtomicU64,
    /// Replayed events whose recorded prediction was re-emitted.
    pub replayed: AtomicU64,
    /// Malformed events skipped.
    pub malformed: AtomicU64,
    /// Recent event → prediction latencies (seconds), newest last.
    pub latencies: Mutex<VecDeque<f64>>,
    /// The production model in use.
    pub model: Mutex<Option<String>>,
}

impl ScoreStats {
    /// (p50, p99) of the recent latencies, in seconds.
    pub fn latency_percentiles(&self) -> Option<(f64, f64)> {
        let recent = self.latencies.lock().ok()?;
        if recent.is_empty() {
            return None;
        }
        let mut v: Vec<f64> = recent.iter().copied().collect();
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        Some((at(0.5), at(0.99)))
    }
}

/// How long a micro-batch waits for more events after its first one.
const BATCH_LINGER: Duration = Duration::from_millis(2);

/// How many recent latencies [`ScoreStats`] keeps.
const RECENT: usize = 5_000;

/// A stop flag.
pub type Shutdown = Arc<AtomicBool>;

/// A view scored for a source.
struct ViewRt {
    plan: Arc<ViewPlan>,
    entity_col: usize,
    inputs: Vec<Option<usize>>,
}

/// A scoreable source.
struct SourceRt {
    schema: Arc<SourceSchema>,
    topic: String,
    decoder: EventDecoder,
    views: Vec<ViewRt>,
}

/// An event the scorer consumed that ingest may not have applied yet.
#[derive(Debug, Clone)]
struct Pending {
    offset: i64,
    time: i64,
    inputs: Vec<Value>,
}

/// Loaded models and the deployment they come from.
struct Models {
    registry: Registry,
    deployment: Deployment,
    stamp: Option<SystemTime>,
    loaded: HashMap<String, Arc<Model>>,
    checked: Instant,
    every: Duration,
    announced: bool,
}

impl Models {
    fn get(&mut self, id: &str) -> Result<Arc<Model>> {
        if let Some(m) = self.loaded.get(id) {
            return Ok(Arc::clone(m));
        }
        let model = Arc::new(self.registry.model(id)?);
        self.loaded.insert(id.to_string(), Arc::clone(&model));
        Ok(model)
    }

    /// Re-reads the deployment when `registry.json` changed.
    fn refresh(&mut self, stats: &ScoreStats) -> Result<()> {
        if self.checked.elapsed() < self.every && self.announced {
            return Ok(());
        }
        self.checked = Instant::now();
        let stamp = std::fs::metadata(self.registry.deployment_path())
            .and_then(|m| m.modified())
            .ok();
        if stamp == self.stamp && stamp.is_some() {
            return Ok(());
        }
        let deployment = self.registry.deployment()?;
        let first = !self.announced;
        self.announced = true;
        if deployment != self.deployment || first {
            info!(
                production = deployment.production.as_deref().unwrap_or("none"),
                canary = deployment.canary.as_ref().map_or("none", |c| c.id.as_str()),
                shadow = deployment.shadow.as_deref().unwrap_or("none"),
                "deployment loaded"
            );
            counter!(names::SCORE_MODEL_RELOADS).increment(1);
            for id in deployment
                .production
                .iter()
                .chain(deployment.canary.as_ref().map(|c| &c.id))
                .chain(deployment.shadow.iter())
            {
                self.get(id)?;
            }
            if let Ok(mut m) = stats.model.lock() {
                m.clone_from(&deployment.production);
            }
            self.deployment = deployment;
        }
        self.stamp = stamp;
        Ok(())
    }
}

/// Reads vectors back from a view's feature log.
struct LogReader {
    offline: OfflineStore,
    segments: HashMap<String, Vec<SegmentFile>>,
    /// The last segment read per (view, partition): reads go forward in offset order.
    loaded: HashMap<(String, i32), (SegmentFile, RecordBatch)>,
}

impl LogReader {
    fn row(
        &mut self,
        view: &FeatureView,
        partition: i32,
        offset: i64,
    ) -> Result<Option<(i64, Vec<Value>)>> {
        let covers = |s: &SegmentFile| {
            s.id.partition == partition && s.id.first_offset <= offset && offset <= s.id.last_offset
        };
        let slot = (view.name.clone(), partition);
        let cached = self.loaded.get(&slot).filter(|(s, _)| covers(s));
        let batch = match cached {
            Some((_, batch)) => batch.clone(),
            None => {
                let mut found = self
                    .segments
                    .get(&view.name)
                    .and_then(|list| list.iter().find(|s| covers(s)).cloned());
                if found.is_none() {
                    let list = self.offline.segments(&view.name)?;
                    found = list.iter().find(|s| covers(s)).cloned();
                    self.segments.insert(view.name.clone(), list);
                }
                let Some(segment) = found else {
                    return Ok(None);
                };
                let file = std::fs::File::open(&segment.path)
                    .map_err(|e| Error::Fatal(format!("{}: {e}", segment.path.display())))?;
                let reader =
                    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)?
                        .build()?;
                let batches = reader.collect::<std::result::Result<Vec<_>, _>>()?;
                let Some(first) = batches.first() else {
                    return Ok(None);
                };
                let batch = arrow::compute::concat_batches(&first.schema(), &batches)?;
                self.loaded.insert(slot, (segment, batch.clone()));
                batch
            }
        };
        let (Some(offsets), Some(as_of)) = (
            batch.column_by_name("_offset"),
            batch.column_by_name("_as_of"),
        ) else {
            return Ok(None);
        };
        // Log rows are in offset order.
        let Some(offsets) = offsets.as_any().downcast_ref::<Int64Array>() else {
            return Ok(None);
        };
        let Ok(row) = offsets.values().binary_search(&offset) else {
            return Ok(None);
        };
        let values = view
            .aggregations
            .iter()
            .map(|a| {
                batch
                    .column_by_name(&a.name)
                    .map_or(Value::Null, |c| Column::new(c.as_ref()).value(row))
            })
            .collect();
        Ok(Some((
            Column::new(as_of.as_ref()).int(row).unwrap_or(0),
            values,
        )))
    }
}

/// A prediction waiting for its acknowledgement.
struct InFlight {
    offset: i64,
    delivery: Option<DeliveryFuture>,
    row: Option<ScoreRow>,
    timestamp_ms: Option<i64>,
    model: String,
    variant: &'static str,
}

/// One row of the score store.
#[derive(Debug, Clone)]
struct ScoreRow {
    event_id: String,
    keys: Vec<String>,
    model_id: String,
    variant: String,
    score: f64,
    decision: bool,
    shadow: Option<(String, f64)>,
    event_time: i64,
    prediction_time: i64,
    offset: i64,
    replayed: bool,
    features: String,
}

fn value_json(v: &Value) -> serde_json::Value {
    match v {
        Value::Null => serde_json::Value::Null,
        Value::Bool(b) => (*b).into(),
        Value::Int(i) => (*i).into(),
        Value::Float(f) => {
            serde_json::Number::from_f64(*f).map_or(serde_json::Value::Null, Into::into)
        }
        Value::Str(s) => s.clone().into(),
    }
}

fn micros_rfc3339(t: i64) -> String {
    DateTime::<Utc>::from_timestamp_micros(t)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// Share of the canary: a fixed hash of the event id in [0, 1).
pub fn canary_point(event_id: &str) -> f64 {
    let h = quiver_features::hll::hash(event_id.as_bytes());
    (h % 1_000_000) as f64 / 1_000_000.0
}

/// The scorer.
struct Scorer<'a> {
    config: &'a Config,
    sources: Vec<SourceRt>,
    online: OnlineWriter,
    producer: FutureProducer,
    predictions_topic: String,
    models: Models,
    logs: LogReader,
    scores: ScoreStore,
    overlay: HashMap<(usize, usize, String, i32), Vec<Pending>>,
    seen_from: HashMap<(usize, i32), i64>,
    in_flight: BTreeMap<(usize, i32), VecDeque<InFlight>>,
    buffered: BTreeMap<(usize, i32), Vec<ScoreRow>>,
    acked: BTreeMap<(usize, i32), i64>,
    stats: &'a ScoreStats,
    scratch: Vec<u8>,
}

/// Runs the scoring worker until `shutdown`.
pub fn run(
    config: &Config,
    catalog: &Catalog,
    views: &ViewCatalog,
    shutdown: Shutdown,
    stats: Arc<ScoreStats>,
) -> Result<()> {
    let mut sources = Vec::new();
    for schema in &catalog.sources {
        let wanted = if config.score.sources.is_empty() {
            views.views.iter().any(|v| v.source == schema.name)
        } else {
            config.score.sources.contains(&schema.name)
        };
        if !wanted {
            continue;
        }
        let raw = schema.raw_schema();
        let index = |name: &str| {
            raw.index_of(name).map_err(|_| {
                Error::Fatal(format!("column `{name}` missing from `{}`", schema.name))
            })
        };
        let mut rts = Vec::new();
        for view in views.views.iter().filter(|v| v.source == schema.name) {
            rts.push(ViewRt {
                plan: Arc::new(ViewPlan::new(Arc::clone(view))),
                entity_col: index(&view.entity)?,
                inputs: view
                    .aggregations
                    .iter()
                    .map(|a| a.column.as_deref().map(index).transpose())
                    .collect::<Result<_>>()?,
            });
        }
        sources.push(SourceRt {
            topic: config.kafka.topic(&schema.topic),
            decoder: EventDecoder::new(Arc::clone(schema), config.ingest.max_event_bytes),
            schema: Arc::clone(schema),
            views: rts,
        });
    }
    if sources.is_empty() {
        return Err(Error::Fatal(
            "no scoreable source (none has a feature view)".into(),
        ));
    }
    let topics: Vec<String> = sources.iter().map(|s| s.topic.clone()).collect();
    let predictions_topic = config.kafka.topic(&config.score.predictions_topic);
    let mut required = topics.clone();
    required.push(predictions_topic.clone());
    quiver_kafka::require_topics(&config.kafka, &required)?;
    let online = OnlineWriter::connect(
        &config.redis.url,
        &config.redis.key_prefix,
        Duration::from_millis(config.redis.connect_timeout_ms),
    )
    .map_err(|e| Error::Fatal(format!("cannot reach Redis at {}: {e}", config.redis.url)))?;
    let producer: FutureProducer = quiver_kafka::producer_config(&config.kafka)
        .set("enable.idempotence", "true")
        // A micro-batch's predictions share produce requests (1 ms linger).
        .set("linger.ms", "1")
        .create()?;
    let consumer: BaseConsumer = quiver_kafka::client_config(&config.kafka)
        .set("group.id", &config.score.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topic_refs)?;
    let mut scorer = Scorer {
        config,
        sources,
        online,
        producer,
        predictions_topic,
        models: Models {
            registry: Registry::open(&config.store.dir)?,
            deployment: Deployment::default(),
            stamp: None,
            loaded: HashMap::new(),
            checked: Instant::now(),
            every: Duration::from_millis(config.score.reload_interval_ms),
            announced: false,
        },
        logs: LogReader {
            offline: OfflineStore::open(&config.store.dir)?,
            segments: HashMap::new(),
            loaded: HashMap::new(),
        },
        scores: ScoreStore::open(&config.store.dir)?,
        overlay: HashMap::new(),
        seen_from: HashMap::new(),
        in_flight: BTreeMap::new(),
        buffered: BTreeMap::new(),
        acked: BTreeMap::new(),
        stats: &stats,
        scratch: Vec::new(),
    };
    info!(topics = ?topics, predictions = %scorer.predictions_topic, "scorer started");
    let mut last_commit = Instant::now();
    let commit_every = Duration::from_millis(config.score.commit_interval_ms);
    let mut waiting_logged = false;
    while !shutdown.load(Ordering::Relaxed) {
        scorer.models.refresh(&stats)?;
        if scorer.models.deployment.production.is_none() {
            if !waiting_logged {
                info!("no production model yet: waiting (`quiver models promote <id>`)");
                waiting_logged = true;
            }
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        // A micro-batch: what arrives within BATCH_LINGER of the first event, so Redis and the
        // broker see one round trip per batch rather than per event.
        let mut batch = Vec::new();
        let mut first: Option<Instant> = None;
        while batch.len() < 500 {
            let wait = match first {
                None => Duration::from_millis(50),
                Some(at) => BATCH_LINGER.saturating_sub(at.elapsed()),
            };
            match consumer.poll(wait) {
                Some(Ok(m)) => {
                    batch.push(m.detach());
                    first.get_or_insert_with(Instant::now);
                }
                Some(Err(e)) => {
                    warn!(error = %e, "consumer error");
                    break;
                }
                None => break,
            }
            if first.is_some_and(|at| at.elapsed() >= BATCH_LINGER) {
                break;
            }
        }
        if !batch.is_empty() {
            let started = Instant::now();
            scorer.score_batch(&batch)?;
            let took = started.elapsed();
            if took > Duration::from_millis(200) {
                warn!(
                    events = batch.len(),
                    ms = took.as_millis() as u64,
                    "slow scoring batch"
                );
            }
        }
        scorer.drain(false)?;
        if last_commit.elapsed() >= commit_every {
            let started = Instant::now();
            scorer.commit(&consumer, CommitMode::Async)?;
            let took = started.elapsed();
            if took > Duration::from_millis(100) {
                warn!(
                    ms = took.as_millis() as u64,
                    "slow score-store write and commit"
                );
            }
            last_commit = Instant::now();
        }
    }
    scorer.drain(true)?;
    scorer.commit(&consumer, CommitMode::Sync)?;
    info!("scorer stopped; offsets committed");
    Ok(())
}

impl Scorer<'_> {
    fn score_batch(&mut self, batch: &[rdkafka::message::OwnedMessage]) -> Result<()> {
        // Decode, keeping order; malformed events only advance the offset.
        struct Ev {
            source: usize,
            partition: i32,
            offset: i64,
            timestamp_ms: Option<i64>,
            row: Option<RecordBatch>,
        }
        // One decode per (source, partition) run; rows come back in input order.
        let mut groups: BTreeMap<(usize, i32), Vec<&rdkafka::message::OwnedMessage>> =
            BTreeMap::new();
        for m in batch {
            let Some(source) = self.sources.iter().position(|s| s.topic == m.topic()) else {
                continue;
            };
            groups.entry((source, m.partition())).or_default().push(m);
        }
        let mut events = Vec::with_capacity(batch.len());
        for ((source, partition), messages) in groups {
            if let Some(first) = messages.first() {
                self.seen_from
                    .entry((source, partition))
                    .or_insert(first.offset());
            }
            self.stats
                .events
                .fetch_add(messages.len() as u64, Ordering::Relaxed);
            let raw: Vec<RawEvent<'_>> = messages
                .iter()
                .map(|m| RawEvent {
                    offset: m.offset(),
                    payload: m.payload(),
                })
                .collect();
            let decoded = self.sources[source].decoder.decode(
                partition,
                &raw,
                Utc::now().timestamp_millis(),
            )?;
            let rejected: std::collections::HashSet<usize> =
                decoded.rejected.iter().map(|r| r.index).collect();
            let mut next_row = 0;
            for (i, m) in messages.iter().enumerate() {
                let row = if rejected.contains(&i) {
                    self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                    counter!(names::SCORE_MALFORMED).increment(1);
                    None
                } else {
                    next_row += 1;
                    Some(decoded.batch.slice(next_row - 1, 1))
                };
                events.push(Ev {
                    source,
                    partition,
                    offset: m.offset(),
                    timestamp_ms: m.timestamp().to_millis(),
                    row,
                });
            }
        }
        // Shards of every entity touched, per view, in one round trip per view.
        let mut fetched: HashMap<(usize, usize, String), BTreeMap<i32, Shard>> = HashMap::new();
        for (s, source) in self.sources.iter().enumerate() {
            for (v, view) in source.views.iter().enumerate() {
                let mut keys: Vec<String> = events
                    .iter()
                    .filter(|e| e.source == s)
                    .filter_map(|e| e.row.as_ref())
                    .map(|r| Column::new(r.column(view.entity_col).as_ref()).key(0))
                    .collect();
                keys.sort();
                keys.dedup();
                let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
                let shards = self.online.fetch(&view.plan.view().name, &refs)?;
                for (k, sh) in keys.into_iter().zip(shards) {
                    fetched.insert((s, v, k), sh);
                }
            }
        }
        // Vectors, scores, predictions.
        let mut drafts = Vec::new();
        for e in &events {
            let Some(row) = &e.row else {
                self.in_flight
                    .entry((e.source, e.partition))
                    .or_default()
                    .push_back(InFlight {
                        offset: e.offset,
                        delivery: None,
                        row: None,
                        timestamp_ms: None,
                        model: String::new(),
                        variant: "",
                    });
                continue;
            };
            let (features, event_time) =
                self.vector(e.source, e.partition, e.offset, row, &mut fetched)?;
            drafts.push((e, row, features, event_time));
        }
        let now = Utc::now();
        let mut claims = Vec::with_capacity(drafts.len());
        let mut rows = Vec::with_capacity(drafts.len());
        // Fixed for the batch: the deployment and the prediction time.
        let d = self.models.deployment.clone();
        let prediction_time = now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        for (e, row, features, event_time) in &drafts {
            let source = &self.sources[e.source];
            let schema = &source.schema;
            let column = |name: &str| {
                row.schema()
                    .index_of(name)
                    .ok()
                    .map(|i| Column::new(row.column(i).as_ref()).key(0))
            };
            let event_id = schema
                .id
                .as_deref()
                .and_then(column)
                .unwrap_or_else(|| format!("{}-{}", e.partition, e.offset));
            let production = d.production.clone().unwrap_or_default();
            let (decider, variant) = match &d.canary {
                Some(c) if canary_point(&event_id) < c.fraction => (c.id.clone(), "canary"),
                _ => (production, "production"),
            };
            let model = self.models.get(&decider)?;
            let score = model.score(features)?;
            let decision = model.decide(score);
            let shadow = match &d.shadow {
                Some(id) => {
                    let m = self.models.get(id)?;
                    let s = m.score(features)?;
                    Some((id.clone(), s, m.decide(s)))
                }
                None => None,
            };
            let keys: Vec<String> = schema
                .keys
                .iter()
                .map(|k| column(k).unwrap_or_default())
                .collect();
            let mut json = serde_json::Map::new();
            json.insert(
                schema.id.clone().unwrap_or_else(|| "event_id".into()),
                event_id.clone().into(),
            );
            for (k, v) in schema.keys.iter().zip(&keys) {
                json.insert(k.clone(), v.clone().into());
            }
            json.insert("model_id".into(), decider.clone().into());
            json.insert("variant".into(), variant.into());
            json.insert(
                "score".into(),
                serde_json::Number::from_f64(score).map_or(serde_json::Value::Null, Into::into),
            );
            json.insert("decision".into(), decision.into());
            let feature_json: serde_json::Map<String, serde_json::Value> = features
                .iter()
                .map(|(k, v)| (k.clone(), value_json(v)))
                .collect();
            let features_value = serde_json::Value::Object(feature_json);
            let features_text = features_value.to_string();
            json.insert("features".into(), features_value);
            json.insert("event_time".into(), micros_rfc3339(*event_time).into());
            json.insert("prediction_time".into(), prediction_time.clone().into());
            if let Some((id, s, decision)) = &shadow {
                json.insert(
                    "shadow".into(),
                    serde_json::json!({"model_id": id, "score": s, "decision": decision}),
                );
            }
            let text = serde_json::Value::Object(json).to_string();
            // One claim per consumed event: a replay (same partition and offset) finds it.
            claims.push((
                format!("{}:{}:{}:{event_id}", schema.name, e.partition, e.offset),
                text,
            ));
            rows.push(ScoreRow {
                event_id,
                keys,
                model_id: decider,
                variant: variant.to_string(),
                score,
                decision,
                shadow: shadow.map(|(id, s, _)| (id, s)),
                event_time: *event_time,
                prediction_time: now.timestamp_micros(),
                offset: e.offset,
                replayed: false,
                features: features_text,
            });
        }
        let ttl = Duration::from_secs(self.config.score.dedup_ttl_s);
        let earlier = self.online.claim(&claims, ttl)?;
        for (((e, _, _, _), (_, text)), (mut row, previous)) in drafts
            .iter()
            .zip(&claims)
            .zip(rows.into_iter().zip(earlier))
        {
            let payload = match previous {
                Some(previous) => {
                    // A replay: the recorded prediction, not a new one.
                    self.stats.replayed.fetch_add(1, Ordering::Relaxed);
                    counter!(names::SCORE_REPLAYED).increment(1);
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&previous) {
                        row.model_id = v["model_id"].as_str().unwrap_or_default().to_string();
                        row.variant = v["variant"].as_str().unwrap_or_default().to_string();
                        row.score = v["score"].as_f64().unwrap_or(row.score);
                        row.decision = v["decision"].as_bool().unwrap_or(row.decision);
                        row.features = v["features"].to_string();
                    }
                    row.replayed = true;
                    previous
                }
                None => text.clone(),
            };
            let key = row.keys.first().cloned().unwrap_or_default();
            let delivery = self
                .producer
                .send_result(
                    FutureRecord::to(&self.predictions_topic)
                        .key(&key)
                        .payload(&payload),
                )
                .map_err(|(e, _)| Error::Client(e))?;
            let variant = if row.variant == "canary" {
                "canary"
            } else {
                "production"
            };
            self.in_flight
                .entry((e.source, e.partition))
                .or_default()
                .push_back(InFlight {
                    offset: e.offset,
                    delivery: Some(delivery),
                    model: row.model_id.clone(),
                    row: Some(row),
                    timestamp_ms: e.timestamp_ms,
                    variant,
                });
        }
        Ok(())
    }

    /// The vector of one event as of the event (see the crate docs), as `<view>__<feature>`.
    fn vector(
        &mut self,
        s: usize,
        partition: i32,
        offset: i64,
        row: &RecordBatch,
        fetched: &mut HashMap<(usize, usize, String), BTreeMap<i32, Shard>>,
    ) -> Result<(BTreeMap<String, Value>, i64)> {
        let time_col = row
            .schema()
            .index_of(&self.sources[s].schema.event_time)
            .map_err(|_| Error::Fatal("event time column missing".into()))?;
        let time = Column::new(row.column(time_col).as_ref())
            .int(0)
            .unwrap_or(0);
        let mut out = BTreeMap::new();
        let seen_from = self
            .seen_from
            .get(&(s, partition))
            .copied()
            .unwrap_or(offset);
        for v in 0..self.sources[s].views.len() {
            let view = &self.sources[s].views[v];
            let plan = Arc::clone(&view.plan);
            let entity = Column::new(row.column(view.entity_col).as_ref()).key(0);
            let inputs: Vec<Value> = view
                .inputs
                .iter()
                .map(|c| {
                    c.map_or(Value::Null, |c| {
                        Column::new(row.column(c).as_ref()).value(0)
                    })
                })
                .collect();
            let key = (s, v, entity.clone());
            let mut shards = fetched.remove(&key).unwrap_or_default();
            let mut applied = shards.get(&partition).map_or(-1, |sh| sh.applied_offset);
            let overlay_key = (s, v, entity.clone(), partition);
            let values = if applied >= offset {
                self.logged_vector(&plan, partition, offset)?
            } else if applied + 1 < seen_from {
                // Events between ingest's state and this scorer's start are unknown here: wait
                // for ingest to pass this event, then read its logged vector.
                tracing::debug!(view = %plan.view().name, partition, offset, applied, seen_from, "waiting for ingest");
                let deadline =
                    Instant::now() + Duration::from_millis(self.config.score.wait_for_ingest_ms);
                while applied < offset && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                    let again = self.online.fetch(&plan.view().name, &[entity.as_str()])?;
                    shards = again.into_iter().next().unwrap_or_default();
                    applied = shards.get(&partition).map_or(-1, |sh| sh.applied_offset);
                }
                if applied >= offset {
                    self.logged_vector(&plan, partition, offset)?
                } else {
                    warn!(view = %plan.view().name, partition, offset, "ingest did not catch up: vector without the events in between");
                    counter!(names::SCORE_FALLBACK, "view" => plan.view().name.clone())
                        .increment(1);
                    None
                }
            } else {
                None
            };
            let values = match values {
                Some(values) => values,
                None => {
                    // Own shard at ingest's applied offset + the events since + this event.
                    let pending = self.overlay.entry(overlay_key.clone()).or_default();
                    pending.retain(|p| p.offset > applied);
                    let mut own = shards
                        .get(&partition)
                        .filter(|sh| plan.fits(&sh.state))
                        .map_or_else(|| plan.new_state(), |sh| sh.state.clone());
                    for p in pending.iter().filter(|p| p.offset < offset) {
                        plan.apply(
                            &mut own,
                            p.time,
                            (partition, p.offset),
                            &p.inputs,
                            &mut self.scratch,
                        );
                    }
                    plan.apply(
                        &mut own,
                        time,
                        (partition, offset),
                        &inputs,
                        &mut self.scratch,
                    );
                    let mut states: Vec<&EntityState> = Vec::new();
                    let mut own_pushed = false;
                    for (p, sh) in &shards {
                        if *p == partition {
                            continue;
                        }
                        if *p > partition && !own_pushed {
                            states.push(&own);
                            own_pushed = true;
                        }
                        if plan.fits(&sh.state) {
                            states.push(&sh.state);
                        }
                    }
                    if !own_pushed {
                        states.push(&own);
                    }
                    let (_, values) = plan.vector_as_of(&states, time, &mut Default::default());
                    values
                }
            };
            // Remember the event until ingest has applied it.
            if applied < offset {
                let pending = self.overlay.entry(overlay_key).or_default();
                if pending.last().is_none_or(|p| p.offset < offset) {
                    pending.push(Pending {
                        offset,
                        time,
                        inputs,
                    });
                }
            }
            fetched.insert(key, shards);
            for (agg, value) in plan.view().aggregations.iter().zip(values) {
                out.insert(format!("{}__{}", plan.view().name, agg.name), value);
            }
        }
        Ok((out, time))
    }

    fn logged_vector(
        &mut self,
        plan: &ViewPlan,
        partition: i32,
        offset: i64,
    ) -> Result<Option<Vec<Value>>> {
        let found = self.logs.row(plan.view(), partition, offset)?;
        if found.is_some() {
            counter!(names::SCORE_FROM_LOG, "view" => plan.view().name.clone()).increment(1);
        }
        Ok(found.map(|(_, v)| v))
    }

    /// Moves acknowledged predictions (in offset order) to the score buffers. With `all`, waits
    /// for every outstanding acknowledgement.
    fn drain(&mut self, all: bool) -> Result<()> {
        for (key, queue) in self.in_flight.iter_mut() {
            while let Some(front) = queue.front_mut() {
                if let Some(delivery) = front.delivery.as_mut() {
                    let outcome = if all {
                        Some(futures::executor::block_on(delivery))
                    } else {
                        delivery.now_or_never()
                    };
                    match outcome {
                        None => break,
                        Some(Ok(Ok(_))) => {}
                        Some(Ok(Err((e, _)))) => return Err(Error::Client(e)),
                        Some(Err(_)) => {
                            return Err(Error::Fatal("producer dropped a delivery".into()));
                        }
                    }
                }
                let Some(done) = queue.pop_front() else { break };
                if let Some(row) = done.row {
                    self.stats.predictions.fetch_add(1, Ordering::Relaxed);
                    counter!(names::SCORE_PREDICTIONS, "model" => done.model.clone(), "variant" => done.variant).increment(1);
                    if let Some(ts) = done.timestamp_ms {
                        let latency = (Utc::now().timestamp_millis() - ts).max(0) as f64 / 1e3;
                        histogram!(names::SCORE_LATENCY_SECONDS).record(latency);
                        if let Ok(mut recent) = self.stats.latencies.lock() {
                            recent.push_back(latency);
                            while recent.len() > RECENT {
                                recent.pop_front();
                            }
                        }
                    }
                    self.buffered.entry(*key).or_default().push(row);
                }
                self.acked.insert(*key, done.offset);
            }
        }
        Ok(())
    }

    /// Writes buffered predictions to the score store, then stores and commits the offsets
    /// they cover.
    fn commit(&mut self, consumer: &BaseConsumer, mode: CommitMode) -> Result<()> {
        let buffered = std::mem::take(&mut self.buffered);
        for ((s, partition), rows) in buffered {
            if rows.is_empty() {
                continue;
            }
            let source = &self.sources[s].schema;
            let batch = score_batch(source, partition, &rows)?;
            let id = SegmentId {
                partition,
                first_offset: rows.first().map_or(0, |r| r.offset),
                last_offset: rows.last().map_or(0, |r| r.offset),
            };
            self.scores
                .write_segment(&source.name, Utc::now().date_naive(), id, &batch)?;
        }
        if self.acked.is_empty() {
            return Ok(());
        }
        let mut list = TopicPartitionList::new();
        for ((s, partition), offset) in std::mem::take(&mut self.acked) {
            list.add_partition_offset(
                &self.sources[s].topic,
                partition,
                Offset::Offset(offset + 1),
            )?;
        }
        if let Err(e) = consumer.commit(&list, mode) {
            warn!(error = %e, "commit failed; retried at the next interval");
        }
        Ok(())
    }
}

/// The score store's schema for a source.
fn score_batch(source: &SourceSchema, partition: i32, rows: &[ScoreRow]) -> Result<RecordBatch> {
    let mut fields = vec![Field::new(
        source.id.as_deref().unwrap_or("event_id"),
        DataType::Utf8,
        false,
    )];
    let mut columns: Vec<ArrayRef> = vec![Arc::new(StringArray::from_iter_values(
        rows.iter().map(|r| r.event_id.as_str()),
    ))];
    for (i, k) in source.keys.iter().enumerate() {
        fields.push(Field::new(k, DataType::Utf8, true));
        columns.push(Arc::new(StringArray::from_iter_values(
            rows.iter()
                .map(|r| r.keys.get(i).map_or("", String::as_str)),
        )));
    }
    fields.extend([
        Field::new("model_id", DataType::Utf8, false),
        Field::new("variant", DataType::Utf8, false),
        Field::new("score", DataType::Float64, false),
        Field::new("decision", DataType::Boolean, false),
        Field::new("shadow_model_id", DataType::Utf8, true),
        Field::new("shadow_score", DataType::Float64, true),
        Field::new("event_time", timestamp_type(), false),
        Field::new("prediction_time", timestamp_type(), false),
        Field::new("_partition", DataType::Int32, false),
        Field::new("_offset", DataType::Int64, false),
        Field::new("replayed", DataType::Boolean, false),
        Field::new("features", DataType::Utf8, false),
    ]);
    columns.push(Arc::new(StringArray::from_iter_values(
        rows.iter().map(|r| r.model_id.as_str()),
    )));
    columns.push(Arc::new(StringArray::from_iter_values(
        rows.iter().map(|r| r.variant.as_str()),
    )));
    columns.push(Arc::new(Float64Array::from_iter_values(
        rows.iter().map(|r| r.score),
    )));
    columns.push(Arc::new(BooleanArray::from_iter(
        rows.iter().map(|r| Some(r.decision)),
    )));
    columns.push(Arc::new(StringArray::from_iter(
        rows.iter().map(|r| r.shadow.as_ref().map(|s| s.0.clone())),
    )));
    columns.push(Arc::new(Float64Array::from_iter(
        rows.iter().map(|r| r.shadow.as_ref().map(|s| s.1)),
    )));
    columns.push(Arc::new(
        TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.event_time))
            .with_timezone("UTC"),
    ));
    columns.push(Arc::new(
        TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.prediction_time))
            .with_timezone("UTC"),
    ));
    columns.push(Arc::new(Int32Array::from(vec![partition; rows.len()])));
    columns.push(Arc::new(Int64Array::from_iter_values(
        rows.iter().map(|r| r.offset),
    )));
    columns.push(Arc::new(BooleanArray::from_iter(
        rows.iter().map(|r| Some(r.replayed)),
    )));
    columns.push(Arc::new(StringArray::from_iter_values(
        rows.iter().map(|r| r.features.as_str()),
    )));
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

/// Where the score store of `source` lives (the `scores` table).
pub fn score_dir(config: &Config, source: &str) -> PathBuf {
    config.store.dir.join("scores").join(source)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_canary_share_follows_the_fraction() {
        let hits = (0..100_000)
            .filter(|i| canary_point(&format!("t-{i}")) < 0.1)
            .count();
        assert!((9_500..10_500).contains(&hits), "{hits}");
        assert_eq!(canary_point("t-1"), canary_point("t-1"));
    }
}
