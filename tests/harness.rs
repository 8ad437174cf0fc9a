//! Test harness: starts the real `recohost` binary on a free port with a temporary data
//! directory and the real .wasm plugins, and talks HTTP to it.
//!
//! Run through `cargo xtask test`, which builds the plugins and the server first and tells the
//! harness where they are (`RECOHOST_BIN`, `RECOHOST_PLUGINS_DIR`). Without those variables the
//! harness looks in the usual places of a release build.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

pub mod browser;
// The same test server the store's own test suite uses (std only, so both crates compile it).
#[path = "../host/src/store/postgres/test_server.rs"]
mod postgres_server;
pub use postgres_server::TestPostgres;

pub const PLUGINS: [&str; 5] = [
    "popularity",
    "collaborative",
    "content",
    "hybrid",
    "ratings",
];

/// The repository's root folder.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The server binary.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("RECOHOST_BIN") {
        return PathBuf::from(path);
    }
    // target/release/deps/<test binary> -> target/release/recohost
    let exe = std::env::current_exe().expect("current test binary");
    let candidate = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("recohost"));
    match candidate {
        Some(path) if path.exists() => path,
        _ => panic!("the recohost binary is not built: run the tests with `cargo xtask test`"),
    }
}

/// The folder holding the bundled plugins' .wasm files.
pub fn plugins_dir() -> PathBuf {
    let dir = std::env::var_os("RECOHOST_PLUGINS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("dist/plugins"));
    assert!(
        dir.join("hybrid.wasm").exists(),
        "no plugins in {}: run the tests with `cargo xtask test`",
        dir.display()
    );
    dir
}

/// A test fixture component built by `cargo xtask test` (see tests/fixtures/).
pub fn fixture(name: &str) -> PathBuf {
    let path = plugins_dir()
        .parent()
        .expect("dist/")
        .join("fixtures")
        .join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is not built: run the tests with `cargo xtask test`",
        path.display()
    );
    path
}

/// The table-growing fixture (`tests/fixtures/table_grower.wat`) as a component, made once
/// per test process: the WAT core module with the WIT of `wit/` embedded, encoded by
/// wit-component.
pub fn table_grower() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let root = workspace_root();
            let mut resolve = wit_parser::Resolve::default();
            let (package, _) = resolve.push_dir(root.join("wit")).expect("wit/ parses");
            let world = resolve
                .select_world(&[package], Some("strategy"))
                .expect("the strategy world");
            let mut module = wat::parse_file(root.join("tests/fixtures/table_grower.wat"))
                .expect("table_grower.wat parses");
            wit_component::embed_component_metadata(
                &mut module,
                &resolve,
                world,
                wit_component::StringEncoding::UTF8,
            )
            .expect("embed the WIT");
            let component = wit_component::ComponentEncoder::default()
                .module(&module)
                .and_then(|encoder| encoder.validate(true).encode())
                .expect("a valid component");
            // Test processes run at once may all write it: each writes its own file and
            // renames it over the shared name (the bytes are the same).
            let fixtures = plugins_dir().parent().expect("dist/").join("fixtures");
            let path = fixtures.join("table_grower.wasm");
            let partial = fixtures.join(format!("table_grower.wasm.{}", std::process::id()));
            std::fs::write(&partial, component).expect("write the component");
            std::fs::rename(&partial, &path).expect("rename the component");
            path
        })
        .clone()
}

/// ML-100k, if this machine has it (tests must never copy it anywhere); says so when it is
/// absent, so a skipped test is visible in the output.
pub fn movielens_100k() -> Option<PathBuf> {
    let dir = workspace_root().join("../shared/datasets/ml-100k");
    if dir.join("u.data").exists() {
        Some(dir)
    } else {
        skipped("../shared/datasets/ml-100k is not on this machine");
        None
    }
}

/// The file where tests note what they skipped, beside the build (`cargo xtask test` empties
/// it first and prints it last: cargo shows nothing a passing test prints).
pub fn skipped_tests_file() -> PathBuf {
    binary()
        .parent()
        .expect("target/release/recohost")
        .join("skipped-tests.txt")
}

