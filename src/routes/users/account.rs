//! One user's account: reading it, changing it, deactivating it.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::audit::{self, Activity};
use crate::auth::{AdminUser, AuthUser, ClientInfo, refresh};
use crate::db::users::{self, User};
use crate::domain::{Email, Role, UserStatus};
use crate::error::{ApiError, ErrorCode, ErrorEnvelope, Invalid, ResultExt};
use crate::extract::{Json, Path};
use crate::routes::checks::{
    check_facility, check_supervisor, lock_facility, optional_text, required_text,
};
use crate::state::AppState;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_user, update_user, deactivate_user))
}

/// One user: themself, anyone above them in the tree, or an admin; 404 for anyone else.
#[utoipa::path(get, path = "/users/{id}", tag = "users", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "User id")),
    responses(
        (status = 200, description = "The user", body = User),
        (status = 400, description = "Malformed id", body = ErrorEnvelope),
        (status = 404, description = "No such user, or not visible to the caller", body = ErrorEnvelope),
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
    /// At most 254 bytes in UTF-8, the limit mail delivery sets: fewer characters when some are
    /// not ASCII.
    #[schema(
        nullable = false,
        min_length = 3,
        max_length = 254,
        pattern = r"^[^@\s]+@[^@\s]+$"
    )]
    #[serde(default, deserialize_with = "crate::extract::not_null")]
    pub email: Option<String>,
    #[schema(nullable = false, min_length = 1, max_length = 100, pattern = r"\S")]
    #[serde(default, deserialize_with = "crate::extract::not_null")]
    pub first_name: Option<String>,
    #[schema(nullable = false, min_length = 1, max_length = 100, pattern = r"\S")]
    #[serde(default, deserialize_with = "crate::extract::not_null")]
    pub last_name: Option<String>,
    #[serde(default, deserialize_with = "crate::extract::double_option")]
    #[schema(value_type = Option<String>, nullable, max_length = 32)]
    pub phone: Option<Option<String>>,
    #[serde(default, deserialize_with = "crate::extract::double_option")]
    #[schema(value_type = Option<String>, nullable, max_length = 64)]
    pub employee_id: Option<Option<String>>,
    #[schema(nullable = false)]
    #[serde(default, deserialize_with = "crate::extract::not_null")]
    pub role: Option<Role>,
    #[schema(nullable = false)]
    #[serde(default, deserialize_with = "crate::extract::not_null")]
    pub status: Option<UserStatus>,
    /// Supervisors may change only this field, for users in their tree.
    #[serde(default, deserialize_with = "crate::extract::double_option")]
    #[schema(value_type = Option<Uuid>, nullable)]
    pub facility_id: Option<Option<Uuid>>,
    /// A supervisor, backstopper or admin whose role is no lower than the user's; never one that
    /// would make a cycle.
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
    /// The whole row, for the audit trail's account of what changed.
    state: serde_json::Value,
}

/// Updates a user: admins any field; supervisors only the facility of users in their tree.
#[utoipa::path(patch, path = "/users/{id}", tag = "users", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "User id")), request_body = UpdateUser,
    responses(
        (status = 200, description = "The updated user", body = User),
        (status = 400, description = "Malformed JSON or id", body = ErrorEnvelope),
        (status = 403, description = "The caller may not change these fields", body = ErrorEnvelope),
        (status = 404, description = "No such user, or not visible to the caller", body = ErrorEnvelope),
        (status = 409, description = "Email or employee id taken (`duplicate`), a field role for someone who still supervises others, a role below one of the users they supervise, or the last active admin's role or status (`conflict`; only when the caller has just lost the admin role or been deactivated, while its token's state is still cached, up to 30 s)", body = ErrorEnvelope),
        (status = 422, description = "Invalid fields, a supervisor cycle, a supervisor whose role is below the user's, changing one's own role, or deactivating oneself", body = ErrorEnvelope),
    ))]
