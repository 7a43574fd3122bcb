//! WatermelonDB's sync protocol over the same store and rules as `/sync/push` and `/sync/pull`.
//!
//! Column mapping (a WatermelonDB raw record is flat, with string ids and millisecond times):
//!
//! | table | column | meaning |
//! |---|---|---|
//! | attendance | `id` | the record's UUID (the app sets WatermelonDB's id generator to UUIDs) |
//! | attendance | `facility_id`, `notes` | as in the contract |
//! | attendance | `clock_in_at`, `clock_out_at` | milliseconds since the Unix epoch (`clock_out_at` null while open) |
//! | attendance | `clock_in_latitude`, `clock_in_longitude`, `clock_in_accuracy_m` | `clock_in_location` |
//! | attendance | `clock_out_latitude`, `clock_out_longitude`, `clock_out_accuracy_m` | `clock_out_location` |
//! | attendance | `user_id`, `status`, `distance_m`, `outside_geofence`, `source`, `device_id`, `sync_version`, `server_created_at`, `server_updated_at` | set by the server; ignored when pushed |
//! | facilities | `id`, `code`, `name`, `type`, `latitude`, `longitude`, `geofence_radius_m`, `status`, `address`, `contact_phone`, `council_id`, `council_name`, `region_id`, `region_name` | read-only for devices |
//!
//! The pull `timestamp` names a stored MVCC snapshot (see `sync::pull`), so "everything after
//! it" is exact even when transactions commit out of order.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, SubsecRound, TimeZone, Utc};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::audit::Activity;
use crate::auth::AuthUser;
use crate::db::attendance::{self as records, AttendanceRecord, AttendanceRow, Location};
use crate::db::facilities::Facility;
use crate::domain::attendance::{TimeRules, forgotten_before, settle_clock_out};
use crate::error::{ApiError, ErrorCode, FieldErrors, ResultExt};
use crate::sync::apply::{apply_plan, withdraw_conflicts};
use crate::sync::model::Content;
use crate::sync::pull::{self, Changes, Cursor};
use crate::sync::push::{
    Plan, PushContext, begin_for_user, build_write, check_fields, check_new_times, site_refuses,
};

/// The most records (and ids told deleted) one WatermelonDB pull answers with. A pull with more
/// to send answers `has_more`, and the next pull from its timestamp goes on where it stopped.
pub const PULL_PAGE: usize = 5_000;

/// A pull that sends the tables named by the app's `migration` whole is not paged: WatermelonDB
/// names them on one sync only.
const WHOLE_PULL: usize = 10_000_000;

/// The tables a device may sync, with the columns it receives.
pub const TABLES: [&str; 2] = ["attendance", "facilities"];

fn millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub fn attendance_raw(r: &AttendanceRecord) -> Value {
    json!({
        "id": r.id,
        "user_id": r.user_id,
        "facility_id": r.facility_id,
        "status": r.status,
        "clock_in_at": millis(r.clock_in_at),
        "clock_out_at": r.clock_out_at.map(millis),
        "clock_in_latitude": r.clock_in_location.latitude,
        "clock_in_longitude": r.clock_in_location.longitude,
        "clock_in_accuracy_m": r.clock_in_location.accuracy_m,
        "clock_out_latitude": r.clock_out_location.as_ref().map(|l| l.latitude),
        "clock_out_longitude": r.clock_out_location.as_ref().map(|l| l.longitude),
        "clock_out_accuracy_m": r.clock_out_location.as_ref().and_then(|l| l.accuracy_m),
        "distance_m": r.distance_m,
        "outside_geofence": r.outside_geofence,
        "source": r.source,
        "device_id": r.device_id,
        "notes": r.notes,
        "sync_version": r.sync_version,
        "server_created_at": millis(r.created_at),
        "server_updated_at": millis(r.updated_at),
    })
}

pub fn facility_raw(f: &Facility) -> Value {
    json!({
        "id": f.id,
        "code": f.code,
        "name": f.name,
        "type": f.facility_type,
        "latitude": f.latitude,
        "longitude": f.longitude,
        "geofence_radius_m": f.geofence_radius_m,
        "status": f.status,
        "address": f.address,
        "contact_phone": f.contact_phone,
        "council_id": f.council.id,
        "council_name": f.council.name,
        "region_id": f.council.region.id,
        "region_name": f.council.region.name,
    })
}

/// WatermelonDB's `migration` argument, as the app sends it (JSON in the query string).
#[derive(Debug, Default, Deserialize)]
pub struct Migration {
    #[serde(default)]
    pub from: Option<i64>,
    #[serde(default)]
    pub tables: Vec<String>,
    #[serde(default)]
    pub columns: Vec<MigrationColumns>,
}

#[derive(Debug, Deserialize)]
pub struct MigrationColumns {
    pub table: String,
    #[serde(default)]
    pub columns: Vec<String>,
}

