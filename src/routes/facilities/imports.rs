//! Facility imports from CSV and XLSX uploads, and their past reports.

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
use crate::auth::{AdminUser, AuthUser, ClientInfo};
use crate::error::{ApiError, ErrorEnvelope};
use crate::extract::{Json, Query};
use crate::import::apply::{self, ImportOptions, ImportReport, OnDuplicate};
use crate::import::rows::RowError;
use crate::routes::pagination::{Page, Paging};
use crate::state::AppState;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_imports))
}

/// The upload route, which has its own rate limit and body limit.
pub fn upload_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(import_facilities))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ImportQuery {
    /// `skip` (default) leaves existing codes alone; `update` applies the file's values.
    #[param(inline, default = "skip")]
    pub on_duplicate: Option<OnDuplicate>,
    /// Check and count without applying anything.
    #[param(default = false)]
    pub dry_run: Option<bool>,
    /// Apply nothing if any row is invalid.
    #[param(default = false)]
    pub strict: Option<bool>,
}

/// The multipart form of an import: one `file` field and nothing else.
#[derive(ToSchema, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct ImportUpload {
    /// A CSV (UTF-8 with or without BOM, or Windows-1252; `,`, `;` or tab separated) or an
    /// XLSX workbook (its first visible sheet). Columns: name, code, type, latitude, longitude,
    /// council_name (or council_code), address, contact_phone (or phone).
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
}

/// Imports facilities from CSV or XLSX (admin).
///
/// Valid rows are applied in one transaction; invalid rows are reported with their spreadsheet row
/// numbers.
#[utoipa::path(post, path = "/facilities/import", tag = "facilities", security(("bearer" = [])),
    params(ImportQuery), request_body(content = ImportUpload, content_type = "multipart/form-data"),
    responses(
        (status = 200, description = "The import report", body = ImportReport),
        (status = 400, description = "Not a multipart form, or a bad query string", body = ErrorEnvelope),
        (status = 403, description = "Admins only", body = ErrorEnvelope),
        (status = 413, description = "Over the upload limit, more than 200,000 rows, a cell over 32,767 characters, more than 256 MiB of text, or a spreadsheet that expands absurdly or whose shared strings, styles or list of sheets would take absurd memory to read", body = ErrorEnvelope),
        (status = 415, description = "Neither CSV nor XLSX: an Excel 97-2003 (.xls) or OpenDocument (.ods) workbook, an HTML or XML export, or another kind of file (`unsupported_media_type`)", body = ErrorEnvelope),
        (status = 422, description = "No `file` field, `file` twice or another field, an empty file, no data rows, a missing required column, a workbook protected with a password or that cannot be read, a CSV with lines in two encodings or a quote left open, or two codes that Postgres (unlike the row check) finds differ only in case", body = ErrorEnvelope),
        (status = 503, description = "Another facility file is being read or applied, the database is unreachable, the request timed out, or it met concurrent changes to the same records (`unavailable`); retry later, after `Retry-After` seconds when given. An import whose request timed out still runs to its end: look for its report in `GET /facilities/imports` before sending the file again", body = ErrorEnvelope),
    ))]
async fn import_facilities(
    State(state): State<AppState>,
    admin: AdminUser,
    client: ClientInfo,
    Query(query): Query<ImportQuery>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Json<ImportReport>, ApiError> {
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
    // In a task of its own, so that an import runs to its end, report and all, even when its
    // request times out or its client leaves: what it applied is always in the import list, the
    // geofences it moved are never left cached, and a file refused whole is in the trail.
    let work = {
        let (state, admin, client) = (state.clone(), admin.clone(), client.clone());
        async move {
            let shown_name = filename.clone();
            let applied =
                apply::run(&state, bytes, filename, options, Some((&admin, &client))).await;
            if let Err(refusal) = &applied
                && refusal.status().is_client_error()
            {
                record_refusal(&state, &admin, &client, shown_name, refusal).await;
            }
            applied
        }
    };
    Ok(Json(state.to_the_end(work).await?))
}

/// A file refused whole (unreadable, hostile, of another kind, missing columns) is not an import
/// and stores no report, but who sent it, and why it was refused, is kept.
async fn record_refusal(
    state: &AppState,
    admin: &AuthUser,
    client: &ClientInfo,
    filename: Option<String>,
    refusal: &ApiError,
) {
    Activity::new("facility.import_refused")
        .by(admin)
        .from(client)
        .details(serde_json::json!({
            "filename": filename,
            "code": refusal.code(),
            "reason": match refusal {
                ApiError::Validation(details) => serde_json::json!(details),
                other => serde_json::json!(other.to_string()),
            },
        }))
        .record_or_warn(&state.db)
        .await;
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

/// The kind of file a stored import read: `xls` and `ods` only in reports of an earlier version,
/// which read those files too.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)] // A schema only: stored reports hold the text.
enum StoredFormat {
    Csv,
    Xlsx,
    Xls,
    Ods,
}

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct ImportRecord {
    pub id: Uuid,
    /// The same as `id`, under the name the import's own report gives it.
    pub import_id: Uuid,
    #[schema(required = true)]
    pub uploaded_by: Option<Uuid>,
    #[schema(required = true)]
    pub filename: Option<String>,
    #[schema(value_type = StoredFormat)]
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
        (status = 403, description = "Admins only", body = ErrorEnvelope),
        (status = 422, description = "Bad paging", body = ErrorEnvelope),
    ))]
async fn list_imports(
    State(state): State<AppState>,
    _admin: AdminUser,
    Query(q): Query<crate::routes::geography::PageQuery>,
) -> Result<Json<Page<ImportRecord>>, ApiError> {
    let paging = Paging::new(q.page, q.per_page)?;
    let rows: Vec<ImportRecord> = sqlx::query_as(
        "SELECT id, id AS import_id, uploaded_by, filename, format, on_duplicate, dry_run, strict, total_rows, created,
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
