//! Registration, login, token refresh and logout.

use axum::extract::State;
use axum::http::StatusCode;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::audit::Activity;
use crate::auth::lockout;
use crate::auth::refresh::{self, Rotation};
use crate::auth::{AuthUser, ClientInfo};
use crate::config::Registration;
use crate::db::users::{self, NewUser, User};
use crate::domain::{Email, Role, UserStatus};
use crate::error::{ApiError, ErrorCode, ErrorEnvelope, FieldErrors, Invalid};
use crate::extract::Json;
use crate::routes::checks::{NewIdentity, check_facility, check_supervisor, lock_facility};
use crate::state::AppState;

/// Routes that need no token (rate limited per client address).
pub fn public_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(login))
        .routes(routes!(refresh_tokens))
}

/// Routes under `/auth` that need a token.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(logout))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// At most 254 bytes in UTF-8, the limit mail delivery sets: fewer characters when some are
    /// not ASCII.
    #[schema(example = "amina.uwase@example.org")]
    #[schema(min_length = 3, max_length = 254, pattern = r"^[^@\s]+@[^@\s]+$")]
    pub email: String,
    /// 10 to 128 characters, not the email.
    #[schema(example = "correct horse battery staple")]
    #[schema(min_length = 10, max_length = 128)]
    pub password: String,
    #[schema(example = "Amina")]
    #[schema(min_length = 1, max_length = 100, pattern = r"\S")]
    pub first_name: String,
    #[schema(example = "Uwase")]
    #[schema(min_length = 1, max_length = 100, pattern = r"\S")]
    pub last_name: String,
    #[schema(max_length = 32)]
    pub phone: Option<String>,
    #[schema(max_length = 64)]
    pub employee_id: Option<String>,
    /// A field role only; default `data_clerk`.
    #[schema(schema_with = field_role)]
    pub role: Option<Role>,
    pub facility_id: Uuid,
    /// A supervisor, backstopper or admin who will approve the account.
    pub supervisor_id: Option<Uuid>,
}

/// The roles one may register for, the field roles: [`Role`] less those above them.
fn field_role() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
        .enum_values(Some(
            Role::ALL
                .into_iter()
                .filter(|r| r.is_field())
                .map(Role::as_str)
                .map(Some)
                .chain([None]),
        ))
        .description(Some("A field role only; default `data_clerk`."))
        .build()
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserEnvelope {
    pub user: User,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    #[schema(example = "amina.uwase@example.org")]
    pub email: String,
    #[schema(example = "correct horse battery staple")]
    pub password: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenResponse {
    pub user: User,
    /// JWT (HS256) for `Authorization: Bearer`.
    pub access_token: String,
    /// Opaque; single use — each refresh returns a new one.
    pub refresh_token: String,
    #[schema(example = "Bearer")]
    pub token_type: String,
    /// Seconds until the access token expires.
    #[schema(example = 86400)]
    pub expires_in: u64,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

/// [`check_supervisor`] for a registration, with one reason for every supervisor it refuses:
/// anyone may register, and whether a known id is a user, may supervise or is active is not
/// theirs to learn.
async fn registered_supervisor(
    db: impl sqlx::PgExecutor<'_>,
    supervisor_id: Option<Uuid>,
    invalid: &mut Invalid,
) -> Result<(), ApiError> {
    let mut refused = Invalid::default();
    // Registration is for field roles, which every role that supervises outranks.
    check_supervisor(db, supervisor_id, None, None, &mut refused).await?;
    if !refused.is_empty() {
        invalid.add(
            "supervisor_id",
            "does not name an active supervisor, backstopper or admin",
        );
    }
    Ok(())
}

/// Self-registration: the account waits in `pending` until approved.
#[utoipa::path(post, path = "/auth/register", tag = "auth", request_body = RegisterRequest,
    responses(
        (status = 201, description = "Account created, pending approval", body = UserEnvelope),
        (status = 400, description = "Malformed JSON", body = ErrorEnvelope),
        (status = 403, description = "Registration is closed (`forbidden`)", body = ErrorEnvelope),
        (status = 409, description = "Email or employee id already registered (`duplicate`)", body = ErrorEnvelope),
        (status = 422, description = "Invalid fields", body = ErrorEnvelope),
    ))]
