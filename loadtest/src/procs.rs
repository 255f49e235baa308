//! The processes a benchmark runs against: the streaming worker as a child process (so its CPU
//! time and memory are its own), and CPU shares of every process on the machine that matters
//! (the broker, Redis, the worker, this load generator), read from `/proc`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use quiver_core::Config;

/// CPU seconds (user + system) a process has used.
pub(crate) fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / clock_ticks())
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// Pids of the processes whose command name is `name`.
pub(crate) fn pids_named(name: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == name)
        })
        .collect()
}

/// (RSS, peak RSS) of a process, MiB.
pub(crate) fn rss_mib(pid: u32) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .map(|kib| kib / 1024.0)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// CPU used by named groups of processes over a phase, as a share of one core.
#[derive(Debug)]
pub(crate) struct CpuMeter {
    groups: Vec<(String, Vec<u32>, f64)>,
    started: Instant,
}

impl CpuMeter {
    /// Starts measuring: the broker (tansu), Redis, the given worker and this process.
    pub(crate) fn start(worker: Option<u32>) -> Self {
        Self::start_with(worker, None)
    }

    /// Starts measuring, the live monitor (`quiver monitor run`) too.
    pub(crate) fn start_with(worker: Option<u32>, monitor: Option<u32>) -> Self {
        let mut groups = vec![
            ("broker (tansu)".to_string(), pids_named("tansu")),
            ("redis-server".to_string(), pids_named("redis-server")),
        ];
        if let Some(pid) = worker {
            groups.push(("worker (quiver ingest)".to_string(), vec![pid]));
        }
        if let Some(pid) = monitor {
            groups.push(("monitor (quiver monitor run)".to_string(), vec![pid]));
        }
        groups.push(("load generator".to_string(), vec![std::process::id()]));
        let groups = groups
            .into_iter()
            .map(|(name, pids)| {
                let used = pids.iter().filter_map(|p| cpu_seconds(*p)).sum();
                (name, pids, used)
            })
            .collect();
        Self {
            groups,
            started: Instant::now(),
        }
    }

    /// `(group, % of one core)` since the start.
    pub(crate) fn shares(&self) -> Vec<(String, f64)> {
        let wall = self.started.elapsed().as_secs_f64().max(1e-9);
        self.groups
            .iter()
            .map(|(name, pids, before)| {
                let now: f64 = pids.iter().filter_map(|p| cpu_seconds(*p)).sum();
                (name.clone(), 100.0 * (now - before) / wall)
            })
            .collect()
    }

    /// The shares as one line: `broker (tansu) 43 %, redis-server 12 %, ...`.
    pub(crate) fn line(&self) -> String {
        self.shares()
            .iter()
            .map(|(n, s)| format!("{n} {s:.0} %"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `quiver ingest` (or `quiver monitor run`) running as a child process with its admin
/// listener on a free port.
#[derive(Debug)]
pub(crate) struct WorkerProcess {
    child: Child,
    admin: String,
}

/// The `quiver` binary built next to this one.
fn quiver_binary() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let bin = me
        .parent()
        .map(|d| d.join("quiver"))
        .context("no directory for the quiver binary")?;
    if !bin.exists() {
        bail!(
            "{} not found: build it too (`cargo build --release`)",
            bin.display()
        );
    }
    Ok(bin)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl WorkerProcess {
    /// Starts the worker with `config` (every key passed as a `QUIVER__` variable) plus
    /// `extra` overrides, logging to `log`.
    pub(crate) fn start(
        config: &Config,
        extra: &[(&str, String)],
        log: &std::path::Path,
    ) -> anyhow::Result<Self> {
        Self::spawn(
            config,
            &["ingest"],
            "QUIVER__INGEST__ADMIN_LISTEN",
            extra,
            log,
        )
    }

    /// Starts the live monitor (`quiver monitor run`) the same way.
    pub(crate) fn start_monitor(
        config: &Config,
        extra: &[(&str, String)],
        log: &std::path::Path,
    ) -> anyhow::Result<Self> {
        Self::spawn(
            config,
            &["monitor", "run"],
            "QUIVER__MONITOR__ADMIN_LISTEN",
            extra,
            log,
        )
    }

    fn spawn(
        config: &Config,
        args: &[&str],
        admin_key: &str,
        extra: &[(&str, String)],
        log: &std::path::Path,
    ) -> anyhow::Result<Self> {
        let admin = format!("127.0.0.1:{}", free_port()?);
        let mut cmd = Command::new(quiver_binary()?);
        cmd.args(args)
            .env("QUIVER__KAFKA__BROKERS", &config.kafka.brokers)
            .env("QUIVER__KAFKA__TOPIC_PREFIX", &config.kafka.topic_prefix)
            .env("QUIVER__REDIS__URL", &config.redis.url)
            .env("QUIVER__REDIS__KEY_PREFIX", &config.redis.key_prefix)
            .env("QUIVER__STORE__DIR", &config.store.dir)
            .env("QUIVER__SCHEMAS__DIR", &config.schemas.dir)
            .env("QUIVER__INGEST__GROUP_ID", &config.ingest.group_id)
            .env(admin_key, &admin)
            .env("QUIVER__TELEMETRY__LOG_LEVEL", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log)?);
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("start quiver {}", args.join(" ")))?;
        let worker = Self { child, admin };
        let deadline = Instant::now() + Duration::from_secs(30);
        while worker.get("/healthz").is_none() {
            if Instant::now() > deadline {
                bail!(
                    "quiver {} did not start (log: {})",
                    args.join(" "),
                    log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(worker)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    fn get(&self, path: &str) -> Option<String> {
        let mut s = TcpStream::connect(&self.admin).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        Some(text.split_once("\r\n\r\n")?.1.to_string())
    }

    /// The sum of a metric's samples.
    pub(crate) fn metric(&self, name: &str) -> f64 {
        self.get("/metrics")
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with(name) && !l.starts_with(&format!("{name}_")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Whether the process still runs.
    pub(crate) fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, and waits for the graceful exit.
    pub(crate) fn stop(mut self) -> anyhow::Result<()> {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.running() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("the worker did not stop within 60 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if self.running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
