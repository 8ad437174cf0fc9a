//! A cluster's users in Redis: the online feature store the nodes share.
//!
//! Per user (dense index `U`, keys under `rh:f:1:{store_id}:{items}:{history_limit}:`, so
//! nodes serving another catalog size, as during a rolling restart after an import, or
//! another history limit never mix their users):
//! `u:U`, a hash of `t` (their newest event id included), `n` (their event count) and `c`
//! (how many items `x:U` holds); `h:U`, their newest events, newest first, trimmed to
//! `history_limit`; `x:U`, the set of every item they had an event with. Keys expire a week
//! after their last write (an idle user is rebuilt when they return). A user is *whole*
//! when every field is there and the history holds `min(n, history_limit)` events and the
//! set `c` items; reads (one transaction), appends and rebuilds accept only whole users, so
//! a key evicted or left over on its own (Redis under `maxmemory`) makes a rebuild, never an
//! answer without exclusions.
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
use std::time::{Duration, Instant};

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
/// How long reads skip the database after it failed one.
const DATABASE_PAUSE: Duration = Duration::from_secs(1);
/// Most events written to Redis by one script call (one call holds Redis up).
const EVENTS_PER_WRITE: usize = 1_000;
/// Event kinds by their byte in a packed event.
const KINDS: [EventKind; 4] = [
    EventKind::Rate,
    EventKind::Click,
    EventKind::View,
    EventKind::Purchase,
];

/// Whether a user's keys hold a whole state: every field, and a history and item set of
/// the sizes the counts say (a key evicted or left over on its own fails this). Reads check
/// the same in `read_redis`. Defines `whole(meta, history, items, limit)` for the scripts.
const WHOLE: &str = r"
local function whole(meta, history, items, limit)
  local fields = redis.call('HMGET', meta, 't', 'n', 'c')
  local count, listed = tonumber(fields[2]), tonumber(fields[3])
  if fields[1] == false or count == nil or listed == nil then return false end
  return redis.call('LLEN', history) == math.min(count, limit)
    and redis.call('SCARD', items) == listed
end
";

/// Appends events on top of the exact whole state they follow (a first event on nothing,
/// clearing whatever was left of the user), counting the items it adds; deletes a user
/// found otherwise. ARGV: prefix, history limit, TTL, then per event: user, id, previous
/// id, packed, item.
const APPEND: &str = r"
local prefix, limit, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
for i = 4, #ARGV, 5 do
  local user, id, previous = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local meta, history, items = prefix .. 'u:' .. user, prefix .. 'h:' .. user, prefix .. 'x:' .. user
  local through = tonumber(redis.call('HGET', meta, 't') or '0')
  local follows
  if previous == 0 then
    follows = redis.call('EXISTS', meta) == 0
    if follows then redis.call('DEL', history, items) end
  else
    follows = through == previous and whole(meta, history, items, limit)
  end
  if follows then
    redis.call('HSET', meta, 't', id)
    redis.call('HINCRBY', meta, 'n', 1)
    redis.call('HINCRBY', meta, 'c', redis.call('SADD', items, ARGV[i + 4]))
    redis.call('LPUSH', history, ARGV[i + 3])
    redis.call('LTRIM', history, 0, limit - 1)
    redis.call('EXPIRE', meta, ttl)
    redis.call('EXPIRE', history, ttl)
    redis.call('EXPIRE', items, ttl)
  elseif through < id or not whole(meta, history, items, limit) then
    redis.call('DEL', meta, history, items)
  end
end
return 0
";

