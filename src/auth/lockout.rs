//! Consecutive wrong passwords lock an account, whether guessed at login or at a password
//! change. Each check is counted before the password is hashed, so guesses sent at once cannot
//! all be checked before the first failure is written: at most `LOGIN_MAX_FAILURES` checks run
//! per lockout period. The check that fills the allowance sets the lock; any counted check that
//! finds the right password clears it, and the count. A check that ends before its password is
//! known (the client went away, the request timed out waiting for the hashing threads, the
//! database failed) is taken back.

use sqlx::PgPool;
use uuid::Uuid;

use crate::audit::Activity;
use crate::config::AuthSettings;
use crate::error::ApiError;
use crate::state::AppState;

/// A counted password check, to be settled as [`Attempt::failed`] or [`Attempt::succeeded`];
/// dropped unsettled, it is taken back.
#[must_use]
pub struct Attempt {
    user_id: Uuid,
    locks: bool,
    db: PgPool,
    settled: bool,
}

/// A check that found the wrong password.
#[derive(Debug, Clone, Copy)]
pub struct Failure {
    pub user_id: Uuid,
    /// This check filled the allowance: the account is locked.
    pub locks: bool,
}

/// Counts a password check on `user_id` (`None`: an unknown email, which runs the same statement
/// on no row, so that both take as long), or refuses it with 423 while the account is locked.
/// A lock that has run out starts the count afresh.
pub async fn attempt(
    db: &PgPool,
    user_id: Option<Uuid>,
    auth: &AuthSettings,
) -> Result<Option<Attempt>, ApiError> {
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
    .bind(user_id.unwrap_or(Uuid::nil()))
    .bind(auth.max_failed_logins)
    .bind(auth.lockout.as_secs_f64())
    .fetch_optional(db)
    .await?;
    let Some(user_id) = user_id else {
        return Ok(None);
    };
    match counted {
        Some(locks) => Ok(Some(Attempt {
            user_id,
            locks,
            db: db.clone(),
            settled: false,
        })),
        None => Err(locked(db, user_id).await?),
    }
}

/// The 423 for an account locked now, with the seconds it has left.
async fn locked(db: &PgPool, user_id: Uuid) -> Result<ApiError, ApiError> {
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

impl Attempt {
    /// The password was wrong: the check stays counted.
    pub fn failed(mut self) -> Failure {
        self.settled = true;
        Failure {
            user_id: self.user_id,
            locks: self.locks,
        }
    }

    /// The password was right: the count starts again and the lock (if this or a concurrent
    /// check set one) is lifted.
    pub async fn succeeded(mut self) -> Result<(), ApiError> {
        sqlx::query("UPDATE users SET failed_login_count = 0, locked_until = NULL WHERE id = $1")
            .bind(self.user_id)
            .execute(&self.db)
            .await?;
        self.settled = true;
        Ok(())
    }

    /// The password was right and the caller's own committed statement cleared the count.
    pub fn cleared(mut self) {
        self.settled = true;
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let (db, user_id, locks) = (self.db.clone(), self.user_id, self.locks);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let undone = sqlx::query(
                "UPDATE users SET failed_login_count = greatest(failed_login_count - 1, 0),
                                  locked_until = CASE WHEN $2 THEN NULL ELSE locked_until END
                 WHERE id = $1",
            )
            .bind(user_id)
            .bind(locks)
            .execute(&db)
            .await;
            if let Err(e) = undone {
                tracing::warn!(error = %e, %user_id, "an unsettled password check stays counted");
            }
        });
    }
}

/// Records a failed check's rows (and the lockout's, when it set one) in one transaction, to the
/// end ([`AppState::to_the_end`]): the count, and any lock, committed when the check began, a
/// request ended meanwhile (its time limit, its client gone) cannot leave them out of the trail.
pub async fn record_to_the_end(state: &AppState, rows: Vec<Activity>) -> Result<(), ApiError> {
    let (db, limit) = (state.db.clone(), state.config.request_timeout);
    state
        .to_the_end(async move {
            // Bounded as the request was: a trail that stays locked does not keep the
            // connection (nor shutdown) waiting for ever.
            let mut tx = crate::db::bounded(&db, limit).await?;
            for row in rows {
                row.record(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await
}

/// The audit entry of the lock a wrong password set, if it set one.
pub fn lock_activity(failure: Failure, email: &str, auth: &AuthSettings) -> Option<Activity> {
    failure.locks.then(|| {
        Activity::new("auth.lockout")
            .on("user", failure.user_id)
            .details(serde_json::json!({ "email": email, "lockout_s": auth.lockout.as_secs() }))
    })
}
