//! `router-ctl apply | check`: validate a plan, and install it.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;
use shardcast_dataplane::Dataplane;
use shardcast_plan::Plan;

use super::Globals;
use crate::state;

#[derive(Args, Debug)]
pub struct ApplyArgs {
    pub plan: PathBuf,
    /// Install even if the generation is not newer than the installed one.
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    pub plan: PathBuf,
}

#[derive(Serialize)]
struct Checked {
    plan: PathBuf,
    generation: u64,
    shards: usize,
    topics: usize,
    route_keys: usize,
    policy: shardcast_plan::Policy,
    shards_by_class: std::collections::BTreeMap<String, usize>,
}

impl std::fmt::Display for Checked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "plan {} is valid: generation {}, {} shards, {} topics, {} route keys",
            self.plan.display(),
            self.generation,
            self.shards,
            self.topics,
            self.route_keys
        )?;
        writeln!(f, "policy: {}", self.policy.summary())?;
        if !self.policy.separate_by.is_empty() {
            for (class, n) in &self.shards_by_class {
                writeln!(f, "  {n:>5} shards of class {class}")?;
            }
        }
        Ok(())
    }
}

pub fn check(g: &Globals, a: CheckArgs) -> Result<()> {
    let p = Plan::from_file(&a.plan)?;
    let c = p
        .compile()
        .with_context(|| format!("plan {} is invalid", a.plan.display()))?;
    g.print(&Checked {
        shards_by_class: p.shards_by_class(),
        policy: p.policy,
        plan: a.plan,
        generation: c.generation,
        shards: c.shards.len(),
        topics: c.topics.len(),
        route_keys: c.routes.len(),
    })
}

#[derive(Serialize)]
struct Applied {
    generation: u64,
    shards: usize,
    route_keys: usize,
    changed: usize,
    fill_ms: f64,
    swap_ms: f64,
    total_ms: f64,
}

impl std::fmt::Display for Applied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "generation {} installed: {} shards, {} route keys (fill {:.1} ms, swap {:.1} ms, total {:.1} ms)",
            self.generation,
            self.shards,
            self.route_keys,
            self.fill_ms,
            self.swap_ms,
            self.total_ms
        )
    }
}

pub fn apply(g: &Globals, a: ApplyArgs) -> Result<()> {
    let p = Plan::from_file(&a.plan)?;
    let c = p
        .compile()
        .with_context(|| format!("plan {} is invalid", a.plan.display()))?;
    let mut dp = Dataplane::open(&g.pin_root)?;
    let r = dp
        .install(&c, a.force)
        .with_context(|| format!("installing {}", a.plan.display()))?;
    // The plan is installed whatever happens to its copy: say so, then
    // report a failed save as what it is.
    let view = Applied {
        generation: r.generation,
        shards: r.shards,
        route_keys: r.routes,
        changed: r.changed,
        fill_ms: r.fill.as_secs_f64() * 1e3,
        swap_ms: r.swap.as_secs_f64() * 1e3,
        total_ms: r.total.as_secs_f64() * 1e3,
    };
    g.print(&view)?;
    state::save_plan(&g.state_dir, &p).context(
        "the plan is installed, but its copy (topic names for maps dump and stats) was not saved",
    )
}
