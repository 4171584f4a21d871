//! Placeholder replaced below.
use anyhow::Result;
pub fn run() -> Result<()> {
    anyhow::bail!("demo not built yet")
}
pub fn bench() -> Result<()> {
    anyhow::bail!("bench not built yet")
}
