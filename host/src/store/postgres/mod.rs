//! The cluster engine: PostgreSQL, shared by every node (`database_url = "postgres://..."`).
//!
//! `tokio-postgres` through a `deadpool-postgres` pool. The driver is async; the store's
//! interface is not (see `store/mod.rs`), so every call runs its future to completion on the
//! calling thread while the connections' I/O tasks live on a small runtime of the store's own
//! ([`block_on`]). That works the same from the event writer's thread, a `spawn_blocking`
//! task or a test, and never needs the caller's runtime.
//!
//! Errors keep their kind: a database that cannot be reached is [`StoreError::Unavailable`]
//! or an I/O `tokio_postgres::Error` ([`is_unavailable`]), which the API turns into 503 with
//! `Retry-After`; the pool reconnects by itself once the server is back.

mod events;
mod experiments;
mod learning;
mod leases;
mod migrations;
mod monitoring;
mod plugin_sets;
#[cfg(test)]
pub(super) mod test_server;

use std::future::Future;
use std::str::FromStr;
use std::sync::OnceLock;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod};
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

use super::{Backend, Durability, EventKind, EventRow, StoreCounts, StoreError, StoreResult};

/// Connections per store. The server opens a few stores (event writer, exposure log, the
/// rest); each mostly runs one statement at a time.
const POOL_SIZE: usize = 4;
/// How long a call waits for a connection before the database counts as unavailable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a statement waits for a lock (another node's group commit, an import) before it
/// fails as busy; SQLite's busy timeout is the same.
const LOCK_TIMEOUT: Duration = Duration::from_secs(5);

/// Transaction-scoped advisory lock keys (`pg_advisory_xact_lock`): one namespace for
/// recohost ("reco" in ASCII in the high bits), one key per thing serialized.
pub(super) mod lock_keys {
    const NAMESPACE: i64 = 0x7265_636f << 32;
    /// Every transaction that adds events or users (appends, imports) holds it until its
    /// commit: event ids are then handed out in commit order (see `events.rs`), and a new
    /// user's dense index is the next one.
    pub const EVENT_LOG: i64 = NAMESPACE | 1;
    /// Schema migrations, so that nodes starting together migrate once.
    pub const MIGRATIONS: i64 = NAMESPACE | 2;
    /// Publishing a plugin: a revision is the one before plus one plugin, so two
    /// publications read and extend the newest one in turn.
    pub const PLUGIN_REVISIONS: i64 = NAMESPACE | 3;
    /// Publishing experiments only if they changed: the check and the insert in turn.
    pub const EXPERIMENT_REVISIONS: i64 = NAMESPACE | 4;
    /// Appending served lists, so that their ids are handed out in commit order and the
    /// monitor, which reads them by id, never passes over one still being written.
    pub const SERVED_LISTS: i64 = NAMESPACE | 5;
}

pub struct PostgresStore {
    pool: Pool,
    /// For connections of their own (LISTEN), outside the pool.
    listen_config: tokio_postgres::Config,
}

impl PostgresStore {
    /// Connects to `url`, checks the server and migrates the schema.
    pub fn open(url: &str, durability: Durability) -> StoreResult<Self> {
        let mut config = tokio_postgres::Config::from_str(url)
            .map_err(|e| StoreError::Unavailable(format!("invalid database_url: {e}")))?;
        config.connect_timeout(CONNECT_TIMEOUT);
        config.application_name("recohost");
        // A server that vanishes without closing the connection (host crash, partition) is
        // noticed within seconds, not at the kernel's TCP timeout a quarter of an hour later.
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(5));
        config.keepalives_interval(Duration::from_secs(2));
        config.keepalives_retries(3);
        config.tcp_user_timeout(Duration::from_secs(10));
        // What the code relies on, whatever the server's or role's defaults say: read
        // committed (each statement sees the commits before it, so `MAX(idx) + 1` read after
        // the event-log lock is current), and a lock wait that ends (then `is_busy`: the
        // event writer waits on, dropping requests whose clients gave up). A commit is
        // flushed before it returns, except on relaxed connections (exposures), where
        // PostgreSQL's own crash may lose the last fraction of a second of writes, never
        // leave them inconsistent.
        let synchronous_commit = match durability {
            Durability::Full => "on",
            Durability::Relaxed => "off",
        };
        config.options(format!(
            "-c synchronous_commit={synchronous_commit} \
             -c default_transaction_isolation=read\\ committed -c lock_timeout={}",
            LOCK_TIMEOUT.as_millis()
        ));
        let listen_config = config.clone();
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let store = Self {
            pool,
            listen_config,
        };
        store.run(async |client| migrations::migrate(client).await)?;
        Ok(store)
    }

    /// Runs `work` with a pooled connection, on the calling thread.
    pub(in crate::store) fn run<T>(
        &self,
        work: impl AsyncFnOnce(&mut Object) -> StoreResult<T>,
    ) -> StoreResult<T> {
        block_on(async {
            let mut client = self.pool.get().await.map_err(pool_error)?;
            work(&mut client).await
        })
    }
}

