//! Attendance as a streamed CSV or XLSX file.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use futures::StreamExt;
use serde::Deserialize;
use sqlx::pool::PoolConnection;
use sqlx::{Postgres, QueryBuilder};
use tracing::Instrument;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::parse_tz;
use crate::auth::{AuthUser, SupervisingUser};
use crate::db::attendance::push_filters;
use crate::domain::attendance::neutralise_cell;
use crate::error::{ApiError, ErrorEnvelope};
use crate::extract::Query;
use crate::routes::{XLSX_TYPE, period};
use crate::state::AppState;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(export))
}

#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExportFormat {
    #[default]
    Csv,
    Xlsx,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    /// `csv` (default) or `xlsx`.
    #[param(inline, default = "csv")]
    pub format: Option<ExportFormat>,
    /// A date (YYYY-MM-DD, in the time zone) or an RFC 3339 instant.
    pub from: Option<String>,
    /// A date (inclusive) or an RFC 3339 instant (exclusive).
    pub to: Option<String>,
    pub facility_id: Option<Uuid>,
    pub user_id: Option<Uuid>,
    /// IANA time zone for the times in the file; default the service's (`APP_TIMEZONE`).
    pub tz: Option<String>,
}

#[derive(sqlx::FromRow)]
struct ExportRow {
    id: Uuid,
    email: String,
    first_name: String,
    last_name: String,
    employee_id: Option<String>,
    facility_code: String,
    facility_name: String,
    status: String,
    clock_in_at: DateTime<Utc>,
    clock_out_at: Option<DateTime<Utc>>,
    distance_m: Option<f64>,
    outside_geofence: bool,
    source: String,
    notes: Option<String>,
}

const EXPORT_HEADERS: [&str; 15] = [
    "record_id",
    "email",
    "first_name",
    "last_name",
    "employee_id",
    "facility_code",
    "facility_name",
    "status",
    "clock_in",
    "clock_out",
    "hours",
    "distance_m",
    "outside_geofence",
    "source",
    "notes",
];

impl ExportRow {
    /// The cells of one line, in local time. In CSV, formula starters are neutralised (a
    /// spreadsheet opening it would run them); a workbook's text cells never run, and keep the
    /// text as written.
    fn cells(&self, tz: Tz, neutralise: bool) -> Vec<String> {
        let local = |t: DateTime<Utc>| t.with_timezone(&tz).format("%Y-%m-%d %H:%M:%S").to_string();
        // As the API's `duration_s`: a shift closed as incomplete (longer than a shift may be)
        // keeps its clock-out time but counts no hours.
        let hours = self
            .clock_out_at
            .filter(|_| self.status != "incomplete")
            .map(|out| {
                format!(
                    "{:.2}",
                    (out - self.clock_in_at).num_seconds() as f64 / 3600.0
                )
            })
            .unwrap_or_default();
        [
            self.id.to_string(),
            self.email.clone(),
            self.first_name.clone(),
            self.last_name.clone(),
            self.employee_id.clone().unwrap_or_default(),
            self.facility_code.clone(),
            self.facility_name.clone(),
            self.status.clone(),
            local(self.clock_in_at),
            self.clock_out_at.map(local).unwrap_or_default(),
            hours,
            self.distance_m
                .map(|d| format!("{d:.0}"))
                .unwrap_or_default(),
            self.outside_geofence.to_string(),
            self.source.clone(),
            self.notes.clone().unwrap_or_default(),
        ]
        .into_iter()
        .map(|c| {
            if neutralise {
                neutralise_cell(&c).into_owned()
            } else {
                c
            }
        })
        .collect()
    }
}

