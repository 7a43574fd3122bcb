//! The one error type of the HTTP layer, and the middleware that gives every failure — ours,
//! Axum's, tower's — the contract's envelope:
//! `{"error": {"code", "message", "details", "request_id"}}`.

use std::collections::BTreeMap;

use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

pub type Result<T, E = ApiError> = std::result::Result<T, E>;

/// Field name → reasons, as in `details` of a 422.
pub type FieldErrors = BTreeMap<String, Vec<String>>;

/// Every `code` an error response carries, for a client to switch on (`message` is for people):
/// 400 `bad_request`; 401 `unauthenticated`, `invalid_credentials`, `token_expired`,
/// `invalid_token`; 403 `forbidden`, `account_pending` (a login to an account waiting for
/// approval); 404 `not_found`; 405 `method_not_allowed`; 409 `conflict`, `already_clocked_in`,
/// `not_clocked_in`, `duplicate`; 413 `payload_too_large`; 415 `unsupported_media_type`; 422
/// `validation_failed`; 423 `account_locked`; 429 `rate_limited`; 500 `internal`; 503
/// `unavailable`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    Unauthenticated,
    InvalidCredentials,
    TokenExpired,
    InvalidToken,
    Forbidden,
    AccountPending,
    NotFound,
    MethodNotAllowed,
    Conflict,
    AlreadyClockedIn,
    NotClockedIn,
    Duplicate,
    PayloadTooLarge,
    UnsupportedMediaType,
    ValidationFailed,
    AccountLocked,
    RateLimited,
    Internal,
    Unavailable,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("authentication required")]
    Unauthenticated,
    #[error("invalid email or password")]
    InvalidCredentials,
    #[error("the access token has expired")]
    TokenExpired,
    #[error("the token is invalid")]
    InvalidToken,
    /// A `403` that says why (`forbidden`, or `account_pending` at login); `details` names what
    /// refused it (the account's `status` at login), for a client to tell the cases apart.
    #[error("{message}")]
    ForbiddenWith {
        code: ErrorCode,
        message: String,
        details: Option<FieldErrors>,
    },
    #[error("you are not allowed to do this")]
    Forbidden,
    #[error("not found")]
    NotFound,
    #[error("{message}")]
    Conflict { code: ErrorCode, message: String },
    #[error("the request body is too large")]
    PayloadTooLarge,
    /// An upload within the size limit whose content is too large to read (`413`, with why).
    #[error("{0}")]
    ContentTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("validation failed")]
    Validation(FieldErrors),
    #[error("too many failed logins; try again later")]
    AccountLocked { retry_after_s: u64 },
    #[error("too many requests; slow down")]
    RateLimited { retry_after_s: u64 },
    #[error("the service is temporarily unavailable")]
    Unavailable,
    /// A shared capacity is in use (`503`, with why and when to try again).
    #[error("{message}")]
    Busy { message: String, retry_after_s: u64 },
    #[error("internal error: {0}")]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    /// A statement Postgres ended to break a deadlock: nothing of it was written, and the work
    /// can be done again.
    pub fn is_deadlock(&self) -> bool {
        matches!(self, ApiError::Internal(err)
            if err.downcast_ref::<sqlx::Error>().is_some_and(crate::db::is_deadlock))
    }

    /// A 422 with a single field's reason.
    pub fn invalid(field: &str, reason: impl Into<String>) -> Self {
        let mut details = FieldErrors::new();
        details.insert(field.to_string(), vec![reason.into()]);
        ApiError::Validation(details)
    }

    /// A 403 that says why, with no details.
    pub fn refused(message: impl Into<String>) -> Self {
        ApiError::ForbiddenWith {
            code: ErrorCode::Forbidden,
            message: message.into(),
            details: None,
        }
    }

    pub fn conflict(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError::Conflict {
            code,
            message: message.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthenticated
            | ApiError::InvalidCredentials
            | ApiError::TokenExpired
            | ApiError::InvalidToken => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden | ApiError::ForbiddenWith { .. } => StatusCode::FORBIDDEN,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge | ApiError::ContentTooLarge(_) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::AccountLocked { .. } => StatusCode::LOCKED,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable | ApiError::Busy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            ApiError::BadRequest(_) => ErrorCode::BadRequest,
            ApiError::Unauthenticated => ErrorCode::Unauthenticated,
            ApiError::InvalidCredentials => ErrorCode::InvalidCredentials,
            ApiError::TokenExpired => ErrorCode::TokenExpired,
            ApiError::InvalidToken => ErrorCode::InvalidToken,
            ApiError::ForbiddenWith { code, .. } => *code,
            ApiError::Forbidden => ErrorCode::Forbidden,
            ApiError::NotFound => ErrorCode::NotFound,
            ApiError::Conflict { code, .. } => *code,
            ApiError::PayloadTooLarge | ApiError::ContentTooLarge(_) => ErrorCode::PayloadTooLarge,
            ApiError::UnsupportedMediaType(_) => ErrorCode::UnsupportedMediaType,
            ApiError::Validation(_) => ErrorCode::ValidationFailed,
            ApiError::AccountLocked { .. } => ErrorCode::AccountLocked,
            ApiError::RateLimited { .. } => ErrorCode::RateLimited,
            ApiError::Unavailable | ApiError::Busy { .. } => ErrorCode::Unavailable,
            ApiError::Internal(_) => ErrorCode::Internal,
        }
    }
}

