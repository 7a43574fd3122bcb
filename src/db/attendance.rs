//! Attendance records as the API shows them, and role-scoped queries.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgExecutor, PgPool, Postgres, QueryBuilder};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::db::users::push_scope_with_self;
use crate::domain::GeoPoint;

/// `open` until clocked out, then `closed`; `incomplete` for a forgotten clock-out, closed by
/// the service with no clock-out time or place, or pushed by a device with a clock-out later
/// than the longest shift allows (it keeps the clock-out sent). No hours count for `incomplete`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AttendanceStatus {
    Open,
    Closed,
    Incomplete,
}

impl AttendanceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AttendanceStatus::Open => "open",
            AttendanceStatus::Closed => "closed",
            AttendanceStatus::Incomplete => "incomplete",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Location {
    #[schema(example = -1.9456)]
    pub latitude: f64,
    #[schema(example = 30.127)]
    pub longitude: f64,
    /// GPS accuracy radius reported by the device, in metres.
    #[schema(example = 12.5)]
    #[schema(required = true)]
    pub accuracy_m: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct AttendanceRecord {
    pub id: Uuid,
    pub user_id: Uuid,
    pub facility_id: Uuid,
    #[schema(value_type = AttendanceStatus)]
    pub status: String,
    pub clock_in_at: DateTime<Utc>,
    #[schema(required = true)]
    pub clock_out_at: Option<DateTime<Utc>>,
    /// Seconds between clock-in and clock-out; null while open or when incomplete.
    #[schema(required = true)]
    pub duration_s: Option<i64>,
    pub clock_in_location: Location,
    #[schema(required = true)]
    pub clock_out_location: Option<Location>,
    /// Distance from the facility at clock-in, in metres.
    #[schema(required = true)]
    pub distance_m: Option<f64>,
    /// Clock-in (or clock-out) was outside the facility's geofence.
    pub outside_geofence: bool,
    #[schema(value_type = RecordSource)]
    pub source: String,
    #[schema(required = true)]
    pub device_id: Option<String>,
    #[schema(required = true)]
    pub client_timestamp: Option<DateTime<Utc>>,
    pub server_timestamp: DateTime<Utc>,
    pub sync_version: i32,
    #[schema(required = true)]
    pub notes: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When the server deleted the record: present only on a deleted one, as a push's answer
    /// gives it (a deletion applied or sent again, or an edit of a deleted record refused as a
    /// conflict): the device removes its copy.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub deleted_at: Option<DateTime<Utc>>,
}

/// How a record reached the server: `online` (clock-in and clock-out) or `sync` (pushed by a
/// device that was offline).
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RecordSource {
    Online,
    Sync,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AttendanceRow {
    pub id: Uuid,
    pub user_id: Uuid,
    pub facility_id: Uuid,
    pub status: String,
    pub clock_in_at: DateTime<Utc>,
    pub clock_out_at: Option<DateTime<Utc>>,
    pub clock_in_latitude: f64,
    pub clock_in_longitude: f64,
    pub clock_in_accuracy_m: Option<f64>,
    pub clock_out_latitude: Option<f64>,
    pub clock_out_longitude: Option<f64>,
    pub clock_out_accuracy_m: Option<f64>,
    pub distance_m: Option<f64>,
    pub outside_geofence: bool,
    pub source: String,
    pub device_id: Option<String>,
    pub client_timestamp: Option<DateTime<Utc>>,
    pub server_timestamp: DateTime<Utc>,
    pub sync_version: i32,
    pub notes: Option<String>,
    pub deleted_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<AttendanceRow> for AttendanceRecord {
    fn from(r: AttendanceRow) -> Self {
        let clock_out_location = match (r.clock_out_latitude, r.clock_out_longitude) {
            (Some(latitude), Some(longitude)) => Some(Location {
                latitude,
                longitude,
                accuracy_m: r.clock_out_accuracy_m,
            }),
            _ => None,
        };
        AttendanceRecord {
            duration_s: r
                .clock_out_at
                .filter(|_| r.status != "incomplete")
                .map(|out| (out - r.clock_in_at).num_seconds()),
            id: r.id,
            user_id: r.user_id,
            facility_id: r.facility_id,
            status: r.status,
            clock_in_at: r.clock_in_at,
            clock_out_at: r.clock_out_at,
            clock_in_location: Location {
                latitude: r.clock_in_latitude,
                longitude: r.clock_in_longitude,
                accuracy_m: r.clock_in_accuracy_m,
            },
            clock_out_location,
            distance_m: r.distance_m,
            outside_geofence: r.outside_geofence,
            source: r.source,
            device_id: r.device_id,
            client_timestamp: r.client_timestamp,
            server_timestamp: r.server_timestamp,
            sync_version: r.sync_version,
            notes: r.notes,
            created_at: r.created_at,
            updated_at: r.updated_at,
            deleted_at: r.deleted_at,
        }
    }
}

pub const COLUMNS: &str = "a.id, a.user_id, a.facility_id, a.status, a.clock_in_at, a.clock_out_at,
    a.clock_in_latitude, a.clock_in_longitude, a.clock_in_accuracy_m, a.clock_out_latitude,
    a.clock_out_longitude, a.clock_out_accuracy_m, a.distance_m, a.outside_geofence, a.source,
    a.device_id, a.client_timestamp, a.server_timestamp, a.sync_version, a.notes, a.deleted_at,
    a.created_at, a.updated_at";

pub async fn find<'e>(
    db: impl PgExecutor<'e>,
    id: Uuid,
) -> Result<Option<AttendanceRow>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM attendance a WHERE a.id = $1");
    sqlx::query_as(&sql).bind(id).fetch_optional(db).await
}

/// Closes the user's open records started before `before` as `incomplete` (a forgotten
/// clock-out), each with an `attendance.auto_close` audit row that has no actor; returns how
/// many. With no user, sweeps everyone. The version stays: this is no one's edit, so the
/// device's own clock-out, pushed later on the version it holds, is applied rather than lost as
/// a conflict (pulls still see the change).
pub async fn close_forgotten<'e>(
    db: impl PgExecutor<'e>,
    user_id: Option<Uuid>,
    before: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    // Two statements rather than `($1 IS NULL OR user_id = $1)`, which a cached generic plan
    // could not answer from the user's index.
    fn close(which: &str) -> String {
        format!(
            "WITH closed AS (
                 UPDATE attendance SET status = 'incomplete'
                 WHERE {which}
                 RETURNING id, user_id, clock_in_at
             ), audit AS ({})
             SELECT count(*) FROM closed",
            crate::audit::auto_close_audit("no clock-out within the maximum shift")
        )
    }
    const DUE: &str = "status = 'open' AND deleted_at IS NULL AND clock_in_at < $1";
    static ONE_USER: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| close(&format!("{DUE} AND user_id = $2")));
    // The sweep passes over a shift another session holds (a push of that user's, a session
    // left open in `psql`) until a later turn, rather than fail for every user on its account.
    static EVERYONE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        close(&format!(
            "id IN (SELECT id FROM attendance WHERE {DUE} FOR UPDATE SKIP LOCKED)"
        ))
    });
    let closed: i64 = match user_id {
        Some(user_id) => {
            sqlx::query_scalar(ONE_USER.as_str())
                .bind(before)
                .bind(user_id)
                .fetch_one(db)
                .await?
        }
        None => {
            sqlx::query_scalar(EVERYONE.as_str())
                .bind(before)
                .fetch_one(db)
                .await?
        }
    };
    Ok(closed as u64)
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AttendanceFilter {
    pub user_id: Option<Uuid>,
    pub facility_id: Option<Uuid>,
    /// Clock-in from this date (YYYY-MM-DD, in the service's time zone) or RFC 3339 instant.
    pub from: Option<String>,
    /// Clock-in up to this date (inclusive) or RFC 3339 instant (exclusive).
    pub to: Option<String>,
    pub status: Option<AttendanceStatus>,
    #[param(minimum = 1, maximum = 100000, default = 1)]
    pub page: Option<u32>,
    #[param(minimum = 1, maximum = 100, default = 50)]
    pub per_page: Option<u32>,
}

