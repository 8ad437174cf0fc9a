//! The dashboard in a real headless Chromium (Debian's chromium and chromium-driver) against
//! the real server with demo data: every page loads without a console error and draws its
//! charts with data, the pages refresh on their own, the explorer shows each arm's
//! recommendations, and the manual update button works with the operator token and is
//! refused without it. Each page's screenshot is saved (see `browser::screenshots_dir`).
//!
//! Charts mark their data points with the class `mark` and count them in `data-marks`, so
//! "renders with data" is a count, not a pixel comparison.

use std::time::Duration;

use recohost_e2e::browser::Browser;
use recohost_e2e::{Server, config_text, workspace_root};
use serde_json::{Value, json};

const TOKEN: &str = "dashboard-test-token";
const PAGE_LOAD: Duration = Duration::from_secs(30);

/// A server over demo data running the shipped experiment, with an operator token.
fn start_server(temp: &tempfile::TempDir) -> Server {
    let experiments = temp.path().join("experiments");
    std::fs::create_dir(&experiments).expect("experiments folder");
    std::fs::copy(
        workspace_root().join("experiments/model_comparison.toml"),
        experiments.join("model_comparison.toml"),
    )
    .expect("the shipped experiment");
    let config = config_text(&format!(
        "admin_token = {TOKEN:?}\nfallback_model = \"popularity\"\nexperiments_dir = {:?}\n",
        experiments.display().to_string()
    ));
    Server::start_in(&temp.path().join("data"), &config).expect("server starts")
}

/// Four rounds of traffic a couple of sampling intervals apart, so the overview charts have
/// several points: recommendations for 50 new users per round (exposures in both arms) and
/// again for some earlier ones (cache hits), clicks and ratings from some of them, and a
/// model update after every other round.
fn make_traffic(server: &Server) {
    for round in 0..4u64 {
        let mut events = Vec::new();
        let new_users = round * 50 + 1..=round * 50 + 50;
        // Twenty users of the previous round ask again.
        let again = (round > 0).then(|| (round - 1) * 50 + 1..=(round - 1) * 50 + 20);
        for user in new_users.clone().chain(again.into_iter().flatten()) {
            let (status, body) = server.post(
                "/recommend",
                &json!({"user_id": user, "n_recommendations": 5}),
            );
            assert_eq!(status, 200, "{body}");
            if !new_users.contains(&user) {
                continue;
            }
            let items = body["recommendations"].as_array().expect("recommendations");
            if user % 3 == 0 {
                events.push(
                    json!({"user_id": user, "item_id": items[0]["item_id"], "event_type": "click"}),
                );
            }
            if user % 4 == 0 {
                let rating = 2.0 + (user % 4) as f64 + (user % 3) as f64;
                events.push(json!({"user_id": user, "item_id": items[1]["item_id"], "event_type": "rate", "rating": rating}));
            }
        }
        let (status, body) = server.post("/events/batch", &json!({"events": events}));
        assert_eq!(status, 200, "{body}");
        if round % 2 == 1 {
            let before = update_count(server);
            let (status, body) = server.post_as("/learning/trigger-update", Some(TOKEN));
            assert_eq!(status, 202, "{body}");
            server.wait_for("/learning/stats", Duration::from_secs(60), |stats| {
                stats["update_count"].as_u64() > Some(before) && stats["running"].is_null()
            });
        }
        // Let the 2-second sampler close an interval between rounds.
        std::thread::sleep(Duration::from_millis(2100));
    }
}

fn open_page(browser: &Browser, server: &Server, page: &str) {
    browser.open(&format!("{}/dashboard/#{page}", server.base));
    browser.wait_until(
        &format!("the {page} page to load"),
        &format!("return document.getElementById('page').dataset.loaded === '{page}'"),
        PAGE_LOAD,
    );
}

/// The number of data marks of chart `name` on the page (-1 when there is no such chart),
/// after checking the chart has a caption and labelled axes.
fn chart_marks(browser: &Browser, name: &str) -> i64 {
    browser
        .script(
            "const figure = document.querySelector(`figure.chart[data-chart='${arguments[0]}']`);
             if (!figure) return -1;
             const marks = Number(figure.dataset.marks);
             if (marks > 0) {
               if (!figure.querySelector('figcaption').textContent) return -2;
               if (figure.querySelectorAll('svg .axis-label').length === 0) return -3;
               if (figure.querySelectorAll('svg .mark').length !== marks) return -4;
             }
             return marks;",
            vec![json!(name)],
        )
        .as_i64()
        .expect("a number")
}

