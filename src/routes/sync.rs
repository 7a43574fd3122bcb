//! Offline sync endpoints: push, pull, and the admin conflict queue.

use axum::extract::State;
use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::audit::Activity;
use crate::auth::{AuthUser, ClientInfo};
use crate::db::attendance::{self as records, AttendanceRecord, AttendanceRow};
use crate::domain::Role;
use crate::error::{ApiError, ErrorEnvelope, Invalid, ResultExt};
use crate::extract::{Json, Path, Query};
use crate::routes::auth::required_text;
use crate::routes::pagination::{Page, Paging};
use crate::state::AppState;
use crate::sync::apply::apply_plan;
use crate::sync::model::{Content, PushRequest, PushResponse};
use crate::sync::pull::{self, Cursor, PullResponse};
use crate::sync::push::{self, Plan, PushContext};
use crate::sync::watermelon;

/// The devices' sync routes (their own rate limit class).
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(push_changes))
        .routes(routes!(push_changes_alias))
        .routes(routes!(pull_changes))
        .routes(routes!(watermelon_pull, watermelon_push))
}

/// The conflict queue, reviewed by admins (the general API's limit).
pub fn conflicts_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_conflicts))
        .routes(routes!(resolve_conflict))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct WatermelonPullQuery {
    /// The `timestamp` of the previous pull; absent, `null` or 0 (as WatermelonDB sends its
    /// first sync) for everything the caller may see.
    #[param(schema_with = timestamp_or_first_sync)]
    pub last_pulled_at: Option<String>,
    /// The app's schema version (1 covers `attendance` and `facilities`).
    pub schema_version: Option<i64>,
    /// WatermelonDB's `migration` argument as JSON: `{"from":1,"tables":[],"columns":[]}`.
    pub migration: Option<String>,
}

/// `last_pulled_at` of a pull: a timestamp this service issued, or the `null` (`undefined`) a
/// JavaScript template writes for the library's first sync.
fn timestamp_or_first_sync() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, OneOfBuilder, SchemaFormat, Type};
    OneOfBuilder::new()
        .description(Some(
            "The `timestamp` of the previous pull; absent, `null` or 0 (as WatermelonDB sends its \
             first sync) for everything the caller may see.",
        ))
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64))),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(["null", "undefined"])),
        )
        .build()
        .into()
}

/// A WatermelonDB pull answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct WatermelonPull {
    /// `{attendance: {created, updated, deleted}, facilities: {created, updated, deleted}}`, raw
    /// records with flat columns and millisecond times (see the README's column mapping).
    #[schema(value_type = Object)]
    pub changes: serde_json::Value,
    /// Send back as `last_pulled_at`.
    #[schema(example = 42)]
    pub timestamp: i64,
}

/// WatermelonDB `pullChanges`: every change since `last_pulled_at`, no id twice, records
/// created since then (by the server's own creation) in `created`, deletions as ids.
#[utoipa::path(get, path = "/sync/watermelon", tag = "sync", security(("bearer" = [])), params(WatermelonPullQuery),
    responses(
        (status = 200, description = "Changes and the next timestamp", body = WatermelonPull),
        (status = 400, description = "Bad query string", body = ErrorEnvelope),
        (status = 401, description = "Missing or invalid token", body = ErrorEnvelope),
        (status = 422, description = "An unknown `last_pulled_at` or a malformed `migration`", body = ErrorEnvelope),
        (status = 429, description = "Rate limited", body = ErrorEnvelope),
    ))]
