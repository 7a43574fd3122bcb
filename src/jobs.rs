//! Periodic background work.

use std::time::Duration;

use tokio::task::JoinHandle;

use crate::domain::attendance::forgotten_before;
use crate::state::AppState;

/// Starts the background jobs; abort the handle to stop them.
pub fn spawn(state: AppState) -> JoinHandle<()> {
    tokio::spawn(async move {
        let sweep_every = state
            .config
            .attendance
            .sweep_interval
            .max(Duration::from_secs(1));
        let mut sweep = tokio::time::interval(sweep_every);
        let mut housekeeping = tokio::time::interval(Duration::from_secs(60));
        let mut metrics_upkeep = tokio::time::interval(Duration::from_secs(5));
        let mut pruning = tokio::time::interval(Duration::from_secs(3600));
        loop {
            tokio::select! {
                _ = sweep.tick() => close_forgotten_clock_outs(&state).await,
                _ = metrics_upkeep.tick() => state.metrics.run_upkeep(),
                _ = pruning.tick() => prune(&state).await,
                _ = housekeeping.tick() => {
                    // Forget rate-limit keys whose quota has refilled, so memory stays bounded.
                    if let Some(limiters) = &state.limiters {
                        for limiter in limiters.all() {
                            limiter.limiter().retain_recent();
                        }
                    }
                }
            }
        }
    })
}

/// Closes every open record older than the maximum shift as `incomplete`.
async fn close_forgotten_clock_outs(state: &AppState) {
    let before = forgotten_before(chrono::Utc::now(), state.config.attendance.max_shift);
    match crate::db::attendance::close_forgotten(&state.db, None, before).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(closed = n, "closed forgotten clock-outs as incomplete"),
        Err(e) => tracing::warn!(error = %e, "forgotten clock-out sweep failed; will retry"),
    }
}

/// WatermelonDB timestamps a device would still hold when it comes back online within this long
/// stay exact; older ones are thinned.
pub const EXACT_SYNC_TIMESTAMPS: Duration = Duration::from_secs(14 * 24 * 3600);

/// How many consecutive old WatermelonDB timestamps share one stored snapshot.
pub const SYNC_TIMESTAMPS_PER_RANGE: i64 = 1000;

/// Removes what can never be used again: refresh tokens long expired, and most old WatermelonDB
/// snapshots (see [`crate::sync::watermelon::thin_snapshots`]). Every instance may run it; the
/// work is the same whoever does it.
async fn prune(state: &AppState) {
    match crate::auth::refresh::prune_expired(&state.db).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(removed = n, "pruned expired refresh tokens"),
        Err(e) => tracing::warn!(error = %e, "pruning refresh tokens failed; will retry"),
    }
    let thinned = crate::sync::watermelon::thin_snapshots(
        &state.db,
        EXACT_SYNC_TIMESTAMPS,
        SYNC_TIMESTAMPS_PER_RANGE,
    )
    .await;
    match thinned {
        Ok(0) => {}
        Ok(n) => tracing::info!(removed = n, "thinned old WatermelonDB snapshots"),
        Err(e) => tracing::warn!(error = %e, "thinning WatermelonDB snapshots failed; will retry"),
    }
}
