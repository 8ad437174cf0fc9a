//! Model monitoring through the real server: ML-100k's oldest 80% imported, the newest 20%
//! replayed in time order through `POST /events`, a list asked for before each event (so the
//! event can hit it), as a client would.
//!
//! - Stationary: no alert and no rollback.
//! - Ratings one star higher for a stretch of the stream: a `drift:rating` alert within two
//!   drift windows of events, received by a local webhook, resolved after the stream returns.
//! - A plugin whose second update makes it rank at random, with `auto_rollback`: its hit
//!   rate drops, it is rolled back to its previous model, which serves again.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use recohost_e2e::{Server, binary, fixture, movielens_100k, plugins_dir};
use serde_json::{Value, json};

/// Events in a drift window (`min_window_events`).
const WINDOW_EVENTS: u64 = 2_000;

struct Rating {
    user: u32,
    item: u32,
    rating: f64,
    timestamp: u64,
}

/// ML-100k's ratings in time order (read in memory: never copied).
fn ratings(dataset: &Path) -> Vec<Rating> {
    let text = std::fs::read_to_string(dataset.join("u.data")).unwrap();
    let mut out: Vec<Rating> = text
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            Rating {
                user: f[0].parse().unwrap(),
                item: f[1].parse().unwrap(),
                rating: f[2].parse().unwrap(),
                timestamp: f[3].parse().unwrap(),
            }
        })
        .collect();
    // Stable, as `recohost import --oldest` sorts.
    out.sort_by_key(|r| r.timestamp);
    out
}

/// A server on ML-100k's oldest 80%, serving `plugins` (TOML), monitoring as given.
fn start(
    dataset: &Path,
    monitoring: &str,
    learning: &str,
    plugins: &str,
) -> (tempfile::TempDir, Server) {
    let temp = tempfile::tempdir().unwrap();
    let data_dir = temp.path().join("data");
    let status = std::process::Command::new(binary())
        .args([
            "import",
            "--format",
            "movielens",
            "--oldest",
            "0.8",
            "--data-dir",
        ])
        .arg(&data_dir)
        .arg(dataset)
        .env("RECOHOST_LOG", "warn")
        .status()
        .unwrap();
    assert!(status.success());
    let config = format!(
        "bind = \"127.0.0.1:0\"\ndemo_data = false\ndefault_model = \"popularity\"\n\
         [monitoring]\nwindow_secs = 1\nmin_window_events = {WINDOW_EVENTS}\n\
         reference_events = 20000\nattribution_secs = 5\nquality_min_lists = 500\n{monitoring}\n\
         [learning]\nupdate_interval_secs = 0\n{learning}\n{plugins}"
    );
    let server = Server::start_in(&data_dir, &config).unwrap();
    (temp, server)
}

fn popularity() -> String {
    format!(
        "[[plugins]]\nname = \"popularity\"\npath = {:?}\n",
        plugins_dir().join("popularity.wasm")
    )
}

/// Replays `events`: for each, a list of `model` for its user, then the event (its rating
/// changed by `shift(n)` for the n-th). `after(n)` runs after the n-th event.
fn replay(
    server: &Server,
    events: &[Rating],
    model: &str,
    shift: impl Fn(usize) -> f64,
    mut after: impl FnMut(usize),
) {
    for (n, event) in events.iter().enumerate() {
        let (status, body) = server.post(
            "/recommend",
            &json!({"user_id": event.user.to_string(), "n_recommendations": 10, "model_type": model}),
        );
        assert_eq!(status, 200, "{body}");
        let rating = (event.rating + shift(n)).clamp(1.0, 5.0);
        let (status, body) = server.post(
            "/events",
            &json!({
                "user_id": event.user.to_string(),
                "item_id": event.item.to_string(),
                "event_type": "rate",
                "rating": rating,
                "timestamp": event.timestamp,
            }),
        );
        assert!(
            status == 200 || status == 201 || status == 202,
            "{status} {body}"
        );
        after(n);
    }
}

fn alerts(server: &Server) -> Value {
    server.get("/alerts?hours=1").1
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|a| a["alert"].as_str().unwrap().to_string())
        .collect()
}

/// Waits until the monitor has closed a drift window over everything replayed.
fn settle(server: &Server, windows_before: usize) {
    server.wait_for("/monitoring?limit=2016", Duration::from_secs(60), |body| {
        body["windows"]
            .as_array()
            .unwrap()
            .iter()
            .skip(windows_before)
            .filter(|w| !w["drift"].is_null())
            .count()
            >= 1
    });
}

