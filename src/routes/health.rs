//! Liveness, readiness and metrics.

use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ErrorEnvelope};
use crate::extract::Json;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(ready))
        .routes(routes!(metrics))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HealthStatus {
    #[schema(example = "ok")]
    pub status: String,
}

/// Liveness: answers while the process runs, without touching the database.
#[utoipa::path(get, path = "/health", tag = "health",
    responses((status = 200, description = "The process is up", body = HealthStatus)))]
async fn health() -> Json<HealthStatus> {
    Json(HealthStatus {
        status: "ok".into(),
    })
}

/// Readiness: the database answers and every migration is applied.
#[utoipa::path(get, path = "/ready", tag = "health",
    responses(
        (status = 200, description = "Ready to serve traffic", body = HealthStatus),
        (status = 503, description = "The database is unreachable or not migrated", body = ErrorEnvelope),
    ))]
async fn ready(State(state): State<AppState>) -> Result<Json<HealthStatus>, ApiError> {
    let ready = tokio::time::timeout(Duration::from_secs(2), crate::db::is_ready(&state.db))
        .await
        .unwrap_or(false);
    if ready {
        Ok(Json(HealthStatus {
            status: "ready".into(),
        }))
    } else {
        Err(ApiError::Unavailable)
    }
}

/// Prometheus metrics: requests and latency by route and status, pool gauges, domain counters.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text exposition format", content_type = "text/plain", body = String)))]
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(&state.db),
    )
}
