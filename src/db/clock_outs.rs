//! Open shifts and their closing: one alone, or many that come together in one statement (see
//! [`crate::db::coalesce`]).
//!
//! Clock-out reads the open shift (or the latest, closed as incomplete), then closes it on condition that it is unchanged since
//! (`change_xid`, stamped by trigger on every update): a concurrent change (a sync push, another
//! clock-out) makes the close match nothing, and the shift is read again. No transaction is held
//! in between, so both steps can be shared with other users' clock-outs.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock};

use chrono::{DateTime, SubsecRound, Utc};
use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::audit::audit_cte;
use crate::db::attendance::{self as records, AttendanceRow};
use crate::db::coalesce::Batch;
use crate::domain::GeoPoint;

/// A user's open shift and its change stamp.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OpenShift {
    #[sqlx(flatten)]
    pub row: AttendanceRow,
    pub change_xid: String,
}

/// The open shift of each user of `$1`, read through the one-open-shift index.
static OPEN_SHIFTS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {}, a.change_xid::text AS change_xid FROM attendance a
         WHERE a.user_id = ANY($1) AND a.status = 'open' AND a.deleted_at IS NULL",
        records::COLUMNS
    )
});

/// The user's open shift, read alone.
pub async fn open_shift(db: &PgPool, user_id: Uuid) -> Result<Option<OpenShift>, sqlx::Error> {
    sqlx::query_as(OPEN_SHIFTS.as_str())
        .bind([user_id])
        .fetch_optional(db)
        .await
}

/// A shift of the user closed as incomplete with no clock-out, read by id with its change stamp:
/// one a clock-out was about to close when a clock-in closed it (see `routes::attendance`).
pub async fn closed_incomplete(
    db: &PgPool,
    user_id: Uuid,
    id: Uuid,
) -> Result<Option<OpenShift>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {}, a.change_xid::text AS change_xid FROM attendance a
         WHERE a.id = $1 AND a.user_id = $2 AND a.status = 'incomplete'
           AND a.clock_out_at IS NULL AND a.deleted_at IS NULL",
        records::COLUMNS
    ))
    .bind(id)
    .bind(user_id)
    .fetch_optional(db)
    .await
}

/// Open shifts read together, by user id.
pub struct OpenShifts;

impl Batch for OpenShifts {
    type Item = Uuid;
    type Output = Option<OpenShift>;
    const NAME: &'static str = "open_shift";
    const WRITES: bool = false;

    async fn run(
        &self,
        conn: &mut PgConnection,
        users: &[Uuid],
    ) -> Result<Vec<Option<OpenShift>>, sqlx::Error> {
        let found: Vec<OpenShift> = sqlx::query_as(OPEN_SHIFTS.as_str())
            .bind(users)
            .fetch_all(conn)
            .await?;
        let by_user: HashMap<Uuid, OpenShift> =
            found.into_iter().map(|s| (s.row.user_id, s)).collect();
        Ok(users.iter().map(|u| by_user.get(u).cloned()).collect())
    }
}

/// A clock-out, checked and measured against the shift it closes.
#[derive(Debug, Clone)]
pub struct CloseShift {
    pub id: Uuid,
    /// The shift's change stamp when it was read.
    pub change_xid: String,
    pub user_id: Uuid,
    pub email: String,
    pub occurred_at: DateTime<Utc>,
    /// The time the phone sent, if any (kept in the audit row, to tell this clock-out when it
    /// is sent again: the shift's own time may have been moved to the clock-in, or to now).
    pub sent_at: Option<DateTime<Utc>>,
    pub point: GeoPoint,
    pub accuracy_m: Option<f64>,
    pub distance: f64,
    pub outside: bool,
    pub notes: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

impl CloseShift {
    fn details(&self) -> Value {
        json!({
            "distance_m": self.distance.round(),
            "outside_geofence": self.outside,
            // To the microsecond, as Postgres compares it with the time a repeat sends.
            "sent_at": self.sent_at.map(|t| t.trunc_subsecs(6)),
        })
    }

    /// Closes the shift alone, with its audit row, in one statement. None when the shift
    /// changed since it was read.
    pub async fn close(&self, db: &PgPool) -> Result<Option<AttendanceRow>, sqlx::Error> {
        Ok(close(db, &[self]).await?.pop())
    }
}

/// Shifts closed together: each answered with its closed record, or None when the shift changed
/// since it was read, or another clock-out of the same batch closes it.
pub struct ShiftCloses;

impl Batch for ShiftCloses {
    type Item = Arc<CloseShift>;
    type Output = Option<AttendanceRow>;
    const NAME: &'static str = "clock_out";
    const WRITES: bool = true;

