//! The forecasting models, fitted on a prefix of a series and able to
//! forecast from any later origin without refitting: the rolling-origin
//! backtest (many origins, one fit per model) and the final forecast share
//! one fit, which is what makes 10,000 two-week series fit in seconds.
//!
//! (One file for the six models, past the usual size: they share the
//! calendar, the seasonal helpers and the fit-once/forecast-anywhere
//! contract, and are read side by side when one is tuned.)
//!
//! - **seasonal naive** (daily) and **weekly naive**: the value one
//!   season earlier, the baseline every error is scaled by;
//! - **Holt-Winters**: additive level and daily season, without a trend
//!   (A,N,A) or with a gently smoothed one (A,A,A); smoothing constants
//!   picked on an 18-point grid by one-step squared error over the last
//!   three days before the fit's end (a fourth initialises the state);
//! - **regression** (fitted with linfa's least squares): daily and weekly
//!   Fourier terms plus seasonal lags (the same bucket one day and one week
//!   earlier, and its mean over the last seven days), the Fourier +
//!   seasonal-ARX form of an ARIMA with exogenous seasonality;
//! - **decomposition** (MSTL-like): a trend (moving mean over a day), a
//!   daily profile of what it leaves (per bucket of the day, the mean over
//!   days without the extremes), a weekly correction (mean per bucket of
//!   the week of what the daily profile leaves, smoothed over an hour), and
//!   a level (mean of the deseasonalised series over the last day);
//! - **combination**: the mean of the Holt-Winters, regression and
//!   decomposition forecasts (combinations won the M4 competition).
//!
//! Regression and decomposition add a *persistence* term: the deviation of
//! the last few buckets from the model, carried forward with a weight per
//! lead time fitted on the training data (a burst or a level shift under
//! way lasts a while; the weight falls to zero where it does not).
//! Forecasts are never negative.

use linfa::prelude::*;
use linfa_linear::LinearRegression;
use ndarray::{Array1, Array2};

/// Daily and weekly Fourier harmonics of the regression.
const DAY_HARMONICS: usize = 4;
const WEEK_HARMONICS: usize = 2;
/// Rows the regression is fitted on (evenly spaced over the training
/// span): the fit costs rows × features², and 600 rows pin down 15
/// coefficients.
const REGRESSION_ROWS: usize = 600;
/// Origins each persistence weight is fitted on.
const PERSISTENCE_ORIGINS: usize = 300;

/// Season lengths in buckets and the Fourier terms every series shares.
#[derive(Clone, Debug)]
pub struct Calendar {
    pub day: usize,
    pub week: usize,
    day_terms: Vec<f64>,
    week_terms: Vec<f64>,
}

fn fourier(period: usize, harmonics: usize) -> Vec<f64> {
    let mut t = Vec::with_capacity(period * 2 * harmonics);
    for b in 0..period {
        for k in 1..=harmonics {
            let a = 2.0 * std::f64::consts::PI * (k * b) as f64 / period as f64;
            t.push(a.sin());
            t.push(a.cos());
        }
    }
    t
}

impl Calendar {
    /// A calendar with a season of `day` buckets (a week is seven).
    pub fn new(day: usize) -> Calendar {
        let day = day.max(1);
        Calendar {
            day,
            week: 7 * day,
            day_terms: fourier(day, DAY_HARMONICS),
            week_terms: fourier(7 * day, WEEK_HARMONICS),
        }
    }

    /// Short window (buckets) the persistence term reads the current
    /// deviation over: five minutes at one-minute buckets, at least one.
    fn recent(&self) -> usize {
        (self.day / 288).max(1)
    }
}

/// The models, in the order ties are broken (simplest first).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Model {
    SeasonalNaive,
    WeeklyNaive,
    HoltWinters,
    Regression,
    Decomposition,
    Combination,
}

impl Model {
    pub const ALL: [Model; 6] = [
        Model::SeasonalNaive,
        Model::WeeklyNaive,
        Model::HoltWinters,
        Model::Regression,
        Model::Decomposition,
        Model::Combination,
    ];

