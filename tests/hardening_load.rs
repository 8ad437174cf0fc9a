//! Load tests of the hardening: a hostile plugin must not hurt the others, and twice the
//! saturation rate must be shed, not collapse the server.
//!
//!     cargo xtask loadtest hardening     (needs `wrk`: apt-get install wrk)
//!
//! 1. **Hostile plugins.** `/recommend` over the four bundled ranking plugins (cache off, so
//!    every request runs a plugin), alone, then while four clients keep asking a hostile
//!    plugin (20 requests/s each): one that loops until its time budget traps it, one that
//!    sleeps inside the host, one that grows a table without bound, one that asks for 32 MiB
//!    of random bytes, one that refuses with a 100 MB message, one that answers 4,000,000
//!    items. Reported for each: the others' p99 while it misbehaves / alone (the mean of a
//!    run before and a run after), and how far the server's peak RSS rose above its RSS
//!    before (the hostile plugin may hold `memory_mb` in each of its two serving instances). The looping plugin runs twice: with the default circuit breaker, and with the
//!    breaker off and one serving instance (what the sandbox alone guarantees).
//! 2. **Twice saturation.** The saturation rate is the closed-loop throughput of uncached
//!    `/recommend` (64 connections). Then 1,024 connections, each pausing between requests
//!    so that together they offer about twice that rate, with the default `[http]` limits
//!    (the achieved offered rate is reported: wrk shares the 2 cores and waits for answers);
//!    then the same offered load with the in-flight limit off, for contrast; then the
//!    baseline again on the limited server (recovery).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark driver: fail loudly

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use recohost_e2e::{Server, config_text, fixture};
use serde_json::{Value, json};

#[path = "wrk.rs"]
#[allow(dead_code)] // shared by the load test binaries; each uses part of it
mod wrk;
use wrk::{COUNT_STATUSES_LUA, RECOMMEND_LUA, wrk};

const OTHERS_LUA: &str = r#"
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local models = {"popularity", "collaborative", "content", "hybrid"}
request = function()
  local body = string.format('{"user_id":%d,"n_recommendations":10,"model_type":"%s"}',
    math.random(1, USERS), models[math.random(1, 4)])
  return wrk.format(nil, "/recommend", nil, body)
end
"#;

/// A hostile plugin: its component, config and limits, and the list length that makes it
/// misbehave.
struct Hostile {
    name: &'static str,
    component: PathBuf,
    config: &'static str,
    limits: &'static str,
    count: u32,
}

fn hostiles() -> Vec<Hostile> {
    let misbehaving = |name, count, limits| Hostile {
        name,
        component: fixture("misbehaving"),
        config: "",
        limits,
        count,
    };
    vec![
        misbehaving("loops", 17, ""),
        misbehaving(
            "loops, breaker off, 1 instance",
            17,
            "failures_before_unhealthy = 1000000\nserving_instances = 1\n",
        ),
        misbehaving("sleeps in the host", 41, ""),
        Hostile {
            name: "grows a table",
            component: recohost_e2e::table_grower(),
            config: "",
            limits: "memory_mb = 64\n",
            count: 5,
        },
        misbehaving("asks 32 MiB of random bytes", 43, ""),
        misbehaving("refuses with 100 MB of text", 47, "memory_mb = 256\n"),
        misbehaving("answers 4,000,000 items", 49, "memory_mb = 256\n"),
    ]
}

/// A server over demo data with the cache off, no experiment, `top_level` settings, and the
/// `hostile` plugin as `looper` (default limits but for its own).
fn start(dir: &Path, name: &str, top_level: &str, hostile: Option<&Hostile>) -> Server {
    let experiments = dir.join("no-experiments");
    std::fs::create_dir_all(&experiments).unwrap();
    let mut config = config_text(&format!(
        "experiments_dir = {:?}\n{top_level}\n[cache]\nbackend = \"off\"\n",
        experiments.display().to_string()
    ));
    if let Some(hostile) = hostile {
        config.push_str(&format!(
            "\n[[plugins]]\nname = \"looper\"\npath = {:?}\n[plugins.config]\n{}\n[plugins.limits]\n{}",
            hostile.component.display().to_string(),
            hostile.config,
            hostile.limits
        ));
    }
    Server::start_in(&dir.join(name), &config).unwrap()
}

fn p99(report: &Value) -> f64 {
    report["p99_us"].as_f64().unwrap()
}

