//! Health, readiness, the error envelope and the headers every response carries.

use reqwest::StatusCode;

use std::time::{Duration, Instant};

use field_attendance::config::Config;
use field_attendance::startup::Application;

use crate::helpers::{
    ADMIN_EMAIL, ADMIN_PASSWORD, FlakyProxy, TestApp, assert_error, assert_invalid, send,
};

#[tokio::test]
async fn health_answers_ok() {
    let app = TestApp::spawn().await;
    let (status, body) = send(app.get("/health")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, serde_json::json!({"status": "ok"}));
}

/// A connection to the service kept alive after one request answered in full.
async fn kept_alive_after_one_request(app: &TestApp) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut connection = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    connection
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = [0u8; 1024];
    let read = connection.read(&mut answer).await.unwrap();
    assert!(answer[..read].starts_with(b"HTTP/1.1 200"));
    connection
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_or_stays_idle_is_cut_off_after_the_idle_timeout()
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let app = TestApp::spawn_with(|env| {
        env.insert("IDLE_TIMEOUT_SECS".into(), "1".into());
    })
    .await;
    // Headers begun and never finished, as a client holding sockets open would send them.
    let mut stalled = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    stalled
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: ")
        .await
        .unwrap();
    // A kept-alive connection that asked once and then nothing more.
    let mut idle = kept_alive_after_one_request(&app).await;

    for (which, stream) in [("stalled", &mut stalled), ("idle", &mut idle)] {
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest))
            .await
            .unwrap_or_else(|_| panic!("the {which} connection was still open after 10 s"));
        // Closed (or reset) with nothing more sent.
        if closed.is_ok() {
            assert!(
                rest.is_empty(),
                "the {which} connection got an answer: {rest:?}"
            );
        }
    }
    // Serving goes on for everyone else.
    let (status, _) = send(app.get("/health")).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn at_shutdown_a_request_in_flight_is_answered_while_idle_connections_close_and_no_new_one_is_taken()
 {
    use tokio::io::AsyncReadExt;

    let mut app = TestApp::spawn().await;
    let admin = app.admin().await;
    let facility = app.facility().await;
    // A kept-alive connection, idle after one request.
    let mut idle = kept_alive_after_one_request(&app).await;
    // An edit in flight, waiting on the facility's row.
    let mut holder = app.db.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM facilities WHERE id = $1 FOR UPDATE")
        .bind(facility)
        .execute(&mut *holder)
        .await
        .unwrap();
    let edit = tokio::spawn(send(
        app.patch(&format!("/api/facilities/{facility}"))
            .bearer_auth(&admin.token)
            .json(&serde_json::json!({"name": "Renamed at shutdown"})),
    ));
    app.until_waiting_on_locks(1, "the edit waits on the facility")
        .await;

    app.signal_shutdown();

    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the idle connection is closed at once");
    assert!(rest.is_empty(), "{rest:?}");
    let refused = tokio::time::timeout(Duration::from_secs(5), async {
        while tokio::net::TcpStream::connect(app.addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(refused.is_ok(), "no new connection is taken");
    // The service waits for the edit, which is answered once its row is free.
    assert!(!app.stopped_within(Duration::from_millis(300)).await);
    holder.commit().await.unwrap();
    let (status, body) = edit.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["name"], "Renamed at shutdown");
    assert!(app.stopped_within(Duration::from_secs(10)).await);
}

#[tokio::test]
async fn the_system_report_counts_the_rows_of_every_table() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let (status, body) = send(app.get("/api/admin/system").bearer_auth(&admin.token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut reported: Vec<String> = body["row_counts"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    reported.sort();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT tablename::text FROM pg_tables
         WHERE schemaname = current_schema() AND tablename <> '_sqlx_migrations'
         ORDER BY tablename",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(reported, tables);
    assert_eq!(body["row_counts"]["users"], 1, "the admin");
}

#[tokio::test]
async fn ready_turns_503_while_the_database_is_away_and_recovers_by_itself() {
    let (proxy, app) = TestApp::spawn_through_proxy(|env| {
        env.insert("DB_ACQUIRE_TIMEOUT_SECS".into(), "1".into());
    })
    .await;

    let (status, _) = send(app.get("/ready")).await;
    assert_eq!(status, StatusCode::OK);

    proxy.cut();
    let (status, body) = send(app.get("/ready")).await;
    assert_error(
        status,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    );
    // Liveness does not depend on the database.
    let (status, _) = send(app.get("/health")).await;
    assert_eq!(status, StatusCode::OK);

    proxy.restore();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let (status, _) = send(app.get("/ready")).await;
        if status == StatusCode::OK {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/ready did not recover"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_transaction_given_up_while_it_begins_leaves_its_connection_out_of_it() {
    let app = TestApp::spawn().await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&app.test_db.url())
        .await
        .unwrap();
    // A `BEGIN` that answers late, as one waiting behind a PgBouncer whose server connections
    // are all busy, given up (the request's time limit, or its client gone) before it does.
    let late = field_attendance::db::begin_with(&pool, "BEGIN; SELECT pg_sleep(0.3)");
    assert!(
        tokio::time::timeout(Duration::from_millis(50), late)
            .await
            .is_err()
    );
    // The next request on the pool's one connection writes, and is answered: its write is
    // committed, not held (and later rolled back) in the transaction given up.
    let mut next = pool.acquire().await.unwrap();
    sqlx::query("CREATE TABLE written_after (id int)")
        .execute(&mut *next)
        .await
        .unwrap();
    drop(next);
    let committed: bool = sqlx::query_scalar("SELECT to_regclass('written_after') IS NOT NULL")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert!(committed, "the write ran inside the transaction given up");
    pool.close().await;
}

#[tokio::test]
async fn a_service_whose_pool_is_all_busy_is_still_ready() {
    let app = TestApp::spawn_with(|env| {
        env.insert("DB_MAX_CONNECTIONS".into(), "2".into());
    })
    .await;
    // Every connection of the pool in use, as under a burst of requests.
    let held = [
        app.service_pool.acquire().await.unwrap(),
        app.service_pool.acquire().await.unwrap(),
    ];
    let (status, body) = send(app.get("/ready")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "ready");
    drop(held);
}

#[tokio::test]
async fn the_service_waits_at_start_for_a_database_that_comes_up_later() {
    // Postgres refuses every connection for the first two seconds, as while a machine boots.
    let proxy = FlakyProxy::start(crate::helpers::postgres_addr()).await;
    proxy.cut();
    let (test_db, env) = TestApp::env_through(&proxy, |env| {
        env.insert("RUN_MIGRATIONS".into(), "true".into());
        env.insert("DB_STARTUP_WAIT_SECS".into(), "30".into());
    })
    .await;
    let comes_up = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        proxy.restore();
    };
    let starts = async {
        let started = Instant::now();
        let app = TestApp::spawn_on(test_db, env).await;
        (app, started.elapsed())
    };
    let ((app, took), ()) = tokio::join!(starts, comes_up);
    assert!(
        took >= Duration::from_secs(2),
        "the service started before the database answered ({took:?})"
    );

    // Migrated, seeded and serving.
    let (status, _) = send(app.get("/ready")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = app.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn the_service_gives_up_on_a_database_that_stays_away_and_says_why() {
    let proxy = FlakyProxy::start(crate::helpers::postgres_addr()).await;
    proxy.cut();
    let (_test_db, env) = TestApp::env_through(&proxy, |env| {
        env.insert("DB_STARTUP_WAIT_SECS".into(), "1".into());
    })
    .await;
    let config = Config::from_map(&env).unwrap();
    let started = Instant::now();
    let err = Application::build(config)
        .await
        .err()
        .expect("the service does not start without its database");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "it tried for the whole second"
    );
    let message = format!("{err:#}");
    assert!(
        message.contains("DATABASE_URL did not answer within 1 s (DB_STARTUP_WAIT_SECS)"),
        "{message}"
    );
}

/// Starts a service on `database_url` (30 s of patience for a database not up yet), which must
/// refuse to start well within that; its error, with its causes.
async fn refused_at_once(database_url: &str) -> String {
    let mut env = crate::helpers::test_env(database_url);
    env.insert("DB_STARTUP_WAIT_SECS".into(), "30".into());
    let config = Config::from_map(&env).unwrap();
    let started = Instant::now();
    let err = Application::build(config)
        .await
        .err()
        .expect("the service does not start");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "no waiting for a refusal that will not change ({:?})",
        started.elapsed()
    );
    format!("{err:#}")
}

#[test]
fn a_dot_env_file_with_a_bad_line_stops_the_command_naming_it() {
    let dir = std::env::temp_dir().join(format!("fa-dotenv-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |contents: &str| {
        std::fs::write(dir.join(".env"), contents).unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_field-attendance"))
            .arg("openapi")
            .current_dir(&dir)
            .output()
            .unwrap()
    };
    // The unquoted spaces would drop this line and every line after it.
    let refused = run("LOG_LEVEL=warn\nADMIN_PASSWORD=my secret phrase\nRATE_LIMIT_AUTH=5/15m\n");
    let quoted = run("LOG_LEVEL=warn\nADMIN_PASSWORD=\"my secret phrase\"\n");
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains(".env"), "{stderr}");
    assert!(!stderr.contains("secret"), "never its value: {stderr}");
    assert!(refused.stdout.is_empty());
    assert!(
        quoted.status.success(),
        "{}",
        String::from_utf8_lossy(&quoted.stderr)
    );
}

#[tokio::test]
async fn a_database_url_whose_login_is_refused_stops_start_up_at_once_naming_it() {
    let test_db = crate::helpers::TestDb::new().await;
    let message = refused_at_once(&format!(
        "postgres://no_such_role@{}/{}",
        crate::helpers::postgres_addr(),
        test_db.name
    ))
    .await;
    assert!(
        message.contains("the database at DATABASE_URL refused the connection"),
        "{message}"
    );
}

#[tokio::test]
async fn seeding_a_database_that_was_never_migrated_stops_start_up_saying_to_migrate() {
    let empty = crate::helpers::TestDb::empty().await;
    // RUN_MIGRATIONS=false, SEED_ON_START=true.
    let message = refused_at_once(&empty.url()).await;
    assert!(
        message.contains("lacks this build's migrations")
            && message.contains("field-attendance migrate"),
        "{message}"
    );
}

#[tokio::test]
async fn a_database_session_ended_by_the_server_is_a_503() {
    // The profile update waits on the row the test holds; the server then ends its session
    // (as a restart or a failover would).
    let app = TestApp::spawn().await;
    let user = app.user("focal", None).await;
    let mut holder = app.db.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM users WHERE id = $1 FOR UPDATE")
        .bind(user.id)
        .execute(&mut *holder)
        .await
        .unwrap();
    let end_it = async {
        app.until_waiting_on_rows(1, "the update waits on the held row")
            .await;
        sqlx::query(
            "SELECT pg_terminate_backend(a.pid) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
             WHERE l.locktype = 'transactionid' AND NOT l.granted
               AND a.datname = current_database()",
        )
        .execute(&app.db)
        .await
        .unwrap();
    };
    let ((status, body), ()) = tokio::join!(
        send(
            app.patch("/api/users/me")
                .bearer_auth(&user.token)
                .json(&serde_json::json!({"first_name": "Later"}))
        ),
        end_it
    );
    assert_error(
        status,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    );
    holder.rollback().await.unwrap();
    let (status, me) = send(app.get("/api/users/me").bearer_auth(&user.token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["first_name"], "Test");
}

#[tokio::test]
async fn an_unknown_route_is_a_404_envelope() {
    let app = TestApp::spawn().await;
    let (status, body) = send(app.get("/api/no-such-thing")).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn a_wrong_method_is_a_405_envelope() {
    let app = TestApp::spawn().await;
    let (status, body) = send(app.delete("/health")).await;
    assert_error(
        status,
        &body,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );
}

#[tokio::test]
async fn every_response_carries_the_security_headers_and_a_request_id() {
    let app = TestApp::spawn().await;
    for path in ["/health", "/api/missing"] {
        let response = app.get(path).send().await.unwrap();
        let h = response.headers();
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["x-frame-options"], "DENY", "{path}");
        assert_eq!(h["referrer-policy"], "no-referrer", "{path}");
        assert!(
            h["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("default-src 'none'")
        );
        assert!(!h["x-request-id"].is_empty(), "{path}");
        assert!(
            h["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json")
        );
    }
}

#[tokio::test]
async fn a_request_id_sent_by_the_client_is_echoed_in_header_and_error_body() {
    let app = TestApp::spawn().await;
    let response = app
        .get("/api/missing")
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "trace-me-42");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["request_id"], "trace-me-42");
    // One that could not be a request id is replaced, in the header and the body alike.
    for sent in ["x".repeat(129), "has spaces in it".to_string()] {
        let response = app
            .get("/api/missing")
            .header("x-request-id", &sent)
            .send()
            .await
            .unwrap();
        let echoed = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_string();
        assert_ne!(echoed, sent);
        assert!(uuid::Uuid::parse_str(&echoed).is_ok(), "{echoed}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["request_id"], echoed.as_str());
    }
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_status() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    send(app.get("/health")).await;
    // Two users that do not exist: one series for the route, not one for each id asked for.
    let ids = [uuid::Uuid::new_v4(), uuid::Uuid::new_v4()];
    for id in ids {
        let (status, _) = send(
            app.get(&format!("/api/users/{id}"))
                .bearer_auth(&admin.token),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    let text = app.metrics(&admin).await;
    assert!(
        text.lines().any(|l| l.starts_with("http_requests_total")
            && l.contains(r#"route="/health""#)
            && l.contains(r#"status="200""#)),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.starts_with("http_requests_total")
            && l.contains(r#"route="/api/users/{id}""#)
            && l.contains(r#"status="404""#)),
        "{text}"
    );
    for id in ids {
        assert!(!text.contains(&id.to_string()), "{id} in {text}");
    }
    // The latency targets (30 ms, 100 ms, 150 ms) are bucket edges: counted, not interpolated.
    for edge in ["0.03", "0.1", "0.15"] {
        assert!(
            text.lines()
                .any(|l| l.starts_with("http_request_duration_seconds_bucket")
                    && l.contains(&format!(r#"le="{edge}""#))),
            "{edge}: {text}"
        );
    }
    assert!(text.contains("db_pool_connections"));
}

#[tokio::test]
async fn invented_methods_are_counted_as_other_not_one_series_each() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    for name in ["BREWCOFFEE", "WHENCE"] {
        let method = reqwest::Method::from_bytes(name.as_bytes()).unwrap();
        send(app.request(method, "/health")).await;
    }
    let text = app.metrics(&admin).await;
    assert!(
        !text.contains("BREWCOFFEE") && !text.contains("WHENCE"),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.starts_with("http_requests_total")
            && l.contains(r#"method="OTHER""#)
            && l.contains(r#"route="/health""#)),
        "{text}"
    );
}

#[tokio::test]
async fn metrics_are_for_admins_and_for_prometheus_with_the_metrics_token() {
    let token = "prometheus-scrape-token-0123456789";
    let app = TestApp::spawn_with(|env| {
        env.insert("METRICS_TOKEN".into(), token.into());
    })
    .await;
    let admin = app.admin().await;
    let supervisor = app.user("supervisor", None).await;
    let (status, body) = send(app.get("/metrics")).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthenticated");
    let (status, body) = send(app.get("/metrics").bearer_auth("not-the-token")).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "invalid_token");
    let (status, body) = send(app.get("/metrics").bearer_auth(&supervisor.token)).await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    for bearer in [token, admin.token.as_str()] {
        let response = app
            .get("/metrics")
            .bearer_auth(bearer)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(
            response
                .text()
                .await
                .unwrap()
                .contains("http_requests_total")
        );
    }
    // The scheme's case is the scraper's choice, as it is for everyone else.
    let response = app
        .get("/metrics")
        .header("authorization", format!("bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_docs_and_the_spec_are_served() {
    let app = TestApp::spawn().await;
    let (status, spec) = send(app.get("/api-docs/openapi.json")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(spec["openapi"].as_str().unwrap().starts_with("3.1"));
    // The served document is the one the code generates (and openapi.yaml is checked against).
    assert_eq!(
        spec,
        serde_json::to_value(field_attendance::openapi::spec()).unwrap()
    );
    assert!(spec["paths"]["/api/attendance/clock-in"]["post"]["responses"]["503"].is_object());
    let response = app.get("/docs/").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.text().await.unwrap().contains("swagger"));
}

#[tokio::test]
async fn malformed_json_is_a_400_envelope() {
    let app = TestApp::spawn().await;
    let (status, body) = send(
        app.post("/api/auth/login")
            .header("content-type", "application/json")
            .body(r#"{"email": "a@b.org", "password": "#),
    )
    .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
}

#[tokio::test]
async fn what_follows_a_json_body_is_malformed_not_ignored() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let login = format!(r#"{{"email": "{ADMIN_EMAIL}", "password": "{ADMIN_PASSWORD}"}}"#);
    for trailing in [r#"{"role": "admin"}"#, "garbage", "]"] {
        let (status, body) = send(
            app.post("/api/auth/login")
                .header("content-type", "application/json")
                .body(format!("{login} {trailing}")),
        )
        .await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
    }
    let (status, body) = send(
        app.post("/api/users")
            .bearer_auth(&admin.token)
            .header("content-type", "application/json")
            .body(
                r#"{"email": "tail@test.example", "password": "a long enough passphrase", "first_name": "Tail", "last_name": "End", "role": "supervisor"}{"role": "admin"}"#,
            ),
    )
    .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM users WHERE email = 'tail@test.example'")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(n, 0);
    // Whitespace after the body is still a body.
    let (status, body) = send(
        app.post("/api/auth/login")
            .header("content-type", "application/json")
            .body(format!("{login} \r\n\t ")),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn a_wrong_content_type_is_a_400_envelope() {
    let app = TestApp::spawn().await;
    let (status, body) = send(
        app.post("/api/auth/login")
            .header("content-type", "text/plain")
            .body(r#"{"email": "a@b.org", "password": "x"}"#),
    )
    .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
}

#[tokio::test]
async fn an_oversized_body_is_a_413_envelope() {
    let app = TestApp::spawn().await;
    let big = format!(
        r#"{{"email": "a@b.org", "password": "{}"}}"#,
        "x".repeat(2 * 1024 * 1024)
    );
    let (status, body) = send(
        app.post("/api/auth/login")
            .header("content-type", "application/json")
            .body(big),
    )
    .await;
    assert_error(
        status,
        &body,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );
}

#[tokio::test]
async fn an_oversized_body_sent_in_chunks_without_a_length_is_a_413_envelope_too() {
    let app = TestApp::spawn().await;
    let user = app.user("focal", None).await;
    // 2 MiB of a sync batch, in 64 KiB chunks, with no Content-Length to refuse it by.
    let chunks = (0..32).map(|i| {
        let chunk = if i == 0 {
            format!(r#"{{"device_id": "{}"#, "x".repeat(64 * 1024))
        } else {
            "x".repeat(64 * 1024)
        };
        Ok::<_, std::io::Error>(chunk)
    });
    let (status, body) = send(
        app.post("/api/sync/push")
            .bearer_auth(&user.token)
            .header("content-type", "application/json")
            .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks))),
    )
    .await;
    assert_error(
        status,
        &body,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );
}

#[tokio::test]
async fn a_well_formed_body_of_the_wrong_shape_is_a_422_naming_the_field() {
    let app = TestApp::spawn().await;
    let (status, body) = send(
        app.post("/api/auth/login")
            .json(&serde_json::json!({"email": "a@b.org", "password": "x", "remember_me": true})),
    )
    .await;
    assert_invalid(status, &body, "remember_me");
    let (status, body) = send(
        app.post("/api/auth/login")
            .json(&serde_json::json!({"email": 42})),
    )
    .await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
}

#[tokio::test]
async fn a_bad_path_parameter_is_a_400_envelope() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let (status, body) = send(app.get("/api/users/not-a-uuid").bearer_auth(&admin.token)).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
}

#[tokio::test]
async fn an_error_for_a_client_accepting_gzip_is_still_readable_json() {
    let app = TestApp::spawn().await;
    let response = app
        .get("/api/no-such-thing")
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let encoding = response
        .headers()
        .get("content-encoding")
        .map(|v| v.to_str().unwrap().to_string());
    let bytes = response.bytes().await.unwrap();
    // Either really compressed, or plain and labelled plain: never plain labelled gzip.
    if encoding.as_deref() != Some("gzip") {
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body["error"]["code"], "not_found");
    } else {
        assert_eq!(&bytes[..2], &[0x1f, 0x8b]);
    }
}

#[tokio::test]
async fn an_admin_tool_in_a_browser_passes_cors_and_reads_an_exports_name() {
    let app = TestApp::spawn_with(|env| {
        env.insert("CORS_ORIGINS".into(), "https://admin.example".into());
        env.insert("RATE_LIMIT_ENABLED".into(), "true".into());
        env.insert("RATE_LIMIT_API".into(), "1/15m".into());
    })
    .await;
    let supervisor = app.user("supervisor", None).await;
    let preflight = |origin: &str| {
        app.request(reqwest::Method::OPTIONS, "/api/attendance/export")
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization")
            .send()
    };
    // The preflight needs no token and spends no budget, however many there are.
    for _ in 0..3 {
        let response = preflight("https://admin.example").await.unwrap();
        assert!(response.status().is_success(), "{}", response.status());
        assert_eq!(
            response.headers()["access-control-allow-origin"],
            "https://admin.example"
        );
    }
    let elsewhere = preflight("https://evil.example").await.unwrap();
    assert!(
        !elsewhere
            .headers()
            .contains_key("access-control-allow-origin")
    );
    // The workbook comes as it is (a zip already), its name readable by the page.
    let response = app
        .get("/api/attendance/export?format=xlsx")
        .bearer_auth(&supervisor.token)
        .header("origin", "https://admin.example")
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let exposed = response.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(exposed.contains("content-disposition"), "{exposed}");
    assert!(!response.headers().contains_key("content-encoding"));
    let bytes = response.bytes().await.unwrap();
    assert_eq!(&bytes[..2], b"PK");
}

#[tokio::test]
async fn a_page_past_the_end_still_counts_every_match() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let worker = app.user("focal", None).await;
    let facility = app.facility().await;
    for day in 1..=3 {
        let start = chrono::Utc::now() - chrono::Duration::days(day);
        app.insert_attendance(
            worker.id,
            facility,
            start,
            Some(start + chrono::Duration::hours(1)),
            "closed",
        )
        .await;
    }
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(
            b"name,code,latitude,longitude,council_name\nA,A-1,-1.9,30.1,Gasabo\n".to_vec(),
        )
        .file_name("f.csv"),
    );
    let (status, _) = send(
        app.post("/api/facilities/import")
            .bearer_auth(&admin.token)
            .multipart(form),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    for list in [
        "/api/attendance",
        "/api/facilities",
        "/api/facilities?q=a",
        "/api/facilities?near=-1.9,30.1&radius_m=100000",
        "/api/facilities/imports",
        "/api/activities",
        "/api/activities?action=facility.import",
    ] {
        let join = if list.contains('?') { '&' } else { '?' };
        let (status, first) = send(app.get(list).bearer_auth(&admin.token)).await;
        assert_eq!(status, StatusCode::OK, "{list}: {first}");
        let total = first["total"].as_i64().unwrap();
        assert!(total > 0, "{list}: {first}");
        let (status, past) = send(
            app.get(&format!("{list}{join}page=99"))
                .bearer_auth(&admin.token),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{list}: {past}");
        assert_eq!(past["data"], serde_json::json!([]), "{list}");
        assert_eq!(past["total"], total, "{list}: {past}");
    }
}

#[tokio::test]
async fn a_database_url_that_requires_tls_is_served_over_tls() {
    // Arrange: the local server has TLS on, as Debian sets Postgres up (a snake-oil certificate;
    // the GitHub workflow turns it on in its Postgres container).
    let app = TestApp::spawn().await;
    let ssl: String = sqlx::query_scalar("SHOW ssl")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(
        ssl, "on",
        "this test needs the local Postgres to accept TLS"
    );
    let url = format!("{}?sslmode=require", app.test_db.url());

    // Act
    let secure = TestApp::spawn_with(|env| {
        env.insert("DATABASE_URL".into(), url);
    })
    .await;
    let (status, _) = send(secure.get("/ready")).await;

    // Assert
    assert_eq!(status, StatusCode::OK);
    let encrypted: bool =
        sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&secure.service_pool)
            .await
            .unwrap();
    assert!(encrypted);
}

#[tokio::test]
async fn tls_that_cannot_be_agreed_stops_start_up_at_once_naming_it() {
    // A certificate no trusted authority signed (the local snake-oil one), checked as
    // `verify-full` asks.
    let test_db = crate::helpers::TestDb::new().await;
    let message = refused_at_once(&format!("{}?sslmode=verify-full", test_db.url())).await;
    assert!(
        message.contains("refused the connection") && message.contains("sslmode"),
        "{message}"
    );
}

#[tokio::test]
async fn a_sample_admin_password_stops_start_up_outside_development_before_the_database_is_touched()
{
    // The README's old example password.
    let mut env = crate::helpers::test_env("postgres://postgres@127.0.0.1:1/never_reached");
    env.insert("ADMIN_PASSWORD".into(), "change-me-now".into());
    let message = match Config::from_map(&env) {
        Err(err) => format!("{err:#}"),
        Ok(_) => panic!("the service does not make an admin with a published password"),
    };
    assert!(
        message.contains("ADMIN_PASSWORD") && message.contains("a sample value"),
        "{message}"
    );
    // In development, where the sample configuration is meant to run as it is, it is taken.
    env.insert("APP_ENV".into(), "development".into());
    assert!(Config::from_map(&env).is_ok());
}
