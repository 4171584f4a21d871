//! Load forecasting: expected publishes per topic × device group at a few
//! horizons, from the history the daemon keeps (CSV
//! `timestamp,topic,group,count`).
//!
//! Six models ([`models`], described there and in docs/forecasting.md):
//! seasonal naive (daily), weekly naive, Holt-Winters, a linfa regression
//! on Fourier terms and seasonal lags, an MSTL-like decomposition, and the
//! mean of the last three. [`forecast_series`] fits each once on the history
//! before the last day, forecasts from 12 origins spread over that day, and
//! picks per lead time the model with the lowest mean MASE there; the same
//! fit then forecasts from the last bucket. Bands are the 10th and 90th
//! percentiles of the chosen model's validation errors, never below zero.
//!
//! Series with less than a season of history borrow the daily shape of
//! their device group's aggregate, scaled to their own level; with no usable
//! aggregate either they fall back to their recent mean. Missing buckets are
//! zero (no messages).
//!
//! Device status (`--status`) scales a group's forecasts by its share of
//! active devices; `--plot` draws one series with its band.

use std::{collections::BTreeMap, io::Write, time::Duration};

use ndarray::Array3;

mod models;

pub use models::{Calendar, Fitted, Model, average, seasonal_naive};

use shardcast_records::{Columns, RecordError, history::parse_csv_lines, records};

#[derive(Debug, thiserror::Error)]
pub enum ForecastError {
    #[error("{0}")]
    Csv(#[from] RecordError),
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
    #[error(
        "history spans {buckets} buckets (unix {from} to {to}) for {series} series: more than the forecaster holds ({MAX_BUCKETS} buckets, {MAX_CELLS} series x buckets); export a shorter window or use a longer --bucket"
    )]
    TooLarge {
        buckets: u64,
        series: usize,
        from: u64,
        to: u64,
    },
    #[error("horizon {0:?}: not a duration (use s, m, h or d, e.g. \"5m\", \"1h\", \"24h\")")]
    BadHorizon(String),
    #[error("status line {line}: {reason}")]
    BadStatusLine { line: usize, reason: String },
    #[error("forecast line {line}: {reason}")]
    BadForecastLine { line: usize, reason: String },
    #[error("the forecast has no rows for horizon {0:?}")]
    HorizonAbsent(String),
    #[error("horizon {0:?} is longer than a week, the longest the forecaster predicts")]
    HorizonTooLong(String),
    #[error("horizon {horizon:?} is not a positive multiple of the {step}s bucket")]
    HorizonOffGrid { horizon: String, step: u64 },
}

type Result<T, E = ForecastError> = std::result::Result<T, E>;

/// Most buckets a history may span (two years of minutes).
pub const MAX_BUCKETS: u64 = 2 * 366 * 1440;
/// Most series × buckets a history may hold (8 GiB of f64).
pub const MAX_CELLS: u64 = 1 << 30;

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
    let n = (hi - lo) / step + 1;
    // Every series is laid out over the whole span: a stray timestamp
    // years away must be an error, not a many-gigabyte allocation.
    let cells = n.saturating_mul(by.len() as u64);
    if n > MAX_BUCKETS || cells > MAX_CELLS {
        return Err(ForecastError::TooLarge {
            buckets: n,
            series: by.len(),
            from: lo,
            to: hi,
        });
    }
    let n = n as usize;
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

/// Parses `5m,1h,24h` into horizons that are whole multiples of `step`
/// (see [`horizons_on_grid`]).
pub fn parse_horizons(text: &str, step: u64) -> Result<Vec<(String, u64)>> {
    let spans = text
        .split(',')
        .map(|h| {
            let h = h.trim();
            let d = humantime::parse_duration(h)
                .map_err(|_| ForecastError::BadHorizon(h.to_string()))?;
            if d.subsec_nanos() != 0 {
                return Err(ForecastError::HorizonOffGrid {
                    horizon: h.to_string(),
                    step,
                });
            }
            Ok((h.to_string(), d.as_secs()))
        })
        .collect::<Result<Vec<_>>>()?;
    horizons_on_grid(&spans, step)
}

