//! Reading a plugin's config: the `config` table of its TOML entry, passed in as JSON.

use serde::de::DeserializeOwned;

use crate::StrategyError;

/// Parses the config JSON into `T`. Give `T` `#[serde(default, deny_unknown_fields)]` so that
/// missing keys take defaults and misspelt keys are refused instead of silently ignored.
pub fn parse<T: DeserializeOwned>(config_json: &str) -> Result<T, StrategyError> {
    let text = if config_json.trim().is_empty() {
        "{}"
    } else {
        config_json
    };
    serde_json::from_str(text)
        .map_err(|error| StrategyError::InvalidInput(format!("invalid plugin config: {error}")))
}

/// Refuses a config value that is not finite and at least `min`.
pub fn require_at_least(name: &str, value: f64, min: f64) -> Result<(), StrategyError> {
    if value.is_finite() && value >= min {
        Ok(())
    } else {
        Err(StrategyError::InvalidInput(format!(
            "invalid plugin config: `{name}` must be a finite number >= {min}, got {value}"
        )))
    }
}
