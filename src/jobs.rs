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
        // Past its statements' own limits and the wait for a connection: a run still going then
        // waits on a connection that died unseen (no keepalive: a dropped network path).
        // A run makes a few statements (with their commits), each under its limit: ample.
        let acquire = state.config.db.acquire_timeout;
        let upkeep = acquire + crate::db::UPKEEP_LIMIT * 5;
        let backlog = (acquire + crate::db::BACKLOG_LIMIT * 3) * 2;
        let mut jobs = tokio::task::JoinSet::new();
        jobs.spawn(every(
            sweep_every,
            upkeep,
            state.clone(),
            |state| async move { close_forgotten_clock_outs(&state).await },
        ));
        jobs.spawn(every(
            Duration::from_secs(5),
            upkeep,
            state.clone(),
            |state| async move { state.metrics.run_upkeep() },
        ));
        jobs.spawn(every(
            Duration::from_secs(3600),
            backlog,
            state.clone(),
            |state| async move { prune(&state).await },
        ));
        jobs.spawn(every(
            Duration::from_secs(60),
            upkeep,
            state.clone(),
            |state| async move { end_stolen_sessions(&state).await },
        ));
        jobs.spawn(every(
            Duration::from_secs(60),
            upkeep,
            state,
            |state| async move {
                // Forget rate-limit keys whose quota has refilled, so memory stays bounded.
                if let Some(limiters) = &state.limiters {
                    for limiter in limiters.all() {
                        limiter.limiter().retain_recent();
                    }
                }
            },
        ));
        // Dropped with this task when it is aborted, the set aborts every job.
        while jobs.join_next().await.is_some() {}
    })
}

/// Runs `job` at once and then every `period`; a run that overruns its period delays the next.
/// A run that panics, or is still going after `deadline` (and is then dropped, its transaction
/// with it), is logged, and the job runs again at its next turn.
async fn every<S, F, Fut>(period: Duration, deadline: Duration, state: S, job: F)
where
    S: Clone,
    F: Fn(S) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    use futures::FutureExt;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let run = std::panic::AssertUnwindSafe(job(state.clone()));
        match tokio::time::timeout(deadline, run.catch_unwind()).await {
            Ok(Ok(())) => {}
            Ok(Err(panic)) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(panic = %what, ?period, "a background job panicked; it runs again at its next turn");
            }
            Err(_) => tracing::error!(
                ?deadline,
                ?period,
                "a background job was still running at its deadline and was stopped; it runs again at its next turn"
            ),
        }
    }
}

/// Closes every open record older than the maximum shift as `incomplete`.
async fn close_forgotten_clock_outs(state: &AppState) {
    let before = forgotten_before(chrono::Utc::now(), state.config.attendance.max_shift);
    let swept = async {
        // Bounded: waiting on a row, it would keep the open shifts it had already locked, and
        // their clock-outs would wait behind it.
        let mut tx = crate::db::upkeep(&state.db, crate::db::UPKEEP_LIMIT).await?;
        let closed = crate::db::attendance::close_forgotten(&mut *tx, None, before).await?;
        tx.commit().await?;
        Ok::<_, sqlx::Error>(closed)
    };
    match swept.await {
        Ok(0) => {}
        Ok(n) => tracing::info!(closed = n, "closed forgotten clock-outs as incomplete"),
        Err(e) => tracing::warn!(error = %e, "forgotten clock-out sweep failed; will retry"),
    }
}

/// Ends the access tokens of stolen refresh chains that the request which found them left
/// live (see [`crate::auth::refresh::end_pending_access_tokens`]).
async fn end_stolen_sessions(state: &AppState) {
    match crate::auth::refresh::end_pending_access_tokens(&state.db).await {
        Ok(users) => {
            for user in &users {
                state.auth_cache.invalidate(*user);
            }
            if !users.is_empty() {
                tracing::warn!(
                    users = users.len(),
                    "ended the access tokens of stolen refresh chains left live"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "ending stolen sessions failed; will retry"),
    }
}

/// WatermelonDB timestamps a device would still hold when it comes back online within this long
/// stay exact; older ones are thinned.
pub const EXACT_SYNC_TIMESTAMPS: Duration = Duration::from_secs(14 * 24 * 3600);

/// How many consecutive old WatermelonDB timestamps share one stored snapshot.
pub const SYNC_TIMESTAMPS_PER_RANGE: i64 = 1000;

/// Removes what can never be used again: refresh tokens long expired, and most old WatermelonDB
/// snapshots (see [`crate::sync::watermelon::thin_snapshots`]). Every instance may run it; the
/// work is the same whoever does it. Each part is bounded as all upkeep is ([`crate::db::upkeep`]).
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Runs a job every 20 ms whose first run goes `wrong` (and the others end at once), and
    /// waits for its third run: the job ran on after the first.
    async fn runs_again_after<F>(deadline: Duration, wrong: F)
    where
        F: Fn() -> futures::future::BoxFuture<'static, ()> + Send + Sync + 'static,
    {
        let runs = Arc::new(AtomicUsize::new(0));
        let wrong = Arc::new(wrong);
        let job = tokio::spawn(every(
            Duration::from_millis(20),
            deadline,
            runs.clone(),
            move |runs| {
                let first = runs.fetch_add(1, Ordering::SeqCst) == 0;
                let wrong = wrong.clone();
                async move {
                    if first {
                        wrong().await;
                    }
                }
            },
        ));
        let again = async {
            while runs.load(Ordering::SeqCst) < 3 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), again)
            .await
            .expect("the job runs on after its first run");
        assert!(!job.is_finished());
        job.abort();
    }

    #[tokio::test]
    async fn a_job_that_panics_runs_again_at_its_next_turn() {
        runs_again_after(Duration::from_secs(60), || {
            Box::pin(async { panic!("the first run fails") })
        })
        .await;
    }

    #[tokio::test]
    async fn a_job_whose_run_never_ends_is_stopped_at_its_deadline_and_runs_again() {
        // A statement on a connection that died unseen.
        runs_again_after(Duration::from_millis(200), || {
            Box::pin(std::future::pending::<()>())
        })
        .await;
    }
}
