//! Periodic background work.

use std::time::Duration;

use tokio::task::JoinHandle;

use crate::domain::attendance::forgotten_before;
use crate::state::AppState;

/// Starts the background jobs, each on its own schedule and in its own task, so that one slow
/// statement (a sweep waiting on a lock, say) never holds the others up; abort the handle to
/// stop them all.
pub fn spawn(state: AppState) -> JoinHandle<()> {
    tokio::spawn(async move {
        let sweep_every = state
            .config
            .attendance
            .sweep_interval
            .max(Duration::from_secs(1));
        let mut jobs = tokio::task::JoinSet::new();
        jobs.spawn(every(sweep_every, state.clone(), |state| async move {
            close_forgotten_clock_outs(&state).await
        }));
        jobs.spawn(every(
            Duration::from_secs(5),
            state.clone(),
            |state| async move { state.metrics.run_upkeep() },
        ));
        jobs.spawn(every(
            Duration::from_secs(3600),
            state.clone(),
            |state| async move { prune(&state).await },
        ));
        jobs.spawn(every(Duration::from_secs(60), state, |state| async move {
            // Forget rate-limit keys whose quota has refilled, so memory stays bounded.
            if let Some(limiters) = &state.limiters {
                for limiter in limiters.all() {
                    limiter.limiter().retain_recent();
                }
            }
        }));
        // Dropped with this task when it is aborted, the set aborts every job.
        while jobs.join_next().await.is_some() {}
    })
}

/// Runs `job` at once and then every `period`; a run that overruns its period delays the next.
async fn every<F, Fut>(period: Duration, state: AppState, job: F)
where
    F: Fn(AppState) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        job(state.clone()).await;
    }
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
