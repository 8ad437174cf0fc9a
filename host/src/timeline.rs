//! What the server did lately, for the dashboard's overview (`GET /overview`): every
//! [`SAMPLE_EVERY`] a sampler copies a few counters; rates, `/recommend` latency percentiles
//! and the cache hit rate per interval come from the differences between samples.
//!
//! `/metrics` exposes the same counters since start, and Prometheus computes rates from them;
//! this is for an operator who opens the dashboard without running Prometheus. Half an hour
//! of samples is kept in memory (900 samples of 160 bytes), none on disk.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use crate::app::App;
use crate::histogram::HistogramSnapshot;
use crate::store::unix_now_ms;

/// How often the sampler copies the counters.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// Samples kept: 30 minutes.
const KEPT: usize = 900;
/// The span of the "now" figures.
const RECENT: Duration = Duration::from_secs(60);

/// The counters at one moment.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counters {
    pub at_ms: u64,
    /// HTTP requests answered, every route.
    pub requests: u64,
    /// `POST /recommend` latencies (its count is the number of recommendation requests).
    pub recommend: HistogramSnapshot,
    /// Events stored.
    pub events: u64,
    pub cache_hits: u64,
    /// Hits, misses and bypassed lookups.
    pub cache_lookups: u64,
}

impl Counters {
    /// The counters of `app` now.
    pub fn of(app: &App) -> Self {
        let cache = app
            .recommender
            .cache
            .stats()
            .report(app.recommender.cache.backend());
        Self {
            at_ms: unix_now_ms(),
            requests: app.http_metrics.requests_total(),
            recommend: app.http_metrics.latency("/recommend").unwrap_or_default(),
            events: app
                .users
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .event_count(),
            cache_hits: cache.hits,
            cache_lookups: cache.hits + cache.misses + cache.bypassed,
        }
    }
}

/// Activity between two samples.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Interval {
    /// End of the interval, Unix milliseconds.
    pub at_ms: u64,
    pub seconds: f64,
    /// Every HTTP request, the dashboard's own included.
    pub requests_per_second: f64,
    pub recommendations_per_second: f64,
    pub events_per_second: f64,
    /// `/recommend` latency percentiles in milliseconds, estimated from the histogram
    /// buckets of `/metrics`; `null` without requests.
    pub recommend_p50_ms: Option<f64>,
    pub recommend_p99_ms: Option<f64>,
    /// Cache hits over lookups; `null` without lookups.
    pub cache_hit_rate: Option<f64>,
}

impl Interval {
    fn between(earlier: &Counters, later: &Counters) -> Self {
        let seconds = (later.at_ms.saturating_sub(earlier.at_ms) as f64 / 1000.0).max(0.001);
        let rate = |a: u64, b: u64| b.saturating_sub(a) as f64 / seconds;
        let recommend = later.recommend.since(&earlier.recommend);
        let millis = |q| recommend.quantile(q).map(|d| d.as_secs_f64() * 1000.0);
        let lookups = later.cache_lookups.saturating_sub(earlier.cache_lookups);
        let hits = later.cache_hits.saturating_sub(earlier.cache_hits);
        Self {
            at_ms: later.at_ms,
            seconds,
            requests_per_second: rate(earlier.requests, later.requests),
            recommendations_per_second: recommend.count() as f64 / seconds,
            events_per_second: rate(earlier.events, later.events),
            recommend_p50_ms: millis(0.5),
            recommend_p99_ms: millis(0.99),
            cache_hit_rate: (lookups > 0).then(|| hits as f64 / lookups as f64),
        }
    }
}

/// The recent figures and the series for the charts.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct TimelineReport {
    pub sample_every_ms: u64,
    /// Over the last minute (less just after start); `null` before the first sample.
    pub recent: Option<Interval>,
    /// One entry per sampling interval, oldest first, up to 30 minutes.
    pub series: Vec<Interval>,
}

/// The kept samples, oldest first.
#[derive(Default)]
pub struct Timeline {
    samples: Mutex<VecDeque<Counters>>,
}

impl Timeline {
    pub fn record(&self, counters: Counters) {
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if samples.len() == KEPT {
            samples.pop_front();
        }
        samples.push_back(counters);
    }