/// Replaces a user's state with a newer one read from the database, or one not whole.
/// KEYS: meta, history, items. ARGV: through, count, TTL, history limit, number of events,
/// the events (packed, newest first), then the items.
const REBUILD: &str = r"
local through = tonumber(redis.call('HGET', KEYS[1], 't') or '0')
local limit, events = tonumber(ARGV[4]), tonumber(ARGV[5])
if through >= tonumber(ARGV[1]) and whole(KEYS[1], KEYS[2], KEYS[3], limit) then return 0 end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('HSET', KEYS[1], 't', ARGV[1], 'n', ARGV[2], 'c', #ARGV - 5 - events)
for i = 6, 5 + events, 500 do
  redis.call('RPUSH', KEYS[2], unpack(ARGV, i, math.min(i + 499, 5 + events)))
end
for i = 6 + events, #ARGV, 500 do
  redis.call('SADD', KEYS[3], unpack(ARGV, i, math.min(i + 499, #ARGV)))
end
for _, key in ipairs(KEYS) do redis.call('EXPIRE', key, tonumber(ARGV[3])) end
return 1
";

/// Whether reads may go to the database: not for `DATABASE_PAUSE` after a failure, then one
/// read at a time (a probe) until one succeeds, so that a database that hangs holds up one
/// request, not every one.
#[derive(Default)]
struct DatabaseGate {
    paused_until: Option<Instant>,
    probing: bool,
}

pub struct SharedFeatures {
    link: RedisLink,
    /// The event writer's connection, made when first needed and after a fault.
    writes: Mutex<Option<redis::Connection>>,
    /// Rebuilds' connection (blocking threads), apart so that they never hold up events.
    rebuild_writes: Mutex<Option<redis::Connection>>,
    /// After the database failed a read, reads skip it: a request that cannot have a
    /// user's history is answered at once, not after the pool's timeout.
    database: Mutex<DatabaseGate>,
    append: redis::Script,
    rebuild: redis::Script,
    /// `rh:f:1:{store_id}:{items}:{history_limit}:`: one Redis may serve several
    /// databases, and nodes of one database may serve catalogs of other sizes (items are
    /// only ever added) or keep histories of other lengths (a config rollout).
    prefix: String,
    users: Arc<RwLock<Users>>,
    /// For reads Redis cannot answer (blocking: called on blocking threads).
    store: Arc<Store>,
    /// The catalog's size: events of items beyond it are not served from.
    items: u32,
    history_limit: usize,
    /// Features of users this node served lately. Reads of one user that miss it at once
    /// share one read of Redis or the database.
    local: moka::future::Cache<u32, Arc<UserFeatures>>,
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
        let local = moka::future::Cache::builder()
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
            rebuild_writes: Mutex::new(None),
            database: Mutex::new(DatabaseGate::default()),
            append: redis::Script::new(&format!("{WHOLE}{APPEND}")),
            rebuild: redis::Script::new(&format!("{WHOLE}{REBUILD}")),
            prefix: format!("rh:f:1:{store_id}:{items}:{history_limit}:"),
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
        let cached = self.local.get(&index).await;
        if let Some(features) = cached.as_ref() {
            if features.through >= newest {
                self.local_hits.fetch_add(1, Ordering::Relaxed);
                return (**features).clone();
            }
            self.local.invalidate(&index).await;
        }
        let this = self.clone();
        let read = self
            .local
            .try_get_with(index, async move {
                this.read(index, newest).await.map(Arc::new)
            })
            .await;
        match read {
            // Another request's read may have started before this one's newest event.
            Ok(features) if features.through >= newest => (*features).clone(),
            Ok(_) => match self.read(index, newest).await {
                Ok(features) => features,
                Err(error) => self.unavailable(index, cached, &error),
            },
            Err(error) => self.unavailable(index, cached, &error),
        }
    }

    /// The user's features from Redis when current there (at least `newest`), else from the
    /// database (then written back to Redis).
    async fn read(self: &Arc<Self>, index: u32, newest: i64) -> anyhow::Result<UserFeatures> {
        if let Some(features) = self.read_redis(index).await.filter(|f| f.through >= newest) {
            self.shared_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(features);
        }
        {
            let mut gate = self.database.lock().unwrap_or_else(|p| p.into_inner());
            let paused = gate.paused_until.is_some_and(|t| Instant::now() < t);
            if paused || gate.probing {
                anyhow::bail!("the database failed a read lately; not asking it again yet");
            }
            // After a pause, this read is the probe.
            gate.probing = gate.paused_until.is_some();
        }
        let this = self.clone();
        let read = tokio::task::spawn_blocking(move || this.rebuild(index))
            .await
            .unwrap_or_else(|error| Err(anyhow::anyhow!("a database read panicked: {error}")));
        {
            let mut gate = self.database.lock().unwrap_or_else(|p| p.into_inner());
            gate.probing = false;
            gate.paused_until = read.is_err().then(|| Instant::now() + DATABASE_PAUSE);
        }
        self.rebuilds
            .fetch_add(u64::from(read.is_ok()), Ordering::Relaxed);
        read
    }

    /// What is served when nothing could be read: the newest copy this node has, marked
    /// incomplete (better than nothing, and never cached under the user's version).
    fn unavailable(
        &self,
        index: u32,
        cached: Option<Arc<UserFeatures>>,
        error: &dyn std::fmt::Display,
    ) -> UserFeatures {
        self.unavailable.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%error, user = index, "cannot read a user's history; serving without it");
        let mut stale = cached.map(|f| (*f).clone()).unwrap_or_default();
        stale.through = -1;
        stale
    }

    /// The user's features in Redis, if Redis answers and has them.
    async fn read_redis(&self, index: u32) -> Option<UserFeatures> {
        let mut connection = self.link.connection().await.ok()?;
        let limit = isize::try_from(self.history_limit).unwrap_or(isize::MAX);
        let mut pipe = redis::pipe();
        // One transaction: a write or a deletion never lands between the three reads.
        pipe.atomic()
            .cmd("HMGET")
            .arg(self.key("u", index))
            .arg("t")
            .arg("n")
            .arg("c")
            .cmd("LRANGE")
            .arg(self.key("h", index))
            .arg(0)
            .arg(limit - 1)
            .cmd("SMEMBERS")
            .arg(self.key("x", index));
        type Answer = (
            (Option<i64>, Option<u64>, Option<usize>),
            Vec<Vec<u8>>,
            Vec<u32>,
        );
        let ((through, count, items), packed, mut exclude): Answer = self
            .link
            .command("feature read", pipe.query_async(&mut connection))
            .await?;
        let (through, version, items) = (through?, count?, items?);
        // A key evicted or lost on its own: not this user's features.
        let expected = usize::try_from(version)
            .unwrap_or(usize::MAX)
            .min(self.history_limit);
        if packed.len() != expected || exclude.len() != items {
            return None;
        }
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
            .arg(self.history_limit)
            .arg(read.recent.len());
        for event in &read.recent {
            rebuild.arg(pack(event));
        }
        for item in &read.items {
            rebuild.arg(item);
        }
        self.write_back(|connection| rebuild.invoke::<i64>(connection).map(drop));
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

    /// Runs `command` on the event writer's connection. Skipped while Redis is pausing after
    /// a fault; a failure is a fault. Returns whether it ran.
    fn write(
        &self,
        command: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<()>,
    ) -> bool {
        if self.link.is_paused() {
            return false;
        }
        let mut writes = self.writes.lock().unwrap_or_else(|p| p.into_inner());
        let outcome = self.run_on(&mut writes, self.link.timeout(), command);
        if let Err(error) = &outcome {
            self.link.fault(&error.to_string());
        }
        outcome.is_ok()
    }

    /// Writes a rebuilt user back, on a connection of its own, if it is free (else another
    /// rebuild is writing: this one is skipped, and read from the database again when next
    /// asked for). A large user's script may take longer than a read's deadline, so it has
    /// a longer one, and its failure is not a fault of the link: reads and events go on.
    fn write_back(&self, command: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<()>) {
        if self.link.is_paused() {
            return;
        }
        let Ok(mut writes) = self.rebuild_writes.try_lock() else {
            return;
        };
        let timeout = (self.link.timeout() * 20).max(Duration::from_secs(1));
        if let Err(error) = self.run_on(&mut writes, timeout, command) {
            tracing::debug!(%error, "a rebuilt user was not written back to Redis");
        }
    }

    /// Runs `command` on the connection in `slot`, made first if there is none (with
    /// `timeout` for connecting, reading and writing); a failure drops it.
    fn run_on(
        &self,
        slot: &mut Option<redis::Connection>,
        timeout: Duration,
        command: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<()>,
    ) -> redis::RedisResult<()> {
        let connection = match slot {
            Some(connection) => connection,
            None => {
                let connection = self.link.client().get_connection_with_timeout(timeout)?;
                connection.set_read_timeout(Some(timeout))?;
                connection.set_write_timeout(Some(timeout))?;
                slot.insert(connection)
            }
        };
        let outcome = command(connection);
        if outcome.is_err() {
            *slot = None;
        }
        outcome
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

    /// A real `redis-server` on a free port, killed when dropped.
    struct TestRedis(std::process::Child, u16);

    impl TestRedis {
        fn start() -> Self {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .unwrap()
                .port();
            let child = std::process::Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("redis-server on PATH (.ci/run installs it)");
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                std::thread::sleep(Duration::from_millis(20));
            }
            Self(child, port)
        }

        fn del(&self, key: &str) {
            let mut connection = redis::Client::open(format!("redis://127.0.0.1:{}", self.1))
                .unwrap()
                .get_connection()
                .unwrap();
            redis::cmd("DEL").arg(key).exec(&mut connection).unwrap();
        }
    }

    impl Drop for TestRedis {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn click(id: i64, item: u32) -> EventRow {
        EventRow {
            id,
            user: 0,
            item,
            kind: EventKind::Click,
            value: 1.0,
            timestamp: 1,
        }
    }

    /// What Redis says of user 0, if it holds them whole: (newest id, count, items). One
    /// runtime for all reads: the link's connection lives on it.
    fn held(
        runtime: &tokio::runtime::Runtime,
        features: &Arc<SharedFeatures>,
    ) -> Option<(i64, u64, Vec<u32>)> {
        runtime
            .block_on(features.read_redis(0))
            .map(|f| (f.through, f.version, f.exclude))
    }

    #[test]
    fn redis_holds_a_user_whole_or_not_at_all() {
        let redis = TestRedis::start();
        let temp = tempfile::tempdir().unwrap();
        let cache = CacheConfig {
            redis_url: format!("redis://127.0.0.1:{}", redis.1),
            timeout_ms: 1_000,
            ..CacheConfig::default()
        };
        let users = Arc::new(RwLock::new(Users::without_histories(vec!["u".into()])));
        let store = Arc::new(Store::open(&temp.path().join("db")).unwrap());
        let features = Arc::new(SharedFeatures::new(&cache, "t", users, store, 100, 2).unwrap());
        let key = |kind| features.key(kind, 0);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let held = || held(&runtime, &features);

        features.recorded(&[(click(10, 7), 0), (click(20, 8), 10), (click(30, 7), 20)]);
        assert_eq!(held(), Some((30, 3, vec![7, 8])));
        // Applied twice (another node's writer): nothing changes.
        features.recorded(&[(click(20, 8), 10), (click(30, 7), 20)]);
        assert_eq!(held(), Some((30, 3, vec![7, 8])));
        // An event that does not follow the state held (writes crossing): the user goes.
        features.recorded(&[(click(50, 9), 40)]);
        assert_eq!(held(), None);

        // A first event on what an eviction left: only the event is kept.
        features.recorded(&[(click(10, 7), 0)]);
        redis.del(&key("u"));
        redis.del(&key("h"));
        features.recorded(&[(click(10, 5), 0)]);
        assert_eq!(held(), Some((10, 1, vec![5])));
        // An item set evicted alone: not whole, not read, not appended to.
        redis.del(&key("x"));
        assert_eq!(held(), None);
        features.recorded(&[(click(20, 9), 10)]);
        assert_eq!(held(), None);
        // A history evicted alone: the same.
        features.recorded(&[(click(10, 5), 0), (click(20, 9), 10)]);
        assert_eq!(held(), Some((20, 2, vec![5, 9])));
        redis.del(&key("h"));
        assert_eq!(held(), None);
    }

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
