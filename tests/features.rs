//! Streaming features against real tansu and Redis: exact values of every demo feature at read
//! time (windows emptied long after the last event included), the HTTP contract with its 4xx
//! answers, and the offline feature log equal, event by event, to the state it was logged from.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use common::reference::{Ev, diff, expected, kept};
use common::{TestEnv, eventually, http, log_query, produce_all, services, start_api};
use datafusion::arrow::array::{
    Array, BooleanArray, Float64Array, Int32Array, Int64Array, StringArray,
    TimestampMicrosecondArray,
};
use serde_json::{Value, json};

const MIN: i64 = 60_000_000;
const HOUR: i64 = 60 * MIN;
const DAY: i64 = 24 * HOUR;

fn micros(text: &str) -> i64 {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .timestamp_micros()
}

/// Produces the scenario and returns its events with their partitions and offsets.
fn scenario(t: &TestEnv, now: i64) -> Vec<Ev> {
    let rows: Vec<(&str, &str, i64, f64, &str)> = vec![
        ("ua", "m1", 8 * DAY, 11.0, "FR"),
        ("ua", "m2", 6 * DAY + 12 * HOUR, 12.5, "FR"),
        ("ua", "m1", 3 * DAY, 40.0, "DE"),
        ("ua", "m3", 30 * HOUR, 7.25, "FR"),
        ("ua", "m1", 20 * HOUR, 100.0, "ES"),
        ("ua", "m2", 5 * HOUR, 3.0, "FR"),
        ("ua", "m1", 70 * MIN, 18.0, "FR"),
        ("ua", "m3", 50 * MIN, 22.0, "IT"),
        ("ua", "m1", 10 * MIN, 5.5, "FR"),
        ("ua", "m2", 3 * MIN, 61.0, "PT"),
        ("ua", "m1", 40 * MIN, 9.0, "BE"), // out of order, within the 1h lateness
        ("ua", "m2", 3 * HOUR, 999.0, "US"), // more than 1h behind ua's latest: dropped
        ("ub", "m1", 10 * DAY, 15.0, "NL"),
        ("ub", "m1", 9 * DAY + 12 * HOUR, 16.0, "NL"),
        ("uc", "m1", 25 * MIN, 30.0, "FR"),
        ("uc", "m2", 2 * HOUR, 31.0, "FR"), // late for uc
        ("ud", "m3", DAY + 2 * HOUR, 4.0, "SE"),
        ("ud", "m3", 23 * HOUR, 6.0, "SE"),
    ];
    let messages: Vec<(String, Vec<u8>)> = rows
        .iter()
        .enumerate()
        .map(|(i, (user, merchant, ago, amount, country))| {
            let time = DateTime::<Utc>::from_timestamp_micros(now - ago).unwrap().to_rfc3339_opts(SecondsFormat::Millis, true);
            let payload = json!({"txn_id": format!("t{i}"), "user_id": user, "merchant_id": merchant,
                                 "amount": amount, "country": country, "event_time": time});
            (user.to_string(), payload.to_string().into_bytes())
        })
        .collect();
    let deliveries = produce_all(&services().kafka, &t.topic("transactions"), &messages);
    rows.iter()
        .zip(deliveries)
        .map(
            |((user, merchant, ago, amount, country), (partition, offset))| Ev {
                // Event times travel as RFC 3339 with milliseconds.
                time: (now - ago).div_euclid(1000) * 1000,
                partition,
                offset,
                user: user.to_string(),
                merchant: merchant.to_string(),
                amount: *amount,
                country: country.to_string(),
            },
        )
        .collect()
}

fn ingest_until_applied(t: &TestEnv, applied: u64) {
    let ingest = common::start_in_process(t);
    let done = eventually(Duration::from_secs(60), || {
        ingest.stats.features_applied.load(Ordering::Relaxed)
            + ingest.stats.features_late.load(Ordering::Relaxed)
            >= applied
    });
    let report = ingest.stop();
    assert!(done, "features not applied: {report:?}");
}

