//! Each group of settings read from its variables, with the checks that tie them together.

use std::time::Duration;

use secrecy::SecretString;

use super::reader::Reader;
use super::{
    AttendanceSettings, AuthSettings, DbSettings, LogFormat, LogSettings, RateLimits, RateQuota,
    Registration, TrustProxy,
};
use crate::domain::{Email, Password};

pub(super) fn db(r: &mut Reader<'_>) -> DbSettings {
    let database_url = r.required("DATABASE_URL").unwrap_or_default();
    for (key, url) in [
        ("DATABASE_URL", Some(database_url.clone())),
        ("MIGRATION_DATABASE_URL", r.raw("MIGRATION_DATABASE_URL")),
    ] {
        if let Some(url) = url.filter(|u| !u.is_empty())
            && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
        {
            r.problems.push(format!("{key} must be a postgres:// URL"));
        }
    }
    let (migration_url, migration_url_from) = match r.raw("MIGRATION_DATABASE_URL") {
        Some(url) => (url, "MIGRATION_DATABASE_URL"),
        None => (
            database_url.clone(),
            "DATABASE_URL (MIGRATION_DATABASE_URL is unset; when DATABASE_URL is a pooler such as \
             PgBouncer, set MIGRATION_DATABASE_URL straight to Postgres)",
        ),
    };
    let max_connections = r.ranged("DB_MAX_CONNECTIONS", 100u32, 1..=10_000);
    // Unset, the minimum follows a smaller maximum: `DB_MAX_CONNECTIONS=10` alone is a pool of
    // at most 10, all kept.
    let min_connections = r.parsed("DB_MIN_CONNECTIONS", 20u32.min(max_connections));
    if min_connections > max_connections {
        r.problems.push(format!(
            "DB_MIN_CONNECTIONS ({min_connections}) is above DB_MAX_CONNECTIONS ({max_connections})"
        ));
    }
    DbSettings {
        url: SecretString::from(database_url),
        migration_url: SecretString::from(migration_url),
        migration_url_from,
        min_connections,
        max_connections,
        acquire_timeout: Duration::from_secs(r.ranged("DB_ACQUIRE_TIMEOUT_SECS", 3, 1..=300)),
        // 0 would have the pool's upkeep close idle connections in a busy loop.
        idle_timeout: Duration::from_secs(r.ranged("DB_IDLE_TIMEOUT_SECS", 10, 1..=86_400)),
        startup_wait: Duration::from_secs(r.ranged("DB_STARTUP_WAIT_SECS", 60, 0..=3600)),
    }
}

pub(super) fn log(r: &mut Reader<'_>, dev: bool) -> LogSettings {
    let (filter_from, filter) = match (r.raw("LOG_LEVEL"), r.raw("RUST_LOG")) {
        (Some(level), _) => ("LOG_LEVEL", level),
        (None, Some(level)) => ("RUST_LOG", level),
        (None, None) => ("LOG_LEVEL", "info".to_string()),
    };
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&filter) {
        r.problems
            .push(format!("{filter_from}=`{filter}` is not a log filter: {e}"));
    }
    LogSettings {
        filter,
        format: r.choice(
            "LOG_FORMAT",
            if dev {
                LogFormat::Pretty
            } else {
                LogFormat::Json
            },
            &[("json", LogFormat::Json), ("pretty", LogFormat::Pretty)],
        ),
        dir: r.raw("LOG_DIR"),
        retention_files: r.ranged("LOG_RETENTION_DAYS", 14usize, 1..=3650),
    }
}