async fn update_user(
    State(state): State<AppState>,
    actor: AuthUser,
    client: ClientInfo,
    Path(id): Path<Uuid>,
    body: Result<Json<UpdateUser>, ApiError>,
) -> Result<Json<User>, ApiError> {
    // Who may edit the user is settled before the body is read: one who may not learns nothing
    // from how it was refused.
    if !users::can_see(&state.db, &actor, id).await? || (actor.role.is_field()) {
        return Err(if actor.id == id {
            ApiError::Forbidden
        } else {
            ApiError::NotFound
        });
    }
    let Json(req) = body?;
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

    let mut tx = crate::db::begin(&state.db).await?;
    // Supervision and role changes are serialised so that two concurrent edits cannot form a
    // cycle, or a supervisor ranked below their report, that neither would see alone. A supervisor's edit holds the tree still (shared) until it
    // commits, so that the user cannot leave their team meanwhile (checked again below).
    if req.supervisor_id.is_some() || req.role.is_some() {
        users::lock_tree(&mut tx, false).await?;
    } else if !actor.is_admin() {
        users::lock_tree(&mut tx, true).await?;
    }
    let may_remove_admin = req.role.is_some_and(|r| r != Role::Admin)
        || req.status.is_some_and(|s| s != UserStatus::Active);
    if may_remove_admin {
        users::lock_admin_roster(&mut tx).await?;
    }
    // Share-locked before the user's row (as a facility's own writers lock it before their
    // audit row checks the user), and checked once that row is held.
    lock_facility(&mut tx, req.facility_id.flatten()).await?;
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
        "SELECT role, status, supervisor_id, to_jsonb(u) - 'password_hash' AS state
         FROM users u WHERE id = $1 FOR UPDATE"
    } else {
        "SELECT role, status, supervisor_id, to_jsonb(u) - 'password_hash' AS state
         FROM users u WHERE id = $1 FOR NO KEY UPDATE"
    })
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(ApiError::NotFound)?;
    // Still in the supervisor's team now that the tree and the row are held (a move that
    // committed since the first check took the user away).
    if !actor.is_admin() && !users::is_above(&mut *tx, actor.id, id).await? {
        return Err(ApiError::NotFound);
    }
    let current_role: Role = current.role.parse().map_err(anyhow::Error::msg)?;
    let role = req.role.unwrap_or(current_role);
    let supervisor = req.supervisor_id.unwrap_or(current.supervisor_id);
    // A supervisor newly named, or kept under a new role, must rank no lower; one sent back
    // unchanged with the role is checked as before.
    let rank_changed = supervisor != current.supervisor_id || role != current_role;
    check_facility(&mut *tx, req.facility_id.flatten(), Some(id), &mut invalid).await?;
    check_supervisor(
        &mut *tx,
        if req.supervisor_id.is_some() || rank_changed {
            supervisor
        } else {
            None
        },
        rank_changed.then_some(role),
        current.supervisor_id,
        &mut invalid,
    )
    .await?;
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
    // Someone's supervisor must stay able to supervise them, and rank no lower (the tree is
    // held above, and each new supervisor is share-locked while it is named).
    if let Some(role) = req.role
        && role < current_role
    {
        let reports: Vec<(String, i64)> = sqlx::query_as(
            "SELECT role, count(*) FROM users WHERE supervisor_id = $1 GROUP BY role",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        let outranked = |theirs: &str| theirs.parse::<Role>().map_or(true, |r| r > role);
        let reports: i64 = if role.can_supervise() {
            reports
                .iter()
                .filter(|(r, _)| outranked(r))
                .map(|(_, n)| n)
                .sum()
        } else {
            reports.iter().map(|(_, n)| n).sum()
        };
        if reports > 0 {
            return Err(ApiError::conflict(
                ErrorCode::Conflict,
                if role.can_supervise() {
                    format!(
                        "{reports} user(s) this user supervises hold a role above {role}; give \
                         them another supervisor before making this user a {role}"
                    )
                } else {
                    format!(
                        "{reports} user(s) name this user as their supervisor; give them another \
                         supervisor before making this user a {role}"
                    )
                },
            ));
        }
    }

    let role_changed = req.role.is_some_and(|r| r.as_str() != current.role);
    let status_changed = req.status.is_some_and(|s| s.as_str() != current.status);
    let cut_tokens = role_changed || (status_changed && req.status != Some(UserStatus::Active));
    // Into or out of admin, the user's whole scope moves: their devices' next pulls start over.
    let was_admin = current.role == Role::Admin.as_str();
    let rescoped = req.role.is_some_and(|r| (r == Role::Admin) != was_admin);
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
             token_version = token_version + CASE WHEN $14 THEN 1 ELSE 0 END,
             scope_reset_xid = CASE WHEN $15 THEN pg_current_xact_id() ELSE scope_reset_xid END
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
    .bind(rescoped)
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
    let after: serde_json::Value =
        sqlx::query_scalar("SELECT to_jsonb(u) - 'password_hash' FROM users u WHERE id = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
    let details = audit::edit(&current.state, &after, &changed_fields(&req));
    if audit::changes_nothing(&details) {
        // The form sent back as it was: nothing is written and nothing recorded.
        tx.rollback().await?;
        return users::find(&state.db, id)
            .await?
            .map(Json)
            .ok_or(ApiError::NotFound);
    }
    Activity::new("user.update")
        .by(&actor)
        .on("user", id)
        .from(&client)
        .details(details)
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
    state.commit_for_user(tx, id).await?;
    Ok(Json(user))
}

fn last_admin() -> ApiError {
    ApiError::conflict(
        ErrorCode::Conflict,
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
        (status = 403, description = "Admins only", body = ErrorEnvelope),
        (status = 404, description = "No such user", body = ErrorEnvelope),
        (status = 409, description = "The last active admin (`conflict`): only when the caller has just lost the admin role or been deactivated, while its token's state is still cached (up to 30 s)", body = ErrorEnvelope),
        (status = 422, description = "An admin cannot deactivate themself", body = ErrorEnvelope),
    ))]
async fn deactivate_user(
    State(state): State<AppState>,
    admin: AdminUser,
    client: ClientInfo,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    if admin.id == id {
        return Err(ApiError::invalid(
            "id",
            "you cannot deactivate your own account",
        ));
    }
    let mut tx = crate::db::begin(&state.db).await?;
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
    // Deactivated already (a request sent again): nothing is written, no session is ended.
    if previous == UserStatus::Inactive.as_str() {
        tx.rollback().await?;
        return Ok(StatusCode::NO_CONTENT);
    }
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
    state.commit_for_user(tx, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
