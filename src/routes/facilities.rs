//! Facilities: search for everyone, management and imports for admins.

use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::audit::Activity;
use crate::auth::{AuthUser, ClientInfo};
use crate::db::facilities::{self, Facility, FacilityFilter, FacilityStatus};
use crate::domain::{GeoPoint, Role};
use crate::error::{ApiError, ErrorEnvelope, Invalid, ResultExt};
use crate::extract::{Json, Path, Query};
use crate::import::apply::{self, ImportOptions, ImportReport, OnDuplicate};
use crate::import::rows::RowError;
use crate::routes::checks::{optional_text, required_text};
use crate::routes::pagination::{Page, Paging};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_facilities, create_facility))
        .routes(routes!(list_imports))
        .routes(routes!(get_facility, update_facility, deactivate_facility))
}

/// The upload route, which has its own rate limit and body limit.
pub fn upload_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(import_facilities))
}

/// Facilities, filtered; with `near`, sorted by distance with `distance_m` (any role).
#[utoipa::path(get, path = "/facilities", tag = "facilities", security(("bearer" = [])), params(FacilityFilter),
    responses(
        (status = 200, description = "A page of facilities", body = Page<Facility>),
        (status = 400, description = "Bad query string", body = ErrorEnvelope),
        (status = 401, description = "Missing or invalid token", body = ErrorEnvelope),
        (status = 422, description = "Bad `near`, `radius_m` or paging", body = ErrorEnvelope),
        (status = 429, description = "Rate limited", body = ErrorEnvelope),
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
        (status = 401, description = "Missing or invalid token", body = ErrorEnvelope),
        (status = 404, description = "No such facility", body = ErrorEnvelope),
        (status = 429, description = "Rate limited", body = ErrorEnvelope),
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
    /// Default `health_center`.
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
    /// Default 200.
    #[schema(minimum = 1, maximum = 100000)]
    pub geofence_radius_m: Option<i32>,
    #[schema(max_length = 500)]
    pub address: Option<String>,
    #[schema(max_length = 32)]
    pub contact_phone: Option<String>,
    #[schema(min_length = 3, max_length = 254, pattern = r"^[^@\s]+@[^@\s]+$")]
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

fn duplicate_code() -> ApiError {
    ApiError::conflict("duplicate", "a facility with this code already exists")
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
        (status = 401, description = "Missing or invalid token", body = ErrorEnvelope),
        (status = 403, description = "Admins only", body = ErrorEnvelope),
        (status = 409, description = "Code already used (`duplicate`)", body = ErrorEnvelope),
        (status = 422, description = "Invalid fields", body = ErrorEnvelope),
        (status = 429, description = "Rate limited", body = ErrorEnvelope),
    ))]
async fn create_facility(
    State(state): State<AppState>,
    admin: AuthUser,
    client: ClientInfo,
    Json(req): Json<CreateFacility>,
) -> Result<(StatusCode, Json<Facility>), ApiError> {
    admin.require(Role::Admin)?;
    let mut invalid = Invalid::default();
    let code = required_text(&req.code, "code", 64, &mut invalid);
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
    let mut tx = state.db.begin().await?;
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
    #[schema(min_length = 1, max_length = 64, pattern = r"\S")]
    pub code: Option<String>,
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    pub name: Option<String>,
    #[serde(rename = "type")]
    #[schema(min_length = 1, max_length = 50, pattern = r"\S")]
    pub facility_type: Option<String>,
    pub council_id: Option<Uuid>,
    #[schema(minimum = -90, maximum = 90)]
    pub latitude: Option<f64>,
    #[schema(minimum = -180, maximum = 180)]
    pub longitude: Option<f64>,
    #[schema(minimum = 1, maximum = 100000)]
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
    pub status: Option<FacilityStatus>,
}

/// Updates a facility (admin).
#[utoipa::path(patch, path = "/facilities/{id}", tag = "facilities", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Facility id")), request_body = UpdateFacility,
    responses(
        (status = 200, description = "The updated facility", body = Facility),
        (status = 400, description = "Malformed JSON or id", body = ErrorEnvelope),
        (status = 401, description = "Missing or invalid token", body = ErrorEnvelope),
        (status = 403, description = "Admins only", body = ErrorEnvelope),
        (status = 404, description = "No such facility", body = ErrorEnvelope),
        (status = 409, description = "Code already used (`duplicate`)", body = ErrorEnvelope),
        (status = 422, description = "Invalid fields", body = ErrorEnvelope),
        (status = 429, description = "Rate limited", body = ErrorEnvelope),
    ))]