/// Says that (part of) a test was skipped and why, on stderr and in [`skipped_tests_file`].
pub fn skipped(reason: &str) {
    use std::io::Write;
    eprintln!("SKIPPED: {reason}");
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    let noted = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(skipped_tests_file())
        // One write of the whole line: tests run on threads and in processes at once, and an
        // appended write(2) this small is not interleaved with another.
        .and_then(|mut file| file.write_all(format!("{test}: {reason}\n").as_bytes()));
    if let Err(error) = noted {
        eprintln!(
            "cannot note the skip in {}: {error}",
            skipped_tests_file().display()
        );
    }
}

/// A config declaring the bundled plugins, with `top_level` TOML keys before the plugin tables.
pub fn config_text(top_level: &str) -> String {
    let mut text = String::from("bind = \"127.0.0.1:0\"\ndefault_model = \"hybrid\"\n");
    text.push_str(top_level);
    for plugin in PLUGINS {
        let path = plugins_dir().join(format!("{plugin}.wasm"));
        text.push_str(&format!(
            "\n[[plugins]]\nname = \"{plugin}\"\npath = {:?}\n",
            path.display().to_string()
        ));
    }
    text
}

/// A running server; killed when dropped.
pub struct Server {
    child: Child,
    pub base: String,
    pub data_dir: PathBuf,
    client: reqwest::blocking::Client,
    /// Everything the server has written to stderr (its log), drained by a thread so a
    /// chatty server never blocks on a full pipe.
    stderr: Arc<Mutex<String>>,
    _temp: Option<tempfile::TempDir>,
}

impl Server {
    /// A server over demo data in a fresh temporary data directory.
    pub fn start() -> Self {
        let temp = tempfile::tempdir().expect("temp dir");
        let data_dir = temp.path().join("data");
        let mut server = Self::start_in(&data_dir, &config_text("")).expect("server starts");
        server._temp = Some(temp);
        server
    }

