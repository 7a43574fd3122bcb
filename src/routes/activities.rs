//! The activity log (audit trail), for admins.

use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::QueryBuilder;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::AdminUser;
use crate::error::{ApiError, ErrorEnvelope};
use crate::extract::{Json, Query};
use crate::routes::pagination::{Page, Paging};
use crate::routes::period::Bounds;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_activities))
}

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct ActivityEntry {
    pub id: Uuid,
    /// Who did it; null for anonymous attempts (a failed login with an unknown email).
    #[schema(required = true)]
    pub actor_id: Option<Uuid>,
    #[schema(required = true)]
    pub actor_email: Option<String>,
    /// e.g. `auth.login`, `auth.login_failed`, `auth.lockout`, `user.create`, `user.role_change`,
    /// `facility.import`, `attendance.clock_in`, `sync.push`, `sync.conflict_resolve`.
    #[schema(example = "auth.login")]
    pub action: String,
    #[schema(required = true)]
    pub entity_type: Option<String>,
    #[schema(required = true)]
    pub entity_id: Option<Uuid>,
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
    #[schema(required = true)]
    pub ip: Option<String>,
    #[schema(required = true)]
    pub user_agent: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ActivityFilter {
    /// The actor.
    pub user_id: Option<Uuid>,
    pub action: Option<String>,
    pub entity_type: Option<String>,
    /// The record acted on: with `entity_type=user`, everything done to one account (failed
    /// logins and lockouts included, which have no actor).
    pub entity_id: Option<Uuid>,
    /// From this date (YYYY-MM-DD, in the service's time zone) or RFC 3339 instant.
    pub from: Option<String>,
    /// Up to this date (inclusive) or RFC 3339 instant (exclusive).
    pub to: Option<String>,
    #[param(minimum = 1, maximum = 100000, default = 1)]
    pub page: Option<u32>,
    #[param(minimum = 1, maximum = 100, default = 50)]
    pub per_page: Option<u32>,
}

/// The audit trail, newest first (admin).
#[utoipa::path(get, path = "/activities", tag = "admin", security(("bearer" = [])), params(ActivityFilter),
    responses(
        (status = 200, description = "A page of activities", body = Page<ActivityEntry>),
        (status = 400, description = "Bad query string", body = ErrorEnvelope),
        (status = 403, description = "Admins only", body = ErrorEnvelope),
        (status = 422, description = "Bad paging, or a period out of range or reversed", body = ErrorEnvelope),
    ))]
async fn list_activities(
    State(state): State<AppState>,
    _user: AdminUser,
    Query(filter): Query<ActivityFilter>,
) -> Result<Json<Page<ActivityEntry>>, ApiError> {
    let tz = state.config.attendance.timezone;
    let period = super::period::parse(filter.from.as_deref(), filter.to.as_deref(), tz)?;
    let paging = Paging::new(filter.page, filter.per_page)?;
    let mut qb = QueryBuilder::new(
        "SELECT id, actor_id, actor_email, action, entity_type, entity_id, details, ip, user_agent,
                created_at",
    );
    push_matching(&mut qb, &filter, period);
    qb.push(" ORDER BY created_at DESC, id LIMIT ")
        .push_bind(paging.limit())
        .push(" OFFSET ")
        .push_bind(paging.offset());
    // The trail is the fastest-growing table: a filter no index serves (an `entity_id` alone,
    // a long period) is cancelled in the database when the request has taken its time, rather
    // than run on, holding a connection; the page and its total are read in one snapshot.
    let mut tx = crate::db::begin(&state.db).await?;
    crate::db::read_snapshot(&mut tx, state.config.request_timeout).await?;
    let rows: Vec<ActivityEntry> = qb.build_query_as().fetch_all(&mut *tx).await?;
    let total = paging
        .total(rows.len(), async || {
            let mut qb = QueryBuilder::new("SELECT count(*)");
            push_matching(&mut qb, &filter, period);
            qb.build_query_scalar().fetch_one(&mut *tx).await
        })
        .await?;
    tx.commit().await?;
    Ok(Json(paging.wrap(rows, total)))
}

fn push_matching(
    qb: &mut QueryBuilder<'_, sqlx::Postgres>,
    filter: &ActivityFilter,
    (from, to): Bounds,
) {
    qb.push(" FROM activities WHERE true");
    if let Some(id) = filter.user_id {
        qb.push(" AND actor_id = ").push_bind(id);
    }
    // A blank text filter is no filter, as in a form left empty.
    if let Some(action) = filter.action.as_deref().filter(|a| !a.is_empty()) {
        qb.push(" AND action = ").push_bind(action.to_string());
    }
    if let Some(entity_type) = filter.entity_type.as_deref().filter(|t| !t.is_empty()) {
        qb.push(" AND entity_type = ")
            .push_bind(entity_type.to_string());
    }
    if let Some(id) = filter.entity_id {
        qb.push(" AND entity_id = ").push_bind(id);
    }
    if let Some(from) = from {
        qb.push(" AND created_at >= ").push_bind(from);
    }
    if let Some(to) = to {
        qb.push(" AND created_at < ").push_bind(to);
    }
}
