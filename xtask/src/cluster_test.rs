//! `cargo xtask cluster-test`: the compose cluster (`docker-compose.cluster.yml`: PostgreSQL,
//! Redis, three recohost nodes, HAProxy) brought up from the image, and checked through the
//! balancer's one published port only:
//!
//! 1. recommendations and events are served, every node is in rotation, a learner is elected;
//! 2. `docker kill` of the learner's container under a steady load: another node learns
//!    within the lease (plus a claim interval), and the only failed requests are those in
//!    flight on the dying node (the balancer retries only requests whose connection failed,
//!    never one a node may have begun to act on);
//! 3. an experiment published through the balancer (so through one node) is served by the
//!    two live nodes, then by the killed one once started again, under load, without errors;
//! 4. Redis restarted under load: no failed request; PostgreSQL restarted under load: only
//!    events are refused (503 `database_unavailable`, nothing acknowledged), and stored
//!    again once it is back;
//! 5. a rolling restart (each node recreated in turn, as an upgrade does) under load: no
//!    failed request;
//! 6. `down -v`, also on failure.
//!
//! Prints its figures: image size and build time, time to healthy, failover, propagation,
//! and what clients saw in each fault.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::docker::{self, Compose, HAPROXY, POSTGRES, REDIS, RUST, exchange, expect, http};

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
    docker::ensure_base_images(&[RUST, POSTGRES, REDIS, HAPROXY])?;
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
    let f = result?;
    println!(
        "cluster test passed through the balancer only:\n\
         - image {IMAGE} {:.1} MB, built in {:.0} s\n\
         - `up` to three healthy nodes in rotation: {:.1} s\n\
         - learner {} killed: {} learned {:.1} s later (lease {} s)\n\
         - {} requests from {CLIENTS} clients meanwhile: {} failed, each in flight during the \
         {} ms `docker kill` took; slowest request sent after it: {} ms\n\
         - experiment published through the balancer: served by both live nodes after {} ms\n\
         - killed node started again: serving it through the balancer after {:.1} s; \
         {} requests meanwhile, none failed\n\
         - Redis restarted ({:.1} s): {} requests meanwhile, none failed\n\
         - PostgreSQL restarted ({:.1} s): {} requests meanwhile; {} events refused \
         (503 database_unavailable) over {:.1} s, no other failure\n\
         - rolling restart of the three nodes, one at a time: {:.1} s, {} requests meanwhile, \
         none failed",
        image.size_mb,
        image.build_secs,
        f.healthy_secs,
        f.killed,
        f.successor,
        f.failover_secs,
        LEASE.as_secs(),
        f.kill_requests,
        f.kill_failed,
        f.kill_ms,
        f.slowest_ms,
        f.propagation_ms,
        f.rejoin_secs,
        f.rejoin_requests,
        f.redis.restart_secs,
        f.redis.requests,
        f.postgres.restart_secs,
        f.postgres.requests,
        f.postgres.refused_events,
        f.postgres.refused_secs,
        f.rolling_secs,
        f.rolling_requests,
    );
    Ok(())
}

