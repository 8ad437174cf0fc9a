//! Three recohost nodes on one PostgreSQL (a real server started here from Debian's
//! package): every node serves, one learns, events posted to any node reach every node, the
//! learner's models reach every node, and killing the learner hands learning to another node
//! without losing an acknowledged event or reusing a model version.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use recohost_e2e::{PLUGINS, Redis, Server, TestPostgres, config_text};
use serde_json::{Value, json};

/// The learner's lease in these tests.
const LEASE_SECS: u64 = 2;

/// A node's config: the cluster's database and its Redis (the recommendation cache a
/// cluster shares by default).
fn node_config(url: &str, node: &str, redis: &Redis) -> String {
    config_text(&format!(
        "database_url = {url:?}\n[cluster]\nlease_secs = {LEASE_SECS}\nnode_id = {node:?}\n\
         [cache]\nredis_url = {:?}\nretry_after_ms = 200\n",
        redis.url()
    ))
}

/// Three nodes on a fresh database and a Redis of their own; the first starts alone,
/// seeding the demo data and training the first models, which the others then restore.
fn three_nodes(postgres: &TestPostgres) -> (String, Vec<Server>, tempfile::TempDir, Redis) {
    let url = postgres.create_database();
    let redis = Redis::start();
    let temp = tempfile::tempdir().unwrap();
    let nodes = ["a", "b", "c"]
        .iter()
        .map(|node| {
            Server::start_in(&temp.path().join(node), &node_config(&url, node, &redis)).unwrap()
        })
        .collect();
    (url, nodes, temp, redis)
}

fn is_learner(server: &Server) -> bool {
    server.get("/health").1["node"]["learner"] == true
}

