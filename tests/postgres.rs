//! A server on PostgreSQL (`database_url`): the same API as on SQLite, its data in a real
//! PostgreSQL server started here from Debian's package, and the database's faults: stopped
//! and started again while clients post events.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use recohost_e2e::{PLUGINS, Server, TestPostgres, config_text, error_code};
use serde_json::{Value, json};

/// The bundled plugins on PostgreSQL at `url`, each update's models stored at once.
fn config(url: &str) -> String {
    config_text(&format!(
        "database_url = {url:?}\n[learning]\nsnapshot_interval_secs = 0\n"
    ))
}

fn events_stored(server: &Server) -> u64 {
    server.get("/health").1["events"].as_u64().unwrap()
}

/// Each plugin's serving model version.
fn versions(server: &Server) -> Vec<(String, u64)> {
    PLUGINS
        .iter()
        .map(|name| {
            let status = server.plugin_status(name).unwrap();
            (name.to_string(), status["model_version"].as_u64().unwrap())
        })
        .collect()
}

fn database_name(url: &str) -> &str {
    url.rsplit('/').next().unwrap()
}

#[test]
fn a_server_on_postgres_stores_serves_learns_and_restarts_with_everything() {
    let postgres = TestPostgres::shared();
    let url = postgres.create_database();
    let temp = tempfile::tempdir().unwrap();
    let data_dir = temp.path().join("data");
    let server = Server::start_in(&data_dir, &config(&url)).unwrap();
    let (status, health) = server.get("/health");
    assert_eq!(
        (status, health["database"].as_str()),
        (200, Some("postgres")),
        "{health}"
    );
    assert!(
        !data_dir.join("recohost.db").exists(),
        "nothing may go to SQLite when database_url is set"
    );
    // The demo data went to PostgreSQL.
    let demo_events = events_stored(&server);
    assert!(demo_events > 10_000, "{health}");
    assert_eq!(
        postgres.count(database_name(&url), "SELECT COUNT(*) FROM events"),
        demo_events
    );

    // A new user's events, one request at a time and in a batch.
    for item in 1..=5 {
        let (status, body) = server.post(
            "/events",
            &json!({"user_id": "pg-user", "item_id": item, "event_type": "click"}),
        );
        assert_eq!(status, 200, "{body}");
    }
    let batch: Vec<Value> = (6..=10)
        .map(|item| json!({"user_id": "pg-user", "item_id": item, "event_type": "rate", "rating": 4.5}))
        .collect();
    let (status, body) = server.post("/events/batch", &json!({ "events": batch }));
    assert_eq!((status, body["stored"].as_u64()), (200, Some(5)), "{body}");
    let (status, body) = server.post(
        "/recommend",
        &json!({"user_id": "pg-user", "n_recommendations": 20}),
    );
    assert_eq!(status, 200, "{body}");
    let served: HashSet<String> = body["recommendations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["item_id"].to_string().trim_matches('"').to_string())
        .collect();
    for item in 1..=10 {
        assert!(
            !served.contains(&item.to_string()),
            "item {item} was seen: {body}"
        );
    }

    // An update learns them and stores every plugin's new model in PostgreSQL.
    let before = versions(&server);
    let (status, answer) = server.post_as("/learning/trigger-update", None);
    assert_eq!(status, 202, "{answer}");
    server.wait_for("/learning/stats", Duration::from_secs(60), |stats| {
        stats["running"].is_null() && stats["last_update"]["update_id"].as_u64().is_some()
    });
    let learned = versions(&server);
    for ((name, old), (_, new)) in before.iter().zip(&learned) {
        assert!(new > old, "{name} did not learn: {old} -> {new}");
        let stored = postgres.count(
            database_name(&url),
            &format!("SELECT COALESCE(MAX(version), 0) FROM snapshots WHERE plugin = '{name}'"),
        );
        assert_eq!(stored, *new, "{name}'s newest snapshot");
    }

    // Killed and started again: every event is there, every model restored, not retrained.
    server.kill();
    let server = Server::start_in(&data_dir, &config(&url)).unwrap();
    assert_eq!(events_stored(&server), demo_events + 10);
    assert_eq!(server.seen_items("pg-user").len(), 10);
    assert_eq!(versions(&server), learned);
}

#[test]
fn with_postgres_down_events_are_refused_recommendations_served_and_all_resumes() {
    // A server of its own: this test stops it.
    let postgres = TestPostgres::start();
    let url = postgres.create_database();
    let temp = tempfile::tempdir().unwrap();
    let server = Arc::new(Server::start_in(&temp.path().join("data"), &config(&url)).unwrap());
    let demo_events = events_stored(&server);

    // A client posts events all along, each with its own Idempotency-Key, and retries a
    // refused one with the same key until it is acknowledged.
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let (server, stop) = (server.clone(), stop.clone());
        std::thread::spawn(move || {
            let http = reqwest::blocking::Client::new();
            let (mut acknowledged, mut refusals) = (0u64, Vec::new());
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let body = json!({"user_id": format!("u-{}", i % 50), "item_id": 1 + i % 90, "event_type": "click"});
                loop {
                    let response = http
                        .post(format!("{}/events", server.base))
                        .header("Idempotency-Key", format!("event-{i}"))
                        .json(&body)
                        .send()
                        .unwrap();
                    let status = response.status().as_u16();
                    let retry_after = response.headers().get("retry-after").is_some();
                    let answer: Value = response.json().unwrap();
                    if status == 200 {
                        acknowledged += 1;
                        break;
                    }
                    refusals.push((status, retry_after, error_code(&answer)));
                    std::thread::sleep(Duration::from_millis(50));
                }
                i += 1;
            }
            (acknowledged, refusals)
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    postgres.stop();
    let stopped = Instant::now();

    // Down: events refused with 503 and Retry-After, recommendations served from memory.
    let (status, answer) = server.post(
        "/events",
        &json!({"user_id": "while-down", "item_id": 3, "event_type": "click"}),
    );
    assert_eq!(
        (status, error_code(&answer).as_str()),
        (503, "database_unavailable"),
        "{answer}"
    );
    while stopped.elapsed() < Duration::from_secs(3) {
        let (status, body) = server.post(
            "/recommend",
            &json!({"user_id": "u-1", "n_recommendations": 5}),
        );
        assert_eq!(status, 200, "{body}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Back: no restart of recohost; events are acknowledged again within seconds.
    postgres.resume();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, answer) = server.post(
            "/events",
            &json!({"user_id": "after", "item_id": 4, "event_type": "click"}),
        );
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "events still refused: {answer}");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let (acknowledged, refusals) = client.join().unwrap();
    // The client may have been refused, or (its request committed just before the stop)
    // answered once the database was back: either way only with a 503 to retry.
    for (status, retry_after, code) in &refusals {
        assert_eq!(
            (*status, *retry_after, code.as_str()),
            (503, true, "database_unavailable")
        );
    }

    // Every acknowledged event stored exactly once, nothing refused stored: the client's
    // events (one per key), the "after" event, and the demo data.
    let database = database_name(&url);
    assert_eq!(
        postgres.count(database, "SELECT COUNT(*) FROM events"),
        demo_events + acknowledged + 1
    );
    assert_eq!(
        postgres.count(database, "SELECT COUNT(*) FROM idempotency_keys"),
        acknowledged
    );
    assert_eq!(events_stored(&server), demo_events + acknowledged + 1);
}

/// The top recommendations (item ids) and serving model versions of each of `users`.
fn answers(server: &Server, users: &[&str]) -> Vec<Value> {
    users
        .iter()
        .map(|user| {
            let (status, body) = server.post(
                "/recommend",
                &json!({"user_id": user, "n_recommendations": 10}),
            );
            assert_eq!(status, 200, "{body}");
            let items: Vec<Value> = body["recommendations"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["item_id"].clone())
                .collect();
            json!({"user": user, "items": items, "model": body["model"].clone(), "version": body["model_version"].clone()})
        })
        .collect()
}

const TABLES: [&str; 12] = [
    "items",
    "users",
    "events",
    "snapshots",
    "learning_runs",
    "model_versions",
    "exposures",
    "exposure_batches",
    "sticky_assignments",
    "idempotency_keys",
    "experiment_revisions",
    "weights_revisions",
];

#[test]
fn migrate_copies_a_sqlite_deployment_with_equal_counts_and_identical_recommendations() {
    let postgres = TestPostgres::shared();
    let temp = tempfile::tempdir().unwrap();
    let data_dir = temp.path().join("data");
    // A SQLite deployment with a history of its own: new users, a keyed event, an update,
    // the shipped experiment's exposures, and a bandit with weights revisions.
    let experiments_dir = temp.path().join("experiments");
    std::fs::create_dir(&experiments_dir).unwrap();
    std::fs::copy(
        recohost_e2e::workspace_root().join("experiments/model_comparison.toml"),
        experiments_dir.join("model_comparison.toml"),
    )
    .unwrap();
    std::fs::write(
        experiments_dir.join("bandit.toml"),
        "id = \"bandit\"\nname = \"Bandit\"\nstatus = \"running\"\nsticky = true\n\
         priority = -1\n[allocation]\ntype = \"thompson\"\nperiod_secs = 1\n\
         [[groups]]\nname = \"a\"\nplugin = \"popularity\"\n\
         [[groups]]\nname = \"b\"\nplugin = \"collaborative\"\n",
    )
    .unwrap();
    let experiments = format!(
        "experiments_dir = {:?}\n",
        experiments_dir.display().to_string()
    );
    let server = Server::start_in(
        &data_dir,
        &config_text(&format!(
            "{experiments}[learning]\nsnapshot_interval_secs = 0\n"
        )),
    )
    .unwrap();
    for item in 1..=8 {
        let response = server.post_response(
            "/events",
            &json!({"user_id": "mover", "item_id": item * 3, "event_type": "click"}),
        );
        assert_eq!(response.status(), 200);
    }
    let (status, first_receipt) = server_post_keyed(&server.base, "move-1");
    assert_eq!(status, 200, "{first_receipt}");
    let (status, answer) = server.post_as("/learning/trigger-update", None);
    assert_eq!(status, 202, "{answer}");
    server.wait_for("/learning/stats", Duration::from_secs(60), |stats| {
        stats["running"].is_null() && stats["last_update"]["update_id"].as_u64().is_some()
    });
    // Once the learner has stored the bandit's first weights revision (users served before
    // it are placed with the same equal weights, under revision 0).
    server.wait_for("/experiments", Duration::from_secs(10), |list| {
        list["experiments"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["bandit"]["revision"].as_u64() >= Some(1))
    });
    for user in 0..20 {
        let (status, body) = server.post(
            "/recommend",
            &json!({"user_id": format!("b{user}"), "experiment_id": "bandit"}),
        );
        assert_eq!(status, 200, "{body}");
    }
    // A period passes: the learner stores its next weights revision.
    server.wait_for("/experiments", Duration::from_secs(10), |list| {
        list["experiments"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["bandit"]["revision"].as_u64() >= Some(2))
    });
    let users = ["1", "2", "17", "300", "mover", "keyed", "never-seen"];
    let before = answers(&server, &users);
    let health_before = server.get("/health").1;
    // Exposures are written behind the answers: wait until they are.
    std::thread::sleep(Duration::from_secs(1));
    server.kill();

    let url = postgres.create_database();
    // With a password (the test server trusts local connections, so any will do): it must
    // not be printed.
    let with_password = url.replacen("postgres@", "postgres:not-for-logs@", 1);
    assert_ne!(with_password, url);
    let migrate = || {
        std::process::Command::new(recohost_e2e::binary())
            .args(["migrate", "--to", &with_password, "--data-dir"])
            .arg(&data_dir)
            .output()
            .unwrap()
    };
    let output = migrate();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("counts verified"), "{stdout}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stdout.contains("not-for-logs") && !stderr.contains("not-for-logs"),
        "the password was printed: {stdout}{stderr}"
    );
    let sqlite = rusqlite::Connection::open(data_dir.join("recohost.db")).unwrap();
    let database = database_name(&url);
    for table in TABLES {
        let rows: u64 = sqlite
            .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |row| {
                row.get(0)
            })
            .unwrap();
        assert_eq!(
            postgres.count(database, &format!("SELECT COUNT(*) FROM {table}")),
            rows,
            "{table}"
        );
    }
    assert!(
        postgres.count(database, "SELECT COUNT(*) FROM exposure_batches") > 0,
        "the test meant to copy exposures"
    );
    // Each batch's exposures, byte for byte (the weights revision that served each included).
    for measure in [
        "SELECT COALESCE(SUM(exposures), 0) FROM exposure_batches",
        "SELECT COALESCE(SUM(LENGTH(body)), 0) FROM exposure_batches",
    ] {
        let in_sqlite: u64 = sqlite.query_row(measure, [], |row| row.get(0)).unwrap();
        assert_eq!(postgres.count(database, measure), in_sqlite, "{measure}");
    }
    assert_eq!(
        postgres.count(database, "SELECT COUNT(*) FROM idempotency_keys"),
        1
    );
    // Again into the same, no longer empty, database: refused, nothing added.
    let again = migrate();
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("not empty"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    // Served from PostgreSQL: the same counts, models and answers.
    let server = Server::start_in(
        &data_dir,
        &config_text(&format!("{experiments}database_url = {url:?}\n")),
    )
    .unwrap();
    let health_after = server.get("/health").1;
    for key in ["items", "users", "events"] {
        assert_eq!(health_after[key], health_before[key], "{key}");
    }
    assert_eq!(health_after["database"], "postgres");
    assert_eq!(answers(&server, &users), before);
    // A retry of the keyed event is recognised, and new events continue the copied ids.
    let (status, replay) = server_post_keyed(&server.base, "move-1");
    assert_eq!(status, 200, "{replay}");
    assert_eq!(replay["replayed"], true, "{replay}");
    assert_eq!(replay["event_id"], first_receipt["event_id"]);
    let (status, receipt) = server.post(
        "/events",
        &json!({"user_id": "mover", "item_id": 99, "event_type": "click"}),
    );
    assert_eq!(status, 200, "{receipt}");
    let newest: i64 = sqlite
        .query_row("SELECT MAX(id) FROM events", [], |row| row.get(0))
        .unwrap();
    assert_eq!(receipt["event_id"].as_i64(), Some(newest + 1), "{receipt}");
}

/// `POST /events` of the keyed test event with `Idempotency-Key: key`.
fn server_post_keyed(base: &str, key: &str) -> (u16, Value) {
    let response = reqwest::blocking::Client::new()
        .post(format!("{base}/events"))
        .header("Idempotency-Key", key)
        .json(&json!({"user_id": "keyed", "item_id": 5, "event_type": "view"}))
        .send()
        .unwrap();
    (response.status().as_u16(), response.json().unwrap())
}
