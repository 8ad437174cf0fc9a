//! End-to-end tests of experiments: assignment in `POST /recommend`, the experiment
//! endpoints, exposures and results, reloads (API and file watcher) and an arm swap under
//! load, against the real binary.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use recohost_e2e::{Server, config_text, error_code};
use serde_json::{Value, json};

const COMPARISON: &str = include_str!("../experiments/model_comparison.toml");

/// A temporary experiments directory and data directory.
struct Setup {
    temp: tempfile::TempDir,
}

impl Setup {
    fn new(files: &[(&str, &str)]) -> Self {
        let temp = tempfile::tempdir().unwrap();
        std::fs::create_dir(temp.path().join("experiments")).unwrap();
        let setup = Self { temp };
        for (name, text) in files {
            setup.write(name, text);
        }
        setup
    }

    fn experiments_dir(&self) -> PathBuf {
        self.temp.path().join("experiments")
    }

    fn write(&self, name: &str, text: &str) {
        // Write then rename, as editors and config management do, so the watcher never sees
        // half a file. (A half-written file would be rejected and retried anyway.)
        let temp = self.temp.path().join(format!("{name}.partial"));
        std::fs::write(&temp, text).unwrap();
        std::fs::rename(&temp, self.experiments_dir().join(name)).unwrap();
    }

    fn config(&self) -> String {
        self.config_with("")
    }

    /// The config with `top_level` settings (tables included) before the plugins.
    fn config_with(&self, top_level: &str) -> String {
        config_text(&format!(
            "experiments_dir = {:?}\n{top_level}",
            self.experiments_dir().display().to_string()
        ))
    }

    fn start(&self) -> Server {
        Server::start_in(&self.temp.path().join("data"), &self.config()).expect("server starts")
    }
}

fn recommend(server: &Server, body: Value) -> Value {
    let (status, body) = server.post("/recommend", &body);
    assert_eq!(status, 200, "{body}");
    body
}

fn group_of(server: &Server, user: &str) -> Value {
    let (status, body) = server.get(&format!(
        "/users/{user}/experiment-group?experiment_id=model_comparison"
    ));
    assert_eq!(status, 200, "{body}");
    body
}

