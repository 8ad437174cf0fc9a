//! `recohost migrate --to postgres://...`: copies a SQLite deployment into an empty
//! PostgreSQL database, every table with its ids (snapshots' `through_event`, exposures'
//! `after_event` and learning runs refer to event ids), in one PostgreSQL transaction: the
//! target has all of it or nothing. Row counts are compared table by table before the commit.
//!
//! This is the one place that knows both engines' insides: it reads SQLite's rows as they
//! are and writes them with PostgreSQL `UNNEST` arrays, so the store interface does not grow
//! a bulk export for a one-off tool.
//!
//! Not copied: `leases` (the cluster's nodes claim them afresh), and `meta.store_id`. The new database gets an identity of its own, so entries a
//! shared Redis cache holds for the old one are never served for it.

use rusqlite::types::ValueRef;
use tokio_postgres::types::ToSql;

use super::postgres::{PostgresStore, lock_keys};
use super::sqlite::SqliteStore;
use super::{Durability, StoreError, StoreResult};

/// Rows sent to PostgreSQL per statement.
const PAGE: usize = 10_000;

#[derive(Clone, Copy)]
enum Kind {
    Int,
    /// An integer column that may be NULL.
    NullableInt,
    Text,
    Real,
    Blob,
}

/// A table and its columns, in both engines' schemas (the newest of each).
struct Table {
    name: &'static str,
    columns: &'static [(&'static str, Kind)],
    /// What the rows are read in (their key), so the copy is deterministic.
    order: &'static str,
    /// The identity column whose sequence must continue after the copied ids.
    identity: Option<&'static str>,
}