fn hostile_isolation(dir: &Path) -> Value {
    let mut runs = Vec::new();
    // `HARDENING_ONLY=sleeps` runs only the hostile plugins whose name contains it (and
    // skips the saturation part).
    let only = std::env::var("HARDENING_ONLY").ok();
    for (index, hostile) in hostiles().into_iter().enumerate() {
        if only
            .as_ref()
            .is_some_and(|only| !hostile.name.contains(only.as_str()))
        {
            continue;
        }
        eprintln!(
            "hostile plugin ({}): the others alone, then while it misbehaves",
            hostile.name
        );
        let server = start(dir, &format!("hostile-{index}"), "", Some(&hostile));
        let alone = wrk(&server.base, OTHERS_LUA, 16, dir);
        assert_eq!(alone["non_2xx"], 0, "{alone}");
        let (rss_before, _) = server.memory();
        server.reset_peak_memory();
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..4)
            .map(|_| {
                let (base, stop, count) = (server.base.clone(), stop.clone(), hostile.count);
                std::thread::spawn(move || {
                    let client = reqwest::blocking::Client::new();
                    let body =
                        json!({"user_id": 5, "n_recommendations": count, "model_type": "looper"});
                    let mut asked = 0u64;
                    // 20 requests/s each: a steady share of traffic for the hostile plugin.
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(50));
                        let status = client
                            .post(format!("{base}/recommend"))
                            .json(&body)
                            .send()
                            .unwrap()
                            .status();
                        assert_eq!(status.as_u16(), 503);
                        asked += 1;
                    }
                    asked
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(1_500));
        let hostile_run = wrk(&server.base, OTHERS_LUA, 16, dir);
        stop.store(true, Ordering::Relaxed);
        let asked: u64 = clients.into_iter().map(|c| c.join().unwrap()).sum();
        let (_, rss_peak) = server.memory();
        assert_eq!(hostile_run["non_2xx"], 0, "{hostile_run}");
        // The baseline again, once the hostile plugin is left alone: the ratio is against
        // the mean of the runs before and after, so that a drift of the machine over the
        // half minute (other processes, the page cache) does not pass for the plugin's doing.
        let alone_after = wrk(&server.base, OTHERS_LUA, 16, dir);
        assert_eq!(alone_after["non_2xx"], 0, "{alone_after}");
        let baseline_p99 = (p99(&alone) + p99(&alone_after)) / 2.0;
        let looper = server.plugin_status("looper").unwrap();
        runs.push(json!({
            "plugin": hostile.name,
            "alone": alone,
            "alone_after": alone_after,
            "baseline_p99_us": baseline_p99,
            "while_hostile": hostile_run,
            "p99_ratio": p99(&hostile_run) / baseline_p99,
            "rss_before_mib": rss_before >> 20,
            "rss_peak_over_before_mib": rss_peak.saturating_sub(rss_before) >> 20,
            "memory_mb": looper["limits"]["memory_mb"],
            "hostile_requests": asked,
            "hostile_calls": looper["calls"],
            "hostile_failures": looper["failures"],
            "hostile_skipped": looper["skipped"],
        }));
    }
    Value::Array(runs)
}

/// `COUNT_STATUSES_LUA` + `RECOMMEND_LUA` with each connection pausing `delay_ms` between
/// requests.
fn paced(delay_ms: f64) -> String {
    format!("{COUNT_STATUSES_LUA}\nfunction delay() return {delay_ms:.0} end\n{RECOMMEND_LUA}")
}

