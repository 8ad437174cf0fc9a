//! `recohost eval --plot FILE.svg`: NDCG@k, recall@k and precision@k against the list length
//! k, one line per plugin, as a standalone SVG.
//!
//! Written out directly rather than with a plotting crate: three line panels need axes, ticks,
//! labels and a legend, and SVG text needs no font files (plotters' text layout wants a font
//! backend, which pulls in fontconfig or a bundled font).

use std::fmt::Write;
use std::path::Path;

use super::PluginScore;
use super::metrics::UserMetrics;

const PANEL_WIDTH: f64 = 380.0;
const PANEL_HEIGHT: f64 = 300.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 14.0;
const TOP: f64 = 34.0;
const BOTTOM: f64 = 44.0;
const LEGEND_HEIGHT: f64 = 28.0;
const COLORS: [&str; 8] = [
    "#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#db2777", "#0891b2", "#4b5563",
];

type Metric = (&'static str, fn(&UserMetrics) -> f64);

const PANELS: [Metric; 3] = [
    ("NDCG@k", |m| m.ndcg),
    ("Recall@k", |m| m.recall),
    ("Precision@k", |m| m.precision),
];

/// Round tick step (1, 2 or 5 times a power of ten) for about five ticks up to `max`.
fn tick_step(max: f64) -> f64 {
    let raw = (max / 5.0).max(1e-9);
    let power = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|step| *step >= raw)
        .unwrap_or(raw)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The SVG document for `scores` (each with its `curve` over k = 1..=len). `title` goes on
/// top, e.g. the dataset and split.
pub fn metric_vs_k_svg(scores: &[PluginScore], title: &str) -> String {
    let k = scores
        .iter()
        .map(|s| s.curve.len())
        .max()
        .unwrap_or(1)
        .max(2);
    let width = PANEL_WIDTH * PANELS.len() as f64;
    let height = PANEL_HEIGHT + LEGEND_HEIGHT + 24.0;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="18" text-anchor="middle" font-size="14" font-weight="bold">{}</text>"#,
        width / 2.0,
        escape(title)
    );
    for (panel, (name, value)) in PANELS.iter().enumerate() {
        let x0 = panel as f64 * PANEL_WIDTH + LEFT;
        let x1 = (panel + 1) as f64 * PANEL_WIDTH - RIGHT;
        let y0 = 24.0 + TOP;
        let y1 = 24.0 + PANEL_HEIGHT - BOTTOM;
        let max = scores
            .iter()
            .flat_map(|s| s.curve.iter().map(value))
            .fold(0.0, f64::max);
        let step = tick_step(max);
        let top = (max / step).ceil().max(1.0) * step;
        let x = |length: usize| x0 + (length - 1) as f64 / (k - 1) as f64 * (x1 - x0);
        let y = |v: f64| y1 - v / top * (y1 - y0);
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle" font-size="13" font-weight="bold">{name}</text>"#,
            (x0 + x1) / 2.0,
            y0 - 10.0
        );
        let mut tick = 0.0;
        while tick <= top + step * 1e-9 {
            let _ = writeln!(
                svg,
                r##"<line x1="{x0}" x2="{x1}" y1="{0}" y2="{0}" stroke="#e5e7eb"/><text x="{1}" y="{2}" text-anchor="end" font-size="11" fill="#4b5563">{3}</text>"##,
                y(tick),
                x0 - 6.0,
                y(tick) + 4.0,
                format!("{tick:.2}")
            );
            tick += step;
        }
        let every = k.div_ceil(10);
        for length in (1..=k).filter(|l| *l == 1 || l % every == 0) {
            let _ = writeln!(
                svg,
                r##"<text x="{}" y="{}" text-anchor="middle" font-size="11" fill="#4b5563">{length}</text>"##,
                x(length),
                y1 + 16.0
            );
        }
        let _ = writeln!(
            svg,
            r##"<line x1="{x0}" x2="{x1}" y1="{y1}" y2="{y1}" stroke="#9ca3af"/><line x1="{x0}" x2="{x0}" y1="{y0}" y2="{y1}" stroke="#9ca3af"/>"##
        );
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle" font-size="12">k (list length)</text>"#,
            (x0 + x1) / 2.0,
            y1 + 34.0
        );
        for (index, score) in scores.iter().enumerate() {
            let color = COLORS[index % COLORS.len()];
            let points: Vec<String> = score
                .curve
                .iter()
                .enumerate()
                .map(|(i, m)| format!("{:.1},{:.1}", x(i + 1), y(value(m))))
                .collect();
            let _ = writeln!(
                svg,
                r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"><title>{} {name}</title></polyline>"#,
                points.join(" "),
                escape(&score.plugin)
            );
        }
    }
    // The legend, shared by the panels.
    let legend_y = 24.0 + PANEL_HEIGHT + 8.0;
    for (index, score) in scores.iter().enumerate() {
        let color = COLORS[index % COLORS.len()];
        let lx = LEFT + index as f64 * 150.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{lx}" x2="{}" y1="{legend_y}" y2="{legend_y}" stroke="{color}" stroke-width="3"/><text x="{}" y="{}" font-size="12">{}</text>"#,
            lx + 22.0,
            lx + 28.0,
            legend_y + 4.0,
            escape(&score.plugin)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// Writes [`metric_vs_k_svg`] to `path`.
pub fn write_metric_vs_k(scores: &[PluginScore], title: &str, path: &Path) -> anyhow::Result<()> {
    std::fs::write(path, metric_vs_k_svg(scores, title))
        .map_err(|e| anyhow::anyhow!("cannot write the plot {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn score(name: &str, ndcg: &[f64]) -> PluginScore {
        let curve: Vec<UserMetrics> = ndcg
            .iter()
            .map(|&n| UserMetrics {
                ndcg: n,
                recall: n / 2.0,
                precision: n / 3.0,
                map: n / 4.0,
            })
            .collect();
        PluginScore {
            plugin: name.into(),
            metrics: *curve.last().unwrap_or(&UserMetrics::default()),
            train_seconds: 0.1,
            users: 10,
            coverage: 0.5,
            curve,
        }
    }

    #[test]
    fn one_line_per_plugin_and_panel_with_a_legend_and_escaped_names() {
        let svg = metric_vs_k_svg(
            &[
                score("a<b", &[0.1, 0.2, 0.3]),
                score("hybrid", &[0.3, 0.35, 0.4]),
            ],
            "ML-100k, random split",
        );
        assert!(svg.starts_with("<svg"), "{svg}");
        assert_eq!(svg.matches("<polyline").count(), 6);
        assert!(svg.contains("a&lt;b") && !svg.contains("a<b"));
        for label in [
            "NDCG@k",
            "Recall@k",
            "Precision@k",
            "k (list length)",
            "ML-100k, random split",
        ] {
            assert!(svg.contains(label), "{label}");
        }
        // Every polyline has a point per list length.
        let first = svg.split("points=\"").nth(1).unwrap();
        assert_eq!(first.split('"').next().unwrap().split(' ').count(), 3);
    }

    #[test]
    fn ticks_are_round() {
        assert_eq!(tick_step(0.44), 0.1);
        assert_eq!(tick_step(0.9), 0.2);
        assert_eq!(tick_step(0.2), 0.05);
    }
}
