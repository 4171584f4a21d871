//! The forecaster benchmark (`SHARDCAST_BENCH=forecast cargo xtask
//! bench`): accuracy (MASE per horizon of every model and of the selected
//! one, against seasonal naive and Python's statsforecast) on seeded
//! synthetic traces and on a real public series, and speed on 10,000
//! two-week series of one-minute buckets.
//!
//! Synthetic traces are the simulator's fleet ([`shardcast_sim::scenario`]:
//! diurnal and weekly cycles, a daily scheduled burst, random flash
//! events, Poisson counting noise), one series per topic. The real series
//! is `taylor` (half-hourly electricity demand of England and Wales,
//! June-August 2000, Taylor 2003), shipped inside PyPI's `pmdarima`: the
//! bench downloads the wheel, reads the numbers out of it and writes them
//! as history CSV.
//!
//! Every forecast is out of sample: for each origin the forecaster sees
//! only the buckets before it (and runs its own model selection there);
//! MASE is scaled by the seasonal naive in-sample error of that prefix.

use std::{fmt::Write as _, path::Path, process::Command, time::Instant};

use anyhow::{Context, Result, bail};
use rand::SeedableRng;
use rand_distr::{Distribution, Poisson};
use rand_pcg::Pcg64Mcg;
use shardcast_forecast::{self as forecast, Calendar, Model};
use shardcast_sim::scenario::{Fleet, FleetSpec};

use crate::measure::{bench_python, peak_rss_mib, reset_peak_rss, rss_mib};

/// One-minute counts of every topic of a seeded fleet, `days` long,
/// generated on all cores (one PCG stream per topic).
pub fn synthetic(seed: u64, topics: usize, days: u32) -> Vec<Vec<f64>> {
    let fleet = Fleet::generate(FleetSpec {
        seed,
        sites: (topics / 20).max(1),
        devices: 0,
        topics,
        zone_rate: 0.5,
        days,
        flashes_per_day: (topics as f64 / 200.0).max(2.0),
        premium_sites: 0.0,
    });
    let minutes = days * 1440;
    let n = fleet.topics.len();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut out = vec![Vec::new(); n];
    let chunk = n.div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        for (c, part) in out.chunks_mut(chunk).enumerate() {
            let fleet = &fleet;
            scope.spawn(move || {
                for (i, y) in part.iter_mut().enumerate() {
                    let t = c * chunk + i;
                    let mut rng = Pcg64Mcg::seed_from_u64(
                        seed ^ (t as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                    );
                    *y = (0..minutes)
                        .map(|m| {
                            let mean = fleet.rate(t, m) * 60.0;
                            Poisson::new(mean).map_or(0.0, |p| p.sample(&mut rng))
                        })
                        .collect();
                }
            });
        }
    });
    out
}

/// A data set of the accuracy bench: series, their calendar, the origins
/// and the lead times (with names) to score.
struct DataSet {
    name: String,
    series: Vec<Vec<f64>>,
    cal: Calendar,
    origins: Vec<usize>,
    leads: Vec<(String, usize)>,
}

