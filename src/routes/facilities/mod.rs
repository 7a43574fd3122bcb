//! Facilities: search for everyone, management and imports for admins.
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::audit::{self, Activity};
use crate::auth::{AdminUser, AuthUser, ClientInfo};
use crate::db::facilities::{self, Facility, FacilityFilter, FacilityStatus};
use crate::domain::{GeoPoint, facility_code};
use crate::error::{ApiError, ErrorCode, ErrorEnvelope, Invalid, ResultExt};
use crate::extract::{Json, Path, Query};
use crate::routes::checks::{optional_text, required_text};
use crate::routes::pagination::{Page, Paging};
use crate::state::AppState;

mod imports;

pub use imports::upload_router;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_facilities, create_facility))
        .merge(imports::router())
        .routes(routes!(get_facility, update_facility, deactivate_facility))
}

/// Facilities, filtered; with `near`, sorted by distance with `distance_m` (any role).
#[utoipa::path(get, path = "/facilities", tag = "facilities", security(("bearer" = [])), params(FacilityFilter),
    responses(
        (status = 200, description = "A page of facilities", body = Page<Facility>),
        (status = 400, description = "Bad query string", body = ErrorEnvelope),
        (status = 422, description = "Bad `near`, `radius_m` or paging", body = ErrorEnvelope),
    ))]
async fn list_facilities(
    State(state): State<AppState>,
    _user: AuthUser,
    Query(filter): Query<FacilityFilter>,
) -> Result<Json<Page<Facility>>, ApiError> {
    let paging = Paging::new(filter.page, filter.per_page)?;
    let near = filter
        .near
        .as_deref()
        .map(|n| GeoPoint::parse_pair(n).map_err(|reason| ApiError::invalid("near", reason)))
        .transpose()?;
    if let Some(radius) = filter.radius_m {
        if near.is_none() {
            return Err(ApiError::invalid("radius_m", "needs `near`"));
        }
        if !(radius.is_finite() && (1.0..=MAX_RADIUS_M).contains(&radius)) {
            return Err(ApiError::invalid(
                "radius_m",
                format!(
                    "must be between 1 and {MAX_RADIUS_M} metres (half the Earth's circumference)"
                ),
            ));
        }
    }
    let (data, total) =
        facilities::search(&state.db, &filter, near, paging.limit(), paging.offset()).await?;
    Ok(Json(paging.wrap(data, total)))
}

/// One facility (any role).
#[utoipa::path(get, path = "/facilities/{id}", tag = "facilities", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Facility id")),
    responses(
        (status = 200, description = "The facility", body = Facility),
        (status = 400, description = "Malformed id", body = ErrorEnvelope),
        (status = 404, description = "No such facility", body = ErrorEnvelope),
    ))]
