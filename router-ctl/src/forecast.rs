//! Load forecasting: expected publishes per topic × device group at a few
//! horizons, from the history the daemon keeps (CSV
//! `timestamp,topic,group,count`).
//!
//! Models (each series picks one by rolling-origin backtest):
//! - **seasonal naive**: the value one season (a day) earlier; the baseline
//!   every error is scaled by (MASE) and the fallback for short series;
//! - **Holt-Winters** (additive level, trend and daily season; smoothing
//!   constants chosen by one-step squared error on a small grid): follows
//!   level shifts and slow trends that the naive model only repeats.
//!
//! Series with less than a season of history borrow the daily shape of
//! their device group's aggregate, scaled to their own level; with no usable
//! aggregate either they fall back to their recent mean. Missing buckets are
//! zero (no messages). Bands come from the backtest's errors at each lead
//! time (10th and 90th percentiles), never below zero.
//!
//! Device status (`--status`) scales a group's forecasts by its share of
//! active devices; `--plot` draws one series with its band.
//!
//! Not here yet (issue 4): the regression and MSTL-like models and the
//! comparison with statsforecast.

use std::{collections::BTreeMap, io::Write, time::Duration};

use ndarray::Array3;

use crate::{
    history::{HistoryError, parse_csv_lines},
    records::{Columns, records},
};

#[derive(Debug, thiserror::Error)]
pub enum ForecastError {
    #[error("{0}")]
    Csv(#[from] HistoryError),
    #[error("line {line}: timestamp {ts} is not on the {step}s bucket grid")]
    OffGrid { line: usize, ts: u64, step: u64 },
    #[error(
        "line {line}: timestamp {ts} of {topic}/{group} is not after the previous one ({prev}); rows of a series must be in time order"
    )]
    OutOfOrder {
        line: usize,
        ts: u64,
        prev: u64,
        topic: String,
        group: String,
    },
    #[error("history is empty")]
    Empty,
    #[error("horizon {0:?}: not a duration (use s, m, h or d, e.g. \"5m\", \"1h\", \"24h\")")]
    BadHorizon(String),
    #[error("status line {line}: {reason}")]
    BadStatusLine { line: usize, reason: String },
    #[error("forecast line {line}: {reason}")]
    BadForecastLine { line: usize, reason: String },
    #[error("the forecast has no rows for horizon {0:?}")]
    HorizonAbsent(String),
    #[error("horizon {horizon:?} is not a positive multiple of the {step}s bucket")]
    HorizonOffGrid { horizon: String, step: u64 },
}

type Result<T, E = ForecastError> = std::result::Result<T, E>;

/// One topic × group count series on a regular grid.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub topic: String,
    pub group: String,
    /// Start of the first bucket (unix s).
    pub start: u64,
    /// Bucket length (s).
    pub step: u64,
    pub values: Vec<f64>,
}

/// Parses history CSV into series that all cover the same span (missing
/// buckets are zero), checking the grid and each series' time order.
pub fn series_from_csv(text: &str, step: u64) -> Result<Vec<Series>> {
    let rows = parse_csv_lines(text)?;
    let mut by: BTreeMap<(String, String), Vec<(u64, u64)>> = BTreeMap::new();
    let (mut lo, mut hi) = (u64::MAX, 0);
    for (line, r) in rows {
        if r.ts % step != 0 {
            return Err(ForecastError::OffGrid {
                line,
                ts: r.ts,
                step,
            });
        }
        let points = by.entry((r.topic.clone(), r.group.clone())).or_default();
        if let Some(&(prev, _)) = points.last()
            && r.ts <= prev
        {
            return Err(ForecastError::OutOfOrder {
                line,
                ts: r.ts,
                prev,
                topic: r.topic,
                group: r.group,
            });
        }
        points.push((r.ts, r.count));
        lo = lo.min(r.ts);
        hi = hi.max(r.ts);
    }
    if by.is_empty() {
        return Err(ForecastError::Empty);
    }
    let n = ((hi - lo) / step + 1) as usize;
    Ok(by
        .into_iter()
        .map(|((topic, group), points)| {
            let mut values = vec![0.0; n];
            for (ts, c) in points {
                values[((ts - lo) / step) as usize] = c as f64;
            }
            Series {
                topic,
                group,
                start: lo,
                step,
                values,
            }
        })
        .collect())
}

