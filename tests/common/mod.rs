//! The integration-test harness: real tansu and real Redis on free loopback ports, started once
//! per test binary and shared; every test gets its own topic prefix, consumer group, key prefix
//! and store directory, so tests run in parallel without seeing each other.
//!
//! The services are started by a small bash watchdog that kills them when the test process
//! exits, so nothing outlives a test run. Binaries come from the project's own installer
//! (`deploy/local/stack.sh install`), run here if tansu is not installed yet.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

pub mod checks;
pub mod child;
pub mod reference;
pub mod stream;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::DataType;
use datafusion::execution::options::ArrowReadOptions;
use datafusion::prelude::SessionContext;
use quiver_core::{Catalog, Config};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};

pub const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// The shared services of this test binary.
pub struct Services {
    pub kafka: String,
    pub redis: String,
    pub tansu: PathBuf,
    pub dir: PathBuf,
    /// The watchdogs; they end the services when this process exits.
    _watchdogs: Vec<Child>,
}

static SERVICES: OnceLock<Services> = OnceLock::new();

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn tansu_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("QUIVER_TANSU_BIN") {
        return PathBuf::from(bin);
    }
    let bin = Path::new(REPO).join(".quiver/bin/tansu");
    if !bin.exists()
        || Command::new("which")
            .arg("redis-server")
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
    {
        stack_install();
    }
    bin
}

/// `deploy/local/stack.sh install`: what the tests need, installed by the project's script, once
/// per test process whichever test asks first (the others wait for it and share its outcome; the
/// script's own locks keep test binaries and other runs from racing it).
fn stack_install() {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    let outcome = INSTALLED.get_or_init(|| {
        let status = Command::new("bash")
            .arg(Path::new(REPO).join("deploy/local/stack.sh"))
            .arg("install")
            .env("QUIVER_WORK_DIR", Path::new(REPO).join(".quiver"))
            .status()
            .map_err(|e| format!("cannot run deploy/local/stack.sh install: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!(
                "deploy/local/stack.sh install failed ({status}; its last lines above say which step)"
            ))
        }
    });
    if let Err(why) = outcome {
        panic!("{why}");
    }
}

/// A tool the tests need beyond the broker and Redis (`promtool`, `chromium`), installed by the
/// project's script (`deploy/local/stack.sh install`) if it is not on the PATH.
pub fn installed(tool: &str) -> PathBuf {
    let found = || {
        Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
    };
    if let Some(path) = found() {
        return path;
    }
    stack_install();
    found().unwrap_or_else(|| panic!("{tool} after deploy/local/stack.sh install"))
}

/// Starts `program args...` under a watchdog that kills it when this process exits.
fn spawn_guarded(program: &Path, args: &[String], log: &Path) -> Child {
    let script = r#"prog="$1"; shift; "$prog" "$@" & child=$!
while kill -0 "$WATCH_PID" 2>/dev/null && kill -0 "$child" 2>/dev/null; do sleep 0.3; done
kill "$child" 2>/dev/null; sleep 1; kill -9 "$child" 2>/dev/null; true"#;
    let log = std::fs::File::create(log).unwrap();
    Command::new("bash")
        .arg("-c")
        .arg(script)
        .arg("watchdog")
        .arg(program)
        .args(args)
        .env("WATCH_PID", std::process::id().to_string())
        // The caller's RUST_LOG is for Quiver; tansu at `info` writes gigabytes under load.
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("spawn watchdog")
}

fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(
            Instant::now() < deadline,
            "{what} not ready within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn redis_ping(addr: &str) -> bool {
    redis_ping_as(addr, None)
}

/// `PING` (after `AUTH` when a password is given) answers `PONG`.
fn redis_ping_as(addr: &str, password: Option<&str>) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let (request, reply): (String, &[u8]) = match password {
        Some(pw) => (format!("AUTH {pw}\r\nPING\r\n"), b"+OK\r\n+PONG\r\n"),
        None => ("PING\r\n".to_string(), b"+PONG\r\n"),
    };
    if s.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut buf = vec![0u8; reply.len()];
    s.read_exact(&mut buf).is_ok() && buf == reply
}

