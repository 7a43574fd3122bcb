//! The OpenAPI document: the parts no single route owns. Routes add themselves through
//! `utoipa_axum`, so the spec cannot list a route the router does not serve, or miss one.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::error::{ErrorBody, ErrorEnvelope};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Field Attendance API",
        description = "Clock-in/out with GPS for health-facility field workers, offline batch sync, \
                       facility imports and supervision reports. Every error answers with the \
                       `ErrorEnvelope` shape.",
    ),
    modifiers(&BearerAuth),
    components(schemas(ErrorEnvelope, ErrorBody, crate::sync::model::PushRecord)),
    tags(
        (name = "health", description = "Liveness, readiness and metrics"),
        (name = "auth", description = "Registration, login, token refresh and logout"),
        (name = "users", description = "Profiles and user management, scoped by role"),
        (name = "geography", description = "Regions (provinces) and councils (districts)"),
        (name = "facilities", description = "Facilities, their search and CSV/XLSX imports"),
        (name = "attendance", description = "Clock-in, clock-out and attendance records"),
        (name = "reports", description = "Attendance exports and summaries (supervisors and above)"),
        (name = "sync", description = "Offline batch push, change pull and the conflict queue"),
        (name = "admin", description = "Audit trail and system information (admins)"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The full document, as served at `/api-docs/openapi.json`.
pub fn spec() -> utoipa::openapi::OpenApi {
    let (_, spec) = crate::routes::api().split_for_parts();
    spec
}

/// The document as YAML, as committed in `openapi.yaml`.
pub fn yaml() -> anyhow::Result<String> {
    Ok(spec().to_yaml()?)
}
