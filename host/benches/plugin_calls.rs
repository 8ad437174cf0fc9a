//! Cost of plugin calls through the real wasmtime path: `recommend` (top-10) for each bundled
//! plugin over a 1,700-item catalog, and `update` with 1,000 events.
//!
//! Needs the built plugins: `cargo xtask plugins`, then
//! `cargo bench -p recohost --bench plugin_calls`.

use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use recohost::catalog::{Catalog, Users, to_feedback};
use recohost::import::demo::{DemoSize, generate};
use recohost::plugins::bindings::Request;
use recohost::plugins::{ModelVersion, PluginEngine};
use recohost::store::Store;

mod common;

use common::PLUGINS;

fn bench(c: &mut Criterion) {
    let temp = tempfile::tempdir().expect("temp dir");
    let store = Store::open(&temp.path().join("db")).expect("store");
    store
        .import(&generate(&DemoSize {
            users: 2_000,
            items: 1_700,
            seed: 7,
        }))
        .expect("demo data");
    let catalog = Catalog::new(store.items().expect("items"));
    let events = store.events_after(0).expect("events");
    let mut users = Users::with_histories(store.users().expect("users"));
    for event in &events {
        users.record(event);
    }
    let feedback: Vec<_> = events.iter().map(to_feedback).collect();
    let engine = PluginEngine::new(None).expect("engine");

    // A typical user: the one closest to 50 events.
    let user = (0..users.len() as u32)
        .min_by_key(|&u| users.version(u).abs_diff(50))
        .unwrap_or(0);
    let history: Vec<_> = users
        .history(user)
        .map(|full| full.events().rev().collect())
        .unwrap_or_default();
    let mut exclude: Vec<u32> = history.iter().map(|e| e.item).collect();
    exclude.sort_unstable();
    exclude.dedup();
    let request = Request {
        user: Some(user),
        count: 10,
        history,
        exclude,
    };

    let mut trained = Vec::new();
    for name in PLUGINS {
        let (runtime, snapshot) = common::trained(&engine, name, &catalog, &feedback);
        trained.push((name, runtime, snapshot));
    }

    let mut group = c.benchmark_group("recommend_top10_1700_items_wasm");
    for (name, runtime, _) in &trained {
        group.bench_function(*name, |b| {
            b.iter(|| runtime.recommend(&request).expect("recommend"))
        });
    }
    group.finish();

    // The whole learner path of one update from scratch: instantiate, configure, load the
    // snapshot, update with 1,000 events, save the new snapshot.
    let batch = &feedback[feedback.len() - 1_000..];
    let mut group = c.benchmark_group("learner_update_1000_events_wasm");
    for (name, runtime, snapshot) in &trained {
        group.bench_function(*name, |b| {
            b.iter(|| runtime.update(snapshot, batch).expect("update"))
        });
    }
    group.finish();

    // What the server's update does per plugin: `learn` in the kept learner (update with
    // 1,000 events, save), then `install` (a pool of serving instances loaded from the new
    // snapshot, swapped in).
    let mut group = c.benchmark_group("server_update_1000_events_wasm");
    for (name, runtime, _) in &trained {
        let mut version = 1;
        group.bench_function(BenchmarkId::new(*name, "learn_and_install"), |b| {
            b.iter(|| {
                version += 1;
                let snapshot = runtime.learn(batch, version).expect("learn");
                runtime
                    .install(ModelVersion {
                        version,
                        snapshot: Arc::new(snapshot),
                        created_at: 0,
                        through_event: 0,
                    })
                    .expect("install")
            })
        });
        version += 1;
        let snapshot = Arc::new(runtime.learn(batch, version).expect("learn"));
        group.bench_function(BenchmarkId::new(*name, "install"), |b| {
            b.iter(|| {
                version += 1;
                runtime
                    .install(ModelVersion {
                        version,
                        snapshot: snapshot.clone(),
                        created_at: 0,
                        through_event: 0,
                    })
                    .expect("install")
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