impl ExportRow {
    /// One worksheet line: times, hours, distance and the geofence flag as values a spreadsheet
    /// can sum, sort and filter; everything else as text (which a spreadsheet never runs).
    fn write_xlsx(
        &self,
        sheet: &mut rust_xlsxwriter::Worksheet,
        r: u32,
        tz: Tz,
        time_format: &rust_xlsxwriter::Format,
    ) -> Result<(), rust_xlsxwriter::XlsxError> {
        use chrono::{Datelike, Timelike};
        // Excel's calendar starts in 1900; a time it cannot hold stays text.
        let excel_time = |t: DateTime<Utc>| {
            let t = t.with_timezone(&tz).naive_local();
            let year = u16::try_from(t.year()).ok()?;
            rust_xlsxwriter::ExcelDateTime::from_ymd(year, t.month() as u8, t.day() as u8)
                .and_then(|d| d.and_hms(t.hour() as u16, t.minute() as u8, t.second()))
                .ok()
        };
        for (c, text) in self.cells(tz, false).into_iter().enumerate() {
            let col = c as u16;
            let time = match EXPORT_HEADERS[c] {
                "clock_in" => Some(self.clock_in_at),
                "clock_out" => self.clock_out_at,
                _ => None,
            };
            match (EXPORT_HEADERS[c], time.and_then(excel_time)) {
                (_, Some(t)) => sheet.write_datetime_with_format(r, col, &t, time_format)?,
                ("hours" | "distance_m", _) if !text.is_empty() => match text.parse::<f64>() {
                    Ok(n) => sheet.write_number(r, col, n)?,
                    Err(_) => sheet.write_string(r, col, &text)?,
                },
                ("outside_geofence", _) => sheet.write_boolean(r, col, self.outside_geofence)?,
                _ if text.is_empty() => sheet,
                _ => sheet.write_string(r, col, &text)?,
            };
        }
        Ok(())
    }
}

/// One export's reader, filters and time zone.
struct Export {
    /// Taken before the response begins: a service that cannot reach its database answers 503,
    /// not a 200 whose body then breaks.
    conn: PoolConnection<Postgres>,
    viewer: AuthUser,
    q: ExportQuery,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    tz: Tz,
}

impl Export {
    /// The export query, scoped and filtered, oldest first.
    fn query<'a>(&self) -> QueryBuilder<'a, sqlx::Postgres> {
        let mut qb = QueryBuilder::new(
            "SELECT a.id, u.email, u.first_name, u.last_name, u.employee_id,
                    f.code AS facility_code, f.name AS facility_name, a.status, a.clock_in_at,
                    a.clock_out_at, a.distance_m, a.outside_geofence, a.source, a.notes
             FROM attendance a JOIN users u ON u.id = a.user_id
                  JOIN facilities f ON f.id = a.facility_id",
        );
        let q = &self.q;
        push_filters(
            &mut qb,
            &self.viewer,
            q.user_id,
            q.facility_id,
            self.from,
            self.to,
        );
        qb.push(" ORDER BY a.clock_in_at, a.id");
        qb
    }
}

/// The bytes of an exported file: binary, as an XLSX is a zip archive (a client reading it as
/// text would garble it).
pub struct ExportFile;

impl utoipa::PartialSchema for ExportFile {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .into()
    }
}

impl ToSchema for ExportFile {}

/// Attendance as a CSV or XLSX file (supervisor and above, over their tree).
///
/// A CSV is sent as its rows come from the database; times are in the chosen time zone; in a CSV,
/// cells that a spreadsheet would run as formulas are prefixed with an apostrophe (a workbook's
/// text cells are never run).
#[utoipa::path(get, path = "/attendance/export", tag = "reports", security(("bearer" = [])), params(ExportQuery),
    responses(
        (status = 200, description = "The file", content(
            (ExportFile = "text/csv"),
            (ExportFile = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
        ), headers(
            ("Content-Disposition" = String, description = "`attachment; filename=\"attendance-YYYYMMDD-HHMM.csv\"` (or `.xlsx`), stamped in the report's time zone"),
        )),
        (status = 400, description = "Bad query string", body = ErrorEnvelope),
        (status = 403, description = "Field roles may not export", body = ErrorEnvelope),
        (status = 422, description = "Bad dates or time zone, or a period out of range or reversed, or an XLSX export of more records than a sheet holds (1,048,575; export CSV or a shorter period)", body = ErrorEnvelope),
        (status = 503, description = "The database is unreachable or the request timed out, or as many exports as the service runs at once are running (`unavailable`, with Retry-After); retry later", body = ErrorEnvelope),
    ))]
