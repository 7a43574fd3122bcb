//! Consecutive wrong passwords lock an account, whether guessed at login or at a password
//! change. Each check is counted before the password is hashed, so guesses sent at once cannot
//! all be checked before the first failure is written: at most `LOGIN_MAX_FAILURES` checks run
//! per lockout period. The check that fills the allowance sets the lock; any counted check that
//! finds the right password clears it, and the count.

use sqlx::PgPool;
use uuid::Uuid;

use crate::audit::Activity;
use crate::config::AuthSettings;
use crate::error::ApiError;

/// A counted password check.
#[derive(Debug, Clone, Copy)]
#[must_use]
pub struct Attempt {
    pub user_id: Uuid,
    /// This check filled the allowance: the account stays locked unless the password is right.
    pub locks: bool,
}

/// Counts a password check on `user_id`, or refuses it with 423 while the account is locked.
/// A lock that has run out starts the count afresh.
pub async fn attempt(db: &PgPool, user_id: Uuid, auth: &AuthSettings) -> Result<Attempt, ApiError> {
    let counted: Option<bool> = sqlx::query_scalar(
        "UPDATE users SET
             failed_login_count = CASE WHEN locked_until <= now() THEN 1
                                       ELSE failed_login_count + 1 END,
             locked_until = CASE
                 WHEN (CASE WHEN locked_until <= now() THEN 1 ELSE failed_login_count + 1 END) >= $2
                 THEN now() + make_interval(secs => $3) END
         WHERE id = $1 AND (locked_until IS NULL OR locked_until <= now())
         RETURNING locked_until IS NOT NULL",
    )
    .bind(user_id)
    .bind(auth.max_failed_logins)
    .bind(auth.lockout.as_secs_f64())
    .fetch_optional(db)
    .await?;
    match counted {
        Some(locks) => Ok(Attempt { user_id, locks }),
        None => Err(locked(db, user_id).await?),
    }
}

/// The 423 for an account locked now, with the seconds it has left.
pub async fn locked(db: &PgPool, user_id: Uuid) -> Result<ApiError, ApiError> {
    let left: Option<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM locked_until - now())::float8 FROM users WHERE id = $1",
    )
    .bind(user_id)
    .fetch_one(db)
    .await?;
    Ok(ApiError::AccountLocked {
        retry_after_s: left.unwrap_or(1.0).ceil().max(1.0) as u64,
    })
}

/// The password was right: the count starts again and the lock (if this or a concurrent check
/// set one) is lifted.
pub async fn succeeded<'e>(
    conn: impl sqlx::PgExecutor<'e>,
    attempt: Attempt,
) -> Result<(), ApiError> {
    sqlx::query("UPDATE users SET failed_login_count = 0, locked_until = NULL WHERE id = $1")
        .bind(attempt.user_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// The audit entry of the lock this check set, if it set one and the password was wrong.
pub fn lock_activity(attempt: Attempt, email: &str, auth: &AuthSettings) -> Option<Activity> {
    attempt.locks.then(|| {
        Activity::new("auth.lockout")
            .on("user", attempt.user_id)
            .details(serde_json::json!({ "email": email, "lockout_s": auth.lockout.as_secs() }))
    })
}
