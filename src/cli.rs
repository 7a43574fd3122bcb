//! Command-line interface: `serve` (the default), `migrate`, `seed`, `openapi`, `create-admin`.

use anyhow::Context;
use clap::{Parser, Subcommand};
use secrecy::{ExposeSecret, SecretString};

use crate::config::Config;
use crate::import::apply::{ImportOptions, OnDuplicate};
use crate::seed::Made;
use crate::startup::{Application, prepare_database, shutdown_signal, wait_for};
use crate::state::AppState;

#[derive(Debug, Parser)]
#[command(
    name = "field-attendance",
    version,
    about = "Field attendance API service"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, migrate and seed the database when configured to, then serve HTTP (the default).
    Serve,
    /// Create the database when missing and apply pending migrations.
    Migrate,
    /// Load the seed data (regions, councils, the first admin). Idempotent.
    Seed,
    /// Print the OpenAPI document as YAML.
    Openapi,
    /// Import facilities from a CSV or XLSX file and print the report.
    ImportFacilities {
        file: std::path::PathBuf,
        /// `skip` existing codes, or `update` them with the file's values.
        #[arg(long, default_value = "skip", value_parser = ["skip", "update"])]
        on_duplicate: String,
        /// Check and count without applying anything.
        #[arg(long)]
        dry_run: bool,
        /// Apply nothing if any row is invalid.
        #[arg(long)]
        strict: bool,
    },
    /// Create an admin account, or make an existing account an active admin.
    CreateAdmin {
        #[arg(long)]
        email: String,
        /// Read from ADMIN_PASSWORD when not given.
        #[arg(long, env = "ADMIN_PASSWORD", hide_env_values = true, value_parser = secret)]
        password: SecretString,
    },
}

/// A secret argument, kept out of `Debug` output from the moment it is parsed.
fn secret(value: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(value))
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let command = cli.command.unwrap_or(Command::Serve);
    if let Command::Openapi = command {
        print!("{}", crate::openapi::yaml()?);
        return Ok(());
    }
    let config = match command {
        Command::Serve => Config::from_env()?,
        _ => Config::for_command(&|key| std::env::var(key).ok())?,
    };
    let console = match command {
        Command::Serve => crate::telemetry::Console::Stdout,
        _ => crate::telemetry::Console::Stderr,
    };
    let _guards = crate::telemetry::init(&config.log, console)?;
    match command {
        Command::Serve => {
            let app = Application::build(config).await?;
            app.run_until(shutdown_signal()).await?;
        }
        Command::Migrate => {
            prepare_database(&config).await?;
            println!("migrations applied");
        }
        Command::Seed => {
            let state = offline_state(config).await?;
            crate::seed::run(&state).await?;
            println!("seed data loaded");
        }
        Command::CreateAdmin { email, password } => {
            let state = offline_state(config).await?;
            let id = crate::seed::create_admin(&state, &email, password, Made::ByCommand)
                .await?
                .expect("a command makes its admin whatever the roster holds");
            println!("admin {email} ready (id {id})");
        }
        Command::ImportFacilities {
            file,
            on_duplicate,
            dry_run,
            strict,
        } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let state = offline_state(config).await?;
            let options = ImportOptions {
                on_duplicate: if on_duplicate == "update" {
                    OnDuplicate::Update
                } else {
                    OnDuplicate::Skip
                },
                dry_run,
                strict,
            };
            let filename = file.file_name().map(|n| n.to_string_lossy().into_owned());
            let report = crate::import::apply::run(&state, bytes, filename, options, None)
                .await
                .map_err(|e| match e {
                    // "validation failed" alone would not say which column or why.
                    crate::error::ApiError::Validation(details) => anyhow::anyhow!(
                        "import refused: {}",
                        details
                            .iter()
                            .map(|(field, reasons)| format!("{field}: {}", reasons.join("; ")))
                            .collect::<Vec<_>>()
                            .join("; ")
                    ),
                    other => anyhow::anyhow!("import refused: {other}"),
                })?;
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        Command::Openapi => unreachable!("handled before configuration is read"),
    }
    Ok(())
}

/// State for one-off commands: a small pool, no listener. The database is waited for (a
/// command run beside a database still starting does not give up at once) and must hold this
/// build's migrations: a command migrates nothing (`DATABASE_URL` may be PgBouncer's, which
/// migrations must not go through), it says to run `migrate`.
async fn offline_state(mut config: Config) -> anyhow::Result<AppState> {
    wait_for(&config, "DATABASE_URL", config.db.url.expose_secret()).await?;
    config.db.min_connections = 0;
    config.db.max_connections = config.db.max_connections.min(4);
    let db = crate::db::pool(&config.db).context("DATABASE_URL is not usable")?;
    if !crate::db::is_ready(&db).await {
        anyhow::bail!(
            "the database at DATABASE_URL lacks this build's migrations: run `field-attendance migrate` first"
        );
    }
    Ok(AppState::new(config, db))
}
