//! Load and latency benchmark: the real service (release build) over HTTP, its database traffic
//! through PgBouncer, against a baseline of the same database work done directly with sqlx
//! through the same PgBouncer.
//!
//! `bash bench/run.sh` (or `cargo bench --bench load` with Postgres on 5432 and PgBouncer on
//! 6432). Writes `target/bench/results.md` and `target/bench/results.json`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use field_attendance::auth::jwt::JwtKeys;
use field_attendance::config::Config;
use futures::StreamExt;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::Mutex;
use uuid::Uuid;

const DIRECT: &str = "postgres://postgres@127.0.0.1:5432";
const BOUNCER: &str = "postgres://postgres@127.0.0.1:6432";
const DB: &str = "fa_bench";
const PORT: u16 = 18181;
const SECRET: &str = "bench-signing-secret-that-is-long-enough-000";
const PASSWORD: &str = "bench-password-123";
const USERS: i64 = 100_000;

/// Samples the service's resident memory and CPU time from /proc while a scenario runs.
struct Probe {
    pid: u32,
}

impl Probe {
    fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0)
    }

    /// User + system CPU seconds so far.
    fn cpu_s(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        let after = stat.rsplit(')').next().unwrap_or("");
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
            + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
        ticks / 100.0
    }
}

#[derive(Clone)]
struct Recorder {
    hist: Arc<Mutex<Histogram<u64>>>,
    errors: Arc<AtomicU64>,
    ok: Arc<AtomicU64>,
}

impl Recorder {
    fn new() -> Self {
        Self {
            hist: Arc::new(Mutex::new(
                Histogram::new_with_bounds(1, 600_000_000, 3).unwrap(),
            )),
            errors: Arc::new(AtomicU64::new(0)),
            ok: Arc::new(AtomicU64::new(0)),
        }
    }

