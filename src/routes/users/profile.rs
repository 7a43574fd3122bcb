//! One's own profile.

use axum::extract::State;
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::audit::{self, Activity};
use crate::auth::{AuthUser, ClientInfo};
use crate::db::users::{self, User};
use crate::error::{ApiError, ErrorEnvelope, Invalid};
use crate::extract::Json;
use crate::routes::checks::{optional_text, required_text};
use crate::state::AppState;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(me, update_me))
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
    #[schema(nullable = false, min_length = 1, max_length = 100, pattern = r"\S")]
    #[serde(default, deserialize_with = "crate::extract::not_null")]
    pub first_name: Option<String>,
    #[schema(nullable = false, min_length = 1, max_length = 100, pattern = r"\S")]
    #[serde(default, deserialize_with = "crate::extract::not_null")]
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
    let fields: Vec<&str> = [
        ("first_name", first_name.is_some()),
        ("last_name", last_name.is_some()),
        ("phone", phone.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, sent)| sent.then_some(name))
    .collect();
    let mut tx = crate::db::begin(&state.db).await?;
    let before: serde_json::Value = sqlx::query_scalar(
        "SELECT to_jsonb(u) - 'password_hash' FROM users u WHERE id = $1 FOR NO KEY UPDATE",
    )
    .bind(user.id)
    .fetch_one(&mut *tx)
    .await?;
    let after: serde_json::Value = sqlx::query_scalar(
        "UPDATE users SET first_name = coalesce($2, first_name), last_name = coalesce($3, last_name),
                          phone = CASE WHEN $4 THEN $5 ELSE phone END
         WHERE id = $1
         RETURNING to_jsonb(users) - 'password_hash'",
    )
    .bind(user.id)
    .bind(first_name)
    .bind(last_name)
    .bind(phone.is_some())
    .bind(phone.flatten())
    .fetch_one(&mut *tx)
    .await?;
    let mut details = audit::edit(&before, &after, &fields);
    if audit::changes_nothing(&details) {
        tx.rollback().await?;
        return users::find(&state.db, user.id)
            .await?
            .map(Json)
            .ok_or(ApiError::NotFound);
    }
    details["self"] = true.into();
    Activity::new("user.update")
        .by(&user)
        .on("user", user.id)
        .from(&client)
        .details(details)
        .record(&mut *tx)
        .await?;
    let updated = users::find(&mut *tx, user.id)
        .await?
        .ok_or(ApiError::NotFound)?;
    tx.commit().await?;
    Ok(Json(updated))
}
