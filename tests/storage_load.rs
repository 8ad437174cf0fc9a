//! Durable event ingestion on each storage engine, measured in the same run with the same
//! client (wrk), so the ratio is the engines' and not the machine's:
//!
//!     cargo xtask loadtest storage      (needs wrk and Debian's postgresql)
//!
//! For SQLite (a file in a fresh data directory) and PostgreSQL (a server started here from
//! Debian's package, default settings: `synchronous_commit = on`, `fsync = on`):
//! 1. `POST /events`, one event per request, 64 connections.
//! 2. `POST /events/batch`, 1,000 events per request, 8 connections.
//!
//! Every event is acknowledged only after its COMMIT; learning stays on (default triggers).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark driver: fail loudly

use recohost_e2e::{Server, TestPostgres, config_text};
use serde_json::{Value, json};

#[path = "wrk.rs"]
#[allow(dead_code)] // shared by the load test binaries; each uses part of it
mod wrk;
use wrk::{BATCH_LUA, DURATION, EVENTS_LUA, wrk};

fn main() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    let postgres = TestPostgres::start();
    let mut results = serde_json::Map::new();
    for engine in ["sqlite", "postgres"] {
        for (scenario, script, connections) in [("events", EVENTS_LUA, 64), ("batch", BATCH_LUA, 8)]
        {
            eprintln!("{engine}: {scenario} ({connections} connections, {DURATION})");
            let top_level = match engine {
                "postgres" => format!("database_url = {:?}\n", postgres.create_database()),
                _ => String::new(),
            };
            let server = Server::start_in(
                &dir.join(format!("{engine}-{scenario}")),
                &config_text(&top_level),
            )
            .unwrap();
            let before = server.get("/health").1["events"].as_u64().unwrap();
            let mut figures = wrk(&server.base, script, connections, dir);
            assert_eq!(figures["non_2xx"], 0, "{figures}");
            let stored = server.get("/health").1["events"].as_u64().unwrap() - before;
            let per_request = if scenario == "batch" { 1000.0 } else { 1.0 };
            figures["events_per_second"] =
                json!(figures["requests_per_second"].as_f64().unwrap() * per_request);
            figures["events_stored"] = json!(stored);
            results.insert(format!("{engine}_{scenario}"), figures);
        }
    }
    let report = Value::Object(results);
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    println!(
        "\n| scenario | SQLite events/s | PostgreSQL events/s | PostgreSQL / SQLite | p99 SQLite | p99 PostgreSQL |"
    );
    println!("|---|---|---|---|---|---|");
    for scenario in ["events", "batch"] {
        let (s, p) = (
            &report[format!("sqlite_{scenario}")],
            &report[format!("postgres_{scenario}")],
        );
        let rate = |r: &Value| r["events_per_second"].as_f64().unwrap();
        let p99 = |r: &Value| r["p99_us"].as_f64().unwrap() / 1e3;
        println!(
            "| {scenario} | {:.0} | {:.0} | {:.2}x | {:.1} ms | {:.1} ms |",
            rate(s),
            rate(p),
            rate(p) / rate(s),
            p99(s),
            p99(p)
        );
    }
}
