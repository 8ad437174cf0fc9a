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
fn a_plugin_that_loops_or_waits_is_moved_off_the_async_workers() {
    // Short calls run on the async worker that took the request; a call that fails (here
    // the time budget of a loop) moves the plugin's calls to the blocking pool, so a plugin
    // that loops holds a worker for one budget, not one per request.
    let (server, _temp) = misbehaving_server_with("", "failures_before_unhealthy = 1000\n");
    let inline =
        |server: &Server| server.plugin_status("misbehaving").unwrap()["serving_inline"].clone();
    // Before any call: a wall-clock hiccup on a loaded machine cannot have moved it yet.
    assert_eq!(
        inline(&server),
        true,
        "a plugin serves inline to begin with"
    );
    assert_eq!(ask(&server, 5).0, 200);
    let (status, body) = ask(&server, 17);
    assert_eq!(status, 503, "{body}");
    assert_eq!(inline(&server), false, "after its loop, off the workers");
    // Four loops at once, each on the pool: the server keeps answering everyone else.
    let loops: Vec<_> = (0..4)
        .map(|_| {
            let base = server.base.clone();
            std::thread::spawn(move || ask_at(&base, 17))
        })
        .collect();
    let (status, other) = server.post("/recommend", &json!({"user_id": 5, "n_recommendations": 5}));
    assert_eq!(status, 200, "{other}");
    for looping in loops {
        assert_eq!(looping.join().unwrap().0, 503);
    }
    assert_eq!(ask(&server, 5).0, 200, "and it still answers what it can");

    // A guest panic writes its message to stderr and waits for the flush: a wait tokio
    // refuses on a worker. The request is served again on the pool (the guest's own trap,
    // not a reset connection), and the plugin stays on the pool.
    let (server, _temp) = misbehaving_server();
    assert_eq!(inline(&server), true);
    let (status, body) = ask(&server, 13);
    assert_eq!(
        (status, error_code(&body).as_str()),
        (503, "model_unavailable"),
        "{body}"
    );
    // The guest's own trap, from the pool's retry, counted once.
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("trapped") && !message.contains("calling thread"),
        "{message}"
    );
    let plugin = server.plugin_status("misbehaving").unwrap();
    assert_eq!(
        (plugin["calls"].as_u64(), plugin["traps"].as_u64()),
        (Some(1), Some(1))
    );
    assert!(
        server
            .log()
            .contains("waited inside WASI on an async worker"),
        "the inline attempt waited and was served again on the pool: {}",
        server.log()
    );
    assert_eq!(
        inline(&server),
        false,
        "a plugin that waits stays on the pool"
    );
    assert_eq!(ask(&server, 5).0, 200);
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
        message.contains("12000 items") && message.contains("limits.max_result_items"),
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

/// `ask`, from any thread.
fn ask_at(base: &str, count: u32) -> (u16, Value) {
    let response = reqwest::blocking::Client::new()
        .post(format!("{base}/recommend"))
        .json(&json!({"user_id": 5, "n_recommendations": count, "model_type": "misbehaving"}))
        .send()
        .unwrap();
    (response.status().as_u16(), response.json().unwrap())
}

#[test]
fn a_plugin_that_sleeps_is_stopped_at_its_budget_and_its_other_users_are_served() {
    // Two serving instances, the breaker out of the way: four sleepers at once would hold
    // both instances for good if a wait inside the host escaped the time budget.
    let (server, _temp) = misbehaving_server_with(
        "",
        "serving_instances = 2\nfailures_before_unhealthy = 1000\n",
    );
    let sleepers: Vec<_> = (0..4)
        .map(|_| {
            let base = server.base.clone();
            std::thread::spawn(move || ask_at(&base, 41))
        })
        .collect();
    for sleeper in sleepers {
        let (status, body) = sleeper.join().unwrap();
        assert_eq!(
            (status, error_code(&body).as_str()),
            (503, "model_unavailable"),
            "{body}"
        );
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("time budget of 200 ms"), "{message}");
    }
    // Its other users are answered (before the fix they waited for the 10 s HTTP timeout).
    let (status, body) = ask(&server, 5);
    assert_eq!(status, 200, "{body}");
    let plugin = server.plugin_status("misbehaving").unwrap();
    assert_eq!(
        (plugin["failures"].as_u64(), plugin["traps"].as_u64()),
        (Some(4), Some(4))
    );

    // With the default breaker, sleeping counts as failing: three in a row open it.
    let (server, _temp) = misbehaving_server();
    for _ in 0..3 {
        assert_eq!(ask(&server, 41).0, 503);
    }
    assert_eq!(
        server.plugin_status("misbehaving").unwrap()["status"],
        "unhealthy"
    );
}

#[test]
fn a_plugin_that_sleeps_in_update_fails_that_update_and_the_others_learn() {
    let temp = tempfile::tempdir().unwrap();
    let config = format!(
        "{}\n[[plugins]]\nname = \"misbehaving\"\npath = {:?}\n[plugins.config]\nupdate = \"sleep\"\n[plugins.limits]\nupdate_ms = 300\n",
        config_text("[learning]\nupdate_buffer_size = 3\n"),
        fixture("misbehaving").display().to_string()
    );
    let server = Server::start_in(&temp.path().join("data"), &config).unwrap();
    let events: Vec<Value> = (0..3)
        .map(|i| json!({"user_id": 8, "item_id": 20 + i, "event_type": "click"}))
        .collect();
    let (status, answer) = server.post("/events/batch", &json!({ "events": events }));
    assert_eq!(status, 200, "{answer}");
    let update_id = answer["model_update"]["update_id"].as_u64().unwrap();
    // Before the fix the learning thread slept for good and this run never finished.
    let stats = server.wait_for("/learning/stats", std::time::Duration::from_secs(60), |s| {
        s["last_update"]["update_id"].as_u64() >= Some(update_id)
    });
    let outcomes = &stats["last_update"]["outcomes"];
    assert_eq!(outcomes["misbehaving"]["status"], "failed", "{outcomes}");
    let error = outcomes["misbehaving"]["error"].as_str().unwrap();
    assert!(error.contains("time budget of 300 ms"), "{error}");
    assert_eq!(outcomes["popularity"]["status"], "updated", "{outcomes}");
}

