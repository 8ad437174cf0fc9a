//! What a node holds per user at a million users, with and without the shared feature
//! store, and what Redis holds for them; then what one feature read costs from memory, from
//! Redis and from PostgreSQL-less fallback. Needs `redis-server` on PATH.
//!
//!     cargo bench -p recohost --bench feature_memory [-- USERS EVENTS_PER_USER]
//!
//! Defaults: 1,000,000 users with 20 events each (20M events, the size of MovieLens 25M).
//! Memory is the process's resident set before and after building the user records (Linux
//! `/proc/self/statm`), so it counts allocator overhead too.

use std::process::{Command, Stdio};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use recohost::catalog::Users;
use recohost::config::CacheConfig;
use recohost::features::{Features, SharedFeatures};
use recohost::histories::HistoriesBuilder;
use recohost::store::{EventKind, EventRow, Store};

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("resident pages");
    pages * 4096
}

/// The `k`-th event of `user` (ids grow with `k` then user, as a log would have them).
fn event(user: u32, k: u32, users: u32) -> EventRow {
    EventRow {
        id: i64::from(k) * i64::from(users) + i64::from(user) + 1,
        user,
        item: (user.wrapping_mul(2_654_435_761).wrapping_add(k * 7_919)) % 60_000,
        kind: EventKind::Rate,
        value: 4.0,
        timestamp: 1_700_000_000 + u64::from(k),
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn main() {
    let args: Vec<u32> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let users = args.first().copied().unwrap_or(1_000_000);
    let per_user = args.get(1).copied().unwrap_or(20);
    let ids = || (0..users).map(|u| format!("user-{u}")).collect::<Vec<_>>();
    if std::env::var_os("FEATURE_MEMORY_RECORDS").is_none() {
        println!("{users} users x {per_user} events");
    }

    // A node's user records: the registry, counts and newest ids, with or without histories,
    // each built in a process of its own (freed memory is not given back to the system, so
    // a second measurement in the same process would reuse the first one's pages).
    if let Some(mode) = std::env::var_os("FEATURE_MEMORY_RECORDS") {
        let keep = mode == "histories";
        let before = resident_bytes();
        // As a node starts: every event read in time order (users interleaved), the single
        // node's histories built from them (`HistoriesBuilder`) and kept.
        let mut records = Users::without_histories(ids());
        let mut histories = keep.then(|| HistoriesBuilder::new(records.len()));
        for k in 0..per_user {
            for user in 0..users {
                let event = event(user, k, users);
                records.record(&event);
                if let Some(histories) = &mut histories {
                    histories.push(&event);
                }
            }
        }
        if let Some(histories) = histories {
            records.keep_histories(histories.build());
        }
        let grown = resident_bytes().saturating_sub(before);
        println!(
            "{:.0} MiB resident, {:.0} bytes a user",
            mib(grown),
            grown as f64 / f64::from(users)
        );
        return;
    }
    for (mode, env) in [
        ("single node (histories in memory)", "histories"),
        ("cluster node (no histories)", "none"),
    ] {
        let output = Command::new(std::env::current_exe().expect("this bench"))
            .args([users.to_string(), per_user.to_string()])
            .env("FEATURE_MEMORY_RECORDS", env)
            .output()
            .expect("a measuring process");
        print!("{mode}: {}", String::from_utf8_lossy(&output.stdout));
    }

    // Redis holding every user (what the cluster's nodes write after each commit).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut redis = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server on PATH");
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let temp = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(Store::open(&temp.path().join("db")).expect("store"));
    let records = Arc::new(RwLock::new(Users::without_histories(ids())));
    let cache = CacheConfig {
        redis_url: format!("redis://127.0.0.1:{port}"),
        timeout_ms: 5_000,
        ..CacheConfig::default()
    };
    let shared = Arc::new(
        SharedFeatures::new(&cache, "bench", records.clone(), store, 60_000, 500)
            .expect("feature store"),
    );
    let features = Features::Shared(shared);
    let started = Instant::now();
    for k in 0..per_user {
        let mut batch = Vec::with_capacity(10_000);
        for user in 0..users {
            let row = event(user, k, users);
            let previous = if k == 0 {
                0
            } else {
                event(user, k - 1, users).id
            };
            batch.push((row, previous));
            if batch.len() == 10_000 {
                features.recorded(&batch);
                batch.clear();
            }
        }
        features.recorded(&batch);
    }
    let written = started.elapsed();
    let info = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "INFO", "memory"])
        .output()
        .expect("redis-cli");
    let used: u64 = String::from_utf8_lossy(&info.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory");
    println!(
        "redis: {:.0} MiB for all users, {:.0} bytes a user; written at {:.0} events/s",
        mib(used),
        used as f64 / f64::from(users),
        f64::from(users * per_user) / written.as_secs_f64()
    );

    // One feature read: from this node's cache of recent users, from Redis, and from a
    // single node's memory, over distinct users (no cache hits in the Redis run).
    {
        let mut records = records.write().unwrap_or_else(|p| p.into_inner());
        for k in 0..per_user {
            for user in 0..10_000 {
                records.record(&event(user, k, users));
            }
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        for (what, round) in [("redis", 0), ("node cache", 1)] {
            let started = Instant::now();
            for user in 0..10_000 {
                let read = features.user(user).await;
                assert_eq!(read.version, u64::from(per_user), "{what} round {round}");
            }
            println!(
                "feature read from {what}: {:.1} us",
                started.elapsed().as_secs_f64() * 1e6 / 10_000.0
            );
        }
    });
    let local_users = Arc::new(RwLock::new(Users::with_histories(ids())));
    {
        let mut records = local_users.write().unwrap_or_else(|p| p.into_inner());
        for k in 0..per_user {
            for user in 0..10_000 {
                records.record(&event(user, k, users));
            }
        }
    }
    let local = Features::Local {
        users: local_users,
        history_limit: 500,
    };
    runtime.block_on(async {
        let started = Instant::now();
        for user in 0..10_000 {
            let _ = local.user(user).await;
        }
        println!(
            "feature read from a single node's memory: {:.1} us",
            started.elapsed().as_secs_f64() * 1e6 / 10_000.0
        );
    });
    let _ = redis.kill();
    let _ = redis.wait();
}
