//! `recommend` (top 10) of each bundled plugin through the real wasmtime path, at each data
//! shape of issue 22 (S: the demo's size, M: 10x, L: MovieLens 25M's): how a plugin call's
//! cost grows with the catalog and the events, without the HTTP server around it.
//!
//! For each shape: `recohost demo-data`'s generator writes the dataset, the importer stores
//! it, every plugin trains on all of it in its sandbox (default limits), and requests are
//! built as the server builds them (the user's newest 500 events, every item they have
//! seen excluded) for 2,000 users drawn from the whole shape. Criterion then times the calls
//! over those users in turn, and each user's call is also timed alone once, for the p50 and
//! p99 that criterion does not report (printed as a table at the end).
//!
//! Needs the built plugins (`cargo xtask plugins`). Shapes S and M by default; L takes
//! several minutes and about 8 GB:
//!
//!     RECOHOST_BENCH_SHAPES=s,m,l cargo bench -p recohost --bench plugin_scale

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use rand::{Rng, SeedableRng};
use recohost::catalog::{Catalog, Users, to_feedback};
use recohost::import::demo::{Shape, write_movielens};
use recohost::plugins::PluginEngine;
use recohost::plugins::bindings::Request;
use recohost::store::Store;

mod common;

use common::PLUGINS;

/// Users whose requests are timed per shape.
const USERS: usize = 2_000;
/// The server's default `history_limit`.
const HISTORY_LIMIT: usize = 500;

fn shapes() -> Vec<String> {
    std::env::var("RECOHOST_BENCH_SHAPES")
        .unwrap_or_else(|_| "s,m".into())
        .split(',')
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Requests for `USERS` users drawn from the whole shape, as the server builds them.
fn requests(users: &Users) -> Vec<Request> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    (0..USERS)
        .map(|_| {
            let user = rng.random_range(0..users.len() as u32);
            let full = users.history(user).expect("a single node's histories");
            let history = full.events().rev().take(HISTORY_LIMIT).collect();
            let mut exclude: Vec<u32> = full.items().collect();
            exclude.sort_unstable();
            exclude.dedup();
            Request {
                user: Some(user),
                count: 10,
                history,
                exclude,
            }
        })
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn bench(c: &mut Criterion) {
    let engine = PluginEngine::new(None).expect("engine");
    let mut table = Vec::new();
    for name in shapes() {
        let shape = Shape::named(&name).unwrap_or_else(|| panic!("no shape {name} (s, m, l)"));
        let temp = tempfile::tempdir().expect("temp dir");
        let data = temp.path().join("data");
        write_movielens(&shape, &data, false).expect("dataset");
        let store = Store::open(&temp.path().join("db")).expect("store");
        let dataset = recohost::import::movielens::open(&data, false).expect("dataset");
        store
            .import_stream(&dataset.items, &mut { dataset.events })
            .expect("import");
        let catalog = Catalog::new(store.items().expect("items"));
        let mut users = Users::with_histories(store.users().expect("users"));
        let mut feedback = Vec::new();
        store
            .scan_events_after(0, &mut |event| {
                users.record(event);
                feedback.push(to_feedback(event));
            })
            .expect("events");
        let requests = requests(&users);
        drop(users);

        let mut group = c.benchmark_group(format!("recommend_top10_shape_{name}"));
        for plugin in PLUGINS {
            let (runtime, _) = common::trained(&engine, plugin, &catalog, &feedback);
            // Each user once, alone: the distribution of single calls.
            let mut calls: Vec<Duration> = requests
                .iter()
                .map(|request| {
                    let started = Instant::now();
                    runtime.recommend(request).expect("recommend");
                    started.elapsed()
                })
                .collect();
            calls.sort_unstable();
            table.push((
                name.clone(),
                plugin,
                percentile(&calls, 0.5),
                percentile(&calls, 0.99),
            ));
            let mut next = 0;
            group.bench_function(BenchmarkId::from_parameter(plugin), |b| {
                b.iter(|| {
                    next = (next + 1) % requests.len();
                    runtime.recommend(&requests[next]).expect("recommend")
                })
            });
        }
        group.finish();
    }
    println!("\n| shape | plugin | recommend p50 | recommend p99 |\n|---|---|---|---|");
    for (shape, plugin, p50, p99) in table {
        println!(
            "| {} | {plugin} | {:.1} µs | {:.1} µs |",
            shape.to_uppercase(),
            p50.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6
        );
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
