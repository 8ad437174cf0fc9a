//! The same algorithms natively and inside the sandbox: `recommend` (top-10 of 1,682 items)
//! and `train` on 80,000 ratings, for every bundled plugin.
//!
//! Data: ML-100k from ../shared/datasets/ml-100k (random 80/20 split, seed 42) when present,
//! else a generated dataset of the same shape (1,682 items, 943 users, 80,000 events).
//!
//!     cargo xtask plugins
//!     cargo bench -p recohost --bench native_vs_wasm
//!
//! "native" calls the plugin crate's `Strategy` implementation directly; "wasm" goes through
//! the server's `PluginRuntime` (pool checkout, the call into WebAssembly with the request
//! copied in and the answer copied out, check-in). `recommend_without_time_limit` repeats the
//! WASM calls on an engine without the time limit's epoch checks, to show what they cost.

use std::path::PathBuf;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use recohost::catalog::Catalog;
use recohost::eval::split::{SplitKind, split};
use recohost::import::demo::{DemoSize, generate};
use recohost::import::movielens;
use recohost::plugins::PluginEngine;
use recohost::plugins::bindings as host;
use recohost::store::{EventKind, ImportEvent, ItemRow};
use recohost_plugin_sdk as sdk;
use sdk::Strategy;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// (items, train events) with 1,682 items and 80,000 training events.
fn dataset() -> (Vec<ItemRow>, Vec<ImportEvent>) {
    let ml = workspace().join("../shared/datasets/ml-100k");
    if ml.join("u.data").exists() {
        let items = movielens::read_100k_items(&ml.join("u.item")).expect("u.item");
        let ratings = movielens::read_ratings(&ml.join("u.data"), false).expect("u.data");
        let (train, _) = split(ratings, SplitKind::Random, 0.2, 42);
        return (items, train);
    }
    eprintln!("ML-100k not found; using generated data of the same shape");
    let batch = generate(&DemoSize {
        users: 943,
        items: 1_682,
        seed: 42,
    });
    let mut events = batch.events;
    events.truncate(80_000);
    (batch.items, events)
}

fn kind(kind: EventKind) -> (host::WitEventKind, sdk::EventKind) {
    match kind {
        EventKind::Rate => (host::WitEventKind::Rate, sdk::EventKind::Rate),
        EventKind::Click => (host::WitEventKind::Click, sdk::EventKind::Click),
        EventKind::View => (host::WitEventKind::View, sdk::EventKind::View),
        EventKind::Purchase => (host::WitEventKind::Purchase, sdk::EventKind::Purchase),
    }
}

/// One algorithm behind both doors.
trait Native {
    fn train(
        &self,
        catalog: &[sdk::Item],
        events: &[sdk::Feedback],
    ) -> Box<dyn Fn(&sdk::Request) -> usize>;
}

struct Algorithm<S>(std::marker::PhantomData<S>);

impl<S: Strategy> Native for Algorithm<S> {
    fn train(
        &self,
        catalog: &[sdk::Item],
        events: &[sdk::Feedback],
    ) -> Box<dyn Fn(&sdk::Request) -> usize> {
        let mut model = S::configure("{}", catalog.to_vec()).expect("configure");
        model.train(events.to_vec()).expect("train");
        Box::new(move |request| model.recommend(request).expect("recommend").len())
    }
}

fn algorithm(name: &str) -> Box<dyn Native> {
    match name {
        "popularity" => Box::new(Algorithm::<popularity::Popularity>(Default::default())),
        "collaborative" => Box::new(Algorithm::<collaborative::Collaborative>(Default::default())),
        "content" => Box::new(Algorithm::<content::Content>(Default::default())),
        "ratings" => Box::new(Algorithm::<ratings::Ratings>(Default::default())),
        _ => Box::new(Algorithm::<hybrid::Hybrid>(Default::default())),
    }
}

mod common;

use common::PLUGINS;

