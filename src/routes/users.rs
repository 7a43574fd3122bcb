//! Users: one's own profile, and user management scoped by role.

use axum::extract::State;
use axum::http::StatusCode;
use secrecy::SecretString;
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::audit::Activity;
use crate::auth::{AuthUser, ClientInfo, lockout, refresh};
use crate::db::users::{self, NewUser, User, UserFilter};
use crate::domain::{Email, Password, Role, UserStatus};
use crate::error::{ApiError, ErrorEnvelope, Invalid, ResultExt};
use crate::extract::{Json, Path, Query};
use crate::routes::auth::{
    NewIdentity, UserEnvelope, check_facility, check_supervisor, optional_text, required_text,
};
use crate::routes::pagination::{Page, Paging};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(me, update_me))
        .routes(routes!(change_password))
        .routes(routes!(list_users, create_user))
        .routes(routes!(get_user, update_user, deactivate_user))
        .routes(routes!(approve_user))
        .routes(routes!(reject_user))
}

/// The caller's profile with the facility → council → region hierarchy.
#[utoipa::path(get, path = "/users/me", tag = "users", security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller", body = User),
        (status = 401, description = "Missing or invalid token", body = ErrorEnvelope),
        (status = 429, description = "Rate limited", body = ErrorEnvelope),
    ))]
async fn me(State(state): State<AppState>, user: AuthUser) -> Result<Json<User>, ApiError> {
    Ok(Json(
        users::find(&state.db, user.id)
            .await?
            .ok_or(ApiError::NotFound)?,
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateMe {
    #[schema(min_length = 1, max_length = 100, pattern = r"\S")]
    pub first_name: Option<String>,
    #[schema(min_length = 1, max_length = 100, pattern = r"\S")]
    pub last_name: Option<String>,
    /// `null` or blank clears it.
    #[serde(default, deserialize_with = "crate::extract::double_option")]
    #[schema(value_type = Option<String>, nullable)]
    pub phone: Option<Option<String>>,
}

/// Updates one's own names and phone. Any other field (role, status, facility...) is refused.
#[utoipa::path(patch, path = "/users/me", tag = "users", security(("bearer" = [])), request_body = UpdateMe,
    responses(
        (status = 200, description = "The updated profile", body = User),
        (status = 400, description = "Malformed JSON", body = ErrorEnvelope),
        (status = 401, description = "Missing or invalid token", body = ErrorEnvelope),
        (status = 422, description = "Invalid or unknown fields", body = ErrorEnvelope),
        (status = 429, description = "Rate limited", body = ErrorEnvelope),
    ))]
async fn update_me(
    State(state): State<AppState>,
    user: AuthUser,
    client: ClientInfo,
    Json(req): Json<UpdateMe>,
) -> Result<Json<User>, ApiError> {
    let mut invalid = Invalid::default();
    let first_name = req
        .first_name
        .map(|v| required_text(&v, "first_name", 100, &mut invalid));
    let last_name = req
        .last_name
        .map(|v| required_text(&v, "last_name", 100, &mut invalid));
    let phone = req
        .phone
        .map(|p| optional_text(p, "phone", 32, &mut invalid));
    invalid.finish()?;
    let mut tx = state.db.begin().await?;
    sqlx::query(
        "UPDATE users SET first_name = coalesce($2, first_name), last_name = coalesce($3, last_name),
                          phone = CASE WHEN $4 THEN $5 ELSE phone END
         WHERE id = $1",
    )
    .bind(user.id)
    .bind(first_name)
    .bind(last_name)
    .bind(phone.is_some())
    .bind(phone.flatten())
    .execute(&mut *tx)
    .await?;
    Activity::new("user.update")
        .by(&user)
        .on("user", user.id)
        .from(&client)
        .details(serde_json::json!({ "self": true }))
        .record(&mut *tx)
        .await?;
    let updated = users::find(&mut *tx, user.id)
        .await?
        .ok_or(ApiError::NotFound)?;
    tx.commit().await?;
    Ok(Json(updated))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePassword {
    #[schema(min_length = 1, max_length = 1024)]
    pub current_password: String,
    /// 10 to 128 characters, not the email.
    #[schema(min_length = 10, max_length = 128)]
    pub new_password: String,
}

/// Changes one's password. Every token issued before stops working.
#[utoipa::path(post, path = "/users/me/password", tag = "users", security(("bearer" = [])), request_body = ChangePassword,
    responses(
        (status = 204, description = "Password changed; log in again"),
        (status = 400, description = "Malformed JSON", body = ErrorEnvelope),
        (status = 401, description = "Missing or invalid token", body = ErrorEnvelope),
        (status = 422, description = "Wrong current password or weak new one", body = ErrorEnvelope),
        (status = 423, description = "Locked after too many wrong passwords, here or at login (`account_locked`); see Retry-After", body = ErrorEnvelope),
        (status = 429, description = "Rate limited", body = ErrorEnvelope),
    ))]
