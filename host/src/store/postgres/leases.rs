//! Leases in PostgreSQL: the database's clock decides, so nodes whose clocks disagree still
//! agree on who holds a lease. And announcements between nodes: LISTEN/NOTIFY.

use futures_util::StreamExt;
use tokio_postgres::AsyncMessage;

use super::{PostgresStore, block_on};
use crate::store::{Fence, LeaseRow, Leases, Listener, StoreError, StoreResult};

/// The database's clock, in Unix milliseconds (`clock_timestamp`: the time of the statement,
/// not of the transaction's start).
const NOW_MS: &str = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint";

impl Leases for PostgresStore {
    fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        duration_ms: u64,
    ) -> StoreResult<Option<u64>> {
        let duration = i64::try_from(duration_ms).unwrap_or(i64::MAX);
        self.run(async |client| {
            let statement = client
                .prepare_cached(&format!(
                    "INSERT INTO leases (name, holder, term, expires_at_ms)
                     VALUES ($1, $2, 1, {NOW_MS} + $3)
                     ON CONFLICT (name) DO UPDATE SET
                         term = CASE WHEN leases.holder = excluded.holder THEN leases.term
                                     ELSE leases.term + 1 END,
                         holder = excluded.holder,
                         expires_at_ms = excluded.expires_at_ms
                     WHERE leases.holder = excluded.holder OR leases.expires_at_ms <= {NOW_MS}
                     RETURNING term"
                ))
                .await?;
            let row = client
                .query_opt(&statement, &[&name, &holder, &duration])
                .await?;
            Ok(match row {
                Some(row) => Some(row.try_get::<_, i64>(0)?.max(0) as u64),
                None => None,
            })
        })
    }

    fn release_lease(&self, name: &str, holder: &str) -> StoreResult<()> {
        self.run(async |client| {
            client
                .execute(
                    "UPDATE leases SET expires_at_ms = 0 WHERE name = $1 AND holder = $2",
                    &[&name, &holder],
                )
                .await?;
            Ok(())
        })
    }

    fn lease(&self, name: &str) -> StoreResult<Option<LeaseRow>> {
        self.run(async |client| {
            let row = client
                .query_opt(
                    &format!(
                        "SELECT holder, term, GREATEST(expires_at_ms - {NOW_MS}, 0) FROM leases
                         WHERE name = $1"
                    ),
                    &[&name],
                )
                .await?;
            let Some(row) = row else { return Ok(None) };
            Ok(Some(LeaseRow {
                holder: row.try_get(0)?,
                term: row.try_get::<_, i64>(1)?.max(0) as u64,
                remaining_ms: row.try_get::<_, i64>(2)?.max(0) as u64,
            }))
        })
    }
}

impl crate::store::Announcements for PostgresStore {
    fn announce(&self, channel: &'static str, payload: &str) -> StoreResult<()> {
        self.run(async |client| {
            client
                .execute("SELECT pg_notify($1, $2)", &[&channel, &payload])
                .await?;
            Ok(())
        })
    }

    fn listen(&self, channel: &'static str) -> StoreResult<Box<dyn Listener>> {
        let config = self.listen_config.clone();
        block_on(async move {
            let (client, mut connection) = config.connect(tokio_postgres::NoTls).await?;
            let (announced, announcements) = std::sync::mpsc::channel();
            // The connection's messages: notifications go to the listener; the task ends,
            // and with it the channel, when the connection does.
            tokio::spawn(async move {
                let mut messages =
                    futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                while let Some(Ok(message)) = messages.next().await {
                    if let AsyncMessage::Notification(notification) = message
                        && announced.send(notification.payload().to_string()).is_err()
                    {
                        return;
                    }
                }
            });
            client.batch_execute(&format!("LISTEN {channel}")).await?;
            Ok(Box::new(PostgresListener {
                _client: client,
                announcements: std::sync::Mutex::new(announcements),
            }) as Box<dyn Listener>)
        })
    }
}

/// A connection of its own, LISTENing; dropping it closes the connection.
struct PostgresListener {
    _client: tokio_postgres::Client,
    announcements: std::sync::Mutex<std::sync::mpsc::Receiver<String>>,
}

impl Listener for PostgresListener {
    fn wait(&self, timeout: std::time::Duration) -> StoreResult<bool> {
        let announcements = self.announcements.lock().unwrap_or_else(|p| p.into_inner());
        match announcements.recv_timeout(timeout) {
            Ok(_) => {
                // Several at once wake the listener once.
                while announcements.try_recv().is_ok() {}
                Ok(true)
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Ok(false),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(StoreError::Unavailable(
                "the listening connection closed".into(),
            )),
        }
    }
}

/// Whether `fence`'s holder holds its lease under its term, unexpired. `FOR UPDATE`: the row
/// stays locked until the caller's transaction ends, so no one takes the lease meanwhile.
pub(super) async fn holds(
    transaction: &deadpool_postgres::Transaction<'_>,
    fence: &Fence,
) -> StoreResult<bool> {
    let term = i64::try_from(fence.term).unwrap_or(i64::MAX);
    Ok(transaction
        .query_opt(
            &format!(
                "SELECT 1 FROM leases WHERE name = $1 AND holder = $2 AND term = $3
                 AND expires_at_ms > {NOW_MS} FOR UPDATE"
            ),
            &[&fence.lease, &fence.holder, &term],
        )
        .await?
        .is_some())
}
