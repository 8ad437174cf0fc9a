//! Plugins in Python and JavaScript, from nothing: `recohost plugin new --lang python|js`
//! generates a project whose own tests pass (pytest, node's test runner) and whose one build
//! command (`./build.sh`, `npm run build`) makes a component that passes `plugin check`; a
//! running server then loads both from new TOML entries, no restart, and serves 10
//! recommendations from each, and after a restart takes their machine code from its
//! compiled-code cache. And the sandbox holds a Python plugin that loops, hoards memory
//! or sleeps to its limits, as it does the Rust fixtures, and a trap caused by an escaping
//! exception carries its traceback.
//!
//! The toolchains come from the public registries (componentize-py from PyPI into the
//! project's own virtualenv, componentize-js from npm); Node.js 20.19 or newer with npm
//! (`.ci/run` takes Node 22 from PyPI where the machine has none). Where a registry cannot be reached the test says so and stops (listed as
//! skipped at the end of `cargo xtask test`), unless `RECOHOST_REQUIRE_REGISTRIES` is set
//! (`.ci/run` sets it): then it fails.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use recohost_e2e::{Server, binary, config_text, plugin_check, succeed};
use serde_json::json;

/// A registry, asked through the tool that installs from it so that the tool's own index,
/// proxy and certificate settings apply.
#[derive(Clone, Copy)]
enum Registry {
    PyPi,
    Npm,
}

/// Whether `registry` answers. If not, the test is skipped, saying so (the harness lists skips
/// at the end of `cargo xtask test`), or fails where the registries are required. A tool that
/// is not installed is a failure, not a skip.
fn registry_reachable(registry: Registry) -> bool {
    let temp = tempfile::tempdir().unwrap();
    let (name, mut probe) = match registry {
        Registry::PyPi => {
            // pip comes with a virtualenv (Debian's python3 has none of its own).
            let venv = temp.path().join("venv");
            succeed(Command::new("python3").args(["-m", "venv"]).arg(&venv));
            let mut pip = Command::new(venv.join("bin/pip"));
            pip.args(["index", "versions", "componentize-py"]);
            ("PyPI", pip)
        }
        Registry::Npm => {
            let mut npm = Command::new("npm");
            npm.args([
                "view",
                "@bytecodealliance/componentize-js@0.23.0",
                "version",
            ]);
            ("npm", npm)
        }
    };
    let output = probe
        .output()
        .unwrap_or_else(|error| panic!("{probe:?} cannot start: {error}"));
    if output.status.success() {
        return true;
    }
    // The tool's error line (npm ends with where its log went, pip with a hint).
    let stderr = String::from_utf8_lossy(&output.stderr);
    let problem = stderr
        .lines()
        .find(|line| line.to_lowercase().contains("error"))
        .or_else(|| stderr.lines().rfind(|line| !line.trim().is_empty()))
        .unwrap_or_default()
        .to_string();
    assert!(
        std::env::var_os("RECOHOST_REQUIRE_REGISTRIES").is_none(),
        "{name} is unreachable ({problem}) and RECOHOST_REQUIRE_REGISTRIES is set"
    );
    recohost_e2e::skipped(&format!(
        "{name} is unreachable ({problem}): its plugin toolchain cannot be installed"
    ));
    false
}

/// `recohost plugin new NAME --lang LANG` in `parent`; the project's folder.
fn new_project(name: &str, lang: &str, parent: &Path) -> PathBuf {
    succeed(
        Command::new(binary())
            .args(["plugin", "new", name, "--lang", lang, "--dir"])
            .arg(parent),
    );
    parent.join(name)
}

fn stdout_of(command: &mut Command) -> String {
    String::from_utf8_lossy(&succeed(command).stdout).into_owned()
}