async fn change_password(
    State(state): State<AppState>,
    user: AuthUser,
    client: ClientInfo,
    Json(req): Json<ChangePassword>,
) -> Result<StatusCode, ApiError> {
    let mut invalid = Invalid::default();
    let new_password = invalid.check(
        "new_password",
        Password::parse(&req.new_password, &user.email),
    );
    if req.current_password.is_empty() {
        invalid.add("current_password", "is required");
    } else if req.current_password.chars().count() > 1024 {
        invalid.add("current_password", "must be at most 1024 characters");
    }
    // A request refused for its shape checks no password: it neither counts towards the lock
    // nor meets it.
    if !invalid.is_empty() {
        return Err(invalid.into_error());
    }
    let new_password = new_password.expect("checked above");
    let hash: String = sqlx::query_scalar("SELECT password_hash FROM users WHERE id = $1")
        .bind(user.id)
        .fetch_one(&state.db)
        .await?;
    // Guesses here count towards the same lock as guesses at login.
    let attempt = lockout::attempt(&state.db, Some(user.id), &state.config.auth)
        .await?
        .ok_or_else(|| anyhow::anyhow!("a counted check names its account"))?;
    let current_ok = state
        .hasher
        .verify(SecretString::from(req.current_password), Some(hash))
        .await?;
    if !current_ok {
        let failure = attempt.failed();
        let mut tx = state.db.begin().await?;
        Activity::new("user.password_change_failed")
            .by(&user)
            .on("user", user.id)
            .from(&client)
            .record(&mut *tx)
            .await?;
        if let Some(lock) = lockout::lock_activity(failure, &user.email, &state.config.auth) {
            lock.by(&user).from(&client).record(&mut *tx).await?;
        }
        tx.commit().await?;
        return Err(ApiError::invalid("current_password", "is incorrect"));
    }
    let new_hash = state.hasher.hash(new_password.into_secret()).await?;
    let mut tx = state.db.begin().await?;
    sqlx::query(
        "UPDATE users SET password_hash = $2, token_version = token_version + 1,
                          failed_login_count = 0, locked_until = NULL
         WHERE id = $1",
    )
    .bind(user.id)
    .bind(new_hash)
    .execute(&mut *tx)
    .await?;
    refresh::revoke_all(&mut *tx, user.id).await?;
    Activity::new("user.password_change")
        .by(&user)
        .on("user", user.id)
        .from(&client)
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    attempt.cleared();
    state.auth_cache.invalidate(user.id);
    Ok(StatusCode::NO_CONTENT)
}

/// Users the caller may see: admins all, supervisors and backstoppers their tree.
#[utoipa::path(get, path = "/users", tag = "users", security(("bearer" = [])), params(UserFilter),
    responses(
        (status = 200, description = "A page of users", body = Page<User>),
        (status = 400, description = "Bad query string", body = ErrorEnvelope),
        (status = 401, description = "Missing or invalid token", body = ErrorEnvelope),
        (status = 403, description = "Field roles may not list users", body = ErrorEnvelope),
        (status = 422, description = "Bad paging", body = ErrorEnvelope),
        (status = 429, description = "Rate limited", body = ErrorEnvelope),
    ))]
