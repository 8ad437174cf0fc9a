//! A cluster's users in Redis: the online feature store the nodes share.
//!
//! Per user (dense index `U`, keys under `rh:f:1:{store_id}:`): `u:U`, a hash of `t` (their
//! newest event id included) and `n` (their event count); `h:U`, their newest events, newest
//! first, trimmed to `history_limit`; `x:U`, the set of every item they had an event with.
//! Keys expire a week after their last write (an idle user is rebuilt when they return).
//!
//! **Writes.** The event writer of the node that stored an event writes it to Redis right
//! after the database commit, before the node counts it as known; every node's writer also
//! writes the events it takes in from the others, so an event whose node died before
//! writing still arrives. A write carries the user's previous event id and applies only on
//! top of exactly that state (a Lua script, atomic): Redis holds each user as a complete
//! prefix of their events, never with a gap. A write that finds another state (a node's
//! events arriving out of order, a user Redis lost) deletes the user instead, and the next
//! read rebuilds them.
//!
//! **Reads.** A node knows each user's newest event id from the event log it follows.
//! Features with that id or a newer one are current: from this node's cache of recent
//! users, else from Redis. Anything older, missing, or Redis away: read from PostgreSQL (one
//! snapshot, by the `events_by_user` index) and written back to Redis. Redis is never the
//! only copy of anything, so a Redis restart, a lost write or a flushed key costs a read
//! from PostgreSQL, never a wrong answer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::catalog::{Users, to_feedback};
use crate::config::CacheConfig;
use crate::features::{FeatureReport, UserFeatures};
use crate::plugins::bindings::Feedback;
use crate::redis_link::RedisLink;
use crate::store::{EventKind, EventRow, Store};

/// How long a user's keys stay after their last write.
const KEY_TTL_SECS: u64 = 7 * 24 * 3_600;
/// Most bytes of features a node keeps in its cache of recent users.
const LOCAL_CACHE_BYTES: u64 = 64 * 1024 * 1024;
/// Most events written to Redis by one script call (one call holds Redis up).
const EVENTS_PER_WRITE: usize = 1_000;
/// Event kinds by their byte in a packed event.
const KINDS: [EventKind; 4] = [
    EventKind::Rate,
    EventKind::Click,
    EventKind::View,
    EventKind::Purchase,
];

/// Appends events on top of the exact state they follow; deletes a user found otherwise.
/// ARGV: prefix, history limit, TTL, then per event: user, id, previous id, packed, item.
const APPEND: &str = r"
local prefix, limit, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
for i = 4, #ARGV, 5 do
  local user, id, previous = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local meta, history, items = prefix .. 'u:' .. user, prefix .. 'h:' .. user, prefix .. 'x:' .. user
  local through = tonumber(redis.call('HGET', meta, 't') or '0')
  if through == previous then
    redis.call('HSET', meta, 't', id)
    redis.call('HINCRBY', meta, 'n', 1)
    redis.call('LPUSH', history, ARGV[i + 3])
    redis.call('LTRIM', history, 0, limit - 1)
    redis.call('SADD', items, ARGV[i + 4])
    redis.call('EXPIRE', meta, ttl)
    redis.call('EXPIRE', history, ttl)
    redis.call('EXPIRE', items, ttl)
  elseif through < id then
    redis.call('DEL', meta, history, items)
  end
end
return 0
";

/// Replaces a user's state with a newer one read from the database.
/// KEYS: meta, history, items. ARGV: through, count, TTL, number of events, the events
/// (packed, newest first), then the items.
const REBUILD: &str = r"
local through = tonumber(redis.call('HGET', KEYS[1], 't') or '0')
if through >= tonumber(ARGV[1]) and redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('HSET', KEYS[1], 't', ARGV[1], 'n', ARGV[2])
local events = tonumber(ARGV[4])
for i = 5, 4 + events, 500 do
  redis.call('RPUSH', KEYS[2], unpack(ARGV, i, math.min(i + 499, 4 + events)))
