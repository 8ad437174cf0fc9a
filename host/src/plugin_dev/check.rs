//! `recohost plugin check FILE.wasm`: everything the server will ask of a plugin, asked once
//! on a small generated dataset under the production limits, with every answer checked
//! against the contract (`wit/strategy.wit`) rather than cleaned up as the server does.
//!
//! Steps, stopping at the first failure: load (compile, WIT version and exports, `describe`,
//! `configure`), `train`, `recommend` for a spread of users and an anonymous visitor at every
//! list length from 1 to 50, `predict` when the plugin says it predicts ratings, `update`, and
//! `save` then `load` into a fresh instance that must answer identically, and `load` of bytes
//! no `save` made, which must be refused with `invalid-input`. Throughout: no
//! trap, no time or memory limit hit, no more log than the per-call limit, no network use.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::catalog::{Catalog, wit_kind};
use crate::import::demo::{DemoSize, generate};
use crate::plugins::bindings::{Feedback, Request, Scored, StrategyError};
use crate::plugins::instance::CallError;
use crate::plugins::runtime::Session;
use crate::plugins::{PluginEngine, PluginLimits, PluginRuntime};

/// Longest list the check asks for; every length from 1 up to it is tried.
const MAX_COUNT: u32 = 50;
/// Users asked for recommendations (spread over the generated ones).
const USERS_ASKED: usize = 20;
/// History passed with a request, newest first (the server's default `history_limit`).
const HISTORY: usize = 500;

/// What the check measured, and the first problem if any.
#[derive(Debug, Serialize)]
pub struct CheckReport {
    pub file: String,
    pub size_bytes: u64,
    pub passed: bool,
    /// Why the plugin fails the check.
    pub failure: Option<String>,
    /// The steps that ran, in order, with what each found.
    pub steps: Vec<Step>,
    pub plugin: Option<PluginFacts>,
    pub dataset: Dataset,
    pub figures: Figures,
}

#[derive(Debug, Serialize)]
pub struct Step {
    pub name: &'static str,
    pub passed: bool,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct PluginFacts {
    pub name: String,
    pub version: String,
    pub description: String,
    pub wit_version: String,
    pub predicts_ratings: bool,
}

#[derive(Debug, Serialize)]
pub struct Dataset {
    pub items: usize,
    pub users: usize,
    pub train_events: usize,
    pub update_events: usize,
}

#[derive(Debug, Default, Serialize)]
pub struct Figures {
    /// Compile, contract check, `describe` and `configure`.
    pub load_ms: Option<f64>,
    pub train_ms: Option<f64>,
    pub recommend_calls: usize,
    pub recommend_p50_us: Option<f64>,
    pub recommend_p99_us: Option<f64>,
    pub recommend_max_us: Option<f64>,
    pub update_ms: Option<f64>,
    pub snapshot_bytes: Option<usize>,
    /// A fresh instance from the compiled component: instantiate, `configure`, `load` of the
    /// snapshot (what the server pays to add a serving instance).
    pub instance_start_ms: Option<f64>,
    /// That instance's first `recommend`.
    pub first_recommend_us: Option<f64>,
    /// Largest linear memory of the instance that trained and served.
    pub peak_memory_bytes: Option<usize>,
}

/// The generated dataset: demo data (titled, tagged items; users with genre tastes), the
/// oldest 90% of its events to train on and the newest 10% to update with.
pub(crate) struct CheckData {
    pub(crate) catalog: Catalog,
    pub(crate) users: usize,
    pub(crate) train: Vec<Feedback>,
    pub(crate) update: Vec<Feedback>,
    /// Each user's events, newest first.
    pub(crate) histories: Vec<Vec<Feedback>>,
}

pub(crate) fn dataset() -> CheckData {
    dataset_of(&DemoSize {
        users: 200,
        items: 300,
        seed: 7,
    })
}

/// [`dataset`] at another size.
pub(crate) fn dataset_of(size: &DemoSize) -> CheckData {
    let batch = generate(size);
    let catalog = Catalog::new(batch.items);
    let mut user_index: HashMap<String, u32> = HashMap::new();
    let mut events: Vec<Feedback> = batch
        .events
        .iter()
        .filter_map(|event| {
            let next = user_index.len() as u32;
            let user = *user_index.entry(event.user.clone()).or_insert(next);
            Some(Feedback {
                user,
                item: catalog.index_of(&event.item)?,
                kind: wit_kind(event.kind),
                value: event.value,
                timestamp: event.timestamp,
            })
        })
        .collect();
    events.sort_by_key(|e| e.timestamp);
    let mut histories = vec![Vec::new(); user_index.len()];
    for event in events.iter().rev() {
        histories[event.user as usize].push(*event);
    }
    let update = events.split_off(events.len() * 9 / 10);
    CheckData {
        catalog,
        users: user_index.len(),
        train: events,
        update,
        histories,
    }
}

/// The data a check runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CheckDataset {
    /// 300 items, 200 users, ~8,600 events: seconds, for every build.
    Small,
    /// The server's demo data (1,200 items, 2,000 users, ~100,000 events): figures that
    /// say what the plugin costs in the demo.
    Demo,
}

