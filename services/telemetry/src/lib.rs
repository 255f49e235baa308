//! Telemetry shared by every Quiver service: `tracing` logs, the `metrics` recorder, the metric
//! names (defined here once), and the small admin HTTP listener serving `/metrics`, `/healthz`
//! and `/readyz`.

pub mod admin;
mod events;
pub mod names;

use std::io::IsTerminal as _;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

pub use admin::{Health, serve_admin};

/// Result alias used across `quiver-telemetry`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors of telemetry set-up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The log filter does not parse.
    #[error("telemetry.log_level: `{0}` is not a valid filter: {1}")]
    Filter(String, String),
    /// The admin listener cannot bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: String,
        /// Cause.
        source: std::io::Error,
    },
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable, coloured when on a terminal.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// Installs the global `tracing` subscriber writing to stderr. `RUST_LOG`, when set, wins over
/// `level`. Calling it twice is harmless (the first subscriber stays).
pub fn init_tracing(format: LogFormat, level: &str) -> Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.is_empty() => {
            EnvFilter::try_new(&env).map_err(|e| Error::Filter(env.clone(), e.to_string()))?
        }
        _ => EnvFilter::try_new(level)
            .map_err(|e| Error::Filter(level.to_string(), e.to_string()))?,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Pretty => builder.with_target(false).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
    Ok(())
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once) and returns its handle.
pub fn metrics_handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(names::LATENCY_BUCKETS)
                .map(PrometheusBuilder::build_recorder)
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            // Another recorder may already be installed (embedding); then ours stays unused.
            let _ = metrics::set_global_recorder(recorder);
            names::describe();
            handle
        })
        .clone()
}
