//! A Redis connection that fails fast. Redis is a network service that can be down, slow or
//! restarted, and what recohost keeps there (cached answers, the cluster's user features)
//! always has another source, so waiting for Redis is never worth more than a few
//! milliseconds:
//!
//! - every command has a deadline (`timeout`); a slower answer is a fault;
//! - after a fault Redis is skipped for `retry_after` (callers go to their other source at
//!   full speed instead of each waiting for a dead server), then tried again;
//! - the connection is made lazily and remade after a fault, so recohost starts without
//!   Redis and picks it up when it arrives.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;

/// Why no connection was handed out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skipped {
    /// Pausing after a fault, or another caller is connecting (nobody queues behind it).
    Paused,
    /// Connecting failed just now (counted as a fault).
    Faulted,
}

pub struct RedisLink {
    client: redis::Client,
    /// What this link is for, in log lines (`cache`, `feature store`).
    what: &'static str,
    state: Mutex<State>,
    /// Serializes connection attempts: one caller connects while the others are skipped.
    connecting: tokio::sync::Mutex<()>,
    timeout: Duration,
    retry_after: Duration,
    faults: Arc<AtomicU64>,
}

#[derive(Default)]
struct State {
    connection: Option<ConnectionManager>,
    /// No attempts before this instant (after a fault).
    paused_until: Option<Instant>,
}

impl RedisLink {
    /// A link to `url` (checked, not connected); faults are counted in `faults`.
    pub fn new(
        url: &str,
        what: &'static str,
        timeout: Duration,
        retry_after: Duration,
        faults: Arc<AtomicU64>,
    ) -> anyhow::Result<Self> {
        let client = redis::Client::open(url)
            .map_err(|e| anyhow::anyhow!("{url:?} is not a Redis URL: {e}"))?;
        Ok(Self {
            client,
            what,
            state: Mutex::new(State::default()),
            connecting: tokio::sync::Mutex::new(()),
            timeout,
            retry_after,
            faults,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The command deadline.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The client, for a blocking connection of a caller's own (the event writer's thread).
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// Whether Redis is being skipped after a fault.
    pub fn is_paused(&self) -> bool {
        self.lock().paused_until.is_some_and(|t| Instant::now() < t)
    }

    /// A connection, unless pausing after a fault or connecting fails (a fault).
    pub async fn connection(&self) -> Result<ConnectionManager, Skipped> {
        {
            let state = self.lock();
            if state.paused_until.is_some_and(|t| Instant::now() < t) {
                return Err(Skipped::Paused);
            }
            if let Some(connection) = &state.connection {
                return Ok(connection.clone());
            }
        }
        let Ok(_guard) = self.connecting.try_lock() else {
            return Err(Skipped::Paused);
        };
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(0);
        let connecting = ConnectionManager::new_with_config(self.client.clone(), config);
        match tokio::time::timeout(self.timeout, connecting).await {
            Ok(Ok(connection)) => {
                tracing::info!(what = self.what, "connected to Redis");
                self.lock().connection = Some(connection.clone());
                Ok(connection)
            }
            Ok(Err(error)) => {
                self.fault(&error.to_string());
                Err(Skipped::Faulted)
            }
            Err(_) => {
                self.fault("connecting timed out");
                Err(Skipped::Faulted)
            }
        }
    }

    /// Counts a fault, drops the connection and pauses.
    pub fn fault(&self, reason: &str) {
        self.faults.fetch_add(1, Ordering::Relaxed);
        let mut state = self.lock();
        let first = state.connection.is_some() || state.paused_until.is_none();
        state.connection = None;
        state.paused_until = Some(Instant::now() + self.retry_after);
        drop(state);
        if first {
            tracing::warn!(
                what = self.what,
                reason,
                "Redis fault; going without it and retrying later"
            );
        }
    }

    /// Runs one command under the deadline; an error or a timeout is a fault (`None`).
    pub async fn command<T>(
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
