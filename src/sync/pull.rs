//! Pulls that never skip a change.
//!
//! Every synced row carries `change_xid`, the id of the transaction that last wrote it. A cursor
//! holds the MVCC snapshot (`pg_current_snapshot()`) that the previous pull read at: the next
//! pull returns exactly the rows whose last writer was not yet visible in that snapshot. A
//! transaction that started early and committed late is invisible to one snapshot and visible
//! in the next, so it is returned once, later — where a timestamp or sequence number taken at
//! insert time would already have been passed by the cursor.
//!
//! Pages of one pull all read "as of" the first page's snapshot (the target): rows changed
//! again after it are left for the next pull, which starts from that target. (The supervision
//! tree a later page reads is today's: users who came into scope after the target are left
//! out, see `pull`.)

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, QueryBuilder};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::auth::jwt::JwtKeys;
use crate::db::attendance::{self as records, AttendanceRecord, AttendanceRow};
use crate::db::facilities::{FROM_FACILITIES, Facility, FacilityRow, SELECT_FACILITY};
use crate::db::users::{push_scope_with_self, push_self_and_team};
use crate::error::ApiError;

/// The position of a client in the stream of changes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Cursor {
    /// Snapshot the client has fully seen (None: nothing yet).
    #[serde(rename = "b", default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// Snapshot the current pull reads up to, while it has more pages.
    #[serde(rename = "t", default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Last attendance row returned in this pull (xid, id).
    #[serde(rename = "a", default, skip_serializing_if = "Option::is_none")]
    pub attendance_after: Option<(String, Uuid)>,
    /// Last facility returned in this pull (xid, id).
    #[serde(rename = "f", default, skip_serializing_if = "Option::is_none")]
    pub facilities_after: Option<(String, Uuid)>,
    /// Facilities are done for this pull; attendance is being paged.
    #[serde(rename = "d", default)]
    pub facilities_done: bool,
    /// Attendance is done for this pull: set only by an earlier version, which paged attendance
    /// before facilities.
    #[serde(rename = "s", default, skip_serializing_if = "std::ops::Not::not")]
    pub attendance_done: bool,
    /// Last id told deleted because it left the caller's scope, while more are to come.
    #[serde(rename = "r", default, skip_serializing_if = "Option::is_none")]
    pub reset_after: Option<Uuid>,
    /// The sync epoch the cursor was issued in (see the `sync_epoch` migration).
    #[serde(rename = "e", default, skip_serializing_if = "is_zero")]
    pub epoch: i64,
    /// The user a `/sync/pull` cursor was issued to: another user's pull would start where this
    /// one's stood, and miss for good that user's own records from before it (a shared phone
    /// that kept the cursor when its user changed). None in cursors of an earlier version.
    #[serde(rename = "u", default, skip_serializing_if = "Option::is_none")]
    pub viewer: Option<Uuid>,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// Where a pull's position was kept, which says how it may be out of date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kept {
    /// A `/sync/pull` cursor the device held: refused as `cursor` when from another epoch, or
    /// from beyond the database's history.
    ByDevice,
    /// A WatermelonDB timestamp's snapshot, kept by the service and restamped with the rows:
    /// refused as `last_pulled_at` when from beyond the database's history.
    ByService,
}

/// `xmin:xmax:xip,xip` as Postgres prints a `pg_snapshot`, and as it reads one: ids from 1,
/// `xmin <= xmax`, and each in-progress id within `[xmin, xmax)`, in order.
fn valid_snapshot(s: &str) -> bool {
    let mut parts = s.split(':');
    let (Some(xmin), Some(xmax), Some(xip), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let (Some(xmin), Some(xmax)) = (xid(xmin).filter(|&x| x > 0), xid(xmax)) else {
        return false;
    };
    let mut last = xmin;
    s.len() <= 64 * 1024
        && xmin <= xmax
        && (xip.is_empty()
            || xip.split(',').all(|p| {
                let in_order = xid(p).filter(|&x| x >= last && x < xmax);
                last = in_order.unwrap_or(last);
                in_order.is_some()
            }))
}

/// A transaction id as Postgres reads an `xid8`: decimal digits that fit 64 bits.
fn xid(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl Cursor {
    /// Signed: a client may only hand back a cursor as it was given (a forged base would list
    /// records of workers the caller no longer sees).
    pub fn encode(&self, keys: &JwtKeys) -> String {
        keys.seal(&URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).expect("a cursor serialises")))
    }

    pub fn decode(text: &str, keys: &JwtKeys) -> Result<Self, ApiError> {
        let bad = || ApiError::invalid("cursor", "is not a cursor this service issued");
        let text = keys.open(text.trim()).ok_or_else(bad)?;
        let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| bad())?;
        let cursor: Cursor = serde_json::from_slice(&bytes).map_err(|_| bad())?;
        let after = [&cursor.attendance_after, &cursor.facilities_after];
        let snapshots_ok = [&cursor.base, &cursor.target]
            .into_iter()
            .flatten()
            .all(|s| valid_snapshot(s));
        let keys_ok = after.into_iter().flatten().all(|(xid, _)| valid_xid(xid));
        if snapshots_ok && keys_ok {
            Ok(cursor)
        } else {
            Err(bad())
        }
    }
}