impl Backend for PostgresStore {
    fn engine(&self) -> &'static str {
        "postgres"
    }

    fn schema_version(&self) -> StoreResult<usize> {
        self.run(async |client| migrations::current_version(client).await)
    }

    fn store_id(&self) -> StoreResult<String> {
        self.run(async |client| {
            let fresh: u128 = rand::random();
            client
                .execute(
                    "INSERT INTO meta (key, value) VALUES ('store_id', $1) ON CONFLICT DO NOTHING",
                    &[&format!("{fresh:032x}")],
                )
                .await?;
            let row = client
                .query_one("SELECT value FROM meta WHERE key = 'store_id'", &[])
                .await?;
            Ok(row.get(0))
        })
    }

    fn counts(&self) -> StoreResult<StoreCounts> {
        self.run(async |client| {
            let row = client
                .query_one(
                    "SELECT (SELECT COUNT(*) FROM items), (SELECT COUNT(*) FROM users),
                            (SELECT COUNT(*) FROM events)",
                    &[],
                )
                .await?;
            let count = |i| row.get::<_, i64>(i).max(0) as u64;
            Ok(StoreCounts {
                items: count(0),
                users: count(1),
                events: count(2),
            })
        })
    }
}

/// The store's own runtime, which drives the connections' I/O.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("postgres-io")
            .enable_all()
            .build()
            .expect("cannot start the PostgreSQL I/O runtime")
    })
}

/// Runs `future` to completion on this thread, inside the store runtime's context (so the
/// pool's timers and new connections' tasks land there). For threads of the caller's own
/// (the event writer, learning, `spawn_blocking`), never for async code: on a tokio worker
/// it would block that worker for as long as the database takes. `unconstrained`: tokio's
/// cooperative budget would otherwise defer a wake-up to a scheduler this thread never
/// returns to.
pub(super) fn block_on<F: Future>(future: F) -> F::Output {
    let _context = runtime().enter();
    futures_executor::block_on(tokio::task::unconstrained(future))
}

fn pool_error(error: PoolError) -> StoreError {
    match error {
        PoolError::Backend(error) => StoreError::Postgres(error),
        other => StoreError::Unavailable(other.to_string()),
    }
}

/// Whether `error` means the server could not be reached or went away mid-call.
pub(super) fn is_unavailable(error: &tokio_postgres::Error) -> bool {
    if error.is_closed() {
        return true;
    }
    match error.code() {
        Some(code) => {
            code.code().starts_with("08") // connection exception
                || *code == SqlState::ADMIN_SHUTDOWN
                || *code == SqlState::CRASH_SHUTDOWN
                || *code == SqlState::CANNOT_CONNECT_NOW
        }
        // No SQLSTATE: the error came from the socket, not from the server.
        None => std::error::Error::source(error)
            .is_some_and(|source| source.downcast_ref::<std::io::Error>().is_some()),
    }
}

/// Whether `error` is a conflict that the same transaction, retried, may not meet again
/// (a lock held past `lock_timeout` included).
pub(super) fn is_busy(error: &tokio_postgres::Error) -> bool {
    error.code().is_some_and(|code| {
        *code == SqlState::T_R_SERIALIZATION_FAILURE
            || *code == SqlState::T_R_DEADLOCK_DETECTED
            || *code == SqlState::LOCK_NOT_AVAILABLE
    })
}

/// `url` (`postgres://...`) without its password, for logs: neither `user:password@` nor a
/// `password=` query parameter.
pub(super) fn redact(url: &str) -> String {
    let (address, query) = url.split_once('?').unwrap_or((url, ""));
    let address = match address.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((credentials, host)) => {
                let user = credentials.split(':').next().unwrap_or("");
                format!("{scheme}://{user}@{host}")
            }
            None => address.to_string(),
        },
        None => address.to_string(),
    };
    let query: Vec<&str> = query
        .split('&')
        .filter(|pair| !pair.is_empty() && !pair.starts_with("password="))
        .collect();
    if query.is_empty() {
        address
    } else {
        format!("{address}?{}", query.join("&"))
    }
}

/// The event a row holds (`id, user_idx, item_idx, kind, value, timestamp`).
fn event_row(row: &tokio_postgres::Row) -> StoreResult<EventRow> {
    let id: i64 = row.try_get(0)?;
    let kind: &str = row.try_get(3)?;
    let kind = EventKind::parse(kind)
        .ok_or_else(|| StoreError::Corrupt(format!("event {id} has kind {kind:?}")))?;
    Ok(EventRow {
        id,
        user: index(row.try_get(1)?, "user index")?,
        item: index(row.try_get(2)?, "item index")?,
        kind,
        value: row.try_get::<_, f64>(4)? as f32,
        timestamp: row.try_get::<_, i64>(5)?.max(0) as u64,
    })
}

/// A dense index stored as INTEGER.
fn index(value: i32, what: &str) -> StoreResult<u32> {
    u32::try_from(value).map_err(|_| StoreError::Corrupt(format!("negative {what} {value}")))
}

/// A u64 in a BIGINT column.
fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
