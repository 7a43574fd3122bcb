//! The middleware stack shared by every route.

use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::compression::CompressionLayer;
use tower_http::compression::predicate::{DefaultPredicate, NotForContentType, Predicate};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use tracing::Instrument;

use crate::config::Config;
use crate::error::envelope_errors;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Routes whose requests are logged at debug: probes would otherwise drown the logs.
const QUIET_ROUTES: &[&str] = &["/health", "/ready", "/metrics"];

/// Wraps the router in the stack, outermost first: request id, sensitive headers, security
/// headers, CORS, request span and metrics, error envelope, time limit, panic catcher,
/// compression, body limits.
pub fn apply(router: Router, config: &Config) -> Router {
    // Uploads get their own, larger limit on their route; this is the ceiling for everything.
    let hard_limit = config.max_upload_bytes.max(config.max_body_bytes) + 64 * 1024;
    // Each `layer` call wraps the previous ones, so the last is the outermost. They are applied
    // in steps because Axum middleware functions need the plain response body type.
    let inner = ServiceBuilder::new()
        .layer(CatchPanicLayer::new())
        .layer(RequestBodyLimitLayer::new(hard_limit))
        // Not an XLSX export: it is a zip already.
        .layer(CompressionLayer::new().compress_when(
            DefaultPredicate::new().and(NotForContentType::const_new(crate::routes::XLSX_TYPE)),
        ))
        .layer(DefaultBodyLimit::max(config.max_body_bytes));
    let outer = ServiceBuilder::new()
        .layer(axum::middleware::map_request(drop_unusable_request_id))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetSensitiveRequestHeadersLayer::new([
            header::AUTHORIZATION,
            header::COOKIE,
        ]))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            json_csp,
        ))
        .layer(cors(config));
    let limits = TimeLimits {
        request: config.request_timeout,
        upload: config.upload_timeout,
    };
    router
        .layer(inner)
        .layer(middleware::from_fn_with_state(limits, time_limit))
        .layer(middleware::from_fn(envelope_errors))
        .layer(middleware::from_fn(trace_requests))
        .layer(outer)
}

/// The route whose requests carry a file up, over whatever link an admin has.
const UPLOAD_ROUTE: &str = "/api/facilities/import";

#[derive(Clone, Copy)]
struct TimeLimits {
    request: Duration,
    upload: Duration,
}

/// Cancels a request that outlasts its limit (`REQUEST_TIMEOUT_SECS`, or `UPLOAD_TIMEOUT_SECS`
/// for an import, whose time includes receiving the file); the envelope layer answers it 503.
async fn time_limit(State(limits): State<TimeLimits>, request: Request, next: Next) -> Response {
    let limit = if request.uri().path() == UPLOAD_ROUTE {
        limits.upload
    } else {
        limits.request
    };
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => StatusCode::REQUEST_TIMEOUT.into_response(),
    }
}

/// JSON never needs to load anything; the Swagger UI page sets its own policy.
fn json_csp(response: &Response) -> Option<HeaderValue> {
    let is_html = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.starts_with("text/html") || v.starts_with("text/css") || v.contains("javascript")
        });
    if is_html {
        None
    } else {
        Some(HeaderValue::from_static(
            "default-src 'none'; frame-ancestors 'none'; base-uri 'none'",
        ))
    }
}

fn cors(config: &Config) -> CorsLayer {
    let origins: Vec<HeaderValue> = config
        .cors_origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    let allow = if config.cors_origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins)
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([
            axum::http::Method::GET,
            axum::http::Method::POST,
            axum::http::Method::PATCH,
            axum::http::Method::DELETE,
        ])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE, REQUEST_ID])
        .expose_headers([
            REQUEST_ID,
            header::RETRY_AFTER,
            HeaderName::from_static("x-ratelimit-limit"),
            HeaderName::from_static("x-ratelimit-remaining"),
            HeaderName::from_static("x-ratelimit-after"),
            // An export's file name.
            header::CONTENT_DISPOSITION,
        ])
        .max_age(Duration::from_secs(3600))
}

/// A client's request id is kept when it could be one: up to 128 visible ASCII characters.
/// Anything else (a kilobyte of text, bytes that are not text) is replaced by a generated id,
/// rather than repeated on every log line or lost from the error body.
async fn drop_unusable_request_id(mut request: Request) -> Request {
    let usable = |v: &HeaderValue| {
        (1..=128).contains(&v.len()) && v.as_bytes().iter().all(|b| b.is_ascii_graphic())
    };
    let mut sent = request.headers().get_all(REQUEST_ID).iter();
    let keep = match (sent.next(), sent.next()) {
        (None, _) => true,
        (Some(one), None) => usable(one),
        (Some(_), Some(_)) => false,
    };
    if !keep {
        request.headers_mut().remove(REQUEST_ID);
    }
    request
}

/// One span per request (method, matched route, request id; status and latency recorded at the
/// end), and the request metrics. Bodies and headers are never logged.
async fn trace_requests(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let method = crate::metrics::method_label(request.method());
    let request_id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let quiet = QUIET_ROUTES.contains(&route.as_str());
    let span = if quiet {
        tracing::debug_span!("request", %method, %route, %request_id, user.id = tracing::field::Empty)
    } else {
        tracing::info_span!("request", %method, %route, %request_id, user.id = tracing::field::Empty)
    };
    let started = Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    let latency_ms = elapsed.as_secs_f64() * 1000.0;
    span.in_scope(|| {
        if quiet {
            tracing::debug!(status, latency_ms, "request finished");
        } else if status >= 500 {
            tracing::error!(status, latency_ms, "request finished");
        } else {
            tracing::info!(status, latency_ms, "request finished");
        }
    });
    crate::metrics::record_request(method, &route, status, elapsed.as_secs_f64());
    response
}
