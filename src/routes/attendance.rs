//! Clock-in and clock-out, and the records they make, scoped by role.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, FixedOffset, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::{AuthUser, ClientInfo};
use crate::db::attendance::{self as records, AttendanceFilter, AttendanceRecord};
use crate::db::clock_ins::NewClockIn;
use crate::db::clock_outs::{self, CloseShift, OpenShift};
use crate::db::coalesce::Shared;
use crate::domain::GeoPoint;
use crate::domain::attendance::{
    MAX_RECORD_NOTES, forgotten_before, settle_clock_out, too_old_to_open,
};
use crate::error::{ApiError, ErrorCode, ErrorEnvelope, Invalid};
use crate::extract::{Json, Path, Query};
use crate::routes::checks::optional_text;
use crate::routes::pagination::{Page, Paging};
use crate::routes::period;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(clock_in))
        .routes(routes!(clock_out))
        .routes(routes!(active))
        .routes(routes!(list_attendance))
        .routes(routes!(my_records))
        .routes(routes!(get_attendance))
        .merge(crate::routes::reports::router())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClockIn {
    #[schema(example = -1.9457)]
    #[schema(minimum = -90, maximum = 90)]
    pub latitude: f64,
    #[schema(example = 30.1268)]
    #[schema(minimum = -180, maximum = 180)]
    pub longitude: f64,
    #[schema(example = 8.0)]
    #[schema(minimum = 0)]
    pub accuracy_m: Option<f64>,
    /// Defaults to the user's facility.
    pub facility_id: Option<Uuid>,
    /// When it happened on the device (RFC 3339 with offset); default now.
    pub occurred_at: Option<DateTime<FixedOffset>>,
    #[schema(max_length = 128)]
    pub device_id: Option<String>,
    /// Idempotency key: a retried clock-in with the same `client_id` returns the same record.
    #[schema(max_length = 128)]
    pub client_id: Option<String>,
    #[schema(max_length = 1000)]
    pub notes: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClockOut {
    #[schema(example = -1.9457)]
    #[schema(minimum = -90, maximum = 90)]
    pub latitude: f64,
    #[schema(example = 30.1268)]
    #[schema(minimum = -180, maximum = 180)]
    pub longitude: f64,
    #[schema(minimum = 0)]
    pub accuracy_m: Option<f64>,
    /// When the shift ended; a time up to the clock tolerance before the clock-in (a phone's
    /// clock running behind the server's) ends it where it began.
    pub occurred_at: Option<DateTime<FixedOffset>>,
    /// Kept beside the clock-in's notes, on a line of its own.
    #[schema(max_length = 1000)]
    pub notes: Option<String>,
}

/// The point and accuracy of a request, or the fields' reasons.
pub fn check_location(
    latitude: f64,
    longitude: f64,
    accuracy: Option<f64>,
    invalid: &mut Invalid,
) -> Option<GeoPoint> {
    if let Some(a) = accuracy
        && !(a.is_finite() && a >= 0.0)
    {
        invalid.add("accuracy_m", "must be zero or more");
    }
    match GeoPoint::new(latitude, longitude) {
        Ok(p) => Some(p),
        Err((field, reason)) => {
            invalid.add(field, reason);
            // A bad latitude is found first; the longitude is told too when it is also bad.
            if field == "latitude"
                && let Err((field, reason)) = GeoPoint::new(0.0, longitude)
            {
                invalid.add(field, reason);
            }
            None
        }
    }
}

fn geofence_refusal(distance: f64, radius: i32) -> ApiError {
    ApiError::invalid(
        "location",
        format!("is {distance:.0} m from the facility, outside its {radius} m geofence"),
    )
}

fn already_clocked_in() -> ApiError {
    ApiError::conflict(
        ErrorCode::AlreadyClockedIn,
        "you are already clocked in; clock out first",
    )
}

/// Starts a shift.
///
/// A retry with the same `client_id` answers 200 with the record the first attempt made; a second
/// open shift is refused with 409.
#[utoipa::path(post, path = "/attendance/clock-in", tag = "attendance", security(("bearer" = [])), request_body = ClockIn,
    responses(
        (status = 201, description = "Clocked in", body = AttendanceRecord),
        (status = 200, description = "A retry (the same `client_id`, or the same `device_id` and `occurred_at`): the record made the first time; also when the clock-in would by now be refused (a later shift worked, the time rules, the facility closed) and the request is that clock-in's own (the same spot, time and facility)", body = AttendanceRecord),
        (status = 400, description = "Malformed JSON", body = ErrorEnvelope),
        (status = 409, description = "Already clocked in (`already_clocked_in`), or a backdated `occurred_at` inside or before a shift already worked (`conflict`), or a retry of a clock-in deleted since (`conflict`), or a `client_id`, or a `device_id` and `occurred_at`, already used for another clock-in (`conflict`)", body = ErrorEnvelope),
        (status = 422, description = "Invalid fields, a time outside the accepted window or more than the maximum shift ago, no facility, or outside the geofence when enforced", body = ErrorEnvelope),
    ))]
