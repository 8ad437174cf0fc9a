//! `cargo xtask fuzz [RUNS]`: runs each cargo-fuzz target (`fuzz/`) for a fixed number of
//! inputs (default 200,000) from the seeds in `fuzz/seeds/`, and fails on the first panic.
//! Needs the nightly toolchain and cargo-fuzz (`rustup toolchain install nightly`,
//! `cargo install cargo-fuzz`). Not part of `test`: the instrumented build of the server's
//! dependencies takes about 25 minutes on 2 cores the first time.

use std::process::Command;

use super::{root, run, target_dir};

const TARGETS: [&str; 3] = ["config_toml", "experiment_toml", "event_json"];

pub fn fuzz(runs: Option<&str>) -> Result<(), String> {
    let runs = runs.unwrap_or("200000");
    runs.parse::<u64>()
        .map_err(|_| format!("RUNS must be a number, got {runs:?}"))?;
    let have_fuzz = Command::new("cargo")
        .args(["+nightly", "fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_fuzz {
        return Err(
            "needs nightly and cargo-fuzz: rustup toolchain install nightly && cargo install cargo-fuzz"
                .into(),
        );
    }
    for target in TARGETS {
        // A working copy of the seeds: libFuzzer adds what it finds to its corpus folder.
        let corpus = target_dir().join("fuzz-corpus").join(target);
        std::fs::create_dir_all(&corpus).map_err(|e| e.to_string())?;
        let seeds = root().join("fuzz/seeds").join(target);
        for seed in std::fs::read_dir(&seeds).map_err(|e| format!("{}: {e}", seeds.display()))? {
            let seed = seed.map_err(|e| e.to_string())?.path();
            if let Some(name) = seed.file_name() {
                std::fs::copy(&seed, corpus.join(name)).map_err(|e| e.to_string())?;
            }
        }
        run(Command::new("cargo")
            .current_dir(root())
            .env("CARGO_TARGET_DIR", target_dir().join("fuzz"))
            .args(["+nightly", "fuzz", "run", "--fuzz-dir", "fuzz", target])
            .arg(&corpus)
            .args(["--", &format!("-runs={runs}"), "-seed=1", "-max_len=4096"]))?;
        println!("fuzz: {target}: {runs} inputs, no panic");
    }
    Ok(())
}