async fn export(
    State(state): State<AppState>,
    user: SupervisingUser,
    Query(q): Query<ExportQuery>,
) -> Result<Response, ApiError> {
    let tz = parse_tz(q.tz.as_deref(), &state)?;
    let (from, to) = period::parse(q.from.as_deref(), q.to.as_deref(), tz)?;
    let format = q.format.unwrap_or_default();
    let slot = state
        .exports
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::Busy {
            message: "as many exports as the service runs at once are running; try again shortly"
                .into(),
            retry_after_s: 10,
        })?;
    let stamp = Utc::now().with_timezone(&tz).format("%Y%m%d-%H%M");
    let job = Export {
        conn: state.db.acquire().await?,
        viewer: user.into_inner(),
        q,
        from,
        to,
        tz,
    };
    match format {
        ExportFormat::Csv => {
            let stall = state.config.request_timeout;
            let body = csv_spool(job, stall, slot).await?;
            Ok((
                [
                    (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
                    (
                        header::CONTENT_DISPOSITION,
                        format!("attachment; filename=\"attendance-{stamp}.csv\""),
                    ),
                ],
                body,
            )
                .into_response())
        }
        ExportFormat::Xlsx => {
            let (file, slot) = xlsx_task(job, slot).await?;
            let body = file_body(file, state.config.request_timeout, slot);
            Ok((
                [
                    (header::CONTENT_TYPE, XLSX_TYPE.to_string()),
                    (
                        header::CONTENT_DISPOSITION,
                        format!("attachment; filename=\"attendance-{stamp}.xlsx\""),
                    ),
                ],
                body,
            )
                .into_response())
        }
    }
}

/// CSV written as rows arrive from the database, in chunks of about 64 KiB, to a temporary file
/// that is sent as it grows: memory stays flat however many records there are, and the
/// database connection (with its snapshot, which holds back vacuum) is let go as soon as the
/// query has sent its rows, however slowly the client reads. The export's turn (`slot`) is
/// held until the download ends, so that files waiting on slow clients are as few as the turns.
/// A client that takes nothing for `stall` (the request timeout) is cut off, and one gone stops
/// the query.
async fn csv_spool(
    job: Export,
    stall: std::time::Duration,
    slot: tokio::sync::OwnedSemaphorePermit,
) -> Result<Body, ApiError> {
    let file = tempfile::tempfile().map_err(anyhow::Error::from)?;
    let sent = file.try_clone().map_err(anyhow::Error::from)?;
    let (progress, written) = tokio::sync::watch::channel(Spooled::default());
    let (begun, answer) = tokio::sync::oneshot::channel::<Result<(), sqlx::Error>>();
    // The turn is given back when both the query and the download have ended: a download cut
    // off while rows still come does not free it before the query's connection is closed.
    let slot = Arc::new(slot);
    let query_slot = slot.clone();
    tokio::spawn(
        async move {
            let mut job = job;
            let whole = write_csv(&mut job, begun, file, &progress).await;
            if whole {
                drop(job);
            } else {
                // Stopped partway: the query, which may still be sending rows, would keep the
                // connection busy. Closed, it stops.
                let _ = job.conn.close().await;
            }
            // Before the download may end, so that the next export finds the turn free.
            drop(query_slot);
            progress.send_modify(|p| p.end = Some(whole));
        }
        .in_current_span(),
    );
    answer
        .await
        .map_err(|_| anyhow::anyhow!("the export stopped before its query answered"))??;
    Ok(spooled_body(sent, written, stall, slot))
}

/// How much of a spooled file is written, and whether it ended (whole, or broken).
#[derive(Debug, Clone, Copy, Default)]
struct Spooled {
    written: u64,
    end: Option<bool>,
}

/// A body of the chunks `rx` brings. A cut-off export (`cut`) ends in an error, so the client
/// sees a broken download rather than a short file that looks whole. Fused: the compression
/// layer may poll once more after the end.
fn chunks_body(
    rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>, std::io::Error>>,
    cut: Arc<AtomicBool>,
) -> Body {
    Body::from_stream(
        futures::stream::unfold(Some(rx), move |rx| {
            let cut = cut.clone();
            async move {
                let mut rx = rx?;
                match rx.recv().await {
                    Some(item) => Some((item, Some(rx))),
                    None if cut.load(Ordering::Acquire) => {
                        Some((Err(std::io::Error::other("export cut off")), None))
                    }
                    None => None,
                }
            }
        })
        .fuse(),
    )
}

/// A written workbook, sent in chunks of 64 KiB, as a spooled CSV is.
fn file_body(
    file: std::fs::File,
    stall: std::time::Duration,
    slot: tokio::sync::OwnedSemaphorePermit,
) -> Body {
    let slot = Arc::new(slot);
    let written = file.metadata().map(|m| m.len());
    let (_, progress) = tokio::sync::watch::channel(Spooled {
        written: *written.as_ref().unwrap_or(&0),
        end: Some(written.is_ok()),
    });
    spooled_body(file, progress, stall, slot)
}