async fn list_users(
    State(state): State<AppState>,
    user: AuthUser,
    Query(filter): Query<UserFilter>,
) -> Result<Json<Page<User>>, ApiError> {
    user.require(Role::Supervisor)?;
    let paging = Paging::new(filter.page, filter.per_page)?;
    let (data, total) =
        users::search(&state.db, &user, &filter, paging.limit(), paging.offset()).await?;
    Ok(Json(paging.wrap(data, total)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
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
    pub supervisor_id: Option<Uuid>,
    /// Default `active`.
    pub status: Option<UserStatus>,
}

/// Creates a user of any role (admin).
#[utoipa::path(post, path = "/users", tag = "users", security(("bearer" = [])), request_body = CreateUser,
    responses(
        (status = 201, description = "Created", body = User),
        (status = 400, description = "Malformed JSON", body = ErrorEnvelope),
        (status = 401, description = "Missing or invalid token", body = ErrorEnvelope),
        (status = 403, description = "Admins only", body = ErrorEnvelope),
        (status = 409, description = "Email or employee id taken (`duplicate`)", body = ErrorEnvelope),
        (status = 422, description = "Invalid fields", body = ErrorEnvelope),
        (status = 429, description = "Rate limited", body = ErrorEnvelope),
    ))]
async fn create_user(
    State(state): State<AppState>,
    admin: AuthUser,
    client: ClientInfo,
    Json(req): Json<CreateUser>,
) -> Result<(StatusCode, Json<User>), ApiError> {
    admin.require(Role::Admin)?;
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
    check_facility(&state, req.facility_id, None, &mut invalid).await?;
    check_supervisor(&state.db, req.supervisor_id, &mut invalid).await?;
    invalid.finish()?;
    let (Some(email), Some(password)) = (email, password) else {
        unreachable!("checked above");
    };
    let status = req.status.unwrap_or(UserStatus::Active);
    let hash = state.hasher.hash(password.into_secret()).await?;
    let mut tx = state.db.begin().await?;
    // Again under a share lock: the supervisor cannot be made a field role before this commits.
    let mut invalid = Invalid::default();
    check_supervisor(&mut *tx, req.supervisor_id, &mut invalid).await?;
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

/// One user: themself, anyone above them in the tree, or an admin; 404 for anyone else.
#[utoipa::path(get, path = "/users/{id}", tag = "users", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "User id")),
    responses(
        (status = 200, description = "The user", body = User),
        (status = 400, description = "Malformed id", body = ErrorEnvelope),
        (status = 401, description = "Missing or invalid token", body = ErrorEnvelope),
        (status = 404, description = "No such user, or not visible to the caller", body = ErrorEnvelope),
        (status = 429, description = "Rate limited", body = ErrorEnvelope),
    ))]
async fn get_user(
    State(state): State<AppState>,
    viewer: AuthUser,
    Path(id): Path<Uuid>,
) -> Result<Json<User>, ApiError> {
    if !users::can_see(&state.db, &viewer, id).await? {
        return Err(ApiError::NotFound);
    }
    Ok(Json(
        users::find(&state.db, id)
            .await?
            .ok_or(ApiError::NotFound)?,
    ))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    #[schema(min_length = 3, max_length = 254, pattern = r"^[^@\s]+@[^@\s]+$")]
    pub email: Option<String>,
    #[schema(min_length = 1, max_length = 100, pattern = r"\S")]
    pub first_name: Option<String>,
    #[schema(min_length = 1, max_length = 100, pattern = r"\S")]
    pub last_name: Option<String>,
    #[serde(default, deserialize_with = "crate::extract::double_option")]
    #[schema(value_type = Option<String>, nullable)]
    pub phone: Option<Option<String>>,
    #[serde(default, deserialize_with = "crate::extract::double_option")]
    #[schema(value_type = Option<String>, nullable)]
    pub employee_id: Option<Option<String>>,
    pub role: Option<Role>,
    pub status: Option<UserStatus>,
    /// Supervisors may change only this field, for users in their tree.
    #[serde(default, deserialize_with = "crate::extract::double_option")]
    #[schema(value_type = Option<Uuid>, nullable)]
    pub facility_id: Option<Option<Uuid>>,
    /// A supervisor, backstopper or admin; never one that would make a cycle.
    #[serde(default, deserialize_with = "crate::extract::double_option")]
    #[schema(value_type = Option<Uuid>, nullable)]
    pub supervisor_id: Option<Option<Uuid>>,
}

impl UpdateUser {
    fn only_facility(&self) -> bool {
        self.email.is_none()
            && self.first_name.is_none()
            && self.last_name.is_none()
            && self.phone.is_none()
            && self.employee_id.is_none()
            && self.role.is_none()
            && self.status.is_none()
            && self.supervisor_id.is_none()
    }
}

