//! The test harness: a real service on a random port, over a fresh database of its own.
//!
//! Every test database is a copy of a template that is migrated and seeded once per migration
//! set (guarded by an advisory lock, since test binaries and processes run in parallel), and
//! is dropped when the test ends, whether it passed or panicked.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use field_attendance::config::Config;
use field_attendance::startup::Application;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::{Connection, Executor, PgConnection, PgPool};
use tokio::net::{TcpListener, TcpStream};

pub const ADMIN_EMAIL: &str = "admin@test.example";
pub const ADMIN_PASSWORD: &str = "admin-password-123";
pub const JWT_SECRET: &str = "test-secret-that-is-long-enough-for-hs256-signing";

/// The Postgres server the tests use directly (trust auth, superuser).
pub fn postgres_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_string())
}

/// The address of the Postgres server at [`postgres_url`], for a proxy in front of it.
pub fn postgres_addr() -> SocketAddr {
    use std::net::ToSocketAddrs;
    let options: sqlx::postgres::PgConnectOptions = postgres_url()
        .parse()
        .expect("TEST_DATABASE_URL is a Postgres URL");
    (options.get_host(), options.get_port())
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .expect("TEST_DATABASE_URL names a host and port a proxy can reach")
}

/// PgBouncer in transaction mode in front of the same server, when one runs.
pub fn pgbouncer_url() -> Option<String> {
    std::env::var("PGBOUNCER_URL")
        .ok()
        .filter(|u| !u.is_empty())
}

/// Skips a PgBouncer test loudly on a developer machine without PgBouncer; in CI it must run.
pub fn require_pgbouncer(test: &str) -> Option<String> {
    match pgbouncer_url() {
        Some(url) => Some(url),
        None if std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false") => {
            panic!("{test}: PGBOUNCER_URL must be set in CI")
        }
        None => {
            // Straight to the terminal: the test harness would hide `eprintln!` of a test that
            // passes.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test}: PgBouncer tests did not run (set PGBOUNCER_URL, see README)"
            );
            None
        }
    }
}

fn url_for(base: &str, db: &str) -> String {
    format!("{}/{db}", base.trim_end_matches('/'))
}

/// A database of this test's own, dropped (with FORCE) when the value is dropped.
pub struct TestDb {
    pub name: String,
}

impl TestDb {
    pub async fn new() -> Self {
        let template = template().await;
        let name = format!("fa_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = admin_conn().await;
        // Concurrent copies of one template can briefly collide; a short retry settles it.
        let mut attempts = 0;
        loop {
            match conn
                .execute(format!(r#"CREATE DATABASE "{name}" TEMPLATE "{template}""#).as_str())
                .await
            {
                Ok(_) => break,
                Err(e) if attempts < 20 => {
                    attempts += 1;
                    let _ = e;
                    tokio::time::sleep(std::time::Duration::from_millis(50 * attempts)).await;
                }
                Err(e) => panic!("cannot create test database: {e}"),
            }
        }
        Self { name }
    }

    /// An empty database (no migrations), for migration tests.
    pub async fn empty() -> Self {
        let name = format!("fa_test_{}", uuid::Uuid::new_v4().simple());
        admin_conn()
            .await
            .execute(format!(r#"CREATE DATABASE "{name}""#).as_str())
            .await
            .expect("create empty test database");
        Self { name }
    }

    pub fn url(&self) -> String {
        url_for(&postgres_url(), &self.name)
    }

    pub async fn pool(&self) -> PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(5)
            .connect(&self.url())
            .await
            .expect("connect to test database")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside any async context we can rely on (also during a panic), so the
        // database is dropped from a thread with a runtime of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Ok(mut conn) =
                    PgConnection::connect(&url_for(&postgres_url(), "postgres")).await
                {
                    let _ = conn
                        .execute(
                            format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#).as_str(),
                        )
                        .await;
                }
            });
        })
        .join();
    }
}

