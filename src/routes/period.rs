//! The `from`/`to` bounds that lists, exports and summaries take: each a date (`2026-11-01`, a
//! whole day in a time zone) or an instant (RFC 3339); a blank value is no bound, as a blank
//! filter in a form.

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;

use crate::error::ApiError;

/// The years a bound may name: those a spreadsheet and Postgres both hold (chrono reads signed
/// years of any length, which Postgres would refuse mid-query).
pub const YEARS: std::ops::RangeInclusive<i32> = 1..=9999;

/// A period's bounds, either of which may be open.
pub type Bounds = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// `from` (inclusive) and `to` (exclusive as an instant; a date includes its whole day), each
/// year as written in [`YEARS`], and not reversed: a reversed period is a mistake to report, not
/// an empty answer. An instant `to` equal to `from` is an empty period; a date `to` always
/// includes a day, so a `from` at or past its end is reversed.
pub fn parse(from: Option<&str>, to: Option<&str>, tz: Tz) -> Result<Bounds, ApiError> {
    let from = given(from)
        .map(|v| parse_bound(v, tz, false, "from"))
        .transpose()?
        .map(|(from, _)| from);
    let to_bound = given(to)
        .map(|v| parse_bound(v, tz, true, "to"))
        .transpose()?;
    if let (Some(from), Some((to, to_is_date))) = (from, to_bound)
        && (from > to || (from == to && to_is_date))
    {
        return Err(ApiError::invalid("from", "must not be after `to`"));
    }
    Ok((from, to_bound.map(|(to, _)| to)))
}

/// A value given and not blank, trimmed.
fn given(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|v| !v.is_empty())
}

/// A date or an instant; `end`: a date stands for the end of its day. Whether it was a date.
fn parse_bound(
    value: &str,
    tz: Tz,
    end: bool,
    field: &str,
) -> Result<(DateTime<Utc>, bool), ApiError> {
    let in_years = |year: i32| {
        if YEARS.contains(&year) {
            Ok(())
        } else {
            Err(ApiError::invalid(
                field,
                format!(
                    "must fall in the years {} to {}",
                    YEARS.start(),
                    YEARS.end()
                ),
            ))
        }
    };
    // A `+` left unencoded in a query string arrives as a space: `…T08:00:00 02:00`.
    let offset_plus = value
        .rsplit_once(' ')
        .filter(|(time, _)| time.contains('T'))
        .map(|(time, offset)| format!("{time}+{offset}"));
    let instant = DateTime::parse_from_rfc3339(value)
        .or_else(|e| offset_plus.map_or(Err(e), |v| DateTime::parse_from_rfc3339(&v)));
    if let Ok(instant) = instant {
        in_years(instant.year())?;
        return Ok((in_utc_years(instant.with_timezone(&Utc)), false));
    }
    let date = NaiveDate::parse_from_str(value, "%Y-%m-%d")
        .map_err(|_| ApiError::invalid(field, "must be a date (YYYY-MM-DD) or an RFC 3339 time"))?;
    in_years(date.year())?;
    let date = if end {
        date.succ_opt().unwrap_or(date)
    } else {
        date
    };
    // Where clocks skip midnight (a daylight-saving change at 00:00), the day begins at its
    // first minute that exists.
    let midnight = date.and_hms_opt(0, 0, 0).expect("midnight exists");
    local_instant(tz, midnight)
        .map(|t| (in_utc_years(t), true))
        .ok_or_else(|| ApiError::invalid(field, "does not exist in this time zone"))
}

/// The instant of local time `at` in `tz`: the earlier of a time the clocks repeat, and past a
/// time they skip, the first minute after it that exists.
pub fn local_instant(tz: Tz, at: chrono::NaiveDateTime) -> Option<DateTime<Utc>> {
    (0..=180)
        .find_map(|m| {
            tz.from_local_datetime(&(at + chrono::Duration::minutes(m)))
                .earliest()
        })
        .map(|t| t.with_timezone(&Utc))
}