/// `redis-server` on `port` with its data (AOF on, `appendfsync everysec`) in `dir`, under a
/// watchdog, requiring `password` if any; its log is `dir/redis.log`.
fn spawn_redis(port: u16, dir: &Path, password: Option<&str>) -> Child {
    std::fs::create_dir_all(dir).unwrap();
    let mut args: Vec<String> = [
        "--bind",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--dir",
        dir.to_str().unwrap(),
        "--save",
        "",
        "--appendonly",
        "yes",
    ]
    .map(String::from)
    .to_vec();
    if let Some(password) = password {
        args.extend(["--requirepass".to_string(), password.to_string()]);
    }
    spawn_guarded(Path::new("redis-server"), &args, &dir.join("redis.log"))
}

/// A Redis of one test's own, for faults the shared one must not suffer (SIGKILL, restart),
/// with a password (which must never show up in a log).
pub struct OwnRedis {
    pub addr: String,
    pub password: String,
    port: u16,
    dir: PathBuf,
    guard: Child,
}

impl OwnRedis {
    /// Starts it on a free port with its data in `dir`.
    pub fn start(dir: &Path) -> Self {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let password = format!("own-redis-pw-{port}");
        let guard = spawn_redis(port, dir, Some(&password));
        wait_until("own redis", Duration::from_secs(15), || {
            redis_ping_as(&addr, Some(&password))
        });
        Self {
            addr,
            password,
            port,
            dir: dir.to_path_buf(),
            guard,
        }
    }

    /// Its URL, password included.
    pub fn url(&self) -> String {
        format!("redis://:{}@{}", self.password, self.addr)
    }

    /// A connection to it.
    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .unwrap()
    }

    /// `kill -9` of redis-server itself (its pid from `INFO server`); returns once it is gone.
    pub fn kill9(&mut self) {
        let mut conn = self.connection();
        let info: String = redis::cmd("INFO").arg("server").query(&mut conn).unwrap();
        let pid = info
            .lines()
            .find_map(|l| l.strip_prefix("process_id:"))
            .expect("process_id in INFO server")
            .trim()
            .to_string();
        let ok = Command::new("kill")
            .args(["-9", &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -9 {pid}");
        wait_until("redis gone", Duration::from_secs(15), || {
            TcpStream::connect(&self.addr).is_err()
        });
        let _ = self.guard.wait();
    }

    /// A copy of its data as it is on disk now: what a machine crash now would leave.
    pub fn copy_data(&self, to: &Path) {
        copy_dir(&self.dir, to);
    }

    /// Killed, its data replaced by `copy` (from [`Self::copy_data`]) and restarted: it has
    /// lost every write it acknowledged since, as after a crash between fsyncs or a failover
    /// to a replica that was behind.
    pub fn roll_back_to(&mut self, copy: &Path) {
        self.kill9();
        std::fs::remove_dir_all(&self.dir).unwrap();
        copy_dir(copy, &self.dir);
        self.restart();
    }

    /// Starts it again on the same port from the same data (its AOF).
    pub fn restart(&mut self) {
        self.guard = spawn_redis(self.port, &self.dir, Some(&self.password));
        wait_until("restarted redis", Duration::from_secs(30), || {
            redis_ping_as(&self.addr, Some(&self.password))
        });
    }
}

/// A test's world on a Redis of its own (password-protected, AOF on; its data beside the
/// test's directory), with short Redis timeouts so faults show quickly, plus `extra`.
pub fn with_own_redis(test: &str, extra: &[(&str, &str)]) -> (OwnRedis, TestEnv) {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let redis = OwnRedis::start(&services().dir.join(format!("{test}-own-redis-{n}")));
    let url = redis.url();
    let mut env = vec![
        ("QUIVER__REDIS__URL", url.as_str()),
        ("QUIVER__REDIS__CONNECT_TIMEOUT_MS", "500"),
        ("QUIVER__REDIS__COMMAND_TIMEOUT_MS", "1000"),
    ];
    env.extend_from_slice(extra);
    let t = TestEnv::new(test, &env);
    (redis, t)
}

/// Removes the `quiver-it-<pid>` directories of test processes that are no longer running, so
/// repeated runs do not fill the disk (each leaves its stores, logs and Redis AOF behind).
fn remove_dirs_of_finished_runs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("quiver-it-")) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

