//! `router-ctl daemon`: runs the control daemon (docs/config.md).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::config::DaemonConfig;

#[derive(Args, Debug)]
pub struct DaemonArgs {
    #[arg(long)]
    pub config: PathBuf,
}

pub fn run(a: DaemonArgs) -> Result<()> {
    let cfg = DaemonConfig::from_file(&a.config)?;
    crate::daemon::run(cfg)
}
