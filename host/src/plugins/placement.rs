//! Where a serving call runs: on the async worker that took the request, or on tokio's
//! blocking pool.
//!
//! Handing every call to the blocking pool cost more than most models: each hand-off wakes a
//! pool thread and then the worker again (two futex wake-ups and two context switches per
//! request). Profiled under wrk, a third of the server's CPU was the kernel's futex and
//! scheduler paths around a popularity call of a few microseconds. So a call may run inline,
//! on the worker, like any other request CPU, when all of these hold:
//!
//! - the runtime has several workers, and fewer inline calls are under way than workers
//!   ([`InlineSlots`]): at least one worker is always free to accept, shed and time out
//!   requests, however many plugins loop;
//! - the plugin's budget (`recommend_ms`) is under the HTTP request timeout and at most
//!   [`MAX_INLINE_BUDGET`]: a request's deadline cannot fire while its worker is inside
//!   WebAssembly, so the call must end first;
//! - an idle serving instance of the current model is at hand (building one takes
//!   milliseconds: that goes to the pool);
//! - the call is not a health probe (probes call a plugin that has been failing);
//! - the plugin has not been moved off the workers: a call over [`FAR_OVER`], or
//!   [`LONG_IN_A_ROW`] calls in a row over [`INLINE_LIMIT`] (wall time: preemption makes a
//!   single short call look long now and then), or a failed call, move it to the pool for
//!   [`OFFLOAD_FOR`]; and a plugin that waited inside WASI never runs inline again (below).
//!
//! Waiting in WASI (`bounded_io`, and wasmtime-wasi's own waits: stream flushes, a panic
//! message's write to stderr) blocks on the tokio runtime, which tokio refuses on a worker
//! thread with a panic. The inline call catches it, the plugin is marked as one that waits,
//! and the request is served again on the pool from a fresh instance: the client gets its
//! answer, and the plugin's calls stay on the pool from then on.
//!
//! So the most plugins can hold is `workers - 1` workers for one budget each, then once per
//! [`OFFLOAD_FOR`] per plugin. Two limits remain: a task in the held worker's LIFO slot (one
//! the request woke just before its call) waits for the call, since other workers cannot
//! steal it; and the budget is compared with the whole request timeout, not what is left of
//! it, so an answer can go out up to one budget after the request's deadline instead of a
//! `timeout` 503.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::engine::{EPOCH_TICK, EpochClock};

/// The longest inline call that keeps a plugin inline (with [`LONG_IN_A_ROW`]).
pub const INLINE_LIMIT: Duration = Duration::from_millis(2);
/// How many inline calls in a row over [`INLINE_LIMIT`] move a plugin off the workers.
pub const LONG_IN_A_ROW: u32 = 3;
/// An inline call this long moves the plugin off at once (no preemption is that long).
pub const FAR_OVER: Duration = Duration::from_millis(20);
/// How long a plugin moved off the workers stays on the blocking pool.
pub const OFFLOAD_FOR: Duration = Duration::from_secs(10);
/// The largest `recommend_ms` that may run inline.
pub const MAX_INLINE_BUDGET: Duration = Duration::from_millis(1_000);

/// The server-wide count of inline calls under way, kept below the number of workers.
pub struct InlineSlots {
    in_use: AtomicUsize,
    /// One fewer than the runtime's workers, read from the runtime at the first call (0 on
    /// a single-threaded runtime, or for an engine that serves no HTTP).
    max: std::sync::OnceLock<usize>,
    /// The HTTP request timeout: budgets at or over it never run inline.
    request_timeout: Duration,
}

impl InlineSlots {
    /// For a server whose requests time out after `request_timeout`.
    pub fn new(request_timeout: Duration) -> Self {
        Self {
            in_use: AtomicUsize::new(0),
            max: std::sync::OnceLock::new(),
            request_timeout,
        }
    }

    /// No inline calls at all (tools, tests).
    pub fn none() -> Self {
        Self {
            in_use: AtomicUsize::new(0),
            max: std::sync::OnceLock::from(0),
            request_timeout: Duration::ZERO,
        }
    }

    fn max(&self) -> usize {
        if let Some(&max) = self.max.get() {
            return max;
        }
        // Read from the runtime the first time a call asks from inside one.
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return 0;
        };
        *self.max.get_or_init(|| {
            if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread {
                handle.metrics().num_workers().saturating_sub(1)
            } else {
                0
            }
        })
    }

    /// Whether a plugin with calls of `budget` may run them inline (before the runtime is
    /// asked how many workers it has).
    pub fn budget_allows(&self, budget: Duration) -> bool {
        budget < self.request_timeout && budget <= MAX_INLINE_BUDGET
    }

    /// Whether a call of `budget` may run inline at all.
    pub fn allows(&self, budget: Duration) -> bool {
        self.budget_allows(budget) && self.max() > 0
    }

    /// Takes a slot if one is free.
    pub fn take(&self) -> Option<SlotGuard<'_>> {
        if self.in_use.fetch_add(1, Ordering::AcqRel) < self.max() {
            Some(SlotGuard(self))
        } else {
            self.in_use.fetch_sub(1, Ordering::AcqRel);
            None
        }
    }
}

