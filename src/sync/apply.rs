//! Writing a decided push: a fixed number of set-based statements, whatever the batch size.

use std::collections::HashMap;
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use sqlx::{Executor, PgConnection};
use uuid::Uuid;

use crate::audit::Activity;
use crate::auth::ClientInfo;
use crate::db::attendance::{self as records, AttendanceRecord, AttendanceRow};
use crate::sync::push::{Plan, Write};

/// Column arrays of a set of writes, for UNNEST.
struct Columns {
    id: Vec<Uuid>,
    facility_id: Vec<Uuid>,
    status: Vec<&'static str>,
    clock_in_at: Vec<DateTime<Utc>>,
    clock_out_at: Vec<Option<DateTime<Utc>>>,
    in_lat: Vec<f64>,
    in_lng: Vec<f64>,
    in_acc: Vec<Option<f64>>,
    out_lat: Vec<Option<f64>>,
    out_lng: Vec<Option<f64>>,
    out_acc: Vec<Option<f64>>,
    distance: Vec<f64>,
    out_distance: Vec<Option<f64>>,
    outside: Vec<bool>,
    client_ts: Vec<Option<DateTime<Utc>>>,
    version: Vec<i32>,
    notes: Vec<Option<String>>,
    pushed: Vec<Option<i64>>,
}

impl Columns {
    /// `pushed`: the change each write was sent with, where a push sent it.
    fn of<'w>(writes: impl Iterator<Item = &'w Write>, pushed: &HashMap<Uuid, i64>) -> Self {
        let mut c = Columns {
            id: vec![],
            facility_id: vec![],
            status: vec![],
            clock_in_at: vec![],
            clock_out_at: vec![],
            in_lat: vec![],
            in_lng: vec![],
            in_acc: vec![],
            out_lat: vec![],
            out_lng: vec![],
            out_acc: vec![],
            distance: vec![],
            out_distance: vec![],
            outside: vec![],
            client_ts: vec![],
            version: vec![],
            notes: vec![],
            pushed: vec![],
        };
        for w in writes {
            c.id.push(w.id);
            c.facility_id.push(w.content.facility_id);
            c.status.push(w.status);
            c.clock_in_at.push(w.content.clock_in_at);
            c.clock_out_at.push(w.content.clock_out_at);
            c.in_lat.push(w.content.clock_in.latitude);
            c.in_lng.push(w.content.clock_in.longitude);
            c.in_acc.push(w.content.clock_in.accuracy_m);
            c.out_lat
                .push(w.content.clock_out.as_ref().map(|l| l.latitude));
            c.out_lng
                .push(w.content.clock_out.as_ref().map(|l| l.longitude));
            c.out_acc
                .push(w.content.clock_out.as_ref().and_then(|l| l.accuracy_m));
            c.distance.push(w.distance_m);
            c.out_distance.push(w.out_distance_m);
            c.outside.push(w.outside);
            c.client_ts.push(w.client_timestamp);
            c.version.push(w.version);
            c.notes.push(w.content.notes.clone());
            c.pushed.push(pushed.get(&w.id).copied());
        }
        c
    }

    fn bind<'q, O>(
        self,
        query: sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
        query
            .bind(self.id)
            .bind(self.facility_id)
            .bind(self.status)
            .bind(self.clock_in_at)
            .bind(self.clock_out_at)
            .bind(self.in_lat)
            .bind(self.in_lng)
            .bind(self.in_acc)
            .bind(self.out_lat)
            .bind(self.out_lng)
            .bind(self.out_acc)
            .bind(self.distance)
            .bind(self.out_distance)
            .bind(self.outside)
            .bind(self.client_ts)
            .bind(self.version)
            .bind(self.notes)
            .bind(self.pushed)
    }
}

const UNNEST: &str =
    "UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[], $5::timestamptz[],
    $6::float8[], $7::float8[], $8::float8[], $9::float8[], $10::float8[], $11::float8[],
    $12::float8[], $13::float8[], $14::bool[], $15::timestamptz[], $16::int4[], $17::text[],
    $18::int8[])
    AS w (id, facility_id, status, clock_in_at, clock_out_at, in_lat, in_lng, in_acc, out_lat,
          out_lng, out_acc, distance, out_distance, outside, client_ts, version, notes, pushed)";

/// Inserts the writes bound by `Columns` ($1..$18) for device $19, user $20, stamped $21 (to the
/// microsecond): the stored rows are known without reading them back (`Write::row`).
const INSERT: &str = "INSERT INTO attendance (id, user_id, facility_id, status, clock_in_at,
        clock_out_at, clock_in_latitude, clock_in_longitude, clock_in_accuracy_m, clock_out_latitude,
        clock_out_longitude, clock_out_accuracy_m, distance_m, clock_out_distance_m,
        outside_geofence, client_timestamp, sync_version, notes, source, device_id,
        server_timestamp, created_at, updated_at, pushed)
    SELECT w.id, $20, w.facility_id, w.status, w.clock_in_at, w.clock_out_at, w.in_lat, w.in_lng,
        w.in_acc, w.out_lat, w.out_lng, w.out_acc, w.distance, w.out_distance, w.outside,
        w.client_ts, w.version, w.notes, 'sync', $19, $21, $21, $21,
        CASE WHEN w.pushed IS NOT NULL THEN ARRAY[w.pushed] END";