#[derive(sqlx::FromRow)]
struct Current {
    role: String,
    status: String,
    supervisor_id: Option<Uuid>,
}

/// Updates a user: admins any field; supervisors only the facility of users in their tree.
#[utoipa::path(patch, path = "/users/{id}", tag = "users", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "User id")), request_body = UpdateUser,
    responses(
        (status = 200, description = "The updated user", body = User),
        (status = 400, description = "Malformed JSON or id", body = ErrorEnvelope),
        (status = 401, description = "Missing or invalid token", body = ErrorEnvelope),
        (status = 403, description = "The caller may not change these fields", body = ErrorEnvelope),
        (status = 404, description = "No such user, or not visible to the caller", body = ErrorEnvelope),
        (status = 409, description = "Email or employee id taken (`duplicate`), a field role for someone who still supervises others, or the last active admin's role or status (`conflict`)", body = ErrorEnvelope),
        (status = 422, description = "Invalid fields, a supervisor cycle, or deactivating oneself", body = ErrorEnvelope),
        (status = 429, description = "Rate limited", body = ErrorEnvelope),
    ))]
async fn update_user(
    State(state): State<AppState>,
    actor: AuthUser,
    client: ClientInfo,
    Path(id): Path<Uuid>,
    Json(req): Json<UpdateUser>,
) -> Result<Json<User>, ApiError> {
    if !users::can_see(&state.db, &actor, id).await? || (actor.role.is_field()) {
        return Err(if actor.id == id {
            ApiError::Forbidden
        } else {
            ApiError::NotFound
        });
    }
    if !actor.is_admin() && (actor.id == id || !req.only_facility()) {
        return Err(ApiError::Forbidden);
    }
    let mut invalid = Invalid::default();
    let email = req
        .email
        .as_deref()
        .and_then(|e| invalid.check("email", Email::parse(e)));
    let first_name = req
        .first_name
        .as_deref()
        .map(|v| required_text(v, "first_name", 100, &mut invalid));
    let last_name = req
        .last_name
        .as_deref()
        .map(|v| required_text(v, "last_name", 100, &mut invalid));
    let phone = req
        .phone
        .clone()
        .map(|p| optional_text(p, "phone", 32, &mut invalid));
    let employee_id = req
        .employee_id
        .clone()
        .map(|p| optional_text(p, "employee_id", 64, &mut invalid));
    if actor.id == id {
        if req.status.is_some_and(|s| s != UserStatus::Active) {
            invalid.add("status", "you cannot deactivate your own account");
        }
        if req.role.is_some_and(|r| r != Role::Admin) {
            invalid.add("role", "you cannot change your own role");
        }
    }
    check_facility(&state, req.facility_id.flatten(), Some(id), &mut invalid).await?;

    let mut tx = state.db.begin().await?;
    // Supervision changes are serialised so that two concurrent edits cannot form a cycle
    // that neither would see alone.
    if req.supervisor_id.is_some() {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('users.supervisor_id'))")
            .execute(&mut *tx)
            .await?;
    }
    let may_remove_admin = req.role.is_some_and(|r| r != Role::Admin)
        || req.status.is_some_and(|s| s != UserStatus::Active);
    if may_remove_admin {
        users::lock_admin_roster(&mut tx).await?;
    }
    // The lock the update needs: a new email (a unique key) takes the row whole, which the
    // audit row's check of its actor would wait for. Rows are then locked in id order, the
    // actor's first when it sorts first, so that two admins changing each other's email wait
    // for one another rather than deadlock. Other fields leave the row to foreign-key checks
    // (clock-ins, audit rows naming this user).
    if email.is_some() && actor.id < id {
        sqlx::query("SELECT 1 FROM users WHERE id = $1 FOR KEY SHARE")
            .bind(actor.id)
            .execute(&mut *tx)
            .await?;
    }
    let current: Current = sqlx::query_as(if email.is_some() {
        "SELECT role, status, supervisor_id FROM users WHERE id = $1 FOR UPDATE"
    } else {
        "SELECT role, status, supervisor_id FROM users WHERE id = $1 FOR NO KEY UPDATE"
    })
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(ApiError::NotFound)?;
    check_supervisor(&mut *tx, req.supervisor_id.flatten(), &mut invalid).await?;
    if let Some(Some(supervisor)) = req.supervisor_id
        && (supervisor == id || users::is_above(&mut *tx, id, supervisor).await?)
    {
        invalid.add("supervisor_id", "would make a supervision cycle");
    }
    invalid.finish()?;
    if may_remove_admin
        && current.role == Role::Admin.as_str()
        && current.status == UserStatus::Active.as_str()
        && !users::another_active_admin(&mut tx, id).await?
    {
        return Err(last_admin());
    }
    // Someone's supervisor must stay able to supervise (the row is locked above, and each
    // new supervisor is share-locked while it is named).
    if let Some(role) = req.role
        && !role.can_supervise()
    {
        let reports: i64 =
            sqlx::query_scalar("SELECT count(*) FROM users WHERE supervisor_id = $1")
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
        if reports > 0 {
            return Err(ApiError::conflict(
                "conflict",
                format!(
                    "{reports} user(s) name this user as their supervisor; give them another \
                     supervisor before making this user a {role}"
                ),
            ));
        }
    }

    let role_changed = req.role.is_some_and(|r| r.as_str() != current.role);
    let status_changed = req.status.is_some_and(|s| s.as_str() != current.status);
    let cut_tokens = role_changed || (status_changed && req.status != Some(UserStatus::Active));
    sqlx::query(
        "UPDATE users SET
             first_name = coalesce($2, first_name),
             last_name = coalesce($3, last_name),
             phone = CASE WHEN $4 THEN $5 ELSE phone END,
             employee_id = CASE WHEN $6 THEN $7 ELSE employee_id END,
             role = coalesce($8, role),
             status = coalesce($9, status),
             facility_id = CASE WHEN $10 THEN $11 ELSE facility_id END,
             supervisor_id = CASE WHEN $12 THEN $13 ELSE supervisor_id END,
             token_version = token_version + CASE WHEN $14 THEN 1 ELSE 0 END
         WHERE id = $1",
    )
    .bind(id)
    .bind(first_name)
    .bind(last_name)
    .bind(phone.is_some())
    .bind(phone.flatten())
    .bind(employee_id.is_some())
    .bind(employee_id.flatten())
    .bind(req.role.map(Role::as_str))
    .bind(req.status.map(UserStatus::as_str))
    .bind(req.facility_id.is_some())
    .bind(req.facility_id.flatten())
    .bind(req.supervisor_id.is_some())
    .bind(req.supervisor_id.flatten())
    .bind(cut_tokens)
    .execute(&mut *tx)
    .await
    .on_constraints(users::UNIQUE_FIELDS)?;
    // Apart, and only when given: a statement that sets the email (a unique key) locks the row
    // against the foreign-key checks of other transactions' audit rows, even to the same value.
    if let Some(email) = &email {
        sqlx::query("UPDATE users SET email = $2 WHERE id = $1")
            .bind(id)
            .bind(email.as_str())
            .execute(&mut *tx)
            .await
            .on_constraints(users::UNIQUE_FIELDS)?;
    }
    if cut_tokens {
        refresh::revoke_all(&mut *tx, id).await?;
    }
    if let Some(supervisor) = req.supervisor_id
        && supervisor != current.supervisor_id
    {
        users::record_move(&mut tx, id, current.supervisor_id, supervisor).await?;
    }
    Activity::new("user.update")
        .by(&actor)
        .on("user", id)
        .from(&client)
        .details(serde_json::json!({ "fields": changed_fields(&req) }))
        .record(&mut *tx)
        .await?;
    if role_changed {
        Activity::new("user.role_change")
            .by(&actor)
            .on("user", id)
            .from(&client)
            .details(serde_json::json!({ "from": current.role, "to": req.role }))
            .record(&mut *tx)
            .await?;
    }
    if status_changed {
        let action = match req.status {
            Some(UserStatus::Active) => "user.activate",
            _ => "user.deactivate",
        };
        Activity::new(action)
            .by(&actor)
            .on("user", id)
            .from(&client)
            .details(serde_json::json!({ "from": current.status, "to": req.status }))
            .record(&mut *tx)
            .await?;
    }
    let user = users::find(&mut *tx, id).await?.ok_or(ApiError::NotFound)?;
    tx.commit().await?;
    state.auth_cache.invalidate(id);
    Ok(Json(user))
}

