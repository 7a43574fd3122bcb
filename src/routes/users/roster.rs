//! The users a supervisor or admin may see, new accounts, and the decision on registrations.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::audit::Activity;
use crate::auth::{AdminUser, AuthUser, ClientInfo, SupervisingUser};
use crate::db::users::{self, NewUser, User, UserFilter};
use crate::domain::{Role, UserStatus};
use crate::error::{ApiError, ErrorCode, ErrorEnvelope, Invalid};
use crate::extract::{Json, Path, Query};
use crate::routes::auth::UserEnvelope;
use crate::routes::checks::{NewIdentity, check_facility, check_supervisor, lock_facility};
use crate::routes::pagination::{Page, Paging};
use crate::state::AppState;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_users, create_user))
        .routes(routes!(approve_user))
        .routes(routes!(reject_user))
}

/// Users the caller may see: admins all, supervisors and backstoppers their tree.
#[utoipa::path(get, path = "/users", tag = "users", security(("bearer" = [])), params(UserFilter),
    responses(
        (status = 200, description = "A page of users", body = Page<User>),
        (status = 400, description = "Bad query string", body = ErrorEnvelope),
        (status = 403, description = "Field roles may not list users", body = ErrorEnvelope),
        (status = 422, description = "Bad paging", body = ErrorEnvelope),
    ))]
async fn list_users(
    State(state): State<AppState>,
    user: SupervisingUser,
    Query(filter): Query<UserFilter>,
) -> Result<Json<Page<User>>, ApiError> {
    let paging = Paging::new(filter.page, filter.per_page)?;
    let (data, total) =
        users::search(&state.db, &user, &filter, paging.limit(), paging.offset()).await?;
    Ok(Json(paging.wrap(data, total)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    /// At most 254 bytes in UTF-8, the limit mail delivery sets: fewer characters when some are
    /// not ASCII.
    #[schema(min_length = 3, max_length = 254, pattern = r"^[^@\s]+@[^@\s]+$")]
    pub email: String,
    #[schema(min_length = 10, max_length = 128)]
    pub password: String,
    #[schema(min_length = 1, max_length = 100, pattern = r"\S")]
    pub first_name: String,
    #[schema(min_length = 1, max_length = 100, pattern = r"\S")]
    pub last_name: String,
    #[schema(max_length = 32)]
    pub phone: Option<String>,
    #[schema(max_length = 64)]
    pub employee_id: Option<String>,
    pub role: Role,
    pub facility_id: Option<Uuid>,
    /// A supervisor, backstopper or admin whose role is no lower than the user's.
    pub supervisor_id: Option<Uuid>,
    /// Default `active`.
    pub status: Option<UserStatus>,
}

/// Creates a user of any role (admin).
#[utoipa::path(post, path = "/users", tag = "users", security(("bearer" = [])), request_body = CreateUser,
    responses(
        (status = 201, description = "Created", body = User),
        (status = 400, description = "Malformed JSON", body = ErrorEnvelope),
        (status = 403, description = "Admins only", body = ErrorEnvelope),
        (status = 409, description = "Email or employee id taken (`duplicate`)", body = ErrorEnvelope),
        (status = 422, description = "Invalid fields", body = ErrorEnvelope),
    ))]
async fn create_user(
    State(state): State<AppState>,
    admin: AdminUser,
    client: ClientInfo,
    Json(req): Json<CreateUser>,
) -> Result<(StatusCode, Json<User>), ApiError> {
    let mut invalid = Invalid::default();
    let NewIdentity {
        email,
        password,
        first_name,
        last_name,
        phone,
        employee_id,
    } = NewIdentity::check(
        &req.email,
        &req.password,
        &req.first_name,
        &req.last_name,
        req.phone,
        req.employee_id,
        &mut invalid,
    );
    check_facility(&state.db, req.facility_id, None, &mut invalid).await?;
    check_supervisor(
        &state.db,
        req.supervisor_id,
        Some(req.role),
        None,
        &mut invalid,
    )
    .await?;
    invalid.finish()?;
    let (Some(email), Some(password)) = (email, password) else {
        unreachable!("checked above");
    };
    let status = req.status.unwrap_or(UserStatus::Active);
    let hash = state.hasher.hash(password.into_secret()).await?;
    let mut tx = crate::db::begin(&state.db).await?;
    // Again under share locks: the supervisor cannot be demoted (to a field role, or below the
    // new user's role), nor the facility deactivated, before this commits.
    let mut invalid = Invalid::default();
    lock_facility(&mut tx, req.facility_id).await?;
    check_facility(&mut *tx, req.facility_id, None, &mut invalid).await?;
    check_supervisor(
        &mut *tx,
        req.supervisor_id,
        Some(req.role),
        None,
        &mut invalid,
    )
    .await?;
    invalid.finish()?;
    let id = users::insert(
        &mut *tx,
        NewUser {
            email: email.as_str(),
            password_hash: hash,
            first_name,
            last_name,
            phone,
            employee_id,
            role: req.role,
            status,
            facility_id: req.facility_id,
            supervisor_id: req.supervisor_id,
        },
    )
    .await?;
    Activity::new("user.create")
        .by(&admin)
        .on("user", id)
        .from(&client)
        .details(serde_json::json!({ "role": req.role, "status": status }))
        .record(&mut *tx)
        .await?;
    let user = users::find(&mut *tx, id).await?.ok_or(ApiError::NotFound)?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(user)))
}