    /// The models the combination averages.
    pub const COMBINED: [Model; 3] = [Model::HoltWinters, Model::Regression, Model::Decomposition];

    pub fn name(self) -> &'static str {
        match self {
            Model::SeasonalNaive => "seasonal-naive",
            Model::WeeklyNaive => "weekly-naive",
            Model::HoltWinters => "holt-winters",
            Model::Regression => "regression",
            Model::Decomposition => "decomposition",
            Model::Combination => "combination",
        }
    }

    pub fn from_name(name: &str) -> Option<Model> {
        Model::ALL.into_iter().find(|m| m.name() == name)
    }

    /// Fits on all of `y` and forecasts leads `1..=h`; `None` when the
    /// series is too short for the model.
    pub fn forecast(self, y: &[f64], cal: &Calendar, h: usize) -> Option<Vec<f64>> {
        if self == Model::Combination {
            let parts: Vec<Vec<f64>> = Model::COMBINED
                .into_iter()
                .filter_map(|m| m.forecast(y, cal, h))
                .collect();
            return average(&parts);
        }
        let f = Fitted::fit(self, y, y.len(), cal, h)?;
        let mut out = Vec::with_capacity(h);
        f.path(y, y.len(), h, cal, &mut out);
        Some(out)
    }
}

/// The combination's forecast: the mean of its parts' paths, when two or
/// more of them could be fitted (it has no fit of its own).
pub fn average<P: AsRef<[f64]>>(parts: &[P]) -> Option<Vec<f64>> {
    let first = parts.first()?.as_ref();
    (parts.len() >= 2).then(|| {
        (0..first.len())
            .map(|k| parts.iter().map(|p| p.as_ref()[k]).sum::<f64>() / parts.len() as f64)
            .collect()
    })
}

/// A model fitted on `y[..end]` (every model but the combination, which
/// [`average`]s its parts' paths).
#[derive(Clone, Debug)]
pub enum Fitted {
    SeasonalNaive,
    WeeklyNaive,
    HoltWinters(HoltWinters),
    Regression(Regression),
    Decomposition(Decomposition),
}

impl Fitted {
    /// Fits `model` on `y[..end]`, preparing forecasts of up to `max_lead`
    /// buckets; `None` when there is too little history for it, and for
    /// the combination.
    pub fn fit(
        model: Model,
        y: &[f64],
        end: usize,
        cal: &Calendar,
        max_lead: usize,
    ) -> Option<Fitted> {
        let y = &y[..end];
        match model {
            Model::SeasonalNaive => (!y.is_empty()).then_some(Fitted::SeasonalNaive),
            Model::WeeklyNaive => (y.len() >= cal.week).then_some(Fitted::WeeklyNaive),
            Model::HoltWinters => HoltWinters::fit(y, cal.day).map(Fitted::HoltWinters),
            Model::Regression => Regression::fit(y, cal, max_lead).map(Fitted::Regression),
            Model::Decomposition => Decomposition::fit(y, cal, max_lead).map(Fitted::Decomposition),
            Model::Combination => None,
        }
    }

