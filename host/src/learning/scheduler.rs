//! The loop that starts jobs: when one is requested (buffer size, operator), when events have
//! waited `update_interval_secs`, when a plugin whose update failed is due to be tried again,
//! and every `retrain_interval_secs`.

use std::sync::Arc;
use std::sync::mpsc::{Sender, channel};
use std::time::Duration;

use super::{Job, JobKind, Learning, Trigger};

/// How often the time-based triggers are checked.
const TICK: Duration = Duration::from_millis(250);

impl Learning {
    /// Runs jobs until the process ends. Spawn it once on the async runtime.
    pub async fn run_scheduler(self: Arc<Self>) {
        let worker = match start_worker(self.clone()) {
            Ok(worker) => worker,
            Err(error) => {
                tracing::error!(%error, "cannot start the learning thread; models will not learn");
                return;
            }
        };
        loop {
            // Only the learner runs jobs; on other nodes of a cluster they wait (none are
            // asked for there) until this node is elected.
            let job = if self.is_learner() {
                let mut state = self.lock();
                self.check_timers(&mut state);
                let job = state.pending.take();
                state.running = job;
                job
            } else {
                None
            };
            match job {
                Some(job) => {
                    let (done, finished) = tokio::sync::oneshot::channel();
                    if worker.send((job, done)).is_err() || finished.await.is_err() {
                        tracing::error!(update_id = job.id, "the learning thread stopped");
                        self.lock().running = None;
                        return;
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
            && state.waiting > 0
            && state
                .waiting_since
                .is_some_and(|since| since.elapsed() >= Duration::from_secs(interval))
        {
            state.schedule(JobKind::Update, Trigger::Interval);
            return;
        }
        // A plugin whose update failed, behind the others, once its backoff is over.
        let now = std::time::Instant::now();
        let retry_due = state.failing.iter().any(|(name, failing)| {
            failing.retry_at <= now
                && self
                    .plugins
                    .get(name)
                    .and_then(|plugin| plugin.model())
                    .is_some_and(|model| model.through_event < state.newest)
        });
        if retry_due {
            state.schedule(JobKind::Update, Trigger::Retry);
            return;
        }
        let retrain = self.config.retrain_interval_secs;
        if retrain > 0 && state.last_retrain.elapsed() >= Duration::from_secs(retrain) {
            state.schedule(JobKind::Retrain, Trigger::Schedule);
        }
    }
}

type JobRequest = (Job, tokio::sync::oneshot::Sender<()>);

/// The thread that runs every job, at a lower CPU priority than serving: under load an update
/// takes longer instead of delaying requests (docs/benchmarks.md has the figures).
fn start_worker(learning: Arc<Learning>) -> std::io::Result<Sender<JobRequest>> {
    let (jobs, queue) = channel::<JobRequest>();
    std::thread::Builder::new()
        .name("learning".into())
        .spawn(move || {
            lower_priority();
            for (job, done) in queue {
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    learning.run(job);
                }));
                if outcome.is_err() {
                    tracing::error!(update_id = job.id, "a learning job panicked");
                    learning.lock().running = None;
                }
                let _ = done.send(());
            }
        })?;
    Ok(jobs)
}

/// Niceness of the learning thread: 10 gives it about a tenth of a core's share when serving
/// threads compete for the CPU, and all of an idle one.
const LEARNING_NICENESS: libc::c_int = 10;

#[cfg(target_os = "linux")]
fn lower_priority() {
    // SAFETY: both calls only read or set scheduling attributes of the calling thread (Linux
    // threads are tasks with their own nice value); no memory is passed.
    let result = unsafe {
        let thread = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, thread, LEARNING_NICENESS)
    };
    if result != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot lower the learning thread's priority");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}