    /// A server with `config` over `data_dir` (kept when the server stops). Returns the
    /// server's stderr if it exits before listening.
    pub fn start_in(data_dir: &Path, config: &str) -> Result<Self, String> {
        std::fs::create_dir_all(data_dir).map_err(|e| e.to_string())?;
        let config_path = data_dir.with_extension("toml");
        std::fs::write(&config_path, config).map_err(|e| e.to_string())?;
        let mut child = Command::new(binary())
            .args(["serve", "--config"])
            .arg(&config_path)
            .arg("--data-dir")
            .arg(data_dir)
            .env("RECOHOST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary().display()))?;
        let stderr = Arc::new(Mutex::new(String::new()));
        let stderr_reader = {
            let pipe = child.stderr.take().expect("piped stderr");
            let stderr = stderr.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let mut text = stderr.lock().unwrap_or_else(|p| p.into_inner());
                    text.push_str(&line);
                    text.push('\n');
                }
            })
        };
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let base = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(address) = line.strip_prefix("recohost listening on ") {
                        break address.trim().to_string();
                    }
                }
                _ => {
                    let _ = child.wait();
                    let _ = stderr_reader.join();
                    let text = stderr.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    return Err(text);
                }
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            child,
            base,
            data_dir: data_dir.to_path_buf(),
            client,
            stderr,
            _temp: None,
        })
    }

    /// The `/plugins` entry named `name`, if it serves.
    pub fn plugin_status(&self, name: &str) -> Option<Value> {
        let (status, body) = self.get("/plugins");
        assert_eq!(status, 200, "{body}");
        body["plugins"]
            .as_array()
            .expect("a plugins list")
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
    }

    /// The server's resident memory now and at its peak since start (or since the last
    /// [`Self::reset_peak_memory`]), in bytes: `VmRSS` and `VmHWM` of /proc.
    pub fn memory(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the server's /proc status");
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
                .map(|kib| kib * 1024)
                .unwrap_or_else(|| panic!("no {name} in /proc status"))
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// CPU time the server has used since it started, user and system, in seconds (/proc
    /// stat). With wrk on the same cores, CPU per request is a steadier measure of what a
    /// request costs than requests per second, which move with the machine's other load.
    pub fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .expect("the server's /proc stat");
        // After the command (in parentheses, which may hold spaces): the state, then ...,
        // utime and stime, the 14th and 15th fields of the line.
        let rest = &stat[stat.rfind(')').expect("a command in /proc stat") + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |index: usize| -> f64 {
            fields[index]
                .parse::<u64>()
                .unwrap_or_else(|_| panic!("/proc stat field {index}: {stat}")) as f64
        };
        (ticks(11) + ticks(12)) / clock_ticks_per_second()
    }

    /// Starts measuring the server's peak resident memory afresh (Linux: `5` to
    /// /proc/PID/clear_refs resets VmHWM to the current RSS).
    pub fn reset_peak_memory(&self) {
        std::fs::write(format!("/proc/{}/clear_refs", self.child.id()), "5")
            .expect("reset the peak RSS");
    }

    /// What the server has logged so far.
    pub fn log(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .expect("GET succeeds");
        decode(response)
    }

    /// GETs a non-JSON resource: (status, content type, body).
    pub fn get_text(&self, path: &str) -> (u16, String, String) {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .expect("GET succeeds");
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        (status, content_type, response.text().expect("body"))
    }

    /// POSTs a raw body with `Content-Type: application/json`.
    pub fn post_raw(&self, path: &str, body: &str) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .expect("POST succeeds");
        decode(response)
    }

    /// POSTs an oversized JSON body the way careful clients do, with `Expect: 100-continue`:
    /// a server that refuses it by its `Content-Length` answers before the body is sent. (A
    /// client that sends the body anyway races the server closing the connection, and may
    /// see a broken pipe instead of the answer.) Sends the body only after `100 Continue`.
    pub fn post_oversized(&self, path: &str, body: &str) -> (u16, Value) {
        use std::io::{Read, Write};
        let address = self.base.trim_start_matches("http://");
        let mut stream = std::net::TcpStream::connect(address).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        write!(
            stream,
            "POST {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .expect("send headers");
        let mut response = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream.read(&mut chunk).expect("read");
            if n == 0 {
                break;
            }
            response.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&response);
            if text.starts_with("HTTP/1.1 100") && text.contains("\r\n\r\n") {
                // The server wants the body after all (it did not check the length).
                response.clear();
                stream.write_all(body.as_bytes()).expect("send body");
            }
        }
        let text = String::from_utf8_lossy(&response).to_string();
        let status: u16 = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
        let json = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        let value = serde_json::from_str(json)
            .unwrap_or_else(|_| panic!("status {status}: body is not JSON: {json:?}"));
        (status, value)
    }

    /// POSTs `body` as it is with `Content-Type: content_type` (a plugin's .wasm).
    pub fn post_bytes(&self, path: &str, content_type: &str, body: Vec<u8>) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", content_type)
            .timeout(Duration::from_secs(120))
            .body(body)
            .send()
            .expect("POST succeeds");
        decode(response)
    }

    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post_raw(path, &body.to_string())
    }

    /// POSTs JSON and returns the whole response (for headers).
    pub fn post_response(&self, path: &str, body: &Value) -> reqwest::blocking::Response {
        self.client
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .expect("POST succeeds")
    }

    /// POSTs an empty body with `Authorization: Bearer <token>` when a token is given.
    pub fn post_as(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut request = self.client.post(format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        decode(request.send().expect("POST succeeds"))
    }

    /// POSTs `body` (JSON text, or nothing when empty) with `Authorization: Bearer <token>`
    /// when a token is given.
    pub fn post_raw_as(&self, path: &str, body: &str, token: Option<&str>) -> (u16, Value) {
        let mut request = self.client.post(format!("{}{path}", self.base));
        if !body.is_empty() {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        decode(request.send().expect("POST succeeds"))
    }

    /// Polls `GET path` until `done` accepts the body; panics after `timeout`.
    pub fn wait_for(&self, path: &str, timeout: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let (status, body) = self.get(path);
            if status == 200 && done(&body) {
                return body;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "gave up waiting on {path}; last answer: {body}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the learning run `update_id` has finished (its record is in the history and
    /// the buffer bookkeeping is done) and returns its record; panics after `timeout`.
    pub fn wait_for_run(&self, update_id: u64, timeout: Duration) -> Value {
        self.wait_for("/learning/stats", timeout, |stats| {
            stats["last_update"]["update_id"].as_u64() >= Some(update_id)
                && stats["running"].is_null()
        });
        let history = self.wait_for("/learning/history?limit=50", timeout, |body| {
            body["updates"]
                .as_array()
                .unwrap_or(&Vec::new())
                .iter()
                .any(|run| run["update_id"] == update_id)
        });
        history["updates"]
            .as_array()
            .and_then(|runs| runs.iter().find(|run| run["update_id"] == update_id))
            .cloned()
            .expect("the run is in the history")
    }

    /// The IDs of every item `user_id` interacted with, as JSON values.
    pub fn seen_items(&self, user_id: &str) -> Vec<Value> {
        let (status, user) = self.get(&format!("/users/{user_id}?limit=1000"));
        assert_eq!(status, 200, "{user}");
        user["recent_events"]
            .as_array()
            .expect("recent_events")
            .iter()
            .map(|event| event["item_id"].clone())
            .collect()
    }

    /// Asks the server to stop, as an orchestrator does (SIGTERM).
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -TERM {}", self.child.id());
    }

    /// Waits up to `timeout` for the server to exit; whether it did, and with success.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<bool> {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status.success());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Stops the server the hard way (SIGKILL).
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn decode(response: reqwest::blocking::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().expect("body");
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("status {status}: body is not JSON: {text:?}"));
    (status, body)
}

/// Asserts the JSON error shape and returns the error code.
pub fn error_code(body: &Value) -> String {
    let code = body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error body: {body}"));
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "error without message: {body}"
    );
    code.to_string()
}

/// A real `redis-server` (Debian's package) on a free port, without persistence; killed
/// when dropped.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
}