/// The latest-ending closed shift of `user_id` that ends more than `tolerance` after `at` (a
/// phone's clock may run that far behind the server's), as its start and end: a shift opened at
/// `at` and open until now would overlap it, whether `at` falls inside it or before it. The
/// shift a retried request began itself (same `client_id`, or the same device's tap at `at`) is
/// not counted.
pub async fn worked_shift_at<'e>(
    db: impl PgExecutor<'e>,
    user_id: Uuid,
    at: DateTime<Utc>,
    tolerance: std::time::Duration,
    client_id: Option<&str>,
    device_id: Option<&str>,
) -> Result<Option<(DateTime<Utc>, DateTime<Utc>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT clock_in_at, clock_out_at FROM attendance
         WHERE user_id = $1 AND deleted_at IS NULL AND status = 'closed'
           AND clock_out_at > $2 + $5
           AND ($3::text IS NULL OR client_id IS DISTINCT FROM $3)
           AND ($4::text IS NULL OR (device_id, client_timestamp) IS DISTINCT FROM ($4, $2))
         ORDER BY clock_out_at DESC LIMIT 1",
    )
    .bind(user_id)
    .bind(at)
    .bind(client_id)
    .bind(device_id)
    .bind(chrono::Duration::from_std(tolerance).unwrap_or_default())
    .fetch_optional(db)
    .await
}