/// The file as far as `progress` says it is written, sent in chunks of 64 KiB as it grows: a
/// client that takes nothing for `stall` (the request timeout) is cut off rather than hold the
/// file (and the export's turn, `slot`) for good, and the download of a file whose writing broke
/// ends broken.
fn spooled_body(
    file: std::fs::File,
    mut progress: tokio::sync::watch::Receiver<Spooled>,
    stall: std::time::Duration,
    slot: Arc<tokio::sync::OwnedSemaphorePermit>,
) -> Body {
    use std::os::unix::fs::FileExt;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(8);
    let cut = Arc::new(AtomicBool::new(false));
    let cut_off = cut.clone();
    let file = Arc::new(file);
    tokio::spawn(
        async move {
            let mut offset = 0u64;
            let whole = loop {
                let Spooled { written, end } = *progress.borrow_and_update();
                if offset < written {
                    let len = (written - offset).min(64 * 1024) as usize;
                    let file = file.clone();
                    // Read at the offset, not through the file's cursor, which the writer moves.
                    let read = tokio::task::spawn_blocking(move || {
                        let mut chunk = vec![0; len];
                        file.read_exact_at(&mut chunk, offset).map(|()| chunk)
                    })
                    .await
                    .map_err(std::io::Error::other)
                    .and_then(|read| read);
                    let chunk = match read {
                        Ok(chunk) => chunk,
                        Err(e) => {
                            tracing::error!(error = %e, "the export's file could not be read back");
                            break false;
                        }
                    };
                    if !deliver(&tx, chunk, stall).await {
                        break false;
                    }
                    offset += len as u64;
                    continue;
                }
                match end {
                    Some(whole) => break whole,
                    None if progress.changed().await.is_err() => break false,
                    None => {}
                }
            };
            if !whole {
                cut_off.store(true, Ordering::Release);
            }
            // Given back before the client sees the end: the next export finds it free.
            drop(slot);
            drop(tx);
        }
        .in_current_span(),
    );
    chunks_body(rx, cut)
}

/// Writes the export's rows to `file` as CSV, telling `progress` how far it has written; whether
/// it wrote them all. Tells `begun` once the query has answered (or failed), before anything is
/// sent. Stops when the download has ended (its client gone, or cut off).
async fn write_csv(
    job: &mut Export,
    mut begun: tokio::sync::oneshot::Sender<Result<(), sqlx::Error>>,
    file: std::fs::File,
    progress: &tokio::sync::watch::Sender<Spooled>,
) -> bool {
    use tokio::io::AsyncWriteExt;
    let mut qb = job.query();
    let mut rows = qb.build_query_as::<ExportRow>().fetch(&mut *job.conn);
    // The response begins once the query answers: a database that cannot is a 503, not a 200
    // whose body then breaks. A request gone meanwhile (timed out, or its client left) gives
    // back its connection and its turn at once.
    let first = tokio::select! {
        first = rows.next() => first,
        () = begun.closed() => return false,
    };
    let mut row = match first {
        Some(Err(e)) => {
            let _ = begun.send(Err(e));
            return false;
        }
        first => {
            let _ = begun.send(Ok(()));
            first
        }
    };
    let mut file = tokio::fs::File::from_std(file);
    let mut written = 0u64;
    let mut spool = async |chunk: Vec<u8>| -> bool {
        if progress.is_closed() {
            return false;
        }
        if let Err(e) = file.write_all(&chunk).await.and(file.flush().await) {
            tracing::error!(error = %e, "the export's file could not be written");
            return false;
        }
        written += chunk.len() as u64;
        progress.send_modify(|p| p.written = written);
        true
    };
    // A byte-order mark first: without one, Excel reads UTF-8 as the system's code page and
    // garbles accented names.
    let mut first = Vec::with_capacity(80 * 1024);
    first.extend_from_slice("\u{FEFF}".as_bytes());
    let mut writer = csv::Writer::from_writer(first);
    let _ = writer.write_record(EXPORT_HEADERS);
    while let Some(next) = row {
        let next = match next {
            Ok(next) => next,
            Err(e) => {
                tracing::error!(error = %e, "export query failed mid-stream");
                return false;
            }
        };
        let _ = writer.write_record(next.cells(job.tz, true));
        if writer.get_ref().len() >= 64 * 1024 {
            let full = std::mem::replace(
                &mut writer,
                csv::Writer::from_writer(Vec::with_capacity(80 * 1024)),
            );
            let Ok(chunk) = full.into_inner() else {
                return false;
            };
            if !spool(chunk).await {
                return false;
            }
        }
        row = rows.next().await;
    }
    match writer.into_inner() {
        Ok(rest) => rest.is_empty() || spool(rest).await,
        Err(_) => false,
    }
}