    async fn record(&self, started: Instant, ok: bool) {
        let micros = started.elapsed().as_micros().max(1) as u64;
        self.hist.lock().await.record(micros).unwrap();
        if ok {
            self.ok.fetch_add(1, Ordering::Relaxed);
        } else {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

struct Row {
    name: String,
    requests: u64,
    errors: u64,
    seconds: f64,
    p50: f64,
    p95: f64,
    p99: f64,
    max: f64,
    peak_rss_mib: f64,
    cpu_pct: f64,
}

/// Runs `work` while sampling the service, and summarises what `work` recorded.
async fn scenario<F: std::future::Future<Output = ()>>(
    name: &str,
    probe: &Probe,
    rec: &Recorder,
    work: F,
) -> Row {
    let peak = Arc::new(AtomicU64::new(probe.rss_kib()));
    let sampling = {
        let peak = peak.clone();
        let pid = probe.pid;
        tokio::spawn(async move {
            let probe = Probe { pid };
            loop {
                peak.fetch_max(probe.rss_kib(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let cpu0 = probe.cpu_s();
    let started = Instant::now();
    work.await;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = probe.cpu_s() - cpu0;
    sampling.abort();
    let h = rec.hist.lock().await;
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let row = Row {
        name: name.to_string(),
        requests: rec.ok.load(Ordering::Relaxed) + rec.errors.load(Ordering::Relaxed),
        errors: rec.errors.load(Ordering::Relaxed),
        seconds,
        p50: ms(0.50),
        p95: ms(0.95),
        p99: ms(0.99),
        max: h.max() as f64 / 1000.0,
        peak_rss_mib: peak.load(Ordering::Relaxed) as f64 / 1024.0,
        cpu_pct: 100.0 * cpu / seconds,
    };
    println!(
        "{:<44} {:>7} req {:>4} err {:>8.1} req/s  p50 {:>8.2}  p95 {:>8.2}  p99 {:>8.2}  max {:>8.2} ms  rss {:>6.0} MiB  cpu {:>4.0}%",
        row.name,
        row.requests,
        row.errors,
        row.requests as f64 / seconds,
        row.p50,
        row.p95,
        row.p99,
        row.max,
        row.peak_rss_mib,
        row.cpu_pct
    );
    row
}

fn url(path: &str) -> String {
    format!("http://127.0.0.1:{PORT}{path}")
}

/// Sends requests from `count` tasks at once, each `per_task` times; `make` builds request i.
async fn fan_out<M>(
    rec: &Recorder,
    client: &reqwest::Client,
    count: usize,
    per_task: usize,
    make: M,
) where
    M: Fn(&reqwest::Client, usize, usize) -> reqwest::RequestBuilder + Send + Sync + 'static,
{
    let make = Arc::new(make);
    let mut tasks = Vec::new();
    for t in 0..count {
        let (rec, client, make) = (rec.clone(), client.clone(), make.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..per_task {
                let started = Instant::now();
                let ok = match make(&client, t, i).send().await {
                    Ok(r) => {
                        let good = r.status().is_success();
                        if !good {
                            eprintln!(
                                "  {} {}",
                                r.status(),
                                r.text()
                                    .await
                                    .unwrap_or_default()
                                    .chars()
                                    .take(200)
                                    .collect::<String>()
                            );
                        } else {
                            let _ = r.bytes().await;
                        }
                        good
                    }
                    Err(e) => {
                        eprintln!("  transport error: {e}");
                        false
                    }
                };
                rec.record(started, ok).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

fn shift(facility: Uuid, days_ago: i64, slot: i64) -> Value {
    let start = chrono::Utc::now()
        - chrono::Duration::days(days_ago)
        - chrono::Duration::minutes(slot * 10);
    json!({
        "kind": "attendance", "op": "upsert", "id": Uuid::new_v4(), "sync_version": 1,
        "client_timestamp": start.to_rfc3339(),
        "data": {
            "facility_id": facility, "clock_in_at": start.to_rfc3339(),
            "clock_out_at": (start + chrono::Duration::minutes(5)).to_rfc3339(),
            "clock_in_location": {"latitude": -1.95, "longitude": 30.06},
            "clock_out_location": {"latitude": -1.95, "longitude": 30.06}
        }
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let users = if quick { 5_000 } else { USERS };
    std::fs::create_dir_all("target/bench")?;

    // A fresh database, created and migrated by the service itself.
    let admin_conn = PgPool::connect(&format!("{DIRECT}/postgres")).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {DB} WITH (FORCE)"))
        .execute(&admin_conn)
        .await?;
    admin_conn.close().await;
    let env: Vec<(&str, String)> = vec![
        ("APP_ENV", "production".into()),
        ("DATABASE_URL", format!("{BOUNCER}/{DB}")),
        ("MIGRATION_DATABASE_URL", format!("{DIRECT}/{DB}")),
        ("BIND_ADDR", format!("127.0.0.1:{PORT}")),
        ("JWT_SECRET", SECRET.into()),
        ("ADMIN_EMAIL", "admin@bench.example".into()),
        ("ADMIN_PASSWORD", PASSWORD.into()),
        ("RATE_LIMIT_ENABLED", "false".into()),
        ("LOG_LEVEL", "warn".into()),
        ("LOG_FORMAT", "json".into()),
        ("MAX_UPLOAD_BYTES", (64 * 1024 * 1024).to_string()),
        ("REQUEST_TIMEOUT_SECS", "300".into()),
    ];
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_field-attendance"))
        .arg("serve")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let probe = Probe {
        pid: child.id().expect("the service runs"),
    };
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(2000)
        .timeout(Duration::from_secs(300))
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !client
        .get(url("/ready"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the service did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Seed: 1,000 facilities, 100 supervisors, 100,000 field workers, one past shift each.
    let direct = PgPool::connect(&format!("{DIRECT}/{DB}")).await?;
    let bouncer = sqlx::postgres::PgPoolOptions::new()
        .max_connections(100)
        .connect_with(
            format!("{BOUNCER}/{DB}")
                .parse::<sqlx::postgres::PgConnectOptions>()?
                .extra_float_digits(None),
        )
        .await?;
    let hash = field_attendance::auth::password::hash_blocking(PASSWORD);
    let seeding = Instant::now();
    sqlx::query(
        "INSERT INTO facilities (code, name, council_id, latitude, longitude)
         SELECT 'B-' || g, 'Bench facility ' || g, c.id, -1.9 - g * 0.0005, 30.0 + g * 0.0005
         FROM generate_series(1, 1000) g
         JOIN LATERAL (SELECT id FROM councils ORDER BY name OFFSET g % 30 LIMIT 1) c ON true",
    )
    .execute(&direct)
    .await?;
    sqlx::query(
        "INSERT INTO users (email, password_hash, first_name, last_name, role, status)
         SELECT 'sup' || g || '@bench.example', $1, 'Super', 'Visor' || g, 'supervisor', 'active'
         FROM generate_series(1, 100) g",
    )
    .bind(&hash)
    .execute(&direct)
    .await?;
    sqlx::query(
        "WITH f AS (SELECT array_agg(id ORDER BY code) AS ids FROM facilities),
              s AS (SELECT array_agg(id ORDER BY email) AS ids FROM users WHERE role = 'supervisor')
         INSERT INTO users (email, password_hash, first_name, last_name, phone, employee_id, role, status, facility_id, supervisor_id, created_at)
         SELECT 'user' || g || '@bench.example', $1, 'First' || g, 'Last' || g, '+25078' || lpad(g::text, 7, '0'),
                'EMP' || g, 'focal', 'active', f.ids[1 + g % 1000], s.ids[1 + g % 100], now() - g * interval '1 second'
         FROM generate_series(1, $2) g, f, s",
    )
    .bind(&hash)
    .bind(users)
    .execute(&direct)
    .await?;
    sqlx::query(
        "INSERT INTO attendance (user_id, facility_id, status, clock_in_at, clock_out_at, clock_in_latitude, clock_in_longitude, distance_m)
         SELECT id, facility_id, 'closed', now() - interval '3 days' - (random() * interval '15 days'),
                now() - interval '2 days', -1.95, 30.06, 10
         FROM users WHERE role = 'focal'",
    )
    .execute(&direct)
    .await?;
    sqlx::query("ANALYZE").execute(&direct).await?;
    println!(
        "seeded {users} users, 1,000 facilities and {users} past shifts in {:.1} s",
        seeding.elapsed().as_secs_f64()
    );

    let people: Vec<(Uuid, Uuid)> =
        sqlx::query_as("SELECT id, facility_id FROM users WHERE role = 'focal' ORDER BY email")
            .fetch_all(&direct)
            .await?;
    let admin_id: Uuid = sqlx::query_scalar("SELECT id FROM users WHERE role = 'admin'")
        .fetch_one(&direct)
        .await?;
    let config = Config::from_map(
        &env.iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    )?;
    let jwt = Arc::new(JwtKeys::new(&config.auth));
    let token = |id: Uuid, role: &str| jwt.issue(id, role.parse().unwrap(), 0).unwrap();
    let admin = token(admin_id, "admin");
    let mut rows = Vec::new();

    // --- clock-in: raw single-row inserts through PgBouncer, then the service at 500 at once.
    let rec = Recorder::new();
    let batch: Vec<(Uuid, Uuid)> = people[90_000.min(people.len() - 1000)..][..500].to_vec();
    rows.push(scenario("baseline: single-row insert, 500 concurrent", &probe, &rec, async {
        let mut tasks = Vec::new();
        for (user, facility) in batch.clone() {
            let (pool, rec) = (bouncer.clone(), rec.clone());
            tasks.push(tokio::spawn(async move {
                let started = Instant::now();
                let ok = sqlx::query(
                    "INSERT INTO attendance (user_id, facility_id, clock_in_at, clock_in_latitude, clock_in_longitude, distance_m, outside_geofence)
                     VALUES ($1, $2, now(), -1.95, 30.06, 12, false)",
                )
                .bind(user)
                .bind(facility)
                .execute(&pool)
                .await
                .is_ok();
                rec.record(started, ok).await;
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    }).await);
    let clockers: Arc<Vec<String>> = Arc::new(
        people[..500]
            .iter()
            .map(|(id, _)| token(*id, "focal"))
            .collect(),
    );
    let rec = Recorder::new();
    let tokens = clockers.clone();
    rows.push(
        scenario(
            "clock-in, 500 concurrent users",
            &probe,
            &rec,
            fan_out(&rec, &client, 500, 1, move |c, t, _| {
                c.post(url("/api/attendance/clock-in"))
                    .bearer_auth(&tokens[t])
                    .json(&json!({"latitude": -1.95, "longitude": 30.06, "accuracy_m": 8}))
            }),
        )
        .await,
    );
    let rec = Recorder::new();
    let tokens = clockers.clone();
    rows.push(
        scenario(
            "clock-out, 500 concurrent users",
            &probe,
            &rec,
            fan_out(&rec, &client, 500, 1, move |c, t, _| {
                c.post(url("/api/attendance/clock-out"))
                    .bearer_auth(&tokens[t])
                    .json(&json!({"latitude": -1.95, "longitude": 30.06}))
            }),
        )
        .await,
    );

    // --- sync: raw set-based inserts of 50 rows, then 100 devices pushing 50 records, 3 rounds.
    let rec = Recorder::new();
    let devices: Vec<(Uuid, Uuid)> = people[1_000..1_100].to_vec();
    rows.push(scenario("baseline: 50-row UNNEST insert, 100 concurrent", &probe, &rec, async {
        let mut tasks = Vec::new();
        for (user, facility) in devices.clone() {
            let (pool, rec) = (bouncer.clone(), rec.clone());
            tasks.push(tokio::spawn(async move {
                let ids: Vec<Uuid> = (0..50).map(|_| Uuid::new_v4()).collect();
                let started = Instant::now();
                let ok = sqlx::query(
                    "INSERT INTO attendance (id, user_id, facility_id, status, clock_in_at, clock_out_at, clock_in_latitude, clock_in_longitude, distance_m, source)
                     SELECT i, $2, $3, 'closed', now() - interval '1 day', now() - interval '23 hours', -1.95, 30.06, 10, 'sync'
                     FROM UNNEST($1::uuid[]) i",
                )
                .bind(ids)
                .bind(user)
                .bind(facility)
                .execute(&pool)
                .await
                .is_ok();
                rec.record(started, ok).await;
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    }).await);
    let device_tokens: Arc<Vec<(String, Uuid)>> = Arc::new(
        devices
            .iter()
            .map(|(id, f)| (token(*id, "focal"), *f))
            .collect(),
    );
    let rec = Recorder::new();
    let dt = device_tokens.clone();
    rows.push(
        scenario(
            "sync push 50 records, 100 devices x 3 rounds",
            &probe,
            &rec,
            fan_out(&rec, &client, 100, 3, move |c, t, round| {
                let (tok, facility) = &dt[t];
                let records: Vec<Value> = (0..50)
                    .map(|i| shift(*facility, 2 + round as i64, i))
                    .collect();
                c.post(url("/api/sync/push"))
                    .bearer_auth(tok)
                    .json(&json!({"device_id": format!("bench-{t}"), "records": records}))
            }),
        )
        .await,
    );
    let rec = Recorder::new();
    let dt = device_tokens.clone();
    rows.push(
        scenario(
            "sync pull (limit 200), 100 devices",
            &probe,
            &rec,
            fan_out(&rec, &client, 100, 1, move |c, t, _| {
                c.get(url("/api/sync/pull?limit=200")).bearer_auth(&dt[t].0)
            }),
        )
        .await,
    );

    // --- login at 50/s; what the hash alone costs.
    let hash_started = Instant::now();
    for _ in 0..10 {
        field_attendance::auth::password::verify_blocking(PASSWORD, Some(&hash));
    }
    let hash_ms = hash_started.elapsed().as_secs_f64() * 100.0;
    println!("argon2id verify alone: {hash_ms:.1} ms per hash on one core");
    let rec = Recorder::new();
    let logins = if quick { 100 } else { 500 };
    rows.push(scenario(&format!("login at 50/s ({logins})"), &probe, &rec, async {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        let mut tasks = Vec::new();
        for i in 0..logins {
            tick.tick().await;
            let (client, rec) = (client.clone(), rec.clone());
            tasks.push(tokio::spawn(async move {
                let started = Instant::now();
                let ok = client
                    .post(url("/api/auth/login"))
                    .json(&json!({"email": format!("user{}@bench.example", 2001 + i), "password": PASSWORD}))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                rec.record(started, ok).await;
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    }).await);

    // --- user list and search over 100,000 users.
    let rec = Recorder::new();
    rows.push(scenario("baseline: user page query, 20 concurrent x 50", &probe, &rec, async {
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (pool, rec) = (bouncer.clone(), rec.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..50 {
                    let started = Instant::now();
                    // The same two statements the service runs for a page: the page and the total.
                    let page = sqlx::query("SELECT u.* FROM users u LEFT JOIN facilities f ON f.id = u.facility_id ORDER BY u.created_at DESC, u.id DESC LIMIT 50")
                        .fetch_all(&pool)
                        .await;
                    let total = sqlx::query("SELECT count(*) FROM users u LEFT JOIN facilities f ON f.id = u.facility_id")
                        .fetch_one(&pool)
                        .await;
                    let ok = page.is_ok() && total.is_ok();
                    rec.record(started, ok).await;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    }).await);
    let rec = Recorder::new();
    let a = admin.clone();
    rows.push(
        scenario(
            "user list (admin, 100k users), 20 x 50",
            &probe,
            &rec,
            fan_out(&rec, &client, 20, 50, move |c, _, i| {
                c.get(url(&format!("/api/users?page={}&per_page=50", 1 + i % 20)))
                    .bearer_auth(&a)
            }),
        )
        .await,
    );
    let rec = Recorder::new();
    let a = admin.clone();
    rows.push(
        scenario(
            "user search q= (admin, 100k users), 20 x 50",
            &probe,
            &rec,
            fan_out(&rec, &client, 20, 50, move |c, t, i| {
                c.get(url(&format!("/api/users?q=user{}{}", 1 + t, i)))
                    .bearer_auth(&a)
            }),
        )
        .await,
    );

    // --- imports: 100 rows; 100,000 rows as CSV and as XLSX.
    let councils: Vec<String> = sqlx::query_scalar("SELECT name FROM councils ORDER BY name")
        .fetch_all(&direct)
        .await?;
    let csv_of = |n: usize, prefix: &str| {
        let mut s =
            String::from("code,name,type,latitude,longitude,council_name,address,contact_phone\n");
        for i in 0..n {
            s.push_str(&format!(
                "{prefix}{i},Imported clinic {i},health_center,{},{},{},Street {i},+2507{i:08}\n",
                -1.0 - (i % 1000) as f64 * 0.001,
                29.0 + (i % 900) as f64 * 0.001,
                councils[i % councils.len()]
            ));
        }
        s.into_bytes()
    };
    let xlsx_of = |n: usize, prefix: &str| -> anyhow::Result<Vec<u8>> {
        let mut wb = rust_xlsxwriter::Workbook::new();
        let sheet = wb.add_worksheet();
        for (c, h) in ["code", "name", "latitude", "longitude", "council_name"]
            .iter()
            .enumerate()
        {
            sheet.write_string(0, c as u16, *h)?;
        }
        for i in 0..n {
            let r = i as u32 + 1;
            sheet.write_string(r, 0, format!("{prefix}{i}"))?;
            sheet.write_string(r, 1, format!("Spreadsheet clinic {i}"))?;
            sheet.write_number(r, 2, -1.0 - (i % 1000) as f64 * 0.001)?;
            sheet.write_number(r, 3, 29.0 + (i % 900) as f64 * 0.001)?;
            sheet.write_string(r, 4, &councils[i % councils.len()])?;
        }
        Ok(wb.save_to_buffer()?)
    };
    let big = if quick { 10_000 } else { 100_000 };
    for (name, bytes, file) in [
        (
            "import 100 rows (CSV)".to_string(),
            csv_of(100, "S-"),
            "small.csv",
        ),
        (
            format!("import {big} rows (CSV)"),
            csv_of(big, "C-"),
            "big.csv",
        ),
        (
            format!("import {big} rows (XLSX)"),
            xlsx_of(big, "X-")?,
            "big.xlsx",
        ),
    ] {
        let rec = Recorder::new();
        let a = admin.clone();
        let bytes = Arc::new(bytes);
        rows.push(
            scenario(
                &name,
                &probe,
                &rec,
                fan_out(&rec, &client, 1, 1, move |c, _, _| {
                    let part = reqwest::multipart::Part::bytes(bytes.to_vec()).file_name(file);
                    c.post(url("/api/facilities/import"))
                        .bearer_auth(&a)
                        .multipart(reqwest::multipart::Form::new().part("file", part))
                }),
            )
            .await,
        );
    }

    // --- export of every record (100,000+) as CSV, read as it streams.
    let rec = Recorder::new();
    rows.push(
        scenario("export all records (CSV, streamed)", &probe, &rec, async {
            let started = Instant::now();
            let mut ok = false;
            let mut lines = 0usize;
            if let Ok(r) = client
                .get(url("/api/attendance/export?format=csv"))
                .bearer_auth(&admin)
                .send()
                .await
            {
                ok = r.status().is_success();
                let mut body = r.bytes_stream();
                while let Some(chunk) = body.next().await {
                    match chunk {
                        Ok(c) => lines += c.iter().filter(|&&b| b == b'\n').count(),
                        Err(_) => ok = false,
                    }
                }
            }
            println!("  export: {lines} lines");
            rec.record(started, ok).await;
        })
        .await,
    );

    // --- mixed workload holding 1,000 connections open.
    let rec = Recorder::new();
    let mixed_tokens: Arc<Vec<String>> = Arc::new(
        people[people.len() - 1000..]
            .iter()
            .map(|(id, _)| token(*id, "focal"))
            .collect(),
    );
    let secs = if quick { 5 } else { 20 };
    let until = Instant::now() + Duration::from_secs(secs + 2);
    let mt = mixed_tokens.clone();
    let mixed_client = reqwest::Client::builder()
        .pool_max_idle_per_host(1100)
        .timeout(Duration::from_secs(60))
        .build()?;
    rows.push(
        scenario(
            &format!("mixed, 1,000 concurrent connections, {secs} s"),
            &probe,
            &rec,
            async {
                let mut tasks = Vec::new();
                for t in 0..1000 {
                    let (client, rec, mt) = (mixed_client.clone(), rec.clone(), mt.clone());
                    tasks.push(tokio::spawn(async move {
                        let mut i = 0usize;
                        while Instant::now() < until {
                            let request = match i % 4 {
                                0 => client.get(url("/api/attendance/active")),
                                1 => client.get(url("/api/attendance/my-records?per_page=10")),
                                2 => client.get(url(
                                    "/api/facilities?near=-1.95,30.06&radius_m=5000&per_page=10",
                                )),
                                _ => client.get(url("/api/users/me")),
                            };
                            let started = Instant::now();
                            let ok = request
                                .bearer_auth(&mt[t])
                                .send()
                                .await
                                .is_ok_and(|r| r.status().is_success());
                            rec.record(started, ok).await;
                            i += 1;
                        }
                    }));
                }
                for t in tasks {
                    t.await.unwrap();
                }
            },
        )
        .await,
    );

    // Report.
    let mut md = String::from(
        "| scenario | requests | errors | req/s | p50 ms | p95 ms | p99 ms | max ms | service peak RSS MiB | service CPU % |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut json_rows = Vec::new();
    for r in &rows {
        md.push_str(&format!(
            "| {} | {} | {} | {:.1} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} | {:.0} |\n",
            r.name,
            r.requests,
            r.errors,
            r.requests as f64 / r.seconds,
            r.p50,
            r.p95,
            r.p99,
            r.max,
            r.peak_rss_mib,
            r.cpu_pct
        ));
        json_rows.push(json!({
            "scenario": r.name, "requests": r.requests, "errors": r.errors, "seconds": r.seconds,
            "throughput_rps": r.requests as f64 / r.seconds, "p50_ms": r.p50, "p95_ms": r.p95, "p99_ms": r.p99,
            "max_ms": r.max, "peak_rss_mib": r.peak_rss_mib, "cpu_percent": r.cpu_pct,
        }));
    }
    md.push_str(&format!(
        "\nargon2id verify alone: {hash_ms:.1} ms per hash on one core.\n"
    ));
    std::fs::write("target/bench/results.md", &md)?;
    std::fs::write(
        "target/bench/results.json",
        serde_json::to_string_pretty(
            &json!({"users": users, "hash_ms": hash_ms, "scenarios": json_rows}),
        )?,
    )?;
    println!("\n{md}");
    let _ = child.kill().await;
    let total_errors: u64 = rows.iter().map(|r| r.errors).sum();
    anyhow::ensure!(total_errors == 0, "{total_errors} requests failed");
    Ok(())
}
