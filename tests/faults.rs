//! Production faults against real tansu and Redis: Redis killed with SIGKILL mid-stream and
//! restarted from its AOF, with the worker and the API running (nothing is lost or counted
//! twice, both report not-ready while Redis is gone and recover by themselves); Redis coming
//! back without writes it had acknowledged (repaired from below the commit, by a running worker
//! and by a starting one); a view edited under existing online state (never read wrong,
//! refused until rebuilt).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::checks::{
    assert_exactly_once, assert_features_exact, assert_no_log_shows, assert_segments_never_overlap,
};
use common::child::{ChildWorker, admin_get, scrape, sigterm, spawn_worker};
use common::stream::{assert_one_decision_per_event, messages, stream, transactions};
use common::{
    REPO, TestEnv, committed, copy_dir, eventually, http, produce_all, run_quiver, seconds_until,
    services, start_api, start_in_process, with_own_redis,
};
use quiver_demo::Transaction;

#[test]
fn redis_killed_and_restarted_mid_stream_loses_nothing_and_everything_recovers() {
    let (mut redis, t) = with_own_redis(
        "redis-kill",
        &[
            ("QUIVER__INGEST__SEGMENT_MAX_AGE_MS", "300"),
            ("QUIVER__INGEST__COMMIT_INTERVAL_MS", "300"),
        ],
    );
    t.create_topics();
    t.deploy_model();
    let txns = transactions(67, 0, 8_000);
    let mut worker = spawn_worker(&t, &[]);
    let api = start_api(&t, "");
    let user = txns[0].user_id.clone();
    let features = format!("/v1/features/user_txn/{user}");
    let producer = stream(&t, &txns, 400);
    assert!(eventually(Duration::from_secs(60), || {
        scrape(&worker.admin, "quiver_predictions_total") > 1_500.0
    }));
    assert!(eventually(Duration::from_secs(30), || {
        http(&api, "GET", &features, None, &[]).0 == 200
    }));

    // Redis dies in the middle of the stream: both the worker and the API say so.
    redis.kill9();
    let killed = Instant::now();
    assert!(
        eventually(Duration::from_secs(30), || {
            admin_get(&worker.admin, "/readyz").0 == 503
        }),
        "the worker stayed ready without Redis"
    );
    let (status, body) = http(&api, "GET", &features, None, &[]);
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "online_store_unavailable", "{body}");
    assert!(
        eventually(Duration::from_secs(15), || {
            http(&api, "GET", "/readyz", None, &[]).0 == 503
        }),
        "the API stayed ready without Redis"
    );
    std::thread::sleep(Duration::from_secs(2));

    // Back from its AOF: both recover by themselves.
    redis.restart();
    let restarted = Instant::now();
    let api_s = seconds_until(restarted, Duration::from_secs(30), || {
        http(&api, "GET", &features, None, &[]).0 == 200
    });
    let worker_s = seconds_until(restarted, Duration::from_secs(90), || {
        admin_get(&worker.admin, "/readyz").0 == 200
    });
    eprintln!(
        "redis down {:.1} s; after its restart the API answered in {api_s:.1} s, the worker was ready in {worker_s:.1} s",
        restarted.duration_since(killed).as_secs_f64()
    );

    let deliveries = producer.join().unwrap();
    assert!(eventually(Duration::from_secs(120), || {
        t.raw_scalar("transactions", "SELECT count(*) FROM raw") >= 8_000
            && scrape(&worker.admin, "quiver_predictions_total") >= 8_000.0
    }));
    std::thread::sleep(Duration::from_secs(2));
    assert!(sigterm(&mut worker.child).success());

    // Through every reconnection, the worker never logged Redis's password.
    assert_no_log_shows(&t, &[&redis.password]);

    // Every event once in every store, every user's and merchant's online state exactly the
    // reference (nothing lost with Redis, nothing applied twice), one decision per event.
    assert_exactly_once(&t, 8_000);
    assert_segments_never_overlap(&t);
    assert_features_exact(&t, &txns, &deliveries);
    assert_one_decision_per_event(&t, &txns);
}

/// Produces `txns` and waits until the worker has predicted and committed all of them;
/// returns their deliveries.
fn produce_and_commit(t: &TestEnv, txns: &[Transaction], worker: &ChildWorker) -> Vec<(i32, i64)> {
    let (kafka, topic) = (&services().kafka, t.topic("transactions"));
    let before = scrape(&worker.admin, "quiver_predictions_total");
    let deliveries = produce_all(kafka, &topic, &messages(txns));
    let all_in = eventually(Duration::from_secs(90), || {
        let committed = committed(kafka, &t.config.ingest.group_id, &topic, 4);
        scrape(&worker.admin, "quiver_predictions_total") >= before + txns.len() as f64
            && deliveries.iter().all(|&(p, o)| committed[p as usize] > o)
    });
    assert!(all_in, "{} events not predicted and committed", txns.len());
    deliveries
}