/// Mean MASE per model name and lead.
struct Accuracy {
    rows: Vec<(String, Vec<Option<f64>>)>,
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

fn score(
    ds: &DataSet,
    name: &str,
    paths: impl Fn(usize, usize, usize) -> Option<Vec<f64>>,
) -> (String, Vec<Option<f64>>) {
    let per_lead = ds
        .leads
        .iter()
        .map(|(_, h)| {
            let mut v = Vec::new();
            for (i, y) in ds.series.iter().enumerate() {
                for &o in &ds.origins {
                    let Some(p) = paths(i, o, *h) else { continue };
                    let scale = forecast::naive_scale(&y[..o], ds.cal.day);
                    if let Some(m) = forecast::mase(scale, &y[o..o + h], &p[..*h]) {
                        v.push(m);
                    }
                }
            }
            mean(&v)
        })
        .collect();
    (name.to_string(), per_lead)
}

/// Every model of ours, and the selection, out of sample.
fn ours(ds: &DataSet) -> Accuracy {
    let leads: Vec<usize> = ds.leads.iter().map(|l| l.1).collect();
    let max_h = *leads.iter().max().expect("leads");
    let mut rows = Vec::new();
    for model in Model::ALL {
        rows.push(score(ds, model.name(), |i, o, h| {
            let y = &ds.series[i][..o];
            model.forecast(y, &ds.cal, max_h).map(|p| p[..h].to_vec())
        }));
    }
    // The selection per series and origin, once for all leads.
    let selected: Vec<Vec<forecast::SeriesForecast>> = ds
        .series
        .iter()
        .map(|y| {
            ds.origins
                .iter()
                .map(|&o| forecast::forecast_series(&y[..o], &ds.cal, &leads))
                .collect()
        })
        .collect();
    rows.push(score(ds, forecast::SELECTED, |i, o, h| {
        let k = ds.origins.iter().position(|&x| x == o)?;
        let j = leads.iter().position(|&x| x == h)?;
        Some(selected[i][k].paths[j].clone())
    }));
    Accuracy { rows }
}

const STATSFORECAST: &str = "statsforecast==2.1.1";

/// statsforecast's models on every (series, origin) prefix, forecasting the
/// longest lead; the script prints one JSON object per line:
/// `{"model": …, "series": i, "origin": o, "path": […]}`.
const SF_SCRIPT: &str = r#"
import json, sys, time, warnings
import numpy as np, pandas as pd
warnings.filterwarnings("ignore")
from statsforecast import StatsForecast
from statsforecast.models import MSTL, AutoETS, SeasonalNaive
req = json.load(open(sys.argv[1]))
day, week, h = req["day"], req["week"], req["h"]
rows, ids = [], []
for i, y in enumerate(req["series"]):
    for o in req["origins"]:
        uid = f"{i}:{o}"
        ids.append((uid, i, o))
        rows.append(pd.DataFrame({"unique_id": uid, "ds": np.arange(o), "y": np.asarray(y[:o], float)}))
df = pd.concat(rows)
# AutoETS alone is left out: it drops seasons over 24 buckets (ets.py,
# `m > 24`) and did not finish one 14-day one-minute series in 10 min.
# MSTL's trend forecaster is AutoETS.
models = [SeasonalNaive(season_length=day, alias="sf-seasonal-naive"),
          MSTL(season_length=[day], trend_forecaster=AutoETS(model="ZZN"), alias="sf-mstl-daily")]
if req.get("weekly"):
    models.append(MSTL(season_length=[day, week], trend_forecaster=AutoETS(model="ZZN"), alias="sf-mstl"))
t = time.perf_counter()
fc = StatsForecast(models=models, freq=1, n_jobs=2).forecast(df=df, h=h)
elapsed = time.perf_counter() - t
fc = fc.reset_index() if "unique_id" not in fc.columns else fc
for uid, i, o in ids:
    part = fc[fc["unique_id"] == uid]
    for m in models:
        print(json.dumps({"model": str(m), "series": i, "origin": o, "path": part[str(m)].tolist()}))
print(json.dumps({"elapsed": elapsed, "fits": len(ids)}))
"#;

/// statsforecast's rows, and its seconds per fitted prefix (all models).
fn statsforecast(ds: &DataSet, target: &Path, weekly: bool) -> Result<(Accuracy, f64)> {
    let python = bench_python(target, "statsforecast", STATSFORECAST)?;
    let dir = target.join("bench-forecast");
    std::fs::create_dir_all(&dir)?;
    let req = dir.join(format!("{}.json", ds.name));
    let max_h = ds.leads.iter().map(|l| l.1).max().expect("leads");
    let request = serde_json::json!({
        "day": ds.cal.day,
        "week": ds.cal.week,
        "h": max_h,
        "weekly": weekly,
        "origins": ds.origins,
        "series": ds.series,
    })
    .to_string();
    // statsforecast takes minutes on these: its answer to the same request
    // (same series, origins, script) is kept and reused.
    let script = dir.join("statsforecast_bench.py");
    let answer = dir.join(format!("{}.out", ds.name));
    let same = |p: &Path, text: &str| std::fs::read_to_string(p).is_ok_and(|t| t == text);
    let stdout = if same(&req, &request) && same(&script, SF_SCRIPT) && answer.exists() {
        std::fs::read_to_string(&answer)?
    } else {
        std::fs::write(&req, &request)?;
        std::fs::write(&script, SF_SCRIPT)?;
        let out = Command::new(&python).arg(&script).arg(&req).output()?;
        if !out.status.success() {
            bail!(
                "statsforecast failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let text = String::from_utf8(out.stdout)?;
        std::fs::write(&answer, &text)?;
        text
    };
    let mut paths: std::collections::BTreeMap<(String, usize, usize), Vec<f64>> =
        Default::default();
    let mut per_fit = 0.0;
    for line in stdout.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("statsforecast printed {line:?}"))?;
        if let Some(e) = v["elapsed"].as_f64() {
            per_fit = e / v["fits"].as_f64().unwrap_or(1.0);
            continue;
        }
        let path: Vec<f64> = v["path"]
            .as_array()
            .context("path")?
            .iter()
            // NaN (a model that could not fit) arrives as null.
            .map(|x| x.as_f64().unwrap_or(f64::NAN))
            .collect();
        paths.insert(
            (
                v["model"].as_str().context("model")?.to_string(),
                v["series"].as_u64().context("series")? as usize,
                v["origin"].as_u64().context("origin")? as usize,
            ),
            path,
        );
    }
    let mut names: Vec<String> = paths.keys().map(|k| k.0.clone()).collect();
    names.dedup();
    let rows = names
        .iter()
        .map(|name| {
            score(ds, name, |i, o, _| {
                paths
                    .get(&(name.clone(), i, o))
                    .filter(|p| p.iter().all(|v| v.is_finite()))
                    .cloned()
            })
        })
        .collect();
    Ok((Accuracy { rows }, per_fit))
}

/// The `taylor` series out of PyPI's pmdarima wheel (4032 half-hourly
/// values from Monday 5 June 2000), as history CSV under `target/`.
fn taylor(target: &Path) -> Result<Vec<f64>> {
    let dir = target.join("bench-forecast");
    std::fs::create_dir_all(&dir)?;
    let csv = dir.join("taylor.csv");
    if !csv.exists() {
        let st = Command::new("python3")
            .args([
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "pmdarima==2.1.1",
                "-d",
            ])
            .arg(&dir)
            .status()
            .context("running pip")?;
        if !st.success() {
            bail!("pip download pmdarima==2.1.1 failed");
        }
        let wheel = std::fs::read_dir(&dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.to_string_lossy().contains("pmdarima-2.1.1"))
            .context("no pmdarima wheel downloaded")?;
        let out = Command::new("unzip")
            .args(["-p"])
            .arg(&wheel)
            .arg("pmdarima/datasets/taylor.py")
            .output()
            .context("running unzip")?;
        if !out.status.success() {
            bail!("unzip: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        let text = String::from_utf8(out.stdout)?;
        let body = text
            .split_once("np.array([")
            .and_then(|(_, rest)| rest.split_once("])"))
            .context("taylor.py: no np.array([...]) literal")?
            .0;
        let values: Vec<u64> = body
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<u64>()
                    .with_context(|| format!("taylor.py: {s:?}"))
            })
            .collect::<Result<_>>()?;
        if values.len() != 4032 {
            bail!("taylor.py: {} values, expected 4032", values.len());
        }
        // 2000-06-05T00:00:00Z, half-hourly.
        let start = 960_163_200u64;
        let mut text = String::new();
        for (i, v) in values.iter().enumerate() {
            writeln!(text, "{},demand,uk,{v}", start + 1800 * i as u64)?;
        }
        std::fs::write(&csv, text)?;
    }
    // Read back through the forecaster's own CSV reader.
    let text = std::fs::read_to_string(&csv)?;
    let mut series = forecast::series_from_csv(&text, 1800)?;
    Ok(series.remove(0).values)
}

fn table(out: &mut String, ds: &DataSet, acc: &[&Accuracy]) -> Result<()> {
    writeln!(
        out,
        "\n{}: {} series, {} origins each; mean MASE (scale: seasonal naive in sample)",
        ds.name,
        ds.series.len(),
        ds.origins.len()
    )?;
    write!(out, "| model |")?;
    for (name, _) in &ds.leads {
        write!(out, " {name} |")?;
    }
    writeln!(out)?;
    writeln!(out, "|---|{}", "---:|".repeat(ds.leads.len()))?;
    let naive = acc[0]
        .rows
        .iter()
        .find(|r| r.0 == Model::SeasonalNaive.name())
        .map(|r| r.1.clone());
    for a in acc {
        for (name, v) in &a.rows {
            write!(out, "| {name} |")?;
            for (j, x) in v.iter().enumerate() {
                let rel = naive
                    .as_ref()
                    .and_then(|n| n[j])
                    .zip(*x)
                    .map_or(String::new(), |(n, x)| format!(" ({:.2})", x / n));
                write!(
                    out,
                    " {} |",
                    x.map_or("-".into(), |x| format!("{x:.3}{rel}"))
                )?;
            }
            writeln!(out)?;
        }
    }
    Ok(())
}

/// Accuracy on synthetic traces and taylor; speed at 10k series.
pub fn bench(target: &Path) -> Result<String> {
    let mut out = String::from("## Forecaster\n");
    // Synthetic: 16 days, origins every 6 h of day 15 (14 days of history
    // at the first), so the 24 h lead ends inside the trace.
    let day = 1440;
    let synth = DataSet {
        name: "synthetic (seed 7)".into(),
        series: synthetic(7, 12, 16),
        cal: Calendar::new(day),
        origins: (0..4).map(|i| 14 * day + i * 360).collect(),
        leads: vec![("5m".into(), 5), ("1h".into(), 60), ("24h".into(), day)],
    };
    let t = Instant::now();
    let acc = ours(&synth);
    let ours_s = t.elapsed().as_secs_f64();
    let sf = statsforecast(&synth, target, false);
    match &sf {
        Ok((a, _)) => table(&mut out, &synth, &[&acc, a])?,
        Err(e) => {
            table(&mut out, &synth, &[&acc])?;
            writeln!(out, "statsforecast: not run ({e:#})")?;
        }
    }
    writeln!(
        out,
        "ours: {:.2} s for {} prefixes x (every model + the selection)",
        ours_s,
        synth.series.len() * synth.origins.len()
    )?;
    // Taylor: 12 weeks; origins every 12 h over the last two weeks.
    let y = taylor(target)?;
    let n = y.len();
    let tay = DataSet {
        name: "taylor (pmdarima 2.1.1, half-hourly)".into(),
        cal: Calendar::new(48),
        origins: (0..28).map(|i| n - 48 - 24 * (27 - i)).collect(),
        leads: vec![("30m".into(), 1), ("1h".into(), 2), ("24h".into(), 48)],
        series: vec![y],
    };
    let acc = ours(&tay);
    match statsforecast(&tay, target, true) {
        Ok((a, _)) => table(&mut out, &tay, &[&acc, &a])?,
        Err(e) => {
            table(&mut out, &tay, &[&acc])?;
            writeln!(out, "statsforecast: not run ({e:#})")?;
        }
    }
    // Speed: 10k series x 14 days of one-minute buckets.
    let series_n = 10_000;
    let t = Instant::now();
    let values = synthetic(11, series_n, 14);
    let gen_s = t.elapsed().as_secs_f64();
    let series: Vec<forecast::Series> = values
        .into_iter()
        .enumerate()
        .map(|(i, values)| forecast::Series {
            topic: format!("t{i}"),
            group: format!("g{}", i / 20),
            start: 0,
            step: 60,
            values,
        })
        .collect();
    let horizons = forecast::parse_horizons("5m,1h,24h", 60)?;
    let before = rss_mib();
    reset_peak_rss();
    let t = Instant::now();
    let lm = forecast::forecast_all(&series, &horizons, &Calendar::new(day));
    let fit_s = t.elapsed().as_secs_f64();
    let peak = peak_rss_mib();
    let mut chosen = std::collections::BTreeMap::<&str, usize>::new();
    for m in &lm.models {
        *chosen.entry(m[1]).or_default() += 1;
    }
    writeln!(
        out,
        "\nspeed: {series_n} series x 14 days of 1-minute buckets, horizons 5m,1h,24h, {} threads: \
         fit + select + forecast {fit_s:.2} s (goal 10 s); data {before:.0} MiB resident, peak {peak:.0} MiB \
         during the fit (+{:.0}); generating the traces took {gen_s:.1} s\nchosen at 1h: {chosen:?}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        peak - before
    )?;
    // statsforecast on the first 20 of the same series (all of them would
    // take most of a day), fitted on their first 13 days so that its
    // 24-hour path can be scored too, timed per series, scaled to 10,000.
    const SAMPLE: usize = 20;
    let sample = DataSet {
        name: format!("speed sample (seed 11, first {SAMPLE})"),
        origins: vec![13 * day],
        leads: vec![("24h".into(), day)],
        cal: Calendar::new(day),
        series: series[..SAMPLE].iter().map(|s| s.values.clone()).collect(),
    };
    drop(series);
    match statsforecast(&sample, target, false) {
        Ok((_, per_series)) => writeln!(
            out,
            "statsforecast (2 jobs) on the first {SAMPLE} of these series (13 days each), seasonal naive + \
             daily MSTL: {per_series:.2} s per series, so ~{:.0} s for {series_n} (weekly MSTL left out: \
             it did not finish one 14-day one-minute series in 25 min)",
            per_series * series_n as f64
        )?,
        Err(e) => writeln!(out, "statsforecast speed: not run ({e:#})")?,
    }
    Ok(out)
}
