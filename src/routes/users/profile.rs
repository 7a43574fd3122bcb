//! One's own profile and password.

use axum::extract::State;
use axum::http::StatusCode;
use secrecy::SecretString;
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::audit::Activity;
use crate::auth::{AuthUser, ClientInfo, lockout, refresh};
use crate::db::users::{self, User};
use crate::domain::Password;
use crate::error::{ApiError, ErrorEnvelope, Invalid};
use crate::extract::Json;
use crate::routes::checks::{optional_text, required_text};
use crate::state::AppState;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(me, update_me))
        .routes(routes!(change_password))
}

/// The caller's profile with the facility → council → region hierarchy.
#[utoipa::path(get, path = "/users/me", tag = "users", security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller", body = User),
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
    #[schema(value_type = Option<String>, nullable, max_length = 32)]
    pub phone: Option<Option<String>>,
}

/// Updates one's own names and phone. Any other field (role, status, facility...) is refused.
#[utoipa::path(patch, path = "/users/me", tag = "users", security(("bearer" = [])), request_body = UpdateMe,
    responses(
        (status = 200, description = "The updated profile", body = User),
        (status = 400, description = "Malformed JSON", body = ErrorEnvelope),
        (status = 422, description = "Invalid or unknown fields", body = ErrorEnvelope),
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
        (status = 422, description = "Wrong current password or weak new one", body = ErrorEnvelope),
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
        let mut tx = state.db.begin().await?;
        Activity::new("user.password_change_failed")
            .by(&user)
            .on("user", user.id)
            .from(&client)
            .details(serde_json::json!({ "reason": "wrong_password" }))
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