/// Parses `5m,1h,24h` into durations that are whole multiples of `step`.
pub fn parse_horizons(text: &str, step: u64) -> Result<Vec<(String, u64)>> {
    text.split(',')
        .map(|h| {
            let h = h.trim();
            let d = humantime::parse_duration(h)
                .map_err(|_| ForecastError::BadHorizon(h.to_string()))?;
            let secs = d.as_secs();
            if d.subsec_nanos() != 0 || secs == 0 || secs % step != 0 {
                return Err(ForecastError::HorizonOffGrid {
                    horizon: h.to_string(),
                    step,
                });
            }
            Ok((h.to_string(), secs / step))
        })
        .collect()
}

/// The models.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Model {
    SeasonalNaive,
    HoltWinters,
}

impl Model {
    pub fn name(self) -> &'static str {
        match self {
            Model::SeasonalNaive => "seasonal-naive",
            Model::HoltWinters => "holt-winters",
        }
    }

    /// Forecasts `h` steps after `y` with season length `m`.
    pub fn forecast(self, y: &[f64], m: usize, h: usize) -> Vec<f64> {
        match self {
            Model::SeasonalNaive => seasonal_naive(y, m, h),
            Model::HoltWinters => holt_winters(y, m, h),
        }
    }
}

/// The value one season earlier (the last season repeated); the last value
/// when there is less than a season.
pub fn seasonal_naive(y: &[f64], m: usize, h: usize) -> Vec<f64> {
    let n = y.len();
    if n == 0 {
        return vec![0.0; h];
    }
    if m == 0 || n < m {
        return vec![y[n - 1]; h];
    }
    (0..h).map(|i| y[n - m + i % m]).collect()
}

/// Additive Holt-Winters state after a pass over `y`, and its one-step SSE.
fn hw_pass(y: &[f64], m: usize, a: f64, b: f64, g: f64) -> (f64, f64, Vec<f64>, f64) {
    let first: f64 = y[..m].iter().sum::<f64>() / m as f64;
    let second: f64 = y[m..2 * m].iter().sum::<f64>() / m as f64;
    let mut trend = (second - first) / m as f64;
    // The first season's mean sits at its middle: de-trend it so a slope
    // is not mistaken for a seasonal pattern; the level is at its end.
    let mid = (m as f64 - 1.0) / 2.0;
    let mut season: Vec<f64> = y[..m]
        .iter()
        .enumerate()
        .map(|(i, v)| v - (first + trend * (i as f64 - mid)))
        .collect();
    let mut level = first + trend * mid;
    let mut sse = 0.0;
    for (t, &v) in y.iter().enumerate().skip(m) {
        let s = season[t % m];
        let e = v - (level + trend + s);
        sse += e * e;
        let new_level = a * (v - s) + (1.0 - a) * (level + trend);
        trend = b * (new_level - level) + (1.0 - b) * trend;
        season[t % m] = g * (v - new_level) + (1.0 - g) * s;
        level = new_level;
    }
    (level, trend, season, sse)
}

/// Additive Holt-Winters with season `m`, smoothing constants picked on a
/// grid by one-step squared error; seasonal naive when there is less than
/// two seasons to initialise from. Forecasts are never negative.
pub fn holt_winters(y: &[f64], m: usize, h: usize) -> Vec<f64> {
    let n = y.len();
    if m < 2 || n < 2 * m {
        return seasonal_naive(y, m, h);
    }
    let mut best = (f64::INFINITY, 0.0, 0.0, 0.0);
    for a in [0.05, 0.2, 0.5, 0.8] {
        // Trend is smoothed gently: a day-long horizon amplifies it.
        for b in [0.0, 0.01, 0.05] {
            for g in [0.05, 0.2, 0.5] {
                let (_, _, _, sse) = hw_pass(y, m, a, b, g);
                if sse < best.0 {
                    best = (sse, a, b, g);
                }
            }
        }
    }
    let (_, a, b, g) = best;
    let (level, trend, season, _) = hw_pass(y, m, a, b, g);
    (1..=h)
        .map(|k| (level + trend * k as f64 + season[(n + k - 1) % m]).max(0.0))
        .collect()
}

