//! Logging: JSON (or pretty, in development) to stdout (stderr for commands that print their
//! own output), and JSON to daily-rotated files.
//!
//! Request and response bodies are never logged, and the `Authorization` header is marked
//! sensitive by the middleware stack, so passwords and tokens cannot reach a log line.

use tracing_appender::non_blocking::WorkerGuard;
use tracing_appender::rolling::{RollingFileAppender, Rotation};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, fmt};

use crate::config::{LogFormat, LogSettings};

/// Where console log lines go.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Console {
    Stdout,
    /// For a command whose own output is on stdout (a report to pipe into `jq`, say).
    Stderr,
}

/// Installs the global subscriber. Keep the returned guards alive for the life of the process:
/// dropping them flushes the file writer.
pub fn init(settings: &LogSettings, console: Console) -> anyhow::Result<Vec<WorkerGuard>> {
    let mut guards = Vec::new();
    let filter = EnvFilter::try_new(&settings.filter)
        .map_err(|e| anyhow::anyhow!("LOG_LEVEL `{}` is invalid: {e}", settings.filter))?;

    let (stdout, guard) = match console {
        Console::Stdout => tracing_appender::non_blocking(std::io::stdout()),
        Console::Stderr => tracing_appender::non_blocking(std::io::stderr()),
    };
    guards.push(guard);
    let stdout_layer = match settings.format {
        LogFormat::Json => fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(stdout)
            .boxed(),
        LogFormat::Pretty => fmt::layer().with_writer(stdout).boxed(),
    };

    let file_layer = match &settings.dir {
        Some(dir) => {
            let appender = RollingFileAppender::builder()
                .rotation(Rotation::DAILY)
                .filename_prefix("field-attendance")
                .filename_suffix("log")
                // The appender prunes to one file fewer than this before it opens today's,
                // counting today's when it is there (at a restart): so at least
                // `LOG_RETENTION_DAYS` days are kept besides today's.
                .max_log_files(settings.retention_files + 2)
                .build(dir)
                .map_err(|e| anyhow::anyhow!("LOG_DIR={dir} cannot hold the log files: {e}"))?;
            let (writer, guard) = tracing_appender::non_blocking(appender);
            guards.push(guard);
            Some(
                fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_ansi(false)
                    .with_writer(writer)
                    .boxed(),
            )
        }
        None => None,
    };

    tracing_subscriber::registry()
        .with(filter)
        .with(stdout_layer)
        .with(file_layer)
        .try_init()?;
    Ok(guards)
}
