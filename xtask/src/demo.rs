//! `cargo xtask demo` and `cargo xtask bench`: both set up, build the XDP
//! objects, then run a release binary of the `tests` crate against them
//! (`tests/src/bin/shardcast-demo.rs`, `tests/src/bin/shardcast-bench.rs`).

use anyhow::Result;

use crate::{build, setup};

/// The lab demo; it drives the real `router-ctl daemon`, built first.
pub fn run() -> Result<()> {
    run_tests_bin("shardcast-demo", true)
}

/// The benchmark; its tables are the ones kept in BENCHMARKS.md.
pub fn bench() -> Result<()> {
    run_tests_bin("shardcast-bench", false)
}

fn run_tests_bin(bin: &str, needs_ctl: bool) -> Result<()> {
    setup::ensure()?;
    let objects = build::build_ebpf()?;
    if needs_ctl {
        build::cargo(&["build", "--quiet", "--release", "-p", "router-ctl"], &[])?;
    }
    build::cargo(
        &[
            "run",
            "--quiet",
            "--release",
            "-p",
            "integration-tests",
            "--bin",
            bin,
        ],
        &objects.env(),
    )
}