/// Runs the check of the plugin at `path`, configured with `config_json`, under `limits`.
pub fn check(
    path: &Path,
    config_json: &str,
    limits: PluginLimits,
    dataset: CheckDataset,
) -> CheckReport {
    let data = match dataset {
        CheckDataset::Small => self::dataset(),
        CheckDataset::Demo => dataset_of(&DemoSize::default()),
    };
    let mut run = Run {
        report: CheckReport {
            file: path.display().to_string(),
            size_bytes: std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
            passed: false,
            failure: None,
            steps: Vec::new(),
            plugin: None,
            dataset: Dataset {
                items: data.catalog.len(),
                users: data.users,
                train_events: data.train.len(),
                update_events: data.update.len(),
            },
            figures: Figures::default(),
        },
    };
    match run.steps(path, config_json, limits, &data) {
        Ok(()) => run.report.passed = true,
        Err(failure) => run.report.failure = Some(failure),
    }
    run.report
}

struct Run {
    report: CheckReport,
}

fn millis(elapsed: Duration) -> f64 {
    (elapsed.as_secs_f64() * 1e6).round() / 1e3
}

impl Run {
    /// Records a step; a failed step ends the check with `detail` as the reason.
    fn step(&mut self, name: &'static str, outcome: Result<String, String>) -> Result<(), String> {
        let passed = outcome.is_ok();
        let detail = match outcome {
            Ok(detail) | Err(detail) => detail,
        };
        self.report.steps.push(Step {
            name,
            passed,
            detail: detail.clone(),
        });
        if passed {
            Ok(())
        } else {
            Err(format!("{name}: {detail}"))
        }
    }

    fn steps(
        &mut self,
        path: &Path,
        config_json: &str,
        limits: PluginLimits,
        data: &CheckData,
    ) -> Result<(), String> {
        let engine = PluginEngine::new(None)
            .map_err(|e| format!("{e:#}"))?
            .observing_network();
        let started = Instant::now();
        // Errors name the plugin by its file, as a server would by its declared name.
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "plugin".into());
        let loaded = PluginRuntime::load(
            &engine,
            &name,
            path,
            config_json.to_string(),
            limits.clone(),
            data.catalog.plugin_items(),
            data.catalog.fingerprint(),
        );
        self.report.figures.load_ms = Some(millis(started.elapsed()));
        let plugin = match loaded {
            Ok(plugin) => plugin,
            Err(error) => return self.step("load", Err(error.to_string())),
        };
        let status = plugin.status();
        self.report.plugin = Some(PluginFacts {
            name: plugin.info().name.clone(),
            version: status.version.clone(),
            description: status.description.clone(),
            wit_version: status.wit_version.clone(),
            predicts_ratings: plugin.predicts_ratings(),
        });
        self.step(
            "load",
            Ok(format!(
                "WIT {}, configured with {} items",
                status.wit_version,
                data.catalog.len()
            )),
        )?;

        let started = Instant::now();
        let trained = plugin.session(&data.train);
        self.report.figures.train_ms = Some(millis(started.elapsed()));
        let mut session = match trained {
            Ok(session) => session,
            Err(error) => return self.step("train", Err(error.to_string())),
        };
        self.step("train", Ok(format!("{} events", data.train.len())))?;

        let outcome = self.recommend_everywhere(&mut session, data, &limits);
        self.step("recommend", outcome)?;

        if plugin.predicts_ratings() {
            let outcome = predict_is_well_formed(&mut session, data);
            self.step("predict", outcome)?;
        }

        let started = Instant::now();
        let updated = session.update(&data.update);
        self.report.figures.update_ms = Some(millis(started.elapsed()));
        if let Err(error) = updated {
            return self.step("update", Err(error.to_string()));
        }
        let outcome = answer_for(&mut session, data, 0, 10)
            .map(|_| format!("{} new events, then a valid answer", data.update.len()));
        self.step("update", outcome)?;

