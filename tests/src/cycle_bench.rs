//! The control cycle's cost at fleet scale (`SHARDCAST_BENCH=cycle`): a
//! campus fleet of the planner's generator (10k and 100k devices), three
//! days of five-minute load history per topic (a diurnal profile with
//! noise, scaled to each topic's rate), and one daemon cycle's work
//! timed phase by phase: forecast every topic, plan against the installed
//! plan, compile and install it into a loaded data plane (incremental, as
//! the daemon installs), and start the migration (the transition built,
//! the first batch of commands made). The first cycle plans from nothing
//! and fits every topic's forecast; the next twelve (an hour of five-minute
//! periods through the morning rise) plan against the installed plan and
//! refit a twelfth of the topics each, as the daemon does; the slowest of
//! them is reported.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use router_ctl::{
    cycle::{CycleConfig, Forecasts, Inputs, Mode, Trigger, decide},
    load::LoadSeries,
    migrate::Migration,
};
use shardcast_dataplane::{Dataplane, RouterConfig};
use shardcast_plan::Plan;
use shardcast_sim::shapes::{Shape, generate};

use crate::object;

const BUCKET: u64 = 300;
const DAYS: u64 = 3;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Load per bucket of a topic of mean rate `rate` (messages/s): a day
/// shape (night at a fifth of the peak) with ±10% noise.
fn history(load: &mut LoadSeries, name: &str, rate: f64, buckets: u64, rng: &mut Pcg64Mcg) {
    for b in 0..buckets {
        let phase = (b % (86_400 / BUCKET)) as f64 / (86_400 / BUCKET) as f64;
        let day = 0.6 - 0.4 * (2.0 * std::f64::consts::PI * phase).cos();
        let noise = 1.0 + rng.random_range(-0.1..0.1);
        load.add(b * BUCKET, name, rate * day * noise * BUCKET as f64);
    }
}

pub fn bench() -> Result<String> {
    let mut out = String::from(
        "| devices | topics | mode | cycle | topics refitted | forecast | plan | compile + install | migration start | cycle total | shards | moves |\n|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for devices in [10_000usize, 100_000] {
        let g = generate(Shape::Campus, devices, 7, 4096);
        let w = g.workload;
        let mut rng = Pcg64Mcg::seed_from_u64(11);
        let buckets = DAYS * 86_400 / BUCKET;
        let mut load = LoadSeries::new(BUCKET, buckets as usize + 2);
        for t in &w.topics {
            history(&mut load, &t.name, t.rate, buckets, &mut rng);
        }
        let fleet = w
            .devices
            .iter()
            .map(|d| (d.id.clone(), d.clone()))
            .collect();
        for mode in [Mode::Predictive, Mode::Reactive] {
            let mut resources = w.resources.clone();
            resources.egress = "sc1".into();
            let cfg = CycleConfig {
                mode,
                period: Duration::from_secs(300),
                lead: Duration::from_secs(600),
                season: Duration::from_secs(86_400),
                window: Duration::from_secs(DAYS * 86_400),
                horizons: vec![
                    ("5m".into(), Duration::from_secs(300)),
                    ("1h".into(), Duration::from_secs(3600)),
                    ("24h".into(), Duration::from_secs(86_400)),
                ],
                refit: Duration::from_secs(3600),
                resources,
                cost: w.cost,
                policy: w.policy.clone(),
                seed: 1,
            };
            let mut forecasts = Forecasts::default();
            let mut dp = Dataplane::load(&object(), &RouterConfig::default())?;
            dp.set_incremental(true);
            let mut installed: Option<Plan> = None;
            // Cycles every period from 4 a.m. of the third day (the last
            // day's history is not used before its time) into the morning
            // rise: the first fits every topic; the others refit a
            // twelfth and move devices as the load grows.
            let start = 2 * 86_400 + 4 * 3600;
            let cycles = 13;
            let mut steady = Vec::new();
            for k in 0..cycles {
                let now = start + k * 300;
                let t = Instant::now();
                let d = decide(
                    &cfg,
                    Inputs {
                        now,
                        mode,
                        trigger: Trigger::Period,
                        load: &load,
                        devices: &fleet,
                        installed: installed.as_ref(),
                        forecasts: &mut forecasts,
                        nowcast: &Default::default(),
                    },
                )?;
                let decided = t.elapsed();
                let t = Instant::now();
                let (mut install, mut begin, mut moves) = (Duration::ZERO, Duration::ZERO, 0);
                if let Some(new) = &d.plan {
                    let m = match &installed {
                        Some(old) => Migration::new(old, new)?,
                        None => None,
                    };
                    let plan = match &m {
                        Some(m) => m.installable(),
                        None => new.clone(),
                    };
                    let r = dp.install(&plan.compile()?, false)?;
                    ensure!(r.generation == new.generation);
                    install = t.elapsed();
                    let t = Instant::now();
                    if let Some(mut m) = m {
                        moves = m.stats.moves;
                        let batch = m.next_batch(10_000, 0, 1884);
                        ensure!(batch.len() == moves.min(10_000));
                    }
                    begin = t.elapsed();
                    installed = Some(new.clone());
                }
                let total = decided + install + begin;
                let row = |label: &str| {
                    format!(
                        "| {} | {} | {} | {label} | {} | {:.0} ms | {:.0} ms | {:.0} ms | {:.1} ms | **{:.2} s** | {} | {moves} |\n",
                        w.devices.len(),
                        w.topics.len(),
                        mode.label(),
                        if mode == Mode::Reactive {
                            0
                        } else if k == 0 {
                            forecasts.len()
                        } else {
                            (w.topics.len() * 300).div_ceil(3600)
                        },
                        d.forecast_ms,
                        d.plan_ms,
                        ms(install),
                        ms(begin),
                        total.as_secs_f64(),
                        d.shards_after,
                    )
                };
                if k == 0 {
                    out.push_str(&row("first (fits all)"));
                } else {
                    steady.push((total, row("steady (slowest of 12)")));
                }
            }
            steady.sort_by_key(|(t, _)| *t);
            if let Some((_, row)) = steady.pop() {
                out.push_str(&row);
            }
        }
    }
    Ok(out)
}
