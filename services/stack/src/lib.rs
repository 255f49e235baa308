//! `quiver stack up|down|status`: the local development stack.
//!
//! Process management lives in `deploy/local/stack.sh` (embedded here, so the binary is
//! self-contained): it installs tansu (pinned, sha256-checked) and Debian's `redis-server` when
//! missing and starts them on the loopback addresses of `kafka.brokers` and `redis.url`, with
//! state and logs under `stack.work_dir`. This crate runs it and then creates the declared
//! topics over the Kafka protocol.

use std::path::{Path, PathBuf};
use std::process::Command;

use quiver_core::{Catalog, Config};
use quiver_features::ViewCatalog;
use quiver_kafka::TopicOutcome;
use quiver_store::{SegmentStore, Table};

/// The stack script, as shipped in `deploy/local/stack.sh`.
pub const SCRIPT: &str = include_str!("../../../deploy/local/stack.sh");

/// The install helpers the stack script sources from beside itself
/// (`deploy/local/installing.sh`: installs under a lock, so two never race).
pub const INSTALLING: &str = include_str!("../../../deploy/local/installing.sh");

/// Result alias used across `quiver-stack`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors of the local stack.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An address in the config is not a loopback `host:port` this machine can start.
    #[error(
        "{key} = `{value}` is not a loopback host:port; `quiver stack` only starts local services"
    )]
    NotLocal {
        /// Config key.
        key: &'static str,
        /// Its value.
        value: String,
    },
    /// The script failed.
    #[error("stack script `{action}` failed ({status}); see the messages above and {logs}")]
    Script {
        /// Action run.
        action: String,
        /// Exit status.
        status: String,
        /// Log directory.
        logs: String,
    },
    /// Filesystem or process error.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// Topic creation failed.
    #[error(transparent)]
    Kafka(#[from] quiver_kafka::Error),
    /// The raw store could not be inspected or moved.
    #[error(transparent)]
    Store(#[from] quiver_store::Error),
    /// The online store could not be cleared.
    #[error("online store: {0}")]
    Online(#[from] quiver_online::Error),
}

/// The local stack described by a config.
#[derive(Debug, Clone)]
pub struct LocalStack {
    work_dir: PathBuf,
    kafka_addr: String,
    redis_addr: String,
}

/// `host:port` of a `redis://[user:pass@]host[:port][/db]` URL.
pub fn redis_addr(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("redis://")
        .or_else(|| url.strip_prefix("rediss://"))?;
    let rest = rest.split('/').next()?;
    let hostport = rest.rsplit('@').next()?;
    if hostport.is_empty() {
        return None;
    }
    Some(if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:6379")
    })
}

fn loopback(addr: &str) -> bool {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return false;
    };
    port.parse::<u16>().is_ok() && (host == "localhost" || host.starts_with("127."))
}

impl LocalStack {
    /// The stack for `config`; fails if its addresses are not local.
    pub fn from_config(config: &Config) -> Result<Self> {
        let kafka_addr = config.first_broker().to_string();
        if !loopback(&kafka_addr) {
            return Err(Error::NotLocal {
                key: "kafka.brokers",
                value: config.kafka.brokers.clone(),
            });
        }
        let redis_addr = redis_addr(&config.redis.url)
            .filter(|a| loopback(a))
            .ok_or_else(|| Error::NotLocal {
                key: "redis.url",
                value: quiver_core::config::redacted_url(&config.redis.url),
            })?;
        Ok(Self {
            work_dir: config.stack.work_dir.clone(),
            kafka_addr,
            redis_addr,
        })
    }

    /// The broker address.
    pub fn kafka_addr(&self) -> &str {
        &self.kafka_addr
    }

    /// The Redis address.
    pub fn redis_addr(&self) -> &str {
        &self.redis_addr
    }

    fn script(&self) -> Result<PathBuf> {
        let dir = self.work_dir.join("bin");
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::Io(format!("create {}", dir.display()), e))?;
        for (name, text) in [("installing.sh", INSTALLING), ("stack.sh", SCRIPT)] {
            write_if_changed(&dir.join(name), text)?;
        }
        Ok(dir.join("stack.sh"))
    }

    /// Runs one script action (`up`, `down`, `status`, `install`), output to the terminal.
    pub fn run(&self, action: &str) -> Result<()> {
        let script = self.script()?;
        let status = Command::new("bash")
            .arg(&script)
            .arg(action)
            .env("QUIVER_WORK_DIR", &self.work_dir)
            .env("QUIVER_KAFKA_ADDR", &self.kafka_addr)
            .env("QUIVER_REDIS_ADDR", &self.redis_addr)
            .status()
            .map_err(|e| Error::Io(format!("run {}", script.display()), e))?;
        if status.success() {
            Ok(())
        } else {
            Err(Error::Script {
                action: action.to_string(),
                status: status.to_string(),
                logs: Path::new(&self.work_dir).join("logs").display().to_string(),
            })
        }
    }
}

