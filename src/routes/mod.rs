//! One module per resource, each with its own `router()`, merged here under the rate-limit
//! class it belongs to.

pub mod activities;
pub mod admin;
pub mod attendance;
pub mod auth;
pub mod checks;
pub mod facilities;
pub mod geography;
pub mod health;
pub mod pagination;
pub mod period;
pub mod reports;
pub mod sync;
pub mod users;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use tower_governor::GovernorLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::SwaggerUi;

use crate::auth::rate_limit::Limiter;
use crate::error::ApiError;
use crate::openapi::ApiDoc;
use crate::state::AppState;

/// The media type of an XLSX workbook.
pub const XLSX_TYPE: &str = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet";

/// Routes grouped by the rate limit that applies to them (the contract's four classes).
struct Groups {
    /// `/api/auth/*`: per client address.
    auth: OpenApiRouter<AppState>,
    /// Devices' sync: per user.
    sync: OpenApiRouter<AppState>,
    /// Uploads: per user.
    upload: OpenApiRouter<AppState>,
    /// The rest of `/api`: per user.
    api: OpenApiRouter<AppState>,
}

fn groups() -> Groups {
    Groups {
        auth: auth::public_router().merge(auth::router()),
        sync: sync::router(),
        upload: facilities::upload_router(),
        api: users::router()
            .merge(activities::router())
            .merge(admin::router())
            .merge(geography::router())
            .merge(facilities::router())
            .merge(attendance::router())
            // An admin working through the conflict queue is not a device syncing.
            .merge(sync::conflicts_router()),
    }
}

fn limited(router: OpenApiRouter<AppState>, limiter: Option<&Limiter>) -> OpenApiRouter<AppState> {
    match limiter {
        Some(config) => router.route_layer(GovernorLayer {
            config: config.clone(),
        }),
        None => router,
    }
}

/// Every documented route, without rate limits: the source of the OpenAPI document.
pub fn api() -> OpenApiRouter<AppState> {
    assemble(None)
}

fn assemble(state: Option<&AppState>) -> OpenApiRouter<AppState> {
    let limits = state.and_then(|s| s.limiters.as_ref());
    let g = groups();
    // Uploads take a larger body than the global JSON limit; this inner limit wins. It leaves
    // room for the multipart framing around a file of the full size (checked by the handler).
    let upload_limit = state.map_or(usize::MAX, |s| {
        s.config.max_upload_bytes.saturating_add(64 * 1024)
    });
    let upload = g.upload.layer(DefaultBodyLimit::max(upload_limit));
    let api = limited(g.auth, limits.map(|l| &l.auth))
        .merge(limited(upload, limits.map(|l| &l.upload)))
        .merge(limited(g.sync, limits.map(|l| &l.sync)))
        .merge(limited(g.api, limits.map(|l| &l.api)));
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(health::router())
        .nest("/api", api)
}

/// The complete application: routes, docs, fallback and the middleware stack.
pub fn build(state: AppState) -> Router {
    let (router, mut spec) = assemble(Some(&state)).split_for_parts();
    crate::openapi::add_common_responses(&mut spec);
    let config = state.config.clone();
    let router = router
        .merge(SwaggerUi::new("/docs").url("/api-docs/openapi.json", spec))
        .fallback(not_found)
        .with_state(state);
    crate::middleware::apply(router, &config)
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}