async fn register(
    State(state): State<AppState>,
    client: ClientInfo,
    Json(req): Json<RegisterRequest>,
) -> Result<(StatusCode, Json<UserEnvelope>), ApiError> {
    if state.config.auth.registration == Registration::Closed {
        return Err(ApiError::refused(
            "self-registration is closed; ask an administrator for an account",
        ));
    }
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
    let role = req.role.unwrap_or(Role::DataClerk);
    if !role.is_field() {
        invalid.add("role", "self-registration is for field roles only");
    }
    check_facility(&state.db, Some(req.facility_id), None, &mut invalid).await?;
    registered_supervisor(&state.db, req.supervisor_id, &mut invalid).await?;
    invalid.finish()?;
    let (Some(email), Some(password)) = (email, password) else {
        unreachable!("checked above");
    };

    let hash = state.hasher.hash(password.into_secret()).await?;
    let mut tx = crate::db::begin(&state.db).await?;
    // Again under share locks: the supervisor cannot be made a field role, nor the facility
    // deactivated, before this commits.
    let mut invalid = Invalid::default();
    lock_facility(&mut tx, Some(req.facility_id)).await?;
    check_facility(&mut *tx, Some(req.facility_id), None, &mut invalid).await?;
    registered_supervisor(&mut *tx, req.supervisor_id, &mut invalid).await?;
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
            role,
            status: UserStatus::Pending,
            facility_id: Some(req.facility_id),
            supervisor_id: req.supervisor_id,
        },
    )
    .await?;
    Activity::new("user.register")
        .by_id(id, email.as_str())
        .on("user", id)
        .from(&client)
        .details(serde_json::json!({ "role": role, "supervisor_id": req.supervisor_id }))
        .record(&mut *tx)
        .await?;
    let user = users::find(&mut *tx, id).await?.ok_or(ApiError::NotFound)?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(UserEnvelope { user })))
}

#[derive(sqlx::FromRow)]
struct LoginRow {
    id: Uuid,
    email: String,
    password_hash: String,
    status: String,
    role: String,
    token_version: i32,
}

/// Logs in with email and password.
///
/// Unknown email and wrong password answer alike, in about the same time; after repeated failures
/// the account is locked for a while.
#[utoipa::path(post, path = "/auth/login", tag = "auth", request_body = LoginRequest,
    responses(
        (status = 200, description = "Logged in", body = TokenResponse),
        (status = 400, description = "Malformed JSON", body = ErrorEnvelope),
        (status = 401, description = "Wrong email or password (`invalid_credentials`)", body = ErrorEnvelope),
        (status = 403, description = "Account pending approval (`account_pending`) or deactivated or suspended (`forbidden`); `details.status` is the account's status: `pending`, `inactive` or `suspended`", body = ErrorEnvelope),
        (status = 422, description = "Invalid fields", body = ErrorEnvelope),
        (status = 423, description = "Locked after too many failures (`account_locked`); see Retry-After", body = ErrorEnvelope),
    ))]