/// What a timestamp names: the snapshot its device has wholly seen and, when its pull stopped
/// at a page with more to come, where to go on and for whom.
#[derive(sqlx::FromRow)]
struct Issued {
    snapshot: String,
    resume: Option<sqlx::types::Json<Cursor>>,
    viewer_id: Option<Uuid>,
}

/// A timestamp's own row, or, once old timestamps are thinned, the row kept for its range,
/// whose snapshot is no later than any it replaced (so the pull is a superset, never short).
/// The row of a pull that stopped partway is never thinned, and never stands for another
/// number. A number above every one issued names nothing.
async fn issued(db: &PgPool, id: i64) -> Result<Option<Issued>, ApiError> {
    Ok(sqlx::query_as(
        "SELECT snapshot::text, resume, viewer_id FROM sync_snapshots
         WHERE (id = $1 OR (id < $1 AND resume IS NULL))
           AND $1 <= (SELECT max(id) FROM sync_snapshots)
         ORDER BY id DESC LIMIT 1",
    )
    .bind(id)
    .fetch_optional(db)
    .await?)
}

/// What a push's timestamp says its device has seen: the records of `snapshot`, but for those
/// a first sync stopped partway has yet to send.
struct Seen {
    snapshot: String,
    undelivered: Undelivered,
}

/// The records of a timestamp's snapshot that its pull has not sent yet.
enum Undelivered {
    None,
    /// A first sync stopped before the attendance records.
    All,
    /// A first sync sent the records up to this one, in its order (`change_xid`, `id`).
    After(String, Uuid),
}

impl Issued {
    fn seen(self) -> Seen {
        // A later sync stopped partway names the snapshot the device held before it (the
        // records its pages sent since read as changed); a first sync's names the snapshot its
        // pages are read at, of which the device holds only the pages sent.
        let undelivered = match self.resume.map(|r| r.0) {
            Some(r) if r.base.is_none() && !r.attendance_done => match r.attendance_after {
                Some((xid, id)) => Undelivered::After(xid, id),
                None => Undelivered::All,
            },
            _ => Undelivered::None,
        };
        Seen {
            snapshot: self.snapshot,
            undelivered,
        }
    }
}

/// What `last_pulled_at` names for `viewer`: 422 for a number this service never issued, or
/// one that ends a page of another user's pull.
async fn issued_to(db: &PgPool, viewer: &AuthUser, id: i64) -> Result<Issued, ApiError> {
    match issued(db, id).await? {
        Some(row) if row.resume.is_none() || row.viewer_id == Some(viewer.id) => Ok(row),
        _ => Err(ApiError::invalid(
            "last_pulled_at",
            "is not a timestamp this service issued",
        )),
    }
}

/// Every WatermelonDB pull stores the snapshot its timestamp names. Those older than
/// `keep_exact` are thinned: each whole range of `per_range` consecutive timestamps keeps one
/// row, at its lowest number, whose snapshot sees only what every snapshot of the range saw
/// (all transactions below their lowest `xmin`). A device that pulls again
/// with a thinned timestamp is sent some changes twice, all as updates, and none fewer. The
/// range holding the newest timestamp is never thinned. Returns the rows removed.
pub async fn thin_snapshots(
    db: &PgPool,
    keep_exact: std::time::Duration,
    per_range: i64,
) -> Result<u64, sqlx::Error> {
    let mut tx = crate::db::upkeep(db, crate::db::BACKLOG_LIMIT).await?;
    let removed = sqlx::query(
        "WITH recent AS (
             SELECT coalesce(
                 (SELECT min(id) FROM sync_snapshots
                  WHERE created_at >= now() - make_interval(secs => $1)),
                 (SELECT coalesce(max(id), 0) FROM sync_snapshots)) AS first
         ), ranges AS (
             SELECT s.id / $2 AS range, min(s.id) AS keep,
                    min(pg_snapshot_xmin(s.snapshot)) AS xmin
             FROM sync_snapshots s, recent
             WHERE s.id < recent.first / $2 * $2 AND s.resume IS NULL
             GROUP BY 1 HAVING count(*) > 1
         ), widen AS (
             UPDATE sync_snapshots s
             SET snapshot = format('%s:%s:', r.xmin, r.xmin)::pg_snapshot
             FROM ranges r WHERE s.id = r.keep
         )
         DELETE FROM sync_snapshots s USING ranges r
         WHERE s.id >= r.range * $2 AND s.id < (r.range + 1) * $2 AND s.id <> r.keep
           AND s.resume IS NULL",
    )
    .bind(keep_exact.as_secs_f64())
    .bind(per_range)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(removed.rows_affected())
}

/// One WatermelonDB pull: the changes, the timestamp to send back next time, and whether more
/// changes wait (the next pull from that timestamp sends them).
pub struct Pulled {
    pub changes: Value,
    pub timestamp: i64,
    pub has_more: bool,
}