/// The body of every error response.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorEnvelope {
    pub error: ErrorBody,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Machine-readable code, e.g. `validation_failed`, `not_found`, `already_clocked_in`.
    pub code: ErrorCode,
    /// Human-readable explanation; never contains SQL, stack traces or secrets.
    pub message: String,
    /// For `validation_failed`: each invalid field mapped to its reasons. For a login refused
    /// because the account is not active (`account_pending` or `forbidden`): `status` with the
    /// account's status.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, value_type = Option<std::collections::HashMap<String, Vec<String>>>, example = json!({"email": ["must be a valid email address"]}))]
    pub details: Option<FieldErrors>,
    /// The request id, also sent as the `x-request-id` header.
    pub request_id: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // Postgres ended a transaction to break a deadlock, or to keep serializable
        // transactions apart: not a fault of the request or a bug to report, and the same
        // request sent again normally goes through.
        let this = match self {
            ApiError::Internal(err)
                if err
                    .downcast_ref::<sqlx::Error>()
                    .is_some_and(crate::db::is_contention) =>
            {
                tracing::warn!(error = %err, "a transaction was ended by contention");
                ApiError::Busy {
                    message: "the request met a concurrent change to the same records and was \
                              not completed; try again"
                        .into(),
                    retry_after_s: 1,
                }
            }
            other => other,
        };
        this.render()
    }
}

impl ApiError {
    fn render(self) -> Response {
        let status = self.status();
        let message = match &self {
            ApiError::Internal(err) => {
                // The cause stays in the logs (with the request id from the span); the client
                // gets a generic message.
                tracing::error!(error = ?err, "request failed with an internal error");
                "an internal error occurred".to_string()
            }
            other => other.to_string(),
        };
        let details = match self {
            ApiError::Validation(ref d) => Some(d.clone()),
            ApiError::ForbiddenWith { ref details, .. } => details.clone(),
            _ => None,
        };
        let body = ErrorBody {
            code: self.code(),
            message,
            details,
            request_id: String::new(),
        };
        let mut response = (
            status,
            crate::extract::Json(ErrorEnvelope {
                error: body.clone(),
            }),
        )
            .into_response();
        let headers = response.headers_mut();
        match &self {
            ApiError::Unauthenticated
            | ApiError::TokenExpired
            | ApiError::InvalidToken
            | ApiError::InvalidCredentials => {
                let value = match self.code() {
                    ErrorCode::TokenExpired => {
                        r#"Bearer error="invalid_token", error_description="the access token has expired""#
                    }
                    ErrorCode::InvalidToken => r#"Bearer error="invalid_token""#,
                    _ => "Bearer",
                };
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(value));
            }
            ApiError::AccountLocked { retry_after_s }
            | ApiError::RateLimited { retry_after_s }
            | ApiError::Busy { retry_after_s, .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_s));
            }
            _ => {}
        }
        response.extensions_mut().insert(body);
        response
    }
}

/// Whether an error code says the server ended the session (class 08, or a shutdown or restart:
/// 57P01–57P03), so a statement sent may or may not have committed.
pub fn session_lost(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03")
}

impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        match &err {
            sqlx::Error::RowNotFound => ApiError::NotFound,
            // `Tls`: the server or pooler will not speak TLS as the URL's `sslmode` asks.
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_) => {
                tracing::warn!(error = %err, "database unavailable");
                ApiError::Unavailable
            }
            // The server ended or refused the session: connection failures (class 08), a shutdown
            // or restart (57P01–57P03), too many connections (53300).
            sqlx::Error::Database(db)
                if db
                    .code()
                    .is_some_and(|code| session_lost(&code) || code == "53300") =>
            {
                tracing::warn!(error = %err, "database unavailable");
                ApiError::Unavailable
            }
            // A row held by another change for longer than the statement would wait (see
            // `db::upkeep`): nothing was done.
            sqlx::Error::Database(db) if db.code().as_deref() == Some("55P03") => ApiError::Busy {
                message: "records this needs are held by another change; try again shortly".into(),
                retry_after_s: 5,
            },
            // A statement cancelled by its time limit (see `db::bounded`).
            sqlx::Error::Database(db) if db.code().as_deref() == Some("57014") => ApiError::Busy {
                message: "the request took too long and was cancelled; ask for less".into(),
                retry_after_s: 60,
            },
            sqlx::Error::Database(db) => match db.kind() {
                sqlx::error::ErrorKind::UniqueViolation => ApiError::conflict(
                    ErrorCode::Conflict,
                    "a record with the same unique value already exists",
                ),
                sqlx::error::ErrorKind::ForeignKeyViolation => ApiError::invalid(
                    constraint_field(db.constraint()),
                    "refers to a record that does not exist",
                ),
                // Postgres text cannot hold NUL (22021) or unencodable characters (22P05).
                _ if matches!(db.code().as_deref(), Some("22021" | "22P05")) => ApiError::invalid(
                    "body",
                    "text must not contain NUL or unencodable characters",
                ),
                sqlx::error::ErrorKind::CheckViolation => ApiError::invalid(
                    constraint_field(db.constraint()),
                    "is out of the allowed range",
                ),
                _ => ApiError::Internal(err.into()),
            },
            _ => ApiError::Internal(err.into()),
        }
    }
}

/// Best-effort field name from a constraint such as `users_facility_id_fkey`.
fn constraint_field(constraint: Option<&str>) -> &str {
    let Some(name) = constraint else {
        return "record";
    };
    for field in [
        "facility_id",
        "supervisor_id",
        "council_id",
        "user_id",
        "latitude",
        "longitude",
        "geofence_radius_m",
    ] {
        if name.contains(field) {
            return field;
        }
    }
    "record"
}

impl From<validator::ValidationErrors> for ApiError {
    fn from(errors: validator::ValidationErrors) -> Self {
        let mut details = FieldErrors::new();
        for (field, errs) in errors.field_errors() {
            let reasons = errs
                .iter()
                .map(|e| {
                    e.message
                        .as_ref()
                        .map(|m| m.to_string())
                        .unwrap_or_else(|| e.code.replace('_', " "))
                })
                .collect();
            details.insert(field.to_string(), reasons);
        }
        ApiError::Validation(details)
    }
}

/// A constraint name and the client error its violation means.
pub type ConstraintError<'a> = (&'a str, fn() -> ApiError);

