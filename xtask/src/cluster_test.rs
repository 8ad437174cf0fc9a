//! `cargo xtask cluster-test`: the compose cluster (`docker-compose.cluster.yml`: PostgreSQL,
//! Redis, three recohost nodes, HAProxy) brought up from the image, and checked through the
//! balancer's one published port only:
//!
//! 1. recommendations and events are served, every node is in rotation, a learner is elected;
//! 2. `docker kill` of the learner's container under a steady load: another node learns
//!    within the lease, and the only failed requests are those sent before the kill had
//!    finished (in flight on the dying node: the balancer retries only requests whose
//!    connection failed, never one a node may have begun to act on);
//! 3. an experiment published through the balancer (so through one node) is served by the
//!    two live nodes, then by the killed one once started again;
//! 4. `down -v`, also on failure.
//!
//! Prints its figures: image size and build time, time to healthy, failover, propagation.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::docker::{self, Compose, exchange, expect, http};

const IMAGE: &str = "recohost:cluster-test";
const PROJECT: &str = "recohost-cluster-test";
const NODES: [&str; 3] = ["recohost-1", "recohost-2", "recohost-3"];
/// `[cluster] lease_secs` in deploy/kubernetes/base/recohost.toml, which the stack mounts.
const LEASE: Duration = Duration::from_secs(10);
/// Clients sending requests through the balancer, one at a time each, while the learner is
/// killed.
const CLIENTS: usize = 4;

pub fn cluster_test() -> Result<(), String> {
    docker::require_daemon()?;
    docker::ensure_base_images()?;
    let image = docker::build_image(IMAGE)?;
    let experiments = docker::scratch_experiments(PROJECT)?;
    let port = docker::free_port()?;
    let token = random_hex()?;
    let compose = Compose::new(
        PROJECT,
        "docker-compose.cluster.yml",
        &[
            ("RECOHOST_IMAGE", IMAGE.into()),
            ("RECOHOST_PORT", port.to_string()),
            ("RECOHOST_EXPERIMENTS", experiments.display().to_string()),
            ("RECOHOST_ADMIN_TOKEN", token.clone()),
            ("POSTGRES_PASSWORD", random_hex()?),
        ],
    );
    let result = run_checks(&compose, port, &token);
    compose.down(result.is_err());
    let _ = std::fs::remove_dir_all(experiments.parent().unwrap_or(&experiments));
    let figures = result?;
    println!(
        "cluster test passed through the balancer only:\n\
         - image {} {:.1} MB, built in {:.0} s\n\
         - `up` to three healthy nodes in rotation: {:.1} s\n\
         - learner {} killed: {} learned {:.1} s later (lease {} s)\n\
         - {} requests from {CLIENTS} clients during the failover: {} failed, all sent before \
         `docker kill` returned ({} ms); slowest request sent after it: {} ms\n\
         - experiment published through the balancer: served by both live nodes after {} ms\n\
         - killed node started again: back in rotation serving it after {:.1} s",
        image.tag,
        image.size_mb,
        image.build_secs,
        figures.healthy_secs,
        figures.killed,
        figures.successor,
        figures.failover_secs,
        LEASE.as_secs(),
        figures.requests,
        figures.failed,
        figures.kill_ms,
        figures.slowest_ms,
        figures.propagation_ms,
        figures.rejoin_secs,
    );
    Ok(())
}

struct Figures {
    healthy_secs: f64,
    killed: String,
    successor: String,
    failover_secs: f64,
    requests: usize,
    failed: usize,
    kill_ms: u128,
    slowest_ms: u128,
    propagation_ms: u128,
    rejoin_secs: f64,
}

