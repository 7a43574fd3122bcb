//! Shared application state, handed to handlers through `State` (and `FromRef` for its parts).

use std::sync::Arc;
use std::time::Instant;

use axum::extract::FromRef;
use sqlx::PgPool;

use crate::auth::password::Hasher;
use crate::config::Config;
use crate::metrics::Metrics;

#[derive(Clone)]
pub struct AppState {
    pub db: PgPool,
    pub config: Arc<Config>,
    pub hasher: Hasher,
    pub metrics: Metrics,
    pub started_at: Instant,
}

impl AppState {
    pub fn new(config: Config, db: PgPool) -> Self {
        Self {
            hasher: Hasher::new(config.auth.max_concurrent_hashes),
            config: Arc::new(config),
            db,
            metrics: Metrics::global(),
            started_at: Instant::now(),
        }
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
