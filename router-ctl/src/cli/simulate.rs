//! `router-ctl simulate`: static vs reactive vs predictive sharding on a
//! synthetic trace (docs/simulator.md).

use std::{fmt, path::PathBuf};

use anyhow::Result;
use clap::Args;
use serde::Serialize;
use shardcast_sim::{self as simulate, Scenario, Totals};

use super::Globals;

#[derive(Args, Debug)]
pub struct SimulateArgs {
    /// A built-in scenario (default, small, flashy, sla) or a JSON file.
    #[arg(long, default_value = "default")]
    pub scenario: String,
    /// Days compared (after the scenario's warm-up).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub days: Option<u32>,
    /// Write shards.svg, load.svg and offered.svg here.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

#[derive(Serialize)]
struct Simulated {
    totals: Vec<Totals>,
    static_shards: u32,
    elapsed_s: f64,
    #[serde(skip)]
    table: String,
}

impl fmt::Display for Simulated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.table)
    }
}

pub fn run(g: &Globals, a: SimulateArgs) -> Result<()> {
    let path = std::path::Path::new(&a.scenario);
    let sc = if path.exists() || a.scenario.ends_with(".json") {
        Scenario::from_file(path, a.days)?
    } else {
        Scenario::builtin(&a.scenario, a.days.unwrap_or(7))?
    };
    let started = std::time::Instant::now();
    let mut last_day = u32::MAX;
    let mut progress = |m: u32, end: u32| {
        let day = m / 1440;
        if day != last_day || m == end {
            last_day = day;
            eprintln!(
                "simulate: day {}/{} ({:.0} s)",
                day.min(end / 1440),
                end / 1440,
                started.elapsed().as_secs_f64()
            );
        }
    };
    let report = simulate::run(&sc, &mut progress)?;
    if let Some(dir) = &a.plot {
        report.plot(dir)?;
        eprintln!("plots written to {}", dir.display());
    }
    g.print(&Simulated {
        table: report.table(),
        totals: report.totals,
        static_shards: report.static_shards,
        elapsed_s: report.elapsed_s,
    })
}
