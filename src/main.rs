use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = field_attendance::cli::Cli::parse();
    match field_attendance::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("field-attendance: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
