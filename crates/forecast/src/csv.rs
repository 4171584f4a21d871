//! The forecaster's files: history in (`timestamp,topic,group,count`),
//! forecasts out (`topic,group,horizon,timestamp,predicted,lower,upper`,
//! read back by the planner), device status in; horizons on the bucket grid.

use std::{collections::BTreeMap, io::Write};

use shardcast_records::{
    Columns, echo,
    history::{Row, parse_csv_lines},
    records,
};

use crate::*;

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
    series_from_rows(parse_csv_lines(text)?, step)
}

/// [`series_from_csv`] on rows already read (with their line numbers).
pub fn series_from_rows(rows: Vec<(usize, Row)>, step: u64) -> Result<Vec<Series>> {
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

/// The bucket length of a history CSV, read off its timestamps: the
/// greatest common divisor of the gaps between them (a history with one
/// timestamp is taken as one-minute buckets). History exported by the
/// daemon is on its bucket grid, so this is the daemon's bucket.
pub fn infer_bucket(rows: &[(usize, Row)]) -> u64 {
    let mut ts: Vec<u64> = rows.iter().map(|(_, r)| r.ts).collect();
    ts.sort_unstable();
    ts.dedup();
    let gcd = |mut a: u64, mut b: u64| {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    };
    let step = ts.windows(2).fold(0, |g, w| gcd(g, w[1] - w[0]));
    if step == 0 { 60 } else { step }
}

/// The default horizons (5m, 1h, 24h) that `step` allows: those that are
/// whole numbers of buckets, or one bucket and a day's worth when none is.
pub fn default_horizons(step: u64) -> Vec<(String, u64)> {
    let fits: Vec<(String, u64)> = [("5m", 300), ("1h", 3_600), ("24h", 86_400)]
        .into_iter()
        .filter(|(_, secs)| secs % step == 0)
        .map(|(h, secs)| (h.to_string(), secs))
        .collect();
    if !fits.is_empty() {
        return fits;
    }
    let day = (86_400 / step).max(1) * step;
    let mut out = vec![(format!("{step}s"), step)];
    if day != step && day <= MAX_HORIZON_SECS {
        out.push((format!("{day}s"), day));
    }
    out
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

/// Writes `topic,group,horizon,timestamp,predicted,lower,upper`.
pub fn write_csv(m: &LoadMatrix, out: impl Write) -> std::io::Result<()> {
    let mut w = shardcast_records::record::writer(out);
    let io = shardcast_records::record::io_error;
    w.write_record([
        "topic",
        "group",
        "horizon",
        "timestamp",
        "predicted",
        "lower",
        "upper",
    ])
    .map_err(io)?;
    for (i, (topic, group)) in m.series.iter().enumerate() {
        for (j, (h, _)) in m.horizons.iter().enumerate() {
            w.write_record([
                topic.as_str(),
                group,
                h,
                &m.targets[j].to_string(),
                &format!("{:.3}", m.values[[i, j, 0]]),
                &format!("{:.3}", m.values[[i, j, 1]]),
                &format!("{:.3}", m.values[[i, j, 2]]),
            ])
            .map_err(io)?;
        }
    }
    w.flush()
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
            f[k].trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| bad(format!("{name} {} is not a count >= 0", echo(&f[k]))))
        };
        let (p, lo, hi) = (num(4, "predicted")?, num(5, "lower")?, num(6, "upper")?);
        if lo > p || p > hi {
            return Err(bad(format!("band {lo}..{hi} does not hold predicted {p}")));
        }
        if f[2].trim() != horizon {
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
            f[k].trim()
                .parse::<u64>()
                .map_err(|_| bad(format!("{name} {} is not a count", echo(&f[k]))))
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
            return Err(bad(format!("group {} appears twice", echo(&f[0]))));
        }
    }
    Ok(out)
}
