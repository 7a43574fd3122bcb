//! Passwords: one's own change, and an admin's reset of someone else's.

use axum::extract::State;
use axum::http::StatusCode;
use secrecy::SecretString;
use serde::Deserialize;
use sqlx::PgConnection;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::audit::Activity;
use crate::auth::{AdminUser, AuthUser, ClientInfo, lockout, refresh};
use crate::domain::{Password, Role};
use crate::error::{ApiError, ErrorEnvelope, Invalid};
use crate::extract::{Json, Path};
use crate::state::AppState;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(change_password))
        .routes(routes!(reset_password))
}

/// Stores a new password hash: every token issued before stops working, and a lockout ends.
/// With `version`, only while the user's token version is still that one (false otherwise):
/// a password set, or sessions ended, since it was read.
async fn store(
    tx: &mut PgConnection,
    id: Uuid,
    hash: String,
    version: Option<i32>,
) -> Result<bool, sqlx::Error> {
    let stored = sqlx::query(
        "UPDATE users SET password_hash = $2, token_version = token_version + 1,
                          failed_login_count = 0, locked_until = NULL
         WHERE id = $1 AND token_version = coalesce($3, token_version)",
    )
    .bind(id)
    .bind(hash)
    .bind(version)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if stored {
        refresh::revoke_all(&mut *tx, id).await?;
    }
    Ok(stored)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePassword {
    #[schema(min_length = 1, max_length = 1024)]
    pub current_password: String,
    /// 10 to 128 characters, not the email, not the current password.
    #[schema(min_length = 10, max_length = 128)]
    pub new_password: String,
}

/// Changes one's password. Every token issued before stops working.
#[utoipa::path(post, path = "/users/me/password", tag = "users", security(("bearer" = [])), request_body = ChangePassword,
    responses(
        (status = 204, description = "Password changed; log in again"),
        (status = 400, description = "Malformed JSON", body = ErrorEnvelope),
        (status = 401, description = "Missing or invalid token, or the account's sessions were ended while the password was checked (`invalid_token`: a password reset or change, a role change or a deactivation meanwhile); nothing was stored", body = ErrorEnvelope),
        (status = 422, description = "Wrong current password, or a new one that is weak or the same as the current one", body = ErrorEnvelope),
        (status = 423, description = "Locked after too many wrong passwords, here or at login (`account_locked`); see Retry-After", body = ErrorEnvelope),
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
    // The same password again would end every session and change nothing else.
    if req.new_password == req.current_password {
        invalid.add("new_password", "must differ from the current password");
    }
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
    // The session the request came with, still current: not ended (a deactivation, a role
    // change, a reset) since its token was checked.
    let hash: String = sqlx::query_scalar(
        "SELECT password_hash FROM users WHERE id = $1 AND token_version = $2 AND status = 'active'",
    )
    .bind(user.id)
    .bind(user.token_version)
    .fetch_optional(&state.db)
    .await?
    .ok_or(ApiError::InvalidToken)?;
    // Guesses here count towards the same lock as guesses at login.
    let attempt = match lockout::attempt(&state.db, Some(user.id), &state.config.auth).await {
        Ok(attempt) => {
            attempt.ok_or_else(|| anyhow::anyhow!("a counted check names its account"))?
        }
        Err(locked @ ApiError::AccountLocked { .. }) => {
            Activity::new("user.password_change_failed")
                .by(&user)
                .on("user", user.id)
                .from(&client)
                .details(serde_json::json!({ "reason": "account_locked" }))
                .record_or_warn(&state.db)
                .await;
            return Err(locked);
        }
        Err(other) => return Err(other),
    };
    let current_ok = state
        .hasher
        .verify(SecretString::from(req.current_password), Some(hash))
        .await?;
    if !current_ok {
        let failure = attempt.failed();
        let mut rows = vec![
            Activity::new("user.password_change_failed")
                .by(&user)
                .on("user", user.id)
                .from(&client)
                .details(serde_json::json!({ "reason": "wrong_password" })),
        ];
        if let Some(lock) = lockout::lock_activity(failure, &user.email, &state.config.auth) {
            rows.push(lock.by(&user).from(&client));
        }
        lockout::record_to_the_end(&state, rows).await?;
        return Err(ApiError::invalid("current_password", "is incorrect"));
    }
    let new_hash = state.hasher.hash(new_password.into_secret()).await?;
    let mut tx = crate::db::begin(&state.db).await?;
    // Not over a password an admin set while this one was checked, nor for a session ended
    // meanwhile (a role change, a deactivation): either moved the token version.
    if !store(&mut tx, user.id, new_hash, Some(user.token_version)).await? {
        drop(tx);
        attempt.succeeded().await?;
        return Err(ApiError::InvalidToken);
    }
    Activity::new("user.password_change")
        .by(&user)
        .on("user", user.id)
        .from(&client)
        .record(&mut *tx)
        .await?;
    state.commit_for_user(tx, user.id).await?;
    attempt.cleared();
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetPassword {
    /// The password to hand over to the user: 10 to 128 characters, not their email.
    #[schema(min_length = 10, max_length = 128)]
    pub new_password: String,
}

/// Sets another user's password (admin), for someone who forgot theirs.
///
/// It also lifts a lockout, and every token the user held stops working. Their role and status are
/// unchanged. Not for an admin's password (see `create-admin` in the README).
#[utoipa::path(post, path = "/users/{id}/password", tag = "users", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "User id")), request_body = ResetPassword,
    responses(
        (status = 204, description = "Password set; the user logs in with it"),
        (status = 400, description = "Malformed JSON or id", body = ErrorEnvelope),
        (status = 403, description = "Admins only, and not for an admin's password (one's own: `POST /users/me/password`; another admin's: the `create-admin` command)", body = ErrorEnvelope),
        (status = 404, description = "No such user", body = ErrorEnvelope),
        (status = 422, description = "A weak password", body = ErrorEnvelope),
    ))]
