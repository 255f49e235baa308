//! The sources the worker consumes, each bound to its topics, its decoder and its views.

use std::sync::Arc;
use std::time::Duration;

use quiver_core::decode::EventDecoder;
use quiver_core::{Catalog, Config, SourceSchema};
use quiver_features::{BoundView, FeatureView, ViewCatalog, ViewPlan};

use crate::Result;

/// A view of another source, read from the online store at scoring time (its entity key is a
/// field of the scored source).
#[derive(Debug, Clone)]
pub(crate) struct Lookup {
    pub(crate) plan: Arc<ViewPlan>,
    /// The scored source's field holding the view's entity key.
    pub(crate) key: String,
}

impl Lookup {
    pub(crate) fn view(&self) -> &Arc<FeatureView> {
        self.plan.view()
    }
}

/// A consumed source.
#[derive(Debug)]
pub(crate) struct BoundSource {
    pub(crate) schema: Arc<SourceSchema>,
    pub(crate) topic: String,
    pub(crate) dlq_topic: String,
    pub(crate) decoder: EventDecoder,
    /// Its views, maintained from its events.
    pub(crate) views: Vec<BoundView>,
    /// Online-store TTL of each view's entities.
    pub(crate) ttls: Vec<Duration>,
    /// Whether its events are scored.
    pub(crate) scored: bool,
    /// Views of other sources that go into its predictions.
    pub(crate) lookups: Vec<Lookup>,
}

impl BoundSource {
    /// The names of its views, in order.
    pub(crate) fn view_names(&self) -> Vec<&str> {
        self.views.iter().map(|v| v.view().name.as_str()).collect()
    }
}

/// Binds the sources the worker consumes (`ingest.sources`) to their views; scored sources are
/// `score.sources`, or every source with a view.
pub(crate) fn bind(
    config: &Config,
    catalog: &Catalog,
    views: &ViewCatalog,
) -> Result<Vec<BoundSource>> {
    let mut out = Vec::new();
    for schema in catalog.select(&config.ingest.sources)? {
        let own: Vec<&Arc<FeatureView>> = views
            .views
            .iter()
            .filter(|v| v.source == schema.name)
            .collect();
        let scored = views.scores(&config.score.sources, &schema.name);
        let bound = own
            .iter()
            .map(|v| ViewPlan::new(Arc::clone(v)).bind(&schema))
            .collect::<quiver_features::Result<Vec<_>>>()?;
        let lookups = if scored {
            views
                .views
                .iter()
                .filter(|v| v.source != schema.name)
                .filter(|v| schema.fields.iter().any(|f| f.name == v.entity))
                .map(|v| Lookup {
                    plan: Arc::new(ViewPlan::new(Arc::clone(v))),
                    key: v.entity.clone(),
                })
                .collect()
        } else {
            Vec::new()
        };
        out.push(BoundSource {
            topic: config.kafka.topic(&schema.topic),
            dlq_topic: config.kafka.dlq_topic(&schema.topic),
            decoder: EventDecoder::new(Arc::clone(&schema), config.ingest.max_event_bytes)
                .with_max_future_skew_ms(config.ingest.max_future_skew_ms),
            ttls: own
                .iter()
                .map(|v| Duration::from_micros(v.ttl.max(1) as u64))
                .collect(),
            views: bound,
            scored,
            lookups,
            schema,
        });
    }
    Ok(out)
}
