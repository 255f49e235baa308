//! Feature views, declared in `schemas/views/*.toml`:
//!
//! ```toml
//! name = "user_txn"
//! entity = "user_id"            # a key column of the source
//! source = "transactions"
//! allowed_lateness = "1h"       # default 1h
//! ttl = "30d"                   # online-store expiry after the entity's last event; default 30d
//!
//! [[features]]
//! name = "amount_sum_1h"
//! op = "sum"                    # count sum mean min max last distinct_count stddev
//! column = "amount"             # not for count
//! window = "1h"                 # or "lifetime"
//! hop = "5m"                    # optional; default 5m up to 12h, 1h up to 12d, 1d above
//! ```

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use quiver_core::Catalog;
use quiver_core::schema::{FieldType, SourceSchema};
use serde::Deserialize;

use crate::duration::{self, DAY_US, HOUR_US, MINUTE_US};
use crate::{Error, Result};

/// An aggregation operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// Number of events.
    Count,
    /// Sum of a numeric column.
    Sum,
    /// Mean of a numeric column.
    Mean,
    /// Minimum of a numeric column.
    Min,
    /// Maximum of a numeric column.
    Max,
    /// Value of the latest event (event time, then arrival order).
    Last,
    /// Approximate number of distinct values (HyperLogLog).
    DistinctCount,
    /// Population standard deviation of a numeric column.
    Stddev,
}

impl Op {
    /// The name used in view files.
    pub fn name(self) -> &'static str {
        match self {
            Op::Count => "count",
            Op::Sum => "sum",
            Op::Mean => "mean",
            Op::Min => "min",
            Op::Max => "max",
            Op::Last => "last",
            Op::DistinctCount => "distinct_count",
            Op::Stddev => "stddev",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "count" => Op::Count,
            "sum" => Op::Sum,
            "mean" => Op::Mean,
            "min" => Op::Min,
            "max" => Op::Max,
            "last" => Op::Last,
            "distinct_count" => Op::DistinctCount,
            "stddev" => Op::Stddev,
            _ => return None,
        })
    }

    fn numeric(self) -> bool {
        matches!(self, Op::Sum | Op::Mean | Op::Min | Op::Max | Op::Stddev)
    }
}

/// An aggregation window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// All events ever.
    Lifetime,
    /// A sliding window of `size` evaluated on tiles of `hop` (both µs).
    Sliding {
        /// Window length.
        size: i64,
        /// Tile length.
        hop: i64,
    },
}

/// The design's default hop for a window: 5 min up to 12 h, 1 h up to 12 d, 1 d above.
pub fn default_hop(size: i64) -> i64 {
    if size <= 12 * HOUR_US {
        5 * MINUTE_US
    } else if size <= 12 * DAY_US {
        HOUR_US
    } else {
        DAY_US
    }
}

/// One feature of a view.
#[derive(Debug, Clone, PartialEq)]
pub struct Aggregation {
    /// Feature name.
    pub name: String,
    /// Operation.
    pub op: Op,
    /// Input column (none for `count`).
    pub column: Option<String>,
    /// Window.
    pub window: Window,
}