fn assert_charts_have_data(browser: &Browser, page: &str, charts: &[&str]) {
    for chart in charts {
        let marks = chart_marks(browser, chart);
        assert!(
            marks > 0,
            "{page}: chart {chart} drew no data (code {marks})"
        );
    }
}

fn assert_no_console_errors(browser: &Browser, page: &str) {
    let errors = browser.console_errors();
    assert!(errors.is_empty(), "{page}: console errors: {errors:#?}");
}

fn update_count(server: &Server) -> u64 {
    let (status, stats) = server.get("/learning/stats");
    assert_eq!(status, 200, "{stats}");
    stats["update_count"].as_u64().expect("update_count")
}

#[test]
fn every_page_renders_live_data_and_the_update_button_needs_the_token() {
    let temp = tempfile::tempdir().expect("temp dir");
    let server = start_server(&temp);
    make_traffic(&server);
    let browser = Browser::start();

    // Overview: counts, and traffic, latency and cache charts over time.
    open_page(&browser, &server, "overview");
    assert_charts_have_data(&browser, "overview", &["traffic", "latency", "cache"]);
    let users_card = "return [...document.querySelectorAll('.card')]
        .find(c => c.querySelector('.card-label').textContent === 'Users')
        .querySelector('.card-value').textContent";
    assert_eq!(browser.script(users_card, vec![]), json!("2,000"));
    assert_no_console_errors(&browser, "overview");
    // Live refresh: a new user shows up without reloading the page.
    let (status, body) = server.post(
        "/events",
        &json!({"user_id": "dashboard-new-user", "item_id": 1, "event_type": "view"}),
    );
    assert_eq!(status, 200, "{body}");
    browser.wait_until(
        "the overview to refresh by itself",
        &format!("{users_card} === '2,001'"),
        Duration::from_secs(20),
    );
    browser.screenshot("overview");

    // Plugins: every plugin with its versions, health and latency.
    open_page(&browser, &server, "plugins");
    assert_charts_have_data(&browser, "plugins", &["plugin-latency", "plugin-calls"]);
    let rows = browser.script(
        "return document.querySelectorAll('table.plugins tbody tr').length",
        vec![],
    );
    assert_eq!(rows, json!(5), "one row per bundled plugin");
    let table = browser.text("table.plugins");
    for expected in ["hybrid", "collaborative", "ready", "1.0.0"] {
        assert!(
            table.contains(expected),
            "the plugins table lacks {expected:?}:\n{table}"
        );
    }
    assert_no_console_errors(&browser, "plugins");
    browser.screenshot("plugins");

    // Experiments: groups, CTR and mean rating with intervals, SRM.
    open_page(&browser, &server, "experiments");
    assert_charts_have_data(
        &browser,
        "experiments",
        &["exposures", "ctr", "mean-rating"],
    );
    let srm = browser.text(".experiment .srm");
    assert!(srm.contains("SRM:"), "no SRM status: {srm}");
    let groups = browser.text(".experiment table");
    assert!(
        groups.contains("control") && groups.contains("treatment"),
        "{groups}"
    );
    assert_no_console_errors(&browser, "experiments");
    browser.screenshot("experiments");

    // Explorer: a user's history, group, and each arm's recommendations side by side.
    open_page(&browser, &server, "explorer");
    browser.type_into("#explorer-user", "123");
    browser.click("form.explorer-form button");
    browser.wait_until(
        "the explorer to show user 123",
        "const result = document.getElementById('explorer-result');
         return result && result.dataset.user === '123'",
        PAGE_LOAD,
    );
    let arms = browser.script(
        "return [...document.querySelectorAll('.arm')].map(arm => ({
            model: arm.dataset.model,
            mine: arm.classList.contains('mine'),
            titles: [...arm.querySelectorAll('ol.recommendations li .title')].map(t => t.textContent),
         }))",
        vec![],
    );
    let arms = arms.as_array().expect("arms");
    assert_eq!(arms.len(), 2, "one column per group: {arms:?}");
    let models: Vec<&Value> = arms.iter().map(|a| &a["model"]).collect();
    assert_eq!(models, [&json!("collaborative"), &json!("hybrid")]);
    for arm in arms {
        let titles = arm["titles"].as_array().expect("titles");
        assert_eq!(titles.len(), 10, "{arm}");
        assert!(
            titles
                .iter()
                .all(|t| t.as_str().is_some_and(|t| !t.is_empty())),
            "{arm}"
        );
    }
    // The README's user 123 is in the hybrid (treatment) half.
    let (status, group) = server.get("/users/123/experiment-group?experiment_id=model_comparison");
    assert_eq!(status, 200, "{group}");
    let mine: Vec<&Value> = arms
        .iter()
        .filter(|a| a["mine"] == true)
        .map(|a| &a["model"])
        .collect();
    assert_eq!(mine, [&group["model"]]);
    let history = browser.script(
        "return document.querySelectorAll('table.history tbody tr').length",
        vec![],
    );
    assert!(history.as_u64() > Some(0), "no history rows");
    assert_no_console_errors(&browser, "explorer");
    browser.screenshot("explorer");

    // Learning: charts of past updates, and the manual update button.
    let (status, body) = server.post(
        "/events/batch",
        &json!({"events": (1..=20).map(|i| json!({"user_id": i, "item_id": i + 100, "event_type": "click"})).collect::<Vec<_>>()}),
    );
    assert_eq!(status, 200, "{body}");
    open_page(&browser, &server, "learning");
    assert_charts_have_data(
        &browser,
        "learning",
        &["update-duration", "feedback-per-update"],
    );
    assert_no_console_errors(&browser, "learning");
    let before = update_count(&server);

    // Without the token: refused, and nothing runs.
    browser.click("#trigger-update");
    browser.wait_until(
        "the refusal",
        "const m = document.getElementById('update-message'); return m && m.textContent.includes('Refused (401')",
        PAGE_LOAD,
    );
    assert_eq!(
        update_count(&server),
        before,
        "a refused click must not start an update"
    );
    let errors = browser.console_errors();
    assert!(
        !errors.is_empty()
            && errors
                .iter()
                .all(|e| e.contains("/learning/trigger-update") && e.contains("401")),
        "the only console errors should be the refused request: {errors:#?}"
    );

    // With the token, typed where an operator would: the update runs.
    browser.type_into("#admin-token", TOKEN);
    browser.click("#trigger-update");
    browser.wait_until(
        "the update to be scheduled",
        "const m = document.getElementById('update-message'); return m && /Update \\d+ (already )?scheduled/.test(m.textContent)",
        PAGE_LOAD,
    );
    server.wait_for("/learning/stats", Duration::from_secs(60), |stats| {
        stats["update_count"].as_u64() > Some(before) && stats["running"].is_null()
    });
    // The page shows the new update on its next refresh.
    let newest = before + 1;
    browser.wait_until(
        "the new update in the history table",
        &format!(
            "return [...document.querySelectorAll('#learning-page table tbody tr td:first-child')]
               .some(td => td.textContent === '{newest}')"
        ),
        Duration::from_secs(20),
    );
    assert_no_console_errors(&browser, "learning after the update");
    browser.screenshot("learning");
}