fn bench(c: &mut Criterion) {
    let (items, ratings) = dataset();
    let catalog = Catalog::new(items);
    let sdk_catalog: Vec<sdk::Item> = catalog
        .plugin_items()
        .iter()
        .map(|i| sdk::Item {
            index: i.index,
            title: i.title.clone(),
            tags: i.tags.clone(),
        })
        .collect();
    let mut users = std::collections::HashMap::new();
    let mut host_events = Vec::new();
    let mut sdk_events = Vec::new();
    for r in &ratings {
        let next = users.len() as u32;
        let user = *users.entry(r.user.clone()).or_insert(next);
        let item = catalog.index_of(&r.item).expect("rated item in catalog");
        let (host_kind, sdk_kind) = kind(r.kind);
        host_events.push(host::Feedback {
            user,
            item,
            kind: host_kind,
            value: r.value,
            timestamp: r.timestamp,
        });
        sdk_events.push(sdk::Feedback {
            user,
            item,
            kind: sdk_kind,
            value: r.value,
            timestamp: r.timestamp,
        });
    }
    // The request of a typical user: the one whose history length is the median.
    let mut by_user: Vec<Vec<usize>> = vec![Vec::new(); users.len()];
    for (i, e) in sdk_events.iter().enumerate() {
        by_user[e.user as usize].push(i);
    }
    let mut lengths: Vec<(usize, usize)> = by_user
        .iter()
        .enumerate()
        .map(|(u, v)| (v.len(), u))
        .collect();
    lengths.sort();
    let (history_len, user) = lengths[lengths.len() / 2];
    let history_idx: Vec<usize> = by_user[user].iter().rev().copied().collect();
    let mut exclude: Vec<u32> = history_idx.iter().map(|&i| sdk_events[i].item).collect();
    exclude.sort_unstable();
    exclude.dedup();
    let sdk_request = sdk::Request {
        user: Some(user as u32),
        count: 10,
        history: history_idx.iter().map(|&i| sdk_events[i]).collect(),
        exclude: exclude.clone(),
    };
    let host_request = host::Request {
        user: Some(user as u32),
        count: 10,
        history: history_idx.iter().map(|&i| host_events[i]).collect(),
        exclude,
    };
    eprintln!(
        "{} items, {} training events, request for a user with {history_len} events",
        catalog.len(),
        host_events.len()
    );

    let engine = PluginEngine::new(None).expect("engine");
    let mut recommend = c.benchmark_group("recommend_top10_1682_items");
    for name in PLUGINS {
        let native = algorithm(name).train(&sdk_catalog, &sdk_events);
        recommend.bench_function(BenchmarkId::new(name, "native"), |b| {
            b.iter(|| native(&sdk_request))
        });
        let runtime = common::trained(&engine, name, &catalog, &host_events).0;
        recommend.bench_function(BenchmarkId::new(name, "wasm"), |b| {
            b.iter(|| runtime.recommend(&host_request).expect("recommend"))
        });
    }
    recommend.finish();

    // The same calls with no time limit (no epoch checks in the compiled plugin code): what
    // the limit costs. Not a setting the server offers; see docs/benchmarks.md.
    let unlimited = PluginEngine::without_time_limit_for_benchmarks().expect("engine");
    let mut no_limit = c.benchmark_group("recommend_without_time_limit");
    for name in PLUGINS {
        let runtime = common::trained(&unlimited, name, &catalog, &host_events).0;
        no_limit.bench_function(BenchmarkId::new(name, "wasm"), |b| {
            b.iter(|| runtime.recommend(&host_request).expect("recommend"))
        });
    }
    no_limit.finish();

    // What a call costs before any algorithm runs: popularity asked for nothing, with an empty
    // request and with the typical user's request (51 history events copied in).
    let mut floor = c.benchmark_group("call_floor");
    let runtime = common::trained(&engine, "popularity", &catalog, &host_events).0;
    let empty = host::Request {
        user: None,
        count: 0,
        history: Vec::new(),
        exclude: Vec::new(),
    };
    floor.bench_function("empty_request", |b| {
        b.iter(|| runtime.recommend(&empty).expect("recommend"))
    });
    let typical = host::Request {
        count: 0,
        ..host_request.clone()
    };
    floor.bench_function("typical_request_count_0", |b| {
        b.iter(|| runtime.recommend(&typical).expect("recommend"))
    });
    floor.finish();

    let mut train = c.benchmark_group("train_80000_ratings");
    train.sample_size(10);
    for name in PLUGINS {
        train.bench_function(BenchmarkId::new(name, "native"), |b| {
            b.iter(|| algorithm(name).train(&sdk_catalog, &sdk_events))
        });
        let runtime = common::load(&engine, name, &catalog);
        train.bench_function(BenchmarkId::new(name, "wasm"), |b| {
            b.iter(|| runtime.train(&host_events).expect("train"))
        });
    }
    train.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