const TABLES: &[Table] = &[
    Table {
        name: "items",
        columns: &[
            ("idx", Kind::Int),
            ("external_id", Kind::Text),
            ("title", Kind::Text),
            ("tags", Kind::Text),
        ],
        order: "idx",
        identity: None,
    },
    Table {
        name: "users",
        columns: &[
            ("idx", Kind::Int),
            ("external_id", Kind::Text),
            ("created_at", Kind::Int),
        ],
        order: "idx",
        identity: None,
    },
    Table {
        name: "events",
        columns: &[
            ("id", Kind::Int),
            ("user_idx", Kind::Int),
            ("item_idx", Kind::Int),
            ("kind", Kind::Text),
            ("value", Kind::Real),
            ("timestamp", Kind::Int),
        ],
        order: "id",
        identity: Some("id"),
    },
    Table {
        name: "snapshots",
        columns: &[
            ("plugin", Kind::Text),
            ("version", Kind::Int),
            ("created_at", Kind::Int),
            ("fingerprint", Kind::Text),
            ("through_event", Kind::Int),
            ("bytes", Kind::Blob),
        ],
        order: "plugin, version",
        identity: None,
    },
    Table {
        name: "learning_runs",
        columns: &[
            ("id", Kind::Int),
            ("kind", Kind::Text),
            ("trigger", Kind::Text),
            ("started_at_ms", Kind::Int),
            ("duration_ms", Kind::Real),
            ("feedback_count", Kind::Int),
            ("through_event", Kind::Int),
            ("models_updated", Kind::Int),
            ("outcomes", Kind::Text),
        ],
        order: "id",
        identity: None,
    },
    Table {
        name: "model_versions",
        columns: &[
            ("plugin", Kind::Text),
            ("version", Kind::Int),
            ("through_event", Kind::Int),
            ("updated_at", Kind::Int),
        ],
        order: "plugin",
        identity: None,
    },
    Table {
        name: "exposures",
        columns: &[
            ("id", Kind::Int),
            ("experiment_id", Kind::Text),
            ("group_name", Kind::Text),
            ("user_id", Kind::Text),
            ("plugin", Kind::Text),
            ("model_version", Kind::Int),
            ("after_event", Kind::Int),
            ("at_ms", Kind::Int),
            ("weights_revision", Kind::Int),
        ],
        order: "id",
        identity: Some("id"),
    },
    Table {
        name: "exposure_batches",
        columns: &[
            ("id", Kind::Int),
            ("experiment_id", Kind::Text),
            ("exposures", Kind::Int),
            ("body", Kind::Blob),
        ],
        order: "id",
        identity: Some("id"),
    },
    Table {
        name: "weights_revisions",
        columns: &[
            ("experiment_id", Kind::Text),
            ("revision", Kind::Int),
            ("at_ms", Kind::Int),
            ("body", Kind::Text),
        ],
        order: "experiment_id, revision",
        identity: None,
    },
    Table {
        name: "sticky_assignments",
        columns: &[
            ("experiment_id", Kind::Text),
            ("user_id", Kind::Text),
            ("group_name", Kind::Text),
            ("bucket_version", Kind::Int),
            ("assigned_at_ms", Kind::Int),
            ("stored_at_ms", Kind::Int),
        ],
        order: "experiment_id, user_id",
        identity: None,
    },
    Table {
        name: "idempotency_keys",
        columns: &[
            ("key", Kind::Text),
            ("request_hash", Kind::Text),
            ("first_event_id", Kind::Int),
            ("stored", Kind::Int),
            ("created_at", Kind::Int),
        ],
        order: "key",
        identity: None,
    },
    Table {
        name: "experiment_revisions",
        columns: &[
            ("revision", Kind::Int),
            ("files", Kind::Text),
            ("published_at_ms", Kind::Int),
        ],
        order: "revision",
        identity: Some("revision"),
    },
    Table {
        name: "plugin_wasm",
        columns: &[
            ("sha256", Kind::Text),
            ("bytes", Kind::Blob),
            ("stored_at_ms", Kind::Int),
        ],
        order: "sha256",
        identity: None,
    },
    Table {
        name: "plugin_revisions",
        columns: &[
            ("revision", Kind::Int),
            ("plugins", Kind::Text),
            ("published_at_ms", Kind::Int),
        ],
        order: "revision",
        identity: Some("revision"),
    },
    Table {
        name: "served_lists",
        columns: &[
            ("id", Kind::Int),
            ("at_ms", Kind::Int),
            ("user_id", Kind::Text),
            ("plugin", Kind::Text),
            ("model_version", Kind::Int),
            ("after_event", Kind::Int),
            ("items", Kind::Blob),
            ("scores", Kind::Blob),
        ],
        order: "id",
        identity: Some("id"),
    },
    Table {
        name: "served_list_batches",
        columns: &[
            ("id", Kind::Int),
            ("newest_at_ms", Kind::Int),
            ("lists", Kind::Int),
            ("body", Kind::Blob),
        ],
        order: "id",
        identity: Some("id"),
    },
    Table {
        name: "monitoring_windows",
        columns: &[
            ("id", Kind::Int),
            ("at_ms", Kind::Int),
            ("body", Kind::Text),
        ],
        order: "id",
        identity: Some("id"),
    },
    Table {
        name: "alerts",
        columns: &[
            ("id", Kind::Int),
            ("alert", Kind::Text),
            ("raised_at_ms", Kind::Int),
            ("resolved_at_ms", Kind::NullableInt),
            ("body", Kind::Text),
        ],
        order: "id",
        identity: Some("id"),
    },
];

/// One column's values of a page of rows, as one PostgreSQL array.
enum Column {
    Int(Vec<i64>),
    NullableInt(Vec<Option<i64>>),
    Text(Vec<String>),
    Real(Vec<f64>),
    Blob(Vec<Vec<u8>>),
}

impl Column {
    fn new(kind: Kind) -> Self {
        match kind {
            Kind::Int => Self::Int(Vec::new()),
            Kind::NullableInt => Self::NullableInt(Vec::new()),
            Kind::Text => Self::Text(Vec::new()),
            Kind::Real => Self::Real(Vec::new()),
            Kind::Blob => Self::Blob(Vec::new()),
        }
    }

