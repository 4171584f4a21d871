//! Project tasks: `cargo xtask setup | build-ebpf | test | demo | bench | fuzz`.
//!
//! Everything a fresh machine needs is installed here, idempotently, so the
//! README's two commands (`cargo xtask demo`, `cargo xtask test`) work on a
//! new machine with no manual step.

mod build;
mod demo;
mod fuzz;
mod setup;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the build and tests need (idempotent).
    Setup,
    /// Build the XDP object and print its path.
    BuildEbpf,
    /// Setup when needed, build, then run every test (lint included).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run the built-in lab: namespaces, publishers, subscribers, real XDP.
    Demo,
    /// Benchmarks; results go to stdout in BENCHMARKS.md's table format.
    Bench,
    /// The differential run of the XDP program against the host model,
    /// then every cargo-fuzz target (docs/testing.md).
    Fuzz {
        /// Seconds per fuzz target (0: the differential run only).
        #[arg(long, default_value_t = 60)]
        secs: u64,
        /// Frames of the differential run (0: skip it).
        #[arg(long, default_value_t = 1_000_000)]
        frames: u64,
        /// Only this fuzz target.
        #[arg(long)]
        target: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r: Result<()> = match cli.command {
        Cmd::Setup => setup::ensure(),
        Cmd::BuildEbpf => build::build_ebpf().map(|o| println!("{}", o.router.display())),
        Cmd::Test { args } => test(&args),
        Cmd::Demo => demo::run(),
        Cmd::Bench => demo::bench(),
        Cmd::Fuzz {
            secs,
            frames,
            target,
        } => fuzz::run(secs, frames, target.as_deref()),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn test(args: &[String]) -> Result<()> {
    setup::ensure()?;
    let objects = build::build_ebpf()?;
    build::cargo(&["fmt", "--all", "--", "--check"], &[])?;
    build::cargo(
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--quiet",
            "--",
            "-D",
            "warnings",
        ],
        &[],
    )?;
    // The daemon tests run the real router-ctl binary, built beside them.
    let mut build_ctl = vec!["build", "-p", "router-ctl"];
    if args.iter().any(|a| a == "--release") {
        build_ctl.push("--release");
    }
    build::cargo(&build_ctl, &[])?;
    let mut cmd = vec!["test", "--workspace"];
    cmd.extend(args.iter().map(String::as_str));
    build::cargo(&cmd, &objects.env())?;
    Ok(())
}
