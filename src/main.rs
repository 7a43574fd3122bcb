use clap::Parser;

// Requests and database rows make many small, short-lived allocations, often freed on another
// worker thread than the one that made them. Under glibc's allocator that was 40 % of the
// service's CPU in a sync-push profile (malloc, free and their consolidation).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // Before the arguments: some are read from the environment (ADMIN_PASSWORD), which a
    // `.env` file may supply. One that cannot be read whole is no start: the lines after a bad
    // one (a value with unquoted spaces) would be left out without a word.
    if let Err(err) = dotenvy::dotenv()
        && !err.not_found()
    {
        eprintln!("field-attendance: .env: {}", dotenv_problem(&err));
        return std::process::ExitCode::FAILURE;
    }
    let cli = field_attendance::cli::Cli::parse();
    // Named threads, so that `top -H` and profiles tell the service's work apart.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("fa-worker")
        .build()
        .expect("the async runtime starts");
    let code = match runtime.block_on(field_attendance::cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("field-attendance: {err:#}");
            std::process::ExitCode::FAILURE
        }
    };
    // Whatever is still running (a connection left after the shutdown deadline, a file being
    // parsed) is not waited for.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}

/// What is wrong with `.env`, never the text of a line (it may hold a password).
fn dotenv_problem(err: &dotenvy::Error) -> String {
    match err {
        dotenvy::Error::LineParse(..) => "a line cannot be read: put a value with spaces in \
                                          quotes, and one with `$` in single quotes"
            .to_string(),
        other => other.to_string(),
    }
}
