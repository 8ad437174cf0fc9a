//! A plugin's health: a circuit breaker over its serving calls.
//!
//! After `failures_before_unhealthy` failures in a row (traps, time or memory limits, answers
//! out of bounds; a refusal is the plugin answering, so it is not one) the plugin is
//! *unhealthy*: requests skip it, so they get the fallback or a 503 at once instead of each
//! paying for the failure (a looping plugin would otherwise hold a serving instance for its
//! whole time budget, request after request). When
//! the backoff has passed, one request probes the plugin; success makes it healthy again,
//! failure doubles the backoff, up to `max_backoff_ms`.
//!
//! The healthy path is two relaxed atomic loads: the lock is only taken on failures.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::limits::PluginLimits;

/// Whether a call may go ahead.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    /// Healthy: call it.
    Call,
    /// Unhealthy, backoff over: this call is the probe.
    Probe,
    /// Unhealthy: do not call it for `retry_in`.
    Skip { retry_in: Duration },
}

/// What `/plugins` and `/metrics` show.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct HealthReport {
    pub healthy: bool,
    pub consecutive_failures: u32,
    /// Times the plugin has been marked unhealthy since start.
    pub times_unhealthy: u64,
    /// Milliseconds until the next probe (0 when healthy or due).
    pub retry_in_ms: u64,
    pub last_error: Option<String>,
}

pub struct Health {
    threshold: u32,
    first_backoff: Duration,
    max_backoff: Duration,
    born: Instant,
    consecutive_failures: AtomicU32,
    /// Milliseconds since `born` before which calls are skipped (0: healthy).
    open_until_ms: AtomicU64,
    /// When the probe under way started, in milliseconds since `born` plus one (0: none).
    /// A probe whose request was abandoned (client gone, request timeout) never reports
    /// back: after `probe_expires` another request may probe.
    probing: AtomicU64,
    probe_expires: Duration,
    times_unhealthy: AtomicU64,
    /// Backoff to apply at the next opening, and the last failure's message.
    slow: Mutex<(Duration, Option<String>)>,
}

impl Health {
    pub fn new(limits: &PluginLimits) -> Self {
        let first_backoff = Duration::from_millis(limits.backoff_ms);
        Self {
            threshold: limits.failures_before_unhealthy,
            first_backoff,
            max_backoff: Duration::from_millis(limits.max_backoff_ms).max(first_backoff),
            born: Instant::now(),
            consecutive_failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            probing: AtomicU64::new(0),
            probe_expires: limits
                .recommend()
                .saturating_mul(2)
                .saturating_add(Duration::from_secs(1)),
            times_unhealthy: AtomicU64::new(0),
            slow: Mutex::new((first_backoff, None)),
        }
    }

    fn now_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    pub fn admit(&self) -> Admission {
        let open_until = self.open_until_ms.load(Ordering::Relaxed);
        if open_until == 0 {
            return Admission::Call;
        }
        let now = self.now_ms();
        if now < open_until {
            return Admission::Skip {
                retry_in: Duration::from_millis(open_until - now),
            };
        }
        // Backoff over: exactly one caller probes; the others keep skipping until it is done.
        let probing = self.probing.load(Ordering::Acquire);
        let expired = probing != 0
            && (now + 1).saturating_sub(probing) > self.probe_expires.as_millis() as u64;
        if (probing == 0 || expired)
            && self
                .probing
                .compare_exchange(probing, now + 1, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            Admission::Probe
        } else {
            Admission::Skip {
                retry_in: Duration::ZERO,
            }
        }
    }