/// Hands a chunk to the response; false when the client went away, or took nothing for `stall`.
async fn deliver(
    tx: &tokio::sync::mpsc::Sender<Result<Vec<u8>, std::io::Error>>,
    chunk: Vec<u8>,
    stall: std::time::Duration,
) -> bool {
    match tokio::time::timeout(stall, tx.send(Ok(chunk))).await {
        Ok(sent) => sent.is_ok(),
        Err(_) => {
            tracing::warn!("export cut off: the client took nothing for {stall:?}");
            false
        }
    }
}

/// XLSX in constant-memory mode (rows go to a temporary file as they are written), so the
/// worksheet is never held in memory; the finished file is then streamed.
/// A worksheet's rows (1,048,576) less the header.
const XLSX_MAX_RECORDS: u32 = 1_048_575;

/// Writes the workbook in a task of its own, which holds the export's turn until the file is
/// written, and then hands it on with the file (to its download). A request gone meanwhile
/// (timed out, or its client left) stops it: its query is cut off and its connection closed
/// rather than given back to the pool with rows still coming.
async fn xlsx_task(
    mut job: Export,
    slot: tokio::sync::OwnedSemaphorePermit,
) -> Result<(std::fs::File, tokio::sync::OwnedSemaphorePermit), ApiError> {
    let (mut done, answer) = tokio::sync::oneshot::channel();
    tokio::spawn(
        async move {
            let written = tokio::select! {
                written = xlsx_file(&mut job) => Some(written),
                () = done.closed() => None,
            };
            if matches!(written, Some(Ok(_))) {
                drop(job);
            } else {
                let _ = job.conn.close().await;
            }
            if let Some(written) = written {
                let _ = done.send(written.map(|file| (file, slot)));
            }
        }
        .in_current_span(),
    );
    answer
        .await
        .map_err(|_| anyhow::anyhow!("the export stopped before its file was written"))?
}

async fn xlsx_file(job: &mut Export) -> Result<std::fs::File, ApiError> {
    let tz = job.tz;
    // Rows, then `None` once the last is sent: a channel closed before that is an export
    // abandoned (refused, timed out, its client gone), whose workbook is not worth finishing.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Option<ExportRow>>(1024);
    let writer = tokio::task::spawn_blocking(move || -> anyhow::Result<std::fs::File> {
        let mut workbook = rust_xlsxwriter::Workbook::new();
        let sheet = workbook.add_worksheet_with_constant_memory();
        sheet.set_name("Attendance")?;
        for (c, h) in EXPORT_HEADERS.iter().enumerate() {
            sheet.write_string(0, c as u16, *h)?;
        }
        let time_format = rust_xlsxwriter::Format::new().set_num_format("yyyy-mm-dd hh:mm:ss");
        let mut r = 1u32;
        loop {
            match rx.blocking_recv() {
                Some(Some(row)) => row.write_xlsx(sheet, r, tz, &time_format)?,
                Some(None) => break,
                None => anyhow::bail!("the export was abandoned before its last row"),
            }
            r += 1;
        }
        let mut file = tempfile::tempfile()?;
        workbook.save_to_writer(&mut file)?;
        file.flush()?;
        use std::io::Seek;
        file.rewind()?;
        Ok(file)
    });
    let mut qb = job.query();
    let mut rows = qb.build_query_as::<ExportRow>().fetch(&mut *job.conn);
    let mut written = 0u32;
    while let Some(row) = rows.next().await {
        let row = row?;
        written += 1;
        if written > XLSX_MAX_RECORDS {
            return Err(ApiError::invalid(
                "format",
                format!(
                    "more than {XLSX_MAX_RECORDS} records, the most a worksheet holds: export CSV, \
                     or a shorter period"
                ),
            ));
        }
        // A bounded channel: the database is read no faster than the sheet is written. One
        // that takes no more has stopped on an error, which it answers with below.
        if tx.send(Some(row)).await.is_err() {
            break;
        }
    }
    let _ = tx.send(None).await;
    Ok(writer.await.map_err(anyhow::Error::from)??)
}