/// Mean absolute scaled error: the forecast's MAE over the in-sample MAE
/// of the seasonal naive model (season `m`) on `train`. `None` when the
/// scale is zero (a flat series: any error is infinitely bad or none is).
pub fn mase(train: &[f64], actual: &[f64], forecast: &[f64], m: usize) -> Option<f64> {
    let m = if m == 0 || train.len() <= m { 1 } else { m };
    if train.len() <= m {
        return None;
    }
    let scale: f64 = train
        .windows(m + 1)
        .map(|w| (w[m] - w[0]).abs())
        .sum::<f64>()
        / (train.len() - m) as f64;
    let mae: f64 = actual
        .iter()
        .zip(forecast)
        .map(|(a, f)| (a - f).abs())
        .sum::<f64>()
        / actual.len().max(1) as f64;
    (scale > 0.0).then(|| mae / scale)
}

/// Symmetric MAPE in percent (0..=200); a bucket where both are zero counts
/// as a perfect forecast.
pub fn smape(actual: &[f64], forecast: &[f64]) -> f64 {
    let n = actual.len().max(1) as f64;
    actual
        .iter()
        .zip(forecast)
        .map(|(a, f)| {
            let d = a.abs() + f.abs();
            if d == 0.0 {
                0.0
            } else {
                200.0 * (a - f).abs() / d
            }
        })
        .sum::<f64>()
        / n
}

/// Backtest result of one model on one series at one horizon.
#[derive(Clone, Debug, Default)]
pub struct Score {
    pub mase: Vec<f64>,
    pub smape: Vec<f64>,
    /// Actual minus forecast at the horizon's last step, per origin.
    pub errors: Vec<f64>,
}

/// Rolling-origin backtest: `origins` forecasts of `h` steps ending one
/// horizon apart at the end of `y`.
pub fn backtest(model: Model, y: &[f64], m: usize, h: usize, origins: usize) -> Score {
    let mut s = Score::default();
    for k in 1..=origins {
        let Some(cut) = y.len().checked_sub(h * k) else {
            break;
        };
        if cut < m.max(2) {
            break;
        }
        let f = model.forecast(&y[..cut], m, h);
        let actual = &y[cut..cut + h];
        if let Some(v) = mase(&y[..cut], actual, &f, m) {
            s.mase.push(v);
        }
        s.smape.push(smape(actual, &f));
        s.errors.push(actual[h - 1] - f[h - 1]);
    }
    s
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[((s.len() - 1) as f64 * q).round() as usize]
}

/// Backtests every model at each lead time (rolling origin) and picks the
/// one with the lowest mean MASE over them; seasonal naive on ties and when
/// no MASE is defined.
pub fn select(y: &[f64], season: usize, leads: &[usize]) -> (Model, Vec<(Model, Vec<Score>)>) {
    const ORIGINS: usize = 3;
    let scores: Vec<(Model, Vec<Score>)> = [Model::SeasonalNaive, Model::HoltWinters]
        .into_iter()
        .map(|model| {
            let per_lead = leads
                .iter()
                .map(|&h| backtest(model, y, season, h, ORIGINS))
                .collect();
            (model, per_lead)
        })
        .collect();
    let rank = |per_lead: &[Score]| {
        let v: Vec<f64> = per_lead.iter().filter_map(|sc| mean(&sc.mase)).collect();
        mean(&v).unwrap_or(f64::INFINITY)
    };
    let model = scores
        .iter()
        .min_by(|a, b| rank(&a.1).total_cmp(&rank(&b.1)))
        .expect("two models")
        .0;
    (model, scores)
}