async fn reset_password(
    State(state): State<AppState>,
    admin: AdminUser,
    client: ClientInfo,
    Path(id): Path<Uuid>,
    Json(req): Json<ResetPassword>,
) -> Result<StatusCode, ApiError> {
    let target = sqlx::query_as("SELECT email, role FROM users WHERE id = $1")
        .bind(id)
        .fetch_optional(&state.db)
        .await?;
    let password = resettable(target, &req.new_password)?;
    let hash = state.hasher.hash(password.into_secret()).await?;
    let mut tx = crate::db::begin(&state.db).await?;
    // Checked again under the row's lock: the user may have been made an admin, or given this
    // password as their email, while the hash was made. No key changes: a key-share lock (the
    // user's own logout writing its audit row) need not wait, and cannot deadlock with it.
    let target = sqlx::query_as("SELECT email, role FROM users WHERE id = $1 FOR NO KEY UPDATE")
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
    resettable(target, &req.new_password)?;
    store(&mut tx, id, hash, None).await?;
    Activity::new("user.password_reset")
        .by(&admin)
        .on("user", id)
        .from(&client)
        .record(&mut *tx)
        .await?;
    state.commit_for_user(tx, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The password an admin may set for a user (email and role), if they may set one at all.
fn resettable(target: Option<(String, String)>, new_password: &str) -> Result<Password, ApiError> {
    let (email, role) = target.ok_or(ApiError::NotFound)?;
    // An admin who could set another admin's password could act as them. An admin's own
    // password is changed with the current one, or reset from the command line (create-admin),
    // which needs the server.
    if role == Role::Admin.as_str() {
        return Err(ApiError::Forbidden);
    }
    Password::parse(new_password, &email)
        .map_err(|reason| ApiError::invalid("new_password", reason))
}
