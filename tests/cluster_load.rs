//! A three-node cluster on one PostgreSQL, against one node on SQLite, same machine, same run:
//!
//!     cargo xtask loadtest cluster      (needs wrk and Debian's postgresql)
//!
//! 1. `POST /recommend` (cache off: every request reaches a plugin), 64 connections: to one
//!    SQLite node (the baseline), to one PostgreSQL node with its users in Redis, then spread
//!    over three such nodes (three wrk at once, 22 connections each), with their total
//!    throughput and worst p99. Every node is asked once for every user first.
//! 2. Failover: from `kill -9` of the learner to the first new model version served by a
//!    surviving node, while a client posts events all along, ten times (a fresh node
//!    replaces the killed one after each run). Default `lease_secs` (10),
//!    `update_buffer_size = 200`: the learner updates every plugin a few times a second, so
//!    the time measured is the election plus the new learner's first update and its
//!    publication.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark driver: fail loudly

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use recohost_e2e::{Redis, Server, TestPostgres, config_text};
use serde_json::{Value, json};

#[path = "wrk.rs"]
#[allow(dead_code)] // shared by the load test binaries; each uses part of it
mod wrk;
use wrk::{DURATION, RECOMMEND_LUA, USERS, wrk};

const RUNS: usize = 10;
const PLUGIN: &str = "popularity";

fn start(dir: &std::path::Path, url: &str, node: usize) -> Server {
    let config = config_text(&format!(
        "database_url = {url:?}\n[cluster]\nnode_id = \"node-{node}\"\n\
         [learning]\nupdate_buffer_size = 200\nupdate_interval_secs = 1\n"
    ));
    Server::start_in(&dir.join(format!("node-{node}")), &config).unwrap()
}

fn served_version(server: &Server) -> Option<u64> {
    server.plugin_status(PLUGIN)?["model_version"].as_u64()
}

fn is_learner(server: &Server) -> bool {
    server.get("/health").1["node"]["learner"] == true
}

/// Asks `server` once for every demo user, so that the measured run sees a warm node (every
/// setup alike: a cluster node's first request for a user reads them from the database).
fn warm(server: &Server) {
    for user in 1..=USERS {
        let (status, body) = server.post(
            "/recommend",
            &json!({"user_id": user, "n_recommendations": 10}),
        );
        assert_eq!(status, 200, "{body}");
    }
}