async fn admin_conn() -> PgConnection {
    PgConnection::connect(&url_for(&postgres_url(), "postgres"))
        .await
        .expect("Postgres must be running at TEST_DATABASE_URL (default 127.0.0.1:5432)")
}

/// The name of a migrated and seeded template database, built once per migration set.
async fn template() -> String {
    static TEMPLATE: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    TEMPLATE
        .get_or_init(|| async {
            let mut hasher = Sha256::new();
            for dir in ["migrations", "seeds"] {
                let mut entries: Vec<_> = std::fs::read_dir(dir)
                    .expect("run tests from the repository root")
                    .map(|e| e.unwrap().path())
                    .collect();
                entries.sort();
                for path in entries {
                    hasher.update(path.to_string_lossy().as_bytes());
                    hasher.update(std::fs::read(&path).unwrap());
                }
            }
            let digest = hasher.finalize();
            let name = format!(
                "fa_template_{}",
                digest[..6].iter().map(|b| format!("{b:02x}")).collect::<String>()
            );
            let mut conn = admin_conn().await;
            // Serialise template creation across test processes.
            conn.execute("SELECT pg_advisory_lock(727274)").await.unwrap();
            let exists: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                    .bind(&name)
                    .fetch_one(&mut conn)
                    .await
                    .unwrap();
            if !exists {
                // Templates of older migration sets are dropped when nobody is using them.
                let stale: Vec<String> = sqlx::query_scalar(
                    "SELECT datname::text FROM pg_database WHERE datname LIKE 'fa\\_template\\_%' AND datname <> $1",
                )
                .bind(&name)
                .fetch_all(&mut conn)
                .await
                .unwrap();
                for old in stale {
                    let _ = conn.execute(format!(r#"DROP DATABASE IF EXISTS "{old}""#).as_str()).await;
                }
                let building = format!("{name}_building");
                conn.execute(format!(r#"DROP DATABASE IF EXISTS "{building}" WITH (FORCE)"#).as_str())
                    .await
                    .unwrap();
                conn.execute(format!(r#"CREATE DATABASE "{building}""#).as_str())
                    .await
                    .unwrap();
                let url = url_for(&postgres_url(), &building);
                field_attendance::db::migrate(&url).await.expect("migrate template");
                {
                    let pool = PgPool::connect(&url).await.unwrap();
                    field_attendance::db::seed_geography(&pool).await.unwrap();
                    pool.close().await;
                }
                conn.execute(format!(r#"ALTER DATABASE "{building}" RENAME TO "{name}""#).as_str())
                    .await
                    .unwrap();
            }
            conn.execute("SELECT pg_advisory_unlock(727274)").await.unwrap();
            name
        })
        .await
        .clone()
}

/// The base configuration of a test service; tests override single variables.
pub fn test_env(database_url: &str) -> HashMap<String, String> {
    [
        ("APP_ENV", "production"),
        ("DATABASE_URL", database_url),
        ("BIND_ADDR", "127.0.0.1:0"),
        ("JWT_SECRET", JWT_SECRET),
        ("ADMIN_EMAIL", ADMIN_EMAIL),
        ("ADMIN_PASSWORD", ADMIN_PASSWORD),
        ("RUN_MIGRATIONS", "false"),
        ("SEED_ON_START", "true"),
        ("RATE_LIMIT_ENABLED", "false"),
        ("DB_MIN_CONNECTIONS", "0"),
        ("DB_MAX_CONNECTIONS", "10"),
        ("LOG_LEVEL", "warn"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    /// Direct pool to the test database, for arranging data and asserting rows.
    pub db: PgPool,
    pub config: Arc<Config>,
    /// The service's shared statements, to see who waits for them.
    pub batches: Arc<field_attendance::state::Batches>,
    /// The service's own pool, to hold its connections.
    pub service_pool: PgPool,
    server: tokio::task::JoinHandle<()>,
    /// Told, the service stops as at SIGTERM.
    shutdown: Arc<tokio::sync::Notify>,
    // Dropped last: the database outlives the server that uses it.
    pub test_db: TestDb,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// Spawns with a request time limit of one second, for tests that cut a request at it.
    pub async fn spawn_timing_out_after_a_second() -> Self {
        Self::spawn_with(|env| {
            env.insert("REQUEST_TIMEOUT_SECS".into(), "1".into());
        })
        .await
    }

    /// Spawns with configuration overrides (`env["RATE_LIMIT_ENABLED"] = "true"`, ...).
    pub async fn spawn_with(customise: impl FnOnce(&mut HashMap<String, String>)) -> Self {
        let test_db = TestDb::new().await;
        let mut env = test_env(&test_db.url());
        customise(&mut env);
        Self::spawn_on(test_db, env).await
    }

    /// Spawns with its database reached through a [`FlakyProxy`] to the local Postgres, which
    /// the test can cut; configuration overrides as in [`TestApp::spawn_with`]. Returns the
    /// proxy with the app.
    pub async fn spawn_through_proxy(
        customise: impl FnOnce(&mut HashMap<String, String>),
    ) -> (FlakyProxy, Self) {
        let proxy = FlakyProxy::start(postgres_addr()).await;
        let (test_db, env) = Self::env_through(&proxy, customise).await;
        (proxy, Self::spawn_on(test_db, env).await)
    }

    /// A new test database and the configuration of a service reaching it through `proxy`.
    pub async fn env_through(
        proxy: &FlakyProxy,
        customise: impl FnOnce(&mut HashMap<String, String>),
    ) -> (TestDb, HashMap<String, String>) {
        let test_db = TestDb::new().await;
        let mut env = test_env(&format!(
            "postgres://postgres@{}/{}",
            proxy.addr, test_db.name
        ));
        customise(&mut env);
        (test_db, env)
    }

    pub async fn spawn_on(test_db: TestDb, env: HashMap<String, String>) -> Self {
        let config = Config::from_map(&env).expect("test configuration is valid");
        let app = Application::build(config).await.expect("build application");
        let addr = app.local_addr();
        let config = app.state().config.clone();
        let batches = app.state().batches.clone();
        let service_pool = app.state().db.clone();
        let shutdown = Arc::new(tokio::sync::Notify::new());
        let told = shutdown.clone();
        let server = tokio::spawn(async move {
            app.run_until(async move { told.notified().await })
                .await
                .expect("server");
        });
        let db = test_db.pool().await;
        Self {
            addr,
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            db,
            config,
            batches,
            service_pool,
            server,
            shutdown,
            test_db,
        }
    }

    /// Tells the service to stop, as SIGTERM does.
    pub fn signal_shutdown(&self) {
        self.shutdown.notify_one();
    }

    /// Whether the service has stopped within `within`.
    pub async fn stopped_within(&mut self, within: std::time::Duration) -> bool {
        tokio::time::timeout(within, &mut self.server).await.is_ok()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, self.url(path))
    }

    pub fn get(&self, path: &str) -> RequestBuilder {
        self.request(Method::GET, path)
    }

    pub fn post(&self, path: &str) -> RequestBuilder {
        self.request(Method::POST, path)
    }

    pub fn patch(&self, path: &str) -> RequestBuilder {
        self.request(Method::PATCH, path)
    }

    pub fn delete(&self, path: &str) -> RequestBuilder {
        self.request(Method::DELETE, path)
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Sends a request and returns status and JSON body (Null when the body is empty).
pub async fn send(builder: RequestBuilder) -> (StatusCode, Value) {
    let response = builder.send().await.expect("request sent");
    let status = response.status();
    let text = response.text().await.expect("body read");
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| json!({ "raw": text }))
    };
    (status, body)
}

/// Asserts the contract's error envelope with the given status and code.
#[track_caller]
pub fn assert_error(status: StatusCode, body: &Value, expected: StatusCode, code: &str) {
    assert_eq!(status, expected, "unexpected status; body: {body}");
    assert_eq!(body["error"]["code"], code, "unexpected code; body: {body}");
    assert!(body["error"]["message"].is_string(), "no message: {body}");
    assert!(
        body["error"]["request_id"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "no request id: {body}"
    );
}

/// Asserts a 422 `validation_failed` whose details name `field` with at least one reason.
#[track_caller]
pub fn assert_invalid(status: StatusCode, body: &Value, field: &str) {
    assert_error(
        status,
        body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    assert!(
        body["error"]["details"][field]
            .as_array()
            .is_some_and(|reasons| !reasons.is_empty()),
        "no reason for {field}: {body}"
    );
}

/// A TCP proxy to Postgres whose link can be cut and restored, to take the database away from
/// a running service without stopping the shared server.
pub struct FlakyProxy {
    pub addr: SocketAddr,
    down: Arc<AtomicBool>,
    connections: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl FlakyProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let down = Arc::new(AtomicBool::new(false));
        let connections: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> =
            Default::default();
        let accept = {
            let down = down.clone();
            let connections = connections.clone();
            tokio::spawn(async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if down.load(Ordering::SeqCst) {
                        drop(inbound);
                        continue;
                    }
                    let task = tokio::spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    connections.lock().unwrap().push(task);
                }
            })
        };
        Self {
            addr,
            down,
            connections,
            accept,
        }
    }

    /// Refuses new connections and cuts the open ones.
    pub fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        self.sever();
    }

    /// Cuts the open connections; new ones get through.
    pub fn sever(&self) {
        for task in self.connections.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    pub fn restore(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

impl Drop for FlakyProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// The password of every user the helpers create.
pub const PASSWORD: &str = "field-password-123";

/// One argon2 hash for every helper-made user: hashing per user would slow every test.
static PASSWORD_HASH: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| field_attendance::auth::password::hash_blocking(PASSWORD));

/// A logged-in user.
#[derive(Debug, Clone)]
pub struct TestUser {
    pub id: uuid::Uuid,
    pub email: String,
    pub token: String,
    pub refresh_token: String,
}

impl TestApp {
    pub async fn login(&self, email: &str, password: &str) -> (StatusCode, Value) {
        send(
            self.post("/api/auth/login")
                .json(&json!({ "email": email, "password": password })),
        )
        .await
    }

    async fn logged_in(&self, id: uuid::Uuid, email: &str, password: &str) -> TestUser {
        let (status, body) = self.login(email, password).await;
        assert_eq!(status, StatusCode::OK, "login of {email} failed: {body}");
        TestUser {
            id,
            email: email.to_string(),
            token: body["access_token"].as_str().unwrap().to_string(),
            refresh_token: body["refresh_token"].as_str().unwrap().to_string(),
        }
    }

    pub async fn admin(&self) -> TestUser {
        let id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM users WHERE email = $1")
            .bind(ADMIN_EMAIL)
            .fetch_one(&self.db)
            .await
            .unwrap();
        self.logged_in(id, ADMIN_EMAIL, ADMIN_PASSWORD).await
    }

    /// Inserts a user directly (no login); returns id and email.
    pub async fn insert_user(
        &self,
        role: &str,
        status: &str,
        supervisor: Option<uuid::Uuid>,
        facility: Option<uuid::Uuid>,
    ) -> (uuid::Uuid, String) {
        let email = format!(
            "{role}-{}@test.example",
            &uuid::Uuid::new_v4().simple().to_string()[..10]
        );
        let id = sqlx::query_scalar(
            "INSERT INTO users (email, password_hash, first_name, last_name, role, status, supervisor_id, facility_id)
             VALUES ($1, $2, 'Test', initcap($3), $3, $4, $5, $6) RETURNING id",
        )
        .bind(&email)
        .bind(PASSWORD_HASH.as_str())
        .bind(role)
        .bind(status)
        .bind(supervisor)
        .bind(facility)
        .fetch_one(&self.db)
        .await
        .unwrap();
        (id, email)
    }

    /// An active user of `role` under `supervisor`, logged in.
    pub async fn user(&self, role: &str, supervisor: Option<uuid::Uuid>) -> TestUser {
        let facility = self.facility().await;
        let (id, email) = self
            .insert_user(role, "active", supervisor, Some(facility))
            .await;
        self.logged_in(id, &email, PASSWORD).await
    }

    /// A facility in Gasabo district at the given point, with a 200 m geofence.
    pub async fn facility_at(&self, latitude: f64, longitude: f64) -> uuid::Uuid {
        let code = format!("T-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        sqlx::query_scalar(
            "INSERT INTO facilities (code, name, type, council_id, latitude, longitude)
             SELECT $1, 'Test facility ' || $1, 'health_center', id, $2, $3 FROM councils WHERE name = 'Gasabo'
             RETURNING id",
        )
        .bind(code)
        .bind(latitude)
        .bind(longitude)
        .fetch_one(&self.db)
        .await
        .unwrap()
    }

    pub async fn facility(&self) -> uuid::Uuid {
        self.facility_at(-1.9456, 30.1270).await
    }

    /// Deletes an attendance record as the server does (an admin's or another device's), so
    /// that pulls tell of it.
    pub async fn delete_on_server(&self, id: &str) {
        sqlx::query(
            "UPDATE attendance SET deleted_at = now(), sync_version = sync_version + 1
             WHERE id = $1::uuid",
        )
        .bind(id)
        .execute(&self.db)
        .await
        .unwrap();
    }

    /// The Prometheus exposition text of `GET /metrics`, as an admin.
    pub async fn metrics(&self, admin: &TestUser) -> String {
        self.get("/metrics")
            .bearer_auth(&admin.token)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Actions recorded in the audit trail, oldest first.
    pub async fn actions(&self) -> Vec<String> {
        sqlx::query_scalar("SELECT action FROM activities ORDER BY created_at, id")
            .fetch_all(&self.db)
            .await
            .unwrap()
    }
}

impl TestApp {
    /// Every attendance row of this test's database, deleted ones included.
    pub async fn attendance_rows(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM attendance")
            .fetch_one(&self.db)
            .await
            .unwrap()
    }

    /// Waits until `n` transactions of this test's database wait on another's row; panics with
    /// `what` after 10 s.
    pub async fn until_waiting_on_rows(&self, n: i64, what: &str) {
        self.until_counted(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
             WHERE l.locktype = 'transactionid' AND NOT l.granted
               AND a.datname = current_database()",
            n,
            what,
        )
        .await;
    }

    /// Waits until `n` sessions of this test's database wait for a lock of any kind (a row, an
    /// advisory lock); panics with `what` after 10 s.
    pub async fn until_waiting_on_locks(&self, n: i64, what: &str) {
        self.until_counted(
            "SELECT count(DISTINCT l.pid) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
             WHERE NOT l.granted AND a.datname = current_database()",
            n,
            what,
        )
        .await;
    }

    /// Waits until `count` (a query of one number) answers `n`; panics with `what` after 10 s.
    pub async fn until_counted(&self, count: &str, n: i64, what: &str) {
        let reached = async {
            while sqlx::query_scalar::<_, i64>(count)
                .fetch_one(&self.db)
                .await
                .unwrap()
                != n
            {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), reached)
            .await
            .expect(what);
    }

    /// Waits until no statement whose text contains `text` runs in this test's database (other
    /// than the query asking).
    pub async fn until_none_running(&self, text: &str, what: &str) {
        self.until_counted(
            &format!(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND query LIKE '%{text}%'
                   AND state = 'active' AND pid <> pg_backend_pid()"
            ),
            0,
            what,
        )
        .await;
    }

    /// Waits until no session of this test's database is left inside a transaction: every
    /// connection the service gave back to its pool was out of its transaction.
    pub async fn until_no_session_in_a_transaction(&self) {
        self.until_counted(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND state LIKE 'idle in transaction%'",
            0,
            "no session of the service is left in a transaction",
        )
        .await;
    }

    /// Runs the service's command line against this test's database; panics when it fails,
    /// showing what it printed. Returns its standard output.
    pub fn cli(&self, args: &[&str]) -> Vec<u8> {
        self.cli_with(&[], args)
    }

    /// As [`TestApp::cli`], with these variables set besides the database's.
    pub fn cli_with(&self, env: &[(&str, &str)], args: &[&str]) -> Vec<u8> {
        let output = self.run_cli(args, env);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        output.stdout
    }

    /// Runs the command line expecting it to fail; returns what it printed as its error.
    pub fn cli_refused(&self, args: &[&str]) -> String {
        self.cli_refused_with(&[], args)
    }

    /// As [`TestApp::cli_refused`], with these variables set besides the database's.
    pub fn cli_refused_with(&self, env: &[(&str, &str)], args: &[&str]) -> String {
        let output = self.run_cli(args, env);
        assert!(!output.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&output.stderr).into_owned()
    }

    fn run_cli(&self, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
        std::process::Command::new(env!("CARGO_BIN_EXE_field-attendance"))
            .args(args)
            .env("DATABASE_URL", self.test_db.url())
            .env("JWT_SECRET", JWT_SECRET)
            .env("LOG_LEVEL", "warn")
            .envs(env.iter().copied())
            .output()
            .unwrap()
    }

    /// Inserts an attendance record directly (history that the API's time rules would refuse).
    /// A shift of `user` opened 17 hours ago and never closed: past the default 16-hour
    /// maximum, a forgotten clock-out.
    pub async fn forgotten_shift(&self, user: uuid::Uuid, facility: uuid::Uuid) -> uuid::Uuid {
        let opened = chrono::Utc::now() - chrono::Duration::hours(17);
        self.insert_attendance(user, facility, opened, None, "open")
            .await
    }

    pub async fn insert_attendance(
        &self,
        user: uuid::Uuid,
        facility: uuid::Uuid,
        clock_in: chrono::DateTime<chrono::Utc>,
        clock_out: Option<chrono::DateTime<chrono::Utc>>,
        status: &str,
    ) -> uuid::Uuid {
        sqlx::query_scalar(
            "INSERT INTO attendance (user_id, facility_id, status, clock_in_at, clock_out_at,
                                     clock_in_latitude, clock_in_longitude, distance_m)
             VALUES ($1, $2, $3, $4, $5, -1.9456, 30.1270, 0) RETURNING id",
        )
        .bind(user)
        .bind(facility)
        .bind(status)
        .bind(clock_in)
        .bind(clock_out)
        .fetch_one(&self.db)
        .await
        .unwrap()
    }
}

impl TestApp {
    /// Spawns a service whose application traffic goes through PgBouncer (transaction mode).
    pub async fn spawn_via_pgbouncer(bouncer: &str) -> Self {
        let test_db = TestDb::new().await;
        let mut env = test_env(&format!(
            "{}/{}",
            bouncer.trim_end_matches('/'),
            test_db.name
        ));
        env.insert("MIGRATION_DATABASE_URL".into(), test_db.url());
        env.insert("DB_MAX_CONNECTIONS".into(), "40".into());
        env.insert("DB_ACQUIRE_TIMEOUT_SECS".into(), "30".into());
        Self::spawn_on(test_db, env).await
    }

    /// An access token for a user, signed as the service signs them (no password round trip).
    pub fn token_for(&self, user: uuid::Uuid, role: &str) -> String {
        field_attendance::auth::jwt::JwtKeys::new(&self.config.auth)
            .issue(user, role.parse().unwrap(), 0)
            .unwrap()
    }

    /// An active user with a token, without a login (for tests that need many).
    pub async fn quick_user(
        &self,
        role: &str,
        supervisor: Option<uuid::Uuid>,
        facility: uuid::Uuid,
    ) -> TestUser {
        let (id, email) = self
            .insert_user(role, "active", supervisor, Some(facility))
            .await;
        TestUser {
            id,
            email,
            token: self.token_for(id, role),
            refresh_token: String::new(),
        }
    }
}