fn twice_saturation(dir: &Path) -> Value {
    eprintln!("saturation: uncached /recommend, 64 connections");
    let server = start(dir, "saturation", "", None);
    let saturation = wrk(&server.base, RECOMMEND_LUA, 64, dir);
    assert_eq!(saturation["non_2xx"], 0, "{saturation}");
    let rate = saturation["requests_per_second"].as_f64().unwrap();
    // 1,024 connections offering 2 x rate together: a connection sends one request per
    // 1024 / (2 rate) seconds, pausing that long minus about 10 ms for the answer. (Each
    // waits for its answer, so a server that slows down is offered less: see the report.)
    let connections = 1_024;
    let delay_ms = (1_000.0 * f64::from(connections) / (2.0 * rate) - 10.0).max(1.0);
    eprintln!(
        "twice saturation: {connections} connections, {delay_ms:.0} ms apart each (default [http] limits)"
    );
    let limited = wrk(&server.base, &paced(delay_ms), connections, dir);
    assert_eq!(limited["socket_errors"], 0, "{limited}");
    assert_eq!(limited["status_other"], 0, "{limited}");
    assert_eq!(
        limited["status_503"], limited["status_503_retry_after"],
        "every 503 carries Retry-After: {limited}"
    );
    let (_, _, metrics) = server.get_text("/metrics");
    let shed_metric = metrics
        .lines()
        .find_map(|l| l.strip_prefix("recohost_http_shed_total "))
        .map(str::to_string);
    eprintln!("recovery: the baseline again");
    let after = wrk(&server.base, RECOMMEND_LUA, 64, dir);
    assert_eq!(after["non_2xx"], 0, "{after}");
    assert_eq!(server.get("/health").0, 200);
    drop(server);

    eprintln!("the same offered load with the in-flight limit off");
    let server = start(
        dir,
        "unlimited",
        "[http]\nmax_in_flight = 1000000\nrequest_timeout_ms = 60000\n",
        None,
    );
    let unlimited = wrk(&server.base, &paced(delay_ms), connections, dir);
    drop(server);

    let offered = |r: &Value| r["requests_per_second"].as_f64().unwrap() / rate;
    json!({
        "saturation": saturation,
        "twice_saturation_limited": limited,
        "offered_over_saturation_limited": offered(&limited),
        "served_per_second_limited": limited["status_200"].as_f64().unwrap() / (limited["duration_us"].as_f64().unwrap() / 1e6),
        "shed_total_metric": shed_metric,
        "after": after,
        "throughput_after_over_before": after["requests_per_second"].as_f64().unwrap() / rate,
        "p99_after_over_before": p99(&after) / p99(&saturation),
        "twice_saturation_unlimited": unlimited,
        "offered_over_saturation_unlimited": offered(&unlimited),
    })
}

fn main() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    let hostile = hostile_isolation(dir);
    let saturation = if std::env::var("HARDENING_ONLY").is_ok() {
        Value::Null
    } else {
        twice_saturation(dir)
    };
    let report = json!({
        "hostile_isolation": hostile,
        "twice_saturation": saturation,
    });
    println!("{}", serde_json::to_string_pretty(&report).unwrap());

    println!(
        "\n| hostile plugin | others' p99 alone (before and after) | while it misbehaves | ratio | peak RSS over before (its memory_mb, 2 instances) | its calls / requests |"
    );
    println!("|---|---|---|---|---|---|");
    for run in report["hostile_isolation"].as_array().unwrap() {
        println!(
            "| {} | {:.2} ms | {:.2} ms | {:.2}x | {} MiB ({} MiB) | {} / {} |",
            run["plugin"].as_str().unwrap(),
            run["baseline_p99_us"].as_f64().unwrap() / 1e3,
            p99(&run["while_hostile"]) / 1e3,
            run["p99_ratio"].as_f64().unwrap(),
            run["rss_peak_over_before_mib"],
            run["memory_mb"],
            run["hostile_calls"],
            run["hostile_requests"],
        );
    }
    let t = &report["twice_saturation"];
    if t.is_null() {
        return;
    }
    let row = |label: &str, r: &Value| {
        let seconds = r["duration_us"].as_f64().unwrap() / 1e6;
        let per_second = |key: &str| r[key].as_f64().map(|v| v / seconds).unwrap_or(0.0);
        println!(
            "| {label} | {:.0} | {:.0} | {:.0} | {:.2} ms | {:.2} ms | {} |",
            r["requests_per_second"].as_f64().unwrap(),
            per_second("status_200").max(if r["status_200"] == -1 {
                r["requests_per_second"].as_f64().unwrap()
            } else {
                0.0
            }),
            per_second("status_503"),
            r["p50_us"].as_f64().unwrap() / 1e3,
            r["p99_us"].as_f64().unwrap() / 1e3,
            r["socket_errors"],
        );
    };
    println!(
        "\n| /recommend, cache off | offered req/s | 200/s | 503/s | p50 | p99 | socket errors |"
    );
    println!("|---|---|---|---|---|---|---|");
    row("saturation (64 connections, closed loop)", &t["saturation"]);
    row(
        "2x saturation, default limits",
        &t["twice_saturation_limited"],
    );
    row(
        "2x saturation, in-flight limit off",
        &t["twice_saturation_unlimited"],
    );
    row("baseline again after the overload", &t["after"]);
    println!(
        "\noffered / saturation: {:.2}x (limited), {:.2}x (unlimited); after / before: throughput {:.2}x, p99 {:.2}x",
        t["offered_over_saturation_limited"].as_f64().unwrap(),
        t["offered_over_saturation_unlimited"].as_f64().unwrap(),
        t["throughput_after_over_before"].as_f64().unwrap(),
        t["p99_after_over_before"].as_f64().unwrap(),
    );
}
