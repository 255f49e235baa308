//! Internal events of the API: each one counts (and logs) in one place, with the names from
//! `quiver_telemetry::names`.
#![allow(clippy::disallowed_macros)]

use std::time::Duration;

use metrics::{counter, histogram};
use quiver_telemetry::names;

/// One request answered.
pub(crate) fn request(route: &'static str, status: u16, took: Duration) {
    histogram!(names::API_LATENCY_SECONDS, "route" => route).record(took.as_secs_f64());
    counter!(names::API_REQUESTS, "route" => route, "status" => status.to_string()).increment(1);
}
