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
use super::prequential::{PrequentialScore, WindowMetrics};

const PANEL_WIDTH: f64 = 380.0;
const PANEL_HEIGHT: f64 = 300.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 14.0;
const TOP: f64 = 34.0;
const BOTTOM: f64 = 44.0;
const LEGEND_HEIGHT: f64 = 24.0;
/// Width of one legend entry (line and name).
const LEGEND_ENTRY: f64 = 175.0;
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

/// One line of a panel.
struct Series {
    name: String,
    color: &'static str,
    dashed: bool,
    /// (x, y); a `None` y breaks the line.
    points: Vec<(f64, Option<f64>)>,
}

/// One chart: `series` over an x axis labelled `x_label`, ticked at `x_ticks`.
struct Panel {
    title: String,
    x_label: &'static str,
    x_ticks: Vec<(f64, String)>,
    series: Vec<Series>,
}

/// Draws `panels` side by side under `title`, with one legend for all.
fn document(title: &str, panels: &[Panel], legend: &[(String, &'static str, bool)]) -> String {
    let width = PANEL_WIDTH * panels.len().max(1) as f64;
    let per_row = (((width - LEFT) / LEGEND_ENTRY) as usize).max(1);
    let legend_rows = legend.len().div_ceil(per_row).max(1);
    let height = 24.0 + PANEL_HEIGHT + LEGEND_HEIGHT * legend_rows as f64;
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
    for (index, panel) in panels.iter().enumerate() {
        draw_panel(&mut svg, panel, index as f64 * PANEL_WIDTH);
    }
    for (index, (name, color, dashed)) in legend.iter().enumerate() {
        let lx = LEFT + (index % per_row) as f64 * LEGEND_ENTRY;
        let ly = 24.0 + PANEL_HEIGHT + 8.0 + (index / per_row) as f64 * LEGEND_HEIGHT;
        let dash = if *dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let _ = writeln!(
            svg,
            r#"<line x1="{lx}" x2="{}" y1="{ly}" y2="{ly}" stroke="{color}" stroke-width="3"{dash}/><text x="{}" y="{}" font-size="12">{}</text>"#,
            lx + 22.0,
            lx + 28.0,
            ly + 4.0,
            escape(name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn draw_panel(svg: &mut String, panel: &Panel, left: f64) {
    let x0 = left + LEFT;
    let x1 = left + PANEL_WIDTH - RIGHT;
    let y0 = 24.0 + TOP;
    let y1 = 24.0 + PANEL_HEIGHT - BOTTOM;
    let values = || panel.series.iter().flat_map(|s| s.points.iter());
    let (min_x, max_x) = values().fold((f64::MAX, f64::MIN), |(lo, hi), p| {
        (lo.min(p.0), hi.max(p.0))
    });
    let (min_x, max_x) = if max_x > min_x {
        (min_x, max_x)
    } else {
        (min_x - 1.0, min_x + 1.0)
    };
    let max = values().filter_map(|p| p.1).fold(0.0, f64::max);
    let step = tick_step(max);
    let top = (max / step).ceil().max(1.0) * step;
    let x = |v: f64| x0 + (v - min_x) / (max_x - min_x) * (x1 - x0);
    let y = |v: f64| y1 - v / top * (y1 - y0);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle" font-size="13" font-weight="bold">{}</text>"#,
        (x0 + x1) / 2.0,
        y0 - 10.0,
        escape(&panel.title)
    );
    let mut tick = 0.0;
    while tick <= top + step * 1e-9 {
        let _ = writeln!(
            svg,
            r##"<line x1="{x0}" x2="{x1}" y1="{0}" y2="{0}" stroke="#e5e7eb"/><text x="{1}" y="{2}" text-anchor="end" font-size="11" fill="#4b5563">{3:.2}</text>"##,
            y(tick),
            x0 - 6.0,
            y(tick) + 4.0,
            tick
        );
        tick += step;
    }
    for (at, label) in &panel.x_ticks {
        // Labels at the ends align inward, so they are not cut at the panel's edges.
        let anchor = if *at >= max_x && label.len() > 3 {
            "end"
        } else {
            "middle"
        };
        let _ = writeln!(
            svg,
            r##"<text x="{}" y="{}" text-anchor="{anchor}" font-size="11" fill="#4b5563">{}</text>"##,
            x(*at),
            y1 + 16.0,
            escape(label)
        );
    }
    let _ = writeln!(
        svg,
        r##"<line x1="{x0}" x2="{x1}" y1="{y1}" y2="{y1}" stroke="#9ca3af"/><line x1="{x0}" x2="{x0}" y1="{y0}" y2="{y1}" stroke="#9ca3af"/>"##
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle" font-size="12">{}</text>"#,
        (x0 + x1) / 2.0,
        y1 + 34.0,
        panel.x_label
    );
    for series in &panel.series {
        // A break in the data (a `None`) starts a new polyline.
        let mut runs: Vec<Vec<String>> = vec![Vec::new()];
        for (px, py) in &series.points {
            match py {
                Some(py) => runs
                    .last_mut()
                    .map(|run| run.push(format!("{:.1},{:.1}", x(*px), y(*py))))
                    .unwrap_or_default(),
                None => runs.push(Vec::new()),
            }
        }
        let dash = if series.dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        for run in runs.into_iter().filter(|r| !r.is_empty()) {
            let _ = writeln!(
                svg,
                r#"<polyline fill="none" stroke="{}" stroke-width="2"{dash} points="{}"><title>{} {}</title></polyline>"#,
                series.color,
                run.join(" "),
                escape(&series.name),
                escape(&panel.title)
            );
        }
    }
}

/// The SVG document for `scores` (each with its `curve` over k = 1..=len). `title` goes on
/// top, e.g. the dataset and split.
pub fn metric_vs_k_svg(scores: &[PluginScore], title: &str) -> String {
    let k = scores.iter().map(|s| s.curve.len()).max().unwrap_or(1);
    let every = k.div_ceil(10).max(1);
    let x_ticks: Vec<(f64, String)> = (1..=k)
        .filter(|l| *l == 1 || l % every == 0)
        .map(|l| (l as f64, l.to_string()))
        .collect();
    let panels: Vec<Panel> = PANELS
        .iter()
        .map(|(name, value)| Panel {
            title: (*name).to_string(),
            x_label: "k (list length)",
            x_ticks: x_ticks.clone(),
            series: scores
                .iter()
                .enumerate()
                .map(|(i, score)| Series {
                    name: score.plugin.clone(),
                    color: COLORS[i % COLORS.len()],
                    dashed: false,
                    points: score
                        .curve
                        .iter()
                        .enumerate()
                        .map(|(j, m)| ((j + 1) as f64, Some(value(m))))
                        .collect(),
                })
                .collect(),
        })
        .collect();
    let legend: Vec<(String, &'static str, bool)> = scores
        .iter()
        .enumerate()
        .map(|(i, s)| (s.plugin.clone(), COLORS[i % COLORS.len()], false))
        .collect();
    document(title, &panels, &legend)
}

/// The prequential replay over time: recall@k per tenth of the replay for each plugin,
/// learning online (solid) and frozen (dashed), and the same for the RMSE of the plugins that
/// predict ratings.
pub fn prequential_svg(scores: &[PrequentialScore], k: usize, title: &str) -> String {
    // One point per tenth of the replay, placed by its order: events are not spread evenly
    // in time, and the tenths are what the figures average over.
    let x_ticks: Vec<(f64, String)> = scores
        .first()
        .map(|s| {
            let last = s.online.windows.len().saturating_sub(1);
            s.online
                .windows
                .iter()
                .enumerate()
                .filter(|(i, _)| *i == 0 || *i == last || i % 3 == 0 && last - i >= 2)
                .map(|(i, w)| ((i + 1) as f64, date(w.until)))
                .collect()
        })
        .unwrap_or_default();
    let lines = |metric: fn(&WindowMetrics) -> Option<f64>,
                 wanted: &dyn Fn(&PrequentialScore) -> bool| {
        let mut series = Vec::new();
        for (i, score) in scores.iter().enumerate().filter(|(_, s)| wanted(s)) {
            for (replay, dashed, label) in [
                (&score.online, false, "online"),
                (&score.frozen, true, "frozen"),
            ] {
                series.push(Series {
                    name: format!("{} {label}", score.plugin),
                    color: COLORS[i % COLORS.len()],
                    dashed,
                    points: replay
                        .windows
                        .iter()
                        .enumerate()
                        .map(|(j, w)| ((j + 1) as f64, metric(w)))
                        .collect(),
                });
            }
        }
        series
    };
    let mut panels = vec![Panel {
        title: format!("Recall@{k} of the next event"),
        x_label: "tenth of the replay (labelled with the date it ends)",
        x_ticks: x_ticks.clone(),
        series: lines(|w| w.recall, &|_| true),
    }];
    if scores.iter().any(|s| s.online.rmse.is_some()) {
        panels.push(Panel {
            title: "RMSE of the rating estimate".into(),
            x_label: "tenth of the replay (labelled with the date it ends)",
            x_ticks,
            series: lines(|w| w.rmse, &|s| s.online.rmse.is_some()),
        });
    }
    let mut legend: Vec<(String, &'static str, bool)> = Vec::new();
    for (i, score) in scores.iter().enumerate() {
        legend.push((
            format!("{} online", score.plugin),
            COLORS[i % COLORS.len()],
            false,
        ));
        legend.push((
            format!("{} frozen", score.plugin),
            COLORS[i % COLORS.len()],
            true,
        ));
    }
    document(title, &panels, &legend)
}

/// `YYYY-MM-DD` of a Unix timestamp (UTC), without a date crate: days to civil date.
fn date(timestamp: u64) -> String {
    let days = (timestamp / 86_400) as i64;
    // Howard Hinnant's days_from_civil inverse.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Writes [`prequential_svg`] to `path`.
pub fn write_prequential(
    scores: &[PrequentialScore],
    k: usize,
    title: &str,
    path: &Path,
) -> anyhow::Result<()> {
    std::fs::write(path, prequential_svg(scores, k, title))
        .map_err(|e| anyhow::anyhow!("cannot write the plot {}: {e}", path.display()))
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
            rmse: None,
            mae: None,
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
    fn the_prequential_plot_draws_online_and_frozen_per_plugin() {
        let windows = |recall: f64, rmse: Option<f64>| -> Vec<WindowMetrics> {
            (0..10)
                .map(|i| WindowMetrics {
                    until: 893_286_638 + i * 86_400,
                    recall: Some(recall),
                    rmse,
                })
                .collect()
        };
        let replay = |recall: f64, rmse: Option<f64>| super::super::prequential::ReplayMetrics {
            recall,
            rmse,
            mae: rmse,
            scored: 10,
            rated: 10,
            windows: windows(recall, rmse),
        };
        let score = |name: &str, rmse: Option<f64>| PrequentialScore {
            plugin: name.into(),
            frozen: replay(0.1, rmse),
            online: replay(0.12, rmse.map(|r| r - 0.05)),
            warmup_events: 80,
            replayed_events: 20,
            batch: 1,
            seconds: 0.1,
        };
        let svg = prequential_svg(
            &[score("popularity", None), score("ratings", Some(1.0))],
            10,
            "t",
        );
        // Recall: online and frozen for both; RMSE: for the one that predicts.
        assert_eq!(svg.matches("<polyline").count(), 6);
        assert_eq!(svg.matches(r#"stroke-dasharray="6 4" points"#).count(), 3);
        assert!(svg.contains("1998-04-22") && svg.contains("RMSE"), "{svg}");
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(893_286_638), "1998-04-22");
        assert_eq!(date(1_735_689_600), "2025-01-01");
    }

    #[test]
    fn ticks_are_round() {
        assert_eq!(tick_step(0.44), 0.1);
        assert_eq!(tick_step(0.9), 0.2);
        assert_eq!(tick_step(0.2), 0.05);
    }
}
