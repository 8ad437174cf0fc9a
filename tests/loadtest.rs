//! Load test of the real server with wrk: event ingestion, and `/recommend` latency with and
//! without continuous model updates, measured in the same run.
//!
//!     cargo xtask loadtest          (needs `wrk`: apt-get install wrk)
//!
//! Scenarios, each against a server started for it on a fresh data directory with demo data:
//! 1. `POST /events`, one event per request, 64 connections.
//! 2. `POST /events/batch`, 1,000 events per request, 8 connections.
//! 3. `POST /recommend` with no events arriving (the baseline).
//! 4. `POST /recommend` while a client posts a 1,000-event batch every 100 ms, each of which
//!    triggers a model update of every plugin (`update_buffer_size = 1000`).
//!    (3 and 4 run with the cache off, so every request reaches a plugin.)
//! 5. The cache: `GET /health` (the ceiling: routing, answered from memory), then
//!    `POST /recommend` over the 2,000 demo users with the in-process cache (warmed by a first
//!    pass), with Redis (a real redis-server started here), with the in-process cache and no
//!    experiment running (no exposure to log), and with the cache off, each as a share of
//!    `/health`.
//!
//! Learning stays on in 1 and 2 (default triggers), as in production.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark driver: fail loudly

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use recohost_e2e::{Server, config_text};

#[path = "wrk.rs"]
#[allow(dead_code)] // shared by the load test binaries; each uses part of it
mod wrk;
use serde_json::{Value, json};
use wrk::{BATCH_LUA, DURATION, EVENTS_LUA, ITEMS, RECOMMEND_LUA, USERS, wrk};

const HEALTH_LUA: &str = r#"
wrk.method = "GET"
request = function()
  return wrk.format(nil, "/health")
end
"#;

