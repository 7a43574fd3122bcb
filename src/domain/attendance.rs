//! Pure attendance rules: accepted times, geofence, forgotten clock-outs, spreadsheet safety.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// A record's notes at most, in characters: the clock-in's and the clock-out's (1,000 each, as
/// the clock-in and clock-out endpoints take them), on lines of their own.
pub const MAX_RECORD_NOTES: usize = 2 * 1000 + 1;

/// A clock-out stamped before its clock-in by no more than `tolerance` (the clock-in stamped by
/// the server and the clock-out by a phone whose clock runs behind it, or a phone's clock set
/// back by network time between the two) ends the shift where it began; any other stays as
/// stamped (one further back is refused by whoever checks the order).
pub fn settle_clock_out(
    clock_in: DateTime<Utc>,
    clock_out: DateTime<Utc>,
    tolerance: Duration,
) -> DateTime<Utc> {
    let behind = (clock_in - clock_out).to_std();
    if behind.is_ok_and(|b| !b.is_zero() && b <= tolerance) {
        clock_in
    } else {
        clock_out
    }
}

/// The window in which a client-reported time is accepted.
#[derive(Debug, Clone, Copy)]
pub struct TimeRules {
    pub future_tolerance: Duration,
    pub max_age: Duration,
}

impl TimeRules {
    /// Ok, or the reason the time is refused.
    pub fn check(&self, occurred_at: DateTime<Utc>, now: DateTime<Utc>) -> Result<(), String> {
        let ahead = occurred_at - now;
        if ahead > chrono::Duration::from_std(self.future_tolerance).unwrap_or_default() {
            return Err(format!(
                "is in the future (more than {} s ahead of the server clock)",
                self.future_tolerance.as_secs()
            ));
        }
        let behind = now - occurred_at;
        if behind > chrono::Duration::from_std(self.max_age).unwrap_or_default() {
            return Err(format!(
                "is older than the {}-day limit",
                self.max_age.as_secs() / 86_400
            ));
        }
        Ok(())
    }
}

/// Outside the facility's circle, strictly.
pub fn outside_geofence(distance_m: f64, radius_m: i32) -> bool {
    distance_m > f64::from(radius_m)
}

/// Why an online clock-in at `occurred_at` cannot open a shift: it began more than the maximum
/// shift ago, so it would be open already past the maximum and closed as forgotten at once.
pub fn too_old_to_open(
    occurred_at: DateTime<Utc>,
    now: DateTime<Utc>,
    max_shift: Duration,
) -> Result<(), String> {
    if occurred_at < forgotten_before(now, max_shift) {
        return Err(format!(
            "is more than the {}-hour maximum shift ago: that shift has ended; send it with its clock-out through sync",
            max_shift.as_secs() / 3600
        ));
    }
    Ok(())
}

/// An open record started before this instant is a forgotten clock-out.
pub fn forgotten_before(now: DateTime<Utc>, max_shift: Duration) -> DateTime<Utc> {
    now - chrono::Duration::from_std(max_shift).unwrap_or_default()
}

/// A spreadsheet runs a cell starting with `=`, `+`, `-` or `@` (and, in some, tab or CR) as a
/// formula; a leading apostrophe makes it plain text. Excel set to a language whose list
/// separator is `;` (French, German and others) splits a CSV line on `;` wherever it stands, so
/// each piece after a `;` is a cell of its own there, and is neutralised too; so is each line
/// of a text that spans lines (a note), whose line break may end the spreadsheet's row there.
pub fn neutralise_cell(value: &str) -> std::borrow::Cow<'_, str> {
    let boundary = |c: char| matches!(c, ';' | '\n' | '\r');
    // A piece read as a quoted field runs as well: `"=1+1"`.
    let runs = |piece: &str| {
        matches!(
            piece
                .trim_start_matches(' ')
                .trim_start_matches('"')
                .chars()
                .next(),
            Some('=' | '+' | '-' | '@' | '\t')
        )
    };
    let leading_cr = value.starts_with('\r');
    if !leading_cr && !value.split(boundary).any(runs) {
        return value.into();
    }
    let mut out = String::with_capacity(value.len() + 4);
    if leading_cr {
        out.push('\'');
    }
    let mut rest = value;
    loop {
        let (piece, tail) = rest.split_at(rest.find(boundary).unwrap_or(rest.len()));
        let text = piece.trim_start_matches(' ');
        out.push_str(&piece[..piece.len() - text.len()]);
        if runs(piece) {
            out.push('\'');
        }
        out.push_str(text);
        let Some(separator) = tail.chars().next() else {
            break;
        };
        out.push(separator);
        rest = &tail[separator.len_utf8()..];
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> TimeRules {
        TimeRules {
            future_tolerance: Duration::from_secs(300),
            max_age: Duration::from_secs(30 * 86_400),
        }
    }

    #[test]
    fn times_within_the_window_are_accepted() {
        let now = Utc::now();
        assert!(rules().check(now, now).is_ok());
        assert!(
            rules()
                .check(now + chrono::Duration::seconds(299), now)
                .is_ok()
        );
        assert!(rules().check(now - chrono::Duration::days(29), now).is_ok());
    }

    #[test]
    fn times_too_far_ahead_or_behind_are_refused() {
        let now = Utc::now();
        assert!(
            rules()
                .check(now + chrono::Duration::seconds(301), now)
                .is_err()
        );
        assert!(
            rules()
                .check(now - chrono::Duration::days(31), now)
                .is_err()
        );
    }

    #[test]
    fn the_geofence_boundary_is_inside() {
        assert!(!outside_geofence(200.0, 200));
        assert!(outside_geofence(200.1, 200));
    }

    #[test]
    fn formula_starters_are_neutralised() {
        for bad in ["=1+1", "+31", "-2", "@SUM(A1)", "\tx", "\rx"] {
            assert!(neutralise_cell(bad).starts_with('\''), "{bad:?}");
        }
        assert_eq!(neutralise_cell("Kigali"), "Kigali");
        assert_eq!(neutralise_cell(""), "");
        // Split on `;` by Excel in French, German and other languages: each piece is a cell.
        assert_eq!(
            neutralise_cell("Gate 2; ask for Aimée"),
            "Gate 2; ask for Aimée"
        );
        assert_eq!(
            neutralise_cell("ok;=HYPERLINK(\"http://evil.example\");"),
            "ok;'=HYPERLINK(\"http://evil.example\");"
        );
        assert_eq!(neutralise_cell("a; @SUM(A1)"), "a; '@SUM(A1)");
        assert_eq!(neutralise_cell("  +1"), "  '+1");
        assert_eq!(neutralise_cell("a;\"=1+1\""), "a;'\"=1+1\"");
        // A line of a note is a row's first cell there.
        assert_eq!(
            neutralise_cell("ok\n=cmd|' /C calc'!A0"),
            "ok\n'=cmd|' /C calc'!A0"
        );
        assert_eq!(neutralise_cell("ok\r\n+1\r-2"), "ok\r\n'+1\r'-2");
        assert_eq!(neutralise_cell("line one\nline two"), "line one\nline two");
        // Pieces left as they are keep their leading spaces beside one that is neutralised.
        assert_eq!(
            neutralise_cell("-15 min; see supervisor"),
            "'-15 min; see supervisor"
        );
        assert_eq!(neutralise_cell("- item\n  sub"), "'- item\n  sub");
    }
}
