//! `router-ctl forecast`: load per topic x device group at each horizon
//! (docs/forecasting.md), from a history CSV.

use std::{collections::BTreeMap, path::PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use shardcast_forecast as forecast;

use super::{
    Globals,
    values::{Span, span},
};
use crate::state::write_atomically;

#[derive(Args, Debug)]
pub struct ForecastArgs {
    /// History CSV (`timestamp,topic,group,count`; unix s or RFC 3339).
    #[arg(long)]
    pub history: PathBuf,
    /// Horizons, each a whole number of buckets (default: those of 5m, 1h
    /// and 24h the bucket allows).
    #[arg(long, value_parser = span, value_delimiter = ',')]
    pub horizons: Option<Vec<Span>>,
    /// Bucket length of the history (default: read off its timestamps).
    #[arg(long, value_parser = span)]
    pub bucket: Option<Span>,
    /// Write `topic,group,horizon,timestamp,predicted,lower,upper` here
    /// (default: stdout).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print per-horizon MASE and sMAPE of each model and of the selection
    /// (rolling origin over the last day).
    #[arg(long)]
    pub backtest: bool,
    /// Device status per group now (`group,connected,devices[,low_battery]`):
    /// scales each group's forecast by its share of active devices.
    #[arg(long)]
    pub status: Option<PathBuf>,
    /// Draw actual vs predicted with the band (SVG).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// The series to draw, `topic/group` (default: the busiest).
    #[arg(long, requires = "plot")]
    pub plot_series: Option<String>,
}

/// The forecast goes to stdout (or `--out`) as CSV whatever `--json` says;
/// the model choice and backtest go to stderr.
pub fn run(_g: &Globals, a: ForecastArgs) -> Result<()> {
    let text = std::fs::read_to_string(&a.history)
        .with_context(|| format!("reading {}", a.history.display()))?;
    // Read once: the bucket (when not given) comes off the same rows.
    let rows = shardcast_records::history::parse_csv_lines(&text)
        .with_context(|| format!("{} is not usable history", a.history.display()))?;
    let bucket = match &a.bucket {
        Some(b) => b.secs,
        None => forecast::infer_bucket(&rows),
    };
    let spans: Vec<(String, u64)> = match &a.horizons {
        Some(h) => h.iter().map(|s| (s.label.clone(), s.secs)).collect(),
        None => forecast::default_horizons(bucket),
    };
    let horizons = forecast::horizons_on_grid(&spans, bucket).context("--horizons")?;
    let series = forecast::series_from_rows(rows, bucket)
        .with_context(|| format!("{} is not usable history", a.history.display()))?;
    let status = a
        .status
        .as_ref()
        .map(|p| {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            forecast::status_from_csv(&text)
                .with_context(|| format!("{} is not a usable status file", p.display()))
        })
        .transpose()?;
    let cal = forecast::Calendar::new(forecast::daily_season(bucket));
    let mut lm = forecast::forecast_all(&series, &horizons, &cal);
    if let Some(st) = &status {
        lm.apply_status(st);
    }
    if let Some(plot) = &a.plot {
        let index = match &a.plot_series {
            Some(name) => series
                .iter()
                .position(|s| format!("{}/{}", s.topic, s.group) == *name)
                .with_context(|| format!("--plot-series {name:?}: no such topic/group"))?,
            None => (0..series.len())
                .max_by(|&i, &j| {
                    let sum = |k: usize| series[k].values.iter().sum::<f64>();
                    sum(i).total_cmp(&sum(j))
                })
                .context("no series to plot")?,
        };
        forecast::plot_series(plot, &series[index], &lm, index, &cal)
            .map_err(|e| anyhow::anyhow!("--plot {}: {e}", plot.display()))?;
    }
    match &a.out {
        Some(p) => write_atomically(p, |w| forecast::write_csv(&lm, w))?,
        None => forecast::write_csv(&lm, std::io::stdout().lock())?,
    }
    eprintln!("{} series; models chosen:", lm.series.len());
    for (j, (h, _)) in lm.horizons.iter().enumerate() {
        let mut chosen: BTreeMap<&str, usize> = BTreeMap::new();
        for m in &lm.models {
            *chosen.entry(m[j]).or_default() += 1;
        }
        eprintln!("  {h}: {chosen:?}");
    }
    if a.backtest {
        eprintln!(
            "{:<8} {:<16} {:>8} {:>8}",
            "horizon", "model", "MASE", "sMAPE%"
        );
        for (j, (h, _)) in lm.horizons.iter().enumerate() {
            for r in &lm.backtest[j] {
                let f = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.3}"));
                eprintln!("{h:<8} {:<16} {:>8} {:>8}", r.model, f(r.mase), f(r.smape));
            }
        }
    }
    Ok(())
}