fn start(dir: &Path, name: &str, learning: &str) -> Server {
    Server::start_in(&dir.join(name), &config_text(learning)).unwrap()
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    values[((values.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    let mut results = serde_json::Map::new();

    eprintln!("1/5 POST /events (64 connections, {DURATION})");
    let server = start(dir, "events", "");
    let events = wrk(&server.base, EVENTS_LUA, 64, dir);
    assert_eq!(events["non_2xx"], 0, "{events}");
    results.insert("events".into(), events);
    drop(server);

    eprintln!("2/5 POST /events/batch, 1,000 events per request (8 connections, {DURATION})");
    let server = start(dir, "batch", "");
    let mut batch = wrk(&server.base, BATCH_LUA, 8, dir);
    assert_eq!(batch["non_2xx"], 0, "{batch}");
    batch["events_per_second"] = json!(batch["requests_per_second"].as_f64().unwrap() * 1000.0);
    results.insert("events_batch".into(), batch);
    drop(server);

    // Room for wrk's 64 connections and the feeder of scenario 4 (at the default
    // `max_in_flight` of 64, one of them would be shed now and then).
    let learning = "[http]\nmax_in_flight = 128\n[learning]\nupdate_buffer_size = 1000\nupdate_interval_secs = 0\n[cache]\nbackend = \"off\"\n";
    let server = start(dir, "recommend", learning);
    eprintln!("3/5 POST /recommend, no updates (64 connections, {DURATION})");
    let quiet = wrk(&server.base, RECOMMEND_LUA, 64, dir);
    assert_eq!(quiet["non_2xx"], 0, "{quiet}");

    eprintln!("4/5 POST /recommend while 1,000-event updates run back to back");
    let updates_before = server.get("/learning/stats").1["update_count"]
        .as_u64()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = {
        let (base, stop) = (server.base.clone(), stop.clone());
        std::thread::spawn(move || {
            let client = reqwest::blocking::Client::new();
            let mut n: u32 = 0;
            while !stop.load(Ordering::Relaxed) {
                let events: Vec<Value> = (0..1000)
                    .map(|i| {
                        n = n.wrapping_add(7919);
                        json!({"user_id": 1 + (n + i) % USERS, "item_id": 1 + (n * 31 + i) % ITEMS, "event_type": "click"})
                    })
                    .collect();
                let response = client
                    .post(format!("{base}/events/batch"))
                    .json(&json!({ "events": events }))
                    .send()
                    .unwrap();
                let status = response.status();
                assert!(
                    status.is_success(),
                    "{status}: {}",
                    response.text().unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let busy = wrk(&server.base, RECOMMEND_LUA, 64, dir);
    stop.store(true, Ordering::Relaxed);
    feeder.join().unwrap();
    assert_eq!(busy["non_2xx"], 0, "{busy}");
    let stats = server.get("/learning/stats").1;
    let updates = stats["update_count"].as_u64().unwrap() - updates_before;
    let history = server.get("/learning/history?limit=1000").1;
    let mut durations: Vec<f64> = history["updates"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|run| run["kind"] == "update" && run["feedback_count"].as_u64().unwrap() >= 1000)
        .map(|run| run["duration_ms"].as_f64().unwrap())
        .collect();
    assert!(!durations.is_empty(), "no update ran: {stats}");
    let ratio = busy["p99_us"].as_f64().unwrap() / quiet["p99_us"].as_f64().unwrap();
    results.insert("recommend_quiet".into(), quiet);
    results.insert("recommend_during_updates".into(), busy);
    results.insert(
        "updates_during_scenario_4".into(),
        json!({
            "count": updates,
            "median_ms": percentile(&mut durations, 0.5),
            "p95_ms": percentile(&mut durations, 0.95),
            "max_ms": percentile(&mut durations, 1.0),
        }),
    );
    results.insert("p99_ratio_during_updates".into(), json!(ratio));
    drop(server);

    eprintln!("5/5 the cache: /health, then /recommend cached (memory, Redis) and uncached");
    let mut cache = serde_json::Map::new();
    let server = start(dir, "cache-memory", "");
    cache.insert("health".into(), wrk(&server.base, HEALTH_LUA, 64, dir));
    drop(server);
    let redis = recohost_e2e::Redis::start();
    let redis_config = format!(
        "[cache]\nbackend = \"redis\"\nredis_url = {:?}\n",
        redis.url()
    );
    // The shipped experiment (./experiments) is running in every scenario, so each request
    // also logs an exposure; the last one shows the cache without that work.
    let no_experiments = dir.join("no-experiments");
    std::fs::create_dir_all(&no_experiments).unwrap();
    let memory_alone = format!(
        "experiments_dir = {:?}\n",
        no_experiments.display().to_string()
    );
    for (name, config) in [
        ("memory", String::new()),
        ("redis", redis_config),
        ("memory_no_experiment", memory_alone),
    ] {
        let server = start(dir, &format!("cache-{name}"), &config);
        wrk(&server.base, RECOMMEND_LUA, 64, dir); // warm-up pass: fills the cache
        let cached = wrk(&server.base, RECOMMEND_LUA, 64, dir);
        assert_eq!(cached["non_2xx"], 0, "{cached}");
        cache.insert(format!("recommend_{name}_cache"), cached);
        let stats = server.get("/health").1["cache"].clone();
        cache.insert(format!("{name}_cache_stats"), stats);
    }
    drop(redis);
    let server = start(dir, "cache-off", "[cache]\nbackend = \"off\"\n");
    let uncached = wrk(&server.base, RECOMMEND_LUA, 64, dir);
    assert_eq!(uncached["non_2xx"], 0, "{uncached}");
    cache.insert("recommend_uncached".into(), uncached);
    drop(server);
    results.insert("cache".into(), Value::Object(cache));

    let report = Value::Object(results);
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    let r = &report;
    println!();
    println!("| scenario | throughput | p50 | p99 |");
    println!("|---|---|---|---|");
    println!(
        "| POST /events (1 event per request) | {:.0} events/s | {:.2} ms | {:.2} ms |",
        r["events"]["requests_per_second"].as_f64().unwrap(),
        r["events"]["p50_us"].as_f64().unwrap() / 1e3,
        r["events"]["p99_us"].as_f64().unwrap() / 1e3
    );
    println!(
        "| POST /events/batch (1,000 per request) | {:.0} events/s | {:.2} ms | {:.2} ms |",
        r["events_batch"]["events_per_second"].as_f64().unwrap(),
        r["events_batch"]["p50_us"].as_f64().unwrap() / 1e3,
        r["events_batch"]["p99_us"].as_f64().unwrap() / 1e3
    );
    for (key, label) in [
        ("recommend_quiet", "POST /recommend, no updates"),
        (
            "recommend_during_updates",
            "POST /recommend, updates running",
        ),
    ] {
        println!(
            "| {label} | {:.0} requests/s | {:.2} ms | {:.2} ms |",
            r[key]["requests_per_second"].as_f64().unwrap(),
            r[key]["p50_us"].as_f64().unwrap() / 1e3,
            r[key]["p99_us"].as_f64().unwrap() / 1e3
        );
    }
    let c = &r["cache"];
    let health = c["health"]["requests_per_second"].as_f64().unwrap();
    println!("\n| cache scenario | requests/s | share of /health | p50 | p99 |");
    println!("|---|---|---|---|---|");
    for (key, label) in [
        ("health", "GET /health"),
        (
            "recommend_memory_cache",
            "POST /recommend, in-process cache",
        ),
        ("recommend_redis_cache", "POST /recommend, Redis cache"),
        (
            "recommend_memory_no_experiment_cache",
            "POST /recommend, in-process cache, no experiment running",
        ),
        ("recommend_uncached", "POST /recommend, cache off"),
    ] {
        let rps = c[key]["requests_per_second"].as_f64().unwrap();
        println!(
            "| {label} | {rps:.0} | {:.0}% | {:.2} ms | {:.2} ms |",
            100.0 * rps / health,
            c[key]["p50_us"].as_f64().unwrap() / 1e3,
            c[key]["p99_us"].as_f64().unwrap() / 1e3
        );
    }
    let updates = &r["updates_during_scenario_4"];
    println!(
        "\n/recommend p99 during updates / without: {ratio:.2}x; {} updates of >= 1,000 events ran, median {:.1} ms, p95 {:.1} ms (until every plugin serves the new version)",
        updates["count"],
        updates["median_ms"].as_f64().unwrap(),
        updates["p95_ms"].as_f64().unwrap()
    );
}
