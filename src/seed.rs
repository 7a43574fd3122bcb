//! Seed data: geography, and the first admin when none exists.

use anyhow::Context;
use secrecy::{ExposeSecret, SecretString};

use crate::audit::Activity;
use crate::domain::{Email, Password};
use crate::state::AppState;

pub async fn run(state: &AppState) -> anyhow::Result<()> {
    crate::db::seed_geography(&state.db)
        .await
        .context("loading regions and councils")?;
    ensure_admin(state).await
}

/// Creates the first admin from `ADMIN_EMAIL`/`ADMIN_PASSWORD` when no admin exists. In
/// development, with no password given, a random one is generated and printed once; there is
/// never a fixed default. Elsewhere an `ADMIN_EMAIL` without a password stops start-up; with
/// neither, the service starts with a warning (`create-admin` makes one later).
async fn ensure_admin(state: &AppState) -> anyhow::Result<()> {
    if any_admin(&mut *state.db.acquire().await?).await? {
        if state.config.auth.admin_password.is_some() {
            tracing::info!(
                "an admin exists: ADMIN_EMAIL and ADMIN_PASSWORD are left unused (`field-attendance create-admin` resets an admin's password)"
            );
        }
        return Ok(());
    }
    let auth = &state.config.auth;
    let email = auth
        .admin_email
        .clone()
        .unwrap_or_else(|| "admin@example.org".to_string());
    let (password, generated) = match &auth.admin_password {
        Some(p) => (p.clone(), false),
        None if state.config.is_dev() => (SecretString::from(generate_password()), true),
        // Asked for an admin by name, with nothing to make it with: stopped here rather than
        // running with no one able to sign in as it.
        None if auth.admin_email.is_some() => anyhow::bail!(
            "ADMIN_EMAIL is set but ADMIN_PASSWORD is not: no admin account exists, and the \
             first one needs both (or run `field-attendance create-admin`)"
        ),
        None => {
            tracing::warn!(
                "no admin account exists: set ADMIN_EMAIL and ADMIN_PASSWORD, or run `field-attendance create-admin`"
            );
            return Ok(());
        }
    };
    // Another instance, starting beside this one, may have made the first admin meanwhile.
    if create_admin(state, &email, password.clone(), Made::First)
        .await
        .context("making the first admin from ADMIN_EMAIL and ADMIN_PASSWORD")?
        .is_none()
    {
        return Ok(());
    }
    if generated {
        // Printed, not logged: log files outlive the terminal.
        println!(
            "\n  First admin created: {email}\n  Password (shown once): {}\n",
            password.expose_secret()
        );
    }
    tracing::info!(%email, "first admin created");
    Ok(())
}

async fn any_admin(conn: &mut sqlx::PgConnection) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users WHERE role = 'admin')")
        .fetch_one(conn)
        .await
}

/// How an admin is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Made {
    /// The first admin, at start; nothing when one exists by the time the roster is locked.
    First,
    /// From the command line: created, or an existing account made an active admin.
    ByCommand,
}

impl Made {
    fn via(self) -> &'static str {
        match self {
            Made::First => "seed",
            Made::ByCommand => "command line",
        }
    }
}

/// Creates an active admin, or makes an existing account with that email an active admin with
/// the given password, under the API's rules for emails and passwords; outside development, a
/// sample password (copied from the README or `.env.example`, as good as published) is
/// refused. The audit trail records it as the API would (creation, or a password change and any
/// role or status change), with no actor and `via` (the seed, the command line) in its
/// details. `None` when `made` is [`Made::First`] and an admin exists.
pub async fn create_admin(
    state: &AppState,
    email: &str,
    password: SecretString,
    made: Made,
) -> anyhow::Result<Option<uuid::Uuid>> {
    let via = made.via();
    let email = Email::parse(email).map_err(|reason| anyhow::anyhow!("the email {reason}"))?;
    let email = email.as_str();
    if !state.config.is_dev() && crate::config::is_a_sample(password.expose_secret()) {
        anyhow::bail!(
            "the password is a sample value; choose one of your own for the admin (for example \
             `openssl rand -base64 18`)"
        );
    }
    let password = Password::parse(password.expose_secret(), email)
        .map_err(|reason| anyhow::anyhow!("the password {reason}"))?;
    let hash = state.hasher.hash(password.into_secret()).await?;
    let mut tx = crate::db::begin(&state.db).await?;
    // Held as a role or supervisor change holds it: the supervisor kept cannot be demoted, nor
    // the tree changed, meanwhile.
    crate::db::users::lock_tree(&mut tx, false).await?;
    if made == Made::First && any_admin(&mut tx).await? {
        return Ok(None);
    }
    let before: Option<(String, String, Option<uuid::Uuid>)> =
        sqlx::query_as("SELECT role, status, supervisor_id FROM users WHERE email = $1 FOR UPDATE")
            .bind(email)
            .fetch_optional(&mut *tx)
            .await?;
    let (id, supervisor): (uuid::Uuid, Option<uuid::Uuid>) = sqlx::query_as(
        "INSERT INTO users (email, password_hash, first_name, last_name, role, status)
         VALUES ($1, $2, 'System', 'Administrator', 'admin', 'active')
         ON CONFLICT (email) DO UPDATE
            SET password_hash = EXCLUDED.password_hash, role = 'admin', status = 'active',
                failed_login_count = 0, locked_until = NULL,
                token_version = users.token_version + 1,
                -- An admin answers to no one below an admin.
                supervisor_id = CASE WHEN (SELECT s.role FROM users s WHERE s.id = users.supervisor_id)
                                          = 'admin' THEN users.supervisor_id END,
                scope_reset_xid = CASE WHEN users.role = 'admin' THEN users.scope_reset_xid
                                       ELSE pg_current_xact_id() END
         RETURNING id, supervisor_id",
    )
    .bind(email)
    .bind(hash)
    .fetch_one(&mut *tx)
    .await?;
    // A reset account keeps no session of whoever held it before.
    crate::auth::refresh::revoke_all(&mut *tx, id).await?;
    if let Some((_, _, Some(from))) = before
        && supervisor != Some(from)
    {
        crate::db::users::record_move(&mut tx, id, Some(from), None).await?;
    }
    let details = serde_json::json!({ "via": via });
    let mut entries = Vec::new();
    match before {
        None => entries.push(
            Activity::new("user.create")
                .details(serde_json::json!({ "via": via, "role": "admin" })),
        ),
        Some((role, status, _)) => {
            entries.push(Activity::new("user.password_change").details(details.clone()));
            if role != "admin" {
                entries.push(
                    Activity::new("user.role_change")
                        .details(serde_json::json!({ "via": via, "from": role, "to": "admin" })),
                );
            }
            if status != "active" {
                entries.push(Activity::new("user.activate").details(details));
            }
        }
    }
    for entry in entries {
        entry.on("user", id).record(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(Some(id))
}

fn generate_password() -> String {
    use rand::Rng;
    use rand::distributions::Alphanumeric;
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(20)
        .map(char::from)
        .collect()
}
