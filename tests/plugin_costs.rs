//! What a plugin costs in each language: the same algorithm (the most-liked items, the
//! project `recohost plugin new` generates) in Rust, Python and JavaScript, built by its own
//! toolchain and measured by `recohost plugin check --dataset demo` on the server's demo
//! data, printed as one table (docs/plugins.md shows it).
//!
//!     cargo xtask plugin-costs
//!
//! Per language: the component's size; its build (Python's includes making the virtualenv
//! when missing and the model's tests; JavaScript's `npm install` is not counted); `load`
//! (compile, instantiate, `configure`); a new instance from the compiled component
//! (instantiate, `configure`, `load` of the snapshot: what the server pays per serving
//! instance) and its first `recommend`; `recommend` p50/p99 over 1,050 calls; `train` on the
//! demo's events; `update`; the instance's peak linear memory.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark driver: fail loudly

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use recohost_e2e::succeed;
use serde_json::Value;

fn binary() -> PathBuf {
    std::env::var_os("RECOHOST_BIN")
        .expect("RECOHOST_BIN: run it with `cargo xtask plugin-costs`")
        .into()
}

/// Builds the generated project of `lang` in `project`; the component and the build's
/// seconds.
fn build(lang: &str, project: &Path, name: &str) -> (PathBuf, f64) {
    let started = Instant::now();
    let wasm = match lang {
        "rust" => {
            // Beside the server's build, as the tests build generated crates.
            let target = binary()
                .parent()
                .unwrap()
                .parent()
                .unwrap()
                .join("plugin-new");
            succeed(
                Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
                    .args(["build", "--release", "--target", "wasm32-wasip2"])
                    .env("CARGO_TARGET_DIR", &target)
                    .current_dir(project),
            );
            target.join(format!(
                "wasm32-wasip2/release/{}.wasm",
                name.replace('-', "_")
            ))
        }
        "python" => {
            succeed(Command::new("./build.sh").current_dir(project));
            project.join(format!("{name}.wasm"))
        }
        "js" => {
            let install = Instant::now();
            succeed(
                Command::new("npm")
                    .args(["install", "--no-audit", "--no-fund"])
                    .current_dir(project),
            );
            let installing = install.elapsed();
            succeed(
                Command::new("npm")
                    .args(["run", "build"])
                    .current_dir(project),
            );
            return (
                project.join(format!("{name}.wasm")),
                (started.elapsed() - installing).as_secs_f64(),
            );
        }
        other => panic!("unknown language {other}"),
    };
    (wasm, started.elapsed().as_secs_f64())
}

fn check(wasm: &Path) -> Value {
    let output = Command::new(binary())
        .args(["plugin", "check", "--dataset", "demo", "--json"])
        .arg(wasm)
        .env("RECOHOST_LOG", "error")
        .output()
        .expect("plugin check starts");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "plugin check of {} printed no report ({error}): {}",
            wasm.display(),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    assert!(
        report["passed"].as_bool() == Some(true),
        "{} failed the check: {}",
        wasm.display(),
        report["failure"]
    );
    report
}

fn main() {
    let temp = tempfile::tempdir().unwrap();
    println!(
        "| language | component | build | load (compile, configure) | new instance | first recommend | recommend p50 / p99 | train | update | peak memory |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut dataset = Value::Null;
    for lang in ["rust", "python", "js"] {
        let name = format!("costs-{lang}");
        succeed(
            Command::new(binary())
                .args(["plugin", "new", &name, "--lang", lang, "--dir"])
                .arg(temp.path()),
        );
        let (wasm, build_secs) = build(lang, &temp.path().join(&name), &name);
        let report = check(&wasm);
        dataset = report["dataset"].clone();
        let f = &report["figures"];
        let number = |key: &str| f[key].as_f64().unwrap_or(f64::NAN);
        println!(
            "| {lang} | {:.1} MB | {build_secs:.1} s | {:.0} ms | {:.1} ms | {:.0} µs | {:.0} / {:.0} µs | {:.0} ms | {:.1} ms | {:.1} MiB |",
            report["size_bytes"].as_f64().unwrap() / 1e6,
            number("load_ms"),
            number("instance_start_ms"),
            number("first_recommend_us"),
            number("recommend_p50_us"),
            number("recommend_p99_us"),
            number("train_ms"),
            number("update_ms"),
            number("peak_memory_bytes") / (1024.0 * 1024.0),
        );
    }
    let d = &dataset;
    println!(
        "\nOn the demo data: {} items, {} users, {} events to train on, {} to update with.",
        d["items"], d["users"], d["train_events"], d["update_events"]
    );
}
