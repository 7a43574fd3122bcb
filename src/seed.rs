//! Seed data: geography, and the first admin when none exists.

use anyhow::Context;
use secrecy::{ExposeSecret, SecretString};

use crate::state::AppState;

pub async fn run(state: &AppState) -> anyhow::Result<()> {
    crate::db::seed_geography(&state.db)
        .await
        .context("loading regions and councils")?;
    ensure_admin(state).await
}

/// Creates the first admin from `ADMIN_EMAIL`/`ADMIN_PASSWORD` when no admin exists. In
/// development, with no password given, a random one is generated and printed once; there is
/// never a fixed default.
async fn ensure_admin(state: &AppState) -> anyhow::Result<()> {
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users WHERE role = 'admin')")
            .fetch_one(&state.db)
            .await?;
    if exists {
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
        None => {
            tracing::warn!(
                "no admin account exists: set ADMIN_EMAIL and ADMIN_PASSWORD, or run `field-attendance create-admin`"
            );
            return Ok(());
        }
    };
    create_admin(state, &email, password.clone()).await?;
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

/// Creates an active admin, or makes an existing account with that email an active admin with
/// the given password.
pub async fn create_admin(
    state: &AppState,
    email: &str,
    password: SecretString,
) -> anyhow::Result<uuid::Uuid> {
    let email = email.trim().to_lowercase();
    let hash = state.hasher.hash(password).await?;
    let mut tx = state.db.begin().await?;
    let id = sqlx::query_scalar(
        "INSERT INTO users (email, password_hash, first_name, last_name, role, status)
         VALUES ($1, $2, 'System', 'Administrator', 'admin', 'active')
         ON CONFLICT (email) DO UPDATE
            SET password_hash = EXCLUDED.password_hash, role = 'admin', status = 'active',
                failed_login_count = 0, locked_until = NULL,
                token_version = users.token_version + 1
         RETURNING id",
    )
    .bind(&email)
    .bind(hash)
    .fetch_one(&mut *tx)
    .await?;
    // A reset account keeps no session of whoever held it before.
    crate::auth::refresh::revoke_all(&mut *tx, id).await?;
    tx.commit().await?;
    Ok(id)
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
