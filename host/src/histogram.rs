//! A latency histogram for `GET /metrics`: fixed buckets, lock-free recording, rendered in
//! Prometheus text format. Shared by HTTP requests and plugin calls.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in seconds (plus +Inf).
const BUCKETS: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

#[derive(Default)]
pub struct LatencyHistogram {
    /// Observations at or under each bound (cumulative, as the format wants).
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl LatencyHistogram {
    pub fn record(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        for (bound, bucket) in BUCKETS.iter().zip(&self.buckets) {
            if seconds <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Mean of the observations (zero before the first).
    pub fn mean(&self) -> Duration {
        let count = self.count();
        Duration::from_nanos(self.sum_nanos.load(Ordering::Relaxed) / count.max(1))
    }

    /// The counts now, to compare with a later snapshot (windowed percentiles).
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            buckets: std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed)),
            count: self.count(),
        }
    }

    /// The `_bucket`, `_sum` and `_count` samples of metric `name`; `labels` is empty or
    /// `key="value",...` without braces.
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, bucket) in BUCKETS.iter().zip(&self.buckets) {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// The bucket counts of a [`LatencyHistogram`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HistogramSnapshot {
    buckets: [u64; BUCKETS.len()],
    count: u64,
}

impl HistogramSnapshot {
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The observations made after `earlier` (a snapshot of the same histogram).
    pub fn since(&self, earlier: &HistogramSnapshot) -> HistogramSnapshot {
        HistogramSnapshot {
            buckets: std::array::from_fn(|i| self.buckets[i].saturating_sub(earlier.buckets[i])),
            count: self.count.saturating_sub(earlier.count),
        }
    }

    /// The `q` quantile (0 to 1) estimated as Prometheus' `histogram_quantile` does: find the
    /// bucket holding the rank and interpolate linearly inside it. `None` without
    /// observations; observations over the last bound are reported at that bound.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if self.count == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * self.count as f64;
        let mut lower_bound = 0.0;
        let mut below = 0u64;
        for (bound, &cumulative) in BUCKETS.iter().zip(&self.buckets) {
            if cumulative as f64 >= rank && cumulative > below {
                let inside = (cumulative - below) as f64;
                let fraction = ((rank - below as f64) / inside).clamp(0.0, 1.0);
                return Some(Duration::from_secs_f64(
                    lower_bound + (bound - lower_bound) * fraction,
                ));
            }
            lower_bound = *bound;
            below = cumulative;
        }
        Some(Duration::from_secs_f64(BUCKETS[BUCKETS.len() - 1]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_rendered_with_labels() {
        let histogram = LatencyHistogram::default();
        histogram.record(Duration::from_micros(80));
        histogram.record(Duration::from_millis(3));
        histogram.record(Duration::from_secs(9));
        let mut out = String::new();
        histogram.render(&mut out, "x_seconds", "plugin=\"p\"");
        assert!(
            out.contains("x_seconds_bucket{plugin=\"p\",le=\"0.0001\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_bucket{plugin=\"p\",le=\"0.005\"} 2"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_bucket{plugin=\"p\",le=\"+Inf\"} 3"),
            "{out}"
        );
        assert!(out.contains("x_seconds_count{plugin=\"p\"} 3"), "{out}");
        assert_eq!(histogram.count(), 3);
    }

    #[test]
    fn quantiles_interpolate_inside_the_bucket_holding_the_rank() {
        let histogram = LatencyHistogram::default();
        assert_eq!(histogram.snapshot().quantile(0.5), None);
        // 100 observations of 3 ms: all in the (2.5 ms, 5 ms] bucket.
        for _ in 0..100 {
            histogram.record(Duration::from_millis(3));
        }
        let before = histogram.snapshot();
        // p50 is the middle of that bucket, p99 near its top.
        let p50 = before.quantile(0.5).unwrap().as_secs_f64();
        assert!((p50 - 0.003_75).abs() < 1e-9, "{p50}");
        let p99 = before.quantile(0.99).unwrap().as_secs_f64();
        assert!((p99 - 0.004_975).abs() < 1e-9, "{p99}");

        // Then 100 of 200 ms: the window after `before` sees only those.
        for _ in 0..100 {
            histogram.record(Duration::from_millis(200));
        }
        let window = histogram.snapshot().since(&before);
        assert_eq!(window.count(), 100);
        let p50 = window.quantile(0.5).unwrap().as_secs_f64();
        assert!((0.1..=0.25).contains(&p50), "{p50}");
        // Over all 200 the median sits at the top of the 3 ms bucket.
        let p50_all = histogram.snapshot().quantile(0.5).unwrap().as_secs_f64();
        assert!((p50_all - 0.005).abs() < 1e-9, "{p50_all}");

        // Beyond the last bound: reported at the last bound.
        let slow = LatencyHistogram::default();
        slow.record(Duration::from_secs(9));
        assert_eq!(
            slow.snapshot().quantile(0.5),
            Some(Duration::from_secs_f64(2.5))
        );
    }
}
