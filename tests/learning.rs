//! Online learning over HTTP against the real server: events in, updates out, nothing lost.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use recohost_e2e::{PLUGINS, Server, config_text, error_code};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

fn start(learning: &str) -> (tempfile::TempDir, Server) {
    let temp = tempfile::tempdir().unwrap();
    let data_dir = temp.path().join("data");
    let server = Server::start_in(&data_dir, &config_text(learning)).unwrap();
    (temp, server)
}

fn events_stored(server: &Server) -> u64 {
    server.get("/health").1["events"].as_u64().unwrap()
}

fn versions(stats: &Value) -> Vec<u64> {
    let models = stats["models"].as_object().unwrap();
    models
        .values()
        .map(|m| m["model_version"].as_u64().unwrap())
        .collect()
}

#[test]
fn an_event_is_stored_registers_its_user_and_reports_the_buffer() {
    let (_temp, server) = start("");
    let before = events_stored(&server);
    let (status, body) = server.post(
        "/events",
        &json!({"user_id": 990001, "item_id": 1, "event_type": "rate", "rating": 5.0}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "success");
    assert_eq!(body["online_learning"]["buffer_size"], 1);
    assert_eq!(body["online_learning"]["should_update"], false);
    assert!(body["online_learning"]["total_processed"].as_u64().unwrap() >= before);
    assert!(body.get("model_update").is_none(), "{body}");
    assert_eq!(events_stored(&server), before + 1);

    // The new user exists, and the rated item is excluded from their recommendations at once.
    let (status, user) = server.get("/users/990001");
    assert_eq!(status, 200, "{user}");
    assert_eq!(user["event_count"], 1);
    assert_eq!(user["recent_events"][0]["item_id"], 1);
    let (_, answer) = server.post(
        "/recommend",
        &json!({"user_id": 990001, "n_recommendations": 50}),
    );
    let items: Vec<&Value> = answer["recommendations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["item_id"])
        .collect();
    assert!(!items.contains(&&json!(1)), "{answer}");

    // Every event type, with and without a timestamp.
    for event_type in ["click", "view", "purchase"] {
        let (status, body) = server.post(
            "/events",
            &json!({"user_id": "u-990002", "item_id": 2, "event_type": event_type, "timestamp": 1_700_000_000}),
        );
        assert_eq!(status, 200, "{event_type}: {body}");
    }
    assert_eq!(events_stored(&server), before + 4);
}

#[test]
fn bad_events_get_clear_errors_and_change_nothing() {
    let (_temp, server) = start("");
    let before = events_stored(&server);
    let cases: Vec<(&str, u16, &str)> = vec![
        ("{not json", 400, "invalid_json"),
        (
            r#"{"user_id": 1, "item_id": 999999, "event_type": "click"}"#,
            404,
            "unknown_item",
        ),
        (
            r#"{"user_id": 1, "item_id": 1, "event_type": "rate"}"#,
            400,
            "invalid_rating",
        ),
        (
            r#"{"user_id": 1, "item_id": 1, "event_type": "rate", "rating": 9}"#,
            400,
            "invalid_rating",
        ),
        (
            r#"{"user_id": 1, "item_id": 1, "event_type": "rate", "rating": -1}"#,
            400,
            "invalid_rating",
        ),
        (
            r#"{"user_id": 1, "item_id": 1, "event_type": "rate", "rating": "NaN"}"#,
            400,
            "invalid_request",
        ),
        (
            r#"{"user_id": 1, "item_id": 1, "event_type": "rate", "rating": 1e999}"#,
            400,
            "invalid_json",
        ),
        (
            r#"{"user_id": 1, "item_id": 1, "event_type": "click", "rating": 3}"#,
            400,
            "invalid_rating",
        ),
        (
            r#"{"user_id": 1, "item_id": 1, "event_type": "like"}"#,
            400,
            "invalid_event_type",
        ),
        (
            r#"{"user_id": 1, "item_id": 1, "event_type": "click", "timestamp": -5}"#,
            400,
            "invalid_request",
        ),
        (
            r#"{"user_id": 1, "item_id": 1, "event_type": "click", "timestamp": 99999999999}"#,
            400,
            "invalid_timestamp",
        ),
        (
            r#"{"user_id": 1, "item_id": 1, "event_type": "click", "extra": true}"#,
            400,
            "invalid_request",
        ),
        (
            r#"{"user_id": -1, "item_id": 1, "event_type": "click"}"#,
            400,
            "invalid_id",
        ),
        (
            r#"{"user_id": "", "item_id": 1, "event_type": "click"}"#,
            400,
            "invalid_id",
        ),
        (
            r#"{"item_id": 1, "event_type": "click"}"#,
            400,
            "invalid_request",
        ),
    ];
    for (body, status, code) in &cases {
        let (got, answer) = server.post_raw("/events", body);
        assert_eq!(
            (got, error_code(&answer).as_str()),
            (*status, *code),
            "{body}: {answer}"
        );
    }
    // A batch with one bad event stores none of them, and names the bad one.
    let batch = json!({"events": [
        {"user_id": 5, "item_id": 1, "event_type": "click"},
        {"user_id": 5, "item_id": 424242, "event_type": "click"},
    ]});
    let (status, answer) = server.post("/events/batch", &batch);
    assert_eq!(
        (status, error_code(&answer).as_str()),
        (404, "unknown_item")
    );
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("events[1]: "),
        "{answer}"
    );
    let (status, answer) = server.post("/events/batch", &json!({"events": []}));
    assert_eq!(
        (status, error_code(&answer).as_str()),
        (400, "invalid_batch")
    );
    let too_many: Vec<Value> = (0..10_001)
        .map(|_| json!({"user_id": 5, "item_id": 1, "event_type": "view"}))
        .collect();
    let (status, answer) = server.post("/events/batch", &json!({ "events": too_many }));
    assert_eq!(
        (status, error_code(&answer).as_str()),
        (400, "invalid_batch")
    );
    let huge = format!(r#"{{"events": [{}]}}"#, "1,".repeat(2_000_000));
    let (status, answer) = server.post_oversized("/events/batch", &huge);
    assert_eq!(
        (status, error_code(&answer).as_str()),
        (413, "invalid_body")
    );

    assert_eq!(events_stored(&server), before, "nothing was stored");
    assert_eq!(
        server.get("/users/5").0,
        200,
        "user 5 is from the demo data"
    );
    assert_eq!(server.get("/learning/stats").1["buffer_size"], 0);
}

#[test]
fn updates_run_on_buffer_size_interval_and_request_and_keep_a_history() {
    let (_temp, server) = start("[learning]\nupdate_buffer_size = 5\nupdate_interval_secs = 1\n");
    let stats = server.get("/learning/stats").1;
    let initial = versions(&stats);
    assert_eq!(stats["triggers"]["update_buffer_size"], 5);

    // Nothing waits: a manual update has nothing to do.
    let (status, answer) = server.post_as("/learning/trigger-update", None);
    assert_eq!(
        (status, answer["status"].as_str()),
        (200, Some("nothing_to_learn"))
    );

    // Five events fill the buffer: the response names the update they triggered.
    let events: Vec<Value> = (0..5)
        .map(|i| json!({"user_id": 7, "item_id": 10 + i, "event_type": "click"}))
        .collect();
    let (status, answer) = server.post("/events/batch", &json!({ "events": events }));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["stored"], 5);
    assert_eq!(answer["online_learning"]["should_update"], true);
    assert_eq!(answer["model_update"]["scheduled"], true);
    let update_id = answer["model_update"]["update_id"].as_u64().unwrap();
    let run = server.wait_for_run(update_id, WAIT);
    assert_eq!(run["trigger"], "buffer_size");
    assert_eq!(run["kind"], "update");
    assert_eq!(run["feedback_count"], 5);
    assert_eq!(run["models_updated"], PLUGINS.len());
    for outcome in run["outcomes"].as_object().unwrap().values() {
        assert_eq!(outcome["status"], "updated", "{run}");
    }
    let stats = server.get("/learning/stats").1;
    let after: Vec<u64> = versions(&stats);
    assert!(
        after.iter().zip(&initial).all(|(a, b)| a > b),
        "{initial:?} -> {after:?}"
    );
    assert_eq!(stats["buffer_size"], 0);
    assert_eq!(stats["total_processed"], stats["total_events_stored"]);
    assert_eq!(stats["last_update"]["update_id"], update_id);
    let (_, recommended) = server.post(
        "/recommend",
        &json!({"user_id": 7, "model_type": "popularity"}),
    );
    assert_eq!(
        recommended["model_version"].as_u64().unwrap(),
        stats["models"]["popularity"]["model_version"]
            .as_u64()
            .unwrap(),
        "serving switched to the new version"
    );

    // One event waits; the interval trigger learns it within about a second.
    server.post(
        "/events",
        &json!({"user_id": 7, "item_id": 30, "event_type": "view"}),
    );
    let stats = server.wait_for("/learning/stats", WAIT, |s| {
        s["last_update"]["trigger"] == "interval"
    });
    assert_eq!(stats["last_update"]["feedback_count"], 1);

    // A manual request (loopback bind, no token configured: allowed).
    server.post(
        "/events",
        &json!({"user_id": 7, "item_id": 31, "event_type": "view"}),
    );
    let (status, answer) = server.post_as("/learning/trigger-update", None);
    assert!(
        status == 202 || answer["status"] == "nothing_to_learn",
        "{status} {answer}"
    );

    let (status, history) = server.get("/learning/history?limit=2");
    assert_eq!(status, 200);
    assert_eq!(history["updates"].as_array().unwrap().len(), 2);
    for bad in ["0", "1001", "x"] {
        let (status, answer) = server.get(&format!("/learning/history?limit={bad}"));
        assert_eq!(
            (status, error_code(&answer).as_str()),
            (400, "invalid_query")
        );
    }
}

#[test]
fn a_retrain_runs_in_the_background_and_swaps_every_model() {
    let (_temp, server) = start("[learning]\nretrain_window_events = 50000\n");
    let initial = versions(&server.get("/learning/stats").1);
    let (status, answer) = server.post_as("/learning/retrain", None);
    assert_eq!(
        (status, answer["status"].as_str()),
        (202, Some("scheduled")),
        "{answer}"
    );
    let run = server.wait_for_run(answer["update_id"].as_u64().unwrap(), WAIT);
    assert_eq!(run["kind"], "retrain");
    assert_eq!(run["trigger"], "manual");
    assert_eq!(run["feedback_count"], 50_000, "the training window");
    assert_eq!(run["models_updated"], PLUGINS.len(), "{run}");
    let after = versions(&server.get("/learning/stats").1);
    assert!(
        after.iter().zip(&initial).all(|(a, b)| a > b),
        "{initial:?} -> {after:?}"
    );
}

#[test]
fn operator_actions_need_the_admin_token() {
    let token = "test-admin-token-0123456789";
    let (_temp, server) = start(&format!("admin_token = \"{token}\"\n"));
    for path in ["/learning/trigger-update", "/learning/retrain"] {
        let (status, answer) = server.post_as(path, None);
        assert_eq!(
            (status, error_code(&answer).as_str()),
            (401, "unauthorized"),
            "{path}"
        );
        let (status, _) = server.post_as(path, Some("wrong-token-wrong-token"));
        assert_eq!(status, 401, "{path}");
    }
    let (status, answer) = server.post_as("/learning/trigger-update", Some(token));
    assert_eq!(
        (status, answer["status"].as_str()),
        (200, Some("nothing_to_learn"))
    );
    // /admin/reload too, and the scheme is case-insensitive (RFC 9110).
    let reload = |authorization: Option<&str>| {
        let mut request =
            reqwest::blocking::Client::new().post(format!("{}/admin/reload", server.base));
        if let Some(value) = authorization {
            request = request.header("Authorization", value);
        }
        let response = request.send().unwrap();
        (
            response.status().as_u16(),
            response.json::<Value>().unwrap(),
        )
    };
    let (status, answer) = reload(None);
    assert_eq!(
        (status, error_code(&answer).as_str()),
        (401, "unauthorized")
    );
    assert_eq!(reload(Some("Bearer wrong-token-wrong-token")).0, 401);
    let (status, answer) = reload(Some(&format!("bearer {token}")));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "reloaded");
    drop(server);

    // No token on a loopback bind: local tools may act, web pages may not (a cross-origin
    // POST, or a rebound host name that resolves to 127.0.0.1).
    let (_temp, server) = start("");
    let post = |headers: &[(&str, String)]| {
        let mut request =
            reqwest::blocking::Client::new().post(format!("{}/admin/reload", server.base));
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let response = request.send().unwrap();
        (
            response.status().as_u16(),
            response.json::<Value>().unwrap(),
        )
    };
    let authority = server.base.trim_start_matches("http://").to_string();
    let (status, answer) = post(&[("Origin", "https://evil.example".to_string())]);
    assert_eq!(
        (status, error_code(&answer).as_str()),
        (403, "cross_origin_refused"),
        "{answer}"
    );
    let port = authority.rsplit(':').next().unwrap();
    let (status, answer) = post(&[("Host", format!("rebound.example:{port}"))]);
    assert_eq!(
        (status, error_code(&answer).as_str()),
        (403, "cross_origin_refused"),
        "{answer}"
    );
    let (status, answer) = post(&[("Origin", server.base.clone())]);
    assert_eq!(status, 200, "the dashboard's own origin: {answer}");
    let (status, answer) = post(&[]);
    assert_eq!(status, 200, "curl: {answer}");
    drop(server);

    // No token, listening on every interface: operator actions are refused outright.
    let temp = tempfile::tempdir().unwrap();
    let public = config_text("").replace("bind = \"127.0.0.1:0\"", "bind = \"0.0.0.0:0\"");
    let server = Server::start_in(&temp.path().join("data"), &public).unwrap();
    let (status, answer) = server.post_as("/learning/retrain", None);
    assert_eq!(
        (status, error_code(&answer).as_str()),
        (403, "operator_actions_disabled")
    );
}

