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
        // Each URL is waited for just before its first use, each with its own patience: the
        // application's may be PgBouncer, which would remember a login to a database not yet
        // created (and refuse its clients for a while), so it is tried only once the migrations
        // have created it.
        if config.run_migrations {
            prepare_database(&config).await?;
        }
        if config.seed_on_start {
            wait_for(&config, "DATABASE_URL", config.db.url.expose_secret()).await?;
        }
        let db = crate::db::pool(&config.db).context("DATABASE_URL is not usable")?;
        let listener = TcpListener::bind(config.bind_addr)
            .await
            .with_context(|| format!("cannot bind {}", config.bind_addr))?;
        let state = AppState::new(config, db);
        if state.config.seed_on_start {
            // Seeding a database that lacks the migrations would fail on its first table (when
            // this start ran them, they are there).
            if !state.config.run_migrations && !crate::db::is_ready(&state.db).await {
                anyhow::bail!(
                    "the database at DATABASE_URL lacks this build's migrations, which seeding \
                     needs: run `field-attendance migrate` first, or start with RUN_MIGRATIONS=true"
                );
            }
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

    /// Serves until `shutdown` completes, then lets in-flight requests finish, and work that
    /// outlives its request (an import whose request timed out) end, within the request timeout
    /// and 5 s more of the signal: what is left then (a client reading a download very slowly,
    /// or a file still coming up to an import over a slow link, say) is dropped as the process
    /// ends. A second SIGINT or SIGTERM ends the wait at once.
    ///
    /// A client has `IDLE_TIMEOUT_SECS` to send a request's line and headers, and a kept-alive
    /// connection that long between requests, before its connection is closed: the request
    /// timeout starts only once the headers are in, so without this a client sending them byte by
    /// byte, or a connection left open and idle, would hold its socket for ever.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let background = crate::jobs::spawn(self.state.clone());
        tracing::info!(addr = %self.local_addr(), "listening");
        let grace = self.state.config.request_timeout + std::time::Duration::from_secs(5);
        let (told, stopping) = tokio::sync::oneshot::channel::<()>();
        let serve = serve(
            self.listener,
            self.router,
            self.state.config.idle_timeout,
            async move {
                shutdown.await;
                let _ = told.send(());
            },
        );
        let tasks = self.state.tasks.clone();
        // Everything after the signal: requests drain, then the work they began ends.
        let drained = async move {
            let result = serve.await;
            tasks.close();
            tasks.wait().await;
            result
        };
        tokio::pin!(drained);
        let result = tokio::select! {
            result = &mut drained => result,
            Ok(()) = stopping => {
                let deadline = tokio::time::Instant::now() + grace;
                tokio::select! {
                    result = &mut drained => result,
                    () = tokio::time::sleep_until(deadline) => {
                        tracing::warn!(
                            "requests or work begun by them still running {grace:?} after the \
                             shutdown signal; stopping without them"
                        );
                        Ok(())
                    }
                    () = signalled() => {
                        tracing::warn!("a second shutdown signal: stopping now");
                        Ok(())
                    }
                }
            }
        };
        background.abort();
        // Connections are closed as a client should, rather than cut as the process ends (each
        // a line in the logs of Postgres or PgBouncer); one still taken is not waited for long.
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(2), self.state.db.close()).await;
        result
    }
}

/// Accepts connections and serves `router` on each over HTTP/1.1 (as `axum::serve` does, with a
/// timer for hyper's header read timeout, which `axum::serve` gives it none of) until `shutdown`
/// completes; then stops accepting, closes idle connections, and returns once the rest have
/// answered what they were asked.
async fn serve(
    mut listener: TcpListener,
    router: Router,
    header_read_timeout: std::time::Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::Listener;
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::server::graceful::GracefulShutdown;
    use tower::ServiceExt;

    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (io, peer) = tokio::select! {
            accepted = Listener::accept(&mut listener) => accepted,
            () = &mut shutdown => break,
        };
        let service = router
            .clone()
            .map_request(move |mut req: axum::extract::Request<_>| {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                req
            });
        let connection = http.serve_connection(
            TokioIo::new(io),
            hyper_util::service::TowerToHyperService::new(service),
        );
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%peer, "connection ended: {err}");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Waits up to `DB_STARTUP_WAIT_SECS` for the database at `url` (named by `key`) to answer.
pub(crate) async fn wait_for(config: &Config, key: &str, url: &str) -> anyhow::Result<()> {
    crate::db::wait_until_up(url, config.db.startup_wait)
        .await
        .map_err(|err| {
            let why = if crate::db::not_up_yet(&err) {
                format!(
                    "the database at {key} did not answer within {} s (DB_STARTUP_WAIT_SECS)",
                    config.db.startup_wait.as_secs()
                )
            } else {
                format!("the database at {key} refused the connection (check its user, password and database, and the TLS its `sslmode` asks for)")
            };
            anyhow::Error::from(err).context(why)
        })
}

/// Waits for the database server, creates the database when missing, applies migrations and
/// brings change marks a logical restore left ahead of the server's counter back under it, over
/// the direct URL.
pub async fn prepare_database(config: &Config) -> anyhow::Result<()> {
    let url = config.migration_database_url();
    let from = config.db.migration_url_from;
    wait_for(config, from, url).await?;
    crate::db::create_database_if_missing(url)
        .await
        .with_context(|| format!("cannot reach or create the database at {from}"))?;
    crate::db::migrate(url)
        .await
        .with_context(|| format!("applying migrations over {from} failed"))?;
    crate::db::restore::restamp_after_restore(url)
        .await
        .context("restamping change marks after a restore failed")?;
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    signalled().await;
    tracing::info!("shutdown signal received; finishing in-flight requests");
}

async fn signalled() {
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
}
