//! The retraining job the policy asks for ([`quiver_monitor::retrain`]), on its own thread: a
//! training set of the latest labelled events, a candidate trained with the production model's
//! settings and registered with the reason, and both evaluated on that set's (recent) test
//! split.

use std::sync::mpsc::{Receiver, channel};

use quiver_batch::dataset::DatasetOptions;
use quiver_core::{Catalog, Config};
use quiver_features::ViewCatalog;
use quiver_models::{Registry, metrics::roc_auc, train};
use quiver_monitor::retrain::Outcome;

/// What the job needs.
#[derive(Debug, Clone)]
pub(crate) struct Job {
    pub(crate) config: Config,
    pub(crate) catalog: Catalog,
    pub(crate) views: ViewCatalog,
    /// The production model whose settings the candidate takes.
    pub(crate) production: String,
    /// Why (into the card and the registry's timeline).
    pub(crate) reason: String,
    /// How many of the latest labelled events to train on.
    pub(crate) rows: usize,
}

/// Starts the job; its outcome arrives on the receiver.
pub(crate) fn start(job: Job) -> Receiver<Outcome> {
    let (send, receive) = channel();
    std::thread::spawn(move || {
        let outcome = run(&job).unwrap_or_else(|error| Outcome::Failed { error });
        let _ = send.send(outcome);
    });
    receive
}

fn run(job: &Job) -> Result<Outcome, String> {
    let store = &job.config.store.dir;
    let registry = Registry::open(store).map_err(|e| e.to_string())?;
    let card = registry
        .card(&job.production)
        .map_err(|e| format!("production model {}: {e}", job.production))?;
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%3f");
    let out = store.join("datasets").join(format!("retrain-{stamp}"));
    let mut options = DatasetOptions::new(job.config.monitor.labels.clone(), out.clone());
    options.latest = Some(job.rows);
    // Trained and compared on the vectors serving scored the recent events with.
    options.vectors = quiver_batch::dataset::Vectors::Logged;
    if !job.config.monitor.label_column.is_empty() {
        options.label_column = Some(job.config.monitor.label_column.clone());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    quiver_batch::dataset::build(
        runtime.handle().clone(),
        &job.config,
        &job.catalog,
        &job.views,
        &options,
    )
    .map_err(|e| format!("training set: {e}"))?;
    let dataset = train::load_dataset(&out).map_err(|e| format!("training set: {e}"))?;
    let id = registry.new_id(card.kind, card.params.seed);
    let trained =
        train::train(&dataset, card.kind, card.params, id).map_err(|e| format!("training: {e}"))?;
    let candidate = registry
        .register(&trained, &dataset.manifest, &out, &job.reason)
        .map_err(|e| format!("registering: {e}"))?;
    let production = registry.model(&job.production).map_err(|e| e.to_string())?;
    let scores = train::score_split(&production, &dataset.features, &dataset.test)
        .map_err(|e| format!("scoring production on the recent test split: {e}"))?;
    Ok(Outcome::Trained {
        model_id: candidate.id,
        candidate_roc_auc: candidate.test.roc_auc,
        production_roc_auc: roc_auc(&scores, &dataset.test.labels),
    })
}
