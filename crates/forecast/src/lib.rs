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

use std::time::Duration;

mod csv;
mod metrics;
mod models;
mod plot;
mod select;

pub use csv::*;
pub use metrics::*;
pub use models::{Calendar, Fitted, Model, average, seasonal_naive};
pub use plot::plot_series;
pub use select::*;

use shardcast_records::RecordError;

#[derive(Debug, thiserror::Error)]
pub enum ForecastError {
    #[error(transparent)]
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