/// Approves or rejects a pending registration: an admin, or the supervisor the applicant named.
async fn decide(
    state: &AppState,
    actor: &AuthUser,
    client: &ClientInfo,
    id: Uuid,
    approve: bool,
) -> Result<Json<UserEnvelope>, ApiError> {
    if !users::can_see(&state.db, actor, id).await? {
        return Err(ApiError::NotFound);
    }
    let mut tx = crate::db::begin(&state.db).await?;
    let row: Option<(String, Option<Uuid>)> =
        sqlx::query_as("SELECT status, supervisor_id FROM users WHERE id = $1 FOR NO KEY UPDATE")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    let (status, supervisor_id) = row.ok_or(ApiError::NotFound)?;
    if !actor.is_admin() && supervisor_id != Some(actor.id) {
        return Err(ApiError::Forbidden);
    }
    if status != "pending" {
        return Err(ApiError::conflict(
            ErrorCode::Conflict,
            format!("the account is {status}, not pending"),
        ));
    }
    let (new_status, action) = if approve {
        ("active", "user.approve")
    } else {
        ("inactive", "user.reject")
    };
    sqlx::query("UPDATE users SET status = $2 WHERE id = $1")
        .bind(id)
        .bind(new_status)
        .execute(&mut *tx)
        .await?;
    Activity::new(action)
        .by(actor)
        .on("user", id)
        .from(client)
        .record(&mut *tx)
        .await?;
    let user = users::find(&mut *tx, id).await?.ok_or(ApiError::NotFound)?;
    state.commit_for_user(tx, id).await?;
    Ok(Json(UserEnvelope { user }))
}

/// Approves a pending registration; the account can then log in.
#[utoipa::path(post, path = "/users/{id}/approve", tag = "users", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "User id")),
    responses(
        (status = 200, description = "Approved", body = UserEnvelope),
        (status = 400, description = "Malformed id", body = ErrorEnvelope),
        (status = 403, description = "Only an admin or the named supervisor may decide", body = ErrorEnvelope),
        (status = 404, description = "No such user, or not visible to the caller", body = ErrorEnvelope),
        (status = 409, description = "The account is not pending", body = ErrorEnvelope),
    ))]
async fn approve_user(
    State(state): State<AppState>,
    actor: AuthUser,
    client: ClientInfo,
    Path(id): Path<Uuid>,
) -> Result<Json<UserEnvelope>, ApiError> {
    decide(&state, &actor, &client, id, true).await
}

/// Rejects a pending registration; the account becomes `inactive`.
#[utoipa::path(post, path = "/users/{id}/reject", tag = "users", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "User id")),
    responses(
        (status = 200, description = "Rejected", body = UserEnvelope),
        (status = 400, description = "Malformed id", body = ErrorEnvelope),
        (status = 403, description = "Only an admin or the named supervisor may decide", body = ErrorEnvelope),
        (status = 404, description = "No such user, or not visible to the caller", body = ErrorEnvelope),
        (status = 409, description = "The account is not pending", body = ErrorEnvelope),
    ))]
async fn reject_user(
    State(state): State<AppState>,
    actor: AuthUser,
    client: ClientInfo,
    Path(id): Path<Uuid>,
) -> Result<Json<UserEnvelope>, ApiError> {
    decide(&state, &actor, &client, id, false).await
}
