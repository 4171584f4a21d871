//! `cargo xtask bench`: builds the router and the reference programs, then
//! runs the TestRun benchmark (`tests/src/bin/shardcast-bench.rs`); its
//! table is the one kept in BENCHMARKS.md.

use anyhow::Result;

use crate::{build, setup};

pub fn run() -> Result<()> {
    setup::ensure()?;
    let objects = build::build_ebpf()?;
    build::cargo(
        &[
            "run",
            "--quiet",
            "--release",
            "-p",
            "integration-tests",
            "--bin",
            "shardcast-bench",
        ],
        &objects.env(),
    )
}
