//! Plugins in Python and JavaScript, from nothing: `recohost plugin new --lang python|js`
//! generates a project whose own tests pass (pytest, node's test runner) and whose one build
//! command (`./build.sh`, `npm run build`) makes a component that passes `plugin check`; a
//! running server then loads both from new TOML entries, no restart, and serves 10
//! recommendations from each. And the sandbox holds a Python plugin that loops, hoards memory
//! or sleeps to its limits, as it does the Rust fixtures, and a trap caused by an escaping
//! exception carries its traceback.
//!
//! The toolchains come from the public registries (componentize-py from PyPI into the
//! project's own virtualenv, componentize-js from npm); node and npm from Debian (`.ci/run`
//! installs them). Where a registry cannot be reached the test says so and stops, unless
//! `RECOHOST_REQUIRE_REGISTRIES` is set (`.ci/run` sets it): then it fails.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use recohost_e2e::{Server, binary, check_failure, config_text, plugin_check, succeed};
use serde_json::json;

/// A registry and how to ask it whether it answers: through the tool that installs from it,
/// so that its proxy and certificate settings are the ones used (pip's and npm's config).
struct Registry {
    name: &'static str,
    probe: fn() -> Command,
}

const PYPI: Registry = Registry {
    name: "PyPI",
    probe: || {
        let mut command = Command::new("python3");
        command.args([
            "-c",
            "import urllib.request; urllib.request.urlopen('https://pypi.org/simple/componentize-py/', timeout=20)",
        ]);
        command
    },
};

const NPM: Registry = Registry {
    name: "npm",
    probe: || {
        let mut command = Command::new("npm");
        command.args([
            "view",
            "@bytecodealliance/componentize-js@0.23.0",
            "version",
        ]);
        command
    },
};

/// Whether `registry` answers. If not, the test is skipped with a message, or fails where the
/// registries are required.
fn registry_reachable(registry: Registry) -> bool {
    let problem = match (registry.probe)().output() {
        Ok(output) if output.status.success() => return true,
        Ok(output) => String::from_utf8_lossy(&output.stderr)
            .lines()
            .last()
            .unwrap_or_default()
            .to_string(),
        Err(error) => error.to_string(),
    };
    let name = registry.name;
    assert!(
        std::env::var_os("RECOHOST_REQUIRE_REGISTRIES").is_none(),
        "{name} is unreachable ({problem}) and RECOHOST_REQUIRE_REGISTRIES is set"
    );
    eprintln!(
        "SKIPPED: {name} is unreachable ({problem}); the plugin toolchain cannot be installed"
    );
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

/// Generates, tests and builds a JavaScript plugin; its component.
fn js_plugin(name: &str, parent: &Path) -> PathBuf {
    let project = new_project(name, "js", parent);
    succeed(
        Command::new("npm")
            .args(["install", "--no-audit", "--no-fund"])
            .current_dir(&project),
    );
    let tests = stdout_of(Command::new("npm").arg("test").current_dir(&project));
    assert!(
        tests.contains("# pass 6") && tests.contains("# fail 0"),
        "{tests}"
    );
    succeed(
        Command::new("npm")
            .args(["run", "build"])
            .current_dir(&project),
    );
    project.join(format!("{name}.wasm"))
}

#[test]
fn python_and_javascript_plugins_from_nothing_pass_the_check_and_serve_without_a_restart() {
    let temp = tempfile::tempdir().unwrap();
    let mut plugins = Vec::new();
    if registry_reachable(PYPI) {
        plugins.push(("py-pop", python_plugin("py-pop", temp.path())));
    }
    if registry_reachable(NPM) {
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
    std::fs::write(&partial, config).unwrap();
    std::fs::rename(&partial, &config_path).unwrap();
    server.wait_for("/plugins", Duration::from_secs(180), |listed| {
        plugins.iter().all(|(name, _)| {
            listed["plugins"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == *name && p["status"] == "ready")
        })
    });
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
}

#[test]
fn a_python_plugin_that_loops_hoards_memory_or_sleeps_is_stopped_by_its_limits() {
    if !registry_reachable(PYPI) {
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

    // The production limits, except for the memory bomb's cap (as for the Rust fixture).
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
            r#"{"memory_mb": 64}"#,
            "exceeded its memory limit of 64 MiB",
        ),
        (41, "{}", "exceeded its time budget of 250 ms"),
    ] {
        let config = format!(r#"{{"misbehave_only": {count}}}"#);
        let (passed, report) = plugin_check(&wasm, &config, limits);
        assert!(!passed, "count {count} passed:\n{report}");
        let failure = check_failure(&report);
        assert!(
            failure.contains(reason) && failure.contains(&format!("count {count}")),
            "count {count}: expected {reason:?} in {failure}"
        );
    }
    // Honest otherwise: the fixture is the generated plugin.
    let (passed, report) = plugin_check(&wasm, r#"{"misbehave_only": 1000}"#, "{}");
    assert!(passed, "{report}");
}