struct Figures {
    healthy_secs: f64,
    killed: String,
    successor: String,
    failover_secs: f64,
    kill_requests: usize,
    kill_failed: usize,
    kill_ms: u128,
    slowest_ms: u128,
    propagation_ms: u128,
    rejoin_secs: f64,
    rejoin_requests: usize,
    rolling_secs: f64,
    rolling_requests: usize,
    redis: Restart,
    postgres: Restart,
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
    docker(&["kill", &container])?;
    let killed_at = Instant::now();
    let successor = wait_learner(port, Some(&killed), LEASE + Duration::from_secs(10))?;
    let failover_secs = killed_at.elapsed().as_secs_f64();
    // Killed for good: `restart: unless-stopped` does not bring back a killed container, so
    // the survivors, not the same node restarted, carried the load and the learning.
    if docker(&["inspect", "--format", "{{.State.Running}}", &container])?.trim() != "false" {
        return Err(format!("{killed} is running again after docker kill"));
    }
    std::thread::sleep(Duration::from_secs(2));
    let outcomes = load.stop();
    // A failure is excused only if it was in flight while the node died (sent before
    // `docker kill` returned, answered after it was sent) and no live node answered it
    // (the balancer's own 502 names no node; a node's answer names it).
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| !o.ok()).collect();
    let unexcused: Vec<&&Outcome> = failed
        .iter()
        .filter(|o| {
            o.started >= killed_at
                || o.finished < kill_sent
                || o.node.as_ref().is_some_and(|node| *node != killed)
        })
        .collect();
    if !unexcused.is_empty() {
        return Err(format!(
            "{} of {} requests failed around the kill, {} of them not in flight on the dying \
             node (the kill took {} ms): {}",
            failed.len(),
            outcomes.len(),
            unexcused.len(),
            killed_at.duration_since(kill_sent).as_millis(),
            describe(&failed, kill_sent)
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
    let (kill_requests, kill_failed) = (outcomes.len(), failed.len());

    // An experiment published through the balancer reaches every live node.
    let revision = publish_experiment(port, token)?;
    let published_at = Instant::now();
    let live: BTreeSet<String> = NODES
        .iter()
        .filter(|n| **n != killed)
        .map(|n| n.to_string())
        .collect();
    wait_served(port, &revision, &live, Duration::from_secs(30))?;
    let propagation_ms = published_at.elapsed().as_millis();

    // The killed node, started again under load, rejoins with the cluster's experiments and
    // nobody sees an error while it does.
    let load = Load::start(port);
    let restarted_at = Instant::now();
    docker(&["start", &container])?;
    wait_served(
        port,
        &revision,
        &BTreeSet::from([killed.clone()]),
        Duration::from_secs(180),
    )?;
    let rejoin_secs = restarted_at.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(1));
    let outcomes = load.stop();
    no_failures(&outcomes, "while the killed node rejoined")?;
    let rejoin_requests = outcomes.len();

    let redis = restart_under_load(compose, port, "redis")?;
    no_failures(&redis.outcomes, "across a Redis restart")?;
    let postgres = restart_under_load(compose, port, "postgres")?;
    // Events cannot be stored without the database: refused with a clear 503 (nothing
    // acknowledged, the client retries). Everything else is answered.
    let refused: Vec<&Outcome> = postgres
        .outcomes
        .iter()
        .filter(|o| !o.ok() && o.path == "/events" && o.detail == "database_unavailable")
        .collect();
    let other: Vec<&Outcome> = postgres
        .outcomes
        .iter()
        .filter(|o| !o.ok() && !refused.iter().any(|r| std::ptr::eq(*r, *o)))
        .collect();
    if !other.is_empty() {
        return Err(format!(
            "failed across a PostgreSQL restart: {}",
            describe(&other, postgres.sent)
        ));
    }
    let refused_secs = match (refused.first(), refused.last()) {
        (Some(first), Some(last)) => last.finished.duration_since(first.started).as_secs_f64(),
        _ => 0.0,
    };
    let refused_events = refused.len();

    // A rolling restart, as an upgrade does it: one node at a time replaced under load
    // (SIGTERM: readiness drops, the balancer stops sending, requests in flight finish).
    let load = Load::start(port);
    let rolling_started = Instant::now();
    for node in NODES {
        compose.run(&["up", "-d", "--no-deps", "--force-recreate", node])?;
        compose.wait_healthy(&[node], Duration::from_secs(120))?;
        wait_in_rotation(port, NODES.len(), Duration::from_secs(60))?;
    }
    let rolling_secs = rolling_started.elapsed().as_secs_f64();
    let outcomes = load.stop();
    no_failures(&outcomes, "during the rolling restart")?;
    let rolling_requests = outcomes.len();

    Ok(Figures {
        healthy_secs,
        killed,
        successor,
        failover_secs,
        kill_requests,
        kill_failed,
        kill_ms: killed_at.duration_since(kill_sent).as_millis(),
        slowest_ms,
        propagation_ms,
        rejoin_secs,
        rejoin_requests,
        rolling_secs,
        rolling_requests,
        postgres: Restart {
            refused_events,
            refused_secs,
            ..postgres
        },
        redis,
    })
}

/// A dependency restarted (`docker restart`) while clients send requests through the
/// balancer, until an event is stored again after it.
struct Restart {
    sent: Instant,
    restart_secs: f64,
    requests: usize,
    outcomes: Vec<Outcome>,
    refused_events: usize,
    refused_secs: f64,
}

fn restart_under_load(compose: &Compose, port: u16, service: &str) -> Result<Restart, String> {
    let container = compose.container(service)?;
    let load = Load::start(port);
    std::thread::sleep(Duration::from_secs(1));
    let sent = Instant::now();
    docker(&["restart", &container])?;
    let restart_secs = sent.elapsed().as_secs_f64();
    compose.wait_healthy(&[service], Duration::from_secs(60))?;
    // Until the load has stored events again after the restart (nodes reconnect by
    // themselves), and a second more.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !load.stored_event_since(sent + Duration::from_secs_f64(restart_secs)) {
        if Instant::now() > deadline {
            let outcomes = load.stop();
            return Err(format!(
                "no event stored within a minute of restarting {service}: {}",
                describe(
                    &outcomes.iter().filter(|o| !o.ok()).collect::<Vec<_>>(),
                    sent
                )
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    let outcomes = load.stop();
    println!(
        "{service} restarted in {restart_secs:.1} s under load: {} requests, {} not answered 2xx",
        outcomes.len(),
        outcomes.iter().filter(|o| !o.ok()).count()
    );
    Ok(Restart {
        sent,
        restart_secs,
        requests: outcomes.len(),
        outcomes,
        refused_events: 0,
        refused_secs: 0.0,
    })
}

fn no_failures(outcomes: &[Outcome], when: &str) -> Result<(), String> {
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| !o.ok()).collect();
    match (failed.first(), outcomes.first()) {
        (None, _) => Ok(()),
        (Some(_), Some(first)) => Err(format!(
            "{} of {} requests failed {when}: {}",
            failed.len(),
            outcomes.len(),
            describe(&failed, first.started)
        )),
        (Some(_), None) => unreachable!("a failure is an outcome"),
    }
}

/// The failed requests, with times in ms relative to `since` (negative: before it).
fn describe(failed: &[&Outcome], since: Instant) -> String {
    let offset = |at: Instant| {
        at.saturating_duration_since(since).as_millis() as i128
            - since.saturating_duration_since(at).as_millis() as i128
    };
    failed
        .iter()
        .take(20)
        .map(|o| {
            format!(
                "{} {} {} from {} sent at {} ms, answered at {} ms",
                o.path,
                o.status,
                o.detail,
                o.node.as_deref().unwrap_or("the balancer"),
                offset(o.started),
                offset(o.finished)
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Publishes the shipped experiment with the treatment arm on `popularity` through the
/// balancer; the new revision's number.
fn publish_experiment(port: u16, token: &str) -> Result<String, String> {
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
    field(&answer, "revision")
        .map(str::to_string)
        .ok_or_else(|| format!("no revision in {answer}"))
}

fn docker(args: &[&str]) -> Result<String, String> {
    docker::output(std::process::Command::new("docker").args(args))
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
/// and events for a spread of users. Stopped by [`Load::stop`], or when dropped (a check
/// that failed half-way must not leave clients running while the stack is torn down).
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
}

struct Outcome {
    path: &'static str,
    started: Instant,
    finished: Instant,
    /// The HTTP status, 0 for a transport error.
    status: u16,
    /// The error's code from the body (`database_unavailable`...), or the transport error.
    detail: String,
    /// The node that answered (`x-recohost-node`); none when the balancer answered itself.
    node: Option<String>,
}

impl Outcome {
    fn ok(&self) -> bool {
        (200..300).contains(&self.status)
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
                        let outcome = one_request(port, n);
                        outcomes
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(outcome);
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

    /// Whether an event sent after `since` has been stored.
    fn stored_event_since(&self, since: Instant) -> bool {
        self.outcomes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|o| o.path == "/events" && o.ok() && o.started > since)
    }

    fn stop(mut self) -> Vec<Outcome> {
        self.join();
        let mut outcomes =
            std::mem::take(&mut *self.outcomes.lock().unwrap_or_else(|p| p.into_inner()));
        outcomes.sort_by_key(|o| o.started);
        outcomes
    }

    fn join(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.join();
    }
}

/// Request `n` of the load: every third an event, else a recommendation.
fn one_request(port: u16, n: usize) -> Outcome {
    let user = 1 + n % 600;
    let (path, body) = if n.is_multiple_of(3) {
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
    let (status, detail, node) = match exchange(port, "POST", path, "", &body) {
        Ok((status, response)) => {
            let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
            let detail = field(body, "code").unwrap_or_default().to_string();
            (status, detail, node_header(&response).map(str::to_string))
        }
        Err(error) => (0, error, None),
    };
    Outcome {
        path,
        started,
        finished: Instant::now(),
        status,
        detail,
        node,
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