fn run_checks(compose: &Compose, port: u16, token: &str) -> Result<Figures, String> {
    let up = Instant::now();
    compose.run(&["up", "-d", "--no-build"])?;
    let mut services = vec!["postgres", "redis"];
    services.extend(NODES);
    compose.wait_healthy(&services, Duration::from_secs(300))?;
    let nodes = wait_in_rotation(port, NODES.len(), Duration::from_secs(60))?;
    let healthy_secs = up.elapsed().as_secs_f64();
    println!("three nodes in rotation after {healthy_secs:.1} s: {nodes:?}");

    // Served through the balancer.
    let body = r#"{"user_id": 123, "n_recommendations": 5}"#;
    let answer = http(port, "POST", "/recommend", body)?;
    expect(&answer, "\"group\":\"treatment\"", "POST /recommend")?;
    let event = r#"{"user_id": 123, "item_id": 1, "event_type": "click"}"#;
    expect(
        &http(port, "POST", "/events", event)?,
        "\"status\":\"success\"",
        "POST /events",
    )?;
    let killed = wait_learner(port, None, Duration::from_secs(60))?;
    println!("learner elected: {killed}");

    // The learner killed under load.
    let load = Load::start(port);
    std::thread::sleep(Duration::from_secs(2));
    let container = compose.container(&killed)?;
    let kill_sent = Instant::now();
    docker::output(std::process::Command::new("docker").args(["kill", &container]))?;
    let killed_at = Instant::now();
    let successor = wait_learner(port, Some(&killed), LEASE + Duration::from_secs(10))?;
    let failover_secs = killed_at.elapsed().as_secs_f64();
    // Killed for good: `restart: unless-stopped` does not bring back a killed container, so
    // the survivors, not the same node restarted, carried the load and the learning.
    let running = docker::output(std::process::Command::new("docker").args([
        "inspect",
        "--format",
        "{{.State.Running}}",
        &container,
    ]))?;
    if running.trim() != "false" {
        return Err(format!("{killed} is running again after docker kill"));
    }
    std::thread::sleep(Duration::from_secs(2));
    let outcomes = load.stop();
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| !o.ok()).collect();
    let late: Vec<&&Outcome> = failed.iter().filter(|o| o.started > killed_at).collect();
    if !late.is_empty() {
        let offset = |at: Instant| {
            at.saturating_duration_since(kill_sent).as_millis() as i128
                - kill_sent.saturating_duration_since(at).as_millis() as i128
        };
        return Err(format!(
            "{} of {} requests failed during the failover, {} of them sent after the kill \
             (which took {} ms): {:?}",
            failed.len(),
            outcomes.len(),
            late.len(),
            killed_at.duration_since(kill_sent).as_millis(),
            failed
                .iter()
                .map(|o| format!(
                    "{} sent at {} ms, answered at {} ms",
                    o.status,
                    offset(o.started),
                    offset(o.finished)
                ))
                .collect::<Vec<_>>()
        ));
    }
    if failover_secs > (LEASE + Duration::from_secs(2)).as_secs_f64() {
        return Err(format!(
            "{successor} took over {failover_secs:.1} s after the kill, over the {} s lease",
            LEASE.as_secs()
        ));
    }
    // How long clients waited while the balancer found the node gone (retried connections).
    let slowest_ms = outcomes
        .iter()
        .filter(|o| o.started > killed_at)
        .map(|o| o.finished.duration_since(o.started).as_millis())
        .max()
        .unwrap_or(0);
    println!(
        "{successor} learns {failover_secs:.1} s after {killed} was killed; {} of {} requests failed",
        failed.len(),
        outcomes.len()
    );

    // An experiment published through the balancer reaches every node.
    let text = std::fs::read_to_string(super::root().join("experiments/model_comparison.toml"))
        .map_err(|e| e.to_string())?;
    let edited = text.replace("plugin = \"hybrid\"", "plugin = \"popularity\"");
    let publish = format!(
        "{{\"files\": {{\"model_comparison.toml\": {}}}}}",
        json_string(&edited)
    );
    let (status, answer) = exchange(
        port,
        "POST",
        "/admin/experiments",
        &format!("Authorization: Bearer {token}\r\n"),
        &publish,
    )?;
    if status != 200 {
        return Err(format!("POST /admin/experiments: {answer}"));
    }
    let revision = field(&answer, "revision")
        .ok_or_else(|| format!("no revision in {answer}"))?
        .to_string();
    let published_at = Instant::now();
    let live: BTreeSet<String> = NODES
        .iter()
        .filter(|n| **n != killed)
        .map(|n| n.to_string())
        .collect();
    wait_served(port, &revision, &live, Duration::from_secs(30))?;
    let propagation_ms = published_at.elapsed().as_millis();

    // The killed node, started again, rejoins with the cluster's experiments.
    let restarted_at = Instant::now();
    docker::output(std::process::Command::new("docker").args(["start", &container]))?;
    wait_served(
        port,
        &revision,
        &BTreeSet::from([killed.clone()]),
        Duration::from_secs(180),
    )?;
    let rejoin_secs = restarted_at.elapsed().as_secs_f64();

    Ok(Figures {
        healthy_secs,
        killed,
        successor,
        failover_secs,
        requests: outcomes.len(),
        failed: failed.len(),
        kill_ms: killed_at.duration_since(kill_sent).as_millis(),
        slowest_ms,
        propagation_ms,
        rejoin_secs,
    })
}

