//! Users: one's own profile, and user management scoped by role.

use utoipa_axum::router::OpenApiRouter;

use crate::state::AppState;

mod account;
mod profile;
mod roster;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(profile::router())
        .merge(roster::router())
        .merge(account::router())
}
