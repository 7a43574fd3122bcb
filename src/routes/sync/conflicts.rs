//! The conflict queue that the `manual` strategy fills, reviewed by admins.

use axum::extract::State;
use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::audit::Activity;
use crate::auth::{AdminUser, ClientInfo};
use crate::db::attendance::{self as records, AttendanceRecord, AttendanceRow};
use crate::error::{ApiError, ErrorCode, ErrorEnvelope, ResultExt};
use crate::extract::{Json, Path, Query};
use crate::routes::pagination::{Page, Paging};
use crate::state::AppState;
use crate::sync::apply::apply_plan;
use crate::sync::model::Content;
use crate::sync::push::{self, Plan};

/// The conflict queue, reviewed by admins (the general API's limit).
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_conflicts))
        .routes(routes!(resolve_conflict))
}

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct SyncConflict {
    pub id: Uuid,
    #[schema(example = "attendance")]
    pub kind: String,
    pub record_id: Uuid,
    pub user_id: Uuid,
    #[schema(required = true)]
    pub device_id: Option<String>,
    pub client_version: i32,
    pub server_version: i32,
    /// What the device sent: `{op, content, client_timestamp}`.
    #[schema(value_type = Object)]
    pub client_data: serde_json::Value,
    /// The server's record when the conflict arose.
    #[schema(value_type = Object)]
    pub server_data: serde_json::Value,
    #[schema(value_type = ConflictStatus)]
    pub status: String,
    /// Which copy was kept, once resolved.
    #[schema(required = true, value_type = Option<Keep>)]
    pub resolution: Option<String>,
    #[schema(required = true)]
    pub resolved_by: Option<Uuid>,
    #[schema(required = true)]
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
    #[param(inline, default = "pending")]
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
        (status = 400, description = "Bad query string (an unknown `status`)", body = ErrorEnvelope),
        (status = 403, description = "Admins only", body = ErrorEnvelope),
        (status = 422, description = "Bad paging", body = ErrorEnvelope),
    ))]
