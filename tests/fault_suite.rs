//! The fault suite of issue 10: one stream through a worker and the API with every production
//! fault in it (worker SIGKILLs, `kill -9` of redis-server, `CLIENT PAUSE`, hostile events),
//! and afterwards nothing lost, nothing counted twice, every hostile event a dead letter with
//! its reason. `QUIVER_FAULT_EVENTS=200000` for the long run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::checks::{
    assert_exactly_once, assert_features_exact, assert_no_log_shows, assert_segments_never_overlap,
};
use common::child::{ChildWorker, admin_get, scrape, sigterm, spawn_worker};
use common::stream::{assert_one_decision_per_event, stream, transactions};
use common::{
    TestEnv, eventually, http, produce_all, read_topic, seconds_until, services, start_api,
    with_own_redis,
};

/// The API token of the fault suite's worker and API, which no log may show.
const SUITE_TOKEN: &str = "suite-api-token-3f9a";

/// Hostile events for the fault suite, each with the reason its dead letter must carry.
fn hostile_events() -> Vec<(&'static str, Vec<u8>)> {
    let ok = r#""txn_id":"h","merchant_id":"m-00001","country":"FR""#;
    let at = "2026-11-26T10:00:00Z";
    let deep = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
    vec![
        (
            "too_large",
            format!(
                r#"{{"user_id":"{}",{ok},"amount":1.0,"event_time":"{at}"}}"#,
                "k".repeat(65_536)
            )
            .into_bytes(),
        ),
        (
            "event_time_in_future",
            format!(r#"{{"user_id":"u1",{ok},"amount":1.0,"event_time":"2099-01-01T00:00:00Z"}}"#)
                .into_bytes(),
        ),
        (
            "bad_event_time",
            format!(r#"{{"user_id":"u1",{ok},"amount":1.0,"event_time":"1970-13-45T99:00:00Z"}}"#)
                .into_bytes(),
        ),
        (
            "non_finite_number",
            format!(r#"{{"user_id":"u1",{ok},"amount":"NaN","event_time":"{at}"}}"#).into_bytes(),
        ),
        (
            "non_finite_number",
            format!(r#"{{"user_id":"u1",{ok},"amount":"inf","event_time":"{at}"}}"#).into_bytes(),
        ),
        (
            "non_finite_number",
            format!(r#"{{"user_id":"u1",{ok},"amount":1e999,"event_time":"{at}"}}"#).into_bytes(),
        ),
        (
            "wrong_type",
            format!(r#"{{"user_id":"u1",{ok},"amount":{{"nested":true}},"event_time":"{at}"}}"#)
                .into_bytes(),
        ),
        (
            "wrong_type",
            format!(r#"{{"user_id":["u1"],{ok},"amount":1.0,"event_time":"{at}"}}"#).into_bytes(),
        ),
        (
            "missing_field",
            format!(r#"{{{ok},"amount":1.0,"event_time":"{at}"}}"#).into_bytes(),
        ),
        (
            "not_json",
            format!(r#"{{"user_id":"u1","deep":{deep}"#).into_bytes(),
        ),
        ("not_object", deep.clone().into_bytes()),
        ("not_object", b"[1,2,3]".to_vec()),
        ("not_json", Vec::new()),
        ("not_json", b"\xff\xfe\x00garbage".to_vec()),
    ]
}

/// Seconds from `since` until the worker behind `admin` is ready and has predicted more than
/// `past` events.
fn recovered(since: Instant, worker: &ChildWorker, past: f64) -> f64 {
    seconds_until(since, Duration::from_secs(120), || {
        admin_get(&worker.admin, "/readyz").0 == 200
            && scrape(&worker.admin, "quiver_predictions_total") > past
    })
}

/// The fault suite: one stream (`QUIVER_FAULT_EVENTS`, default 20 000; `200000` for the long
/// run) through a worker and the API with every fault of issue 10 in it — two SIGKILLs of the
/// worker, a `kill -9` and restart of redis-server (AOF on), a `CLIENT PAUSE` longer than the
/// poll interval, a burst of hostile events and a few valid but odd ones (keys with `:` and
/// unicode, an event two days old). Afterwards nothing is lost or counted twice and every
/// hostile event is a dead letter with its reason; the recovery time of each fault is printed.
#[test]
fn the_fault_suite_loses_nothing_and_counts_nothing_twice() {
    let n: usize = std::env::var("QUIVER_FAULT_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let rate = (n / 40).max(500);
    let (mut redis, t) = with_own_redis(
        "suite",
        &[
            ("QUIVER__INGEST__SEGMENT_MAX_AGE_MS", "300"),
            ("QUIVER__INGEST__COMMIT_INTERVAL_MS", "300"),
            ("QUIVER__API__TOKEN", SUITE_TOKEN),
        ],
    );
    t.create_topics();
    t.deploy_model();
    let mut txns = transactions(83, 0, n);
    // Valid but odd: keys with `:` and unicode, an event two days older than its neighbours.
    for (i, k) in [n / 7, n / 3, n / 2].into_iter().enumerate() {
        txns[k].user_id = format!("u:{i}:ünïcødé-😀");
    }
    let old = n / 5;
    txns[old].event_time -= chrono::Duration::days(2);
    let valid = |done: f64| (n as f64 * done) as i64;
    let raw = |t: &TestEnv| t.raw_scalar("transactions", "SELECT count(*) FROM raw");

    let mut worker = spawn_worker(&t, &[]);
    let api = start_api(&t, SUITE_TOKEN);
    let started = Instant::now();
    let producer = stream(&t, &txns, rate);
    let mut figures: Vec<(&str, f64)> = Vec::new();

    // 1. SIGKILL of the worker at 15 %.
    assert!(eventually(Duration::from_secs(120), || raw(&t) >= valid(0.15)));
    worker.child.kill().unwrap();
    worker.child.wait().unwrap();
    let killed = Instant::now();
    worker = spawn_worker(&t, &[]);
    figures.push((
        "worker SIGKILL 1: a new worker predicting",
        recovered(killed, &worker, 0.0),
    ));

    // 2. kill -9 of redis-server at 30 %, back from its AOF 2 s later.
    assert!(eventually(Duration::from_secs(120), || raw(&t) >= valid(0.30)));
    redis.kill9();
    std::thread::sleep(Duration::from_secs(2));
    redis.restart();
    let back = Instant::now();
    let api_s = seconds_until(back, Duration::from_secs(60), || {
        http(&api, "GET", "/readyz", None, &[]).0 == 200
    });
    let served = scrape(&worker.admin, "quiver_predictions_total");
    figures.push((
        "redis kill -9: worker predicting again",
        recovered(back, &worker, served),
    ));
    figures.push(("redis kill -9: API ready again", api_s));

    // 3. A burst of hostile events at 50 %.
    assert!(eventually(Duration::from_secs(120), || raw(&t) >= valid(0.50)));
    let hostile = hostile_events();
    let burst: Vec<(String, Vec<u8>)> = hostile
        .iter()
        .map(|(_, payload)| ("hostile".to_string(), payload.clone()))
        .collect();
    produce_all(&services().kafka, &t.topic("transactions"), &burst);

    // 4. Redis paused for 3 s (past the poll interval and the command timeout) at 60 %.
    assert!(eventually(Duration::from_secs(120), || raw(&t) >= valid(0.60)));
    let mut conn = redis.connection();
    redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(3_000)
        .query::<()>(&mut conn)
        .unwrap();
    let paused = Instant::now();
    let served = scrape(&worker.admin, "quiver_predictions_total");
    figures.push((
        "CLIENT PAUSE 3 s: worker predicting again (from the pause)",
        recovered(paused, &worker, served),
    ));

    // 5. SIGKILL of the worker again at 80 %.
    assert!(eventually(Duration::from_secs(120), || raw(&t) >= valid(0.80)));
    worker.child.kill().unwrap();
    worker.child.wait().unwrap();
    let killed = Instant::now();
    worker = spawn_worker(&t, &[]);
    figures.push((
        "worker SIGKILL 2: a new worker predicting",
        recovered(killed, &worker, 0.0),
    ));

    let deliveries = producer.join().unwrap();
    assert!(
        eventually(Duration::from_secs(180), || raw(&t) >= n as i64),
        "{} of {n} events landed",
        raw(&t)
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(sigterm(&mut worker.child).success());
    let took = started.elapsed().as_secs_f64();

    // Nothing lost or counted twice, in any store; every entity's online state the reference;
    // one decision per event; every hostile event a dead letter with its reason.
    assert_exactly_once(&t, n as i64);
    assert_segments_never_overlap(&t);
    assert_features_exact(&t, &txns, &deliveries);
    assert_one_decision_per_event(&t, &txns);
    let dlq = read_topic(
        &services().kafka,
        &t.config.kafka.dlq_topic("transactions"),
        hostile.len(),
        Duration::from_secs(60),
    );
    let mut got: Vec<&str> = dlq
        .iter()
        .map(|d| d.headers["quiver.reason"].as_str())
        .collect();
    let mut want: Vec<&str> = hostile.iter().map(|(reason, _)| *reason).collect();
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(got, want, "dead-letter reasons");
    assert_no_log_shows(&t, &[&redis.password, SUITE_TOKEN]);
    // Claims are deleted once their offsets are committed: after the graceful stop none is left.
    let mut conn = redis.connection();
    let pattern = format!("{}:#claims:*", t.config.redis.key_prefix);
    let hashes: Vec<String> = redis::cmd("KEYS").arg(&pattern).query(&mut conn).unwrap();
    for hash in hashes {
        let fields: Vec<String> = redis::cmd("HKEYS").arg(&hash).query(&mut conn).unwrap();
        let ranges: Vec<&String> = fields
            .iter()
            .filter(|f| *f != "through" && *f != "floor")
            .collect();
        assert!(ranges.is_empty(), "{hash} still holds claims {ranges:?}");
    }

    eprintln!(
        "fault suite: {n} events at {rate}/s, {} hostile, {took:.1} s; 0 lost, 0 duplicated",
        hostile.len()
    );
    for (fault, seconds) in figures {
        eprintln!("| {fault} | {seconds:.1} s |");
    }
}