/// `POST /recommend` against one SQLite node, then spread over three PostgreSQL nodes.
fn recommend_spread(dir: &std::path::Path, postgres: &TestPostgres) -> Value {
    let cache_off = "[cache]\nbackend = \"off\"\n[http]\nmax_in_flight = 128\n";
    eprintln!("1/2 POST /recommend: one SQLite node, 64 connections, {DURATION}");
    let single = Server::start_in(&dir.join("single"), &config_text(cache_off)).unwrap();
    warm(&single);
    let baseline = wrk(&single.base, RECOMMEND_LUA, 64, dir);
    assert_eq!(baseline["non_2xx"], 0, "{baseline}");
    drop(single);
    // One cluster node alone, same load: the cost of reading users from the shared feature
    // store (Redis, with the node's cache of recent users) instead of from memory.
    let redis = Redis::start();
    let url = postgres.create_database();
    let node_config = |name: &str| {
        config_text(&format!(
            "database_url = {url:?}\n[cluster]\nnode_id = {name:?}\n\
             [cache]\nbackend = \"off\"\nredis_url = {:?}\n[http]\nmax_in_flight = 128\n",
            redis.url()
        ))
    };
    eprintln!(
        "1/2 POST /recommend: one PostgreSQL node (users in Redis), 64 connections, {DURATION}"
    );
    let lone = Server::start_in(&dir.join("lone"), &node_config("lone")).unwrap();
    warm(&lone);
    let one_node = wrk(&lone.base, RECOMMEND_LUA, 64, dir);
    assert_eq!(one_node["non_2xx"], 0, "{one_node}");
    let features = lone.get("/health").1["features"].clone();
    drop(lone);
    eprintln!("1/2 POST /recommend: three PostgreSQL nodes, 3 x 22 connections, {DURATION}");
    let nodes: Vec<Server> = (0..3)
        .map(|node| {
            Server::start_in(
                &dir.join(format!("spread-{node}")),
                &node_config(&format!("spread-{node}")),
            )
            .unwrap()
        })
        .collect();
    for node in &nodes {
        warm(node);
    }
    let runs: Vec<Value> = std::thread::scope(|scope| {
        let handles: Vec<_> = nodes
            .iter()
            .enumerate()
            .map(|(i, node)| {
                let own = dir.join(format!("wrk-{i}"));
                std::fs::create_dir_all(&own).unwrap();
                scope.spawn(move || wrk(&node.base, RECOMMEND_LUA, 22, &own))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for run in &runs {
        assert_eq!(run["non_2xx"], 0, "{run}");
    }
    let total: f64 = runs
        .iter()
        .map(|r| r["requests_per_second"].as_f64().unwrap())
        .sum();
    let worst_p99 = runs
        .iter()
        .map(|r| r["p99_us"].as_f64().unwrap())
        .fold(0.0, f64::max);
    let single_rps = baseline["requests_per_second"].as_f64().unwrap();
    let single_p99 = baseline["p99_us"].as_f64().unwrap();
    println!(
        "\n/recommend, cache off: one SQLite node {single_rps:.0} req/s, p99 {:.1} ms; three PostgreSQL nodes {total:.0} req/s ({:.2}x), worst p99 {:.1} ms ({:.2}x)",
        single_p99 / 1e3,
        total / single_rps,
        worst_p99 / 1e3,
        worst_p99 / single_p99
    );
    let lone_rps = one_node["requests_per_second"].as_f64().unwrap();
    let lone_p99 = one_node["p99_us"].as_f64().unwrap();
    println!(
        "/recommend, cache off: one PostgreSQL node with users in Redis {lone_rps:.0} req/s ({:.2}x), p99 {:.1} ms ({:.2}x); its feature reads: {features}",
        lone_rps / single_rps,
        lone_p99 / 1e3,
        lone_p99 / single_p99
    );
    json!({"single": baseline, "one_cluster_node": one_node, "three_nodes": runs, "throughput_ratio": total / single_rps, "p99_ratio": worst_p99 / single_p99, "one_node_p99_ratio": lone_p99 / single_p99})
}

fn main() {
    let temp = tempfile::tempdir().unwrap();
    let postgres = TestPostgres::start();
    let spread = recommend_spread(temp.path(), &postgres);
    eprintln!("2/2 failover, {RUNS} runs");
    let url = postgres.create_database();
    let mut started = 0;
    let mut nodes: Vec<Server> = (0..3)
        .map(|_| {
            started += 1;
            start(temp.path(), &url, started)
        })
        .collect();
    let bases = Arc::new(Mutex::new(
        nodes.iter().map(|n| n.base.clone()).collect::<Vec<_>>(),
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = {
        let (bases, stop) = (bases.clone(), stop.clone());
        std::thread::spawn(move || {
            let http = reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let events: Vec<Value> = (0..50)
                    .map(|i| {
                        n = n.wrapping_add(7919);
                        json!({"user_id": 1 + (n + i) % 2000, "item_id": 1 + (n * 31 + i) % 1200, "event_type": "click"})
                    })
                    .collect();
                let targets = bases.lock().unwrap().clone();
                let base = &targets[n as usize % targets.len()];
                let _ = http
                    .post(format!("{base}/events/batch"))
                    .json(&json!({ "events": events }))
                    .send();
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };

    let mut times = Vec::new();
    for run in 1..=RUNS {
        let deadline = Instant::now() + Duration::from_secs(30);
        let learner = loop {
            if let Some(i) = nodes.iter().position(is_learner) {
                break i;
            }
            assert!(Instant::now() < deadline, "no learner");
            std::thread::sleep(Duration::from_millis(100));
        };
        // Let the learner publish a version or two first.
        std::thread::sleep(Duration::from_secs(2));
        let before = nodes.iter().filter_map(served_version).max().unwrap();
        let killed = nodes.remove(learner);
        bases.lock().unwrap().retain(|base| *base != killed.base);
        killed.kill();
        let killed_at = Instant::now();
        let elapsed = loop {
            if nodes
                .iter()
                .filter_map(served_version)
                .any(|version| version > before)
            {
                break killed_at.elapsed();
            }
            assert!(
                killed_at.elapsed() < Duration::from_secs(60),
                "no new version within a minute"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        eprintln!("run {run}: {} ms", elapsed.as_millis());
        times.push(elapsed.as_secs_f64() * 1e3);
        started += 1;
        let replacement = start(temp.path(), &url, started);
        bases.lock().unwrap().push(replacement.base.clone());
        nodes.push(replacement);
    }
    stop.store(true, Ordering::Relaxed);
    feeder.join().unwrap();
    times.sort_by(f64::total_cmp);
    let median = (times[RUNS / 2 - 1] + times[RUNS / 2]) / 2.0;
    println!(
        "{}",
        json!({"recommend": spread, "failover": {"runs": RUNS, "lease_secs": 10, "failover_ms": times, "median_ms": median, "max_ms": times[RUNS - 1]}})
    );
    println!(
        "\nfailover (kill -9 of the learner -> a new {PLUGIN} version served), {RUNS} runs: median {:.0} ms, max {:.0} ms (lease 10 s)",
        median,
        times[RUNS - 1]
    );
}
