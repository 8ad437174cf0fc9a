//! Where a serving call runs: on the async worker that took the request, or on tokio's
//! blocking pool.
//!
//! Handing every call to the blocking pool cost more than most models: each hand-off wakes a
//! pool thread and then the worker again (two futex wake-ups and two context switches per
//! request). Profiled under wrk, a third of the server's CPU was the kernel's futex and
//! scheduler paths around a popularity call of a few microseconds. So a plugin whose calls
//! are short runs them inline, on the worker, like any other bit of request CPU.
//!
//! A worker must not be held long, or every request queued behind it waits. A plugin whose
//! inline calls took longer than [`INLINE_LIMIT`] [`LONG_IN_A_ROW`] times in a row, or whose
//! inline call failed, runs its calls on the blocking pool for [`OFFLOAD_FOR`]; then it gets
//! another inline try. Several in a row because the time is wall time: on a loaded machine
//! the OS preempts a worker mid-call now and then, and one long call moved a 5 µs plugin off
//! the workers every few seconds. (The thread's CPU clock would not be fooled, but reading it
//! is a system call that took the rescheduling lock: 4% of the server's CPU under wrk.)
//!
//! So the most a plugin can hold a worker is one call's budget (`recommend_ms`, enforced by
//! the epoch deadline and `bounded_io`) once per [`OFFLOAD_FOR`], or [`LONG_IN_A_ROW`] slow
//! calls: a plugin that loops forever costs one worker one budget, then runs off the workers
//! (and its breaker soon skips it). Health probes always
//! run on the pool: they call a plugin that has been failing.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::engine::{EPOCH_TICK, EpochClock};

/// The longest inline call that keeps a plugin inline: a few times a typical collaborative
/// call, and short against the latency of the requests waiting on the worker.
pub const INLINE_LIMIT: Duration = Duration::from_millis(2);
/// How many inline calls in a row over [`INLINE_LIMIT`] move a plugin off the workers.
pub const LONG_IN_A_ROW: u32 = 3;
/// How long a plugin whose inline calls were too long (or failed) runs on the blocking pool.
pub const OFFLOAD_FOR: Duration = Duration::from_secs(10);

/// One plugin's placement.
pub struct CallPlacement {
    clock: EpochClock,
    /// Epoch tick before which calls go to the blocking pool (0: inline).
    offload_until: AtomicU64,
    /// Inline calls over [`INLINE_LIMIT`] since the last shorter one.
    long_in_a_row: AtomicU32,
}

impl CallPlacement {
    pub fn new(clock: EpochClock) -> Self {
        Self {
            clock,
            offload_until: AtomicU64::new(0),
            long_in_a_row: AtomicU32::new(0),
        }
    }

    /// Whether the next call may run on the worker. One atomic load each.
    pub fn inline(&self) -> bool {
        self.clock.now() >= self.offload_until.load(Ordering::Relaxed)
    }

    /// Runs `call` inline and records how it went (see the module's text).
    pub fn run_inline<R>(&self, call: impl FnOnce() -> (R, bool)) -> R {
        let started = Instant::now();
        let (result, failed) = call();
        self.inline_call_took(started.elapsed(), failed);
        result
    }

    fn inline_call_took(&self, elapsed: Duration, failed: bool) {
        let offload = if elapsed > INLINE_LIMIT {
            failed || self.long_in_a_row.fetch_add(1, Ordering::Relaxed) + 1 >= LONG_IN_A_ROW
        } else {
            // Written only when it changes: a shared counter written on every call would
            // bounce its cache line between the cores.
            if self.long_in_a_row.load(Ordering::Relaxed) != 0 {
                self.long_in_a_row.store(0, Ordering::Relaxed);
            }
            failed
        };
        if offload {
            self.long_in_a_row.store(0, Ordering::Relaxed);
            let ticks = OFFLOAD_FOR.as_millis() / EPOCH_TICK.as_millis();
            self.offload_until
                .store(self.clock.now() + ticks as u64, Ordering::Relaxed);
        }
    }

    /// Whether calls go to the blocking pool now (for `/plugins`).
    pub fn offloaded(&self) -> bool {
        !self.inline()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_inline_calls_in_a_row_or_a_failed_one_move_the_plugin_off_the_workers() {
        let clock = EpochClock::default();
        let placement = CallPlacement::new(clock.clone());
        let long = INLINE_LIMIT + Duration::from_micros(1);
        let short = Duration::from_micros(50);
        assert!(placement.inline());
        for _ in 0..10 {
            // Preempted now and then: a long call between short ones is not a slow plugin.
            placement.inline_call_took(long, false);
            placement.inline_call_took(short, false);
        }
        assert!(placement.inline(), "isolated long calls keep it inline");
        for _ in 1..LONG_IN_A_ROW {
            placement.inline_call_took(long, false);
        }
        assert!(placement.inline());
        placement.inline_call_took(long, false);
        assert!(
            placement.offloaded(),
            "{LONG_IN_A_ROW} long calls in a row move it off"
        );
        clock.advance_for_tests(OFFLOAD_FOR.as_millis() as u64 / EPOCH_TICK.as_millis() as u64);
        assert!(placement.inline(), "back inline after OFFLOAD_FOR");
        placement.inline_call_took(short, true);
        assert!(placement.offloaded(), "a failed call moves it off at once");
    }
}
