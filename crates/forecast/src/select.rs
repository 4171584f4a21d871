//! Model choice: every model fitted once per series, validated from
//! rolling origins over the last day, the best per lead time by MASE, and
//! the bands from its errors; [`forecast_all`] does it for every series
//! into the [`LoadMatrix`] the planner reads.

use std::collections::BTreeMap;

use ndarray::Array3;

use crate::*;

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

/// The load (messages per bucket) a plan should carry through `window`, a
/// forecast path's buckets over the span the plan must last: its peak
/// less `sigmas` Poisson sigmas (the largest of a few noisy counts
/// overshoots by about one), never below the window's mean, plus
/// `correction` (the forecast's current error against what is measured:
/// a flash under way, a level shift), at least 0. The simulator's
/// predictive strategy plans with one sigma off (minute counts of
/// thousands: a sigma is a few percent); the daemon's cycle with none
/// (its buckets may be seconds long, where a sigma is a third of a small
/// count, and the planner's headroom absorbs the noise).
pub fn peak_ahead(window: &[f64], correction: f64, sigmas: f64) -> f64 {
    if window.is_empty() {
        return correction.max(0.0);
    }
    let peak = window.iter().fold(0.0f64, |a, &b| a.max(b));
    let mean = window.iter().sum::<f64>() / window.len() as f64;
    ((peak - sigmas * peak.sqrt()).max(mean) + correction).max(0.0)
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
