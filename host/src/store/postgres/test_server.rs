//! A real PostgreSQL server for tests: Debian's `postgresql` package, `initdb` into a fresh
//! directory, `postgres` on a free loopback port. The store's test suite (`store/tests.rs`)
//! and the end-to-end tests (`tests/harness.rs` includes this file) start it; `.ci/run`
//! installs the package. Only std and the package's own tools (`psql`, `pg_ctl`), so that
//! both crates can compile it.
//!
//! The server binaries are not on PATH in Debian (`/usr/lib/postgresql/N/bin`), and `initdb`
//! and `postgres` refuse to run as root, so as root they run as the `postgres` user. A small
//! shell watchdog, also the server's parent, stops it and removes its directory once the
//! test process is gone, so a failed test leaves nothing running.

// Each of the two crates that compile this file uses a part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A running test server. Databases made by [`TestPostgres::create_database`] live until
/// the server stops.
pub struct TestPostgres {
    dir: PathBuf,
    port: u16,
    bin: PathBuf,
    /// The shell that runs the server and outlives it only to clean up.
    watchdog: Mutex<Option<Child>>,
}

impl TestPostgres {
    /// One server per test process, started on first use.
    pub fn shared() -> &'static TestPostgres {
        static SHARED: OnceLock<TestPostgres> = OnceLock::new();
        SHARED.get_or_init(TestPostgres::start)
    }

    /// Starts a new server (initdb takes a second or two).
    pub fn start() -> TestPostgres {
        let bin = server_binaries().unwrap_or_else(|| {
            panic!(
                "PostgreSQL's server binaries are not installed (apt-get install postgresql; \
                 .ci/run installs it)"
            )
        });
        static STARTED: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "recohost-pg-{}-{}",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("cannot make the PostgreSQL test directory");
        hand_to_server_user(&dir);
        let data = dir.join("data");
        let status = as_server_user(&bin.join("initdb"))
            .args([
                "--auth=trust",
                "--username=postgres",
                "--encoding=UTF8",
                "--no-locale",
            ])
            .arg("--no-sync")
            .arg("-D")
            .arg(&data)
            .stdout(Stdio::null())
            .status()
            .expect("initdb runs");
        assert!(status.success(), "initdb failed in {}", dir.display());
        let server = TestPostgres {
            port: free_port(),
            dir,
            bin,
            watchdog: Mutex::new(None),
        };
        server.resume();
        server
    }

    /// The connection string of database `name` on this server.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Makes an empty database and returns its connection string.
    pub fn create_database(&self) -> String {
        static MADE: AtomicU32 = AtomicU32::new(0);
        let name = format!("test_{}", MADE.fetch_add(1, Ordering::Relaxed));
        self.admin(&format!("CREATE DATABASE {name}"));
        self.url(&name)
    }

    /// Runs `sql` in the `postgres` database.
    pub fn admin(&self, sql: &str) {
        self.query("postgres", sql);
    }

    /// The number `sql` (a `SELECT COUNT(*)` or the like) returns in database `name`.
    pub fn count(&self, name: &str, sql: &str) -> u64 {
        let text = self.query(name, sql);
        text.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{sql} gave {text:?}"))
    }

    /// Runs `sql` in database `name`, panicking on an error; what it printed, unaligned.
    fn query(&self, name: &str, sql: &str) -> String {
        let output = self
            .psql(name)
            .args(["-t", "-A", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .expect("psql runs");
        assert!(
            output.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// `psql` on database `name`, quiet, as the superuser.
    pub fn psql(&self, name: &str) -> Command {
        let mut command = Command::new(self.bin.join("psql"));
        command
            .args(["-X", "-q", "-h", "127.0.0.1", "-U", "postgres", "-d", name])
            .arg("-p")
            .arg(self.port.to_string());
        command
    }

    /// Stops the server as an operator would (`pg_ctl stop -m fast`): connections are
    /// closed, committed data stays.
    pub fn stop(&self) {
        let status = as_server_user(&self.bin.join("pg_ctl"))
            .args(["stop", "-m", "fast", "-w", "-D"])
            .arg(self.dir.join("data"))
            .stdout(Stdio::null())
            .status()
            .expect("pg_ctl runs");
        assert!(status.success(), "pg_ctl stop failed");
        if let Some(mut watchdog) = self
            .watchdog
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = watchdog.wait();
        }
    }

    /// Starts the server again on the same port and data, and waits until it accepts
    /// connections.
    pub fn resume(&self) {
        let postgres = self.bin.join("postgres");
        let script = format!(
            "'{postgres}' -D '{data}' -p {port} -k '{dir}' -c listen_addresses=127.0.0.1 \
                 -c max_connections=200 >'{dir}/server.log' 2>&1 & server=$!
             while [ -d /proc/{parent} ] && kill -0 $server 2>/dev/null; do sleep 0.2; done
             if [ ! -d /proc/{parent} ]; then
                 kill -INT $server 2>/dev/null; wait $server; rm -rf '{dir}'
             fi",
            postgres = postgres.display(),
            data = self.dir.join("data").display(),
            dir = self.dir.display(),
            port = self.port,
            parent = std::process::id(),
        );
        let watchdog = as_server_user(Path::new("/bin/sh"))
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start postgres");
        *self.watchdog.lock().unwrap_or_else(|p| p.into_inner()) = Some(watchdog);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .is_ok_and(|status| status.success());
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not start; see {}/server.log",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }
}

/// The newest installed server's `bin` directory.
fn server_binaries() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("postgres").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn is_root() -> bool {
    // The effective user, without a libc binding: what `id -u` prints.
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| output.stdout.trim_ascii() == b"0")
}

/// `program`, run as the `postgres` user when we are root (the server refuses root).
fn as_server_user(program: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("setpriv");
        command
            .args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
            .arg(program);
        command
    } else {
        Command::new(program)
    }
}

/// Gives `dir` to the `postgres` user when we are root.
fn hand_to_server_user(dir: &Path) {
    if !is_root() {
        return;
    }
    let id = |flag: &str| -> u32 {
        let output = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("id runs");
        assert!(
            output.status.success(),
            "there is no postgres user (apt-get install postgresql)"
        );
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .expect("a numeric id")
    };
    let (uid, gid) = (id("-u"), id("-g"));
    std::os::unix::fs::chown(dir, Some(uid), Some(gid)).expect("cannot chown the test directory");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}
