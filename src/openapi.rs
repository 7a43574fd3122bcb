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
                       `ErrorEnvelope` shape. Every response carries `x-request-id`: the \
                       request's own when it sent a usable one, else one made for it, also \
                       given as `request_id` in error bodies, and `x-content-type-options: \
                       nosniff`, `x-frame-options: DENY`, `referrer-policy: no-referrer` and a \
                       `content-security-policy`.",
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
        components.add_security_scheme(
            "metrics_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The `METRICS_TOKEN` the service was started with (for Prometheus)",
                    ))
                    .build(),
            ),
        );
    }
}

/// The full document, as served at `/api-docs/openapi.json`.
pub fn spec() -> utoipa::openapi::OpenApi {
    let (_, mut spec) = crate::routes::api().split_for_parts();
    add_common_responses(&mut spec);
    spec
}

/// Each `Page_X` names its items as the schema `X`, rather than a copy of it (utoipa inlines a
/// generic's argument): a generated client's list of users is then a list of its `User`.
fn refer_page_items(spec: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::schema::{ArrayItems, Schema};
    use utoipa::openapi::{Ref, RefOr};
    let Some(components) = spec.components.as_mut() else {
        return;
    };
    let named: Vec<String> = components.schemas.keys().cloned().collect();
    for (name, schema) in components.schemas.iter_mut() {
        let Some(item) = name.strip_prefix("Page_") else {
            continue;
        };
        if !named.iter().any(|n| n == item) {
            continue;
        }
        if let RefOr::T(Schema::Object(page)) = schema
            && let Some(RefOr::T(Schema::Array(data))) = page.properties.get_mut("data")
        {
            data.items = ArrayItems::RefOrSchema(Box::new(RefOr::Ref(Ref::from_schema_name(item))));
        }
    }
}

/// Answers every operation can give whatever its handler does, added once here rather than on
/// each route: 401 wherever a token is required, 429 under `/api` (every group there has its
/// rate limit, see `routes::groups`), 500 (a bug), 503 (the database is unreachable; not for
/// `/health`, which does not use it), and 413 wherever there is a body to be too large. A route
/// that says more about one of them keeps its own. Then the headers that middleware and the
/// error type set (see [`add_common_headers`]).
pub fn add_common_responses(spec: &mut utoipa::openapi::OpenApi) {
    refer_page_items(spec);
    use utoipa::openapi::content::ContentBuilder;
    use utoipa::openapi::{Ref, RefOr, ResponseBuilder};
    let envelope = |description: &str| {
        RefOr::T(
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorEnvelope")))
                        .build(),
                )
                .build(),
        )
    };
    for (path, item) in spec.paths.paths.iter_mut() {
        let uses_database = path != "/health";
        let rate_limited = path.starts_with("/api/");
        for operation in [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.patch,
            &mut item.delete,
        ]
        .into_iter()
        .flatten()
        {
            let responses = &mut operation.responses.responses;
            if operation.security.as_ref().is_some_and(|s| !s.is_empty()) {
                responses.entry("401".into()).or_insert_with(|| {
                    envelope(
                        "No token (`unauthenticated`), one past its time (`token_expired`: \
                             refresh, then send the request again), or one that is invalid or \
                             no longer works (`invalid_token`: log in again)",
                    )
                });
            }
            if rate_limited {
                responses
                    .entry("429".into())
                    .or_insert_with(|| envelope("Rate limited (`rate_limited`)"));
            }
            responses.entry("500".into()).or_insert_with(|| {
                envelope("An internal error (`internal`); the body carries no details")
            });
            if uses_database {
                responses.entry("503".into()).or_insert_with(|| {
                    envelope(
                        "The database is unreachable, the request timed out, or it met concurrent \
                         changes to the same records (`unavailable`); retry later, after \
                         `Retry-After` seconds when given",
                    )
                });
            }
            if operation.request_body.is_some() {
                responses.entry("413".into()).or_insert_with(|| {
                    envelope("The body is over the limit (`payload_too_large`)")
                });
            }
            add_common_headers(&mut operation.responses.responses);
        }
    }
}

/// The headers answers carry: `x-request-id` on every one; by status, `WWW-Authenticate` on 401;
/// `Retry-After` on 423, 429 and 503 (on a 503 when the service can tell when to try again); the
/// rate limiter's own, where a route is rate limited (it lists a 429), on its successes and its
/// 429 while limits are on (its other answers carry them too).
fn add_common_headers(
    responses: &mut std::collections::BTreeMap<
        String,
        utoipa::openapi::RefOr<utoipa::openapi::Response>,
    >,
) {
    use utoipa::openapi::header::{Header, HeaderBuilder};
    use utoipa::openapi::{ObjectBuilder, RefOr, Type};
    let header = |kind: Type, description: &str| -> Header {
        HeaderBuilder::new()
            .schema(ObjectBuilder::new().schema_type(kind))
            .description(Some(description))
            .build()
    };
    let rate_limited = responses.contains_key("429");
    for (status, response) in responses.iter_mut() {
        let RefOr::T(response) = response else {
            continue;
        };
        let mut add = |name: &str, kind: Type, description: &str| {
            response
                .headers
                .entry(name.to_string())
                .or_insert_with(|| header(kind, description));
        };
        add(
            "x-request-id",
            Type::String,
            "The request's id: the client's own `x-request-id` when it sent a usable one, else \
             one made up; also the `request_id` of an error body, and in the service's log",
        );
        match status.as_str() {
            "401" => add(
                "WWW-Authenticate",
                Type::String,
                "`Bearer`, with `error=\"invalid_token\"` for a bad or expired token",
            ),
            "423" | "429" | "503" => add(
                "Retry-After",
                Type::Integer,
                "Seconds to wait before trying again (on a 503, when the service can tell)",
            ),
            _ => {}
        }
        if status == "429" {
            add(
                "x-ratelimit-after",
                Type::Integer,
                "Seconds until the limit lets a request through",
            );
        }
        if rate_limited && (status.starts_with('2') || status == "429") {
            add(
                "x-ratelimit-limit",
                Type::Integer,
                "Requests the limit allows in a burst (when rate limits are on)",
            );
            add(
                "x-ratelimit-remaining",
                Type::Integer,
                "Requests left in the current burst (when rate limits are on)",
            );
        }
    }
}

/// The document as YAML, as committed in `openapi.yaml`.
pub fn yaml() -> anyhow::Result<String> {
    Ok(spec().to_yaml()?)
}
