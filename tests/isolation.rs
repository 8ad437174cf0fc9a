//! A plugin that panics, loops, exhausts its memory or returns garbage never takes the server
//! down and never reaches a client as garbage; its instance is rebuilt from the snapshot.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use recohost_e2e::{Server, config_text, error_code, fixture};
use serde_json::{Value, json};

fn misbehaving_server() -> (Server, tempfile::TempDir) {
    let temp = tempfile::tempdir().unwrap();
    let config = format!(
        "{}\n[[plugins]]\nname = \"misbehaving\"\npath = {:?}\n[plugins.limits]\nrecommend_ms = 200\nmemory_mb = 64\n",
        config_text(""),
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

    let (_, plugins) = server.get("/plugins");
    let status_of = |name: &str| {
        plugins["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap()
            .clone()
    };
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
