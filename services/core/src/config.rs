//! Layered configuration: embedded defaults → user file → `QUIVER__SECTION__KEY` environment.
//!
//! Validation reports every problem at once, each with the key's path and where its value came
//! from. The embedded defaults list every key, so a key absent from them is unknown (except in
//! the free-form `kafka.properties` table, passed to librdkafka unchanged).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::{Table, Value};

use crate::error::{Error, Result};

/// The embedded defaults, as shipped.
pub const DEFAULTS: &str = include_str!("default.toml");

/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "QUIVER__";

/// Tables whose keys are free-form (passed through), as dotted paths.
const FREE_FORM: &[&str] = &["kafka.properties"];

/// Quiver's whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Broker connection.
    pub kafka: KafkaConfig,
    /// Online store connection.
    pub redis: RedisConfig,
    /// File stores.
    pub store: StoreConfig,
    /// Where schemas live.
    pub schemas: SchemasConfig,
    /// The streaming worker.
    pub ingest: IngestConfig,
    /// Scoring in the streaming worker.
    pub score: ScoreConfig,
    /// The HTTP API.
    pub api: ApiConfig,
    /// Logs and metrics.
    pub telemetry: TelemetryConfig,
    /// The local development stack.
    pub stack: StackConfig,
    /// The live monitor (`quiver monitor run`).
    pub monitor: MonitorConfig,
}

/// `[kafka]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma separated.
    pub brokers: String,
    /// Prepended to every topic name.
    pub topic_prefix: String,
    /// Suffix of dead-letter topics.
    pub dlq_suffix: String,
    /// Start-up connection timeout.
    pub connect_timeout_ms: u64,
    /// librdkafka properties passed through.
    pub properties: BTreeMap<String, String>,
}

impl KafkaConfig {
    /// The physical topic name of a logical one.
    pub fn topic(&self, logical: &str) -> String {
        format!("{}{}", self.topic_prefix, logical)
    }

    /// The physical dead-letter topic of a logical source topic.
    pub fn dlq_topic(&self, logical: &str) -> String {
        format!("{}{}{}", self.topic_prefix, logical, self.dlq_suffix)
    }
}

/// `[redis]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://host:port[/db]`.
    pub url: String,
    /// Prefix of online-store keys.
    pub key_prefix: String,
    /// Start-up connection timeout.
    pub connect_timeout_ms: u64,
    /// How long a command may wait for its reply.
    pub command_timeout_ms: u64,
}

/// `[store]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Root directory of the file stores.
    pub dir: PathBuf,
    /// `quiver store compact` merges runs of small segments up to this many bytes.
    pub compact_target_bytes: u64,
    /// How long each table keeps its segments.
    pub retention: RetentionConfig,
}

/// `[store.retention]`: per table, a duration (`30d`, `36h`) or `keep`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// The raw store.
    pub raw: String,
    /// The feature log.
    pub log: String,
    /// The score store.
    pub scores: String,
    /// The monitor's history.
    pub monitor: String,
}

/// The word that keeps a table's segments for good.
pub const KEEP: &str = "keep";

impl RetentionConfig {
    /// Each table's key and setting.
    pub fn entries(&self) -> [(&'static str, &str); 4] {
        [
            ("raw", &self.raw),
            ("log", &self.log),
            ("scores", &self.scores),
            ("monitor", &self.monitor),
        ]
    }

    /// A setting read: `Some(None)` for `keep`, `Some(Some(µs))` for a duration, `None` for
    /// anything else (which validation reports).
    pub fn parse(setting: &str) -> Option<Option<i64>> {
        if setting.trim() == KEEP {
            Some(None)
        } else {
            crate::duration::parse(setting).map(Some)
        }
    }

    /// A setting as microseconds; `None` for `keep` (and for text that is not a duration,
    /// which validation reports).
    pub fn micros(setting: &str) -> Option<i64> {
        Self::parse(setting).flatten()
    }
}

/// `[schemas]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemasConfig {
    /// Directory with `sources/*.toml`.
    pub dir: PathBuf,
}

