//! End-to-end tests of the core API: the real binary, real .wasm plugins, SQLite, HTTP.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use recohost_e2e::{PLUGINS, Server, config_text, error_code, movielens_100k};
use serde_json::{Value, json};

fn titles(body: &Value) -> Vec<String> {
    body["recommendations"]
        .as_array()
        .unwrap_or_else(|| panic!("no recommendations: {body}"))
        .iter()
        .map(|r| r["title"].as_str().expect("title").to_string())
        .collect()
}

#[test]
fn the_readme_example_returns_five_titled_items_with_a_model_version_from_every_plugin() {
    let server = Server::start();
    let (status, body) = server.post(
        "/recommend",
        &json!({"user_id": 123, "n_recommendations": 5, "model_type": "hybrid"}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], json!(123));
    assert_eq!(body["model"], "hybrid");
    assert!(
        body["model_version"].as_u64().is_some_and(|v| v >= 1),
        "{body}"
    );
    assert_eq!(body["cold_start"], false);
    assert_eq!(titles(&body).len(), 5);
    for item in body["recommendations"].as_array().unwrap() {
        assert!(item["item_id"].is_u64(), "{item}");
        assert!(item["score"].as_f64().is_some_and(f64::is_finite), "{item}");
    }

    // The user's own items are never recommended back.
    let seen = server.seen_items("123");
    for plugin in PLUGINS {
        let (status, body) = server.post(
            "/recommend",
            &json!({"user_id": "123", "n_recommendations": 10, "model_type": plugin}),
        );
        assert_eq!(status, 200, "{plugin}: {body}");
        assert_eq!(body["model"], plugin);
        assert_eq!(titles(&body).len(), 10, "{plugin}");
        for item in body["recommendations"].as_array().unwrap() {
            assert!(
                !seen.contains(&item["item_id"]),
                "{plugin} recommended a seen item {item}"
            );
        }
    }

    // Without model_type the configured default serves.
    let (status, body) = server.post("/recommend", &json!({"user_id": 7}));
    assert_eq!((status, body["model"].as_str()), (200, Some("hybrid")));
    assert_eq!(titles(&body).len(), 10, "default count is 10");
}

