//! Regions and councils (reference data, seeded).

use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::error::{ApiError, ErrorEnvelope};
use crate::extract::{Json, Path, Query};
use crate::routes::pagination::{Page, Paging};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_regions))
        .routes(routes!(region_councils))
        .routes(routes!(list_councils))
}

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct Region {
    pub id: Uuid,
    #[schema(example = "RW-01")]
    pub code: String,
    #[schema(example = "Kigali City")]
    pub name: String,
}

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct Council {
    pub id: Uuid,
    pub region_id: Uuid,
    #[schema(example = "RW-0102")]
    pub code: String,
    #[schema(example = "Gasabo")]
    pub name: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    #[param(minimum = 1, maximum = 100000, default = 1)]
    pub page: Option<u32>,
    #[param(minimum = 1, maximum = 100, default = 50)]
    pub per_page: Option<u32>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct CouncilQuery {
    pub region_id: Option<Uuid>,
    #[param(minimum = 1, maximum = 100000, default = 1)]
    pub page: Option<u32>,
    #[param(minimum = 1, maximum = 100, default = 50)]
    pub per_page: Option<u32>,
}

/// The regions (provinces), by name.
#[utoipa::path(get, path = "/regions", tag = "geography", security(("bearer" = [])), params(PageQuery),
    responses(
        (status = 200, description = "A page of regions", body = Page<Region>),
        (status = 400, description = "Bad query string", body = ErrorEnvelope),
        (status = 422, description = "Bad paging", body = ErrorEnvelope),
    ))]
async fn list_regions(
    State(state): State<AppState>,
    _user: AuthUser,
    Query(q): Query<PageQuery>,
) -> Result<Json<Page<Region>>, ApiError> {
    let paging = Paging::new(q.page, q.per_page)?;
    let rows: Vec<Region> =
        sqlx::query_as("SELECT id, code, name FROM regions ORDER BY name LIMIT $1 OFFSET $2")
            .bind(paging.limit())
            .bind(paging.offset())
            .fetch_all(&state.db)
            .await?;
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM regions")
        .fetch_one(&state.db)
        .await?;
    Ok(Json(paging.wrap(rows, total)))
}

async fn councils_page(
    state: &AppState,
    region_id: Option<Uuid>,
    paging: Paging,
) -> Result<Page<Council>, ApiError> {
    let rows: Vec<Council> = sqlx::query_as(
        "SELECT id, region_id, code, name FROM councils
         WHERE $1::uuid IS NULL OR region_id = $1 ORDER BY name LIMIT $2 OFFSET $3",
    )
    .bind(region_id)
    .bind(paging.limit())
    .bind(paging.offset())
    .fetch_all(&state.db)
    .await?;
    let total: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM councils WHERE $1::uuid IS NULL OR region_id = $1",
    )
    .bind(region_id)
    .fetch_one(&state.db)
    .await?;
    Ok(paging.wrap(rows, total))
}

/// The councils (districts) of one region.
#[utoipa::path(get, path = "/regions/{id}/councils", tag = "geography", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Region id"), PageQuery),
    responses(
        (status = 200, description = "A page of councils", body = Page<Council>),
        (status = 400, description = "Malformed id or query", body = ErrorEnvelope),
        (status = 404, description = "No such region", body = ErrorEnvelope),
        (status = 422, description = "Bad paging", body = ErrorEnvelope),
    ))]
async fn region_councils(
    State(state): State<AppState>,
    _user: AuthUser,
    Path(id): Path<Uuid>,
    Query(q): Query<PageQuery>,
) -> Result<Json<Page<Council>>, ApiError> {
    let paging = Paging::new(q.page, q.per_page)?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM regions WHERE id = $1)")
        .bind(id)
        .fetch_one(&state.db)
        .await?;
    if !exists {
        return Err(ApiError::NotFound);
    }
    Ok(Json(councils_page(&state, Some(id), paging).await?))
}

/// Councils (districts), optionally of one region.
#[utoipa::path(get, path = "/councils", tag = "geography", security(("bearer" = [])), params(CouncilQuery),
    responses(
        (status = 200, description = "A page of councils", body = Page<Council>),
        (status = 400, description = "Bad query string", body = ErrorEnvelope),
        (status = 422, description = "Bad paging", body = ErrorEnvelope),
    ))]
async fn list_councils(
    State(state): State<AppState>,
    _user: AuthUser,
    Query(q): Query<CouncilQuery>,
) -> Result<Json<Page<Council>>, ApiError> {
    let paging = Paging::new(q.page, q.per_page)?;
    Ok(Json(councils_page(&state, q.region_id, paging).await?))
}
