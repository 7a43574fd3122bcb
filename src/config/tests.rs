use super::sections::quota;
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
        ("DB_IDLE_TIMEOUT_SECS", "0"),
        ("ACCESS_TOKEN_TTL_SECS", "0"),
        ("LOGIN_MAX_FAILURES", "0"),
        ("DB_MAX_CONNECTIONS", "0"),
        ("MAX_CONCURRENT_HASHES", "0"),
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
        "DB_IDLE_TIMEOUT_SECS",
        "ACCESS_TOKEN_TTL_SECS",
        "LOGIN_MAX_FAILURES",
        "DB_MAX_CONNECTIONS",
        "MAX_CONCURRENT_HASHES",
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
    // A failure to migrate then names the variable used, and the one to set.
    assert!(
        config
            .db
            .migration_url_from
            .starts_with("DATABASE_URL (MIGRATION_DATABASE_URL is unset"),
        "{}",
        config.db.migration_url_from
    );
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
        ("IDLE_TIMEOUT_SECS", "0"),
        ("SYNC_MAX_BATCH", "0"),
        ("METRICS_TOKEN", "prometheus"),
        ("LOG_RETENTION_DAYS", "0"),
        ("CLOCK_FUTURE_TOLERANCE_SECS", "18446744073709551615"),
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
    // A period too long to count is refused, not wrapped round to a short one.
    for too_long in ["100/5124095576030432h", "1/6000000h"] {
        let refused = too_long.parse::<RateQuota>().unwrap_err();
        assert!(refused.contains("longer than"), "{refused}");
    }
}

#[test]
fn trust_proxy_is_off_on_or_the_proxies_addresses() {
    let trust = |value: &str| {
        Config::from_map(&vars(&[
            ("APP_ENV", "development"),
            ("DATABASE_URL", "postgres://localhost/db"),
            ("TRUST_PROXY", value),
        ]))
        .map(|c| c.rate_limits.trust_proxy)
    };
    let ip = |s: &str| Some(s.parse::<std::net::IpAddr>().unwrap());
    assert_eq!(trust("false").unwrap(), TrustProxy::Nobody);
    assert!(!trust("false").unwrap().trusts(ip("10.0.0.1")));
    assert!(trust("TRUE").unwrap().trusts(ip("203.0.113.9")));
    let peers = trust(" 10.0.0.5, 172.16.0.0/12,fd00::/8 ").unwrap();
    for (peer, trusted) in [
        ("10.0.0.5", true),
        ("10.0.0.6", false),
        ("172.31.255.1", true),
        ("fd12::1", true),
        // The same IPv4 proxy, seen by a listener bound to an IPv6 address.
        ("::ffff:10.0.0.5", true),
        ("203.0.113.9", false),
    ] {
        assert_eq!(peers.trusts(ip(peer)), trusted, "{peer}");
    }
    assert!(!peers.trusts(None));
    for bad in ["maybe", "10.0.0.300", "10.0.0.0/33", ","] {
        let text = trust(bad).unwrap_err().to_string();
        assert!(text.contains("TRUST_PROXY"), "{bad}: {text}");
    }
}

#[test]
fn a_one_off_command_needs_no_signing_secret_but_checks_one_given() {
    let production = [
        ("APP_ENV", "production"),
        ("DATABASE_URL", "postgres://localhost/app"),
    ];
    let err = Config::from_map(&vars(&production)).unwrap_err();
    assert!(err.to_string().contains("JWT_SECRET"), "{err}");
    let mut map = vars(&production);
    let config = Config::for_command(&|key| map.get(key).cloned()).unwrap();
    assert!(config.auth.jwt_secret.expose_secret().len() >= 32);
    // Left empty, as in an `.env` template.
    map.insert("JWT_SECRET".into(), String::new());
    assert!(Config::for_command(&|key| map.get(key).cloned()).is_ok());
    let mut map = vars(&production);
    map.insert("JWT_SECRET".into(), "short".into());
    let err = Config::for_command(&|key| map.get(key).cloned()).unwrap_err();
    assert!(err.to_string().contains("JWT_SECRET"), "{err}");
}

#[test]
fn a_smaller_pool_alone_keeps_a_smaller_minimum() {
    let config = |pairs: &[(&str, &str)]| {
        let mut all = vec![
            ("APP_ENV", "development"),
            ("DATABASE_URL", "postgres://localhost/db"),
        ];
        all.extend_from_slice(pairs);
        Config::from_map(&vars(&all))
    };
    let small = config(&[("DB_MAX_CONNECTIONS", "10")]).unwrap();
    assert_eq!(
        (small.db.min_connections, small.db.max_connections),
        (10, 10)
    );
    let default = config(&[]).unwrap();
    assert_eq!(
        (default.db.min_connections, default.db.max_connections),
        (20, 100)
    );
    // Both set, and at odds: named.
    let text = config(&[("DB_MAX_CONNECTIONS", "10"), ("DB_MIN_CONNECTIONS", "12")])
        .unwrap_err()
        .to_string();
    assert!(text.contains("DB_MIN_CONNECTIONS"), "{text}");
}
