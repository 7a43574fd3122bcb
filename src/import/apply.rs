//! Applying checked rows: one transaction, one set-based statement, one stored report.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::audit::Activity;
use crate::auth::{AuthUser, ClientInfo};
use crate::error::{ApiError, FieldErrors};
use crate::import::read::{self, ReadError};
use crate::import::rows::{self, Councils, FacilityRow, RowError, code_key};
use crate::state::AppState;

/// The advisory lock key that imports take, so that one runs at a time.
pub const IMPORT_LOCK: i64 = 0x6661_6369_6d70; // "facimp"

/// A transaction for a facility written outside an import, which waits for a running import to
/// end (and an import for it): an import reads the stored values of the codes in its file, and
/// a facility created or renamed to one of them meanwhile would be overwritten with the file's
/// defaults. The lock is taken inside the transaction, not with its `BEGIN`: a request dropped
/// while it waits then rolls back at once, where a `BEGIN` (which runs to its end in a task of
/// its own, see [`crate::db::begin_with`]) would wait on for the lock with no one to answer.
pub async fn begin_beside_imports(db: &PgPool) -> Result<crate::db::Tx, sqlx::Error> {
    let mut tx = crate::db::begin(db).await?;
    sqlx::query("SELECT pg_advisory_xact_lock_shared($1)")
        .bind(IMPORT_LOCK)
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnDuplicate {
    /// Existing facilities (same code, case-insensitively) are left alone.
    #[default]
    Skip,
    /// Existing facilities take the file's values, and keep those it leaves out (no such column,
    /// or an empty cell); unchanged ones count as skipped.
    Update,
}

impl OnDuplicate {
    fn as_str(self) -> &'static str {
        match self {
            OnDuplicate::Skip => "skip",
            OnDuplicate::Update => "update",
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct ImportOptions {
    pub on_duplicate: OnDuplicate,
    pub dry_run: bool,
    pub strict: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ImportReport {
    pub import_id: Uuid,
    #[schema(example = "csv")]
    #[schema(value_type = crate::import::read::Format)]
    pub format: String,
    /// Data rows in the file (blank rows excluded).
    pub total_rows: usize,
    pub created: usize,
    pub updated: usize,
    /// Valid rows not written: an unchanged or (with `on_duplicate=skip`) existing facility, or
    /// every valid row of a `strict` import that found an invalid one. `created + updated +
    /// skipped + failed = total_rows`.
    pub skipped: usize,
    pub failed: usize,
    /// Each problem with its row number in the spreadsheet (see `RowError`); at most the first
    /// 1000.
    pub errors: Vec<RowError>,
    pub dry_run: bool,
}

fn read_error(e: ReadError) -> ApiError {
    match e {
        ReadError::NotSpreadsheet | ReadError::OtherWorkbook | ReadError::Markup => {
            ApiError::UnsupportedMediaType(e.to_string())
        }
        ReadError::TooLarge(reason) => ApiError::ContentTooLarge(reason),
        ReadError::Empty => ApiError::invalid("file", "is empty"),
        ReadError::Unreadable(reason) => ApiError::invalid("file", reason),
        ReadError::Encrypted | ReadError::MixedEncoding(_) | ReadError::UnclosedQuote(..) => {
            ApiError::invalid("file", e.to_string())
        }
    }
}

async fn councils(db: &PgPool) -> Result<Councils, sqlx::Error> {
    let rows: Vec<(Uuid, String, String)> = sqlx::query_as("SELECT id, name, code FROM councils")
        .fetch_all(db)
        .await?;
    let mut map = Councils::new();
    for (id, name, code) in rows {
        map.insert(rows::council_key(&name), id);
        map.insert(rows::council_key(&code), id);
    }
    Ok(map)
}

/// Reads, checks and applies `bytes`, and stores the report. Parsing runs on the blocking pool.
/// New facilities get `default_radius_m` as their geofence (`GEOFENCE_DEFAULT_RADIUS_M`).
///
/// Files are read and applied one at a time (`AppState::imports`): reading one may take hundreds
/// of megabytes and a core for seconds, and its rows are held until they are applied. Another
/// arriving meanwhile answers 503 with `Retry-After`, rather than wait holding its own rows.
pub async fn run(
    state: &AppState,
    bytes: Vec<u8>,
    filename: Option<String>,
    options: ImportOptions,
    actor: Option<(&AuthUser, &ClientInfo)>,
) -> Result<ImportReport, ApiError> {
    let (db, default_radius_m) = (&state.db, state.config.attendance.default_geofence_m);
    let _turn = state
        .imports
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::Busy {
            message: "another facility file is being read or applied; try again shortly".into(),
            retry_after_s: 5,
        })?;
    let councils = councils(db).await?;
    let span = tracing::Span::current();
    let (format, checked) = tokio::task::spawn_blocking(move || {
        span.in_scope(|| {
            let sheet = read::read(&bytes).map_err(read_error)?;
            if sheet.rows.is_empty() {
                return Err(ApiError::invalid("file", "has a header but no data rows"));
            }
            let checked = rows::check(&sheet, &councils).map_err(|problems| {
                let mut details = FieldErrors::new();
                details.insert("file".into(), problems);
                ApiError::Validation(details)
            })?;
            Ok((sheet.format, checked))
        })
    })
    .await
    .map_err(anyhow::Error::from)??;

    let apply = !(options.strict && checked.failed > 0);
    let mut tx = crate::db::begin(db).await?;
    let (created, updated) = if apply && !checked.valid.is_empty() {
        // One import at a time: two writing the same new codes in different orders would
        // deadlock, and one could read stored values another is about to change.
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(IMPORT_LOCK)
            .execute(&mut *tx)
            .await?;
        upsert(
            &mut tx,
            &checked.valid,
            options.on_duplicate,
            default_radius_m,
        )
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(d) if d.code().as_deref() == Some("21000") => ApiError::invalid(
                "file",
                "names one facility code twice, in letters that differ only in case",
            ),
            _ => e.into(),
        })?
    } else {
        (0, 0)
    };
    // Every row is counted once: a valid row not written (an existing code left alone, or any
    // row of a strict import that met an invalid one) is skipped.
    let skipped = checked.valid.len() - created - updated;
    if options.dry_run {
        // The counts above are exact because the statement really ran; nothing is kept.
        tx.rollback().await?;
        tx = crate::db::begin(db).await?;
    }
    let errors = checked.errors;
    let import_id: Uuid = sqlx::query_scalar(
        "INSERT INTO facility_imports (uploaded_by, filename, format, on_duplicate, dry_run, strict,
                                       total_rows, created, updated, skipped, failed, errors)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING id",
    )
    .bind(actor.map(|(u, _)| u.id))
    .bind(filename.as_deref())
    .bind(format.as_str())
    .bind(options.on_duplicate.as_str())
    .bind(options.dry_run)
    .bind(options.strict)
    .bind(checked.total_rows as i32)
    .bind(created as i32)
    .bind(updated as i32)
    .bind(skipped as i32)
    .bind(checked.failed as i32)
    .bind(serde_json::to_value(&errors).map_err(anyhow::Error::from)?)
    .fetch_one(&mut *tx)
    .await?;
    // Imports from the command line are audited too, with no actor, as the seed's admin is.
    let mut activity = Activity::new("facility.import")
        .on("facility_import", import_id)
        .details(serde_json::json!({
            "format": format.as_str(), "total_rows": checked.total_rows, "created": created,
            "updated": updated, "skipped": skipped, "failed": checked.failed,
            "dry_run": options.dry_run, "strict": options.strict,
            "via": if actor.is_some() { "api" } else { "command line" },
        }));
    if let Some((user, client)) = actor {
        activity = activity.by(user).from(client);
    }
    activity.record(&mut *tx).await?;
    tx.commit().await?;
    if !options.dry_run {
        // An import in `update` mode may move any facility's geofence.
        state.sites.clear();
        for (outcome, n) in [
            ("created", created),
            ("updated", updated),
            ("skipped", skipped),
            ("failed", checked.failed),
        ] {
            metrics::counter!("facility_import_rows_total", "outcome" => outcome)
                .increment(n as u64);
        }
    }
    Ok(ImportReport {
        import_id,
        format: format.as_str().to_string(),
        total_rows: checked.total_rows,
        created,
        updated,
        skipped,
        failed: checked.failed,
        errors,
        dry_run: options.dry_run,
    })
}