async fn get_facility(
    State(state): State<AppState>,
    _user: AuthUser,
    Path(id): Path<Uuid>,
) -> Result<Json<Facility>, ApiError> {
    Ok(Json(
        facilities::find(&state.db, id)
            .await?
            .ok_or(ApiError::NotFound)?,
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateFacility {
    #[schema(example = "KGL-HC-010")]
    #[schema(min_length = 1, max_length = 64, pattern = r"\S")]
    pub code: String,
    #[schema(example = "Remera Health Centre")]
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    pub name: String,
    /// Default `health_center`. Stored as a key: lower case, each run of spaces, hyphens and
    /// underscores one underscore (`Health Center` is `health_center`).
    #[serde(rename = "type")]
    #[schema(min_length = 1, max_length = 50, pattern = r"\S")]
    pub facility_type: Option<String>,
    pub council_id: Uuid,
    #[schema(example = -1.9536)]
    #[schema(minimum = -90, maximum = 90)]
    pub latitude: f64,
    #[schema(example = 30.1128)]
    #[schema(minimum = -180, maximum = 180)]
    pub longitude: f64,
    /// Default: the service's `GEOFENCE_DEFAULT_RADIUS_M` (200 unless configured).
    #[schema(minimum = 1, maximum = 100000)]
    pub geofence_radius_m: Option<i32>,
    #[schema(max_length = 500)]
    pub address: Option<String>,
    #[schema(max_length = 32)]
    pub contact_phone: Option<String>,
    /// An email address; `null` or blank is none.
    #[schema(max_length = 254)]
    pub contact_email: Option<String>,
    pub status: Option<FacilityStatus>,
}

/// Half the Earth's circumference: no point on it is farther.
const MAX_RADIUS_M: f64 = 20_037_509.0;

fn changed_fields(req: &UpdateFacility) -> Vec<&'static str> {
    [
        ("code", req.code.is_some()),
        ("name", req.name.is_some()),
        ("type", req.facility_type.is_some()),
        ("council_id", req.council_id.is_some()),
        ("latitude", req.latitude.is_some()),
        ("longitude", req.longitude.is_some()),
        ("geofence_radius_m", req.geofence_radius_m.is_some()),
        ("address", req.address.is_some()),
        ("contact_phone", req.contact_phone.is_some()),
        ("contact_email", req.contact_email.is_some()),
        ("status", req.status.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect()
}

/// The facility's row as it is before an edit (the audit trail's "from"), locked until the
/// edit commits; 404 when there is none.
async fn before_edit(tx: &mut sqlx::PgConnection, id: Uuid) -> Result<Value, ApiError> {
    sqlx::query_scalar("SELECT to_jsonb(f) FROM facilities f WHERE id = $1 FOR NO KEY UPDATE")
        .bind(id)
        .fetch_optional(tx)
        .await?
        .ok_or(ApiError::NotFound)
}

fn duplicate_code() -> ApiError {
    ApiError::conflict(
        ErrorCode::Duplicate,
        "a facility with this code already exists",
    )
}

fn check_radius(radius: Option<i32>, invalid: &mut Invalid) {
    if let Some(r) = radius
        && !(1..=100_000).contains(&r)
    {
        invalid.add("geofence_radius_m", "must be between 1 and 100000");
    }
}

/// Each coordinate given, checked on its own so that both can be reported.
fn check_point(latitude: Option<f64>, longitude: Option<f64>, invalid: &mut Invalid) {
    if let Some(lat) = latitude
        && let Err((field, reason)) = GeoPoint::new(lat, 0.0)
    {
        invalid.add(field, reason);
    }
    if let Some(lng) = longitude
        && let Err((field, reason)) = GeoPoint::new(0.0, lng)
    {
        invalid.add(field, reason);
    }
}

fn check_email(email: &Option<String>, invalid: &mut Invalid) {
    if let Some(e) = email
        && crate::domain::Email::parse(e).is_err()
    {
        invalid.add("contact_email", "must be a valid email address");
    }
}

async fn check_council(
    state: &AppState,
    id: Option<Uuid>,
    invalid: &mut Invalid,
) -> Result<(), ApiError> {
    if let Some(id) = id {
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM councils WHERE id = $1)")
                .bind(id)
                .fetch_one(&state.db)
                .await?;
        if !exists {
            invalid.add("council_id", "no such council");
        }
    }
    Ok(())
}

/// Creates a facility (admin). Codes are unique, compared case-insensitively.
#[utoipa::path(post, path = "/facilities", tag = "facilities", security(("bearer" = [])), request_body = CreateFacility,
    responses(
        (status = 201, description = "Created", body = Facility),
        (status = 400, description = "Malformed JSON", body = ErrorEnvelope),
        (status = 403, description = "Admins only", body = ErrorEnvelope),
        (status = 409, description = "Code already used (`duplicate`)", body = ErrorEnvelope),
        (status = 422, description = "Invalid fields", body = ErrorEnvelope),
    ))]
async fn create_facility(
    State(state): State<AppState>,
    admin: AdminUser,
    client: ClientInfo,
    Json(req): Json<CreateFacility>,
) -> Result<(StatusCode, Json<Facility>), ApiError> {
    let mut invalid = Invalid::default();
    let code = required_text(&facility_code(&req.code), "code", 64, &mut invalid);
    let name = required_text(&req.name, "name", 200, &mut invalid);
    let facility_type = req.facility_type.as_deref().map_or_else(
        || "health_center".into(),
        |t| facilities::type_key(&required_text(t, "type", 50, &mut invalid)),
    );
    check_point(Some(req.latitude), Some(req.longitude), &mut invalid);
    check_radius(req.geofence_radius_m, &mut invalid);
    let address = optional_text(req.address, "address", 500, &mut invalid);
    let phone = optional_text(req.contact_phone, "contact_phone", 32, &mut invalid);
    let email = optional_text(req.contact_email, "contact_email", 254, &mut invalid);
    check_email(&email, &mut invalid);
    check_council(&state, Some(req.council_id), &mut invalid).await?;
    invalid.finish()?;
    let radius = req
        .geofence_radius_m
        .unwrap_or(state.config.attendance.default_geofence_m);
    let mut tx = crate::import::apply::begin_beside_imports(&state.db).await?;
    let id: Uuid = sqlx::query_scalar(
        "INSERT INTO facilities (code, name, type, council_id, latitude, longitude, geofence_radius_m,
                                 address, contact_phone, contact_email, status)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id",
    )
    .bind(&code)
    .bind(name)
    .bind(facility_type)
    .bind(req.council_id)
    .bind(req.latitude)
    .bind(req.longitude)
    .bind(radius)
    .bind(address)
    .bind(phone)
    .bind(email.map(|e| e.to_lowercase()))
    .bind(req.status.unwrap_or(FacilityStatus::Active).as_str())
    .fetch_one(&mut *tx)
    .await
    .on_constraint("facilities_code_key", duplicate_code)?;
    Activity::new("facility.create")
        .by(&admin)
        .on("facility", id)
        .from(&client)
        .details(serde_json::json!({ "code": code }))
        .record(&mut *tx)
        .await?;
    let facility = facilities::find(&mut *tx, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(facility)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateFacility {
    #[schema(nullable = false, min_length = 1, max_length = 64, pattern = r"\S")]
    #[serde(default, deserialize_with = "crate::extract::not_null")]
    pub code: Option<String>,
    #[schema(nullable = false, min_length = 1, max_length = 200, pattern = r"\S")]
    #[serde(default, deserialize_with = "crate::extract::not_null")]
    pub name: Option<String>,
    #[serde(rename = "type")]
    #[schema(nullable = false, min_length = 1, max_length = 50, pattern = r"\S")]
    #[serde(default, deserialize_with = "crate::extract::not_null")]
    pub facility_type: Option<String>,
    #[schema(nullable = false)]
    #[serde(default, deserialize_with = "crate::extract::not_null")]
    pub council_id: Option<Uuid>,
    #[schema(nullable = false, minimum = -90, maximum = 90)]
    #[serde(default, deserialize_with = "crate::extract::not_null")]
    pub latitude: Option<f64>,
    #[schema(nullable = false, minimum = -180, maximum = 180)]
    #[serde(default, deserialize_with = "crate::extract::not_null")]
    pub longitude: Option<f64>,
    #[schema(nullable = false, minimum = 1, maximum = 100000)]
    #[serde(default, deserialize_with = "crate::extract::not_null")]
    pub geofence_radius_m: Option<i32>,
    #[serde(default, deserialize_with = "crate::extract::double_option")]
    #[schema(value_type = Option<String>, nullable, max_length = 500)]
    pub address: Option<Option<String>>,
    #[serde(default, deserialize_with = "crate::extract::double_option")]
    #[schema(value_type = Option<String>, nullable, max_length = 32)]
    pub contact_phone: Option<Option<String>>,
    /// An email address; `null` or blank clears it.
    #[serde(default, deserialize_with = "crate::extract::double_option")]
    #[schema(value_type = Option<String>, nullable, max_length = 254)]
    pub contact_email: Option<Option<String>>,
    #[schema(nullable = false)]
    #[serde(default, deserialize_with = "crate::extract::not_null")]
    pub status: Option<FacilityStatus>,
}

/// Updates a facility (admin).
#[utoipa::path(patch, path = "/facilities/{id}", tag = "facilities", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Facility id")), request_body = UpdateFacility,
    responses(
        (status = 200, description = "The updated facility", body = Facility),
        (status = 400, description = "Malformed JSON or id", body = ErrorEnvelope),
        (status = 403, description = "Admins only", body = ErrorEnvelope),
        (status = 404, description = "No such facility", body = ErrorEnvelope),
        (status = 409, description = "Code already used (`duplicate`)", body = ErrorEnvelope),
        (status = 422, description = "Invalid fields", body = ErrorEnvelope),
    ))]
