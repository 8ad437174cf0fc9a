//! The store's test suite, run over both engines: every test below is one function of a
//! [`TestDb`], instantiated once per engine by `over_both_engines!` (`store::tests::sqlite::*`
//! and `store::tests::postgres::*`). PostgreSQL is a real server (`TestPostgres`), one per
//! test process, with a fresh database per test.

use super::*;

/// A fresh, empty database of one engine; [`TestDb::open`] connects to it (again).
pub(crate) struct TestDb {
    database: Database,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    pub(crate) fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self {
            database: Database::Sqlite(dir.path().join("db")),
            _dir: Some(dir),
        }
    }

    pub(crate) fn postgres() -> Self {
        Self {
            database: Database::Postgres(TestPostgres::shared().create_database()),
            _dir: None,
        }
    }

    /// A new connection (a second writer, or the server after a restart).
    pub(crate) fn open(&self) -> Store {
        Store::connect(&self.database).unwrap()
    }

    /// Runs `sql` on a connection of its own (rows as another build would have written them).
    fn execute(&self, sql: &str) {
        match &self.database {
            Database::Sqlite(path) => rusqlite::Connection::open(path)
                .and_then(|connection| connection.execute_batch(sql))
                .unwrap_or_else(|error| panic!("{sql}: {error}")),
            Database::Postgres(url) => RawSession::connect(url).execute(sql),
        }
    }

    /// Another empty database of the same engine.
    fn another(&self) -> Self {
        match self.database {
            Database::Sqlite(_) => Self::sqlite(),
            Database::Postgres(_) => Self::postgres(),
        }
    }
}

/// A plain session on a test database, for tests that play another client (hold a row
/// lock, leave a transaction open).
struct RawSession {
    client: tokio_postgres::Client,
}

impl RawSession {
    fn connect(url: &str) -> Self {
        crate::store::postgres::block_on(async {
            let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .expect("the test server accepts connections");
            tokio::spawn(connection);
            Self { client }
        })
    }

    /// Runs `sql` (one or more statements), panicking on error.
    fn execute(&self, sql: &str) {
        crate::store::postgres::block_on(self.client.batch_execute(sql))
            .unwrap_or_else(|error| panic!("{sql}: {error}"));
    }
}

macro_rules! over_both_engines {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(#[test] fn $test() { super::$test(&super::TestDb::sqlite()) })*
        }
        mod postgres {
            $(#[test] fn $test() { super::$test(&super::TestDb::postgres()) })*
        }
    };
}

over_both_engines!(
    monitoring_records_round_trip_and_expire,
    import_assigns_dense_indices_and_is_idempotent_for_ids,
    import_of_an_event_for_an_unknown_item_changes_nothing,
    a_streamed_import_that_fails_to_read_an_event_changes_nothing,
    snapshots_keep_the_newest_versions,
    the_store_id_is_made_once_and_kept,
    reopening_keeps_data_and_schema_version,
    registers_new_users_once_and_returns_ids_in_order,
    one_failing_request_leaves_the_rest_of_its_group_stored,
    users_registered_by_another_writer_are_found_and_never_collide,
    an_idempotency_key_stores_once_and_refuses_another_request,
    runs_come_back_newest_first_and_survive_reopening,
    model_versions_are_never_handed_out_twice,
    exposures_and_sticky_assignments_round_trip,
    the_event_log_reads_back_what_was_written,
    a_lease_has_one_holder_until_it_expires_or_is_released,
    seeding_fills_an_empty_database_once,
    an_announcement_wakes_the_listeners_of_other_nodes,
    only_the_lease_holder_gets_model_versions_when_fenced,
    experiment_revisions_are_numbered_and_read_back_whole,
    weights_revisions_are_claimed_once_and_read_back_in_order,
    a_published_plugin_joins_or_replaces_its_name_in_the_next_revision,
    a_user_history_is_counted_newest_first_with_every_item,
    a_scan_visits_each_event_after_the_given_id_once_in_order,
    exposures_stored_one_by_one_and_in_batches_come_back_in_serving_order,
);

fn batch() -> ImportBatch {
    let items = (1..=3)
        .map(|i| ItemRow {
            external_id: i.to_string(),
            title: format!("Item {i}"),
            tags: vec!["drama".into()],
        })
        .collect();
    let events = vec![
        ImportEvent {
            user: "u1".into(),
            item: "2".into(),
            kind: EventKind::Rate,
            value: 4.0,
            timestamp: 10,
        },
        ImportEvent {
            user: "u2".into(),
            item: "3".into(),
            kind: EventKind::Click,
            value: 1.0,
            timestamp: 11,
        },
        ImportEvent {
            user: "u1".into(),
            item: "3".into(),
            kind: EventKind::View,
            value: 1.0,
            timestamp: 12,
        },
    ];
    ImportBatch { items, events }
}

