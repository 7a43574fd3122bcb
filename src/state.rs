//! Shared application state, handed to handlers through `State` (and `FromRef` for its parts).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::FromRef;
use sqlx::PgPool;
use uuid::Uuid;

use crate::auth::extractor::AuthCache;
use crate::auth::jwt::JwtKeys;
use crate::auth::password::Hasher;
use crate::auth::rate_limit::{Limiter, limiter};
use crate::config::Config;
use crate::db::clock_ins::ClockIns;
use crate::db::clock_outs::{OpenShifts, ShiftCloses};
use crate::db::coalesce::Coalescer;
use crate::db::facilities::SiteCache;
use crate::error::ApiError;
use crate::metrics::Metrics;

/// One limiter per rate-limit class of the contract.
#[derive(Clone)]
pub struct Limiters {
    pub api: Limiter,
    pub auth: Limiter,
    pub upload: Limiter,
    pub sync: Limiter,
}

impl Limiters {
    pub fn all(&self) -> [&Limiter; 4] {
        [&self.api, &self.auth, &self.upload, &self.sync]
    }
}

/// The statements that requests arriving together share (see [`crate::db::coalesce`]).
pub struct Batches {
    pub clock_ins: Coalescer<ClockIns>,
    pub open_shifts: Coalescer<OpenShifts>,
    pub shift_closes: Coalescer<ShiftCloses>,
}

impl Batches {
    /// A statement never holds its slot longer than a request may take.
    fn new(db: &PgPool, time_limit: Duration) -> Self {
        Self {
            clock_ins: Coalescer::new(db.clone(), ClockIns, time_limit),
            open_shifts: Coalescer::new(db.clone(), OpenShifts, time_limit),
            shift_closes: Coalescer::new(db.clone(), ShiftCloses, time_limit),
        }
    }
}

/// What every handler shares, behind one `Arc`: a request clones a pointer, not each part.
#[derive(Clone)]
pub struct AppState(Arc<Services>);

impl std::ops::Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

pub struct Services {
    pub db: PgPool,
    /// One connection of its own for `/ready`, so that a busy pool does not read as a database
    /// that is away.
    pub probe: crate::db::Probe,
    pub config: Arc<Config>,
    pub hasher: Hasher,
    pub jwt: Arc<JwtKeys>,
    pub auth_cache: Arc<AuthCache>,
    pub sites: Arc<SiteCache>,
    pub batches: Arc<Batches>,
    /// None when rate limiting is switched off.
    pub limiters: Option<Limiters>,
    pub metrics: Metrics,
    pub started_at: Instant,
    /// Exports running at once, from the query to the end of the download. Each holds a
    /// database connection until its rows are written to the file its client reads, so they may
    /// take a quarter of the pool at most, never all of it; and the files are as few.
    pub exports: Arc<tokio::sync::Semaphore>,
    /// The facility file being read: one at a time (see `import::apply::run`).
    pub imports: Arc<tokio::sync::Semaphore>,
    /// Work that runs to its end whatever becomes of the request that began it (an import),
    /// which shutdown waits for.
    pub tasks: tokio_util::task::TaskTracker,
}

impl AppState {
    pub fn new(config: Config, db: PgPool) -> Self {
        let jwt = Arc::new(JwtKeys::new(&config.auth));
        let export_slots = (config.db.max_connections as usize / 4).max(1);
        let rl = &config.rate_limits;
        let limiters = rl.enabled.then(|| Limiters {
            api: limiter(rl.api, jwt.clone(), rl.trust_proxy.clone(), true),
            auth: limiter(rl.auth, jwt.clone(), rl.trust_proxy.clone(), false),
            upload: limiter(rl.upload, jwt.clone(), rl.trust_proxy.clone(), true),
            sync: limiter(rl.sync, jwt.clone(), rl.trust_proxy.clone(), true),
        });
        Self(Arc::new(Services {
            hasher: Hasher::new(config.auth.max_concurrent_hashes),
            auth_cache: Arc::new(AuthCache::new(Duration::from_secs(30))),
            sites: Arc::new(SiteCache::new(Duration::from_secs(30))),
            batches: Arc::new(Batches::new(&db, config.request_timeout)),
            jwt,
            limiters,
            config: Arc::new(config),
            probe: crate::db::Probe::new(&db),
            db,
            metrics: Metrics::global(),
            started_at: Instant::now(),
            exports: Arc::new(tokio::sync::Semaphore::new(export_slots)),
            imports: Arc::new(tokio::sync::Semaphore::new(1)),
            tasks: tokio_util::task::TaskTracker::new(),
        }))
    }

    /// Runs `work` on a task of its own, to its end whatever becomes of the request awaiting it
    /// (its time limit, its client gone); shutdown waits for it.
    pub async fn to_the_end<T, F>(&self, work: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, ApiError>> + Send + 'static,
    {
        use tracing::Instrument;
        // Its log lines keep the request's id.
        self.tasks
            .spawn(work.in_current_span())
            .await
            .map_err(anyhow::Error::from)?
    }

    /// Commits a change to user `id`'s account (role, status, password, team) and forgets what
    /// this instance cached of it, to the end ([`Self::to_the_end`]): a request ended meanwhile
    /// cannot leave the old state cached, for the user's tokens to be read against, once the
    /// change is committed.
    pub async fn commit_for_user(&self, tx: crate::db::Tx, id: Uuid) -> Result<(), ApiError> {
        let cache = self.auth_cache.clone();
        self.to_the_end(async move {
            let committed = tx.commit().await;
            cache.invalidate(id);
            Ok(committed?)
        })
        .await
    }
}

impl FromRef<AppState> for PgPool {
    fn from_ref(state: &AppState) -> Self {
        state.db.clone()
    }
}

impl FromRef<AppState> for Arc<Config> {
    fn from_ref(state: &AppState) -> Self {
        state.config.clone()
    }
}
