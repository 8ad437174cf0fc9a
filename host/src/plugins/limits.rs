//! Per-plugin resource limits, from the plugin's `[plugins.limits]` table.

use std::time::Duration;

use serde::Deserialize;

/// Limits enforced on every instance of one plugin. Defaults suit the bundled plugins on
/// catalogs of a few thousand items; raise them for bigger models.
#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq, utoipa::ToSchema)]
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
    /// Most entries a `recommend` answer may hold; a longer answer is refused whole (a
    /// plugin that returns more than it was asked for, within this, is cut to the count).
    pub max_result_items: usize,
    /// Largest model snapshot `save` may return, in MiB.
    pub max_snapshot_mb: u64,
    /// Log messages (`host-log`) one call may send, in bytes; the rest are dropped.
    pub max_log_bytes_per_call: usize,
    /// Serving failures in a row after which the plugin is unhealthy and skipped.
    pub failures_before_unhealthy: u32,
    /// How long an unhealthy plugin is skipped before one request probes it, in
    /// milliseconds; doubled after each failed probe, up to `max_backoff_ms`.
    pub backoff_ms: u64,
    pub max_backoff_ms: u64,
}

impl Default for PluginLimits {
    fn default() -> Self {
        Self {
            memory_mb: 512,
            // Thousands of times a typical call (tens of microseconds to a few ms), and short
            // enough that a looping plugin's failures cost little before its breaker opens.
            recommend_ms: 250,
            update_ms: 60_000,
            train_ms: 300_000,
            serving_instances: 0,
            max_result_items: 10_000,
            max_snapshot_mb: 256,
            max_log_bytes_per_call: 64 * 1024,
            failures_before_unhealthy: 3,
            backoff_ms: 1_000,
            max_backoff_ms: 60_000,
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

    pub fn max_snapshot_bytes(&self) -> usize {
        usize::try_from(self.max_snapshot_mb.saturating_mul(1024 * 1024)).unwrap_or(usize::MAX)
    }

    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("memory_mb", self.memory_mb),
            ("recommend_ms", self.recommend_ms),
            ("update_ms", self.update_ms),
            ("train_ms", self.train_ms),
            ("max_result_items", self.max_result_items as u64),
            ("max_snapshot_mb", self.max_snapshot_mb),
            (
                "failures_before_unhealthy",
                u64::from(self.failures_before_unhealthy),
            ),
            ("backoff_ms", self.backoff_ms),
            ("max_backoff_ms", self.max_backoff_ms),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err(format!("limits.{name} must be positive"));
        }
        if self.max_backoff_ms < self.backoff_ms {
            return Err("limits.max_backoff_ms must be at least limits.backoff_ms".into());
        }
        Ok(())
    }
}
