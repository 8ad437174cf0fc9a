//! `cargo xtask api-check`: a property-based run of the whole HTTP API with schemathesis (from
//! PyPI, in a virtualenv kept next to the cargo target directory), driven by the server's own
//! `/openapi.json`, against a real server over demo data with every bundled plugin.
//!
//! Every check schemathesis has runs except `positive_data_acceptance`: the schema cannot say
//! everything the server validates against its state and configuration (an event's item must
//! exist, a `rate` event needs a rating within `[events]` bounds, timestamps may not be in the
//! future, `n_recommendations` is capped by `max_recommendations`), so schema-valid requests
//! are rightly refused with 400 or 404. Everything else must hold: no 5xx, documented status
//! codes, content types and headers, responses valid against their schemas, schema-violating
//! requests refused, operator actions refused without the token.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::{root, run, target_dir};

/// Pinned so that a new release cannot change what passes.
const SCHEMATHESIS: &str = "schemathesis==4.32.5";
const ADMIN_TOKEN: &str = "api-check-admin-token-0123456789";
/// Cases per operation and phase; the run takes about a minute on 2 cores.
const MAX_EXAMPLES: &str = "100";

pub fn api_check() -> Result<(), String> {
    let st = schemathesis()?;
    let work = target_dir().join("api-check");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    let mut server = Server::start(&work)?;
    let report_dir = work.join("report");
    let result = run(Command::new(&st)
        .current_dir(&work)
        .arg("run")
        .arg(format!("{}/openapi.json", server.base))
        .args([
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
        ])
        .args(["--max-examples", MAX_EXAMPLES, "--seed", "1"])
        .args(["--header", &format!("Authorization: Bearer {ADMIN_TOKEN}")])
        .args(["--report", "json", "--report-dir"])
        .arg(&report_dir));
    let alive = server
        .child
        .try_wait()
        .map_err(|e| e.to_string())?
        .is_none();
    server.stop();
    result?;
    if !alive {
        return Err("the server exited during the run".into());
    }
    // The figures for the docs, from schemathesis's own JSON report.
    let summary = Command::new("python3")
        .arg("-c")
        .arg(
            "import json,sys,glob; d=json.load(open(sorted(glob.glob(sys.argv[1]+'/*.json'))[-1]));\
             t=d['test_cases']; o=d['operations'];\
             print(f\"schemathesis: {o['tested']} operations, {t['generated']} cases, \
{t['with_failures']} with failures, {len(d['errors'])} errors; the server stayed up\")",
        )
        .arg(&report_dir)
        .output()
        .map_err(|e| e.to_string())?;
    print!("{}", String::from_utf8_lossy(&summary.stdout));
    Ok(())
}

/// The `st` executable, installing schemathesis into a virtualenv on first use.
fn schemathesis() -> Result<PathBuf, String> {
    let venv = target_dir().join("schemathesis-venv");
    let st = venv.join("bin/st");
    let marker = venv.join(SCHEMATHESIS);
    if st.exists() && marker.exists() {
        return Ok(st);
    }
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    run(Command::new(venv.join("bin/pip")).args(["install", "--quiet", SCHEMATHESIS]))?;
    std::fs::write(&marker, "").map_err(|e| e.to_string())?;
    Ok(st)
}

struct Server {
    child: Child,
    base: String,
}

impl Server {
    /// The release server on a free port over fresh demo data, with the bundled plugins, the
    /// shipped experiment, a fallback plugin and an admin token.
    fn start(work: &Path) -> Result<Self, String> {
        let plugins = root().join("dist/plugins");
        let mut config = format!(
            "bind = \"127.0.0.1:0\"\ndefault_model = \"hybrid\"\nfallback_model = \"popularity\"\n\
             admin_token = \"{ADMIN_TOKEN}\"\n"
        );
        for plugin in super::PLUGINS {
            config.push_str(&format!(
                "[[plugins]]\nname = \"{plugin}\"\npath = {:?}\n",
                plugins.join(format!("{plugin}.wasm")).display().to_string()
            ));
        }
        let config_path = work.join("recohost.toml");
        std::fs::write(&config_path, config).map_err(|e| e.to_string())?;
        let mut child = Command::new(target_dir().join("release/recohost"))
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .arg("--data-dir")
            .arg(work.join("data"))
            .arg("--experiments")
            .arg(root().join("experiments"))
            .env("RECOHOST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start the server: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let base = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(address) = line.strip_prefix("recohost listening on ") {
                        break address.trim().to_string();
                    }
                }
                _ => return Err("the server exited before listening".into()),
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Ok(Self { child, base })
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}