async fn login(
    State(state): State<AppState>,
    client: ClientInfo,
    Json(req): Json<LoginRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    let email = req.email.trim().to_lowercase();
    // No stored email is longer (RFC 5321), and a refusal records what was sent.
    if email.is_empty()
        || email.len() > Email::MAX_BYTES
        || email.contains('\0')
        || req.password.is_empty()
        || req.password.len() > 1024
    {
        return Err(ApiError::InvalidCredentials);
    }
    let row: Option<LoginRow> = sqlx::query_as(
        "SELECT id, email, password_hash, status, role, token_version FROM users WHERE email = $1",
    )
    .bind(&email)
    .fetch_optional(&state.db)
    .await?;
    // Counted before the hash is checked (423 while locked); an unknown email is counted on no
    // row and hashed all the same, so that it takes as long.
    let attempt =
        match lockout::attempt(&state.db, row.as_ref().map(|r| r.id), &state.config.auth).await {
            Ok(attempt) => attempt,
            // Guesses while locked are checked against nothing, but they are the part of an
            // attack most worth seeing.
            Err(locked @ ApiError::AccountLocked { .. }) => {
                let user_id = row.as_ref().map(|r| r.id);
                record_refusal(&state, &client, &email, user_id, "account_locked").await;
                return Err(locked);
            }
            Err(other) => return Err(other),
        };
    let password = SecretString::from(req.password);
    let verified = state
        .hasher
        .verify(
            password.clone(),
            row.as_ref().map(|r| r.password_hash.clone()),
        )
        .await?;

    let (user, attempt) = match (row.filter(|_| verified), attempt) {
        (Some(user), Some(attempt)) => (user, attempt),
        (_, attempt) => {
            let failure = attempt.map(lockout::Attempt::failed);
            record_failure(&state, &client, &email, failure).await?;
            return Err(ApiError::InvalidCredentials);
        }
    };
    if user.status != "active" {
        attempt.succeeded().await?;
        let reason = if user.status == "pending" {
            "account_pending"
        } else {
            "account_inactive"
        };
        record_refusal(&state, &client, &email, Some(user.id), reason).await;
        let message = match user.status.as_str() {
            "pending" => "this account is waiting for approval",
            "suspended" => "this account is suspended",
            _ => "this account is deactivated",
        };
        return Err(ApiError::ForbiddenWith {
            code: if user.status == "pending" {
                ErrorCode::AccountPending
            } else {
                ErrorCode::Forbidden
            },
            message: message.into(),
            details: Some(FieldErrors::from([(
                "status".to_string(),
                vec![user.status.clone()],
            )])),
        });
    }

    // A hash made with older parameters is made again now that the password is known (once per
    // account); it is not a password change, so sessions stay.
    let upgraded = if crate::auth::password::is_current(&user.password_hash) {
        None
    } else {
        Some(state.hasher.hash(password).await?)
    };
    let mut tx = crate::db::begin(&state.db).await?;
    // Only if the account is still as it was read: a password change, deactivation or role
    // change committed while the password was being checked (each moves the token version)
    // would otherwise be undone (an upgraded hash of the old password written over the new one)
    // or outlived (a refresh token its revocation did not see). Locked from here, such a change
    // waits for this login and then revokes its token. Another login's upgrade of the same hash
    // is no change: the first one written stays.
    let unchanged = sqlx::query(
        "UPDATE users SET failed_login_count = 0, locked_until = NULL, last_login_at = now(),
                password_hash = CASE WHEN password_hash = $3 THEN coalesce($2, password_hash)
                                     ELSE password_hash END
         WHERE id = $1 AND token_version = $4 AND status = 'active'",
    )
    .bind(user.id)
    .bind(upgraded)
    .bind(&user.password_hash)
    .bind(user.token_version)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if !unchanged {
        drop(tx);
        attempt.succeeded().await?;
        return Err(ApiError::InvalidCredentials);
    }
    let refresh_token = refresh::issue(
        &mut tx,
        user.id,
        None,
        state.config.auth.refresh_ttl,
        &client,
    )
    .await?;
    Activity::new("auth.login")
        .by_id(user.id, &user.email)
        .on("user", user.id)
        .from(&client)
        .record(&mut *tx)
        .await?;
    let profile = users::find(&mut *tx, user.id)
        .await?
        .ok_or(ApiError::NotFound)?;
    tx.commit().await?;
    attempt.cleared();

    let role: Role = user.role.parse().map_err(anyhow::Error::msg)?;
    Ok(Json(token_response(
        &state,
        profile,
        role,
        user.token_version,
        refresh_token,
    )?))
}

