//! The WatermelonDB protocol's pull and push, so apps built on that library sync with no glue code.

use axum::extract::State;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{AuthUser, ClientInfo};
use crate::error::{ApiError, ErrorEnvelope};
use crate::extract::{Json, Query};
use crate::state::AppState;
use crate::sync::push::PushContext;
use crate::sync::watermelon;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(watermelon_pull, watermelon_push))
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
    #[expect(
        dead_code,
        reason = "accepted as the protocol sends it; there is one schema, so nothing to adapt"
    )]
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
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
                .minimum(Some(0)),
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
    /// More changes wait: the app syncs again (the next pull from `timestamp` sends them). One
    /// pull answers at most 5,000 records and deleted ids (but for one whose `migration` names a
    /// table, which sends the tables it names whole); each sync goes on where the last stopped,
    /// so a first sync of a large history completes over several.
    pub has_more: bool,
}

/// WatermelonDB `pullChanges`: the changes since `last_pulled_at`.
///
/// No id twice, at most 5,000 records and deleted ids at a time (`has_more` when more wait; the
/// next pull from the `timestamp` sends them), but for a pull whose `migration` names a table:
/// the tables it names come whole, unpaged. Every live record comes in `updated` (the app syncs
/// with `sendCreatedAsUpdated: true`; WatermelonDB creates the ones it lacks), deletions as ids in
/// `deleted`, and `created` is always empty.
#[utoipa::path(get, path = "/sync/watermelon", tag = "sync", security(("bearer" = [])), params(WatermelonPullQuery),
    responses(
        (status = 200, description = "Changes and the next timestamp", body = WatermelonPull),
        (status = 400, description = "Bad query string (a `last_pulled_at` that is not a whole number)", body = ErrorEnvelope),
        (status = 422, description = "An unknown `last_pulled_at` or a malformed `migration`", body = ErrorEnvelope),
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
        Some(t) => {
            let t = t.parse::<i64>().map_err(|_| {
                ApiError::BadRequest("last_pulled_at must be a whole number or null".into())
            })?;
            // A negative number is no timestamp this service issued, nor a first sync.
            if t < 0 {
                return Err(ApiError::invalid(
                    "last_pulled_at",
                    "is not a timestamp this service issued",
                ));
            }
            Some(t)
        }
    };
    let pulled = watermelon::pull_changes(
        &state.db,
        &user,
        last_pulled_at,
        migration,
        state.config.request_timeout,
    )
    .await?;
    Ok(Json(WatermelonPull {
        changes: pulled.changes,
        timestamp: pulled.timestamp,
        has_more: pulled.has_more,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct WatermelonPushQuery {
    /// The `timestamp` of the pull this push follows.
    #[param(minimum = 1)]
    pub last_pulled_at: i64,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WatermelonPushBody {
    /// `{attendance: {created: [raw], updated: [raw], deleted: [id]}}`; `_status` and `_changed`
    /// are ignored, as are the columns the server sets and any column it does not know (an app's
    /// schema may have more), as WatermelonDB's protocol has it.
    #[schema(value_type = Object)]
    pub changes: std::collections::HashMap<String, watermelon::TableChanges>,
}

/// Records of a push that the service refused; the rest were applied.
#[derive(Debug, Serialize, ToSchema)]
pub struct WatermelonRejected {
    /// The refused records' ids by table, as WatermelonDB's `synchronize()` reads them when
    /// `pushChanges` returns this object: it keeps those records on the device, not synced, and
    /// marks the others synced.
    #[serde(rename = "experimentalRejectedIds")]
    #[schema(value_type = std::collections::HashMap<String, Vec<String>>, example = json!({"attendance": ["8d4f8c7e-2d1b-4b4e-9a53-2f7f3f6d9a10"]}))]
    pub experimental_rejected_ids: std::collections::HashMap<String, Vec<String>>,
    /// Why each was refused, keyed `<table>.<id>`.
    #[schema(value_type = std::collections::HashMap<String, Vec<String>>, example = json!({"attendance.8d4f8c7e-2d1b-4b4e-9a53-2f7f3f6d9a10": ["clock_in_at is more than 30 days ago"]}))]
    pub reasons: crate::error::FieldErrors,
}

/// WatermelonDB `pushChanges`, in one transaction.
///
/// A created record that already exists is updated; an update of a missing record creates it unless
/// it is known deleted; deleting a missing record is ignored. A shift opened beside the user's open
/// one leaves the later of the two open and the other incomplete. A record the service refuses (its
/// times, facility or fields, or another user's record a supervisor's device pulled) is left out
/// and named in a 200 answer, which `pushChanges` returns to `synchronize()`; the others are
/// applied. 409 when a pushed record changed on the server after `last_pulled_at` and does not
/// already hold what is pushed (the same push sent again after its answer was lost applies once,
/// with no conflict): pull, then push again.
#[utoipa::path(post, path = "/sync/watermelon", tag = "sync", security(("bearer" = [])),
    params(WatermelonPushQuery), request_body = WatermelonPushBody,
    responses(
        (status = 200, description = "Applied, except the records named, which the service refused", body = WatermelonRejected),
        (status = 204, description = "Applied whole"),
        (status = 400, description = "Malformed JSON or query", body = ErrorEnvelope),
        (status = 409, description = "Changed on the server since `last_pulled_at` (`conflict`), or another open shift written at the same moment (`already_clocked_in`); pull and push again", body = ErrorEnvelope),
        (status = 413, description = "Body over the limit", body = ErrorEnvelope),
        (status = 422, description = "A malformed push (a record without an id, or one record twice), or an unknown `last_pulled_at`", body = ErrorEnvelope),
    ))]
async fn watermelon_push(
    State(state): State<AppState>,
    user: AuthUser,
    client: ClientInfo,
    Query(q): Query<WatermelonPushQuery>,
    Json(body): Json<WatermelonPushBody>,
) -> Result<axum::response::Response, ApiError> {
    let ctx = PushContext {
        db: &state.db,
        config: &state.config,
        sites: &state.sites,
        user: &user,
        client: &client,
    };
    let rejected = watermelon::push_changes(ctx, q.last_pulled_at, body.changes).await?;
    if rejected.is_empty() {
        return Ok(axum::http::StatusCode::NO_CONTENT.into_response());
    }
    Ok(Json(WatermelonRejected {
        experimental_rejected_ids: watermelon::rejected_ids(&rejected),
        reasons: rejected,
    })
    .into_response())
}
