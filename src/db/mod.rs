//! Database access: pools, migrations and seeds. Queries live beside the resources that use
//! them (`routes/*`), each taking an executor or a transaction.

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::{MigrateDatabase, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool, Postgres};

use crate::config::DbSettings;

/// Migrations are embedded in the binary; `serve` applies them at start unless told not to.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Seed data, idempotent, loaded at first start and by `seed`.
const GEOGRAPHY_SEED: &str = include_str!("../../seeds/01_geography.sql");

fn connect_options(url: &str) -> Result<PgConnectOptions, sqlx::Error> {
    Ok(PgConnectOptions::from_str(url)?
        // PgBouncer refuses unknown startup parameters, and this one has no effect on how
        // values travel over the binary protocol that sqlx uses.
        .extra_float_digits(None)
        .log_statements(tracing::log::LevelFilter::Debug)
        .log_slow_statements(
            tracing::log::LevelFilter::Warn,
            std::time::Duration::from_millis(500),
        ))
}

/// The readiness probe: a pool of one connection to the application pool's database, so that
/// with every application connection busy `/ready` does not wait for one and report the database
/// away (an orchestrator would take a busy instance out of service). Checked before each use (a
/// probe comes every few seconds, not under load), and closed when idle. Probes that arrive while
/// a check runs wait for it and share its answer: `/ready` needs no login, and a flood of them
/// would otherwise queue on the one connection until the orchestrator's own probe timed out.
pub struct Probe {
    pool: PgPool,
    /// Checks finished so far, and the last one's answer.
    checks: std::sync::atomic::AtomicU64,
    last: tokio::sync::Mutex<bool>,
}

impl Probe {
    pub fn new(app: &PgPool) -> Self {
        Self {
            pool: PgPoolOptions::new()
                .min_connections(0)
                .max_connections(1)
                .acquire_timeout(std::time::Duration::from_secs(2))
                .idle_timeout(Some(std::time::Duration::from_secs(30)))
                .connect_lazy_with((*app.connect_options()).clone()),
            checks: Default::default(),
            last: Default::default(),
        }
    }

    /// Whether the database answers, within 2 s, with every migration applied.
    pub async fn ready(&self) -> bool {
        use std::sync::atomic::Ordering;
        let seen = self.checks.load(Ordering::Acquire);
        let mut last = self.last.lock().await;
        // A check finished while this one waited: its answer is as fresh as a new one would be.
        if self.checks.load(Ordering::Acquire) != seen {
            return *last;
        }
        let ready = tokio::time::timeout(std::time::Duration::from_secs(2), is_ready(&self.pool))
            .await
            .unwrap_or(false);
        *last = ready;
        self.checks.fetch_add(1, Ordering::Release);
        ready
    }
}

/// A connection idle for longer than this is checked (one round trip) before it is handed out.
const CHECK_IDLE_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// How the pool checks connections. sqlx by default pings every connection it hands out, a
/// round trip through PgBouncer before each transaction (one-statement queries through PgBouncer
/// ran 35–50 % faster here without it). Only a connection that has sat idle is checked, since that is the one that may have
/// been dropped meanwhile (a restart, a proxy, a network cut); under load connections come back
/// within milliseconds. A connection that breaks in use fails that request (503) and is discarded.
pub fn pool_options() -> PgPoolOptions {
    PgPoolOptions::new()
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= CHECK_IDLE_AFTER {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
}

/// The application pool. Connects lazily so that the service starts (and `/ready` reports 503)
/// while the database is away, and recovers by itself when it returns.
pub fn pool(settings: &DbSettings) -> Result<PgPool, sqlx::Error> {
    use secrecy::ExposeSecret;
    let options = connect_options(settings.url.expose_secret())?;
    Ok(pool_options()
        .min_connections(settings.min_connections)
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.acquire_timeout)
        .idle_timeout(Some(settings.idle_timeout))
        .connect_lazy_with(options))
}

/// Whether a failed connection attempt means the server is not up yet (nothing listening, or
/// starting, shutting down, or a pooler that cannot reach it), so trying again may succeed.
pub fn not_up_yet(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_) if tls_refused(err) => false,
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| crate::error::session_lost(&code)),
        _ => false,
    }
}

/// Whether TLS could not be agreed as the URL's `sslmode` asks: a server or pooler that does not
/// offer it, or a handshake the client refused (a certificate it does not trust, which arrives
/// as invalid data). Neither comes right by waiting.
pub fn tls_refused(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Tls(_) => true,
        sqlx::Error::Io(io) => io.kind() == std::io::ErrorKind::InvalidData,
        _ => false,
    }
}

