//! `router-ctl history export | import`: the daemon's telemetry history as
//! CSV (`timestamp,topic,group,count`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use shardcast_records::history::{parse_csv, write_csv};

use crate::{
    config::DaemonConfig,
    history::{History, Settings},
    state::write_atomically,
};

#[derive(Args, Debug)]
pub struct HistoryArgs {
    /// The daemon's config names the database and its bucket sizes.
    #[arg(long)]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: HistoryCommand,
}

#[derive(Subcommand, Debug)]
pub enum HistoryCommand {
    /// Write `timestamp,topic,group,count` CSV to stdout (or --out).
    Export {
        #[arg(long)]
        out: Option<PathBuf>,
        /// Timestamps as RFC 3339 instead of unix seconds.
        #[arg(long)]
        rfc3339: bool,
    },
    /// Add the rows of a CSV file (unix seconds or RFC 3339), all or none.
    Import { csv: PathBuf },
}

pub fn run(a: HistoryArgs) -> Result<()> {
    let cfg = DaemonConfig::from_file(&a.config)?;
    let settings = Settings {
        bucket: cfg.history.bucket,
        retention: cfg.history.retention,
        downsample_to: cfg.history.downsample_to,
    };
    let mut h = History::open(&cfg.history.path, settings)?;
    match a.command {
        HistoryCommand::Export { out, rfc3339 } => {
            let rows = h.rows()?;
            match out {
                Some(p) => {
                    write_atomically(&p, |w| write_csv(&rows, rfc3339, w))?;
                    eprintln!("{} rows written to {}", rows.len(), p.display());
                }
                None => write_csv(&rows, rfc3339, std::io::stdout().lock())?,
            }
        }
        HistoryCommand::Import { csv } => {
            let text = std::fs::read_to_string(&csv)
                .with_context(|| format!("reading {}", csv.display()))?;
            let rows = parse_csv(&text)
                .with_context(|| format!("{} is not valid history CSV", csv.display()))?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            let n = rows.len();
            h.add(
                rows.iter()
                    .map(|r| (r.ts, r.topic.as_str(), r.group.as_str(), r.count)),
                now,
            )?;
            println!("{n} rows imported from {}", csv.display());
        }
    }
    Ok(())
}