fn valid_xid(s: &str) -> bool {
    xid(s).is_some()
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AttendanceChanges {
    /// Records created since the cursor (by the server's own creation, not the device's clock).
    pub created: Vec<AttendanceRecord>,
    /// Records changed since the cursor. One the device does not hold yet may come here too (a
    /// record changed while a paged pull was under way comes in the next pull, as updated):
    /// apply `created` and `updated` alike, as upserts by id.
    pub updated: Vec<AttendanceRecord>,
    /// Ids of records deleted since the cursor, and of records that left the caller's scope (a
    /// worker moved to another supervisor, or the caller is no longer an admin or a supervisor):
    /// those on the pull's first pages, before any other change.
    pub deleted: Vec<Uuid>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FacilityChanges {
    pub created: Vec<Facility>,
    /// As for attendance: apply `created` and `updated` alike, as upserts by id.
    pub updated: Vec<Facility>,
    /// Facilities are deactivated, never deleted: always empty.
    pub deleted: Vec<Uuid>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Changes {
    pub attendance: AttendanceChanges,
    pub facilities: FacilityChanges,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PullResponse {
    pub changes: Changes,
    /// Pass back as `cursor` for the next page or the next pull.
    pub cursor: String,
    /// More changes are waiting: pull again at once with the new cursor.
    pub has_more: bool,
}

#[derive(sqlx::FromRow)]
struct PulledAttendance {
    #[sqlx(flatten)]
    row: AttendanceRow,
    xid: String,
    is_new: bool,
}

#[derive(sqlx::FromRow)]
struct PulledFacility {
    #[sqlx(flatten)]
    row: FacilityRow,
    xid: String,
    is_new: bool,
}

/// Live rows a device lacks although they last changed before its base.
#[derive(Clone, Copy)]
enum Lacking {
    Nothing,
    /// Every one (a device whose scope grew at once: a new admin's).
    Everything,
    /// Those of users who came into this viewer's scope after the base (and by the target): a
    /// move does not write their records, and one written while the move committed may have
    /// been left out of the base as not yet the viewer's.
    GainedBy(Uuid),
}

/// `change_xid` is newer than the base and visible in the target (and the row is in range),
/// or the row is one the device lacks.
fn push_window(
    qb: &mut QueryBuilder<'_, sqlx::Postgres>,
    alias: &str,
    base: &Option<String>,
    lacking: Lacking,
    target: &str,
    after: &Option<(String, Uuid)>,
) {
    qb.push(format_args!(
        " AND pg_visible_in_snapshot({alias}.change_xid, "
    ))
    .push_bind(target.to_string())
    .push("::pg_snapshot)");
    match base {
        Some(base) => {
            qb.push(" AND ((");
            qb.push(format_args!(" {alias}.change_xid >= pg_snapshot_xmin("))
                .push_bind(base.clone())
                .push(format_args!(
                    "::pg_snapshot) AND NOT pg_visible_in_snapshot({alias}.change_xid, "
                ))
                .push_bind(base.clone())
                .push("::pg_snapshot))");
            match lacking {
                Lacking::Nothing => {}
                Lacking::Everything => {
                    qb.push(format_args!(" OR {alias}.deleted_at IS NULL"));
                }
                Lacking::GainedBy(viewer) => {
                    qb.push(format_args!(
                        " OR ({alias}.deleted_at IS NULL AND {alias}.user_id IN (
                           SELECT s.user_id FROM scope_changes s WHERE s.viewer_id = "
                    ))
                    .push_bind(viewer)
                    .push(" AND s.granted");
                    push_moved_between(qb, base, target);
                    qb.push("))");
                }
            }
            qb.push(")");
        }
        // A first pull needs no tombstones.
        None if alias == "a" => {
            qb.push(" AND a.deleted_at IS NULL");
        }
        None => {}
    }
    if let Some((xid, id)) = after {
        qb.push(format_args!(" AND ({alias}.change_xid, {alias}.id) > ("))
            .push_bind(xid.clone())
            .push("::xid8, ")
            .push_bind(*id)
            .push(")");
    }
}

/// Records that a device has never had although they were created before its base.
#[derive(Default)]
struct Unseen {
    /// Those of users who came into this supervisor's scope after the base.
    gained_by: Option<Uuid>,
    /// Those outside this user's team: what they saw before being made an admin after the base.
    outside_team_of: Option<Uuid>,
}

/// `is_new`: created after the base, or a record the device has never had either.
fn push_is_new(
    qb: &mut QueryBuilder<'_, sqlx::Postgres>,
    alias: &str,
    base: &Option<String>,
    unseen: Unseen,
) {
    match base {
        Some(base) => {
            qb.push(format_args!(
                ", (NOT pg_visible_in_snapshot({alias}.created_xid, "
            ))
            .push_bind(base.clone())
            .push("::pg_snapshot)");
            if let Some(viewer) = unseen.gained_by {
                qb.push(format_args!(
                    " OR EXISTS (SELECT 1 FROM scope_changes s WHERE s.viewer_id = "
                ))
                .push_bind(viewer)
                .push(format_args!(
                    " AND s.user_id = {alias}.user_id AND s.granted
                      AND NOT pg_visible_in_snapshot(s.xid, "
                ))
                .push_bind(base.clone())
                .push("::pg_snapshot))");
            }
            if let Some(viewer) = unseen.outside_team_of {
                qb.push(" OR NOT ");
                push_self_and_team(qb, viewer, &format!("{alias}.user_id"));
            }
            qb.push(") AS is_new");
        }
        None => {
            qb.push(", true AS is_new");
        }
    }
    qb.push(format_args!(", {alias}.change_xid::text AS xid"));
}

/// One page of changes after `cursor`, at most `limit` rows in all. A position from a later
/// point of the database's history than the server now holds (a database restored to an
/// earlier point), or a device's cursor from before a restore into another cluster, is refused:
/// changes written since the restore could otherwise pass for ones the device has.
pub async fn pull(
    conn: &mut PgConnection,
    viewer: &AuthUser,
    cursor: Cursor,
    limit: usize,
    kept: Kept,
    timeout: std::time::Duration,
) -> Result<(Changes, Cursor, bool), ApiError> {
    // One snapshot for every statement of this page, none of them left running once the
    // request has given up.
    crate::db::read_snapshot(conn, timeout).await?;
    // And the viewer's role as this snapshot has it; whether it moved into or out of admin
    // after the base (and by the target): their whole scope moved, see the `scope_reset`
    // migration; and whether workers moved away from under them, or came, in that window.
    let (now, role, rescoped, reset_xid, lost, gained, ahead, epoch): (
        String,
        String,
        bool,
        Option<String>,
        bool,
        bool,
        bool,
        i64,
    ) = sqlx::query_as(
        "SELECT pg_current_snapshot()::text, u.role,
                coalesce(pg_visible_in_snapshot(u.scope_reset_xid,
                             coalesce($2::pg_snapshot, pg_current_snapshot()))
                         AND NOT pg_visible_in_snapshot(u.scope_reset_xid, $3::pg_snapshot), false),
                u.scope_reset_xid::text, coalesce(m.lost, false), coalesce(m.gained, false),
                coalesce(greatest(pg_snapshot_xmax($2::pg_snapshot), pg_snapshot_xmax($3::pg_snapshot))
                         > pg_snapshot_xmax(pg_current_snapshot()), false),
                (SELECT epoch FROM sync_epoch)
         FROM users u
         LEFT JOIN LATERAL (
           SELECT bool_or(NOT s.granted) AS lost, bool_or(s.granted) AS gained
           FROM scope_changes s
           WHERE s.viewer_id = u.id AND $3::pg_snapshot IS NOT NULL
             AND pg_visible_in_snapshot(s.xid, coalesce($2::pg_snapshot, pg_current_snapshot()))
             AND NOT pg_visible_in_snapshot(s.xid, $3::pg_snapshot)) m ON true
         WHERE u.id = $1",
    )
    .bind(viewer.id)
    .bind(&cursor.target)
    .bind(&cursor.base)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or(ApiError::InvalidToken)?;
    // A role changed since the token state was cached (by another instance, or the command
    // line) ends the token; served under the old role, the pull would use up the reset.
    if role != viewer.role.as_str() {
        return Err(ApiError::InvalidToken);
    }
    let elsewhere = kept == Kept::ByDevice
        && cursor.epoch != epoch
        && (cursor.base.is_some() || cursor.target.is_some());
    if ahead || elsewhere {
        let field = match kept {
            Kept::ByDevice => "cursor",
            Kept::ByService => "last_pulled_at",
        };
        return Err(ApiError::invalid(
            field,
            "names a point of the database's history that the server no longer holds (it \
             was restored): push what has not synced, then sync again from the start",
        ));
    }
    let target = cursor.target.clone().unwrap_or(now);
    let base = cursor.base.clone();
    let mut changes = Changes {
        attendance: AttendanceChanges {
            created: vec![],
            updated: vec![],
            deleted: vec![],
        },
        facilities: FacilityChanges {
            created: vec![],
            updated: vec![],
            deleted: vec![],
        },
    };
    let mut next = Cursor {
        base: base.clone(),
        target: Some(target.clone()),
        attendance_after: cursor.attendance_after.clone(),
        facilities_after: cursor.facilities_after.clone(),
        facilities_done: cursor.facilities_done,
        attendance_done: cursor.attendance_done,
        reset_after: None,
        epoch,
        viewer: None,
    };
    let mut remaining = limit;

    // Records that left the viewer's scope since the base are gone from the device's point of
    // view: told as deleted on the pull's first pages, in pages of the limit, before any other
    // change. Besides a reset, scope moves with workers moved away from under the viewer: a
    // supervisor's, or a former supervisor's, whose team had to be moved away before they could
    // be given a field role.
    let supervising = !viewer.is_admin() && !viewer.role.is_field();
    let departed = match (&base, &reset_xid) {
        (Some(base), Some(reset_xid)) if rescoped && !viewer.is_admin() => {
            Some(Departed::Reset { base, reset_xid })
        }
        (Some(base), _) if lost && !viewer.is_admin() => Some(Departed::Moved {
            base,
            target: &target,
        }),
        _ => None,
    };
    if let Some(departed) = departed
        && (cursor.target.is_none() || cursor.reset_after.is_some())
    {
        let mut ids = departed_ids(conn, viewer, departed, cursor.reset_after, remaining).await?;
        if ids.len() >= remaining {
            let more = ids.len() > remaining;
            ids.truncate(remaining);
            next.reset_after = more.then(|| *ids.last().expect("limit is at least 1"));
            changes.attendance.deleted = ids;
            return Ok((changes, next, true));
        }
        remaining -= ids.len();
        changes.attendance.deleted = ids;
    }

    // Facilities first: a new device needs them to clock in, and they are few beside a team's
    // history, which may take several pages.
    if !cursor.facilities_done {
        let mut qb = QueryBuilder::new(SELECT_FACILITY);
        push_is_new(&mut qb, "f", &base, Unseen::default());
        qb.push(FROM_FACILITIES);
        qb.push(" WHERE true");
        push_window(
            &mut qb,
            "f",
            &base,
            Lacking::Nothing,
            &target,
            &cursor.facilities_after,
        );
        qb.push(" ORDER BY f.change_xid, f.id LIMIT ")
            .push_bind(remaining as i64 + 1);
        let mut rows: Vec<PulledFacility> = qb.build_query_as().fetch_all(&mut *conn).await?;
        if rows.len() > remaining {
            rows.truncate(remaining);
            let last = rows.last().expect("limit is at least 1");
            next.facilities_after = Some((last.xid.clone(), last.row.id()));
            fill_facilities(&mut changes.facilities, rows);
            return Ok((changes, next, true));
        }
        remaining -= rows.len();
        fill_facilities(&mut changes.facilities, rows);
        next.facilities_done = true;
        next.facilities_after = None;
    }

    if !cursor.attendance_done {
        // A new admin's device gets every record it lacks, and the deletions since its base; a
        // supervisor's, the live records of the users it gained since its base.
        let grown = rescoped && viewer.is_admin();
        let lacking = if grown {
            Lacking::Everything
        } else if gained && !viewer.is_admin() {
            Lacking::GainedBy(viewer.id)
        } else {
            Lacking::Nothing
        };
        let unseen = Unseen {
            gained_by: (supervising || grown).then_some(viewer.id),
            outside_team_of: grown.then_some(viewer.id),
        };
        let mut qb = QueryBuilder::new(format!("SELECT {}", records::COLUMNS));
        push_is_new(&mut qb, "a", &base, unseen);
        qb.push(" FROM attendance a WHERE true");
        push_scope_with_self(&mut qb, viewer, "a.user_id");
        if supervising {
            // A later page reads the tree as it is now, past its target: the records of users
            // who came into scope after the target are left to the next pull, which sends them
            // whole. Their deletions are sent: one moved away and back meanwhile may be held by
            // the device, and the next pull sends only live records (a deletion of a record the
            // device never held it passes over).
            qb.push(" AND (a.deleted_at IS NOT NULL OR NOT EXISTS (SELECT 1 FROM scope_changes s WHERE s.viewer_id = ")
                .push_bind(viewer.id)
                .push(
                    " AND s.user_id = a.user_id AND s.granted
                      AND NOT pg_visible_in_snapshot(s.xid, ",
                )
                .push_bind(target.clone())
                .push("::pg_snapshot)))");
        }
        push_window(
            &mut qb,
            "a",
            &base,
            lacking,
            &target,
            &cursor.attendance_after,
        );
        qb.push(" ORDER BY a.change_xid, a.id LIMIT ")
            .push_bind(remaining as i64 + 1);
        let mut rows: Vec<PulledAttendance> = qb.build_query_as().fetch_all(&mut *conn).await?;
        if rows.len() > remaining {
            // A page that facilities filled reads one record, only to say that more wait.
            rows.truncate(remaining);
            if let Some(last) = rows.last() {
                next.attendance_after = Some((last.xid.clone(), last.row.id));
            }
            fill_attendance(&mut changes.attendance, rows);
            return Ok((changes, next, true));
        }
        fill_attendance(&mut changes.attendance, rows);
    }

    // Everything up to the target is delivered: it becomes the base of the next pull.
    Ok((
        changes,
        Cursor {
            base: Some(target),
            epoch,
            ..Cursor::default()
        },
        false,
    ))
}

/// Why records left the viewer's scope since `base`. Either way, only records the device may
/// hold are told (a later one it never had, and may not list): those created by a
/// transaction its base saw, and, since a WatermelonDB timestamp thinned after two weeks sees
/// less than its device does, those created before the change too.
enum Departed<'a> {
    /// The viewer is no longer an admin (`reset_xid` stamps the change): records outside their
    /// scope now, alive or deleted after the base.
    Reset { base: &'a str, reset_xid: &'a str },
    /// Workers moved away from under the viewer after the base (and by the target), and not
    /// back: their records.
    Moved { base: &'a str, target: &'a str },
}

/// ` AND …` of a `scope_changes s` row: the move committed after `base`, and by `target`.
fn push_moved_between(qb: &mut QueryBuilder<'_, sqlx::Postgres>, base: &str, target: &str) {
    qb.push(" AND pg_visible_in_snapshot(s.xid, ")
        .push_bind(target.to_string())
        .push("::pg_snapshot) AND NOT pg_visible_in_snapshot(s.xid, ")
        .push_bind(base.to_string())
        .push("::pg_snapshot)");
}

/// Up to `limit + 1` ids after `after` (from the first, the nil id too), in id order, of
/// records that left the viewer's scope.
async fn departed_ids(
    conn: &mut PgConnection,
    viewer: &AuthUser,
    departed: Departed<'_>,
    after: Option<Uuid>,
    limit: usize,
) -> Result<Vec<Uuid>, ApiError> {
    let mut qb = QueryBuilder::new("SELECT a.id FROM attendance a WHERE NOT (true");
    push_scope_with_self(&mut qb, viewer, "a.user_id");
    qb.push(")");
    if let Some(after) = after {
        qb.push(" AND a.id > ").push_bind(after);
    }
    match departed {
        Departed::Reset { base, reset_xid } => {
            qb.push(" AND (a.deleted_at IS NULL OR NOT pg_visible_in_snapshot(a.change_xid, ")
                .push_bind(base.to_string())
                .push("::pg_snapshot)) AND (pg_visible_in_snapshot(a.created_xid, ")
                .push_bind(base.to_string())
                .push("::pg_snapshot) OR a.created_xid < ")
                .push_bind(reset_xid.to_string())
                .push("::xid8)");
        }
        Departed::Moved { base, target } => {
            qb.push(
                " AND EXISTS (
                   SELECT 1 FROM scope_changes s WHERE s.viewer_id = ",
            )
            .push_bind(viewer.id)
            .push(" AND s.user_id = a.user_id AND NOT s.granted");
            push_moved_between(&mut qb, base, target);
            qb.push(" AND (pg_visible_in_snapshot(a.created_xid, ")
                .push_bind(base.to_string())
                .push("::pg_snapshot) OR a.created_at <= s.created_at))");
        }
    }
    qb.push(" ORDER BY a.id LIMIT ").push_bind(limit as i64 + 1);
    Ok(qb.build_query_scalar().fetch_all(&mut *conn).await?)
}

fn fill_attendance(out: &mut AttendanceChanges, rows: Vec<PulledAttendance>) {
    for r in rows {
        if r.row.deleted_at.is_some() {
            out.deleted.push(r.row.id);
        } else if r.is_new {
            out.created.push(r.row.into());
        } else {
            out.updated.push(r.row.into());
        }
    }
}

fn fill_facilities(out: &mut FacilityChanges, rows: Vec<PulledFacility>) {
    for r in rows {
        let facility = Facility::from(r.row);
        if r.is_new {
            out.created.push(facility);
        } else {
            out.updated.push(facility);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys_of(secret: &str) -> JwtKeys {
        let config = crate::config::Config::from_map(
            &[
                ("APP_ENV", "development"),
                ("DATABASE_URL", "postgres://localhost/unused"),
                ("JWT_SECRET", secret),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        )
        .unwrap();
        JwtKeys::new(&config.auth)
    }

    #[test]
    fn cursors_round_trip_and_forged_ones_are_refused() {
        let keys = keys_of("a test secret of some length, and random enough: 7f3a9c");
        let cursor = Cursor {
            base: Some("100:105:101,103".into()),
            target: Some("110:110:".into()),
            attendance_after: Some(("104".into(), Uuid::nil())),
            facilities_after: None,
            facilities_done: true,
            attendance_done: false,
            reset_after: Some(Uuid::nil()),
            epoch: 2,
            viewer: Some(Uuid::max()),
        };
        let issued = cursor.encode(&keys);
        assert_eq!(Cursor::decode(&issued, &keys).unwrap(), cursor);
        let (payload, tag) = issued.rsplit_once('.').unwrap();
        let unsigned = |json: &[u8]| URL_SAFE_NO_PAD.encode(json);
        for bad in [
            String::new(),
            "not base64!".into(),
            payload.to_string(),
            format!("{}.{tag}", unsigned(br#"{"b":"1:1:"}"#)),
            format!("{payload}.{}", &tag[1..]),
            cursor.encode(&keys_of("another secret, as long and as random: 0b5e21d")),
        ] {
            assert!(Cursor::decode(&bad, &keys).is_err(), "{bad}");
        }
        // Even signed, a cursor holds what Postgres reads, or is refused.
        for text in [
            &br#"{"b":"1:2:3;DROP TABLE users"}"#[..],
            br#"{"a":["1 OR 1=1","00000000-0000-0000-0000-000000000000"]}"#,
            br#"{"b":"5:3:"}"#,
            br#"{"b":"3:9:2"}"#,
            br#"{"b":"3:9:9"}"#,
            br#"{"b":"3:9:6,4"}"#,
            br#"{"b":"0:5:"}"#,
            br#"{"b":"99999999999999999999:99999999999999999999:"}"#,
        ] {
            let signed = keys.seal(&unsigned(text));
            let text = String::from_utf8_lossy(text);
            assert!(Cursor::decode(&signed, &keys).is_err(), "{text}");
        }
        let signed = keys.seal(&unsigned(br#"{"b":"3:9:4,4,6"}"#));
        assert!(Cursor::decode(&signed, &keys).is_ok());
        // A cursor of the version that paged attendance first, partway through facilities.
        let signed = keys.seal(&unsigned(br#"{"t":"3:9:","s":true}"#));
        let legacy = Cursor::decode(&signed, &keys).unwrap();
        assert!(legacy.attendance_done && !legacy.facilities_done);
    }
}
