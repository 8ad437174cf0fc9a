//! Experiment results, computed at most once per [`MIN_MAX_AGE`] (or ten times the last
//! computation's duration, if longer) per experiment, and shared.
//!
//! Computing results reads every exposure of the experiment and every event after the first
//! of them: too much to do on each request of a public endpoint the dashboard polls. A
//! request gets the latest computation if it is fresh enough; else it computes (one request
//! at a time per experiment), and requests arriving meanwhile get the previous computation
//! instead of waiting (or wait, when there is none yet). So the database does at most one
//! such scan at a time per experiment, at most a tenth of the time, however many clients
//! ask. Every answer says when it was computed and how long it stays in use.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::definition::Experiment;
use super::results::Results;
use crate::store::unix_now_ms;

/// Results newer than this are served as they are.
pub const MIN_MAX_AGE: Duration = Duration::from_secs(5);

#[derive(Default)]
pub struct ResultsCache {
    slots: Mutex<HashMap<String, Arc<Slot>>>,
}

#[derive(Default)]
struct Slot {
    /// Held while this experiment's results are computed.
    computing: Mutex<()>,
    latest: Mutex<Option<Arc<Computed>>>,
}

struct Computed {
    results: Arc<Results>,
    /// The definition they were computed for: an edited experiment is computed afresh.
    definition: Experiment,
    at: Instant,
    max_age: Duration,
}

impl Slot {
    fn latest(&self) -> Option<Arc<Computed>> {
        self.latest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl ResultsCache {
    /// The results of `definition`: the latest computation while fresh, else `compute`'s.
    /// Blocking: call it off the async runtime.
    pub fn get<E>(
        &self,
        definition: &Experiment,
        compute: impl FnOnce() -> Result<Results, E>,
    ) -> Result<Arc<Results>, E> {
        let slot = self
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(definition.id.clone())
            .or_default()
            .clone();
        let usable = |computed: &Arc<Computed>| computed.definition == *definition;
        let fresh =
            |computed: &Arc<Computed>| usable(computed) && computed.at.elapsed() < computed.max_age;
        if let Some(latest) = slot.latest().filter(fresh) {
            return Ok(latest.results.clone());
        }
        let _computing = match slot.computing.try_lock() {
            Ok(guard) => guard,
            // A computation that panicked left the lock poisoned: it computes nothing now.
            Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                // Another request computes them now: the previous results will do.
                if let Some(previous) = slot.latest().filter(usable) {
                    return Ok(previous.results.clone());
                }
                let guard = slot.computing.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(latest) = slot.latest().filter(fresh) {
                    return Ok(latest.results.clone());
                }
                guard
            }
        };
        let started = Instant::now();
        let mut results = compute()?;
        let max_age = MIN_MAX_AGE.max(started.elapsed() * 10);
        results.computed_at_ms = unix_now_ms();
        results.max_age_ms = max_age.as_millis() as u64;
        let results = Arc::new(results);
        *slot.latest.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(Computed {
            results: results.clone(),
            definition: definition.clone(),
            at: started,
            max_age,
        }));
        Ok(results)
    }
}
