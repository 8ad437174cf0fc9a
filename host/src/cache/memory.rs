//! The in-process cache (moka): bounded by entry count, entries expire after the TTL.

use std::time::Duration;

use super::{CacheFuture, CacheStats, RecommendationCache};
use crate::config::CacheConfig;

pub struct MemoryCache {
    entries: moka::sync::Cache<String, Vec<u8>>,
    stats: CacheStats,
}

impl MemoryCache {
    pub fn new(config: &CacheConfig) -> Self {
        Self {
            entries: moka::sync::Cache::builder()
                .max_capacity(config.max_entries)
                .time_to_live(Duration::from_secs(config.ttl_secs))
                .build(),
            stats: CacheStats::default(),
        }
    }
}

impl RecommendationCache for MemoryCache {
    fn get<'a>(&'a self, key: &'a str) -> CacheFuture<'a, Option<Vec<u8>>> {
        let found = self.entries.get(key);
        CacheStats::count(if found.is_some() {
            &self.stats.hits
        } else {
            &self.stats.misses
        });
        Box::pin(async move { found })
    }

    fn put(&self, key: String, value: Vec<u8>) -> CacheFuture<'_, ()> {
        self.entries.insert(key, value);
        CacheStats::count(&self.stats.stores);
        Box::pin(async {})
    }

    fn stats(&self) -> &CacheStats {
        &self.stats
    }

    fn backend(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hit_miss_and_expiry() {
        let config = CacheConfig {
            ttl_secs: 1,
            ..CacheConfig::default()
        };
        let cache = MemoryCache::new(&config);
        assert_eq!(cache.get("k").await, None);
        cache.put("k".into(), vec![1, 2]).await;
        assert_eq!(cache.get("k").await, Some(vec![1, 2]));
        let report = cache.stats().report("memory");
        assert_eq!((report.hits, report.misses, report.stores), (1, 1, 1));
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        assert_eq!(cache.get("k").await, None, "expired after the TTL");
    }
}
