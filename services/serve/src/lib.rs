//! `quiver serve`: the online feature API.
//!
//! - `GET /v1/features/{view}/{entity}` → `{"view","entity","features":{name:value},"as_of","event_time_max"}`
//! - `POST /v1/features` with `{"view": ..., "entities": [...]}` → an array of the same objects
//!   (an entity with no state gets its empty-window values, `event_time_max: null` and
//!   `"found": false`)
//! - `GET /metrics`, `/healthz`, `/readyz` (ready while Redis answers)
//! - `GET /`: the status page, polling `GET /status.json` (the worker's and the monitor's
//!   metrics and the deployment timeline; open like `/metrics`, no token)
//!
//! A read fetches the entity's whole hash in one round trip, merges its partition shards and
//! finalises every window at the request time (`as_of`), so windows slide with the clock and
//! every answer says how fresh it is (`event_time_max`, the latest event the features include).
//! Bad input never yields a 500: unknown view or entity → 404, malformed body → 400, missing or
//! wrong bearer token (when `api.token` is set) → 401, Redis down → 503; errors are
//! `{"error": message, "code": code}`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, SecondsFormat, Utc};
use quiver_core::Config;
use quiver_features::{EntityShards, ViewCatalog, ViewPlan};
use quiver_online::OnlineReader;
use quiver_telemetry::Health;
use serde::Deserialize;
use serde_json::{Map, Value as Json_, json};
use tracing::{info, warn};

mod events;
mod status;

/// Result alias used across `quiver-serve`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors starting the API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Redis is unreachable at start-up.
    #[error("cannot reach Redis at {url}: {source}")]
    Redis {
        /// URL.
        url: String,
        /// Cause.
        source: quiver_online::Error,
    },
    /// The listener cannot bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: String,
        /// Cause.
        source: std::io::Error,
    },
}

/// Most entities one batch request may ask for.
pub const MAX_BATCH: usize = 1_000;

/// Shared state of the handlers.
#[derive(Debug)]
pub struct Api {
    plans: HashMap<String, ViewPlan>,
    reader: OnlineReader,
    token: Option<String>,
    status: status::Sources,
}

fn rfc3339(micros: i64) -> String {
    DateTime::<Utc>::from_timestamp_micros(micros)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Micros, true))
        .unwrap_or_default()
}

/// A feature value as plain JSON: null, boolean, number or string.
pub fn to_json(value: quiver_features::Value) -> Json_ {
    use quiver_features::Value;
    match value {
        Value::Null => Json_::Null,
        Value::Bool(b) => Json_::Bool(b),
        Value::Int(i) => Json_::from(i),
        Value::Float(f) => serde_json::Number::from_f64(f).map_or(Json_::Null, Json_::Number),
        Value::Str(s) => Json_::String(s),
    }
}

fn unknown_view(view: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "unknown_view",
        format!("unknown view `{view}`"),
    )
}

/// An entity's online state was written under another definition of its view.
struct OtherDefinition;

fn definition_changed(view: &str, entity: &str) -> Response {
    error(
        StatusCode::CONFLICT,
        "view_definition_changed",
        format!(
            "the online state of `{entity}` in view `{view}` was written under another definition of the view; rebuild it with `quiver backfill --materialize --view {view}`"
        ),
    )
}

fn unavailable(e: &quiver_online::Error) -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "online_store_unavailable",
        e.to_string(),
    )
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into(), "code": code}))).into_response()
}

fn record(route: &'static str, started: Instant, response: Response) -> Response {
    events::request(route, response.status().as_u16(), started.elapsed());
    response
}

/// Compares a presented secret with the expected one in time independent of where they differ
/// (only the length, which is not secret enough to matter, can end it early).
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && std::hint::black_box(
            given
                .iter()
                .zip(expected)
                .fold(0u8, |diff, (a, b)| diff | (a ^ b)),
        ) == 0
}

impl Api {
    /// Connects to Redis and compiles the views.
    pub async fn connect(config: &Config, views: &ViewCatalog) -> Result<Self> {
        let unreachable = |source| Error::Redis {
            url: quiver_core::config::redacted_url(&config.redis.url),
            source,
        };
        let reader = OnlineReader::connect(
            &config.redis.url,
            &config.redis.key_prefix,
            Duration::from_millis(config.redis.connect_timeout_ms),
        )
        .await
        .map_err(unreachable)?;
        reader.ping().await.map_err(unreachable)?;
        let plans = views
            .views
            .iter()
            .map(|v| (v.name.clone(), ViewPlan::new(Arc::clone(v))))
            .collect();
        let token = (!config.api.token.is_empty()).then(|| config.api.token.clone());
        Ok(Self {
            plans,
            reader,
            token,
            status: status::Sources::of(config),
        })
    }