fn import_assigns_dense_indices_and_is_idempotent_for_ids(db: &TestDb) {
    let store = db.open();
    assert_eq!(store.import(&batch()).unwrap(), 3);
    assert_eq!(store.import(&batch()).unwrap(), 3);
    let items = store.items().unwrap();
    assert_eq!(items.len(), 3);
    assert_eq!(items[1].external_id, "2");
    assert_eq!(
        store.users().unwrap(),
        vec!["u1".to_string(), "u2".to_string()]
    );
    let events = store.events_after(0).unwrap();
    assert_eq!(events.len(), 6);
    assert_eq!(
        (events[0].user, events[0].item, events[0].kind),
        (0, 1, EventKind::Rate)
    );
    assert_eq!(store.last_event_id().unwrap(), 6);
    assert_eq!(store.events_after(5).unwrap().len(), 1);
}

fn a_scan_visits_each_event_after_the_given_id_once_in_order(db: &TestDb) {
    let store = db.open();
    // Twice: six events.
    store.import(&batch()).unwrap();
    store.import(&batch()).unwrap();
    let mut seen = Vec::new();
    store
        .scan_events_after(2, &mut |event| {
            seen.push((event.id, event.user, event.item))
        })
        .unwrap();
    let expected: Vec<_> = store.events_after(0).unwrap()[2..]
        .iter()
        .map(|e| (e.id, e.user, e.item))
        .collect();
    assert_eq!(seen.len(), 4);
    assert_eq!(seen, expected);
    assert!(seen.windows(2).all(|pair| pair[0].0 < pair[1].0));
    let mut none = 0;
    store
        .scan_events_after(store.last_event_id().unwrap(), &mut |_| none += 1)
        .unwrap();
    assert_eq!(none, 0);
}

fn import_of_an_event_for_an_unknown_item_changes_nothing(db: &TestDb) {
    let store = db.open();
    let mut bad = batch();
    bad.events.push(ImportEvent {
        user: "u9".into(),
        item: "404".into(),
        kind: EventKind::Click,
        value: 1.0,
        timestamp: 1,
    });
    assert!(store.import(&bad).is_err());
    assert_eq!(store.counts().unwrap().items, 0);
    assert_eq!(store.counts().unwrap().events, 0);
}

fn a_streamed_import_that_fails_to_read_an_event_changes_nothing(db: &TestDb) {
    let store = db.open();
    // More events than one PostgreSQL chunk, so that some were inserted when the source
    // fails: the whole import must still roll back.
    let good = batch();
    let mut events = (0..120_000)
        .map(|n| {
            let mut event = good.events[n % good.events.len()].clone();
            event.user = format!("user-{}", n % 5_000);
            Ok(event)
        })
        .chain([Err(
            "ratings.csv record 120001: rating \"x\" is not a number".to_string(),
        )]);
    let error = store.import_stream(&good.items, &mut events).unwrap_err();
    assert!(error.to_string().contains("record 120001"), "{error}");
    // Not a multiple of SQLite's rows per statement: full statements, then the rest.
    const EVENTS: usize = 120_037;
    let counts = store.counts().unwrap();
    assert_eq!((counts.items, counts.users, counts.events), (0, 0, 0));
    // The same events without the failure: every one stored, users by first appearance.
    let mut events = (0..EVENTS).map(|n| {
        let mut event = good.events[n % good.events.len()].clone();
        event.user = format!("user-{}", n % 5_000);
        Ok(event)
    });
    assert_eq!(
        store.import_stream(&good.items, &mut events).unwrap(),
        EVENTS as u64
    );
    let users = store.users().unwrap();
    assert_eq!(users.len(), 5_000);
    assert_eq!(users[4_999], "user-4999");
    // Every event once, in the source's order, with its own fields (SQLite inserts them
    // many to a statement).
    let items = store.items().unwrap();
    let stored = store.events_after(0).unwrap();
    assert_eq!(stored.len(), EVENTS);
    assert!(stored.windows(2).all(|pair| pair[0].id < pair[1].id));
    for (n, event) in stored.iter().enumerate() {
        let source = &good.events[n % good.events.len()];
        assert_eq!(users[event.user as usize], format!("user-{}", n % 5_000));
        assert_eq!(items[event.item as usize].external_id, source.item);
        assert_eq!(
            (event.kind, event.value, event.timestamp),
            (source.kind, source.value, source.timestamp),
            "event {n}"
        );
    }
}

fn snapshots_keep_the_newest_versions(db: &TestDb) {
    let store = db.open();
    for version in 1..=5 {
        let row = SnapshotRow {
            plugin: "p".into(),
            version,
            created_at: 0,
            fingerprint: "f".into(),
            through_event: version as i64,
            bytes: vec![version as u8],
        };
        store.save_snapshot(&row, 2).unwrap();
    }
    let latest = store.latest_snapshot("p").unwrap().unwrap();
    assert_eq!((latest.version, latest.bytes.clone()), (5, vec![5]));
    assert!(store.latest_snapshot("q").unwrap().is_none());
}

fn the_store_id_is_made_once_and_kept(db: &TestDb) {
    let first = db.open().store_id().unwrap();
    assert_eq!(first.len(), 32);
    assert_eq!(db.open().store_id().unwrap(), first);
    let other = db.another().open().store_id().unwrap();
    assert_ne!(other, first);
}