/// `[ingest]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// Consumer group of the ingest service.
    pub group_id: String,
    /// Sources to ingest (empty: all).
    pub sources: Vec<String>,
    /// Flush a segment at this many events.
    pub segment_max_events: usize,
    /// Flush a segment at this many payload bytes.
    pub segment_max_bytes: usize,
    /// Flush a segment when its oldest event is this old.
    pub segment_max_age_ms: u64,
    /// Offset commit period.
    pub commit_interval_ms: u64,
    /// Larger events are dead letters.
    pub max_event_bytes: usize,
    /// Events whose event time is further ahead of their ingest time are dead letters.
    pub max_future_skew_ms: u64,
    /// Admin listener (`/metrics`, `/healthz`, `/readyz`); empty disables it.
    pub admin_listen: String,
    /// Entities kept in memory per view.
    pub state_cache_entities: usize,
}

/// `[score]`: scoring in the streaming worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreConfig {
    /// Sources to score (empty: every source with a feature view).
    pub sources: Vec<String>,
    /// Predictions topic (logical name; the topic prefix applies).
    pub predictions_topic: String,
    /// Registry poll period.
    pub reload_interval_ms: u64,
    /// How long an uncommitted claim survives.
    pub claim_ttl_s: u64,
}

/// `[api]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Listen address of `quiver serve`.
    pub listen: String,
    /// Bearer token required on `/v1` routes (empty: no auth).
    pub token: String,
    /// `host:port` where the status page reads the worker's `/metrics` (empty:
    /// `ingest.admin_listen`, the worker on this host).
    pub status_worker: String,
    /// `host:port` where the status page reads the monitor's `/metrics` (empty:
    /// `monitor.admin_listen`).
    pub status_monitor: String,
}

/// `[telemetry]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// `pretty` or `json`.
    pub log_format: String,
    /// A tracing filter directive.
    pub log_level: String,
}

/// `[stack]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StackConfig {
    /// Work dir of the local stack.
    pub work_dir: PathBuf,
}

/// `[monitor]`: the live monitor of deployed models (`quiver monitor run`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorConfig {
    /// `/metrics`, `/healthz` and `/readyz` of the monitor; empty disables the listener.
    pub admin_listen: String,
    /// The sliding window every report covers (`30s`, `10m`, `1h`).
    pub window: String,
    /// How often the window is evaluated (metrics updated, a row appended to `monitor`).
    pub interval: String,
    /// Predictions a window needs before drift or realised performance is reported.
    pub min_rows: usize,
    /// How long a prediction waits for its label before it is given up on.
    pub label_horizon: String,
    /// The source whose events are the observed labels (joined to predictions by event id).
    pub labels: String,
    /// Its boolean column (empty: its only boolean field).
    pub label_column: String,
    /// Feature rows kept per model and interval for the drift tests (a uniform sample; counts,
    /// scores, latencies and labels are kept whole).
    pub sample_rows: usize,
    /// Retraining when the production model degrades.
    pub retrain: RetrainConfig,
}

/// `[monitor.retrain]`: retraining when the production model degrades.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrainConfig {
    /// Whether the monitor retrains at all.
    pub enabled: bool,
    /// Retrain when the realised ROC AUC falls below this ...
    pub min_roc_auc: f64,
    /// ... or the drift share reaches this ...
    pub max_drift_share: f64,
    /// ... for this many consecutive evaluations.
    pub for_windows: usize,
    /// Put a better candidate on canary and promote it after `canary_for` without regression.
    pub auto_promote: bool,
    /// The canary's share of events.
    pub canary_fraction: f64,
    /// How long the canary runs before promotion.
    pub canary_for: String,
}

impl RetrainConfig {
    /// `canary_for` in microseconds (validated at load).
    pub fn canary_for_us(&self) -> i64 {
        crate::duration::parse(&self.canary_for).unwrap_or(10 * crate::duration::MINUTE_US)
    }
}