/// The latest changes pushes applied to a record (`a.pushed`), with `$new` (NULL: none) last:
/// at most [`KEPT_CHANGES`] of them.
fn with_pushed(new: &str) -> String {
    format!(
        "CASE WHEN {new} IS NULL THEN a.pushed
              ELSE (coalesce(a.pushed, '{{}}') || {new})[greatest(cardinality(a.pushed) + 2 - {KEPT_CHANGES}, 1):]
         END"
    )
}

/// How many of a record's latest pushed changes are kept to know them when sent again: a device
/// that sends again every batch its answers were lost for sends at most as many changes of one
/// record as it made while those answers were lost.
const KEPT_CHANGES: usize = 16;

/// Binds `INSERT`'s parameters for the plan's inserts.
fn bind_insert<'q, O>(
    query: sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    plan: &Plan,
    user_id: Uuid,
    device_id: &'q str,
    at: DateTime<Utc>,
) -> sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
    Columns::of(plan.inserts.iter(), &plan.pushed)
        .bind(query)
        .bind(device_id)
        .bind(user_id)
        .bind(at)
}

/// The records `INSERT` stores for `inserts`, by id.
fn stored<'w>(
    inserts: &'w [Write],
    user_id: Uuid,
    device_id: &'w str,
    at: DateTime<Utc>,
) -> impl Iterator<Item = (Uuid, AttendanceRecord)> + 'w {
    inserts
        .iter()
        .map(move |w| (w.id, w.row(user_id, device_id, at).into()))
}

/// Writes a push that only creates records, and its audit row, in one statement: the statement
/// is its own transaction, so the batch costs one round trip. Nothing is locked; a push of the
/// same user that raced this one (the same ids, the same device timestamps, a second open shift)
/// meets a unique constraint and the whole statement fails, for the caller to decide again
/// under the user's lock.
pub(crate) async fn insert_created(
    conn: &mut PgConnection,
    plan: &Plan,
    user_id: Uuid,
    device_id: &str,
    at: DateTime<Utc>,
    activity: Activity,
) -> Result<HashMap<Uuid, AttendanceRecord>, sqlx::Error> {
    let sql = format!(
        "WITH a AS ({INSERT} FROM {UNNEST}), {} SELECT 1",
        Activity::cte(22)
    );
    let query = bind_insert(
        sqlx::query_as::<_, (i32,)>(&sql),
        plan,
        user_id,
        device_id,
        at,
    );
    activity.bind(query).fetch_one(conn).await?;
    Ok(stored(&plan.inserts, user_id, device_id, at).collect())
}

