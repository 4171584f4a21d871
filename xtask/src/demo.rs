//! `cargo xtask demo`: builds what it needs, then runs the lab demo
//! (`tests/src/bin/shardcast-demo.rs`) against the freshly built object.

use anyhow::Result;

use crate::{build, setup};

pub fn run() -> Result<()> {
    setup::ensure()?;
    let objects = build::build_ebpf()?;
    // The demo runs the real daemon binary.
    build::cargo(&["build", "--quiet", "--release", "-p", "router-ctl"], &[])?;
    build::cargo(
        &[
            "run",
            "--quiet",
            "--release",
            "-p",
            "integration-tests",
            "--bin",
            "shardcast-demo",
        ],
        &objects.env(),
    )
}