impl MonitorConfig {
    /// `window` in microseconds (validated at load).
    pub fn window_us(&self) -> i64 {
        crate::duration::parse(&self.window).unwrap_or(crate::duration::MINUTE_US)
    }

    /// `interval` in microseconds (validated at load).
    pub fn interval_us(&self) -> i64 {
        crate::duration::parse(&self.interval).unwrap_or(crate::duration::SECOND_US)
    }

    /// `label_horizon` in microseconds (validated at load).
    pub fn label_horizon_us(&self) -> i64 {
        crate::duration::parse(&self.label_horizon).unwrap_or(crate::duration::HOUR_US)
    }
}

/// Where a value came from, for error messages.
#[derive(Debug, Clone)]
enum Origin {
    File(PathBuf),
    Env(String),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::File(p) => write!(f, "{}", p.display()),
            Origin::Env(var) => write!(f, "environment variable {var}"),
        }
    }
}

impl Config {
    /// Loads defaults, then `file` (if any), then `QUIVER__*` variables from the process
    /// environment.
    pub fn load(file: Option<&Path>) -> Result<Self> {
        let user = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
                    path: path.to_path_buf(),
                    source,
                })?;
                Some((path.to_path_buf(), text))
            }
            None => None,
        };
        Self::from_layers(
            user.as_ref().map(|(p, t)| (p.as_path(), t.as_str())),
            std::env::vars(),
        )
    }

    /// Builds the configuration from a user file's text and an environment, without I/O.
    pub fn from_layers(
        user: Option<(&Path, &str)>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self> {
        let defaults: Table = toml::from_str(DEFAULTS)
            .map_err(|e| Error::Config(vec![format!("embedded defaults: {e}")]))?;
        let mut merged = defaults.clone();
        let mut errors = Vec::new();

        if let Some((path, text)) = user {
            match toml::from_str::<Table>(text) {
                Ok(table) => {
                    let origin = Origin::File(path.to_path_buf());
                    check_shape(&defaults, &table, "", &origin, &mut errors);
                    merge(&mut merged, table);
                }
                Err(e) => errors.push(format!("{}: {}", path.display(), one_line(&e.to_string()))),
            }
        }

        let mut env: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        env.sort();
        for (var, raw) in env {
            match env_override(&defaults, &var, &raw) {
                Ok((path, value)) => set_path(&mut merged, &path, value),
                Err(e) => errors.push(e),
            }
        }

        // Pass-through properties accept any scalar and are handed to librdkafka as strings.
        stringify_free_form(&mut merged);

        if !errors.is_empty() {
            return Err(Error::Config(errors));
        }
        let config: Config = Value::Table(merged)
            .try_into()
            .map_err(|e: toml::de::Error| Error::Config(vec![one_line(&e.to_string())]))?;
        let problems = config.validate();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(Error::Config(problems))
        }
    }

    /// Checks values whose type is right but whose content is not.
    pub fn validate(&self) -> Vec<String> {
        let mut errors = Vec::new();
        if self.kafka.brokers.trim().is_empty() {
            errors.push("kafka.brokers: must name at least one broker".to_string());
        }
        if self.kafka.dlq_suffix.is_empty() {
            errors.push("kafka.dlq_suffix: must not be empty".to_string());
        }
        if !self.redis.url.starts_with("redis://") && !self.redis.url.starts_with("rediss://") {
            errors.push(format!(
                "redis.url: `{}` is not a redis:// or rediss:// URL",
                self.redis.url
            ));
        }
        if self.redis.key_prefix.is_empty() || self.redis.key_prefix.contains(char::is_whitespace) {
            errors.push("redis.key_prefix: must be non-empty without spaces".to_string());
        }
        if self.ingest.group_id.trim().is_empty() {
            errors.push("ingest.group_id: must not be empty".to_string());
        }
        for (key, value) in [
            (
                "ingest.segment_max_events",
                self.ingest.segment_max_events as u64,
            ),
            (
                "ingest.segment_max_bytes",
                self.ingest.segment_max_bytes as u64,
            ),
            ("ingest.segment_max_age_ms", self.ingest.segment_max_age_ms),
            ("ingest.commit_interval_ms", self.ingest.commit_interval_ms),
            ("score.reload_interval_ms", self.score.reload_interval_ms),
            ("score.claim_ttl_s", self.score.claim_ttl_s),
            (
                "ingest.state_cache_entities",
                self.ingest.state_cache_entities as u64,
            ),
            ("redis.command_timeout_ms", self.redis.command_timeout_ms),
            ("ingest.max_event_bytes", self.ingest.max_event_bytes as u64),
            ("kafka.connect_timeout_ms", self.kafka.connect_timeout_ms),
            ("redis.connect_timeout_ms", self.redis.connect_timeout_ms),
        ] {
            if value == 0 {
                errors.push(format!("{key}: must be greater than 0"));
            }
        }
        if !self.ingest.admin_listen.is_empty() {
            check_listen(
                "ingest.admin_listen",
                &self.ingest.admin_listen,
                &mut errors,
            );
        }
        check_listen("api.listen", &self.api.listen, &mut errors);
        if !self.monitor.admin_listen.is_empty() {
            check_listen(
                "monitor.admin_listen",
                &self.monitor.admin_listen,
                &mut errors,
            );
        }
        let r = &self.monitor.retrain;
        if !(0.0..=1.0).contains(&r.min_roc_auc) {
            errors.push(format!(
                "monitor.retrain.min_roc_auc: {} is not in [0, 1]",
                r.min_roc_auc
            ));
        }
        if !(0.0..=1.0).contains(&r.max_drift_share) {
            errors.push(format!(
                "monitor.retrain.max_drift_share: {} is not in [0, 1]",
                r.max_drift_share
            ));
        }
        if !(r.canary_fraction > 0.0 && r.canary_fraction <= 1.0) {
            errors.push(format!(
                "monitor.retrain.canary_fraction: {} is not in (0, 1]",
                r.canary_fraction
            ));
        }
        if r.for_windows == 0 {
            errors.push("monitor.retrain.for_windows: must be greater than 0".to_string());
        }
        for (table, setting) in self.store.retention.entries() {
            if RetentionConfig::parse(setting).is_none() {
                errors.push(format!(
                    "store.retention.{table}: `{setting}` is neither `keep` nor a duration (a positive number and s, m, h or d)"
                ));
            }
        }
        if self.store.compact_target_bytes == 0 {
            errors.push("store.compact_target_bytes: must be greater than 0".to_string());
        }
        for (key, value) in [
            ("monitor.retrain.canary_for", &r.canary_for),
            ("monitor.window", &self.monitor.window),
            ("monitor.interval", &self.monitor.interval),
            ("monitor.label_horizon", &self.monitor.label_horizon),
        ] {
            if crate::duration::parse(value).is_none() {
                errors.push(format!(
                    "{key}: `{value}` is not a duration (a positive number and s, m, h or d)"
                ));
            }
        }
        if let (Some(window), Some(interval)) = (
            crate::duration::parse(&self.monitor.window),
            crate::duration::parse(&self.monitor.interval),
        ) && interval > window
        {
            errors.push(format!(
                "monitor.interval: `{}` is longer than monitor.window `{}`",
                self.monitor.interval, self.monitor.window
            ));
        }
        if let (Some(window), Some(horizon)) = (
            crate::duration::parse(&self.monitor.window),
            crate::duration::parse(&self.monitor.label_horizon),
        ) && horizon < window
        {
            errors.push(format!(
                "monitor.label_horizon: `{}` is shorter than monitor.window `{}` (predictions of the window must wait for their labels at least that long)",
                self.monitor.label_horizon, self.monitor.window
            ));
        }
        for (key, value) in [
            ("monitor.min_rows", self.monitor.min_rows),
            ("monitor.sample_rows", self.monitor.sample_rows),
        ] {
            if value == 0 {
                errors.push(format!("{key}: must be greater than 0"));
            }
        }
        if self.score.predictions_topic.trim().is_empty() {
            errors.push("score.predictions_topic: must not be empty".to_string());
        }
        if !matches!(self.telemetry.log_format.as_str(), "pretty" | "json") {
            errors.push(format!(
                "telemetry.log_format: `{}` is not one of \"pretty\", \"json\"",
                self.telemetry.log_format
            ));
        }
        errors
    }

    /// The effective configuration as TOML (for `quiver config show`), secrets redacted.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(&self.redacted()).unwrap_or_else(|e| format!("# cannot render: {e}"))
    }

    /// A copy fit to show: the Redis URL's credentials, the API token and every librdkafka
    /// property that holds a secret (see [`is_secret_property`]) replaced by `***`.
    pub fn redacted(&self) -> Config {
        let mut shown = self.clone();
        shown.redis.url = redacted_url(&self.redis.url);
        if !shown.api.token.is_empty() {
            shown.api.token = REDACTED.to_string();
        }
        for (key, value) in shown.kafka.properties.iter_mut() {
            if is_secret_property(key) {
                *value = REDACTED.to_string();
            }
        }
        shown
    }

    /// The first broker's `host:port`.
    pub fn first_broker(&self) -> &str {
        self.kafka.brokers.split(',').next().unwrap_or("").trim()
    }
}

