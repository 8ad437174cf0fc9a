//! How the server's costs grow with the data: the same measures on generated datasets of
//! several shapes (`recohost demo-data`), printed as one table with a growth factor.
//!
//!     cargo xtask scale            (shapes S and M)
//!     cargo xtask scale s m l      (L is MovieLens 25M's size: a long run)
//!
//! For each shape, on a fresh data directory, with the demo's plugins and settings
//! (`recohost.toml`), the cache off and no experiment:
//! - generate the dataset (ml-latest CSV), then `recohost import` it: time, events/s, the
//!   database's size;
//! - first start (every plugin trained inside its sandbox), then a restart from the
//!   snapshots: time until the server listens;
//! - host RSS idle; per plugin (`/plugins`): its training time and the training instance's
//!   peak memory (the events it is given included), one serving instance's memory, the
//!   snapshot's size;
//! - `/recommend` under wrk (random users of the whole shape, 64 connections), uncached: the
//!   default model, then each plugin on its own: p50, p99 and requests/s, and RSS under load;
//! - the restart with the in-process cache on: `/recommend` for 2,000 users, once to fill the
//!   cache and once measured;
//! - an update of 1,000 ratings: each plugin's time to learn them and serve the new model;
//! - quality: `recohost eval` on the shape's dataset, random 80/20 split, NDCG@10 of every
//!   plugin (popularity is the baseline) over at most 5,000 test users.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark driver: fail loudly

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use recohost_e2e::{Server, succeed};
use serde_json::{Value, json};

#[path = "wrk.rs"]
#[allow(dead_code)] // shared by the load test binaries; each uses part of it
mod wrk;

fn binary() -> String {
    std::env::var("RECOHOST_BIN").expect("RECOHOST_BIN: run it with `cargo xtask scale`")
}

