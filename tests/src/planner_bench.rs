//! The planner benchmark (`SHARDCAST_BENCH=planner cargo xtask bench`):
//! speed at 1M devices / 100k topics / 256 shards, and the quality of its
//! partitions against Mt-KaHyPar (PyPI `mtkahypar`, connectivity
//! objective) on the same instances, when the bench can install it.

use std::{path::Path, process::Command, time::Instant};

use anyhow::{Context, Result, bail};
use shardcast_planner::{
    self as planner, Options,
    workload::{Instance, Resources},
};
use shardcast_sim::{
    scenario::{Fleet, FleetSpec},
    shapes,
};

use crate::measure::{median, peak_rss_mib};

/// A fleet of `devices` in sites of 4,000 with 10 topics per 100 devices,
/// rates at midday, shard capacity sized for about `shards` shards.
pub fn instance(devices: usize, shards: usize) -> Instance {
    let fleet = Fleet::generate(FleetSpec {
        seed: 1,
        sites: (devices / 4000).max(1),
        devices,
        topics: devices / 10,
        zone_rate: 1.0,
        days: 1,
        flashes_per_day: 0.0,
        premium_sites: 0.0,
    });
    let rates = fleet.rates(12 * 60);
    let total: f64 = rates.iter().sum();
    let resources = Resources {
        // `shards` shards 90% full at usable capacity (20% headroom),
        // carrying the total rate plus 25% of copies.
        shard_capacity: total * 1.25 / (shards as f64 * 0.9 * 0.8),
        max_shards: 256,
        headroom: 0.2,
        merge_below: 0.7,
        bandwidth: None,
        max_migrations: devices,
        egress: "eth1".into(),
        group_v4_base: "239.1.0.0".into(),
        group_v6_base: None,
    };
    fleet
        .workload(&fleet.present_devices(0), 0, &rates, resources)
        .index()
        .expect("generated workloads are valid")
}

/// Writes the instance as an hMetis hypergraph (nets = topics weighted by
/// rate, vertices = devices weighted by their share of their topics'
/// rates), integer weights scaled by 1000.
fn write_hmetis(inst: &Instance, path: &Path) -> Result<()> {
    use std::io::Write;
    let n = inst.devices.len();
    let mut pins: Vec<Vec<u32>> = vec![Vec::new(); inst.topics.len()];
    for d in 0..n {
        for &t in inst.subscriptions(d) {
            pins[t as usize].push(d as u32 + 1);
        }
    }
    let nets: Vec<usize> = (0..pins.len()).filter(|&t| !pins[t].is_empty()).collect();
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(f, "{} {} 11", nets.len(), n)?;
    for &t in &nets {
        write!(f, "{}", ((inst.rates[t] * 1000.0).round() as u64).max(1))?;
        for p in &pins[t] {
            write!(f, " {p}")?;
        }
        writeln!(f)?;
    }
    for w in vertex_weights(inst) {
        writeln!(f, "{}", ((w * 1000.0).round() as u64).max(1))?;
    }
    Ok(())
}

/// A device's share of the load its topics put on a shard.
fn vertex_weights(inst: &Instance) -> Vec<f64> {
    let mut subs = vec![0u32; inst.topics.len()];
    for &t in &inst.subs {
        subs[t as usize] += 1;
    }
    (0..inst.devices.len())
        .map(|d| {
            inst.subscriptions(d)
                .iter()
                .map(|&t| inst.rates[t as usize] / subs[t as usize] as f64)
                .sum()
        })
        .collect()
}

/// Imbalance of an assignment in vertex weights: max block / mean - 1.
fn imbalance(inst: &Instance, assignment: &[u32], k: usize) -> f64 {
    let w = vertex_weights(inst);
    let mut blocks = vec![0.0; k];
    for (d, &s) in assignment.iter().enumerate() {
        blocks[s as usize] += w[d];
    }
    let total: f64 = blocks.iter().sum();
    blocks.iter().fold(0.0f64, |a, &b| a.max(b)) / (total / k as f64) - 1.0
}