#[test]
fn empty_pages_say_what_to_do_next() {
    // No experiments folder, no traffic, no update yet.
    let temp = tempfile::tempdir().expect("temp dir");
    let server =
        Server::start_in(&temp.path().join("data"), &config_text("")).expect("server starts");
    let browser = Browser::start();

    open_page(&browser, &server, "experiments");
    let text = browser.text("#experiments-page .empty");
    assert!(text.contains("experiments_dir"), "{text}");

    open_page(&browser, &server, "learning");
    assert_eq!(chart_marks(&browser, "feedback-per-update"), 0);
    let text = browser.text("figure[data-chart='feedback-per-update'] .empty");
    assert!(
        text.contains("POST /events") && text.contains("button"),
        "{text}"
    );

    open_page(&browser, &server, "plugins");
    assert_eq!(chart_marks(&browser, "plugin-latency"), 0);
    let text = browser.text("figure[data-chart='plugin-latency'] .empty");
    assert!(text.contains("POST /recommend"), "{text}");

    open_page(&browser, &server, "explorer");
    let text = browser.text("#explorer-page .empty");
    assert!(text.contains("user ID"), "{text}");

    assert_no_console_errors(&browser, "empty pages");
}

#[test]
fn a_bandit_shows_its_weights_over_time_its_posteriors_and_its_leader() {
    // A bandit updated every second whose treatment arm gets every click: after a few
    // periods the weights have moved, and an operator froze them with a note.
    let temp = tempfile::tempdir().expect("temp dir");
    let experiments = temp.path().join("experiments");
    std::fs::create_dir(&experiments).expect("experiments folder");
    std::fs::write(
        experiments.join("bandit.toml"),
        "id = \"bandit\"\nname = \"Which model earns clicks\"\nstatus = \"running\"\n\
         sticky = true\n[allocation]\ntype = \"thompson\"\nperiod_secs = 1\nburn_in_users = 20\n\
         [[groups]]\nname = \"control\"\nplugin = \"popularity\"\n\
         [[groups]]\nname = \"treatment\"\nplugin = \"collaborative\"\n",
    )
    .expect("the bandit");
    let config = config_text(&format!(
        "admin_token = {TOKEN:?}\nexperiments_dir = {:?}\n",
        experiments.display().to_string()
    ));
    let server = Server::start_in(&temp.path().join("data"), &config).expect("server starts");
    for round in 0..4 {
        let mut clicks = Vec::new();
        for user in round * 60..round * 60 + 60 {
            let (status, body) = server.post(
                "/recommend",
                &json!({"user_id": format!("b{user}"), "n_recommendations": 1}),
            );
            assert_eq!(status, 200, "{body}");
            if body["experiment"]["group"] == "treatment" {
                clicks.push(json!({"user_id": format!("b{user}"), "event_type": "click",
                                   "item_id": body["recommendations"][0]["item_id"]}));
            }
        }
        let (status, body) = server.post("/events/batch", &json!({"events": clicks}));
        assert_eq!(status, 200, "{body}");
        std::thread::sleep(Duration::from_millis(1_300));
    }
    let (status, body) = server.post_raw_as(
        "/experiments/bandit/freeze",
        "{\"note\": \"checked by the dashboard test\"}",
        Some(TOKEN),
    );
    assert_eq!(status, 200, "{body}");

    let browser = Browser::start();
    open_page(&browser, &server, "experiments");
    assert!(
        chart_marks(&browser, "bandit-weights") >= 6,
        "too few revisions charted"
    );
    assert_eq!(chart_marks(&browser, "bandit-posterior"), 2);
    let leader = browser.text(".experiment .bandit .leader");
    assert!(
        leader.contains("treatment leads") && leader.contains("chance of being the best"),
        "{leader}"
    );
    let actions = browser.text(".experiment .bandit-actions");
    assert!(
        actions.contains("freeze") && actions.contains("checked by the dashboard test"),
        "{actions}"
    );
    assert_no_console_errors(&browser, "bandit experiment");
    browser.screenshot("experiments-bandit");
}

