//! Online clock-ins: one alone, or many that arrive together in one statement (see
//! [`crate::db::coalesce`]).
//!
//! The batch skips the rows that meet a unique constraint (an open shift, a retried `client_id`)
//! and, if the statement fails as a whole, every row of it: those clock-ins are written alone
//! afterwards ([`NewClockIn::insert`]), where the constraint or error they meet is their own.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::audit::audit_cte;
use crate::db::attendance::{self as records, AttendanceRow};
use crate::db::coalesce::Batch;
use crate::domain::GeoPoint;

/// An online clock-in, checked and measured, ready to write.
#[derive(Debug, Clone)]
pub struct NewClockIn {
    pub user_id: Uuid,
    pub email: String,
    pub facility_id: Uuid,
    pub point: GeoPoint,
    pub accuracy_m: Option<f64>,
    pub occurred_at: DateTime<Utc>,
    pub client_timestamp: Option<DateTime<Utc>>,
    pub distance: f64,
    pub outside: bool,
    pub device_id: Option<String>,
    pub client_id: Option<String>,
    pub notes: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

impl NewClockIn {
    /// The audit row's details; `closed_forgotten` counts the forgotten shifts this clock-in
    /// closed first.
    fn details(&self, closed_forgotten: u64) -> Value {
        json!({
            "facility_id": self.facility_id, "distance_m": self.distance.round(),
            "outside_geofence": self.outside, "closed_forgotten": closed_forgotten,
        })
    }

    /// This clock-in alone, with its audit row, in one statement. A unique constraint it meets
    /// is the error's, for the caller to tell apart.
    pub async fn insert(
        &self,
        db: &PgPool,
        closed_forgotten: u64,
    ) -> Result<AttendanceRow, sqlx::Error> {
        let mut written = insert(db, &[(Uuid::now_v7(), self)], closed_forgotten, false).await?;
        written.pop().ok_or(sqlx::Error::RowNotFound)
    }
}

/// Clock-ins written together: each answered with its stored record, or None when it met a
/// unique constraint, with a stored row or an earlier row of the same batch.
pub struct ClockIns;

impl Batch for ClockIns {
    type Item = Arc<NewClockIn>;
    type Output = Option<AttendanceRow>;
    const NAME: &'static str = "clock_in";
    const WRITES: bool = true;

    async fn run(
        &self,
        conn: &mut PgConnection,
        items: &[Arc<NewClockIn>],
    ) -> Result<Vec<Option<AttendanceRow>>, sqlx::Error> {
        let ids: Vec<Uuid> = items.iter().map(|_| Uuid::now_v7()).collect();
        // Written in user order: two batches that hold the same users (a double tap landing
        // in both) then wait for each other in one order, never in a cycle.
        let mut rows: Vec<(Uuid, &NewClockIn)> = ids
            .iter()
            .copied()
            .zip(items.iter().map(Arc::as_ref))
            .collect();
        rows.sort_by_key(|(_, c)| c.user_id);
        let mut written: HashMap<Uuid, AttendanceRow> = insert(conn, &rows, 0, true)
            .await?
            .into_iter()
            .map(|r| (r.id, r))
            .collect();
        Ok(ids.iter().map(|id| written.remove(id)).collect())
    }
}

/// Rows given as `UNNEST` arrays (`$1`..`$17`, bound by [`insert`]), written with their audit
/// rows; with `skip_conflicts`, a row that meets a unique constraint (with a stored row or an
/// earlier row of the same statement) is skipped and not returned, instead of failing the lot.
fn insert_sql(skip_conflicts: bool) -> String {
    format!(
        "WITH c AS (
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::timestamptz[], $5::float8[],
                                  $6::float8[], $7::float8[], $8::float8[], $9::bool[], $10::text[],
                                  $11::text[], $12::timestamptz[], $13::text[], $14::text[],
                                  $15::jsonb[], $16::text[], $17::text[])
                 AS c (id, user_id, facility_id, clock_in_at, latitude, longitude, accuracy_m,
                       distance_m, outside, device_id, client_id, client_timestamp, notes, email,
                       details, ip, user_agent)
         ), a AS (
             INSERT INTO attendance (id, user_id, facility_id, clock_in_at, clock_in_latitude,
                                     clock_in_longitude, clock_in_accuracy_m, distance_m,
                                     outside_geofence, source, device_id, client_id,
                                     client_timestamp, notes)
             SELECT id, user_id, facility_id, clock_in_at, latitude, longitude, accuracy_m,
                    distance_m, outside, 'online', device_id, client_id, client_timestamp, notes
             FROM c
             {}
             RETURNING *
         ), {}
         SELECT {} FROM a",
        if skip_conflicts { "ON CONFLICT DO NOTHING" } else { "" },
        audit_cte("attendance.clock_in", "attendance"),
        records::COLUMNS
    )
}

/// Clock-ins with their ids, in one statement; `closed_forgotten` is recorded in their audit
/// rows.
async fn insert<'e>(
    db: impl sqlx::PgExecutor<'e>,
    rows: &[(Uuid, &NewClockIn)],
    closed_forgotten: u64,
    skip_conflicts: bool,
) -> Result<Vec<AttendanceRow>, sqlx::Error> {
    static SKIPPING: LazyLock<String> = LazyLock::new(|| insert_sql(true));
    static FAILING: LazyLock<String> = LazyLock::new(|| insert_sql(false));
    let sql = if skip_conflicts { &SKIPPING } else { &FAILING };
    let ids: Vec<Uuid> = rows.iter().map(|(id, _)| *id).collect();
    let rows = rows.iter().map(|(_, c)| *c);
    sqlx::query_as(sql.as_str())
        .bind(ids)
        .bind(rows.clone().map(|c| c.user_id).collect::<Vec<_>>())
        .bind(rows.clone().map(|c| c.facility_id).collect::<Vec<_>>())
        .bind(rows.clone().map(|c| c.occurred_at).collect::<Vec<_>>())
        .bind(rows.clone().map(|c| c.point.latitude).collect::<Vec<_>>())
        .bind(rows.clone().map(|c| c.point.longitude).collect::<Vec<_>>())
        .bind(rows.clone().map(|c| c.accuracy_m).collect::<Vec<_>>())
        .bind(rows.clone().map(|c| c.distance).collect::<Vec<_>>())
        .bind(rows.clone().map(|c| c.outside).collect::<Vec<_>>())
        .bind(
            rows.clone()
                .map(|c| c.device_id.clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            rows.clone()
                .map(|c| c.client_id.clone())
                .collect::<Vec<_>>(),
        )
        .bind(rows.clone().map(|c| c.client_timestamp).collect::<Vec<_>>())
        .bind(rows.clone().map(|c| c.notes.clone()).collect::<Vec<_>>())
        .bind(rows.clone().map(|c| c.email.clone()).collect::<Vec<_>>())
        .bind(
            rows.clone()
                .map(|c| c.details(closed_forgotten))
                .collect::<Vec<_>>(),
        )
        .bind(rows.clone().map(|c| c.ip.clone()).collect::<Vec<_>>())
        .bind(rows.map(|c| c.user_agent.clone()).collect::<Vec<_>>())
        .fetch_all(db)
        .await
}