async fn update_facility(
    State(state): State<AppState>,
    admin: AuthUser,
    client: ClientInfo,
    Path(id): Path<Uuid>,
    Json(req): Json<UpdateFacility>,
) -> Result<Json<Facility>, ApiError> {
    admin.require(Role::Admin)?;
    let mut invalid = Invalid::default();
    let code = req
        .code
        .as_deref()
        .map(|c| required_text(c, "code", 64, &mut invalid));
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
    let mut tx = state.db.begin().await?;
    let updated = sqlx::query(
        "UPDATE facilities SET
             code = coalesce($2, code), name = coalesce($3, name), type = coalesce($4, type),
             council_id = coalesce($5, council_id), latitude = coalesce($6, latitude),
             longitude = coalesce($7, longitude), geofence_radius_m = coalesce($8, geofence_radius_m),
             address = CASE WHEN $9 THEN $10 ELSE address END,
             contact_phone = CASE WHEN $11 THEN $12 ELSE contact_phone END,
             contact_email = CASE WHEN $13 THEN $14 ELSE contact_email END,
             status = coalesce($15, status)
         WHERE id = $1",
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
    .execute(&mut *tx)
    .await
    .on_constraint("facilities_code_key", duplicate_code)?;
    if updated.rows_affected() == 0 {
        return Err(ApiError::NotFound);
    }
    // A status change is its own action, so the trail can be searched for it.
    let action = match req.status {
        Some(FacilityStatus::Inactive) => "facility.deactivate",
        Some(FacilityStatus::Active) => "facility.reactivate",
        _ => "facility.update",
    };
    Activity::new(action)
        .by(&admin)
        .on("facility", id)
        .from(&client)
        .details(serde_json::json!({ "fields": changed_fields(&req) }))
        .record(&mut *tx)
        .await?;
    let facility = facilities::find(&mut *tx, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    tx.commit().await?;
    state.sites.forget(id);
    Ok(Json(facility))
}

/// Deactivates a facility (admin): its status becomes `inactive`; history stays.
#[utoipa::path(delete, path = "/facilities/{id}", tag = "facilities", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Facility id")),
    responses(
        (status = 204, description = "Deactivated"),
        (status = 400, description = "Malformed id", body = ErrorEnvelope),
        (status = 401, description = "Missing or invalid token", body = ErrorEnvelope),
        (status = 403, description = "Admins only", body = ErrorEnvelope),
        (status = 404, description = "No such facility", body = ErrorEnvelope),
        (status = 429, description = "Rate limited", body = ErrorEnvelope),
    ))]
async fn deactivate_facility(
    State(state): State<AppState>,
    admin: AuthUser,
    client: ClientInfo,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    admin.require(Role::Admin)?;
    let mut tx = state.db.begin().await?;
    let updated = sqlx::query("UPDATE facilities SET status = 'inactive' WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    if updated.rows_affected() == 0 {
        return Err(ApiError::NotFound);
    }
    Activity::new("facility.deactivate")
        .by(&admin)
        .on("facility", id)
        .from(&client)
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    state.sites.forget(id);
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ImportQuery {
    /// `skip` (default) leaves existing codes alone; `update` applies the file's values.
    #[param(inline)]
    pub on_duplicate: Option<OnDuplicate>,
    /// Check and count without applying anything.
    pub dry_run: Option<bool>,
    /// Apply nothing if any row is invalid.
    pub strict: Option<bool>,
}

/// The multipart form of an import: one `file` field and nothing else.
#[derive(ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct ImportUpload {
    /// A CSV (UTF-8 with or without BOM, or Windows-1252; `,`, `;` or tab separated) or an
    /// XLSX workbook (first sheet). Columns: name, code, type, latitude, longitude,
    /// council_name (or council_code), address, contact_phone (or phone).
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
}

/// Imports facilities from CSV or a spreadsheet (admin). Valid rows are applied in one
/// transaction; invalid rows are reported with their spreadsheet row numbers.
#[utoipa::path(post, path = "/facilities/import", tag = "facilities", security(("bearer" = [])),
    params(ImportQuery), request_body(content = ImportUpload, content_type = "multipart/form-data"),
    responses(
        (status = 200, description = "The import report", body = ImportReport),
        (status = 400, description = "Not a multipart form, or a bad query string", body = ErrorEnvelope),
        (status = 401, description = "Missing or invalid token", body = ErrorEnvelope),
        (status = 403, description = "Admins only", body = ErrorEnvelope),
        (status = 413, description = "Over the upload limit, or a spreadsheet that expands absurdly", body = ErrorEnvelope),
        (status = 415, description = "Neither CSV nor a spreadsheet", body = ErrorEnvelope),
        (status = 422, description = "No `file` field, an empty file, no data rows or a missing required column", body = ErrorEnvelope),
        (status = 429, description = "Rate limited", body = ErrorEnvelope),
    ))]
