//! Online clock-ins, written together when they come together.
//!
//! A shift starts at the same minute for a whole district, and one insert per clock-in makes the
//! database pay a statement, a commit and a WAL flush for each: on two cores that queue, not the
//! service, is what a crowd waits on. So clock-ins that arrive while others are being written
//! wait for the next free slot and go in one multi-row statement, each with its audit row. A
//! clock-in that arrives when a slot is free goes at once, alone: waiting is never added when
//! there is nothing to wait for.
//!
//! The batch skips the rows that meet a unique constraint (an open shift, a retried `client_id`)
//! and, if the statement fails as a whole, every row of it: those clock-ins are written alone
//! afterwards ([`NewClockIn::insert`]), where the constraint or error they meet is their own.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::{Semaphore, mpsc, oneshot};
use uuid::Uuid;

use crate::audit::audit_cte;
use crate::db::attendance::{self as records, AttendanceRow};
use crate::domain::GeoPoint;

/// Statements in flight at once. Postgres has two cores here: a few statements keep both busy
/// while one waits on its commit, and more would only queue inside the database.
pub const BATCHES_IN_FLIGHT: usize = 4;
/// Rows in one statement at most, so that one statement does not hold a slot for long.
pub const MAX_BATCH: usize = 128;

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

type Pending = (Arc<NewClockIn>, oneshot::Sender<Option<AttendanceRow>>);

/// The clock-ins waiting for a slot, and the task that writes them.
pub struct ClockInQueue {
    db: PgPool,
    /// Started on first use, on the runtime that serves the requests.
    sender: OnceLock<mpsc::UnboundedSender<Pending>>,
}

impl ClockInQueue {
    pub fn new(db: PgPool) -> Self {
        Self {
            db,
            sender: OnceLock::new(),
        }
    }

    /// Writes the clock-in with the others waiting beside it. The stored record, or None when
    /// it was not written: it met a unique constraint, or its batch failed, and the caller
    /// writes it alone to learn why. The queue only grows with requests in flight, each of
    /// which waits here for its answer.
    pub async fn insert(&self, clock_in: Arc<NewClockIn>) -> Option<AttendanceRow> {
        let (reply, answer) = oneshot::channel();
        let sender = self.sender.get_or_init(|| {
            let (sender, receiver) = mpsc::unbounded_channel();
            tokio::spawn(dispatch(self.db.clone(), receiver));
            sender
        });
        sender.send((clock_in, reply)).ok()?;
        answer.await.ok().flatten()
    }
}

/// Takes whatever has queued each time a slot is free, until the queue's owner is gone.
async fn dispatch(db: PgPool, mut queue: mpsc::UnboundedReceiver<Pending>) {
    let slots = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = Vec::with_capacity(MAX_BATCH);
        if queue.recv_many(&mut batch, MAX_BATCH).await == 0 {
            return;
        }
        let db = db.clone();
        tokio::spawn(async move {
            write(&db, batch).await;
            drop(slot);
        });
    }
}

/// One statement for the batch; every clock-in hears whether it was written.
async fn write(db: &PgPool, batch: Vec<Pending>) {
    metrics::histogram!("clock_in_batch_size").record(batch.len() as f64);
    let ids: Vec<Uuid> = batch.iter().map(|_| Uuid::new_v4()).collect();
    let mut written = match insert_many(db, &ids, &batch).await {
        Ok(rows) => rows.into_iter().map(|r| (r.id, r)).collect(),
        Err(error) => {
            tracing::warn!(%error, size = batch.len(), "a clock-in batch failed; its clock-ins are written alone");
            HashMap::new()
        }
    };
    for (id, (_, reply)) in ids.iter().zip(batch) {
        // A request that gave up (its client left) no longer listens; its record stands, and a
        // retry with its client_id finds it.
        let _ = reply.send(written.remove(id));
    }
}

/// The batch and its audit rows in one statement. Rows that meet a unique constraint, with a
/// stored row or an earlier row of the same batch, are skipped and not returned.
async fn insert_many(
    db: &PgPool,
    ids: &[Uuid],
    batch: &[Pending],
) -> Result<Vec<AttendanceRow>, sqlx::Error> {
    let rows = batch.iter().map(|(c, _)| c.as_ref());
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
