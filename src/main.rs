use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = field_attendance::cli::Cli::parse();
    // Named threads, so that `top -H` and profiles tell the service's work apart.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("fa-worker")
        .build()
        .expect("the async runtime starts");
    match runtime.block_on(field_attendance::cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("field-attendance: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
