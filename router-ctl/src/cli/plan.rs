//! `router-ctl plan`: shards for a workload (docs/workload-format.md),
//! written as a plan `apply` installs; prints the cost.

use std::{fmt, path::PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;
use shardcast_plan::Plan;
use shardcast_planner::{self as planner, Cost, workload::Workload};

use super::{
    Globals,
    values::{Span, span},
};
use crate::state::write_atomically;

#[derive(Args, Debug)]
pub struct PlanArgs {
    /// Devices, subscriptions, topic rates, resources, cost weights.
    #[arg(long)]
    pub workload: PathBuf,
    /// The plan in force: devices stay put unless moving pays, ids and
    /// groups of kept shards are kept, the generation goes up by one.
    #[arg(long)]
    pub current: Option<PathBuf>,
    /// Topic rates from a forecast (`router-ctl forecast --out`) instead of
    /// the workload's, summed over device groups.
    #[arg(long)]
    pub forecast: Option<PathBuf>,
    /// The forecast horizon to plan for (a label present in the forecast).
    #[arg(long, default_value = "1h", requires = "forecast")]
    pub horizon: String,
    /// Plan for the upper band instead of the point forecast.
    #[arg(long, requires = "forecast")]
    pub upper: bool,
    /// Bucket length of the forecast's counts.
    #[arg(long, default_value = "1m", value_parser = span)]
    pub bucket: Span,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// When no plan keeps every shard within usable capacity (a bound
    /// rules it out, or none was found), write the least overloaded plan
    /// found, with warnings, instead of failing.
    #[arg(long)]
    pub best_effort: bool,
    /// Also print, per shard, the classes and locations it holds and how
    /// full it is.
    #[arg(long)]
    pub explain: bool,
    /// Explain why this device is in its shard: what every other shard
    /// would cost under the planner's cost model, or why it is ruled out
    /// (repeatable; implies --explain).
    #[arg(long, value_name = "DEVICE")]
    pub explain_device: Vec<String>,
    /// Write the plan here (atomically).
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Serialize)]
struct Planned {
    generation: u64,
    cost: Cost,
    created: usize,
    merged: usize,
    refine_moves: usize,
    warnings: Vec<String>,
    elapsed_ms: f64,
    #[serde(skip)]
    devices: usize,
    #[serde(skip)]
    topics: usize,
    #[serde(skip)]
    usable_capacity: f64,
    policy: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    explain: Option<planner::Explanation>,
}

/// Alternatives shown per explained device (all are in `--json`).
const ALTERNATIVES_SHOWN: usize = 5;