#[test]
fn a_stationary_replay_raises_no_alert_and_rolls_nothing_back() {
    let Some(dataset) = movielens_100k() else {
        return;
    };
    let all = ratings(&dataset);
    let replayed = &all[all.len() * 4 / 5..];
    let (_temp, server) = start(&dataset, "", "update_buffer_size = 1000", &popularity());
    replay(&server, replayed, "popularity", |_| 0.0, |_| {});
    settle(&server, 0);
    // Every list judged (attribution 5 s).
    std::thread::sleep(Duration::from_secs(6));
    let body = alerts(&server);
    let monitoring = server.get("/monitoring?limit=2016").1;
    let drift: Vec<&Value> = monitoring["windows"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|w| w["drift"].as_object().map(|_| &w["drift"]))
        .collect();
    eprintln!("drift windows: {}", drift.len());
    for d in &drift {
        let psis: Vec<String> = d["features"]
            .as_array()
            .unwrap()
            .iter()
            .chain(d["predictions"].as_array().unwrap())
            .map(|f| {
                format!(
                    "{}={:.3}",
                    f["name"].as_str().unwrap(),
                    f["psi"].as_f64().unwrap_or(f64::NAN)
                )
            })
            .collect();
        eprintln!("  {} events: {}", d["events"], psis.join(" "));
    }
    assert!(drift.len() >= 3, "{monitoring}");
    assert_eq!(names(&body["open"]), Vec::<String>::new(), "{body}");
    assert_eq!(names(&body["recent"]), Vec::<String>::new(), "{body}");
    // Quality was measured: lists judged, a hit rate well above chance (10 of 1,682).
    let judged: u64 = monitoring["windows"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|w| w["quality"].as_array().unwrap().iter())
        .map(|q| q["lists_judged"].as_u64().unwrap())
        .sum();
    let unanswered: u64 = monitoring["windows"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|w| w["quality"].as_array().unwrap().iter())
        .map(|q| q["lists_unanswered"].as_u64().unwrap())
        .sum();
    let served: u64 = monitoring["windows"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|w| w["quality"].as_array().unwrap().iter())
        .map(|q| q["lists_served"].as_u64().unwrap())
        .sum();
    eprintln!(
        "lists served {served}, judged {judged}, unanswered {unanswered}, unjudged {}, open {}",
        monitoring["lists_unjudged"], monitoring["lists_open"]
    );
    // Every list is followed by its user's next event: all of them are judged.
    assert_eq!(served as usize, replayed.len());
    assert_eq!((judged, unanswered), (served, 0));
    assert_eq!(monitoring["lists_unjudged"], 0);
    let stats = server.get("/learning/stats").1;
    assert!(
        stats["models"]["popularity"].get("held").is_none(),
        "{stats}"
    );
    let history = server.get("/learning/history?limit=1000").1;
    assert!(
        history["updates"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["kind"] != "rollback"),
        "{history}"
    );
}

/// A local webhook receiver: the JSON bodies POSTed to it, in order.
fn webhook_receiver() -> (String, Arc<Mutex<Vec<Value>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let received = Arc::new(Mutex::new(Vec::new()));
    let bodies = received.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(value) = lower.strip_prefix("content-length:") {
                    length = value.trim().parse().unwrap_or(0);
                }
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_ok()
                && let Ok(value) = serde_json::from_slice(&body)
            {
                bodies.lock().unwrap().push(value);
            }
            let _ = stream.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
        }
    });
    (url, received)
}