/// The demo's configuration with this run's data directory, no demo data, no experiment and
/// the cache off. Plugin paths stay relative to the repository root (the working directory).
fn config(dir: &Path) -> String {
    let demo = std::fs::read_to_string("recohost.toml").expect("run from the repository root");
    let experiments = dir.join("no-experiments");
    std::fs::create_dir_all(&experiments).unwrap();
    let mut text = String::new();
    for line in demo.lines() {
        let key = line.split('=').next().unwrap_or("").trim();
        match key {
            "bind" | "data_dir" | "demo_data" | "experiments_dir" => {}
            _ => {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    // Plugin paths are relative to the config file's folder: make them absolute.
    let plugins = std::env::var("RECOHOST_PLUGINS_DIR").expect("RECOHOST_PLUGINS_DIR");
    let text = text.replace("\"dist/plugins/", &format!("\"{plugins}/"));
    format!(
        "bind = \"127.0.0.1:0\"\ndemo_data = false\nexperiments_dir = {:?}\n{text}\n[cache]\nbackend = \"off\"\n[http]\nmax_in_flight = 128\n",
        experiments.display().to_string()
    )
}

/// The standard output of `command`, which must succeed.
fn run(command: &mut Command) -> String {
    String::from_utf8_lossy(&succeed(command).stdout).into_owned()
}

fn directory_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|entry| {
            entry
                .file_name()
                .to_string_lossy()
                .starts_with("recohost.db")
        })
        .map(|entry| entry.metadata().unwrap().len())
        .sum()
}

/// The user count in `recohost demo-data`'s report ("wrote N items, U users and E events").
fn generated_users(report: &str) -> u64 {
    report
        .split_whitespace()
        .skip_while(|word| *word != "items,")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("the user count in demo-data's output")
}

/// Stores 1,000 ratings by users spread over the shape (items among the first 1,000) in one
/// batch, which fills the learning buffer (`update_buffer_size`, 1,000 by default) and starts
/// an update; returns that update's record: per plugin `duration_ms`, the `update` call
/// and the serving model's swap. A plugin whose update failed is reported (its `error` in
/// the record, a NaN in the table), not fatal: that is a finding of the run. Each outcome
/// gains `learner_bytes`: the linear memory of the instance that learned (it loaded the
/// serving snapshot, updated, saved the next one; memory only grows, so its peak), from
/// `/plugins`.
fn update_of_1000_events(server: &Server, users: u64) -> Value {
    let events: Vec<Value> = (0..1_000u64)
        .map(|i| {
            json!({"user_id": (1 + i * 7_919 % users).to_string(),
                   "item_id": (1 + i * 104_729 % 1_000).to_string(),
                   "event_type": "rate", "rating": 4.0})
        })
        .collect();
    let (status, answer) = server.post("/events/batch", &json!({ "events": events }));
    assert_eq!(status, 200, "{answer}");
    let update_id = answer["model_update"]["update_id"]
        .as_u64()
        .unwrap_or_else(|| panic!("1,000 events started no update: {answer}"));
    let mut run = server.wait_for_run(update_id, std::time::Duration::from_secs(600));
    for (plugin, outcome) in run["outcomes"].as_object_mut().unwrap() {
        if outcome["status"] != "updated" {
            eprintln!("{plugin}: its update of 1,000 events failed: {outcome}");
            outcome["duration_ms"] = Value::Null;
        }
    }
    let plugins = server.get("/plugins").1;
    for plugin in plugins["plugins"].as_array().unwrap() {
        let name = plugin["name"].as_str().unwrap();
        if let Some(outcome) = run["outcomes"].get_mut(name) {
            // A failed update drops its learner (0 bytes): no figure, as for its duration.
            outcome["learner_bytes"] = if outcome["status"] == "updated" {
                plugin["memory"]["learner_bytes"].clone()
            } else {
                Value::Null
            };
        }
    }
    run
}

/// Test users scored per shape by `recohost eval` (a sample at M and L: every user of L is
/// 162k lists per plugin).
const EVAL_USERS: usize = 5_000;

/// A wrk report whose every request was answered with 200: a figure of failures is no figure.
fn answered(report: Value) -> Value {
    assert_eq!(report["non_2xx"], 0, "requests failed: {report}");
    assert_eq!(report["socket_errors"], 0, "requests failed: {report}");
    report
}

fn measure(shape: &str, dir: &Path) -> Value {
    let data = dir.join(format!("dataset-{shape}"));
    let started = Instant::now();
    let generated = run(Command::new(binary())
        .args(["demo-data", "--shape", shape, "--out"])
        .arg(&data));
    let generate_s = started.elapsed().as_secs_f64();
    eprintln!("{shape}: {}", generated.trim());

    let data_dir = dir.join(format!("data-{shape}"));
    std::fs::create_dir_all(&data_dir).unwrap();
    let config_path = dir.join(format!("{shape}.toml"));
    std::fs::write(&config_path, config(dir)).unwrap();
    let started = Instant::now();
    let imported = run(Command::new(binary())
        .args(["import", "--format", "movielens"])
        .arg(&data)
        .arg("--config")
        .arg(&config_path)
        .arg("--data-dir")
        .arg(&data_dir));
    let import_s = started.elapsed().as_secs_f64();
    eprintln!("{shape}: {}", imported.lines().next().unwrap_or(""));
    let events: f64 = generated
        .split_whitespace()
        .skip_while(|word| *word != "and")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("the event count in demo-data's output");
    let database_bytes = directory_bytes(&data_dir);

    let config_text = std::fs::read_to_string(&config_path).unwrap();
    let started = Instant::now();
    let server = Server::start_in(&data_dir, &config_text).unwrap();
    let first_start_s = started.elapsed().as_secs_f64();
    let (rss_idle, _) = server.memory();
    let plugins = server.get("/plugins").1;
    let base = server.base.clone();
    // Users from the whole shape, not the demo's first 2,000 (a small hot set would flatter
    // the larger shapes).
    let users = generated_users(&generated);
    let script =
        wrk::RECOMMEND_LUA.replace("math.random(1, USERS)", &format!("math.random(1, {users})"));
    assert_ne!(script, wrk::RECOMMEND_LUA);
    let load = answered(wrk::wrk(&base, &script, 64, dir));
    let (rss_loaded, rss_peak) = server.memory();
    // Each plugin on its own, uncached.
    let mut per_plugin = Vec::new();
    for plugin in plugins["plugins"].as_array().unwrap() {
        let name = plugin["name"].as_str().unwrap();
        let one_plugin = script.replace(
            r#""n_recommendations":10}"#,
            &format!(r#""n_recommendations":10,"model_type":"{name}"}}"#),
        );
        assert_ne!(one_plugin, script);
        let load = answered(wrk::wrk(&base, &one_plugin, 64, dir));
        per_plugin.push(json!({
            "plugin": name,
            "largest_instance_bytes": plugin["memory"]["largest_instance_bytes"],
            "total_bytes": plugin["memory"]["total_bytes"],
            // Null when the model came from a snapshot (not on a fresh data directory).
            "train_s": plugin["last_training"]["train_ms"].as_f64().map(|ms| ms / 1e3),
            "training_peak_bytes": plugin["last_training"]["peak_memory_bytes"],
            "snapshot_bytes": plugin["last_training"]["snapshot_bytes"],
            "recommend": load,
        }));
    }
    drop(server);
    // The restart, from the snapshots, with the in-process cache: then `/recommend` for the
    // demo's 2,000 users, once to fill the cache and once measured.
    let cached_config = config_text.replace("backend = \"off\"", "backend = \"memory\"");
    assert_ne!(cached_config, config_text);
    let started = Instant::now();
    let server = Server::start_in(&data_dir, &cached_config).unwrap();
    let restart_s = started.elapsed().as_secs_f64();
    let (rss_restarted, _) = server.memory();
    wrk::wrk(&server.base, wrk::RECOMMEND_LUA, 64, dir);
    let cached = answered(wrk::wrk(&server.base, wrk::RECOMMEND_LUA, 64, dir));
    // Last on this server: what the update leaves behind (snapshots, a learner) must not
    // weigh on the figures above.
    let update = update_of_1000_events(&server, users);
    drop(server);
    // Quality on the shape's own held-out split, every plugin against popularity.
    let started = Instant::now();
    let quality: Value = serde_json::from_str(&run(Command::new(binary())
        .args(["eval", "--split", "random", "--seed", "42", "--json"])
        .args(["--max-users", &EVAL_USERS.to_string(), "--dataset"])
        .arg(&data)
        .arg("--config")
        .arg(&config_path)))
    .expect("eval --json prints JSON");
    let eval_s = started.elapsed().as_secs_f64();
    json!({
        "shape": shape,
        "events": events,
        "generate_s": generate_s,
        "import_s": import_s,
        "import_events_per_s": events / import_s,
        "database_bytes": database_bytes,
        "first_start_s": first_start_s,
        "restart_s": restart_s,
        "rss_idle_bytes": rss_idle,
        "rss_under_load_bytes": rss_loaded,
        "rss_peak_bytes": rss_peak,
        "rss_after_restart_bytes": rss_restarted,
        "plugins": per_plugin,
        "recommend_uncached": load,
        "recommend_cached": cached,
        "update": update,
        "quality": quality,
        "eval_s": eval_s,
    })
}

fn main() {
    let mut shapes: Vec<String> = std::env::args().skip(1).collect();
    if shapes.is_empty() {
        shapes = vec!["s".into(), "m".into()];
    }
    let temp = tempfile::tempdir().unwrap();
    let results: Vec<Value> = shapes.iter().map(|s| measure(s, temp.path())).collect();
    println!("{}", serde_json::to_string_pretty(&results).unwrap());
    print_table(&results);
}

fn print_table(results: &[Value]) {
    const MIB: f64 = 1.0 / (1024.0 * 1024.0);
    // (label, JSON pointer into each shape's results, unit factor).
    let mut rows: Vec<(String, String, f64)> = [
        ("events", "/events", 1.0),
        ("import time (s)", "/import_s", 1.0),
        ("import (events/s)", "/import_events_per_s", 1.0),
        ("database (MiB)", "/database_bytes", MIB),
        (
            "first start, training every plugin (s)",
            "/first_start_s",
            1.0,
        ),
        ("restart from snapshots (s)", "/restart_s", 1.0),
        ("host RSS idle (MiB)", "/rss_idle_bytes", MIB),
        ("host RSS under load (MiB)", "/rss_under_load_bytes", MIB),
        (
            "/recommend uncached p50 (ms)",
            "/recommend_uncached/p50_us",
            1e-3,
        ),
        (
            "/recommend uncached p99 (ms)",
            "/recommend_uncached/p99_us",
            1e-3,
        ),
        (
            "/recommend uncached (requests/s)",
            "/recommend_uncached/requests_per_second",
            1.0,
        ),
        (
            "/recommend cached p50 (ms)",
            "/recommend_cached/p50_us",
            1e-3,
        ),
        (
            "/recommend cached p99 (ms)",
            "/recommend_cached/p99_us",
            1e-3,
        ),
        (
            "/recommend cached (requests/s)",
            "/recommend_cached/requests_per_second",
            1.0,
        ),
        (
            "host RSS after the restart (MiB)",
            "/rss_after_restart_bytes",
            MIB,
        ),
    ]
    .into_iter()
    .map(|(label, pointer, unit)| (label.to_string(), pointer.to_string(), unit))
    .collect();
    // `/plugins` lists plugins by name, so index `i` is the same plugin in every shape.
    for (index, plugin) in results[0]["plugins"].as_array().unwrap().iter().enumerate() {
        let name = plugin["plugin"].as_str().unwrap();
        for (label, pointer, unit) in [
            ("training in the sandbox (s)", "train_s", 1.0),
            (
                "training instance's peak memory (MiB)",
                "training_peak_bytes",
                MIB,
            ),
            ("one serving instance (MiB)", "largest_instance_bytes", MIB),
            ("snapshot (MiB)", "snapshot_bytes", MIB),
            ("/recommend uncached p50 (ms)", "recommend/p50_us", 1e-3),
            ("/recommend uncached p99 (ms)", "recommend/p99_us", 1e-3),
        ] {
            rows.push((
                format!("{name}: {label}"),
                format!("/plugins/{index}/{pointer}"),
                unit,
            ));
        }
        rows.push((
            format!("{name}: update of 1,000 events (ms)"),
            format!("/update/outcomes/{name}/duration_ms"),
            1.0,
        ));
        rows.push((
            format!("{name}: the learning instance's peak memory (MiB)"),
            format!("/update/outcomes/{name}/learner_bytes"),
            MIB,
        ));
        rows.push((
            format!("{name}: NDCG@10, random 80/20 split"),
            format!("/quality/{name}/ndcg@10"),
            1.0,
        ));
    }
    let names: Vec<String> = results
        .iter()
        .map(|r| r["shape"].as_str().unwrap().to_uppercase())
        .collect();
    println!(
        "\n| measure | {} | growth {}→{} |",
        names.join(" | "),
        names[0],
        names[names.len() - 1]
    );
    println!("|---|{}---|", "---|".repeat(names.len()));
    for (label, pointer, unit) in &rows {
        let values: Vec<f64> = results
            .iter()
            // A missing figure (a null training) shows as NaN rather than stopping the table.
            .map(|r| {
                r.pointer(pointer)
                    .and_then(Value::as_f64)
                    .unwrap_or(f64::NAN)
                    * unit
            })
            .collect();
        let precision = if label.contains("NDCG") { 4 } else { 1 };
        let cells: Vec<String> = values.iter().map(|v| format!("{v:.precision$}")).collect();
        let growth = values[values.len() - 1] / values[0];
        println!("| {label} | {} | {growth:.2}x |", cells.join(" | "));
    }
}
