//! `recohost eval`: the real binary, the real plugins, files in u.data format.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::path::Path;
use std::process::Command;

use recohost_e2e::{PLUGINS, binary, config_text, movielens_100k};
use serde_json::Value;

/// Runs `recohost eval` with the bundled plugins' config and `args`; returns its stdout,
/// panicking with its output unless it succeeds.
fn run_eval(args: &[&str], config_dir: &Path) -> String {
    let config = config_dir.join("eval.toml");
    std::fs::write(&config, config_text("")).unwrap();
    let output = Command::new(binary())
        .arg("eval")
        .arg("--config")
        .arg(&config)
        .args(args)
        .env("RECOHOST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// [`run_eval`] with `--json`, parsed.
fn eval(args: &[&str], config_dir: &Path) -> Value {
    let stdout = run_eval(&[args, &["--json"]].concat(), config_dir);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// Two taste clusters: users 1-20 rate items 1-10, users 21-40 rate items 11-20, and everyone
/// rates item 21, so popularity alone points across clusters.
fn clustered_ratings(dir: &Path) -> (String, String) {
    let (mut train, mut test) = (String::new(), String::new());
    for user in 1..=40u32 {
        let base = if user <= 20 { 1 } else { 11 };
        for offset in 0..10u32 {
            let item = base + (offset + user) % 10;
            let line = format!("{user}\t{item}\t5\t{}\n", 1000 + offset);
            // Each user's last two items (in their own order) are held out.
            if offset >= 8 {
                test.push_str(&line)
            } else {
                train.push_str(&line)
            }
        }
        train.push_str(&format!("{user}\t21\t4\t999\n"));
    }
    // Item 22 is popular among a separate crowd.
    for user in 41..=70u32 {
        train.push_str(&format!("{user}\t22\t4\t999\n"));
    }
    let (train_path, test_path) = (dir.join("train.data"), dir.join("test.data"));
    std::fs::write(&train_path, train).unwrap();
    std::fs::write(&test_path, test).unwrap();
    (
        train_path.display().to_string(),
        test_path.display().to_string(),
    )
}

#[test]
fn eval_reports_every_metric_per_plugin_and_collaborative_beats_popularity_on_clusters() {
    let dir = tempfile::tempdir().unwrap();
    let (train, test) = clustered_ratings(dir.path());
    let report = eval(
        &["--train", &train, "--test", &test, "--k", "5"],
        dir.path(),
    );
    for plugin in PLUGINS {
        let scores = &report[plugin];
        for metric in ["precision@5", "recall@5", "ndcg@5", "map@5"] {
            let value = scores[metric]
                .as_f64()
                .unwrap_or_else(|| panic!("{plugin} lacks {metric}: {report}"));
            assert!((0.0..=1.0).contains(&value), "{plugin} {metric} = {value}");
        }
        assert!(scores["train_seconds"].as_f64().unwrap() >= 0.0);
        assert_eq!(scores["users"], 40, "users with train and test items");
    }
    // Rating errors only for the plugin that predicts ratings; every test rating is 5 and
    // the scale is 1-5, so no error can exceed 4.
    let rmse = report["ratings"]["rmse"]
        .as_f64()
        .expect("ratings predicts");
    let mae = report["ratings"]["mae"].as_f64().expect("ratings predicts");
    assert!((0.0..=4.0).contains(&rmse) && mae <= rmse, "{report}");
    assert!(report["popularity"]["rmse"].is_null(), "{report}");
    let ndcg = |plugin: &str| report[plugin]["ndcg@5"].as_f64().unwrap();
    assert!(ndcg("collaborative") > 0.6, "{report}");
    assert!(ndcg("collaborative") > ndcg("popularity") + 0.3, "{report}");
}

#[test]
fn a_generated_ml_latest_dataset_is_evaluated_on_a_sample_of_its_users() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("generated");
    let generated = Command::new(binary())
        .args([
            "demo-data",
            "--users",
            "600",
            "--items",
            "300",
            "--events",
            "30000",
            "--out",
        ])
        .arg(&data)
        .output()
        .unwrap();
    assert!(generated.status.success(), "{generated:?}");
    let data = data.to_str().unwrap();
    let args = [
        "--dataset",
        data,
        "--split",
        "random",
        "--plugins",
        "popularity,collaborative",
    ];
    let all = eval(&args, dir.path());
    let sampled = eval(&[&args[..], &["--max-users", "100"]].concat(), dir.path());
    for report in [&all, &sampled] {
        // The generator's taste clusters are there to be found.
        let ndcg = |plugin: &str| report[plugin]["ndcg@10"].as_f64().unwrap();
        assert!(ndcg("collaborative") > ndcg("popularity") * 1.5, "{report}");
    }
    assert!(all["popularity"]["users"].as_u64().unwrap() > 500, "{all}");
    assert_eq!(sampled["popularity"]["users"], 100, "{sampled}");
}

#[test]
fn eval_refuses_bad_arguments_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let (train, _) = clustered_ratings(dir.path());
    let config = dir.path().join("eval.toml");
    std::fs::write(&config, config_text("")).unwrap();
    let popularity = recohost_e2e::plugins_dir()
        .join("popularity.wasm")
        .display()
        .to_string();
    for (args, expected) in [
        (vec!["--train", train.as_str()], "--test FILE or --split"),
        (
            vec!["--train", "/no/such/file", "--split", "random"],
            "/no/such/file",
        ),
        (
            vec![
                "--train",
                train.as_str(),
                "--split",
                "random",
                "--plugins",
                "nope",
            ],
            "not declared",
        ),
        (
            vec!["--train", train.as_str(), "--prequential", "--csv"],
            "cannot be used with",
        ),
        (
            vec![
                "--train",
                train.as_str(),
                "--split",
                "random",
                "--wasm",
                "/no/such.wasm",
            ],
            "an existing .wasm file",
        ),
        (
            vec![
                "--train",
                train.as_str(),
                "--split",
                "random",
                "--wasm",
                &popularity,
            ],
            "already declared",
        ),
        (
            vec!["--dataset", "/no/such/folder", "--split", "random"],
            "/no/such/folder",
        ),
        (
            vec!["--dataset", "/tmp", "--test", train.as_str()],
            "cannot be used with",
        ),
        (vec!["--split", "random"], "--dataset"),
        (
            vec![
                "--dataset",
                "/tmp",
                "--split",
                "random",
                "--train",
                train.as_str(),
            ],
            "cannot be used with",
        ),
        (
            vec![
                "--train",
                train.as_str(),
                "--split",
                "random",
                "--max-users",
                "0",
            ],
            "--max-users",
        ),
    ] {
        let output = Command::new(binary())
            .arg("eval")
            .arg("--config")
            .arg(&config)
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success() && stderr.contains(expected),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn external_wasm_plugins_join_the_declared_ones_with_coverage_in_csv() {
    let dir = tempfile::tempdir().unwrap();
    let (train, _) = clustered_ratings(dir.path());
    let external = format!(
        "outside={}",
        recohost_e2e::plugins_dir()
            .join("popularity.wasm")
            .display()
    );
    let plot = dir.path().join("plot.svg").display().to_string();
    let stdout = run_eval(
        &[
            "--train",
            &train,
            "--split",
            "per-user",
            "--test-fraction",
            "0.25",
            "--plugins",
            "popularity,outside",
            "--wasm",
            &external,
            "--csv",
            "--plot",
            &plot,
        ],
        dir.path(),
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[0],
        "plugin,precision@10,recall@10,ndcg@10,map@10,coverage@10,train_seconds,users,rmse,mae"
    );
    // The same .wasm under two names, with the same (empty) config: the same figures.
    let metrics = |line: &str| {
        line.split(',')
            .skip(1)
            .take(5)
            .collect::<Vec<_>>()
            .join(",")
    };
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(
        lines[1].starts_with("popularity,") && lines[2].starts_with("outside,"),
        "{stdout}"
    );
    assert_eq!(metrics(lines[1]), metrics(lines[2]));
    let coverage: f64 = lines[1].split(',').nth(5).unwrap().parse().unwrap();
    assert!(coverage > 0.0 && coverage <= 1.0, "{coverage}");
    // The plot: three panels (NDCG, recall, precision), a line per plugin in each.
    let svg = std::fs::read_to_string(dir.path().join("plot.svg")).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("per-user split"),
        "{svg}"
    );
    assert_eq!(svg.matches("<polyline").count(), 6);
}

#[test]
fn movielens_100k_quality_targets_on_a_random_split() {
    let Some(dataset) = movielens_100k() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ratings = dataset.join("u.data").display().to_string();
    let items = dataset.join("u.item").display().to_string();
    let report = eval(
        &[
            "--ratings",
            &ratings,
            "--split",
            "random",
            "--seed",
            "42",
            "--items",
            &items,
        ],
        dir.path(),
    );
    let ndcg = |plugin: &str| report[plugin]["ndcg@10"].as_f64().unwrap();
    eprintln!(
        "NDCG@10: {}",
        PLUGINS.map(|p| format!("{p} {:.4}", ndcg(p))).join(", ")
    );
    assert!(
        (0.19..0.25).contains(&ndcg("popularity")),
        "popularity is the metric's sanity check: {report}"
    );
    assert!(ndcg("collaborative") >= 0.40, "{report}");
    assert!(
        PLUGINS.iter().map(|p| ndcg(p)).fold(0.0, f64::max) >= 0.44,
        "{report}"
    );
    assert!(
        ndcg("hybrid") > ndcg("collaborative") && ndcg("hybrid") > ndcg("content"),
        "{report}"
    );
}

#[test]
fn movielens_100k_prequential_replay_learns_online() {
    let Some(dataset) = movielens_100k() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ratings = dataset.join("u.data").display().to_string();
    let items = dataset.join("u.item").display().to_string();
    let report = eval(
        &["--ratings", &ratings, "--items", &items, "--prequential"],
        dir.path(),
    );
    eprintln!("{report}");
    let online = |plugin: &str, metric: &str| report[plugin]["online"][metric].as_f64().unwrap();
    let frozen = |plugin: &str, metric: &str| report[plugin]["frozen"][metric].as_f64().unwrap();
    assert_eq!(report["popularity"]["replayed_events"], 20_000);
    // Incremental popularity is the reference (about 0.076 on this replay).
    assert!(
        (0.06..0.09).contains(&online("popularity", "recall")),
        "{report}"
    );
    assert!(online("collaborative", "recall") >= 0.08, "{report}");
    assert!(online("ratings", "rmse") <= 0.96, "{report}");
    assert!(
        frozen("ratings", "rmse") > online("ratings", "rmse") + 0.03,
        "{report}"
    );
    assert!(
        report["collaborative"]["online"]["rmse"].is_null(),
        "ranking-only: no RMSE"
    );
}