async fn clock_in(
    State(state): State<AppState>,
    user: AuthUser,
    client: ClientInfo,
    Json(req): Json<ClockIn>,
) -> Result<(StatusCode, Json<AttendanceRecord>), ApiError> {
    let now = Utc::now();
    let mut invalid = Invalid::default();
    let point = check_location(req.latitude, req.longitude, req.accuracy_m, &mut invalid);
    let device_id = optional_text(req.device_id, "device_id", 128, &mut invalid);
    let client_id = optional_text(req.client_id, "client_id", 128, &mut invalid);
    let notes = optional_text(req.notes, "notes", 1000, &mut invalid);
    let client_timestamp = req.occurred_at.map(|t| t.with_timezone(&Utc));
    // A malformed request is told everything wrong with it at once, its time included.
    if !invalid.is_empty() {
        check_time(&state, client_timestamp.unwrap_or(now), now, &mut invalid);
    }
    invalid.finish()?;
    let point = point.expect("checked above");
    let tap = Tap {
        facility_id: req.facility_id,
        occurred_at: client_timestamp.unwrap_or(now),
        point,
        client_id: client_id.as_deref(),
        device_id: device_id.as_deref(),
    };
    let Admitted {
        site,
        occurred_at,
        distance,
        outside,
    } = match admit(&state, &user, &tap, now).await {
        Ok(admitted) => admitted,
        // A clock-in sent again after it was stored (its answer lost) may be refused by now: a
        // later shift worked since, the time rules, the facility closed. It gets its record.
        Err(refusal @ (ApiError::Validation(_) | ApiError::Conflict { .. })) => {
            let earlier = earlier_attempt(&state, user.id, &tap, client_timestamp)
                .await?
                .filter(|row| is_same_tap(row, &tap, req.accuracy_m, client_timestamp));
            return match earlier {
                Some(row) => Ok((StatusCode::OK, Json(row.into()))),
                None => Err(refusal),
            };
        }
        Err(other) => return Err(other),
    };

    // The common case is written with the clock-ins that arrive beside it (see
    // `db::coalesce`). One it did not write is written alone, and told apart by the constraint
    // it meets: a retry (client_id) gets its record back, and an open shift older than the
    // maximum (a forgotten clock-out) is closed as incomplete so that it does not block today.
    let new = Arc::new(NewClockIn {
        user_id: user.id,
        email: user.email.clone(),
        facility_id: site.id,
        point,
        accuracy_m: req.accuracy_m,
        occurred_at,
        client_timestamp,
        distance,
        outside,
        device_id: device_id.clone(),
        client_id: client_id.clone(),
        notes,
        ip: client.ip,
        user_agent: client.user_agent,
    });
    match state.batches.clock_ins.submit(new.clone()).await {
        Shared::Served(Some(row)) => return Ok((StatusCode::CREATED, Json(row.into()))),
        Shared::Served(None) | Shared::Alone => {}
        // It may have been written: writing it again could make a second record.
        Shared::Unknown => return Err(ApiError::Unavailable),
    }
    let mut closed_forgotten = 0;
    let mut tried_again = false;
    let row = loop {
        let error = match new.insert(&state.db, closed_forgotten).await {
            Ok(row) => break row,
            Err(error) => error,
        };
        let constraint = match &error {
            sqlx::Error::Database(db) => db.constraint().map(str::to_owned),
            _ => None,
        };
        let one_open = constraint.as_deref() == Some("attendance_one_open_per_user");
        // The same device's tap at the same instant, from the same spot, is the same clock-in,
        // sent again (the open-shift index may trip first while that shift is still open).
        // Another tap with the time of one already stored is refused: answering with that
        // record would lose this one.
        let device_key = constraint.as_deref() == Some("attendance_device_timestamp_key");
        if (one_open || device_key)
            && let (Some(device), Some(at)) = (&new.device_id, new.client_timestamp)
            && let Some(existing) =
                records::by_device_timestamp(&state.db, user.id, device, at).await?
        {
            if is_same_tap(&existing, &tap, req.accuracy_m, client_timestamp) {
                return retried(existing);
            }
            if device_key {
                return Err(ApiError::conflict(
                    ErrorCode::Conflict,
                    "this device already sent a clock-in with this occurred_at; a new clock-in \
                     needs its own time",
                ));
            }
        }
        if !one_open && constraint.as_deref() != Some("attendance_client_id_key") {
            return Err(error.into());
        }
        // A retry of a clock-in that already happened gets that record back. A key already
        // spent on another clock-in is refused: answering with that record would lose this one.
        if let Some(cid) = &new.client_id
            && let Some(existing) = records::by_client_id(&state.db, user.id, cid).await?
        {
            if is_same_tap(&existing, &tap, req.accuracy_m, client_timestamp) {
                return retried(existing);
            }
            if !one_open {
                return Err(ApiError::conflict(
                    ErrorCode::Conflict,
                    "client_id was already used for another clock-in; a new clock-in needs a \
                     new client_id",
                ));
            }
        }
        if !one_open {
            return Err(error.into());
        }
        if closed_forgotten > 0 || tried_again {
            return Err(already_clocked_in());
        }
        closed_forgotten = records::close_forgotten(
            &state.db,
            Some(user.id),
            forgotten_before(now, state.config.attendance.max_shift),
        )
        .await?;
        if closed_forgotten == 0 {
            // None left to close: the open shift is today's, or someone closed the forgotten
            // one first: the sweep (then this clock-in goes in on one more try), or a request
            // sent before this one, the same clock-in retried before its answer came, which
            // wrote it meanwhile (then a retry finds its record by the key it carries).
            tried_again = true;
        }
    };
    Ok((StatusCode::CREATED, Json(row.into())))
}