async fn list_conflicts(
    State(state): State<AppState>,
    _user: AdminUser,
    Query(q): Query<ConflictQuery>,
) -> Result<Json<Page<SyncConflict>>, ApiError> {
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

impl Keep {
    /// As `resolution` stores it.
    fn as_str(self) -> &'static str {
        match self {
            Keep::Server => "server",
            Keep::Client => "client",
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolveRequest {
    pub keep: Keep,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Resolution {
    pub conflict: SyncConflict,
    /// The record as it now stands (null when the copy kept is a deletion, or the record is gone).
    #[schema(required = true)]
    pub record: Option<AttendanceRecord>,
}

/// Settles a queued conflict (admin).
///
/// Either way every device receives the outcome on its next pull: the device's copy kept is a new
/// version; the server's kept keeps its version (no device edited it), and a copy queued beside
/// another open shift, which the server never stored, reaches the device that sent it as a
/// deletion.
#[utoipa::path(post, path = "/sync/conflicts/{id}/resolve", tag = "sync", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Conflict id")), request_body = ResolveRequest,
    responses(
        (status = 200, description = "Resolved; or already resolved with the same `keep` (a retry), answered as it was settled, with the record as it now stands", body = Resolution),
        (status = 400, description = "Malformed JSON or id", body = ErrorEnvelope),
        (status = 403, description = "Admins only", body = ErrorEnvelope),
        (status = 404, description = "No such conflict", body = ErrorEnvelope),
        (status = 409, description = "Already resolved the other way, or `keep: client` for a record that changed after the conflict was queued (`conflict`); or the client's open shift beside another (`already_clocked_in`); or a change the device has since stored as another record (`duplicate`)", body = ErrorEnvelope),
        (status = 422, description = "Invalid fields, or `keep: client` for a shift at a facility that no longer exists or, with the geofence enforced, away from its site", body = ErrorEnvelope),
    ))]
async fn resolve_conflict(
    State(state): State<AppState>,
    admin: AdminUser,
    client: ClientInfo,
    Path(id): Path<Uuid>,
    Json(req): Json<ResolveRequest>,
) -> Result<Json<Resolution>, ApiError> {
    // The user's sync lock first, as a push takes it before the rows it then locks: a push of
    // that user withdrawing this conflict (its device deleted the queued copy) holds the open
    // shift and waits on the conflict, which this would otherwise hold while waiting on the
    // shift, and Postgres would end one of the two.
    let user_id: Uuid = sqlx::query_scalar("SELECT user_id FROM sync_conflicts WHERE id = $1")
        .bind(id)
        .fetch_optional(&state.db)
        .await?
        .ok_or(ApiError::NotFound)?;
    let mut tx = push::begin_for_user(&state.db, user_id, state.config.request_timeout).await?;
    let conflict: SyncConflict = sqlx::query_as(&format!(
        "SELECT {CONFLICT_COLUMNS} FROM sync_conflicts WHERE id = $1 FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(ApiError::NotFound)?;
    // The server's record the device's copy was queued against: the same record, or, for a
    // shift pushed open beside another open one, that one.
    let against = conflict
        .server_data
        .get("id")
        .and_then(|v| v.as_str())
        .and_then(|s| s.parse::<Uuid>().ok())
        .unwrap_or(conflict.record_id);
    if conflict.status != "pending" {
        // The same choice again (an answer lost on the way): answered as it was settled, with
        // the record as it now stands, and nothing written twice.
        if conflict.resolution.as_deref() == Some(req.keep.as_str()) {
            let kept = match req.keep {
                Keep::Server => against,
                Keep::Client => conflict.record_id,
            };
            let record = records::find(&mut *tx, kept).await?;
            return Ok(Json(Resolution {
                conflict,
                record: record
                    .filter(|r| r.deleted_at.is_none())
                    .map(AttendanceRecord::from),
            }));
        }
        let kept = conflict.resolution.as_deref().unwrap_or("other");
        return Err(ApiError::conflict(
            ErrorCode::Conflict,
            format!("this conflict is already resolved: the {kept} copy was kept"),
        ));
    }
    let row: Option<AttendanceRow> = match req.keep {
        // Touched, the record is pulled again, so devices get the server's copy. It keeps its
        // version: no device edited it, and one holding it (the phone of a shift another device
        // was queued beside) still clocks it out on the version it has.
        Keep::Server => {
            if against != conflict.record_id {
                forget_queued_copy(&state, &mut tx, &conflict).await?;
            }
            sqlx::query_as(&format!(
                "UPDATE attendance AS a SET notes = notes WHERE a.id = $1 RETURNING {}",
                records::COLUMNS
            ))
            .bind(against)
            .fetch_optional(&mut *tx)
            .await?
        }
        Keep::Client => {
            // The device's copy answered the record as it was when the conflict was queued; a
            // record that has moved on since (clocked out online, say) is not set back. Kept
            // beside another open shift, it closes that one as incomplete, as `client_wins`
            // would have, if it is still open, and stores the device's, which may be new.
            let version: Option<i32> =
                sqlx::query_scalar("SELECT sync_version FROM attendance WHERE id = $1 FOR UPDATE")
                    .bind(against)
                    .fetch_optional(&mut *tx)
                    .await?;
            if against == conflict.record_id
                && version.is_some_and(|v| v != conflict.server_version)
            {
                return Err(changed_since_queued());
            }
            let op = conflict.client_data["op"].as_str().unwrap_or("upsert");
            if op == "delete" {
                // The device's deletion kept: there is no record to answer with.
                sqlx::query(
                    "UPDATE attendance SET deleted_at = now(), sync_version = sync_version + 1,
                                           server_timestamp = now()
                     WHERE id = $1",
                )
                .bind(conflict.record_id)
                .execute(&mut *tx)
                .await?;
                None
            } else {
                Some(keep_client_copy(&state, &mut tx, &conflict, against).await?)
            }
        }
    };
    let keep = req.keep.as_str();
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
/// shift it was queued beside (read `FOR UPDATE`), is closed as incomplete if still open.
async fn keep_client_copy(
    state: &AppState,
    tx: &mut sqlx::PgConnection,
    conflict: &SyncConflict,
    against: Uuid,
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
    // Queued beside another shift, the device's record was checked against that one only: one
    // written or deleted since (pushed again and clocked out, say) is not set back either. The
    // conflict keeps the version it had then (null: none); one queued before it kept that is
    // judged by the time of its last change.
    if against != conflict.record_id {
        let moved_on = match conflict.client_data.get("stored_version") {
            Some(then) => *then != serde_json::json!(stored.as_ref().map(|r| r.sync_version)),
            None => stored
                .as_ref()
                .is_some_and(|r| r.updated_at > conflict.created_at),
        };
        if moved_on {
            return Err(changed_since_queued());
        }
    }
    let stored_version = stored.as_ref().map(|r| r.sync_version);
    let now = Utc::now().trunc_subsecs(6);
    let version = stored_version.map_or(conflict.client_version, |v| v + 1);
    if let Some(refusal) = push::site_refuses(&site, &content, stored.as_ref(), &state.config) {
        return Err(ApiError::invalid(refusal.field, refusal.reason));
    }
    let w = push::build_write(
        conflict.record_id,
        &content,
        &site,
        version,
        stamp,
        now,
        &state.config,
    );
    let mut plan = Plan::default();
    // Only a kept copy that is open replaces the shift it was queued beside (one that has aged
    // past the maximum shift since is stored incomplete, and leaves that one open), and only
    // while that one is open: one clocked out, closed or deleted since keeps what it became.
    if against != conflict.record_id && w.status == "open" {
        let still_open = records::find(&mut *tx, against)
            .await?
            .is_some_and(|r| r.status == "open" && r.deleted_at.is_none());
        if still_open {
            plan.closes.push(against);
        }
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
        .on_constraints(&[
            ("attendance_one_open_per_user", || {
                ApiError::conflict(
                    ErrorCode::AlreadyClockedIn,
                    "the user has another open shift; close it first",
                )
            }),
            // The device has since sent the same change under another id, and it is stored.
            ("attendance_device_timestamp_key", || {
                ApiError::conflict(
                    ErrorCode::Duplicate,
                    "the device has since stored this change as another record; keep the \
                     server's copy",
                )
            }),
        ])?;
    records::find(&mut *tx, conflict.record_id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("the record just stored is gone").into())
}

/// The device's copy of a shift queued beside another open one, when the server's is kept: the
/// server never stored it, so no pull would ever mention it, and the device that sent it would
/// keep it open for good. Stored as a deleted record (closed as incomplete, never a second open
/// shift), it reaches that device's next pull as a deletion. A copy the server holds by now,
/// or whose facility is gone, is left alone.
async fn forget_queued_copy(
    state: &AppState,
    tx: &mut sqlx::PgConnection,
    conflict: &SyncConflict,
) -> Result<(), ApiError> {
    if records::find(&mut *tx, conflict.record_id).await?.is_some() {
        return Ok(());
    }
    let Ok(content) = serde_json::from_value::<Content>(conflict.client_data["content"].clone())
    else {
        return Ok(());
    };
    let Some(site) = state.sites.get(&mut *tx, content.facility_id).await? else {
        return Ok(());
    };
    let now = Utc::now().trunc_subsecs(6);
    // Above any version the device may hold for it: its own, and the one the push answered
    // with, which was the other shift's.
    let version = conflict.client_version.max(conflict.server_version).max(1);
    // Written as it stands, whatever the geofence now says (it is deleted at once).
    let (distance_m, out_distance_m, outside) = push::measure(&content, &site);
    let w = push::Write {
        id: conflict.record_id,
        content,
        status: "incomplete",
        distance_m,
        out_distance_m,
        outside,
        client_timestamp: None,
        version,
    };
    let device = conflict.device_id.as_deref().unwrap_or_default();
    let mut plan = Plan::default();
    plan.inserts.push(w);
    apply_plan(&mut *tx, &plan, conflict.user_id, device, now).await?;
    let mut plan = Plan::default();
    plan.deletes.push((conflict.record_id, version + 1));
    apply_plan(&mut *tx, &plan, conflict.user_id, device, now).await?;
    Ok(())
}

fn changed_since_queued() -> ApiError {
    ApiError::conflict(
        ErrorCode::Conflict,
        "the record changed after this conflict was queued; keep the server's copy, and the \
         device can push its change again",
    )
}
