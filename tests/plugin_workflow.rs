//! The researcher's workflow end to end: `recohost plugin new` generates a crate that passes
//! its own tests and builds for wasm32-wasip2, `recohost plugin check` passes it, and a
//! running server loads it from a new TOML entry (no restart) and serves recommendations
//! from it; so does the example external plugin `examples/itemknn`. And `plugin check`
//! rejects every hostile fixture, naming the reason.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use recohost_e2e::{Server, binary, check_failure, config_text, fixture, plugin_check, succeed};
use serde_json::json;

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Where generated crates build: beside the server's build, so that a second run reuses the
/// compiled wit-bindgen and serde.
fn generated_target_dir() -> PathBuf {
    binary()
        .parent()
        .and_then(Path::parent)
        .expect("target/release/recohost")
        .join("plugin-new")
}

/// Runs a plugin crate's own tests, builds its component, and returns the `.wasm` path
/// (`lib` is the crate's library name).
fn test_and_build(crate_dir: &Path, lib: &str) -> PathBuf {
    let target = generated_target_dir();
    succeed(
        cargo()
            .arg("test")
            .current_dir(crate_dir)
            .env("CARGO_TARGET_DIR", &target),
    );
    succeed(
        cargo()
            .args(["build", "--release", "--target", "wasm32-wasip2"])
            .current_dir(crate_dir)
            .env("CARGO_TARGET_DIR", &target),
    );
    target.join(format!("wasm32-wasip2/release/{lib}.wasm"))
}

fn check(file: &Path, config: &str) -> (bool, String) {
    plugin_check(file, config, "{}")
}

#[test]
fn a_generated_plugin_builds_passes_the_check_and_serves_without_a_restart() {
    let temp = tempfile::tempdir().unwrap();
    succeed(
        Command::new(binary())
            .args(["plugin", "new", "my-rec", "--dir"])
            .arg(temp.path()),
    );
    let wasm = test_and_build(&temp.path().join("my-rec"), "my_rec");

    let (passed, report) = check(&wasm, "{}");
    assert!(passed && report.contains("PASSED"), "{report}");
    for figure in ["recommend", "p99", "peak memory", "snapshot"] {
        assert!(
            report.contains(figure),
            "the report lacks {figure}:\n{report}"
        );
    }
    // Its config is checked like any plugin's.
    let (passed, report) = check(&wasm, r#"{"positve_rating": 4}"#);
    assert!(!passed && report.contains("positve_rating"), "{report}");

    // The example external plugin (examples/itemknn), built the same way.
    let itemknn = test_and_build(
        &recohost_e2e::workspace_root().join("examples/itemknn"),
        "itemknn",
    );
    let (passed, report) = check(&itemknn, r#"{"neighbors": 20}"#);
    assert!(passed, "{report}");

    // A running server picks the new TOML entries up by itself.
    let data_dir = temp.path().join("data");
    let server = Server::start_in(&data_dir, &config_text("")).unwrap();
    let config_path = data_dir.with_extension("toml");
    let mut config = std::fs::read_to_string(&config_path).unwrap();
    config.push_str(&format!(
        "\n[[plugins]]\nname = \"my-rec\"\npath = {:?}\n[plugins.config]\npositive_rating = 4.0\n",
        wasm.display().to_string()
    ));
    config.push_str(&format!(
        "\n[[plugins]]\nname = \"itemknn\"\npath = {:?}\n[plugins.config]\nneighbors = 20\n",
        itemknn.display().to_string()
    ));
    let partial = temp.path().join("config.partial");
    std::fs::write(&partial, config).unwrap();
    std::fs::rename(&partial, &config_path).unwrap();
    server.wait_for("/plugins", Duration::from_secs(60), |plugins| {
        let ready = |name: &str| {
            plugins["plugins"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == name && p["status"] == "ready")
        };
        ready("my-rec") && ready("itemknn")
    });
    for model in ["my-rec", "itemknn"] {
        let (status, body) = server.post(
            "/recommend",
            &json!({"user_id": 7, "n_recommendations": 10, "model_type": model, "bypass_experiments": true}),
        );
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["model"], model);
        let recommendations = body["recommendations"].as_array().unwrap();
        assert_eq!(recommendations.len(), 10, "{body}");
    }
}

#[test]
fn plugin_check_rejects_each_hostile_fixture_with_its_reason() {
    let misbehaving = fixture("misbehaving");
    // The fixture misbehaves at one list length each; the check tries every length 1-50.
    // The production limits, except for the memory bomb: filling 512 MiB takes longer than
    // the 250 ms budget, which would stop it first.
    let cases = [
        (13, "{}", "trapped in `recommend`"),
        (17, "{}", "exceeded its time budget of 250 ms"),
        (
            19,
            r#"{"memory_mb": 64}"#,
            "exceeded its memory limit of 64 MiB",
        ),
        (23, "{}", "items when asked for 23"),
        (29, "{}", "max_result_items"),
        (31, "{}", "logged more than 65536 bytes in one call"),
        (37, "{}", "tried to use the network"),
        (41, "{}", "exceeded its time budget of 250 ms"),
        (43, "{}", "exceeds limit 1048576"),
        (47, r#"{"memory_mb": 256}"#, "64 KiB of error text"),
        (
            49,
            r#"{"memory_mb": 256}"#,
            "at most 10000 items (limits.max_result_items)",
        ),
    ];
    for (count, limits, reason) in cases {
        recohost_e2e::assert_check_fails_at(&misbehaving, count, limits, reason);
    }
    // Honest otherwise: the fixture is the popularity model.
    let (passed, report) = check(&misbehaving, r#"{"misbehave_only": 1000}"#);
    assert!(passed, "{report}");

    // Hostile outside `recommend`: an update that sleeps forever, a table grown without
    // bound. The check ends, naming the limit (before the fix it never finished).
    for (file, config, limits, reason) in [
        (
            misbehaving.clone(),
            r#"{"misbehave_only": 1000, "update": "sleep"}"#,
            r#"{"update_ms": 500}"#,
            "update: plugin `misbehaving` trapped in `update`: exceeded its time budget of 500 ms",
        ),
        (
            recohost_e2e::table_grower(),
            "{}",
            r#"{"memory_mb": 64}"#,
            "exceeded its memory limit of 64 MiB",
        ),
    ] {
        let (passed, report) = plugin_check(&file, config, limits);
        let failure = check_failure(&report);
        assert!(
            !passed && failure.contains(reason),
            "expected {reason:?} in {failure}"
        );
    }

    let temp = tempfile::tempdir().unwrap();
    let core_module = temp.path().join("core.wasm");
    std::fs::write(&core_module, b"\0asm\x01\0\0\0").unwrap();
    let script = temp.path().join("script.wasm");
    std::fs::write(&script, b"#!/bin/sh\nrm -rf /\n").unwrap();
    for (file, reason) in [
        (fixture("wrong_major"), "built for recohost:strategy@2.0.0"),
        (core_module, "not a valid WebAssembly component"),
        (script, "not a valid WebAssembly component"),
        (temp.path().join("missing.wasm"), "cannot read"),
    ] {
        let (passed, report) = check(&file, "{}");
        assert!(!passed, "{} passed:\n{report}", file.display());
        assert!(
            report.contains(reason),
            "{}: expected {reason:?}:\n{report}",
            file.display()
        );
    }
}