fn reopening_keeps_data_and_schema_version(db: &TestDb) {
    db.open().import(&batch()).unwrap();
    let store = db.open();
    assert_eq!(store.counts().unwrap().events, 3);
    assert!(store.schema_version().unwrap() >= 1);
}

fn store_with_items(db: &TestDb) -> Store {
    let store = db.open();
    let items = (0..3)
        .map(|i| ItemRow {
            external_id: i.to_string(),
            title: format!("Item {i}"),
            tags: vec![],
        })
        .collect();
    store
        .import(&ImportBatch {
            items,
            events: vec![],
        })
        .unwrap();
    store
}

fn event(user: &str, item: u32) -> NewEvent {
    NewEvent {
        user: user.into(),
        item,
        kind: EventKind::Click,
        value: 1.0,
        timestamp: 5,
    }
}

fn request(events: &[NewEvent]) -> AppendRequest<'_> {
    AppendRequest {
        events,
        idempotency: None,
    }
}

fn stored(outcome: &AppendOutcome) -> &[EventRow] {
    match outcome {
        AppendOutcome::Stored(rows) => rows,
        other => panic!("not stored: {other:?}"),
    }
}

fn registers_new_users_once_and_returns_ids_in_order(db: &TestDb) {
    let store = store_with_items(db);
    let first = store
        .append_requests(&[request(&[event("old", 0)])], &|_| None)
        .unwrap();
    assert_eq!(stored(&first[0])[0].user, 0);
    let known = |id: &str| (id == "old").then_some(0);
    let events = [event("new", 1), event("old", 2), event("new", 0)];
    let appended = store.append_requests(&[request(&events)], &known).unwrap();
    let rows = stored(&appended[0]);
    assert_eq!(
        rows.iter().map(|r| r.user).collect::<Vec<_>>(),
        vec![1, 0, 1]
    );
    assert_eq!(rows.iter().map(|r| r.id).collect::<Vec<_>>(), vec![2, 3, 4]);
    assert_eq!(store.events_after(1).unwrap(), rows);
    assert_eq!(store.users_from(1).unwrap(), vec![(1, "new".to_string())]);
}

fn one_failing_request_leaves_the_rest_of_its_group_stored(db: &TestDb) {
    let store = store_with_items(db);
    // Item 9 does not exist: the foreign key fails that request, and only that one.
    let good = [event("a", 1)];
    let bad = [event("b", 1), event("b", 9)];
    let also_good = [event("c", 2)];
    let outcomes = store
        .append_requests(
            &[request(&good), request(&bad), request(&also_good)],
            &|_| None,
        )
        .unwrap();
    assert!(
        matches!(outcomes[1], AppendOutcome::Failed(_)),
        "{outcomes:?}"
    );
    assert_eq!(stored(&outcomes[0])[0].user, 0);
    // "b" was rolled back with its request: "c" takes the next index.
    assert_eq!(stored(&outcomes[2])[0].user, 1);
    assert_eq!(store.counts().unwrap().events, 2);
    assert_eq!(store.counts().unwrap().users, 2);
}

fn users_registered_by_another_writer_are_found_and_never_collide(db: &TestDb) {
    let store = store_with_items(db);
    store
        .append_requests(&[request(&[event("live-1", 0)])], &|_| None)
        .unwrap();
    // `recohost import` into the same database, while the server runs.
    let other = db.open();
    other
        .import(&ImportBatch {
            items: vec![],
            events: vec![ImportEvent {
                user: "imported".into(),
                item: "1".into(),
                kind: EventKind::Click,
                value: 1.0,
                timestamp: 1,
            }],
        })
        .unwrap();
    // The server's view knows only "live-1" (index 0).
    let known = |id: &str| (id == "live-1").then_some(0);
    let events = [event("imported", 2), event("live-2", 2)];
    let outcomes = store.append_requests(&[request(&events)], &known).unwrap();
    let users: Vec<u32> = stored(&outcomes[0]).iter().map(|r| r.user).collect();
    assert_eq!(users, vec![1, 2]);
    assert_eq!(
        store.users_from(1).unwrap(),
        vec![(1, "imported".to_string()), (2, "live-2".to_string())]
    );
}

fn an_idempotency_key_stores_once_and_refuses_another_request(db: &TestDb) {
    let store = store_with_items(db);
    let events = [event("a", 1), event("a", 2)];
    let keyed = |hash| AppendRequest {
        events: &events,
        idempotency: Some(("key-1", hash)),
    };
    // The same key twice in one group, then again later.
    let outcomes = store
        .append_requests(&[keyed("h"), keyed("h")], &|_| None)
        .unwrap();
    let first_id = stored(&outcomes[0])[0].id;
    assert_eq!(
        outcomes[1],
        AppendOutcome::Replayed {
            first_event_id: first_id,
            stored: 2
        }
    );
    let again = store.append_requests(&[keyed("h")], &|_| None).unwrap();
    assert!(matches!(again[0], AppendOutcome::Replayed { .. }));
    let other = store.append_requests(&[keyed("other")], &|_| None).unwrap();
    assert_eq!(other[0], AppendOutcome::KeyReused);
    assert_eq!(store.counts().unwrap().events, 2);
    assert_eq!(store.expire_idempotency_keys().unwrap(), 0);
}