#[test]
fn recommendations_follow_the_assignment_and_feedback_reaches_the_results() {
    let setup = Setup::new(&[("model_comparison.toml", COMPARISON)]);
    let server = setup.start();

    let (status, list) = server.get("/experiments");
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["experiments"][0]["id"], "model_comparison");
    assert_eq!(
        list["experiments"][0]["name"],
        "Hybrid vs Collaborative Filtering"
    );

    let mut groups = std::collections::HashMap::new();
    for user in 1..=40u64 {
        // model_type is overridden by the experiment.
        let body = recommend(
            &server,
            json!({"user_id": user, "n_recommendations": 5, "model_type": "popularity"}),
        );
        let expected = group_of(&server, &user.to_string());
        assert_eq!(expected["in_experiment"], true, "{expected}");
        assert_eq!(body["experiment"]["id"], "model_comparison", "{body}");
        assert_eq!(
            body["experiment"]["group"], expected["group_name"],
            "{body}"
        );
        assert_eq!(body["model"], expected["model"], "{body}");
        assert!(body["model_version"].as_u64().is_some_and(|v| v >= 1));
        let group = body["experiment"]["group"].as_str().unwrap().to_string();
        *groups.entry(group).or_insert(0) += 1;
    }
    assert_eq!(groups.len(), 2, "both arms serve: {groups:?}");

    // Operators can bypass the experiment; that logs no exposure.
    let body = recommend(
        &server,
        json!({"user_id": 1, "model_type": "popularity", "bypass_experiments": true}),
    );
    assert_eq!(
        (body["model"].as_str(), &body["experiment"]),
        (Some("popularity"), &Value::Null)
    );

    // Unknown experiments, unknown models and contradictory requests are clear errors, for
    // a user in the experiment too (its arm would otherwise have answered).
    let (status, body) = server.post("/recommend", &json!({"user_id": 1, "model_type": "nope"}));
    assert_eq!(
        (status, error_code(&body).as_str()),
        (404, "unknown_model"),
        "{body}"
    );
    let (status, body) = server.post(
        "/recommend",
        &json!({"user_id": 1, "experiment_id": "nope"}),
    );
    assert_eq!(
        (status, error_code(&body).as_str()),
        (404, "unknown_experiment")
    );
    let (status, body) = server.post(
        "/recommend",
        &json!({"user_id": 1, "experiment_id": "model_comparison", "bypass_experiments": true}),
    );
    assert_eq!(status, 400, "{body}");
    let (status, body) = server.get("/users/1/experiment-group?experiment_id=nope");
    assert_eq!(
        (status, error_code(&body).as_str()),
        (404, "unknown_experiment")
    );
    let (status, body) = server.get("/experiments/nope/results");
    assert_eq!(
        (status, error_code(&body).as_str()),
        (404, "unknown_experiment")
    );

    // Live counts: one exposure per recommendation served under the experiment.
    let (status, detail) = server.get("/experiments/model_comparison");
    assert_eq!(status, 200, "{detail}");
    assert_eq!(detail["counts"]["exposures"], 40, "{detail}");
    assert_eq!(detail["groups"][0]["hash_range"], json!([0.0, 0.5]));

    // Feedback after the exposure is attributed to the user's group.
    for user in 1..=40u64 {
        let item =
            recommend(&server, json!({"user_id": user, "n_recommendations": 1}))["recommendations"]
                [0]["item_id"]
                .clone();
        let (status, body) = server.post(
            "/events",
            &json!({"user_id": user, "item_id": item, "event_type": "click"}),
        );
        assert_eq!(status, 200, "{body}");
        if user % 2 == 0 {
            let (status, body) = server.post(
                "/events",
                &json!({"user_id": user, "item_id": item, "event_type": "rate", "rating": 4.0}),
            );
            assert_eq!(status, 200, "{body}");
        }
    }
    // Results are computed at most every few seconds and shared meanwhile: the first answer
    // may predate the feedback above; it says when it was computed.
    let (status, first) = server.get("/experiments/model_comparison/results");
    assert_eq!(status, 200, "{first}");
    let (_, again) = server.get("/experiments/model_comparison/results");
    assert_eq!(
        again["computed_at_ms"], first["computed_at_ms"],
        "shared, not recomputed"
    );
    assert!(first["max_age_ms"].as_u64() >= Some(5_000), "{first}");
    let results = server.wait_for(
        "/experiments/model_comparison/results",
        Duration::from_secs(30),
        |results| {
            results["groups"]
                .as_array()
                .unwrap()
                .iter()
                .map(|g| g["events"].as_u64().unwrap())
                .sum::<u64>()
                == 60
        },
    );
    let arms = results["groups"].as_array().unwrap();
    assert_eq!(arms.len(), 2);
    let total = |field: &str| arms.iter().map(|g| g[field].as_u64().unwrap()).sum::<u64>();
    assert_eq!(total("users"), 40, "{results}");
    assert_eq!(total("exposures"), 80, "{results}");
    assert_eq!(total("clicks"), 40, "{results}");
    assert_eq!(total("clicked_exposures"), 40, "{results}");
    assert_eq!(total("ratings"), 20, "{results}");
    assert_eq!(total("events"), 60, "{results}");
    for arm in arms {
        assert_eq!(
            arm["users"].as_u64(),
            groups
                .get(arm["group"].as_str().unwrap())
                .map(|&n| n as u64)
        );
        let ctr = &arm["ctr"];
        assert_eq!(ctr["value"].as_f64().unwrap(), 0.5, "{arm}");
        assert!(ctr["ci_low"].as_f64().unwrap() < 0.5 && ctr["ci_high"].as_f64().unwrap() > 0.5);
        assert_eq!(arm["mean_rating"]["value"].as_f64(), Some(4.0), "{arm}");
    }
    assert!(results["srm"]["p_value"].as_f64().is_some(), "{results}");
}