/// Everything after `last_pulled_at` (null or 0: everything), as WatermelonDB changes, at most
/// `PULL_PAGE` of them.
pub async fn pull_changes(
    db: &PgPool,
    viewer: &AuthUser,
    last_pulled_at: Option<i64>,
    migration: Option<Migration>,
    timeout: std::time::Duration,
) -> Result<Pulled, ApiError> {
    let given = last_pulled_at.filter(|t| *t > 0);
    let cursor = match given {
        None => Cursor::default(),
        Some(id) => {
            let issued = issued_to(db, viewer, id).await?;
            match issued.resume {
                Some(resume) => resume.0,
                None => Cursor {
                    base: Some(issued.snapshot),
                    ..Cursor::default()
                },
            }
        }
    };
    let base = cursor.base.clone();
    // Tables or columns added since the client's schema: those tables are sent whole (on a
    // sync after the first: a first sync sends everything anyway).
    let migrated: HashSet<String> = migration
        .map(|m| {
            m.tables
                .into_iter()
                .chain(m.columns.into_iter().map(|c| c.table))
                .collect()
        })
        .unwrap_or_default();
    let whole = given.is_some() && TABLES.iter().any(|t| migrated.contains(*t));
    let page = if whole { WHOLE_PULL } else { PULL_PAGE };
    let mut tx = crate::db::begin(db).await?;
    let (mut changes, next, has_more) = pull::pull(
        &mut tx,
        viewer,
        cursor,
        page,
        pull::Kept::ByService,
        timeout,
    )
    .await?;
    tx.commit().await?;
    // Every record comes as `updated` (apps set WatermelonDB's `sendCreatedAsUpdated`): a record
    // created since the last pull may be one this device pushed itself and has deleted since,
    // its deletion yet to be pushed, and from a thinned timestamp records it has long held would
    // read as created too. WatermelonDB recreates a created record that the device deleted (the
    // deletion lost); an updated one it keeps deleted, and it creates those it lacks.
    let attendance = &mut changes.attendance;
    attendance.updated.append(&mut attendance.created);
    let facilities = &mut changes.facilities;
    facilities.updated.append(&mut facilities.created);
    if has_more {
        // What the device has wholly seen is still the base (nothing, on a first sync, but the
        // pages read at the target); where to go on is kept for this viewer.
        let seen = base.clone().or_else(|| next.target.clone());
        let seen = seen.ok_or_else(|| anyhow::anyhow!("a paged pull names its target"))?;
        return Ok(Pulled {
            changes: to_watermelon(changes, None, &HashSet::new()),
            timestamp: issue(db, &seen, Some((&next, viewer.id))).await?,
            has_more,
        });
    }
    let target = next
        .base
        .clone()
        .ok_or_else(|| anyhow::anyhow!("a complete pull names its snapshot"))?;

    let full = if whole {
        let mut tx = crate::db::begin(db).await?;
        let cursor = Cursor {
            base: None,
            target: Some(target.clone()),
            ..Cursor::default()
        };
        let (full, _, _) = pull::pull(
            &mut tx,
            viewer,
            cursor,
            WHOLE_PULL,
            pull::Kept::ByService,
            timeout,
        )
        .await?;
        tx.commit().await?;
        Some(full)
    } else {
        None
    };

    Ok(Pulled {
        changes: to_watermelon(changes, full, &migrated),
        timestamp: issue(db, &target, None).await?,
        has_more,
    })
}

/// Stores a new timestamp: the snapshot its device has wholly seen and, for a pull that stopped
/// at a page, where to go on and for whom.
async fn issue(
    db: &PgPool,
    seen: &str,
    resume: Option<(&Cursor, Uuid)>,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO sync_snapshots (snapshot, resume, viewer_id)
         VALUES ($1::pg_snapshot, $2, $3) RETURNING id",
    )
    .bind(seen)
    .bind(resume.map(|(cursor, _)| sqlx::types::Json(cursor)))
    .bind(resume.map(|(_, viewer)| viewer))
    .fetch_one(db)
    .await
}

fn to_watermelon(changes: Changes, full: Option<Changes>, migrated: &HashSet<String>) -> Value {
    let mut attendance = json!({
        "created": changes.attendance.created.iter().map(attendance_raw).collect::<Vec<_>>(),
        "updated": changes.attendance.updated.iter().map(attendance_raw).collect::<Vec<_>>(),
        "deleted": changes.attendance.deleted,
    });
    let mut facilities = json!({
        "created": changes.facilities.created.iter().map(facility_raw).collect::<Vec<_>>(),
        "updated": changes.facilities.updated.iter().map(facility_raw).collect::<Vec<_>>(),
        "deleted": changes.facilities.deleted,
    });
    if let Some(full) = full {
        // The whole table, no id twice: every row goes to `updated` (WatermelonDB creates the
        // ones it lacks).
        if migrated.contains("attendance") {
            attendance["created"] = json!([]);
            attendance["updated"] = json!(
                full.attendance
                    .created
                    .iter()
                    .map(attendance_raw)
                    .collect::<Vec<_>>()
            );
        }
        if migrated.contains("facilities") {
            facilities["created"] = json!([]);
            facilities["updated"] = json!(
                full.facilities
                    .created
                    .iter()
                    .map(facility_raw)
                    .collect::<Vec<_>>()
            );
        }
    }
    json!({ "attendance": attendance, "facilities": facilities })
}

