//! Typed configuration, read once at start-up from the environment (and an optional `.env`).
//!
//! Every variable is checked before anything starts, and all problems are reported together so
//! an operator fixes a deployment in one round trip instead of one variable per restart.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use chrono_tz::Tz;
use secrecy::{ExposeSecret, SecretString};

use crate::domain::{Email, Password};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppEnv {
    Development,
    Production,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registration {
    Approval,
    Closed,
}

/// A request budget: `burst` requests per `period`, refilled evenly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateQuota {
    pub burst: u32,
    pub period: Duration,
}

impl FromStr for RateQuota {
    type Err = String;

    /// `100/15m`, `5/900s`, `20/5m`, `1000/1h`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (n, period) = s
            .split_once('/')
            .ok_or_else(|| "expected REQUESTS/PERIOD such as 100/15m".to_string())?;
        let burst: u32 = n
            .trim()
            .parse()
            .map_err(|_| format!("`{n}` is not a request count"))?;
        let period = parse_duration(period.trim())?;
        if burst == 0 || period.is_zero() {
            return Err("requests and period must both be above zero".into());
        }
        Ok(Self { burst, period })
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{s}` is not a duration such as 90s, 15m or 1h"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("`{s}` has an unknown unit (use s, m or h)")),
    };
    Ok(Duration::from_secs(secs))
}

#[derive(Debug, Clone)]
pub struct RateLimits {
    pub enabled: bool,
    pub api: RateQuota,
    pub auth: RateQuota,
    pub upload: RateQuota,
    pub sync: RateQuota,
    /// Read the client address from `X-Forwarded-For` (only behind a proxy we trust).
    pub trust_proxy: bool,
}

#[derive(Debug, Clone)]
pub struct DbSettings {
    /// Application traffic; may point at PgBouncer in transaction mode.
    pub url: SecretString,
    /// Migrations and database creation, always direct to Postgres.
    pub migration_url: SecretString,
    pub min_connections: u32,
    pub max_connections: u32,
    pub acquire_timeout: Duration,
    pub idle_timeout: Duration,
    /// How long `serve` waits at start for a database that does not answer yet.
    pub startup_wait: Duration,
}

#[derive(Debug, Clone)]
pub struct LogSettings {
    pub filter: String,
    pub format: LogFormat,
    /// Daily-rotated files are written here when set.
    pub dir: Option<String>,
    pub retention_files: usize,
}

#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub jwt_secret: SecretString,
    pub issuer: String,
    pub audience: String,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    pub max_failed_logins: i32,
    pub lockout: Duration,
    pub registration: Registration,
    /// Argon2 hashes running at once; the rest wait so logins cannot starve other requests.
    pub max_concurrent_hashes: usize,
    pub admin_email: Option<String>,
    pub admin_password: Option<SecretString>,
    /// A fixed bearer token for Prometheus, which cannot log in; admins' own tokens also serve.
    pub metrics_token: Option<SecretString>,
}

#[derive(Debug, Clone)]
pub struct AttendanceSettings {
    pub default_geofence_m: i32,
    /// Refuse clock-ins outside the geofence (422) instead of flagging them.
    pub enforce_geofence: bool,
    pub future_tolerance: Duration,
    pub max_age: Duration,
    pub max_shift: Duration,
    pub sweep_interval: Duration,
    pub timezone: Tz,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub env: AppEnv,
    pub bind_addr: SocketAddr,
    pub db: DbSettings,
    pub run_migrations: bool,
    pub seed_on_start: bool,
    pub log: LogSettings,
    pub auth: AuthSettings,
    pub cors_origins: Vec<String>,
    pub max_body_bytes: usize,
    pub max_upload_bytes: usize,
    pub request_timeout: Duration,
    pub rate_limits: RateLimits,
    pub attendance: AttendanceSettings,
    pub sync_max_batch: usize,
}

/// Every problem found in the environment, each naming its variable.
#[derive(Debug)]
pub struct ConfigError(pub Vec<String>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration:")?;
        for problem in &self.0 {
            writeln!(f, "  - {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Collects values and problems while reading variables one by one.
struct Reader<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
    problems: Vec<String>,
}

impl Reader<'_> {
    fn raw(&self, key: &str) -> Option<String> {
        (self.lookup)(key)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    fn required(&mut self, key: &str) -> Option<String> {
        let value = self.raw(key);
        if value.is_none() {
            self.problems.push(format!("{key} is required but not set"));
        }
        value
    }

    fn parsed<T: FromStr>(&mut self, key: &str, default: T) -> T
    where
        T::Err: fmt::Display,
    {
        match self.raw(key) {
            None => default,
            Some(v) => v.parse().unwrap_or_else(|e| {
                self.problems.push(format!("{key}=`{v}` is invalid: {e}"));
                default
            }),
        }
    }

    fn bool(&mut self, key: &str, default: bool) -> bool {
        match self.raw(key).map(|v| v.to_ascii_lowercase()) {
            None => default,
            Some(v) if ["true", "1", "yes", "on"].contains(&v.as_str()) => true,
            Some(v) if ["false", "0", "no", "off"].contains(&v.as_str()) => false,
            Some(v) => {
                self.problems
                    .push(format!("{key}=`{v}` is invalid: expected true or false"));
                default
            }
        }
    }

    fn secs(&mut self, key: &str, default: u64) -> Duration {
        Duration::from_secs(self.parsed(key, default))
    }

    /// A number that must lie in `range` (a shift of 0 hours, or a timeout of 0 seconds, would
    /// start a service that refuses everything).
    fn ranged<T>(&mut self, key: &str, default: T, range: std::ops::RangeInclusive<T>) -> T
    where
        T: FromStr + PartialOrd + fmt::Display + Copy,
        T::Err: fmt::Display,
    {
        let value = self.parsed(key, default);
        if range.contains(&value) {
            value
        } else {
            self.problems.push(format!(
                "{key}=`{value}` is out of range: {} to {}",
                range.start(),
                range.end()
            ));
            default
        }
    }

    fn choice<T: Copy>(&mut self, key: &str, default: T, options: &[(&str, T)]) -> T {
        let Some(v) = self.raw(key) else {
            return default;
        };
        match options
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(&v))
        {
            Some((_, value)) => *value,
            None => {
                let names: Vec<_> = options.iter().map(|(n, _)| *n).collect();
                self.problems.push(format!(
                    "{key}=`{v}` is invalid: expected one of {}",
                    names.join(", ")
                ));
                default
            }
        }
    }
}

impl Config {
    /// Reads the process environment (`main` loads `.env` into it first, when one exists).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&|key| std::env::var(key).ok())
    }

    /// Reads configuration from a map, as tests and tools do.
    pub fn from_map(vars: &HashMap<String, String>) -> Result<Self, ConfigError> {
        Self::from_lookup(&|key| vars.get(key).cloned())
    }

    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut r = Reader {
            lookup,
            problems: Vec::new(),
        };

        let env = r.choice(
            "APP_ENV",
            AppEnv::Production,
            &[
                ("development", AppEnv::Development),
                ("dev", AppEnv::Development),
                ("production", AppEnv::Production),
                ("prod", AppEnv::Production),
            ],
        );
        let dev = env == AppEnv::Development;

        let mut bind_addr: SocketAddr =
            r.parsed("BIND_ADDR", SocketAddr::from(([0, 0, 0, 0], 8080)));
        if let Some(port) = r.raw("PORT") {
            match port.parse::<u16>() {
                Ok(p) => bind_addr.set_port(p),
                Err(e) => r.problems.push(format!("PORT=`{port}` is invalid: {e}")),
            }
        }

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
        let migration_url = r
            .raw("MIGRATION_DATABASE_URL")
            .unwrap_or_else(|| database_url.clone());
        let min_connections = r.parsed("DB_MIN_CONNECTIONS", 20u32);
        let max_connections = r.ranged("DB_MAX_CONNECTIONS", 100u32, 1..=10_000);
        if min_connections > max_connections {
            r.problems.push(format!(
                "DB_MIN_CONNECTIONS ({min_connections}) is above DB_MAX_CONNECTIONS ({max_connections})"
            ));
        }
        let db = DbSettings {
            url: SecretString::from(database_url),
            migration_url: SecretString::from(migration_url),
            min_connections,
            max_connections,
            acquire_timeout: Duration::from_secs(r.ranged("DB_ACQUIRE_TIMEOUT_SECS", 3, 1..=300)),
            idle_timeout: r.secs("DB_IDLE_TIMEOUT_SECS", 10),
            startup_wait: Duration::from_secs(r.ranged("DB_STARTUP_WAIT_SECS", 60, 0..=3600)),
        };

        let (filter_from, filter) = match (r.raw("LOG_LEVEL"), r.raw("RUST_LOG")) {
            (Some(level), _) => ("LOG_LEVEL", level),
            (None, Some(level)) => ("RUST_LOG", level),
            (None, None) => ("LOG_LEVEL", "info".to_string()),
        };
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&filter) {
            r.problems
                .push(format!("{filter_from}=`{filter}` is not a log filter: {e}"));
        }
        let log = LogSettings {
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
            retention_files: r.parsed("LOG_RETENTION_DAYS", 14usize),
        };

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
        if let Some(p) = &admin_password
            && let Err(reason) = Password::parse(p, admin_email.as_deref().unwrap_or_default())
        {
            r.problems.push(format!("ADMIN_PASSWORD {reason}"));
        }
        let auth = AuthSettings {
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
            lockout: Duration::from_secs(r.ranged(
                "LOGIN_LOCKOUT_SECS",
                15 * 60,
                1..=7 * 24 * 3600,
            )),
            registration: r.choice(
                "REGISTRATION",
                Registration::Approval,
                &[
                    ("approval", Registration::Approval),
                    ("closed", Registration::Closed),
                ],
            ),
            max_concurrent_hashes: r
                .parsed(
                    "MAX_CONCURRENT_HASHES",
                    std::thread::available_parallelism().map_or(2, |n| n.get()),
                )
                .max(1),
            admin_email,
            admin_password: admin_password.map(SecretString::from),
            metrics_token: r.raw("METRICS_TOKEN").map(SecretString::from),
        };

        let rate_limits = RateLimits {
            enabled: r.bool("RATE_LIMIT_ENABLED", true),
            api: r.parsed("RATE_LIMIT_API", quota(100, 15 * 60)),
            auth: r.parsed("RATE_LIMIT_AUTH", quota(5, 15 * 60)),
            upload: r.parsed("RATE_LIMIT_UPLOAD", quota(10, 15 * 60)),
            sync: r.parsed("RATE_LIMIT_SYNC", quota(20, 5 * 60)),
            trust_proxy: r.bool("TRUST_PROXY", false),
        };

        let timezone = r.parsed("APP_TIMEZONE", chrono_tz::Africa::Kigali);
        let attendance = AttendanceSettings {
            default_geofence_m: r.ranged("GEOFENCE_DEFAULT_RADIUS_M", 200i32, 1..=100_000),
            enforce_geofence: r.bool("GEOFENCE_ENFORCE", false),
            future_tolerance: r.secs("CLOCK_FUTURE_TOLERANCE_SECS", 5 * 60),
            max_age: Duration::from_secs(r.ranged("CLOCK_MAX_AGE_DAYS", 30u64, 1..=3650) * 86_400),
            max_shift: Duration::from_secs(r.ranged("MAX_SHIFT_HOURS", 16u64, 1..=72) * 3600),
            sweep_interval: Duration::from_secs(r.ranged("SWEEP_INTERVAL_SECS", 300, 1..=86_400)),
            timezone,
        };

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

        let config = Config {
            env,
            bind_addr,
            run_migrations: r.bool("RUN_MIGRATIONS", true),
            seed_on_start: r.bool("SEED_ON_START", true),
            db,
            log,
            auth,
            cors_origins,
            max_body_bytes: r.ranged("MAX_BODY_BYTES", 1024 * 1024usize, 1024..=64 << 20),
            max_upload_bytes: r.ranged("MAX_UPLOAD_BYTES", 10 * 1024 * 1024usize, 1024..=1 << 30),
            request_timeout: Duration::from_secs(r.ranged("REQUEST_TIMEOUT_SECS", 30, 1..=3600)),
            rate_limits,
            attendance,
            sync_max_batch: r.ranged("SYNC_MAX_BATCH", 500usize, 1..=10_000),
        };
        if r.problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError(r.problems))
        }
    }

    pub fn is_dev(&self) -> bool {
        self.env == AppEnv::Development
    }

    pub fn database_url(&self) -> &str {
        self.db.url.expose_secret()
    }

    pub fn migration_database_url(&self) -> &str {
        self.db.migration_url.expose_secret()
    }
}

fn quota(burst: u32, secs: u64) -> RateQuota {
    RateQuota {
        burst,
        period: Duration::from_secs(secs),
    }
}

/// The sample configuration's value, or too few distinct characters to be random.
fn looks_like_a_placeholder(secret: &str) -> bool {
    let lower = secret.to_ascii_lowercase();
    let distinct: std::collections::HashSet<char> = secret.chars().collect();
    ["change-me", "changeme", "change_me", "placeholder"]
        .iter()
        .any(|word| lower.contains(word))
        || distinct.len() < 10
}

/// A development-only signing key, new at every start (tokens do not survive restarts).
fn random_secret() -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_bad_variable_is_named_in_one_error() {
        let err = Config::from_map(&vars(&[
            ("APP_ENV", "production"),
            ("JWT_SECRET", "short"),
            ("DB_MAX_CONNECTIONS", "lots"),
            ("LOG_FORMAT", "xml"),
            ("RUST_LOG", "sqlx=loudest"),
        ]))
        .unwrap_err();
        let text = err.to_string();
        for key in [
            "DATABASE_URL",
            "JWT_SECRET",
            "DB_MAX_CONNECTIONS",
            "LOG_FORMAT",
            "RUST_LOG",
        ] {
            assert!(text.contains(key), "{key} missing from: {text}");
        }
    }

    #[test]
    fn the_first_admin_is_checked_by_the_apis_rules_before_start_up() {
        let config = |email: &str, password: &str| {
            Config::from_map(&vars(&[
                ("APP_ENV", "development"),
                ("DATABASE_URL", "postgres://localhost/db"),
                ("ADMIN_EMAIL", email),
                ("ADMIN_PASSWORD", password),
            ]))
        };
        for (email, password, named) in [
            ("admin@", "a long enough passphrase", "ADMIN_EMAIL"),
            ("admin@example.org", "short", "ADMIN_PASSWORD"),
            ("admin@example.org", "Admin@Example.org", "ADMIN_PASSWORD"),
        ] {
            let text = config(email, password).unwrap_err().to_string();
            assert!(text.contains(named), "{email} {password}: {text}");
        }
        // Spaces at a password's ends are part of it, as at login.
        let config = config(" Admin@Example.org ", "  spaced passphrase  \r\n").unwrap();
        assert_eq!(
            config.auth.admin_email.as_deref(),
            Some("admin@example.org")
        );
        assert_eq!(
            config.auth.admin_password.unwrap().expose_secret(),
            "  spaced passphrase  "
        );
    }

    #[test]
    fn settings_that_would_refuse_everything_are_refused_at_start() {
        let err = Config::from_map(&vars(&[
            ("APP_ENV", "development"),
            ("DATABASE_URL", "postgres://localhost/db"),
            ("MAX_BODY_BYTES", "0"),
            ("MAX_UPLOAD_BYTES", "0"),
            ("DB_ACQUIRE_TIMEOUT_SECS", "0"),
            ("ACCESS_TOKEN_TTL_SECS", "0"),
            ("LOGIN_MAX_FAILURES", "0"),
            ("DB_MAX_CONNECTIONS", "0"),
            (
                "CORS_ORIGINS",
                "https://app.example.org/, app.example.org, https://App.Example.org, https://ok.example.org:8443",
            ),
        ]))
        .unwrap_err();
        let text = err.to_string();
        for key in [
            "MAX_BODY_BYTES",
            "MAX_UPLOAD_BYTES",
            "DB_ACQUIRE_TIMEOUT_SECS",
            "ACCESS_TOKEN_TTL_SECS",
            "LOGIN_MAX_FAILURES",
            "DB_MAX_CONNECTIONS",
            "`https://app.example.org/`",
            "`app.example.org`",
            "`https://App.Example.org`",
        ] {
            assert!(text.contains(key), "{key} missing from: {text}");
        }
        assert!(!text.contains("ok.example.org"), "{text}");
        let config = Config::from_map(&vars(&[
            ("APP_ENV", "development"),
            ("DATABASE_URL", "postgres://localhost/db"),
            (
                "CORS_ORIGINS",
                "*, http://localhost:5173, capacitor://localhost, http://[::1]:8080",
            ),
        ]))
        .unwrap();
        assert_eq!(config.cors_origins.len(), 4);
    }

    #[test]
    fn development_accepts_a_short_secret_and_defaults_the_rest() {
        let config = Config::from_map(&vars(&[
            ("APP_ENV", "development"),
            ("DATABASE_URL", "postgres://localhost/db"),
        ]))
        .unwrap();
        assert_eq!(config.db.max_connections, 100);
        assert_eq!(config.migration_database_url(), "postgres://localhost/db");
        assert_eq!(config.attendance.timezone, chrono_tz::Africa::Kigali);
        assert_eq!(config.rate_limits.auth.burst, 5);
        assert_eq!(config.bind_addr.port(), 8080);
    }

    #[test]
    fn secrets_do_not_appear_in_debug_output() {
        let config = Config::from_map(&vars(&[
            (
                "DATABASE_URL",
                "postgres://user:hunter2-password@localhost/db",
            ),
            (
                "JWT_SECRET",
                "a-very-long-signing-secret-of-more-than-32-bytes",
            ),
        ]))
        .unwrap();
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter2"));
        assert!(!debug.contains("a-very-long-signing-secret"));
    }

    #[test]
    fn production_refuses_a_placeholder_secret_and_settings_that_refuse_everything() {
        for (key, value) in [
            ("JWT_SECRET", "change-me-to-at-least-32-random-bytes"),
            ("JWT_SECRET", "abababababababababababababababab"),
            ("MAX_SHIFT_HOURS", "0"),
            ("MAX_SHIFT_HOURS", "10000000000"),
            ("REQUEST_TIMEOUT_SECS", "0"),
            ("SYNC_MAX_BATCH", "0"),
        ] {
            let mut env = vars(&[
                ("APP_ENV", "production"),
                ("DATABASE_URL", "postgres://localhost/db"),
                ("JWT_SECRET", "Xq7pL2vR9mK4tW8zN3bF6hJ1cD5gS0yA"),
            ]);
            env.insert(key.into(), value.into());
            let err = Config::from_map(&env).unwrap_err().to_string();
            assert!(err.contains(key), "{key}={value}: {err}");
        }
        let env = vars(&[
            ("APP_ENV", "production"),
            ("DATABASE_URL", "postgres://localhost/db"),
            ("JWT_SECRET", "Xq7pL2vR9mK4tW8zN3bF6hJ1cD5gS0yA"),
        ]);
        assert!(Config::from_map(&env).is_ok());
    }

    #[test]
    fn rate_quotas_parse_with_units() {
        assert_eq!("100/15m".parse::<RateQuota>().unwrap(), quota(100, 900));
        assert_eq!("5/30s".parse::<RateQuota>().unwrap(), quota(5, 30));
        assert!("0/1m".parse::<RateQuota>().is_err());
        assert!("ten/1m".parse::<RateQuota>().is_err());
        assert!("10/1d".parse::<RateQuota>().is_err());
    }
}