async fn watermelon_pull(
    State(state): State<AppState>,
    user: AuthUser,
    Query(q): Query<WatermelonPullQuery>,
) -> Result<Json<WatermelonPull>, ApiError> {
    let migration = q
        .migration
        .as_deref()
        .filter(|m| !m.is_empty() && *m != "null")
        .map(|m| crate::extract::parse_json::<watermelon::Migration>(m.as_bytes()))
        .transpose()
        .map_err(|_| {
            ApiError::invalid(
                "migration",
                "must be WatermelonDB's migration object as JSON",
            )
        })?;
    let last_pulled_at = match q.last_pulled_at.as_deref() {
        None | Some("null" | "undefined") => None,
        Some(t) => Some(t.parse::<i64>().map_err(|_| {
            ApiError::invalid("last_pulled_at", "is not a timestamp this service issued")
        })?),
    };
    let (changes, timestamp) =
        watermelon::pull_changes(&state.db, &user, last_pulled_at, migration).await?;
    Ok(Json(WatermelonPull { changes, timestamp }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct WatermelonPushQuery {
    /// The `timestamp` of the pull this push follows.
    pub last_pulled_at: i64,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WatermelonPushBody {
    /// `{attendance: {created: [raw], updated: [raw], deleted: [id]}}`; `_status` and `_changed`
    /// are ignored, as are the columns the server sets.
    #[schema(value_type = Object)]
    pub changes: std::collections::HashMap<String, watermelon::TableChanges>,
}

/// WatermelonDB `pushChanges`, all or nothing. A created record that already exists is updated;
/// an update of a missing record creates it unless it is known deleted; deleting a missing record
/// is ignored. A shift opened beside the user's open one leaves the later of the two open and
/// the other incomplete. 409 when a pushed record changed on the server after `last_pulled_at`: pull, then
/// push again.
#[utoipa::path(post, path = "/sync/watermelon", tag = "sync", security(("bearer" = [])),
    params(WatermelonPushQuery), request_body = WatermelonPushBody,
    responses(
        (status = 204, description = "Applied"),
        (status = 400, description = "Malformed JSON or query", body = ErrorEnvelope),
        (status = 401, description = "Missing or invalid token", body = ErrorEnvelope),
        (status = 403, description = "A record of another user, or a push to a read-only table", body = ErrorEnvelope),
        (status = 409, description = "Changed on the server since `last_pulled_at` (`conflict`), or another open shift written at the same moment (`already_clocked_in`); pull and push again", body = ErrorEnvelope),
        (status = 413, description = "Body over the limit", body = ErrorEnvelope),
        (status = 422, description = "Invalid records (each named `attendance.<id>`), or an unknown `last_pulled_at`", body = ErrorEnvelope),
        (status = 429, description = "Rate limited", body = ErrorEnvelope),
    ))]
async fn watermelon_push(
    State(state): State<AppState>,
    user: AuthUser,
    client: ClientInfo,
    Query(q): Query<WatermelonPushQuery>,
    Json(body): Json<WatermelonPushBody>,
) -> Result<axum::http::StatusCode, ApiError> {
    let ctx = PushContext {
        db: &state.db,
        config: &state.config,
        sites: &state.sites,
        user: &user,
        client: &client,
    };
    watermelon::push_changes(ctx, q.last_pulled_at, body.changes).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
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
    if req.records.iter().any(|r| !r.get().starts_with('{')) {
        invalid.add("records", "each record must be a JSON object");
    }
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

/// Pushes a batch of offline changes. Idempotent: a batch sent again changes nothing and
/// answers `duplicate` per record. Each record gets its own result, in the order sent; a bad
/// record is `rejected` and never fails the others.
#[utoipa::path(post, path = "/sync/push", tag = "sync", security(("bearer" = [])), request_body = PushRequest,
    responses(
        (status = 200, description = "One result per record", body = PushResponse),
        (status = 400, description = "Malformed JSON", body = ErrorEnvelope),
        (status = 401, description = "Missing or invalid token", body = ErrorEnvelope),
        (status = 413, description = "Body over the limit", body = ErrorEnvelope),
        (status = 422, description = "No device id, or more records than a batch may hold", body = ErrorEnvelope),
        (status = 429, description = "Rate limited", body = ErrorEnvelope),
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
        (status = 401, description = "Missing or invalid token", body = ErrorEnvelope),
        (status = 413, description = "Body over the limit", body = ErrorEnvelope),
        (status = 422, description = "No device id, or more records than a batch may hold", body = ErrorEnvelope),
        (status = 429, description = "Rate limited", body = ErrorEnvelope),
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

/// Everything the caller may see that changed after `cursor`: attendance (their own, their
/// tree's for supervisors, all for admins) and facilities. No change is ever skipped, even when
/// transactions commit out of order; follow `has_more` to the end.
#[utoipa::path(get, path = "/sync/pull", tag = "sync", security(("bearer" = [])), params(PullQuery),
    responses(
        (status = 200, description = "A page of changes", body = PullResponse),
        (status = 400, description = "Bad query string", body = ErrorEnvelope),
        (status = 401, description = "Missing or invalid token", body = ErrorEnvelope),
        (status = 422, description = "A cursor this service did not issue, or a bad limit", body = ErrorEnvelope),
        (status = 429, description = "Rate limited", body = ErrorEnvelope),
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
        Some(text) => Cursor::decode(text)?,
        None => Cursor::default(),
    };
    let mut tx = state.db.begin().await?;
    let (changes, next, has_more) = pull::pull(&mut tx, &user, cursor, limit as usize).await?;
    tx.commit().await?;
    Ok(Json(PullResponse {
        changes,
        cursor: next.encode(),
        has_more,
    }))
}

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct SyncConflict {
    pub id: Uuid,
    #[schema(example = "attendance")]
    pub kind: String,
    pub record_id: Uuid,
    pub user_id: Uuid,
    pub device_id: Option<String>,
    pub client_version: i32,
    pub server_version: i32,
    /// What the device sent: `{op, content, client_timestamp}`.
    #[schema(value_type = Object)]
    pub client_data: serde_json::Value,
    /// The server's record when the conflict arose.
    #[schema(value_type = Object)]
    pub server_data: serde_json::Value,
    /// `pending` or `resolved`.
    pub status: String,
    /// `server` or `client`, once resolved.
    pub resolution: Option<String>,
    pub resolved_by: Option<Uuid>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConflictStatus {
    Pending,
    Resolved,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ConflictQuery {
    /// `pending` (default) or `resolved`.
    #[param(inline)]
    pub status: Option<ConflictStatus>,
    #[param(minimum = 1, maximum = 100000, default = 1)]
    pub page: Option<u32>,
    #[param(minimum = 1, maximum = 100, default = 50)]
    pub per_page: Option<u32>,
}

const CONFLICT_COLUMNS: &str =
    "id, kind, record_id, user_id, device_id, client_version, server_version,
    client_data, server_data, status, resolution, resolved_by, resolved_at, created_at";

/// Conflicts queued by the `manual` strategy, oldest first (admin).
#[utoipa::path(get, path = "/sync/conflicts", tag = "sync", security(("bearer" = [])), params(ConflictQuery),
    responses(
        (status = 200, description = "A page of conflicts", body = Page<SyncConflict>),
        (status = 400, description = "Bad query string", body = ErrorEnvelope),
        (status = 401, description = "Missing or invalid token", body = ErrorEnvelope),
        (status = 403, description = "Admins only", body = ErrorEnvelope),
        (status = 422, description = "Bad status or paging", body = ErrorEnvelope),
        (status = 429, description = "Rate limited", body = ErrorEnvelope),
    ))]
async fn list_conflicts(
    State(state): State<AppState>,
    user: AuthUser,
    Query(q): Query<ConflictQuery>,
) -> Result<Json<Page<SyncConflict>>, ApiError> {
    user.require(Role::Admin)?;
    let paging = Paging::new(q.page, q.per_page)?;
    let status = match q.status.unwrap_or(ConflictStatus::Pending) {
        ConflictStatus::Pending => "pending",
        ConflictStatus::Resolved => "resolved",
    };
    let rows: Vec<SyncConflict> = sqlx::query_as(&format!(
        "SELECT {CONFLICT_COLUMNS} FROM sync_conflicts
         WHERE status = $1 ORDER BY created_at, id LIMIT $2 OFFSET $3"
    ))
    .bind(status)
    .bind(paging.limit())
    .bind(paging.offset())
    .fetch_all(&state.db)
    .await?;
    let total = paging
        .total(rows.len(), async || {
            sqlx::query_scalar("SELECT count(*) FROM sync_conflicts WHERE status = $1")
                .bind(status)
                .fetch_one(&state.db)
                .await
        })
        .await?;
    Ok(Json(paging.wrap(rows, total)))
}

#[derive(Debug, Clone, Copy, Deserialize, ToSchema, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Keep {
    Server,
    Client,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolveRequest {
    pub keep: Keep,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Resolution {
    pub conflict: SyncConflict,
    /// The record as it now stands (null when the client's deletion was kept).
    pub record: Option<AttendanceRecord>,
}

/// Settles a queued conflict (admin). Either way the record's version is bumped, so every
/// device receives the outcome on its next pull.
#[utoipa::path(post, path = "/sync/conflicts/{id}/resolve", tag = "sync", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Conflict id")), request_body = ResolveRequest,
    responses(
        (status = 200, description = "Resolved", body = Resolution),
        (status = 400, description = "Malformed JSON or id", body = ErrorEnvelope),
        (status = 401, description = "Missing or invalid token", body = ErrorEnvelope),
        (status = 403, description = "Admins only", body = ErrorEnvelope),
        (status = 404, description = "No such conflict", body = ErrorEnvelope),
        (status = 409, description = "Already resolved, or `keep: client` for a record that changed after the conflict was queued (`conflict`); or the client's open shift beside another (`already_clocked_in`)", body = ErrorEnvelope),
        (status = 422, description = "Invalid fields", body = ErrorEnvelope),
        (status = 429, description = "Rate limited", body = ErrorEnvelope),
    ))]
async fn resolve_conflict(
    State(state): State<AppState>,
    admin: AuthUser,
    client: ClientInfo,
    Path(id): Path<Uuid>,
    Json(req): Json<ResolveRequest>,
) -> Result<Json<Resolution>, ApiError> {
    admin.require(Role::Admin)?;
    let mut tx = state.db.begin().await?;
    let conflict: SyncConflict = sqlx::query_as(&format!(
        "SELECT {CONFLICT_COLUMNS} FROM sync_conflicts WHERE id = $1 FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(ApiError::NotFound)?;
    if conflict.status != "pending" {
        return Err(ApiError::conflict(
            "conflict",
            "this conflict is already resolved",
        ));
    }
    let record_sql = |set: &str| {
        format!(
            "UPDATE attendance AS a SET {set}, sync_version = sync_version + 1, server_timestamp = now()
             WHERE a.id = $1 RETURNING {}",
            records::COLUMNS
        )
    };
    // The server's record the device's copy was queued against: the same record, or, for a
    // shift pushed open beside another open one, that one.
    let against = conflict
        .server_data
        .get("id")
        .and_then(|v| v.as_str())
        .and_then(|s| s.parse::<Uuid>().ok())
        .unwrap_or(conflict.record_id);
    let row: Option<AttendanceRow> = match req.keep {
        // Touching the record gives it a new version, so devices pull the server's copy again.
        Keep::Server => {
            sqlx::query_as(&record_sql("notes = notes"))
                .bind(against)
                .fetch_optional(&mut *tx)
                .await?
        }
        Keep::Client => {
            // The device's copy answered the record as it was when the conflict was queued; a
            // record that has moved on since (clocked out online, say) is not set back. Kept
            // beside another open shift, it closes that one as incomplete, as `client_wins`
            // would have, and stores the device's, which may be new.
            let version: Option<i32> =
                sqlx::query_scalar("SELECT sync_version FROM attendance WHERE id = $1 FOR UPDATE")
                    .bind(against)
                    .fetch_optional(&mut *tx)
                    .await?;
            if version.is_some_and(|v| v != conflict.server_version) {
                return Err(ApiError::conflict(
                    "conflict",
                    "the record changed after this conflict was queued; keep the server's copy, \
                     and the device can push its change again",
                ));
            }
            let op = conflict.client_data["op"].as_str().unwrap_or("upsert");
            if op == "delete" {
                sqlx::query_as(&record_sql("deleted_at = now()"))
                    .bind(conflict.record_id)
                    .fetch_optional(&mut *tx)
                    .await?
            } else {
                Some(keep_client_copy(&state, &mut tx, &conflict, against, version).await?)
            }
        }
    };
    let keep = if req.keep == Keep::Server {
        "server"
    } else {
        "client"
    };
    let conflict: SyncConflict = sqlx::query_as(&format!(
        "UPDATE sync_conflicts SET status = 'resolved', resolution = $2, resolved_by = $3, resolved_at = now()
         WHERE id = $1 RETURNING {CONFLICT_COLUMNS}"
    ))
    .bind(id)
    .bind(keep)
    .bind(admin.id)
    .fetch_one(&mut *tx)
    .await?;
    Activity::new("sync.conflict_resolve")
        .by(&admin)
        .on("sync_conflict", id)
        .from(&client)
        .details(serde_json::json!({ "record_id": conflict.record_id, "keep": keep }))
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Json(Resolution {
        conflict,
        record: row
            .filter(|r| r.deleted_at.is_none())
            .map(AttendanceRecord::from),
    }))
}

/// Writes the device's copy of a conflict's record, as a push would: over the stored record,
/// or as a new one when it was queued before the server ever stored it; `against`, the open
/// shift it was queued beside (read `FOR UPDATE` at `against_version`), is closed as incomplete.
async fn keep_client_copy(
    state: &AppState,
    tx: &mut sqlx::PgConnection,
    conflict: &SyncConflict,
    against: Uuid,
    against_version: Option<i32>,
) -> Result<AttendanceRow, ApiError> {
    let content: Content = serde_json::from_value(conflict.client_data["content"].clone())
        .map_err(|e| anyhow::anyhow!("stored conflict content is unreadable: {e}"))?;
    let stamp: Option<DateTime<Utc>> =
        serde_json::from_value(conflict.client_data["client_timestamp"].clone()).ok();
    // The same derivation as a pushed record: distances, geofence flag, status.
    let site = state
        .sites
        .get(&mut *tx, content.facility_id)
        .await?
        .ok_or_else(|| ApiError::invalid("facility_id", "the facility no longer exists"))?;
    if against != conflict.record_id {
        sqlx::query("SELECT 1 FROM attendance WHERE id = $1 FOR UPDATE")
            .bind(conflict.record_id)
            .execute(&mut *tx)
            .await?;
    }
    let stored = records::find(&mut *tx, conflict.record_id).await?;
    let stored_version = stored.as_ref().map(|r| r.sync_version);
    let now = Utc::now().trunc_subsecs(6);
    let version = stored_version.map_or(conflict.client_version, |v| v + 1);
    let w = push::build_write(
        conflict.record_id,
        &content,
        &site,
        version,
        stamp,
        now,
        &state.config,
    )
    .map_err(|(_, reason)| ApiError::invalid("location", reason))?;
    let mut plan = Plan::default();
    if against != conflict.record_id && against_version.is_some() {
        plan.closes.push(against);
    }
    if stored.is_some() {
        // A shift the server closed by itself since (replaced, forgotten) is not reopened.
        plan.updates.push(w.stays_closed(stored.as_ref()));
    } else {
        plan.inserts.push(w);
    }
    let device = conflict.device_id.as_deref().unwrap_or_default();
    apply_plan(&mut *tx, &plan, conflict.user_id, device, now)
        .await
        .on_constraint("attendance_one_open_per_user", || {
            ApiError::conflict(
                "already_clocked_in",
                "the user has another open shift; close it first",
            )
        })?;
    records::find(&mut *tx, conflict.record_id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("the record just stored is gone").into())
}
