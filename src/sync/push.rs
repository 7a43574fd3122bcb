//! Deciding a push: every record checked on its own, then settled against what the server has;
//! `apply` writes the outcome with a fixed number of set-based statements, whatever its size.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Datelike, SubsecRound, Utc};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::audit::Activity;
use crate::auth::{AuthUser, ClientInfo};
use crate::config::Config;
use crate::db::attendance::{self as records, AttendanceRecord, AttendanceRow, Location};
use crate::db::facilities::{Site, SiteCache};
use crate::db::is_deadlock;
use crate::domain::GeoPoint;
use crate::domain::attendance::{MAX_RECORD_NOTES, TimeRules, forgotten_before, settle_clock_out};
use crate::error::ApiError;
use crate::sync::apply::{apply_plan, insert_created, withdraw_conflicts};
use crate::sync::decide::{Decision, ServerCopy, decide};
use crate::sync::model::{
    Content, Op, PushRecord, PushResponse, PushResult, ResultError, ResultStatus, Strategy,
};

/// A row as it will be written: distances, geofence flag and status derived on the server, with
/// the same rules as online clock-in (a shift open or closed past the maximum is incomplete).
/// The distances of a record's clock-in and clock-out from its facility, and whether either is
/// outside the geofence.
pub(crate) fn measure(content: &Content, site: &Site) -> (f64, Option<f64>, bool) {
    let point = |l: &Location| GeoPoint {
        latitude: l.latitude,
        longitude: l.longitude,
    };
    let (distance, outside_in) = site.measure(point(&content.clock_in));
    let clock_out = content.clock_out.as_ref().map(|l| site.measure(point(l)));
    let outside = outside_in || clock_out.is_some_and(|(_, out)| out);
    (distance, clock_out.map(|(d, _)| d), outside)
}

/// Why the facility does not take a shift's clock-in, as online clock-in would not: the facility
/// was closed before the shift began, or (when enforced) the clock-in is outside its geofence; a
/// clock-out outside is flagged, not refused. Only for a clock-in the server does not hold yet
/// (`stored`, the record as stored, has another one): a shift it took stays open to its clock-out
/// and edits, whatever became of the facility or its fence since.
pub(crate) fn site_refuses(
    site: &Site,
    content: &Content,
    stored: Option<&AttendanceRow>,
    config: &Config,
) -> Option<Refusal> {
    let held = stored.filter(|r| {
        r.deleted_at.is_none()
            && r.clock_in_at == content.clock_in_at
            && r.facility_id == content.facility_id
    });
    if held.is_none()
        && let Some(reason) = site.closed_before(content.clock_in_at)
    {
        return Some(Refusal {
            code: "validation_failed",
            field: "facility_id",
            reason,
        });
    }
    let place_held = held.is_some_and(|r| {
        r.clock_in_latitude == content.clock_in.latitude
            && r.clock_in_longitude == content.clock_in.longitude
    });
    // Measured here only when a fence is enforced; the write measures the point itself.
    if !config.attendance.enforce_geofence || place_held {
        return None;
    }
    let (distance, outside) = site.measure(GeoPoint {
        latitude: content.clock_in.latitude,
        longitude: content.clock_in.longitude,
    });
    outside.then(|| Refusal {
        code: "outside_geofence",
        field: "clock_in_location",
        reason: format!(
            "{distance:.0} m from the facility, outside its {} m geofence",
            site.geofence_radius_m
        ),
    })
}

/// A record the facility does not take (see [`site_refuses`]): its result's code, and the field
/// its reason is about.
pub(crate) struct Refusal {
    pub code: &'static str,
    pub field: &'static str,
    pub reason: String,
}

impl Refusal {
    /// The reason as a push result gives it, prefixed with its field.
    pub fn message(&self) -> String {
        format!("{}: {}", self.field, self.reason)
    }
}

pub(crate) fn build_write(
    id: Uuid,
    content: &Content,
    site: &Site,
    version: i32,
    client_timestamp: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    config: &Config,
) -> Write {
    let (distance, out_distance, outside) = measure(content, site);
    let max_shift = config.attendance.max_shift;
    let status = match content.clock_out_at {
        // A clock-out later than the maximum shift does not close that shift (online, the shift
        // is closed as incomplete instead): kept as sent, it counts no hours.
        Some(out) if content.clock_in_at < forgotten_before(out, max_shift) => "incomplete",
        Some(_) => "closed",
        None if content.clock_in_at < forgotten_before(now, max_shift) => "incomplete",
        None => "open",
    };
    Write {
        id,
        content: content.clone(),
        status,
        distance_m: distance,
        out_distance_m: out_distance,
        outside,
        client_timestamp,
        version,
    }
}

impl Write {
    /// A shift the server closed as incomplete (replaced by a later one, or forgotten) stays
    /// closed when an edit of it still has no clock-out: a note added on the device does not
    /// reopen it. A clock-out closes it as usual.
    pub(crate) fn stays_closed(mut self, stored: Option<&AttendanceRow>) -> Self {
        if self.content.clock_out_at.is_none()
            && stored.is_some_and(|r| r.status == "incomplete" && r.deleted_at.is_none())
        {
            self.status = "incomplete";
        }
        self
    }
}

/// A row to write (insert or update), with everything derived on the server.
#[derive(Debug, Clone)]
pub(crate) struct Write {
    pub id: Uuid,
    pub content: Content,
    pub status: &'static str,
    pub distance_m: f64,
    pub out_distance_m: Option<f64>,
    pub outside: bool,
    pub client_timestamp: Option<DateTime<Utc>>,
    pub version: i32,
}

