//! The Redis cache. Redis is shared by every recohost process and survives their restarts;
//! it is also a network service that can be down, slow or restarted, and none of that may
//! reach a client: commands have a deadline (`timeout_ms`), and after a fault the cache is
//! skipped for `retry_after_ms` (requests go uncached), see [`RedisLink`].

use std::time::Duration;

use redis::AsyncCommands;

use super::{CacheFuture, CacheStats, RecommendationCache};
use crate::config::CacheConfig;
use crate::redis_link::{RedisLink, Skipped};

pub struct RedisCache {
    link: RedisLink,
    ttl_secs: u64,
    stats: CacheStats,
}

impl RedisCache {
    pub fn new(config: &CacheConfig) -> anyhow::Result<Self> {
        let stats = CacheStats::default();
        let link = RedisLink::new(
            &config.redis_url,
            "cache",
            Duration::from_millis(config.timeout_ms),
            Duration::from_millis(config.retry_after_ms),
            stats.faults.clone(),
        )
        .map_err(|e| anyhow::anyhow!("[cache] redis_url: {e}"))?;
        Ok(Self {
            link,
            ttl_secs: config.ttl_secs,
            stats,
        })
    }
}

impl RecommendationCache for RedisCache {
    fn get<'a>(&'a self, key: &'a str) -> CacheFuture<'a, Option<Vec<u8>>> {
        Box::pin(async move {
            let mut connection = match self.link.connection().await {
                Ok(connection) => connection,
                Err(skipped) => {
                    if skipped == Skipped::Paused {
                        CacheStats::count(&self.stats.bypassed);
                    }
                    return None;
                }
            };
            let found: Option<Vec<u8>> = self.link.command("GET", connection.get(key)).await?;
            CacheStats::count(if found.is_some() {
                &self.stats.hits
            } else {
                &self.stats.misses
            });
            found
        })
    }

    fn put(&self, key: String, value: Vec<u8>) -> CacheFuture<'_, ()> {
        Box::pin(async move {
            let Ok(mut connection) = self.link.connection().await else {
                return;
            };
            let set = connection.set_ex::<_, _, ()>(key, value, self.ttl_secs);
            if self.link.command("SET", set).await.is_some() {
                CacheStats::count(&self.stats.stores);
            }
        })
    }

    fn stats(&self) -> &CacheStats {
        &self.stats
    }

    fn backend(&self) -> &'static str {
        "redis"
    }
}
