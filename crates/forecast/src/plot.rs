//! SVG plot of one series: actual against predicted, with the band.

use crate::*;

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
