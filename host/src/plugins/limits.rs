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

    /// Checks every value against its range, naming the key of the first that is outside.
    /// The upper bounds keep the arithmetic on them (deadlines, epoch ticks, backoffs, byte
    /// counts) far from overflow, and are beyond anything a plugin needs.
    pub fn validate(&self) -> Result<(), String> {
        const DAY_MS: u64 = 86_400_000;
        let ranges: [(&str, u64, u64); 11] = [
            // A wasm32 instance addresses at most 4 GiB.
            ("memory_mb", self.memory_mb, 4_096),
            ("recommend_ms", self.recommend_ms, 60_000),
            ("update_ms", self.update_ms, DAY_MS),
            ("train_ms", self.train_ms, DAY_MS),
            ("max_result_items", self.max_result_items as u64, 1_000_000),
            ("max_snapshot_mb", self.max_snapshot_mb, 4_096),
            (
                "max_log_bytes_per_call",
                self.max_log_bytes_per_call as u64,
                16 * 1024 * 1024,
            ),
            (
                "failures_before_unhealthy",
                u64::from(self.failures_before_unhealthy),
                1_000_000,
            ),
            ("backoff_ms", self.backoff_ms, DAY_MS),
            ("max_backoff_ms", self.max_backoff_ms, DAY_MS),
            ("serving_instances", self.serving_instances as u64, 1_024),
        ];
        for (name, value, max) in ranges {
            // 0 serving instances means one per core; a log budget of 0 silences the plugin.
            let may_be_zero = matches!(name, "serving_instances" | "max_log_bytes_per_call");
            if value == 0 && !may_be_zero {
                return Err(format!("limits.{name} must be positive"));
            }
            if value > max {
                return Err(format!("limits.{name} must be at most {max}, got {value}"));
            }
        }
        if self.max_backoff_ms < self.backoff_ms {
            return Err("limits.max_backoff_ms must be at least limits.backoff_ms".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_out_of_range_are_refused_naming_the_key() {
        assert_eq!(PluginLimits::default().validate(), Ok(()));
        let refused = |limits: PluginLimits| limits.validate().unwrap_err();
        assert_eq!(
            refused(PluginLimits {
                recommend_ms: u64::MAX,
                ..PluginLimits::default()
            }),
            "limits.recommend_ms must be at most 60000, got 18446744073709551615"
        );
        assert!(
            refused(PluginLimits {
                memory_mb: 5_000,
                ..PluginLimits::default()
            })
            .starts_with("limits.memory_mb must be at most 4096")
        );
        assert_eq!(
            refused(PluginLimits {
                max_result_items: 0,
                ..PluginLimits::default()
            }),
            "limits.max_result_items must be positive"
        );
        let mut zero_ok = PluginLimits {
            serving_instances: 0,
            max_log_bytes_per_call: 0,
            ..PluginLimits::default()
        };
        assert_eq!(zero_ok.validate(), Ok(()));
        zero_ok.backoff_ms = DAY + 1;
        assert!(
            zero_ok
                .validate()
                .unwrap_err()
                .contains("limits.backoff_ms")
        );
    }

    const DAY: u64 = 86_400_000;
}
