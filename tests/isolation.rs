//! A plugin that panics, loops, exhausts its memory or returns garbage never takes the server
//! down and never reaches a client as garbage; its instance is rebuilt from the snapshot.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use recohost_e2e::{Server, config_text, error_code, fixture};
use serde_json::{Value, json};

fn misbehaving_server() -> (Server, tempfile::TempDir) {
    misbehaving_server_with("", "")
}

/// A server with the bundled plugins and the misbehaving fixture; `top_level` goes before
/// the plugin tables, `limits` into the fixture's `[plugins.limits]`.
fn misbehaving_server_with(top_level: &str, limits: &str) -> (Server, tempfile::TempDir) {
    let temp = tempfile::tempdir().unwrap();
    let config = format!(
        "{}\n[[plugins]]\nname = \"misbehaving\"\npath = {:?}\n[plugins.limits]\nrecommend_ms = 200\nmemory_mb = 64\n{limits}",
        config_text(top_level),
        fixture("misbehaving").display().to_string()
    );
    let server = Server::start_in(&temp.path().join("data"), &config).unwrap();
    (server, temp)
}

fn ask(server: &Server, count: u32) -> (u16, Value) {
    server.post(
        "/recommend",
        &json!({"user_id": 5, "n_recommendations": count, "model_type": "misbehaving"}),
    )
}

#[test]
fn traps_are_contained_and_the_instance_is_rebuilt_from_the_snapshot() {
    let (server, _temp) = misbehaving_server();
    let (status, healthy) = ask(&server, 5);
    assert_eq!(status, 200, "{healthy}");

    for (count, limit) in [
        (13, "panic"),
        (17, "time budget of 200 ms"),
        (19, "memory limit of 64 MiB"),
    ] {
        let (status, body) = ask(&server, count);
        assert_eq!(
            (status, error_code(&body).as_str()),
            (503, "model_unavailable"),
            "count {count}: {body}"
        );
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("trapped"), "count {count}: {message}");
        if count != 13 {
            assert!(
                message.contains(limit),
                "count {count} names the limit: {message}"
            );
        }
        // The next request is served by a fresh instance holding the same model.
        let (status, again) = ask(&server, 5);
        assert_eq!(status, 200, "after count {count}: {again}");
        assert_eq!(again["recommendations"], healthy["recommendations"]);
        assert_eq!(again["model_version"], healthy["model_version"]);
    }

    let status_of = |name: &str| server.plugin_status(name).unwrap();
    assert_eq!(status_of("misbehaving")["traps"], 3);
    assert_eq!(status_of("hybrid")["traps"], 0);
    let (status, other) = server.post("/recommend", &json!({"user_id": 5, "n_recommendations": 5}));
    assert_eq!(
        (status, other["recommendations"].as_array().unwrap().len()),
        (200, 5)
    );
}

#[test]
fn garbage_answers_are_cleaned_before_any_client_sees_them() {
    let (server, _temp) = misbehaving_server();
    let seen = server.seen_items("5");
    let (status, body) = ask(&server, 23);
    assert_eq!(status, 200, "{body}");
    let items = body["recommendations"].as_array().unwrap();
    assert!(
        items.len() <= 23 && !items.is_empty(),
        "{} items",
        items.len()
    );
    let mut ids: Vec<String> = items.iter().map(|i| i["item_id"].to_string()).collect();
    for item in items {
        assert!(item["score"].as_f64().is_some_and(f64::is_finite), "{item}");
        assert!(
            !seen.contains(&item["item_id"]),
            "excluded item {item} came back"
        );
        assert!(item["title"].as_str().is_some(), "{item}");
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), items.len(), "duplicates came back");
}

#[test]
fn a_component_for_another_major_version_is_refused_naming_both_versions() {
    let temp = tempfile::tempdir().unwrap();
    let config = format!(
        "{}\n[[plugins]]\nname = \"future\"\npath = {:?}\n",
        config_text(""),
        fixture("wrong_major").display().to_string()
    );
    let stderr = Server::start_in(&temp.path().join("data"), &config)
        .err()
        .expect("start-up fails");
    assert!(stderr.contains("plugin `future`"), "{stderr}");
    assert!(
        stderr.contains("recohost:strategy@2.0.0") && stderr.contains("recohost:strategy@1.0.0"),
        "{stderr}"
    );
}

#[test]
fn an_oversized_answer_is_refused_naming_the_limit() {
    let (server, _temp) = misbehaving_server();
    let (status, body) = ask(&server, 29);
    assert_eq!(
        (status, error_code(&body).as_str()),
        (503, "model_unavailable"),
        "{body}"
    );
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("50000 items") && message.contains("limits.max_result_items"),
        "{message}"
    );
    // Not a trap: the same instance answers the next request.
    let (status, _) = ask(&server, 5);
    assert_eq!(status, 200);
    let fixture = server.plugin_status("misbehaving").unwrap();
    assert_eq!(
        (fixture["failures"].as_u64(), fixture["traps"].as_u64()),
        (Some(1), Some(0))
    );
}