/// Waits up to `patience` for the server at `url` to accept a connection (a database that does
/// not exist yet counts as up: its server answered). A service started beside its database, by
/// a machine boot or a container orchestrator, would otherwise exit on the first refusal. A
/// login the server refuses (a wrong password or user: SQLSTATE class 28), or TLS refused, will
/// not come right by waiting, and is returned at once.
pub async fn wait_until_up(url: &str, patience: std::time::Duration) -> Result<(), sqlx::Error> {
    use std::time::Duration;
    let options = connect_options(url)?;
    let deadline = tokio::time::Instant::now() + patience;
    let mut pause = Duration::from_millis(250);
    loop {
        // A host that drops packets would hold one attempt for minutes: each gets what is left
        // of the patience, and at least a few seconds.
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let attempt = tokio::time::timeout(
            left.max(Duration::from_secs(3)),
            PgConnection::connect_with(&options),
        );
        let err = match attempt.await {
            Ok(Ok(conn)) => {
                let _ = conn.close().await;
                return Ok(());
            }
            Ok(Err(sqlx::Error::Database(db)))
                if db.code().is_some_and(|code| code.starts_with("28")) =>
            {
                return Err(sqlx::Error::Database(db));
            }
            Ok(Err(err)) if tls_refused(&err) => return Err(err),
            Ok(Err(err)) if !not_up_yet(&err) => return Ok(()),
            Ok(Err(err)) => err,
            Err(_) => sqlx::Error::PoolTimedOut,
        };
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Err(err);
        }
        let pause_now = pause.min(left);
        tracing::warn!(error = %err, retry_in_ms = pause_now.as_millis() as u64, "the database is not up yet");
        tokio::time::sleep(pause_now).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// Creates the database named in `url` when it does not exist yet. The database itself is tried
/// first: a role let into its own database only (as hardened servers have it) never needs the
/// server's maintenance database, which creating it goes through.
pub async fn create_database_if_missing(url: &str) -> Result<(), sqlx::Error> {
    let code = |e: &sqlx::Error| match e {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    };
    match PgConnection::connect_with(&connect_options(url)?).await {
        Ok(conn) => {
            let _ = conn.close().await;
            return Ok(());
        }
        // 3D000: the database does not exist.
        Err(e) if code(&e).as_deref() != Some("3D000") => return Err(e),
        Err(_) => {}
    }
    tracing::info!("creating the database");
    match Postgres::create_database(url).await {
        // Another instance, starting beside this one, created it first (42P04), or at the
        // same time (23505, on the catalog's unique name).
        Err(e) if matches!(code(&e).as_deref(), Some("42P04" | "23505")) => Ok(()),
        other => other,
    }
}

/// How long a migration statement waits for a lock. A table's readers queue behind a
/// migration waiting to alter it, so a migration stuck behind a long report would hold every
/// clock-in up for as long: it gives up after this, and is tried again a little later.
const MIGRATION_LOCK_TIMEOUT: &str = "2s";
/// How long migrations are tried again when they keep meeting a held lock.
const MIGRATION_LOCK_PATIENCE: Duration = Duration::from_secs(10 * 60);

/// Applies pending migrations over a direct connection: sqlx serialises migrators with a
/// session advisory lock, which PgBouncer's transaction pooling would not keep. A migration that
/// cannot get its lock in `MIGRATION_LOCK_TIMEOUT` is rolled back (each runs in a transaction)
/// and tried again, with pauses from 1 to 30 s, for up to `MIGRATION_LOCK_PATIENCE`; so is a
/// second instance waiting for the first one's migrations.
pub async fn migrate(url: &str) -> Result<(), sqlx::migrate::MigrateError> {
    let options = connect_options(url)?.options([("lock_timeout", MIGRATION_LOCK_TIMEOUT)]);
    let deadline = tokio::time::Instant::now() + MIGRATION_LOCK_PATIENCE;
    let mut pause = Duration::from_secs(1);
    loop {
        let mut conn = PgConnection::connect_with(&options).await?;
        match MIGRATOR.run(&mut conn).await {
            Ok(()) => {
                conn.close().await?;
                return Ok(());
            }
            // A newer build migrated this database (this one is an older build rolled back to,
            // or an instance restarting during a rolling deploy): served as `/ready` holds, when
            // every migration this build has is applied.
            Err(sqlx::migrate::MigrateError::VersionMissing(newer))
                if has_every_embedded(&mut conn).await? =>
            {
                tracing::warn!(
                    newer,
                    "the database has migrations newer than this build's; serving on it"
                );
                conn.close().await?;
                return Ok(());
            }
            // The connection is dropped before the pause, and with it the migrators' advisory
            // lock (the failed migration's table locks went with its error), so that another
            // instance's migrator is not held up by this one's pause.
            Err(e) if lock_not_available(&e) && tokio::time::Instant::now() < deadline => {
                drop(conn);
                tracing::warn!(error = %e, retry_in_s = pause.as_secs(), "a migration waited too long for a lock; trying again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(30));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Whether every migration embedded in this build is applied (successfully) to the database,
/// whatever newer ones a later build added.
async fn has_every_embedded(conn: impl sqlx::PgExecutor<'_>) -> Result<bool, sqlx::Error> {
    let embedded: Vec<i64> = MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .map(|m| m.version)
        .collect();
    sqlx::query_scalar(
        "SELECT count(*) = cardinality($1) FROM _sqlx_migrations
         WHERE success AND version = ANY($1)",
    )
    .bind(&embedded)
    .fetch_one(conn)
    .await
}

/// Postgres gave up waiting for a lock (55P03, `lock_timeout`).
fn lock_not_available(e: &sqlx::migrate::MigrateError) -> bool {
    use sqlx::migrate::MigrateError;
    let (MigrateError::Execute(sqlx::Error::Database(db))
    | MigrateError::ExecuteMigration(sqlx::Error::Database(db), _)) = e
    else {
        return false;
    };
    db.code().as_deref() == Some("55P03")
}

/// Loads the reference data (regions and councils). Safe to run any number of times.
pub async fn seed_geography(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(GEOGRAPHY_SEED).execute(pool).await?;
    Ok(())
}

/// The latest migration embedded in this binary.
pub fn latest_migration() -> i64 {
    MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
}

/// True when the database answers and has every embedded migration applied.
pub async fn is_ready(pool: &PgPool) -> bool {
    has_every_embedded(pool).await.unwrap_or(false)
}

pub mod attendance;
pub mod clock_ins;
pub mod clock_outs;
pub mod coalesce;
pub mod facilities;
pub mod restore;
pub mod users;

/// A transaction on a pooled connection.
pub type Tx = sqlx::Transaction<'static, Postgres>;

/// Opens a transaction. Every transaction of the service opens through here (or
/// [`begin_with`]), not through the pool's own `begin`.
pub async fn begin(pool: &PgPool) -> Result<Tx, sqlx::Error> {
    begin_with(pool, "BEGIN").await
}

/// Opens a transaction with `statement` (a `BEGIN` and what the transaction sets with it), in a
/// task of its own, so that a request given up while its `BEGIN` waits (behind a PgBouncer whose
/// server connections are all busy, say, until the request's time limit or its client's) cannot
/// return its connection to the pool inside a transaction. sqlx counts a transaction as open only
/// once its `BEGIN` has answered, and rolls back on drop only one it counts: the next request on
/// that connection would run inside the stale transaction, and its writes, answered as done, be
/// rolled back with it (or, after an error there, every later statement on the connection fail).
/// Left to its task, the `BEGIN` finishes, and a transaction nobody waits for any more is dropped
/// there and rolled back. The connection is taken here, as the pool's own `begin_with` takes it:
/// a request given up while it waits for one leaves the queue at once.
pub async fn begin_with(
    pool: &PgPool,
    statement: impl Into<std::borrow::Cow<'static, str>>,
) -> Result<Tx, sqlx::Error> {
    let conn = pool.acquire().await?;
    let statement = statement.into();
    // What the pool's own `begin_with` runs once it has the connection.
    let begun = tokio::spawn(sqlx::Transaction::begin(conn, Some(statement)));
    match begun.await {
        Ok(tx) => tx,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // The runtime is shutting down.
        Err(_) => Err(sqlx::Error::PoolClosed),
    }
}

/// Opens a transaction whose statements Postgres cancels after `limit`: a request the service
/// gave up on would otherwise keep its query running, and its pool connection taken, to the end.
/// Set for the transaction only, as a pooler in transaction mode requires; in the same round
/// trip as its `BEGIN`.
pub async fn bounded(pool: &PgPool, limit: std::time::Duration) -> Result<Tx, sqlx::Error> {
    begin_with(
        pool,
        format!("BEGIN; SET LOCAL statement_timeout = {}", millis(limit)),
    )
    .await
}

/// Opens a transaction, in one round trip, whose statements Postgres cancels after `limit` and
/// which gives up after `lock_wait` on a row another session holds.
pub async fn begin_limited(
    pool: &PgPool,
    limit: std::time::Duration,
    lock_wait: std::time::Duration,
) -> Result<Tx, sqlx::Error> {
    begin_with(
        pool,
        format!(
            "BEGIN; SET LOCAL statement_timeout = {}; SET LOCAL lock_timeout = {}",
            millis(limit),
            millis(lock_wait)
        ),
    )
    .await
}

/// A limit as Postgres takes it: whole milliseconds, at least one (0 would mean no limit).
fn millis(limit: std::time::Duration) -> u128 {
    limit.as_millis().max(1)
}

/// How long background upkeep (a periodic job, or the ending of a stolen chain's access tokens)
/// waits for a row another session holds.
const UPKEEP_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// How long upkeep that holds rows requests need may run (the sweep, ending stolen tokens).
pub const UPKEEP_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);
/// How long upkeep that only deletes what no one uses may run: a backlog (the service down for
/// weeks) may take a while to clear.
pub const BACKLOG_LIMIT: std::time::Duration = std::time::Duration::from_secs(600);

/// Opens a transaction for background upkeep: bounded by `limit` ([`UPKEEP_LIMIT`] or
/// [`BACKLOG_LIMIT`]), and giving up after a few seconds' wait for a row another session holds
/// (one left open in `psql`, say) rather than wait on, holding the rows it has already locked
/// from the requests that need them. The work is tried again at its next turn.
pub async fn upkeep(pool: &PgPool, limit: std::time::Duration) -> Result<Tx, sqlx::Error> {
    begin_limited(pool, limit, UPKEEP_LOCK_WAIT).await
}

/// Bounds the statements of the transaction open on `conn`, as [`bounded`] does (after any
/// `SET TRANSACTION`, which must come first).
pub async fn bound(conn: &mut PgConnection, limit: std::time::Duration) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT set_config('statement_timeout', $1, true)")
        .bind(format!("{}ms", millis(limit)))
        .execute(conn)
        .await?;
    Ok(())
}

/// Makes the transaction open on `conn` a read-only one whose statements all see one snapshot,
/// bounded as [`bounded`] is.
pub async fn read_snapshot(
    conn: &mut PgConnection,
    limit: std::time::Duration,
) -> Result<(), sqlx::Error> {
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *conn)
        .await?;
    bound(conn, limit).await
}

/// Postgres ended the statement to break a deadlock (40P01): nothing of it was written.
pub fn is_deadlock(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("40P01"))
}

/// Postgres ended the transaction to break a deadlock (40P01) or to keep serializable
/// transactions apart (40001): nothing of it was written, and it may be run again.
pub fn is_contention(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("40P01" | "40001")))
}