/// Every topic the declared sources need: (name, partitions).
pub fn declared_topics(config: &Config, catalog: &Catalog) -> Vec<(String, i32)> {
    let mut topics = Vec::new();
    for source in &catalog.sources {
        topics.push((config.kafka.topic(&source.topic), source.partitions));
        topics.push((config.kafka.dlq_topic(&source.topic), 1));
    }
    topics.push((config.kafka.topic(&config.score.predictions_topic), 4));
    topics
}

/// One declared topic after `up`.
#[derive(Debug, Clone)]
pub struct TopicStatus {
    /// Physical topic name.
    pub name: String,
    /// Partitions it was declared with.
    pub partitions: i32,
    /// Created now, or already there.
    pub outcome: TopicOutcome,
    /// Where raw segments of an earlier incarnation of this topic were moved, if any.
    pub moved_stale_store: Option<PathBuf>,
    /// Online keys and feature logs of the source's views cleared along with it.
    pub cleared_views: Vec<String>,
}

/// Starts the stack and creates the declared topics.
///
/// A source topic created just now is empty, its offsets restarting at 0; raw segments already
/// on disk for that source therefore belong to an earlier incarnation of the topic (tansu's
/// memory storage loses topics when it stops). Left in place, their offsets would make ingest
/// skip the new events as replays, so they are moved aside to `raw/<source>.stale-<time>`.
pub async fn up(
    config: &Config,
    catalog: &Catalog,
    views: &ViewCatalog,
) -> Result<Vec<TopicStatus>> {
    let stack = LocalStack::from_config(config)?;
    stack.run("up")?;
    create_topics(config, catalog, views).await
}

/// Creates the declared topics on the configured brokers (any Kafka-protocol cluster: what
/// `quiver topics create` runs before a deployment's workers start), retiring the stores of a
/// source whose topic was created just now (see [`up`]).
pub async fn create_topics(
    config: &Config,
    catalog: &Catalog,
    views: &ViewCatalog,
) -> Result<Vec<TopicStatus>> {
    let topics = declared_topics(config, catalog);
    let outcomes = quiver_kafka::create_topics(&config.kafka, &topics).await?;
    let store = SegmentStore::open(&config.store.dir, Table::Raw)?;
    let mut out = Vec::with_capacity(topics.len());
    for (name, partitions) in topics {
        let outcome = outcomes
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, o)| o.clone())
            .unwrap_or(TopicOutcome::Existed);
        let source = catalog
            .sources
            .iter()
            .find(|s| config.kafka.topic(&s.topic) == name);
        let mut moved_stale_store = None;
        let mut cleared_views = Vec::new();
        if let (TopicOutcome::Created, Some(source)) = (&outcome, source)
            && !store.is_empty(&source.name)?
        {
            moved_stale_store = Some(store.retire(&source.name)?);
            // The views, claims and scores of the source were built from the old topic's
            // offsets too.
            let log = SegmentStore::open(&config.store.dir, Table::FeatureLog)?;
            let scores = SegmentStore::open(&config.store.dir, Table::Scores)?;
            let mut online = quiver_online::OnlineStore::connect(
                &config.redis.url,
                &config.redis.key_prefix,
                std::time::Duration::from_millis(config.redis.connect_timeout_ms),
                std::time::Duration::from_millis(config.redis.command_timeout_ms),
            )?;
            online.clear_claims(&source.name)?;
            if !scores.is_empty(&source.name)? {
                scores.retire(&source.name)?;
            }
            for view in views.views.iter().filter(|v| v.source == source.name) {
                online.clear_view(&view.name)?;
                if !log.is_empty(&view.name)? {
                    log.retire(&view.name)?;
                }
                cleared_views.push(view.name.clone());
            }
        }
        out.push(TopicStatus {
            name,
            partitions,
            outcome,
            moved_stale_store,
            cleared_views,
        });
    }
    Ok(out)
}

/// Writes `text` to `path` unless it holds it already, by a rename (a `quiver` started meanwhile
/// runs either the old script or the new one, never half of one).
fn write_if_changed(path: &Path, text: &str) -> Result<()> {
    if std::fs::read_to_string(path).ok().as_deref() == Some(text) {
        return Ok(());
    }
    let temporary = path.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&temporary, text)
        .and_then(|()| std::fs::rename(&temporary, path))
        .map_err(|e| Error::Io(format!("write {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_urls_give_their_address() {
        assert_eq!(
            redis_addr("redis://127.0.0.1:6379").as_deref(),
            Some("127.0.0.1:6379")
        );
        assert_eq!(
            redis_addr("redis://localhost").as_deref(),
            Some("localhost:6379")
        );
        assert_eq!(
            redis_addr("redis://:pw@127.0.0.1:7000/2").as_deref(),
            Some("127.0.0.1:7000")
        );
        assert_eq!(redis_addr("http://x"), None);
    }

    #[test]
    fn only_loopback_is_local() {
        assert!(loopback("127.0.0.1:9092"));
        assert!(loopback("localhost:9092"));
        assert!(!loopback("10.0.0.4:9092"));
        assert!(!loopback("127.0.0.1"));
    }
}