#[test]
fn users_keep_their_group_across_reloads_and_restarts() {
    let setup = Setup::new(&[("model_comparison.toml", COMPARISON)]);
    let server = setup.start();
    let users: Vec<String> = (0..60).map(|u| format!("user-{u}")).collect();
    let groups = |server: &Server| -> Vec<Value> {
        users
            .iter()
            .map(|u| group_of(server, u)["group_name"].clone())
            .collect()
    };
    let before = groups(&server);
    let (status, body) = server.post_as("/admin/reload", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(groups(&server), before);
    drop(server);
    let server = setup.start();
    assert_eq!(groups(&server), before);
}

#[test]
fn coverage_leaves_users_out_with_a_200() {
    let half = COMPARISON.replace("coverage = 1.0", "coverage = 0.5");
    let setup = Setup::new(&[("model_comparison.toml", &half)]);
    let server = setup.start();
    let outside = (0..100)
        .map(|u| group_of(&server, &u.to_string()))
        .find(|g| g["in_experiment"] == false)
        .expect("someone is outside a 50% coverage");
    assert_eq!(outside["group_name"], Value::Null);
    assert_eq!(outside["reason"], "outside_coverage");
    assert_eq!(
        outside["experiment_name"],
        "Hybrid vs Collaborative Filtering"
    );
    // Outside the experiment, model_type (or the default) serves.
    let user = outside["user_id"].clone();
    let body = recommend(
        &server,
        json!({"user_id": user, "model_type": "popularity"}),
    );
    assert_eq!(
        (body["model"].as_str(), &body["experiment"]),
        (Some("popularity"), &Value::Null)
    );
}

#[test]
fn invalid_files_are_rejected_and_the_last_good_set_stays() {
    let setup = Setup::new(&[("model_comparison.toml", COMPARISON)]);
    let server = setup.start();
    let before = group_of(&server, "7");

    // Through the file watcher.
    setup.write(
        "model_comparison.toml",
        &COMPARISON.replace("plugin = \"hybrid\"", "plugin = \"no_such_plugin\""),
    );
    let list = server.wait_for("/experiments", Duration::from_secs(10), |body| {
        !body["reload"]["error"].is_null()
    });
    let message = list["reload"]["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("model_comparison.toml") && message.contains("groups[1].plugin"),
        "{message}"
    );
    assert_eq!(group_of(&server, "7"), before);
    assert_eq!(
        recommend(&server, json!({"user_id": 7}))["model"],
        before["model"]
    );

    // Through the API: 422 naming the file, field and reason.
    let (status, body) = server.post_as("/admin/reload", None);
    assert_eq!(
        (status, error_code(&body).as_str()),
        (422, "invalid_experiment")
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no_such_plugin")
    );

    // A file with a bad TOML syntax stops a fresh start with the same kind of message.
    drop(server);
    setup.write("broken.toml", "id = [");
    let error = Server::start_in(&setup.temp.path().join("data"), &setup.config())
        .err()
        .expect("start-up refuses invalid experiments");
    assert!(error.contains("broken.toml"), "{error}");
}

/// A user in the treatment group of `server`'s model_comparison.
fn treatment_user(server: &Server) -> String {
    (0..100)
        .map(|u| u.to_string())
        .find(|u| group_of(server, u)["group_name"] == "treatment")
        .unwrap()
}

#[test]
fn swapping_an_arm_under_load_fails_no_request_and_serves_within_two_seconds() {
    let setup = Setup::new(&[("model_comparison.toml", COMPARISON)]);
    let server = setup.start();
    let user = treatment_user(&server);
    assert_eq!(
        recommend(&server, json!({"user_id": user}))["model"],
        "hybrid"
    );

    // Load: 8 clients sending recommendations for many users until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let clients: Vec<_> = (0..8)
        .map(|client| {
            let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
            let url = format!("{}/recommend", server.base);
            std::thread::spawn(move || {
                let http = reqwest::blocking::Client::new();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let body = json!({"user_id": format!("load-{client}-{}", n % 500)});
                    let ok = http
                        .post(&url)
                        .json(&body)
                        .send()
                        .is_ok_and(|r| r.status().is_success());
                    sent.fetch_add(1, Ordering::Relaxed);
                    if !ok {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));

    let edited = Instant::now();
    setup.write(
        "model_comparison.toml",
        &COMPARISON.replace("plugin = \"hybrid\"", "plugin = \"popularity\""),
    );
    let swap = loop {
        let model = recommend(&server, json!({"user_id": user}))["model"].clone();
        if model == "popularity" {
            break edited.elapsed();
        }
        assert!(
            edited.elapsed() < Duration::from_secs(30),
            "the new arm never served"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }
    let (sent, failed) = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!(
        "arm swap under load: {sent} requests, {failed} failed; new arm served {} ms after the edit",
        swap.as_millis()
    );
    assert!(sent > 100, "the load generator ran ({sent} requests)");
    assert_eq!(failed, 0);
    // The requirement: the new arm serves within 2 s of the edit.
    assert!(swap < Duration::from_secs(2), "{swap:?}");
}

#[test]
fn the_shipped_experiment_is_served() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let setup = Setup::new(&[]);
    let config = config_text(&format!(
        "experiments_dir = {:?}\n",
        root.join("experiments").display().to_string()
    ));
    let server = Server::start_in(&setup.temp.path().join("data"), &config).unwrap();
    let (status, body) = server.get("/experiments/model_comparison");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["groups"][0]["plugin"], "collaborative");
    assert_eq!(body["groups"][1]["plugin"], "hybrid");
}

#[test]
fn plugins_added_or_replaced_in_the_config_serve_without_a_restart() {
    let setup = Setup::new(&[("model_comparison.toml", COMPARISON)]);
    let arms = setup.temp.path().join("arms");
    std::fs::create_dir(&arms).unwrap();
    let bundled = recohost_e2e::plugins_dir();
    let install = |plugin: &str| {
        let staging = arms.join("arm.wasm.partial");
        std::fs::copy(bundled.join(format!("{plugin}.wasm")), &staging).unwrap();
        std::fs::rename(&staging, arms.join("arm.wasm")).unwrap();
    };
    install("popularity");
    let server = setup.start();
    let (status, body) = server.post(
        "/recommend",
        &json!({"user_id": 1, "model_type": "arm", "bypass_experiments": true}),
    );
    assert_eq!((status, error_code(&body).as_str()), (404, "unknown_model"));

    // Add a [[plugins]] entry: the watcher loads and trains it.
    let config_path = setup.temp.path().join("data.toml");
    let mut config = std::fs::read_to_string(&config_path).unwrap();
    config.push_str(&format!(
        "\n[[plugins]]\nname = \"arm\"\npath = {:?}\n",
        arms.join("arm.wasm").display().to_string()
    ));
    let staging = setup.temp.path().join("data.toml.partial");
    std::fs::write(&staging, &config).unwrap();
    std::fs::rename(&staging, &config_path).unwrap();
    server.wait_for("/plugins", Duration::from_secs(30), |body| {
        body["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "arm")
    });
    let first = server.plugin_status("arm").unwrap();
    let body = recommend(
        &server,
        json!({"user_id": 1, "model_type": "arm", "bypass_experiments": true}),
    );
    assert_eq!(body["model"], "arm");
    assert_eq!(body["model_version"], first["model_version"]);

    // An experiment can use it at once.
    setup.write(
        "model_comparison.toml",
        &COMPARISON.replace("plugin = \"hybrid\"", "plugin = \"arm\""),
    );
    server.wait_for("/experiments", Duration::from_secs(10), |body| {
        body["experiments"][0]["groups"][1]["plugin"] == "arm"
    });
    let user = (0..100)
        .map(|u| u.to_string())
        .find(|u| group_of(&server, u)["model"] == "arm")
        .expect("the new arm serves once the file is reloaded");
    assert_eq!(recommend(&server, json!({"user_id": user}))["model"], "arm");

    // Replace the .wasm: a new model version of the new code serves under the same name.
    install("content");
    // The new plugins serve first, then the reload's outcome is published (the status is
    // never held up by a reload under way): wait for both.
    let replaced = server.wait_for("/plugins", Duration::from_secs(30), |body| {
        body["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "arm" && p["description"] != first["description"])
            && body["reload"]["last_changes"]["replaced"] == json!(["arm"])
    });
    let arm = replaced["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "arm")
        .unwrap()
        .clone();
    assert!(
        arm["model_version"].as_u64() > first["model_version"].as_u64(),
        "{arm}"
    );
    assert_eq!(
        replaced["reload"]["last_changes"]["replaced"],
        json!(["arm"])
    );
    let body = recommend(&server, json!({"user_id": user}));
    assert_eq!(
        (body["model"].as_str(), &body["model_version"]),
        (Some("arm"), &arm["model_version"])
    );

    // A broken .wasm is rejected and the working one keeps serving.
    std::fs::write(arms.join("arm.wasm.partial"), b"not a component").unwrap();
    std::fs::rename(arms.join("arm.wasm.partial"), arms.join("arm.wasm")).unwrap();
    let rejected = server.wait_for("/plugins", Duration::from_secs(30), |body| {
        !body["reload"]["error"].is_null()
    });
    assert!(
        rejected["reload"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("arm"),
        "{rejected}"
    );
    let body = recommend(&server, json!({"user_id": user}));
    assert_eq!(body["model_version"], arm["model_version"]);
}

/// `config` with `[plugins.limits]` lines added to the entry of `plugin`.
fn with_limits(config: &str, plugin: &str, limits: &str) -> String {
    let name = format!("name = \"{plugin}\"\n");
    let at = config.find(&name).expect("the plugin's entry") + name.len();
    let path_end = at + config[at..].find('\n').expect("its path line") + 1;
    format!(
        "{}[plugins.limits]\n{limits}\n{}",
        &config[..path_end],
        &config[path_end..]
    )
}

/// Replaces the server's config file (write, then rename).
fn rewrite_config(setup: &Setup, text: &str) {
    let staging = setup.temp.path().join("data.toml.partial");
    std::fs::write(&staging, text).unwrap();
    std::fs::rename(&staging, setup.temp.path().join("data.toml")).unwrap();
}

#[test]
fn a_limits_only_change_keeps_the_serving_model_with_what_it_learned() {
    let setup = Setup::new(&[]);
    // No snapshot after updates: the newest stored snapshot stays the start-up one.
    let config = setup
        .config_with("[learning]\nupdate_buffer_size = 100000\nsnapshot_interval_secs = 3600\n");
    let server = Server::start_in(&setup.temp.path().join("data"), &config).unwrap();
    let events: Vec<Value> = (0..3)
        .map(|i| json!({"user_id": 9, "item_id": 40 + i, "event_type": "click"}))
        .collect();
    assert_eq!(
        server.post("/events/batch", &json!({ "events": events })).0,
        200
    );
    let (status, answer) = server.post_as("/learning/trigger-update", None);
    assert_eq!(status, 202, "{answer}");
    let learned = server.wait_for("/learning/stats", Duration::from_secs(60), |stats| {
        stats["last_update"]["update_id"] == answer["update_id"] && stats["running"].is_null()
    });
    let serving = learned["models"]["popularity"].clone();

    rewrite_config(
        &setup,
        &with_limits(&config, "popularity", "recommend_ms = 300"),
    );
    let (status, reloaded) = server.post_as("/admin/reload", None);
    assert_eq!(status, 200, "{reloaded}");
    assert_eq!(reloaded["plugins"]["replaced"], json!(["popularity"]));
    let plugin = server.plugin_status("popularity").unwrap();
    assert_eq!(plugin["limits"]["recommend_ms"], 300);
    // Before the fix the stored (start-up) snapshot came back, with a lower version and
    // through_event: the update's events were lost to it.
    let stats = server.get("/learning/stats").1;
    assert_eq!(stats["models"]["popularity"], serving, "{stats}");
}

#[test]
fn plugins_answer_while_a_long_plugin_reload_runs() {
    let setup = Setup::new(&[]);
    let server = setup.start();
    // A plugin whose training sleeps until its 8 s budget: the reload that adds it takes 8 s.
    let config = format!(
        "{}\n[[plugins]]\nname = \"sleeper\"\npath = {:?}\n[plugins.config]\ntrain = \"sleep\"\n[plugins.limits]\ntrain_ms = 8000\n",
        setup.config(),
        recohost_e2e::fixture("misbehaving").display().to_string()
    );
    // Through the API only (the file watcher would start the same reload by itself).
    let reload = {
        let base = server.base.clone();
        let config_path = setup.temp.path().join("data.toml");
        std::thread::spawn(move || {
            let staging = config_path.with_extension("partial");
            std::fs::write(&staging, config).unwrap();
            std::fs::rename(&staging, &config_path).unwrap();
            let response = reqwest::blocking::Client::new()
                .post(format!("{base}/admin/reload"))
                .send()
                .unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().unwrap(),
            )
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    // Before the fix this waited for the reload's lock (and held a runtime worker meanwhile).
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let plugins = client
        .get(format!("{}/plugins", server.base))
        .send()
        .expect("/plugins answers during the reload");
    assert_eq!(plugins.status().as_u16(), 200);
    let (status, body) = reload.join().unwrap();
    assert!(
        status == 422 || status == 200,
        "the reload ends (its training hits the budget, or the watcher's reload ran first): {status} {body}"
    );
}