/// A bound held to the years in UTC too: the first of January of year 1 in a zone east of
/// Greenwich is still year 0 in UTC, and the day after the last of 9999 is year 10000, neither
/// of which an RFC 3339 time (as the summary answers its period) can say. No record falls
/// between those instants and the nearest one held.
pub fn in_utc_years(t: DateTime<Utc>) -> DateTime<Utc> {
    let first = Utc
        .with_ymd_and_hms(*YEARS.start(), 1, 1, 0, 0, 0)
        .single()
        .expect("a valid time");
    let last = Utc
        .with_ymd_and_hms(*YEARS.end(), 12, 31, 23, 59, 59)
        .single()
        .expect("a valid time");
    t.clamp(first, last)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIGALI: Tz = chrono_tz::Africa::Kigali;

    fn refused(from: Option<&str>, to: Option<&str>) -> Vec<String> {
        match parse(from, to, KIGALI) {
            Err(ApiError::Validation(fields)) => fields.keys().cloned().collect(),
            other => panic!("{from:?}..{to:?}: {other:?}"),
        }
    }

    #[test]
    fn bounds_must_be_in_range_and_in_order() {
        assert_eq!(parse(None, Some(" "), KIGALI).unwrap(), (None, None));
        let (from, to) = parse(Some("2026-11-01"), Some("2026-11-01"), KIGALI).unwrap();
        assert_eq!(from.unwrap().to_rfc3339(), "2026-10-31T22:00:00+00:00");
        assert_eq!(to.unwrap().to_rfc3339(), "2026-11-01T22:00:00+00:00");
        let instant = "2026-11-01T08:00:00Z";
        assert!(
            parse(Some(instant), Some(instant), KIGALI).is_ok(),
            "an empty period"
        );
        assert!(parse(Some("0001-01-01"), Some("9999-12-31T00:00:00Z"), KIGALI).is_ok());
        // The widest dates stay within those years in UTC, whatever the zone.
        let chicago: Tz = "America/Chicago".parse().unwrap();
        for tz in [KIGALI, chicago] {
            let (from, to) = parse(Some("0001-01-01"), Some("9999-12-31"), tz).unwrap();
            assert_eq!(from.unwrap().year(), 1, "{tz}");
            assert_eq!(to.unwrap().year(), 9999, "{tz}");
        }
        let (from, _) = parse(Some("0001-01-01T00:00:00+03:00"), None, KIGALI).unwrap();
        assert_eq!(from.unwrap().year(), 1);
        assert_eq!(refused(Some("0000-06-01T00:00:00Z"), None), ["from"]);
        assert_eq!(refused(None, Some("10000-01-01")), ["to"]);
        assert_eq!(refused(Some("2027-01-01"), Some("2026-01-01")), ["from"]);
        // A date `to` one day before `from`: both read as the same instant, yet reversed.
        assert_eq!(refused(Some("2026-11-02"), Some("2026-11-01")), ["from"]);
        assert_eq!(refused(Some("yesterday"), None), ["from"]);
        // An offset's `+` not encoded in the query string arrives as a space.
        let (from, _) = parse(Some("2026-11-01T08:00:00 02:00"), None, KIGALI).unwrap();
        assert_eq!(from.unwrap().to_rfc3339(), "2026-11-01T06:00:00+00:00");
        assert_eq!(refused(Some("2026-11-01 02:00"), None), ["from"]);
    }

    #[test]
    fn a_day_whose_midnight_is_skipped_begins_at_its_first_minute() {
        // Beirut moved its clocks from 00:00 to 01:00 on 31 March 2024.
        let beirut: Tz = "Asia/Beirut".parse().unwrap();
        let midnight = NaiveDate::from_ymd_opt(2024, 3, 31)
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap();
        assert!(beirut.from_local_datetime(&midnight).earliest().is_none());
        let (from, _) = parse_bound("2024-03-31", beirut, false, "from").unwrap();
        assert_eq!(from.to_rfc3339(), "2024-03-30T22:00:00+00:00");
        // The day before ends where that day begins.
        let (to, _) = parse_bound("2024-03-30", beirut, true, "to").unwrap();
        assert_eq!(to, from);
        let (day, _) = parse_bound("2024-03-31", KIGALI, false, "from").unwrap();
        assert_eq!(day.to_rfc3339(), "2024-03-30T22:00:00+00:00");
    }
}