/// Waits until the balancer has sent `/health` to `count` different ready nodes; their ids.
fn wait_in_rotation(port: u16, count: usize, timeout: Duration) -> Result<Vec<String>, String> {
    let deadline = Instant::now() + timeout;
    let mut seen = BTreeSet::new();
    while seen.len() < count {
        if Instant::now() > deadline {
            return Err(format!("only {seen:?} in the balancer's rotation"));
        }
        if let Ok((200, answer)) = exchange(port, "GET", "/health/ready", "", "") {
            if let Some(node) = node_header(&answer) {
                seen.insert(node.to_string());
            }
        } else {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    Ok(seen.into_iter().collect())
}

/// Asks `/health` through the balancer until a node other than `not` says it is the
/// learner; its id.
fn wait_learner(port: u16, not: Option<&str>, timeout: Duration) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok((200, answer)) = exchange(port, "GET", "/health", "", "") {
            let node = answer.find("\"node\":").map(|at| &answer[at..]);
            if let Some(node) = node
                && field(node, "learner") == Some("true")
                && let Some(id) = field(node, "id")
                && Some(id) != not
            {
                return Ok(id.to_string());
            }
        }
        if Instant::now() > deadline {
            return Err(format!("no learner other than {not:?} within {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Recommends through the balancer until every node of `nodes` has answered from experiment
/// revision `revision` with the published arm (`popularity` for user 123's group).
fn wait_served(
    port: u16,
    revision: &str,
    nodes: &BTreeSet<String>,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let body = r#"{"user_id": 123, "n_recommendations": 5}"#;
    let mut served = BTreeSet::new();
    let mut last = String::new();
    while !nodes.is_subset(&served) {
        if Instant::now() > deadline {
            return Err(format!(
                "revision {revision} served only by {served:?} of {nodes:?}; last answer: {last}"
            ));
        }
        match exchange(port, "POST", "/recommend", "", body) {
            Ok((200, answer)) => {
                let arm = answer.find("\"experiment\":").map(|at| &answer[at..]);
                if field(&answer, "model") == Some("popularity")
                    && arm.and_then(|arm| field(arm, "revision")) == Some(revision)
                    && let Some(node) = node_header(&answer)
                {
                    served.insert(node.to_string());
                }
                last = answer;
            }
            Ok((_, answer)) => last = answer,
            Err(error) => last = error,
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Requests from [`CLIENTS`] threads through the balancer, one at a time each: recommendations
/// and events for a spread of users.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
}

struct Outcome {
    started: Instant,
    finished: Instant,
    /// The HTTP status line's code, or the transport error.
    status: String,
}

impl Outcome {
    fn ok(&self) -> bool {
        self.status.starts_with('2')
    }
}

impl Load {
    fn start(port: u16) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..CLIENTS)
            .map(|client| {
                let (stop, outcomes) = (stop.clone(), outcomes.clone());
                std::thread::spawn(move || {
                    let mut n = client;
                    while !stop.load(Ordering::Relaxed) {
                        n += CLIENTS;
                        let user = 1 + n % 600;
                        let (path, body) = if n % 3 == 0 {
                            (
                                "/events",
                                format!(
                                    r#"{{"user_id": {user}, "item_id": {}, "event_type": "click"}}"#,
                                    1 + n % 1000
                                ),
                            )
                        } else {
                            (
                                "/recommend",
                                format!(r#"{{"user_id": {user}, "n_recommendations": 10}}"#),
                            )
                        };
                        let started = Instant::now();
                        let status = match exchange(port, "POST", path, "", &body) {
                            Ok((code, _)) => code.to_string(),
                            Err(error) => error,
                        };
                        outcomes
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(Outcome {
                                started,
                                finished: Instant::now(),
                                status,
                            });
                    }
                })
            })
            .collect();
        Load {
            stop,
            threads,
            outcomes,
        }
    }

    fn stop(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            let _ = thread.join();
        }
        std::mem::take(&mut *self.outcomes.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The answering node, from the `x-recohost-node` response header.
fn node_header(response: &str) -> Option<&str> {
    response.split("\r\n\r\n").next()?.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("x-recohost-node")
            .then_some(value.trim())
    })
}

/// The first `"key":value` in `json` (a string without its quotes, or a bare scalar): enough
/// for the flat fields this test reads, without a JSON parser in a dependency-free xtask.
fn field<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let needle = format!("\"{key}\":");
    let rest = &json[json.find(&needle)? + needle.len()..];
    if let Some(string) = rest.strip_prefix('"') {
        return string.split('"').next();
    }
    rest.split([',', '}']).next().map(str::trim)
}

/// `text` as a JSON string literal.
fn json_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// 16 random bytes as hex, for the stack's admin token and database password.
fn random_hex() -> Result<String, String> {
    let mut bytes = [0u8; 16];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").map_err(|e| e.to_string())?,
        &mut bytes,
    )
    .map_err(|e| e.to_string())?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
