//! `router-ctl`: the shardcast command line. All logic lives in the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = router_ctl::cli::Cli::parse();
    match router_ctl::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("router-ctl: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