/// Generates, tests and builds a Python plugin; its component.
fn python_plugin(name: &str, parent: &Path) -> PathBuf {
    let project = new_project(name, "python", parent);
    // The first run makes the virtualenv; the tests are plain Python.
    let tests = stdout_of(Command::new("./build.sh").arg("test").current_dir(&project));
    assert!(tests.contains("6 passed"), "{tests}");
    let build = stdout_of(Command::new("./build.sh").current_dir(&project));
    assert!(build.contains(&format!("built {name}.wasm")), "{build}");
    project.join(format!("{name}.wasm"))
}

/// In a JavaScript project: `npm INSTALL` (`install`, or `ci` from its lock), its tests (all
/// `tests` must pass, counted by the TAP reporter, which reads the same on every Node
/// release), then `npm run build`; the component.
fn js_build(project: &Path, install: &str, tests: usize, name: &str) -> PathBuf {
    succeed(
        Command::new("npm")
            .args([install, "--no-audit", "--no-fund"])
            .current_dir(project),
    );
    let report = stdout_of(
        Command::new("npm")
            .args(["test", "--", "--test-reporter=tap"])
            .current_dir(project),
    );
    assert!(
        report.contains(&format!("# pass {tests}")) && report.contains("# fail 0"),
        "{report}"
    );
    succeed(
        Command::new("npm")
            .args(["run", "build"])
            .current_dir(project),
    );
    project.join(format!("{name}.wasm"))
}

/// Generates, tests and builds a JavaScript plugin; its component.
fn js_plugin(name: &str, parent: &Path) -> PathBuf {
    js_build(&new_project(name, "js", parent), "install", 6, name)
}

