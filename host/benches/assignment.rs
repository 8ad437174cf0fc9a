//! Cost of experiment assignment on the request path: what `POST /recommend` adds to place a
//! user in an arm (GrowthBook hash, bucket ranges, namespace, sticky lookup) and to queue the
//! exposure. Baseline in the same run: the bare GrowthBook hash.
//!
//! `cargo bench -p recohost --bench assignment`

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use recohost::experiments::Experiments;
use recohost::experiments::assignment::hash;
use recohost::store::Store;

const EXPERIMENT: &str = r#"
id = "ID"
name = "Bench"
status = "running"
coverage = COVERAGE
priority = PRIORITY
sticky = STICKY
[namespace]
name = "ranking"
range = [0.0, 1.0]
[[groups]]
name = "control"
plugin = "collaborative"
weight = 0.5
[[groups]]
name = "treatment"
plugin = "hybrid"
weight = 0.5
"#;

fn experiment(id: &str, coverage: f64, priority: i64, sticky: bool) -> String {
    EXPERIMENT
        .replace("ID", id)
        .replace("COVERAGE", &coverage.to_string())
        .replace("PRIORITY", &priority.to_string())
        .replace("STICKY", &sticky.to_string())
}

/// An experiments service over `files` in a temporary directory (kept alive by the guard).
fn service(files: &[(&str, String)]) -> (tempfile::TempDir, Experiments) {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path().join("experiments");
    std::fs::create_dir(&dir).expect("dir");
    for (name, text) in files {
        std::fs::write(dir.join(name), text).expect("write");
    }
    let database = recohost::store::Database::Sqlite(temp.path().join("db"));
    let store = Arc::new(Store::connect(&database).expect("store"));
    let plugins = || vec!["collaborative".to_string(), "hybrid".to_string()];
    let experiments =
        Experiments::open(Some(dir), Box::new(plugins), store, &database).expect("open");
    (temp, experiments)
}

fn bench(c: &mut Criterion) {
    let users: Vec<String> = (0..10_000).map(|u| format!("user-{u}")).collect();
    let mut group = c.benchmark_group("assignment");
    let mut next = 0usize;
    let mut user = move || {
        next = (next + 1) % users.len();
        users[next].clone()
    };

    group.bench_function("growthbook_hash_v2", |b| {
        b.iter_batched(
            &mut user,
            |u| hash("model_comparison", &u, 2),
            criterion::BatchSize::SmallInput,
        )
    });

    let (_one, one) = service(&[("a.toml", experiment("a", 1.0, 0, false))]);
    group.bench_function("assign_one_experiment", |b| {
        b.iter_batched(
            &mut user,
            |u| one.assign(&u, None).expect("assign"),
            criterion::BatchSize::SmallInput,
        )
    });

    // Two higher-priority experiments that cover nobody: the request falls through to the
    // third, so it pays for three hashes and a namespace check each.
    let (_three, three) = service(&[
        ("a.toml", experiment("a", 0.0, 2, false)),
        ("b.toml", experiment("b", 0.0, 1, false)),
        ("c.toml", experiment("c", 1.0, 0, false)),
    ]);
    group.bench_function("assign_third_of_three_experiments", |b| {
        b.iter_batched(
            &mut user,
            |u| three.assign(&u, None).expect("assign"),
            criterion::BatchSize::SmallInput,
        )
    });

    let (_sticky, sticky) = service(&[("a.toml", experiment("a", 1.0, 0, true))]);
    group.bench_function("assign_and_log_exposure_sticky", |b| {
        b.iter_batched(
            &mut user,
            |u| {
                let assignment = sticky.assign(&u, None).expect("assign").expect("in");
                sticky.record_exposure(&assignment, &u, 1, 0);
            },
            criterion::BatchSize::SmallInput,
        )
    });
    group.bench_function("assign_and_log_exposure", |b| {
        b.iter_batched(
            &mut user,
            |u| {
                let assignment = one.assign(&u, None).expect("assign").expect("in");
                one.record_exposure(&assignment, &u, 1, 0);
            },
            criterion::BatchSize::SmallInput,
        )
    });
    group.finish();
    one.flush();
    sticky.flush();
}

criterion_group!(benches, bench);
criterion_main!(benches);
