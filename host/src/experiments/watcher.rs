//! Hot reload: a file watcher on the experiments directory. Changes are debounced (editors
//! and `cp` write in several steps), then the whole directory is reloaded; a half-written or
//! invalid file is rejected and the set in force stays.

use std::sync::Arc;
use std::sync::mpsc::{RecvTimeoutError, channel};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

use super::live::Experiments;

/// Quiet time after the last change before reloading.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// Watches `experiments`' directory until the returned watcher is dropped.
pub fn watch(experiments: Arc<Experiments>) -> notify::Result<Option<notify::RecommendedWatcher>> {
    let Some(dir) = experiments.dir().map(ToOwned::to_owned) else {
        return Ok(None);
    };
    let (changed, changes) = channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        match event {
            // Reads (access events) change nothing.
            Ok(event) if event.kind.is_access() => {}
            Ok(_) => {
                let _ = changed.send(());
            }
            Err(error) => tracing::warn!(%error, "experiments watcher error"),
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    std::thread::Builder::new()
        .name("experiments-watcher".into())
        .spawn(move || {
            while changes.recv().is_ok() {
                loop {
                    match changes.recv_timeout(DEBOUNCE) {
                        Ok(()) => continue,
                        Err(RecvTimeoutError::Timeout) => break,
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
                // A rejected set is logged and kept in the reload status by `reload`.
                let _ = experiments.reload();
            }
        })
        .map_err(|e| notify::Error::generic(&e.to_string()))?;
    tracing::info!(dir = %dir.display(), "watching the experiments directory");
    Ok(Some(watcher))
}