pub fn services() -> &'static Services {
    SERVICES.get_or_init(|| {
        let tansu = tansu_bin();
        remove_dirs_of_finished_runs();
        let dir = std::env::temp_dir().join(format!("quiver-it-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let kport = free_port();
        let local = format!("127.0.0.1:{kport}");
        let url = format!("tcp://{local}");
        // Another Kafka-protocol broker for the tests that need one (tansu still starts: some
        // tests drive its CLI).
        let kafka = std::env::var("QUIVER_TEST_KAFKA").unwrap_or(local);
        let tansu_guard = spawn_guarded(
            &tansu,
            &[
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "memory://tansu/",
            ]
            .map(String::from),
            &dir.join("tansu.log"),
        );
        let rport = free_port();
        let redis = format!("127.0.0.1:{rport}");
        let redis_guard = spawn_redis(rport, &dir.join("redis"), None);
        wait_until("tansu", Duration::from_secs(30), || {
            Command::new(&tansu)
                .args(["topic", "list", "--broker", &url])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        });
        wait_until("redis", Duration::from_secs(15), || redis_ping(&redis));
        Services {
            kafka,
            redis,
            tansu,
            dir,
            _watchdogs: vec![tansu_guard, redis_guard],
        }
    })
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// One test's isolated world: config with its own topic prefix, group and store dir.
pub struct TestEnv {
    pub name: String,
    pub config: Config,
    pub catalog: Catalog,
    pub views: quiver_features::ViewCatalog,
    pub env: Vec<(String, String)>,
    pub dir: PathBuf,
}

impl TestEnv {
    /// A fresh environment; `extra` are additional `QUIVER__*` overrides.
    pub fn new(test: &str, extra: &[(&str, &str)]) -> Self {
        let s = services();
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let name = format!("{test}-{}-{n}", std::process::id());
        let dir = s.dir.join(&name);
        std::fs::create_dir_all(&dir).unwrap();
        let mut env: Vec<(String, String)> = vec![
            ("QUIVER__KAFKA__BROKERS".into(), s.kafka.clone()),
            ("QUIVER__KAFKA__TOPIC_PREFIX".into(), format!("{name}.")),
            ("QUIVER__REDIS__URL".into(), format!("redis://{}", s.redis)),
            (
                "QUIVER__STORE__DIR".into(),
                dir.join("store").display().to_string(),
            ),
            (
                "QUIVER__SCHEMAS__DIR".into(),
                Path::new(REPO).join("schemas").display().to_string(),
            ),
            (
                "QUIVER__STACK__WORK_DIR".into(),
                dir.join("work").display().to_string(),
            ),
            ("QUIVER__INGEST__GROUP_ID".into(), format!("{name}-ingest")),
            ("QUIVER__INGEST__ADMIN_LISTEN".into(), String::new()),
            ("QUIVER__KAFKA__CONNECT_TIMEOUT_MS".into(), "5000".into()),
            ("QUIVER__REDIS__KEY_PREFIX".into(), name.clone()),
        ];
        for (k, v) in extra {
            env.retain(|(key, _)| key != k);
            env.push((k.to_string(), v.to_string()));
        }
        let config = Config::from_layers(None, env.clone()).expect("test config");
        let catalog = Catalog::load(&config.schemas.dir).expect("schemas");
        let views =
            quiver_features::ViewCatalog::load(&config.schemas.dir, &catalog).expect("views");
        Self {
            name,
            config,
            catalog,
            views,
            env,
            dir,
        }
    }

    /// The same world (topics, group, store, key prefix) with its schemas and views read from
    /// `schemas` instead: a view edited between two runs.
    pub fn with_schemas(&self, schemas: &Path) -> Self {
        let mut env = self.env.clone();
        env.retain(|(key, _)| key != "QUIVER__SCHEMAS__DIR");
        env.push(("QUIVER__SCHEMAS__DIR".into(), schemas.display().to_string()));
        let config = Config::from_layers(None, env.clone()).expect("test config");
        let catalog = Catalog::load(&config.schemas.dir).expect("schemas");
        let views =
            quiver_features::ViewCatalog::load(&config.schemas.dir, &catalog).expect("views");
        Self {
            name: self.name.clone(),
            config,
            catalog,
            views,
            env,
            dir: self.dir.clone(),
        }
    }

    /// Creates every declared topic (and its dead-letter topic) for this test.
    pub fn create_topics(&self) {
        let topics = quiver_stack::declared_topics(&self.config, &self.catalog);
        runtime()
            .block_on(quiver_kafka::create_topics(&self.config.kafka, &topics))
            .expect("create topics");
    }

    pub fn topic(&self, logical: &str) -> String {
        self.config.kafka.topic(logical)
    }

    /// A `quiver` subprocess with this environment.
    pub fn quiver(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_quiver"));
        cmd.args(args).env("QUIVER__TELEMETRY__LOG_LEVEL", "info");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs a SQL query over the raw store of `source` (registered as table `raw`).
    pub fn raw_query(&self, source: &str, sql: &str) -> Vec<RecordBatch> {
        let dir = self.config.store.dir.join("raw").join(source);
        if !has_segments(self, quiver_store::Table::Raw, source) {
            return Vec::new();
        }
        runtime().block_on(async {
            let ctx = SessionContext::new();
            let options = ArrowReadOptions::default()
                .table_partition_cols(vec![("date".to_string(), DataType::Utf8)]);
            ctx.register_arrow("raw", format!("{}/", dir.display()), options)
                .await
                .expect("register raw");
            collect(ctx, sql).await
        })
    }

    /// A single integer from a raw-store query (e.g. a count).
    pub fn raw_scalar(&self, source: &str, sql: &str) -> i64 {
        let batches = self.raw_query(source, sql);
        let Some(batch) = batches.iter().find(|b| b.num_rows() > 0) else {
            return 0;
        };
        let col = datafusion::arrow::compute::cast(batch.column(0), &DataType::Int64).unwrap();
        col.as_any()
            .downcast_ref::<datafusion::arrow::array::Int64Array>()
            .unwrap()
            .value(0)
    }
}

pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

pub fn producer(kafka: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", kafka)
        .set("linger.ms", "2")
        .create()
        .unwrap()
}

/// Produces (key, payload) pairs; returns (partition, offset) of each.
pub fn produce_all(kafka: &str, topic: &str, messages: &[(String, Vec<u8>)]) -> Vec<(i32, i64)> {
    send_all(&producer(kafka), topic, messages)
}

/// Sends (key, payload) pairs with `producer`, all at once; returns (partition, offset) of each.
pub fn send_all(
    producer: &FutureProducer,
    topic: &str,
    messages: &[(String, Vec<u8>)],
) -> Vec<(i32, i64)> {
    // `FutureProducer::send` enqueues only when first polled: awaiting the sends one by one
    // would make every message wait for the previous one's acknowledgement (≈ 2.4 ms each).
    let sends = messages.iter().map(|(key, payload)| {
        producer.send(
            FutureRecord::to(topic).key(key).payload(payload),
            Duration::from_secs(30),
        )
    });
    runtime()
        .block_on(futures::future::join_all(sends))
        .into_iter()
        .map(|sent| {
            let delivery = sent.map_err(|(e, _)| e).expect("delivered");
            (delivery.partition, delivery.offset)
        })
        .collect()
}

/// A dead letter as read back from a DLQ topic.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub payload: Vec<u8>,
    pub headers: std::collections::BTreeMap<String, String>,
}

/// Reads `expected` messages from `topic` from the beginning (fresh group), within `timeout`.
pub fn read_topic(kafka: &str, topic: &str, expected: usize, timeout: Duration) -> Vec<DeadLetter> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka)
        .set(
            "group.id",
            format!("reader-{topic}-{}", SEQ.fetch_add(1, Ordering::Relaxed)),
        )
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .set("fetch.wait.max.ms", "10")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < expected && Instant::now() < deadline {
        if let Some(Ok(msg)) = consumer.poll(Duration::from_millis(100)) {
            let mut headers = std::collections::BTreeMap::new();
            if let Some(h) = msg.headers() {
                for header in h.iter() {
                    headers.insert(
                        header.key.to_string(),
                        String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned(),
                    );
                }
            }
            out.push(DeadLetter {
                payload: msg.payload().unwrap_or_default().to_vec(),
                headers,
            });
        }
    }
    out
}