/// One statement for all rows. In `update` mode only rows whose values differ are touched, so
/// re-importing an unchanged file updates nothing, and a value the file leaves out (no such
/// column, or an empty cell) keeps what is stored: an import never erases.
async fn upsert(
    tx: &mut sqlx::PgConnection,
    rows: &[FacilityRow],
    on_duplicate: OnDuplicate,
    default_radius_m: i32,
) -> Result<(usize, usize), sqlx::Error> {
    let conflict = match on_duplicate {
        OnDuplicate::Skip => "ON CONFLICT (lower(code)) DO NOTHING",
        OnDuplicate::Update => {
            "ON CONFLICT (lower(code)) DO UPDATE SET
                 name = EXCLUDED.name, type = EXCLUDED.type, council_id = EXCLUDED.council_id,
                 latitude = EXCLUDED.latitude, longitude = EXCLUDED.longitude,
                 address = COALESCE(EXCLUDED.address, facilities.address),
                 contact_phone = COALESCE(EXCLUDED.contact_phone, facilities.contact_phone)
             WHERE (facilities.name, facilities.type, facilities.council_id, facilities.latitude,
                    facilities.longitude, facilities.address, facilities.contact_phone)
                   IS DISTINCT FROM
                   (EXCLUDED.name, EXCLUDED.type, EXCLUDED.council_id, EXCLUDED.latitude,
                    EXCLUDED.longitude, EXCLUDED.address, EXCLUDED.contact_phone)"
        }
    };
    let stored = match on_duplicate {
        OnDuplicate::Skip => HashMap::new(),
        OnDuplicate::Update => stored_details(tx, rows).await?,
    };
    let mut types = Vec::with_capacity(rows.len());
    let mut addresses = Vec::with_capacity(rows.len());
    let mut phones = Vec::with_capacity(rows.len());
    for row in rows {
        let kept = stored.get(&code_key(&row.code));
        types.push(
            row.facility_type
                .clone()
                .or_else(|| kept.map(|k| k.0.clone()))
                .unwrap_or_else(|| "health_center".into()),
        );
        addresses.push(row.address.clone().or_else(|| kept?.1.clone()));
        phones.push(row.contact_phone.clone().or_else(|| kept?.2.clone()));
    }
    let sql = format!(
        "INSERT INTO facilities (code, name, type, council_id, latitude, longitude, address, contact_phone,
                                 geofence_radius_m)
         SELECT u.*, $9::int FROM UNNEST($1::text[], $2::text[], $3::text[], $4::uuid[], $5::float8[],
                                        $6::float8[], $7::text[], $8::text[]) AS u
         {conflict}
         RETURNING xmax = 0 AS inserted"
    );
    let inserted: Vec<bool> = sqlx::query_scalar(&sql)
        .bind(rows.iter().map(|r| r.code.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.name.clone()).collect::<Vec<_>>())
        .bind(types)
        .bind(rows.iter().map(|r| r.council_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.point.latitude).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.point.longitude).collect::<Vec<_>>())
        .bind(addresses)
        .bind(phones)
        .bind(default_radius_m)
        .fetch_all(&mut *tx)
        .await?;
    let created = inserted.iter().filter(|&&i| i).count();
    Ok((created, inserted.len() - created))
}

/// The type, address and phone stored for the facilities a file names, by `code_key`, locked
/// until the import ends so that none changes under it. The lock is `NO KEY UPDATE`, which
/// clock-ins at those facilities (their foreign-key checks) do not wait for.
async fn stored_details(
    tx: &mut sqlx::PgConnection,
    rows: &[FacilityRow],
) -> Result<HashMap<String, (String, Option<String>, Option<String>)>, sqlx::Error> {
    let codes: Vec<&str> = rows.iter().map(|r| r.code.as_str()).collect();
    let stored: Vec<(String, String, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT code, type, address, contact_phone FROM facilities
         WHERE lower(code) IN (SELECT lower(c) FROM unnest($1::text[]) AS c)
         FOR NO KEY UPDATE",
    )
    .bind(codes)
    .fetch_all(&mut *tx)
    .await?;
    Ok(stored
        .into_iter()
        .map(|(code, kind, address, phone)| (code_key(&code), (kind, address, phone)))
        .collect())
}