/// Records a login refused before or after its password was checked: the account locked, or
/// (with the right password) not active.
async fn record_refusal(
    state: &AppState,
    client: &ClientInfo,
    email: &str,
    user_id: Option<Uuid>,
    reason: &str,
) {
    login_failed(client, email, user_id, reason)
        .record_or_warn(&state.db)
        .await;
}

/// The audit row of a login that did not succeed, and why.
/// The email sent is kept when it names an account; any other is kept masked, and only when it
/// looks like an address with a domain (`a***@example.org`, enough to see a typo in the domain or
/// a run of guesses at one): anything else typed there may be a password in the wrong box
/// (`Summer@2026` reads as an address to the rules), which the trail, read by every admin, must
/// not hold.
fn login_failed(client: &ClientInfo, email: &str, user_id: Option<Uuid>, reason: &str) -> Activity {
    let email = match user_id {
        Some(_) => Some(email.to_string()),
        None => masked_address(email),
    };
    let activity = Activity::new("auth.login_failed")
        .from(client)
        .details(serde_json::json!({ "email": email, "reason": reason }));
    match user_id {
        Some(id) => activity.on("user", id),
        None => activity,
    }
}

/// An unknown email as the trail keeps it: its first character and its domain, when it is an
/// address whose domain has a dot.
fn masked_address(email: &str) -> Option<String> {
    Email::parse(email).ok()?;
    let (local, domain) = email.rsplit_once('@')?;
    let first = local.chars().next()?;
    domain.contains('.').then(|| format!("{first}***@{domain}"))
}

/// Records a failed login (the account's count was kept when the attempt began), and the
/// lockout when this attempt set it: to the end, as the lock is already set.
async fn record_failure(
    state: &AppState,
    client: &ClientInfo,
    email: &str,
    failure: Option<lockout::Failure>,
) -> Result<(), ApiError> {
    let reason = if failure.is_some() {
        "wrong_password"
    } else {
        "unknown_email"
    };
    let mut rows = vec![login_failed(
        client,
        email,
        failure.map(|f| f.user_id),
        reason,
    )];
    if let Some(lock) = failure.and_then(|f| lockout::lock_activity(f, email, &state.config.auth)) {
        rows.push(lock.from(client));
    }
    lockout::record_to_the_end(state, rows).await
}

fn token_response(
    state: &AppState,
    user: User,
    role: Role,
    token_version: i32,
    refresh_token: String,
) -> Result<TokenResponse, ApiError> {
    Ok(TokenResponse {
        access_token: state.jwt.issue(user.id, role, token_version)?,
        user,
        refresh_token,
        token_type: "Bearer".into(),
        expires_in: state.jwt.ttl.as_secs(),
    })
}

/// Exchanges a refresh token for a new pair.
///
/// The old one stops working; presenting it again revokes every refresh token descended from the
/// same login, and ends the user's access tokens (other logins refresh theirs).
#[utoipa::path(post, path = "/auth/refresh", tag = "auth", request_body = RefreshRequest,
    responses(
        (status = 200, description = "A new token pair", body = TokenResponse),
        (status = 400, description = "Malformed JSON", body = ErrorEnvelope),
        (status = 401, description = "Unknown, rotated, revoked or expired refresh token", body = ErrorEnvelope),
        (status = 422, description = "Invalid fields", body = ErrorEnvelope),
    ))]