#[test]
fn python_and_javascript_plugins_from_nothing_pass_the_check_and_serve_without_a_restart() {
    let temp = tempfile::tempdir().unwrap();
    let mut plugins = Vec::new();
    if registry_reachable(Registry::PyPi) {
        plugins.push(("py-pop", python_plugin("py-pop", temp.path())));
    }
    if registry_reachable(Registry::Npm) {
        plugins.push(("js-pop", js_plugin("js-pop", temp.path())));
    }
    if plugins.is_empty() {
        return;
    }
    for (name, wasm) in &plugins {
        let (passed, report) = plugin_check(wasm, "{}", "{}");
        assert!(passed && report.contains("PASSED"), "{name}: {report}");
        assert!(report.contains("foreign bytes"), "{name}: {report}");
        // The config reaches the model, which refuses an unknown key by name.
        let (passed, report) = plugin_check(wasm, r#"{"positve_rating": 4}"#, "{}");
        assert!(
            !passed && report.contains("positve_rating"),
            "{name}: {report}"
        );
    }

    // A running server picks the new TOML entries up by itself.
    let data_dir = temp.path().join("data");
    let server = Server::start_in(&data_dir, &config_text("")).unwrap();
    let config_path = data_dir.with_extension("toml");
    let mut config = std::fs::read_to_string(&config_path).unwrap();
    for (name, wasm) in &plugins {
        config.push_str(&format!(
            "\n[[plugins]]\nname = \"{name}\"\npath = {:?}\n[plugins.config]\npositive_rating = 4.0\n",
            wasm.display().to_string()
        ));
    }
    let partial = temp.path().join("config.partial");
    std::fs::write(&partial, &config).unwrap();
    std::fs::rename(&partial, &config_path).unwrap();
    let all_ready = |server: &Server| {
        server.wait_for("/plugins", Duration::from_secs(180), |listed| {
            plugins.iter().all(|(name, _)| {
                listed["plugins"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p["name"] == *name && p["status"] == "ready")
            })
        })
    };
    let code_of = |listed: &serde_json::Value, name: &str| {
        listed["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .map(|p| p["code"].clone())
    };
    let listed = all_ready(&server);
    let recommend = |server: &Server| {
        for (name, _) in &plugins {
            let (status, body) = server.post(
                "/recommend",
                &json!({"user_id": 7, "n_recommendations": 10, "model_type": name, "bypass_experiments": true}),
            );
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["model"], *name, "{body}");
            let recommendations = body["recommendations"].as_array().unwrap();
            assert_eq!(recommendations.len(), 10, "{body}");
        }
    };
    recommend(&server);

    // Compiled once: a restart takes their machine code from the compiled-code cache.
    for (name, _) in &plugins {
        assert_eq!(code_of(&listed, name), Some(json!("compiled")), "{name}");
    }
    drop(server);
    let server = Server::start_in(&data_dir, &config).unwrap();
    let listed = all_ready(&server);
    for (name, _) in &plugins {
        assert_eq!(code_of(&listed, name), Some(json!("cache")), "{name}");
    }
    recommend(&server);
}

/// A copy of `examples/NAME` in `parent`, without what a build there may have left.
fn copy_example(name: &str, parent: &Path) -> PathBuf {
    let source = recohost_e2e::workspace_root().join("examples").join(name);
    succeed(Command::new("cp").arg("-r").arg(&source).arg(parent));
    let copy = parent.join(name);
    for generated in [".venv", "node_modules", "__pycache__"] {
        let _ = std::fs::remove_dir_all(copy.join(generated));
    }
    copy
}

#[test]
fn the_python_and_javascript_examples_pass_the_check_under_the_production_limits() {
    let temp = tempfile::tempdir().unwrap();
    let mut built = Vec::new();
    if registry_reachable(Registry::PyPi) {
        let project = copy_example("python-itemknn", temp.path());
        let build = stdout_of(Command::new("./build.sh").current_dir(&project));
        assert!(build.contains("8 passed"), "{build}");
        built.push((project.join("python-itemknn.wasm"), r#"{"neighbors": 20}"#));
    }
    if registry_reachable(Registry::Npm) {
        let project = copy_example("js-popularity", temp.path());
        let wasm = js_build(&project, "ci", 7, "js-popularity");
        built.push((wasm, r#"{"half_life_days": 7}"#));
    }
    for (wasm, config) in built {
        let (passed, report) = plugin_check(&wasm, config, "{}");
        assert!(passed, "{}: {report}", wasm.display());
    }
}

#[test]
fn a_python_plugin_that_loops_hoards_memory_or_sleeps_is_stopped_by_its_limits() {
    if !registry_reachable(Registry::PyPi) {
        return;
    }
    let temp = tempfile::tempdir().unwrap();
    let project = new_project("hostile", "python", temp.path());
    // The virtualenv, made by the project's own script.
    succeed(Command::new("./build.sh").arg("test").current_dir(&project));
    let fixture = recohost_e2e::workspace_root().join("tests/fixtures/python/hostile.py");
    std::fs::copy(&fixture, project.join("src/hostile.py")).unwrap();
    succeed(
        Command::new(project.join(".venv/bin/componentize-py"))
            .args(["--wit-path", "wit", "--world", "strategy", "componentize"])
            .args([
                "--python-path",
                "src",
                "hostile",
                "--output",
                "hostile.wasm",
            ])
            .current_dir(&project),
    );
    let wasm = project.join("hostile.wasm");

    // The production limits, except for the memory bomb's: its cap (as for the Rust fixture),
    // and time enough that the cap, not the clock, stops it on a busy machine (64 MiB of
    // bytearrays took over 250 ms with both cores loaded).
    for (count, limits, reason) in [
        // What Python printed on its way down comes with the trap.
        (
            13,
            "{}",
            "RuntimeError: hostile: an exception escapes recommend",
        ),
        (17, "{}", "exceeded its time budget of 250 ms"),
        (
            19,
            r#"{"memory_mb": 64, "recommend_ms": 5000}"#,
            "exceeded its memory limit of 64 MiB",
        ),
        (41, "{}", "exceeded its time budget of 250 ms"),
    ] {
        recohost_e2e::assert_check_fails_at(&wasm, count, limits, reason);
    }
    // Honest otherwise: the fixture is the generated plugin.
    let (passed, report) = plugin_check(&wasm, r#"{"misbehave_only": 1000}"#, "{}");
    assert!(passed, "{report}");
}
