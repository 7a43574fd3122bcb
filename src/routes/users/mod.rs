//! Users: one's own profile, passwords, and user management scoped by role.

use utoipa_axum::router::OpenApiRouter;

use crate::state::AppState;

mod account;
mod password;
mod profile;
mod roster;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(profile::router())
        .merge(password::router())
        .merge(roster::router())
        .merge(account::router())
}
