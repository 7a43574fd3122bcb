//! No password, hash, token or `Authorization` header ever reaches a log line, even at debug.
//!
//! A test binary of its own: it installs the process-wide log subscriber.

#[allow(dead_code)]
#[path = "api/helpers.rs"]
mod helpers;

use field_attendance::config::{LogFormat, LogSettings};
use helpers::{TestApp, send};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn secrets_never_reach_the_logs() {
    let dir = std::env::temp_dir().join(format!("fa-logs-{}", uuid::Uuid::new_v4()));
    let guards = field_attendance::telemetry::init(
        &LogSettings {
            filter: "debug,hyper=info,h2=info,reqwest=info".into(),
            format: LogFormat::Json,
            dir: Some(dir.to_string_lossy().into_owned()),
            retention_files: 2,
        },
        field_attendance::telemetry::Console::Stdout,
    )
    .unwrap();

    let app = TestApp::spawn_with(|env| {
        env.insert("LOG_LEVEL".into(), "debug".into());
    })
    .await;
    let facility = app.facility().await;
    let password = "Sup3r-Secret-Passphrase!";
    let (status, _) = send(app.post("/api/auth/register").json(&json!({
        "email": "logged@example.org", "password": password, "first_name": "L", "last_name": "G",
        "facility_id": facility,
    })))
    .await;
    assert_eq!(status, StatusCode::CREATED);
    sqlx::query("UPDATE users SET status = 'active' WHERE email = 'logged@example.org'")
        .execute(&app.db)
        .await
        .unwrap();
    let (status, login) = app.login("logged@example.org", password).await;
    assert_eq!(status, StatusCode::OK);
    let access = login["access_token"].as_str().unwrap().to_string();
    let refresh = login["refresh_token"].as_str().unwrap().to_string();
    let (status, _) = send(app.get("/api/users/me").bearer_auth(&access)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = send(
        app.post("/api/auth/refresh")
            .json(&json!({"refresh_token": refresh})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    app.login("logged@example.org", "a-wrong-password-attempt")
        .await;
    let hash: String =
        sqlx::query_scalar("SELECT password_hash FROM users WHERE email = 'logged@example.org'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    drop(app);
    drop(guards); // flushes the file writer

    let mut logs = String::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        logs.push_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap());
    }
    assert!(
        logs.contains("request finished"),
        "the log captured requests"
    );
    for secret in [
        password,
        "a-wrong-password-attempt",
        access.as_str(),
        refresh.as_str(),
        hash.as_str(),
    ] {
        assert!(!logs.contains(secret), "a secret reached the logs");
    }
    assert!(
        !logs.to_lowercase().contains("bearer "),
        "an Authorization header reached the logs"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