        let outcome = self.round_trip(&plugin, &mut session, data);
        self.report.figures.peak_memory_bytes = Some(session.instance().peak_memory_bytes());
        let outcome = outcome.and_then(|detail| sandbox_kept(&session, &limits).map(|()| detail));
        self.step("save and load", outcome)?;

        let outcome = refuses_a_foreign_snapshot(&mut session, data)
            .and_then(|detail| sandbox_kept(&session, &limits).map(|()| detail));
        self.step("foreign bytes", outcome)
    }

    /// Every list length from 1 to [`MAX_COUNT`] for each asked user and an anonymous one.
    fn recommend_everywhere(
        &mut self,
        session: &mut Session,
        data: &CheckData,
        limits: &PluginLimits,
    ) -> Result<String, String> {
        let stride = (data.users / USERS_ASKED).max(1);
        let users: Vec<Option<u32>> = (0..data.users)
            .step_by(stride)
            .take(USERS_ASKED)
            .map(|u| Some(u as u32))
            .chain([None])
            .collect();
        let mut latencies = Vec::new();
        for user in &users {
            for count in 1..=MAX_COUNT {
                let request = request_for(data, *user, count);
                let started = Instant::now();
                // The request first: a trap's reason ends with a multi-line backtrace.
                let context = || format!("user {}, count {count}", describe_user(*user));
                let answer = session
                    .recommend(&request)
                    .map_err(|e| format!("{}: {e}", context()))?;
                latencies.push(started.elapsed());
                well_formed(&answer, &request, data.catalog.len())
                    .map_err(|problem| format!("{}: {problem}", context()))?;
                sandbox_kept(session, limits)
                    .map_err(|problem| format!("{}: {problem}", context()))?;
            }
        }
        latencies.sort();
        let at = |q: f64| {
            let index = ((latencies.len() - 1) as f64 * q).round() as usize;
            (latencies[index].as_secs_f64() * 1e7).round() / 10.0
        };
        let figures = &mut self.report.figures;
        figures.recommend_calls = latencies.len();
        figures.recommend_p50_us = Some(at(0.5));
        figures.recommend_p99_us = Some(at(0.99));
        figures.recommend_max_us = Some(at(1.0));
        Ok(format!(
            "{} calls ({} users and an anonymous visitor, counts 1-{MAX_COUNT}), every answer well formed",
            latencies.len(),
            users.len() - 1
        ))
    }

    fn round_trip(
        &mut self,
        plugin: &PluginRuntime,
        session: &mut Session,
        data: &CheckData,
    ) -> Result<String, String> {
        let snapshot = session.save().map_err(|e| e.to_string())?;
        self.report.figures.snapshot_bytes = Some(snapshot.len());
        let started = Instant::now();
        let mut restored = plugin
            .session_from_snapshot(&snapshot)
            .map_err(|e| e.to_string())?;
        self.report.figures.instance_start_ms = Some(millis(started.elapsed()));
        let started = Instant::now();
        answer_for(&mut restored, data, 0, 10)?;
        self.report.figures.first_recommend_us =
            Some((started.elapsed().as_secs_f64() * 1e7).round() / 10.0);
        for user in (0..data.users).step_by((data.users / 10).max(1)).take(10) {
            let before = answer_for(session, data, user, 10)?;
            let after = answer_for(&mut restored, data, user, 10)?;
            if !same_answer(&before, &after) {
                return Err(format!(
                    "a model loaded from its snapshot answers differently (user {user}: {} before, {} after)",
                    summary(&before),
                    summary(&after)
                ));
            }
        }
        Ok(format!(
            "a {} KiB snapshot; a fresh instance loaded from it answers identically",
            snapshot.len().div_ceil(1024)
        ))
    }
}

/// `load` of bytes no `save` made must give `invalid-input`, never a trap, and leave an
/// instance that still answers (the contract's `load`). A plugin whose binding lets an
/// exception escape (a Python `ValueError`, a JavaScript `Error` without a `payload`) traps
/// here, and every corrupt snapshot would cost the server an instance.
fn refuses_a_foreign_snapshot(session: &mut Session, data: &CheckData) -> Result<String, String> {
    const FOREIGN: &[u8] = b"not a snapshot: bytes recohost plugin check hands to `load`";
    match session.load(FOREIGN) {
        Err(CallError::Refused {
            error: StrategyError::InvalidInput(_),
            ..
        }) => {}
        Ok(()) => {
            return Err(
                "`load` accepted bytes that no `save` made; it must refuse them with invalid-input"
                    .into(),
            );
        }
        Err(CallError::Refused { error, .. }) => {
            return Err(format!(
                "`load` refused bytes that no `save` made with {error:?}; the contract asks for invalid-input"
            ));
        }
        Err(other) => return Err(other.to_string()),
    }
    answer_for(session, data, 0, 10)
        .map(|_| "refused with invalid-input, and the instance answers after it".into())
}

