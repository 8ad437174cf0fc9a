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
    // Sized first: growing a multi-megabyte buffer by doubling copied it several times.
    let body_len = postcard::serialize_with_flavor(model, postcard::ser_flavors::Size::default())
        .map_err(|error| internal(&format!("cannot serialize the model: {error}")))?;
    let mut bytes = Vec::with_capacity(MAGIC.len() + 5 + plugin.len() + body_len);
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

/// Serde helpers for large numeric fields: `#[serde(with = "snapshot::f32_blob")]` on a
/// `Vec<f32>` or `#[serde(with = "snapshot::byte_blob")]` on a `Vec<u8>` stores it as one
/// length-prefixed block of bytes instead of element by element. For a 1,000 x 1,000 matrix
/// that makes `save` and `load` inside WebAssembly several times faster, and `load` runs for
/// every serving instance after every model update.
pub mod f32_blob {
    use serde::de::{Error, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    // The bytes are the floats' in-memory representation: little-endian in WebAssembly (and on
    // x86 and ARM hosts, where the plugins' native tests run), copied in one block.
    pub fn serialize<S: Serializer>(values: &[f32], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytemuck::cast_slice(values))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<f32>, D::Error> {
        deserializer.deserialize_bytes(FloatsVisitor)
    }

    struct FloatsVisitor;

    impl<'de> Visitor<'de> for FloatsVisitor {
        type Value = Vec<f32>;

        fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
            formatter.write_str("a block of little-endian f32 bytes")
        }

        fn visit_bytes<E: Error>(self, bytes: &[u8]) -> Result<Vec<f32>, E> {
            if !bytes.len().is_multiple_of(4) {
                return Err(E::custom("f32 blob length is not a multiple of 4"));
            }
            Ok(bytemuck::pod_collect_to_vec(bytes))
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<f32>, A::Error> {
            let mut bytes = Vec::new();
            while let Some(byte) = seq.next_element::<u8>()? {
                bytes.push(byte);
            }
            self.visit_bytes(&bytes)
        }
    }
}

/// See [`f32_blob`].
pub mod byte_blob {
    use serde::de::{Error, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        deserializer.deserialize_byte_buf(BytesVisitor)
    }

    struct BytesVisitor;

    impl<'de> Visitor<'de> for BytesVisitor {
        type Value = Vec<u8>;

        fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
            formatter.write_str("a block of bytes")
        }

        fn visit_bytes<E: Error>(self, bytes: &[u8]) -> Result<Vec<u8>, E> {
            Ok(bytes.to_vec())
        }

        fn visit_byte_buf<E: Error>(self, bytes: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(bytes)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
            while let Some(byte) = seq.next_element()? {
                bytes.push(byte);
            }
            Ok(bytes)
        }
    }
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

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Blobs {
        #[serde(with = "f32_blob")]
        floats: Vec<f32>,
        #[serde(with = "byte_blob")]
        bytes: Vec<u8>,
    }

    #[test]
    fn blobs_round_trip_as_single_blocks() {
        let blobs = Blobs {
            floats: vec![1.5, -0.0, f32::MAX, 3e-9],
            bytes: vec![0, 255, 7],
        };
        let encoded = encode("p", 1, &blobs).unwrap();
        assert_eq!(decode::<Blobs>("p", 1, &encoded).unwrap(), blobs);
        // Header (4 + 4 + 1 + 1) + length and 16 float bytes + length and 3 bytes.
        assert_eq!(encoded.len(), 10 + 1 + 16 + 1 + 3);
    }
}
