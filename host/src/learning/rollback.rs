//! Rolling a plugin back to the model version before the one now serving, and holding it
//! there: the previous model serves again (under a new version number, so that every node
//! of a cluster and every cache sees a change), and updates skip the plugin until a retrain
//! of it passes model monitoring's quality test (or an operator retrains it).
//!
//! The models a plugin served before are kept in memory as they are replaced (their
//! snapshots are `Arc`s already held), because snapshots are stored only every
//! `snapshot_interval_secs` and the version to restore may never have been. For a plugin
//! with `auto_rollback`, model monitoring **pins** each version it accepts ([`Learning::pin`]):
//! that model, and every one since (the versions a quality decision may span), are kept, at
//! most [`LINEAGE_KEPT`] besides the pinned one; an automatic rollback restores exactly the
//! pinned version. Other plugins keep their previous model only (what a manual rollback
//! restores). Each is a whole model: memory grows by a model per version kept.

use std::sync::Arc;

use serde::Serialize;
use serde_json::json;

use super::Learning;
use crate::plugins::{ModelVersion, PluginRuntime};
use crate::store::{LearningRun, unix_now, unix_now_ms};

/// Earlier models kept per plugin.
pub const LINEAGE_KEPT: usize = 64;

/// A plugin held on a restored model.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Hold {
    /// The version that was serving when it was rolled back.
    pub bad_version: u64,
    /// The version whose model serves again, and the number it serves under now.
    pub restored_version: u64,
    pub serving_version: u64,
    pub since_ms: u64,
    pub reason: String,
}

/// Why a rollback could not be done.
#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    #[error("unknown plugin `{0}`")]
    UnknownPlugin(String),
    #[error("this node is not the learner of its cluster: ask the one that is")]
    NotLearner,
    #[error("plugin `{0}` has no earlier model to go back to since this server started")]
    NothingToRestore(String),
    #[error("cannot roll back `{plugin}`: {error}")]
    Failed { plugin: String, error: String },
}

/// Whether a model of `version` may be restored when `bad` is rolled back, given the
/// plugin's hold: never one of the line a previous rollback left (from its bad version to
/// the copy it installed), and, when the restored model itself is found bad (its copy, or
/// a version learned from it), not the restored model again.
fn restorable(version: u64, bad: u64, held: Option<&Hold>) -> bool {
    let Some(hold) = held else { return true };
    // The copy a rollback installed (`serving_version`) is the restored model, not the bad
    // line: a failed retrain goes back to it.
    let in_bad_line = (hold.bad_version..hold.serving_version).contains(&version);
    // Held plugins do not update: what comes after the copy is a retrain, which failing
    // sends back to the restored model; the copy failing sends back further.
    let restored_failed = bad == hold.serving_version;
    let the_failed_restored = restored_failed && version == hold.restored_version;
    !(in_bad_line || the_failed_restored)
}

impl Learning {
    /// Keeps `plugin`'s model of `version` (monitoring accepted it): what an automatic
    /// rollback restores. Earlier kept models are let go.
    /// Whether it was found (it may have left memory: a new learner, or many versions).
    pub fn pin(&self, plugin: &str, version: u64) -> bool {
        if !self.auto_rollback.contains(plugin) {
            return true;
        }
        let Some(plugin) = self.plugins.get(plugin) else {
            return false;
        };
        let serving = plugin.model();
        let mut state = self.lock();
        let lineage = state.lineage.entry(plugin.name().to_string()).or_default();
        let found = lineage
            .iter()
            .chain(serving.iter())
            .find(|m| m.version == version)
            .cloned();
        let Some(model) = found else {
            return false;
        };
        lineage.retain(|m| m.version > version);
        state.pinned.insert(plugin.name().to_string(), model);
        true
    }

    /// Remembers `plugin`'s model that `next` replaces (call before installing `next`).
    pub(super) fn remember_replaced(&self, plugin: &PluginRuntime) {
        if let Some(current) = plugin.model() {
            let mut state = self.lock();
            let lineage = state.lineage.entry(plugin.name().to_string()).or_default();
            lineage.push_back(current);
            let kept = if self.auto_rollback.contains(plugin.name()) {
                LINEAGE_KEPT
            } else {
                1
            };
            while lineage.len() > kept {
                lineage.pop_front();
            }
        }
    }

    /// The version `plugin` serves now.
    pub fn plugin_version(&self, plugin: &str) -> Option<u64> {
        self.plugins.get(plugin)?.model_version()
    }

    /// The plugin's hold, if it is held.
    pub fn hold(&self, plugin: &str) -> Option<Hold> {
        self.lock().held.get(plugin).cloned()
    }

    /// Lets a held plugin learn again (its retrain passed the quality test).
    pub fn release(&self, plugin: &str) -> Option<Hold> {
        let released = self.lock().held.remove(plugin);
        if released.is_some() {
            tracing::info!(
                plugin,
                "the plugin's retrained model passed; it learns again"
            );
        }
        released
    }