fn last_admin() -> ApiError {
    ApiError::conflict(
        "conflict",
        "this is the last active admin; make another user an admin first",
    )
}

fn changed_fields(req: &UpdateUser) -> Vec<&'static str> {
    [
        ("email", req.email.is_some()),
        ("first_name", req.first_name.is_some()),
        ("last_name", req.last_name.is_some()),
        ("phone", req.phone.is_some()),
        ("employee_id", req.employee_id.is_some()),
        ("role", req.role.is_some()),
        ("status", req.status.is_some()),
        ("facility_id", req.facility_id.is_some()),
        ("supervisor_id", req.supervisor_id.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect()
}

/// Deactivates a user (soft delete, admin). Their tokens stop working. Not oneself.
#[utoipa::path(delete, path = "/users/{id}", tag = "users", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "User id")),
    responses(
        (status = 204, description = "Deactivated"),
        (status = 400, description = "Malformed id", body = ErrorEnvelope),
        (status = 401, description = "Missing or invalid token", body = ErrorEnvelope),
        (status = 403, description = "Admins only", body = ErrorEnvelope),
        (status = 404, description = "No such user", body = ErrorEnvelope),
        (status = 409, description = "The last active admin (`conflict`)", body = ErrorEnvelope),
        (status = 422, description = "An admin cannot deactivate themself", body = ErrorEnvelope),
        (status = 429, description = "Rate limited", body = ErrorEnvelope),
    ))]
