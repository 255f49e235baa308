//! The status page (`GET /` of `quiver serve`) in headless Chromium, against a live run on the
//! real stack (worker, monitor and API as child processes): it loads without a console error,
//! polls `/status.json`, and draws its charts and tables with data from the run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::child::{ChildWorker, admin_get, scrape, spawn_monitor, spawn_worker};
use common::{TestEnv, eventually, free_port};

/// Headless Chromium on `url`, with `what` (`--dump-dom`, `--screenshot=…`) after `budget_ms`
/// of virtual time; its stdout.
fn chromium(t: &TestEnv, url: &str, what: &[&str], budget_ms: u64) -> String {
    let profile = t.dir.join(format!("chromium-{}", free_port()));
    let out = Command::new(common::installed("chromium"))
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1400,1500",
            &format!("--user-data-dir={}", profile.display()),
            &format!("--virtual-time-budget={budget_ms}"),
        ])
        .args(what)
        .arg(url)
        .stderr(Stdio::null())
        .output()
        .expect("run chromium");
    assert!(out.status.success(), "chromium {what:?} failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of `attribute="…"` on the element with `id`, in a dumped DOM.
fn attribute(dom: &str, id: &str, attribute: &str) -> Option<String> {
    let at = dom.find(&format!("id=\"{id}\""))?;
    let start = dom[..at].rfind('<')?;
    let end = at + dom[at..].find('>')?;
    let tag = &dom[start..end];
    let key = format!("{attribute}=\"");
    let from = tag.find(&key)? + key.len();
    Some(tag[from..from + tag[from..].find('"')?].to_string())
}

/// The value of `attribute="…"` on the `<body>` tag, in a dumped DOM.
fn body(dom: &str, attribute: &str) -> Option<String> {
    let start = dom.find("<body")?;
    let tag = &dom[start..start + dom[start..].find('>')?];
    let key = format!("{attribute}=\"");
    let from = tag.find(&key)? + key.len();
    Some(tag[from..from + tag[from..].find('"')?].to_string())
}

#[test]
fn the_status_page_draws_a_live_run_without_errors() {
    let t = TestEnv::new("status", &[]);
    t.create_topics();
    t.deploy_model();
    let model = t.production_model();
    let worker = spawn_worker(&t, &[]);
    let monitor = spawn_monitor(
        &t,
        &[
            ("QUIVER__MONITOR__INTERVAL", "1s"),
            ("QUIVER__MONITOR__MIN_ROWS", "100"),
        ],
    );
    let monitor_admin = monitor.admin.clone();
    let api = format!("127.0.0.1:{}", free_port());
    let _serve = ChildWorker {
        child: t
            .quiver(&["serve"])
            .env("QUIVER__API__LISTEN", &api)
            .env("QUIVER__INGEST__ADMIN_LISTEN", &worker.admin)
            .env("QUIVER__MONITOR__ADMIN_LISTEN", &monitor_admin)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        admin: api.clone(),
    };
    assert!(eventually(Duration::from_secs(30), || {
        admin_get(&api, "/readyz").0 == 200 && admin_get(&monitor_admin, "/readyz").0 == 200
    }));

    // Live traffic with labels on a thread, until the page has been read.
    // Dated as they are produced (1 000/s from now), so freshness reads as in production.
    let options = quiver_demo::GeneratorOptions {
        users: 150,
        fraud_rate: 0.03,
        ..quiver_demo::GeneratorOptions::default()
    };
    let txns =
        common::stream::demo_transactions_from(71, options, chrono::Utc::now(), 1, 0, 20_000);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let url = format!("http://{api}/");
    let shot = t.dir.join("status.png");
    let dom = std::thread::scope(|scope| {
        scope.spawn(|| {
            for chunk in txns.chunks(500) {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                common::stream::stream(&t, chunk, 1_000).join().unwrap();
                common::produce_demo_labels(&t, chunk);
            }
        });
        let live = eventually(Duration::from_secs(90), || {
            scrape(&monitor_admin, "quiver_labels_joined_total") >= 300.0
                && scrape(&worker.admin, "quiver_feature_freshness_seconds") > 0.0
        });
        std::thread::sleep(Duration::from_secs(2));
        let dom = live.then(|| chromium(&t, &url, &["--dump-dom"], 9_000));
        if live {
            chromium(
                &t,
                &url,
                &[&format!("--screenshot={}", shot.display())],
                9_000,
            );
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        dom
    });
    let dom = dom.expect("no live data to show");

    assert_eq!(
        body(&dom, "data-errors").as_deref(),
        Some("0"),
        "console errors on the page"
    );
    let polls: usize = body(&dom, "data-polls")
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    assert!(polls >= 3, "the page polled /status.json {polls} times");
    for chart in ["c-throughput", "c-latency", "c-auc"] {
        let points: usize = attribute(&dom, chart, "data-points")
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        assert!(points > 0, "{chart} drew nothing:\n{dom}");
    }
    assert!(dom.contains(&model), "the model's row");
    assert!(
        dom.contains("user_txn") && dom.contains("merchant_txn"),
        "freshness rows"
    );
    assert!(dom.contains("promoted"), "the timeline");
    let png = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(png > 10_000, "screenshot of {png} bytes");
    if let Ok(to) = std::env::var("QUIVER_STATUS_SCREENSHOT") {
        std::fs::copy(&shot, Path::new(&to)).unwrap();
    }
}