    /// Serves `plugin`'s model from before `bad_version` again (the newest kept model older
    /// than it; `None`: older than the one serving), holds the plugin, and records it as a
    /// learning run (kind `rollback`, trigger `monitoring` or `manual`).
    /// `restore`: this version (an automatic rollback restores the version monitoring last
    /// accepted), or the newest kept before it if it is not kept; `None`: the newest kept
    /// model before `bad_version`.
    pub fn roll_back(
        &self,
        plugin_name: &str,
        bad_version: Option<u64>,
        restore: Option<u64>,
        reason: &str,
        manual: bool,
    ) -> Result<Hold, RollbackError> {
        if !self.is_learner() {
            return Err(RollbackError::NotLearner);
        }
        let plugin: Arc<PluginRuntime> = self
            .plugins
            .get(plugin_name)
            .ok_or_else(|| RollbackError::UnknownPlugin(plugin_name.to_string()))?;
        // One install at a time for a plugin: a job learning it finishes first.
        let _installing = self.installing.lock().unwrap_or_else(|p| p.into_inner());
        let failed = |error: String| RollbackError::Failed {
            plugin: plugin_name.to_string(),
            error,
        };
        let serving = plugin
            .model()
            .ok_or_else(|| RollbackError::NothingToRestore(plugin_name.to_string()))?;
        let bad = bad_version.unwrap_or(serving.version);
        let restore: ModelVersion = {
            let state = self.lock();
            let held = state.held.get(plugin_name);
            let kept: Vec<&ModelVersion> = state
                .pinned
                .get(plugin_name)
                .into_iter()
                .chain(state.lineage.get(plugin_name).into_iter().flatten())
                .collect();
            let candidates = kept
                .into_iter()
                .filter(|m| m.version < bad && restorable(m.version, bad, held));
            // The exact version asked for, else the newest kept before it.
            candidates
                .filter(|m| restore.is_none_or(|version| m.version <= version))
                .max_by_key(|m| m.version)
                .cloned()
                .ok_or_else(|| RollbackError::NothingToRestore(plugin_name.to_string()))?
        };
        let started_at_ms = unix_now_ms();
        let started = std::time::Instant::now();
        let version = self
            .store
            .allocate_model_versions(
                &[plugin_name],
                restore.through_event,
                self.learner.fence().as_ref(),
            )
            .map_err(|e| failed(e.to_string()))?
            .first()
            .copied()
            .ok_or_else(|| failed("no version number".into()))?;
        self.remember_replaced(&plugin);
        plugin
            .install(ModelVersion {
                version,
                snapshot: restore.snapshot.clone(),
                created_at: unix_now(),
                through_event: restore.through_event,
            })
            .map_err(|e| failed(e.to_string()))?;
        let hold = Hold {
            bad_version: bad,
            restored_version: restore.version,
            serving_version: version,
            since_ms: started_at_ms,
            reason: reason.to_string(),
        };
        let update_id = {
            let mut state = self.lock();
            state.held.insert(plugin_name.to_string(), hold.clone());
            state.failing.remove(plugin_name);
            let id = state.next_job_id;
            state.next_job_id += 1;
            id
        };
        tracing::warn!(
            plugin = plugin_name,
            bad_version = bad,
            restored_version = restore.version,
            serving_version = version,
            reason,
            "rolled back; the plugin is held until a retrain passes"
        );
        let run = LearningRun {
            update_id,
            kind: "rollback".into(),
            trigger: if manual { "manual" } else { "monitoring" }.into(),
            started_at_ms,
            duration_ms: started.elapsed().as_secs_f64() * 1e3,
            feedback_count: 0,
            through_event: restore.through_event,
            models_updated: 1,
            outcomes: [(
                plugin_name.to_string(),
                json!({
                    "status": "rolled_back",
                    "model_version": version,
                    "restored_version": restore.version,
                    "bad_version": bad,
                    "reason": reason,
                }),
            )]
            .into_iter()
            .collect(),
        };
        if let Err(error) = self.store.record_learning_run(&run) {
            tracing::error!(%error, "cannot record the rollback");
        }
        {
            let mut state = self.lock();
            state.runs += 1;
            state.last_run = Some(run);
        }
        // Stored at once, on one node too: a crash before the next snapshot must not bring
        // the bad model back.
        if let Err(error) = super::job::save_snapshot(&self.store, &plugin) {
            tracing::error!(error = %format!("{error:#}"), "cannot store the restored model");
        } else if self.publish_each_version
            && let Err(error) = self
                .store
                .announce(crate::cluster::MODELS_CHANNEL, &update_id.to_string())
        {
            tracing::warn!(%error, "cannot announce the restored model; the other nodes poll");
        }
        Ok(hold)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_rollback_never_restores_a_bad_line_or_the_failed_restored_model() {
        // Versions 1 (good) and 2 (bad); version 2 rolled back: 1 serves again as 3.
        let hold = Hold {
            bad_version: 2,
            restored_version: 1,
            serving_version: 3,
            since_ms: 0,
            reason: String::new(),
        };
        // A retrain (4) found bad: back to the restored model (or its copy), not to the bad 2.
        assert!(restorable(3, 4, Some(&hold)), "the restored copy");
        assert!(!restorable(2, 4, Some(&hold)));
        assert!(restorable(1, 4, Some(&hold)));
        // The restored copy (3) itself found bad: older than the restored 1 only.
        assert!(!restorable(1, 3, Some(&hold)));
        assert!(restorable(0, 3, Some(&hold)));
        assert!(restorable(2, 3, None), "without a hold, anything older");
    }
}
