//! Periodic background work.

use std::time::Duration;

use tokio::task::JoinHandle;

use crate::state::AppState;

/// Starts the background jobs; abort the handle to stop them.
pub fn spawn(state: AppState) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            // Forget rate-limit keys whose quota has fully refilled, so memory stays bounded.
            if let Some(limiters) = &state.limiters {
                for limiter in limiters.all() {
                    limiter.limiter().retain_recent();
                }
            }
        }
    })
}