/// What a redacted secret shows instead.
pub const REDACTED: &str = "***";

/// Whether a librdkafka property holds a secret (`sasl.password`, `ssl.key.password`,
/// `sasl.oauthbearer.client.secret`, `ssl.keystore.password`, `sasl.oauthbearer.config`, ...).
pub fn is_secret_property(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "token",
        "sasl.oauthbearer.config",
        "ssl.key.pem",
    ]
    .iter()
    .any(|s| key.contains(s))
}

/// A URL fit for logs and error messages: credentials (`user:password@`) are replaced by
/// `***@`.
pub fn redacted_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    match authority.rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

fn check_listen(key: &str, value: &str, errors: &mut Vec<String>) {
    if value.parse::<SocketAddr>().is_err() {
        errors.push(format!("{key}: `{value}` is not an ip:port address"));
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "string",
        Value::Integer(_) => "integer",
        Value::Float(_) => "float",
        Value::Boolean(_) => "boolean",
        Value::Datetime(_) => "datetime",
        Value::Array(_) => "array",
        Value::Table(_) => "table",
    }
}

/// Compares a user table with the defaults: unknown keys and wrong types, all of them.
fn check_shape(
    defaults: &Table,
    user: &Table,
    prefix: &str,
    origin: &Origin,
    errors: &mut Vec<String>,
) {
    for (key, value) in user {
        let path = join(prefix, key);
        if FREE_FORM.contains(&prefix) {
            if matches!(
                value,
                Value::Table(_) | Value::Array(_) | Value::Datetime(_)
            ) {
                errors.push(format!(
                    "{path} ({origin}): expected a string, found {}",
                    type_name(value)
                ));
            }
            continue;
        }
        let Some(default) = defaults.get(key) else {
            errors.push(format!("{path} ({origin}): unknown key"));
            continue;
        };
        match (default, value) {
            (Value::Table(d), Value::Table(u)) => check_shape(d, u, &path, origin, errors),
            (Value::Float(_), Value::Integer(_)) => {}
            (Value::Integer(_), Value::Integer(i)) if *i < 0 => {
                errors.push(format!(
                    "{path} ({origin}): must not be negative, found {i}"
                ));
            }
            (Value::Array(_), Value::Array(items)) => {
                if let Some(bad) = items.iter().find(|v| !matches!(v, Value::String(_))) {
                    errors.push(format!(
                        "{path} ({origin}): expected an array of strings, found an item of type {}",
                        type_name(bad)
                    ));
                }
            }
            (d, u) if std::mem::discriminant(d) != std::mem::discriminant(u) => {
                errors.push(format!(
                    "{path} ({origin}): expected {}, found {}",
                    type_name(d),
                    type_name(u)
                ));
            }
            _ => {}
        }
    }
}