/// Committed offsets of `group` for `topic`'s partitions 0..n.
pub fn committed(kafka: &str, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let tpl = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    (0..partitions)
        .map(|p| match tpl.find_partition(topic, p).map(|e| e.offset()) {
            Some(rdkafka::Offset::Offset(o)) => o,
            _ => -1,
        })
        .collect()
}

/// Seconds from `since` until `ready` holds (polled like [`eventually`], at most `limit`);
/// fails the test past it.
pub fn seconds_until(since: Instant, limit: Duration, mut ready: impl FnMut() -> bool) -> f64 {
    assert!(
        eventually(limit, &mut ready),
        "not recovered within {limit:?}"
    );
    since.elapsed().as_secs_f64()
}

/// Polls `check` until it returns true or `timeout` passes; returns whether it did.
pub fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A minimal blocking HTTP/1.1 client: (status, JSON body).
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, serde_json::Value) {
    let mut s = TcpStream::connect(addr).expect("connect to the API");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = body.unwrap_or("");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        request.push_str("Content-Type: application/json\r\n");
    }
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    s.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let payload = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or("");
    (
        status,
        serde_json::from_str(payload).unwrap_or(serde_json::Value::Null),
    )
}

/// Starts `quiver serve` in-process on a free port (optionally with a bearer token); returns its
/// address once `/healthz` answers.
pub fn start_api(t: &TestEnv, token: &str) -> String {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut config = t.config.clone();
    config.api.listen = addr.clone();
    config.api.token = token.to_string();
    let views = t.views.clone();
    runtime()
        .spawn(async move { quiver_serve::serve(&config, &views, std::future::pending()).await });
    wait_until("api", Duration::from_secs(15), || {
        TcpStream::connect(&addr).is_ok()
    });
    addr
}