/// One table's pushed changes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableChanges {
    #[serde(default)]
    pub created: Vec<Map<String, Value>>,
    #[serde(default)]
    pub updated: Vec<Map<String, Value>>,
    #[serde(default)]
    pub deleted: Vec<String>,
}

fn number(raw: &Map<String, Value>, key: &str) -> Result<Option<f64>, String> {
    match raw.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_f64()
            .map(Some)
            .ok_or_else(|| format!("{key} is not a number")),
        Some(_) => Err(format!("{key} must be a number")),
    }
}

fn time(raw: &Map<String, Value>, key: &str) -> Result<Option<DateTime<Utc>>, String> {
    number(raw, key)?
        .map(|ms| {
            Utc.timestamp_millis_opt(ms as i64)
                .single()
                .ok_or_else(|| format!("{key} is not a valid time"))
        })
        .transpose()
}

/// A record's id: a UUID, and whether it is written as the server stores and sends it back (in
/// lower case with hyphens). One written otherwise (upper case, say) names only a record the
/// server already holds (one an earlier version of this service stored under it): a new one
/// would come back from the next pull as another record.
fn record_id(id: &str) -> Result<(Uuid, bool), &'static str> {
    let uuid = id.parse::<Uuid>().map_err(|_| "id must be a UUID")?;
    Ok((uuid, uuid.hyphenated().to_string() == id))
}

const NOT_AS_PULLED: &str = "id must be a UUID in lower case with hyphens, as pulls send ids";

/// Adds a record the service refuses, by its id as the device sent it, to `rejected`.
fn refuse(rejected: &mut Rejected, table: &str, id: impl std::fmt::Display, reason: String) {
    rejected
        .entry(format!("{table}.{id}"))
        .or_default()
        .push(reason);
}

/// Refuses an attendance record of a push (see [`refuse`]).
fn refuse_attendance(rejected: &mut Rejected, id: impl std::fmt::Display, reason: String) {
    refuse(rejected, "attendance", id, reason);
}

/// A raw attendance record as pushed, to the contract's content.
fn content_of(raw: &Map<String, Value>) -> Result<(Uuid, Content), String> {
    let (id, _) = record_id(raw.get("id").and_then(Value::as_str).unwrap_or_default())?;
    let facility_id = raw
        .get("facility_id")
        .and_then(Value::as_str)
        .and_then(|s| s.parse::<Uuid>().ok())
        .ok_or("facility_id must be a UUID")?;
    let required = |key: &str| number(raw, key)?.ok_or_else(|| format!("{key} is required"));
    // WatermelonDB writes 0 for an unset number column the app did not declare optional: no
    // shift ends at the epoch, and a shift not ended has no clock-out place.
    let clock_out_at = time(raw, "clock_out_at")?.filter(|t| t.timestamp_millis() != 0);
    let clock_out = match (
        number(raw, "clock_out_latitude")?,
        number(raw, "clock_out_longitude")?,
    ) {
        (Some(0.0), Some(0.0)) if clock_out_at.is_none() => None,
        (Some(latitude), Some(longitude)) => Some(Location {
            latitude,
            longitude,
            accuracy_m: number(raw, "clock_out_accuracy_m")?,
        }),
        _ => None,
    };
    Ok((
        id,
        Content {
            facility_id,
            clock_in_at: time(raw, "clock_in_at")?.ok_or("clock_in_at is required")?,
            clock_out_at,
            clock_in: Location {
                latitude: required("clock_in_latitude")?,
                longitude: required("clock_in_longitude")?,
                accuracy_m: number(raw, "clock_in_accuracy_m")?,
            },
            clock_out,
            notes: raw
                .get("notes")
                .and_then(Value::as_str)
                .map(|n| n.trim().to_string())
                .filter(|n| !n.is_empty()),
        },
    ))
}

/// The records of a push the service refused, each with its reasons, keyed `<table>.<id>`.
/// The rest of the push is applied: WatermelonDB, told their ids (`experimentalRejectedIds`),
/// keeps them on the device as not yet synced and marks the others synced.
pub type Rejected = FieldErrors;