    fn array_type(&self) -> &'static str {
        match self {
            Self::Int(_) | Self::NullableInt(_) => "int8[]",
            Self::Text(_) => "text[]",
            Self::Real(_) => "float8[]",
            Self::Blob(_) => "bytea[]",
        }
    }

    fn push(&mut self, value: ValueRef<'_>, table: &str) -> StoreResult<()> {
        let wrong = || StoreError::Corrupt(format!("{table}: unexpected value {value:?}"));
        match (self, value) {
            (Self::Int(values), ValueRef::Integer(v)) => values.push(v),
            (Self::NullableInt(values), ValueRef::Integer(v)) => values.push(Some(v)),
            (Self::NullableInt(values), ValueRef::Null) => values.push(None),
            (Self::Real(values), ValueRef::Real(v)) => values.push(v),
            (Self::Real(values), ValueRef::Integer(v)) => values.push(v as f64),
            (Self::Text(values), ValueRef::Text(v)) => {
                values.push(String::from_utf8(v.to_vec()).map_err(|_| wrong())?)
            }
            (Self::Blob(values), ValueRef::Blob(v)) => values.push(v.to_vec()),
            _ => return Err(wrong()),
        }
        Ok(())
    }

    fn as_sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            Self::Int(values) => values,
            Self::NullableInt(values) => values,
            Self::Text(values) => values,
            Self::Real(values) => values,
            Self::Blob(values) => values,
        }
    }
}

/// Tables deliberately left behind: `meta` (see the module doc) and `leases` (who holds a
/// role until when: a cluster's nodes take them afresh).
const NOT_COPIED: &[&str] = &["meta", "leases"];

/// Tables of others in the same file, never copied: SQLite's own (`sqlite_sequence`, the
/// `sqlite_stat*` of ANALYZE) and Litestream's.
const FOREIGN_PREFIXES: &[&str] = &["sqlite_", "_litestream"];