/// Fits one series and forecasts `h` steps with the model [`select`]
/// picks at lead `h` (seasonal naive for series too short to backtest).
/// The simulator's lean entry point.
pub fn forecast_path(y: &[f64], season: usize, h: usize) -> (Model, Vec<f64>) {
    let model = if y.len() < 2 * season + h {
        Model::SeasonalNaive
    } else {
        select(y, season, &[h]).0
    };
    (model, model.forecast(y, season, h))
}

/// The predicted load matrix: `values[[series, horizon, k]]` with `k` = 0
/// predicted, 1 lower, 2 upper (messages per bucket at that lead time).
#[derive(Clone, Debug)]
pub struct LoadMatrix {
    pub series: Vec<(String, String)>,
    pub horizons: Vec<(String, u64)>,
    /// Start of the bucket each horizon predicts (unix s).
    pub targets: Vec<u64>,
    pub models: Vec<&'static str>,
    pub values: Array3<f64>,
    /// Backtest summary per horizon, one row per model.
    pub backtest: Vec<Vec<BacktestRow>>,
}

/// Mean backtest errors of one model at one horizon, over all series.
#[derive(Clone, Debug)]
pub struct BacktestRow {
    pub model: &'static str,
    pub mase: Option<f64>,
    pub smape: Option<f64>,
}

/// Per model: every backtest's MASE and sMAPE values.
type Errors = BTreeMap<&'static str, (Vec<f64>, Vec<f64>)>;

/// Forecasts every series at every horizon. `season` is the season length
/// in buckets (a day).
pub fn forecast_all(series: &[Series], horizons: &[(String, u64)], season: usize) -> LoadMatrix {
    let mut values = Array3::<f64>::zeros((series.len(), horizons.len(), 3));
    let mut chosen = Vec::with_capacity(series.len());
    // Group aggregates, for cold starts.
    let mut aggregate: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for s in series {
        let a = aggregate
            .entry(s.group.as_str())
            .or_insert_with(|| vec![0.0; s.values.len()]);
        for (x, v) in a.iter_mut().zip(&s.values) {
            *x += v;
        }
    }
    let mut summary: Vec<Errors> = vec![BTreeMap::new(); horizons.len()];
    let max_h = horizons.iter().map(|(_, h)| *h as usize).max().unwrap_or(1);
    for (i, s) in series.iter().enumerate() {
        let y = &s.values;
        // Active history: from the first non-zero bucket on.
        let first = y.iter().position(|v| *v != 0.0).unwrap_or(y.len());
        let active = &y[first..];
        if active.len() < season {
            // Cold start: the group's daily shape at this series' level.
            let agg = &aggregate[s.group.as_str()];
            let agg_active: f64 = agg[first..].iter().sum();
            let own: f64 = active.iter().sum();
            let f: Vec<f64> = if agg.len() >= season && agg_active > 0.0 {
                Model::HoltWinters
                    .forecast(agg, season, max_h)
                    .iter()
                    .map(|v| v * own / agg_active)
                    .collect()
            } else {
                let recent = &active[active.len().saturating_sub(60)..];
                vec![mean(recent).unwrap_or(0.0); max_h]
            };
            for (j, (_, h)) in horizons.iter().enumerate() {
                let p = f[*h as usize - 1];
                values[[i, j, 0]] = p;
                values[[i, j, 1]] = 0.0;
                values[[i, j, 2]] = 2.0 * p.max(1.0);
            }
            chosen.push("cold-start");
            continue;
        }
        let leads: Vec<usize> = horizons.iter().map(|(_, h)| *h as usize).collect();
        let (model, scores) = select(y, season, &leads);
        for (model, per_h) in &scores {
            for (j, sc) in per_h.iter().enumerate() {
                let e = summary[j].entry(model.name()).or_default();
                e.0.extend(&sc.mase);
                e.1.extend(&sc.smape);
            }
        }
        let per_h = &scores
            .iter()
            .find(|(m, _)| *m == model)
            .expect("the chosen model was scored")
            .1;
        let f = model.forecast(y, season, max_h);
        for (j, (_, h)) in horizons.iter().enumerate() {
            let p = f[*h as usize - 1];
            let e = &per_h[j].errors;
            values[[i, j, 0]] = p;
            values[[i, j, 1]] = (p + quantile(e, 0.1)).max(0.0);
            values[[i, j, 2]] = (p + quantile(e, 0.9)).max(p);
        }
        chosen.push(model.name());
    }
    let now = series
        .first()
        .map_or(0, |s| s.start + s.values.len() as u64 * s.step);
    let step = series.first().map_or(60, |s| s.step);
    LoadMatrix {
        series: series
            .iter()
            .map(|s| (s.topic.clone(), s.group.clone()))
            .collect(),
        horizons: horizons.to_vec(),
        targets: horizons.iter().map(|(_, h)| now + (h - 1) * step).collect(),
        models: chosen,
        values,
        backtest: summary
            .into_iter()
            .map(|m| {
                m.into_iter()
                    .map(|(model, (ma, sm))| BacktestRow {
                        model,
                        mase: mean(&ma),
                        smape: mean(&sm),
                    })
                    .collect()
            })
            .collect(),
    }
}