/// Horizons given as (label, seconds) in buckets of `step` seconds: each
/// must be a whole, positive number of buckets and at most
/// [`MAX_HORIZON_SECS`].
pub fn horizons_on_grid(spans: &[(String, u64)], step: u64) -> Result<Vec<(String, u64)>> {
    spans
        .iter()
        .map(|(h, secs)| {
            if *secs == 0 || secs % step != 0 {
                return Err(ForecastError::HorizonOffGrid {
                    horizon: h.clone(),
                    step,
                });
            }
            if *secs > MAX_HORIZON_SECS {
                return Err(ForecastError::HorizonTooLong(h.clone()));
            }
            Ok((h.clone(), secs / step))
        })
        .collect()
}

/// The longest horizon: a week (forecasts are paths of that many buckets;
/// the models' seasons are a day and a week).
pub const MAX_HORIZON_SECS: u64 = 7 * 86_400;

/// Mean absolute scaled error: the forecast's MAE over `scale`, the
/// in-sample MAE of the seasonal naive model ([`naive_scale`]). `None`
/// when the scale is zero (a flat series: any error is infinitely bad or
/// none is).
pub fn mase(scale: f64, actual: &[f64], forecast: &[f64]) -> Option<f64> {
    let mae: f64 = actual
        .iter()
        .zip(forecast)
        .map(|(a, f)| (a - f).abs())
        .sum::<f64>()
        / actual.len().max(1) as f64;
    (scale > 0.0).then(|| mae / scale)
}