    /// The report with `now` as its last point, so that the recent figures are current
    /// rather than up to [`SAMPLE_EVERY`] old.
    pub fn report(&self, now: &Counters) -> TimelineReport {
        let samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let mut series: Vec<Interval> = samples
            .iter()
            .zip(samples.iter().skip(1))
            .map(|(a, b)| Interval::between(a, b))
            .collect();
        if let Some(last) = samples.back()
            && now.at_ms > last.at_ms
        {
            series.push(Interval::between(last, now));
        }
        let since = now.at_ms.saturating_sub(RECENT.as_millis() as u64);
        let recent = samples
            .iter()
            .find(|s| s.at_ms >= since && s.at_ms < now.at_ms)
            .map(|first| Interval::between(first, now));
        TimelineReport {
            sample_every_ms: SAMPLE_EVERY.as_millis() as u64,
            recent,
            series,
        }
    }
}

/// Samples `app`'s counters every [`SAMPLE_EVERY`] for as long as the server runs.
pub async fn run_sampler(app: Arc<App>) {
    let mut ticks = tokio::time::interval(SAMPLE_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        ticks.tick().await;
        app.timeline.record(Counters::of(&app));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::histogram::LatencyHistogram;

    fn counters(at_s: u64, requests: u64, events: u64, hits: u64, lookups: u64) -> Counters {
        Counters {
            at_ms: at_s * 1000,
            requests,
            events,
            cache_hits: hits,
            cache_lookups: lookups,
            ..Counters::default()
        }
    }

    #[test]
    fn rates_come_from_differences_between_samples() {
        let timeline = Timeline::default();
        timeline.record(counters(100, 0, 1000, 0, 0));
        timeline.record(counters(102, 20, 1010, 0, 0));
        let report = timeline.report(&counters(104, 60, 1010, 3, 4));
        assert_eq!(report.series.len(), 2);
        assert_eq!(report.series[0].requests_per_second, 10.0);
        assert_eq!(report.series[0].events_per_second, 5.0);
        assert_eq!(report.series[0].cache_hit_rate, None);
        assert_eq!(report.series[1].requests_per_second, 20.0);
        assert_eq!(report.series[1].cache_hit_rate, Some(0.75));
        // The recent window spans both samples: 60 requests in 4 s.
        let recent = report.recent.expect("recent figures");
        assert_eq!(recent.requests_per_second, 15.0);
        assert_eq!(recent.seconds, 4.0);
    }

    #[test]
    fn recent_figures_cover_the_last_minute_only() {
        let timeline = Timeline::default();
        timeline.record(counters(0, 0, 0, 0, 0));
        timeline.record(counters(100, 1000, 0, 0, 0));
        let recent = timeline
            .report(&counters(130, 1300, 0, 0, 0))
            .recent
            .expect("recent figures");
        assert_eq!(recent.seconds, 30.0);
        assert_eq!(recent.requests_per_second, 10.0);
    }

    #[test]
    fn latency_percentiles_are_per_interval() {
        let histogram = LatencyHistogram::default();
        let timeline = Timeline::default();
        let mut sample = counters(0, 0, 0, 0, 0);
        timeline.record(sample);
        for _ in 0..10 {
            histogram.record(Duration::from_millis(3));
        }
        sample = Counters {
            at_ms: 2000,
            recommend: histogram.snapshot(),
            ..sample
        };
        timeline.record(sample);
        for _ in 0..10 {
            histogram.record(Duration::from_millis(200));
        }
        let now = Counters {
            at_ms: 4000,
            recommend: histogram.snapshot(),
            ..sample
        };
        let report = timeline.report(&now);
        let first = report.series[0].recommend_p50_ms.expect("a p50");
        let second = report.series[1].recommend_p50_ms.expect("a p50");
        assert!((2.5..=5.0).contains(&first), "{first}");
        assert!((100.0..=250.0).contains(&second), "{second}");
        assert_eq!(report.series[0].recommendations_per_second, 5.0);
    }

    #[test]
    fn keeps_half_an_hour() {
        let timeline = Timeline::default();
        for i in 0..(KEPT as u64 + 10) {
            timeline.record(counters(i * 2, i, 0, 0, 0));
        }
        let report = timeline.report(&counters(KEPT as u64 * 2 + 20, 0, 0, 0, 0));
        assert_eq!(report.series.len(), KEPT);
    }
}
