//! One module per resource, each with its own `router()`, merged here.

pub mod health;

use axum::Router;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::SwaggerUi;

use crate::error::ApiError;
use crate::openapi::ApiDoc;
use crate::state::AppState;

/// Every documented route, with the spec they generate.
pub fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi()).merge(health::router())
}

/// The complete application: routes, docs, fallback and the middleware stack.
pub fn build(state: AppState) -> Router {
    let (router, spec) = api().split_for_parts();
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