/// Why a record of another user is left out of a push.
const ANOTHER_USERS: &str =
    "user_id: the record is another user's; a device pushes its own user's records only";

/// The ids of rejected records, by table, as WatermelonDB's `experimentalRejectedIds` reads them.
pub fn rejected_ids(rejected: &Rejected) -> HashMap<String, Vec<String>> {
    let mut ids = HashMap::from([("attendance".to_string(), Vec::new())]);
    for (table, id) in rejected.keys().filter_map(|key| key.split_once('.')) {
        ids.entry(table.to_string())
            .or_default()
            .push(id.to_string());
    }
    ids
}

/// Applies a push in one transaction. A record the service refuses (its times, its facility,
/// its fields) is left out and named in the answer, so that one bad record never keeps a
/// device's other records from the server. Refused whole with 409 when any pushed record changed
/// on the server after `last_pulled_at` (the client then pulls and pushes again), and with 422
/// when the push itself is malformed.
pub async fn push_changes(
    ctx: PushContext<'_>,
    last_pulled_at: i64,
    changes: HashMap<String, TableChanges>,
) -> Result<Rejected, ApiError> {
    let PushContext {
        db, config, user, ..
    } = ctx;
    // To the microsecond, as Postgres keeps it (new rows are stamped with it).
    let now = Utc::now().trunc_subsecs(6);
    let known = issued_to(db, user, last_pulled_at).await?.seen();
    let mut problems = FieldErrors::new();
    let mut rejected = Rejected::new();
    // Records of a table devices do not write, or of one the server does not sync (the app's
    // local-only tables come with empty sets, but one written before they were kept local would
    // not), are refused one by one: WatermelonDB sends a record again at every sync until a
    // push takes it, so refusing the whole push would keep the device's shifts from the server
    // for good.
    for (table, set) in changes.iter().filter(|(table, _)| *table != "attendance") {
        // Refusals are keyed `<table>.<id>`, and read back so.
        if table.contains('.') {
            problems.insert(
                format!("changes.{table}"),
                vec!["is not a table name".into()],
            );
            continue;
        }
        let reason = if table == "facilities" {
            "facilities are read-only for devices"
        } else {
            "is not a table the server syncs"
        };
        for raw in set.created.iter().chain(&set.updated) {
            match raw.get("id").and_then(Value::as_str) {
                Some(id) => refuse(&mut rejected, table, id, reason.into()),
                None => {
                    problems
                        .entry(format!("{table}.?"))
                        .or_default()
                        .push("a record without an id".into());
                }
            }
        }
        for id in &set.deleted {
            refuse(&mut rejected, table, id, reason.into());
        }
    }
    let attendance = changes.get("attendance");
    let rules = config.attendance.time_rules();
    let mut upserts: Vec<(Uuid, Content, Lacks)> = Vec::new();
    // Ids sent otherwise than as pulls send them, as sent.
    let mut sent_as: HashMap<Uuid, String> = HashMap::new();
    for raw in attendance
        .iter()
        .flat_map(|t| t.created.iter().chain(&t.updated))
    {
        // Empty is unset (WatermelonDB's value for a string column not declared optional).
        let foreign = raw
            .get("user_id")
            .and_then(Value::as_str)
            .is_some_and(|u| !u.is_empty() && u != user.id.to_string());
        // The time rules wait for the stored copy: a record whose clock times the server
        // already holds is not refused for its age (a note added a month later).
        let checked = if foreign {
            Err(ANOTHER_USERS.to_string())
        } else {
            content_of(raw).and_then(|(id, mut c)| {
                check_fields(&mut c, config.attendance.future_tolerance).map(|()| (id, c))
            })
        };
        match checked {
            Ok((id, content)) => {
                let sent = raw.get("id").and_then(Value::as_str).unwrap_or_default();
                if sent != id.hyphenated().to_string() {
                    sent_as.insert(id, sent.to_string());
                }
                upserts.push((id, content, Lacks::of(raw)));
            }
            // A record the device can be told of by its id is left out; one without an id is
            // a malformed push.
            Err(reason) => match raw.get("id").and_then(Value::as_str) {
                Some(label) => refuse_attendance(&mut rejected, label, reason),
                None => {
                    problems
                        .entry("attendance.?".into())
                        .or_default()
                        .push(reason);
                }
            },
        }
    }
    let mut deletes = Vec::new();
    for id in attendance.iter().flat_map(|t| &t.deleted) {
        match record_id(id) {
            Ok((uuid, as_pulled)) => {
                if !as_pulled {
                    sent_as.insert(uuid, id.clone());
                }
                deletes.push(uuid);
            }
            Err(reason) => refuse_attendance(&mut rejected, id, reason.into()),
        }
    }
    // WatermelonDB sends a record once per push; twice (created and updated, or updated and
    // deleted) one write would undo the other.
    let mut seen = HashSet::new();
    for id in upserts.iter().map(|(id, ..)| id).chain(&deletes) {
        if !seen.insert(*id) {
            problems
                .entry(format!("attendance.{id}"))
                .or_default()
                .push("appears more than once in the push".into());
        }
    }
    if !problems.is_empty() {
        return Err(ApiError::Validation(problems));
    }

    // A `/sync/push` of the same user writes without the lock, and can hold keys this push needs
    // while waiting on keys it wrote: Postgres ends one of the two, and a push it ends here is
    // applied again.
    let mut attempt = 1;
    loop {
        let mut outcome = rejected.clone();
        match apply_changes(
            &ctx,
            &known,
            &upserts,
            &deletes,
            &sent_as,
            last_pulled_at,
            &rules,
            now,
            &mut outcome,
        )
        .await
        {
            Err(e) if e.is_deadlock() && attempt < 3 => attempt += 1,
            applied => return applied.map(|()| outcome),
        }
    }
}