/// A clock-in as sent, once its fields are well formed.
struct Tap<'a> {
    facility_id: Option<Uuid>,
    occurred_at: DateTime<Utc>,
    point: GeoPoint,
    client_id: Option<&'a str>,
    device_id: Option<&'a str>,
}

/// What a clock-in admitted is written with.
struct Admitted {
    site: crate::db::facilities::Site,
    /// The time it happened: the time sent, or now when that was a little ahead.
    occurred_at: DateTime<Utc>,
    distance: f64,
    outside: bool,
}

/// The rules a clock-in must meet against the clock and what is stored: the time window, an
/// active facility, the geofence when enforced, and no shift already worked after its time.
async fn admit(
    state: &AppState,
    user: &AuthUser,
    tap: &Tap<'_>,
    now: DateTime<Utc>,
) -> Result<Admitted, ApiError> {
    let mut invalid = Invalid::default();
    check_time(state, tap.occurred_at, now, &mut invalid);
    invalid.finish()?;
    // A time within the tolerance ahead of the server clock is a phone's clock running fast:
    // the tap happened now.
    let occurred_at = tap.occurred_at.min(now);

    let facility_id = tap.facility_id.or(user.facility_id).ok_or_else(|| {
        ApiError::invalid("facility_id", "is required: you have no default facility")
    })?;
    let site = state
        .sites
        .get(&state.db, facility_id)
        .await?
        .ok_or_else(|| ApiError::invalid("facility_id", "no such facility"))?;
    if site.status != "active" {
        let whose = match tap.facility_id {
            Some(_) => "the facility",
            None => "your default facility",
        };
        let status = match site.status.as_str() {
            "maintenance" => "under maintenance",
            other => other,
        };
        return Err(ApiError::invalid(
            "facility_id",
            format!("{whose} is {status} and takes no clock-ins"),
        ));
    }
    let (distance, outside) = site.measure(tap.point);
    if outside && state.config.attendance.enforce_geofence {
        return Err(geofence_refusal(distance, site.geofence_radius_m));
    }
    // A clock-in backdated into or before a shift already worked would count those hours twice
    // (the new shift runs from its start until the clock-out). A tap sent as it happens cannot
    // be before a closed shift's end, so only backdated ones are checked.
    // The shift this very clock-in began (a retry by client_id, or the same device's tap) is
    // not another shift: the insert finds it and answers with it.
    if occurred_at < now - chrono::Duration::minutes(1) {
        let tolerance = state.config.attendance.future_tolerance;
        let worked = records::worked_shift_at(
            &state.db,
            user.id,
            occurred_at,
            tolerance,
            tap.client_id,
            tap.device_id,
        )
        .await?;
        if let Some((from, to)) = worked {
            return Err(ApiError::conflict(
                ErrorCode::Conflict,
                format!(
                    "occurred_at is before the end of a shift you already worked ({} to {}); \
                     a shift can start only after it",
                    from.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    to.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ),
            ));
        }
    }
    Ok(Admitted {
        site,
        occurred_at,
        distance,
        outside,
    })
}

