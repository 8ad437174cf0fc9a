//! Per-plugin resource limits, from the plugin's `[plugins.limits]` table.

use std::time::Duration;

use serde::Deserialize;

/// Limits enforced on every instance of one plugin. Defaults suit the bundled plugins on
/// catalogs of a few thousand items; raise them for bigger models.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PluginLimits {
    /// Linear memory an instance may grow to, in MiB. Growing past it traps.
    pub memory_mb: u64,
    /// Time budget of one `recommend` or `predict` call, in milliseconds.
    pub recommend_ms: u64,
    /// Time budget of one `update` call, in milliseconds.
    pub update_ms: u64,
    /// Time budget of `train`, and of `configure`, `save` and `load`, in milliseconds.
    pub train_ms: u64,
    /// Idle serving instances kept warm (0 = one per CPU core).
    pub serving_instances: usize,
}

impl Default for PluginLimits {
    fn default() -> Self {
        Self {
            memory_mb: 512,
            recommend_ms: 1_000,
            update_ms: 60_000,
            train_ms: 300_000,
            serving_instances: 0,
        }
    }
}

impl PluginLimits {
    pub fn memory_bytes(&self) -> usize {
        usize::try_from(self.memory_mb.saturating_mul(1024 * 1024)).unwrap_or(usize::MAX)
    }

    pub fn recommend(&self) -> Duration {
        Duration::from_millis(self.recommend_ms)
    }

    pub fn update(&self) -> Duration {
        Duration::from_millis(self.update_ms)
    }

    pub fn train(&self) -> Duration {
        Duration::from_millis(self.train_ms)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.memory_mb == 0
            || self.recommend_ms == 0
            || self.update_ms == 0
            || self.train_ms == 0
        {
            return Err(
                "limits must be positive: memory_mb, recommend_ms, update_ms and train_ms".into(),
            );
        }
        Ok(())
    }
}
