//! Refresh tokens: opaque random strings, stored as SHA-256 hashes, rotated on every use.
//! Presenting a token that was already rotated (or revoked) revokes its whole family, since
//! either the client or a thief holds a copy it should not.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::auth::ClientInfo;
use crate::error::ApiError;

fn digest(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Stores a new token (in `family`, or a new family) and returns its plain text.
pub async fn issue(
    conn: &mut PgConnection,
    user_id: Uuid,
    family: Option<Uuid>,
    ttl: Duration,
    client: &ClientInfo,
) -> Result<String, sqlx::Error> {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    let token = URL_SAFE_NO_PAD.encode(bytes);
    sqlx::query(
        "INSERT INTO refresh_tokens (user_id, family_id, token_hash, expires_at, ip, user_agent)
         VALUES ($1, $2, $3, now() + make_interval(secs => $4), $5, $6)",
    )
    .bind(user_id)
    .bind(family.unwrap_or_else(Uuid::new_v4))
    .bind(digest(&token))
    .bind(ttl.as_secs_f64())
    .bind(&client.ip)
    .bind(&client.user_agent)
    .execute(conn)
    .await?;
    Ok(token)
}

/// Whose token this is and its family, if it is one (current or not).
pub async fn owner(
    conn: &mut PgConnection,
    token: &str,
) -> Result<Option<(Uuid, Uuid)>, sqlx::Error> {
    sqlx::query_as("SELECT user_id, family_id FROM refresh_tokens WHERE token_hash = $1")
        .bind(digest(token))
        .fetch_optional(conn)
        .await
}

pub enum Rotation {
    /// The token was current: it is now rotated, and this is its family and owner.
    Rotated { user_id: Uuid, family_id: Uuid },
    /// The token had already been rotated (used): its family is now revoked. `stolen` the
    /// first time a rotated token of the family comes back: someone else holds, or held, the
    /// newer tokens, and may hold an access token from them.
    Reused {
        user_id: Uuid,
        family_id: Uuid,
        stolen: bool,
    },
}

/// Records that a rotated token of `family_id` came back; true until the user's access tokens
/// have been ended for it by [`end_access_tokens`] (see the `refresh_reuse` migration).
async fn first_reuse(conn: &mut PgConnection, family_id: Uuid) -> Result<bool, sqlx::Error> {
    let pending = sqlx::query(
        "INSERT INTO refresh_families_reused AS r (family_id) VALUES ($1)
         ON CONFLICT (family_id) DO UPDATE SET detected_at = r.detected_at
         WHERE r.ended_at IS NULL",
    )
    .bind(family_id)
    .execute(conn)
    .await?;
    Ok(pending.rows_affected() == 1)
}

/// Ends every access token of the user whose chain `family_id` was found reused (within the auth
/// cache's life on other instances), and marks that done. Outside the transaction that found the
/// reuse: a refresh holds the account `FOR SHARE`, as a concurrent presentation of the same
/// token may, and neither could then take the row.
pub async fn end_access_tokens(
    db: &PgPool,
    user_id: Uuid,
    family_id: Uuid,
) -> Result<(), sqlx::Error> {
    end_for(db, &[user_id], &[family_id]).await?;
    Ok(())
}

/// Ends the access tokens of every user with a stolen chain whose request never did (it failed
/// or its instance stopped after the reuse was committed), once that chain has waited longer
/// than a request would take. The users whose tokens were ended.
pub async fn end_pending_access_tokens(db: &PgPool) -> Result<Vec<Uuid>, sqlx::Error> {
    let pending: Vec<(Uuid, Uuid)> = sqlx::query_as(
        "SELECT DISTINCT r.family_id, t.user_id
         FROM refresh_families_reused r JOIN refresh_tokens t USING (family_id)
         WHERE r.ended_at IS NULL AND r.detected_at < now() - interval '30 seconds'",
    )
    .fetch_all(db)
    .await?;
    if pending.is_empty() {
        return Ok(Vec::new());
    }
    let families: Vec<Uuid> = pending.iter().map(|(family, _)| *family).collect();
    let users: Vec<Uuid> = pending.into_iter().map(|(_, user)| user).collect();
    end_for(db, &users, &families).await
}

/// Ends every access token of the owners of the stolen chains `families` (of `users`) that are
/// not marked done yet, and marks them done, in one transaction that takes the accounts first,
/// in order, as a refresh does (it holds the account `FOR SHARE`, then records the reuse):
/// neither then waits on a lock the other holds. A chain another instance's job, or the request
/// that found it, ended meanwhile is not ended twice. The users whose tokens were ended.
async fn end_for(db: &PgPool, users: &[Uuid], families: &[Uuid]) -> Result<Vec<Uuid>, sqlx::Error> {
    // Bounded: waiting on one account, it would keep the others it had locked from their
    // refreshes. What it leaves is tried again by the next run of the job.
    let mut tx = crate::db::upkeep(db, crate::db::UPKEEP_LIMIT).await?;
    sqlx::query("SELECT 1 FROM users WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE")
        .bind(users)
        .execute(&mut *tx)
        .await?;
    let ended: Vec<Uuid> = sqlx::query_scalar(
        "WITH ended AS (
           UPDATE refresh_families_reused SET ended_at = now()
           WHERE family_id = ANY($1) AND ended_at IS NULL
           RETURNING family_id)
         UPDATE users u SET token_version = u.token_version + 1
         WHERE u.id IN (SELECT t.user_id FROM refresh_tokens t JOIN ended USING (family_id))
         RETURNING u.id",
    )
    .bind(families)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(ended)
}

