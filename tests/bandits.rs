//! End-to-end tests of bandit experiments against the real binary and real plugins: a
//! simulated population whose click probability per arm is fixed and known, served and
//! clicking through the HTTP API, while the server's learner moves the weights every period.
//! And the operator's controls (freeze, resume, reset, promote), recorded in the history.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::HashMap;
use std::time::{Duration, Instant};

use recohost_e2e::{Server, config_text, error_code};
use serde_json::{Value, json};

/// Seconds between weight updates in these tests.
const PERIOD_SECS: u64 = 2;
/// The arms: control is served by popularity, treatment by collaborative filtering.
const ARMS: [&str; 2] = ["control", "treatment"];

/// A bandit experiment file (`extra` goes into `[allocation]`).
fn bandit_toml(id: &str, extra: &str) -> String {
    format!(
        r#"
id = "{id}"
name = "Bandit {id}"
status = "running"
sticky = true
[allocation]
type = "thompson"
metric = "click"
period_secs = {PERIOD_SECS}
attribution_secs = 600
{extra}
[[groups]]
name = "control"
plugin = "popularity"
[[groups]]
name = "treatment"
plugin = "collaborative"
"#
    )
}

/// The same arms split 50/50 for good: the baseline a bandit must beat.
fn fixed_toml(id: &str) -> String {
    format!(
        r#"
id = "{id}"
name = "Fixed {id}"
status = "running"
sticky = true
[[groups]]
name = "control"
plugin = "popularity"
weight = 0.5
[[groups]]
name = "treatment"
plugin = "collaborative"
weight = 0.5
"#
    )
}