#[test]
fn a_log_flood_is_cut_at_the_per_call_limit() {
    let (server, _temp) = misbehaving_server();
    let (status, body) = ask(&server, 31);
    assert_eq!(status, 200, "{body}");
    let log = server.log();
    let lines = log.lines().filter(|l| l.contains("xxxxxxxx")).count();
    // 64 KiB per call, 1 KiB per message.
    assert!(
        lines > 0 && lines <= 64,
        "{lines} lines of the flood reached the log"
    );
    assert!(log.contains("reached its log limit"), "{log}");
}

#[test]
fn a_failing_plugin_is_answered_by_the_fallback_then_skipped_while_unhealthy() {
    let (server, _temp) = misbehaving_server_with(
        "fallback_model = \"popularity\"\n",
        "failures_before_unhealthy = 2\nbackoff_ms = 1500\n",
    );
    let (_, direct) = server.post(
        "/recommend",
        &json!({"user_id": 5, "n_recommendations": 17, "model_type": "popularity"}),
    );
    // Loops: the fallback answers, and the response says so and why.
    let (status, body) = ask(&server, 17);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model"], "popularity");
    assert_eq!(body["fallback"]["from"], "misbehaving");
    let reason = body["fallback"]["reason"].as_str().unwrap();
    assert!(reason.contains("time budget of 200 ms"), "{reason}");
    assert_eq!(body["recommendations"], direct["recommendations"]);

    // The second failure in a row makes it unhealthy ...
    let (status, _) = ask(&server, 13);
    assert_eq!(status, 200);
    let plugin = |server: &Server| server.plugin_status("misbehaving").unwrap();
    let unhealthy = plugin(&server);
    assert_eq!(unhealthy["status"], "unhealthy", "{unhealthy}");
    assert_eq!(unhealthy["health"]["healthy"], false);
    let (_, _, metrics) = server.get_text("/metrics");
    assert!(
        metrics.contains("recohost_plugin_healthy{plugin=\"misbehaving\"} 0"),
        "{metrics}"
    );

    // ... so even a request it would answer well skips it (no call: see the counts below)
    // and goes to the fallback.
    let (status, body) = ask(&server, 5);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["fallback"]["from"], "misbehaving");
    assert!(
        body["fallback"]["reason"]
            .as_str()
            .unwrap()
            .contains("unhealthy"),
        "{body}"
    );
    let calls_while_unhealthy = plugin(&server)["calls"].clone();

    // After the backoff one request probes it; it answers well, so it is healthy again.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while ask(&server, 5).1["model"] != "misbehaving" {
        assert!(std::time::Instant::now() < deadline, "never probed again");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let recovered = plugin(&server);
    assert_eq!(recovered["status"], "ready", "{recovered}");
    assert_eq!(
        recovered["calls"].as_u64().unwrap(),
        calls_while_unhealthy.as_u64().unwrap() + 1,
        "skipped requests never reached the plugin; the probe did"
    );
    assert!(recovered["skipped"].as_u64().unwrap() >= 1);
    assert!(recovered["fallbacks"].as_u64().unwrap() >= 3);
}

#[test]
fn without_a_fallback_an_unhealthy_plugin_answers_503_with_retry_after() {
    let (server, _temp) =
        misbehaving_server_with("", "failures_before_unhealthy = 1\nbackoff_ms = 5000\n");
    let (status, _) = ask(&server, 13);
    assert_eq!(status, 503);
    let response = server.post_response(
        "/recommend",
        &json!({"user_id": 5, "n_recommendations": 5, "model_type": "misbehaving"}),
    );
    assert_eq!(response.status().as_u16(), 503);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=5).contains(&retry_after), "Retry-After: {retry_after}");
    let body: Value = response.json().unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("unhealthy") && message.contains("panic"),
        "{message}"
    );
}

#[test]
fn files_that_are_not_components_are_refused_at_start() {
    let temp = tempfile::tempdir().unwrap();
    // A core module (valid WebAssembly, not a component) and bytes that are not WebAssembly.
    let core_module = temp.path().join("core.wasm");
    std::fs::write(&core_module, b"\0asm\x01\0\0\0").unwrap();
    let garbage = temp.path().join("garbage.wasm");
    std::fs::write(&garbage, b"#!/bin/sh\nrm -rf /\n").unwrap();
    for (path, needle) in [
        (&core_module, "not a valid WebAssembly component"),
        (&garbage, "not a valid WebAssembly component"),
    ] {
        let config = format!(
            "{}\n[[plugins]]\nname = \"hostile\"\npath = {:?}\n",
            config_text(""),
            path.display().to_string()
        );
        let stderr = Server::start_in(&temp.path().join("data"), &config)
            .err()
            .expect("start-up fails");
        assert!(
            stderr.contains("plugin `hostile`") && stderr.contains(needle),
            "{stderr}"
        );
    }
}

#[test]
fn a_plugin_reaches_no_file_environment_or_socket() {
    let (server, _temp) = misbehaving_server();
    // The fixture refuses, naming what it reached, if any attempt succeeds.
    let (status, body) = ask(&server, 37);
    assert_eq!(status, 200, "{body}");
}
