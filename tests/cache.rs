//! End-to-end tests of the recommendation cache: the in-process cache by default, and Redis
//! (a real redis-server started here) with faults injected by killing it.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use recohost_e2e::{Redis, Server, config_text};
use serde_json::{Value, json};

fn recommend(server: &Server, user: u64) -> Value {
    let (status, body) = server.post(
        "/recommend",
        &json!({"user_id": user, "n_recommendations": 5, "model_type": "collaborative"}),
    );
    assert_eq!(status, 200, "{body}");
    body
}

fn cache_stats(server: &Server) -> Value {
    let (status, health) = server.get("/health");
    assert_eq!(status, 200, "{health}");
    health["cache"].clone()
}

fn start(top_level: &str) -> (tempfile::TempDir, Server) {
    let temp = tempfile::tempdir().unwrap();
    let server = Server::start_in(&temp.path().join("data"), &config_text(top_level)).unwrap();
    (temp, server)
}

/// Hit after miss, and the two invalidations: the user's own feedback and a model update.
fn hits_and_invalidations(server: &Server) {
    let first = recommend(server, 42);
    assert_eq!(first["cached"], false, "{first}");
    let second = recommend(server, 42);
    assert_eq!(second["cached"], true, "{second}");
    assert_eq!(second["recommendations"], first["recommendations"]);
    assert_eq!(second["model_version"], first["model_version"]);

    // The user's feedback moves their key: the next answer is fresh and excludes the item.
    let clicked = first["recommendations"][0]["item_id"].clone();
    let (status, body) = server.post(
        "/events",
        &json!({"user_id": 42, "item_id": clicked, "event_type": "click"}),
    );
    assert_eq!(status, 200, "{body}");
    let after_click = recommend(server, 42);
    assert_eq!(after_click["cached"], false, "{after_click}");
    assert!(
        !after_click["recommendations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["item_id"] == clicked),
        "{after_click}"
    );
    assert_eq!(recommend(server, 42)["cached"], true);

    // A model update moves every key of the plugin.
    let version = after_click["model_version"].as_u64().unwrap();
    let (status, body) = server.post_as("/learning/trigger-update", None);
    assert!(status == 202, "{status} {body}");
    server.wait_for("/learning/stats", Duration::from_secs(60), |stats| {
        stats["models"]["collaborative"]["model_version"]
            .as_u64()
            .is_some_and(|v| v > version)
    });
    let after_update = recommend(server, 42);
    assert_eq!(after_update["cached"], false, "{after_update}");
    assert!(after_update["model_version"].as_u64().unwrap() > version);
    assert_eq!(recommend(server, 42)["cached"], true);
}

#[test]
fn the_in_process_cache_hits_and_moves_with_feedback_and_updates() {
    let (_temp, server) = start("");
    assert_eq!(cache_stats(&server)["backend"], "memory");
    hits_and_invalidations(&server);
    let stats = cache_stats(&server);
    assert!(stats["hits"].as_u64().unwrap() >= 3, "{stats}");
}

#[test]
fn the_redis_cache_hits_and_moves_with_feedback_and_updates() {
    let redis = Redis::start();
    let (_temp, server) = start(&format!(
        "[cache]\nbackend = \"redis\"\nredis_url = {:?}\n",
        redis.url()
    ));
    assert_eq!(cache_stats(&server)["backend"], "redis");
    hits_and_invalidations(&server);
    let stats = cache_stats(&server);
    assert!(stats["stores"].as_u64().unwrap() >= 3, "{stats}");
    assert_eq!(stats["faults"], 0, "{stats}");
}

#[test]
fn redis_dying_mid_run_is_invisible_to_clients_and_the_cache_recovers() {
    let mut redis = Redis::start();
    let (_temp, server) = start(&format!(
        "[cache]\nbackend = \"redis\"\nredis_url = {:?}\nretry_after_ms = 200\n",
        redis.url()
    ));
    recommend(&server, 7);
    assert_eq!(recommend(&server, 7)["cached"], true);

    redis.kill();
    for user in 1..=50 {
        // Every request is served (uncached), none fails.
        let body = recommend(&server, user);
        assert_eq!(body["cached"], false, "{body}");
    }
    let stats = cache_stats(&server);
    assert!(stats["faults"].as_u64().unwrap() >= 1, "{stats}");
    assert!(stats["bypassed"].as_u64().unwrap() >= 1, "{stats}");

    // Back again: the cache reconnects on its own (an empty Redis: miss, then hit).
    redis.restart();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if recommend(&server, 7)["cached"] == true {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the cache never came back: {}",
            cache_stats(&server)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_server_starts_and_serves_while_redis_is_down() {
    let mut redis = Redis::start();
    redis.kill();
    let (_temp, server) = start(&format!(
        "[cache]\nbackend = \"redis\"\nredis_url = {:?}\n",
        redis.url()
    ));
    for user in 1..=5 {
        assert_eq!(recommend(&server, user)["cached"], false);
    }
    assert!(cache_stats(&server)["faults"].as_u64().unwrap() >= 1);
}

#[test]
fn servers_sharing_one_redis_never_serve_each_others_models() {
    // Model versions count per database: two servers can both serve "collaborative v1" built
    // from different events. Their cache keys carry their database's id.
    let redis = Redis::start();
    let config = format!(
        "[cache]\nbackend = \"redis\"\nredis_url = {:?}\n",
        redis.url()
    );
    let (_a_dir, a) = start(&config);
    let (_b_dir, b) = start(&config);
    assert_eq!(recommend(&a, 42)["cached"], false);
    assert_eq!(recommend(&a, 42)["cached"], true);
    let on_b = recommend(&b, 42);
    assert_eq!(on_b["model_version"], 1);
    assert_eq!(on_b["cached"], false, "{on_b}");
}

/// The value of the sample `name{labels}` in a Prometheus text page.
fn sample(page: &str, series: &str) -> f64 {
    page.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in:\n{page}"))
}

#[test]
fn metrics_count_plugin_calls_and_cache_faults_in_prometheus_text() {
    let mut redis = Redis::start();
    let (_temp, server) = start(&format!(
        "[cache]\nbackend = \"redis\"\nredis_url = {:?}\n",
        redis.url()
    ));
    let (status, content_type, before) = server.get_text("/metrics");
    assert_eq!(status, 200);
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    assert!(
        before.contains("# TYPE recohost_cache_faults_total counter"),
        "{before}"
    );
    let calls = sample(
        &before,
        "recohost_plugin_calls_total{plugin=\"collaborative\"}",
    );

    recommend(&server, 3);
    recommend(&server, 3);
    redis.kill();
    recommend(&server, 4);
    let (_, _, after) = server.get_text("/metrics");
    let series = |name: &str| format!("{name}{{backend=\"redis\"}}");
    assert_eq!(
        sample(
            &after,
            "recohost_plugin_calls_total{plugin=\"collaborative\"}"
        ),
        calls + 2.0,
        "one call for the miss, none for the hit, one while Redis is down"
    );
    assert_eq!(sample(&after, &series("recohost_cache_hits_total")), 1.0);
    assert!(sample(&after, &series("recohost_cache_faults_total")) >= 1.0);
    assert!(sample(&after, "recohost_items") > 0.0);

    // Requests by route pattern, method and status, with a latency histogram.
    assert_eq!(server.get("/users/3").0, 200);
    assert_eq!(server.get("/no/such/route").0, 404);
    let (_, _, page) = server.get_text("/metrics");
    let requests =
        |labels: &str| sample(&page, &format!("recohost_http_requests_total{{{labels}}}"));
    assert_eq!(
        requests("route=\"/recommend\",method=\"POST\",status=\"200\""),
        3.0
    );
    assert_eq!(
        requests("route=\"/users/{id}\",method=\"GET\",status=\"200\""),
        1.0
    );
    assert_eq!(
        requests("route=\"unmatched\",method=\"GET\",status=\"404\""),
        1.0
    );
    let histogram = "recohost_http_request_duration_seconds";
    assert_eq!(
        sample(&page, &format!("{histogram}_count{{route=\"/recommend\"}}")),
        3.0
    );
    assert_eq!(
        sample(
            &page,
            &format!("{histogram}_bucket{{route=\"/recommend\",le=\"+Inf\"}}")
        ),
        3.0
    );
}
