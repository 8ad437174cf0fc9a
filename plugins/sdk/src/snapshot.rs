//! Model snapshots: what `save` returns and `load` accepts.
//!
//! A snapshot starts with a header naming the plugin and the snapshot format version, so that
//! bytes from another plugin or from an incompatible version of this one are refused with
//! `invalid-input` instead of being misread. The body is `postcard`, a compact serde format.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::StrategyError;

const MAGIC: &[u8; 4] = b"RCHS";

/// Serializes `model` under a header of `plugin` name and `format` version.
pub fn encode<T: Serialize>(
    plugin: &str,
    format: u32,
    model: &T,
) -> Result<Vec<u8>, StrategyError> {
    let mut bytes = Vec::with_capacity(64);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&format.to_le_bytes());
    bytes.push(u8::try_from(plugin.len()).map_err(|_| internal("plugin name too long"))?);
    bytes.extend_from_slice(plugin.as_bytes());
    postcard::to_extend(model, bytes)
        .map_err(|error| internal(&format!("cannot serialize the model: {error}")))
}

/// Reads a snapshot written by [`encode`] with the same `plugin` and `format`.
pub fn decode<T: DeserializeOwned>(
    plugin: &str,
    format: u32,
    bytes: &[u8],
) -> Result<T, StrategyError> {
    let invalid =
        |reason: String| StrategyError::InvalidInput(format!("snapshot rejected: {reason}"));
    let rest = bytes
        .strip_prefix(MAGIC.as_slice())
        .ok_or_else(|| invalid("not a recohost snapshot".into()))?;
    let (version, rest) = rest
        .split_at_checked(4)
        .ok_or_else(|| invalid("truncated header".into()))?;
    let (name_len, rest) = rest
        .split_first()
        .ok_or_else(|| invalid("truncated header".into()))?;
    let (name, body) = rest
        .split_at_checked(usize::from(*name_len))
        .ok_or_else(|| invalid("truncated header".into()))?;
    if name != plugin.as_bytes() {
        return Err(invalid(format!(
            "it was written by plugin `{}`, not `{plugin}`",
            String::from_utf8_lossy(name)
        )));
    }
    let version = u32::from_le_bytes([version[0], version[1], version[2], version[3]]);
    if version != format {
        return Err(invalid(format!(
            "snapshot format {version}, but this build of `{plugin}` reads format {format}"
        )));
    }
    postcard::from_bytes(body).map_err(|error| invalid(format!("corrupt body: {error}")))
}

fn internal(message: &str) -> StrategyError {
    StrategyError::Internal(message.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_foreign_snapshots() {
        let bytes = encode("pop", 1, &vec![1.5f32, 2.5]).unwrap();
        assert_eq!(
            decode::<Vec<f32>>("pop", 1, &bytes).unwrap(),
            vec![1.5, 2.5]
        );
        assert!(matches!(
            decode::<Vec<f32>>("other", 1, &bytes),
            Err(StrategyError::InvalidInput(_))
        ));
        assert!(matches!(
            decode::<Vec<f32>>("pop", 2, &bytes),
            Err(StrategyError::InvalidInput(_))
        ));
        assert!(matches!(
            decode::<Vec<f32>>("pop", 1, &bytes[..6]),
            Err(StrategyError::InvalidInput(_))
        ));
        assert!(matches!(
            decode::<Vec<f32>>("pop", 1, b"garbage"),
            Err(StrategyError::InvalidInput(_))
        ));
    }
}
