//! A first model for the benchmarks that score: trained on demo transactions and their labels
//! ingested on topics, a store and a key prefix of their own, then copied into the benchmark's
//! registry, so it is production before the benchmark's first event.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use quiver_core::{Catalog, Config};
use quiver_demo::{Generator, GeneratorOptions};
use quiver_features::ViewCatalog;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};

/// Transactions (each with its label) the model learns from.
const HISTORY: i64 = 20_000;

pub(crate) fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// Trains a logistic regression and deploys it as production in `config`'s registry; returns
/// its id.
pub(crate) fn deploy_first_model(
    config: &Config,
    catalog: &Catalog,
    views: &ViewCatalog,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<String> {
    let mut warm = config.clone();
    warm.kafka.topic_prefix = format!("{}warm.", config.kafka.topic_prefix);
    warm.ingest.group_id = format!("{}-warm", config.ingest.group_id);
    warm.ingest.admin_listen = String::new();
    warm.store.dir = config.store.dir.join("warm");
    warm.redis.key_prefix = format!("{}-warm", config.redis.key_prefix);
    rt.block_on(quiver_kafka::create_topics(
        &warm.kafka,
        &quiver_stack::declared_topics(&warm, catalog),
    ))?;
    eprintln!("first model: {HISTORY} demo transactions + labels, ingested, trained ...");
    let producer: ThreadedProducer<_> = quiver_kafka::producer_config(&warm.kafka).create()?;
    let mut generator = Generator::new(3, GeneratorOptions::default());
    let base = chrono::Utc::now() - chrono::Duration::minutes(30);
    for i in 0..HISTORY {
        let t = generator.next_transaction(base + chrono::Duration::milliseconds(i * 50));
        for (topic, payload) in [
            ("transactions", t.to_json()),
            ("labels", t.label_json(t.event_time)),
        ] {
            let topic = warm.kafka.topic(topic);
            while let Err((e, _)) =
                producer.send(BaseRecord::to(&topic).key(&t.user_id).payload(&payload))
            {
                if e.rdkafka_error_code() != Some(rdkafka::types::RDKafkaErrorCode::QueueFull) {
                    bail!("produce: {e}");
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
    producer.flush(Duration::from_secs(60))?;
    let shutdown = quiver_ingest::Shutdown::default();
    let stats = Arc::new(quiver_ingest::IngestStats::default());
    let worker = {
        let (warm, catalog, views, s, st) = (
            warm.clone(),
            catalog.clone(),
            views.clone(),
            shutdown.clone(),
            stats.clone(),
        );
        std::thread::spawn(move || {
            quiver_ingest::run(
                &warm,
                &catalog,
                &views,
                s,
                quiver_telemetry::Health::default(),
                st,
            )
        })
    };
    let started = Instant::now();
    while stats.events.load(Ordering::Relaxed) < 2 * HISTORY as u64 {
        if worker.is_finished() {
            return match worker.join() {
                Ok(Ok(_)) => Err(anyhow!(
                    "the warm-up worker stopped before ingesting the history"
                )),
                Ok(Err(e)) => Err(anyhow!(e).context("the warm-up worker failed")),
                Err(_) => Err(anyhow!("the warm-up worker panicked")),
            };
        }
        if started.elapsed() > Duration::from_secs(180) {
            bail!("the warm-up worker did not ingest the history within 180 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    shutdown.trigger();
    worker
        .join()
        .map_err(|_| anyhow!("warm-up worker panicked"))??;
    let dataset = warm.store.dir.join("dataset");
    let options = quiver_batch::dataset::DatasetOptions::new("labels", dataset.clone());
    {
        let (handle, warm, catalog, views) = (
            rt.handle().clone(),
            warm.clone(),
            catalog.clone(),
            views.clone(),
        );
        rt.block_on(async move {
            tokio::task::spawn_blocking(move || {
                quiver_batch::dataset::build(handle, &warm, &catalog, &views, &options)
            })
            .await
        })??;
    }
    let card = quiver_models::Registry::open(&warm.store.dir)?.train_and_promote(&dataset)?;
    copy_dir(
        &warm.store.dir.join("models"),
        &config.store.dir.join("models"),
    )?;
    eprintln!(
        "  model {} (test ROC AUC {:.4})",
        card.id, card.test.roc_auc
    );
    Ok(card.id)
}