#[test]
fn unknown_and_historyless_users_get_a_cold_start_answer() {
    let server = Server::start();
    let (status, body) = server.post(
        "/recommend",
        &json!({"user_id": "someone-new", "n_recommendations": 3}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["cold_start"], true);
    assert_eq!(body["user_id"], "someone-new");
    assert_eq!(titles(&body).len(), 3);
    // The cold-start answer of the hybrid is the popular items: the same as popularity's.
    let (_, popular) = server.post(
        "/recommend",
        &json!({"user_id": "someone-new", "n_recommendations": 3, "model_type": "popularity"}),
    );
    assert_eq!(titles(&body), titles(&popular));
}

#[test]
fn bad_inputs_get_json_errors_and_the_server_keeps_serving() {
    let server = Server::start();
    let cases: &[(&str, u16, &str)] = &[
        ("{bad json", 400, "invalid_json"),
        ("", 400, "invalid_json"),
        ("[]", 400, "invalid_request"),
        (r#"{"n_recommendations": 5}"#, 400, "invalid_request"),
        (r#"{"user_id": -1}"#, 400, "invalid_id"),
        (r#"{"user_id": 1.5}"#, 400, "invalid_id"),
        (r#"{"user_id": ""}"#, 400, "invalid_id"),
        (r#"{"user_id": null}"#, 400, "invalid_id"),
        (r#"{"user_id": [1]}"#, 400, "invalid_id"),
        (
            r#"{"user_id": 1, "n_recommendations": 0}"#,
            400,
            "invalid_n_recommendations",
        ),
        (
            r#"{"user_id": 1, "n_recommendations": 100000}"#,
            400,
            "invalid_n_recommendations",
        ),
        (
            r#"{"user_id": 1, "n_recommendations": -3}"#,
            400,
            "invalid_n_recommendations",
        ),
        (
            r#"{"user_id": 1, "n_recommendations": 2.5}"#,
            400,
            "invalid_n_recommendations",
        ),
        (
            r#"{"user_id": 1, "n_recommendations": "5"}"#,
            400,
            "invalid_n_recommendations",
        ),
        (
            r#"{"user_id": 1, "model_type": "nope"}"#,
            404,
            "unknown_model",
        ),
        (r#"{"user_id": 1, "model_type": 5}"#, 400, "invalid_request"),
        (
            r#"{"user_id": 1, "surprise": true}"#,
            400,
            "invalid_request",
        ),
    ];
    for (body, status, code) in cases {
        let (got, response) = server.post_raw("/recommend", body);
        assert_eq!(
            (got, error_code(&response).as_str()),
            (*status, *code),
            "body {body:?}: {response}"
        );
    }
    let long_id = json!({"user_id": "x".repeat(129)});
    assert_eq!(server.post("/recommend", &long_id).0, 400);
    let (_, unknown_model) =
        server.post_raw("/recommend", r#"{"user_id": 1, "model_type": "nope"}"#);
    let message = unknown_model["error"]["message"].as_str().unwrap();
    for plugin in PLUGINS {
        assert!(
            message.contains(plugin),
            "the 404 lists the available models: {message}"
        );
    }

    let (status, body) = server.get("/items/999999");
    assert_eq!((status, error_code(&body).as_str()), (404, "unknown_item"));
    let (status, body) = server.get("/users/1?limit=0");
    assert_eq!((status, error_code(&body).as_str()), (400, "invalid_query"));
    let (status, body) = server.get("/users/nobody");
    assert_eq!((status, error_code(&body).as_str()), (404, "unknown_user"));
    let (status, body) = server.get("/no/such/route");
    assert_eq!((status, error_code(&body).as_str()), (404, "not_found"));
    let (status, body) = server.get("/recommend");
    assert_eq!(
        (status, error_code(&body).as_str()),
        (405, "method_not_allowed")
    );
    let oversized = format!(
        r#"{{"user_id": 1, "model_type": "{}"}}"#,
        "a".repeat(2 * 1024 * 1024)
    );
    let (status, body) = server.post_oversized("/recommend", &oversized);
    assert_eq!((status, error_code(&body).as_str()), (413, "invalid_body"));

    // A single node runs what its own files say: nothing is published to it.
    let wasm = std::fs::read(recohost_e2e::plugins_dir().join("popularity.wasm")).unwrap();
    let (status, body) = server.post_bytes("/admin/plugins/trending", "application/wasm", wasm);
    assert_eq!(
        (status, error_code(&body).as_str()),
        (409, "single_node"),
        "{body}"
    );
    let (status, body) = server.post("/admin/experiments", &json!({"files": {}}));
    assert_eq!(
        (status, error_code(&body).as_str()),
        (409, "single_node"),
        "{body}"
    );

    // Still serving, and nothing was stored by the bad requests.
    let (status, health) = server.get("/health");
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));
    let (status, body) = server.post("/recommend", &json!({"user_id": 1, "n_recommendations": 5}));
    assert_eq!((status, titles(&body).len()), (200, 5));
}

#[test]
fn health_plugins_items_and_users_describe_the_server() {
    let server = Server::start();
    let (status, health) = server.get("/health");
    assert_eq!(status, 200);
    assert_eq!(health["status"], "ok");
    assert_eq!(health["plugins"], PLUGINS.len());
    assert!(
        health["items"].as_u64().unwrap() >= 1000 && health["events"].as_u64().unwrap() > 10_000,
        "{health}"
    );

    let (status, plugins) = server.get("/plugins");
    assert_eq!(status, 200);
    assert_eq!(plugins["default_model"], "hybrid");
    let list = plugins["plugins"].as_array().unwrap();
    assert_eq!(list.len(), PLUGINS.len());
    for plugin in list {
        assert_eq!(plugin["wit_version"], "1.0.0", "{plugin}");
        assert_eq!(plugin["status"], "ready", "{plugin}");
        assert!(
            plugin["model_version"].as_u64().is_some_and(|v| v >= 1),
            "{plugin}"
        );
        assert!(
            plugin["version"].as_str().is_some_and(|v| !v.is_empty()),
            "{plugin}"
        );
        // What its instances hold, for sizing: the pool has instances, each of at least one
        // 64 KiB page and none over the plugin's memory cap, and the total adds up.
        let memory = &plugin["memory"];
        let field = |name: &str| memory[name].as_u64().unwrap_or_else(|| panic!("{plugin}"));
        assert!(field("pool_instances") >= 1, "{plugin}");
        assert!(
            field("pool_bytes") >= field("pool_instances") * 65_536,
            "{plugin}"
        );
        let cap = plugin["limits"]["memory_mb"].as_u64().unwrap() << 20;
        assert!(
            (65_536..=cap).contains(&field("largest_instance_bytes")),
            "{plugin}"
        );
        assert_eq!(
            field("total_bytes"),
            field("pool_bytes") + field("learner_bytes") + field("spare_bytes"),
            "{plugin}"
        );
    }

    let (status, item) = server.get("/items/1");
    assert_eq!(status, 200);
    assert_eq!(item["item_id"], 1);
    assert!(item["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(item["tags"].as_array().is_some_and(|t| !t.is_empty()));

    // Made-up HTTP methods are refused, and counted under one `other` series, not one each.
    let client = reqwest::blocking::Client::new();
    for method in ["BREW", "BREW2", "PROPFIND"] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let status = client
            .request(method, format!("{}/recommend", server.base))
            .send()
            .unwrap()
            .status();
        assert_eq!(status.as_u16(), 405);
    }
    let (_, _, metrics) = server.get_text("/metrics");
    assert!(
        metrics.contains("recohost_plugin_memory_bytes{plugin=\"hybrid\"} "),
        "{metrics}"
    );
    assert!(
        !metrics.contains("BREW") && !metrics.contains("PROPFIND"),
        "a series per method:\n{metrics}"
    );
    assert!(
        metrics.contains(
            "recohost_http_requests_total{route=\"/recommend\",method=\"other\",status=\"405\"} 3"
        ),
        "{metrics}"
    );

    let (status, user) = server.get("/users/1");
    assert_eq!(status, 200);
    assert!(user["event_count"].as_u64().unwrap() >= 15);
    let first = &user["recent_events"][0];
    assert!(
        ["rate", "click", "view", "purchase"].contains(&first["event_type"].as_str().unwrap()),
        "{first}"
    );
}

#[test]
fn requests_are_served_in_parallel_without_failures() {
    let server = Server::start();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..8)
            .map(|worker| {
                let server = &server;
                scope.spawn(move || {
                    for round in 0..25 {
                        let model = PLUGINS[(worker + round) % PLUGINS.len()];
                        let body = json!({"user_id": worker * 100 + round + 1, "n_recommendations": 5, "model_type": model});
                        let (status, response) = server.post("/recommend", &body);
                        assert_eq!(status, 200, "{response}");
                        assert_eq!(titles(&response).len(), 5);
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.join().expect("worker");
        }
    });
    let (_, plugins) = server.get("/plugins");
    let calls: u64 = plugins["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["calls"].as_u64().unwrap())
        .sum();
    let failures: u64 = plugins["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["failures"].as_u64().unwrap())
        .sum();
    assert_eq!((calls, failures), (200, 0));
}

#[test]
fn a_restart_restores_models_from_snapshots_and_compiled_code_from_the_cache() {
    let temp = tempfile::tempdir().unwrap();
    let data_dir = temp.path().join("data");
    let first = Server::start_in(&data_dir, &config_text("")).unwrap();
    let request = json!({"user_id": 42, "n_recommendations": 10, "model_type": "collaborative"});
    let (_, before) = first.post("/recommend", &request);
    for plugin in PLUGINS {
        assert_eq!(
            first.plugin_status(plugin).unwrap()["code"],
            "compiled",
            "{plugin}"
        );
    }
    first.kill();
    let cached = std::fs::read_dir(data_dir.join("compiled"))
        .unwrap()
        .count();
    assert_eq!(cached, PLUGINS.len(), "one compiled component per plugin");

    let second = Server::start_in(&data_dir, &config_text("")).unwrap();
    let (_, after) = second.post("/recommend", &request);
    assert_eq!(
        after["model_version"], before["model_version"],
        "restored, not retrained"
    );
    assert_eq!(titles(&after), titles(&before));
    // Nothing was compiled on the second start (a rejected cache entry is compiled again
    // and rewritten under the same name: counting files could not tell).
    for plugin in PLUGINS {
        assert_eq!(
            second.plugin_status(plugin).unwrap()["code"],
            "cache",
            "{plugin}"
        );
    }
}

#[test]
fn a_changed_plugin_config_retrains_with_a_new_model_version() {
    let temp = tempfile::tempdir().unwrap();
    let data_dir = temp.path().join("data");
    let first = Server::start_in(&data_dir, &config_text("")).unwrap();
    let (_, before) = first.post(
        "/recommend",
        &json!({"user_id": 1, "model_type": "popularity"}),
    );
    first.kill();
    let changed = config_text("").replacen(
        "name = \"popularity\"\n",
        "name = \"popularity\"\n[plugins.config]\nhalf_life_days = 7.0\n",
        1,
    );
    // Keys after a [plugins.config] header belong to it: put the table after `path`.
    let changed = reorder_config_table(&changed);
    let second = Server::start_in(&data_dir, &changed).unwrap();
    let (_, after) = second.post(
        "/recommend",
        &json!({"user_id": 1, "model_type": "popularity"}),
    );
    assert_eq!(
        after["model_version"].as_u64().unwrap(),
        before["model_version"].as_u64().unwrap() + 1
    );
}

/// Moves a `[plugins.config]` table below the `path` line that follows it.
fn reorder_config_table(text: &str) -> String {
    let table = "[plugins.config]\nhalf_life_days = 7.0\n";
    let without = text.replacen(table, "", 1);
    let marker = "popularity.wasm\"\n";
    without.replacen(marker, &format!("{marker}{table}"), 1)
}

#[test]
fn a_plugin_that_is_not_a_component_stops_start_up_with_a_clear_message() {
    let temp = tempfile::tempdir().unwrap();
    let bogus = temp.path().join("bogus.wasm");
    std::fs::write(&bogus, b"this is not WebAssembly").unwrap();
    let config = format!(
        "{}\n[[plugins]]\nname = \"bogus\"\npath = {:?}\n",
        config_text(""),
        bogus.display().to_string()
    );
    let stderr = Server::start_in(&temp.path().join("data"), &config)
        .err()
        .expect("start-up fails");
    assert!(
        stderr.contains("bogus") && stderr.contains("not a valid WebAssembly component"),
        "{stderr}"
    );

    let config =
        config_text("").replace("default_model = \"hybrid\"", "default_model = \"missing\"");
    let stderr = Server::start_in(&temp.path().join("data2"), &config)
        .err()
        .expect("start-up fails");
    assert!(
        stderr.contains("default_model \"missing\" is not a declared plugin"),
        "{stderr}"
    );
}

#[test]
fn movielens_100k_imports_and_serves_real_titles() {
    let Some(dataset) = movielens_100k() else {
        return;
    };
    let temp = tempfile::tempdir().unwrap();
    let data_dir = temp.path().join("data");
    let output = std::process::Command::new(recohost_e2e::binary())
        .args(["import", "--format", "movielens"])
        .arg(&dataset)
        .arg("--data-dir")
        .arg(&data_dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("1682 items, 943 users, 100000 events"),
        "{stdout}"
    );

    let server = Server::start_in(&data_dir, &config_text("demo_data = false\n")).unwrap();
    let (_, item) = server.get("/items/1");
    assert_eq!(item["title"], "Toy Story (1995)");
    assert_eq!(item["tags"], json!(["animation", "children's", "comedy"]));
    for plugin in PLUGINS {
        let (status, body) = server.post(
            "/recommend",
            &json!({"user_id": 1, "n_recommendations": 5, "model_type": plugin}),
        );
        assert_eq!((status, titles(&body).len()), (200, 5), "{plugin}: {body}");
    }
}