/// The answer to a clock-in sent again: the record it made, unless that was deleted since (its
/// key is spent: a new clock-in needs a new `client_id`, or a new tap).
fn retried(
    existing: records::AttendanceRow,
) -> Result<(StatusCode, Json<AttendanceRecord>), ApiError> {
    if existing.deleted_at.is_some() {
        return Err(ApiError::conflict(
            ErrorCode::Conflict,
            "the clock-in this repeats was deleted since; a new clock-in needs a new client_id \
             (or device time)",
        ));
    }
    Ok((StatusCode::OK, Json(existing.into())))
}

/// A clock-in's time against the window (not too far ahead, not too old) and the maximum shift.
fn check_time(state: &AppState, at: DateTime<Utc>, now: DateTime<Utc>, invalid: &mut Invalid) {
    if let Err(reason) = state.config.attendance.time_rules().check(at, now) {
        invalid.add("occurred_at", reason);
    }
    if let Err(reason) = too_old_to_open(at, now, state.config.attendance.max_shift) {
        invalid.add("occurred_at", reason);
    }
}

/// The record an earlier attempt of this clock-in made, unless deleted since: by its
/// `client_id`, or by the same device's tap at the same `occurred_at`.
async fn earlier_attempt(
    state: &AppState,
    user_id: Uuid,
    tap: &Tap<'_>,
    at: Option<DateTime<Utc>>,
) -> Result<Option<records::AttendanceRow>, sqlx::Error> {
    let mut found = None;
    if let Some(cid) = tap.client_id {
        found = records::by_client_id(&state.db, user_id, cid).await?;
    }
    if found.is_none()
        && let (Some(device), Some(at)) = (tap.device_id, at)
    {
        found = records::by_device_timestamp(&state.db, user_id, device, at).await?;
    }
    // A record deleted since is no answer: the refusal stands.
    Ok(found.filter(|row| row.deleted_at.is_none()))
}

/// The stored clock-in is this very request, sent again: the same spot to the last digit, the
/// same time and facility when it named them. A request that merely reuses a key is refused
/// as it would be without one.
fn is_same_tap(
    row: &records::AttendanceRow,
    tap: &Tap<'_>,
    accuracy_m: Option<f64>,
    at: Option<DateTime<Utc>>,
) -> bool {
    row.clock_in_latitude == tap.point.latitude
        && row.clock_in_longitude == tap.point.longitude
        && row.clock_in_accuracy_m == accuracy_m
        && tap.facility_id.is_none_or(|f| f == row.facility_id)
        && at.is_none_or(|at| row.client_timestamp == Some(at.trunc_subsecs(6)))
}

/// The user's open shift, read with the others asked for at the same time, or alone when that
/// read failed (a read is safe to repeat).
async fn open_shift(state: &AppState, user_id: Uuid) -> Result<Option<OpenShift>, ApiError> {
    match state.batches.open_shifts.submit(user_id).await {
        Shared::Served(open) => Ok(open),
        Shared::Alone | Shared::Unknown => Ok(clock_outs::open_shift(&state.db, user_id).await?),
    }
}