fn describe_user(user: Option<u32>) -> String {
    user.map_or_else(|| "anonymous".into(), |u| u.to_string())
}

pub(crate) fn request_for(data: &CheckData, user: Option<u32>, count: u32) -> Request {
    let history: Vec<Feedback> = user
        .map(|u| {
            data.histories[u as usize]
                .iter()
                .take(HISTORY)
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let exclude: Vec<u32> = history
        .iter()
        .map(|e| e.item)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    Request {
        user,
        count,
        history,
        exclude,
    }
}

fn answer_for(
    session: &mut Session,
    data: &CheckData,
    user: usize,
    count: u32,
) -> Result<Vec<Scored>, String> {
    let request = request_for(data, Some(user as u32), count);
    let answer = session.recommend(&request).map_err(|e| e.to_string())?;
    well_formed(&answer, &request, data.catalog.len()).map_err(|p| format!("{p} (user {user})"))?;
    Ok(answer)
}

/// The contract of `recommend`'s answer: at most `count` items, each in the catalog, none
/// excluded, none twice, every score finite.
pub fn well_formed(answer: &[Scored], request: &Request, catalog_len: usize) -> Result<(), String> {
    if answer.len() > request.count as usize {
        return Err(format!(
            "returned {} items when asked for {}",
            answer.len(),
            request.count
        ));
    }
    let excluded: HashSet<u32> = request.exclude.iter().copied().collect();
    let mut seen = HashSet::new();
    for entry in answer {
        if entry.item as usize >= catalog_len {
            return Err(format!(
                "returned item index {}, outside the catalog of {catalog_len} items",
                entry.item
            ));
        }
        if !entry.score.is_finite() {
            return Err(format!("item {} has the score {}", entry.item, entry.score));
        }
        if excluded.contains(&entry.item) {
            return Err(format!(
                "returned item {}, which the request excluded (the user already has it)",
                entry.item
            ));
        }
        if !seen.insert(entry.item) {
            return Err(format!("returned item {} twice", entry.item));
        }
    }
    Ok(())
}

fn same_answer(a: &[Scored], b: &[Scored]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.item == y.item && x.score.to_bits() == y.score.to_bits())
}

fn summary(answer: &[Scored]) -> String {
    let items: Vec<String> = answer.iter().take(3).map(|s| s.item.to_string()).collect();
    format!("[{}...]", items.join(", "))
}

fn predict_is_well_formed(session: &mut Session, data: &CheckData) -> Result<String, String> {
    let items: Vec<u32> = (0..data.catalog.len().min(50) as u32).collect();
    for user in (0..data.users as u32).step_by(20) {
        // An answer of another length is refused by `predict` itself, with its reason.
        let ratings = session.predict(user, &items).map_err(|e| e.to_string())?;
        if let Some(bad) = ratings.iter().find(|r| !r.is_finite()) {
            return Err(format!("predicted the rating {bad} for user {user}"));
        }
    }
    Ok(format!(
        "{} items per user, every rating finite",
        items.len()
    ))
}

/// What a plugin must not have done, whatever its answers: log past the per-call limit or
/// try the network (the sandbox refused it; a plugin that tries is not one to deploy).
fn sandbox_kept(session: &Session, limits: &PluginLimits) -> Result<(), String> {
    let instance = session.instance();
    let dropped = instance.log_messages_dropped();
    if dropped > 0 {
        return Err(format!(
            "logged more than {} bytes in one call (limits.max_log_bytes_per_call); {dropped} messages were dropped",
            limits.max_log_bytes_per_call
        ));
    }
    let network = instance.denied_network();
    if !network.is_empty() {
        return Err(format!(
            "tried to use the network, which the sandbox refused: {}",
            network.join(", ")
        ));
    }
    Ok(())
}

/// The report as the terminal shows it.
pub fn render(report: &CheckReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} ({} KiB)",
        report.file,
        report.size_bytes.div_ceil(1024)
    );
    if let Some(plugin) = &report.plugin {
        let _ = writeln!(
            out,
            "  plugin {} {} (WIT {}){}: {}",
            plugin.name,
            plugin.version,
            plugin.wit_version,
            if plugin.predicts_ratings {
                ", predicts ratings"
            } else {
                ""
            },
            plugin.description
        );
    }
    let d = &report.dataset;
    let _ = writeln!(
        out,
        "  dataset: {} items, {} users, {} events to train on, {} to update with",
        d.items, d.users, d.train_events, d.update_events
    );
    for step in &report.steps {
        let mark = if step.passed { "ok  " } else { "FAIL" };
        let _ = writeln!(out, "  {mark} {:<14} {}", step.name, step.detail);
    }
    let f = &report.figures;
    let ms = |v: Option<f64>| v.map(|v| format!("{v:.1} ms"));
    let us = |v: Option<f64>| v.map(|v| format!("{v:.0} µs"));
    let recommend = f.recommend_p50_us.map(|_| {
        format!(
            "p50 {}, p99 {}, max {} over {} calls",
            us(f.recommend_p50_us).unwrap_or_default(),
            us(f.recommend_p99_us).unwrap_or_default(),
            us(f.recommend_max_us).unwrap_or_default(),
            f.recommend_calls
        )
    });
    let figures = [
        ("load", ms(f.load_ms)),
        ("train", ms(f.train_ms)),
        ("recommend", recommend),
        ("update", ms(f.update_ms)),
        (
            "snapshot",
            f.snapshot_bytes
                .map(|b| format!("{} KiB", b.div_ceil(1024))),
        ),
        (
            "new instance",
            f.instance_start_ms.map(|start| {
                format!(
                    "{start:.1} ms to instantiate, configure and load; first recommend {}",
                    us(f.first_recommend_us).unwrap_or_default()
                )
            }),
        ),
        (
            "peak memory",
            f.peak_memory_bytes
                .map(|b| format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))),
        ),
    ];
    let _ = writeln!(out, "  figures:");
    for (name, value) in figures {
        if let Some(value) = value {
            let _ = writeln!(out, "    {name:<12} {value}");
        }
    }
    match &report.failure {
        None => {
            let _ = writeln!(
                out,
                "PASSED: the plugin keeps the contract under the production limits"
            );
        }
        Some(reason) => {
            let _ = writeln!(out, "FAILED: {reason}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(count: u32, exclude: Vec<u32>) -> Request {
        Request {
            user: Some(0),
            count,
            history: Vec::new(),
            exclude,
        }
    }

    fn scored(items: &[(u32, f32)]) -> Vec<Scored> {
        items
            .iter()
            .map(|&(item, score)| Scored { item, score })
            .collect()
    }

    #[test]
    fn answers_are_held_to_the_contract() {
        let ok = scored(&[(3, 0.9), (1, 0.5)]);
        assert_eq!(well_formed(&ok, &request(2, vec![0]), 10), Ok(()));
        let cases = [
            (
                scored(&[(3, 0.9), (1, 0.5)]),
                request(1, vec![]),
                "returned 2 items when asked for 1",
            ),
            (
                scored(&[(10, 0.9)]),
                request(5, vec![]),
                "outside the catalog of 10 items",
            ),
            (
                scored(&[(2, f32::NAN)]),
                request(5, vec![]),
                "has the score NaN",
            ),
            (
                scored(&[(2, f32::INFINITY)]),
                request(5, vec![]),
                "has the score inf",
            ),
            (
                scored(&[(4, 1.0)]),
                request(5, vec![4]),
                "which the request excluded",
            ),
            (
                scored(&[(4, 1.0), (4, 0.5)]),
                request(5, vec![]),
                "returned item 4 twice",
            ),
        ];
        for (answer, request, expected) in cases {
            let problem = well_formed(&answer, &request, 10).expect_err(expected);
            assert!(
                problem.contains(expected),
                "{problem} should say {expected}"
            );
        }
    }

    #[test]
    fn the_dataset_has_history_for_every_user_and_events_to_update_with() {
        let data = dataset();
        assert_eq!(data.catalog.len(), 300);
        assert!(data.users > 100, "{}", data.users);
        assert!(data.histories.iter().all(|h| !h.is_empty()));
        assert!(!data.update.is_empty());
        // Newest first, as the server passes it.
        for history in &data.histories {
            assert!(history.windows(2).all(|w| w[0].timestamp >= w[1].timestamp));
        }
    }
}