    /// Forecasts leads `1..=h` from origin `o` (using `y[..o]` only; `o` at
    /// or after the fit's end) into `out`.
    pub fn path(&self, y: &[f64], o: usize, h: usize, cal: &Calendar, out: &mut Vec<f64>) {
        out.clear();
        let y = &y[..o];
        match self {
            Fitted::SeasonalNaive => out.extend(seasonal_naive(y, cal.day, h)),
            Fitted::WeeklyNaive => out.extend(seasonal_naive(y, cal.week, h)),
            Fitted::HoltWinters(m) => m.path(y, h, out),
            Fitted::Regression(m) => m.path(y, h, cal, out),
            Fitted::Decomposition(m) => m.path(y, h, cal, out),
        }
        for v in out.iter_mut() {
            *v = v.max(0.0);
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

/// Additive Holt-Winters: smoothing constants and the state at the fit's
/// end.
#[derive(Clone, Debug)]
pub struct HoltWinters {
    m: usize,
    alpha: f64,
    beta: f64,
    gamma: f64,
    /// Buckets the state has consumed.
    at: usize,
    level: f64,
    trend: f64,
    season: Vec<f64>,
}

impl HoltWinters {
    /// Seasons the grid search runs over (the most recent ones; the
    /// first initialises the state).
    const FIT_DAYS: usize = 4;

    fn fit(y: &[f64], m: usize) -> Option<HoltWinters> {
        if m < 2 || y.len() < 2 * m {
            return None;
        }
        let from = y.len().saturating_sub(Self::FIT_DAYS * m);
        // Keep the window's phase: the season index is absolute.
        let from = from - from % m;
        let mut best: Option<(f64, HoltWinters)> = None;
        for alpha in [0.05, 0.2, 0.5] {
            // No trend (ETS A,N,A: a level shift is not a slope), or one
            // smoothed gently (A,A,A: a day-long horizon amplifies it).
            for beta in [None, Some(0.01)] {
                let mut hws = [0.05, 0.2, 0.5]
                    .map(|gamma| HoltWinters::init(&y[from..], m, alpha, beta, gamma, from));
                let sse = HoltWinters::run_three(&mut hws, y);
                for (hw, sse) in hws.into_iter().zip(sse) {
                    if best.as_ref().is_none_or(|b| sse < b.0) {
                        best = Some((sse, hw));
                    }
                }
            }
        }
        best.map(|b| b.1)
    }

    /// [`HoltWinters::run`] for three models in lockstep (same start):
    /// their updates are independent, so the CPU overlaps them, where one
    /// model alone waits on its level -> trend chain.
    fn run_three(hws: &mut [HoltWinters; 3], y: &[f64]) -> [f64; 3] {
        let m = hws[0].m;
        let at = hws[0].at;
        let mut total = [0.0; 3];
        let mut i = at % m;
        for &v in y.iter().skip(at) {
            for (hw, total) in hws.iter_mut().zip(total.iter_mut()) {
                let e = hw.step(i, v);
                *total += e * e;
            }
            i += 1;
            if i == m {
                i = 0;
            }
        }
        for hw in hws.iter_mut() {
            hw.at = hw.at.max(y.len());
        }
        total
    }

    /// Initial state from the first two seasons of `w` (which starts at
    /// absolute bucket `from`), before consuming any of it.
    /// `beta` `None`: no trend at all.
    fn init(
        w: &[f64],
        m: usize,
        alpha: f64,
        beta: Option<f64>,
        gamma: f64,
        from: usize,
    ) -> HoltWinters {
        let first: f64 = w[..m].iter().sum::<f64>() / m as f64;
        let second: f64 = w[m..2 * m].iter().sum::<f64>() / m as f64;
        let trend = beta.map_or(0.0, |_| (second - first) / m as f64);
        let beta = beta.unwrap_or(0.0);
        // The first season's mean sits at its middle: de-trend it so a
        // slope is not mistaken for a seasonal pattern; the level is at its
        // end.
        let mid = (m as f64 - 1.0) / 2.0;
        let season = w[..m]
            .iter()
            .enumerate()
            .map(|(i, v)| v - (first + trend * (i as f64 - mid)))
            .collect();
        HoltWinters {
            m,
            alpha,
            beta,
            gamma,
            at: from + m,
            level: first + trend * mid,
            trend,
            season,
        }
    }

    /// One update with value `v` at season index `i`; returns the
    /// one-step error.
    #[inline(always)]
    fn step(&mut self, i: usize, v: f64) -> f64 {
        let (a, b, g) = (self.alpha, self.beta, self.gamma);
        let s = self.season[i];
        let e = v - (self.level + self.trend + s);
        let level = a * (v - s) + (1.0 - a) * (self.level + self.trend);
        self.trend = b * (level - self.level) + (1.0 - b) * self.trend;
        self.season[i] = g * (v - level) + (1.0 - g) * s;
        self.level = level;
        e
    }

    /// Consumes `y[self.at..]`.
    fn run(&mut self, y: &[f64]) {
        let m = self.m;
        // The season index wraps by hand: a division per bucket would
        // cost more than the update.
        let mut i = self.at % m;
        for &v in y.iter().skip(self.at) {
            self.step(i, v);
            i += 1;
            if i == m {
                i = 0;
            }
        }
        self.at = self.at.max(y.len());
    }

    fn path(&self, y: &[f64], h: usize, out: &mut Vec<f64>) {
        let mut s = self.clone();
        s.run(y);
        let n = y.len();
        out.extend((1..=h).map(|k| s.level + s.trend * k as f64 + s.season[(n + k - 1) % s.m]));
    }
}

/// Weights of the persistence term at a few lead times (1, 2, 4, …, the
/// longest), linear in between: the deviation of the last buckets from a
/// model, times the weight at lead `k`, is added to its forecast.
#[derive(Clone, Debug)]
pub struct Persistence {
    leads: Vec<usize>,
    weights: Vec<f64>,
}

impl Persistence {
    /// Fits each anchor's weight by least squares over origins evenly
    /// spread in `lo..hi`: `dev(o)` is the deviation known at origin `o`,
    /// `resid(o, k)` the model's error at lead `k` from it.
    fn fit(
        lo: usize,
        hi: usize,
        max_lead: usize,
        dev: impl Fn(usize) -> f64,
        resid: impl Fn(usize, usize) -> f64,
    ) -> Persistence {
        let mut leads: Vec<usize> = std::iter::successors(Some(1usize), |k| Some(k * 2))
            .take_while(|&k| k < max_lead)
            .collect();
        leads.push(max_lead.max(1));
        // One set of origins (and deviations) for every anchor; an anchor
        // uses those whose lead still falls inside the data.
        let stride = (hi.saturating_sub(lo) / PERSISTENCE_ORIGINS).max(1);
        let origins: Vec<(usize, f64)> = (lo..hi).step_by(stride).map(|o| (o, dev(o))).collect();
        let weights = leads
            .iter()
            .map(|&k| {
                let (mut num, mut den) = (0.0, 0.0);
                for &(o, d) in origins.iter().take_while(|(o, _)| o + k <= hi) {
                    num += d * resid(o, k);
                    den += d * d;
                }
                if den > 0.0 {
                    (num / den).clamp(0.0, 1.0)
                } else {
                    0.0
                }
            })
            .collect();
        Persistence { leads, weights }
    }

    fn weight(&self, k: usize) -> f64 {
        match self.leads.iter().position(|&l| l >= k) {
            None => *self.weights.last().unwrap_or(&0.0),
            Some(0) => self.weights[0],
            Some(i) => {
                let (l0, l1) = (self.leads[i - 1] as f64, self.leads[i] as f64);
                let f = (k as f64 - l0) / (l1 - l0);
                self.weights[i - 1] * (1.0 - f) + self.weights[i] * f
            }
        }
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Fills `p` with the prefix sums of `v` (`p[0]` = 0).
fn prefix_sums(p: &mut Vec<f64>, v: impl Iterator<Item = f64>) {
    p.clear();
    p.push(0.0);
    let mut acc = 0.0;
    p.extend(v.map(|x| {
        acc += x;
        acc
    }));
}

thread_local! {
    /// Working vectors of the decomposition, kept per thread: a fit
    /// needs several series-long temporaries, and fresh ones cost a page
    /// fault per 4 KiB (glibc maps and unmaps blocks this size), which
    /// was half the fit's time.
    static SCRATCH: std::cell::RefCell<[Vec<f64>; 3]> = Default::default();
}

/// Mean of `v[a..b]` through its prefix sums.
fn window_mean(p: &[f64], a: usize, b: usize) -> f64 {
    if b <= a {
        0.0
    } else {
        (p[b] - p[a]) / (b - a) as f64
    }
}

/// Daily profile, weekly correction, level, persistence.
#[derive(Clone, Debug)]
pub struct Decomposition {
    /// Seasonal value per bucket of the week (or of the day, without a
    /// weekly correction).
    profile: Vec<f64>,
    persistence: Persistence,
}

impl Decomposition {
    fn fit(y: &[f64], cal: &Calendar, max_lead: usize) -> Option<Decomposition> {
        let (n, day) = (y.len(), cal.day);
        if day < 2 || n < 2 * day {
            return None;
        }
        // Trend: the moving mean over a day, extended linearly past its
        // ends; seasons are estimated on what it leaves (a trend must not
        // pass for a daily sawtooth).
        SCRATCH.with_borrow_mut(|[p, detrended, left]| {
            Self::fit_with(y, cal, max_lead, p, detrended, left)
        })
    }

    fn fit_with(
        y: &[f64],
        cal: &Calendar,
        max_lead: usize,
        p: &mut Vec<f64>,
        detrended: &mut Vec<f64>,
        left: &mut Vec<f64>,
    ) -> Option<Decomposition> {
        let (n, day, week) = (y.len(), cal.day, cal.week);
        prefix_sums(p, y.iter().copied());
        let half = day / 2;
        let (lo, hi) = (half, n - (day - half));
        let inv = 1.0 / day as f64;
        let ma = |t: usize| (p[t - half + day] - p[t - half]) * inv;
        let slope_lo = (ma((lo + day).min(hi)) - ma(lo)) / ((lo + day).min(hi) - lo).max(1) as f64;
        let slope_hi = (ma(hi) - ma(hi.saturating_sub(day).max(lo)))
            / (hi - hi.saturating_sub(day).max(lo)).max(1) as f64;
        detrended.clear();
        detrended.extend(y.iter().enumerate().map(|(t, v)| {
            v - if t < lo {
                ma(lo) - slope_lo * (lo - t) as f64
            } else if t > hi {
                ma(hi) + slope_hi * (t - hi) as f64
            } else {
                ma(t)
            }
        }));
        let mean = detrended.iter().sum::<f64>() / n as f64;
        // Per bucket of the day, the mean over days without the highest
        // and lowest (from five days on): one burst, or the ramp the
        // moving mean makes of a level shift, does not become a season.
        let (mut sum, mut lo, mut hi) = (
            vec![0.0; day],
            vec![f64::INFINITY; day],
            vec![f64::NEG_INFINITY; day],
        );
        for chunk in detrended.chunks(day) {
            for (b, &v) in chunk.iter().enumerate() {
                sum[b] += v;
                lo[b] = lo[b].min(v);
                hi[b] = hi[b].max(v);
            }
        }
        let days = n / day;
        let daily: Vec<f64> = (0..day)
            .map(|b| {
                // Buckets of the day before n % day have one more sample.
                let count = days + usize::from(b < n % day);
                if count >= 5 {
                    (sum[b] - lo[b] - hi[b]) / (count - 2) as f64 - mean
                } else {
                    sum[b] / count as f64 - mean
                }
            })
            .collect();
        let profile = if n >= week + day {
            // What the daily profile leaves, per bucket of the week,
            // smoothed over an hour around the clock (two samples per
            // bucket at most in two weeks: raw means are noise).
            left.clear();
            left.resize(week, 0.0);
            for chunk in detrended.chunks(week) {
                for (l, (v, d)) in left.iter_mut().zip(chunk.iter().zip(daily.iter().cycle())) {
                    *l += v - mean - d;
                }
            }
            let weeks = n / week;
            for (b, l) in left.iter_mut().enumerate() {
                // Buckets of the week before n % week have one more sample.
                *l /= (weeks + usize::from(b < n % week)) as f64;
            }
            let half = (day / 48).max(1);
            // Wrapped around the week's ends: p[b] starts `half` before b.
            prefix_sums(
                p,
                left[week - half..]
                    .iter()
                    .chain(left.iter())
                    .chain(&left[..=half])
                    .copied(),
            );
            (0..week)
                .zip(daily.iter().cycle())
                .map(|(b, d)| d + window_mean(p, b, b + 2 * half + 1))
                .collect()
        } else {
            daily
        };
        let m = profile.len();
        let d = p;
        prefix_sums(d, y.iter().zip(profile.iter().cycle()).map(|(v, p)| v - p));
        let (level_w, recent) = (day, cal.recent());
        let level = |o: usize| window_mean(d, o.saturating_sub(level_w), o);
        let persistence = Persistence::fit(
            day,
            n,
            max_lead,
            |o| window_mean(d, o - recent, o) - level(o),
            |o, k| y[o + k - 1] - profile[(o + k - 1) % m] - level(o),
        );
        Some(Decomposition {
            profile,
            persistence,
        })
    }

    fn path(&self, y: &[f64], h: usize, cal: &Calendar, out: &mut Vec<f64>) {
        let (o, m) = (y.len(), self.profile.len());
        let deseason = |a: usize| {
            let a = a.min(o);
            let mut b = (o - a) % m;
            let mut sum = 0.0;
            for v in &y[o - a..o] {
                sum += v - self.profile[b];
                b += 1;
                if b == m {
                    b = 0;
                }
            }
            sum / a.max(1) as f64
        };
        let level = deseason(cal.day);
        let dev = deseason(cal.recent()) - level;
        out.extend(
            (1..=h)
                .map(|k| level + self.profile[(o + k - 1) % m] + self.persistence.weight(k) * dev),
        );
    }
}

/// Linear regression on Fourier terms and seasonal lags.
#[derive(Clone, Debug)]
pub struct Regression {
    weekly: bool,
    intercept: f64,
    coef: Vec<f64>,
    persistence: Persistence,
}

/// Most features a regression row has (weekly terms included).
const MAX_FEATURES: usize = 2 * DAY_HARMONICS + 2 + 2 * WEEK_HARMONICS + 1;

impl Regression {
    fn features(&self) -> usize {
        if self.weekly {
            MAX_FEATURES
        } else {
            2 * DAY_HARMONICS + 2
        }
    }

    /// The features of bucket `t` seen from origin `o` (`y[..o]` known):
    /// lags are the latest same-time buckets before `o`. Past
    /// [`Regression::features`] the row is zeros.
    fn row(&self, y: &[f64], t: usize, o: usize, cal: &Calendar) -> [f64; MAX_FEATURES] {
        let day = cal.day;
        let mut row = [0.0; MAX_FEATURES];
        let d = 2 * DAY_HARMONICS;
        let b = t % day;
        row[..d].copy_from_slice(&cal.day_terms[b * d..(b + 1) * d]);
        // Days back to the latest same-time bucket that is known.
        let j = (t + 1 - o.min(t + 1)).div_ceil(day).max(1);
        let lag = |j: usize| t.checked_sub(j * day).map(|i| y[i]);
        let last = lag(j).unwrap_or(0.0);
        let (mut sum, mut count) = (0.0, 0usize);
        for v in (j..j + 7).map_while(lag) {
            sum += v;
            count += 1;
        }
        row[d] = last;
        row[d + 1] = if count > 0 { sum / count as f64 } else { last };
        if self.weekly {
            let w2 = 2 * WEEK_HARMONICS;
            let w = t % cal.week;
            row[d + 2..d + 2 + w2].copy_from_slice(&cal.week_terms[w * w2..(w + 1) * w2]);
            let weeks = (t + 1 - o.min(t + 1)).div_ceil(cal.week).max(1);
            row[d + 2 + w2] = t.checked_sub(weeks * cal.week).map_or(last, |i| y[i]);
        }
        row
    }

    /// The model's value for bucket `t` seen from origin `o`.
    fn estimate(&self, y: &[f64], t: usize, o: usize, cal: &Calendar) -> f64 {
        let row = self.row(y, t, o, cal);
        self.intercept + row.iter().zip(&self.coef).map(|(a, b)| a * b).sum::<f64>()
    }

    /// Mean error over the recent buckets before `o` (each seen from
    /// itself): what the persistence term carries forward.
    fn deviation(&self, y: &[f64], o: usize, cal: &Calendar) -> f64 {
        let recent = cal.recent().min(o);
        (o - recent..o)
            .map(|t| y[t] - self.estimate(y, t, t, cal))
            .sum::<f64>()
            / recent.max(1) as f64
    }

    fn fit(y: &[f64], cal: &Calendar, max_lead: usize) -> Option<Regression> {
        let (n, day) = (y.len(), cal.day);
        let weekly = n >= cal.week + 2 * day;
        let first = if weekly { cal.week } else { day };
        if day < 2 || n < 2 * day || n < first + 2 * day {
            return None;
        }
        let mut model = Regression {
            weekly,
            intercept: 0.0,
            coef: Vec::new(),
            persistence: Persistence {
                leads: vec![1],
                weights: vec![0.0],
            },
        };
        let p = model.features();
        // A stride sharing a factor with the day would sample a few phases
        // of it only: a Fourier column would alias to zero and the least
        // squares blow up. Coprime, every phase comes round.
        let mut stride = ((n - first) / REGRESSION_ROWS).max(1);
        while gcd(stride, day) != 1 {
            stride += 1;
        }
        let rows: Vec<usize> = (first..n).step_by(stride).collect();
        if rows.len() <= 2 * p {
            return None;
        }
        let mut x = Array2::<f64>::zeros((rows.len(), p));
        let mut target = Array1::<f64>::zeros(rows.len());
        for (i, &t) in rows.iter().enumerate() {
            let row = model.row(y, t, t, cal);
            x.row_mut(i).assign(&ndarray::ArrayView1::from(&row[..p]));
            target[i] = y[t];
        }
        let fitted = LinearRegression::new().fit(&Dataset::new(x, target)).ok()?;
        model.intercept = fitted.intercept();
        model.coef = fitted.params().to_vec();
        if !model.intercept.is_finite() || model.coef.iter().any(|c| !c.is_finite()) {
            return None;
        }
        // Seen from origin o, a bucket up to a day ahead has the same lags
        // as seen from itself, so its error is that bucket's own residual
        // (computed only where the persistence fit reads one).
        let recent = cal.recent();
        model.persistence = Persistence::fit(
            first + recent,
            n,
            max_lead.min(day),
            |o| model.deviation(y, o, cal),
            |o, k| y[o + k - 1] - model.estimate(y, o + k - 1, o + k - 1, cal),
        );
        Some(model)
    }

    fn path(&self, y: &[f64], h: usize, cal: &Calendar, out: &mut Vec<f64>) {
        let o = y.len();
        let dev = self.deviation(y, o, cal);
        out.extend(
            (1..=h).map(|k| self.estimate(y, o + k - 1, o, cal) + self.persistence.weight(k) * dev),
        );
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(crate) fn sinusoid(n: usize, m: usize) -> Vec<f64> {
        (0..n)
            .map(|t| 100.0 + 50.0 * (2.0 * std::f64::consts::PI * t as f64 / m as f64).sin())
            .collect()
    }

    fn close(got: &[f64], want: &[f64], tol: f64, what: &str) {
        assert_eq!(got.len(), want.len());
        for (k, (a, b)) in got.iter().zip(want).enumerate() {
            assert!((a - b).abs() <= tol, "{what}, lead {}: {a} vs {b}", k + 1);
        }
    }

    const FITTED: [Model; 4] = [
        Model::SeasonalNaive,
        Model::HoltWinters,
        Model::Regression,
        Model::Decomposition,
    ];

    #[test]
    fn a_pure_season_is_continued() {
        let cal = Calendar::new(24);
        // Three weeks: the weekly models fit too.
        let y = sinusoid(24 * 21, 24);
        let want = &sinusoid(24 * 23, 24)[24 * 21..];
        for (model, tol) in [
            (Model::SeasonalNaive, 1e-9),
            (Model::WeeklyNaive, 1e-9),
            (Model::HoltWinters, 1.0),
            (Model::Regression, 1e-6),
            (Model::Decomposition, 1e-6),
            (Model::Combination, 1.0),
        ] {
            let f = model.forecast(&y, &cal, 48).expect("three weeks fit");
            close(&f, want, tol, model.name());
        }
    }

    #[test]
    fn a_constant_is_continued() {
        let cal = Calendar::new(24);
        let y = vec![7.0; 24 * 10];
        for model in FITTED {
            let f = model.forecast(&y, &cal, 10).expect("ten days fit");
            close(&f, &[7.0; 10], 1e-6, model.name());
        }
    }

    #[test]
    fn a_linear_trend() {
        let cal = Calendar::new(24);
        let slope = 0.5;
        let y: Vec<f64> = (0..24 * 10).map(|t| 10.0 + slope * t as f64).collect();
        let next = |k: usize| 10.0 + slope * (24 * 10 + k - 1) as f64;
        let at = |m: Model, k: usize| m.forecast(&y, &cal, k).unwrap()[k - 1];
        // HW's trend and the regression's one-day lag (intercept = a day's
        // rise) follow it.
        for k in [1, 12, 24] {
            assert!((at(Model::HoltWinters, k) - next(k)).abs() < 1.0);
            assert!((at(Model::Regression, k) - next(k)).abs() < 1e-6);
        }
        // The naive model repeats yesterday: a day's rise short.
        assert!((at(Model::SeasonalNaive, 1) - (next(1) - 24.0 * slope)).abs() < 1e-9);
        // The decomposition has no trend: it carries the last bucket (full
        // persistence) and so lags by the lead time.
        for k in [1, 12] {
            let lag = next(k) - at(Model::Decomposition, k);
            assert!((lag - slope * k as f64).abs() < 1e-6, "lead {k}: lag {lag}");
        }
    }

    #[test]
    fn a_step_is_followed() {
        let cal = Calendar::new(24);
        let mut y = vec![10.0; 24 * 4];
        y.extend(vec![50.0; 24 * 3]);
        for model in [Model::HoltWinters, Model::Decomposition, Model::Regression] {
            let f = model.forecast(&y, &cal, 24).unwrap();
            close(&f, &[50.0; 24], 5.0, model.name());
        }
        // Never negative, even after a fall to zero.
        let mut fall = sinusoid(24 * 8, 24);
        fall.extend(vec![0.0; 30]);
        for model in Model::ALL {
            if let Some(f) = model.forecast(&fall, &cal, 24) {
                assert!(f.iter().all(|v| *v >= 0.0), "{}", model.name());
            }
        }
    }

    #[test]
    fn too_short_for_a_model_is_none() {
        let cal = Calendar::new(24);
        let y = sinusoid(30, 24);
        assert!(Model::SeasonalNaive.forecast(&y, &cal, 5).is_some());
        for m in [
            Model::WeeklyNaive,
            Model::HoltWinters,
            Model::Regression,
            Model::Decomposition,
            Model::Combination,
        ] {
            assert!(m.forecast(&y, &cal, 5).is_none(), "{}", m.name());
        }
    }

    #[test]
    fn regression_rows_see_every_phase_of_the_day() {
        // 3936 half-hourly buckets: (3936 - a week) / 600 rows = a stride of
        // 6, which would sample 8 of the day's 48 phases and zero the 4th
        // harmonic's sine column (the fit blew up to 1e31 on taylor).
        let cal = Calendar::new(48);
        let y: Vec<f64> = (0..3936)
            .map(|t| {
                let a = std::f64::consts::TAU * t as f64 / 48.0;
                30_000.0 + 5_000.0 * a.sin() + 800.0 * (4.0 * a).cos() + (t % 7) as f64 * 10.0
            })
            .collect();
        let f = Model::Regression.forecast(&y, &cal, 48).expect("fits");
        for (k, v) in f.iter().enumerate() {
            assert!((20_000.0..40_000.0).contains(v), "lead {}: {v}", k + 1);
        }
    }

    #[test]
    fn persistence_weights_interpolate() {
        let p = Persistence {
            leads: vec![1, 2, 4, 8],
            weights: vec![1.0, 0.8, 0.4, 0.0],
        };
        assert_eq!(p.weight(1), 1.0);
        assert!((p.weight(3) - 0.6).abs() < 1e-12);
        assert!((p.weight(6) - 0.2).abs() < 1e-12);
        assert_eq!(p.weight(100), 0.0);
    }
}
