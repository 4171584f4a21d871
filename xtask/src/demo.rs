//! `cargo xtask demo` and `cargo xtask bench`.
//!
//! Neither exists yet: the lab (namespaces, simulated devices, daemon) and
//! the TestRun benchmark against the reference programs are the next steps
//! of issue 2. Rather than pretend, both say so and fail.

use anyhow::{Result, bail};

pub fn run() -> Result<()> {
    bail!(
        "the demo lab is not built yet (see README, Status); \
         `cargo xtask test` exercises the XDP router in the kernel today"
    )
}

pub fn bench() -> Result<()> {
    bail!("the benchmark is not built yet (see README, Status)")
}