pub(super) fn auth(r: &mut Reader<'_>, dev: bool) -> AuthSettings {
    let jwt_secret = match r.raw("JWT_SECRET") {
        Some(s) if dev => s,
        Some(s) if s.len() < 32 => {
            r.problems
                .push("JWT_SECRET must be at least 32 bytes outside development".to_string());
            String::new()
        }
        // Anyone who knows the secret can sign a token for any user: the sample's
        // placeholder, or a long run of a few characters, is as good as published.
        Some(s) if looks_like_a_placeholder(&s) => {
            r.problems.push(
                "JWT_SECRET looks like a placeholder; use 32 or more random bytes \
                 (for example `openssl rand -base64 48`)"
                    .to_string(),
            );
            String::new()
        }
        Some(s) => s,
        None if dev => random_secret(),
        None => {
            r.problems
                .push("JWT_SECRET is required outside development".to_string());
            String::new()
        }
    };
    // Checked here by the API's own rules, so that a bad value stops start-up naming its
    // variable rather than failing the seeding after the migrations.
    let admin_email = r.raw("ADMIN_EMAIL").and_then(|e| match Email::parse(&e) {
        Ok(email) => Some(email.as_str().to_string()),
        Err(reason) => {
            r.problems.push(format!("ADMIN_EMAIL=`{e}` {reason}"));
            None
        }
    });
    // A password is taken as written, spaces at its ends included; only a line ending (a
    // secret mounted from a file, an `.env` saved on Windows) is not part of it.
    let admin_password = (r.lookup)("ADMIN_PASSWORD")
        .map(|p| p.trim_end_matches(['\r', '\n']).to_string())
        .filter(|p| !p.trim().is_empty());
    if let Some(p) = &admin_password {
        if let Err(reason) = Password::parse(p, admin_email.as_deref().unwrap_or_default()) {
            r.problems.push(format!("ADMIN_PASSWORD {reason}"));
        } else if !dev && is_a_sample(p) {
            r.problems.push(
                "ADMIN_PASSWORD is a sample value; choose one of your own for the admin \
                 (for example `openssl rand -base64 18`)"
                    .to_string(),
            );
        }
    }
    AuthSettings {
        jwt_secret: SecretString::from(jwt_secret),
        issuer: r
            .raw("JWT_ISSUER")
            .unwrap_or_else(|| "field-attendance".into()),
        audience: r
            .raw("JWT_AUDIENCE")
            .unwrap_or_else(|| "field-attendance-api".into()),
        access_ttl: Duration::from_secs(r.ranged(
            "ACCESS_TOKEN_TTL_SECS",
            24 * 3600,
            60..=30 * 24 * 3600,
        )),
        refresh_ttl: Duration::from_secs(r.ranged(
            "REFRESH_TOKEN_TTL_SECS",
            7 * 24 * 3600,
            60..=365 * 24 * 3600,
        )),
        max_failed_logins: r.ranged("LOGIN_MAX_FAILURES", 5i32, 1..=1000),
        lockout: Duration::from_secs(r.ranged("LOGIN_LOCKOUT_SECS", 15 * 60, 1..=7 * 24 * 3600)),
        registration: r.choice(
            "REGISTRATION",
            Registration::Approval,
            &[
                ("approval", Registration::Approval),
                ("closed", Registration::Closed),
            ],
        ),
        max_concurrent_hashes: r.ranged(
            "MAX_CONCURRENT_HASHES",
            std::thread::available_parallelism().map_or(2, |n| n.get()),
            1..=1024,
        ),
        admin_email,
        admin_password: admin_password.map(SecretString::from),
        metrics_token: metrics_token(r, dev),
    }
}

/// The bearer token Prometheus scrapes `/metrics` with: outside development, as hard to guess as
/// the signing secret (`/metrics` answers every guess, with no rate limit).
fn metrics_token(r: &mut Reader<'_>, dev: bool) -> Option<SecretString> {
    let token = r.raw("METRICS_TOKEN")?;
    if !dev && (token.len() < 32 || looks_like_a_placeholder(&token)) {
        r.problems.push(
            "METRICS_TOKEN must be at least 32 random bytes outside development (for example \
             `openssl rand -hex 32`)"
                .to_string(),
        );
        return None;
    }
    Some(SecretString::from(token))
}

