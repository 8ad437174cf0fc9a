//! The recommendation cache: in-process ([`memory`], moka) by default, Redis ([`redis`]) when
//! configured, behind one trait.
//!
//! Keys name everything an answer depends on: the database (its `store_id`: model versions
//! count per database, and one Redis may serve several servers), the plugin, its model
//! version, the request's count, the user's version (how many events the user has; durable,
//! so it never repeats across restarts) and the user. A model update or the user's own feedback therefore moves
//! the key: nothing is ever invalidated by scanning, and a stale answer cannot be found.
//! Users without history share one entry per plugin, model version and count.
//!
//! The cache is an optimization and never an error: a failing or slow backend makes the
//! request go uncached, counts a fault, and the backend is retried after a pause.

pub mod memory;
pub mod redis;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::config::{CacheBackend, CacheConfig};

/// A boxed future, so the trait can be used as `dyn RecommendationCache`.
pub type CacheFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where cached answers live.
pub trait RecommendationCache: Send + Sync {
    /// The entry under `key`; `None` on a miss and on any fault (counted in `stats`).
    fn get<'a>(&'a self, key: &'a str) -> CacheFuture<'a, Option<Vec<u8>>>;
    /// Stores `value` under `key`; failures are counted in `stats`, never returned.
    fn put(&self, key: String, value: Vec<u8>) -> CacheFuture<'_, ()>;
    fn stats(&self) -> &CacheStats;
    /// `memory`, `redis` or `off`.
    fn backend(&self) -> &'static str;
    /// False when nothing is ever stored: callers skip building keys.
    fn stores_anything(&self) -> bool {
        true
    }
}

/// Counters every backend keeps.
#[derive(Debug, Default)]
pub struct CacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub stores: AtomicU64,
    /// Errors and timeouts of the backend (shared with its Redis link, which counts them).
    pub faults: Arc<AtomicU64>,
    /// Requests that went uncached because the backend was pausing after a fault.
    pub bypassed: AtomicU64,
}

/// A copy of the counters, for the API.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct CacheReport {
    pub backend: &'static str,
    pub hits: u64,
    pub misses: u64,
    pub stores: u64,
    pub faults: u64,
    pub bypassed: u64,
    /// hits / (hits + misses + bypassed), `None` before the first lookup.
    pub hit_rate: Option<f64>,
}

impl CacheStats {
    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn report(&self, backend: &'static str) -> CacheReport {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let (hits, misses, bypassed) = (load(&self.hits), load(&self.misses), load(&self.bypassed));
        let lookups = hits + misses + bypassed;
        CacheReport {
            backend,
            hits,
            misses,
            stores: load(&self.stores),
            faults: load(&self.faults),
            bypassed,
            hit_rate: (lookups > 0).then(|| hits as f64 / lookups as f64),
        }
    }
}

/// No cache: every lookup misses.
#[derive(Default)]
pub struct NoCache {
    stats: CacheStats,
}

impl RecommendationCache for NoCache {
    fn get<'a>(&'a self, _key: &'a str) -> CacheFuture<'a, Option<Vec<u8>>> {
        Box::pin(async { None })
    }

    fn put(&self, _key: String, _value: Vec<u8>) -> CacheFuture<'_, ()> {
        Box::pin(async {})
    }

    fn stats(&self) -> &CacheStats {
        &self.stats
    }

    fn backend(&self) -> &'static str {
        "off"
    }

    fn stores_anything(&self) -> bool {
        false
    }
}

/// The configured cache (`clustered`: this node shares its database with others).
pub fn from_config(
    config: &CacheConfig,
    clustered: bool,
) -> anyhow::Result<Arc<dyn RecommendationCache>> {
    Ok(match config.backend_for(clustered) {
        CacheBackend::Off => Arc::new(NoCache::default()),
        CacheBackend::Memory => Arc::new(memory::MemoryCache::new(config)),
        CacheBackend::Redis => Arc::new(redis::RedisCache::new(config)?),
    })
}

/// Where a key's answer came from: this database's id, the plugin and its model version.
#[derive(Clone, Copy, Debug)]
pub struct KeyScope<'a> {
    pub store_id: &'a str,
    pub plugin: &'a str,
    pub model_version: u64,
}

/// The key of a recommendation list. Every part before the user ID is free of `:`, so keys
/// of different requests never collide.
pub fn key(scope: KeyScope<'_>, count: u32, user: Option<(&str, u64)>) -> String {
    let KeyScope {
        store_id,
        plugin,
        model_version,
    } = scope;
    use std::fmt::Write;
    // One allocation (the fixed text and four integers fit in 64 bytes): a key is built on
    // every request.
    let mut key = String::with_capacity(
        64 + store_id.len() + plugin.len() + user.map_or(0, |(id, _)| id.len()),
    );
    let _ = write!(key, "rh:1:{store_id}:{plugin}:{model_version}:{count}");
    let _ = match user {
        Some((user_id, user_version)) => write!(key, ":{user_version}:{user_id}"),
        None => write!(key, ":cold"),
    };
    key
}

/// A checked answer as stored: item indices and scores.
pub fn encode(items: &[(u32, f32)]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(items.len() * 8);
    for (item, score) in items {
        bytes.extend_from_slice(&item.to_le_bytes());
        bytes.extend_from_slice(&score.to_le_bytes());
    }
    bytes
}

/// The inverse of [`encode`]; `None` for bytes it did not write (a foreign or corrupted
/// entry is a miss, not an error).
pub fn decode(bytes: &[u8]) -> Option<Vec<(u32, f32)>> {
    if !bytes.len().is_multiple_of(8) {
        return None;
    }
    bytes
        .chunks_exact(8)
        .map(|chunk| {
            let item = u32::from_le_bytes(chunk[..4].try_into().ok()?);
            let score = f32::from_le_bytes(chunk[4..].try_into().ok()?);
            score.is_finite().then_some((item, score))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_garbage_is_a_miss() {
        let items = vec![(3, 0.5), (1, -2.0), (u32::MAX, 1e9)];
        assert_eq!(decode(&encode(&items)), Some(items));
        assert_eq!(decode(&[1, 2, 3]), None);
        assert_eq!(decode(&encode(&[(1, f32::NAN)])), None);
    }

    #[test]
    fn keys_move_with_the_database_the_model_and_the_user() {
        let scope = |store_id, plugin, model_version| KeyScope {
            store_id,
            plugin,
            model_version,
        };
        let base = key(scope("db1", "hybrid", 3), 10, Some(("u1", 7)));
        assert_ne!(base, key(scope("db2", "hybrid", 3), 10, Some(("u1", 7))));
        assert_ne!(base, key(scope("db1", "hybrid", 4), 10, Some(("u1", 7))));
        assert_ne!(base, key(scope("db1", "hybrid", 3), 10, Some(("u1", 8))));
        assert_ne!(base, key(scope("db1", "hybrid", 3), 5, Some(("u1", 7))));
        assert_ne!(
            base,
            key(scope("db1", "collaborative", 3), 10, Some(("u1", 7)))
        );
        assert_ne!(
            key(scope("db1", "p", 1), 1, Some(("cold", 0))),
            key(scope("db1", "p", 1), 1, None)
        );
    }
}