/// Applies checked records in one transaction holding the user's lock, refused whole when one
/// changed on the server since the device's `seen`. Records the rules refuse are added to `rejected`
/// and left out.
#[allow(clippy::too_many_arguments)]
async fn apply_changes(
    ctx: &PushContext<'_>,
    seen: &Seen,
    upserts: &[(Uuid, Content, Lacks)],
    deletes: &[Uuid],
    sent_as: &HashMap<Uuid, String>,
    last_pulled_at: i64,
    rules: &TimeRules,
    now: DateTime<Utc>,
    rejected: &mut Rejected,
) -> Result<(), ApiError> {
    let PushContext {
        db,
        config,
        sites,
        user,
        client,
    } = *ctx;
    let mut tx = begin_for_user(db, user.id, config.request_timeout).await?;
    let ids: Vec<Uuid> = upserts
        .iter()
        .map(|(id, ..)| *id)
        .chain(deletes.iter().copied())
        .collect();
    // A team member's record a supervisor's device pulled, and sent back as changed, is refused
    // on its own (and not locked: the device sends it again at every sync): this push writes
    // the caller's records only, and the rest of it goes in.
    let foreign: HashSet<Uuid> =
        sqlx::query_scalar("SELECT id FROM attendance WHERE id = ANY($1) AND user_id <> $2")
            .bind(&ids)
            .bind(user.id)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect();
    let ids: Vec<Uuid> = ids.into_iter().filter(|id| !foreign.contains(id)).collect();
    let mut existing = existing_rows(&mut tx, &ids, user.id).await?;
    // Changed by another transaction since the pull (the rows are locked above, so none changes
    // meanwhile). Checked before this push closes forgotten shifts, which would hide another
    // device's edit of one behind this transaction's own write. A record that already holds
    // what is pushed (this very push, sent again after its answer was lost) is no conflict:
    // nothing of the server's would be lost. A record a first sync has yet to send is as good as
    // changed: the device holds an older copy (kept from before its sync began over), which
    // would overwrite the server's whole.
    let (undelivered, after) = match &seen.undelivered {
        Undelivered::None => (false, None),
        Undelivered::All => (true, None),
        Undelivered::After(xid, id) => (true, Some((xid, id))),
    };
    let changed: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM attendance WHERE id = ANY($1)
           AND (NOT pg_visible_in_snapshot(change_xid, $2::pg_snapshot)
                OR ($3 AND ($4::text IS NULL OR (change_xid, id) > ($4::xid8, $5))))",
    )
    .bind(&ids)
    .bind(&seen.snapshot)
    .bind(undelivered)
    .bind(after.map(|(xid, _)| xid))
    .bind(after.map(|(_, id)| id))
    .fetch_all(&mut *tx)
    .await?;
    let pushed: HashMap<Uuid, (&Content, Lacks)> = upserts
        .iter()
        .map(|(id, c, lacks)| (*id, (c, *lacks)))
        .collect();
    let tolerance = config.attendance.future_tolerance;
    let holds_the_push = |id: &Uuid| {
        existing.get(id).is_some_and(|row| match pushed.get(id) {
            Some(&(content, lacks)) => {
                row.deleted_at.is_none()
                    && Content::from_row(row) == as_stored(content, lacks, row, tolerance)
            }
            None => row.deleted_at.is_some(),
        })
    };
    let changed: Vec<Uuid> = changed
        .into_iter()
        .filter(|id| !holds_the_push(id))
        .collect();
    if !changed.is_empty() {
        return Err(ApiError::conflict(
            ErrorCode::Conflict,
            format!(
                "{} pushed record(s) changed on the server since last_pulled_at; pull and push again",
                changed.len()
            ),
        ));
    }
    let closed = records::close_forgotten(
        &mut *tx,
        Some(user.id),
        forgotten_before(now, config.attendance.max_shift),
    )
    .await?;
    if closed > 0 {
        existing = existing_rows(&mut tx, &ids, user.id).await?;
    }

    // Refused records are named as the device sent them, which is how it finds them.
    let named = |id: &Uuid| sent_as.get(id).cloned().unwrap_or_else(|| id.to_string());
    let new_but_not_as_pulled = |id: &Uuid| sent_as.contains_key(id) && !existing.contains_key(id);
    let facility_ids: Vec<Uuid> = upserts.iter().map(|(_, c, _)| c.facility_id).collect();
    let sites = sites.get_many(&mut *tx, &facility_ids).await?;
    let mut plan = Plan::default();
    for id in upserts.iter().map(|(id, ..)| id).chain(deletes) {
        if foreign.contains(id) {
            refuse_attendance(rejected, named(id), ANOTHER_USERS.into());
        }
    }
    for (id, content, lacks) in upserts.iter().filter(|(id, ..)| !foreign.contains(id)) {
        if new_but_not_as_pulled(id) {
            refuse_attendance(rejected, named(id), NOT_AS_PULLED.into());
            continue;
        }
        let current = existing.get(id);
        // Known deleted: an edit made before the deletion reached the device is dropped.
        if current.is_some_and(|r| r.deleted_at.is_some()) {
            continue;
        }
        let adopted = current.map(|r| as_stored(content, *lacks, r, tolerance));
        let content = adopted.as_ref().unwrap_or(content);
        // Unchanged content needs no write (and keeps its version).
        if current.is_some_and(|r| &Content::from_row(r) == content) {
            continue;
        }
        if let Err(reason) = check_new_times(content, current, rules, now) {
            refuse_attendance(rejected, named(id), reason);
            continue;
        }
        let Some(site) = sites.get(&content.facility_id) else {
            refuse_attendance(rejected, named(id), "facility_id: no such facility".into());
            continue;
        };
        if let Some(refusal) = site_refuses(site, content, current, config) {
            refuse_attendance(rejected, named(id), refusal.message());
            continue;
        }
        let version = current.map_or(1, |r| r.sync_version + 1);
        let w = build_write(*id, content, site, version, None, now, config);
        // "Created" records that already exist (an earlier push landed unseen) are updated.
        match current {
            Some(_) => plan.updates.push(w.stays_closed(current)),
            None => plan.inserts.push(w),
        }
    }
    for id in deletes.iter().filter(|id| !foreign.contains(id)) {
        // Deleting a record the server already deleted is nothing to do; one it does not have
        // withdraws any copy of it waiting in the conflict queue.
        match existing.get(id) {
            Some(row) if row.deleted_at.is_none() => plan.deletes.push((*id, row.sync_version + 1)),
            Some(_) => {}
            None => plan.withdrawn.push(*id),
        }
    }
    // After the deletions are known: a stored open shift this push deletes is no rival.
    settle_open_shifts(&mut tx, user.id, &mut plan).await?;
    let device = format!(
        "watermelon:{}",
        client
            .user_agent
            .as_deref()
            .unwrap_or("unknown")
            .chars()
            .take(64)
            .collect::<String>()
    );
    apply_plan(&mut tx, &plan, user.id, &device, now)
        .await
        .on_constraint("attendance_one_open_per_user", || {
            ApiError::conflict(
                ErrorCode::AlreadyClockedIn,
                "the push would leave two open shifts for one user",
            )
        })?;
    withdraw_conflicts(&mut tx, user.id, &plan.withdrawn, client).await?;
    // The refused records by id, with the service's reasons; an id that is not a UUID (any text
    // a device sent) is only counted.
    let refused: HashMap<Uuid, &Vec<String>> = rejected
        .iter()
        .filter_map(|(key, why)| Some((key.strip_prefix("attendance.")?.parse().ok()?, why)))
        .collect();
    Activity::new("sync.watermelon_push")
        .by(user)
        .from(client)
        .details(json!({
            "created": plan.inserts.len(), "updated": plan.updates.len(), "deleted": plan.deletes.len(),
            "last_pulled_at": last_pulled_at, "rejected": rejected.len(), "refused": refused,
        }))
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// The optional columns a pushed raw record has no key for, as an app whose schema lacks them
/// sends it (WatermelonDB lets a server send columns an app does not have yet): a record the
/// server holds keeps its own values of them, where an explicit null clears one.
#[derive(Clone, Copy, Debug, Default)]
struct Lacks {
    notes: bool,
    clock_in_accuracy: bool,
    clock_out_accuracy: bool,
}