fn column<'a, T: 'static>(batch: &'a datafusion::arrow::array::RecordBatch, name: &str) -> &'a T {
    batch
        .column_by_name(name)
        .unwrap_or_else(|| panic!("no column {name}"))
        .as_any()
        .downcast_ref::<T>()
        .unwrap()
}

fn json_at(array: &dyn Array, row: usize) -> Value {
    if array.is_null(row) {
        return Value::Null;
    }
    let any = array.as_any();
    if let Some(a) = any.downcast_ref::<Int64Array>() {
        json!(a.value(row))
    } else if let Some(a) = any.downcast_ref::<Float64Array>() {
        json!(a.value(row))
    } else if let Some(a) = any.downcast_ref::<StringArray>() {
        json!(a.value(row))
    } else {
        panic!("unexpected feature type {:?}", array.data_type())
    }
}

#[test]
fn online_features_are_exact_at_read_time_and_the_log_matches_each_event() {
    let t = TestEnv::new("features", &[]);
    t.create_topics();
    let now = Utc::now().timestamp_micros();
    let events = scenario(&t, now);
    ingest_until_applied(&t, 2 * events.len() as u64);
    let api = start_api(&t, "");

    // Every feature of every entity, against the reference at the answer's own `as_of`.
    let cases = [
        ("user_txn", "ua"),
        ("user_txn", "ub"),
        ("user_txn", "uc"),
        ("user_txn", "ud"),
        ("merchant_txn", "m1"),
        ("merchant_txn", "m2"),
        ("merchant_txn", "m3"),
    ];
    for (view_name, entity) in cases {
        let view = t.views.view(view_name).unwrap();
        let (status, body) = http(
            &api,
            "GET",
            &format!("/v1/features/{view_name}/{entity}"),
            None,
            &[],
        );
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["view"], view_name);
        assert_eq!(body["entity"], entity);
        let as_of = micros(body["as_of"].as_str().unwrap());
        assert!(as_of >= now, "as_of is the read time");
        let kept = kept(view, &events, entity, None);
        let problems = diff(
            body["features"].as_object().unwrap(),
            &expected(view, &kept, as_of),
        );
        assert!(
            problems.is_empty(),
            "{view_name}/{entity}: {problems:?}\n{body}"
        );
        let latest = kept.iter().map(|e| e.time).max().unwrap();
        assert_eq!(
            micros(body["event_time_max"].as_str().unwrap()),
            latest,
            "{view_name}/{entity}"
        );
    }

    // Spelled out for the reader: windows emptied long after the last event, lateness applied.
    let (_, ub) = http(&api, "GET", "/v1/features/user_txn/ub", None, &[]);
    assert_eq!(ub["features"]["txn_count_1h"], 0);
    assert_eq!(ub["features"]["amount_sum_1h"], 0.0);
    assert_eq!(ub["features"]["amount_mean_24h"], Value::Null);
    assert_eq!(ub["features"]["amount_stddev_7d"], Value::Null);
    assert_eq!(ub["features"]["distinct_merchants_24h"], 0);
    assert_eq!(ub["features"]["txn_count_lifetime"], 2);
    assert_eq!(ub["features"]["last_country"], "NL");
    let (_, ua) = http(&api, "GET", "/v1/features/user_txn/ua", None, &[]);
    assert_eq!(
        ua["features"]["txn_count_lifetime"], 11,
        "the late event is not counted"
    );
    assert_eq!(
        ua["features"]["last_country"], "PT",
        "the out-of-order event does not win `last`"
    );

    // Batch: one object per entity, unknown ones marked.
    let (status, batch) = http(
        &api,
        "POST",
        "/v1/features",
        Some(r#"{"view":"user_txn","entities":["ua","nobody","ub"]}"#),
        &[],
    );
    assert_eq!(status, 200, "{batch}");
    let items = batch.as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert_eq!(items[1]["found"], false);
    assert_eq!(items[1]["features"]["txn_count_lifetime"], 0);
    assert_eq!(items[1]["event_time_max"], Value::Null);
    let as_of = micros(items[0]["as_of"].as_str().unwrap());
    let problems = diff(
        items[0]["features"].as_object().unwrap(),
        &expected(
            t.views.view("user_txn").unwrap(),
            &kept(t.views.view("user_txn").unwrap(), &events, "ua", None),
            as_of,
        ),
    );
    assert!(problems.is_empty(), "{problems:?}");

    // Bad input: 4xx with a JSON error, never a 500.
    let too_many = json!({"view": "user_txn", "entities": (0..1001).map(|i| format!("u{i}")).collect::<Vec<_>>()}).to_string();
    for (method, path, body, want, code) in [
        ("GET", "/v1/features/nope/ua", None, 404, "unknown_view"),
        (
            "GET",
            "/v1/features/user_txn/nobody",
            None,
            404,
            "unknown_entity",
        ),
        ("POST", "/v1/features", Some("not json"), 400, "bad_request"),
        (
            "POST",
            "/v1/features",
            Some(r#"{"view":"user_txn"}"#),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/v1/features",
            Some(r#"{"view":"user_txn","entities":[{}]}"#),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/v1/features",
            Some(r#"{"view":"user_txn","entities":[""]}"#),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/v1/features",
            Some(r#"{"view":"nope","entities":["ua"]}"#),
            404,
            "unknown_view",
        ),
        (
            "POST",
            "/v1/features",
            Some(too_many.as_str()),
            400,
            "bad_request",
        ),
        ("GET", "/v2/anything", None, 404, "not_found"),
    ] {
        let (status, body) = http(&api, method, path, body, &[]);
        assert_eq!(status, want, "{method} {path}: {body}");
        assert_eq!(body["code"], code, "{method} {path}: {body}");
        assert!(body["error"].is_string(), "{method} {path}: {body}");
    }
    assert_eq!(http(&api, "GET", "/healthz", None, &[]).0, 200);
    assert_eq!(http(&api, "GET", "/readyz", None, &[]).0, 200);

    // Bearer token.
    let secured = start_api(&t, "s3cret");
    for (header, want) in [
        (None, 401),
        (Some("Bearer nope"), 401),
        (Some("Bearer s3cret"), 200),
    ] {
        let headers: Vec<(&str, &str)> = header.map(|h| ("Authorization", h)).into_iter().collect();
        let (status, body) = http(&secured, "GET", "/v1/features/user_txn/ua", None, &headers);
        assert_eq!(status, want, "{header:?}: {body}");
    }

    // The feature log: one row per event and view, each equal to the reference as of that
    // event (own partition up to the event, other partitions up to the logged clock).
    for view_name in ["user_txn", "merchant_txn"] {
        let view = t.views.view(view_name).unwrap();
        let batches = log_query(
            &t,
            view_name,
            "SELECT * FROM log ORDER BY _partition, _offset",
        );
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        assert_eq!(rows, events.len(), "{view_name}: one row per event");
        let mut seen = std::collections::BTreeSet::new();
        for b in &batches {
            let entities = column::<StringArray>(b, &view.entity);
            let partitions = column::<Int32Array>(b, "_partition");
            let offsets = column::<Int64Array>(b, "_offset");
            let as_of = column::<TimestampMicrosecondArray>(b, "_as_of");
            let late = column::<BooleanArray>(b, "_late");
            let clocks = column::<StringArray>(b, "_clock");
            for row in 0..b.num_rows() {
                let (entity, partition, offset) = (
                    entities.value(row),
                    partitions.value(row),
                    offsets.value(row),
                );
                assert!(
                    seen.insert((partition, offset)),
                    "{view_name}: ({partition}, {offset}) logged twice"
                );
                let mut bounds: BTreeMap<i32, i64> =
                    serde_json::from_str::<BTreeMap<String, i64>>(clocks.value(row))
                        .unwrap()
                        .into_iter()
                        .map(|(p, o)| (p.parse().unwrap(), o))
                        .collect();
                bounds.insert(partition, offset);
                let kept = kept(view, &events, entity, Some(&bounds));
                let this_kept = kept
                    .iter()
                    .any(|e| e.partition == partition && e.offset == offset);
                assert_eq!(
                    late.value(row),
                    !this_kept,
                    "{view_name}/{entity} at {offset}: lateness"
                );
                assert_eq!(
                    as_of.value(row),
                    kept.iter().map(|e| e.time).max().unwrap(),
                    "{view_name}/{entity} at {offset}"
                );
                let logged: serde_json::Map<String, Value> = view
                    .feature_names()
                    .map(|name| {
                        (
                            name.to_string(),
                            json_at(b.column_by_name(name).unwrap().as_ref(), row),
                        )
                    })
                    .collect();
                let problems = diff(&logged, &expected(view, &kept, as_of.value(row)));
                assert!(
                    problems.is_empty(),
                    "{view_name}/{entity} at ({partition}, {offset}): {problems:?}"
                );
            }
        }
    }

    // SQL over both stores (`quiver sql`): tables `raw_transactions`, `features_<view>`.
    let sql = |query: &str, extra: &[&str]| {
        let mut args = vec!["sql", query];
        args.extend_from_slice(extra);
        let out = t.quiver(&args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let n = events.len();
    let (code, stdout, stderr) = sql("SELECT count(*) AS n FROM raw_transactions", &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains(&format!("| {n} ")), "{stdout}");
    let (code, stdout, stderr) = sql(
        "SELECT r.user_id, count(*) AS events, max(f.txn_count_lifetime) AS lifetime \
         FROM raw_transactions r JOIN features_user_txn f ON r._partition = f._partition AND r._offset = f._offset \
         WHERE r.user_id = 'ub' GROUP BY r.user_id",
        &[],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("| ub ") && stdout.contains("| 2 "),
        "{stdout}"
    );
    let csv = t.dir.join("users.csv");
    let (code, _, stderr) = sql(
        "SELECT user_id, txn_count_lifetime FROM features_user_txn ORDER BY _offset",
        &["--out", csv.to_str().unwrap()],
    );
    assert_eq!(code, Some(0), "{stderr}");
    let written = std::fs::read_to_string(&csv).unwrap();
    assert!(
        written.starts_with("user_id,txn_count_lifetime"),
        "{written}"
    );
    assert_eq!(written.lines().count(), n + 1, "{written}");
    let (code, _, stderr) = sql("SELECT nope FROM raw_transactions", &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("nope"), "{stderr}");
    let (code, _, stderr) = sql("SELECT 1", &["--out", "x.json"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("use a .parquet or .csv file name"),
        "{stderr}"
    );
}