/// Writes `topic,group,horizon,timestamp,predicted,lower,upper`.
pub fn write_csv(m: &LoadMatrix, mut out: impl Write) -> std::io::Result<()> {
    writeln!(out, "topic,group,horizon,timestamp,predicted,lower,upper")?;
    for (i, (topic, group)) in m.series.iter().enumerate() {
        for (j, (h, _)) in m.horizons.iter().enumerate() {
            writeln!(
                out,
                "{topic},{group},{h},{},{:.3},{:.3},{:.3}",
                m.targets[j],
                m.values[[i, j, 0]],
                m.values[[i, j, 1]],
                m.values[[i, j, 2]]
            )?;
        }
    }
    Ok(())
}

/// Reads a forecast CSV (as [`write_csv`] writes it) and returns, per
/// topic, the messages/s predicted at `horizon` summed over device groups:
/// the rates the planner plans for. `upper` takes the upper band.
pub fn rates_from_csv(
    text: &str,
    horizon: &str,
    upper: bool,
    step: u64,
) -> Result<BTreeMap<String, f64>> {
    const COLUMNS: Columns = Columns {
        names: &[
            "topic",
            "group",
            "horizon",
            "timestamp",
            "predicted",
            "lower",
            "upper",
        ],
        optional: 0,
    };
    let mut rates: BTreeMap<String, f64> = BTreeMap::new();
    let mut found = false;
    for record in records(text, &COLUMNS) {
        let (n, f) = record.map_err(|e| ForecastError::BadForecastLine {
            line: e.line,
            reason: e.reason,
        })?;
        let bad = |reason: String| ForecastError::BadForecastLine { line: n, reason };
        let num = |k: usize, name: &str| -> Result<f64> {
            f[k].parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| bad(format!("{name} {:?} is not a count >= 0", f[k])))
        };
        let (p, lo, hi) = (num(4, "predicted")?, num(5, "lower")?, num(6, "upper")?);
        if lo > p || p > hi {
            return Err(bad(format!("band {lo}..{hi} does not hold predicted {p}")));
        }
        if f[2] != horizon {
            continue;
        }
        found = true;
        *rates.entry(f[0].to_string()).or_default() += if upper { hi } else { p } / step as f64;
    }
    if !found {
        return Err(ForecastError::HorizonAbsent(horizon.to_string()));
    }
    Ok(rates)
}

/// Device status of one group now: the history was recorded with
/// `devices` members; `connected` are online, `low_battery` of them in
/// low-power mode.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupStatus {
    pub connected: u64,
    pub devices: u64,
    pub low_battery: u64,
}