/// How long after a clock-out the same clock-out sent again answers with the shift it closed,
/// when the user has not clocked in since. A phone retries within seconds; ten minutes covers
/// one that was offline meanwhile.
const REPEATED_CLOCK_OUT_WITHIN: std::time::Duration = std::time::Duration::from_secs(10 * 60);

fn not_clocked_in(message: &str) -> ApiError {
    ApiError::conflict(ErrorCode::NotClockedIn, message)
}

/// Ends the caller's shift.
///
/// The open shift, or the latest one closed as incomplete before this clock-out came, if it still
/// fits it.
#[utoipa::path(post, path = "/attendance/clock-out", tag = "attendance", security(("bearer" = [])), request_body = ClockOut,
    responses(
        (status = 200, description = "The closed record; also the caller's latest shift when it was closed as incomplete before this clock-out arrived (past the maximum shift length, by the periodic sweep or at a sync; or replaced by a shift deleted since), and is of normal length by the clock-out's time; also when the clock-out that closed the caller's latest shift, in the last 10 minutes, is sent again (the same coordinates and accuracy, and the same notes and time when it sent any; when the user clocked in since, one with the very time that clock-out sent, however late, before the open shift began or after it by no more than the clock difference allowed): that shift as it is stored", body = AttendanceRecord),
        (status = 400, description = "Malformed JSON", body = ErrorEnvelope),
        (status = 409, description = "No open shift (`not_clocked_in`), or it exceeded the maximum shift by the clock-out's time and was closed as incomplete; `conflict` when it kept changing while it was being closed (retry)", body = ErrorEnvelope),
        (status = 422, description = "Invalid fields, a time outside the accepted window or before the clock-in", body = ErrorEnvelope),
    ))]
