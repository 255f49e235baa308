//! Internal events of the telemetry crate itself: the readiness gauge.
#![allow(clippy::disallowed_macros)]

use metrics::gauge;

use crate::names;

/// A service became ready (1) or not (0).
pub(crate) fn ready(service: &'static str, ready: bool) {
    gauge!(names::READY, "service" => service).set(f64::from(u8::from(ready)));
}
