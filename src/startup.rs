//! Building and running the service: prepare the database, bind the listener (so the port is
//! known before serving, and tests never race for one), then serve until told to stop.

use std::future::Future;
use std::net::SocketAddr;

use anyhow::Context;
use axum::Router;
use secrecy::ExposeSecret;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::state::AppState;

pub struct Application {
    listener: TcpListener,
    router: Router,
    state: AppState,
}

impl Application {
    /// Migrates and seeds when configured to, connects the pool and binds the listener.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        // Both are reached at start, each through its own URL (PgBouncer may come up later
        // than Postgres).
        let reached_at_start = [
            (
                config.run_migrations,
                "MIGRATION_DATABASE_URL",
                config.migration_database_url(),
            ),
            (
                config.seed_on_start,
                "DATABASE_URL",
                config.db.url.expose_secret(),
            ),
        ];
        for (_, key, url) in reached_at_start.into_iter().filter(|(needed, ..)| *needed) {
            crate::db::wait_until_up(url, config.db.startup_wait)
                .await
                .with_context(|| {
                    format!(
                        "the database at {key} did not answer within {} s (DB_STARTUP_WAIT_SECS)",
                        config.db.startup_wait.as_secs()
                    )
                })?;
        }
        if config.run_migrations {
            prepare_database(&config).await?;
        }
        let db = crate::db::pool(&config.db).context("DATABASE_URL is not usable")?;
        let listener = TcpListener::bind(config.bind_addr)
            .await
            .with_context(|| format!("cannot bind {}", config.bind_addr))?;
        let state = AppState::new(config, db);
        if state.config.seed_on_start {
            crate::seed::run(&state).await.context("seeding failed")?;
        }
        let router = crate::routes::build(state.clone());
        Ok(Self {
            listener,
            router,
            state,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` completes, then lets in-flight requests finish.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let background = crate::jobs::spawn(self.state.clone());
        tracing::info!(addr = %self.local_addr(), "listening");
        let result = axum::serve(
            self.listener,
            self.router
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await;
        background.abort();
        result
    }
}

/// Creates the database when missing and applies migrations, over the direct URL.
pub async fn prepare_database(config: &Config) -> anyhow::Result<()> {
    let url = config.migration_database_url();
    crate::db::create_database_if_missing(url)
        .await
        .context("cannot reach or create the database at MIGRATION_DATABASE_URL")?;
    crate::db::migrate(url)
        .await
        .context("applying migrations failed")?;
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received; finishing in-flight requests");
}