/// Serialises the rotations and revocations of one family (one login's chain), within the
/// caller's transaction: a logout then sees a token rotated concurrently, and a reuse and a
/// logout never lock the family's rows in opposite orders.
async fn lock_family(conn: &mut PgConnection, family_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('refresh:' || $1::text, 0))")
        .bind(family_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Marks the token of `family_id` (as [`owner`] read it) rotated, within the caller's
/// transaction, or detects its reuse.
pub async fn rotate(
    conn: &mut PgConnection,
    token: &str,
    family_id: Uuid,
) -> Result<Rotation, ApiError> {
    lock_family(&mut *conn, family_id).await?;
    let (user_id, rotated, revoked, expired): (Uuid, bool, bool, bool) = sqlx::query_as(
        "SELECT user_id, rotated_at IS NOT NULL, revoked_at IS NOT NULL, expires_at <= now()
         FROM refresh_tokens WHERE token_hash = $1 FOR UPDATE",
    )
    .bind(digest(token))
    .fetch_optional(&mut *conn)
    .await?
    .ok_or(ApiError::InvalidToken)?;
    // Revoked but never rotated: the session was ended (a logout, a password change, a
    // deactivation), and a device that missed it still holds its last token. No theft.
    if revoked && !rotated {
        return Err(ApiError::InvalidToken);
    }
    if rotated {
        revoke_family(&mut *conn, family_id).await?;
        let stolen = first_reuse(&mut *conn, family_id).await?;
        return Ok(Rotation::Reused {
            user_id,
            family_id,
            stolen,
        });
    }
    // Answered as any other refresh token that no longer works: the device logs in again
    // (`token_expired` would send it back here, as for an expired access token).
    if expired {
        return Err(ApiError::InvalidToken);
    }
    sqlx::query("UPDATE refresh_tokens SET rotated_at = now() WHERE token_hash = $1")
        .bind(digest(token))
        .execute(&mut *conn)
        .await?;
    Ok(Rotation::Rotated { user_id, family_id })
}

/// Revokes the family's live tokens; returns how many there were.
async fn revoke_family(conn: &mut PgConnection, family_id: Uuid) -> Result<u64, sqlx::Error> {
    let revoked = sqlx::query(
        "UPDATE refresh_tokens SET revoked_at = now() WHERE family_id = $1 AND revoked_at IS NULL",
    )
    .bind(family_id)
    .execute(conn)
    .await?;
    Ok(revoked.rows_affected())
}

/// What a logout did.
#[derive(Default)]
pub struct Revoked {
    /// Live tokens of the chain were revoked.
    pub ended: bool,
    /// The chain, when the token sent had been rotated and the user's access tokens are still
    /// to be ended for it (as at a refresh).
    pub stolen: Option<Uuid>,
}

/// Revokes a token of this user and its whole chain (logout): a token already rotated still
/// names the session, whose current token may be elsewhere. Unknown tokens are ignored. In the
/// caller's transaction, which commits it.
pub async fn revoke(
    tx: &mut PgConnection,
    user_id: Uuid,
    token: &str,
) -> Result<Revoked, sqlx::Error> {
    let Some((_, family_id)) = owner(&mut *tx, token)
        .await?
        .filter(|(owner, _)| *owner == user_id)
    else {
        return Ok(Revoked::default());
    };
    // The account before the tokens, as at a refresh: an edit that locks the account and then
    // revokes its tokens never meets this one holding the tokens while its audit row (whose key
    // names the account) waits for the account.
    sqlx::query("SELECT 1 FROM users WHERE id = $1 FOR KEY SHARE")
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    lock_family(&mut *tx, family_id).await?;
    // Read under the family's lock: a refresh with this token may have rotated it meanwhile.
    let rotated: bool = sqlx::query_scalar(
        "SELECT rotated_at IS NOT NULL FROM refresh_tokens WHERE token_hash = $1",
    )
    .bind(digest(token))
    .fetch_one(&mut *tx)
    .await?;
    let revoked = revoke_family(&mut *tx, family_id).await?;
    let stolen = rotated && first_reuse(&mut *tx, family_id).await?;
    Ok(Revoked {
        ended: revoked > 0,
        stolen: stolen.then_some(family_id),
    })
}

/// Revokes every token of a user (deactivation, password change).
pub async fn revoke_all<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    user_id: Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE refresh_tokens SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL",
    )
    .bind(user_id)
    .execute(executor)
    .await?;
    Ok(())
}

/// Deletes refresh tokens that expired more than a day ago: none can be used again, and a
/// rotated one presented after that is refused as unknown rather than as reused.
pub async fn prune_expired(db: &PgPool) -> Result<u64, sqlx::Error> {
    let mut tx = crate::db::upkeep(db, crate::db::BACKLOG_LIMIT).await?;
    // A family's reuse is forgotten with its last token: one presented after that is unknown.
    let removed: i64 = sqlx::query_scalar(
        "WITH gone AS (
           DELETE FROM refresh_tokens WHERE expires_at < now() - interval '1 day'
           RETURNING family_id),
         forgotten AS (
           DELETE FROM refresh_families_reused r
           WHERE r.family_id IN (SELECT family_id FROM gone)
             AND NOT EXISTS (SELECT 1 FROM refresh_tokens t
                             WHERE t.family_id = r.family_id
                               AND t.expires_at >= now() - interval '1 day'))
         SELECT count(*) FROM gone",
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(removed as u64)
}
