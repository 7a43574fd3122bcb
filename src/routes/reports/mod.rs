//! Attendance exports (CSV, XLSX) and summaries, for supervisors and above over their tree.

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

pub(super) fn parse_tz(tz: Option<&str>, state: &AppState) -> Result<Tz, ApiError> {
    match tz.filter(|t| !t.is_empty()) {
        None => Ok(state.config.attendance.timezone),
        // No zone name has a space: one is a `+` left unencoded (`Etc/GMT+3`).
        Some(name) => name.replace(' ', "+").parse().map_err(|_| {
            ApiError::invalid("tz", "must be an IANA time zone such as Africa/Kigali")
        }),
    }
}