impl GroupStatus {
    /// Expected activity relative to the history: offline devices publish
    /// nothing, low-power ones at [`LOW_POWER_RATE`] of their usual rate.
    pub fn factor(&self) -> f64 {
        (self.connected as f64 - (1.0 - LOW_POWER_RATE) * self.low_battery as f64)
            / self.devices as f64
    }
}

/// Publish rate of a device in low-power mode relative to its usual one
/// (duty cycles typically halve when the battery runs low).
pub const LOW_POWER_RATE: f64 = 0.5;

/// Parses `group,connected,devices[,low_battery]` (header optional).
pub fn status_from_csv(text: &str) -> Result<BTreeMap<String, GroupStatus>> {
    const COLUMNS: Columns = Columns {
        names: &["group", "connected", "devices", "low_battery"],
        optional: 1,
    };
    let mut out = BTreeMap::new();
    for record in records(text, &COLUMNS) {
        let (n, f) = record.map_err(|e| ForecastError::BadStatusLine {
            line: e.line,
            reason: e.reason,
        })?;
        let bad = |reason: String| ForecastError::BadStatusLine { line: n, reason };
        let count = |k: usize, name: &str| -> Result<u64> {
            f[k].parse::<u64>()
                .map_err(|_| bad(format!("{name} {:?} is not a count", f[k])))
        };
        let st = GroupStatus {
            connected: count(1, "connected")?,
            devices: count(2, "devices")?,
            low_battery: if f.len() == 4 {
                count(3, "low_battery")?
            } else {
                0
            },
        };
        if f[0].is_empty() {
            return Err(bad("empty group name".into()));
        }
        if st.devices == 0 {
            return Err(bad("devices must be > 0".into()));
        }
        if st.connected > st.devices {
            return Err(bad(format!(
                "connected {} exceeds devices {}",
                st.connected, st.devices
            )));
        }
        if st.low_battery > st.connected {
            return Err(bad(format!(
                "low_battery {} exceeds connected {}",
                st.low_battery, st.connected
            )));
        }
        if out.insert(f[0].to_string(), st).is_some() {
            return Err(bad(format!("group {:?} appears twice", f[0])));
        }
    }
    Ok(out)
}

impl LoadMatrix {
    /// Scales every series of a group with a status by its activity
    /// factor (predicted and band alike).
    pub fn apply_status(&mut self, status: &BTreeMap<String, GroupStatus>) {
        for (i, (_, group)) in self.series.iter().enumerate() {
            if let Some(st) = status.get(group) {
                let f = st.factor();
                self.values
                    .slice_mut(ndarray::s![i, .., ..])
                    .mapv_inplace(|v| v * f);
            }
        }
    }
}

/// Draws one series: the last two days of history, the chosen model's path
/// to the longest horizon, and the band at each horizon.
pub fn plot_series(
    path: &std::path::Path,
    s: &Series,
    lm: &LoadMatrix,
    index: usize,
    season: usize,
) -> std::result::Result<(), String> {
    use plotters::prelude::*;
    let max_h = lm
        .horizons
        .iter()
        .map(|(_, h)| *h as usize)
        .max()
        .unwrap_or(1);
    let model = match lm.models[index] {
        "holt-winters" => Model::HoltWinters,
        _ => Model::SeasonalNaive,
    };
    let path_f = model.forecast(&s.values, season, max_h);
    let keep = (2 * season).min(s.values.len());
    let first = s.values.len() - keep;
    let hours = |i: usize| (i as f64 - s.values.len() as f64) * s.step as f64 / 3600.0;
    let actual: Vec<(f64, f64)> = (first..s.values.len())
        .map(|i| (hours(i), s.values[i]))
        .collect();
    let predicted: Vec<(f64, f64)> = path_f
        .iter()
        .enumerate()
        .map(|(k, &v)| (hours(s.values.len() + k), v))
        .collect();
    let y_max = actual
        .iter()
        .chain(&predicted)
        .map(|p| p.1)
        .chain((0..lm.horizons.len()).map(|j| lm.values[[index, j, 2]]))
        .fold(1.0f64, f64::max)
        * 1.1;
    let x0 = actual.first().map_or(-1.0, |p| p.0);
    let x1 = predicted.last().map_or(1.0, |p| p.0).max(0.0);
    let root = SVGBackend::new(path, (1100, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let title = format!("{} / {} ({})", s.topic, s.group, lm.models[index]);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(x0..x1, 0.0..y_max)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("hours from now")
        .y_desc(format!("messages per {} s", s.step))
        .draw()
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(LineSeries::new(actual, BLACK.stroke_width(1)))
        .map_err(|e| e.to_string())?
        .label("actual")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLACK));
    let blue = RGBColor(30, 90, 200);
    chart
        .draw_series(LineSeries::new(predicted, blue.stroke_width(2)))
        .map_err(|e| e.to_string())?
        .label("predicted")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], blue));
    let red = RGBColor(200, 60, 40);
    chart
        .draw_series(lm.horizons.iter().enumerate().map(|(j, (_, h))| {
            let x = hours(s.values.len() + *h as usize - 1);
            ErrorBar::new_vertical(
                x,
                lm.values[[index, j, 1]],
                lm.values[[index, j, 0]],
                lm.values[[index, j, 2]],
                red.stroke_width(2),
                8,
            )
        }))
        .map_err(|e| e.to_string())?
        .label("band at each horizon")
        .legend(move |(x, y)| PathElement::new(vec![(x, y - 5), (x, y + 5)], red));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

