//! Load and latency benchmark: the real service (release build) over HTTP, its database traffic
//! through PgBouncer, against a baseline of the same database work done directly with sqlx
//! through the same PgBouncer.
//!
//! `bash bench/run.sh` (or `cargo bench --bench load` with Postgres on 5432 and PgBouncer on
//! 6432). Writes `target/bench/results.md` and `target/bench/results.json`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use field_attendance::auth::extractor::AuthUser;
use field_attendance::auth::jwt::JwtKeys;
use field_attendance::config::Config;
use field_attendance::db::users::{self, UserFilter};
use field_attendance::domain::identity::Role;
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

/// With `BENCH_PROFILE=1`, a system-wide `perf record` (cpu-clock, call graphs) around each
/// scenario: where the two cores went, by process, and the service's hottest functions. perf
/// starts with its events off and is switched on (and off) through its control FIFO, so that
/// even a burst of a few tens of milliseconds is recorded from its first request to its last,
/// without perf's own start-up.
struct Profiler {
    child: tokio::process::Child,
    data: String,
    control: std::fs::File,
    ack: std::io::BufReader<std::fs::File>,
}

impl Profiler {
    async fn start(name: &str) -> Option<Self> {
        if std::env::var("BENCH_PROFILE").ok().as_deref() != Some("1") {
            return None;
        }
        let slug: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        std::fs::create_dir_all("target/bench/profiles").ok()?;
        let data = format!("target/bench/profiles/{slug}.data");
        let (ctl, ack) = (format!("{data}.ctl"), format!("{data}.ack"));
        for fifo in [&ctl, &ack] {
            let _ = std::fs::remove_file(fifo);
            let made = std::process::Command::new("mkfifo").arg(fifo).status();
            if !made.is_ok_and(|s| s.success()) {
                eprintln!("  mkfifo {fifo} failed");
                return None;
            }
        }
        let child = tokio::process::Command::new("perf")
            .args([
                "record",
                "-q",
                "-e",
                "cpu-clock",
                "-F",
                "2999",
                "-a",
                "-g",
                "-D",
                "-1",
                "--control",
            ])
            .arg(format!("fifo:{ctl},{ack}"))
            .args(["-o", &data])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| eprintln!("  perf record did not start: {e}"))
            .ok()?;
        // perf opens the acknowledgement FIFO for writing once it is ready: opening it for
        // reading waits for that.
        let opened = tokio::task::spawn_blocking(move || {
            let ack = std::io::BufReader::new(std::fs::File::open(&ack)?);
            let control = std::fs::OpenOptions::new().write(true).open(&ctl)?;
            Ok::<_, std::io::Error>((control, ack))
        });
        let (control, ack) = match tokio::time::timeout(Duration::from_secs(10), opened).await {
            Ok(Ok(Ok(files))) => files,
            _ => {
                eprintln!("  perf did not open its control FIFO");
                return None;
            }
        };
        let mut profiler = Self {
            child,
            data,
            control,
            ack,
        };
        profiler.command("enable").then_some(profiler)
    }

    /// Sends `enable` or `disable` to perf and waits for its acknowledgement.
    fn command(&mut self, command: &str) -> bool {
        use std::io::{BufRead, Write};
        let mut reply = String::new();
        let done = writeln!(self.control, "{command}")
            .and_then(|()| self.ack.read_line(&mut reply))
            // perf ends its "ack\n" with a NUL byte, which the next reply then begins with.
            .is_ok_and(|_| reply.trim_matches(|c: char| c.is_whitespace() || c == '\0') == "ack");
        if !done {
            eprintln!("  perf did not acknowledge `{command}`");
        }
        done
    }

    /// Stops recording; returns the share of samples by thread name, and writes the service's
    /// hottest functions next to the data.
    async fn finish(mut self) -> Vec<(String, f64)> {
        self.command("disable");
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-INT", &pid.to_string()])
                .status();
        }
        let _ = self.child.wait().await;
        for fifo in ["ctl", "ack"] {
            let _ = std::fs::remove_file(format!("{}.{fifo}", self.data));
        }
        let report = |args: &[&str]| {
            std::process::Command::new("perf")
                .args(["report", "-i", &self.data, "--stdio", "--no-children", "-q"])
                .args(args)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        };
        let top = report(&[
            "--comm",
            "fa-worker",
            "--sort",
            "dso,sym",
            "-g",
            "none",
            "--percent-limit",
            "0.5",
        ]);
        let _ = std::fs::write(self.data.replace(".data", ".service-top.txt"), top);
        report(&["--sort", "comm", "-g", "none"])
            .lines()
            .filter_map(|l| {
                let (pct, comm) = l.trim().split_once(' ')?;
                Some((
                    comm.trim().to_string(),
                    pct.trim_end_matches('%').parse().ok()?,
                ))
            })
            .collect()
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
    /// With BENCH_PROFILE=1: share of the machine's CPU samples by thread name.
    cpu_split: Vec<(String, f64)>,
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
    // A moment of quiet first, so that one scenario's backlog (WAL, autovacuum) is not
    // measured as the next one's latency.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let profiler = Profiler::start(name).await;
    let cpu0 = probe.cpu_s();
    let started = Instant::now();
    work.await;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = probe.cpu_s() - cpu0;
    sampling.abort();
    let cpu_split = match profiler {
        Some(p) => p.finish().await,
        None => Vec::new(),
    };
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
        cpu_split,
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