/// Items of the demo catalog that carry `tag`, among the first `scan` item IDs.
fn items_tagged(server: &Server, tag: &str, scan: u64) -> Vec<u64> {
    (1..=scan)
        .filter(|id| {
            let (_, item) = server.get(&format!("/items/{id}"));
            item["tags"].as_array().unwrap().iter().any(|t| t == tag)
        })
        .collect()
}

fn share_tagged(server: &Server, answer: &Value, tag: &str) -> f64 {
    let items = answer["recommendations"].as_array().unwrap();
    let tagged = items
        .iter()
        .filter(|r| {
            let (_, item) = server.get(&format!("/items/{}", r["item_id"]));
            item["tags"].as_array().unwrap().iter().any(|t| t == tag)
        })
        .count();
    tagged as f64 / items.len() as f64
}

#[test]
fn recommendations_move_toward_what_a_new_user_liked() {
    let (_temp, server) =
        start("[learning]\nupdate_buffer_size = 1000000\nupdate_interval_secs = 0\n");
    let tag = "documentary";
    let liked: Vec<u64> = items_tagged(&server, tag, 300)
        .into_iter()
        .take(10)
        .collect();
    assert_eq!(liked.len(), 10, "the demo catalog has documentaries");
    let user = "synthetic-documentary-fan";
    for model in ["collaborative", "hybrid", "content"] {
        let (_, cold) = server.post("/recommend", &json!({"user_id": user, "model_type": model}));
        assert_eq!(cold["cold_start"], true);
    }
    let (_, cold) = server.post(
        "/recommend",
        &json!({"user_id": user, "model_type": "hybrid"}),
    );
    let cold_share = share_tagged(&server, &cold, tag);

    let events: Vec<Value> = liked
        .iter()
        .map(|item| json!({"user_id": user, "item_id": item, "event_type": "rate", "rating": 5.0}))
        .collect();
    let (status, _) = server.post("/events/batch", &json!({ "events": events }));
    assert_eq!(status, 200);
    let (status, answer) = server.post_as("/learning/trigger-update", None);
    assert_eq!(status, 202, "{answer}");
    let run = server.wait_for_run(answer["update_id"].as_u64().unwrap(), WAIT);
    assert_eq!(run["models_updated"], PLUGINS.len(), "{run}");

    for model in ["collaborative", "hybrid", "content"] {
        let (_, warm) = server.post(
            "/recommend",
            &json!({"user_id": user, "model_type": model, "n_recommendations": 10}),
        );
        assert_eq!(warm["cold_start"], false);
        let items: Vec<u64> = warm["recommendations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["item_id"].as_u64().unwrap())
            .collect();
        assert!(
            items.iter().all(|i| !liked.contains(i)),
            "{model} recommends what the user rated: {warm}"
        );
        let share = share_tagged(&server, &warm, tag);
        assert!(
            share >= 0.5 && share > cold_share,
            "{model}: {share:.1} of the list is {tag} (cold start: {cold_share:.1})"
        );
    }
}

#[test]
fn kill_9_mid_update_loses_no_acknowledged_event_and_resumes_from_snapshots() {
    let temp = tempfile::tempdir().unwrap();
    let data_dir = temp.path().join("data");
    // Small batches and a snapshot after every update: the kill lands among updates.
    let config = config_text(
        "[learning]\nupdate_buffer_size = 40\nupdate_interval_secs = 1\nsnapshot_interval_secs = 0\n",
    );
    let server = Server::start_in(&data_dir, &config).unwrap();
    let before = events_stored(&server);
    let acknowledged = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4u64)
        .map(|client| {
            let (base, acknowledged, sent, stop) = (
                server.base.clone(),
                acknowledged.clone(),
                sent.clone(),
                stop.clone(),
            );
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let item = 1 + (client * 97 + n) % 1_000;
                    let batch = n.is_multiple_of(5);
                    let count = if batch { 7 } else { 1 };
                    sent.fetch_add(count, Ordering::SeqCst);
                    let response = if batch {
                        let events: Vec<Value> = (0..count)
                            .map(|k| json!({"user_id": format!("k{client}"), "item_id": item + k, "event_type": "click"}))
                            .collect();
                        try_post(&base, "/events/batch", &json!({ "events": events }))
                    } else {
                        try_post(&base, "/events", &json!({"user_id": format!("k{client}"), "item_id": item, "event_type": "view"}))
                    };
                    match response {
                        Some(200) => {
                            acknowledged.fetch_add(count, Ordering::SeqCst);
                        }
                        Some(other) => panic!("unexpected status {other}"),
                        None => break, // the server is gone
                    }
                }
            })
        })
        .collect();
    // Let at least two updates happen (3 s at least; longer on a busy machine, where the
    // learner runs at a lower priority than the requests), then kill while events flow.
    let mut highest_version_seen = 0;
    let started = std::time::Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let (_, stats) = server.get("/learning/stats");
        highest_version_seen = highest_version_seen.max(*versions(&stats).iter().max().unwrap());
        let updates = stats["update_count"].as_u64().unwrap();
        let elapsed = started.elapsed();
        if (updates >= 2 && elapsed >= Duration::from_secs(3)) || elapsed >= Duration::from_secs(30)
        {
            break;
        }
    }
    let (_, stats) = server.get("/learning/stats");
    assert!(
        stats["update_count"].as_u64().unwrap() >= 2,
        "updates ran: {stats}"
    );
    server.kill();
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }
    let acknowledged = acknowledged.load(Ordering::SeqCst);
    let sent = sent.load(Ordering::SeqCst);
    assert!(
        acknowledged > 100,
        "only {acknowledged} events acknowledged"
    );

    // The newest snapshot each plugin has stored, read from the database while no server
    // runs. The server comes back without update triggers, so that what it serves at first
    // is what it restored.
    let snapshots: std::collections::BTreeMap<String, u64> = {
        let database = rusqlite::Connection::open(data_dir.join("recohost.db")).unwrap();
        let mut query = database
            .prepare("SELECT plugin, MAX(version) FROM snapshots GROUP BY plugin")
            .unwrap();
        query
            .query_map([], |row| Ok((row.get(0)?, row.get::<_, i64>(1)? as u64)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let quiet = config_text("[learning]\nupdate_buffer_size = 1000000\nupdate_interval_secs = 0\n");
    let server = Server::start_in(&data_dir, &quiet).unwrap();
    let stored = events_stored(&server) - before;
    eprintln!("sent {sent}, acknowledged {acknowledged}, stored {stored}");
    assert!(
        stored >= acknowledged,
        "lost acknowledged events: {stored} < {acknowledged}"
    );
    assert!(stored <= sent);

    // Every plugin resumed from a snapshot taken after updates (not retrained from scratch),
    // and the events it had not learned are back in the buffer.
    let stats = server.get("/learning/stats").1;
    let restored: std::collections::BTreeMap<String, u64> = stats["models"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, model)| (name.clone(), model["model_version"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        restored, snapshots,
        "restored from the newest snapshots, not retrained"
    );
    assert!(
        snapshots.values().all(|&v| v > 1),
        "snapshots after updates: {snapshots:?}"
    );
    let learned_through = stats["models"]
        .as_object()
        .unwrap()
        .values()
        .map(|m| m["through_event"].as_u64().unwrap())
        .min()
        .unwrap();
    let total = stats["total_events_stored"].as_u64().unwrap();
    assert_eq!(
        stats["unlearned_events"].as_u64().unwrap(),
        total - learned_through,
        "{stats}"
    );

    // The next update learns them all, under versions never served before.
    let (status, answer) = server.post_as("/learning/trigger-update", None);
    assert_eq!(status, 202, "{answer}");
    let stats = server.wait_for("/learning/stats", WAIT, |s| {
        s["unlearned_events"] == 0 && s["running"].is_null()
    });
    assert_eq!(stats["total_processed"], stats["total_events_stored"]);
    // A plugin that learned got a version never served before; one whose snapshot already
    // held every event (the kill came after it was stored) kept the version it restored.
    let outcomes = stats["last_update"]["outcomes"].as_object().unwrap();
    let mut learned = 0;
    for (name, model) in stats["models"].as_object().unwrap() {
        let version = model["model_version"].as_u64().unwrap();
        if outcomes[name]["status"] == "updated" {
            learned += 1;
            assert!(
                version > highest_version_seen,
                "{name}'s version repeats after the crash: {stats} (seen {highest_version_seen})"
            );
        } else {
            assert_eq!(
                (outcomes[name]["events"].as_u64(), Some(version)),
                (Some(0), snapshots.get(name).copied()),
                "{name}: {stats}"
            );
        }
    }
    assert!(learned > 0, "the update learned nothing: {stats}");
}

/// POSTs and returns the status, or `None` when the server cannot be reached.
fn try_post(base: &str, path: &str, body: &Value) -> Option<u16> {
    reqwest::blocking::Client::new()
        .post(format!("{base}{path}"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .timeout(Duration::from_secs(30))
        .send()
        .ok()
        .map(|response| response.status().as_u16())
}

/// The memory the well-behaved plugins' instances hold (`/plugins`), in bytes.
fn others_instance_bytes(server: &Server) -> u64 {
    server.get("/plugins").1["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|plugin| plugin["name"] != "misbehaving")
        .map(|plugin| plugin["memory"]["total_bytes"].as_u64().unwrap())
        .sum()
}

/// The config with the misbehaving fixture, whose `update` traps while `failing`.
fn failing_update_config(failing: bool) -> String {
    let learning = "[learning]\nupdate_buffer_size = 500\nupdate_interval_secs = 1\nmax_lag_events = 5000\nfailed_update_backoff_secs = 1\nmax_failed_update_backoff_secs = 4\n";
    let switch = if failing { "update = \"trap\"\n" } else { "" };
    format!(
        "{}\n[[plugins]]\nname = \"misbehaving\"\npath = {:?}\n[plugins.config]\n{switch}",
        config_text(learning),
        recohost_e2e::fixture("misbehaving").display().to_string()
    )
}

#[test]
fn a_plugin_whose_update_always_fails_holds_nobody_back_and_recovers_when_fixed() {
    let temp = tempfile::tempdir().unwrap();
    let data_dir = temp.path().join("data");
    let server = Server::start_in(&data_dir, &failing_update_config(true)).unwrap();
    let (rss_before, _) = server.memory();
    let others_before = others_instance_bytes(&server);

    // Ten minutes of traffic at 100 events/s, simulated 50 times faster: 120 batches of 500,
    // 100 ms apart, their timestamps 5 s apart.
    let start = 1_700_000_000u64;
    let mut most_buffered = 0;
    for batch in 0..120u64 {
        let events: Vec<Value> = (0..500u64)
            .map(|i| {
                json!({
                    "user_id": format!("load-{}", (batch * 500 + i) % 3000),
                    "item_id": 1 + (batch * 7 + i * 13) % 1000,
                    "event_type": "click",
                    "timestamp": start + batch * 5,
                })
            })
            .collect();
        let (status, body) = server.post("/events/batch", &json!({ "events": events }));
        assert_eq!(status, 200, "{body}");
        let stats = server.get("/learning/stats").1;
        most_buffered = most_buffered.max(stats["buffered_events"].as_u64().unwrap());
        std::thread::sleep(Duration::from_millis(100));
    }
    let newest = events_stored(&server);
    // The others learn everything; the buffer never held more than max_lag_events (plus the
    // one append that found it full).
    let stats = server.wait_for("/learning/stats", WAIT, |stats| {
        stats["models"]["popularity"]["through_event"].as_u64() == Some(newest)
            && stats["running"].is_null()
    });
    assert!(
        most_buffered <= 5_500,
        "the buffer held {most_buffered} events"
    );
    for plugin in PLUGINS {
        assert_eq!(
            stats["models"][plugin]["through_event"].as_u64(),
            Some(newest),
            "{plugin} fell behind: {stats}"
        );
    }

    // It failed, was retried with backoff rather than on every run, and, once further behind
    // than max_lag_events, was retrained from the store rather than fed the backlog.
    let history = server.get("/learning/history?limit=1000").1;
    let runs = history["updates"].as_array().unwrap();
    let outcomes = |status: &str| {
        runs.iter()
            .filter(|run| run["outcomes"]["misbehaving"]["status"] == status)
            .count()
    };
    let summary: Vec<&str> = runs
        .iter()
        .map(|run| {
            run["outcomes"]["misbehaving"]["status"]
                .as_str()
                .unwrap_or("-")
        })
        .collect();
    eprintln!("misbehaving, newest run first: {summary:?}");
    assert!(runs.len() >= 20, "{} runs", runs.len());
    assert!(
        runs.iter()
            .any(|run| run["outcomes"]["misbehaving"]["error"]
                .as_str()
                .is_some_and(|e| e.contains("panic"))),
        "{history}"
    );
    assert!(outcomes("retrained") > 0, "{summary:?}");
    assert!(
        outcomes("failed") + outcomes("retrained") < runs.len() / 2,
        "tried in {} of {} runs",
        outcomes("failed") + outcomes("retrained"),
        runs.len()
    );
    assert!(outcomes("backing_off") > 0);
    for run in runs {
        let fed = run["outcomes"]["misbehaving"]["events"]
            .as_u64()
            .unwrap_or(0);
        assert!(
            run["outcomes"]["misbehaving"]["status"] == "retrained" || fed <= 5_000,
            "fed a backlog of {fed} events: {run}"
        );
    }
    // What the host and the failing plugin hold: the other plugins' instances grow with the
    // 3,000 new users (EASE re-solved, a new version's pool beside the old one) whatever
    // the failing one does, by 200-250 MiB here, so they are taken out of the growth.
    let (rss_after, _) = server.memory();
    let others_grew = others_instance_bytes(&server).saturating_sub(others_before);
    let grew = rss_after
        .saturating_sub(rss_before)
        .saturating_sub(others_grew);
    assert!(
        grew < 256 << 20,
        "RSS grew from {} to {} MiB, {} MiB of it beyond the other plugins' instances",
        rss_before >> 20,
        rss_after >> 20,
        grew >> 20
    );

    // Fixed (its config no longer makes update fail): it is reloaded, and learns again.
    let config_path = data_dir.with_extension("toml");
    std::fs::write(
        config_path.with_extension("partial"),
        failing_update_config(false),
    )
    .unwrap();
    std::fs::rename(config_path.with_extension("partial"), &config_path).unwrap();
    let (status, reloaded) = server.post_as("/admin/reload", None);
    assert_eq!(status, 200, "{reloaded}");
    let events: Vec<Value> = (0..500)
        .map(|i| json!({"user_id": "after-fix", "item_id": 1 + i, "event_type": "click"}))
        .collect();
    assert_eq!(
        server.post("/events/batch", &json!({ "events": events })).0,
        200
    );
    let stats = server.wait_for("/learning/stats", WAIT, |stats| {
        stats["last_update"]["outcomes"]["misbehaving"]["status"] == "updated"
    });
    assert!(
        stats["models"]["misbehaving"]["failed_updates"].is_null(),
        "{stats}"
    );
}

#[test]
fn an_import_into_a_running_server_loses_nothing_and_fails_no_client() {
    let temp = tempfile::tempdir().unwrap();
    let data_dir = temp.path().join("data");
    let server = Server::start_in(&data_dir, &config_text("")).unwrap();
    let before = events_stored(&server);

    // ml-latest files: 200 new users, 5 ratings each, of items the catalog has.
    let import_dir = temp.path().join("ml-latest");
    std::fs::create_dir(&import_dir).unwrap();
    let mut movies = String::from("movieId,title,genres\n");
    for item in 1..=50 {
        let (_, current) = server.get(&format!("/items/{item}"));
        let genres: Vec<&str> = current["tags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        movies.push_str(&format!(
            "{item},\"{}\",{}\n",
            current["title"].as_str().unwrap(),
            genres.join("|")
        ));
    }
    // And one item the running server does not have, with 20 ratings.
    movies.push_str("5001,\"A New Release (2026)\",Drama\n");
    std::fs::write(import_dir.join("movies.csv"), movies).unwrap();
    let mut ratings = String::from("userId,movieId,rating,timestamp\n");
    for user in 900_001..=900_200 {
        for item in 1..=5 {
            ratings.push_str(&format!("{user},{},4.0,1700000000\n", item * 7));
        }
    }
    for user in 900_001..=900_020 {
        ratings.push_str(&format!("{user},5001,5.0,1700000000\n"));
    }
    std::fs::write(import_dir.join("ratings.csv"), ratings).unwrap();

    // Clients register new users and post events all along.
    let stop = Arc::new(AtomicBool::new(false));
    let posted = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..4)
        .map(|client| {
            let (base, stop, posted) = (server.base.clone(), stop.clone(), posted.clone());
            std::thread::spawn(move || {
                let http = reqwest::blocking::Client::new();
                let mut failures = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) || i < 50 {
                    let body = json!({"user_id": format!("live-{client}-{i}"), "item_id": 1 + i % 100, "event_type": "click"});
                    let response = http.post(format!("{base}/events")).json(&body).send().unwrap();
                    if response.status() == 200 {
                        posted.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failures.push(format!("{}: {}", response.status(), response.text().unwrap()));
                    }
                    i += 1;
                }
                failures
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    import(&import_dir, &data_dir);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        let failures = client.join().unwrap();
        assert!(
            failures.is_empty(),
            "{} failed: {:?}",
            failures.len(),
            &failures[..failures.len().min(3)]
        );
    }

    // Everything acknowledged and everything imported is stored, and the running server
    // took the imported users and events in (within a second, without a restart), but for
    // the events of the item it does not serve yet.
    let posted = posted.load(Ordering::Relaxed);
    server.wait_for("/health", WAIT, |health| {
        health["events"].as_u64() == Some(before + posted + 1_000)
    });
    let (status, user) = server.get("/users/900001");
    assert_eq!(status, 200, "{user}");
    assert_eq!(user["event_count"], 5);
    let (status, user) = server.get("/users/live-0-0");
    assert_eq!((status, user["event_count"].as_u64()), (200, Some(1)));
    assert_eq!(
        server.get("/items/5001").0,
        404,
        "the catalog is fixed until a restart"
    );

    // Every plugin learns all of it; the new item's events are never fed to them (a plugin
    // configured with the old catalog would refuse the whole batch).
    let (status, answer) = server.post_as("/learning/trigger-update", None);
    assert!(status == 202 || status == 200, "{answer}");
    let stats = server.wait_for("/learning/stats", WAIT, |stats| {
        stats["unlearned_events"] == 0 && stats["running"].is_null() && stats["pending"].is_null()
    });
    for plugin in PLUGINS {
        assert!(
            stats["models"][plugin]["failed_updates"].is_null(),
            "{stats}"
        );
    }
    let history = server.get("/learning/history?limit=1000").1;
    for run in history["updates"].as_array().unwrap() {
        for (plugin, outcome) in run["outcomes"].as_object().unwrap() {
            assert_ne!(outcome["status"], "failed", "{plugin}: {run}");
        }
    }
    drop(server);
    let restarted = Server::start_in(&data_dir, &config_text("")).unwrap();
    assert_eq!(
        events_stored(&restarted),
        before + posted + 1_020,
        "after a restart, everything"
    );
    assert_eq!(restarted.get("/items/5001").0, 200);
}

#[test]
fn a_retried_event_with_an_idempotency_key_is_stored_once() {
    let (_temp, server) = start("");
    let before = events_stored(&server);
    let post = |key: &str, body: &Value| {
        let response = reqwest::blocking::Client::new()
            .post(format!("{}/events", server.base))
            .header("Idempotency-Key", key)
            .json(body)
            .send()
            .unwrap();
        (
            response.status().as_u16(),
            response.json::<Value>().unwrap(),
        )
    };
    let event = json!({"user_id": 31, "item_id": 5, "event_type": "rate", "rating": 4.5});
    let (status, first) = post("order-7-rating", &event);
    assert_eq!(status, 200, "{first}");
    assert!(first.get("replayed").is_none(), "{first}");
    // The client did not hear back and retries: same answer, stored once.
    let (status, retry) = post("order-7-rating", &event);
    assert_eq!(status, 200, "{retry}");
    assert_eq!(
        (retry["event_id"].clone(), retry["replayed"].clone()),
        (first["event_id"].clone(), json!(true))
    );
    assert_eq!(events_stored(&server), before + 1);
    // The same key for something else is refused; a malformed key too.
    let other = json!({"user_id": 31, "item_id": 6, "event_type": "click"});
    let (status, body) = post("order-7-rating", &other);
    assert_eq!(
        (status, error_code(&body).as_str()),
        (422, "idempotency_key_reused"),
        "{body}"
    );
    let (status, body) = post("has spaces", &other);
    assert_eq!(
        (status, error_code(&body).as_str()),
        (400, "invalid_idempotency_key"),
        "{body}"
    );
    assert_eq!(events_stored(&server), before + 1);
}

#[test]
fn a_plugin_whose_update_fails_for_a_while_learns_again_at_a_retry() {
    let temp = tempfile::tempdir().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let config = format!(
        "{}\n[[plugins]]\nname = \"misbehaving\"\npath = {:?}\n[plugins.config]\nupdate_fails_until = {}\n",
        config_text(
            "[learning]\nupdate_buffer_size = 10\nfailed_update_backoff_secs = 1\nmax_failed_update_backoff_secs = 2\n"
        ),
        recohost_e2e::fixture("misbehaving").display().to_string(),
        // Long enough for a start-up on a busy machine, then a failed update, to come first.
        now + 12
    );
    let server = Server::start_in(&temp.path().join("data"), &config).unwrap();
    let events: Vec<Value> = (0..10)
        .map(|i| json!({"user_id": "transient", "item_id": 1 + i, "event_type": "click"}))
        .collect();
    assert_eq!(
        server.post("/events/batch", &json!({ "events": events })).0,
        200
    );
    // Its update fails, the others learn; then, with no new event, a retry brings it level.
    // (Plugins update one after another, by name: the failure is on record before popularity
    // has learned, so wait for both.)
    let stats = server.wait_for("/learning/stats", WAIT, |stats| {
        stats["models"]["misbehaving"]["failed_updates"].as_u64() >= Some(1)
            && stats["models"]["popularity"]["through_event"] == stats["total_events_stored"]
    });
    let newest = stats["models"]["popularity"]["through_event"].clone();
    let stats = server.wait_for("/learning/stats", WAIT, |stats| {
        stats["models"]["misbehaving"]["through_event"] == newest
    });
    assert!(
        stats["models"]["misbehaving"]["failed_updates"].is_null(),
        "{stats}"
    );
    assert_eq!(stats["last_update"]["trigger"], "retry", "{stats}");
    assert_eq!(
        stats["last_update"]["outcomes"]["misbehaving"]["status"],
        "updated"
    );
}

#[test]
fn events_of_an_item_imported_while_running_are_never_fed_to_the_plugins() {
    let temp = tempfile::tempdir().unwrap();
    let data_dir = temp.path().join("data");
    let server = Server::start_in(&data_dir, &config_text("")).unwrap();
    // One update first, so that the learning buffer is empty when the import lands: the
    // plugins then read what they missed from the database.
    let events: Vec<Value> = (0..3)
        .map(|i| json!({"user_id": "before-import", "item_id": 1 + i, "event_type": "click"}))
        .collect();
    assert_eq!(
        server.post("/events/batch", &json!({ "events": events })).0,
        200
    );
    server.post_as("/learning/trigger-update", None);
    server.wait_for("/learning/stats", WAIT, |s| {
        s["unlearned_events"] == 0 && s["running"].is_null() && s["pending"].is_null()
    });

    // The import stores ratings of a new item first, then of items the server has.
    let import_dir = temp.path().join("ml-latest");
    std::fs::create_dir(&import_dir).unwrap();
    std::fs::write(
        import_dir.join("movies.csv"),
        "movieId,title,genres\n5001,\"A New Release (2026)\",Drama\n",
    )
    .unwrap();
    let mut ratings = String::from("userId,movieId,rating,timestamp\n");
    for user in 910_001..=910_010 {
        ratings.push_str(&format!("{user},5001,5.0,1700000000\n"));
    }
    for user in 910_001..=910_010 {
        ratings.push_str(&format!("{user},7,4.0,1700000000\n"));
    }
    std::fs::write(import_dir.join("ratings.csv"), ratings).unwrap();
    import(&import_dir, &data_dir);
    server.wait_for("/users/910010", WAIT, |user| user["event_count"] == 1);

    let (status, answer) = server.post_as("/learning/trigger-update", None);
    assert_eq!(status, 202, "{answer}");
    let stats = server.wait_for("/learning/stats", WAIT, |s| {
        s["last_update"]["update_id"] == answer["update_id"] && s["running"].is_null()
    });
    for plugin in PLUGINS {
        assert_eq!(
            stats["last_update"]["outcomes"][plugin]["status"], "updated",
            "{plugin}: {stats}"
        );
        assert_eq!(
            stats["last_update"]["outcomes"][plugin]["events"], 10,
            "{stats}"
        );
    }
    assert_eq!(stats["unlearned_events"], 0, "{stats}");
}

/// `recohost import --format movielens FOLDER --data-dir DATA`, which must succeed.
fn import(folder: &std::path::Path, data_dir: &std::path::Path) {
    let import = std::process::Command::new(recohost_e2e::binary())
        .args(["import", "--format", "movielens"])
        .arg(folder)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .unwrap();
    assert!(
        import.status.success(),
        "{}",
        String::from_utf8_lossy(&import.stderr)
    );
}
