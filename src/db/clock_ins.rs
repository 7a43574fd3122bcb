//! Online clock-ins: one alone, or many that arrive together in one statement (see
//! [`crate::db::coalesce`]).
//!
//! The batch skips the rows that meet a unique constraint (an open shift, a retried `client_id`)
//! and, if the statement fails as a whole, every row of it: those clock-ins are written alone
//! afterwards ([`NewClockIn::insert`]), where the constraint or error they meet is their own.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::PgPool;
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

    /// This clock-in alone: the record and its audit row in one statement (atomic on its
    /// own). A unique constraint it meets is the error's, for the caller to tell apart.
    pub async fn insert(
        &self,
        db: &PgPool,
        closed_forgotten: u64,
    ) -> Result<AttendanceRow, sqlx::Error> {
        let sql = format!(
            "WITH a AS (
                 INSERT INTO attendance (user_id, facility_id, clock_in_at, clock_in_latitude, clock_in_longitude,
                                         clock_in_accuracy_m, distance_m, outside_geofence, source, device_id,
                                         client_id, client_timestamp, notes)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'online', $9, $10, $11, $12)
                 RETURNING *
             ), {}
             SELECT {} FROM a",
            audit_cte("attendance.clock_in", "attendance", 13),
            records::COLUMNS
        );
        sqlx::query_as(&sql)
            .bind(self.user_id)
            .bind(self.facility_id)
            .bind(self.occurred_at)
            .bind(self.point.latitude)
            .bind(self.point.longitude)
            .bind(self.accuracy_m)
            .bind(self.distance)
            .bind(self.outside)
            .bind(&self.device_id)
            .bind(&self.client_id)
            .bind(self.client_timestamp)
            .bind(&self.notes)
            .bind(self.user_id)
            .bind(&self.email)
            .bind(self.details(closed_forgotten))
            .bind(&self.ip)
            .bind(&self.user_agent)
            .fetch_one(db)
            .await
    }
}

/// Clock-ins written together: each answered with its stored record, or None when it met a
/// unique constraint, with a stored row or an earlier row of the same batch.
pub struct ClockIns;

impl Batch for ClockIns {
    type Item = Arc<NewClockIn>;
    type Output = Option<AttendanceRow>;
    const NAME: &'static str = "clock_in";

    async fn run(
        &self,
        db: &PgPool,
        items: &[Arc<NewClockIn>],
    ) -> Result<Vec<Option<AttendanceRow>>, sqlx::Error> {
        let ids: Vec<Uuid> = items.iter().map(|_| Uuid::new_v4()).collect();
        // Written in user order: two batches that hold the same users (a double tap landing
        // in both) then wait for each other in one order, never in a cycle.
        let mut rows: Vec<(Uuid, &NewClockIn)> = ids
            .iter()
            .copied()
            .zip(items.iter().map(Arc::as_ref))
            .collect();
        rows.sort_by_key(|(_, c)| c.user_id);
        let mut written: HashMap<Uuid, AttendanceRow> = insert_many(db, &rows)
            .await?
            .into_iter()
            .map(|r| (r.id, r))
            .collect();
        Ok(ids.iter().map(|id| written.remove(id)).collect())
    }
}

/// The batch and its audit rows in one statement. Rows that meet a unique constraint, with a
/// stored row or an earlier row of the same batch, are skipped and not returned.
async fn insert_many(
    db: &PgPool,
    rows: &[(Uuid, &NewClockIn)],
) -> Result<Vec<AttendanceRow>, sqlx::Error> {
    let ids: Vec<Uuid> = rows.iter().map(|(id, _)| *id).collect();
    let rows = rows.iter().map(|(_, c)| *c);
    let sql = format!(
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
             ON CONFLICT DO NOTHING
             RETURNING *
         ), audit AS (
             INSERT INTO activities (actor_id, actor_email, action, entity_type, entity_id, details,
                                     ip, user_agent)
             SELECT c.user_id, c.email, 'attendance.clock_in', 'attendance', a.id, c.details, c.ip,
                    c.user_agent
             FROM a JOIN c ON c.id = a.id
         )
         SELECT {} FROM a",
        records::COLUMNS
    );
    sqlx::query_as(&sql)
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
        .bind(rows.clone().map(|c| c.details(0)).collect::<Vec<_>>())
        .bind(rows.clone().map(|c| c.ip.clone()).collect::<Vec<_>>())
        .bind(rows.map(|c| c.user_agent.clone()).collect::<Vec<_>>())
        .fetch_all(db)
        .await
}