#[test]
fn the_monitoring_page_shows_quality_drift_and_alerts() {
    // One-second windows of at least 100 events; every list judged a second after it is
    // served. New users clicking what they were recommended: lists are hit, and a stream of
    // clicks only, from new users, is far from the demo data's mix: a drift alert.
    let temp = tempfile::tempdir().expect("temp dir");
    let config = config_text(
        "[monitoring]\nwindow_secs = 1\nmin_window_events = 100\nattribution_secs = 1\n",
    );
    let server = Server::start_in(&temp.path().join("data"), &config).expect("server starts");
    for round in 0..3 {
        let mut clicks = Vec::new();
        for user in round * 150..round * 150 + 150 {
            let (status, body) = server.post(
                "/recommend",
                &json!({"user_id": format!("m{user}"), "n_recommendations": 5}),
            );
            assert_eq!(status, 200, "{body}");
            clicks.push(json!({"user_id": format!("m{user}"), "event_type": "click",
                               "item_id": body["recommendations"][0]["item_id"]}));
        }
        let (status, body) = server.post("/events/batch", &json!({"events": clicks}));
        assert_eq!(status, 200, "{body}");
        std::thread::sleep(Duration::from_millis(1_200));
    }
    server.wait_for("/alerts", Duration::from_secs(30), |body| {
        body["open"].as_array().is_some_and(|open| !open.is_empty())
    });
    server.wait_for("/monitoring", Duration::from_secs(30), |body| {
        let windows = body["windows"].as_array().expect("windows");
        windows.iter().filter(|w| !w["drift"].is_null()).count() >= 2
            && windows.iter().any(|w| {
                w["quality"]
                    .as_array()
                    .expect("quality")
                    .iter()
                    .any(|q| q["lists_judged"].as_u64() > Some(0))
            })
    });

    let browser = Browser::start();
    open_page(&browser, &server, "monitoring");
    assert!(
        chart_marks(&browser, "hit-rate") >= 1,
        "no hit rate charted"
    );
    assert!(chart_marks(&browser, "drift-psi") >= 2, "no drift charted");
    let alerts = browser.text("#monitoring-page table.alerts");
    assert!(
        alerts.contains("drift:") && alerts.contains("PSI"),
        "{alerts}"
    );
    let versions = browser.text("#monitoring-page table.versions");
    assert!(versions.contains("hybrid"), "{versions}");
    let drift = browser.text("#monitoring-page table.drift");
    assert!(
        drift.contains("event_kind") && drift.contains("alert"),
        "{drift}"
    );
    assert_no_console_errors(&browser, "monitoring");
    browser.screenshot("monitoring");
}
