//! The `from`/`to` bounds that lists, exports and summaries take.

use chrono::{DateTime, Datelike, Utc};

use crate::error::{ApiError, Invalid};

/// The years a bound may name: those a spreadsheet and Postgres both hold (chrono reads signed
/// years of any length, which Postgres would refuse mid-query).
const YEARS: std::ops::RangeInclusive<i32> = 1..=9999;

/// Each bound within [`YEARS`], and `from` before `to` when both are given (a reversed period
/// is a mistake to report, not an empty answer).
pub fn check(from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>) -> Result<(), ApiError> {
    let mut invalid = Invalid::default();
    for (field, bound) in [("from", from), ("to", to)] {
        if bound.is_some_and(|t| !YEARS.contains(&t.year())) {
            invalid.add(
                field,
                format!(
                    "must fall in the years {} to {}",
                    YEARS.start(),
                    YEARS.end()
                ),
            );
        }
    }
    if let (Some(from), Some(to)) = (from, to)
        && from >= to
    {
        invalid.add("from", "must be before `to`");
    }
    invalid.finish()
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
        for (from, to, field) in [
            (Some(at(-5000)), None, "from"),
            (None, Some(at(10000)), "to"),
            (Some(at(2027)), Some(at(2026)), "from"),
            (Some(at(2026)), Some(at(2026)), "from"),
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
