//! Crashes on purpose, for tests of recovery. `QUIVER_FAILPOINT=raw-written:N` aborts the
//! process (no flush, no commit, like `kill -9`) right after the N-th raw segment is durable and
//! before that segment's feature log, scores and Redis shards are written — the window a replay
//! must repair. Unset in production.

use tracing::error;

/// An armed failpoint, read once from the environment.
#[derive(Debug, Default)]
pub(crate) struct Failpoint {
    armed: Option<(String, u64)>,
    hits: u64,
}

impl Failpoint {
    pub(crate) const RAW_WRITTEN: &'static str = "raw-written";

    pub(crate) fn from_env() -> Self {
        let armed = std::env::var("QUIVER_FAILPOINT").ok().and_then(|v| {
            let (name, n) = v.split_once(':')?;
            Some((name.to_string(), n.parse().ok()?))
        });
        Self { armed, hits: 0 }
    }

    /// Counts a pass through `name`; aborts at the armed count.
    pub(crate) fn hit(&mut self, name: &str) {
        if let Some((armed, n)) = &self.armed
            && armed == name
        {
            self.hits += 1;
            if self.hits >= *n {
                error!(
                    failpoint = name,
                    hits = self.hits,
                    "failpoint reached: aborting"
                );
                std::process::abort();
            }
        }
    }
}