    async fn run(
        &self,
        conn: &mut PgConnection,
        items: &[Arc<CloseShift>],
    ) -> Result<Vec<Option<AttendanceRow>>, sqlx::Error> {
        // An UPDATE … FROM joining one row to two sources applies one of them, unpredictably:
        // the first clock-out of a shift goes, the others read it again.
        let mut shifts = HashSet::new();
        let first: Vec<bool> = items.iter().map(|c| shifts.insert(c.id)).collect();
        let mut closes: Vec<&CloseShift> = items
            .iter()
            .zip(&first)
            .filter(|(_, first)| **first)
            .map(|(c, _)| c.as_ref())
            .collect();
        // Locked in id order: two batches that hold the same shifts wait for each other in one
        // order, never in a cycle.
        closes.sort_by_key(|c| c.id);
        let mut closed: HashMap<Uuid, AttendanceRow> = close(conn, &closes)
            .await?
            .into_iter()
            .map(|r| (r.id, r))
            .collect();
        Ok(items
            .iter()
            .zip(first)
            .map(|(c, first)| first.then(|| closed.remove(&c.id)).flatten())
            .collect())
    }
}

/// The shifts and their audit rows in one statement; a shift whose stamp moved is left alone
/// and not returned. The update names the rows by id alone: a `status = 'open'` condition would
/// let the planner pick the one-open-shift index, whose size it misjudges while statistics
/// predate the day's clock-ins, and read every open shift to find these.
async fn close<'e>(
    db: impl sqlx::PgExecutor<'e>,
    closes: &[&CloseShift],
) -> Result<Vec<AttendanceRow>, sqlx::Error> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "WITH c AS (
                 SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::timestamptz[], $4::float8[],
                                      $5::float8[], $6::float8[], $7::float8[], $8::bool[],
                                      $9::text[], $10::uuid[], $11::text[], $12::jsonb[],
                                      $13::text[], $14::text[])
                     AS c (id, change_xid, clock_out_at, latitude, longitude, accuracy_m,
                           distance_m, outside, notes, user_id, email, details, ip, user_agent)
             ), a AS (
                 UPDATE attendance t SET status = 'closed', clock_out_at = c.clock_out_at,
                        clock_out_latitude = c.latitude, clock_out_longitude = c.longitude,
                        clock_out_accuracy_m = c.accuracy_m, clock_out_distance_m = c.distance_m,
                        outside_geofence = t.outside_geofence OR c.outside,
                        notes = CASE WHEN c.notes IS NULL OR c.notes = t.notes THEN t.notes
                                     WHEN t.notes IS NULL THEN c.notes
                                     ELSE t.notes || E'\\n' || c.notes END,
                        sync_version = t.sync_version + 1
                 FROM c
                 WHERE t.id = c.id AND t.change_xid = c.change_xid::xid8
                 RETURNING t.*
             ), {}
             SELECT {} FROM a",
            audit_cte("attendance.clock_out", "attendance"),
            records::COLUMNS
        )
    });
    let rows = closes.iter().copied();
    sqlx::query_as(SQL.as_str())
        .bind(rows.clone().map(|c| c.id).collect::<Vec<_>>())
        .bind(
            rows.clone()
                .map(|c| c.change_xid.clone())
                .collect::<Vec<_>>(),
        )
        .bind(rows.clone().map(|c| c.occurred_at).collect::<Vec<_>>())
        .bind(rows.clone().map(|c| c.point.latitude).collect::<Vec<_>>())
        .bind(rows.clone().map(|c| c.point.longitude).collect::<Vec<_>>())
        .bind(rows.clone().map(|c| c.accuracy_m).collect::<Vec<_>>())
        .bind(rows.clone().map(|c| c.distance).collect::<Vec<_>>())
        .bind(rows.clone().map(|c| c.outside).collect::<Vec<_>>())
        .bind(rows.clone().map(|c| c.notes.clone()).collect::<Vec<_>>())
        .bind(rows.clone().map(|c| c.user_id).collect::<Vec<_>>())
        .bind(rows.clone().map(|c| c.email.clone()).collect::<Vec<_>>())
        .bind(rows.clone().map(CloseShift::details).collect::<Vec<_>>())
        .bind(rows.clone().map(|c| c.ip.clone()).collect::<Vec<_>>())
        .bind(rows.map(|c| c.user_agent.clone()).collect::<Vec<_>>())
        .fetch_all(db)
        .await
}