impl Lacks {
    fn of(raw: &Map<String, Value>) -> Self {
        Lacks {
            notes: !raw.contains_key("notes"),
            clock_in_accuracy: !raw.contains_key("clock_in_accuracy_m"),
            clock_out_accuracy: !raw.contains_key("clock_out_accuracy_m"),
        }
    }
}

/// The pushed content as it would be stored over `stored`: the columns the record `lacks` keep
/// their stored values, and the stored clock times stay where it sends them back as pulled: a
/// pull gives milliseconds, the server keeps microseconds, and a record edited on the device (a
/// note) must not read as new times, which the time rules would check again (and refuse, once
/// the shift is older than they allow). The clock-out is settled again against the clock-in
/// adopted (one ended where the shift began, as sent, would fall a fraction of a millisecond
/// before it).
fn as_stored(
    content: &Content,
    lacks: Lacks,
    stored: &AttendanceRow,
    tolerance: std::time::Duration,
) -> Content {
    let same = |sent: DateTime<Utc>, kept: DateTime<Utc>| sent == kept.trunc_subsecs(3);
    let mut content = content.clone();
    let kept = Content::from_row(stored);
    if lacks.notes {
        content.notes = kept.notes;
    }
    if lacks.clock_in_accuracy {
        content.clock_in.accuracy_m = kept.clock_in.accuracy_m;
    }
    if lacks.clock_out_accuracy
        && let Some(out) = content.clock_out.as_mut()
    {
        out.accuracy_m = kept.clock_out.and_then(|l| l.accuracy_m);
    }
    if same(content.clock_in_at, stored.clock_in_at) {
        content.clock_in_at = stored.clock_in_at;
    }
    if let (Some(sent), Some(kept)) = (content.clock_out_at, stored.clock_out_at)
        && same(sent, kept)
    {
        content.clock_out_at = Some(kept);
    }
    content.clock_out_at = content
        .clock_out_at
        .map(|out| settle_clock_out(content.clock_in_at, out, tolerance));
    content
}