end
for i = 5 + events, #ARGV, 500 do
  redis.call('SADD', KEYS[3], unpack(ARGV, i, math.min(i + 499, #ARGV)))
end
for _, key in ipairs(KEYS) do redis.call('EXPIRE', key, tonumber(ARGV[3])) end
return 1
";

pub struct SharedFeatures {
    link: RedisLink,
    /// The writes' connection (the event writer's thread, and rebuilds on blocking
    /// threads), made when first needed and after a fault.
    writes: Mutex<Option<redis::Connection>>,
    append: redis::Script,
    rebuild: redis::Script,
    /// `rh:f:1:{store_id}:`: one Redis may serve several databases.
    prefix: String,
    users: Arc<RwLock<Users>>,
    /// For reads Redis cannot answer (blocking: called on blocking threads).
    store: Arc<Store>,
    /// The catalog's size: events of items beyond it are not served from.
    items: u32,
    history_limit: usize,
    /// Features of users this node served lately.
    local: moka::sync::Cache<u32, Arc<UserFeatures>>,
    local_hits: AtomicU64,
    shared_hits: AtomicU64,
    rebuilds: AtomicU64,
    unavailable: AtomicU64,
    faults: Arc<AtomicU64>,
}

impl SharedFeatures {
    /// The feature store in the Redis of `cache` (the cluster's Redis), for the database
    /// `store_id`; `store` answers what Redis cannot.
    pub fn new(
        cache: &CacheConfig,
        store_id: &str,
        users: Arc<RwLock<Users>>,
        store: Arc<Store>,
        items: u32,
        history_limit: usize,
    ) -> anyhow::Result<Self> {
        let faults = Arc::new(AtomicU64::new(0));
        let link = RedisLink::new(
            &cache.redis_url,
            "feature store",
            Duration::from_millis(cache.timeout_ms),
            Duration::from_millis(cache.retry_after_ms),
            faults.clone(),
        )
        .map_err(|e| anyhow::anyhow!("[cache] redis_url: {e}"))?;
        let local = moka::sync::Cache::builder()
            .max_capacity(LOCAL_CACHE_BYTES)
            .weigher(|_, features: &Arc<UserFeatures>| {
                let bytes = 64
                    + features.history.len() * std::mem::size_of::<Feedback>()
                    + features.exclude.len() * 4;
                u32::try_from(bytes).unwrap_or(u32::MAX)
            })
            .build();
        Ok(Self {
            link,
            writes: Mutex::new(None),
            append: redis::Script::new(APPEND),
            rebuild: redis::Script::new(REBUILD),
            prefix: format!("rh:f:1:{store_id}:"),
            users,
            store,
            items,
            history_limit,
            local,
            local_hits: AtomicU64::new(0),
            shared_hits: AtomicU64::new(0),
            rebuilds: AtomicU64::new(0),
            unavailable: AtomicU64::new(0),
            faults,
        })
    }

    pub fn report(&self) -> FeatureReport {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        FeatureReport {
            backend: "redis",
            local_hits: load(&self.local_hits),
            shared_hits: load(&self.shared_hits),
            rebuilds: load(&self.rebuilds),
            unavailable: load(&self.unavailable),
            faults: load(&self.faults),
        }
    }

    fn key(&self, kind: &str, user: u32) -> String {
        format!("{}{kind}:{user}", self.prefix)
    }

    pub(super) async fn user(self: &Arc<Self>, index: u32) -> UserFeatures {
        let newest = self
            .users
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .newest_event(index);
        if newest == 0 {
            return UserFeatures::default();
        }
        let cached = self.local.get(&index);
        if let Some(features) = cached.as_ref().filter(|f| f.through >= newest) {
            self.local_hits.fetch_add(1, Ordering::Relaxed);
            return (**features).clone();
        }
        if let Some(features) = self.read_redis(index).await.filter(|f| f.through >= newest) {
            self.shared_hits.fetch_add(1, Ordering::Relaxed);
            self.local.insert(index, Arc::new(features.clone()));
            return features;
        }
        let this = self.clone();
        let read = tokio::task::spawn_blocking(move || this.rebuild(index)).await;
        match read {
            Ok(Ok(features)) => {
                self.rebuilds.fetch_add(1, Ordering::Relaxed);
                self.local.insert(index, Arc::new(features.clone()));
                features
            }
            Ok(Err(error)) => {
                self.unavailable.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, user = index, "cannot read a user's history; serving without it");
                // The newest copy this node has, marked incomplete: better than nothing,
                // and never cached under the user's version.
                let mut stale = cached.map(|f| (*f).clone()).unwrap_or_default();
                stale.through = -1;
                stale
            }
            Err(error) => {
                self.unavailable.fetch_add(1, Ordering::Relaxed);
                tracing::error!(%error, "a feature read panicked");
                UserFeatures {
                    through: -1,
                    ..UserFeatures::default()
                }
            }
        }
    }

    /// The user's features in Redis, if Redis answers and has them.
    async fn read_redis(&self, index: u32) -> Option<UserFeatures> {
        let mut connection = self.link.connection().await.ok()?;
        let limit = isize::try_from(self.history_limit).unwrap_or(isize::MAX);
        let mut pipe = redis::pipe();
        pipe.cmd("HMGET")
            .arg(self.key("u", index))
            .arg("t")
            .arg("n")
            .cmd("LRANGE")
            .arg(self.key("h", index))
            .arg(0)
            .arg(limit - 1)
            .cmd("SMEMBERS")
            .arg(self.key("x", index));
        type Answer = ((Option<i64>, Option<u64>), Vec<Vec<u8>>, Vec<u32>);
        let ((through, count), packed, mut exclude): Answer = self
            .link
            .command("feature read", pipe.query_async(&mut connection))
            .await?;
        let (through, version) = (through?, count?);
        let history = packed
            .iter()
            .map(|bytes| unpack(index, bytes))
            .collect::<Option<Vec<_>>>()?;
        exclude.sort_unstable();
        Some(UserFeatures {
            version,
            through,
            history,
            exclude,
        })
    }

    /// Reads the user from the database and writes them back to Redis (best effort).
    fn rebuild(&self, index: u32) -> anyhow::Result<UserFeatures> {
        let read = self
            .store
            .user_history(index, self.items, self.history_limit)?;
        let mut rebuild = self.rebuild.prepare_invoke();
        rebuild
            .key(self.key("u", index))
            .key(self.key("h", index))
            .key(self.key("x", index))
            .arg(read.through)
            .arg(read.count)
            .arg(KEY_TTL_SECS)
            .arg(read.recent.len());
        for event in &read.recent {
            rebuild.arg(pack(event));
        }
        for item in &read.items {
            rebuild.arg(item);
        }
        self.write(|connection| rebuild.invoke::<i64>(connection).map(drop));
        Ok(UserFeatures {
            version: read.count,
            through: read.through,
            history: read.recent.iter().map(to_feedback).collect(),
            exclude: read.items,
        })
    }

    pub(super) fn recorded(&self, events: &[(EventRow, i64)]) {
        for chunk in events.chunks(EVENTS_PER_WRITE) {
            let mut append = self.append.prepare_invoke();
            append
                .arg(&self.prefix)
                .arg(self.history_limit)
                .arg(KEY_TTL_SECS);
            for (event, previous) in chunk {
                append
                    .arg(event.user)
                    .arg(event.id)
                    .arg(*previous)
                    .arg(pack(event))
                    .arg(event.item);
            }
            if !self.write(|connection| append.invoke::<i64>(connection).map(drop)) {
                // What was not written is read from the database when next asked for.
                return;
            }
        }
    }

    /// Runs `command` on the writes' connection. Skipped while Redis is pausing after a
    /// fault; a failure is a fault. Returns whether it ran.
    fn write(
        &self,
        command: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<()>,
    ) -> bool {
        if self.link.is_paused() {
            return false;
        }
        let mut writes = self.writes.lock().unwrap_or_else(|p| p.into_inner());
        if writes.is_none() {
            let timeout = self.link.timeout();
            let connection = self
                .link
                .client()
                .get_connection_with_timeout(timeout)
                .and_then(|c| {
                    c.set_read_timeout(Some(timeout))?;
                    c.set_write_timeout(Some(timeout))?;
                    Ok(c)
                });
            match connection {
                Ok(connection) => *writes = Some(connection),
                Err(error) => {
                    self.link.fault(&error.to_string());
                    return false;
                }
            }
        }
        let Some(connection) = writes.as_mut() else {
            return false;
        };
        match command(connection) {
            Ok(()) => true,
            Err(error) => {
                *writes = None;
                self.link.fault(&error.to_string());
                false
            }
        }
    }
}

/// An event as Redis keeps it: item (4 bytes), kind (1), value (4), timestamp (8).
fn pack(event: &EventRow) -> Vec<u8> {
    let kind = KINDS.iter().position(|k| *k == event.kind).unwrap_or(0) as u8;
    let mut bytes = Vec::with_capacity(17);
    bytes.extend_from_slice(&event.item.to_le_bytes());
    bytes.push(kind);
    bytes.extend_from_slice(&event.value.to_le_bytes());
    bytes.extend_from_slice(&event.timestamp.to_le_bytes());
    bytes
}

/// A packed event of `user`, if well-formed.
fn unpack(user: u32, bytes: &[u8]) -> Option<Feedback> {
    let bytes: &[u8; 17] = bytes.try_into().ok()?;
    let (item, rest) = bytes.split_at(4);
    let (kind, rest) = rest.split_at(1);
    let (value, timestamp) = rest.split_at(4);
    Some(to_feedback(&EventRow {
        id: 0,
        user,
        item: u32::from_le_bytes(item.try_into().ok()?),
        kind: *KINDS.get(usize::from(kind[0]))?,
        value: f32::from_le_bytes(value.try_into().ok()?),
        timestamp: u64::from_le_bytes(timestamp.try_into().ok()?),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packed_event_unpacks_to_the_same_feedback() {
        for (i, kind) in KINDS.into_iter().enumerate() {
            let event = EventRow {
                id: 9,
                user: 4,
                item: 70_000 + i as u32,
                kind,
                value: 3.5,
                timestamp: 1_700_000_000,
            };
            // The bindings' type has no `PartialEq`: compared as printed.
            assert_eq!(
                format!("{:?}", unpack(4, &pack(&event))),
                format!("{:?}", Some(to_feedback(&event)))
            );
        }
        assert!(unpack(4, b"short").is_none());
        let mut bad_kind = pack(&EventRow {
            id: 1,
            user: 4,
            item: 1,
            kind: EventKind::Click,
            value: 1.0,
            timestamp: 1,
        });
        bad_kind[4] = 9;
        assert!(unpack(4, &bad_kind).is_none());
    }
}