/// Season length in buckets: one day.
pub fn daily_season(step: u64) -> usize {
    (Duration::from_secs(86_400).as_secs() / step) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_scales_by_active_share() {
        let st = status_from_csv("group,connected,devices,low_battery\ng,8,10,4\nh,5,5\n").unwrap();
        // 8 of 10 online, 4 of them at half rate: (8 - 2) / 10.
        assert!((st["g"].factor() - 0.6).abs() < 1e-12);
        assert_eq!(st["h"].factor(), 1.0);
        let err = status_from_csv("g,1\n").unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
    }

    fn sinusoid(n: usize, m: usize) -> Vec<f64> {
        (0..n)
            .map(|t| 100.0 + 50.0 * (2.0 * std::f64::consts::PI * t as f64 / m as f64).sin())
            .collect()
    }

    #[test]
    fn models_on_series_with_known_answers() {
        let m = 24;
        // A pure season: both models continue it exactly (HW to 1e-6).
        let y = sinusoid(24 * 10, m);
        let want = &sinusoid(24 * 12, m)[24 * 10..];
        for (a, b) in seasonal_naive(&y, m, 48).iter().zip(want) {
            assert!((a - b).abs() < 1e-9, "{a} vs {b}");
        }
        let hw = holt_winters(&y, m, 48);
        for (a, b) in hw.iter().zip(want) {
            assert!((a - b).abs() < 1.0, "{a} vs {b}");
        }
        // A constant: exact.
        let c = vec![7.0; 24 * 5];
        assert_eq!(seasonal_naive(&c, m, 10), vec![7.0; 10]);
        for v in holt_winters(&c, m, 10) {
            assert!((v - 7.0).abs() < 1e-9);
        }
        // A linear trend: HW follows it, the naive model lags a season.
        let tr: Vec<f64> = (0..24 * 6).map(|t| 10.0 + 0.5 * t as f64).collect();
        let next = 10.0 + 0.5 * (24 * 6) as f64;
        assert!((holt_winters(&tr, m, 1)[0] - next).abs() < 1.0);
        assert!((seasonal_naive(&tr, m, 1)[0] - next).abs() > 10.0);
        // A step: after the shift HW sits at the new level.
        let mut st = vec![10.0; 24 * 4];
        st.extend(vec![50.0; 24 * 3]);
        let f = holt_winters(&st, m, 5);
        assert!(f.iter().all(|v| (v - 50.0).abs() < 5.0), "{f:?}");
        // Never negative, even after a fall to zero.
        let mut fall = sinusoid(24 * 4, m);
        fall.extend(vec![0.0; 30]);
        assert!(holt_winters(&fall, m, 24).iter().all(|v| *v >= 0.0));
    }

    #[test]
    fn metrics_on_hand_computed_cases() {
        // Training 1,2,3,4 with m = 1: naive in-sample MAE = 1.
        let train = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(mase(&train, &[5.0, 6.0], &[5.0, 5.0], 1), Some(0.5));
        assert_eq!(mase(&[3.0, 3.0, 3.0], &[3.0], &[4.0], 1), None);
        assert!((smape(&[100.0], &[50.0]) - 200.0 * 50.0 / 150.0).abs() < 1e-9);
        assert_eq!(smape(&[0.0, 0.0], &[0.0, 0.0]), 0.0);
        assert_eq!(smape(&[0.0], &[3.0]), 200.0);
    }

    #[test]
    fn csv_grid_order_and_horizons() {
        let s = series_from_csv("0,a,g,1\n120,a,g,3\n60,b,g,2\n", 60).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].values, vec![1.0, 0.0, 3.0], "gaps are zeros");
        assert_eq!(s[1].values, vec![0.0, 2.0, 0.0], "same span for all");
        match series_from_csv("0,a,g,1\n90,a,g,1\n", 60) {
            Err(ForecastError::OffGrid { line: 2, .. }) => {}
            other => panic!("{other:?}"),
        }
        match series_from_csv("120,a,g,1\n60,a,g,1\n", 60) {
            Err(ForecastError::OutOfOrder { line: 2, .. }) => {}
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            series_from_csv("0,a,g,-1\n", 60),
            Err(ForecastError::Csv(HistoryError::Csv { line: 1, .. }))
        ));
        assert!(matches!(series_from_csv("", 60), Err(ForecastError::Empty)));
        assert_eq!(
            parse_horizons("5m, 1h,24h", 60).unwrap(),
            vec![("5m".into(), 5), ("1h".into(), 60), ("24h".into(), 1440)]
        );
        assert!(matches!(
            parse_horizons("5 fortnights", 60),
            Err(ForecastError::BadHorizon(_))
        ));
        assert!(matches!(
            parse_horizons("90s", 60),
            Err(ForecastError::HorizonOffGrid { .. })
        ));
    }

    #[test]
    fn forecast_all_picks_per_series_and_bands_hold_the_prediction() {
        let m = 24;
        let step = 3600;
        let mut series = vec![
            Series {
                topic: "season".into(),
                group: "g".into(),
                start: 0,
                step,
                values: sinusoid(24 * 10, m),
            },
            Series {
                topic: "trend".into(),
                group: "g".into(),
                start: 0,
                step,
                values: (0..24 * 10).map(|t| 5.0 + t as f64).collect(),
            },
        ];
        // A newcomer with two hours of data borrows the group's shape.
        let mut young = vec![0.0; 24 * 10];
        young[24 * 10 - 2] = 10.0;
        young[24 * 10 - 1] = 12.0;
        series.push(Series {
            topic: "young".into(),
            group: "g".into(),
            start: 0,
            step,
            values: young,
        });
        let horizons = parse_horizons("1h,24h", step).unwrap();
        let lm = forecast_all(&series, &horizons, m);
        assert_eq!(lm.values.dim(), (3, 2, 3));
        assert_eq!(lm.models[1], "holt-winters", "the trend needs HW");
        assert_eq!(lm.models[2], "cold-start");
        for i in 0..3 {
            for j in 0..2 {
                let (p, lo, hi) = (
                    lm.values[[i, j, 0]],
                    lm.values[[i, j, 1]],
                    lm.values[[i, j, 2]],
                );
                assert!(lo <= p && p <= hi && lo >= 0.0, "{i},{j}: {lo} {p} {hi}");
            }
        }
        assert_eq!(lm.targets[0], 24 * 10 * step);
        let mut out = Vec::new();
        write_csv(&lm, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 1 + 3 * 2);
        assert!(text.starts_with("topic,group,horizon,timestamp,predicted,lower,upper\n"));
    }
}