/// A server with the misbehaving fixture (`memory_mb` of its choice) and the table grower
/// (64 MiB), both with one serving instance so that the memory they may hold is known.
fn hostile_server(misbehaving_memory_mb: u64) -> (Server, tempfile::TempDir) {
    let temp = tempfile::tempdir().unwrap();
    let config = format!(
        "{}\n[[plugins]]\nname = \"misbehaving\"\npath = {:?}\n[plugins.limits]\nrecommend_ms = 2000\nmemory_mb = {misbehaving_memory_mb}\nserving_instances = 1\nfailures_before_unhealthy = 1000\n\
         \n[[plugins]]\nname = \"grower\"\npath = {:?}\n[plugins.limits]\nrecommend_ms = 2000\nmemory_mb = 64\nserving_instances = 1\n",
        config_text(""),
        fixture("misbehaving").display().to_string(),
        recohost_e2e::table_grower().display().to_string()
    );
    let server = Server::start_in(&temp.path().join("data"), &config).unwrap();
    (server, temp)
}

/// What the host may hold beyond a plugin instance's `memory_mb` while serving it: request
/// bookkeeping, a fresh instance's code and tables, allocator slack.
const RSS_MARGIN: u64 = 32 << 20;

/// Runs `hostile` (which must fail with 503), then checks that the server's peak resident
/// memory during it grew by at most `cap_mb` plus [`RSS_MARGIN`]; returns the error message.
fn held_within(server: &Server, cap_mb: u64, hostile: impl Fn() -> (u16, Value)) -> String {
    let (before, _) = server.memory();
    server.reset_peak_memory();
    let (status, body) = hostile();
    let (_, peak) = server.memory();
    assert_eq!(
        (status, error_code(&body).as_str()),
        (503, "model_unavailable"),
        "{body}"
    );
    let grew = peak.saturating_sub(before);
    assert!(
        grew <= (cap_mb << 20) + RSS_MARGIN,
        "the server's RSS grew by {} MiB, over the {cap_mb} MiB cap and the {} MiB margin",
        grew >> 20,
        RSS_MARGIN >> 20
    );
    let message = body["error"]["message"].as_str().unwrap().to_string();
    assert!(
        body.to_string().len() < 4_096,
        "a bounded message: {} bytes",
        body.to_string().len()
    );
    message
}

#[test]
fn a_table_grown_without_bound_is_held_to_the_memory_cap() {
    let (server, _temp) = hostile_server(64);
    // Table storage counts against memory_mb like linear memory.
    let message = held_within(&server, 64, || {
        server.post(
            "/recommend",
            &json!({"user_id": 5, "n_recommendations": 5, "model_type": "grower"}),
        )
    });
    assert!(
        message.contains("exceeded its memory limit of 64 MiB") && message.contains("a table"),
        "{message}"
    );
    assert_eq!(server.plugin_status("grower").unwrap()["failures"], 1);
}

#[test]
fn random_bytes_are_refused_over_a_megabyte() {
    let (server, _temp) = hostile_server(256);
    // 32 MiB asked of the host: refused before the host allocates them.
    let message = held_within(&server, 256, || ask(&server, 43));
    assert!(message.contains("exceeds limit 1048576"), "{message}");
    assert_eq!(server.plugin_status("misbehaving").unwrap()["failures"], 1);
}

#[test]
fn a_huge_error_message_is_never_copied_out_of_the_plugin() {
    let (server, _temp) = hostile_server(256);
    // 100 MB of error text: not copied out of the guest; no client or log line carries it.
    let message = held_within(&server, 256, || ask(&server, 47));
    assert!(
        message.contains("fuel") && message.contains("64 KiB of error text"),
        "{message}"
    );
    assert!(
        server.log().lines().all(|line| line.len() < 8_192),
        "a log line carried the message"
    );
    assert_eq!(server.plugin_status("misbehaving").unwrap()["failures"], 1);
}

#[test]
fn an_answer_far_over_the_item_limit_is_refused_before_it_is_copied() {
    let (server, _temp) = hostile_server(256);
    // 4,000,000 entries: the host refuses them by their size, without reading them (the
    // message cannot count them), and rebuilds the instance (the call never finished).
    let message = held_within(&server, 256, || ask(&server, 49));
    assert!(
        message.contains("at most 10000 items (limits.max_result_items)")
            && !message.contains("4000000"),
        "{message}"
    );
    let plugin = server.plugin_status("misbehaving").unwrap();
    assert_eq!(
        (plugin["failures"].as_u64(), plugin["traps"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(ask(&server, 5).0, 200);
}

#[test]
fn refusals_do_not_open_the_circuit_breaker() {
    let (server, _temp) = misbehaving_server();
    for _ in 0..5 {
        let (status, body) = ask(&server, 59);
        assert_eq!(status, 503, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("refuses this count"),
            "{body}"
        );
    }
    let plugin = server.plugin_status("misbehaving").unwrap();
    assert_eq!(plugin["status"], "ready", "{plugin}");
    assert_eq!(
        (plugin["refusals"].as_u64(), plugin["failures"].as_u64()),
        (Some(5), Some(0)),
        "{plugin}"
    );
    // Others are served by it as before.
    assert_eq!(ask(&server, 5).0, 200);
}
