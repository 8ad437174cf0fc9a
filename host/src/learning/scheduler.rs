//! The loop that starts jobs: when one is requested (buffer size, operator), when events have
//! waited `update_interval_secs`, and every `retrain_interval_secs`.

use std::sync::Arc;
use std::time::Duration;

use super::{JobKind, Learning, Trigger};

/// How often the time-based triggers are checked.
const TICK: Duration = Duration::from_millis(250);

impl Learning {
    /// Runs jobs until the process ends. Spawn it once on the async runtime.
    pub async fn run_scheduler(self: Arc<Self>) {
        loop {
            let job = {
                let mut state = self.lock();
                self.check_timers(&mut state);
                let job = state.pending.take();
                state.running = job;
                job
            };
            match job {
                Some(job) => {
                    let learning = self.clone();
                    if let Err(error) = tokio::task::spawn_blocking(move || learning.run(job)).await
                    {
                        tracing::error!(%error, update_id = job.id, "a learning job panicked");
                        self.lock().running = None;
                    }
                }
                None => {
                    let _ = tokio::time::timeout(TICK, self.wake.notified()).await;
                }
            }
        }
    }

    fn check_timers(&self, state: &mut super::State) {
        if state.pending.is_some() {
            return;
        }
        let interval = self.config.update_interval_secs;
        if interval > 0
            && state.waiting() > 0
            && state
                .waiting_since
                .is_some_and(|since| since.elapsed() >= Duration::from_secs(interval))
        {
            state.schedule(JobKind::Update, Trigger::Interval);
            return;
        }
        let retrain = self.config.retrain_interval_secs;
        if retrain > 0 && state.last_retrain.elapsed() >= Duration::from_secs(retrain) {
            state.schedule(JobKind::Retrain, Trigger::Schedule);
        }
    }
}