/// A uniform draw in [0, 1) for user `index` of a population seeded `seed` (SplitMix64): the
/// same users make the same draws whichever experiment serves them.
fn uniform(seed: u64, index: u64) -> f64 {
    let mut z = seed
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(index.wrapping_mul(0xbf58_476d_1ce4_e5b9));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// A population sent to one experiment: who, with which click probability per arm.
struct Population {
    experiment: String,
    seed: u64,
    /// True click probability of control and treatment.
    rates: [f64; 2],
    /// New users per period, and for how many periods.
    per_period: u64,
    periods: usize,
    /// Per user index: the arm that served them.
    served: Vec<usize>,
    /// Per period: users served in each arm.
    by_period: Vec<[u64; 2]>,
}

impl Population {
    fn new(experiment: &str, seed: u64, rates: [f64; 2], per_period: u64, periods: usize) -> Self {
        Self {
            experiment: experiment.to_string(),
            seed,
            rates,
            per_period,
            periods,
            served: Vec::new(),
            by_period: Vec::new(),
        }
    }

    fn user(&self, index: u64) -> String {
        format!("{}-{index}", self.experiment)
    }

    /// Serves this period's new users (`threads` at a time) and sends their clicks.
    fn serve_period(&mut self, server: &Server, threads: u64) {
        let period = self.by_period.len();
        if period >= self.periods {
            return;
        }
        let first = period as u64 * self.per_period;
        let chunk = self.per_period.div_ceil(threads);
        let this = &*self;
        let outcomes: Vec<Vec<(u64, usize, Option<Value>)>> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|t| {
                    scope.spawn(move || {
                        let start = first + t * chunk;
                        let end = (start + chunk).min(first + this.per_period);
                        (start..end)
                            .map(|index| this.serve_one(server, index))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        let mut counts = [0u64; 2];
        let mut clicks = Vec::new();
        for (index, arm, click) in outcomes.into_iter().flatten() {
            assert_eq!(self.served.len() as u64, index, "users served in order");
            self.served.push(arm);
            counts[arm] += 1;
            clicks.extend(click);
        }
        for batch in clicks.chunks(5_000) {
            let (status, body) = server.post("/events/batch", &json!({ "events": batch }));
            assert_eq!(status, 200, "{body}");
        }
        self.by_period.push(counts);
    }

    /// One user: a recommendation, then a click with the arm's probability.
    fn serve_one(&self, server: &Server, index: u64) -> (u64, usize, Option<Value>) {
        let user = self.user(index);
        let (status, body) = server.post(
            "/recommend",
            &json!({"user_id": user, "experiment_id": self.experiment, "n_recommendations": 1}),
        );
        assert_eq!(status, 200, "{body}");
        let group = body["experiment"]["group"].as_str().unwrap();
        let arm = ARMS.iter().position(|a| *a == group).unwrap();
        let clicked = uniform(self.seed, index) < self.rates[arm];
        let click = clicked.then(|| {
            json!({
                "user_id": user,
                "item_id": body["recommendations"][0]["item_id"],
                "event_type": "click",
            })
        });
        (index, arm, click)
    }

    /// Expected clicks lost against always serving the better arm.
    fn regret(&self) -> f64 {
        let best = self.rates[0].max(self.rates[1]);
        self.served.iter().map(|&arm| best - self.rates[arm]).sum()
    }

    /// The share of new users in `arm` over the last `periods` periods.
    fn late_share(&self, arm: usize, periods: usize) -> f64 {
        let late = &self.by_period[self.by_period.len() - periods..];
        let total: u64 = late.iter().map(|c| c[0] + c[1]).sum();
        late.iter().map(|c| c[arm]).sum::<u64>() as f64 / total as f64
    }
}

/// The bandit views of every experiment in force: id -> `bandit`.
fn bandits(server: &Server) -> HashMap<String, Value> {
    let (status, body) = server.get("/experiments");
    assert_eq!(status, 200, "{body}");
    body["experiments"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| !e["bandit"].is_null())
        .map(|e| (e["id"].as_str().unwrap().to_string(), e["bandit"].clone()))
        .collect()
}

/// Waits until each of `ids` has a weights revision stored after `after_ms`.
fn wait_for_new_weights(server: &Server, ids: &[String], after_ms: u64) {
    let deadline = Instant::now() + Duration::from_secs(PERIOD_SECS * 10 + 30);
    loop {
        let views = bandits(server);
        let fresh = ids
            .iter()
            .all(|id| views[id]["at_ms"].as_u64().is_some_and(|at| at > after_ms));
        if fresh {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no new weights after {after_ms}: {views:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Every weights revision of `id`, oldest first.
fn history(server: &Server, id: &str) -> Vec<Value> {
    let (status, body) = server.get(&format!("/experiments/{id}"));
    assert_eq!(status, 200, "{body}");
    body["bandit"]["history"].as_array().unwrap().clone()
}

fn weights(revision: &Value) -> Vec<f64> {
    revision["weights"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_f64().unwrap())
        .collect()
}

fn group_of(server: &Server, user: &str, experiment: &str) -> Value {
    let (status, body) = server.get(&format!(
        "/users/{user}/experiment-group?experiment_id={experiment}"
    ));
    assert_eq!(status, 200, "{body}");
    json!([body["group_name"], body["weights_revision"]])
}

/// The operator's token in these tests.
const TOKEN: &str = "bandit-operator-token";

/// Experiments, data and config in a temporary directory.
struct Setup {
    temp: tempfile::TempDir,
}

impl Setup {
    fn new(files: &[(String, String)]) -> Self {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("experiments");
        std::fs::create_dir(&dir).unwrap();
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
        Self { temp }
    }

    fn start(&self) -> Server {
        let config = config_text(&format!(
            "experiments_dir = {:?}\nadmin_token = \"{TOKEN}\"\n",
            self.temp.path().join("experiments").display().to_string()
        ));
        Server::start_in(&self.temp.path().join("data"), &config).expect("server starts")
    }
}

/// Seeds of the populations: the bandit and the fixed run share theirs.
const SEED: u64 = 20_261_130;
/// Runs with equal true rates.
const NULL_RUNS: u64 = 20;

#[test]
fn a_bandit_moves_traffic_to_the_better_arm_and_holds_still_when_the_arms_are_equal() {
    // 4% against 6%: a bandit and a fixed 50/50 split, the same users with the same draws.
    // 20 bandits whose arms both convert at 5%. Burn-in of 1,000 users per arm: at 5%, 100
    // users are 5 clicks, too few to move anything on.
    let burn_in = "burn_in_users = 1000";
    let mut files = vec![
        ("differ.toml".to_string(), bandit_toml("differ", burn_in)),
        ("fixed.toml".to_string(), fixed_toml("fixed")),
    ];
    for run in 0..NULL_RUNS {
        let id = format!("equal{run:02}");
        files.push((format!("{id}.toml"), bandit_toml(&id, burn_in)));
    }
    let setup = Setup::new(&files);
    let mut server = setup.start();

    let mut populations = vec![
        Population::new("differ", SEED, [0.04, 0.06], 2_000, 15),
        Population::new("fixed", SEED, [0.04, 0.06], 2_000, 15),
    ];
    for run in 0..NULL_RUNS {
        populations.push(Population::new(
            &format!("equal{run:02}"),
            SEED + 1 + run,
            [0.05, 0.05],
            1_000,
            10,
        ));
    }
    let bandit_ids: Vec<String> = populations
        .iter()
        .map(|p| p.experiment.clone())
        .filter(|id| id != "fixed")
        .collect();
    wait_for_new_weights(&server, &bandit_ids, 0);
    let started = Instant::now();
    let mut served = 0;
    for period in 0..15 {
        for population in &mut populations {
            population.serve_period(&server, 4);
        }
        served += populations
            .iter()
            .filter(|p| p.by_period.len() > period)
            .map(|p| p.per_period)
            .sum::<u64>();
        // The next period's users meet the weights this period's evidence gave.
        wait_for_new_weights(&server, &bandit_ids, now_ms());
    }
    let seconds = started.elapsed().as_secs_f64();

    let differ = &populations[0];
    let fixed = &populations[1];
    let histories: HashMap<String, Vec<Value>> = bandit_ids
        .iter()
        .map(|id| (id.clone(), history(&server, id)))
        .collect();
    let moved = &histories["differ"];
    let final_weights = weights(moved.last().unwrap());
    let (bandit_regret, fixed_regret) = (differ.regret(), fixed.regret());
    let late_share = differ.late_share(1, 3);
    // Per null run, the highest weight any arm had after burn-in.
    let null_highest: Vec<f64> = (0..NULL_RUNS)
        .map(|run| {
            histories[&format!("equal{run:02}")]
                .iter()
                .filter(|revision| revision["burned_in"] == true)
                .flat_map(weights)
                .fold(0.0, f64::max)
        })
        .collect();
    let null_max = null_highest.iter().copied().fold(0.0, f64::max);
    let null_above = null_highest.iter().filter(|&&w| w > 0.7).count();
    eprintln!(
        "bandit simulation: {served} users in {seconds:.0} s; 4% vs 6%: treatment's share of \
         new users per period {:?}, final weights {final_weights:?}, last 3 periods {late_share:.3}; \
         regret {bandit_regret:.1} vs fixed 50/50 {fixed_regret:.1} ({:.2}x); equal rates: \
         highest weight after burn-in over {NULL_RUNS} runs {null_max:.3}, runs above 0.7: \
         {null_above}",
        differ
            .by_period
            .iter()
            .map(|c| format!("{:.2}", c[1] as f64 / (c[0] + c[1]) as f64))
            .collect::<Vec<_>>(),
        bandit_regret / fixed_regret,
    );
    assert!(
        late_share >= 0.8,
        "treatment got {late_share} of the last periods' users"
    );
    assert!(final_weights[1] >= 0.8, "{final_weights:?}");
    assert!(
        bandit_regret <= fixed_regret / 2.0,
        "regret {bandit_regret} vs fixed {fixed_regret}"
    );
    for (id, revisions) in &histories {
        for revision in revisions {
            let w = weights(revision);
            assert!(
                (w.iter().sum::<f64>() - 1.0).abs() < 1e-9,
                "{id}: {revision}"
            );
            assert!(w.iter().all(|&w| w >= 0.01 - 1e-12), "{id}: {revision}");
        }
    }
    assert!(null_max <= 0.7, "equal arms weighted up to {null_max}");
    // The null runs did burn in (else "after burn-in" would hold vacuously).
    for run in 0..NULL_RUNS {
        assert!(
            histories[&format!("equal{run:02}")]
                .iter()
                .any(|r| r["burned_in"] == true),
            "equal{run:02} never burned in"
        );
    }

    // The first period's users kept their arm through every change of weights.
    for index in (0..2_000).step_by(50) {
        let user = differ.user(index);
        let arm = group_of(&server, &user, "differ")[0].clone();
        assert_eq!(arm, ARMS[differ.served[index as usize]], "{user}");
    }

    // Freeze, so that no new revision comes between the looks; then a restart reproduces
    // every revision and every assignment, of users seen and never seen.
    for id in &bandit_ids {
        let (status, body) = server.post_raw_as(
            &format!("/experiments/{id}/freeze"),
            "{\"note\": \"before the restart\"}",
            Some(TOKEN),
        );
        assert_eq!(status, 200, "{body}");
    }
    let before: Vec<Vec<Value>> = bandit_ids.iter().map(|id| history(&server, id)).collect();
    let probes: Vec<(String, String)> = bandit_ids
        .iter()
        .flat_map(|id| {
            [0, 777, 1_999, 5_000_000].map(|index| (id.clone(), format!("{id}-{index}")))
        })
        .collect();
    let groups: Vec<Value> = probes
        .iter()
        .map(|(id, user)| group_of(&server, user, id))
        .collect();
    server.terminate();
    assert_eq!(server.wait_exit(Duration::from_secs(30)), Some(true));
    let server = setup.start();
    let after: Vec<Vec<Value>> = bandit_ids.iter().map(|id| history(&server, id)).collect();
    assert_eq!(before, after);
    let again: Vec<Value> = probes
        .iter()
        .map(|(id, user)| group_of(&server, user, id))
        .collect();
    assert_eq!(groups, again);
}

#[test]
fn operators_freeze_resume_reset_and_promote_and_the_history_says_so() {
    let setup = Setup::new(&[
        ("b.toml".into(), bandit_toml("b", "")),
        ("fixed.toml".into(), fixed_toml("fixed")),
    ]);
    let server = setup.start();
    wait_for_new_weights(&server, &["b".to_string()], 0);
    let act = |action: &str, body: &str, token: Option<&str>| {
        server.post_raw_as(&format!("/experiments/b/{action}"), body, token)
    };

    // The token is required, bad input is refused, and nothing is recorded for either.
    assert_eq!(act("freeze", "", None).0, 401);
    assert_eq!(act("freeze", "", Some("wrong")).0, 401);
    let (status, body) = act("freeze", "{\"nope\": 1}", Some(TOKEN));
    assert_eq!((status, error_code(&body).as_str()), (400, "invalid_json"));
    let (status, body) = act("promote", "{}", Some(TOKEN));
    assert_eq!((status, error_code(&body).as_str()), (400, "missing_group"));
    let (status, body) = act("freeze", "{\"group\": \"control\"}", Some(TOKEN));
    assert_eq!(
        (status, error_code(&body).as_str()),
        (400, "unexpected_group")
    );
    let long_note = format!("{{\"note\": \"{}\"}}", "x".repeat(1_001));
    let (status, body) = act("freeze", &long_note, Some(TOKEN));
    assert_eq!((status, error_code(&body).as_str()), (400, "invalid_note"));
    let (status, body) = act("promote", "{\"group\": \"nope\"}", Some(TOKEN));
    assert_eq!((status, error_code(&body).as_str()), (404, "unknown_group"));
    let (status, body) = act("resume", "", Some(TOKEN));
    assert_eq!((status, error_code(&body).as_str()), (409, "bandit_state"));
    let (status, body) = server.post_raw_as("/experiments/fixed/freeze", "", Some(TOKEN));
    assert_eq!((status, error_code(&body).as_str()), (409, "not_a_bandit"));
    let (status, body) = server.post_raw_as("/experiments/nope/freeze", "", Some(TOKEN));
    assert_eq!(
        (status, error_code(&body).as_str()),
        (404, "unknown_experiment")
    );
    assert_eq!(history(&server, "b").len(), 1);

    // Freeze: no update while frozen.
    let (status, body) = act("freeze", "{\"note\": \"holiday traffic\"}", Some(TOKEN));
    assert_eq!(status, 200, "{body}");
    std::thread::sleep(Duration::from_secs(PERIOD_SECS * 2));
    let frozen = history(&server, "b");
    assert_eq!(frozen.len(), 2, "{frozen:?}");
    assert_eq!(frozen[1]["action"], "freeze");
    assert_eq!(frozen[1]["state"], "frozen");
    assert_eq!(frozen[1]["note"], "holiday traffic");
    assert!(
        frozen[1]["by"]
            .as_str()
            .unwrap()
            .starts_with("operator via ")
    );

    // Resume: the learner's updates come again.
    assert_eq!(act("resume", "", Some(TOKEN)).0, 200);
    let resumed = server.wait_for("/experiments/b", Duration::from_secs(20), |body| {
        body["bandit"]["history"]
            .as_array()
            .is_some_and(|h| h.last().is_some_and(|r| r["action"] == "update"))
    });
    assert_eq!(resumed["bandit"]["state"], "learning");

    // Promote: everyone gets treatment, the user who was in control included.
    let control_user = (0..200)
        .map(|u| format!("user{u}"))
        .find(|u| {
            let (_, body) = server.post(
                "/recommend",
                &json!({"user_id": u, "experiment_id": "b", "n_recommendations": 1}),
            );
            body["experiment"]["group"] == "control"
        })
        .unwrap();
    let (status, body) = act("promote", "{\"group\": \"treatment\"}", Some(TOKEN));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["revision"]["weights"], json!([0.0, 1.0]));
    for user in [control_user.as_str(), "someone-new"] {
        let (_, body) = server.post(
            "/recommend",
            &json!({"user_id": user, "experiment_id": "b", "n_recommendations": 1}),
        );
        assert_eq!(body["experiment"]["group"], "treatment", "{user}: {body}");
        assert_eq!(body["model"], "collaborative", "{body}");
    }
    let (_, _, metrics) = server.get_text("/metrics");
    for line in [
        "recohost_bandit_weight{experiment=\"b\",group=\"control\"} 0",
        "recohost_bandit_weight{experiment=\"b\",group=\"treatment\"} 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line} in:\n{metrics}"
        );
    }
    // No update after a promotion.
    std::thread::sleep(Duration::from_secs(PERIOD_SECS * 2));
    let promoted = history(&server, "b");
    assert_eq!(promoted.last().unwrap()["action"], "promote");
    assert_eq!(promoted.last().unwrap()["state"], "promoted");

    // Reset: equal weights, counting starts over, the control user is back in control.
    assert_eq!(act("reset", "", Some(TOKEN)).0, 200);
    let (_, body) = server.post(
        "/recommend",
        &json!({"user_id": control_user, "experiment_id": "b", "n_recommendations": 1}),
    );
    assert_eq!(body["experiment"]["group"], "control", "{body}");
    let reset = history(&server, "b");
    let last = reset.iter().rev().find(|r| r["action"] == "reset").unwrap();
    assert_eq!(last["weights"], json!([0.5, 0.5]));
    assert_eq!(last["counted_from"], last["revision"]);
    let actions: Vec<&str> = reset
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions[..3], ["start", "freeze", "resume"], "{actions:?}");
    // Revisions are numbered without gaps.
    for (i, revision) in reset.iter().enumerate() {
        assert_eq!(revision["revision"], json!(i + 1));
    }
    // The newest two, oldest first; a bad count is refused.
    let (status, body) = server.get("/experiments/b?history=2");
    assert_eq!(status, 200, "{body}");
    let newest: Vec<Value> = body["bandit"]["history"].as_array().unwrap().clone();
    assert_eq!(newest.len(), 2);
    let number = |r: &Value| r["revision"].as_u64().unwrap();
    assert_eq!(number(&newest[0]) + 1, number(&newest[1]));
    assert!(number(&newest[1]) >= number(reset.last().unwrap()));
    assert_eq!(server.get("/experiments/b?history=-1").0, 400);
    assert_eq!(server.get("/experiments/b?history=100001").0, 400);
}