/// In-sample MAE of the seasonal naive model with season `m` on `train`
/// (season 1 when the training span is a season or less): MASE's scale.
pub fn naive_scale(train: &[f64], m: usize) -> f64 {
    let m = if m == 0 || train.len() <= m { 1 } else { m };
    if train.len() <= m {
        return 0.0;
    }
    train
        .windows(m + 1)
        .map(|w| (w[m] - w[0]).abs())
        .sum::<f64>()
        / (train.len() - m) as f64
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
    /// Per origin: MASE and sMAPE of the path to the horizon.
    pub mase: Vec<f64>,
    pub smape: Vec<f64>,
    /// Actual minus forecast at the second half of the path's lead times,
    /// every origin: the band's sample.
    pub errors: Vec<f64>,
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

/// Forecast origins per horizon in the validation span.
const ORIGINS: usize = 12;
/// Up to this many origins for short leads (their paths are cheap, and a
/// dozen one-step errors is too few to tell two good models apart).
const MAX_ORIGINS: usize = 48;
/// Forecast steps a lead's validation aims at: origins = this / lead,
/// between [`ORIGINS`] and [`MAX_ORIGINS`].
const VALIDATION_STEPS: usize = 240;

/// One series' forecast: per lead time the chosen model, the value with
/// its band and the chosen model's path up to it; every model's backtest.
#[derive(Clone, Debug)]
pub struct SeriesForecast {
    pub chosen: Vec<Model>,
    /// Per lead: predicted, lower, upper.
    pub values: Vec<[f64; 3]>,
    pub scores: Vec<(Model, Vec<Score>)>,
    pub paths: Vec<Vec<f64>>,
}

/// Forecasts one series at `leads` (buckets ahead, each at least 1, as
/// [`parse_horizons`] gives them). Every model is fitted
/// once on the history before the validation span (the last day, or the
/// longest lead if longer) and forecasts from origins spread over it
/// ([`VALIDATION_STEPS`] / lead, within [`ORIGINS`]..=[`MAX_ORIGINS`]); each lead takes
/// the model with the lowest mean MASE there
/// (the simplest on ties, seasonal naive when no MASE is defined) and
/// forecasts from the last bucket with the same fit (no refit: the fit is
/// what was validated, and refitting would double the cost). Bands are the
/// 10th and 90th percentiles of the chosen model's validation errors.
pub fn forecast_series(y: &[f64], cal: &Calendar, leads: &[usize]) -> SeriesForecast {
    assert!(leads.iter().all(|&h| h >= 1), "lead times start at 1");
    let n = y.len();
    let max_h = leads.iter().copied().max().unwrap_or(1).max(1);
    let cut = n.saturating_sub(cal.day.max(max_h));
    // Every model but the combination, fitted once.
    let fits: Vec<(Model, Fitted)> = Model::ALL
        .into_iter()
        .filter(|m| *m != Model::Combination && cut > 0)
        .filter_map(|m| Fitted::fit(m, y, cut, cal, max_h).map(|f| (m, f)))
        .collect();
    let combines = fits
        .iter()
        .filter(|f| Model::COMBINED.contains(&f.0))
        .count()
        >= 2;
    let mut models: Vec<Model> = fits.iter().map(|f| f.0).collect();
    if combines {
        models.push(Model::Combination);
    }
    let scale = naive_scale(&y[..cut], cal.day);
    // paths[i]: the path of models[i] from one origin; the combination's
    // is the mean of its parts' paths (computed once, not refitted).
    let mut paths: Vec<Vec<f64>> = vec![Vec::with_capacity(max_h); models.len()];
    let all_paths = |o: usize, h: usize, paths: &mut Vec<Vec<f64>>| {
        for (i, (_, fitted)) in fits.iter().enumerate() {
            fitted.path(y, o, h, cal, &mut paths[i]);
        }
        if combines {
            let parts: Vec<&[f64]> = fits
                .iter()
                .zip(paths.iter())
                .filter(|((m, _), _)| Model::COMBINED.contains(m))
                .map(|(_, p)| p.as_slice())
                .collect();
            let mean = average(&parts).expect("two or more parts");
            paths[fits.len()] = mean;
        }
    };
    let mut scores: Vec<(Model, Vec<Score>)> = models
        .iter()
        .map(|m| (*m, vec![Score::default(); leads.len()]))
        .collect();
    for (j, &h) in leads.iter().enumerate() {
        if models.is_empty() {
            break;
        }
        let last = n - h;
        let count = (VALIDATION_STEPS / h)
            .clamp(ORIGINS, MAX_ORIGINS)
            .min(last - cut + 1);
        for i in 0..count {
            let o = cut
                + if count > 1 {
                    i * (last - cut) / (count - 1)
                } else {
                    0
                };
            all_paths(o, h, &mut paths);
            let actual = &y[o..o + h];
            for ((_, per_lead), path) in scores.iter_mut().zip(&paths) {
                let sc = &mut per_lead[j];
                if let Some(v) = mase(scale, actual, path) {
                    sc.mase.push(v);
                }
                sc.smape.push(smape(actual, path));
                sc.errors.extend((h / 2..h).map(|k| actual[k] - path[k]));
            }
        }
    }
    let chosen: Vec<Model> = (0..leads.len())
        .map(|j| {
            let mut best = (f64::INFINITY, Model::SeasonalNaive);
            for (model, per_lead) in &scores {
                if let Some(v) = mean(&per_lead[j].mase)
                    && v < best.0
                {
                    best = (v, *model);
                }
            }
            best.1
        })
        .collect();
    // The final forecasts come from the same fits, run on to the last
    // bucket (state, level, lags): what was validated is what forecasts.
    let mut finals: Vec<(Model, Vec<f64>)> = Vec::new();
    if !models.is_empty() {
        all_paths(n, max_h, &mut paths);
        for (i, model) in models.iter().enumerate() {
            if chosen.contains(model) {
                finals.push((*model, std::mem::take(&mut paths[i])));
            }
        }
    }
    if !finals.iter().any(|f| f.0 == Model::SeasonalNaive) {
        let mut naive = Vec::new();
        Fitted::SeasonalNaive.path(y, n, max_h, cal, &mut naive);
        finals.push((Model::SeasonalNaive, naive));
    }
    let final_path = |model: Model| {
        &finals
            .iter()
            .find(|f| f.0 == model)
            .expect("a path for every chosen model")
            .1
    };
    let values = leads
        .iter()
        .zip(&chosen)
        .enumerate()
        .map(|(j, (&h, &model))| {
            let p = final_path(model)[h - 1];
            match scores.iter().find(|s| s.0 == model) {
                Some((_, per_lead)) => {
                    let e = &per_lead[j].errors;
                    [
                        p,
                        (p + quantile(e, 0.1)).min(p).max(0.0),
                        (p + quantile(e, 0.9)).max(p),
                    ]
                }
                None => [p, 0.0, 2.0 * p.max(1.0)],
            }
        })
        .collect();
    SeriesForecast {
        paths: leads
            .iter()
            .zip(&chosen)
            .map(|(&h, &m)| final_path(m)[..h].to_vec())
            .collect(),
        chosen,
        values,
        scores,
    }
}

/// Fits one series and forecasts `h` steps with the model
/// [`forecast_series`] picks at lead `h`. The simulator's entry point.
pub fn forecast_path(y: &[f64], cal: &Calendar, h: usize) -> (Model, Vec<f64>) {
    let mut f = forecast_series(y, cal, &[h]);
    (f.chosen[0], f.paths.remove(0))
}

/// The predicted load matrix: `values[[series, horizon, k]]` with `k` = 0
/// predicted, 1 lower, 2 upper (messages per bucket at that lead time).
#[derive(Clone, Debug)]
pub struct LoadMatrix {
    pub series: Vec<(String, String)>,
    pub horizons: Vec<(String, u64)>,
    /// Start of the bucket each horizon predicts (unix s).
    pub targets: Vec<u64>,
    /// Per series and horizon: the model that made the forecast.
    pub models: Vec<Vec<&'static str>>,
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

/// The backtest row of each series' chosen model.
pub const SELECTED: &str = "selected";

/// Per model: every backtest's MASE and sMAPE values.
type Errors = BTreeMap<&'static str, (Vec<f64>, Vec<f64>)>;

/// What [`forecast_all`] makes of one series.
enum Outcome {
    Fitted(SeriesForecast),
    /// Too young to fit: per lead, the predicted value.
    ColdStart(Vec<f64>),
}

/// Forecasts every series at every horizon, on all cores. `cal.day` is the
/// daily season in buckets.
pub fn forecast_all(series: &[Series], horizons: &[(String, u64)], cal: &Calendar) -> LoadMatrix {
    let leads: Vec<usize> = horizons.iter().map(|(_, h)| *h as usize).collect();
    let max_h = leads.iter().copied().max().unwrap_or(1);
    // Group aggregates and their paths, for cold starts.
    let mut aggregate: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for s in series {
        let a = aggregate
            .entry(s.group.as_str())
            .or_insert_with(|| vec![0.0; s.values.len()]);
        for (x, v) in a.iter_mut().zip(&s.values) {
            *x += v;
        }
    }
    let young = |s: &Series| {
        let first = s
            .values
            .iter()
            .position(|v| *v != 0.0)
            .unwrap_or(s.values.len());
        s.values.len() - first < cal.day
    };
    let group_paths: BTreeMap<&str, Option<Vec<f64>>> = aggregate
        .iter()
        .filter(|(g, _)| series.iter().any(|s| s.group == **g && young(s)))
        .map(|(g, agg)| (*g, Model::HoltWinters.forecast(agg, cal, max_h)))
        .collect();
    let one = |s: &Series| -> Outcome {
        let y = &s.values;
        if !young(s) {
            let mut f = forecast_series(y, cal, &leads);
            // Only the summary's MASE and sMAPE are read from here on: the
            // paths and per-origin errors (~60 KB a series) would add up
            // to most of the memory of a large run.
            f.paths = Vec::new();
            for (_, per_lead) in &mut f.scores {
                for sc in per_lead {
                    sc.errors = Vec::new();
                }
            }
            return Outcome::Fitted(f);
        }
        // Cold start: the group's daily shape at this series' level.
        let first = y.iter().position(|v| *v != 0.0).unwrap_or(y.len());
        let own: f64 = y[first..].iter().sum();
        let agg = &aggregate[s.group.as_str()];
        let agg_active: f64 = agg[first..].iter().sum();
        let f: Vec<f64> = match &group_paths[s.group.as_str()] {
            Some(path) if agg_active > 0.0 => path.iter().map(|v| v * own / agg_active).collect(),
            _ => {
                let recent = &y[y.len().saturating_sub(60).max(first)..];
                vec![mean(recent).unwrap_or(0.0); max_h]
            }
        };
        Outcome::ColdStart(leads.iter().map(|h| f[h - 1]).collect())
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = series.len().div_ceil(threads).max(1);
    let outcomes: Vec<Outcome> = std::thread::scope(|scope| {
        let handles: Vec<_> = series
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(one).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a forecast thread panicked"))
            .collect()
    });
    let mut values = Array3::<f64>::zeros((series.len(), horizons.len(), 3));
    let mut models = Vec::with_capacity(series.len());
    let mut summary: Vec<Errors> = vec![BTreeMap::new(); horizons.len()];
    for (i, outcome) in outcomes.into_iter().enumerate() {
        match outcome {
            Outcome::ColdStart(p) => {
                for (j, p) in p.into_iter().enumerate() {
                    values[[i, j, 0]] = p;
                    values[[i, j, 1]] = 0.0;
                    values[[i, j, 2]] = 2.0 * p.max(1.0);
                }
                models.push(vec!["cold-start"; horizons.len()]);
            }
            Outcome::Fitted(f) => {
                for (model, per_lead) in &f.scores {
                    for (j, sc) in per_lead.iter().enumerate() {
                        let mut add = |name| {
                            let e: &mut (Vec<f64>, Vec<f64>) = summary[j].entry(name).or_default();
                            e.0.extend(&sc.mase);
                            e.1.extend(&sc.smape);
                        };
                        add(model.name());
                        if f.chosen[j] == *model {
                            add(SELECTED);
                        }
                    }
                }
                for (j, v) in f.values.iter().enumerate() {
                    for k in 0..3 {
                        values[[i, j, k]] = v[k];
                    }
                }
                models.push(f.chosen.iter().map(|m| m.name()).collect());
            }
        }
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
        models,
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
    cal: &Calendar,
) -> std::result::Result<(), String> {
    use plotters::prelude::*;
    let max_h = lm
        .horizons
        .iter()
        .map(|(_, h)| *h as usize)
        .max()
        .unwrap_or(1);
    // The model chosen at the longest horizon, refitted (cold starts and
    // models that cannot fit this series draw the naive path).
    let longest = (0..lm.horizons.len()).max_by_key(|&j| lm.horizons[j].1);
    let path_f = longest
        .and_then(|j| Model::from_name(lm.models[index][j]))
        .and_then(|m| m.forecast(&s.values, cal, max_h))
        .unwrap_or_else(|| seasonal_naive(&s.values, cal.day, max_h));
    let keep = (2 * cal.day).min(s.values.len());
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
    let title = format!(
        "{} / {} ({})",
        s.topic,
        s.group,
        lm.models[index].join(", ")
    );
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

    #[test]
    fn metrics_on_hand_computed_cases() {
        // Training 1,2,3,4 with m = 1: naive in-sample MAE = 1.
        let train = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(naive_scale(&train, 1), 1.0);
        // Season 2: |3-1|, |4-2| -> 2.
        assert_eq!(naive_scale(&train, 2), 2.0);
        // A season as long as the training span falls back to season 1.
        assert_eq!(naive_scale(&train, 4), 1.0);
        assert_eq!(
            mase(naive_scale(&train, 1), &[5.0, 6.0], &[5.0, 5.0]),
            Some(0.5)
        );
        assert_eq!(mase(naive_scale(&[3.0, 3.0, 3.0], 1), &[3.0], &[4.0]), None);
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
            Err(ForecastError::Csv(RecordError { line: 1, .. }))
        ));
        assert!(matches!(series_from_csv("", 60), Err(ForecastError::Empty)));
        // A stray timestamp decades later: refused, not allocated.
        assert!(matches!(
            series_from_csv("0,a,g,1\n3000000000,a,g,1\n", 60),
            Err(ForecastError::TooLarge { .. })
        ));
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
        assert!(matches!(
            parse_horizons("1h,8d", 60),
            Err(ForecastError::HorizonTooLong(h)) if h == "8d"
        ));
    }

    #[test]
    fn selection_takes_the_lowest_backtest_mase() {
        // Noisy daily season with a weekend dip: 3 weeks of hourly buckets.
        let cal = Calendar::new(24);
        let mut state = 7u64;
        let y: Vec<f64> = (0..24 * 21)
            .map(|t| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let noise = (state >> 33) as f64 / (1u64 << 31) as f64 - 0.5;
                let weekend = if (t / 24) % 7 >= 5 { 0.5 } else { 1.0 };
                weekend * (100.0 + 50.0 * (t as f64 * std::f64::consts::TAU / 24.0).sin())
                    + 20.0 * noise
            })
            .collect();
        let f = forecast_series(&y, &cal, &[1, 6, 24]);
        assert_eq!(
            f.scores.len(),
            Model::ALL.len(),
            "three weeks fit every model"
        );
        for (j, chosen) in f.chosen.iter().enumerate() {
            let score = |m: Model| {
                let sc = &f.scores.iter().find(|s| s.0 == m).unwrap().1[j];
                sc.mase.iter().sum::<f64>() / sc.mase.len() as f64
            };
            for m in Model::ALL {
                assert!(
                    score(*chosen) <= score(m),
                    "lead {j}: {chosen:?} over {m:?}"
                );
            }
            let [p, lo, hi] = f.values[j];
            assert!(lo <= p && p <= hi, "{lo} {p} {hi}");
        }
        assert_eq!(f.paths.iter().map(Vec::len).collect::<Vec<_>>(), [1, 6, 24]);
    }

    /// A daily cycle over 16 days of hourly buckets that triples from day
    /// 12 on (a level shift).
    fn shifted(t: usize) -> f64 {
        let v = 50.0 + 30.0 * (t as f64 * std::f64::consts::TAU / 24.0).sin();
        if t >= 24 * 12 { 3.0 * v } else { v }
    }

    #[test]
    fn gaps_zeros_bursts_and_shifts_give_finite_forecasts() {
        let cal = Calendar::new(24);
        let shift: Vec<f64> = (0..24 * 16).map(shifted).collect();
        // Plus a dead day (a gap: zeros) and a 40x burst.
        let mut rough = shift.clone();
        rough[24 * 5..24 * 6].fill(0.0);
        rough[24 * 9 + 3] *= 40.0;
        let mut spike = vec![0.0; 24 * 16];
        spike[24 * 15] = 1000.0;
        for (what, y) in [
            ("rough", rough),
            ("all zeros", vec![0.0; 24 * 16]),
            ("one spike", spike),
            ("two buckets", vec![3.0, 4.0]),
        ] {
            let f = forecast_series(&y, &cal, &[1, 6, 24]);
            for (j, [p, lo, hi]) in f.values.iter().enumerate() {
                assert!(
                    p.is_finite() && *lo >= 0.0 && lo <= p && p <= hi && hi.is_finite(),
                    "{what}, lead {j}: {lo} {p} {hi}"
                );
            }
        }
        // Four days after the shift the forecast sits near the new level.
        let f = forecast_series(&shift, &cal, &[1]);
        let want = shifted(24 * 16);
        assert!(
            (f.values[0][0] - want).abs() < 0.25 * want,
            "{} vs {want}",
            f.values[0][0]
        );
    }

    proptest::proptest! {
        #[test]
        fn csv_readers_never_panic(text in "[0-9a-z,:/TZ .\\-\n]{0,300}") {
            let _ = series_from_csv(&text, 60);
            let _ = status_from_csv(&text);
            let _ = rates_from_csv(&text, "1h", false, 60);
        }

        #[test]
        fn well_formed_history_is_read_back(
            counts in proptest::collection::vec(0u32..1000, 1..50),
            start in 0u64..1_000_000,
        ) {
            let mut csv = String::from("timestamp,topic,group,count\n");
            for (i, c) in counts.iter().enumerate() {
                csv.push_str(&format!("{},t/x,g,{c}\n", (start + i as u64) * 60));
            }
            let s = series_from_csv(&csv, 60).unwrap();
            proptest::prop_assert_eq!(s.len(), 1);
            proptest::prop_assert_eq!(s[0].start, start * 60);
            let want: Vec<f64> = counts.iter().map(|c| *c as f64).collect();
            proptest::prop_assert_eq!(&s[0].values, &want);
        }
    }

    #[test]
    fn any_length_season_and_lead_gives_finite_banded_forecasts() {
        // Seeded random cases: series from empty to three weeks, seasons
        // from one bucket (daily buckets) up, leads beyond a season, values
        // with runs of zeros and spikes.
        use rand::{RngCore, SeedableRng};
        let mix = |seed: u64| rand_pcg::Pcg64Mcg::seed_from_u64(seed).next_u64();
        for case in 0..300u64 {
            let r = |k: u64| mix(case * 16 + k);
            let day = [1usize, 2, 5, 24][(r(0) % 4) as usize];
            let n = (r(1) % (day as u64 * 21 + 3)) as usize;
            let leads: Vec<usize> = (0..1 + r(2) % 3)
                .map(|k| 1 + (r(3 + k) % (2 * day as u64 + 2)) as usize)
                .collect();
            let y: Vec<f64> = (0..n as u64)
                .map(|t| match mix(case ^ (t << 20)) % 10 {
                    0..=2 => 0.0,
                    3 => 1e6,
                    v => (v * (t % day as u64 + 1)) as f64,
                })
                .collect();
            let f = forecast_series(&y, &Calendar::new(day), &leads);
            assert_eq!(f.values.len(), leads.len());
            for (j, [p, lo, hi]) in f.values.iter().enumerate() {
                assert!(
                    p.is_finite() && *lo >= 0.0 && lo <= p && p <= hi && hi.is_finite(),
                    "case {case} (n {n}, day {day}, leads {leads:?}) lead {j}: {lo} {p} {hi}"
                );
                assert_eq!(f.paths[j].len(), leads[j]);
            }
        }
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
                values: models::tests::sinusoid(24 * 10, m),
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
        let lm = forecast_all(&series, &horizons, &Calendar::new(m));
        assert_eq!(lm.values.dim(), (3, 2, 3));
        for model in &lm.models[1] {
            assert!(
                ["holt-winters", "regression", "combination"].contains(model),
                "the trend needs a model that follows it, not {model}"
            );
        }
        assert_eq!(lm.models[2], vec!["cold-start"; 2]);
        // The trend's next hour is 5 + 240.
        assert!(
            (lm.values[[1, 0, 0]] - 245.0).abs() < 2.0,
            "{}",
            lm.values[[1, 0, 0]]
        );
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