async fn update_facility(
    State(state): State<AppState>,
    admin: AdminUser,
    client: ClientInfo,
    Path(id): Path<Uuid>,
    Json(req): Json<UpdateFacility>,
) -> Result<Json<Facility>, ApiError> {
    let mut invalid = Invalid::default();
    let code = req
        .code
        .as_deref()
        .map(|c| required_text(&facility_code(c), "code", 64, &mut invalid));
    let name = req
        .name
        .as_deref()
        .map(|n| required_text(n, "name", 200, &mut invalid));
    let facility_type = req
        .facility_type
        .as_deref()
        .map(|t| facilities::type_key(&required_text(t, "type", 50, &mut invalid)));
    if req.latitude.is_some() || req.longitude.is_some() {
        check_point(req.latitude, req.longitude, &mut invalid);
    }
    check_radius(req.geofence_radius_m, &mut invalid);
    let address = req
        .address
        .clone()
        .map(|a| optional_text(a, "address", 500, &mut invalid));
    let phone = req
        .contact_phone
        .clone()
        .map(|p| optional_text(p, "contact_phone", 32, &mut invalid));
    let email = req
        .contact_email
        .clone()
        .map(|e| optional_text(e, "contact_email", 254, &mut invalid));
    if let Some(e) = &email {
        check_email(e, &mut invalid);
    }
    check_council(&state, req.council_id, &mut invalid).await?;
    invalid.finish()?;
    let mut tx = crate::import::apply::begin_beside_imports(&state.db).await?;
    let before = before_edit(&mut tx, id).await?;
    // A code sent as the facility has it is left as it is stored: one kept unnormalised, since
    // normalising it would have made it another's, would otherwise be refused as that one's.
    let code =
        code.filter(|sent| before["code"].as_str().map(facility_code).as_ref() != Some(sent));
    let after: Value = sqlx::query_scalar(
        "UPDATE facilities SET
             code = coalesce($2, code), name = coalesce($3, name), type = coalesce($4, type),
             council_id = coalesce($5, council_id), latitude = coalesce($6, latitude),
             longitude = coalesce($7, longitude), geofence_radius_m = coalesce($8, geofence_radius_m),
             address = CASE WHEN $9 THEN $10 ELSE address END,
             contact_phone = CASE WHEN $11 THEN $12 ELSE contact_phone END,
             contact_email = CASE WHEN $13 THEN $14 ELSE contact_email END,
             status = coalesce($15, status)
         WHERE id = $1
         RETURNING to_jsonb(facilities)",
    )
    .bind(id)
    .bind(code)
    .bind(name)
    .bind(facility_type)
    .bind(req.council_id)
    .bind(req.latitude)
    .bind(req.longitude)
    .bind(req.geofence_radius_m)
    .bind(address.is_some())
    .bind(address.flatten())
    .bind(phone.is_some())
    .bind(phone.flatten())
    .bind(email.is_some())
    .bind(email.flatten().map(|e| e.to_lowercase()))
    .bind(req.status.map(FacilityStatus::as_str))
    .fetch_one(&mut *tx)
    .await
    .on_constraint("facilities_code_key", duplicate_code)?;
    let details = audit::edit(&before, &after, &changed_fields(&req));
    if audit::changes_nothing(&details) {
        // Nothing changed (the form sent back as it was): nothing is written, and no device
        // pulls the facility again.
        tx.rollback().await?;
        return facilities::find(&state.db, id)
            .await?
            .map(Json)
            .ok_or(ApiError::NotFound);
    }
    // A status change is its own action, so the trail can be searched for it: closing the
    // facility, or opening it again after it was closed or under maintenance.
    let action = match (before["status"].as_str(), after["status"].as_str()) {
        (from, Some("inactive")) if from != Some("inactive") => "facility.deactivate",
        (Some("inactive" | "maintenance"), Some("active")) => "facility.reactivate",
        _ => "facility.update",
    };
    Activity::new(action)
        .by(&admin)
        .on("facility", id)
        .from(&client)
        .details(details)
        .record(&mut *tx)
        .await?;
    let facility = facilities::find(&mut *tx, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    commit_and_forget(&state, tx, id).await?;
    Ok(Json(facility))
}

/// Deactivates a facility (admin).
///
/// Its status becomes `inactive`; history stays. One already inactive is left as it is.
#[utoipa::path(delete, path = "/facilities/{id}", tag = "facilities", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Facility id")),
    responses(
        (status = 204, description = "Deactivated, or already inactive"),
        (status = 400, description = "Malformed id", body = ErrorEnvelope),
        (status = 403, description = "Admins only", body = ErrorEnvelope),
        (status = 404, description = "No such facility", body = ErrorEnvelope),
    ))]