/// The record a user's clock-in with this `client_id` made.
pub async fn by_client_id<'e>(
    db: impl PgExecutor<'e>,
    user_id: Uuid,
    client_id: &str,
) -> Result<Option<AttendanceRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM attendance a WHERE a.user_id = $1 AND a.client_id = $2"
    ))
    .bind(user_id)
    .bind(client_id)
    .fetch_optional(db)
    .await
}

/// A user's latest shift, and whether a clock-out from exactly this spot closed it just now.
#[derive(sqlx::FromRow)]
pub struct LatestShift {
    #[sqlx(flatten)]
    pub row: AttendanceRow,
    /// A clock-out from exactly this spot (the coordinates and accuracy as the phone reported
    /// them, to the last digit) and with these notes, if any (kept after the clock-in's), and at
    /// this time, if one was sent (within the clock difference allowed, which may have moved
    /// it), closed it within `within` (by its audit row, which a later edit of the shift leaves
    /// alone): the same clock-out sent again because its answer was lost, or because the
    /// service answered 503. One shift cannot be closed twice, so such a repeat can only be that
    /// clock-out.
    pub repeated: bool,
    /// The shift's change stamp (see `db::clock_outs`).
    pub change_xid: String,
}

/// A clock-out as its phone sent it, to tell it when it comes again (see [`LatestShift`]).
#[derive(Clone, Copy)]
pub struct SentClockOut<'a> {
    pub point: GeoPoint,
    pub accuracy_m: Option<f64>,
    pub notes: Option<&'a str>,
    /// Its `occurred_at`, when it sent one.
    pub at: Option<DateTime<Utc>>,
    /// How far the stored time may be from `at` (the clock difference allowed).
    pub tolerance: std::time::Duration,
}

