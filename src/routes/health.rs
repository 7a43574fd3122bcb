//! Liveness, readiness and metrics.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use secrecy::ExposeSecret;
use serde::Serialize;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::AuthUser;
use crate::domain::Role;
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
    /// `ok` (liveness) or `ready` (readiness).
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
    if state.probe.ready().await {
        Ok(Json(HealthStatus {
            status: "ready".into(),
        }))
    } else {
        Err(ApiError::Unavailable)
    }
}

/// Prometheus metrics.
///
/// Requests and latency by route and status, pool gauges, domain counters. For admins, and for
/// Prometheus with the `METRICS_TOKEN` the service was started with.
#[utoipa::path(get, path = "/metrics", tag = "health", security(("bearer" = []), ("metrics_token" = [])),
    responses(
        (status = 200, description = "Prometheus text exposition format", content_type = "text/plain", body = String),
        (status = 403, description = "Admins only (or the metrics token)", body = ErrorEnvelope),
    ))]
async fn metrics(
    State(state): State<AppState>,
    headers: HeaderMap,
    user: Result<AuthUser, ApiError>,
) -> Result<impl IntoResponse, ApiError> {
    let scraper = state
        .config
        .auth
        .metrics_token
        .as_ref()
        .is_some_and(|token| {
            let sent = crate::auth::extractor::bearer_in(&headers);
            // Compared as digests, so the time taken says nothing of the token.
            sent.is_some_and(|sent| {
                Sha256::digest(sent.as_bytes()) == Sha256::digest(token.expose_secret().as_bytes())
            })
        });
    if !scraper {
        user?.require(Role::Admin)?;
    }
    Ok((
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(&state.db),
    ))
}