    pub fn succeeded(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) == 0
            && self.open_until_ms.load(Ordering::Relaxed) == 0
        {
            return;
        }
        let mut slow = self.slow.lock().unwrap_or_else(|p| p.into_inner());
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.open_until_ms.store(0, Ordering::Relaxed);
        self.probing.store(0, Ordering::Release);
        slow.0 = self.first_backoff;
    }

    /// Ends a probe that told nothing (the plugin refused the probing request's input): the
    /// plugin stays as it was, and the next request may probe.
    pub fn probe_inconclusive(&self) {
        self.probing.store(0, Ordering::Release);
    }

    /// Records a failure; returns true when it made the plugin unhealthy.
    pub fn failed(&self, error: &str) -> bool {
        let mut slow = self.slow.lock().unwrap_or_else(|p| p.into_inner());
        slow.1 = Some(error.chars().take(500).collect());
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        let was_probe = self.probing.load(Ordering::Acquire) != 0;
        if failures < self.threshold && !was_probe {
            return false;
        }
        let backoff = slow.0;
        slow.0 = backoff.saturating_mul(2).min(self.max_backoff);
        self.open_until_ms.store(
            self.now_ms()
                .saturating_add(backoff.as_millis().max(1) as u64),
            Ordering::Relaxed,
        );
        self.probing.store(0, Ordering::Release);
        self.times_unhealthy.fetch_add(1, Ordering::Relaxed);
        true
    }

    pub fn report(&self) -> HealthReport {
        let slow = self.slow.lock().unwrap_or_else(|p| p.into_inner());
        let open_until = self.open_until_ms.load(Ordering::Relaxed);
        HealthReport {
            healthy: open_until == 0,
            consecutive_failures: self.consecutive_failures.load(Ordering::Relaxed),
            times_unhealthy: self.times_unhealthy.load(Ordering::Relaxed),
            retry_in_ms: open_until.saturating_sub(self.now_ms()),
            last_error: slow.1.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(threshold: u32, backoff_ms: u64) -> Health {
        Health::new(&PluginLimits {
            failures_before_unhealthy: threshold,
            backoff_ms,
            max_backoff_ms: backoff_ms * 4,
            ..PluginLimits::default()
        })
    }

    #[test]
    fn opens_after_the_threshold_and_a_successful_probe_closes_it() {
        let health = health(3, 40);
        assert!(!health.failed("a"));
        health.succeeded();
        assert!(!health.failed("a"));
        assert!(!health.failed("b"));
        assert_eq!(health.admit(), Admission::Call, "failures must be in a row");
        assert!(health.failed("c"));
        assert!(matches!(health.admit(), Admission::Skip { .. }));
        let report = health.report();
        assert!(!report.healthy);
        assert_eq!(report.last_error.as_deref(), Some("c"));
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(health.admit(), Admission::Probe);
        assert!(
            matches!(health.admit(), Admission::Skip { .. }),
            "one probe at a time"
        );
        health.succeeded();
        assert_eq!(health.admit(), Admission::Call);
        assert!(health.report().healthy);
    }

    #[test]
    fn an_abandoned_probe_lets_another_request_probe_later() {
        let health = Health::new(&PluginLimits {
            failures_before_unhealthy: 1,
            backoff_ms: 10,
            recommend_ms: 10,
            ..PluginLimits::default()
        });
        assert!(health.failed("x"));
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(health.admit(), Admission::Probe);
        // The probing request is dropped (client gone) and never reports back.
        assert!(matches!(health.admit(), Admission::Skip { .. }));
        std::thread::sleep(health.probe_expires + Duration::from_millis(20));
        assert_eq!(health.admit(), Admission::Probe);
    }

    #[test]
    fn a_failed_probe_doubles_the_backoff_up_to_the_cap() {
        let health = health(1, 20);
        assert!(health.failed("x"));
        let mut backoffs = Vec::new();
        for _ in 0..4 {
            std::thread::sleep(Duration::from_millis(health.report().retry_in_ms + 5));
            assert_eq!(health.admit(), Admission::Probe);
            assert!(health.failed("x"));
            backoffs.push(health.report().retry_in_ms);
        }
        // 40, 80, then capped at 80.
        assert!(backoffs[0] > 20 && backoffs[0] <= 40, "{backoffs:?}");
        assert!(backoffs[1] > 40 && backoffs[1] <= 80, "{backoffs:?}");
        assert!(backoffs[3] <= 80, "{backoffs:?}");
        assert_eq!(health.report().times_unhealthy, 5);
    }
}