fn run(id: u64) -> LearningRun {
    let mut outcomes = serde_json::Map::new();
    outcomes.insert("p".into(), serde_json::json!({"status": "updated"}));
    LearningRun {
        update_id: id,
        kind: "update".into(),
        trigger: "manual".into(),
        started_at_ms: 1_000 + id,
        duration_ms: 2.5,
        feedback_count: 10,
        through_event: 42,
        models_updated: 1,
        outcomes,
    }
}

fn runs_come_back_newest_first_and_survive_reopening(db: &TestDb) {
    {
        let store = db.open();
        for id in 1..=3 {
            store.record_learning_run(&run(id)).unwrap();
        }
    }
    let store = db.open();
    let runs = store.learning_runs(2).unwrap();
    assert_eq!(runs, vec![run(3), run(2)]);
    assert_eq!(store.learning_run_counts().unwrap(), (3, 3));
}

fn model_versions_are_never_handed_out_twice(db: &TestDb) {
    assert_eq!(
        db.open()
            .allocate_model_versions(&["p", "q"], 7, None)
            .unwrap(),
        vec![1, 1]
    );
    // Four writers on connections of their own, at once.
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let store = db.open();
            std::thread::spawn(move || {
                (0..25)
                    .map(|i| store.allocate_model_versions(&["p"], i, None).unwrap()[0])
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all: Vec<u64> = writers
        .into_iter()
        .flat_map(|writer| writer.join().unwrap())
        .collect();
    all.sort_unstable();
    assert_eq!(all, (2..=101).collect::<Vec<u64>>());
    let versions = db.open().model_versions().unwrap();
    assert_eq!(versions["p"].version, 101);
    assert_eq!(
        versions["q"],
        VersionRow {
            version: 1,
            through_event: 7
        }
    );
}

fn exposure(user: &str, group: &str) -> ExposureRow {
    ExposureRow {
        experiment_id: "e".into(),
        group_name: group.into(),
        user_id: user.into(),
        plugin: "p".into(),
        model_version: 1,
        after_event: 0,
        at_ms: 1,
        weights_revision: 0,
    }
}

fn exposures_stored_one_by_one_and_in_batches_come_back_in_serving_order(db: &TestDb) {
    let store = db.open();
    // Stored one row each, as by a build before batches or an older node during a rolling
    // upgrade: one served before the batch below, one after it.
    db.execute(
        "INSERT INTO exposures (experiment_id, group_name, user_id, plugin, model_version,
                                after_event, at_ms, weights_revision)
         VALUES ('e', 'b', 'early', 'p', 1, 0, 5, 0), ('e', 'a', 'late', 'p', 1, 0, 20, 0)",
    );
    let batched = |user: &str, at_ms| ExposureRow {
        at_ms,
        ..exposure(user, "a")
    };
    store
        .append_exposures(&[batched("first", 10), batched("second", 10)], &[])
        .unwrap();
    let exposures = store.exposures_of("e").unwrap();
    let read: Vec<_> = exposures
        .iter()
        .map(|e| (e.user_id.as_str(), e.at_ms))
        .collect();
    assert_eq!(
        read,
        [("early", 5), ("first", 10), ("second", 10), ("late", 20)]
    );
    assert!(exposures.windows(2).all(|pair| pair[0].id < pair[1].id));
}

fn exposures_and_sticky_assignments_round_trip(db: &TestDb) {
    let store = db.open();
    let sticky = |group: &str, version| StickyRow {
        experiment_id: "e".into(),
        user_id: "u1".into(),
        group_name: group.into(),
        bucket_version: version,
        assigned_at_ms: 5,
    };
    let late = ExposureRow {
        after_event: 9,
        at_ms: 1_700_000_000_123,
        weights_revision: 4,
        ..exposure("u2", "b")
    };
    store
        .append_exposures(
            &[exposure("u1", "a"), exposure("u1", "a"), late.clone()],
            &[sticky("a", 1)],
        )
        .unwrap();
    store.append_exposures(&[], &[sticky("b", 2)]).unwrap();
    // Polled by when they were stored (the database's clock), not when they were made.
    let (rows, stored_at) = store.sticky_assignments(0).unwrap();
    assert_eq!(rows, vec![sticky("b", 2)]);
    let now = crate::store::unix_now_ms();
    assert!(stored_at.abs_diff(now) < 60_000, "{stored_at} vs {now}");
    assert_eq!(store.sticky_assignments(stored_at).unwrap().0, rows);
    assert_eq!(
        store.sticky_assignments(stored_at + 1).unwrap(),
        (Vec::new(), stored_at + 1)
    );
    let exposures = store.exposures_of("e").unwrap();
    assert_eq!(
        exposures
            .iter()
            .map(|e| (e.user_id.as_str(), e.group_name.as_str()))
            .collect::<Vec<_>>(),
        vec![("u1", "a"), ("u1", "a"), ("u2", "b")]
    );
    let read = &exposures[2];
    assert_eq!(
        (read.after_event, read.at_ms, read.weights_revision),
        (9, 1_700_000_000_123, 4)
    );
    assert!(store.exposures_of("other").unwrap().is_empty());
}

fn weights_revisions_are_claimed_once_and_read_back_in_order(db: &TestDb) {
    let store = db.open();
    let row = |experiment: &str, revision: u64, body: &str| crate::store::WeightsRevisionRow {
        experiment_id: experiment.into(),
        revision,
        at_ms: 1_000 + revision,
        body: body.into(),
    };
    assert!(store.latest_weights_revisions().unwrap().is_empty());
    assert!(
        store
            .append_weights_revision(&row("a", 1, "{\"w\":1}"))
            .unwrap()
    );
    assert!(
        store
            .append_weights_revision(&row("a", 2, "{\"w\":2}"))
            .unwrap()
    );
    assert!(store.append_weights_revision(&row("b", 1, "{}")).unwrap());
    // A second writer with the same number is refused, and the first one's row stays.
    assert!(
        !store
            .append_weights_revision(&row("a", 2, "{\"w\":\"other\"}"))
            .unwrap()
    );
    assert_eq!(
        store.weights_revisions("a", None).unwrap(),
        vec![row("a", 1, "{\"w\":1}"), row("a", 2, "{\"w\":2}")]
    );
    assert_eq!(
        store.weights_revisions("a", Some(1)).unwrap(),
        vec![row("a", 2, "{\"w\":2}")]
    );
    assert_eq!(
        store.latest_weights_revisions().unwrap(),
        vec![row("a", 2, "{\"w\":2}"), row("b", 1, "{}")]
    );
    assert!(store.weights_revisions("c", None).unwrap().is_empty());
}

fn the_event_log_reads_back_what_was_written(db: &TestDb) {
    let store = store_with_items(db);
    let events: Vec<NewEvent> = (0..50)
        .map(|i| event(&format!("u{}", i % 7), i % 3))
        .collect();
    let outcomes = store
        .append_requests(&[request(&events[..20]), request(&events[20..])], &|_| None)
        .unwrap();
    let rows: Vec<EventRow> = outcomes.iter().flat_map(|o| stored(o).to_vec()).collect();
    assert_eq!(store.events_after(0).unwrap(), rows);
    assert_eq!(store.last_event_id().unwrap(), rows[49].id);
    let (after, before) = (rows[9].id, rows[40].id);
    assert_eq!(store.count_events_between(after, before, 3).unwrap(), 30);
    assert_eq!(store.count_events_between(after, before, 1).unwrap(), 10);
    assert_eq!(
        store.events_between(after, before, 3, 5).unwrap(),
        rows[10..15].to_vec()
    );
    assert_eq!(
        store
            .training_window(rows[29].id, None, Some(4), 3)
            .unwrap(),
        rows[26..30].to_vec()
    );
    assert_eq!(
        store
            .training_window(rows[29].id, Some(6), None, 3)
            .unwrap(),
        Vec::new()
    );
    let mut visited = Vec::new();
    store
        .for_each_event_after(rows[44].id, &mut |id, user, kind, _, timestamp| {
            visited.push((id, user.to_string(), kind, timestamp))
        })
        .unwrap();
    let expected: Vec<_> = rows[45..]
        .iter()
        .zip(&events[45..])
        .map(|(row, event)| (row.id, event.user.clone(), row.kind, row.timestamp))
        .collect();
    assert_eq!(visited, expected);
    assert_eq!(store.users().unwrap().len(), 7);
}

/// PostgreSQL hands out sequence values in another order than transactions commit. A reader
/// that has seen id N must never later find a committed event at or below N: here a slow
/// transaction (held up by a row lock, the way a busy disk or a GC pause would hold it)
/// draws an id first, a fast one commits meanwhile, and the reader reads in between.
#[test]
fn a_slow_concurrent_append_is_never_skipped_by_a_reader() {
    let db = TestDb::postgres();
    let store = std::sync::Arc::new(store_with_items(&db));
    let Database::Postgres(url) = &db.database else {
        unreachable!()
    };
    // Another session locks item 1's row: the foreign-key check of an event of item 1
    // waits for it, after the event has drawn its id.
    // Both users exist already, so that nothing but the event log orders the two appends.
    store
        .append_requests(&[request(&[event("slow", 0), event("fast", 0)])], &|_| None)
        .unwrap();
    let known = |user: &str| match user {
        "slow" => Some(0),
        "fast" => Some(1),
        _ => None,
    };
    let first = store.last_event_id().unwrap();
    let blocker = RawSession::connect(url);
    blocker.execute("BEGIN; SELECT * FROM items WHERE idx = 1 FOR UPDATE");
    let slow = {
        let store = store.clone();
        std::thread::spawn(move || store.append_requests(&[request(&[event("slow", 1)])], &known))
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    let fast = {
        let store = store.clone();
        std::thread::spawn(move || store.append_requests(&[request(&[event("fast", 2)])], &known))
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    let seen = store.events_after(first).unwrap();
    let position = seen.last().map_or(first, |row| row.id);
    blocker.execute("ROLLBACK");
    slow.join().unwrap().unwrap();
    fast.join().unwrap().unwrap();
    let later = store.events_after(position).unwrap();
    assert_eq!(
        seen.len() + later.len(),
        2,
        "a reader at position {position} missed an event: first {seen:?}, then {later:?}"
    );
}

fn a_lease_has_one_holder_until_it_expires_or_is_released(db: &TestDb) {
    let (a, b) = (db.open(), db.open());
    assert_eq!(a.lease("learner").unwrap(), None);
    assert_eq!(a.acquire_lease("learner", "a", 60_000).unwrap(), Some(1));
    // Renewed by its holder: the same term.
    assert_eq!(a.acquire_lease("learner", "a", 60_000).unwrap(), Some(1));
    assert_eq!(b.acquire_lease("learner", "b", 60_000).unwrap(), None);
    let held = b.lease("learner").unwrap().unwrap();
    assert_eq!((held.holder.as_str(), held.term), ("a", 1));
    assert!(held.remaining_ms > 50_000, "{held:?}");
    // Only its holder can give it up; then the next holder gets the next term.
    b.release_lease("learner", "b").unwrap();
    assert_eq!(b.acquire_lease("learner", "b", 60_000).unwrap(), None);
    a.release_lease("learner", "a").unwrap();
    assert_eq!(b.acquire_lease("learner", "b", 60_000).unwrap(), Some(2));
    // Left to expire: taken over once the database's clock passes it.
    assert_eq!(b.acquire_lease("learner", "b", 200).unwrap(), Some(2));
    assert_eq!(a.acquire_lease("learner", "a", 60_000).unwrap(), None);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(b.lease("learner").unwrap().unwrap().remaining_ms, 0);
    assert_eq!(a.acquire_lease("learner", "a", 60_000).unwrap(), Some(3));
    // Leases of other names are their own.
    assert_eq!(b.acquire_lease("other", "b", 60_000).unwrap(), Some(1));
}

fn seeding_fills_an_empty_database_once(db: &TestDb) {
    let seeders: Vec<_> = (0..3)
        .map(|_| {
            let store = db.open();
            std::thread::spawn(move || store.seed(&batch()).unwrap())
        })
        .collect();
    let seeded: Vec<Option<u64>> = seeders.into_iter().map(|s| s.join().unwrap()).collect();
    assert_eq!(
        seeded.iter().filter(|s| s.is_some()).count(),
        1,
        "{seeded:?}"
    );
    assert_eq!(db.open().counts().unwrap().events, 3);
}

/// An import (or another node's commit) holding the event log past `lock_timeout` makes an
/// append fail as busy, which the event writer retries while its clients wait, instead of
/// waiting without end or failing the request for good.
#[test]
fn an_append_behind_a_long_held_event_log_lock_fails_as_busy() {
    let db = TestDb::postgres();
    let store = store_with_items(&db);
    let Database::Postgres(url) = &db.database else {
        unreachable!()
    };
    let importer = RawSession::connect(url);
    importer.execute(&format!(
        "BEGIN; SELECT pg_advisory_xact_lock({})",
        crate::store::postgres::lock_keys::EVENT_LOG
    ));
    let error = store
        .append_requests(&[request(&[event("waiting", 1)])], &|_| None)
        .unwrap_err();
    assert!(error.is_busy(), "{error}");
    importer.execute("ROLLBACK");
    store
        .append_requests(&[request(&[event("waiting", 1)])], &|_| None)
        .unwrap();
}

fn an_announcement_wakes_the_listeners_of_other_nodes(db: &TestDb) {
    let (learner, follower) = (db.open(), db.open());
    let listener = follower.listen("test_models").unwrap();
    let quiet = std::time::Duration::from_millis(50);
    assert!(!listener.wait(quiet).unwrap());
    learner.announce("test_models", "7").unwrap();
    // PostgreSQL delivers it; SQLite has one node and nobody to tell.
    let delivered = learner.engine() == "postgres";
    let wait = std::time::Duration::from_secs(if delivered { 5 } else { 0 });
    assert_eq!(listener.wait(wait).unwrap(), delivered);
    assert!(!listener.wait(quiet).unwrap());
}

fn only_the_lease_holder_gets_model_versions_when_fenced(db: &TestDb) {
    let store = db.open();
    let fence = |holder: &str, term| Fence {
        lease: "learner",
        holder: holder.into(),
        term,
    };
    let fenced = |result: StoreResult<Vec<u64>>| matches!(result, Err(StoreError::Fenced(_)));
    // Nobody holds the lease yet.
    assert!(fenced(store.allocate_model_versions(
        &["p"],
        1,
        Some(&fence("a", 1))
    )));
    assert_eq!(
        store.acquire_lease("learner", "a", 60_000).unwrap(),
        Some(1)
    );
    assert_eq!(
        store
            .allocate_model_versions(&["p"], 1, Some(&fence("a", 1)))
            .unwrap(),
        vec![1]
    );
    // Another holder, or the same under an old term after losing it, gets nothing.
    assert!(fenced(store.allocate_model_versions(
        &["p"],
        2,
        Some(&fence("b", 1))
    )));
    store.release_lease("learner", "a").unwrap();
    assert_eq!(
        store.acquire_lease("learner", "b", 60_000).unwrap(),
        Some(2)
    );
    assert!(fenced(store.allocate_model_versions(
        &["p"],
        2,
        Some(&fence("a", 1))
    )));
    assert_eq!(
        store
            .allocate_model_versions(&["p"], 2, Some(&fence("b", 2)))
            .unwrap(),
        vec![2]
    );
    // A snapshot stored without a `model_versions` row (an old database) is never reused.
    store
        .save_snapshot(
            &SnapshotRow {
                plugin: "old".into(),
                version: 9,
                created_at: 0,
                fingerprint: "f".into(),
                through_event: 0,
                bytes: vec![1],
            },
            5,
        )
        .unwrap();
    assert_eq!(
        store.allocate_model_versions(&["old"], 0, None).unwrap(),
        vec![10]
    );
}

fn experiment_revisions_are_numbered_and_read_back_whole(db: &TestDb) {
    let store = db.open();
    assert_eq!(store.latest_experiment_revision().unwrap(), 0);
    assert_eq!(store.latest_experiments().unwrap(), None);
    let files = |text: &str| {
        vec![
            ("b.toml".to_string(), text.to_string()),
            ("a.toml".to_string(), "id = \"a\"\n".to_string()),
        ]
    };
    assert_eq!(
        store.publish_experiments(&files("one"), false).unwrap(),
        Some(1)
    );
    assert_eq!(
        db.open().publish_experiments(&files("two"), true).unwrap(),
        Some(2)
    );
    // The same files again: stored only when asked to regardless.
    let mut same = files("two");
    same.sort();
    assert_eq!(store.publish_experiments(&same, true).unwrap(), None);
    assert_eq!(store.latest_experiment_revision().unwrap(), 2);
    let (revision, read) = store.latest_experiments().unwrap().unwrap();
    assert_eq!(revision, 2);
    let mut expected = files("two");
    expected.sort();
    assert_eq!(read, expected);
}

fn a_published_plugin_joins_or_replaces_its_name_in_the_next_revision(db: &TestDb) {
    use crate::store::PublishedPlugin;
    let store = db.open();
    assert_eq!(store.latest_plugin_revision().unwrap(), 0);
    assert_eq!(store.latest_plugins().unwrap(), None);
    let config = |k: i64| serde_json::json!({ "k": k }).as_object().unwrap().clone();
    let a1 = PublishedPlugin::new("a", b"wasm a1", config(1), Default::default());
    let b1 = PublishedPlugin::new("b", b"wasm b1", config(2), Default::default());
    let a2 = PublishedPlugin::new("a", b"wasm a2", config(3), Default::default());
    assert_eq!(store.publish_plugin(&a1, b"wasm a1").unwrap(), 1);
    // Another connection (another node) extends the newest revision, it does not replace it.
    assert_eq!(db.open().publish_plugin(&b1, b"wasm b1").unwrap(), 2);
    assert_eq!(store.publish_plugin(&a2, b"wasm a2").unwrap(), 3);
    // The same bytes again: stored once, still a new revision.
    assert_eq!(store.publish_plugin(&a2, b"wasm a2").unwrap(), 4);
    assert_eq!(store.latest_plugin_revision().unwrap(), 4);
    let (revision, plugins) = store.latest_plugins().unwrap().unwrap();
    assert_eq!(revision, 4);
    assert_eq!(plugins, vec![a2.clone(), b1.clone()]);
    assert_ne!(a1.wasm_sha256, a2.wasm_sha256);
    for (plugin, bytes) in [(&a1, b"wasm a1"), (&b1, b"wasm b1"), (&a2, b"wasm a2")] {
        assert_eq!(
            store.plugin_wasm(&plugin.wasm_sha256).unwrap().as_deref(),
            Some(&bytes[..])
        );
    }
    assert_eq!(store.plugin_wasm("0000").unwrap(), None);
}

fn a_user_history_is_counted_newest_first_with_every_item(db: &TestDb) {
    let store = store_with_items(db);
    let events: Vec<NewEvent> = (0..30)
        .map(|i| event(&format!("u{}", i % 3), (i / 3) % 3))
        .collect();
    let outcomes = store
        .append_requests(&[request(&events)], &|_| None)
        .unwrap();
    let rows: Vec<EventRow> = outcomes.iter().flat_map(|o| stored(o).to_vec()).collect();
    let user = rows[0].user;
    let mine: Vec<EventRow> = rows.iter().filter(|r| r.user == user).copied().collect();
    let history = store.user_history(user, 3, 4).unwrap();
    assert_eq!(history.count, 10);
    assert_eq!(history.through, mine[9].id);
    let newest: Vec<EventRow> = mine.iter().rev().take(4).copied().collect();
    assert_eq!(history.recent, newest);
    assert_eq!(history.items, vec![0, 1, 2]);
    // Only the catalog's first items count.
    let first_item = store.user_history(user, 1, 100).unwrap();
    assert_eq!(
        first_item.count,
        mine.iter().filter(|r| r.item == 0).count() as u64
    );
    assert_eq!(first_item.items, vec![0]);
    assert_eq!(store.user_history(9_999, 3, 4).unwrap(), Default::default());
}

fn monitoring_records_round_trip_and_expire(db: &TestDb) {
    let store = db.open();
    let list = |at_ms: u64, user: &str| ServedListRow {
        id: 0,
        at_ms,
        user_id: user.into(),
        plugin: "hybrid".into(),
        model_version: 7,
        after_event: 41,
        items: vec![3, 1, 4_000_000_000],
        scores: vec![0.5, -1.25, f32::MIN_POSITIVE],
    };
    assert_eq!(store.last_served_list_id().unwrap(), 0);
    // Two appends: two batches (one row each, `served_list_batches.rs`).
    store
        .append_served_lists(&[list(1_000, "a"), list(2_000, "b")])
        .unwrap();
    store.append_served_lists(&[list(3_000, "c")]).unwrap();
    store.append_served_lists(&[]).unwrap();
    let all = store.served_lists_after(0, 10).unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(
        all.iter().map(|l| l.user_id.as_str()).collect::<Vec<_>>(),
        ["a", "b", "c"]
    );
    assert_eq!(
        ServedListRow {
            id: 0,
            ..all[1].clone()
        },
        list(2_000, "b"),
        "items and scores read back bit for bit"
    );
    assert!(all.windows(2).all(|w| w[0].id < w[1].id));
    assert_eq!(store.last_served_list_id().unwrap(), all[2].id);
    let after_first = store.served_lists_after(all[0].id, 1).unwrap();
    assert_eq!(after_first.len(), 1);
    assert_eq!(after_first[0].user_id, "b");
    // Paging from inside a batch into the next, from a batch's last list into the next,
    // and past the newest.
    let rest = store.served_lists_after(all[0].id, 10).unwrap();
    assert_eq!(rest, all[1..].to_vec());
    assert_eq!(
        store.served_lists_after(all[1].id, 1).unwrap(),
        all[2..].to_vec()
    );
    assert!(store.served_lists_after(all[2].id, 10).unwrap().is_empty());

    store.append_monitoring_window(1_500, "{\"w\":1}").unwrap();
    store.append_monitoring_window(2_500, "{\"w\":2}").unwrap();
    assert_eq!(
        store.monitoring_windows(2_000, 10).unwrap(),
        vec![(2_500, "{\"w\":2}".to_string())]
    );
    assert_eq!(store.monitoring_windows(0, 1).unwrap()[0].0, 2_500);

    let old = store.raise_alert("drift:rating", 1_000, "{}").unwrap();
    let open = store.raise_alert("quality:hybrid", 1_100, "{}").unwrap();
    store
        .resolve_alert(old, 1_800, "{\"resolved\":true}")
        .unwrap();
    let alerts = store.alerts(0, 10).unwrap();
    assert_eq!(
        alerts.iter().map(|a| a.id).collect::<Vec<_>>(),
        vec![open, old]
    );
    assert_eq!(alerts[1].resolved_at_ms, Some(1_800));
    assert_eq!(alerts[1].body, "{\"resolved\":true}");
    // Resolved before the horizon: left out; open ones always listed (a horizon beyond
    // every time too: what a new learner reads to adopt the open alerts).
    let recent = store.alerts(1_900, 10).unwrap();
    assert_eq!(recent.iter().map(|a| a.id).collect::<Vec<_>>(), vec![open]);
    let only_open = store.alerts(u64::MAX, 10).unwrap();
    assert_eq!(
        only_open.iter().map(|a| a.id).collect::<Vec<_>>(),
        vec![open]
    );

    // A rollback is a learning run like the others.
    let mut rollback = run(1);
    rollback.kind = "rollback".into();
    store.record_learning_run(&rollback).unwrap();
    assert_eq!(store.learning_runs(1).unwrap()[0].kind, "rollback");

    // Lists before 2,500 go (the first batch, all of whose lists are older); windows before
    // 2,000, with alerts resolved before it; open alerts stay.
    assert_eq!(store.expire_monitoring(2_500, 2_000).unwrap(), 3);
    assert_eq!(store.served_lists_after(0, 10).unwrap(), all[2..].to_vec());
    // Ids keep growing once every list has expired: a reader's place stays valid.
    assert_eq!(store.expire_monitoring(u64::MAX, 0).unwrap(), 1);
    assert_eq!(store.last_served_list_id().unwrap(), 0);
    store.append_served_lists(&[list(4_000, "d")]).unwrap();
    let newest = store.served_lists_after(all[2].id, 10).unwrap();
    assert_eq!(newest.len(), 1);
    assert!(newest[0].id > all[2].id);
    assert_eq!(store.monitoring_windows(0, 10).unwrap().len(), 1);
    assert_eq!(store.alerts(0, 10).unwrap().len(), 1);
}
