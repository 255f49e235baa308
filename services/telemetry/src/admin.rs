//! The admin listener: `/metrics` (Prometheus text), `/healthz` (process alive) and `/readyz`
//! (dependencies reachable and work flowing).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;

use crate::{Error, Result};

/// Readiness shared between a service and its admin listener (and the `quiver_ready` gauge).
#[derive(Debug, Clone)]
pub struct Health {
    inner: Arc<HealthInner>,
}

#[derive(Debug)]
struct HealthInner {
    service: &'static str,
    ready: AtomicBool,
    reason: Mutex<String>,
}

impl Default for Health {
    /// The readiness of an unnamed service (`quiver`).
    fn default() -> Self {
        Self::of("quiver")
    }
}

#[derive(Serialize)]
struct Status<'a> {
    status: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    reason: &'a str,
}

impl Health {
    /// The readiness of `service` (`worker`, `api`, `monitor`: the `quiver_ready` label), not
    /// ready yet.
    pub fn of(service: &'static str) -> Self {
        crate::events::ready(service, false);
        Self {
            inner: Arc::new(HealthInner {
                service,
                ready: AtomicBool::new(false),
                reason: Mutex::new(String::new()),
            }),
        }
    }

    /// Marks the service ready.
    pub fn set_ready(&self) {
        if !self.inner.ready.swap(true, Ordering::AcqRel) {
            crate::events::ready(self.inner.service, true);
        }
    }

    /// Marks the service not ready, with a reason shown by `/readyz`.
    pub fn set_not_ready(&self, reason: impl Into<String>) {
        if let Ok(mut r) = self.inner.reason.lock() {
            *r = reason.into();
        }
        if self.inner.ready.swap(false, Ordering::AcqRel) {
            crate::events::ready(self.inner.service, false);
        }
    }

    /// Whether the service is ready.
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Acquire)
    }

    fn reason(&self) -> String {
        self.inner
            .reason
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }
}

#[derive(Clone)]
struct AdminState {
    metrics: PrometheusHandle,
    health: Health,
}

/// The admin routes, to be served alone or merged into a bigger router.
pub fn admin_router(metrics: PrometheusHandle, health: Health) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .route(
            "/healthz",
            get(|| async {
                Json(Status {
                    status: "ok",
                    reason: "",
                })
            }),
        )
        .route("/readyz", get(readyz))
        .with_state(AdminState { metrics, health })
}

async fn render_metrics(State(state): State<AdminState>) -> impl IntoResponse {
    // The service may have been marked before the recorder existed.
    crate::events::ready(state.health.inner.service, state.health.is_ready());
    state.metrics.run_upkeep();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.metrics.render(),
    )
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    if state.health.is_ready() {
        (StatusCode::OK, Json(serde_json::json!({"status": "ready"})))
    } else {
        let reason = state.health.reason();
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "not_ready", "reason": reason})),
        )
    }
}

/// Binds `addr` and serves the admin routes on the current tokio runtime until it shuts down.
pub async fn serve_admin(
    addr: &str,
    metrics: PrometheusHandle,
    health: Health,
) -> Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind {
            addr: addr.to_string(),
            source,
        })?;
    let router = admin_router(metrics, health);
    Ok(tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router).await {
            tracing::warn!(%error, "admin listener stopped");
        }
    }))
}