    /// `Some(401 answer)` unless the request carries the configured bearer token.
    fn check_token(&self, headers: &HeaderMap) -> Option<Response> {
        (!self.authorized(headers)).then(|| {
            error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or wrong bearer token",
            )
        })
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|given| same_secret(given.as_bytes(), token.as_bytes()))
    }

    /// The answer object for one entity, finalised at `now` (µs); [`OtherDefinition`] when its
    /// state was written under another definition of the view.
    fn answer(
        &self,
        view: &str,
        plan: &ViewPlan,
        entity: &str,
        mut shards: EntityShards,
        now: i64,
    ) -> std::result::Result<Json_, OtherDefinition> {
        if shards
            .iter()
            .any(|(_, shard)| shard.of_other_definition(plan))
        {
            return Err(OtherDefinition);
        }
        let found = !shards.is_empty();
        let stale = shards.retain_fitting(plan);
        if stale > 0 {
            warn!(
                view,
                entity, stale, "ignoring shards written under another definition of the view"
            );
        }
        let values = shards.read_at(plan, now);
        let event_time_max = shards.event_time_max();
        let features: Map<String, Json_> = plan
            .view()
            .feature_names()
            .zip(values)
            .map(|(name, value)| (name.to_string(), to_json(value)))
            .collect();
        let mut out = json!({
            "view": view,
            "entity": entity,
            "features": features,
            "as_of": rfc3339(now),
            "event_time_max": event_time_max.map(rfc3339),
        });
        if !found && let Some(map) = out.as_object_mut() {
            map.insert("found".to_string(), Json_::Bool(false));
        }
        Ok(out)
    }

    async fn get_one(&self, headers: &HeaderMap, view: &str, entity: &str) -> Response {
        if let Some(denied) = self.check_token(headers) {
            return denied;
        }
        let Some(plan) = self.plans.get(view) else {
            return unknown_view(view);
        };
        let shards = match self.reader.fetch(view, entity).await {
            Ok(s) => s,
            Err(e) => return unavailable(&e),
        };
        if shards.is_empty() {
            return error(
                StatusCode::NOT_FOUND,
                "unknown_entity",
                format!("no features for `{entity}` in view `{view}`"),
            );
        }
        let now = Utc::now().timestamp_micros();
        match self.answer(view, plan, entity, shards, now) {
            Ok(answer) => Json(answer).into_response(),
            Err(OtherDefinition) => definition_changed(view, entity),
        }
    }

    async fn get_many(&self, headers: &HeaderMap, body: &[u8]) -> Response {
        if let Some(denied) = self.check_token(headers) {
            return denied;
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Batch {
            view: String,
            entities: Vec<Json_>,
        }
        let batch: Batch = match serde_json::from_slice(body) {
            Ok(b) => b,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("expected {{\"view\": string, \"entities\": [string, ...]}}: {e}"),
                );
            }
        };
        if batch.entities.len() > MAX_BATCH {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("at most {MAX_BATCH} entities per request"),
            );
        }
        let mut entities = Vec::with_capacity(batch.entities.len());
        for e in &batch.entities {
            match e {
                Json_::String(s) if !s.is_empty() => entities.push(s.clone()),
                Json_::Number(n) => entities.push(n.to_string()),
                other => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        format!("entities must be non-empty strings or numbers, got {other}"),
                    );
                }
            }
        }
        let Some(plan) = self.plans.get(batch.view.as_str()) else {
            return unknown_view(&batch.view);
        };
        let fetched = match self.reader.fetch_many(&batch.view, &entities).await {
            Ok(s) => s,
            Err(e) => return unavailable(&e),
        };
        let now = Utc::now().timestamp_micros();
        let mut answers = Vec::with_capacity(entities.len());
        for (entity, shards) in entities.iter().zip(fetched) {
            match self.answer(&batch.view, plan, entity, shards, now) {
                Ok(answer) => answers.push(answer),
                Err(OtherDefinition) => return definition_changed(&batch.view, entity),
            }
        }
        Json(answers).into_response()
    }
}