const MTKAHYPAR: &str = "mtkahypar==1.7.post1";

const SCRIPT: &str = r#"
import sys, time, mtkahypar
path, k, eps, out = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
mtk = mtkahypar.initialize(2)
ctx = mtk.context_from_preset(mtkahypar.PresetType.DEFAULT)
ctx.set_partitioning_parameters(k, eps, mtkahypar.Objective.KM1)
ctx.logging = False
mtkahypar.set_seed(1)
hg = mtk.hypergraph_from_file(path, ctx, mtkahypar.FileFormat.HMETIS)
t = time.perf_counter()
phg = hg.partition(ctx)
el = time.perf_counter() - t
with open(out, "w") as f:
    f.write("\n".join(str(phg.block_id(v)) for v in range(hg.num_nodes())))
print(el)
"#;

/// Runs Mt-KaHyPar on `inst` with `k` blocks; returns (assignment, seconds).
fn reference(python: &Path, inst: &Instance, k: usize, eps: f64) -> Result<(Vec<u32>, f64)> {
    let dir = std::env::temp_dir().join(crate::unique("scbench-hg"));
    std::fs::create_dir_all(&dir)?;
    let hg = dir.join("g.hgr");
    let part = dir.join("g.part");
    write_hmetis(inst, &hg)?;
    let out = Command::new(python)
        .args(["-c", SCRIPT])
        .arg(&hg)
        .arg(k.to_string())
        .arg(format!("{eps:.4}"))
        .arg(&part)
        .output()?;
    if !out.status.success() {
        bail!(
            "Mt-KaHyPar failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let secs: f64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .context("Mt-KaHyPar's time")?;
    let assignment = std::fs::read_to_string(&part)?
        .lines()
        .map(|l| l.trim().parse::<u32>())
        .collect::<Result<Vec<_>, _>>()?;
    std::fs::remove_dir_all(&dir).ok();
    if assignment.len() != inst.devices.len() {
        bail!(
            "Mt-KaHyPar returned {} blocks for {} devices",
            assignment.len(),
            inst.devices.len()
        );
    }
    Ok((assignment, secs))
}

/// Mt-KaHyPar at `k` blocks held to the true-load balance: its imbalance
/// bound (in vertex weights, which only approximate a shard's load) starts
/// at our plan's own and is tightened until no shard of its partition is
/// above usable capacity by our load model, or stops at 1%. Returns its
/// assignment, its time (all runs) and the bound used.
fn held_to_capacity(
    python: &Path,
    inst: &Instance,
    ours: &[u32],
    k: usize,
) -> Result<(Vec<u32>, f64, f64)> {
    let mut eps = imbalance(inst, ours, k).max(0.03);
    let mut total = 0.0;
    loop {
        let (assignment, secs) = reference(python, inst, k, eps)?;
        total += secs;
        if planner::evaluate(inst, &assignment).overloaded_shards == 0 || eps <= 0.01 {
            return Ok((assignment, total, eps));
        }
        eps = (eps * 0.6).max(0.01);
    }
}

/// Where Mt-KaHyPar cannot be held to capacity at our shard count (its
/// balance is in vertex weights, not the true load): the fewest of 5%,
/// 10%, 20% and 40% more blocks at which it can (eps 0.03), with its
/// copies and the block count; `None` if none.
fn feasible_with_more_blocks(
    python: &Path,
    inst: &Instance,
    k: usize,
) -> Result<Option<(usize, f64)>> {
    for more in [1.05, 1.1, 1.2, 1.4] {
        let kk = ((k as f64 * more).ceil() as usize).min(inst.resources.max_shards as usize);
        let (assignment, _) = reference(python, inst, kk, 0.03)?;
        let c = planner::evaluate(inst, &assignment);
        if c.overloaded_shards == 0 {
            return Ok(Some((kk, c.copies)));
        }
    }
    Ok(None)
}

pub fn bench(target: &Path) -> Result<String> {
    let mut out = String::from(
        "| devices | topics | shards | plan (median of 3) | re-plan at 1.2x load | migrations | peak RSS |\n|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut quality = String::from(
        "| devices | shards | ours: copies (msg/s) | ours: max load / usable cap | ours: widest topic | ours: time | Mt-KaHyPar (km1, same k, eps): copies | its max load / usable cap | its widest topic | its time | copies ours / ref |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let python = crate::measure::bench_python(target, "mtkahypar", MTKAHYPAR);
    for (devices, shards) in [(100_000usize, 64usize), (1_000_000, 240)] {
        let inst = instance(devices, shards);
        let mut times = Vec::new();
        let mut first = None;
        for _ in 0..3 {
            let t = Instant::now();
            let o = planner::plan(&inst, None, Options::default())?;
            times.push(t.elapsed().as_secs_f64());
            first = Some(o);
        }
        let first = first.expect("ran");
        let mut peak = inst.clone();
        for r in &mut peak.rates {
            *r *= 1.2;
        }
        let t = Instant::now();
        let re = planner::plan(&peak, Some(&first.plan), Options::default())?;
        let replan = t.elapsed().as_secs_f64();
        out.push_str(&format!(
            "| {devices} | {} | {} | {:.2} s | {:.2} s | {} | {:.0} MiB |\n",
            inst.topics.len(),
            first.cost.shards,
            median(times.clone()),
            replan,
            re.cost.migrations,
            peak_rss_mib()
        ));
        let cap = inst.resources.usable_capacity();
        let k = first.cost.shards;
        match &python {
            Ok(python) => {
                let eps = imbalance(&inst, &first.assignment, k).max(0.03);
                let (assignment, secs) = reference(python, &inst, k, eps)?;
                let theirs = planner::evaluate(&inst, &assignment);
                quality.push_str(&format!(
                    "| {devices} | {k} | {:.0} | {:.2} | {} | {:.2} s | {:.0} (eps {:.2}) | {:.2} | {} | {:.1} s | {:.3} |\n",
                    first.cost.copies,
                    first.cost.max_load / cap,
                    first.cost.max_fanout,
                    median(times),
                    theirs.copies,
                    eps,
                    theirs.max_load / cap,
                    theirs.max_fanout,
                    secs,
                    first.cost.copies / theirs.copies.max(1e-9),
                ));
            }
            Err(e) => quality.push_str(&format!(
                "| {devices} | {k} | {:.0} | {:.2} | {} | {:.2} s | not run: {e} | | | | |\n",
                first.cost.copies,
                first.cost.max_load / cap,
                first.cost.max_fanout,
                median(times)
            )),
        }
    }
    Ok(format!("{out}\n{quality}"))
}

/// The planner on every fleet shape of `shardcast_sim::shapes` against
/// Mt-KaHyPar at the same shard count, held to the same true-load balance
/// (its partition scored with our load model). `SHARDCAST_BENCH_DEVICES`
/// sets the fleet size (default 200,000), `SHARDCAST_BENCH_SHAPES` a
/// comma-separated subset.
pub fn shapes(target: &Path) -> Result<String> {
    let devices: usize = match std::env::var("SHARDCAST_BENCH_DEVICES") {
        Ok(s) => s
            .parse()
            .ok()
            .filter(|n| (100..=2_000_000).contains(n))
            .with_context(|| format!("SHARDCAST_BENCH_DEVICES={s:?}: expected 100..=2000000"))?,
        Err(_) => 200_000,
    };
    let only = std::env::var("SHARDCAST_BENCH_SHAPES").ok();
    if let Some(o) = &only {
        let known: Vec<&str> = shapes::Shape::ALL.iter().map(|s| s.name()).collect();
        if let Some(bad) = o.split(',').find(|s| !known.contains(s)) {
            bail!(
                "SHARDCAST_BENCH_SHAPES={o:?}: unknown shape {bad:?} (expected a comma-separated subset of {})",
                known.join(", ")
            );
        }
    }
    let python = crate::measure::bench_python(target, "mtkahypar", MTKAHYPAR);
    let mut out = format!(
        "Fleet shapes, {devices} devices, max_shards 256:\n\n| shape | devices | topics | shards | ours: copies (msg/s) | max load / usable cap | overloaded | widest topic | time | Mt-KaHyPar: copies | its max load / usable cap | its overloaded | its widest | its time | copies ours / ref | our cost / its cost |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    let mut notes: Vec<String> = Vec::new();
    for shape in shapes::Shape::ALL {
        if only
            .as_deref()
            .is_some_and(|o| !o.split(',').any(|s| s == shape.name()))
        {
            continue;
        }
        let g = shapes::generate(shape, devices, 1, 256);
        let inst = g.workload.index()?;
        let cap = inst.resources.usable_capacity();
        let t = Instant::now();
        let res = planner::plan(&inst, None, Options::default());
        let secs = t.elapsed().as_secs_f64();
        let ours = match res {
            Ok(o) => o,
            Err(e) => {
                out.push_str(&format!(
                    "| {} | {} | {} | refused: {e} | | | | | {secs:.2} s | | | | | | | |\n",
                    shape.name(),
                    inst.devices.len(),
                    inst.topics.len()
                ));
                continue;
            }
        };
        let k = ours.cost.shards;
        let theirs = match &python {
            Ok(python) => Some(held_to_capacity(python, &inst, &ours.assignment, k)?),
            Err(_) => None,
        };
        // Mt-KaHyPar over capacity at our k: where can it be held?
        if let (Ok(python), Some((a, _, _))) = (&python, &theirs)
            && planner::evaluate(&inst, a).overloaded_shards > 0
        {
            notes.push(match feasible_with_more_blocks(python, &inst, k)? {
                Some((kk, copies)) => format!(
                    "{}: Mt-KaHyPar is within capacity only from {kk} blocks ({copies:.0} msg/s of copies there); ours: {k} shards, {:.0} msg/s",
                    shape.name(),
                    ours.cost.copies
                ),
                None => format!(
                    "{}: Mt-KaHyPar is not within capacity even at 1.4x our {k} shards",
                    shape.name()
                ),
            });
        }
        out.push_str(&format!(
            "| {} | {} | {} | {k} | {:.0} | {:.2} | {} | {} | {secs:.2} s |",
            shape.name(),
            inst.devices.len(),
            inst.topics.len(),
            ours.cost.copies,
            ours.cost.max_load / cap,
            ours.cost.overloaded_shards,
            ours.cost.max_fanout,
        ));
        match theirs {
            Some((assignment, rsecs, eps)) => {
                let c = planner::evaluate(&inst, &assignment);
                out.push_str(&format!(
                    " {:.0} (eps {eps:.2}) | {:.2} | {} | {} | {rsecs:.1} s | {:.3} | {:.3} |\n",
                    c.copies,
                    c.max_load / cap,
                    c.overloaded_shards,
                    c.max_fanout,
                    ours.cost.copies / c.copies.max(1e-9),
                    ours.cost.total / c.total.max(1e-9)
                ));
            }
            None => out.push_str(" not run | | | | | | |\n"),
        }
    }
    for n in notes {
        out.push_str(&format!("\n{n}\n"));
    }
    Ok(out)
}

/// What each shard boundary policy costs (`SHARDCAST_BENCH=policy`): the
/// planner on the fleet shapes with attributes
/// (`shapes::with_attributes`: 4 sites, a fifth of the groups premium),
/// unconstrained and under each policy; copies and shards against the
/// unconstrained plan. `SHARDCAST_BENCH_DEVICES` sets the fleet size
/// (default 200,000).
pub fn policies() -> Result<String> {
    let devices: usize = match std::env::var("SHARDCAST_BENCH_DEVICES") {
        Ok(s) => s
            .parse()
            .ok()
            .filter(|n| (100..=2_000_000).contains(n))
            .with_context(|| format!("SHARDCAST_BENCH_DEVICES={s:?}: expected 100..=2000000"))?,
        Err(_) => 200_000,
    };
    let mut out = format!(
        "Shard boundary policies, {devices} devices, 4 sites, a fifth of the groups premium, max_shards 256:\n\n| shape | policy | shards | copies (msg/s) | copies / unconstrained | shards / unconstrained | (shard, site) pairs | time |\n|---|---|---:|---:|---:|---:|---:|---:|\n"
    );
    let policies: [(&str, &str); 5] = [
        ("none", "{}"),
        (
            "separate_by location:1 (sites)",
            r#"{"separate_by": ["location:1"]}"#,
        ),
        (
            "separate_by sla, premium headroom 0.4",
            r#"{"separate_by": ["sla"], "classes": {"premium": {"headroom": 0.4, "priority": 1}}}"#,
        ),
        (
            "prefer_together location:1, weight 5% of a shard",
            r#"{"prefer_together": [{"key": "location:1", "weight": 0.05}]}"#,
        ),
        (
            "prefer_together location:1, weight 50% of a shard",
            r#"{"prefer_together": [{"key": "location:1", "weight": 0.5}]}"#,
        ),
    ];
    for shape in [
        shapes::Shape::Campus,
        shapes::Shape::Vehicles,
        shapes::Shape::Communities,
        shapes::Shape::Geometric,
    ] {
        let mut w = shapes::generate(shape, devices, 1, 256).workload;
        shapes::with_attributes(&mut w, 4, 0.2);
        let mut base: Option<(f64, usize)> = None;
        for (name, json) in policies {
            let mut policy: planner::workload::Policy = serde_json::from_str(json)?;
            for p in &mut policy.prefer_together {
                // In copies: a site more in a shard costs as much as this
                // fraction of a shard's usable capacity copied.
                p.weight *= w.resources.usable_capacity();
            }
            // (shard, site) pairs: how many sites the shards span in all.
            let site_of = |d: &planner::workload::Device| {
                d.location
                    .as_deref()
                    .and_then(|l| l.split('/').next())
                    .unwrap_or("")
                    .to_string()
            };
            w.policy = policy;
            let inst = w.index()?;
            let t = Instant::now();
            let res = planner::plan(&inst, None, Options::default());
            let secs = t.elapsed().as_secs_f64();
            match res {
                Ok(o) => {
                    let (c0, s0) = *base.get_or_insert((o.cost.copies, o.cost.shards));
                    let pairs: std::collections::BTreeSet<(u32, String)> = o
                        .assignment
                        .iter()
                        .zip(&w.devices)
                        .map(|(&s, d)| (s, site_of(d)))
                        .collect();
                    let ratio = |a: f64, b: f64| {
                        if b > 1e-6 {
                            format!("{:.3}", a / b)
                        } else if a <= 1e-6 {
                            "1 (both 0)".into()
                        } else {
                            "(none without)".into()
                        }
                    };
                    out.push_str(&format!(
                        "| {} | {name} | {} | {:.0} | {} | {:.3} | {} | {secs:.2} s |\n",
                        shape.name(),
                        o.cost.shards,
                        o.cost.copies,
                        ratio(o.cost.copies, c0),
                        o.cost.shards as f64 / s0.max(1) as f64,
                        pairs.len(),
                    ));
                }
                Err(e) => out.push_str(&format!(
                    "| {} | {name} | refused: {e} | | | | | {secs:.2} s |\n",
                    shape.name()
                )),
            }
        }
    }
    Ok(out)
}
