//! The `from`/`to` bounds that lists, exports and summaries take.

use chrono::{DateTime, Datelike, Utc};

use crate::error::{ApiError, Invalid};

/// The years a bound may name: those a spreadsheet and Postgres both hold (chrono reads signed
/// years of any length, which Postgres would refuse mid-query).
pub const YEARS: std::ops::RangeInclusive<i32> = 1..=9999;

/// The reason a bound's year is refused.
pub fn out_of_years() -> String {
    format!(
        "must fall in the years {} to {}",
        YEARS.start(),
        YEARS.end()
    )
}

/// Each bound within [`YEARS`], and `from` not after `to` (a reversed period is a mistake to
/// report, not an empty answer).
pub fn check(from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>) -> Result<(), ApiError> {
    let mut invalid = Invalid::default();
    for (field, bound) in [("from", from), ("to", to)] {
        if bound.is_some_and(|t| !YEARS.contains(&t.year())) {
            invalid.add(field, out_of_years());
        }
    }
    if invalid.is_empty() {
        return check_order(from, to);
    }
    invalid.finish()
}

/// `from` not after `to`.
pub fn check_order(from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>) -> Result<(), ApiError> {
    match (from, to) {
        (Some(from), Some(to)) if from > to => {
            Err(ApiError::invalid("from", "must not be after `to`"))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(y: i32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, 6, 1, 0, 0, 0).unwrap()
    }

    #[test]
    fn bounds_must_be_in_range_and_in_order() {
        assert!(check(None, None).is_ok());
        assert!(check(Some(at(2026)), Some(at(2027))).is_ok());
        assert!(check(Some(at(1)), Some(at(9999))).is_ok());
        assert!(
            check(Some(at(2026)), Some(at(2026))).is_ok(),
            "an empty period"
        );
        for (from, to, field) in [
            (Some(at(-5000)), None, "from"),
            (None, Some(at(10000)), "to"),
            (Some(at(2027)), Some(at(2026)), "from"),
        ] {
            match check(from, to) {
                Err(ApiError::Validation(fields)) => {
                    assert!(fields.contains_key(field), "{fields:?}")
                }
                other => panic!("{from:?}..{to:?}: {other:?}"),
            }
        }
    }
}