impl Redis {
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut redis = Self { child: None, port };
        redis.restart();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it again on the same port (after [`Redis::kill`]).
    pub fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (apt-get install redis-server; .ci/run installs it)");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs `redis-cli` against it; what it printed.
    pub fn cli(&self, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs (Debian's redis-tools, which redis-server brings)");
        assert!(output.status.success(), "redis-cli {args:?}: {output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// SIGSTOP (`resume`: SIGCONT): the server hangs with its connections open, like a
    /// Redis that stopped answering.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let status = Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// SIGKILL: the server vanishes mid-run, connections and all.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `recohost plugin check FILE --config CONFIG --limits LIMITS`: whether it passed, and its
/// report with anything it logged.
pub fn plugin_check(file: &Path, config: &str, limits: &str) -> (bool, String) {
    let output = Command::new(binary())
        .args(["plugin", "check"])
        .arg(file)
        .args(["--config", config, "--limits", limits])
        .env("RECOHOST_LOG", "error")
        .output()
        .expect("plugin check starts");
    // Its log first: what follows the report's FAILED line is then the report's own.
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    (output.status.success(), text)
}

/// Why a `plugin check` failed: its report from the `FAILED:` line on (a trap's reason may
/// span lines: the guest's last output, the engine's backtrace).
pub fn check_failure(report: &str) -> &str {
    let start = report
        .find("\nFAILED: ")
        .unwrap_or_else(|| panic!("no FAILED line:\n{report}"));
    &report[start + 1..]
}

/// `plugin check` of a fixture that misbehaves at one list length (config
/// `{"misbehave_only": COUNT}`), under `limits`: it must fail at that length, for `reason`.
pub fn assert_check_fails_at(fixture: &Path, count: u32, limits: &str, reason: &str) {
    let config = format!(r#"{{"misbehave_only": {count}}}"#);
    let (passed, report) = plugin_check(fixture, &config, limits);
    assert!(!passed, "count {count} passed:\n{report}");
    let failure = check_failure(&report);
    assert!(
        failure.contains(reason) && failure.contains(&format!("count {count}")),
        "count {count}: expected {reason:?} in {failure}"
    );
}

/// Runs `command`, panicking with its output unless it succeeds.
pub fn succeed(command: &mut Command) -> Output {
    let output = command.output().expect("the command starts");
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The unit of /proc's CPU times (`getconf CLK_TCK`, 100 on Linux's usual builds).
fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        let output = Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .expect("getconf runs");
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .expect("getconf CLK_TCK prints a number")
    })
}