/// An inline call's slot, given back when dropped (a panic included).
pub struct SlotGuard<'a>(&'a InlineSlots);

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        self.0.in_use.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How an inline call ended.
pub enum Inline<R> {
    Done(R),
    /// It waited in WASI on the worker (and panicked there): serve it again on the pool.
    Waited,
}

/// One plugin's placement.
pub struct CallPlacement {
    clock: EpochClock,
    /// Epoch tick before which calls go to the blocking pool (0: inline).
    offload_until: AtomicU64,
    /// Inline calls over [`INLINE_LIMIT`] since the last shorter one.
    long_in_a_row: AtomicU32,
    /// It waited inside WASI once: never inline again.
    waits: AtomicBool,
}

impl CallPlacement {
    pub fn new(clock: EpochClock) -> Self {
        Self {
            clock,
            offload_until: AtomicU64::new(0),
            long_in_a_row: AtomicU32::new(0),
            waits: AtomicBool::new(false),
        }
    }

    /// Whether this plugin's next call may run on a worker. Two atomic loads.
    pub fn inline(&self) -> bool {
        !self.waits.load(Ordering::Relaxed)
            && self.clock.now() >= self.offload_until.load(Ordering::Relaxed)
    }

    /// Runs `call` inline (its bool: whether it failed) and records how it went.
    pub fn run_inline<R>(&self, call: impl FnOnce() -> (R, bool)) -> Inline<R> {
        let started = Instant::now();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(call)) {
            Ok((result, failed)) => {
                self.inline_call_took(started.elapsed(), failed);
                Inline::Done(result)
            }
            Err(panic) if refused_wait(panic.as_ref()) => {
                // Tokio refused a blocking wait on a worker (see the module's text): the
                // instance was dropped with the unwinding; the caller still holds the permit
                // and the slot, and serves the request again on the pool.
                self.waits.store(true, Ordering::Relaxed);
                Inline::Waited
            }
            // Anything else is a bug of the host's, not a wait: not retried, not hidden.
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    fn inline_call_took(&self, elapsed: Duration, failed: bool) {
        let offload = if elapsed > FAR_OVER {
            true
        } else if elapsed > INLINE_LIMIT {
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
}

/// Whether a panic is tokio refusing to block a worker thread (its message, as of tokio 1.x:
/// "Cannot start a runtime from within a runtime").
fn refused_wait(panic: &(dyn std::any::Any + Send)) -> bool {
    let message = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("");
    message.contains("Cannot start a runtime from within a runtime")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_or_failed_inline_calls_move_the_plugin_off_the_workers() {
        let clock = EpochClock::default();
        let placement = CallPlacement::new(clock.clone());
        let long = INLINE_LIMIT + Duration::from_micros(1);
        let short = Duration::from_micros(50);
        for _ in 0..10 {
            // Preempted now and then: a long call between short ones is not a slow plugin.
            placement.inline_call_took(long, false);
            placement.inline_call_took(short, false);
        }
        assert!(placement.inline(), "isolated long calls keep it inline");
        for _ in 0..LONG_IN_A_ROW {
            placement.inline_call_took(long, false);
        }
        assert!(
            !placement.inline(),
            "{LONG_IN_A_ROW} long calls in a row move it off"
        );
        let back = OFFLOAD_FOR.as_millis() as u64 / EPOCH_TICK.as_millis() as u64;
        clock.advance_for_tests(back);
        assert!(placement.inline(), "back inline after OFFLOAD_FOR");
        placement.inline_call_took(FAR_OVER + Duration::from_micros(1), false);
        assert!(
            !placement.inline(),
            "one call far over moves it off at once"
        );
        clock.advance_for_tests(back);
        placement.inline_call_took(short, true);
        assert!(!placement.inline(), "a failed call moves it off at once");
    }

    #[test]
    fn a_call_that_panics_inline_is_handed_back_and_never_inline_again() {
        let clock = EpochClock::default();
        let placement = CallPlacement::new(clock.clone());
        let outcome = placement.run_inline(|| -> (u32, bool) {
            panic!("Cannot start a runtime from within a runtime")
        });
        assert!(matches!(outcome, Inline::Waited));
        clock.advance_for_tests(1_000_000);
        assert!(!placement.inline());
        // Any other panic is the host's own: it goes on unwinding.
        let other = std::panic::catch_unwind(|| {
            CallPlacement::new(EpochClock::default())
                .run_inline(|| -> (u32, bool) { panic!("index out of bounds") })
        });
        assert!(other.is_err());
    }

    #[test]
    fn slots_stay_below_the_worker_count_and_are_given_back() {
        let slots = InlineSlots {
            in_use: AtomicUsize::new(0),
            max: std::sync::OnceLock::from(1),
            request_timeout: Duration::from_secs(10),
        };
        assert!(slots.allows(Duration::from_millis(250)));
        assert!(
            !slots.allows(Duration::from_secs(2)),
            "over MAX_INLINE_BUDGET"
        );
        let first = slots.take().expect("a free slot");
        assert!(slots.take().is_none(), "one worker stays free");
        drop(first);
        assert!(slots.take().is_some());
        let short_timeout = InlineSlots {
            in_use: AtomicUsize::new(0),
            max: std::sync::OnceLock::from(1),
            request_timeout: Duration::from_millis(200),
        };
        assert!(!short_timeout.allows(Duration::from_millis(250)));
        assert!(!InlineSlots::none().allows(Duration::from_millis(1)));
    }
}
