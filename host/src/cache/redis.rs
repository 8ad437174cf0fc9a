//! The Redis cache. Redis is shared by every recohost process and survives their restarts;
//! it is also a network service that can be down, slow or restarted, and none of that may
//! reach a client:
//!
//! - every command has a deadline (`timeout_ms`); a slower answer is a fault;
//! - after a fault the cache is skipped for `retry_after_ms` (requests go uncached at full
//!   speed instead of each waiting for a dead server), then tried again;
//! - the connection is made lazily and remade after a fault, so recohost starts without
//!   Redis and picks it up when it arrives.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redis::aio::ConnectionManager;

use super::{CacheFuture, CacheStats, RecommendationCache};
use crate::config::CacheConfig;

pub struct RedisCache {
    client: redis::Client,
    state: Mutex<State>,
    /// Serializes connection attempts: one request connects while the others go uncached.
    connecting: tokio::sync::Mutex<()>,
    timeout: Duration,
    retry_after: Duration,
    ttl_secs: u64,
    stats: CacheStats,
}

#[derive(Default)]
struct State {
    connection: Option<ConnectionManager>,
    /// No attempts before this instant (after a fault).
    paused_until: Option<Instant>,
}

impl RedisCache {
    pub fn new(config: &CacheConfig) -> anyhow::Result<Self> {
        let client = redis::Client::open(config.redis_url.as_str()).map_err(|e| {
            anyhow::anyhow!(
                "[cache] redis_url {:?} is not a Redis URL: {e}",
                config.redis_url
            )
        })?;
        Ok(Self {
            client,
            state: Mutex::new(State::default()),
            connecting: tokio::sync::Mutex::new(()),
            timeout: Duration::from_millis(config.timeout_ms),
            retry_after: Duration::from_millis(config.retry_after_ms),
            ttl_secs: config.ttl_secs,
            stats: CacheStats::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A connection, or `None` when paused after a fault or when connecting fails (a fault).
    /// `lookup`: a skipped lookup counts as bypassed (a skipped store does not).
    async fn connection(&self, lookup: bool) -> Option<ConnectionManager> {
        let bypassed = || {
            if lookup {
                CacheStats::count(&self.stats.bypassed);
            }
        };
        {
            let state = self.lock();
            if state.paused_until.is_some_and(|t| Instant::now() < t) {
                bypassed();
                return None;
            }
            if let Some(connection) = &state.connection {
                return Some(connection.clone());
            }
        }
        let Ok(_guard) = self.connecting.try_lock() else {
            // Someone else is connecting: do not queue behind them.
            bypassed();
            return None;
        };
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(0);
        let connecting = ConnectionManager::new_with_config(self.client.clone(), config);
        match tokio::time::timeout(self.timeout, connecting).await {
            Ok(Ok(connection)) => {
                tracing::info!("connected to the Redis cache");
                self.lock().connection = Some(connection.clone());
                Some(connection)
            }
            Ok(Err(error)) => {
                self.fault(&error.to_string());
                None
            }
            Err(_) => {
                self.fault("connecting timed out");
                None
            }
        }
    }

    /// Counts a fault, drops the connection and pauses the cache.
    fn fault(&self, reason: &str) {
        CacheStats::count(&self.stats.faults);
        let mut state = self.lock();
        let first = state.connection.is_some() || state.paused_until.is_none();
        state.connection = None;
        state.paused_until = Some(Instant::now() + self.retry_after);
        drop(state);
        if first {
            tracing::warn!(
                reason,
                "Redis cache fault; serving uncached and retrying later"
            );
        }
    }
}

impl RedisCache {
    /// Runs one command under the deadline; an error or a timeout is a fault.
    async fn command<T>(
        &self,
        name: &str,
        command: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Option<T> {
        match tokio::time::timeout(self.timeout, command).await {
            Ok(Ok(value)) => Some(value),
            Ok(Err(error)) => {
                self.fault(&error.to_string());
                None
            }
            Err(_) => {
                self.fault(&format!("{name} timed out"));
                None
            }
        }
    }
}

impl RecommendationCache for RedisCache {
    fn get<'a>(&'a self, key: &'a str) -> CacheFuture<'a, Option<Vec<u8>>> {
        Box::pin(async move {
            let mut connection = self.connection(true).await?;
            let found: Option<Vec<u8>> = self.command("GET", connection.get(key)).await?;
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
            let Some(mut connection) = self.connection(false).await else {
                return;
            };
            let set = connection.set_ex::<_, _, ()>(key, value, self.ttl_secs);
            if self.command("SET", set).await.is_some() {
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