impl Write {
    /// The row as a write by `user_id` from `device_id` at `at` stores it.
    pub(crate) fn row(&self, user_id: Uuid, device_id: &str, at: DateTime<Utc>) -> AttendanceRow {
        let c = &self.content;
        AttendanceRow {
            id: self.id,
            user_id,
            facility_id: c.facility_id,
            status: self.status.into(),
            clock_in_at: c.clock_in_at,
            clock_out_at: c.clock_out_at,
            clock_in_latitude: c.clock_in.latitude,
            clock_in_longitude: c.clock_in.longitude,
            clock_in_accuracy_m: c.clock_in.accuracy_m,
            clock_out_latitude: c.clock_out.as_ref().map(|l| l.latitude),
            clock_out_longitude: c.clock_out.as_ref().map(|l| l.longitude),
            clock_out_accuracy_m: c.clock_out.as_ref().and_then(|l| l.accuracy_m),
            distance_m: Some(self.distance_m),
            outside_geofence: self.outside,
            source: "sync".into(),
            device_id: Some(device_id.into()),
            client_timestamp: self.client_timestamp,
            server_timestamp: at,
            sync_version: self.version,
            notes: c.notes.clone(),
            deleted_at: None,
            created_at: at,
            updated_at: at,
        }
    }
}

/// What to do with each record, gathered before anything is written.
#[derive(Default)]
pub(crate) struct Plan {
    pub inserts: Vec<Write>,
    pub updates: Vec<Write>,
    pub deletes: Vec<(Uuid, i32)>,
    /// Stored open records closed as incomplete because a later shift replaced them.
    pub closes: Vec<Uuid>,
    pub conflicts: Vec<(Uuid, i32, i32, Value, Value)>,
    /// Records the server never had that their device deleted: a copy of one still waiting in
    /// the conflict queue is withdrawn (the server's record stands), never to be kept later.
    pub withdrawn: Vec<Uuid>,
    /// The change each written record was sent with ([`change_digest`]), kept with the record
    /// so that it is known when sent again.
    pub pushed: HashMap<Uuid, i64>,
}

impl Plan {
    /// Closes an open shift as incomplete: one this plan writes is written so, a stored one is
    /// closed before the plan's rows are written (it must have been read `FOR UPDATE`, open).
    pub(crate) fn close(&mut self, id: Uuid) {
        match self
            .inserts
            .iter_mut()
            .chain(self.updates.iter_mut())
            .find(|w| w.id == id)
        {
            Some(write) => write.status = "incomplete",
            None => self.closes.push(id),
        }
    }

    /// Nothing but new records: no existing row changes and no conflict is queued.
    fn creates_only(&self) -> bool {
        self.updates.is_empty()
            && self.deletes.is_empty()
            && self.closes.is_empty()
            && self.conflicts.is_empty()
            && self.withdrawn.is_empty()
    }
}