/// The user's latest shift (see [`LatestShift`]); with `before`, the shift that began before it
/// and was closed in the last `within` by a clock-out that sent the time `at` (to the
/// microsecond).
pub async fn latest_shift<'e>(
    db: impl PgExecutor<'e>,
    user_id: Uuid,
    sent: SentClockOut<'_>,
    within: std::time::Duration,
    before: Option<DateTime<Utc>>,
) -> Result<Option<LatestShift>, sqlx::Error> {
    let shift = if before.is_some() {
        // Found by the user's own audit rows of the last `within`, however long their history.
        "SELECT l.entity_id FROM activities l JOIN attendance s ON s.id = l.entity_id
         WHERE l.actor_id = $1 AND l.action = 'attendance.clock_out'
           AND l.created_at > now() - $6
           AND (l.details ->> 'sent_at')::timestamptz = $7::timestamptz
           AND s.user_id = $1 AND s.deleted_at IS NULL AND s.clock_in_at < $9
         ORDER BY l.created_at DESC LIMIT 1"
    } else {
        // `$9` (null here) is named so that both statements take the same nine values.
        "SELECT id FROM attendance WHERE user_id = $1 AND deleted_at IS NULL
           AND $9::timestamptz IS NULL
         ORDER BY clock_in_at DESC LIMIT 1"
    };
    sqlx::query_as(&format!(
        "SELECT {COLUMNS},
                coalesce(a.status = 'closed' AND a.clock_out_latitude = $2
                  AND a.clock_out_longitude = $3
                  AND a.clock_out_accuracy_m IS NOT DISTINCT FROM $4
                  AND ($5::text IS NULL OR right(a.notes, length($5)) = $5)
                  AND ($7::timestamptz IS NULL
                       OR a.clock_out_at BETWEEN $7::timestamptz - $8 AND $7::timestamptz + $8)
                  AND EXISTS (SELECT 1 FROM activities l
                              WHERE l.entity_type = 'attendance' AND l.entity_id = a.id
                                AND l.action = 'attendance.clock_out'
                                AND l.created_at > now() - $6), false) AS repeated,
                a.change_xid::text AS change_xid
         FROM attendance a
         WHERE a.id = ({shift})"
    ))
    .bind(user_id)
    .bind(sent.point.latitude)
    .bind(sent.point.longitude)
    .bind(sent.accuracy_m)
    .bind(sent.notes)
    .bind(chrono::Duration::from_std(within).unwrap_or_default())
    .bind(sent.at)
    .bind(chrono::Duration::from_std(sent.tolerance).unwrap_or_default())
    .bind(before)
    .fetch_optional(db)
    .await
}

/// The record a user's device made with this timestamp.
pub async fn by_device_timestamp<'e>(
    db: impl PgExecutor<'e>,
    user_id: Uuid,
    device_id: &str,
    at: DateTime<Utc>,
) -> Result<Option<AttendanceRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM attendance a
         WHERE a.device_id = $1 AND a.client_timestamp = $2 AND a.user_id = $3"
    ))
    .bind(device_id)
    .bind(at)
    .bind(user_id)
    .fetch_optional(db)
    .await
}

/// `WHERE` clauses shared by lists, exports and summaries: the viewer's scope (their own
/// records and their tree's) and the filters.
pub fn push_filters(
    qb: &mut QueryBuilder<'_, Postgres>,
    viewer: &AuthUser,
    user_id: Option<Uuid>,
    facility_id: Option<Uuid>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
) {
    qb.push(" WHERE a.deleted_at IS NULL");
    push_scope_with_self(qb, viewer, "a.user_id");
    if let Some(id) = user_id {
        qb.push(" AND a.user_id = ").push_bind(id);
    }
    if let Some(id) = facility_id {
        qb.push(" AND a.facility_id = ").push_bind(id);
    }
    if let Some(from) = from {
        qb.push(" AND a.clock_in_at >= ").push_bind(from);
    }
    if let Some(to) = to {
        qb.push(" AND a.clock_in_at < ").push_bind(to);
    }
}

pub async fn list(
    db: &PgPool,
    viewer: &AuthUser,
    filter: &AttendanceFilter,
    (from, to): (Option<DateTime<Utc>>, Option<DateTime<Utc>>),
    limit: i64,
    offset: i64,
) -> Result<(Vec<AttendanceRecord>, i64), sqlx::Error> {
    let matching = |qb: &mut QueryBuilder<'_, sqlx::Postgres>| {
        push_filters(qb, viewer, filter.user_id, filter.facility_id, from, to);
        if let Some(status) = filter.status {
            qb.push(" AND a.status = ").push_bind(status.as_str());
        }
    };
    let mut qb = QueryBuilder::new(format!("SELECT {COLUMNS} FROM attendance a"));
    matching(&mut qb);
    qb.push(" ORDER BY a.clock_in_at DESC, a.id LIMIT ")
        .push_bind(limit)
        .push(" OFFSET ")
        .push_bind(offset);
    let rows: Vec<AttendanceRow> = qb.build_query_as().fetch_all(db).await?;
    let total = super::page_total(rows.len(), limit, offset, async || {
        let mut qb = QueryBuilder::new("SELECT count(*) FROM attendance a");
        matching(&mut qb);
        qb.build_query_scalar().fetch_one(db).await
    })
    .await?;
    Ok((
        rows.into_iter().map(AttendanceRecord::from).collect(),
        total,
    ))
}
