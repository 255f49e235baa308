//! `quiver ingest` as a child process (so a test can SIGKILL, SIGSTOP or SIGTERM it), and its
//! admin listener.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::{TestEnv, free_port};

/// A `quiver ingest` (or `monitor run`) child process with its admin listener on a free port.
pub struct ChildWorker {
    pub child: Child,
    pub admin: String,
}

impl Drop for ChildWorker {
    /// A test that fails half-way must not leave its worker running after it (polling a broker
    /// that is gone, for as long as the machine is up).
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `quiver ingest` for `t` (debug logs as JSON in the test's dir).
pub fn spawn_worker(t: &TestEnv, extra: &[(&str, &str)]) -> ChildWorker {
    let admin = format!("127.0.0.1:{}", free_port());
    let mut cmd = t.quiver(&["ingest"]);
    let log = std::fs::File::create(
        t.dir
            .join(format!("ingest-{}.log", admin.replace(':', "_"))),
    )
    .unwrap();
    cmd.env("QUIVER__INGEST__ADMIN_LISTEN", &admin)
        .env("RUST_LOG", "quiver_ingest=debug,info")
        .env("QUIVER__TELEMETRY__LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(log);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    ChildWorker {
        child: cmd.spawn().expect("spawn quiver ingest"),
        admin,
    }
}

/// Starts `quiver monitor run` for `t` with its admin listener on a free port and `extra`
/// variables (log to `monitor.log` in the test's dir).
pub fn spawn_monitor(t: &TestEnv, extra: &[(&str, &str)]) -> ChildWorker {
    let admin = format!("127.0.0.1:{}", free_port());
    let log = std::fs::File::create(
        t.dir
            .join(format!("monitor-{}.log", admin.replace(':', "_"))),
    )
    .unwrap();
    let mut cmd = t.quiver(&["monitor", "run"]);
    cmd.env("QUIVER__MONITOR__ADMIN_LISTEN", &admin)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    ChildWorker {
        child: cmd.spawn().expect("spawn quiver monitor run"),
        admin,
    }
}

/// (status, body) of a GET on the admin listener (0 when it does not answer).
pub fn admin_get(addr: &str, path: &str) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return (0, String::new());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, body.to_string())
}

/// The sum of a metric's samples on the admin listener (0 when it does not answer).
pub fn scrape(addr: &str, metric: &str) -> f64 {
    admin_get(addr, "/metrics")
        .1
        .lines()
        .filter(|l| l.starts_with(metric))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits for a child, killing it (and failing the test) if it outlives `timeout`.
pub fn wait_at_most(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("child did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sends a signal (`TERM`, `STOP`, `CONT`, ...) to a child.
pub fn signal(child: &Child, name: &str) {
    let ok = std::process::Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{name} failed");
}

/// SIGTERM, then waits for a graceful exit.
pub fn sigterm(child: &mut Child) -> std::process::ExitStatus {
    signal(child, "TERM");
    wait_at_most(child, Duration::from_secs(60))
}