pub(super) fn rate_limits(r: &mut Reader<'_>) -> RateLimits {
    RateLimits {
        enabled: r.bool("RATE_LIMIT_ENABLED", true),
        api: r.parsed("RATE_LIMIT_API", quota(100, 15 * 60)),
        auth: r.parsed("RATE_LIMIT_AUTH", quota(5, 15 * 60)),
        upload: r.parsed("RATE_LIMIT_UPLOAD", quota(10, 15 * 60)),
        sync: r.parsed("RATE_LIMIT_SYNC", quota(20, 5 * 60)),
        trust_proxy: r.parsed("TRUST_PROXY", TrustProxy::Nobody),
    }
}

pub(super) fn attendance(r: &mut Reader<'_>) -> AttendanceSettings {
    let timezone = r.parsed("APP_TIMEZONE", chrono_tz::Africa::Kigali);
    AttendanceSettings {
        default_geofence_m: r.ranged("GEOFENCE_DEFAULT_RADIUS_M", 200i32, 1..=100_000),
        enforce_geofence: r.bool("GEOFENCE_ENFORCE", false),
        future_tolerance: Duration::from_secs(r.ranged(
            "CLOCK_FUTURE_TOLERANCE_SECS",
            5 * 60,
            0..=86_400,
        )),
        max_age: Duration::from_secs(r.ranged("CLOCK_MAX_AGE_DAYS", 30u64, 1..=3650) * 86_400),
        max_shift: Duration::from_secs(
            r.ranged("MAX_SHIFT_HOURS", 16u64, 1..=super::LONGEST_SHIFT_HOURS) * 3600,
        ),
        sweep_interval: Duration::from_secs(r.ranged("SWEEP_INTERVAL_SECS", 300, 1..=86_400)),
        timezone,
    }
}

pub(super) fn cors_origins(r: &mut Reader<'_>) -> Vec<String> {
    let cors_origins: Vec<String> = r
        .raw("CORS_ORIGINS")
        .map(|v| {
            v.split(',')
                .map(|o| o.trim().to_string())
                .filter(|o| !o.is_empty())
                .collect()
        })
        .unwrap_or_default();
    // A browser sends its origin as `scheme://host[:port]`: anything else would never match.
    for origin in &cors_origins {
        if !(origin == "*" || is_origin(origin)) {
            r.problems.push(format!(
                "CORS_ORIGINS entry `{origin}` is not an origin: expected scheme://host[:port], no path or trailing slash"
            ));
        }
    }
    cors_origins
}

pub(super) fn quota(burst: u32, secs: u64) -> RateQuota {
    RateQuota {
        burst,
        period: Duration::from_secs(secs),
    }
}

/// The sample configuration's value, or too few distinct characters to be random.
fn looks_like_a_placeholder(secret: &str) -> bool {
    let distinct: std::collections::HashSet<char> = secret.chars().collect();
    is_a_sample(secret) || distinct.len() < 10
}

/// A value the sample configuration or the README shows, as good as published.
pub fn is_a_sample(secret: &str) -> bool {
    let lower = secret.to_ascii_lowercase();
    ["change-me", "changeme", "change_me", "placeholder"]
        .iter()
        .any(|word| lower.contains(word))
        || lower == "a-long-password"
}

/// A development-only signing key, new at every start (tokens do not survive restarts).
pub(super) fn random_secret() -> String {
    use rand::Rng;
    let bytes: [u8; 32] = rand::thread_rng().r#gen();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `scheme://host[:port]` as a browser or an app's web view sends it (`https://...`,
/// `capacitor://localhost`): lower case, since the comparison is exact and browsers send it so.
fn is_origin(origin: &str) -> bool {
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
    let mut scheme_chars = scheme.bytes();
    scheme_chars.next().is_some_and(|b| b.is_ascii_lowercase())
        && scheme_chars.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+.-".contains(&b))
        && !rest.is_empty()
        && !rest.contains(['/', '?', '#', '@'])
        && rest
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b.is_ascii_uppercase())
}