/// Waits until exactly one of `nodes` is the learner; returns its index.
fn learner(nodes: &[&Server], within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let learners: Vec<usize> = (0..nodes.len()).filter(|&i| is_learner(nodes[i])).collect();
        if learners.len() == 1 {
            return learners[0];
        }
        assert!(
            Instant::now() < deadline,
            "{} learners after {within:?}",
            learners.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Each plugin's serving version on `server`.
fn versions(server: &Server) -> Vec<u64> {
    let (status, body) = server.get("/plugins");
    assert_eq!(status, 200, "{body}");
    PLUGINS
        .iter()
        .map(|name| {
            body["plugins"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == *name)
                .unwrap()["model_version"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

fn recommended(server: &Server, user: &str) -> HashSet<u64> {
    let (status, body) = server.post(
        "/recommend",
        &json!({"user_id": user, "n_recommendations": 50}),
    );
    assert_eq!(status, 200, "{body}");
    body["recommendations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["item_id"].as_u64().unwrap())
        .collect()
}

/// Runs an update on the learner and waits until every node serves its versions.
fn update_everywhere(nodes: &[&Server], learner: usize) -> Vec<u64> {
    let before = versions(nodes[learner]);
    let (status, answer) = nodes[learner].post_as("/learning/trigger-update", None);
    assert_eq!(status, 202, "{answer}");
    let learned = nodes[learner].wait_for("/learning/stats", Duration::from_secs(60), |stats| {
        stats["running"].is_null()
            && stats["pending"].is_null()
            && stats["last_update"]["update_id"] == answer["update_id"]
    });
    let after = versions(nodes[learner]);
    assert!(
        after.iter().zip(&before).all(|(new, old)| new > old),
        "the learner did not learn: {before:?} -> {after:?} {learned}"
    );
    let installed = Instant::now();
    for node in nodes {
        while versions(node) != after {
            assert!(
                installed.elapsed() < Duration::from_secs(5),
                "a node still serves {:?}, not {after:?}",
                versions(node)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    eprintln!(
        "every node served the new versions {:?} after the learner: {} ms",
        after,
        installed.elapsed().as_millis()
    );
    after
}

#[test]
fn every_node_sees_every_event_one_learns_and_all_serve_its_models() {
    let postgres = TestPostgres::shared();
    let (_url, nodes, _temp, _redis) = three_nodes(postgres);
    let nodes: Vec<&Server> = nodes.iter().collect();
    let first = learner(&nodes, Duration::from_secs(LEASE_SECS + 5));
    let follower = (first + 1) % 3;
    for (i, node) in nodes.iter().enumerate() {
        let health = node.get("/health").1;
        assert_eq!(health["database"], "postgres", "{health}");
        assert_eq!(health["node"]["id"], ["a", "b", "c"][i]);
        // Behind a balancer, each answer names the node that gave it.
        let answer = node.post_response("/recommend", &json!({"user_id": 1}));
        assert_eq!(
            answer.headers()["x-recohost-node"].to_str().unwrap(),
            ["a", "b", "c"][i]
        );
    }
    // Only the learner takes learning requests.
    let (status, answer) = nodes[follower].post_as("/learning/trigger-update", None);
    assert_eq!(
        (status, answer["status"].as_str()),
        (409, Some("not_the_learner"))
    );

    // Events posted to one node change what another recommends to that user.
    let before = recommended(nodes[2], "roamer");
    let items: Vec<u64> = before.iter().copied().take(5).collect();
    for item in &items {
        let (status, body) = nodes[0].post(
            "/events",
            &json!({"user_id": "roamer", "item_id": item, "event_type": "purchase"}),
        );
        assert_eq!(status, 200, "{body}");
    }
    let posted = Instant::now();
    loop {
        let now = recommended(nodes[2], "roamer");
        if items.iter().all(|item| !now.contains(item)) {
            break;
        }
        assert!(
            posted.elapsed() < Duration::from_secs(1),
            "node c still recommends items the user bought at node a a second later"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "node c excluded what was bought at node a after {} ms",
        posted.elapsed().as_millis()
    );
    nodes[1].wait_for("/users/roamer?limit=1000", Duration::from_secs(1), |user| {
        user["recent_events"].as_array().map(Vec::len) == Some(items.len())
    });

    // The learner's update reaches every node.
    update_everywhere(&nodes, first);
}

#[test]
fn killing_the_learner_hands_learning_over_and_loses_nothing() {
    let postgres = TestPostgres::shared();
    let (url, mut nodes, _temp, _redis) = three_nodes(postgres);
    let refs: Vec<&Server> = nodes.iter().collect();
    let first = learner(&refs, Duration::from_secs(LEASE_SECS + 5));
    let demo_events = refs[0].get("/health").1["events"].as_u64().unwrap();
    let bases: Arc<Vec<String>> = Arc::new(nodes.iter().map(|n| n.base.clone()).collect());
    let killed = Arc::new(AtomicU64::new(u64::MAX));

    let load = Load::start(bases, killed.clone());
    std::thread::sleep(Duration::from_secs(2));
    let versions_before = versions(&nodes[first]);
    killed.store(first as u64, Ordering::Relaxed);
    nodes.remove(first).kill();
    let killed_at = Instant::now();
    let survivors: Vec<&Server> = nodes.iter().collect();
    let next = learner(&survivors, Duration::from_secs(LEASE_SECS + 5));
    eprintln!(
        "a new learner after {} ms (lease {LEASE_SECS} s)",
        killed_at.elapsed().as_millis()
    );
    // The new learner resumes by itself: a `takeover` run learns what the old one had not,
    // and every survivor serves its versions.
    survivors[next].wait_for(
        "/learning/history?limit=50",
        Duration::from_secs(30),
        |history| {
            history["updates"]
                .as_array()
                .unwrap()
                .iter()
                .any(|run| run["trigger"] == "takeover" && run["models_updated"].as_u64() > Some(0))
        },
    );
    for survivor in &survivors {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !versions(survivor)
            .iter()
            .zip(&versions_before)
            .all(|(now, before)| now > before)
        {
            assert!(
                Instant::now() < deadline,
                "a survivor still serves {:?} (before the kill: {versions_before:?})",
                versions(survivor)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    eprintln!(
        "every survivor served the new learner's versions {} ms after the kill",
        killed_at.elapsed().as_millis()
    );
    std::thread::sleep(Duration::from_secs(1));
    let acknowledged = load.finish();

    // Every acknowledged event is stored exactly once...
    let database = url.rsplit('/').next().unwrap();
    let count = |sql: &str| TestPostgres::shared().count(database, sql);
    assert_eq!(
        count("SELECT COUNT(*) FROM events"),
        demo_events + acknowledged
    );
    assert_eq!(count("SELECT COUNT(*) FROM idempotency_keys"), acknowledged);
    // ...and learned: once the new learner has taken in every node's events,
    // under versions never used before, which every survivor then serves.
    survivors[next].wait_for("/health", Duration::from_secs(10), |health| {
        health["events"].as_u64() == Some(demo_events + acknowledged)
    });
    // its update takes every plugin to the newest event,
    let after = update_everywhere(&survivors, next);
    assert!(
        after
            .iter()
            .zip(&versions_before)
            .all(|(new, old)| new > old),
        "{versions_before:?} -> {after:?}"
    );
    let newest = count("SELECT MAX(id) FROM events");
    let stats = survivors[next].get("/learning/stats").1;
    for plugin in PLUGINS {
        assert_eq!(
            stats["models"][plugin]["through_event"].as_u64(),
            Some(newest),
            "{plugin}: {stats}"
        );
    }
    // No version made twice: a second model under a stored (plugin, version) could not be
    // stored (the table's key), and no learning run number was used twice.
    let survivor_log = survivors.iter().map(|s| s.log()).collect::<String>();
    for sign in [
        "cannot store the snapshot",
        "cannot record the learning run",
    ] {
        assert!(!survivor_log.contains(sign), "{survivor_log}");
    }
}

/// Clients of a cluster under test: four post events round-robin to every node, each event
/// with its own key, moving on to the next node (same key) when one does not answer or
/// answers 503; one asks every node but the `down` one for recommendations and records any
/// 5xx.
struct Load {
    stop: Arc<AtomicBool>,
    acknowledged: Arc<AtomicU64>,
    posters: Vec<std::thread::JoinHandle<()>>,
    recommender: std::thread::JoinHandle<Vec<String>>,
}

impl Load {
    fn start(bases: Arc<Vec<String>>, down: Arc<AtomicU64>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acknowledged = Arc::new(AtomicU64::new(0));
        let posters = (0..4u64)
            .map(|client| {
                let (bases, stop, acknowledged) =
                    (bases.clone(), stop.clone(), acknowledged.clone());
                std::thread::spawn(move || {
                    let http = reqwest::blocking::Client::builder()
                        .timeout(Duration::from_secs(15))
                        .build()
                        .unwrap();
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let body = json!({"user_id": format!("c{client}-{}", i % 40), "item_id": 1 + (i * 7 + client) % 200, "event_type": "click"});
                        let mut node = (i + client) as usize % bases.len();
                        loop {
                            let response = http
                                .post(format!("{}/events", bases[node]))
                                .header("Idempotency-Key", format!("client-{client}-{i}"))
                                .json(&body)
                                .send();
                            match response {
                                Ok(response) if response.status() == 200 => break,
                                Ok(response) => {
                                    let status = response.status().as_u16();
                                    let answer: Value = response.json().unwrap();
                                    assert_eq!(status, 503, "{answer}");
                                }
                                Err(_) => {}
                            }
                            node = (node + 1) % bases.len();
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        acknowledged.fetch_add(1, Ordering::Relaxed);
                        i += 1;
                    }
                })
            })
            .collect();
        let recommender = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let http = reqwest::blocking::Client::new();
                let mut failures = Vec::new();
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let node = i % bases.len();
                    i += 1;
                    if down.load(Ordering::Relaxed) == node as u64 {
                        continue;
                    }
                    if let Ok(response) = http
                        .post(format!("{}/recommend", bases[node]))
                        .json(&json!({"user_id": format!("u{}", i % 100), "n_recommendations": 10}))
                        .send()
                        && response.status().is_server_error()
                        && down.load(Ordering::Relaxed) != node as u64
                    {
                        failures.push(format!("node {node}: {}", response.status()));
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                failures
            })
        };
        Self {
            stop,
            acknowledged,
            posters,
            recommender,
        }
    }

    /// Stops the clients, checks no recommendation failed, and returns how many events
    /// were acknowledged.
    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for poster in self.posters {
            poster.join().unwrap();
        }
        let failures = self.recommender.join().unwrap();
        assert!(failures.is_empty(), "{failures:?}");
        self.acknowledged.load(Ordering::Relaxed)
    }
}

#[test]
fn the_cluster_rides_out_a_postgres_restart_under_load() {
    // A server of its own: this test stops it.
    let postgres = TestPostgres::start();
    let (url, nodes, _temp, _redis) = three_nodes(&postgres);
    let refs: Vec<&Server> = nodes.iter().collect();
    learner(&refs, Duration::from_secs(LEASE_SECS + 5));
    let demo_events = refs[0].get("/health").1["events"].as_u64().unwrap();
    let bases: Arc<Vec<String>> = Arc::new(nodes.iter().map(|n| n.base.clone()).collect());
    let load = Load::start(bases, Arc::new(AtomicU64::new(u64::MAX)));
    std::thread::sleep(Duration::from_secs(1));
    postgres.stop();
    // Down longer than the lease: the learner must stop learning.
    std::thread::sleep(Duration::from_secs(LEASE_SECS + 1));
    assert!(
        refs.iter().all(|node| !is_learner(node)),
        "a node still counts itself learner with the database down"
    );
    postgres.resume();
    let next = learner(&refs, Duration::from_secs(LEASE_SECS + 10));
    std::thread::sleep(Duration::from_secs(1));
    let acknowledged = load.finish();

    // Nothing acknowledged lost or stored twice, and nothing refused stored.
    let database = url.rsplit('/').next().unwrap();
    assert_eq!(
        postgres.count(database, "SELECT COUNT(*) FROM events"),
        demo_events + acknowledged
    );
    assert_eq!(
        postgres.count(database, "SELECT COUNT(*) FROM idempotency_keys"),
        acknowledged
    );
    // Learning and distribution resumed without a restart.
    for node in &refs {
        node.wait_for("/health", Duration::from_secs(10), |health| {
            health["events"].as_u64() == Some(demo_events + acknowledged)
        });
    }
    update_everywhere(&refs, next);
}

/// A node's recommendation cache as `/health` reports it.
fn cache(node: &Server) -> Value {
    node.get("/health").1["cache"].clone()
}

#[test]
fn the_cluster_rides_out_a_redis_restart_under_load() {
    let postgres = TestPostgres::shared();
    let (url, nodes, _temp, mut redis) = three_nodes(postgres);
    let refs: Vec<&Server> = nodes.iter().collect();
    learner(&refs, Duration::from_secs(LEASE_SECS + 5));
    // A cluster shares its answers through Redis by default.
    for node in &refs {
        assert_eq!(cache(node)["backend"], "redis");
    }
    let demo_events = refs[0].get("/health").1["events"].as_u64().unwrap();
    let bases: Arc<Vec<String>> = Arc::new(nodes.iter().map(|n| n.base.clone()).collect());
    let load = Load::start(bases, Arc::new(AtomicU64::new(u64::MAX)));
    std::thread::sleep(Duration::from_secs(2));
    let hits_before: u64 = refs
        .iter()
        .map(|n| cache(n)["hits"].as_u64().unwrap())
        .sum();
    assert!(hits_before > 0, "the shared cache answers before the fault");
    redis.kill();
    std::thread::sleep(Duration::from_secs(2));
    let faults: u64 = refs
        .iter()
        .map(|n| cache(n)["faults"].as_u64().unwrap())
        .sum();
    assert!(faults > 0, "the nodes noticed Redis gone");
    redis.restart();
    // Back in use without a restart: the cache answers again.
    std::thread::sleep(Duration::from_secs(2));
    let hits_paused: u64 = refs
        .iter()
        .map(|n| cache(n)["hits"].as_u64().unwrap())
        .sum();
    std::thread::sleep(Duration::from_secs(1));
    let hits_after: u64 = refs
        .iter()
        .map(|n| cache(n)["hits"].as_u64().unwrap())
        .sum();
    assert!(
        hits_after > hits_paused,
        "no cache hits after Redis came back"
    );
    // No 5xx from /recommend (`finish` checks), nothing acknowledged lost or doubled.
    let acknowledged = load.finish();
    let database = url.rsplit('/').next().unwrap();
    let count = |sql: &str| TestPostgres::shared().count(database, sql);
    assert_eq!(
        count("SELECT COUNT(*) FROM events"),
        demo_events + acknowledged
    );
    assert_eq!(count("SELECT COUNT(*) FROM idempotency_keys"), acknowledged);
}

/// An experiment of `weights` between the collaborative and popularity plugins.
fn experiment(control: f64) -> String {
    format!(
        "id = \"arms\"\nname = \"Arms\"\nstatus = \"running\"\ncoverage = 1.0\n\
         [[groups]]\nname = \"control\"\nplugin = \"collaborative\"\nweight = {control}\n\
         [[groups]]\nname = \"treatment\"\nplugin = \"popularity\"\nweight = {}\n",
        1.0 - control
    )
}

/// Each of `users`' group in experiment `arms` on `node` (`None`: not in it).
fn groups(node: &Server, users: &[String]) -> Vec<Option<String>> {
    users
        .iter()
        .map(|user| {
            let (status, body) = node.get(&format!(
                "/users/{user}/experiment-group?experiment_id=arms"
            ));
            match status {
                200 => body["group_name"].as_str().map(str::to_string),
                _ => None,
            }
        })
        .collect()
}

#[test]
fn an_experiment_published_through_one_node_is_in_force_on_every_node() {
    let postgres = TestPostgres::shared();
    let (_url, nodes, temp, _redis) = three_nodes(postgres);
    let refs: Vec<&Server> = nodes.iter().collect();
    let users: Vec<String> = (1..=200).map(|u| u.to_string()).collect();
    let publish =
        |node: &Server, files: Value| node.post("/admin/experiments", &json!({ "files": files }));

    // An invalid revision is refused whole, on any node, and nothing changes.
    let (status, answer) = publish(
        refs[2],
        json!({"arms.toml": experiment(0.5), "broken.toml": "id = \"x\"\n[[groups]]\nplugin = \"nope\"\n"}),
    );
    assert_eq!(status, 422, "{answer}");
    let (status, answer) = publish(refs[2], json!({"../escape.toml": experiment(0.5)}));
    assert_eq!(status, 400, "{answer}");
    assert_eq!(
        refs[0].get("/health").1["experiments_revision"],
        Value::Null
    );

    // Published through node b: in force on every node within 2 s, the same arms for the
    // same users everywhere.
    let (status, answer) = publish(refs[1], json!({"arms.toml": experiment(0.5)}));
    assert_eq!(status, 200, "{answer}");
    let revision = answer["revision"].as_u64().unwrap();
    let published = Instant::now();
    for node in &refs {
        node.wait_for("/health", Duration::from_secs(2), |health| {
            health["experiments_revision"].as_u64() == Some(revision)
        });
    }
    eprintln!(
        "revision {revision} in force on every node after {} ms",
        published.elapsed().as_millis()
    );
    let first = groups(refs[0], &users);
    assert!(first.iter().all(Option::is_some), "{first:?}");
    for node in &refs[1..] {
        assert_eq!(groups(node, &users), first);
    }
    let (status, body) = refs[2].post(
        "/recommend",
        &json!({"user_id": "1", "n_recommendations": 5}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["experiment"]["id"], "arms", "{body}");
    assert_eq!(
        body["experiment"]["revision"].as_u64(),
        Some(revision),
        "{body}"
    );

    // The next revision moves users only where the weights say so, on every node alike.
    let (status, answer) = publish(refs[0], json!({"arms.toml": experiment(0.9)}));
    assert_eq!(status, 200, "{answer}");
    let next = answer["revision"].as_u64().unwrap();
    assert!(next > revision);
    for node in &refs {
        node.wait_for("/health", Duration::from_secs(2), |health| {
            health["experiments_revision"].as_u64() == Some(next)
        });
    }
    let after = groups(refs[0], &users);
    for node in &refs[1..] {
        assert_eq!(groups(node, &users), after);
    }
    let controls = after
        .iter()
        .filter(|g| g.as_deref() == Some("control"))
        .count();
    assert!(controls > 150, "{controls} of 200 in control at 90%");

    // The command line publishes a folder the same way (with node a's config: its plugins
    // and database_url); an invalid folder publishes nothing.
    let apply = |dir: &std::path::Path| {
        std::process::Command::new(recohost_e2e::binary())
            .args(["experiments", "apply"])
            .arg(dir)
            .arg("--config")
            .arg(temp.path().join("a.toml"))
            .output()
            .unwrap()
    };
    let folder = temp.path().join("experiments");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("arms.toml"), experiment(0.2)).unwrap();
    std::fs::write(folder.join("bad.toml"), "id = \"arms\"\n").unwrap();
    let refused = apply(&folder);
    assert!(!refused.status.success());
    std::fs::remove_file(folder.join("bad.toml")).unwrap();
    let output = apply(&folder);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains(&format!("revision {}", next + 1)),
        "{stdout}"
    );
    for node in &refs {
        node.wait_for("/health", Duration::from_secs(2), |health| {
            health["experiments_revision"].as_u64() == Some(next + 1)
        });
    }
}

/// `name`'s entry on `node`'s `/plugins`.
fn plugin_entry(node: &Server, name: &str) -> Value {
    node.plugin_status(name)
        .unwrap_or_else(|| panic!("{name} is not served: {}", node.get("/plugins").1))
}

#[test]
fn a_plugin_pushed_once_is_served_by_every_node_without_shared_files() {
    let postgres = TestPostgres::shared();
    let (url, nodes, temp, redis) = three_nodes(postgres);
    let refs: Vec<&Server> = nodes.iter().collect();
    // The .wasm to publish lives only here, and is deleted once published: the nodes can
    // only have it from the database.
    let upload = tempfile::tempdir().unwrap();
    let source = |plugin: &str| {
        let path = upload.path().join(format!("{plugin}-upload.wasm"));
        std::fs::copy(
            recohost_e2e::plugins_dir().join(format!("{plugin}.wasm")),
            &path,
        )
        .unwrap();
        path
    };
    let push = |node: &Server, name: &str, query: &str, wasm: Vec<u8>| {
        node.post_bytes(
            &format!("/admin/plugins/{name}{query}"),
            "application/wasm",
            wasm,
        )
    };

    // Refused whole, on any node, nothing published: not a component, a bad name, bad
    // limits, a config the plugin refuses.
    let popularity = source("popularity");
    let bytes = std::fs::read(&popularity).unwrap();
    for (name, query, wasm, status, code) in [
        ("trending", "", b"not wasm".to_vec(), 422, "invalid_plugin"),
        ("Trending!", "", bytes.clone(), 422, "invalid_plugin"),
        (
            "trending",
            "?limits=%7B%22memory_mb%22%3A0%7D",
            bytes.clone(),
            422,
            "invalid_plugin",
        ),
        (
            "trending",
            "?config=%7B%22surprise%22%3A1%7D",
            bytes.clone(),
            422,
            "invalid_plugin",
        ),
        (
            "trending",
            "?config=not-json",
            bytes.clone(),
            400,
            "invalid_query",
        ),
    ] {
        let (got, body) = push(refs[2], name, query, wasm);
        assert_eq!(
            (got, body["error"]["code"].as_str()),
            (status, Some(code)),
            "{name}{query}: {body}"
        );
    }
    let (status, body) = refs[2].post_raw("/admin/plugins/trending", "{}");
    assert_eq!(status, 415, "{body}");
    assert_eq!(refs[0].get("/health").1["plugins_revision"], Value::Null);

    // Published through node b as a new plugin with its own config: every node serves it
    // within 2 s of the answer, from the bytes in the database.
    let (status, answer) = push(
        refs[1],
        "trending",
        "?config=%7B%22half_life_days%22%3A7%7D",
        bytes,
    );
    assert_eq!(status, 200, "{answer}");
    std::fs::remove_file(&popularity).unwrap();
    let revision = answer["revision"].as_u64().unwrap();
    assert_eq!(answer["changes"]["added"], json!(["trending"]), "{answer}");
    let published = Instant::now();
    for node in &refs {
        node.wait_for("/health", Duration::from_secs(2), |health| {
            health["plugins_revision"].as_u64() == Some(revision)
        });
    }
    eprintln!(
        "plugin revision {revision} in force on every node after {} ms",
        published.elapsed().as_millis()
    );
    let mut trained = HashSet::new();
    for node in &refs {
        let entry = plugin_entry(node, "trending");
        assert_eq!(
            entry["published_revision"].as_u64(),
            Some(revision),
            "{entry}"
        );
        assert_eq!(entry["status"], "ready", "{entry}");
        trained.insert(entry["model_version"].as_u64().unwrap());
        let (status, body) = node.post(
            "/recommend",
            &json!({"user_id": "3", "n_recommendations": 5, "model_type": "trending"}),
        );
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["model"], "trending", "{body}");
        assert_eq!(body["plugin_revision"].as_u64(), Some(revision), "{body}");
        assert_eq!(
            body["recommendations"].as_array().unwrap().len(),
            5,
            "{body}"
        );
    }
    // Trained once, by the publishing node; the others restored its model.
    assert_eq!(trained.len(), 1, "{trained:?}");

    // The command line replaces a declared plugin (its config and limits kept from node a's
    // file): "content" now runs the popularity code on every node.
    let output = std::process::Command::new(recohost_e2e::binary())
        .args(["plugin", "push"])
        .arg(source("popularity"))
        .args(["--name", "content", "--config"])
        .arg(temp.path().join("a.toml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let next = revision + 1;
    assert!(
        stdout.contains(&format!("plugin revision {next}")),
        "{stdout}"
    );
    let description = plugin_entry(refs[0], "trending")["description"].clone();
    for node in &refs {
        node.wait_for("/health", Duration::from_secs(2), |health| {
            health["plugins_revision"].as_u64() == Some(next)
        });
        let content = plugin_entry(node, "content");
        assert_eq!(content["description"], description, "{content}");
        assert_eq!(
            content["published_revision"].as_u64(),
            Some(next),
            "{content}"
        );
        // The earlier publication stays in force beside it.
        assert_eq!(
            plugin_entry(node, "trending")["published_revision"].as_u64(),
            Some(revision)
        );
    }
    // A node started afterwards runs the published set from the start.
    let late = Server::start_in(&temp.path().join("d"), &node_config(&url, "d", &redis)).unwrap();
    assert_eq!(
        late.get("/health").1["plugins_revision"].as_u64(),
        Some(next)
    );
    assert_eq!(plugin_entry(&late, "content")["description"], description);
}

#[test]
fn a_cluster_node_publishes_its_experiments_folder_when_it_changes() {
    let postgres = TestPostgres::shared();
    let url = postgres.create_database();
    let temp = tempfile::tempdir().unwrap();
    // The folder as a Kubernetes ConfigMap volume lays it out: the files are links through
    // `..data`, a link to a timestamped folder that an edit replaces in one rename.
    let folder = temp.path().join("experiments");
    std::fs::create_dir_all(folder.join("..v1")).unwrap();
    std::fs::write(folder.join("..v1/arms.toml"), experiment(0.5)).unwrap();
    std::os::unix::fs::symlink("..v1", folder.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/arms.toml", folder.join("arms.toml")).unwrap();
    let redis = Redis::start();
    let with_folder = format!(
        "database_url = {url:?}\nexperiments_dir = {:?}\n[cluster]\nlease_secs = {LEASE_SECS}\nnode_id = \"a\"\n\
         [cache]\nredis_url = {:?}\n",
        folder.display().to_string(),
        redis.url()
    );
    let a = Server::start_in(&temp.path().join("a"), &config_text(&with_folder)).unwrap();
    let b = Server::start_in(&temp.path().join("b"), &node_config(&url, "b", &redis)).unwrap();
    // At start the folder is this node's own set: nothing is published yet.
    assert_eq!(a.get("/health").1["experiments_revision"], Value::Null);
    let edit = |version: &str, text: &str| {
        std::fs::create_dir_all(folder.join(version)).unwrap();
        std::fs::write(folder.join(version).join("arms.toml"), text).unwrap();
        std::os::unix::fs::symlink(version, folder.join("..data_tmp")).unwrap();
        std::fs::rename(folder.join("..data_tmp"), folder.join("..data")).unwrap();
    };

    // An edit is published (once) and in force on every node.
    edit("..v2", &experiment(0.9));
    let mut revision = None;
    for node in [&a, &b] {
        let health = node.wait_for("/health", Duration::from_secs(3), |health| {
            health["experiments_revision"].is_u64()
        });
        revision = revision.or(health["experiments_revision"].as_u64());
        assert_eq!(health["experiments_revision"].as_u64(), revision);
    }
    let users: Vec<String> = (1..=200).map(|u| u.to_string()).collect();
    assert_eq!(groups(&a, &users), groups(&b, &users));
    let controls = groups(&b, &users)
        .iter()
        .filter(|g| g.as_deref() == Some("control"))
        .count();
    assert!(controls > 150, "{controls} of 200 in control at 90%");

    // An invalid edit publishes nothing, and says why on the node that read it.
    edit("..v3", "id = \"arms\"\n[[groups]]\nplugin = \"nope\"\n");
    a.wait_for("/experiments", Duration::from_secs(3), |body| {
        !body["reload"]["error"].is_null()
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        b.get("/health").1["experiments_revision"].as_u64(),
        revision
    );
}

/// The items `user` had an event with, as the database has them.
fn seen_in_database(database: &str, user: &str) -> HashSet<u64> {
    let output = TestPostgres::shared()
        .psql(database)
        .args(["-t", "-A", "-c"])
        .arg(format!(
            "SELECT DISTINCT items.external_id FROM events
             JOIN users ON users.idx = events.user_idx JOIN items ON items.idx = events.item_idx
             WHERE users.external_id = '{user}'"
        ))
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|id| id.parse().unwrap())
        .collect()
}

#[test]
fn the_shared_feature_store_holds_every_user_whole_and_survives_losing_redis() {
    let postgres = TestPostgres::shared();
    let (url, nodes, _temp, mut redis) = three_nodes(postgres);
    let refs: Vec<&Server> = nodes.iter().collect();
    learner(&refs, Duration::from_secs(LEASE_SECS + 5));
    let database = url.rsplit('/').next().unwrap();
    let count = |sql: &str| TestPostgres::shared().count(database, sql);
    // Four clients post each user's events to the three nodes in turn: each node writes
    // what it stored to Redis, in whatever order their writes arrive.
    let bases: Arc<Vec<String>> = Arc::new(nodes.iter().map(|n| n.base.clone()).collect());
    let load = Load::start(bases, Arc::new(AtomicU64::new(u64::MAX)));
    std::thread::sleep(Duration::from_secs(3));
    load.finish();
    std::thread::sleep(Duration::from_millis(500));

    // Every user Redis holds is a whole prefix of their events: the count, the history and
    // the item set agree with the database up to the newest event it names.
    let keys = redis.cli(&["--scan", "--pattern", "rh:f:1:*:u:*"]);
    let keys: Vec<&str> = keys.lines().collect();
    assert!(keys.len() >= 100, "{} users in Redis", keys.len());
    for key in &keys {
        let user = key.rsplit(':').next().unwrap();
        let fields = redis.cli(&["HMGET", key, "t", "n", "c"]);
        let fields: Vec<u64> = fields.lines().map(|v| v.parse().unwrap()).collect();
        let (through, events, items) = (fields[0], fields[1], fields[2]);
        let mine = format!("FROM events WHERE user_idx = {user} AND id <= {through}");
        assert_eq!(events, count(&format!("SELECT COUNT(*) {mine}")), "{key}");
        assert_eq!(
            items,
            count(&format!("SELECT COUNT(DISTINCT item_idx) {mine}")),
            "{key}"
        );
        let length: u64 = redis
            .cli(&["LLEN", &key.replace(":u:", ":h:")])
            .trim()
            .parse()
            .unwrap();
        assert_eq!(length, events.min(500), "{key}");
        let members: u64 = redis
            .cli(&["SCARD", &key.replace(":u:", ":x:")])
            .trim()
            .parse()
            .unwrap();
        assert_eq!(members, items, "{key}");
    }

    // What a user bought at one node is excluded on every node at once, from their cached
    // features too.
    let (status, body) = refs[2].post(
        "/events",
        &json!({"user_id": "collector", "item_id": 1, "event_type": "view"}),
    );
    assert_eq!(status, 200, "{body}");
    std::thread::sleep(Duration::from_millis(500));
    let bought: Vec<u64> = recommended(refs[1], "collector")
        .into_iter()
        .take(3)
        .collect();
    for node in &refs {
        assert!(
            bought
                .iter()
                .all(|item| recommended(node, "collector").contains(item))
        );
    }
    for item in &bought {
        let (status, body) = refs[0].post(
            "/events",
            &json!({"user_id": "collector", "item_id": item, "event_type": "purchase"}),
        );
        assert_eq!(status, 200, "{body}");
    }
    std::thread::sleep(Duration::from_millis(500));
    for node in &refs {
        let now = recommended(node, "collector");
        assert!(bought.iter().all(|item| !now.contains(item)));
    }

    // Users no node has served yet: what each node recommends them excludes everything the
    // database says they touched, whatever Redis lost. A user whose item set was evicted on
    // its own...
    let excludes_everything = |node: &Server, user: &str| {
        let seen = seen_in_database(database, user);
        assert!(!seen.is_empty(), "{user}");
        let now = recommended(node, user);
        assert!(
            seen.is_disjoint(&now),
            "{user}: recommended again {:?}",
            seen.intersection(&now).collect::<Vec<_>>()
        );
        assert_eq!(
            node.seen_items(user).len(),
            count(&format!(
                "SELECT COUNT(*) FROM events JOIN users ON users.idx = events.user_idx
             WHERE users.external_id = '{user}'"
            )) as usize,
            "{user}"
        );
    };
    // (one who bought what everybody is recommended, through node a only)...
    let favourites: Vec<u64> = recommended(refs[0], "hoarder")
        .into_iter()
        .take(5)
        .collect();
    for item in &favourites {
        let (status, body) = refs[0].post(
            "/events",
            &json!({"user_id": "hoarder", "item_id": item, "event_type": "purchase"}),
        );
        assert_eq!(status, 200, "{body}");
    }
    std::thread::sleep(Duration::from_millis(500));
    let index = count("SELECT idx FROM users WHERE external_id = 'hoarder'");
    let items_key = redis
        .cli(&["--scan", "--pattern", &format!("rh:f:1:*:x:{index}")])
        .trim()
        .to_string();
    assert_eq!(redis.cli(&["SCARD", &items_key]).trim(), "5", "{items_key}");
    redis.cli(&["DEL", &items_key]);
    excludes_everything(refs[1], "hoarder");
    // ...everything gone (a restart without persistence)...
    redis.cli(&["FLUSHALL"]);
    for (node, user) in refs.iter().zip(["c1-3", "c2-4", "c3-5"]) {
        excludes_everything(node, user);
    }
    // ...and Redis down: read from the database.
    redis.kill();
    for (node, user) in refs.iter().zip(["c1-6", "c2-7", "c3-8"]) {
        excludes_everything(node, user);
        let features = node.get("/health").1["features"].clone();
        assert!(features["rebuilds"].as_u64() > Some(0), "{features}");
        assert_eq!(features["unavailable"], 0, "{features}");
    }
}

#[test]
fn a_sticky_user_keeps_their_arm_on_every_node_when_the_weights_move() {
    let postgres = TestPostgres::shared();
    let (_url, nodes, _temp, _redis) = three_nodes(postgres);
    let refs: Vec<&Server> = nodes.iter().collect();
    let sticky = |control: f64| {
        experiment(control).replace("coverage = 1.0", "coverage = 1.0\nsticky = true")
    };
    let publish = |node: &Server, text: String| {
        let (status, answer) =
            node.post("/admin/experiments", &json!({"files": {"arms.toml": text}}));
        assert_eq!(status, 200, "{answer}");
        let revision = answer["revision"].as_u64().unwrap();
        for node in &refs {
            node.wait_for("/health", Duration::from_secs(2), |health| {
                health["experiments_revision"].as_u64() == Some(revision)
            });
        }
    };
    publish(refs[0], sticky(0.5));
    // Placed by node a (half of them in control)...
    let users: Vec<String> = (1..=60).map(|u| u.to_string()).collect();
    let mut placed = Vec::new();
    for user in &users {
        let (status, body) = refs[0].post(
            "/recommend",
            &json!({"user_id": user, "n_recommendations": 3}),
        );
        assert_eq!(status, 200, "{body}");
        placed.push(body["experiment"]["group"].as_str().unwrap().to_string());
    }
    let controls = placed.iter().filter(|g| *g == "control").count();
    assert!((10..=50).contains(&controls), "{controls} of 60 in control");
    std::thread::sleep(Duration::from_secs(3));
    // ...then everyone to treatment by weight: the users node a placed keep their arm on
    // nodes b and c, which never served them.
    publish(refs[1], sticky(0.01));
    for node in &refs[1..] {
        for (user, group) in users.iter().zip(&placed) {
            let (status, body) = node.post(
                "/recommend",
                &json!({"user_id": user, "n_recommendations": 3}),
            );
            assert_eq!(status, 200, "{body}");
            assert_eq!(
                body["experiment"]["group"].as_str(),
                Some(group.as_str()),
                "user {user}"
            );
        }
    }
    // A user nobody placed before goes by the new weights.
    let (_, body) = refs[2].post(
        "/recommend",
        &json!({"user_id": "newcomer", "n_recommendations": 3}),
    );
    assert_eq!(body["experiment"]["group"], "treatment", "{body}");
}

/// `node`'s bandit view of experiment `id`, history included.
fn bandit_view(node: &Server, id: &str) -> Value {
    let (status, body) = node.get(&format!("/experiments/{id}"));
    assert_eq!(status, 200, "{body}");
    body["bandit"].clone()
}

#[test]
fn only_the_learner_moves_a_bandit_and_every_node_serves_the_same_weights() {
    let postgres = TestPostgres::shared();
    let (_url, mut nodes, _temp, _redis) = three_nodes(postgres);
    let bandit = "id = \"bandit\"\nname = \"Bandit\"\nstatus = \"running\"\nsticky = true\n\
        [allocation]\ntype = \"thompson\"\nperiod_secs = 1\nburn_in_users = 20\n\
        [[groups]]\nname = \"control\"\nplugin = \"collaborative\"\n\
        [[groups]]\nname = \"treatment\"\nplugin = \"popularity\"\n";
    let (status, answer) = nodes[0].post(
        "/admin/experiments",
        &json!({"files": {"bandit.toml": bandit}}),
    );
    assert_eq!(status, 200, "{answer}");
    let published = answer["revision"].as_u64().unwrap();
    for node in &nodes {
        node.wait_for("/health", Duration::from_secs(3), |health| {
            health["experiments_revision"].as_u64() == Some(published)
        });
    }
    let refs: Vec<&Server> = nodes.iter().collect();
    let first = learner(&refs, Duration::from_secs(10));
    let learner_id = ["a", "b", "c"][first];
    // Users served by every node in turn; treatment's users click, control's never do.
    let serve = |range: std::ops::Range<u32>| {
        for user in range {
            let node = &nodes[user as usize % 3];
            let (status, body) = node.post(
                "/recommend",
                &json!({"user_id": format!("u{user}"), "experiment_id": "bandit",
                        "n_recommendations": 1}),
            );
            assert_eq!(status, 200, "{body}");
            if body["experiment"]["group"] == "treatment" {
                let (status, answer) = node.post(
                    "/events",
                    &json!({"user_id": format!("u{user}"), "event_type": "click",
                            "item_id": body["recommendations"][0]["item_id"]}),
                );
                assert_eq!(status, 200, "{answer}");
            }
        }
    };
    serve(0..150);
    let moved = nodes[first].wait_for("/experiments/bandit", Duration::from_secs(20), |body| {
        body["groups"][1]["weight"]
            .as_f64()
            .is_some_and(|w| w > 0.9)
    });
    eprintln!("weights moved: {}", moved["groups"]);

    // Every revision is the learner's; every node serves the newest within about a second.
    let history = bandit_view(&nodes[first], "bandit")["history"].clone();
    for revision in history.as_array().unwrap() {
        assert_eq!(
            revision["by"],
            format!("learner {learner_id}"),
            "{revision}"
        );
    }
    let (status, body) = nodes[(first + 1) % 3].post_raw_as("/experiments/bandit/freeze", "", None);
    assert_eq!(status, 200, "{body}");
    let frozen = body["revision"]["revision"].as_u64().unwrap();
    for node in &nodes {
        node.wait_for("/experiments", Duration::from_secs(3), |body| {
            body["experiments"][0]["bandit"]["revision"].as_u64() == Some(frozen)
        });
    }
    let views: Vec<Value> = nodes.iter().map(|n| bandit_view(n, "bandit")).collect();
    for view in &views[1..] {
        assert_eq!(view["history"], views[0]["history"]);
        assert_eq!(view["arms"], views[0]["arms"]);
    }
    let users: Vec<String> = (0..150)
        .chain(5_000..5_050)
        .map(|u| format!("u{u}"))
        .collect();
    let placed = |node: &Server| -> Vec<Value> {
        users
            .iter()
            .map(|user| {
                let (_, body) = node.get(&format!(
                    "/users/{user}/experiment-group?experiment_id=bandit"
                ));
                json!([body["group_name"], body["weights_revision"]])
            })
            .collect()
    };
    // Users placed by one node are kept by the others once they have read its sticky rows
    // (polled every second).
    let deadline = Instant::now() + Duration::from_secs(10);
    let everywhere = loop {
        let each: Vec<Vec<Value>> = nodes.iter().map(&placed).collect();
        if each.iter().all(|p| *p == each[0]) {
            break each[0].clone();
        }
        assert!(Instant::now() < deadline, "the nodes disagree: {each:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(everywhere.iter().any(|p| p[0] == "control"));

    // The learner killed: the next one takes the weights over where they were, numbering
    // on without a gap.
    let (status, body) = nodes[first].post_raw_as("/experiments/bandit/resume", "", None);
    assert_eq!(status, 200, "{body}");
    nodes.remove(first).kill();
    let refs: Vec<&Server> = nodes.iter().collect();
    let next = learner(&refs, Duration::from_secs(LEASE_SECS * 3 + 5));
    let next_id = refs[next].get("/health").1["node"]["id"].clone();
    let after = refs[next].wait_for("/experiments/bandit", Duration::from_secs(20), |body| {
        body["bandit"]["history"].as_array().is_some_and(|h| {
            h.last()
                .is_some_and(|r| r["by"] == format!("learner {}", next_id.as_str().unwrap()))
        })
    });
    let numbers: Vec<u64> = after["bandit"]["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["revision"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, (1..=numbers.len() as u64).collect::<Vec<_>>());
}

#[test]
fn a_learner_stopped_with_sigterm_drains_and_hands_over_at_once() {
    let postgres = TestPostgres::shared();
    let url = postgres.create_database();
    let redis = Redis::start();
    let temp = tempfile::tempdir().unwrap();
    // A long lease: a handover faster than it proves the lease was given up.
    let config = |node: &str| {
        node_config(&url, node, &redis)
            .replace(&format!("lease_secs = {LEASE_SECS}"), "lease_secs = 10")
            + "[shutdown]\ndrain_ms = 1000\n"
    };
    let mut nodes: Vec<Server> = ["a", "b", "c"]
        .iter()
        .map(|node| Server::start_in(&temp.path().join(node), &config(node)).unwrap())
        .collect();
    let refs: Vec<&Server> = nodes.iter().collect();
    let first = learner(&refs, Duration::from_secs(15));
    for node in &refs {
        let (status, body) = node.get("/health/ready");
        assert_eq!(
            (status, body["ready"].as_bool()),
            (200, Some(true)),
            "{body}"
        );
        assert_eq!(node.get("/health/live").0, 200);
    }
    // A client keeps asking the learner until it is gone; what it got after the stop was
    // requested is told apart.
    let base = refs[first].base.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let terminated_at: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let client = {
        let (stop, terminated_at) = (stop.clone(), terminated_at.clone());
        std::thread::spawn(move || {
            let http = reqwest::blocking::Client::new();
            let (mut answered_while_draining, mut failed) = (0u64, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let response = http
                    .post(format!("{base}/recommend"))
                    .json(&json!({"user_id": "7", "n_recommendations": 10}))
                    .send();
                let since_stop = terminated_at.lock().unwrap().map(|t| t.elapsed());
                match response {
                    Ok(response) if response.status() == 200 => {
                        answered_while_draining += u64::from(since_stop.is_some());
                    }
                    Ok(response) => failed.push(format!("status {}", response.status())),
                    // Once the drain is over the server closes its connections: a request
                    // sent then was never taken (nothing in flight is lost).
                    Err(_) if since_stop.is_some_and(|t| t >= Duration::from_millis(900)) => {
                        break;
                    }
                    Err(error) => failed.push(format!("{error} after {since_stop:?}")),
                }
            }
            (answered_while_draining, failed)
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let terminated = Instant::now();
    *terminated_at.lock().unwrap() = Some(terminated);
    nodes[first].terminate();
    // Out of rotation at once (the signal is handled within milliseconds), still serving
    // during the drain.
    let (status, body) = loop {
        let (status, body) = nodes[first].get("/health/ready");
        if status == 503 || terminated.elapsed() > Duration::from_millis(500) {
            break (status, body);
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status, 503, "{body}");
    assert!(
        body["reasons"].to_string().contains("shutting_down"),
        "{body}"
    );
    assert_eq!(nodes[first].get("/health/live").0, 200);
    assert_eq!(
        nodes[first].wait_exit(Duration::from_secs(30)),
        Some(true),
        "{}",
        nodes[first].log()
    );
    let exited = Instant::now();
    stop.store(true, Ordering::Relaxed);
    let (answered, failed) = client.join().unwrap();
    assert!(answered > 0, "nothing answered during the drain");
    assert!(failed.is_empty(), "{failed:?}");
    let survivors: Vec<&Server> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != first)
        .map(|(_, node)| node)
        .collect();
    learner(&survivors, Duration::from_secs(2));
    eprintln!(
        "stopped {} ms after SIGTERM (drain 1000 ms); a new learner {} ms after it exited (lease 10 s)",
        exited.duration_since(terminated).as_millis(),
        exited.elapsed().as_millis()
    );
}