async fn deactivate_user(
    State(state): State<AppState>,
    admin: AuthUser,
    client: ClientInfo,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    admin.require(Role::Admin)?;
    if admin.id == id {
        return Err(ApiError::invalid(
            "id",
            "you cannot deactivate your own account",
        ));
    }
    let mut tx = state.db.begin().await?;
    users::lock_admin_roster(&mut tx).await?;
    let previous: Option<(String, String)> = sqlx::query_as(
        "UPDATE users u SET status = 'inactive', token_version = u.token_version + 1
         FROM (SELECT id, status FROM users WHERE id = $1 FOR NO KEY UPDATE) old
         WHERE u.id = old.id RETURNING old.status, u.role",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let (previous, role) = previous.ok_or(ApiError::NotFound)?;
    if role == Role::Admin.as_str()
        && previous == UserStatus::Active.as_str()
        && !users::another_active_admin(&mut tx, id).await?
    {
        return Err(last_admin());
    }
    refresh::revoke_all(&mut *tx, id).await?;
    Activity::new("user.deactivate")
        .by(&admin)
        .on("user", id)
        .from(&client)
        .details(serde_json::json!({ "from": previous }))
        .record(&mut *tx)
        .await?;
    tx.commit().await?;
    state.auth_cache.invalidate(id);
    Ok(StatusCode::NO_CONTENT)
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
    let mut tx = state.db.begin().await?;
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
            "conflict",
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
    tx.commit().await?;
    state.auth_cache.invalidate(id);
    Ok(Json(UserEnvelope { user }))
}

/// Approves a pending registration; the account can then log in.
#[utoipa::path(post, path = "/users/{id}/approve", tag = "users", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "User id")),
    responses(
        (status = 200, description = "Approved", body = UserEnvelope),
        (status = 400, description = "Malformed id", body = ErrorEnvelope),
        (status = 401, description = "Missing or invalid token", body = ErrorEnvelope),
        (status = 403, description = "Only an admin or the named supervisor may decide", body = ErrorEnvelope),
        (status = 404, description = "No such user, or not visible to the caller", body = ErrorEnvelope),
        (status = 409, description = "The account is not pending", body = ErrorEnvelope),
        (status = 429, description = "Rate limited", body = ErrorEnvelope),
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
        (status = 401, description = "Missing or invalid token", body = ErrorEnvelope),
        (status = 403, description = "Only an admin or the named supervisor may decide", body = ErrorEnvelope),
        (status = 404, description = "No such user, or not visible to the caller", body = ErrorEnvelope),
        (status = 409, description = "The account is not pending", body = ErrorEnvelope),
        (status = 429, description = "Rate limited", body = ErrorEnvelope),
    ))]
async fn reject_user(
    State(state): State<AppState>,
    actor: AuthUser,
    client: ClientInfo,
    Path(id): Path<Uuid>,
) -> Result<Json<UserEnvelope>, ApiError> {
    decide(&state, &actor, &client, id, false).await
}