fn repaired(worker: &ChildWorker) -> f64 {
    scrape(&worker.admin, "quiver_ingest_online_repaired_offsets_total")
}

#[test]
fn redis_that_lost_acknowledged_writes_is_repaired_from_below_the_commit() {
    let (mut redis, t) = with_own_redis(
        "rollback",
        &[
            ("QUIVER__INGEST__SEGMENT_MAX_AGE_MS", "200"),
            ("QUIVER__INGEST__COMMIT_INTERVAL_MS", "200"),
        ],
    );
    t.create_topics();
    t.deploy_model();
    let txns = transactions(73, 0, 10_500);
    let mut deliveries = Vec::new();

    // 1. Under a running worker, Redis crashes and comes back without what it acknowledged
    //    since a copy of its data was taken — 3 000 events, all of them committed.
    let mut worker = spawn_worker(&t, &[]);
    deliveries.extend(produce_and_commit(&t, &txns[..3_000], &worker));
    let first_copy = t.dir.join("redis-copy-1");
    redis.copy_data(&first_copy);
    deliveries.extend(produce_and_commit(&t, &txns[3_000..6_000], &worker));
    redis.roll_back_to(&first_copy);
    // The next events meet the loss.
    deliveries.extend(produce_and_commit(&t, &txns[6_000..7_500], &worker));
    assert!(
        repaired(&worker) > 0.0,
        "the running worker repaired nothing"
    );

    // 2. The same while no worker runs: the next one finds it when assigned.
    let second_copy = t.dir.join("redis-copy-2");
    redis.copy_data(&second_copy);
    deliveries.extend(produce_and_commit(&t, &txns[7_500..9_000], &worker));
    assert!(sigterm(&mut worker.child).success());
    redis.roll_back_to(&second_copy);
    let mut worker = spawn_worker(&t, &[]);
    deliveries.extend(produce_and_commit(&t, &txns[9_000..], &worker));
    assert!(
        repaired(&worker) > 0.0,
        "the restarted worker repaired nothing"
    );
    assert!(sigterm(&mut worker.child).success());

    // Every user's and merchant's online state is the reference again, and the repair sent,
    // logged and stored nothing twice.
    assert_exactly_once(&t, txns.len() as i64);
    assert_segments_never_overlap(&t);
    assert_features_exact(&t, &txns, &deliveries);
    assert_one_decision_per_event(&t, &txns);
}

