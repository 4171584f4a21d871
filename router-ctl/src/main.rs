//! `router-ctl`: the shardcast command line. All logic lives in the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = router_ctl::cli::Cli::parse();
    // The daemon reports what it does; one-shot commands only warn.
    let default = cli.command.default_log_level();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default.into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match router_ctl::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("router-ctl: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
