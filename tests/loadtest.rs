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
//! 5. Host overhead: `POST /recommend` over the 2,000 demo users against `GET /health` (the
//!    ceiling: routing, answered from memory) on the same server, alternating, twice each:
//!    popularity with the cache off and no experiment (the host's own cost around the
//!    cheapest model), the default model with the cache off, then cached (in-process, Redis,
//!    both warmed by a first pass) with the shipped experiment running, and cached without
//!    it. `loadtest overhead` runs this scenario alone.
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
    if std::env::args().nth(1).as_deref() == Some("overhead") {
        let overhead = host_overhead(dir);
        println!("{}", serde_json::to_string_pretty(&overhead).unwrap());
        print_overhead(&overhead);
        return;
    }

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

    results.insert("cache".into(), host_overhead(dir));

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
    print_overhead(&r["cache"]);
    let updates = &r["updates_during_scenario_4"];
    println!(
        "\n/recommend p99 during updates / without: {ratio:.2}x; {} updates of >= 1,000 events ran, median {:.1} ms, p95 {:.1} ms (until every plugin serves the new version)",
        updates["count"],
        updates["median_ms"].as_f64().unwrap(),
        updates["p95_ms"].as_f64().unwrap()
    );
}

/// Scenario 5: what the host costs around a plugin call, each `/recommend` measure against
/// `GET /health` measured on the same server, alternating, twice each (requests/s are the
/// means; latencies from the second run) (the ceiling: routing and a
/// small JSON body from memory), so that a share is not moved by how busy the machine was
/// between two servers. On fresh servers over the demo data:
/// - uncached: cache off, no experiment, `popularity` (the cheapest model: the host's own cost),
///   and the default model (`hybrid`);
/// - cached, the shipped experiment running (every answer logs an exposure), in-process and
///   Redis; and cached with no experiment.
fn host_overhead(dir: &Path) -> Value {
    eprintln!("5/5 host overhead: /recommend against /health, uncached and cached");
    let mut cache = serde_json::Map::new();
    let no_experiments = dir.join("no-experiments");
    std::fs::create_dir_all(&no_experiments).unwrap();
    let no_experiment = format!(
        "experiments_dir = {:?}\n",
        no_experiments.display().to_string()
    );
    let redis = recohost_e2e::Redis::start();
    let redis_cache = format!(
        "[cache]\nbackend = \"redis\"\nredis_url = {:?}\n",
        redis.url()
    );
    let cache_off = "[cache]\nbackend = \"off\"\n";
    let popularity_lua = RECOMMEND_LUA.replace(
        r#""n_recommendations":10}"#,
        r#""n_recommendations":10,"model_type":"popularity"}"#,
    );
    assert_ne!(popularity_lua, RECOMMEND_LUA);
    for (name, config, script, warm) in [
        (
            "popularity_uncached_no_experiment",
            format!("{no_experiment}{cache_off}"),
            popularity_lua.as_str(),
            false,
        ),
        ("uncached", cache_off.to_string(), RECOMMEND_LUA, false),
        ("memory_cache", String::new(), RECOMMEND_LUA, true),
        ("redis_cache", redis_cache, RECOMMEND_LUA, true),
        (
            "memory_cache_no_experiment",
            no_experiment.clone(),
            RECOMMEND_LUA,
            true,
        ),
    ] {
        let server = start(dir, &format!("overhead-{name}"), &config);
        if warm {
            wrk(&server.base, script, 64, dir); // fills the cache
        }
        // Twice each, alternating: /health alone varies by a fifth between runs on this
        // machine, and the share is of the two means.
        let mut runs = Vec::new();
        // The server's CPU per request, microseconds: steadier than the shares, which move
        // with whatever else the machine runs (requests/s of `/health` alone vary by a fifth).
        let measured = |script: &str| {
            let before = server.cpu_seconds();
            let mut result = wrk(&server.base, script, 64, dir);
            let cpu = server.cpu_seconds() - before;
            let requests = result["requests"].as_f64().unwrap().max(1.0);
            result["server_cpu_us_per_request"] = json!(cpu * 1e6 / requests);
            result
        };
        for _ in 0..2 {
            let health = measured(HEALTH_LUA);
            let recommend = measured(script);
            assert_eq!(recommend["non_2xx"], 0, "{recommend}");
            runs.push((health, recommend));
        }
        // The mean of `field` over the runs of one route (`pick`: /health's or /recommend's).
        let mean = |field: &str, pick: fn(&(Value, Value)) -> &Value| {
            runs.iter()
                .map(|run| pick(run)[field].as_f64().unwrap())
                .sum::<f64>()
                / runs.len() as f64
        };
        let (health_rps, recommend_rps) = (
            mean("requests_per_second", |run| &run.0),
            mean("requests_per_second", |run| &run.1),
        );
        let share = recommend_rps / health_rps;
        let (health_cpu, recommend_cpu) = (
            mean("server_cpu_us_per_request", |run| &run.0),
            mean("server_cpu_us_per_request", |run| &run.1),
        );
        let (mut health, mut recommend) = runs.pop().unwrap();
        health["requests_per_second"] = json!(health_rps);
        recommend["requests_per_second"] = json!(recommend_rps);
        health["server_cpu_us_per_request"] = json!(health_cpu);
        recommend["server_cpu_us_per_request"] = json!(recommend_cpu);
        let stats = server.get("/health").1["cache"].clone();
        cache.insert(
            name.into(),
            json!({
                "health": health,
                "recommend": recommend,
                "share_of_health": share,
                // /health's CPU per request over /recommend's: the share of /health's
                // throughput the server's CPU alone would allow.
                "cpu_share_of_health": health_cpu / recommend_cpu,
                "cache": stats,
            }),
        );
    }
    drop(redis);
    Value::Object(cache)
}

fn print_overhead(c: &Value) {
    println!(
        "\n| scenario | /health requests/s | /recommend requests/s | share of /health | server CPU per request, /health / /recommend | CPU share | p50 | p99 |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (key, label) in [
        (
            "popularity_uncached_no_experiment",
            "popularity, cache off, no experiment",
        ),
        ("uncached", "default model, cache off, experiment running"),
        ("memory_cache", "in-process cache, experiment running"),
        ("redis_cache", "Redis cache, experiment running"),
        (
            "memory_cache_no_experiment",
            "in-process cache, no experiment",
        ),
    ] {
        let run = &c[key];
        println!(
            "| {label} | {:.0} | {:.0} | {:.0}% | {:.1} / {:.1} µs | {:.0}% | {:.2} ms | {:.2} ms |",
            run["health"]["requests_per_second"].as_f64().unwrap(),
            run["recommend"]["requests_per_second"].as_f64().unwrap(),
            100.0 * run["share_of_health"].as_f64().unwrap(),
            run["health"]["server_cpu_us_per_request"].as_f64().unwrap(),
            run["recommend"]["server_cpu_us_per_request"]
                .as_f64()
                .unwrap(),
            100.0 * run["cpu_share_of_health"].as_f64().unwrap(),
            run["recommend"]["p50_us"].as_f64().unwrap() / 1e3,
            run["recommend"]["p99_us"].as_f64().unwrap() / 1e3
        );
    }
}