#[derive(Clone)]
enum Outcome {
    /// Decided now: the pushed id, status, server version, the server record to return,
    /// resolution.
    Done(
        Uuid,
        ResultStatus,
        Option<i32>,
        Option<Box<AttendanceRecord>>,
        Option<&'static str>,
    ),
    /// Filled in from the written row.
    Written(ResultStatus, Uuid, Option<&'static str>),
    Rejected(Option<Uuid>, &'static str, String),
}

fn reject(id: Option<Uuid>, code: &'static str, message: impl Into<String>) -> Outcome {
    Outcome::Rejected(id, code, message.into())
}

/// The time rules (no clock time in the future past the tolerance, none older than the limit),
/// for clock times the server does not hold yet: a record stored once stays acceptable, however
/// long its device took to hear so.
pub(crate) fn check_new_times(
    content: &Content,
    stored: Option<&AttendanceRow>,
    rules: &TimeRules,
    now: DateTime<Utc>,
) -> Result<(), String> {
    // Each time on its own: a clock-out sent long after the clock-in was stored is checked, the
    // clock-in it closes is not again.
    let held_in = stored.is_some_and(|r| r.clock_in_at == content.clock_in_at);
    let held_out = stored.is_some_and(|r| r.clock_out_at == content.clock_out_at);
    if !held_in {
        rules
            .check(content.clock_in_at, now)
            .map_err(|r| format!("clock_in_at {r}"))?;
    }
    match content.clock_out_at {
        Some(out) if !held_out => rules
            .check(out, now)
            .map_err(|r| format!("clock_out_at {r}")),
        _ => Ok(()),
    }
}

/// Everything but the time rules: coordinates, the clock-out's order and location, notes. A
/// clock-out stamped a little before the clock-in ends the shift where it began, as online
/// ([`settle_clock_out`]).
pub(crate) fn check_fields(
    content: &mut Content,
    tolerance: std::time::Duration,
) -> Result<(), String> {
    content.clock_out_at = content
        .clock_out_at
        .map(|out| settle_clock_out(content.clock_in_at, out, tolerance));
    for (name, l) in [
        ("clock_in_location", Some(&content.clock_in)),
        ("clock_out_location", content.clock_out.as_ref()),
    ] {
        if let Some(l) = l {
            GeoPoint::new(l.latitude, l.longitude)
                .map_err(|(field, reason)| format!("{name}.{field} {reason}"))?;
            if l.accuracy_m.is_some_and(|a| !(a.is_finite() && a >= 0.0)) {
                return Err(format!("{name}.accuracy_m must be zero or more"));
            }
        }
    }
    if let Some(out) = content.clock_out_at {
        if out < content.clock_in_at {
            return Err("clock_out_at is before clock_in_at".into());
        }
        if content.clock_out.is_none() {
            return Err("clock_out_location is required with clock_out_at".into());
        }
    } else if content.clock_out.is_some() {
        return Err("clock_out_location needs clock_out_at".into());
    }
    if content.notes.as_ref().is_some_and(|n| n.contains('\0')) {
        return Err("notes must not contain NUL characters".into());
    }
    if content
        .notes
        .as_ref()
        .is_some_and(|n| n.chars().count() > MAX_RECORD_NOTES)
    {
        return Err(format!(
            "notes must be at most {MAX_RECORD_NOTES} characters"
        ));
    }
    Ok(())
}

#[derive(Clone, Copy)]
pub struct PushContext<'a> {
    pub db: &'a PgPool,
    pub config: &'a Config,
    pub sites: &'a SiteCache,
    pub user: &'a AuthUser,
    pub client: &'a ClientInfo,
}

/// Processes a batch. Never fails because of one record: each bad one is `rejected`.
///
/// Most pushes carry only records the server has never seen. Those are decided as if nothing
/// were stored and written with their audit row by one statement, its own transaction: one
/// round trip. The guess is checked by the constraints of every row written (see
/// [`push_unseen`]). When it is wrong, the batch is read and decided without a lock; one that
/// only creates is written the same way. A push that changes existing records, or that raced
/// another push of the same user (which a unique constraint reveals), is read and decided again
/// in a transaction holding the user's lock.
pub async fn push(
    ctx: PushContext<'_>,
    device_id: &str,
    raw: &[Box<RawValue>],
) -> Result<PushResponse, ApiError> {
    // To the microsecond, as Postgres keeps it: the answer shows what is stored.
    let now = Utc::now().trunc_subsecs(6);
    let user_id = ctx.user.id;
    let cutoff = forgotten_before(now, ctx.config.attendance.max_shift);
    let batch = parse(raw, ctx.config.attendance.future_tolerance);

    if let Some(answered) = push_unseen(&ctx, device_id, &batch, now).await? {
        return Ok(answered);
    }
    {
        let mut conn = ctx.db.acquire().await?;
        let seen = Seen::read(&mut conn, &ctx, device_id, &batch, false).await?;
        if !seen.has_forgotten(cutoff) {
            let (plan, outcomes) = decide_all(&batch, &seen, user_id, device_id, now, ctx.config);
            if plan.creates_only()
                && let Some(answered) =
                    write_created(&mut conn, &ctx, device_id, &plan, outcomes, now).await?
            {
                return Ok(answered);
            }
        }
    }

    // A push without the lock writes rows this one could not see when it read: its insert trips
    // their keys once they commit, or the two wait on each other's keys until Postgres ends
    // one. Either way nothing of this push was written, and it is decided again on what is
    // stored then.
    let mut attempt = 1;
    loop {
        match push_locked(&ctx, device_id, &batch, now, cutoff).await {
            Err(e) if decide_again(&e) && attempt < 3 => attempt += 1,
            // Still racing other writers after three tries: nothing of the batch was written,
            // and the device sends it again (a 409 would read as a refusal of the batch).
            Err(e) if decide_again(&e) => {
                tracing::warn!(error = %e, "a push kept meeting concurrent writes");
                return Err(ApiError::Busy {
                    message: "the batch kept meeting concurrent writes to the same records and \
                              was not applied; send it again"
                        .into(),
                    retry_after_s: 1,
                });
            }
            answered => return answered.map_err(ApiError::from),
        }
    }
}

/// Reads, decides and writes a batch in one transaction holding the user's lock.
async fn push_locked(
    ctx: &PushContext<'_>,
    device_id: &str,
    batch: &[Parsed],
    now: DateTime<Utc>,
    cutoff: DateTime<Utc>,
) -> Result<PushResponse, sqlx::Error> {
    let user_id = ctx.user.id;
    let mut tx = begin_for_user(ctx.db, user_id, ctx.config.request_timeout).await?;
    let mut seen = Seen::read(&mut tx, ctx, device_id, batch, true).await?;
    // Yesterday's forgotten clock-out must not block today's shifts: closed as incomplete,
    // then read again.
    if seen.has_forgotten(cutoff) {
        records::close_forgotten(&mut *tx, Some(user_id), cutoff).await?;
        seen = Seen::read(&mut tx, ctx, device_id, batch, true).await?;
    }
    let (plan, outcomes) = decide_all(batch, &seen, user_id, device_id, now, ctx.config);
    let written = apply_plan(&mut tx, &plan, user_id, device_id, now).await?;
    withdraw_conflicts(&mut tx, user_id, &plan.withdrawn, ctx.client).await?;
    let counts = count(&outcomes);
    activity(ctx, device_id, &counts).record(&mut *tx).await?;
    tx.commit().await?;
    Ok(answer(now, outcomes, written, &counts))
}

/// A locked push met a write it could not see when it read (see [`push`]).
fn decide_again(e: &sqlx::Error) -> bool {
    is_deadlock(e) || matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// A batch decided as if the server had none of its records, written in one statement when
/// that decision holds; `None` when the batch must be read first.
///
/// The guess leaves out exactly what the read would find, and each of those is a unique index
/// of `attendance` that the insert trips: a record already stored (its key), the same change
/// under another id (`attendance_device_timestamp_key`), a new shift while one is open, even a
/// forgotten one (`attendance_one_open_per_user`). The statement then fails whole and the batch
/// takes the careful path. The guess is only written when every record it decides is created,
/// so that no answer rests on it without a row to check it: deletes, records refused against
/// stored data (facility, geofence) and conflicts inside the batch are read first.
async fn push_unseen(
    ctx: &PushContext<'_>,
    device_id: &str,
    batch: &[Parsed],
    now: DateTime<Utc>,
) -> Result<Option<PushResponse>, ApiError> {
    if accepted(batch).any(|(r, _)| r.op != Op::Upsert) {
        return Ok(None);
    }
    let mut conn = ctx.db.acquire().await?;
    let seen = Seen {
        touched: Touched::default(),
        sites: sites_of(&mut conn, ctx, batch).await?,
        queued: HashSet::new(),
        pending: 0,
    };
    let (plan, outcomes) = decide_all(batch, &seen, ctx.user.id, device_id, now, ctx.config);
    let all_created = batch.iter().zip(&outcomes).all(|(parsed, outcome)| {
        parsed.is_err() || matches!(outcome, Outcome::Written(ResultStatus::Created, ..))
    });
    if !(all_created && plan.creates_only()) {
        return Ok(None);
    }
    write_created(&mut conn, ctx, device_id, &plan, outcomes, now).await
}

/// Writes a plan that only creates records, with its audit row, in one statement; `None` when a
/// unique index trips (the server has some of the batch, or a push of the same user raced it)
/// or Postgres ends the statement to break a deadlock with such a push: nothing is written, and
/// the batch is to be decided again on what is stored.
async fn write_created(
    conn: &mut PgConnection,
    ctx: &PushContext<'_>,
    device_id: &str,
    plan: &Plan,
    outcomes: Vec<Outcome>,
    now: DateTime<Utc>,
) -> Result<Option<PushResponse>, ApiError> {
    let counts = count(&outcomes);
    let activity = activity(ctx, device_id, &counts);
    match insert_created(conn, plan, ctx.user.id, device_id, now, activity).await {
        Ok(written) => Ok(Some(answer(now, outcomes, written, &counts))),
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            tracing::debug!(constraint = ?e.constraint(), "a unique index tripped; deciding the push again");
            Ok(None)
        }
        Err(e) if is_deadlock(&e) => {
            tracing::debug!("ended to break a deadlock; deciding the push again");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// A pushed record read and checked on its own (with its content for an upsert), or its result.
type Parsed = Result<(PushRecord, Option<Content>), Outcome>;

/// A record's client timestamp as Postgres keeps it (to the microsecond), so that it matches
/// the stored one it may repeat.
fn stamp_of(record: &PushRecord) -> DateTime<Utc> {
    record.client_timestamp.with_timezone(&Utc).trunc_subsecs(6)
}

/// The id of a record that did not parse, when it has a readable one, for its result.
fn readable_id(text: &RawValue) -> Option<Uuid> {
    #[derive(serde::Deserialize)]
    struct IdOnly {
        id: Option<Value>,
    }
    let id = serde_json::from_str::<IdOnly>(text.get()).ok()?.id?;
    id.as_str()?.parse().ok()
}

/// The highest version a device may send: far from the top of the stored integer, which the
/// server's own bumps of a record (one per write) can then never reach.
const MAX_SYNC_VERSION: i32 = 1_000_000_000;

/// Reads and checks each record on its own: the checks that need no database.
fn parse(raw: &[Box<RawValue>], tolerance: std::time::Duration) -> Vec<Parsed> {
    let mut parsed: Vec<Parsed> = Vec::with_capacity(raw.len());
    let mut seen_ids = HashSet::new();
    for text in raw {
        if !text.get().starts_with('{') {
            let reason = "the record must be a JSON object";
            parsed.push(Err(reject(None, "validation_failed", reason)));
            continue;
        }
        let record: PushRecord = match crate::extract::parse_json(text.get().as_bytes()) {
            Ok(r) => r,
            Err(e) => {
                let reason = match e {
                    ApiError::Validation(details) => details
                        .iter()
                        .map(|(f, r)| format!("{f}: {}", r.join(", ")))
                        .collect::<Vec<_>>()
                        .join("; "),
                    e => e.to_string(),
                };
                parsed.push(Err(reject(readable_id(text), "validation_failed", reason)));
                continue;
            }
        };
        let id = Some(record.id);
        let checked = if record.kind != "attendance" {
            Err(reject(
                id,
                "unsupported_kind",
                format!("kind `{}` is not synced", record.kind),
            ))
        } else if !(1..=MAX_SYNC_VERSION).contains(&record.sync_version) {
            Err(reject(
                id,
                "validation_failed",
                format!("sync_version must be 1 to {MAX_SYNC_VERSION}"),
            ))
        } else if !(1..=9999).contains(&record.client_timestamp.naive_utc().year()) {
            // Postgres keeps years from 4713 BC; chrono reads signed and five-digit years too.
            // In UTC, as it is stored and sent back: 9999-12-31T23:30-05:00 is in the year 10000.
            Err(reject(
                id,
                "validation_failed",
                "client_timestamp must be in the years 1 to 9999",
            ))
        } else if !seen_ids.insert(record.id) {
            Err(reject(
                id,
                "duplicate_in_batch",
                "this id appears earlier in the same batch",
            ))
        } else {
            match (record.op, &record.data) {
                (Op::Upsert, None) => Err(reject(
                    id,
                    "validation_failed",
                    "data is required for upsert",
                )),
                (Op::Upsert, Some(data)) => {
                    let mut content = Content::from_data(data);
                    match check_fields(&mut content, tolerance) {
                        Ok(()) => Ok(Some(content)),
                        Err(reason) => Err(reject(id, "validation_failed", reason)),
                    }
                }
                (Op::Delete, _) => Ok(None),
            }
        };
        parsed.push(checked.map(|content| (record, content)));
    }
    parsed
}

/// The records of a batch that passed the checks needing no database.
fn accepted(batch: &[Parsed]) -> impl Iterator<Item = &(PushRecord, Option<Content>)> {
    batch.iter().filter_map(|p| p.as_ref().ok())
}

/// The facilities the batch's records name (from the per-process cache where it has them).
async fn sites_of(
    conn: &mut PgConnection,
    ctx: &PushContext<'_>,
    batch: &[Parsed],
) -> Result<HashMap<Uuid, Site>, sqlx::Error> {
    let facility_ids: Vec<Uuid> = accepted(batch)
        .filter_map(|(_, c)| c.as_ref().map(|c| c.facility_id))
        .collect();
    ctx.sites.get_many(conn, &facility_ids).await
}

/// What the decisions rest on: the rows a batch touches, their facilities, and the conflicts
/// already queued for them.
struct Seen {
    touched: Touched,
    sites: HashMap<Uuid, Site>,
    queued: HashSet<(Uuid, String)>,
    /// How many of the user's conflicts wait for an admin (read only for a batch that asks for
    /// `manual`).
    pending: i64,
}

impl Seen {
    /// `lock`: inside the user's locked transaction, the rows found are locked until commit.
    async fn read(
        conn: &mut PgConnection,
        ctx: &PushContext<'_>,
        device_id: &str,
        batch: &[Parsed],
        lock: bool,
    ) -> Result<Self, sqlx::Error> {
        let ids: Vec<Uuid> = accepted(batch).map(|(r, _)| r.id).collect();
        let stamps: Vec<DateTime<Utc>> = accepted(batch).map(|(r, _)| stamp_of(r)).collect();
        let touched = Touched::read(conn, ctx.user.id, device_id, &ids, &stamps, lock).await?;
        let sites = sites_of(conn, ctx, batch).await?;
        // Conflicts are queued for records that exist, and for new ones pushed open beside the
        // user's open shift; a batch of new records with no shift open skips the read.
        let queued = if touched.by_id.is_empty() && touched.open.is_none() {
            HashSet::new()
        } else {
            sqlx::query_as::<_, (Uuid, Value)>(
                "SELECT record_id, client_data FROM sync_conflicts WHERE status = 'pending' AND record_id = ANY($1)",
            )
            .bind(&ids)
            .fetch_all(&mut *conn)
            .await?
            .into_iter()
            .map(|(id, data)| (id, data.to_string()))
            .collect()
        };
        let manual = accepted(batch).any(|(r, _)| r.conflict_strategy == Some(Strategy::Manual));
        let pending = if manual {
            sqlx::query_scalar(
                "SELECT count(*) FROM sync_conflicts WHERE status = 'pending' AND user_id = $1",
            )
            .bind(ctx.user.id)
            .fetch_one(&mut *conn)
            .await?
        } else {
            0
        };
        Ok(Seen {
            touched,
            sites,
            queued,
            pending,
        })
    }

    /// The user's open shift began before `cutoff`: a forgotten clock-out, to be closed first.
    fn has_forgotten(&self, cutoff: DateTime<Utc>) -> bool {
        self.touched
            .open
            .as_ref()
            .is_some_and(|o| o.clock_in_at < cutoff)
    }
}

/// The order records are decided in: those of the user's stored open shift first, so that a
/// device that closed (or deleted) it and then clocked in sends the new shift beside a closed
/// one, whatever order its records come in. The rest keep the order sent.
fn decision_order(batch: &[Parsed], open: Option<&AttendanceRow>) -> Vec<usize> {
    let of_open = |item: &Parsed| matches!((item, open), (Ok((record, _)), Some(open)) if record.id == open.id);
    let (mut first, rest): (Vec<usize>, Vec<usize>) =
        (0..batch.len()).partition(|&i| of_open(&batch[i]));
    first.extend(rest);
    first
}

/// Decides each record, tracking the user's one open shift through the batch: what to write,
/// and each record's outcome, in the order sent.
fn decide_all(
    batch: &[Parsed],
    seen: &Seen,
    user_id: Uuid,
    device_id: &str,
    now: DateTime<Utc>,
    config: &Config,
) -> (Plan, Vec<Outcome>) {
    let Seen {
        touched:
            Touched {
                by_id,
                by_stamp,
                open,
                pushed,
            },
        sites,
        queued,
        pending,
    } = seen;
    let rules = config.attendance.time_rules();
    let mut open = open.clone();
    let mut plan = Plan::default();
    let mut outcomes: Vec<Option<Outcome>> = vec![None; batch.len()];
    let mut batch_stamps: HashMap<DateTime<Utc>, Uuid> = HashMap::new();
    for i in decision_order(batch, open.as_ref()) {
        let item = &batch[i];
        let (record, content) = match item {
            Ok((record, content)) => (record, content),
            Err(outcome) => {
                outcomes[i] = Some(outcome.clone());
                continue;
            }
        };
        let id = record.id;
        let stamp = stamp_of(record);
        let strategy = record.conflict_strategy.unwrap_or_default();
        let existing = by_id.get(&id);
        if existing.is_some_and(|row| row.user_id != user_id) {
            outcomes[i] = Some(reject(
                Some(id),
                "forbidden",
                "this id belongs to another user's record",
            ));
            continue;
        }
        // The same change sent again under another id (same device, same client timestamp).
        if existing.is_none() && record.op == Op::Upsert {
            if let Some(row) = by_stamp.get(&stamp) {
                outcomes[i] = Some(Outcome::Done(
                    id,
                    ResultStatus::Duplicate,
                    Some(row.sync_version),
                    Some(Box::new(row.clone().into())),
                    None,
                ));
                continue;
            }
            if batch_stamps.contains_key(&stamp) {
                outcomes[i] = Some(reject(
                    Some(id),
                    "duplicate",
                    "another record of this batch has the same device and client_timestamp",
                ));
                continue;
            }
        }
        // The same rules as online clock-in. Checked before any decision, so that a conflict
        // queued for an admin holds acceptable times.
        if let Some(content) = content
            && let Err(reason) = check_new_times(content, existing, &rules, now)
        {
            outcomes[i] = Some(reject(Some(id), "validation_failed", reason));
            continue;
        }
        let write = |content: &Content, version: i32| -> Result<Write, Outcome> {
            let site = sites.get(&content.facility_id).ok_or_else(|| {
                reject(
                    Some(id),
                    "validation_failed",
                    "facility_id: no such facility",
                )
            })?;
            if let Some(refusal) = site_refuses(site, content, existing, config) {
                return Err(reject(Some(id), refusal.code, refusal.message()));
            }
            Ok(build_write(
                id,
                content,
                site,
                version,
                Some(stamp),
                now,
                config,
            ))
        };
        let server = existing.map(|row| ServerCopy {
            version: row.sync_version,
            content: Content::from_row(row),
            deleted: row.deleted_at.is_some(),
        });
        let decision = decide(
            record.op,
            record.sync_version,
            content.as_ref(),
            server.as_ref(),
            strategy,
        );
        // A change a push already applied, sent again after the record moved on (its answer
        // lost): the same change, not a stale edit for the strategy to settle.
        let change = change_digest(device_id, record.op, content.as_ref(), stamp);
        let applied_before = pushed.get(&id).is_some_and(|c| c.contains(&change));
        let decision = match decision {
            Decision::Conflict(_) if applied_before => Decision::Duplicate,
            other => other,
        };
        let server_version = existing.map(|r| r.sync_version);
        let server_record = || existing.map(|r| Box::new(AttendanceRecord::from(r.clone())));

        // A change applied as the client sent it (create, update, client_wins).
        let mut apply = |w: Write,
                         is_create: bool,
                         status: ResultStatus,
                         resolution: Option<&'static str>,
                         plan: &mut Plan,
                         open: &mut Option<AttendanceRow>|
         -> Outcome {
            let opens = w.status == "open";
            let open_elsewhere = open.as_ref().filter(|o| o.id != w.id);
            if opens && let Some(other) = open_elsewhere {
                // Overlapping open shifts of one user are a conflict with the open one.
                match strategy {
                    Strategy::ClientWins => plan.close(other.id),
                    Strategy::ServerWins | Strategy::Manual => {
                        if strategy == Strategy::Manual {
                            let mut client = client_data(Op::Upsert, Some(&w.content), stamp);
                            // Its own stored version (none: the server does not have it), so
                            // that a resolution can tell whether the record moved on since.
                            client["stored_version"] = json!(server_version);
                            let (id, version) = (w.id, record.sync_version);
                            if let Err(full) =
                                queue(plan, queued, *pending, id, version, client, other)
                            {
                                return full;
                            }
                        }
                        return Outcome::Done(
                            w.id,
                            ResultStatus::Conflict,
                            server_version,
                            Some(Box::new(other.clone().into())),
                            Some(strategy.as_str()),
                        );
                    }
                }
            }
            if opens {
                // A stand-in, so that later records of the batch see it as the open shift.
                *open = Some(w.row(user_id, device_id, now));
            } else if open.as_ref().is_some_and(|o| o.id == w.id) {
                *open = None;
            }
            let id = w.id;
            if is_create {
                if let Some(stamp) = w.client_timestamp {
                    batch_stamps.insert(stamp, w.id);
                }
                plan.inserts.push(w)
            } else {
                plan.updates.push(w)
            }
            Outcome::Written(status, id, resolution)
        };

        let outcome = match decision {
            Decision::Duplicate => Outcome::Done(
                id,
                ResultStatus::Duplicate,
                server_version,
                server_record(),
                None,
            ),
            Decision::DeleteUnknown => {
                plan.withdrawn.push(id);
                Outcome::Done(id, ResultStatus::Deleted, None, None, None)
            }
            Decision::Create => match write(
                content.as_ref().expect("upsert has content"),
                record.sync_version,
            ) {
                Ok(w) => apply(w, true, ResultStatus::Created, None, &mut plan, &mut open),
                Err(o) => o,
            },
            Decision::Update | Decision::Conflict(Strategy::ClientWins)
                if record.op == Op::Upsert =>
            {
                let resolution = matches!(decision, Decision::Conflict(_)).then_some("client_wins");
                let status = if resolution.is_some() {
                    ResultStatus::Conflict
                } else {
                    ResultStatus::Updated
                };
                match write(
                    content.as_ref().expect("upsert has content"),
                    server_version.unwrap_or(0) + 1,
                ) {
                    Ok(w) => apply(
                        w.stays_closed(existing),
                        false,
                        status,
                        resolution,
                        &mut plan,
                        &mut open,
                    ),
                    Err(o) => o,
                }
            }
            Decision::Delete | Decision::Conflict(Strategy::ClientWins) => {
                let resolution = matches!(decision, Decision::Conflict(_)).then_some("client_wins");
                let version = server_version.unwrap_or(0) + 1;
                plan.deletes.push((id, version));
                if open.as_ref().is_some_and(|o| o.id == id) {
                    open = None;
                }
                let status = if resolution.is_some() {
                    ResultStatus::Conflict
                } else {
                    ResultStatus::Deleted
                };
                Outcome::Written(status, id, resolution)
            }
            Decision::Conflict(s @ (Strategy::ServerWins | Strategy::Manual)) => {
                let queueing = match s {
                    Strategy::Manual => {
                        let row = existing.expect("a conflict has a server copy");
                        let client = client_data(record.op, content.as_ref(), stamp);
                        let version = record.sync_version;
                        queue(&mut plan, queued, *pending, id, version, client, row)
                    }
                    _ => Ok(()),
                };
                match queueing {
                    Err(full) => full,
                    Ok(()) => Outcome::Done(
                        id,
                        ResultStatus::Conflict,
                        server_version,
                        server_record(),
                        Some(s.as_str()),
                    ),
                }
            }
            Decision::Update => unreachable!("an update is an upsert"),
        };
        if let Outcome::Written(..) = outcome {
            plan.pushed.insert(id, change);
        }
        outcomes[i] = Some(outcome);
    }
    let outcomes = outcomes
        .into_iter()
        .map(|o| o.expect("every record is decided"))
        .collect();
    (plan, outcomes)
}

/// How many records ended each way (known before anything is written).
fn count(outcomes: &[Outcome]) -> HashMap<&'static str, usize> {
    let mut counts: HashMap<&'static str, usize> = HashMap::new();
    for outcome in outcomes {
        let status = match outcome {
            Outcome::Done(_, status, ..) | Outcome::Written(status, ..) => *status,
            Outcome::Rejected(..) => ResultStatus::Rejected,
        };
        *counts.entry(status.as_str()).or_default() += 1;
    }
    counts
}

fn activity(ctx: &PushContext<'_>, device_id: &str, counts: &HashMap<&str, usize>) -> Activity {
    Activity::new("sync.push")
        .by(ctx.user)
        .from(ctx.client)
        .details(json!({
            "device_id": device_id,
            "records": counts.values().sum::<usize>(),
            "outcomes": counts,
        }))
}

/// The answer, one result per record in the order sent, with the rows as written.
fn answer(
    now: DateTime<Utc>,
    outcomes: Vec<Outcome>,
    mut written: HashMap<Uuid, AttendanceRecord>,
    counts: &HashMap<&'static str, usize>,
) -> PushResponse {
    let results: Vec<PushResult> = outcomes
        .into_iter()
        .map(|outcome| match outcome {
            Outcome::Done(id, status, version, record, resolution) => PushResult {
                id: Some(id),
                status,
                // The version the server holds of this id: none when the record answered with
                // is another (the open shift a new one conflicts with, say).
                server_version: version.or(record
                    .as_ref()
                    .filter(|r| r.id == id)
                    .map(|r| r.sync_version)),
                record: record.map(|r| *r),
                resolution: resolution.map(str::to_string),
                error: None,
            },
            Outcome::Written(status, id, resolution) => {
                let record = written.remove(&id);
                PushResult {
                    id: Some(id),
                    status,
                    server_version: record.as_ref().map(|r| r.sync_version),
                    record,
                    resolution: resolution.map(str::to_string),
                    error: None,
                }
            }
            Outcome::Rejected(id, code, message) => PushResult {
                id,
                status: ResultStatus::Rejected,
                server_version: None,
                record: None,
                resolution: None,
                error: Some(ResultError {
                    code: code.to_string(),
                    message,
                }),
            },
        })
        .collect();
    for (outcome, n) in counts {
        metrics::counter!("sync_records_total", "outcome" => *outcome).increment(*n as u64);
    }
    PushResponse {
        server_timestamp: now,
        results,
    }
}

fn client_data(op: Op, content: Option<&Content>, stamp: DateTime<Utc>) -> Value {
    json!({ "op": op, "content": content, "client_timestamp": stamp })
}

/// A change as one number: the device that sent it and what it sent (its operation, content and
/// client timestamp), hashed field by field. Equal for the same change sent again, whatever the
/// record has become since; a change with other content, or from another device, differs even
/// at the same client timestamp.
pub(crate) fn change_digest(
    device_id: &str,
    op: Op,
    content: Option<&Content>,
    stamp: DateTime<Utc>,
) -> i64 {
    use sha2::{Digest, Sha256};
    /// A value that may be absent, told apart from every present one.
    fn optional<T>(hash: &mut Sha256, value: Option<T>, write: impl FnOnce(&mut Sha256, T)) {
        match value {
            Some(value) => {
                hash.update([1]);
                write(hash, value);
            }
            None => hash.update([0]),
        }
    }
    fn text(hash: &mut Sha256, text: Option<&str>) {
        optional(hash, text, |hash, t| {
            hash.update((t.len() as u64).to_be_bytes());
            hash.update(t.as_bytes());
        });
    }
    fn time(hash: &mut Sha256, at: Option<DateTime<Utc>>) {
        optional(hash, at, |hash, at| {
            hash.update(at.timestamp_micros().to_be_bytes())
        });
    }
    fn number(hash: &mut Sha256, n: Option<f64>) {
        optional(hash, n, |hash, n| hash.update(n.to_bits().to_be_bytes()));
    }
    fn place(hash: &mut Sha256, at: Option<&Location>) {
        optional(hash, at, |hash, at| {
            number(hash, Some(at.latitude));
            number(hash, Some(at.longitude));
            number(hash, at.accuracy_m);
        });
    }
    let mut hash = Sha256::new();
    text(&mut hash, Some(device_id));
    hash.update([match op {
        Op::Upsert => 1,
        Op::Delete => 2,
    }]);
    time(&mut hash, Some(stamp));
    if let Some(c) = content {
        hash.update(c.facility_id.as_bytes());
        time(&mut hash, Some(c.clock_in_at));
        time(&mut hash, c.clock_out_at);
        place(&mut hash, Some(&c.clock_in));
        place(&mut hash, c.clock_out.as_ref());
        text(&mut hash, c.notes.as_deref());
    }
    let digest = hash.finalize();
    i64::from_be_bytes(
        digest[..8]
            .try_into()
            .expect("a SHA-256 digest has 32 bytes"),
    )
}

/// The most conflicts of one user that wait for an admin at once. Past it, a record that would
/// be queued is rejected, to be sent again once the admin has caught up: one device cannot bury
/// the queue, and nothing it sent is lost.
pub const MAX_PENDING_CONFLICTS: i64 = 200;

/// Queues the device's copy `client` of record `id` against the server's record `server` (the
/// same record, or the open shift a new one was pushed beside), unless that copy is queued
/// already (`queued`: a retried push); the rejection when the user's queue, `pending` long
/// before this batch, is full.
fn queue(
    plan: &mut Plan,
    queued: &HashSet<(Uuid, String)>,
    pending: i64,
    id: Uuid,
    version: i32,
    client: Value,
    server: &AttendanceRow,
) -> Result<(), Outcome> {
    if queued.contains(&(id, client.to_string())) {
        return Ok(());
    }
    if pending + plan.conflicts.len() as i64 >= MAX_PENDING_CONFLICTS {
        return Err(reject(
            Some(id),
            "conflict_queue_full",
            format!(
                "{MAX_PENDING_CONFLICTS} of your conflicts already wait for an administrator; \
                 keep this record and send it again once they are resolved"
            ),
        ));
    }
    plan.conflicts.push((
        id,
        version,
        server.sync_version,
        client,
        json!(AttendanceRecord::from(server.clone())),
    ));
    Ok(())
}

/// Begins a transaction holding the user's sync lock: pushes of one user's devices are
/// serialised, so that two of them cannot both open a shift. Transaction-scoped, so PgBouncer's
/// transaction pooling keeps it. Each statement, and each wait for a lock (this one included),
/// gives up after `limit` (the request's): a push the service gave up on would otherwise keep
/// waiting, and its pool connection taken, for as long as the lock or a row is held. The lock is
/// taken inside the transaction, not with its `BEGIN`: a request dropped while it waits then
/// rolls the transaction back at once, where a `BEGIN` (which runs to its end in a task of its
/// own, see [`crate::db::begin_with`]) would wait on for the lock with no one to answer.
pub(crate) async fn begin_for_user(
    db: &PgPool,
    user_id: Uuid,
    limit: std::time::Duration,
) -> Result<crate::db::Tx, sqlx::Error> {
    let mut tx = crate::db::begin_limited(db, limit, limit).await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(user_id.to_string())
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// What a batch touches, read in one statement.
#[derive(Default)]
struct Touched {
    /// The batch's records that already exist (whoever owns them).
    by_id: HashMap<Uuid, AttendanceRow>,
    /// The user's records from this device at the batch's client timestamps: the same change
    /// sent again under another id.
    by_stamp: HashMap<DateTime<Utc>, AttendanceRow>,
    /// The user's open shift.
    open: Option<AttendanceRow>,
    /// The latest changes pushes applied to each record of the batch ([`change_digest`]).
    pushed: HashMap<Uuid, Vec<i64>>,
}

#[derive(sqlx::FromRow)]
struct TouchedRow {
    #[sqlx(flatten)]
    row: AttendanceRow,
    by_id: bool,
    by_stamp: bool,
    is_open: bool,
    pushed_changes: Option<Vec<i64>>,
}

impl Touched {
    async fn read(
        tx: &mut PgConnection,
        user_id: Uuid,
        device_id: &str,
        ids: &[Uuid],
        stamps: &[DateTime<Utc>],
        lock: bool,
    ) -> Result<Self, sqlx::Error> {
        // The device-timestamp condition leaves the user out on purpose: so written, only
        // attendance_device_timestamp_key can serve it (see its migration). Another user's row on
        // a shared device is flagged neither by id, by stamp nor open, and ignored.
        let sql = format!(
            "SELECT {}, a.id = ANY($1) AS by_id,
                    coalesce(a.user_id = $2 AND a.device_id = $3 AND a.client_timestamp = ANY($4), false) AS by_stamp,
                    (a.user_id = $2 AND a.status = 'open' AND a.deleted_at IS NULL) AS is_open,
                    a.pushed AS pushed_changes
             FROM attendance a
             WHERE a.id = ANY($1)
                OR (a.device_id = $3 AND a.client_timestamp = ANY($4))
                OR (a.user_id = $2 AND a.status = 'open' AND a.deleted_at IS NULL)
             {}",
            records::COLUMNS,
            if lock { "FOR UPDATE" } else { "" }
        );
        let rows: Vec<TouchedRow> = sqlx::query_as(&sql)
            .bind(ids)
            .bind(user_id)
            .bind(device_id)
            .bind(stamps)
            .fetch_all(&mut *tx)
            .await?;
        let mut touched = Touched {
            by_id: HashMap::new(),
            by_stamp: HashMap::new(),
            open: None,
            pushed: HashMap::new(),
        };
        for r in rows {
            if r.is_open {
                touched.open = Some(r.row.clone());
            }
            if r.by_stamp
                && let Some(stamp) = r.row.client_timestamp
            {
                touched.by_stamp.insert(stamp, r.row.clone());
            }
            if r.by_id {
                if let Some(changes) = r.pushed_changes {
                    touched.pushed.insert(r.row.id, changes);
                }
                touched.by_id.insert(r.row.id, r.row);
            }
        }
        Ok(touched)
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn a_change_hashes_alike_only_when_sent_again_whole() {
        let at = Utc.with_ymd_and_hms(2026, 11, 1, 6, 0, 0).unwrap();
        let content = Content {
            facility_id: Uuid::from_u128(7),
            clock_in_at: at,
            clock_out_at: None,
            clock_in: Location {
                latitude: -1.9,
                longitude: 30.1,
                accuracy_m: Some(12.5),
            },
            clock_out: None,
            notes: None,
        };
        let sent = change_digest("phone", Op::Upsert, Some(&content), at);
        assert_eq!(
            sent,
            change_digest("phone", Op::Upsert, Some(&content.clone()), at)
        );
        let mut noted = content.clone();
        noted.notes = Some(String::new());
        let mut moved = content.clone();
        moved.clock_in.accuracy_m = None;
        let others = [
            change_digest("tablet", Op::Upsert, Some(&content), at),
            change_digest("phone", Op::Delete, None, at),
            change_digest(
                "phone",
                Op::Upsert,
                Some(&content),
                at + chrono::Duration::microseconds(1),
            ),
            change_digest("phone", Op::Upsert, Some(&noted), at),
            change_digest("phone", Op::Upsert, Some(&moved), at),
        ];
        assert!(others.iter().all(|d| *d != sent), "{others:?} vs {sent}");
    }
}