/// The SQLite tables and columns [`TABLES`] does not list: a copy would silently lose them,
/// so the migration refuses to start while any exists (and a unit test keeps it empty).
fn uncovered(connection: &rusqlite::Connection) -> StoreResult<Vec<String>> {
    let mut missing = Vec::new();
    let names: Vec<String> = connection
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")?
        .query_map([], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    for name in names {
        if NOT_COPIED.contains(&name.as_str())
            || FOREIGN_PREFIXES.iter().any(|p| name.starts_with(p))
        {
            continue;
        }
        let Some(table) = TABLES.iter().find(|t| t.name == name) else {
            missing.push(name);
            continue;
        };
        let columns: Vec<String> = connection
            .prepare("SELECT name FROM pragma_table_info(?1)")?
            .query_map([&name], |row| row.get(0))?
            .collect::<Result<_, _>>()?;
        for column in columns {
            if !table.columns.iter().any(|(c, _)| *c == column) {
                missing.push(format!("{name}.{column}"));
            }
        }
    }
    Ok(missing)
}

/// Rows copied per table, as verified in both databases.
pub type CopyReport = Vec<(&'static str, u64)>;

/// Copies the SQLite database at `sqlite` into the empty PostgreSQL database at `url`.
/// `started(total rows)` is called once, then `copied(rows)` as pages go in.
pub fn sqlite_to_postgres(
    sqlite: &std::path::Path,
    url: &str,
    started: &mut dyn FnMut(u64),
    copied: &mut dyn FnMut(u64),
) -> StoreResult<CopyReport> {
    if !sqlite.exists() {
        return Err(StoreError::Corrupt(format!(
            "there is no database at {}",
            sqlite.display()
        )));
    }
    let source = SqliteStore::open(sqlite, Durability::Full)?;
    let target = PostgresStore::open(url, Durability::Full)?;
    let mut guard = source.lock();
    let missing = uncovered(&guard)?;
    if !missing.is_empty() {
        return Err(StoreError::Corrupt(format!(
            "this build cannot copy {} (a bug: report it); nothing was copied",
            missing.join(", ")
        )));
    }
    // One read transaction for the counts and every table: a consistent copy even if a
    // server is still writing (which it should not be: stop it first).
    let connection = guard.transaction()?;
    let mut counts = Vec::with_capacity(TABLES.len());
    for table in TABLES {
        let count: i64 =
            connection.query_row(&format!("SELECT COUNT(*) FROM {}", table.name), [], |row| {
                row.get(0)
            })?;
        counts.push((table.name, count.max(0) as u64));
    }
    started(counts.iter().map(|(_, count)| count).sum());
    target.run(async |client| {
        let transaction = client.transaction().await?;
        // No node may append while the log is being filled.
        transaction
            .execute("SELECT pg_advisory_xact_lock($1)", &[&lock_keys::EVENT_LOG])
            .await?;
        for table in TABLES {
            let row = transaction
                .query_one(&format!("SELECT COUNT(*) FROM {}", table.name), &[])
                .await?;
            if row.try_get::<_, i64>(0)? != 0 {
                return Err(StoreError::Corrupt(format!(
                    "the PostgreSQL database is not empty (table {} has rows): migrate into a new database",
                    table.name
                )));
            }
        }
        for table in TABLES {
            let names: Vec<&str> = table.columns.iter().map(|(name, _)| *name).collect();
            let mut statement = connection.prepare(&format!(
                "SELECT {} FROM {} ORDER BY {}",
                names.join(", "),
                table.name,
                table.order
            ))?;
            let mut rows = statement.query([])?;
            let fresh = || -> Vec<Column> {
                table.columns.iter().map(|(_, kind)| Column::new(*kind)).collect()
            };
            let mut page = fresh();
            let mut in_page = 0;
            loop {
                let row = rows.next()?;
                if let Some(row) = row {
                    for (index, column) in page.iter_mut().enumerate() {
                        column.push(row.get_ref(index)?, table.name)?;
                    }
                    in_page += 1;
                }
                if in_page == PAGE || (row.is_none() && in_page > 0) {
                    insert(&transaction, table, &names, &page).await?;
                    copied(in_page as u64);
                    page = fresh();
                    in_page = 0;
                }
                if row.is_none() {
                    break;
                }
            }
            if let Some(column) = table.identity {
                // The next id PostgreSQL hands out follows the copied ones.
                transaction
                    .execute(
                        &format!(
                            "SELECT setval(pg_get_serial_sequence('{0}', '{1}'),
                                           COALESCE(MAX({1}), 1), MAX({1}) IS NOT NULL)
                             FROM {0}",
                            table.name, column
                        ),
                        &[],
                    )
                    .await?;
            }
        }
        for (name, expected) in &counts {
            let row = transaction
                .query_one(&format!("SELECT COUNT(*) FROM {name}"), &[])
                .await?;
            let found = row.try_get::<_, i64>(0)?.max(0) as u64;
            if found != *expected {
                return Err(StoreError::Corrupt(format!(
                    "{name}: {expected} rows in SQLite but {found} copied; nothing was committed"
                )));
            }
        }
        transaction.commit().await?;
        Ok(())
    })?;
    drop(connection);
    Ok(counts)
}

async fn insert(
    transaction: &deadpool_postgres::Transaction<'_>,
    table: &Table,
    names: &[&str],
    page: &[Column],
) -> StoreResult<()> {
    let arrays: Vec<String> = page
        .iter()
        .enumerate()
        .map(|(index, column)| format!("${}::{}", index + 1, column.array_type()))
        .collect();
    let sql = format!(
        "INSERT INTO {} ({}) SELECT * FROM UNNEST({})",
        table.name,
        names.join(", "),
        arrays.join(", ")
    );
    let parameters: Vec<&(dyn ToSql + Sync)> = page.iter().map(Column::as_sql).collect();
    transaction.execute(&sql, &parameters).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_and_column_of_the_newest_sqlite_schema_is_copied() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db"), Durability::Full).unwrap();
        let connection = store.lock();
        let missing = uncovered(&connection).unwrap();
        assert!(missing.is_empty(), "not copied by migrate: {missing:?}");
        // ANALYZE's statistics are SQLite's, not data to copy; a new column of ours is.
        connection
            .execute_batch("ANALYZE; ALTER TABLE exposures ADD COLUMN extra INTEGER")
            .unwrap();
        assert_eq!(uncovered(&connection).unwrap(), vec!["exposures.extra"]);
    }
}
