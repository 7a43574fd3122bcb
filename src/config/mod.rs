//! Typed configuration, read once at start-up from the environment (and an optional `.env`).
//!
//! Every variable is checked before anything starts, and all problems are reported together so
//! an operator fixes a deployment in one round trip instead of one variable per restart.

mod reader;
mod sections;
pub use sections::is_a_sample;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use chrono_tz::Tz;
use secrecy::{ExposeSecret, SecretString};

use reader::Reader;

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

#[derive(Debug, Clone)]
pub struct RateLimits {
    pub enabled: bool,
    pub api: RateQuota,
    pub auth: RateQuota,
    pub upload: RateQuota,
    pub sync: RateQuota,
    /// Whose `X-Forwarded-For` gives the client address.
    pub trust_proxy: TrustProxy,
}

/// Whose `X-Forwarded-For` is believed: `TRUST_PROXY`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustProxy {
    /// No one's (`false`): the peer is the client.
    Nobody,
    /// Any peer's (`true`): for a service that only its proxy can reach.
    Anyone,
    /// Only these peers' (the proxies' addresses or networks, comma-separated): a client that
    /// reaches the service directly cannot choose its own address.
    Peers(Vec<ipnet::IpNet>),
}

impl TrustProxy {
    /// Whether a request from `peer` may say where it came from.
    pub fn trusts(&self, peer: Option<std::net::IpAddr>) -> bool {
        match self {
            Self::Nobody => false,
            Self::Anyone => true,
            Self::Peers(nets) => peer
                .map(|ip| ip.to_canonical())
                .is_some_and(|ip| nets.iter().any(|net| net.contains(&ip))),
        }
    }
}

#[derive(Debug, Clone)]
pub struct DbSettings {
    /// Application traffic; may point at PgBouncer in transaction mode.
    pub url: SecretString,
    /// Migrations and database creation, always direct to Postgres.
    pub migration_url: SecretString,
    /// The variable `migration_url` came from, as messages name it.
    pub migration_url_from: &'static str,
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

/// The largest `MAX_SHIFT_HOURS`, and so the longest a closed shift can be under any
/// configuration: one longer is stored `incomplete`.
pub const LONGEST_SHIFT_HOURS: u64 = 72;

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

impl AttendanceSettings {
    /// The window a clock time must fall in, for online clock-ins and -outs and for sync.
    pub fn time_rules(&self) -> crate::domain::attendance::TimeRules {
        crate::domain::attendance::TimeRules {
            future_tolerance: self.future_tolerance,
            max_age: self.max_age,
        }
    }
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
    /// How long a client may take to send a request's line and headers, or leave a kept-alive
    /// connection idle, before the connection is closed: longer than a proxy in front keeps an
    /// idle connection to the service (60 s for nginx upstreams and AWS load balancers), so that
    /// the proxy closes it first and never sends a request down one the service is closing.
    pub idle_timeout: Duration,
    /// A facility import's request, its upload included: an admin's file may come over a slow
    /// link.
    pub upload_timeout: Duration,
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

impl Config {
    /// Reads the process environment (`main` loads `.env` into it first, when one exists).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&|key| std::env::var(key).ok())
    }

    /// Reads configuration from a map, as tests and tools do.
    pub fn from_map(vars: &HashMap<String, String>) -> Result<Self, ConfigError> {
        Self::from_lookup(&|key| vars.get(key).cloned())
    }

    /// Configuration for a one-off command (`migrate`, `seed`, `create-admin`,
    /// `import-facilities`): none signs a token, so `JWT_SECRET` may be left out, a stand-in
    /// taking its place; one given is checked as for `serve`.
    pub fn for_command(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let stand_in = sections::random_secret();
        Self::from_lookup(&|key| {
            // Set but empty, as in an `.env` template, is unset.
            let value = lookup(key).filter(|v| !v.trim().is_empty());
            value.or_else(|| (key == "JWT_SECRET").then(|| stand_in.clone()))
        })
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

        let config = Config {
            env,
            bind_addr,
            run_migrations: r.bool("RUN_MIGRATIONS", true),
            seed_on_start: r.bool("SEED_ON_START", true),
            db: sections::db(&mut r),
            log: sections::log(&mut r, dev),
            auth: sections::auth(&mut r, dev),
            cors_origins: sections::cors_origins(&mut r),
            max_body_bytes: r.ranged("MAX_BODY_BYTES", 1024 * 1024usize, 1024..=64 << 20),
            max_upload_bytes: r.ranged("MAX_UPLOAD_BYTES", 10 * 1024 * 1024usize, 1024..=1 << 30),
            request_timeout: Duration::from_secs(r.ranged("REQUEST_TIMEOUT_SECS", 30, 1..=3600)),
            upload_timeout: Duration::from_secs(r.ranged("UPLOAD_TIMEOUT_SECS", 300, 1..=3600)),
            idle_timeout: Duration::from_secs(r.ranged("IDLE_TIMEOUT_SECS", 90, 1..=3600)),
            rate_limits: sections::rate_limits(&mut r),
            attendance: sections::attendance(&mut r),
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
