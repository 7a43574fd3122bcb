//! Offline sync endpoints: push, pull, and the admin conflict queue.
use axum::extract::State;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{AuthUser, ClientInfo};
use crate::error::{ApiError, ErrorEnvelope, Invalid};
use crate::extract::{Json, Query};
use crate::routes::checks::required_text;
use crate::state::AppState;
use crate::sync::model::{PushRequest, PushResponse};
use crate::sync::pull::{self, Cursor, PullResponse};
use crate::sync::push::{self, PushContext};

mod conflicts;
mod watermelon;

pub use conflicts::router as conflicts_router;

/// The devices' sync routes (their own rate limit class).
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(push_changes))
        .routes(routes!(push_changes_alias))
        .routes(routes!(pull_changes))
        .merge(watermelon::router())
}

async fn run_push(
    state: &AppState,
    user: &AuthUser,
    client: &ClientInfo,
    req: PushRequest,
) -> Result<Json<PushResponse>, ApiError> {
    let mut invalid = Invalid::default();
    let device_id = required_text(&req.device_id, "device_id", 128, &mut invalid);
    let max = state.config.sync_max_batch;
    if req.records.len() > max {
        invalid.add(
            "records",
            format!("at most {max} records per batch; split it"),
        );
    }
    invalid.finish()?;
    let ctx = PushContext {
        db: &state.db,
        config: &state.config,
        sites: &state.sites,
        user,
        client,
    };
    Ok(Json(push::push(ctx, &device_id, &req.records).await?))
}

/// Pushes a batch of offline changes.
///
/// Idempotent: a batch sent again changes nothing and answers `duplicate` per record, even once
/// its records have moved on since (a change is known by its device, content and
/// `client_timestamp`). Each record gets its own result, in the order sent; a bad record is
/// `rejected` and never fails the others.
#[utoipa::path(post, path = "/sync/push", tag = "sync", security(("bearer" = [])), request_body = PushRequest,
    responses(
        (status = 200, description = "One result per record", body = PushResponse),
        (status = 400, description = "Malformed JSON", body = ErrorEnvelope),
        (status = 413, description = "Body over the limit", body = ErrorEnvelope),
        (status = 422, description = "No device id, or more records than a batch may hold", body = ErrorEnvelope),
    ))]
async fn push_changes(
    State(state): State<AppState>,
    user: AuthUser,
    client: ClientInfo,
    Json(req): Json<PushRequest>,
) -> Result<Json<PushResponse>, ApiError> {
    run_push(&state, &user, &client, req).await
}

/// The same as `POST /sync/push`, at the path the first mobile clients use.
#[utoipa::path(post, path = "/attendance/sync", tag = "sync", security(("bearer" = [])), request_body = PushRequest,
    responses(
        (status = 200, description = "One result per record", body = PushResponse),
        (status = 400, description = "Malformed JSON", body = ErrorEnvelope),
        (status = 413, description = "Body over the limit", body = ErrorEnvelope),
        (status = 422, description = "No device id, or more records than a batch may hold", body = ErrorEnvelope),
    ))]
async fn push_changes_alias(
    State(state): State<AppState>,
    user: AuthUser,
    client: ClientInfo,
    Json(req): Json<PushRequest>,
) -> Result<Json<PushResponse>, ApiError> {
    run_push(&state, &user, &client, req).await
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PullQuery {
    /// From the previous answer; omit for everything the caller may see.
    pub cursor: Option<String>,
    /// Rows per page, 1 to 1000 (default 200).
    #[param(minimum = 1, maximum = 1000, default = 200)]
    pub limit: Option<u32>,
}

/// Everything the caller may see that changed after `cursor`.
///
/// Attendance (their own, their tree's for supervisors, all for admins) and facilities. No change
/// is ever skipped, even when transactions commit out of order; follow `has_more` to the end.
#[utoipa::path(get, path = "/sync/pull", tag = "sync", security(("bearer" = [])), params(PullQuery),
    responses(
        (status = 200, description = "A page of changes", body = PullResponse),
        (status = 400, description = "Bad query string", body = ErrorEnvelope),
        (status = 422, description = "A cursor this service did not issue (or issued under another `JWT_SECRET`: push what the app holds, clear its synced copies and pull again without a cursor), one issued to another user, or a bad limit", body = ErrorEnvelope),
    ))]
async fn pull_changes(
    State(state): State<AppState>,
    user: AuthUser,
    Query(q): Query<PullQuery>,
) -> Result<Json<PullResponse>, ApiError> {
    let limit = q.limit.unwrap_or(200);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be between 1 and 1000"));
    }
    let cursor = match q.cursor.as_deref().filter(|c| !c.is_empty()) {
        Some(text) => Cursor::decode(text, &state.jwt)?,
        None => Cursor::default(),
    };
    if cursor.viewer.is_some_and(|issued_to| issued_to != user.id) {
        return Err(ApiError::invalid(
            "cursor",
            "was issued to another user: pull again without a cursor",
        ));
    }
    let mut tx = crate::db::begin(&state.db).await?;
    let (changes, next, has_more) = pull::pull(
        &mut tx,
        &user,
        cursor,
        limit as usize,
        pull::Kept::ByDevice,
        state.config.request_timeout,
    )
    .await?;
    tx.commit().await?;
    let next = Cursor {
        viewer: Some(user.id),
        ..next
    };
    Ok(Json(PullResponse {
        changes,
        cursor: next.encode(&state.jwt),
        has_more,
    }))
}
