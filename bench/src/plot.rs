//! Line charts as standalone SVG, for the Markdown report. A chart has a few series over
//! a shared x axis, with a linear y axis from zero.

use std::fmt::Write;

pub struct Series<'a> {
    pub name: &'a str,
    pub color: &'a str,
    pub points: Vec<(f64, f64)>,
}

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 320.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;

pub fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    let points = series.iter().flat_map(|s| s.points.iter());
    let x_max = points.clone().map(|(x, _)| *x).fold(0.0, f64::max);
    let y_max = points.map(|(_, y)| *y).fold(0.0, f64::max);
    let (x_step, x_top) = nice_axis(x_max);
    let (y_step, y_top) = nice_axis(y_max);
    let plot_width = WIDTH - LEFT - RIGHT;
    let plot_height = HEIGHT - TOP - BOTTOM;
    let x_at = |x: f64| LEFT + x / x_top * plot_width;
    let y_at = |y: f64| TOP + plot_height - y / y_top * plot_height;

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/><text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    for tick in ticks(x_step, x_top) {
        let x = x_at(tick);
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#e5e5e5"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            TOP + plot_height,
            TOP + plot_height + 16.0,
            label(tick)
        );
    }
    for tick in ticks(y_step, y_top) {
        let y = y_at(tick);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e5e5e5"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + plot_width,
            LEFT - 6.0,
            y + 4.0,
            label(tick)
        );
    }
    let _ = writeln!(
        svg,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_width}" height="{plot_height}" fill="none" stroke="#888"/><text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text><text transform="translate(16 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"##,
        LEFT + plot_width / 2.0,
        HEIGHT - 10.0,
        escape(x_label),
        TOP + plot_height / 2.0,
        escape(y_label)
    );
    for (index, one) in series.iter().enumerate() {
        let path: Vec<String> = one
            .points
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", x_at(*x), y_at(*y)))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{}" stroke-width="1.8" points="{}"/>"#,
            one.color,
            path.join(" ")
        );
        let legend_y = TOP + 14.0 + index as f64 * 16.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{:.1}" y1="{legend_y:.1}" x2="{:.1}" y2="{legend_y:.1}" stroke="{}" stroke-width="3"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            LEFT + 10.0,
            LEFT + 30.0,
            one.color,
            LEFT + 36.0,
            legend_y + 4.0,
            escape(one.name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// A round step (1, 2 or 5 times a power of ten) giving about five ticks up to at
/// least `max`, and the axis top.
fn nice_axis(max: f64) -> (f64, f64) {
    if max <= 0.0 || !max.is_finite() {
        return (1.0, 5.0);
    }
    let rough = max / 5.0;
    let magnitude = 10f64.powf(rough.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|factor| factor * magnitude)
        .find(|step| *step >= rough)
        .unwrap_or(10.0 * magnitude);
    (step, (max / step).ceil() * step)
}

fn ticks(step: f64, top: f64) -> impl Iterator<Item = f64> {
    let count = (top / step).round() as usize;
    (0..=count).map(move |i| i as f64 * step)
}

fn label(value: f64) -> String {
    if value >= 1_000_000.0 {
        format!("{}M", value / 1_000_000.0)
    } else if value >= 10_000.0 {
        format!("{}k", value / 1_000.0)
    } else if value.fract() == 0.0 {
        format!("{value}")
    } else {
        format!("{value:.2}")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_get_round_steps_that_cover_the_data() {
        assert_eq!(nice_axis(9.3), (2.0, 10.0));
        assert_eq!(nice_axis(1234.0), (500.0, 1500.0));
        assert_eq!(nice_axis(0.0), (1.0, 5.0));
        let (step, top) = nice_axis(0.07);
        assert!(top >= 0.07 && step <= 0.02, "{step} {top}");
    }

    #[test]
    fn a_chart_draws_each_series_and_its_legend() {
        let svg = line_chart(
            "POST /posts latency",
            "seconds",
            "ms",
            &[
                Series {
                    name: "p50",
                    color: "#1f77b4",
                    points: vec![(0.0, 1.0), (1.0, 2.0)],
                },
                Series {
                    name: "p99 <tail>",
                    color: "#d62728",
                    points: vec![(0.0, 5.0), (1.0, 9.0)],
                },
            ],
        );
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("p99 &lt;tail&gt;"));
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
    }
}
