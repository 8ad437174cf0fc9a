//! Versioned schema migrations, applied in order and recorded in `PRAGMA user_version`.
//!
//! Never edit a migration that has shipped: add a new one at the end.

use rusqlite::Connection;

const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    r#"
    CREATE TABLE items (
        idx         INTEGER PRIMARY KEY,          -- dense index given to plugins
        external_id TEXT NOT NULL UNIQUE,
        title       TEXT NOT NULL,
        tags        TEXT NOT NULL DEFAULT '[]'    -- JSON array of strings
    );
    CREATE TABLE users (
        idx         INTEGER PRIMARY KEY,          -- dense index given to plugins
        external_id TEXT NOT NULL UNIQUE,
        created_at  INTEGER NOT NULL
    );
    CREATE TABLE events (
        id        INTEGER PRIMARY KEY AUTOINCREMENT,
        user_idx  INTEGER NOT NULL REFERENCES users(idx),
        item_idx  INTEGER NOT NULL REFERENCES items(idx),
        kind      TEXT NOT NULL CHECK (kind IN ('rate', 'click', 'view', 'purchase')),
        value     REAL NOT NULL,
        timestamp INTEGER NOT NULL
    );
    CREATE INDEX events_by_user ON events(user_idx, id);
    CREATE TABLE snapshots (
        plugin        TEXT NOT NULL,
        version       INTEGER NOT NULL,
        created_at    INTEGER NOT NULL,
        fingerprint   TEXT NOT NULL,              -- hash of the .wasm, its config and the catalog
        through_event INTEGER NOT NULL,           -- id of the newest event the model has seen
        bytes         BLOB NOT NULL,
        PRIMARY KEY (plugin, version)
    );
    "#,
    // 2: online learning. One row per model update or retrain, and the newest model version
    // each plugin has ever served (so versions never repeat, also after a crash).
    r#"
    CREATE TABLE learning_runs (
        id             INTEGER PRIMARY KEY,       -- the update_id clients see
        kind           TEXT NOT NULL CHECK (kind IN ('update', 'retrain')),
        trigger        TEXT NOT NULL,             -- buffer_size, interval, manual, schedule
        started_at_ms  INTEGER NOT NULL,          -- Unix milliseconds
        duration_ms    REAL NOT NULL,
        feedback_count INTEGER NOT NULL,          -- events in the batch (or training window)
        through_event  INTEGER NOT NULL,          -- newest event id in it
        models_updated INTEGER NOT NULL,
        outcomes       TEXT NOT NULL              -- JSON object: plugin name -> outcome
    );
    CREATE TABLE model_versions (
        plugin        TEXT PRIMARY KEY,
        version       INTEGER NOT NULL,
        through_event INTEGER NOT NULL,
        updated_at    INTEGER NOT NULL
    );
    "#,
    // 3: no per-user index on events. Histories are served from memory (loaded in id order at
    // start), so nothing reads it, and maintaining it was a third of the cost of storing an
    // event (docs/benchmarks.md, event ingestion).
    r#"
    DROP INDEX events_by_user;
    "#,
    // 4: experiments. One row per recommendation served under an experiment, and the group
    // each user of a sticky experiment keeps.
    r#"
    CREATE TABLE exposures (
        id            INTEGER PRIMARY KEY,
        experiment_id TEXT NOT NULL,
        group_name    TEXT NOT NULL,
        user_id       TEXT NOT NULL,              -- external ID, as the client sent it
        plugin        TEXT NOT NULL,
        model_version INTEGER NOT NULL,
        after_event   INTEGER NOT NULL,           -- newest stored event id when it was served:
                                                  -- the user's later events are its feedback
        at_ms         INTEGER NOT NULL            -- Unix milliseconds
    );
    CREATE INDEX exposures_by_experiment ON exposures(experiment_id, group_name, user_id);
    CREATE TABLE sticky_assignments (
        experiment_id  TEXT NOT NULL,
        user_id        TEXT NOT NULL,
        group_name     TEXT NOT NULL,
        bucket_version INTEGER NOT NULL,
        assigned_at_ms INTEGER NOT NULL,
        PRIMARY KEY (experiment_id, user_id)
    ) WITHOUT ROWID;
    "#,
    // 5: facts about the database itself; `store_id` (random, made on first use) names it in
    // keys shared with other servers (the Redis cache), whose model versions are their own.
    r#"
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) WITHOUT ROWID;
    "#,
    // 6: client idempotency keys of event appends: a retry with the same key is answered
    // with the first append's receipt instead of storing the events twice.
    r#"
    CREATE TABLE idempotency_keys (
        key            TEXT PRIMARY KEY,
        request_hash   TEXT NOT NULL,             -- what the first request asked to store
        first_event_id INTEGER NOT NULL,
        stored         INTEGER NOT NULL,
        created_at     INTEGER NOT NULL           -- Unix seconds; kept IDEMPOTENCY_KEY_TTL
    ) WITHOUT ROWID;
    CREATE INDEX idempotency_keys_by_age ON idempotency_keys(created_at);
    "#,
    // 7: leases (the learner's): who holds one, since which change of holder, until when.
    r#"
    CREATE TABLE leases (
        name          TEXT PRIMARY KEY,
        holder        TEXT NOT NULL,              -- node id
        term          INTEGER NOT NULL,           -- raised by one at each change of holder
        expires_at_ms INTEGER NOT NULL            -- Unix milliseconds, the database's clock
    ) WITHOUT ROWID;
    "#,
    // 8: experiment definitions published as numbered revisions (a cluster's nodes all run
    // the newest); `files` is a JSON object, file name -> TOML text.
    r#"
    CREATE TABLE experiment_revisions (
        revision        INTEGER PRIMARY KEY AUTOINCREMENT,
        files           TEXT NOT NULL,
        published_at_ms INTEGER NOT NULL
    );
    "#,
    // 9: plugins published to a cluster: .wasm by content hash, and numbered revisions of
    // the published set (`plugins` is a JSON array of name, hash, config, limits).
    r#"
    CREATE TABLE plugin_wasm (
        sha256       TEXT PRIMARY KEY,
        bytes        BLOB NOT NULL,
        stored_at_ms INTEGER NOT NULL
    );
    CREATE TABLE plugin_revisions (
        revision        INTEGER PRIMARY KEY AUTOINCREMENT,
        plugins         TEXT NOT NULL,
        published_at_ms INTEGER NOT NULL
    );
    "#,
    // 10: when each sticky assignment was stored (a cluster's nodes poll by it; SQLite's
    // one node sets it from its own clock).
    r#"
    ALTER TABLE sticky_assignments ADD COLUMN stored_at_ms INTEGER NOT NULL DEFAULT 0;
    "#,
    // 11: bandit experiments: the weights revision each exposure was served under (results
    // test the sample ratio against the weights in force), and the revisions themselves
    // (`body`: JSON, weights with the counts they came from).
    r#"
    ALTER TABLE exposures ADD COLUMN weights_revision INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE weights_revisions (
        experiment_id TEXT NOT NULL,
        revision      INTEGER NOT NULL,
        at_ms         INTEGER NOT NULL,
        body          TEXT NOT NULL,
        PRIMARY KEY (experiment_id, revision)
    ) WITHOUT ROWID;
    "#,
    // 12: model monitoring: the lists served (items and scores as little-endian u32 and
    // f32 arrays), what each monitoring window found (`body`: JSON), and alerts.
    r#"
    CREATE TABLE served_lists (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        at_ms         INTEGER NOT NULL,
        user_id       TEXT NOT NULL,
        plugin        TEXT NOT NULL,
        model_version INTEGER NOT NULL,
        after_event   INTEGER NOT NULL,
        items         BLOB NOT NULL,
        scores        BLOB NOT NULL
    );
    CREATE INDEX served_lists_by_time ON served_lists(at_ms);
    CREATE TABLE monitoring_windows (
        id     INTEGER PRIMARY KEY AUTOINCREMENT,
        at_ms  INTEGER NOT NULL,
        body   TEXT NOT NULL
    );
    CREATE INDEX monitoring_windows_by_time ON monitoring_windows(at_ms);
    CREATE TABLE alerts (
        id             INTEGER PRIMARY KEY AUTOINCREMENT,
        alert          TEXT NOT NULL,
        raised_at_ms   INTEGER NOT NULL,
        resolved_at_ms INTEGER,
        body           TEXT NOT NULL
    );
    -- A rollback is recorded as a learning run: SQLite cannot alter a CHECK, so the table
    -- is rebuilt with the new kind allowed.
    CREATE TABLE learning_runs_next (
        id             INTEGER PRIMARY KEY,
        kind           TEXT NOT NULL CHECK (kind IN ('update', 'retrain', 'rollback')),
        trigger        TEXT NOT NULL,
        started_at_ms  INTEGER NOT NULL,
        duration_ms    REAL NOT NULL,
        feedback_count INTEGER NOT NULL,
        through_event  INTEGER NOT NULL,
        models_updated INTEGER NOT NULL,
        outcomes       TEXT NOT NULL
    );
    INSERT INTO learning_runs_next SELECT * FROM learning_runs;
    DROP TABLE learning_runs;
    ALTER TABLE learning_runs_next RENAME TO learning_runs;
    "#,
    // 13: exposures indexed by experiment alone (with the rowid, in insertion order). The only
    // reader asks for one experiment's exposures in id order; the index over (experiment,
    // group, user) put each new row at a random place in a three-text-column B-tree, so every
    // batch rewrote pages all over it: the exposure writer was a quarter of the server's CPU
    // under wrk (docs/benchmarks.md).
    r#"
    DROP INDEX exposures_by_experiment;
    CREATE INDEX exposures_by_experiment ON exposures(experiment_id);
    "#,
    // 14: exposures stored one row per experiment per writer batch, encoded together
    // (`store/exposure_batches.rs`): a row per exposure was still 7% of the server's CPU with
    // cached answers under wrk. Rows stored before stay in `exposures` and are read first.
    r#"
    CREATE TABLE exposure_batches (
        id            INTEGER PRIMARY KEY,
        experiment_id TEXT NOT NULL,
        exposures     INTEGER NOT NULL,
        body          BLOB NOT NULL
    );
    CREATE INDEX exposure_batches_by_experiment ON exposure_batches(experiment_id);
    "#,
    // 15: served lists stored one row per writer batch (`store/served_list_batches.rs`): a row
    // per list cost the writer 5% of the server's CPU with the cache off under wrk, and
    // monitoring 3.5% reading them back. Rows stored before stay in `served_lists` unread (an
    // upgrade judges the lists served after it) and expire from there within the hour.
    r#"
    CREATE TABLE served_list_batches (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        newest_at_ms INTEGER NOT NULL,
        lists        INTEGER NOT NULL,
        body         BLOB NOT NULL
    );
    CREATE INDEX served_list_batches_by_time ON served_list_batches(newest_at_ms);
    "#,
];

/// Brings the database schema up to the newest version.
pub fn migrate(connection: &mut Connection) -> rusqlite::Result<()> {
    let current: usize = connection.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let transaction = connection.transaction()?;
        transaction.execute_batch(sql)?;
        transaction.pragma_update(None, "user_version", index + 1)?;
        transaction.commit()?;
    }
    Ok(())
}

/// The schema version this build writes.
pub fn latest_version() -> usize {
    MIGRATIONS.len()
}