/// A feature view: an entity of a source and its aggregations.
#[derive(Debug, Clone)]
pub struct FeatureView {
    /// View name.
    pub name: String,
    /// Entity key column.
    pub entity: String,
    /// Source name.
    pub source: String,
    /// Events older than the entity's latest event time by more than this are dropped (µs).
    pub allowed_lateness: i64,
    /// Online-store expiry after the entity's last update (µs).
    pub ttl: i64,
    /// Features, in declaration order.
    pub aggregations: Vec<Aggregation>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawView {
    name: String,
    entity: String,
    source: String,
    allowed_lateness: Option<String>,
    ttl: Option<String>,
    #[serde(default)]
    features: Vec<RawFeature>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFeature {
    name: String,
    op: String,
    column: Option<String>,
    window: String,
    hop: Option<String>,
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

impl FeatureView {
    /// Parses and validates one view file against the declared sources.
    pub fn parse(
        origin: &str,
        text: &str,
        catalog: &Catalog,
    ) -> std::result::Result<Self, Vec<String>> {
        let raw: RawView = quiver_core::schema::parse_toml(origin, text)?;
        let mut errors = Vec::new();
        let at = |what: &str| format!("{origin}: view `{}`: {what}", raw.name);
        if !valid_name(&raw.name) {
            errors.push(at("name must be lowercase [a-z0-9_]"));
        }
        let source: Option<&Arc<SourceSchema>> = catalog.source(&raw.source);
        match source {
            None => errors.push(at(&format!("unknown source `{}`", raw.source))),
            Some(s) if !s.keys.contains(&raw.entity) => errors.push(at(&format!(
                "entity `{}` is not a key of source `{}` (keys: {})",
                raw.entity,
                s.name,
                s.keys.join(", ")
            ))),
            Some(_) => {}
        }
        let mut duration_of = |key: &str, value: &Option<String>, default: i64| match value {
            None => default,
            Some(text) => duration::parse(text).unwrap_or_else(|| {
                errors.push(at(&format!(
                    "{key} `{text}` is not a duration like 30s, 5m, 1h, 7d"
                )));
                default
            }),
        };
        let allowed_lateness = duration_of("allowed_lateness", &raw.allowed_lateness, HOUR_US);
        let ttl = duration_of("ttl", &raw.ttl, 30 * DAY_US);
        if raw.features.is_empty() {
            errors.push(at("declares no features"));
        }
        let mut names = BTreeSet::new();
        let mut aggregations = Vec::new();
        for f in &raw.features {
            let here = |what: &str| at(&format!("feature `{}`: {what}", f.name));
            if !valid_name(&f.name) {
                errors.push(here("name must be lowercase [a-z0-9_]"));
            }
            if !names.insert(f.name.clone()) {
                errors.push(here("declared twice"));
            }
            let Some(op) = Op::parse(&f.op) else {
                errors.push(here(&format!(
                    "unknown op `{}` (expected count, sum, mean, min, max, last, distinct_count, stddev)",
                    f.op
                )));
                continue;
            };
            match (&f.column, op) {
                (Some(_), Op::Count) => errors.push(here("count takes no column")),
                (None, op) if op != Op::Count => {
                    errors.push(here(&format!("{} needs a column", f.op)))
                }
                (Some(column), op) => {
                    if let Some(source) = source {
                        match source.fields.iter().find(|c| &c.name == column) {
                            None => errors.push(here(&format!(
                                "unknown column `{column}` in source `{}`",
                                source.name
                            ))),
                            Some(c)
                                if op.numeric()
                                    && !matches!(c.ty, FieldType::Float | FieldType::Int) =>
                            {
                                errors.push(here(
                                    &format!(
                                        "{} over `{column}` needs a float or int column, not {:?}",
                                        f.op, c.ty
                                    )
                                    .to_lowercase(),
                                ))
                            }
                            Some(_) => {}
                        }
                    }
                }
                (None, _) => {}
            }
            let window = if f.window == "lifetime" {
                if f.hop.is_some() {
                    errors.push(here("a lifetime window has no hop"));
                }
                Window::Lifetime
            } else if let Some(size) = duration::parse(&f.window) {
                let hop = match &f.hop {
                    None => default_hop(size),
                    Some(h) => match duration::parse(h) {
                        Some(hop) if hop <= size => hop,
                        Some(_) => {
                            errors.push(here(&format!(
                                "hop `{h}` is longer than the window `{}`",
                                f.window
                            )));
                            default_hop(size)
                        }
                        None => {
                            errors.push(here(&format!("hop `{h}` is not a duration")));
                            default_hop(size)
                        }
                    },
                };
                Window::Sliding { size, hop }
            } else {
                errors.push(here(&format!(
                    "window `{}` is not a duration like 1h or \"lifetime\"",
                    f.window
                )));
                continue;
            };
            aggregations.push(Aggregation {
                name: f.name.clone(),
                op,
                column: f.column.clone(),
                window,
            });
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Self {
            name: raw.name,
            entity: raw.entity,
            source: raw.source,
            allowed_lateness,
            ttl,
            aggregations,
        })
    }

    /// A fingerprint of what shapes the view's stored state: entity, source and every feature
    /// in order (name, op, input column, window and hop). Lateness and TTL are left out: they
    /// change which events count, not how state is laid out. Stable across builds (the hash of
    /// a canonical text with the sketches' fixed hash), never 0 (0 marks shards written before
    /// fingerprints existed).
    pub fn fingerprint(&self) -> u64 {
        let mut text = format!("v1|{}|{}", self.entity, self.source);
        for agg in &self.aggregations {
            let window = match agg.window {
                Window::Lifetime => "lifetime".to_string(),
                Window::Sliding { size, hop } => format!("{size}/{hop}"),
            };
            text.push_str(&format!(
                "|{}:{}:{}:{window}",
                agg.name,
                agg.op.name(),
                agg.column.as_deref().unwrap_or("")
            ));
        }
        crate::hll::hash(text.as_bytes()).max(1)
    }

    /// Feature names in order.
    pub fn feature_names(&self) -> impl Iterator<Item = &str> {
        self.aggregations.iter().map(|a| a.name.as_str())
    }
}

/// Every declared view.
#[derive(Debug, Clone, Default)]
pub struct ViewCatalog {
    /// Views sorted by name.
    pub views: Vec<Arc<FeatureView>>,
}

impl FeatureView {
    /// The smallest hop of its sliding windows (µs; `None` when every feature is lifetime): the
    /// state it serves can be that old between two events, so freshness is judged against it.
    pub fn smallest_hop(&self) -> Option<i64> {
        self.aggregations
            .iter()
            .filter_map(|a| match a.window {
                Window::Sliding { hop, .. } => Some(hop),
                Window::Lifetime => None,
            })
            .min()
    }
}

impl ViewCatalog {
    /// Whether the streaming worker scores the events of `source`: it is one of
    /// `score_sources` (`score.sources`), or — when that is empty — a source with a view.
    pub fn scores(&self, score_sources: &[String], source: &str) -> bool {
        if score_sources.is_empty() {
            self.views.iter().any(|v| v.source == source)
        } else {
            score_sources.iter().any(|s| s == source)
        }
    }

    /// The features that are lifetime aggregates moving one way by construction (count, sum,
    /// distinct count, min, max over a lifetime window), as models name their inputs
    /// (`<view>__<feature>`): their live values leave the training range however stable the
    /// stream is, so monitoring reports their drift but keeps them out of the drift share. (A
    /// lifetime `last`, `mean` or `stddev` does not drift by construction and counts.)
    pub fn lifetime_inputs(&self) -> std::collections::BTreeSet<String> {
        self.views
            .iter()
            .flat_map(|v| {
                v.aggregations
                    .iter()
                    .filter(|a| {
                        a.window == Window::Lifetime
                            && matches!(
                                a.op,
                                Op::Count | Op::Sum | Op::DistinctCount | Op::Min | Op::Max
                            )
                    })
                    .map(move |a| format!("{}__{}", v.name, a.name))
            })
            .collect()
    }

    /// Loads `<dir>/views/*.toml` (none is fine), reporting every problem at once.
    pub fn load(dir: &Path, catalog: &Catalog) -> Result<Self> {
        let files = quiver_core::schema::read_toml_files(&dir.join("views"), false)?;
        Self::from_texts(files.iter().map(|(o, t)| (o.as_str(), t.as_str())), catalog)
    }

    /// Builds the catalog from `(origin, text)` pairs, without I/O.
    pub fn from_texts<'a>(
        files: impl IntoIterator<Item = (&'a str, &'a str)>,
        catalog: &Catalog,
    ) -> Result<Self> {
        let mut errors = Vec::new();
        let mut views: Vec<Arc<FeatureView>> = Vec::new();
        for (origin, text) in files {
            match FeatureView::parse(origin, text, catalog) {
                Ok(v) => {
                    if views.iter().any(|o| o.name == v.name) {
                        errors.push(format!("{origin}: view `{}` declared twice", v.name));
                    }
                    views.push(Arc::new(v));
                }
                Err(mut e) => errors.append(&mut e),
            }
        }
        if !errors.is_empty() {
            return Err(Error::Definition(errors));
        }
        views.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Self { views })
    }

    /// A view by name.
    pub fn view(&self, name: &str) -> Option<&Arc<FeatureView>> {
        self.views.iter().find(|v| v.name == name)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn catalog() -> Catalog {
        Catalog::from_texts([(
            "transactions.toml",
            r#"
name = "transactions"
event_time = "event_time"
id = "txn_id"
keys = ["user_id", "merchant_id"]
[fields]
txn_id = "string"
user_id = "string"
merchant_id = "string"
amount = "float"
country = "string"
event_time = "timestamp"
"#,
        )])
        .unwrap()
    }

    #[test]
    fn the_fingerprint_follows_the_state_layout_only() {
        let view = |features: &str, extra: &str| {
            let text = format!(
                "name = \"v\"\nentity = \"user_id\"\nsource = \"transactions\"\n{extra}{features}"
            );
            FeatureView::parse("v.toml", &text, &catalog())
                .unwrap()
                .fingerprint()
        };
        let f = |name: &str, op: &str, window: &str| {
            let column = if op == "count" {
                ""
            } else {
                "column = \"amount\"\n"
            };
            format!(
                "[[features]]\nname = \"{name}\"\nop = \"{op}\"\n{column}window = \"{window}\"\n"
            )
        };
        let (sum, max) = (f("a", "sum", "1h"), f("b", "max", "1h"));
        let base = view(&format!("{sum}{max}"), "");
        assert_ne!(base, 0);
        assert_eq!(base, view(&format!("{sum}{max}"), ""), "deterministic");
        // Lateness and TTL do not change the layout.
        assert_eq!(
            base,
            view(
                &format!("{sum}{max}"),
                "ttl = \"2d\"\nallowed_lateness = \"5m\"\n"
            )
        );
        for changed in [
            format!("{max}{sum}"),                                  // reordered
            format!("{}{sum}{max}", f("m", "min", "1h")),           // a feature added before
            format!("{sum}{}", f("b", "max", "2h")),                // a window changed
            format!("{sum}{}hop = \"10m\"\n", f("b", "max", "1h")), // a hop changed
            format!("{sum}{}", f("b", "min", "1h")),                // an op changed
            format!("{sum}{}", f("c", "max", "1h")),                // a feature renamed
        ] {
            assert_ne!(base, view(&changed, ""), "{changed}");
        }
    }

    #[test]
    fn lifetime_inputs_are_the_lifetime_aggregates_that_only_move_one_way() {
        let text = r#"
name = "u"
entity = "user_id"
source = "transactions"
[[features]]
name = "n"
op = "count"
window = "lifetime"
[[features]]
name = "top"
op = "max"
column = "amount"
window = "lifetime"
[[features]]
name = "country"
op = "last"
column = "country"
window = "lifetime"
[[features]]
name = "n_1h"
op = "count"
window = "1h"
"#;
        let views = ViewCatalog {
            views: vec![Arc::new(
                FeatureView::parse("u.toml", text, &catalog()).unwrap(),
            )],
        };
        let lifetime: Vec<String> = views.lifetime_inputs().into_iter().collect();
        assert_eq!(lifetime, ["u__n", "u__top"]);
        assert_eq!(views.views[0].smallest_hop(), Some(5 * 60 * 1_000_000));
    }

    #[test]
    fn parses_a_view_with_default_hops() {
        let text = r#"
name = "user_txn"
entity = "user_id"
source = "transactions"
[[features]]
name = "txn_count_1h"
op = "count"
window = "1h"
[[features]]
name = "amount_mean_24h"
op = "mean"
column = "amount"
window = "24h"
[[features]]
name = "amount_stddev_30d"
op = "stddev"
column = "amount"
window = "30d"
[[features]]
name = "last_country"
op = "last"
column = "country"
window = "lifetime"
"#;
        let v = FeatureView::parse("v.toml", text, &catalog()).unwrap();
        assert_eq!(v.allowed_lateness, HOUR_US);
        assert_eq!(
            v.aggregations[0].window,
            Window::Sliding {
                size: HOUR_US,
                hop: 5 * MINUTE_US
            }
        );
        assert_eq!(
            v.aggregations[1].window,
            Window::Sliding {
                size: 24 * HOUR_US,
                hop: HOUR_US
            }
        );
        assert_eq!(
            v.aggregations[2].window,
            Window::Sliding {
                size: 30 * DAY_US,
                hop: DAY_US
            }
        );
        assert_eq!(v.aggregations[3].window, Window::Lifetime);
    }

    #[test]
    fn reports_every_problem_precisely() {
        let text = r#"
name = "bad"
entity = "country"
source = "transactions"
allowed_lateness = "soon"
[[features]]
name = "a"
op = "sum"
column = "country"
window = "1h"
[[features]]
name = "b"
op = "median"
window = "1h"
[[features]]
name = "c"
op = "max"
column = "nope"
window = "1h"
[[features]]
name = "d"
op = "count"
window = "yesterday"
[[features]]
name = "e"
op = "count"
window = "1h"
hop = "2h"
"#;
        let errs = FeatureView::parse("bad.toml", text, &catalog())
            .unwrap_err()
            .join("\n");
        for expected in [
            "entity `country` is not a key",
            "allowed_lateness `soon`",
            "sum over `country` needs a float or int column",
            "unknown op `median`",
            "unknown column `nope`",
            "window `yesterday`",
            "hop `2h` is longer than the window",
        ] {
            assert!(errs.contains(expected), "missing `{expected}` in:\n{errs}");
        }
    }
}