async fn refresh_tokens(
    State(state): State<AppState>,
    client: ClientInfo,
    Json(req): Json<RefreshRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    let token = req.refresh_token.trim();
    let mut tx = crate::db::begin(&state.db).await?;
    // The account is share-locked before the token. A password change, deactivation or role
    // change locks the account, then revokes its tokens: either it waits for this rotation and
    // revokes the new token too, or this waits for it and finds the token revoked.
    let Some((owner, family)) = refresh::owner(&mut tx, token).await? else {
        return Err(ApiError::InvalidToken);
    };
    let account: Option<(String, String, i32)> =
        sqlx::query_as("SELECT status, role, token_version FROM users WHERE id = $1 FOR SHARE")
            .bind(owner)
            .fetch_optional(&mut *tx)
            .await?;
    let (user_id, family_id) = match refresh::rotate(&mut tx, token, family).await? {
        Rotation::Rotated { user_id, family_id } => (user_id, family_id),
        Rotation::Reused {
            user_id,
            family_id,
            stolen,
        } => {
            Activity::new("auth.refresh_reuse")
                .on("user", user_id)
                .from(&client)
                .record(&mut *tx)
                .await?;
            tx.commit().await?;
            if stolen {
                end_access_tokens(&state, user_id, family_id).await?;
            }
            return Err(ApiError::InvalidToken);
        }
    };
    // A deactivated account's refresh tokens are revoked, but check anyway.
    let Some((_, role, token_version)) = account.filter(|(status, _, _)| status == "active") else {
        return Err(ApiError::InvalidToken);
    };
    let refresh_token = refresh::issue(
        &mut tx,
        user_id,
        Some(family_id),
        state.config.auth.refresh_ttl,
        &client,
    )
    .await?;
    let user = users::find(&mut *tx, user_id)
        .await?
        .ok_or(ApiError::NotFound)?;
    tx.commit().await?;
    let role: Role = role.parse().map_err(anyhow::Error::msg)?;
    Ok(Json(token_response(
        &state,
        user,
        role,
        token_version,
        refresh_token,
    )?))
}

/// Ends the caller's session: its refresh token and every one rotated from the same login.
#[utoipa::path(post, path = "/auth/logout", tag = "auth", request_body = RefreshRequest,
    security(("bearer" = [])),
    responses(
        (status = 204, description = "The refresh token and its chain are revoked"),
        (status = 400, description = "Malformed JSON", body = ErrorEnvelope),
        (status = 401, description = "Missing or invalid access token", body = ErrorEnvelope),
        (status = 422, description = "Invalid fields", body = ErrorEnvelope),
    ))]
async fn logout(
    State(state): State<AppState>,
    user: AuthUser,
    client: ClientInfo,
    Json(req): Json<RefreshRequest>,
) -> Result<StatusCode, ApiError> {
    // The revocation and its audit rows commit together.
    let mut tx = crate::db::begin(&state.db).await?;
    let revoked = refresh::revoke(&mut tx, user.id, req.refresh_token.trim()).await?;
    let activity = |action| {
        Activity::new(action)
            .by(&user)
            .on("user", user.id)
            .from(&client)
    };
    if revoked.stolen.is_some() {
        activity("auth.refresh_reuse").record(&mut *tx).await?;
    }
    if revoked.ended {
        activity("auth.logout").record(&mut *tx).await?;
    }
    tx.commit().await?;
    if let Some(family_id) = revoked.stolen {
        end_access_tokens(&state, user.id, family_id).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// After a rotated refresh token came back: whoever holds, or held, the chain's newer tokens
/// may hold an access token from it too, so every access token of the user stops working (once
/// per stolen chain). Devices with another, unrevoked chain refresh and carry on. Done to the end
/// ([`AppState::to_the_end`]), so that a client hanging up cannot cancel it; should it fail, the chain's next
/// reuse tries again, and a background job does within a minute or two.
async fn end_access_tokens(
    state: &AppState,
    user_id: Uuid,
    family_id: Uuid,
) -> Result<(), ApiError> {
    let (db, cache) = (state.db.clone(), state.auth_cache.clone());
    state
        .to_the_end(async move {
            refresh::end_access_tokens(&db, user_id, family_id).await?;
            cache.invalidate(user_id);
            Ok(())
        })
        .await
}
