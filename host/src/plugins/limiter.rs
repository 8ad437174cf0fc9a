//! The memory a plugin instance may make the host allocate, held to `limits.memory_mb` in all.
//!
//! Everything a guest can grow counts against one budget: every linear memory (a component
//! may hold several core instances, each with its own memory) and every table (`table.grow`
//! allocates host memory too, a pointer per element). A growth past the budget traps with
//! [`MemoryCapExceeded`], which the caller recognises by type, not by its message.
//!
//! The counts of instances, memories and tables are sanity bounds only: the budget is what
//! bounds memory, and a component cannot create instances at run time (their number is fixed
//! by its structure), so the counts are set high enough for components made by other
//! toolchains (componentize-py holds several core instances).

use wasmtime::ResourceLimiter;

/// Host bytes charged per table element: wasmtime 48 stores a `funcref` element as one
/// pointer (tables of other reference types need proposals the engine does not enable).
const TABLE_ELEMENT_BYTES: usize = 8;

/// A growth that would take an instance past its memory budget.
#[derive(Debug, thiserror::Error)]
#[error("growing {what} would take the instance to {wanted} bytes, over its limit of {budget}")]
pub struct MemoryCapExceeded {
    pub what: &'static str,
    pub wanted: usize,
    pub budget: usize,
}

/// The `ResourceLimiter` of one instance's store.
pub struct SandboxLimiter {
    budget: usize,
    /// Bytes of linear memory and table storage granted so far (memories and tables only
    /// grow, so this is also what they hold).
    used: usize,
    /// The last growth granted, given back if the engine then fails it.
    last_grant: usize,
    /// The largest `used` has been.
    pub peak_bytes: usize,
    /// Bytes allowed on top of `limits.memory_mb` for the events a `train` or `update` call
    /// was handed (see [`Self::allow_events`]).
    pub events_allowance: usize,
}

impl SandboxLimiter {
    pub fn new(budget: usize) -> Self {
        Self {
            budget,
            used: 0,
            last_grant: 0,
            peak_bytes: 0,
            events_allowance: 0,
        }
    }

    /// Lets the instance hold `bytes` more than its budget from now on, for the copy of the
    /// events a `train` or `update` call hands it (24 bytes an event): `limits.memory_mb`
    /// sizes the model, and the training window grows with the data, not with the model
    /// (MovieLens 25M's is 600 MB). The largest list handed in counts, not their sum: the
    /// guest frees a list after the call and reuses its memory.
    pub fn allow_events(&mut self, bytes: usize) {
        if bytes > self.events_allowance {
            self.budget = self.budget.saturating_add(bytes - self.events_allowance);
            self.events_allowance = bytes;
        }
    }

    fn grow(&mut self, what: &'static str, more: usize) -> wasmtime::Result<bool> {
        let wanted = self.used.saturating_add(more);
        if wanted > self.budget {
            return Err(MemoryCapExceeded {
                what,
                wanted,
                budget: self.budget,
            }
            .into());
        }
        self.used = wanted;
        self.last_grant = more;
        self.peak_bytes = self.peak_bytes.max(wanted);
        Ok(true)
    }

    /// Gives back the last growth granted: the engine did not make it.
    fn refund(&mut self) {
        self.used -= self.last_grant;
        self.last_grant = 0;
    }
}

impl ResourceLimiter for SandboxLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.grow("a linear memory", desired.saturating_sub(current))
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        // The engine refused a growth the budget allowed (past the memory's own maximum, or
        // the host is out of memory): the guest sees -1 from `memory.grow`, as the spec says.
        tracing::debug!(%error, "a plugin's memory growth failed");
        self.refund();
        Ok(())
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let elements = desired.saturating_sub(current);
        self.grow("a table", elements.saturating_mul(TABLE_ELEMENT_BYTES))
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        tracing::debug!(%error, "a plugin's table growth failed");
        self.refund();
        Ok(())
    }

    fn instances(&self) -> usize {
        64
    }

    fn tables(&self) -> usize {
        64
    }

    fn memories(&self) -> usize {
        16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memories_and_tables_share_one_budget() {
        let mut limiter = SandboxLimiter::new(1_000);
        assert!(limiter.memory_growing(0, 600, None).unwrap());
        // A second memory may not take the total past the budget.
        let error = limiter.memory_growing(0, 600, None).unwrap_err();
        assert!(error.downcast_ref::<MemoryCapExceeded>().is_some());
        // 50 table elements are 400 bytes: exactly the rest.
        assert!(limiter.table_growing(0, 50, None).unwrap());
        assert!(limiter.table_growing(50, 51, None).is_err());
        assert_eq!(limiter.peak_bytes, 1_000);
    }

    #[test]
    fn a_growth_the_engine_fails_is_given_back() {
        let mut limiter = SandboxLimiter::new(1_000);
        assert!(limiter.memory_growing(0, 600, None).unwrap());
        limiter
            .memory_grow_failed(wasmtime::format_err!("past the memory's maximum"))
            .unwrap();
        assert!(limiter.memory_growing(0, 1_000, None).unwrap());
    }
}