fn merge(base: &mut Table, over: Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(Value::Table(b)), Value::Table(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

fn set_path(table: &mut Table, path: &[String], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut current = table;
    for part in parents {
        let entry = current
            .entry(part.clone())
            .or_insert_with(|| Value::Table(Table::new()));
        if !entry.is_table() {
            *entry = Value::Table(Table::new());
        }
        match entry {
            Value::Table(t) => current = t,
            _ => return,
        }
    }
    current.insert(last.clone(), value);
}

fn stringify_free_form(merged: &mut Table) {
    for path in FREE_FORM {
        let mut current = Some(&mut *merged);
        for part in path.split('.') {
            current = current
                .and_then(|t| t.get_mut(part))
                .and_then(Value::as_table_mut);
        }
        if let Some(table) = current {
            for (_, value) in table.iter_mut() {
                let text = match &*value {
                    Value::String(_) => continue,
                    Value::Integer(i) => i.to_string(),
                    Value::Float(f) => f.to_string(),
                    Value::Boolean(b) => b.to_string(),
                    _ => continue, // reported by check_shape
                };
                *value = Value::String(text);
            }
        }
    }
}

/// Maps `QUIVER__SECTION__KEY=raw` to a path and a typed value, using the defaults' types.
fn env_override(
    defaults: &Table,
    var: &str,
    raw: &str,
) -> std::result::Result<(Vec<String>, Value), String> {
    let origin = Origin::Env(var.to_string());
    let parts: Vec<String> = var[ENV_PREFIX.len()..]
        .split("__")
        .map(|p| p.to_ascii_lowercase())
        .collect();
    if parts.iter().any(String::is_empty) {
        return Err(format!(
            "{origin}: malformed name (expected QUIVER__SECTION__KEY)"
        ));
    }
    // Free-form tables take the rest of the name as the key, `_` standing for `.`.
    for free in FREE_FORM {
        let free_parts: Vec<&str> = free.split('.').collect();
        if parts.len() > free_parts.len() && parts.iter().zip(&free_parts).all(|(a, b)| a == b) {
            let key = parts[free_parts.len()..].join(".").replace('_', ".");
            let mut path: Vec<String> = free_parts.iter().map(|s| s.to_string()).collect();
            path.push(key);
            return Ok((path, Value::String(raw.to_string())));
        }
    }
    let path_str = parts.join(".");
    let mut current = defaults;
    let (last, parents) = parts
        .split_last()
        .ok_or_else(|| format!("{origin}: empty name"))?;
    for part in parents {
        current = current
            .get(part)
            .and_then(Value::as_table)
            .ok_or_else(|| format!("{path_str} ({origin}): unknown key"))?;
    }
    let default = current
        .get(last)
        .ok_or_else(|| format!("{path_str} ({origin}): unknown key"))?;
    let value = match default {
        Value::String(_) => Value::String(raw.to_string()),
        Value::Integer(_) => raw
            .trim()
            .parse::<u64>()
            .ok()
            .and_then(|v| i64::try_from(v).ok())
            .map(Value::Integer)
            .ok_or_else(|| {
                format!("{path_str} ({origin}): expected a non-negative integer, found `{raw}`")
            })?,
        Value::Float(_) => raw
            .trim()
            .parse::<f64>()
            .map(Value::Float)
            .map_err(|_| format!("{path_str} ({origin}): expected a number, found `{raw}`"))?,
        Value::Boolean(_) => match raw.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Value::Boolean(true),
            "false" | "0" | "no" => Value::Boolean(false),
            _ => {
                return Err(format!(
                    "{path_str} ({origin}): expected true or false, found `{raw}`"
                ));
            }
        },
        Value::Array(_) => Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_string()))
                .collect(),
        ),
        Value::Table(_) => {
            return Err(format!(
                "{path_str} ({origin}): is a table; set one of its keys"
            ));
        }
        Value::Datetime(_) => Value::String(raw.to_string()),
    };
    Ok((parts, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn errors(result: Result<Config>) -> Vec<String> {
        match result {
            Err(Error::Config(errors)) => errors,
            other => panic!("expected config errors, got {other:?}"),
        }
    }

    #[test]
    fn defaults_load_and_validate() {
        let config = Config::from_layers(None, env(&[])).unwrap();
        assert_eq!(config.kafka.brokers, "127.0.0.1:9092");
        assert_eq!(config.redis.url, "redis://127.0.0.1:6379");
        assert_eq!(config.api.listen, "127.0.0.1:8080");
        assert_eq!(config.ingest.segment_max_events, 10_000);
        assert_eq!(config.kafka.properties["fetch.wait.max.ms"], "10");
    }

    #[test]
    fn file_then_env_override_in_order() {
        let file = "[kafka]\nbrokers = \"file:1\"\n[ingest]\nsegment_max_events = 5\n";
        let config = Config::from_layers(
            Some((Path::new("q.toml"), file)),
            env(&[
                ("QUIVER__KAFKA__BROKERS", "env:2"),
                ("QUIVER__STORE__DIR", "/tmp/x"),
                ("QUIVER__INGEST__SOURCES", "transactions, labels"),
                ("QUIVER__KAFKA__PROPERTIES__SECURITY_PROTOCOL", "SASL_SSL"),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(config.kafka.brokers, "env:2");
        assert_eq!(config.ingest.segment_max_events, 5);
        assert_eq!(config.store.dir, PathBuf::from("/tmp/x"));
        assert_eq!(config.ingest.sources, vec!["transactions", "labels"]);
        assert_eq!(config.kafka.properties["security.protocol"], "SASL_SSL");
        // Defaults of the same table survive a partial override.
        assert_eq!(config.kafka.properties["session.timeout.ms"], "6000");
    }

    #[test]
    fn every_error_is_reported_at_once_with_its_path() {
        let file = "[kafka]\nbrokerz = \"x\"\n[ingest]\nsegment_max_events = \"many\"\n[nope]\na = 1\n\
                    [telemetry]\nlog_format = \"xml\"\n";
        let errs = errors(Config::from_layers(
            Some((Path::new("q.toml"), file)),
            env(&[
                ("QUIVER__INGEST__COMMIT_INTERVAL_MS", "soon"),
                ("QUIVER__API__LISTN", "x"),
            ]),
        ));
        let all = errs.join("\n");
        assert!(all.contains("kafka.brokerz (q.toml): unknown key"), "{all}");
        assert!(
            all.contains("ingest.segment_max_events (q.toml): expected integer, found string"),
            "{all}"
        );
        assert!(all.contains("nope (q.toml): unknown key"), "{all}");
        assert!(all.contains("ingest.commit_interval_ms (environment variable QUIVER__INGEST__COMMIT_INTERVAL_MS)"), "{all}");
        assert!(
            all.contains("api.listn (environment variable QUIVER__API__LISTN): unknown key"),
            "{all}"
        );
        assert_eq!(errs.len(), 5, "{all}");
    }

    #[test]
    fn semantic_errors_are_collected() {
        let errs = errors(Config::from_layers(
            None,
            env(&[
                ("QUIVER__API__LISTEN", "not-an-address"),
                ("QUIVER__INGEST__SEGMENT_MAX_EVENTS", "0"),
                ("QUIVER__TELEMETRY__LOG_FORMAT", "xml"),
                ("QUIVER__REDIS__URL", "http://x"),
            ]),
        ));
        assert_eq!(errs.len(), 4, "{errs:?}");
    }

    #[test]
    fn monitor_durations_and_sizes_are_checked() {
        let config = Config::from_layers(None, env(&[("QUIVER__MONITOR__WINDOW", "30s")])).unwrap();
        assert_eq!(config.monitor.window_us(), 30_000_000);
        assert_eq!(config.monitor.label_horizon_us(), 3_600_000_000);
        let errs = errors(Config::from_layers(
            None,
            env(&[
                ("QUIVER__MONITOR__WINDOW", "ten"),
                ("QUIVER__MONITOR__LABEL_HORIZON", "0h"),
                ("QUIVER__MONITOR__MIN_ROWS", "0"),
                ("QUIVER__MONITOR__ADMIN_LISTEN", "nowhere"),
            ]),
        ));
        assert_eq!(errs.len(), 4, "{errs:?}");
        assert!(errs.iter().any(|e| e.contains("monitor.window: `ten`")));
        let errs = errors(Config::from_layers(
            None,
            env(&[
                ("QUIVER__MONITOR__WINDOW", "1m"),
                ("QUIVER__MONITOR__INTERVAL", "2m"),
            ]),
        ));
        assert!(errs[0].contains("longer than monitor.window"), "{errs:?}");
    }

    #[test]
    fn toml_syntax_error_names_the_file() {
        let errs = errors(Config::from_layers(
            Some((Path::new("bad.toml"), "[kafka\n")),
            env(&[]),
        ));
        assert!(errs[0].starts_with("bad.toml:"), "{errs:?}");
    }

    #[test]
    fn properties_accept_scalars_as_strings() {
        let file = "[kafka.properties]\n\"fetch.wait.max.ms\" = 50\n\"enable.ssl.certificate.verification\" = false\n";
        let config = Config::from_layers(Some((Path::new("q.toml"), file)), env(&[])).unwrap();
        assert_eq!(config.kafka.properties["fetch.wait.max.ms"], "50");
        assert_eq!(
            config.kafka.properties["enable.ssl.certificate.verification"],
            "false"
        );
    }

    #[test]
    fn topic_names_take_the_prefix() {
        let config =
            Config::from_layers(None, env(&[("QUIVER__KAFKA__TOPIC_PREFIX", "staging.")])).unwrap();
        assert_eq!(config.kafka.topic("transactions"), "staging.transactions");
        assert_eq!(
            config.kafka.dlq_topic("transactions"),
            "staging.transactions.dlq"
        );
    }

    #[test]
    fn credentials_never_reach_a_message() {
        assert_eq!(
            redacted_url("redis://user:s3cret@10.0.0.1:6379/2"),
            "redis://***@10.0.0.1:6379/2"
        );
        assert_eq!(redacted_url("rediss://:pw@host"), "rediss://***@host");
        assert_eq!(
            redacted_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(redacted_url("redis://h/a@b"), "redis://h/a@b");
    }

    #[test]
    fn config_show_redacts_every_secret() {
        let file = "[redis]\nurl = \"redis://app:r3dis-pw@10.0.0.1:6379\"\n\
                    [api]\ntoken = \"api-t0ken\"\n\
                    [kafka.properties]\n\"sasl.password\" = \"sasl-pw\"\n\
                    \"sasl.oauthbearer.client.secret\" = \"oauth-s3cret\"\n\
                    \"ssl.key.password\" = \"key-pw\"\n\
                    \"sasl.username\" = \"alice\"\n";
        let config = Config::from_layers(Some((Path::new("q.toml"), file)), env(&[])).unwrap();
        let shown = config.to_toml();
        for secret in ["r3dis-pw", "api-t0ken", "sasl-pw", "oauth-s3cret", "key-pw"] {
            assert!(!shown.contains(secret), "{secret} shown in:\n{shown}");
        }
        assert!(shown.contains("redis://***@10.0.0.1:6379"), "{shown}");
        assert!(
            shown.contains("alice"),
            "a user name is not a secret: {shown}"
        );
        // The original keeps its secrets: only what is shown is redacted.
        assert_eq!(config.api.token, "api-t0ken");
    }

    #[test]
    fn an_empty_token_stays_empty_when_shown() {
        let config = Config::from_layers(None, env(&[])).unwrap();
        assert_eq!(config.redacted().api.token, "");
    }
}
