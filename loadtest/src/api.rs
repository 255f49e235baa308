//! `quiver-loadtest api`: online read latency of `quiver serve` at a fixed request rate, and the
//! same keys read with a bare Redis `HGETALL` at the same rate, in the same run.
//!
//! Open loop: request `k` is due at `start + k / rate`; each of `connections` keep-alive
//! connections takes every `connections`-th request, and latency is measured from the request's
//! due time (so a slow answer delays, and is charged to, the requests queued behind it).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use quiver_core::{Catalog, Config};
use quiver_demo::{Generator, GeneratorOptions};
use quiver_features::ViewCatalog;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// What one connection sends.
enum Target {
    Http {
        reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
        writer: tokio::net::tcp::OwnedWriteHalf,
        paths: Arc<Vec<String>>,
    },
    Redis {
        conn: redis::aio::MultiplexedConnection,
        keys: Arc<Vec<String>>,
    },
}

impl Target {
    async fn call(&mut self, k: usize) -> anyhow::Result<()> {
        match self {
            Target::Http {
                reader,
                writer,
                paths,
            } => {
                let path = &paths[k % paths.len()];
                writer
                    .write_all(format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n").as_bytes())
                    .await?;
                let mut line = String::new();
                reader.read_line(&mut line).await?;
                if line.split_whitespace().nth(1) != Some("200") {
                    bail!("unexpected answer `{}` for {path}", line.trim());
                }
                let mut length = 0usize;
                loop {
                    line.clear();
                    reader.read_line(&mut line).await?;
                    if line == "\r\n" || line.is_empty() {
                        break;
                    }
                    if let Some((name, value)) = line.split_once(':')
                        && name.eq_ignore_ascii_case("content-length")
                    {
                        length = value.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0u8; length];
                reader.read_exact(&mut body).await?;
            }
            Target::Redis { conn, keys } => {
                let key = &keys[k % keys.len()];
                let _: std::collections::HashMap<String, Vec<u8>> =
                    redis::cmd("HGETALL").arg(key).query_async(conn).await?;
            }
        }
        Ok(())
    }
}

struct Report {
    requests: usize,
    seconds: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
    /// Service time (send → full answer), without the timer's lateness.
    send_p50: f64,
    send_p99: f64,
}

async fn open_loop(targets: Vec<Target>, rate: u64, seconds: u64) -> anyhow::Result<Report> {
    let total = (rate * seconds) as usize;
    let connections = targets.len();
    let start = Instant::now() + Duration::from_millis(50);
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let mut tasks = Vec::new();
    for (c, mut target) in targets.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(total / connections + 1);
            let mut k = c;
            while k < total {
                let due = start + interval * k as u32;
                tokio::time::sleep_until(due.into()).await;
                let sent = Instant::now();
                target.call(k).await?;
                latencies.push((
                    due.elapsed().as_micros() as u64,
                    sent.elapsed().as_micros() as u64,
                ));
                k += connections;
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut from_due = Vec::with_capacity(total);
    let mut from_send = Vec::with_capacity(total);
    for task in tasks {
        for (due, send) in task.await?? {
            from_due.push(due);
            from_send.push(send);
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    from_due.sort_unstable();
    from_send.sort_unstable();
    let pct = |v: &[u64], p: f64| v[((v.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0;
    Ok(Report {
        requests: from_due.len(),
        seconds: elapsed,
        p50: pct(&from_due, 0.5),
        p90: pct(&from_due, 0.9),
        p99: pct(&from_due, 0.99),
        max: pct(&from_due, 1.0),
        send_p50: pct(&from_send, 0.5),
        send_p99: pct(&from_send, 0.99),
    })
}

/// Populates the online store through the real ingest path, then measures.
pub(crate) fn run(
    config_file: Option<&Path>,
    events: u64,
    rate: u64,
    seconds: u64,
    connections: usize,
) -> anyhow::Result<()> {
    let mut config = Config::load(config_file)?;
    let run_id = chrono::Utc::now().format("%Y%m%d%H%M%S").to_string();
    config.kafka.topic_prefix = format!("apibench-{run_id}.");
    config.ingest.group_id = format!("apibench-{run_id}-ingest");
    config.ingest.admin_listen = String::new();
    config.redis.key_prefix = format!("apibench-{run_id}");
    config.store.dir = config.store.dir.join(format!("apibench-{run_id}"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    config.api.listen = format!("127.0.0.1:{port}");
    let catalog = Catalog::load(&config.schemas.dir)?;
    let views = ViewCatalog::load(&config.schemas.dir, &catalog)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(quiver_kafka::create_topics(
        &config.kafka,
        &quiver_stack::declared_topics(&config, &catalog),
    ))?;

    eprintln!("populating: {events} demo transactions through ingest with features ...");
    let topic = config.kafka.topic("transactions");
    crate::produce(
        &config,
        &topic,
        events,
        100_000,
        crate::span_at_100_us(events),
    )
    .context("produce")?;
    crate::ingest(&config, &catalog, &views, events, Duration::from_secs(600)).context("ingest")?;
    // The users the producer wrote (same seed and population as `produce`).
    let mut generator = Generator::new(
        7,
        GeneratorOptions {
            users: 100_000,
            ..GeneratorOptions::default()
        },
    );
    let now = chrono::Utc::now();
    let mut users: Vec<String> = (0..events.min(50_000))
        .map(|_| generator.next_transaction(now).user_id)
        .collect();
    users.sort();
    users.dedup();
    eprintln!("{} users with online features", users.len());

    let report = rt.block_on(async {
        let (api_config, api_views) = (config.clone(), views.clone());
        tokio::spawn(async move {
            quiver_serve::serve(&api_config, &api_views, std::future::pending()).await
        });
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(&config.api.listen)
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let paths = Arc::new(
            users
                .iter()
                .map(|u| format!("/v1/features/user_txn/{u}"))
                .collect::<Vec<_>>(),
        );
        let keys = Arc::new(
            users
                .iter()
                .map(|u| format!("{}:user_txn:{u}", config.redis.key_prefix))
                .collect::<Vec<_>>(),
        );
        let client = redis::Client::open(config.redis.url.as_str())?;
        let mut redis_targets = Vec::new();
        let mut http_targets = Vec::new();
        for _ in 0..connections {
            redis_targets.push(Target::Redis {
                conn: client.get_multiplexed_async_connection().await?,
                keys: keys.clone(),
            });
            let stream = tokio::net::TcpStream::connect(&config.api.listen).await?;
            stream.set_nodelay(true)?;
            let (r, w) = stream.into_split();
            http_targets.push(Target::Http {
                reader: BufReader::new(r),
                writer: w,
                paths: paths.clone(),
            });
        }
        eprintln!("bare Redis HGETALL at {rate}/s for {seconds} s ...");
        let bare = open_loop(redis_targets, rate, seconds).await?;
        eprintln!("GET /v1/features/user_txn/<user> at {rate}/s for {seconds} s ...");
        let api = open_loop(http_targets, rate, seconds).await?;
        anyhow::Ok((bare, api))
    })?;
    let (bare, api) = report;
    println!(
        "| target | rate (req/s) | requests | achieved (req/s) | p50 | p90 | p99 | max | service p50 | service p99 |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (name, r) in [("bare Redis HGETALL", &bare), ("quiver serve GET", &api)] {
        println!(
            "| {name} | {rate} | {} | {:.0} | {:.3} ms | {:.3} ms | {:.3} ms | {:.3} ms | {:.3} ms | {:.3} ms |",
            r.requests,
            r.requests as f64 / r.seconds,
            r.p50,
            r.p90,
            r.p99,
            r.max,
            r.send_p50,
            r.send_p99
        );
    }
    println!(
        "p99 ratio (API / bare Redis): {:.2} from due time, {:.2} service time",
        api.p99 / bare.p99,
        api.send_p99 / bare.send_p99
    );
    let _ = std::fs::remove_dir_all(&config.store.dir);
    Ok(())
}