/// The total of a page of `len` rows read with `limit` and `offset`. A page shorter than the
/// limit ends the matches, so its total is known unless it is empty past the first page;
/// otherwise the matches are counted on their own. (A window count, `count(*) OVER ()`, would
/// read and hold every matching row, wide columns included, before the first page is
/// returned: half a second for the first page of a million audit rows, against a fiftieth
/// for the page and a separate count.)
/// Facility searches are the exception (see `window_total`).
pub async fn page_total(
    len: usize,
    limit: i64,
    offset: i64,
    count: impl AsyncFnOnce() -> Result<i64, sqlx::Error>,
) -> Result<i64, sqlx::Error> {
    let len = len as i64;
    if len < limit && (len > 0 || offset == 0) {
        Ok(offset + len)
    } else {
        count().await
    }
}

/// The total a window count (`count(*) OVER ()`) gave on the page's first row or, for a page
/// past the end, which has no row to carry it, the matches counted on their own. For a search
/// whose filter must be computed for every row anyway (a facility's distance from a point),
/// over a table of thousands: a separate count would compute it twice.
pub async fn window_total(
    first: Option<i64>,
    offset: i64,
    count: impl AsyncFnOnce() -> Result<i64, sqlx::Error>,
) -> Result<i64, sqlx::Error> {
    match first {
        Some(total) => Ok(total),
        None if offset > 0 => count().await,
        None => Ok(0),
    }
}

#[cfg(test)]
mod tests {
    use super::page_total;

    /// The total for a page, and whether the matches had to be counted (there are 120).
    async fn total(len: usize, limit: i64, offset: i64) -> (i64, bool) {
        let mut counted = false;
        let total = page_total(len, limit, offset, async || {
            counted = true;
            Ok(120)
        })
        .await
        .unwrap();
        (total, counted)
    }

    #[tokio::test]
    async fn a_short_page_knows_its_total_and_a_full_or_empty_one_counts() {
        assert_eq!(total(0, 50, 0).await, (0, false), "nothing matches");
        assert_eq!(total(20, 50, 100).await, (120, false), "the last page");
        assert_eq!(total(50, 50, 0).await, (120, true), "a full first page");
        assert_eq!(total(50, 50, 50).await, (120, true), "a full middle page");
        assert_eq!(total(0, 50, 500).await, (120, true), "past the end");
    }
}
