//! System information for admins.

use std::collections::BTreeMap;

use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::AdminUser;
use crate::error::{ApiError, ErrorEnvelope};
use crate::extract::Json;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(system))
}

/// Tables whose row counts are reported.
const TABLES: &[&str] = &[
    "regions",
    "councils",
    "facilities",
    "users",
    "attendance",
    "activities",
    "refresh_tokens",
    "refresh_families_reused",
    "sync_conflicts",
    "sync_snapshots",
    "sync_epoch",
    "scope_changes",
    "user_counts",
    "facility_imports",
];

#[derive(Debug, Serialize, ToSchema)]
pub struct PoolInfo {
    pub size: u32,
    pub idle: usize,
    pub max: u32,
}

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct MigrationInfo {
    pub version: i64,
    pub description: String,
    pub installed_on: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SystemInfo {
    #[schema(example = "0.1.0")]
    pub version: String,
    pub uptime_s: u64,
    pub database_size_bytes: i64,
    /// Rows per table.
    pub row_counts: BTreeMap<String, i64>,
    pub pool: PoolInfo,
    pub migrations: Vec<MigrationInfo>,
}

/// Version, uptime, database size, row counts, pool usage and applied migrations (admin).
#[utoipa::path(get, path = "/admin/system", tag = "admin", security(("bearer" = [])),
    responses(
        (status = 200, description = "System information", body = SystemInfo),
        (status = 403, description = "Admins only", body = ErrorEnvelope),
    ))]
async fn system(
    State(state): State<AppState>,
    _user: AdminUser,
) -> Result<Json<SystemInfo>, ApiError> {
    let database_size_bytes: i64 =
        sqlx::query_scalar("SELECT pg_database_size(current_database())")
            .fetch_one(&state.db)
            .await?;
    // Table names come from the constant list above, never from input.
    let counts_sql = TABLES
        .iter()
        .map(|t| format!("SELECT '{t}'::text, count(*) FROM {t}"))
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    // Exact counts read whole tables: bounded, so that a dashboard polling a large database
    // never piles up queries the service has given up on.
    let mut tx = crate::db::bounded(&state.db, state.config.request_timeout).await?;
    let rows: Vec<(String, i64)> = sqlx::query_as(&counts_sql).fetch_all(&mut *tx).await?;
    tx.commit().await?;
    let migrations: Vec<MigrationInfo> = sqlx::query_as(
        "SELECT version, description, installed_on FROM _sqlx_migrations WHERE success ORDER BY version",
    )
    .fetch_all(&state.db)
    .await?;
    Ok(Json(SystemInfo {
        version: env!("CARGO_PKG_VERSION").to_string(),
        uptime_s: state.started_at.elapsed().as_secs(),
        database_size_bytes,
        row_counts: rows.into_iter().collect(),
        pool: PoolInfo {
            size: state.db.size(),
            idle: state.db.num_idle(),
            max: state.config.db.max_connections,
        },
        migrations,
    }))
}
