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
}