/// Online feature values of `entity` read at `at` straight from Redis, as the API renders them.
pub fn online_at(
    t: &TestEnv,
    view: &str,
    entity: &str,
    at: i64,
) -> serde_json::Map<String, serde_json::Value> {
    let plan = quiver_features::ViewPlan::new(std::sync::Arc::clone(t.views.view(view).unwrap()));
    let mut shards = runtime().block_on(async {
        let reader = quiver_online::OnlineReader::connect(
            &t.config.redis.url,
            &t.config.redis.key_prefix,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        reader.fetch(view, entity).await.unwrap()
    });
    shards.retain_fitting(&plan);
    plan.view()
        .feature_names()
        .zip(shards.read_at(&plan, at))
        .map(|(n, v)| (n.to_string(), quiver_serve::to_json(v)))
        .collect()
}

/// Whether `stream` of `table` holds a segment yet. Its directory appears before its first
/// segment (a writer's lock and temporary file), and DataFusion cannot register a directory
/// without data files.
fn has_segments(t: &TestEnv, table: quiver_store::Table, stream: &str) -> bool {
    quiver_store::SegmentStore::open(&t.config.store.dir, table)
        .and_then(|store| store.segments(stream))
        .is_ok_and(|segments| !segments.is_empty())
}

/// Rows of a view's feature log (Parquet), queried with DataFusion as table `log`.
pub fn log_query(t: &TestEnv, view: &str, sql: &str) -> Vec<RecordBatch> {
    let dir = t.config.store.dir.join("offline").join(view);
    if !has_segments(t, quiver_store::Table::FeatureLog, view) {
        return Vec::new();
    }
    runtime().block_on(async {
        // Plain Utf8 strings rather than DataFusion's default Utf8View, for simple downcasts.
        let config = datafusion::prelude::SessionConfig::new().set_bool(
            "datafusion.execution.parquet.schema_force_view_types",
            false,
        );
        let ctx = SessionContext::new_with_config(config);
        let options = datafusion::prelude::ParquetReadOptions::default()
            .table_partition_cols(vec![("date".to_string(), DataType::Utf8)]);
        ctx.register_parquet("log", format!("{}/", dir.display()), options)
            .await
            .expect("register log");
        collect(ctx, sql).await
    })
}

/// Runs a command to its end: (success, stdout followed by stderr).
pub fn run_quiver(mut cmd: Command) -> (bool, String) {
    let out = cmd.output().expect("run quiver");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Produces demo transactions keyed by user and, with `label_after`, each one's label observed
/// that long after the transaction.
pub fn produce_demo(
    t: &TestEnv,
    txns: &[quiver_demo::Transaction],
    label_after: Option<chrono::Duration>,
) {
    let kafka = &services().kafka;
    let msgs: Vec<(String, Vec<u8>)> = txns
        .iter()
        .map(|x| (x.user_id.clone(), x.to_json().into_bytes()))
        .collect();
    produce_all(kafka, &t.topic("transactions"), &msgs);
    if let Some(after) = label_after {
        let labels: Vec<(String, Vec<u8>)> = txns
            .iter()
            .map(|x| {
                (
                    x.user_id.clone(),
                    x.label_json(x.event_time + after).into_bytes(),
                )
            })
            .collect();
        produce_all(kafka, &t.topic("labels"), &labels);
    }
}

/// `quiver args...` for `t`, which must succeed; its output.
pub fn quiver_ok(t: &TestEnv, args: &[&str]) -> String {
    let (ok, text) = run_quiver(t.quiver(args));
    assert!(ok, "quiver {args:?}: {text}");
    text
}

/// Produces the labels of demo transactions, observed at their event time.
pub fn produce_demo_labels(t: &TestEnv, txns: &[quiver_demo::Transaction]) {
    let labels: Vec<(String, Vec<u8>)> = txns
        .iter()
        .map(|x| (x.user_id.clone(), x.label_json(x.event_time).into_bytes()))
        .collect();
    produce_all(&services().kafka, &t.topic("labels"), &labels);
}

/// Rows in a view's feature log so far.
pub fn log_rows(t: &TestEnv, view: &str) -> i64 {
    log_query(t, view, "SELECT count(*) FROM log")
        .first()
        .map(|b| {
            b.column(0)
                .as_any()
                .downcast_ref::<datafusion::arrow::array::Int64Array>()
                .expect("count")
                .value(0)
        })
        .unwrap_or(0)
}

/// `quiver ingest` running in this process, on its own thread.
pub struct InProcess {
    pub shutdown: quiver_ingest::Shutdown,
    pub stats: std::sync::Arc<quiver_ingest::IngestStats>,
    handle: std::thread::JoinHandle<quiver_ingest::Result<quiver_ingest::IngestReport>>,
}

/// Starts the ingest service for `t` in-process (warnings logged to stderr).
pub fn start_in_process(t: &TestEnv) -> InProcess {
    let _ = quiver_telemetry::init_tracing(quiver_telemetry::LogFormat::Pretty, "warn");
    let shutdown = quiver_ingest::Shutdown::default();
    let stats = std::sync::Arc::new(quiver_ingest::IngestStats::default());
    let (config, catalog, views, s, st) = (
        t.config.clone(),
        t.catalog.clone(),
        t.views.clone(),
        shutdown.clone(),
        stats.clone(),
    );
    let handle = std::thread::spawn(move || {
        quiver_ingest::run(
            &config,
            &catalog,
            &views,
            s,
            quiver_telemetry::Health::default(),
            st,
        )
    });
    InProcess {
        shutdown,
        stats,
        handle,
    }
}

impl InProcess {
    /// Drains, commits and stops; panics if the run failed.
    pub fn stop(self) -> quiver_ingest::IngestReport {
        self.shutdown.trigger();
        self.handle
            .join()
            .expect("ingest thread")
            .expect("ingest ran cleanly")
    }
}

/// Runs `sql` on a context whose tables are registered.
async fn collect(ctx: SessionContext, sql: &str) -> Vec<RecordBatch> {
    ctx.sql(sql)
        .await
        .expect("plan")
        .collect()
        .await
        .expect("run")
}

/// Every view's feature-log rows, by event id: feature → value as JSON.
pub fn log_rows_by_id(
    t: &TestEnv,
    view: &str,
) -> std::collections::HashMap<String, serde_json::Map<String, serde_json::Value>> {
    let def = t.views.view(view).unwrap();
    let mut out = std::collections::HashMap::new();
    for b in log_query(t, view, "SELECT * FROM log") {
        let id = quiver_features::log::Column::new(b.column_by_name("txn_id").unwrap().as_ref());
        let columns: Vec<(String, quiver_features::log::Column<'_>)> = def
            .feature_names()
            .map(|f| {
                (
                    format!("{view}__{f}"),
                    quiver_features::log::Column::new(b.column_by_name(f).unwrap().as_ref()),
                )
            })
            .collect();
        for r in 0..b.num_rows() {
            let row = columns
                .iter()
                .map(|(name, c)| (name.clone(), quiver_serve::to_json(c.value(r))))
                .collect();
            assert!(
                out.insert(id.key(r), row).is_none(),
                "{view}: two log rows for {}",
                id.key(r)
            );
        }
    }
    out
}

/// Each prediction's `features` are exactly its event's feature-log rows, for every view.
pub fn assert_features_are_log_rows(t: &TestEnv, predictions: &[serde_json::Value]) {
    for view in &t.views.views {
        let rows = log_rows_by_id(t, &view.name);
        for p in predictions {
            let id = p["txn_id"].as_str().unwrap();
            let row = rows
                .get(id)
                .unwrap_or_else(|| panic!("{}: no log row for {id}", view.name));
            for (name, logged) in row {
                assert_eq!(
                    &p["features"][name], logged,
                    "{name} of {id}: prediction {p} vs log"
                );
            }
        }
    }
}

/// Copies a directory tree.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A model registry with one logistic regression trained on demo data and promoted, built once
/// per test binary; [`TestEnv::deploy_model`] copies it into a test's store.
pub fn trained_registry() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let t = TestEnv::new("registry", &[]);
        t.create_topics();
        let mut g = quiver_demo::Generator::new(
            1,
            quiver_demo::GeneratorOptions {
                users: 300,
                fraud_rate: 0.03,
                ..quiver_demo::GeneratorOptions::default()
            },
        );
        let start = chrono::DateTime::<chrono::Utc>::from_timestamp(1_795_600_000, 0).unwrap();
        let txns: Vec<quiver_demo::Transaction> = (0..2_000)
            .map(|i| g.next_transaction(start + chrono::Duration::milliseconds(i * 2_000)))
            .collect();
        train_and_promote(&t, &txns, Duration::from_secs(90));
        t.config.store.dir.join("models")
    })
}

/// Produces `txns` with their labels, ingests them (waiting at most `wait`), builds a training
/// set from the labels and trains and promotes a model on it.
pub fn train_and_promote(t: &TestEnv, txns: &[quiver_demo::Transaction], wait: Duration) {
    produce_demo(t, txns, Some(chrono::Duration::zero()));
    let worker = start_in_process(t);
    let n = txns.len() as i64;
    assert!(eventually(wait, || {
        t.raw_scalar("labels", "SELECT count(*) FROM raw") >= n && log_rows(t, "user_txn") >= n
    }));
    worker.stop();
    let ds = t.dir.join("dataset");
    let ds = ds.to_str().unwrap();
    quiver_ok(t, &["dataset", "build", "--labels", "labels", "--out", ds]);
    quiver_ok(t, &["train", "--dataset", ds, "--promote"]);
}

impl TestEnv {
    /// Puts the shared trained registry in this test's store: its model is production.
    pub fn deploy_model(&self) {
        copy_dir(trained_registry(), &self.config.store.dir.join("models"));
    }

    /// The production model's id.
    pub fn production_model(&self) -> String {
        quiver_models::Registry::open(&self.config.store.dir)
            .unwrap()
            .deployment()
            .unwrap()
            .production
            .unwrap()
    }
}
