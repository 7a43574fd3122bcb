//! Attendance exports (CSV, XLSX) and summaries, for supervisors and above over their tree.

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use utoipa_axum::router::OpenApiRouter;

use crate::error::ApiError;
use crate::state::AppState;

mod export;
mod summary;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(export::router())
        .merge(summary::router())
}

/// A date (`2026-11-01`, a whole day in the report's time zone) or an instant (RFC 3339).
/// Its year, as written, must be one of [`super::period::YEARS`].
fn parse_bound(value: &str, tz: Tz, end: bool, field: &str) -> Result<DateTime<Utc>, ApiError> {
    use chrono::Datelike;
    let in_years = |year: i32| {
        if super::period::YEARS.contains(&year) {
            Ok(())
        } else {
            Err(ApiError::invalid(field, super::period::out_of_years()))
        }
    };
    if let Ok(instant) = DateTime::parse_from_rfc3339(value) {
        in_years(instant.year())?;
        return Ok(instant.with_timezone(&Utc));
    }
    let date = NaiveDate::parse_from_str(value, "%Y-%m-%d")
        .map_err(|_| ApiError::invalid(field, "must be a date (YYYY-MM-DD) or an RFC 3339 time"))?;
    in_years(date.year())?;
    // `to` as a date includes that whole day.
    let date = if end {
        date.succ_opt().unwrap_or(date)
    } else {
        date
    };
    // Where clocks skip midnight (a daylight-saving change at 00:00), the day begins at its
    // first minute that exists.
    let midnight = date.and_hms_opt(0, 0, 0).expect("midnight exists");
    (0..=180)
        .find_map(|m| {
            tz.from_local_datetime(&(midnight + chrono::Duration::minutes(m)))
                .earliest()
        })
        .map(|t| t.with_timezone(&Utc))
        .ok_or_else(|| ApiError::invalid(field, "does not exist in this time zone"))
}

/// A period's bounds, either of which may be open.
pub(super) type Bounds = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// `from` and `to` as given (a blank value is no bound, as a blank filter in a form).
pub(super) fn parse_period(
    from: &Option<String>,
    to: &Option<String>,
    tz: Tz,
) -> Result<Bounds, ApiError> {
    let parse = |value: &Option<String>, end: bool, field: &str| {
        value
            .as_deref()
            .filter(|v| !v.trim().is_empty())
            .map(|v| parse_bound(v.trim(), tz, end, field))
            .transpose()
    };
    Ok((parse(from, false, "from")?, parse(to, true, "to")?))
}

pub(super) fn parse_tz(tz: Option<&str>, state: &AppState) -> Result<Tz, ApiError> {
    match tz.filter(|t| !t.is_empty()) {
        None => Ok(state.config.attendance.timezone),
        Some(name) => name.parse().map_err(|_| {
            ApiError::invalid("tz", "must be an IANA time zone such as Africa/Kigali")
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_day_whose_midnight_is_skipped_begins_at_its_first_minute() {
        // Beirut moved its clocks from 00:00 to 01:00 on 31 March 2024.
        let beirut: Tz = "Asia/Beirut".parse().unwrap();
        let midnight = NaiveDate::from_ymd_opt(2024, 3, 31)
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap();
        assert!(beirut.from_local_datetime(&midnight).earliest().is_none());
        let from = parse_bound("2024-03-31", beirut, false, "from").unwrap();
        assert_eq!(from.to_rfc3339(), "2024-03-30T22:00:00+00:00");
        // The day before ends where that day begins.
        let to = parse_bound("2024-03-30", beirut, true, "to").unwrap();
        assert_eq!(to, from);
        let kigali: Tz = "Africa/Kigali".parse().unwrap();
        let day = parse_bound("2024-03-31", kigali, false, "from").unwrap();
        assert_eq!(day.to_rfc3339(), "2024-03-30T22:00:00+00:00");
    }
}