/// Turns a named constraint violation into the client error it means, at the call site.
pub trait ResultExt<T> {
    fn on_constraint(self, name: &str, f: impl FnOnce() -> ApiError) -> Result<T, ApiError>;
    /// Like `on_constraint`, for a statement that can break one of several constraints.
    fn on_constraints(self, map: &[ConstraintError<'_>]) -> Result<T, ApiError>;
}

impl<T> ResultExt<T> for std::result::Result<T, sqlx::Error> {
    fn on_constraint(self, name: &str, f: impl FnOnce() -> ApiError) -> Result<T, ApiError> {
        self.map_err(|e| match &e {
            sqlx::Error::Database(db) if db.constraint() == Some(name) => f(),
            _ => e.into(),
        })
    }

    fn on_constraints(self, map: &[ConstraintError<'_>]) -> Result<T, ApiError> {
        self.map_err(|e| {
            if let sqlx::Error::Database(db) = &e
                && let Some((_, f)) = map.iter().find(|(name, _)| db.constraint() == Some(*name))
            {
                return f();
            }
            e.into()
        })
    }
}

/// Middleware: fills in `request_id` on our own errors and wraps every other error response
/// (405 from the router, 413 from the body limit, a timeout, a panic) in the same envelope.
pub async fn envelope_errors(request: Request, next: Next) -> Response {
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let mut error = match parts.extensions.remove::<ErrorBody>() {
        Some(error) => error,
        None => {
            let (code, message) = generic_error(status);
            ErrorBody {
                code,
                message: message.to_string(),
                details: None,
                request_id: String::new(),
            }
        }
    };
    drop(body);
    error.request_id = request_id;
    // A timeout from the timeout layer is reported as the contract's 503.
    let status = if status == StatusCode::REQUEST_TIMEOUT {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        status
    };
    parts.status = status;
    // The body is replaced, so whatever encoding the inner layers gave the old one is gone.
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::CONTENT_ENCODING);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    let body = serde_json::to_vec(&ErrorEnvelope { error }).unwrap_or_default();
    Response::from_parts(parts, axum::body::Body::from(body))
}

fn generic_error(status: StatusCode) -> (ErrorCode, &'static str) {
    match status {
        StatusCode::BAD_REQUEST => (ErrorCode::BadRequest, "the request is malformed"),
        StatusCode::UNAUTHORIZED => (ErrorCode::Unauthenticated, "authentication required"),
        StatusCode::FORBIDDEN => (ErrorCode::Forbidden, "you are not allowed to do this"),
        StatusCode::NOT_FOUND => (ErrorCode::NotFound, "no such resource"),
        StatusCode::METHOD_NOT_ALLOWED => (
            ErrorCode::MethodNotAllowed,
            "this method is not allowed on this resource",
        ),
        StatusCode::REQUEST_TIMEOUT => (
            ErrorCode::Unavailable,
            "the request took too long and was stopped; what it was changing may have been \
                 saved, so look before sending it again",
        ),
        StatusCode::PAYLOAD_TOO_LARGE => {
            (ErrorCode::PayloadTooLarge, "the request body is too large")
        }
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            (ErrorCode::UnsupportedMediaType, "unsupported content type")
        }
        StatusCode::UNPROCESSABLE_ENTITY => (ErrorCode::ValidationFailed, "validation failed"),
        StatusCode::TOO_MANY_REQUESTS => (ErrorCode::RateLimited, "too many requests; slow down"),
        StatusCode::SERVICE_UNAVAILABLE => (
            ErrorCode::Unavailable,
            "the service is temporarily unavailable",
        ),
        s if s.is_server_error() => (ErrorCode::Internal, "an internal error occurred"),
        _ => (ErrorCode::BadRequest, "the request could not be processed"),
    }
}

/// Collects field errors while parsing a request, so a 422 names every bad field at once.
#[derive(Debug, Default)]
pub struct Invalid(FieldErrors);

impl Invalid {
    /// Keeps the value, or records the reason under `field`.
    pub fn check<T>(&mut self, field: &str, result: std::result::Result<T, String>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(reason) => {
                self.add(field, reason);
                None
            }
        }
    }

    pub fn add(&mut self, field: &str, reason: impl Into<String>) {
        self.0
            .entry(field.to_string())
            .or_default()
            .push(reason.into());
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Ok when nothing was recorded, else the 422.
    /// The 422 of the reasons collected (call only when there are some).
    pub fn into_error(self) -> ApiError {
        ApiError::Validation(self.0)
    }

    pub fn finish(self) -> Result<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Validation(self.0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database error carrying only its SQLSTATE.
    #[derive(Debug)]
    struct Coded(&'static str);

    impl std::fmt::Display for Coded {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "error {}", self.0)
        }
    }

    impl std::error::Error for Coded {}

    impl sqlx::error::DatabaseError for Coded {
        fn message(&self) -> &str {
            "ended"
        }
        fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
            Some(self.0.into())
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    fn answer(code: &'static str) -> Response {
        ApiError::from(sqlx::Error::Database(Box::new(Coded(code)))).into_response()
    }

    #[test]
    fn a_deadlock_or_serialization_failure_asks_the_client_to_try_again() {
        for code in ["40P01", "40001"] {
            let response = answer(code);
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE, "{code}");
            assert_eq!(response.headers()[header::RETRY_AFTER], "1", "{code}");
            let body = response.extensions().get::<ErrorBody>().unwrap();
            assert_eq!(body.code, ErrorCode::Unavailable, "{code}");
        }
        // Any other database error is still a bug, answered without its text.
        let response = answer("XX000");
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = response.extensions().get::<ErrorBody>().unwrap();
        assert_eq!(body.message, "an internal error occurred");
    }
}