impl fmt::Display for Planned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.cost;
        writeln!(
            f,
            "generation {}: {} shards ({} created, {} merged), {} devices, {} topics routed, planned in {:.1} ms",
            self.generation,
            c.shards,
            self.created,
            self.merged,
            self.devices,
            self.topics,
            self.elapsed_ms
        )?;
        writeln!(
            f,
            "  load (msg/s)        max {:.1}, mean {:.1}, usable capacity {:.1}",
            c.max_load, c.mean_load, self.usable_capacity
        )?;
        writeln!(
            f,
            "  overload (msg/s)    {:.1} over {} shards",
            c.overload, c.overloaded_shards
        )?;
        writeln!(f, "  inter-shard copies  {:.1} msg/s", c.copies)?;
        writeln!(
            f,
            "  wasted deliveries   {:.1} /s (battery-weighted)",
            c.wasted
        )?;
        writeln!(f, "  latency             {:.1}", c.latency)?;
        writeln!(f, "  migrations          {}", c.migrations)?;
        if c.bandwidth_excess > 0.0 {
            writeln!(f, "  above bandwidth     {:.1} msg/s", c.bandwidth_excess)?;
        }
        if c.together > 0.0 {
            writeln!(f, "  soft preferences    {:.1}", c.together)?;
        }
        writeln!(f, "  total cost          {:.1}", c.total)?;
        writeln!(f, "  policy              {}", self.policy)?;
        for warning in &self.warnings {
            writeln!(f, "warning: {warning}")?;
        }
        if let Some(e) = &self.explain {
            writeln!(
                f,
                "{:>6} {:>8} {:>10} {:>10}  {:<24} locations (devices)",
                "shard", "devices", "load", "usable", "class"
            )?;
            for s in &e.shards {
                let locs: Vec<String> = s
                    .locations
                    .iter()
                    .map(|(l, n)| format!("{} ({n})", if l.is_empty() { "-" } else { l }))
                    .collect();
                let more = s.distinct_locations.saturating_sub(s.locations.len());
                writeln!(
                    f,
                    "{:>6} {:>8} {:>10.1} {:>10.1}  {:<24} {}{}",
                    s.id,
                    s.devices,
                    s.load,
                    s.usable,
                    if s.class.is_empty() { "-" } else { &s.class },
                    locs.join(", "),
                    if more > 0 {
                        format!(" and {more} more")
                    } else {
                        String::new()
                    }
                )?;
            }
            for d in &e.devices {
                writeln!(
                    f,
                    "device {:?} is in shard {}{}",
                    d.device,
                    d.shard,
                    if d.class.is_empty() {
                        String::new()
                    } else {
                        format!(" (class {})", d.class)
                    }
                )?;
                for (t, rate, shards) in &d.topics {
                    writeln!(
                        f,
                        "  follows {t:?} ({rate:.2} msg/s), routed to shards {shards:?}"
                    )?;
                }
                if d.alternatives.is_empty() {
                    writeln!(f, "  no other shard exists")?;
                }
                for alt in d.alternatives.iter().take(ALTERNATIVES_SHOWN) {
                    match (alt.cost_change, &alt.why_not) {
                        (Some(c), None) => {
                            writeln!(f, "  shard {}: the plan would cost {c:+.2} more", alt.shard)?
                        }
                        (Some(c), Some(why)) => writeln!(
                            f,
                            "  shard {}: the plan would cost {c:+.2} more, and {why}",
                            alt.shard
                        )?,
                        (None, why) => writeln!(
                            f,
                            "  shard {}: not allowed ({})",
                            alt.shard,
                            why.as_deref().unwrap_or("?")
                        )?,
                    }
                }
                let more = d.alternatives.len().saturating_sub(ALTERNATIVES_SHOWN);
                if more > 0 {
                    writeln!(f, "  ... {more} more shards (all in --json)")?;
                }
            }
        }
        Ok(())
    }
}

pub fn run(g: &Globals, a: PlanArgs) -> Result<()> {
    let mut w = Workload::from_file(&a.workload)?;
    if let Some(f) = &a.forecast {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        let rates = shardcast_forecast::rates_from_csv(&text, &a.horizon, a.upper, a.bucket.secs)
            .with_context(|| format!("{} is not a usable forecast", f.display()))?;
        for t in &mut w.topics {
            if let Some(r) = rates.get(&t.name) {
                t.rate = *r;
            }
        }
    }
    let inst = w
        .index()
        .with_context(|| format!("{} is not a valid workload", a.workload.display()))?;
    let current = a
        .current
        .as_ref()
        .map(|p| {
            let plan = Plan::from_file(p).with_context(|| format!("--current {}", p.display()))?;
            // The planner keeps what it can of the current plan: it must be
            // one `apply` would install.
            plan.compile()
                .with_context(|| format!("--current {} is not a valid plan", p.display()))?;
            Ok::<_, anyhow::Error>(plan)
        })
        .transpose()?;
    let out = planner::plan(
        &inst,
        current.as_ref(),
        planner::Options {
            seed: a.seed,
            best_effort: a.best_effort,
            ..Default::default()
        },
    )
    .with_context(|| format!("planning {}", a.workload.display()))?;
    // What we emit must install: validate it as `apply` would.
    out.plan
        .compile()
        .context("internal error: the planner produced an invalid plan")?;
    let explain = (a.explain || !a.explain_device.is_empty())
        .then(|| {
            let locations: Vec<Option<&str>> =
                w.devices.iter().map(|d| d.location.as_deref()).collect();
            planner::explain(&inst, &out, &locations, &a.explain_device)
                .map_err(|e| anyhow::anyhow!("--explain-device: {e}"))
        })
        .transpose()?;
    write_atomically(&a.out, |w| w.write_all(out.plan.to_json().as_bytes()))?;
    g.print(&Planned {
        policy: out.plan.policy.summary(),
        explain,
        generation: out.plan.generation,
        cost: out.cost,
        created: out.created,
        merged: out.merged,
        refine_moves: out.refine_moves,
        warnings: out.warnings,
        elapsed_ms: out.elapsed.as_secs_f64() * 1e3,
        devices: out.plan.devices.len(),
        topics: out.plan.topics.len(),
        usable_capacity: inst.resources.usable_capacity(),
    })
}