/// Draws p50, p95 and p99 of every scenario as bars on a log scale, one row per scenario.
fn chart(rows: &[Row], path: &str) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let font = [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    ]
    .iter()
    .find_map(|p| std::fs::read(p).ok())
    .ok_or_else(|| anyhow::anyhow!("no TrueType font found (Debian: fonts-dejavu-core)"))?;
    plotters::style::register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(font.into_boxed_slice()),
    )
    .map_err(|_| anyhow::anyhow!("the font could not be read"))?;
    let n = rows.len();
    let root = BitMapBackend::new(path, (1500, 90 + 36 * n as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let (names, plot) = root.split_horizontally(440);
    let max = rows.iter().map(|r| r.max).fold(10.0, f64::max) * 8.0;
    let mut chart = ChartBuilder::on(&plot)
        .caption(
            "Latency per scenario, ms (log scale): p50, p95, p99, max",
            ("sans-serif", 20),
        )
        .margin(10)
        .x_label_area_size(30)
        .build_cartesian_2d((0.1f64..max).log_scale(), 0f64..n as f64)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(0)
        .x_desc("milliseconds")
        .draw()?;
    type Series = (&'static str, RGBColor, fn(&Row) -> f64);
    let series: [Series; 4] = [
        ("p50", RGBColor(80, 150, 80), |r| r.p50),
        ("p95", RGBColor(230, 160, 40), |r| r.p95),
        ("p99", RGBColor(200, 60, 50), |r| r.p99),
        ("max", RGBColor(120, 120, 120), |r| r.max),
    ];
    for (j, (label, color, value)) in series.into_iter().enumerate() {
        chart
            .draw_series(rows.iter().enumerate().map(|(k, r)| {
                let y0 = (n - k) as f64 - 0.1 - 0.2 * (j as f64 + 1.0);
                Rectangle::new([(0.1, y0), (value(r).max(0.1), y0 + 0.17)], color.filled())
            }))?
            .label(label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE)
        .border_style(BLACK)
        .draw()?;
    for (k, r) in rows.iter().enumerate() {
        let (_, y) = chart.backend_coord(&(1.0, (n - k) as f64 - 0.5));
        names.draw(&Text::new(r.name.clone(), (8, y - 8), ("sans-serif", 15)))?;
    }
    root.present()?;
    Ok(())
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

/// Sends request i of `count` at its scheduled instant (`rate` per second, whatever the
/// answers do), and measures from that instant, so a slow answer cannot hide the queue behind it.
async fn open_loop<M>(rec: &Recorder, client: &reqwest::Client, rate: f64, count: usize, make: M)
where
    M: Fn(&reqwest::Client, usize) -> reqwest::RequestBuilder + Send + Sync + 'static,
{
    let make = Arc::new(make);
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..count {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due).await;
        let (rec, client, make) = (rec.clone(), client.clone(), make.clone());
        tasks.push(tokio::spawn(async move {
            let ok = send(make(&client, i)).await;
            rec.record(due.into_std(), ok).await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// `workers` tasks take the next of `count` items until none is left: a closed loop holding
/// `workers` requests in flight, for throughput.
async fn closed_loop<F, Fut>(rec: &Recorder, workers: usize, count: usize, work: F)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let work = Arc::new(work);
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (rec, work, next) = (rec.clone(), work.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= count {
                    break;
                }
                let started = Instant::now();
                let ok = work(i).await;
                rec.record(started, ok).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Sends a request; true on a 2xx answer whose body arrived. Failures are printed.
async fn send(request: reqwest::RequestBuilder) -> bool {
    match request.send().await {
        Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
        Ok(r) => {
            let status = r.status();
            let body = r.text().await.unwrap_or_default();
            eprintln!("  {status} {}", body.chars().take(200).collect::<String>());
            false
        }
        Err(e) => {
            eprintln!("  transport error: {e}");
            false
        }
    }
}

/// Untimed: each user opens the app (`GET /attendance/active`), as they would before clocking
/// in; this opens their connections and lets the service read their token state.
async fn open_apps(client: &reqwest::Client, tokens: &[String]) -> anyhow::Result<()> {
    let rec = Recorder::new();
    let tokens = Arc::new(tokens.to_vec());
    let t = tokens.clone();
    let c = client.clone();
    closed_loop(&rec, 500, tokens.len(), move |i| {
        send(c.get(url("/api/attendance/active")).bearer_auth(&t[i]))
    })
    .await;
    let errors = rec.errors.load(Ordering::Relaxed);
    anyhow::ensure!(errors == 0, "{errors} app openings failed");
    Ok(())
}

/// Untimed: opens the baseline pool's connections before it is measured, as the service's are.
async fn warm_pool(pool: &PgPool) {
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let _ = sqlx::query("SELECT pg_sleep(0.01)").execute(&pool).await;
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
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

fn main() -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("loadgen")
        .build()?
        .block_on(run())
}

async fn run() -> anyhow::Result<()> {
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
        // As deployed: one JSON line per request (to /dev/null here, which costs what a log
        // shipper reading a pipe would not add to).
        ("LOG_LEVEL", "info".into()),
        ("LOG_FORMAT", "json".into()),
        ("MAX_UPLOAD_BYTES", (64 * 1024 * 1024).to_string()),
        ("REQUEST_TIMEOUT_SECS", "300".into()),
        // One client serves every scenario, whose connections wait through the scenarios
        // before theirs (a 100,000-row import, say): none is closed meanwhile, so that each
        // scenario meets its connections open, as it always did.
        ("IDLE_TIMEOUT_SECS", "900".into()),
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
    // The baseline's pool checks connections as the service's does.
    let bouncer = field_attendance::db::pool_options()
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
    // What autovacuum would have done by the time anyone reads: statistics and the visibility map.
    sqlx::query("VACUUM ANALYZE").execute(&direct).await?;
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

    // --- clock-in. Every clocking user has opened the app first (untimed).
    warm_pool(&bouncer).await;
    let insert_one = |pool: PgPool, user: Uuid, facility: Uuid| async move {
        sqlx::query(
            "INSERT INTO attendance (user_id, facility_id, clock_in_at, clock_in_latitude, clock_in_longitude, distance_m, outside_geofence)
             VALUES ($1, $2, now(), -1.95, 30.06, 12, false)",
        )
        .bind(user)
        .bind(facility)
        .execute(&pool)
        .await
        .is_ok()
    };
    let clock_in = |c: &reqwest::Client, token: &str| {
        c.post(url("/api/attendance/clock-in"))
            .bearer_auth(token)
            .json(&json!({"latitude": -1.95, "longitude": 30.06, "accuracy_m": 8}))
    };
    let tokens_of = |range: std::ops::Range<usize>| -> Arc<Vec<String>> {
        Arc::new(
            people[range]
                .iter()
                .map(|(id, _)| token(*id, "focal"))
                .collect(),
        )
    };
    // Throughput: 10,000 users, 500 requests in flight, against the
    // same number of raw single-row inserts with 500 in flight.
    let n = if quick { 1_000 } else { 10_000 };
    let rec = Recorder::new();
    let targets: Arc<Vec<(Uuid, Uuid)>> =
        Arc::new(people[people.len() - 1000 - n..people.len() - 1000].to_vec());
    let (pool, t) = (bouncer.clone(), targets.clone());
    rows.push(
        scenario(
            &format!("baseline: single-row insert, {n} x 500 in flight"),
            &probe,
            &rec,
            closed_loop(&rec, 500, n, move |i| {
                let (user, facility) = t[i];
                insert_one(pool.clone(), user, facility)
            }),
        )
        .await,
    );
    let tokens = tokens_of(2_000..2_000 + n);
    open_apps(&client, &tokens).await?;
    let rec = Recorder::new();
    let (c, t) = (client.clone(), tokens.clone());
    rows.push(
        scenario(
            &format!("clock-in, {n} users x 500 in flight"),
            &probe,
            &rec,
            closed_loop(&rec, 500, n, move |i| send(clock_in(&c, &t[i]))),
        )
        .await,
    );
    // Latency: 500 users at once, and 500 users arriving over one second. The service writes
    // clock-ins that come together in shared statements, so the database alone is measured both
    // ways: the same 500 rows and their audit rows as four statements of 125 (every row timed
    // as its statement), and as 500 single-row inserts.
    let batch: Arc<Vec<(Uuid, Uuid)>> = Arc::new(people[1_500..2_000].to_vec());
    let rec = Recorder::new();
    let (pool, t, r) = (bouncer.clone(), batch.clone(), rec.clone());
    rows.push(
        scenario(
            "baseline: 4 multi-row inserts of 125, at once",
            &probe,
            &rec,
            async move {
                let statements: Vec<_> = t
                    .chunks(125)
                    .map(|chunk| {
                        let (users, facilities): (Vec<Uuid>, Vec<Uuid>) =
                            chunk.iter().copied().unzip();
                        let (pool, rec) = (pool.clone(), r.clone());
                        tokio::spawn(async move {
                            let started = Instant::now();
                            let written: Result<Vec<(Uuid,)>, _> = sqlx::query_as(
                                "WITH a AS (
                                     INSERT INTO attendance (user_id, facility_id, clock_in_at, clock_in_latitude,
                                                             clock_in_longitude, clock_in_accuracy_m, distance_m,
                                                             outside_geofence, source)
                                     SELECT u, f, now(), -1.95, 30.06, 8, 12, false, 'online'
                                     FROM UNNEST($1::uuid[], $2::uuid[]) AS c (u, f)
                                     RETURNING *
                                 ), audit AS (
                                     INSERT INTO activities (actor_id, actor_email, action, entity_type, entity_id, details)
                                     SELECT a.user_id, 'bench@bench.example', 'attendance.clock_in', 'attendance', a.id,
                                            '{\"distance_m\": 12}'::jsonb
                                     FROM a
                                 )
                                 SELECT id FROM a",
                            )
                            .bind(&users)
                            .bind(&facilities)
                            .fetch_all(&pool)
                            .await;
                            let ok = written.is_ok_and(|w| w.len() == users.len());
                            for _ in 0..users.len() {
                                rec.record(started, ok).await;
                            }
                        })
                    })
                    .collect();
                for s in statements {
                    s.await.unwrap();
                }
            },
        )
        .await,
    );
    // Untimed: those shifts end, so that the same users can start one again below.
    sqlx::query(
        "UPDATE attendance SET status = 'closed', clock_out_at = now()
         WHERE status = 'open' AND user_id = ANY($1)",
    )
    .bind(batch.iter().map(|(u, _)| *u).collect::<Vec<_>>())
    .execute(&direct)
    .await?;
    let rec = Recorder::new();
    let (pool, t) = (bouncer.clone(), batch.clone());
    rows.push(
        scenario(
            "baseline: single-row insert, 500 at once",
            &probe,
            &rec,
            closed_loop(&rec, 500, 500, move |i| {
                let (user, facility) = t[i];
                insert_one(pool.clone(), user, facility)
            }),
        )
        .await,
    );
    let clockers = tokens_of(0..500);
    open_apps(&client, &clockers).await?;
    let rec = Recorder::new();
    let (c, t) = (client.clone(), clockers.clone());
    rows.push(
        scenario(
            "clock-in, 500 users at once",
            &probe,
            &rec,
            closed_loop(&rec, 500, 500, move |i| send(clock_in(&c, &t[i]))),
        )
        .await,
    );
    let rec = Recorder::new();
    let (c, t) = (client.clone(), clockers.clone());
    rows.push(
        scenario(
            "clock-out, 500 users at once",
            &probe,
            &rec,
            closed_loop(&rec, 500, 500, move |i| {
                send(
                    c.post(url("/api/attendance/clock-out"))
                        .bearer_auth(&t[i])
                        .json(&json!({"latitude": -1.95, "longitude": 30.06})),
                )
            }),
        )
        .await,
    );
    let arriving = tokens_of(500..1_000);
    open_apps(&client, &arriving).await?;
    let rec = Recorder::new();
    let t = arriving.clone();
    rows.push(
        scenario(
            "clock-in, 500 users arriving over 1 s",
            &probe,
            &rec,
            open_loop(&rec, &client, 500.0, 500, move |c, i| clock_in(c, &t[i])),
        )
        .await,
    );

    // --- sync: 100 devices pushing 50 records, 10 rounds each, against as many raw 50-row
    //     UNNEST inserts; then 100 devices arriving over one second.
    let rounds = 10;
    let rec = Recorder::new();
    let devices: Arc<Vec<(Uuid, Uuid)>> = Arc::new(people[1_000..1_100].to_vec());
    let (pool, d) = (bouncer.clone(), devices.clone());
    rows.push(
        scenario(&format!("baseline: 50-row UNNEST insert, 100 in flight x {rounds}"), &probe, &rec, closed_loop(&rec, 100, 100 * rounds, move |i| {
            let (user, facility) = d[i % 100];
            let pool = pool.clone();
            async move {
                // The row the push writes, column for column (the device and its timestamps
                // fill the same unique index).
                let ids: Vec<Uuid> = (0..50).map(|_| Uuid::new_v4()).collect();
                let start = chrono::Utc::now() - chrono::Duration::days(2);
                let stamps: Vec<chrono::DateTime<chrono::Utc>> =
                    (0..50).map(|k| start - chrono::Duration::minutes(k * 10)).collect();
                sqlx::query(
                    "INSERT INTO attendance (id, user_id, facility_id, status, clock_in_at, clock_out_at,
                            clock_in_latitude, clock_in_longitude, clock_in_accuracy_m, clock_out_latitude,
                            clock_out_longitude, clock_out_accuracy_m, distance_m, clock_out_distance_m,
                            outside_geofence, client_timestamp, sync_version, notes, source, device_id)
                     SELECT i, $3, $4, 'closed', t, t + interval '5 minutes', -1.95, 30.06, NULL, -1.95,
                            30.06, NULL, 10, 10, false, t, 1, NULL, 'sync', $5
                     FROM UNNEST($1::uuid[], $2::timestamptz[]) AS w (i, t)",
                )
                .bind(ids)
                .bind(stamps)
                .bind(user)
                .bind(facility)
                .bind(format!("baseline-{i}"))
                .execute(&pool)
                .await
                .is_ok()
            }
        }))
        .await,
    );
    // Batches are written out before the clock starts, as phones bring them ready-made: the load
    // generator shares the two cores, and building 50 records of JSON per request took a tenth
    // of them.
    let batch = |facility: Uuid, device: usize, days_ago: i64| -> bytes::Bytes {
        let records: Vec<Value> = (0..50).map(|i| shift(facility, days_ago, i)).collect();
        serde_json::to_vec(&json!({"device_id": format!("bench-{device}"), "records": records}))
            .expect("a batch serialises")
            .into()
    };
    let push = |c: &reqwest::Client, token: &str, body: &bytes::Bytes| {
        c.post(url("/api/sync/push"))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.clone())
    };
    let device_tokens = tokens_of(1_000..1_100);
    open_apps(&client, &device_tokens).await?;
    let bodies: Arc<Vec<Vec<bytes::Bytes>>> = Arc::new(
        (0..100)
            .map(|device| {
                (0..rounds)
                    .map(|round| batch(devices[device].1, device, 2 + round as i64))
                    .collect()
            })
            .collect(),
    );
    let rec = Recorder::new();
    let (t, b) = (device_tokens.clone(), bodies.clone());
    rows.push(
        scenario(
            &format!("sync push 50 records, 100 devices in flight x {rounds}"),
            &probe,
            &rec,
            fan_out(&rec, &client, 100, rounds, move |c, device, round| {
                push(c, &t[device], &b[device][round])
            }),
        )
        .await,
    );
    let arriving = tokens_of(1_100..1_200);
    let bodies: Arc<Vec<bytes::Bytes>> = Arc::new(
        people[1_100..1_200]
            .iter()
            .enumerate()
            .map(|(i, (_, facility))| batch(*facility, 100 + i, 2))
            .collect(),
    );
    open_apps(&client, &arriving).await?;
    let rec = Recorder::new();
    let (t, b) = (arriving.clone(), bodies.clone());
    rows.push(
        scenario(
            "sync push 50 records, 100 devices arriving over 1 s",
            &probe,
            &rec,
            open_loop(&rec, &client, 100.0, 100, move |c, i| push(c, &t[i], &b[i])),
        )
        .await,
    );
    // A 200 answers for the batch, not for each record: every pushed record must be stored once.
    let stored: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM attendance WHERE device_id LIKE 'bench-%' AND source = 'sync'",
    )
    .fetch_one(&direct)
    .await?;
    let pushed = 50 * (100 * rounds as i64 + 100);
    anyhow::ensure!(
        stored == pushed,
        "{stored} pushed records stored, not {pushed}"
    );
    let rec = Recorder::new();
    let t = device_tokens.clone();
    rows.push(
        scenario(
            "sync pull (limit 200), 100 devices",
            &probe,
            &rec,
            fan_out(&rec, &client, 100, 1, move |c, i, _| {
                c.get(url("/api/sync/pull?limit=200")).bearer_auth(&t[i])
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
    // Timed from each login's due instant, as the other open-loop scenarios.
    rows.push(
        scenario(
            &format!("login at 50/s ({logins})"),
            &probe,
            &rec,
            open_loop(&rec, &client, 50.0, logins, |client, i| {
                client.post(url("/api/auth/login")).json(
                    &json!({"email": format!("user{}@bench.example", 2001 + i), "password": PASSWORD}),
                )
            }),
        )
        .await,
    );

    // --- user list and search over 100,000 users. First the database alone: the service's own
    // `users::search` (the same two statements) for request n of the scenarios below (page
    // 1 + n % 20, or a search for "user<1 + n % 20><n / 20>"), with no HTTP.
    let viewer = Arc::new(AuthUser {
        id: admin_id,
        role: Role::Admin,
        email: "admin@bench.example".into(),
        facility_id: None,
        token_version: 0,
    });
    for (what, search) in [("user page", false), ("user search", true)] {
        let rec = Recorder::new();
        rows.push(
            scenario(
                &format!("baseline: {what} statements, 20 concurrent x 50"),
                &probe,
                &rec,
                async {
                    let mut tasks = Vec::new();
                    for t in 0..20 {
                        let (pool, rec, viewer) = (bouncer.clone(), rec.clone(), viewer.clone());
                        tasks.push(tokio::spawn(async move {
                            for n in t * 50..(t + 1) * 50 {
                                let started = Instant::now();
                                let filter = UserFilter {
                                    q: search.then(|| format!("user{}{}", 1 + n % 20, n / 20)),
                                    ..UserFilter::default()
                                };
                                let offset = if search { 0 } else { 50 * (n % 20) as i64 };
                                let ok = users::search(&pool, &viewer, &filter, 50, offset)
                                    .await
                                    .is_ok_and(|(page, _)| !page.is_empty());
                                rec.record(started, ok).await;
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
    }
    // Pages and searches 20 in flight, then one at a time: what one admin waits, without a
    // queue. Request n asks for page 1 + n % 20, or searches "user<1 + n % 20><n / 20>".
    type Path = fn(usize) -> String;
    let list: Path = |n| format!("/api/users?page={}&per_page=50", 1 + n % 20);
    let search: Path = |n| format!("/api/users?q=user{}{}", 1 + n % 20, n / 20);
    for (workers, each, how) in [(20, 50, "20 x 50"), (1, 200, "one at a time x 200")] {
        for (what, path) in [("user list", list), ("user search q=", search)] {
            let rec = Recorder::new();
            let a = admin.clone();
            rows.push(
                scenario(
                    &format!("{what} (admin, {users} users), {how}"),
                    &probe,
                    &rec,
                    fan_out(&rec, &client, workers, each, move |c, t, i| {
                        c.get(url(&path(t * each + i))).bearer_auth(&a)
                    }),
                )
                .await,
            );
        }
    }

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
                let until = Instant::now() + Duration::from_secs(secs);
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
                            // Timed to the end of the body, which keeps the connection.
                            let started = Instant::now();
                            let ok = send(request.bearer_auth(&mt[t])).await;
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
            "cpu_split_percent": r.cpu_split.iter().map(|(c, p)| json!({"thread": c, "percent": p})).collect::<Vec<_>>(),
        }));
    }
    md.push_str(&format!(
        "\nargon2id verify alone: {hash_ms:.1} ms per hash on one core.\n"
    ));
    let rps = |prefix: &str| {
        rows.iter()
            .find(|r| r.name.starts_with(prefix))
            .map(|r| r.requests as f64 / r.seconds)
            .unwrap_or(f64::NAN)
    };
    let ratios = [
        (
            "clock-in / raw single-row insert (500 in flight)",
            rps("clock-in, ") / rps("baseline: single-row insert, "),
        ),
        (
            "clock-in / the same rows as 4 multi-row inserts (500 at once)",
            rps("clock-in, 500 users at once") / rps("baseline: 4 multi-row inserts"),
        ),
        (
            "sync push / raw 50-row insert (100 in flight)",
            rps("sync push 50 records, 100 devices in flight")
                / rps("baseline: 50-row UNNEST insert"),
        ),
        (
            "user list / the same two statements (20 in flight)",
            rps(&format!("user list (admin, {users} users), 20"))
                / rps("baseline: user page statements"),
        ),
        (
            "user search / the same two statements (20 in flight)",
            rps(&format!("user search q= (admin, {users} users), 20"))
                / rps("baseline: user search statements"),
        ),
    ];
    if rows.iter().any(|r| !r.cpu_split.is_empty()) {
        md.push_str(
            "\nWhere the two cores went (perf cpu-clock samples, % of both cores):\n\n| scenario | service | Postgres | PgBouncer | load generator | idle | other |\n|---|---:|---:|---:|---:|---:|---:|\n",
        );
        for r in rows.iter().filter(|r| !r.cpu_split.is_empty()) {
            let mut split = [0.0f64; 6];
            for (comm, pct) in &r.cpu_split {
                let slot = match comm.as_str() {
                    c if c == "fa-worker" || c.starts_with("argon2") => 0,
                    "postgres" => 1,
                    "pgbouncer" => 2,
                    "loadgen" => 3,
                    "swapper" => 4,
                    _ => 5,
                };
                split[slot] += pct;
            }
            md.push_str(&format!(
                "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |\n",
                r.name, split[0], split[1], split[2], split[3], split[4], split[5]
            ));
        }
    }
    md.push_str("\n| throughput against the baseline | ratio |\n|---|---:|\n");
    for (name, ratio) in &ratios {
        md.push_str(&format!("| {name} | {ratio:.2} |\n"));
    }
    std::fs::write("target/bench/results.md", &md)?;
    std::fs::write(
        "target/bench/results.json",
        serde_json::to_string_pretty(&json!({
            "users": users, "hash_ms": hash_ms, "scenarios": json_rows,
            "ratios": ratios.iter().map(|(name, r)| json!({"name": name, "ratio": r})).collect::<Vec<_>>(),
        }))?,
    )?;
    chart(&rows, "target/bench/latency.png")?;
    println!("\n{md}\nchart: target/bench/latency.png");
    let _ = child.kill().await;
    let total_errors: u64 = rows.iter().map(|r| r.errors).sum();
    anyhow::ensure!(total_errors == 0, "{total_errors} requests failed");
    Ok(())
}