async fn clock_out(
    State(state): State<AppState>,
    user: AuthUser,
    client: ClientInfo,
    Json(req): Json<ClockOut>,
) -> Result<Json<AttendanceRecord>, ApiError> {
    let now = Utc::now();
    let mut invalid = Invalid::default();
    let point = check_location(req.latitude, req.longitude, req.accuracy_m, &mut invalid);
    let occurred_at = req.occurred_at.map_or(now, |t| t.with_timezone(&Utc));
    if let Err(reason) = state.config.attendance.time_rules().check(occurred_at, now) {
        invalid.add("occurred_at", reason);
    }
    let notes = optional_text(req.notes, "notes", 1000, &mut invalid);
    invalid.finish()?;
    let point = point.expect("checked above");

    // Read the open shift, then close it unless it changed since (see `db::clock_outs`); each
    // step shared with the clock-outs that arrive beside it, or taken alone when its batch
    // failed.
    let max_shift = state.config.attendance.max_shift;
    // A time within the tolerance ahead of the server clock is a phone's clock running fast:
    // the shift ends now, and is measured and stored so.
    let occurred_at = occurred_at.min(now);
    let sent = records::SentClockOut {
        point,
        accuracy_m: req.accuracy_m,
        notes: notes.as_deref(),
        at: req.occurred_at.map(|t| t.with_timezone(&Utc)),
        tolerance: state.config.attendance.future_tolerance,
    };
    // The shift a close just missed: a clock-in may have closed it as incomplete meanwhile (past
    // the maximum shift by now, not by this clock-out's time), and this clock-out, which came
    // while it was the user's latest, still ends it.
    let mut missed: Option<Uuid> = None;
    for _ in 0..3 {
        let again = match missed {
            Some(id) => clock_outs::closed_incomplete(&state.db, user.id, id).await?,
            None => None,
        };
        let current = match (again, open_shift(&state, user.id).await?) {
            // Unless a shift begun by this clock-out's time is open now: that one it ends.
            (Some(_), Some(open)) if open.row.clock_in_at <= occurred_at => Some(open),
            (Some(missed), _) => Some(missed),
            (None, open) => open,
        };
        let (open, change_xid) = match current {
            Some(OpenShift { row, change_xid }) => {
                // A clock-out stamped before the open shift began (or after it, by no more
                // than a phone's clock may run ahead), sent again late (its answer was lost,
                // and the user clocked in since): the shift it closed, not this one. The time
                // it sent must be the one that clock-out sent, to the microsecond: a clock-out
                // of this shift from a phone whose clock runs behind would be stamped before it
                // began too. Looked for as far back as a time is accepted: the phone may have
                // been offline long since.
                let ahead = chrono::Duration::from_std(state.config.attendance.future_tolerance)
                    .unwrap_or_default();
                if sent.at.is_some_and(|at| at < row.clock_in_at + ahead)
                    && let Some(earlier) = records::latest_shift(
                        &state.db,
                        user.id,
                        sent,
                        state.config.attendance.max_age,
                        Some(row.clock_in_at),
                    )
                    .await?
                    && earlier.repeated
                {
                    return Ok(Json(earlier.row.into()));
                }
                (row, change_xid)
            }
            None => {
                let latest = records::latest_shift(
                    &state.db,
                    user.id,
                    sent,
                    REPEATED_CLOCK_OUT_WITHIN,
                    None,
                )
                .await?;
                match latest {
                    Some(latest) if latest.repeated => return Ok(Json(latest.row.into())),
                    // A clock-out held back until after its shift was closed as incomplete (the
                    // phone offline past the sweep or a sync, or its answer lost; or the shift
                    // replaced by one deleted since) still ends that shift, as a sync push would: the
                    // user's latest, with no clock-out, and of normal length by the clock-out's
                    // own time.
                    Some(latest)
                        if latest.row.status == "incomplete"
                            && latest.row.clock_out_at.is_none()
                            && latest.row.clock_in_at
                                >= forgotten_before(occurred_at, max_shift) =>
                    {
                        (latest.row, latest.change_xid)
                    }
                    Some(latest) if latest.row.status == "incomplete" => {
                        return Err(not_clocked_in(
                            "you are not clocked in: your last shift was closed as incomplete \
                             (open past the maximum shift length, or replaced by another)",
                        ));
                    }
                    _ => return Err(not_clocked_in("you are not clocked in")),
                }
            }
        };
        // Measured to the clock-out's own time: a clock-out sent late (the phone was offline)
        // still closes a shift of normal length, as long as no clock-out has closed it since (a
        // close as incomplete does not stop it, see above).
        if open.clock_in_at < forgotten_before(occurred_at, max_shift) {
            let cutoff = forgotten_before(now, max_shift);
            records::close_forgotten(&state.db, Some(user.id), cutoff).await?;
            return Err(not_clocked_in(
                "your open shift exceeded the maximum shift length and was closed as incomplete",
            ));
        }
        let tolerance = state.config.attendance.future_tolerance;
        let occurred_at = settle_clock_out(open.clock_in_at, occurred_at, tolerance);
        if occurred_at < open.clock_in_at {
            return Err(ApiError::invalid(
                "occurred_at",
                "is before the clock-in (by more than the clock difference allowed)",
            ));
        }
        if let (Some(kept), Some(added)) = (open.notes.as_deref(), notes.as_deref())
            && kept != added
            && kept.chars().count() + 1 + added.chars().count() > MAX_RECORD_NOTES
        {
            return Err(ApiError::invalid(
                "notes",
                format!(
                    "with the shift's notes (kept before them), must be at most \
                     {MAX_RECORD_NOTES} characters"
                ),
            ));
        }
        let site = state
            .sites
            .get(&state.db, open.facility_id)
            .await?
            .ok_or(ApiError::NotFound)?;
        let (distance, outside) = site.measure(point);
        let close = Arc::new(CloseShift {
            id: open.id,
            change_xid,
            user_id: user.id,
            email: user.email.clone(),
            occurred_at,
            sent_at: sent.at,
            point,
            accuracy_m: req.accuracy_m,
            distance,
            outside,
            notes: notes.clone(),
            ip: client.ip.clone(),
            user_agent: client.user_agent.clone(),
        });
        let closed = match state.batches.shift_closes.submit(close.clone()).await {
            Shared::Served(closed) => closed,
            Shared::Alone => close.close(&state.db).await?,
            Shared::Unknown => return Err(ApiError::Unavailable),
        };
        if let Some(row) = closed {
            return Ok(Json(row.into()));
        }
        missed = Some(open.id);
    }
    // Still clocked in: `not_clocked_in` would tell the app to forget its open shift.
    Err(ApiError::conflict(
        ErrorCode::Conflict,
        "your open shift kept changing while it was being closed; try again",
    ))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ActiveAttendance {
    /// The open record, or null when not clocked in.
    #[schema(required = true)]
    pub attendance: Option<AttendanceRecord>,
}

/// The caller's open shift, if any.
#[utoipa::path(get, path = "/attendance/active", tag = "attendance", security(("bearer" = [])),
    responses(
        (status = 200, description = "The open record or null", body = ActiveAttendance),
    ))]