/// The OpenAPI 3 document of the API (`/openapi.json`), checked by schemathesis in
/// `tests/api/schemathesis.sh`.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// Largest request body accepted (bytes).
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
        .into_response()
}

/// The API routes (plus `/metrics`, `/healthz`, `/readyz`, `/openapi.json`).
pub fn router(api: Arc<Api>, health: Health) -> Router {
    let v1 = Router::new()
        .route(
            "/v1/features/{view}/{entity}",
            get(
                |State(api): State<Arc<Api>>,
                 headers: HeaderMap,
                 path: std::result::Result<Path<(String, String)>, PathRejection>| async move {
                    let started = Instant::now();
                    let response = match path {
                        Ok(Path((view, entity))) => api.get_one(&headers, &view, &entity).await,
                        Err(rejection) => error(
                            StatusCode::BAD_REQUEST,
                            "bad_request",
                            rejection.body_text(),
                        ),
                    };
                    record("get", started, response)
                },
            ),
        )
        .route(
            "/v1/features",
            post(
                |State(api): State<Arc<Api>>,
                 headers: HeaderMap,
                 body: std::result::Result<Bytes, BytesRejection>| async move {
                    let started = Instant::now();
                    let response = match body {
                        Ok(body) => api.get_many(&headers, &body).await,
                        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                            error(
                                StatusCode::PAYLOAD_TOO_LARGE,
                                "payload_too_large",
                                format!("request bodies are limited to {MAX_BODY_BYTES} bytes"),
                            )
                        }
                        Err(rejection) => error(
                            StatusCode::BAD_REQUEST,
                            "bad_request",
                            rejection.body_text(),
                        ),
                    };
                    record("batch", started, response)
                },
            ),
        )
        .route("/openapi.json", get(openapi))
        .route(
            "/",
            get(|| async {
                (
                    [(axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8")],
                    status::PAGE,
                )
            }),
        )
        .route(
            "/status.json",
            get(|State(api): State<Arc<Api>>| async move {
                Json(status::status(&api.status).await)
            }),
        )
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such route; see /v1/features/{view}/{entity}",
            )
        })
        .with_state(api);
    v1.merge(quiver_telemetry::admin::admin_router(
        quiver_telemetry::metrics_handle(),
        health,
    ))
}

/// Serves until `shutdown` resolves; readiness follows Redis.
pub async fn serve(
    config: &Config,
    views: &ViewCatalog,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let api = Arc::new(Api::connect(config, views).await?);
    let health = Health::of("api");
    health.set_ready();
    let listener = tokio::net::TcpListener::bind(&config.api.listen)
        .await
        .map_err(|source| Error::Bind {
            addr: config.api.listen.clone(),
            source,
        })?;
    {
        let (api, health) = (api.clone(), health.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                match api.reader.ping().await {
                    Ok(()) => health.set_ready(),
                    Err(e) => health.set_not_ready(format!("redis: {e}")),
                }
            }
        });
    }
    info!(listen = %config.api.listen, views = api.plans.len(), "serving online features");
    axum::serve(listener, router(api, health))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|source| Error::Bind {
            addr: config.api.listen.clone(),
            source,
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::same_secret;

    #[test]
    fn the_openapi_document_is_json_and_names_every_route() {
        let doc: serde_json::Value = serde_json::from_str(super::OPENAPI).unwrap();
        assert_eq!(doc["openapi"], "3.0.3");
        for path in [
            "/v1/features/{view}/{entity}",
            "/v1/features",
            "/healthz",
            "/readyz",
            "/metrics",
            "/openapi.json",
            "/",
            "/status.json",
        ] {
            assert!(doc["paths"].get(path).is_some(), "{path}");
        }
        assert_eq!(
            doc["paths"]["/v1/features"]["post"]["requestBody"]["content"]["application/json"]["schema"]
                ["properties"]["entities"]["maxItems"],
            super::MAX_BATCH
        );
    }

    #[test]
    fn secrets_match_only_when_identical() {
        assert!(same_secret(b"s3cret-token", b"s3cret-token"));
        assert!(!same_secret(b"s3cret-tokeN", b"s3cret-token"));
        assert!(!same_secret(b"s3cret", b"s3cret-token"));
        assert!(!same_secret(b"", b"s3cret-token"));
        assert!(same_secret(b"", b""));
    }
}