async fn import_facilities(
    State(state): State<AppState>,
    admin: AuthUser,
    client: ClientInfo,
    Query(query): Query<ImportQuery>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Json<ImportReport>, ApiError> {
    admin.require(Role::Admin)?;
    let mut multipart = multipart.map_err(|_| {
        ApiError::BadRequest("expected a multipart/form-data body with a `file` field".into())
    })?;
    let mut upload = None;
    while let Some(field) = multipart.next_field().await.map_err(multipart_error)? {
        if field.name() != Some("file") {
            let name = field
                .name()
                .unwrap_or_default()
                .chars()
                .take(64)
                .collect::<String>();
            return Err(ApiError::invalid(
                &name,
                "is not a field of this form (only `file`)",
            ));
        }
        if upload.is_some() {
            return Err(ApiError::invalid("file", "must be sent once"));
        }
        // Kept with the report as the client named it, less control characters (Postgres text
        // holds no NUL), and at most 255 characters.
        let filename = field.file_name().map(|n| {
            n.chars()
                .filter(|c| !c.is_control())
                .take(255)
                .collect::<String>()
        });
        let bytes = field.bytes().await.map_err(multipart_error)?;
        // The body limit leaves room for the multipart framing; the limit is the file's.
        if bytes.len() > state.config.max_upload_bytes {
            return Err(ApiError::PayloadTooLarge);
        }
        upload = Some((filename, bytes.to_vec()));
    }
    let (filename, bytes) = upload.ok_or_else(|| ApiError::invalid("file", "is required"))?;
    let options = ImportOptions {
        on_duplicate: query.on_duplicate.unwrap_or_default(),
        dry_run: query.dry_run.unwrap_or(false),
        strict: query.strict.unwrap_or(false),
    };
    let radius = state.config.attendance.default_geofence_m;
    let shown_name = filename.clone();
    let report = match apply::run(
        &state.db,
        bytes,
        filename,
        options,
        radius,
        Some((&admin, &client)),
    )
    .await
    {
        Ok(report) => report,
        // A file refused whole (unreadable, hostile, of another kind, missing columns) is not an
        // import and stores no report, but who sent it, and why it was refused, is kept.
        Err(refusal) if refusal.status().is_client_error() => {
            let recorded = Activity::new("facility.import_refused")
                .by(&admin)
                .from(&client)
                .details(serde_json::json!({
                    "filename": shown_name,
                    "code": refusal.code(),
                    "reason": match &refusal {
                        ApiError::Validation(details) => serde_json::json!(details),
                        other => serde_json::json!(other.to_string()),
                    },
                }))
                .record(&state.db)
                .await;
            if let Err(error) = recorded {
                tracing::warn!(%error, action = "facility.import_refused", "an activity was not recorded");
            }
            return Err(refusal);
        }
        Err(error) => return Err(error),
    };
    // An import in `update` mode may move any facility's geofence.
    state.sites.clear();
    Ok(Json(report))
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge
    } else {
        ApiError::BadRequest(format!(
            "the multipart body is malformed: {}",
            e.body_text()
        ))
    }
}

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct ImportRecord {
    pub id: Uuid,
    pub uploaded_by: Option<Uuid>,
    pub filename: Option<String>,
    #[schema(value_type = crate::import::read::Format)]
    pub format: String,
    #[schema(value_type = crate::import::apply::OnDuplicate)]
    pub on_duplicate: String,
    pub dry_run: bool,
    pub strict: bool,
    pub total_rows: i32,
    pub created: i32,
    pub updated: i32,
    pub skipped: i32,
    pub failed: i32,
    #[schema(value_type = Vec<RowError>)]
    pub errors: sqlx::types::Json<Vec<RowError>>,
    pub created_at: DateTime<Utc>,
}

/// Past imports with their reports, newest first (admin).
#[utoipa::path(get, path = "/facilities/imports", tag = "facilities", security(("bearer" = [])),
    params(crate::routes::geography::PageQuery),
    responses(
        (status = 200, description = "A page of import reports", body = Page<ImportRecord>),
        (status = 400, description = "Bad query string", body = ErrorEnvelope),
        (status = 401, description = "Missing or invalid token", body = ErrorEnvelope),
        (status = 403, description = "Admins only", body = ErrorEnvelope),
        (status = 422, description = "Bad paging", body = ErrorEnvelope),
        (status = 429, description = "Rate limited", body = ErrorEnvelope),
    ))]
async fn list_imports(
    State(state): State<AppState>,
    admin: AuthUser,
    Query(q): Query<crate::routes::geography::PageQuery>,
) -> Result<Json<Page<ImportRecord>>, ApiError> {
    admin.require(Role::Admin)?;
    let paging = Paging::new(q.page, q.per_page)?;
    let rows: Vec<ImportRecord> = sqlx::query_as(
        "SELECT id, uploaded_by, filename, format, on_duplicate, dry_run, strict, total_rows, created,
                updated, skipped, failed, errors, created_at
         FROM facility_imports ORDER BY created_at DESC, id LIMIT $1 OFFSET $2",
    )
    .bind(paging.limit())
    .bind(paging.offset())
    .fetch_all(&state.db)
    .await?;
    let total = paging
        .total(rows.len(), async || {
            sqlx::query_scalar("SELECT count(*) FROM facility_imports")
                .fetch_one(&state.db)
                .await
        })
        .await?;
    Ok(Json(paging.wrap(rows, total)))
}