async fn deactivate_facility(
    State(state): State<AppState>,
    admin: AdminUser,
    client: ClientInfo,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    let mut tx = crate::db::begin(&state.db).await?;
    let before = before_edit(&mut tx, id).await?;
    // Already inactive: nothing changes, nothing is recorded, and devices pull nothing new.
    if before["status"] == "inactive" {
        return Ok(StatusCode::NO_CONTENT);
    }
    let after: Value = sqlx::query_scalar(
        "UPDATE facilities SET status = 'inactive' WHERE id = $1 RETURNING to_jsonb(facilities)",
    )
    .bind(id)
    .fetch_one(&mut *tx)
    .await?;
    Activity::new("facility.deactivate")
        .by(&admin)
        .on("facility", id)
        .from(&client)
        .details(audit::edit(&before, &after, &["status"]))
        .record(&mut *tx)
        .await?;
    commit_and_forget(&state, tx, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Commits an edit of facility `id` and drops its cached site, on a task of its own: a request
/// ended meanwhile (its time limit, its client gone) cannot leave the old site cached, for
/// clock-ins to be measured against, once the edit is committed.
async fn commit_and_forget(state: &AppState, tx: crate::db::Tx, id: Uuid) -> Result<(), ApiError> {
    let sites = state.sites.clone();
    state
        .to_the_end(async move {
            let committed = tx.commit().await;
            sites.forget(id);
            Ok(committed?)
        })
        .await
}
