//! Forecast accuracy: MASE against the seasonal naive model, sMAPE, and
//! the small statistics the model choice and the bands use.

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

pub(crate) fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

pub(crate) fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[((s.len() - 1) as f64 * q).round() as usize]
}