#[test]
fn ratings_a_star_higher_raise_a_drift_alert_sent_to_the_webhook_and_resolved_after() {
    let Some(dataset) = movielens_100k() else {
        return;
    };
    let all = ratings(&dataset);
    let replayed = &all[all.len() * 4 / 5..];
    let (url, received) = webhook_receiver();
    let (_temp, server) = start(
        &dataset,
        &format!("[[monitoring.webhooks]]\nurl = {url:?}\n"),
        "update_buffer_size = 1000",
        &popularity(),
    );
    // Events 6,000 to 12,000 are a star higher; then the stream returns to normal.
    let (from, to) = (6_000, 12_000);
    let raised_after = Arc::new(Mutex::new(None));
    let seen = raised_after.clone();
    let receiver = received.clone();
    replay(
        &server,
        replayed,
        "popularity",
        |n| if (from..to).contains(&n) { 1.0 } else { 0.0 },
        |n| {
            let mut seen = seen.lock().unwrap();
            if seen.is_none()
                && receiver
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|b| b["status"] == "raised" && b["alert"]["alert"] == "drift:rating")
            {
                *seen = Some(n);
            }
        },
    );
    settle(&server, 0);
    std::thread::sleep(Duration::from_secs(3));
    let at = raised_after
        .lock()
        .unwrap()
        .expect("the webhook got the drift alert");
    eprintln!(
        "drift:rating raised at event {at}, {} events after the shift began",
        at - from
    );
    // A drift window closes once it holds 2,000 events (and a second has passed); the one
    // that starts after the shift is all shifted: within two windows and a second's events.
    assert!(at >= from && at < from + 3 * WINDOW_EVENTS as usize, "{at}");
    let body = alerts(&server);
    let rating: Vec<&Value> = body["recent"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["alert"] == "drift:rating")
        .collect();
    assert_eq!(rating.len(), 1, "raised once, and resolved: {body}");
    assert!(
        !names(&body["open"]).contains(&"drift:rating".to_string()),
        "{body}"
    );
    assert!(
        rating[0]["evidence"]["psi"].as_f64().unwrap() >= 0.25,
        "{body}"
    );
    let hooks = received.lock().unwrap();
    let statuses: Vec<&str> = hooks
        .iter()
        .filter(|b| b["alert"]["alert"] == "drift:rating")
        .map(|b| b["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, vec!["raised", "resolved"], "{hooks:?}");
}

#[test]
fn a_plugin_ranking_at_random_after_an_update_is_rolled_back_and_its_previous_model_serves() {
    let Some(dataset) = movielens_100k() else {
        return;
    };
    let all = ratings(&dataset);
    let replayed = &all[all.len() * 4 / 5..];
    let plugin = format!(
        "[[plugins]]\nname = \"fragile\"\npath = {:?}\nauto_rollback = true\n\
         [plugins.config]\nrandom_after_updates = 1\n{}",
        fixture("misbehaving"),
        popularity()
    );
    let (_temp, server) = start(&dataset, "", "update_buffer_size = 3000", &plugin);
    let probe = || {
        let body = server
            .post(
                "/recommend",
                &json!({"user_id": "probe", "n_recommendations": 10, "model_type": "fragile"}),
            )
            .1;
        (
            body["model_version"].as_u64().unwrap(),
            body["recommendations"].clone(),
        )
    };
    let mut answers: Vec<(u64, Value)> = Vec::new();
    let mut rolled_back_at = None;
    let mut times = Vec::new();
    replay(
        &server,
        replayed,
        "fragile",
        |_| 0.0,
        |n| {
            times.push(std::time::Instant::now());
            if n % 250 == 0 {
                answers.push(probe());
            }
            if rolled_back_at.is_none() && n % 50 == 0 {
                let stats = server.get("/learning/stats").1;
                if stats["models"]["fragile"].get("held").is_some() {
                    rolled_back_at = Some(n);
                }
            }
        },
    );
    let at = rolled_back_at.expect("rolled back during the replay");
    let stats = server.get("/learning/stats").1;
    let hold = stats["models"]["fragile"]["held"].clone();
    let (bad, restored, serving) = (
        hold["bad_version"].as_u64().unwrap(),
        hold["restored_version"].as_u64().unwrap(),
        hold["serving_version"].as_u64().unwrap(),
    );
    eprintln!("rolled back at event {at}: {hold}");
    // The broken version came with the second update (3,000 events per update). It is
    // judged on its first 500 lists, each at its user's next event (here the next request):
    // it serves those 500, and what is served until the monitor's next tick (500 ms) acts
    // and the test sees it (it polls every 50 events): well within 2 s of traffic.
    assert!(at > 6_000, "{at}");
    let served_by_bad: u64 = server.get("/monitoring?limit=2016").1["windows"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|w| w["quality"].as_array().unwrap().iter())
        .filter(|q| {
            q["plugin"] == "fragile"
                && (bad..serving).contains(&q["model_version"].as_u64().unwrap())
        })
        .map(|q| q["lists_served"].as_u64().unwrap())
        .sum();
    let in_the_wait = times
        .iter()
        .filter(|t| **t <= times[at] && times[at].duration_since(**t) <= Duration::from_secs(2))
        .count() as u64;
    eprintln!(
        "the broken line (versions {bad} to {serving} exclusive) served {served_by_bad} lists before the rollback; the replay served {in_the_wait} in the last 2 s before it"
    );
    assert!(
        (500..=500 + in_the_wait + 100).contains(&served_by_bad),
        "{served_by_bad} {in_the_wait}"
    );
    assert!(restored < bad && bad < serving, "{hold}");
    // The restored model answers exactly as the version it restores did.
    let before: Vec<&Value> = answers
        .iter()
        .filter(|(v, _)| *v == restored)
        .map(|(_, a)| a)
        .collect();
    let after: Vec<&Value> = answers
        .iter()
        .filter(|(v, _)| *v == serving)
        .map(|(_, a)| a)
        .collect();
    let broken: Vec<&Value> = answers
        .iter()
        .filter(|(v, _)| *v == bad)
        .map(|(_, a)| a)
        .collect();
    assert!(
        !before.is_empty() && !after.is_empty() && !broken.is_empty(),
        "{answers:?}"
    );
    assert!(after.iter().all(|a| *a == before[0]), "{answers:?}");
    assert_ne!(broken[0], before[0]);
    // Held: no update since.
    assert_eq!(stats["models"]["fragile"]["model_version"], serving);
    // The alert and the history say so.
    let body = alerts(&server);
    let quality: Vec<&Value> = body["open"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["alert"] == "quality:fragile")
        .collect();
    assert_eq!(quality.len(), 1, "{body}");
    assert_eq!(
        quality[0]["evidence"]["rollback"]["restored_version"],
        restored
    );
    assert!(
        quality[0]["summary"]
            .as_str()
            .unwrap()
            .contains("rolled back")
    );
    let history = server.get("/learning/history?limit=1000").1;
    let rollback = history["updates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == "rollback")
        .expect("the rollback is in the history");
    assert_eq!(rollback["trigger"], "monitoring");
    assert_eq!(
        rollback["outcomes"]["fragile"]["restored_version"],
        restored
    );
    // Popularity, monitored alongside, kept learning and raised nothing.
    assert!(stats["models"]["popularity"].get("held").is_none());
}