/// One open shift per user: when the push opens one while the user has another open (clocked
/// in online meanwhile, say), the one that began first is closed as incomplete, as a
/// `client_wins` push would, rather than refusing the whole push until that shift is closed.
/// Nothing is dropped: the earlier shift stays, counted apart.
async fn settle_open_shifts(
    tx: &mut PgConnection,
    user_id: Uuid,
    plan: &mut Plan,
) -> Result<(), sqlx::Error> {
    let written = || plan.inserts.iter().chain(&plan.updates);
    let mut open: Vec<(DateTime<Utc>, Uuid)> = written()
        .filter(|w| w.status == "open")
        .map(|w| (w.content.clock_in_at, w.id))
        .collect();
    if open.is_empty() {
        return Ok(());
    }
    let others: Vec<Uuid> = written()
        .map(|w| w.id)
        .chain(plan.deletes.iter().map(|(id, _)| *id))
        .collect();
    let stored: Option<(DateTime<Utc>, Uuid)> = sqlx::query_as(
        "SELECT clock_in_at, id FROM attendance
         WHERE user_id = $1 AND status = 'open' AND deleted_at IS NULL AND id <> ALL($2)
         FOR UPDATE",
    )
    .bind(user_id)
    .bind(&others)
    .fetch_optional(&mut *tx)
    .await?;
    open.extend(stored);
    open.sort();
    open.pop();
    for (_, earlier) in open {
        plan.close(earlier);
    }
    Ok(())
}

/// The caller's records among `ids`, locked for this push.
async fn existing_rows(
    tx: &mut PgConnection,
    ids: &[Uuid],
    user_id: Uuid,
) -> Result<HashMap<Uuid, AttendanceRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {} FROM attendance a WHERE a.id = ANY($1) AND a.user_id = $2 FOR UPDATE",
        records::COLUMNS
    );
    let rows: Vec<AttendanceRow> = sqlx::query_as(&sql)
        .bind(ids)
        .bind(user_id)
        .fetch_all(&mut *tx)
        .await?;
    Ok(rows.into_iter().map(|r| (r.id, r)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_raw_record_maps_to_content_and_back() {
        let raw: Map<String, Value> = serde_json::from_value(json!({
            "id": "8d4f8c7e-2d1b-4b4e-9a53-2f7f3f6d9a10", "facility_id": "1d4f8c7e-2d1b-4b4e-9a53-2f7f3f6d9a10",
            "clock_in_at": 1_790_000_000_000i64, "clock_out_at": null,
            "clock_in_latitude": -1.9, "clock_in_longitude": 30.1, "clock_in_accuracy_m": 5,
            "notes": "  hi ", "_status": "created", "_changed": "", "status": "whatever"
        }))
        .unwrap();
        let (_, content) = content_of(&raw).unwrap();
        assert_eq!(content.clock_in_at.timestamp_millis(), 1_790_000_000_000);
        assert_eq!(content.notes.as_deref(), Some("hi"));
        assert!(content.clock_out.is_none());
        let mut bad = raw.clone();
        bad.insert("id".into(), json!("abc123"));
        assert!(
            content_of(&bad).is_err(),
            "WatermelonDB's default ids are refused: UUIDs only"
        );
    }
}
