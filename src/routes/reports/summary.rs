//! Days present, hours worked and the exceptions, grouped by user, facility or day.

use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::QueryBuilder;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::parse_tz;
use crate::auth::SupervisingUser;
use crate::db::attendance::push_filters;
use crate::error::{ApiError, ErrorEnvelope};
use crate::extract::{Json, Query};
use crate::routes::period;
use crate::state::AppState;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(summary))
}

#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    #[default]
    User,
    Facility,
    Day,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SummaryQuery {
    /// A date (YYYY-MM-DD, in the time zone) or an RFC 3339 instant; default the local midnight
    /// that begins the 30 days up to `to` (with `to` now: today and the 29 days before it).
    pub from: Option<String>,
    /// A date (inclusive) or an RFC 3339 instant (exclusive); default now.
    pub to: Option<String>,
    /// What each row sums; default `user`.
    #[param(inline, default = "user")]
    pub group_by: Option<GroupBy>,
    /// IANA time zone that decides which day a shift belongs to; default `APP_TIMEZONE`.
    pub tz: Option<String>,
    pub facility_id: Option<Uuid>,
    pub user_id: Option<Uuid>,
}

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct SummaryRow {
    /// The user id, facility id or local date (YYYY-MM-DD), by `group_by`.
    pub key: String,
    /// The user's name, the facility's name, or the date.
    pub label: String,
    pub records: i64,
    /// Distinct local days with a clock-in.
    pub days_present: i64,
    /// Distinct users with a clock-in.
    pub users_present: i64,
    /// Hours of closed shifts; time that shifts of one user overlap (the same shift stored
    /// twice, from two devices, say) counts once, in the group of the shift that began first.
    pub hours_worked: f64,
    pub open: i64,
    /// Shifts closed automatically after a forgotten clock-out; counted apart, no hours.
    pub incomplete: i64,
    pub outside_geofence: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Summary {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    #[schema(example = "Africa/Kigali")]
    pub tz: String,
    #[schema(value_type = GroupBy)]
    pub group_by: String,
    pub rows: Vec<SummaryRow>,
}

/// Attendance summary by user, facility or day (supervisor and above, over their tree).
///
/// Days present, hours worked, open, incomplete and outside-geofence counts. A shift belongs to the
/// local day it started.
#[utoipa::path(get, path = "/attendance/summary", tag = "reports", security(("bearer" = [])), params(SummaryQuery),
    responses(
        (status = 200, description = "The summary", body = Summary),
        (status = 400, description = "Bad query string", body = ErrorEnvelope),
        (status = 403, description = "Field roles may not read summaries", body = ErrorEnvelope),
        (status = 422, description = "Bad dates or time zone, or a period out of range or reversed", body = ErrorEnvelope),
    ))]