async fn active(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<Json<ActiveAttendance>, ApiError> {
    let open = open_shift(&state, user.id).await?;
    Ok(Json(ActiveAttendance {
        attendance: open.map(|o| o.row.into()),
    }))
}

/// Attendance records the caller may see, newest first.
///
/// Field roles see their own, supervisors and backstoppers their own and their tree's, admins all.
#[utoipa::path(get, path = "/attendance", tag = "attendance", security(("bearer" = [])), params(AttendanceFilter),
    responses(
        (status = 200, description = "A page of records", body = Page<AttendanceRecord>),
        (status = 400, description = "Bad query string", body = ErrorEnvelope),
        (status = 422, description = "Bad paging, or a period out of range or reversed", body = ErrorEnvelope),
    ))]
async fn list_attendance(
    State(state): State<AppState>,
    user: AuthUser,
    Query(filter): Query<AttendanceFilter>,
) -> Result<Json<Page<AttendanceRecord>>, ApiError> {
    list(&state, &user, &filter).await
}

async fn list(
    state: &AppState,
    user: &AuthUser,
    filter: &AttendanceFilter,
) -> Result<Json<Page<AttendanceRecord>>, ApiError> {
    let tz = state.config.attendance.timezone;
    let period = period::parse(filter.from.as_deref(), filter.to.as_deref(), tz)?;
    let paging = Paging::new(filter.page, filter.per_page)?;
    let (limit, offset) = (paging.limit(), paging.offset());
    let (data, total) = records::list(&state.db, user, filter, period, limit, offset).await?;
    Ok(Json(paging.wrap(data, total)))
}

/// The caller's own records.
///
/// The list with `user_id` fixed to the caller: another user's id is refused, rather than answered
/// with the caller's records as if they were that user's.
#[utoipa::path(get, path = "/attendance/my-records", tag = "attendance", security(("bearer" = [])), params(AttendanceFilter),
    responses(
        (status = 200, description = "A page of the caller's records", body = Page<AttendanceRecord>),
        (status = 400, description = "Bad query string", body = ErrorEnvelope),
        (status = 422, description = "Bad paging, a period out of range or reversed, or another user's `user_id`", body = ErrorEnvelope),
    ))]
async fn my_records(
    State(state): State<AppState>,
    user: AuthUser,
    Query(mut filter): Query<AttendanceFilter>,
) -> Result<Json<Page<AttendanceRecord>>, ApiError> {
    if filter.user_id.is_some_and(|id| id != user.id) {
        return Err(ApiError::invalid(
            "user_id",
            "my-records lists your own records; use /attendance?user_id= for another user's",
        ));
    }
    filter.user_id = Some(user.id);
    list(&state, &user, &filter).await
}

/// One record, if the caller may see it; else 404.
#[utoipa::path(get, path = "/attendance/{id}", tag = "attendance", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Record id")),
    responses(
        (status = 200, description = "The record", body = AttendanceRecord),
        (status = 400, description = "Malformed id", body = ErrorEnvelope),
        (status = 404, description = "No such record, or not visible to the caller", body = ErrorEnvelope),
    ))]
async fn get_attendance(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<Uuid>,
) -> Result<Json<AttendanceRecord>, ApiError> {
    let row = records::find(&state.db, id)
        .await?
        .filter(|r| r.deleted_at.is_none())
        .ok_or(ApiError::NotFound)?;
    if !crate::db::users::can_see(&state.db, &user, row.user_id).await? {
        return Err(ApiError::NotFound);
    }
    Ok(Json(row.into()))
}
