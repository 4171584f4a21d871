//! What a simulation reports: the side-by-side table of the strategies'
//! totals, and SVG plots of shards, load and offered traffic over time.

use std::{fmt::Write as _, path::Path};

use crate::{Report, SimError};

impl Report {
    /// The side-by-side table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let sc = &self.scenario;
        let _ = writeln!(
            s,
            "{} devices, {} topics, {} sites; {} days compared after {} of warm-up; capacity {} msg/s per shard (headroom {}), cycle {} min, lead {} min; static uses {} shards",
            sc.fleet.devices,
            sc.fleet.topics,
            sc.fleet.sites,
            sc.fleet.days - sc.warmup_days,
            sc.warmup_days,
            sc.resources.shard_capacity,
            sc.resources.headroom,
            sc.cycle,
            sc.lead,
            self.static_shards
        );
        let _ = writeln!(
            s,
            "{:<11} {:>10} {:>11} {:>14} {:>16} {:>10} {:>8} {:>10}",
            "strategy",
            "overload",
            "shard-h",
            "copies",
            "wasted",
            "migrations",
            "replans",
            "plan s"
        );
        for t in &self.totals {
            let _ = writeln!(
                s,
                "{:<11} {:>10} {:>11.1} {:>14.0} {:>16.0} {:>10} {:>8} {:>10.2}",
                t.strategy,
                t.overload_minutes,
                t.shard_hours,
                t.copies,
                t.wasted,
                t.migrations,
                t.replans,
                t.planning_s
            );
        }
        if sc.fleet.premium_sites > 0.0 {
            let _ = writeln!(
                s,
                "overload by class (shard-minutes): {}",
                self.totals
                    .iter()
                    .map(|t| format!(
                        "{} premium {} / standard {}",
                        t.strategy,
                        t.premium_overload_minutes,
                        t.overload_minutes - t.premium_overload_minutes
                    ))
                    .collect::<Vec<_>>()
                    .join("; ")
            );
        }
        if !sc.policy.is_empty() {
            let _ = writeln!(s, "policy: {}", sc.policy.summary());
        }
        let (r, p) = (&self.totals[1], &self.totals[2]);
        if r.overload_minutes > 0 {
            let _ = writeln!(
                s,
                "predictive vs reactive: {:.0}% fewer overload-minutes, {:+.1}% shard-hours",
                100.0 * (1.0 - p.overload_minutes as f64 / r.overload_minutes as f64),
                100.0 * (p.shard_hours / r.shard_hours - 1.0)
            );
        }
        let _ = write!(s, "simulated in {:.1} s", self.elapsed_s);
        s
    }

    /// Writes `shards.svg` and `load.svg` (per strategy, over time) and
    /// `offered.svg` into `dir`.
    pub fn plot(&self, dir: &Path) -> Result<(), SimError> {
        use plotters::prelude::*;
        std::fs::create_dir_all(dir).map_err(|e| SimError::Plot {
            path: dir.display().to_string(),
            reason: e.to_string(),
        })?;
        let colours = [
            RGBColor(120, 120, 120),
            RGBColor(200, 60, 40),
            RGBColor(30, 90, 200),
        ];
        let hours: Vec<f64> = (0..self.offered.len()).map(|m| m as f64 / 60.0).collect();
        let x_max = hours.last().copied().unwrap_or(1.0).max(1.0);
        let draw = |file: &str, title: &str, series: Vec<(&str, Vec<f64>, RGBColor)>| {
            let path = dir.join(file);
            let err = |e: String| SimError::Plot {
                path: path.display().to_string(),
                reason: e,
            };
            let y_max = series
                .iter()
                .flat_map(|s| s.1.iter().copied())
                .fold(0.0f64, f64::max)
                .max(1e-9)
                * 1.1;
            let root = SVGBackend::new(&path, (1100, 420)).into_drawing_area();
            root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
            let mut chart = ChartBuilder::on(&root)
                .caption(title, ("sans-serif", 18))
                .margin(10)
                .x_label_area_size(36)
                .y_label_area_size(56)
                .build_cartesian_2d(0.0..x_max, 0.0..y_max)
                .map_err(|e| err(e.to_string()))?;
            chart
                .configure_mesh()
                .x_desc("hours since the comparison started")
                .draw()
                .map_err(|e| err(e.to_string()))?;
            for (name, ys, colour) in series {
                chart
                    .draw_series(LineSeries::new(
                        hours.iter().copied().zip(ys.iter().copied()),
                        colour.stroke_width(1),
                    ))
                    .map_err(|e| err(e.to_string()))?
                    .label(name)
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 16, y)], colour.stroke_width(2))
                    });
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(|e| err(e.to_string()))?;
            root.present().map_err(|e| err(e.to_string()))
        };
        let names = ["static", "reactive", "predictive"];
        draw(
            "shards.svg",
            "active shards",
            (0..3)
                .map(|i| {
                    let ys = self.traces[i].shards.iter().map(|&v| v as f64).collect();
                    (names[i], ys, colours[i])
                })
                .collect(),
        )?;
        draw(
            "load.svg",
            "highest shard load / capacity (above 1 = overload)",
            (1..3)
                .map(|i| (names[i], self.traces[i].max_utilisation.clone(), colours[i]))
                .collect(),
        )?;
        draw(
            "offered.svg",
            "offered load, messages/s (all topics)",
            vec![("offered", self.offered.clone(), RGBColor(0, 0, 0))],
        )?;
        Ok(())
    }
}