async fn summary(
    State(state): State<AppState>,
    user: SupervisingUser,
    Query(q): Query<SummaryQuery>,
) -> Result<Json<Summary>, ApiError> {
    let tz = parse_tz(q.tz.as_deref(), &state)?;
    let (from, to) = period::parse(q.from.as_deref(), q.to.as_deref(), tz)?;
    let to = match to {
        Some(to) => to,
        None if from.is_some_and(|from| from >= Utc::now()) => {
            return Err(ApiError::invalid(
                "from",
                "must be in the past when `to` is not given (the period then ends now)",
            ));
        }
        None => Utc::now(),
    };
    // Thirty days of the report's calendar, each counted whole: from the local midnight that
    // begins the first of them, even across a change of clocks (with `to` now, today is the
    // thirtieth, so far). An instant `to` equal to `from` is an empty period, as in lists.
    let from = from.unwrap_or_else(|| {
        let back = to
            .with_timezone(&tz)
            .naive_local()
            .checked_sub_days(chrono::Days::new(30));
        let first_day = back.map(|local| {
            let day = local.date();
            if local.time() == chrono::NaiveTime::MIN {
                day
            } else {
                day.succ_opt().unwrap_or(day)
            }
        });
        let start = first_day
            .and_then(|day| period::local_instant(tz, day.and_time(chrono::NaiveTime::MIN)))
            .unwrap_or(to - chrono::Duration::days(30));
        period::in_utc_years(start)
    });
    let group_by = q.group_by.unwrap_or_default();
    let (key, label, join) = match group_by {
        GroupBy::User => (
            "a.user_id::text",
            "min(u.first_name || ' ' || u.last_name)",
            "JOIN users u ON u.id = a.user_id",
        ),
        GroupBy::Facility => (
            "a.facility_id::text",
            "min(f.name)",
            "JOIN facilities f ON f.id = a.facility_id",
        ),
        GroupBy::Day => (
            "to_char(a.clock_in_at AT TIME ZONE tz.name, 'YYYY-MM-DD')",
            "to_char(a.clock_in_at AT TIME ZONE tz.name, 'YYYY-MM-DD')",
            "",
        ),
    };
    // Each closed shift counts from where the user's earlier closed shifts end (`covered`), so
    // that overlapping time counts once, the union of the intervals, and in the group of the
    // shift that began first: the groups add up to the user's hours. Those earlier shifts are
    // read whatever their facility, and back to the longest a closed shift can be before the
    // period, so that a day or a facility asked for alone counts as it does among the others.
    let mut qb = QueryBuilder::new(format!(
        "SELECT {key} AS key, {label} AS label, count(*) AS records,
                count(DISTINCT (a.clock_in_at AT TIME ZONE tz.name)::date) AS days_present,
                count(DISTINCT a.user_id) AS users_present,
                round(coalesce(sum(extract(epoch FROM a.clock_out_at - greatest(a.clock_in_at, a.covered)))
                      FILTER (WHERE a.status = 'closed' AND a.clock_out_at > a.covered), 0)::numeric
                      / 3600, 2)::float8 AS hours_worked,
                count(*) FILTER (WHERE a.status = 'open') AS open,
                count(*) FILTER (WHERE a.status = 'incomplete') AS incomplete,
                count(*) FILTER (WHERE a.outside_geofence) AS outside_geofence
         FROM (SELECT a.*,
                      coalesce(max(a.clock_out_at) FILTER (WHERE a.status = 'closed')
                               OVER (PARTITION BY a.user_id ORDER BY a.clock_in_at, a.id
                                     ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING),
                               '-infinity') AS covered
               FROM attendance a CROSS JOIN (SELECT "
    ));
    let zone = database_zone(tz).to_string();
    qb.push_bind(zone.clone()).push("::text AS name) tz");
    let earlier = from - chrono::Duration::hours(crate::config::LONGEST_SHIFT_HOURS as i64);
    push_filters(&mut qb, &user, q.user_id, None, Some(earlier), Some(to));
    if let Some(id) = q.facility_id {
        // Only the shifts of users with one at the facility in the period, as its index finds
        // them, rather than every shift in the viewer's tree.
        qb.push(
            " AND a.user_id IN (SELECT f.user_id FROM attendance f
                                WHERE f.deleted_at IS NULL AND f.facility_id = ",
        )
        .push_bind(id)
        .push(" AND f.clock_in_at >= ")
        .push_bind(from)
        .push(" AND f.clock_in_at < ")
        .push_bind(to)
        .push(")");
    }
    qb.push(format_args!(") a {join} CROSS JOIN (SELECT "))
        .push_bind(zone)
        .push("::text AS name) tz WHERE a.clock_in_at >= ")
        .push_bind(from);
    if let Some(id) = q.facility_id {
        qb.push(" AND a.facility_id = ").push_bind(id);
    }
    qb.push(format_args!(" GROUP BY {key} ORDER BY {key}"));
    // A summary over years of records can outlast the request.
    let mut tx = crate::db::bounded(&state.db, state.config.request_timeout).await?;
    let rows: Vec<SummaryRow> =
        qb.build_query_as()
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| match &e {
                // A zone newer than the database's own time zone data.
                sqlx::Error::Database(db) if db.code().as_deref() == Some("22023") => {
                    ApiError::invalid("tz", "is not a time zone the database knows; use another")
                }
                _ => e.into(),
            })?;
    Ok(Json(Summary {
        from,
        to,
        tz: tz.name().to_string(),
        group_by: match group_by {
            GroupBy::User => "user",
            GroupBy::Facility => "facility",
            GroupBy::Day => "day",
        }
        .to_string(),
        rows,
    }))
}

/// The name Postgres reads as `tz`. Postgres takes a name that is also a time zone abbreviation
/// as the abbreviation, a fixed offset: `CET` would never be summer time there, as it is in
/// the time zone data that reads the period and the export. Those are given as the zones the
/// data makes them links to.
fn database_zone(tz: chrono_tz::Tz) -> &'static str {
    match tz.name() {
        "CET" | "MET" => "Europe/Brussels",
        "EET" => "Europe/Athens",
        "WET" => "Europe/Lisbon",
        name => name,
    }
}