#[test]
fn a_shard_that_does_not_decode_is_rebuilt_from_the_raw_store_and_nothing_stops() {
    let t = TestEnv::new(
        "undecodable",
        &[("QUIVER__INGEST__SEGMENT_MAX_AGE_MS", "200")],
    );
    t.create_topics();
    t.deploy_model();
    let txns = transactions(79, 0, 4_000);
    let (first, second) = txns.split_at(3_000);
    let mut worker = spawn_worker(&t, &[]);
    let mut deliveries = produce_and_commit(&t, first, &worker);
    assert!(sigterm(&mut worker.child).success());

    // Garbage where a user's and a merchant's shards were, for entities with events on both
    // sides of the restart (so the restarted worker must load them).
    let later = |entity: &dyn Fn(&Transaction) -> &str| {
        first
            .iter()
            .zip(&deliveries)
            .find(|(x, _)| second.iter().any(|y| entity(y) == entity(x)))
            .map(|(x, &(partition, _))| (entity(x).to_string(), partition))
            .unwrap()
    };
    let (user, user_partition) = later(&|x| x.user_id.as_str());
    let (merchant, merchant_partition) = later(&|x| x.merchant_id.as_str());
    let mut conn = redis::Client::open(t.config.redis.url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let prefix = &t.config.redis.key_prefix;
    for (view, entity, partition) in [
        ("user_txn", &user, user_partition),
        ("merchant_txn", &merchant, merchant_partition),
    ] {
        let key = format!("{prefix}:{view}:{entity}");
        let field = format!("p{partition}");
        let before: Option<Vec<u8>> = redis::cmd("HGET")
            .arg(&key)
            .arg(&field)
            .query(&mut conn)
            .unwrap();
        assert!(before.is_some(), "{key} has no {field}");
        redis::cmd("HSET")
            .arg(&key)
            .arg(&field)
            .arg(b"\x02not a shard".as_slice())
            .query::<i64>(&mut conn)
            .unwrap();
    }

    // The restarted worker reads them, rebuilds both from the raw store and goes on.
    let mut worker = spawn_worker(&t, &[]);
    deliveries.extend(produce_and_commit(&t, second, &worker));
    let rebuilt = scrape(&worker.admin, "quiver_ingest_unreadable_shards_total");
    assert!(sigterm(&mut worker.child).success());
    assert!(rebuilt >= 2.0, "{rebuilt} shards rebuilt");
    assert_exactly_once(&t, txns.len() as i64);
    assert_features_exact(&t, &txns, &deliveries);
}

#[test]
fn a_changed_view_is_never_read_wrong_and_is_refused_until_rebuilt() {
    let t = TestEnv::new("redefine", &[]);
    t.create_topics();
    let first = transactions(71, 0, 2_000);
    let mut deliveries = produce_all(
        &services().kafka,
        &t.topic("transactions"),
        &messages(&first),
    );
    let ingest = start_in_process(&t);
    assert!(eventually(Duration::from_secs(60), || {
        ingest.stats.events.load(Ordering::Relaxed) >= 2_000
    }));
    ingest.stop();

    // `user_txn` gains a feature ahead of the others, in a window it already has.
    let schemas = t.dir.join("schemas-edited");
    copy_dir(&Path::new(REPO).join("schemas"), &schemas);
    let path = schemas.join("views/user_txn.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let at = text.find("[[features]]").unwrap();
    let added = "[[features]]\nname = \"amount_min_1h\"\nop = \"min\"\ncolumn = \"amount\"\nwindow = \"1h\"\n\n";
    std::fs::write(&path, format!("{}{added}{}", &text[..at], &text[at..])).unwrap();
    let edited = t.with_schemas(&schemas);

    // The API answers 409 for state of the old layout (never a wrong value, never a dropped
    // connection); the unchanged view still answers.
    let api = start_api(&edited, "");
    let user = format!("/v1/features/user_txn/{}", first[0].user_id);
    let (status, body) = http(&api, "GET", &user, None, &[]);
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "view_definition_changed", "{body}");
    let batch = format!(
        r#"{{"view":"user_txn","entities":["{}"]}}"#,
        first[1].user_id
    );
    assert_eq!(http(&api, "POST", "/v1/features", Some(&batch), &[]).0, 409);
    let merchant = format!("/v1/features/merchant_txn/{}", first[0].merchant_id);
    assert_eq!(http(&api, "GET", &merchant, None, &[]).0, 200);

    // Ingest refuses to start and names the fix.
    let (ok, out) = run_quiver(edited.quiver(&["ingest"]));
    assert!(!ok, "{out}");
    assert!(
        out.contains("quiver backfill --materialize --view user_txn"),
        "{out}"
    );

    // The rebuild: then the API answers with the new feature, and ingest runs again.
    let (ok, out) = run_quiver(edited.quiver(&["backfill", "--materialize", "--view", "user_txn"]));
    assert!(ok, "{out}");
    let (status, body) = http(&api, "GET", &user, None, &[]);
    assert_eq!(status, 200, "{body}");
    assert!(body["features"].get("amount_min_1h").is_some(), "{body}");
    let more = transactions(71, 2_000, 1_000);
    deliveries.extend(produce_all(
        &services().kafka,
        &edited.topic("transactions"),
        &messages(&more),
    ));
    let ingest = start_in_process(&edited);
    assert!(eventually(Duration::from_secs(60), || {
        ingest.stats.events.load(Ordering::Relaxed) >= 1_000
    }));
    ingest.stop();

    // Every user's and merchant's state is exactly the reference under the new definition.
    let all: Vec<_> = first.iter().chain(&more).cloned().collect();
    assert_features_exact(&edited, &all, &deliveries);
}

#[test]
fn a_backfill_materializing_under_a_running_worker_rolls_nothing_back() {
    let t = TestEnv::new(
        "backfill-live",
        &[("QUIVER__INGEST__SEGMENT_MAX_AGE_MS", "200")],
    );
    t.create_topics();
    t.deploy_model();
    let txns = transactions(89, 0, 12_000);
    let mut worker = spawn_worker(&t, &[]);
    let producer = stream(&t, &txns, 600);
    let raw = || t.raw_scalar("transactions", "SELECT count(*) FROM raw");
    // Twice while the stream flows: each rebuild writes shards (and feature-log segments) as
    // of the raw store's end, behind what the worker holds by the time they land.
    for at in [4_000, 8_000] {
        assert!(eventually(Duration::from_secs(60), || raw() >= at));
        let (ok, out) = run_quiver(t.quiver(&["backfill", "--materialize"]));
        assert!(ok, "{out}");
    }
    let deliveries = producer.join().unwrap();
    assert!(eventually(Duration::from_secs(60), || raw() >= 12_000));
    std::thread::sleep(Duration::from_secs(1));
    assert!(sigterm(&mut worker.child).success());
    assert_exactly_once(&t, 12_000);
    assert_features_exact(&t, &txns, &deliveries);
    assert_one_decision_per_event(&t, &txns);
}