/// Applies a plan inside the caller's transaction, which holds the user's lock; new records
/// are stamped `at`. Updates and deletes touch only the user's own records (as the decisions
/// have checked), and keep the record's device and client timestamp: the pair names the
/// record's creation, which a device may send again under another id, and one action on a
/// device (a clock-out and the next clock-in) can stamp two records alike. Each write keeps the
/// change a push sent it with (`plan.pushed`) among the record's latest (`pushed`).
pub(crate) async fn apply_plan(
    tx: &mut PgConnection,
    plan: &Plan,
    user_id: Uuid,
    device_id: &str,
    at: DateTime<Utc>,
) -> Result<HashMap<Uuid, AttendanceRecord>, sqlx::Error> {
    let mut written = HashMap::new();
    if !plan.closes.is_empty() {
        // These rows were read FOR UPDATE as the open shift, so they are still open. (No
        // `status = 'open'` here: it would let the planner pick the one-open-shift index, whose
        // size it misjudges while statistics predate the day's clock-ins.) The version stays,
        // as when the sweep closes a forgotten shift: a clock-out of it pushed later on the
        // version its device holds is applied, not lost as a conflict. Each close is in the
        // audit trail, as the sweep's are, besides the push's own row.
        static CLOSE: LazyLock<String> = LazyLock::new(|| {
            format!(
                "WITH closed AS (
                     UPDATE attendance SET status = 'incomplete'
                     WHERE id = ANY($1)
                     RETURNING id, user_id, clock_in_at
                 ) {}",
                crate::audit::auto_close_audit("a later shift was opened beside it")
            )
        });
        sqlx::query(CLOSE.as_str())
            .bind(&plan.closes)
            .execute(&mut *tx)
            .await?;
    }
    if !plan.deletes.is_empty() {
        let (ids, versions): (Vec<Uuid>, Vec<i32>) = plan.deletes.iter().copied().unzip();
        let pushed: Vec<Option<i64>> = ids.iter().map(|id| plan.pushed.get(id).copied()).collect();
        let sql = format!(
            "UPDATE attendance a SET deleted_at = now(), sync_version = d.version, server_timestamp = now(),
                    pushed = {}
             FROM UNNEST($1::uuid[], $2::int4[], $3::int8[]) AS d (id, version, pushed)
             WHERE a.id = d.id AND a.user_id = $4 RETURNING {}",
            with_pushed("d.pushed"),
            records::COLUMNS
        );
        let rows: Vec<AttendanceRow> = sqlx::query_as(&sql)
            .bind(ids)
            .bind(versions)
            .bind(pushed)
            .bind(user_id)
            .fetch_all(&mut *tx)
            .await?;
        written.extend(rows.into_iter().map(|r| (r.id, AttendanceRecord::from(r))));
    }
    // Updates that leave a record not open go first, so that the one-open-shift index never
    // sees two open rows in between.
    let (closing, opening): (Vec<&Write>, Vec<&Write>) =
        plan.updates.iter().partition(|w| w.status != "open");
    for group in [closing, opening] {
        if group.is_empty() {
            continue;
        }
        let sql = format!(
            "UPDATE attendance a SET facility_id = w.facility_id, status = w.status,
                    clock_in_at = w.clock_in_at, clock_out_at = w.clock_out_at,
                    clock_in_latitude = w.in_lat, clock_in_longitude = w.in_lng, clock_in_accuracy_m = w.in_acc,
                    clock_out_latitude = w.out_lat, clock_out_longitude = w.out_lng, clock_out_accuracy_m = w.out_acc,
                    distance_m = w.distance, clock_out_distance_m = w.out_distance, outside_geofence = w.outside,
                    sync_version = w.version, notes = w.notes,
                    source = 'sync', server_timestamp = now(), deleted_at = NULL,
                    pushed = {}
             FROM {UNNEST}
             WHERE a.id = w.id AND a.user_id = $19 RETURNING {}",
            with_pushed("w.pushed"),
            records::COLUMNS
        );
        let rows: Vec<AttendanceRow> = Columns::of(group.into_iter(), &plan.pushed)
            .bind(sqlx::query_as(&sql))
            .bind(user_id)
            .fetch_all(&mut *tx)
            .await?;
        written.extend(rows.into_iter().map(|r| (r.id, AttendanceRecord::from(r))));
    }
    if !plan.inserts.is_empty() {
        let sql = format!("{INSERT} FROM {UNNEST}");
        let query = bind_insert(
            sqlx::query_as::<_, (i32,)>(&sql),
            plan,
            user_id,
            device_id,
            at,
        );
        tx.execute(query).await?;
        written.extend(stored(&plan.inserts, user_id, device_id, at));
    }
    if !plan.conflicts.is_empty() {
        let mut record_ids = vec![];
        let mut client_versions = vec![];
        let mut server_versions = vec![];
        let mut client_data = vec![];
        let mut server_data = vec![];
        for (id, cv, sv, c, s) in &plan.conflicts {
            record_ids.push(*id);
            client_versions.push(*cv);
            server_versions.push(*sv);
            client_data.push(c.clone());
            server_data.push(s.clone());
        }
        sqlx::query(
            "INSERT INTO sync_conflicts (record_id, user_id, device_id, client_version, server_version, client_data, server_data)
             SELECT c.id, $6, $7, c.cv, c.sv, c.cd, c.sd
             FROM UNNEST($1::uuid[], $2::int4[], $3::int4[], $4::jsonb[], $5::jsonb[]) AS c (id, cv, sv, cd, sd)",
        )
        .bind(record_ids)
        .bind(client_versions)
        .bind(server_versions)
        .bind(client_data)
        .bind(server_data)
        .bind(user_id)
        .bind(device_id)
        .execute(&mut *tx)
        .await?;
    }
    Ok(written)
}

/// Withdraws from the conflict queue the user's copies of `records` waiting there (their device
/// deleted them), each in the audit trail as a resolution by the user, from `client`, within
/// the caller's transaction.
pub(crate) async fn withdraw_conflicts(
    tx: &mut PgConnection,
    user_id: Uuid,
    records: &[Uuid],
    client: &ClientInfo,
) -> Result<(), sqlx::Error> {
    if records.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "WITH withdrawn AS (
             UPDATE sync_conflicts SET status = 'resolved', resolution = 'server', resolved_at = now()
             WHERE status = 'pending' AND user_id = $1 AND record_id = ANY($2)
             RETURNING id, record_id
         )
         INSERT INTO activities (actor_id, actor_email, action, entity_type, entity_id, details,
                                 ip, user_agent)
         SELECT $1, (SELECT email FROM users WHERE id = $1), 'sync.conflict_resolve',
                'sync_conflict', w.id,
                jsonb_build_object('record_id', w.record_id, 'keep', 'server',
                                   'withdrawn', 'the device deleted its copy'),
                $3, $4
         FROM withdrawn w",
    )
    .bind(user_id)
    .bind(records)
    .bind(&client.ip)
    .bind(&client.user_agent)
    .execute(tx)
    .await?;
    Ok(())
}
