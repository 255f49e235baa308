//! The status page (`GET /`, one self-contained HTML file compiled in) and the data it polls
//! (`GET /v1/status`): the `quiver_` samples of the worker's and the monitor's `/metrics` (at
//! their configured admin addresses) and the registry's deployment with its timeline. The page
//! computes rates, percentiles and history from successive polls.

use std::path::PathBuf;
use std::time::Duration;

use quiver_core::Config;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The page.
pub(crate) const PAGE: &str = include_str!("status.html");

/// Where the status comes from.
#[derive(Debug, Clone)]
pub(crate) struct Sources {
    worker: String,
    monitor: String,
    store: PathBuf,
}

impl Sources {
    pub(crate) fn of(config: &Config) -> Self {
        let or = |set: &str, default: &str| if set.is_empty() { default } else { set }.to_string();
        Self {
            worker: or(&config.api.status_worker, &config.ingest.admin_listen),
            monitor: or(&config.api.status_monitor, &config.monitor.admin_listen),
            store: config.store.dir.clone(),
        }
    }
}

/// One metric sample.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Sample {
    pub(crate) name: String,
    pub(crate) labels: std::collections::BTreeMap<String, String>,
    pub(crate) value: f64,
}

/// Whether a process answered.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Process {
    up: bool,
}

/// `GET /status.json`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Status {
    /// When (ms since the epoch).
    at: i64,
    worker: Process,
    monitor: Process,
    /// Both processes' samples, each series once (`quiver up` runs both in one process, whose
    /// listeners show the same metrics).
    samples: Vec<Sample>,
    deployment: serde_json::Value,
    timeline: Vec<quiver_models::registry::Change>,
}

/// The status now.
pub(crate) async fn status(sources: &Sources) -> Status {
    let (worker, monitor) = tokio::join!(scrape(&sources.worker), scrape(&sources.monitor));
    let deployment = quiver_models::Registry::read_deployment(&sources.store).unwrap_or_default();
    let (worker_up, monitor_up) = (worker.is_some(), monitor.is_some());
    Status {
        at: chrono::Utc::now().timestamp_millis(),
        worker: Process { up: worker_up },
        monitor: Process { up: monitor_up },
        samples: merged(worker.unwrap_or_default(), monitor.unwrap_or_default()),
        deployment: serde_json::json!({
            "production": deployment.production,
            "canary": deployment.canary.as_ref().map(|c| serde_json::json!({"model_id": c.id, "fraction": c.fraction})),
            "shadow": deployment.shadow,
        }),
        timeline: deployment.timeline,
    }
}

/// Both lists, each series (name and labels) once.
fn merged(first: Vec<Sample>, second: Vec<Sample>) -> Vec<Sample> {
    let mut seen = std::collections::HashSet::new();
    first
        .into_iter()
        .chain(second)
        .filter(|s| seen.insert((s.name.clone(), s.labels.clone())))
        .collect()
}

/// The `quiver_` samples of `http://<addr>/metrics` (`None` when it does not answer within a
/// second). Histogram buckets are kept for the prediction latency only.
async fn scrape(addr: &str) -> Option<Vec<Sample>> {
    let text = if addr.is_empty() {
        None
    } else {
        tokio::time::timeout(Duration::from_secs(1), get_metrics(addr))
            .await
            .ok()
            .flatten()
    };
    text.map(|text| {
        parse(&text)
            .into_iter()
            .filter(|s| {
                !s.name.ends_with("_bucket") || s.name == "quiver_prediction_latency_seconds_bucket"
            })
            .collect()
    })
}

async fn get_metrics(addr: &str) -> Option<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut body = Vec::new();
    stream.read_to_end(&mut body).await.ok()?;
    let text = String::from_utf8(body).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

/// The `quiver_` samples of a Prometheus text exposition (anything else is skipped).
pub(crate) fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| l.starts_with("quiver_"))
        .filter_map(sample)
        .collect()
}

fn sample(line: &str) -> Option<Sample> {
    let (series, value) = line.rsplit_once(' ')?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    let (name, labels) = match series.split_once('{') {
        None => (series, std::collections::BTreeMap::new()),
        Some((name, rest)) => (name, labels(rest.strip_suffix('}')?)?),
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// `a="x",b="y \"quoted\""` as a map.
fn labels(text: &str) -> Option<std::collections::BTreeMap<String, String>> {
    let mut out = std::collections::BTreeMap::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break i,
                c => value.push(c),
            }
        };
        out.insert(key.trim_start_matches(',').to_string(), value);
        rest = after[end + 1..].trim_start_matches(',');
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_reads_with_labels_escapes_and_infinities() {
        let text = "# HELP quiver_x help\n# TYPE quiver_x counter\nquiver_x 3\n\
            quiver_y{model_id=\"m\",feature=\"a \\\"b\\\"\"} 0.25\n\
            quiver_prediction_latency_seconds_bucket{stage=\"total\",le=\"+Inf\"} 7\n\
            other_metric 1\nquiver_bad{x=\"unterminated} 1\nquiver_nan NaN\n";
        let parsed = parse(text);
        assert_eq!(parsed.len(), 4, "{parsed:?}");
        assert_eq!(
            (parsed[0].name.as_str(), parsed[0].value),
            ("quiver_x", 3.0)
        );
        assert_eq!(parsed[1].labels["feature"], "a \"b\"");
        assert_eq!(parsed[1].labels["model_id"], "m");
        assert_eq!(parsed[2].labels["le"], "+Inf");
        assert!(parsed[3].value.is_nan());
        // The same series from two listeners of one process shows once.
        let twice = merged(parse("quiver_x 3\n"), parse("quiver_x 3\nquiver_z 1\n"));
        assert_eq!(twice.len(), 2);
    }
}
