//! Offline evaluation: train every declared plugin on a training set through the same
//! WebAssembly path the server uses, ask each for top-k lists for the test users, and score
//! the lists.
//!
//! Protocol: relevant = all of a user's test items; candidates = all items minus the user's
//! train items (they are the request's exclusions, and the user's train events are its
//! history, as in the server); users without train items are skipped. See [`metrics`].

pub mod metrics;
pub mod plot;
pub mod prequential;
pub mod split;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::catalog::Catalog;
use crate::config::Config;
use crate::plugins::bindings::{Feedback, Request};
use crate::plugins::{ModelVersion, PluginEngine, PluginRuntime};
use crate::store::{ImportEvent, ItemRow};
use metrics::{MeanMetrics, UserMetrics};

/// What to evaluate on.
pub struct EvalData {
    /// Item catalog (titles and tags); items seen only in ratings are added untitled.
    pub items: Vec<ItemRow>,
    pub train: Vec<ImportEvent>,
    pub test: Vec<ImportEvent>,
}

pub struct EvalOptions {
    pub k: usize,
    /// Evaluate only these plugins (all declared ones when empty).
    pub plugins: Vec<String>,
    pub progress: bool,
    /// Lowest and highest rating: estimates are clipped to this scale before scoring.
    pub rating_scale: (f32, f32),
    /// Score at most this many users, spread evenly over the users in index order (all when
    /// `None`): at MovieLens 25M's 162k users a sample keeps a run to minutes.
    pub max_users: Option<usize>,
}

/// One plugin's figures.
#[derive(Clone, Debug, Serialize)]
pub struct PluginScore {
    pub plugin: String,
    pub metrics: UserMetrics,
    pub train_seconds: f64,
    /// Users scored: those with at least one train and one test item.
    pub users: usize,
    /// Catalog coverage: the share of the catalog's items that appear in at least one
    /// user's top-k list (a model that shows everyone the same hits scores low).
    pub coverage: f64,
    /// The mean metrics at every list length 1..=k (the last is `metrics`), from the same
    /// lists: for the metric-vs-k plot.
    pub curve: Vec<UserMetrics>,
    /// Errors of the rating estimates on the test ratings, for plugins that predict ratings.
    pub rmse: Option<f64>,
    pub mae: Option<f64>,
}

/// The evaluation's inputs, mapped to dense indices once for all plugins.
struct Prepared {
    catalog: Catalog,
    train: Vec<Feedback>,
    /// (request, relevant items) per evaluated user.
    cases: Vec<(Request, HashSet<u32>)>,
    /// Test ratings of users with training events: user -> (item, rating).
    ratings: BTreeMap<u32, Vec<(u32, f32)>>,
}

fn prepare(data: EvalData, k: usize, history_limit: usize) -> Prepared {
    let mut items = data.items;
    let mut item_index: HashMap<String, u32> = items
        .iter()
        .enumerate()
        .map(|(i, item)| (item.external_id.clone(), i as u32))
        .collect();
    for rating in data.train.iter().chain(&data.test) {
        if !item_index.contains_key(&rating.item) {
            item_index.insert(rating.item.clone(), items.len() as u32);
            items.push(ItemRow {
                external_id: rating.item.clone(),
                title: rating.item.clone(),
                tags: Vec::new(),
            });
        }
    }
    let mut user_index: HashMap<String, u32> = HashMap::new();
    let mut histories: Vec<Vec<Feedback>> = Vec::new();
    let mut train = Vec::with_capacity(data.train.len());
    for rating in &data.train {
        let next = user_index.len() as u32;
        let user = *user_index.entry(rating.user.clone()).or_insert(next);
        if user as usize == histories.len() {
            histories.push(Vec::new());
        }
        let feedback = Feedback {
            user,
            item: item_index[&rating.item],
            kind: crate::catalog::wit_kind(rating.kind),
            value: rating.value,
            timestamp: rating.timestamp,
        };
        histories[user as usize].push(feedback);
        train.push(feedback);
    }
    let mut relevant: HashMap<u32, HashSet<u32>> = HashMap::new();
    let mut ratings: BTreeMap<u32, Vec<(u32, f32)>> = Default::default();
    for rating in &data.test {
        if let Some(&user) = user_index.get(&rating.user) {
            if rating.kind == crate::store::EventKind::Rate {
                ratings
                    .entry(user)
                    .or_default()
                    .push((item_index[&rating.item], rating.value));
            }
            relevant
                .entry(user)
                .or_default()
                .insert(item_index[&rating.item]);
        }
    }
    let mut cases: Vec<(Request, HashSet<u32>)> = relevant
        .into_iter()
        .filter_map(|(user, mut relevant)| {
            let history_all = &histories[user as usize];
            let mut exclude: Vec<u32> = history_all.iter().map(|f| f.item).collect();
            exclude.sort_unstable();
            exclude.dedup();
            relevant.retain(|item| exclude.binary_search(item).is_err());
            if relevant.is_empty() {
                return None;
            }
            let history = history_all
                .iter()
                .rev()
                .take(history_limit)
                .cloned()
                .collect();
            Some((
                Request {
                    user: Some(user),
                    count: k as u32,
                    history,
                    exclude,
                },
                relevant,
            ))
        })
        .collect();
    cases.sort_by_key(|(request, _)| request.user);
    Prepared {
        catalog: Catalog::new(items),
        train,
        cases,
        ratings,
    }
}

impl Prepared {
    /// Keeps `max` of the evaluated users, spread evenly in index order (the order of their
    /// first training event), and only their ratings.
    fn sample_users(&mut self, max: usize) {
        let n = self.cases.len();
        if n <= max {
            return;
        }
        // Case `i * n / max` for each `i` below `max`: strictly increasing since n > max.
        let mut next = 0;
        let mut kept = 0;
        let cases = std::mem::take(&mut self.cases);
        self.cases = cases
            .into_iter()
            .enumerate()
            .filter(|&(index, _)| {
                let keep = kept < max && index == next;
                if keep {
                    kept += 1;
                    next = kept * n / max;
                }
                keep
            })
            .map(|(_, case)| case)
            .collect();
        let kept: HashSet<u32> = self.cases.iter().filter_map(|(r, _)| r.user).collect();
        self.ratings.retain(|user, _| kept.contains(user));
    }
}

/// Evaluates the plugins declared in `config` on `data`.
pub fn run(
    config: &Config,
    data: EvalData,
    options: &EvalOptions,
) -> anyhow::Result<Vec<PluginScore>> {
    let mut prepared = prepare(data, options.k, config.history_limit);
    if let Some(max) = options.max_users {
        prepared.sample_users(max);
    }
    let engine = PluginEngine::new(None)?;
    let declared = declared_plugins(config, &options.plugins)?;
    let mut scores = Vec::new();
    for declaration in declared {
        let plugin = crate::app::load_declared(&engine, declaration, &prepared.catalog)?;
        let spinner = if options.progress {
            ProgressBar::new_spinner()
        } else {
            ProgressBar::hidden()
        };
        spinner.set_message(format!(
            "training {} on {} events",
            declaration.name,
            prepared.train.len()
        ));
        spinner.enable_steady_tick(std::time::Duration::from_millis(100));
        let started = Instant::now();
        let snapshot = plugin
            .train(&prepared.train)
            .with_context(|| format!("training {}", declaration.name))?;
        let train_seconds = started.elapsed().as_secs_f64();
        spinner.finish_and_clear();
        let snapshot = Arc::new(snapshot);
        plugin.install(ModelVersion {
            version: 1,
            snapshot: snapshot.clone(),
            created_at: 0,
            through_event: 0,
        })?;
        let (curve, shown) = score_users(&plugin, &prepared.cases, options)?;
        let errors = rating_errors(&plugin, &snapshot, &prepared.ratings, options.rating_scale)
            .with_context(|| format!("predicting ratings with {}", declaration.name))?;
        let metrics = curve.last().copied().unwrap_or_default();
        scores.push(PluginScore {
            plugin: declaration.name.clone(),
            metrics: metrics.mean(),
            train_seconds,
            users: metrics.users(),
            coverage: shown.len() as f64 / prepared.catalog.len().max(1) as f64,
            curve: curve.iter().map(MeanMetrics::mean).collect(),
            rmse: errors.map(|e| e.0),
            mae: errors.map(|e| e.1),
        });
    }
    Ok(scores)
}

/// RMSE and MAE of `plugin`'s estimates for the test ratings, one `predict` call per user;
/// `None` for a plugin that does not predict ratings. Estimates are clipped to the rating
/// scale, and a non-finite one counts as the scale's middle (as in the prequential replay).
fn rating_errors(
    plugin: &PluginRuntime,
    snapshot: &[u8],
    ratings: &BTreeMap<u32, Vec<(u32, f32)>>,
    scale: (f32, f32),
) -> anyhow::Result<Option<(f64, f64)>> {
    if !plugin.predicts_ratings() || ratings.is_empty() {
        return Ok(None);
    }
    let mut session = plugin.session_from_snapshot(snapshot)?;
    let (mut squared, mut absolute, mut count) = (0.0, 0.0, 0usize);
    for (user, rated) in ratings {
        let items: Vec<u32> = rated.iter().map(|(item, _)| *item).collect();
        // One estimate per item: `predict` refuses an answer of another length.
        let estimates = session.predict(*user, &items)?;
        for ((_, truth), estimate) in rated.iter().zip(estimates) {
            let estimate = metrics::scored_estimate(Some(estimate), scale);
            let error = f64::from(estimate - truth);
            squared += error * error;
            absolute += error.abs();
            count += 1;
        }
    }
    Ok(Some((
        (squared / count as f64).sqrt(),
        absolute / count as f64,
    )))
}

/// The declared plugins to evaluate: those named in `wanted`, or all when it is empty.
fn declared_plugins<'a>(
    config: &'a Config,
    wanted: &[String],
) -> anyhow::Result<Vec<&'a crate::config::PluginDeclaration>> {
    for name in wanted {
        if !config.plugins.iter().any(|p| &p.name == name) {
            anyhow::bail!("plugin {name:?} is not declared in the config");
        }
    }
    Ok(config
        .plugins
        .iter()
        .filter(|p| wanted.is_empty() || wanted.contains(&p.name))
        .collect())
}

/// A progress bar over `len` `unit`s labelled `name` (hidden unless `shown`).
fn progress_bar(shown: bool, len: usize, unit: &str, name: &str) -> ProgressBar {
    let bar = if shown {
        ProgressBar::new(len as u64)
    } else {
        ProgressBar::hidden()
    };
    let template = format!("{{msg:>14}} [{{bar:40}}] {{pos}}/{{len}} {unit} ({{eta}})");
    bar.set_style(
        ProgressStyle::with_template(&template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(name.to_string());
    bar
}

/// Asks `plugin` for every case, on as many threads as there are cores; returns the mean
/// metrics at each list length 1..=k and every item shown in a top-k list.
fn score_users(
    plugin: &PluginRuntime,
    cases: &[(Request, HashSet<u32>)],
    options: &EvalOptions,
) -> anyhow::Result<(Vec<MeanMetrics>, HashSet<u32>)> {
    let bar = progress_bar(options.progress, cases.len(), "users", plugin.name());
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let chunk = cases.len().div_ceil(threads).max(1);
    type Partial = anyhow::Result<(Vec<MeanMetrics>, HashSet<u32>)>;
    let results: Vec<Partial> = std::thread::scope(|scope| {
        let workers: Vec<_> = cases
            .chunks(chunk)
            .map(|part| {
                let bar = bar.clone();
                scope.spawn(move || -> Partial {
                    let mut mean = vec![MeanMetrics::default(); options.k];
                    let mut shown = HashSet::new();
                    for (request, relevant) in part {
                        let (scored, _) = plugin.recommend(request)?;
                        let ranked: Vec<u32> = scored.iter().map(|s| s.item).collect();
                        for (length, at) in mean.iter_mut().enumerate() {
                            at.add(metrics::score(&ranked, relevant, length + 1));
                        }
                        shown.extend(ranked.iter().take(options.k));
                        bar.inc(1);
                    }
                    Ok((mean, shown))
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("scoring thread panicked")))
            })
            .collect()
    });
    bar.finish_and_clear();
    let mut total = vec![MeanMetrics::default(); options.k];
    let mut shown = HashSet::new();
    for result in results {
        let (mean, items) = result?;
        for (sum, part) in total.iter_mut().zip(mean) {
            sum.merge(part);
        }
        shown.extend(items);
    }
    Ok((total, shown))
}

/// The scores as a table for the terminal.
pub fn table(scores: &[PluginScore], k: usize) -> String {
    let mut out = format!(
        "{:<16} {:>8} {:>8} {:>8} {:>8} {:>9} {:>7} {:>7} {:>9} {:>6}\n",
        "plugin",
        format!("P@{k}"),
        format!("R@{k}"),
        format!("NDCG@{k}"),
        format!("MAP@{k}"),
        "coverage",
        "RMSE",
        "MAE",
        "train s",
        "users"
    );
    let error = |e: Option<f64>| e.map_or_else(|| "-".to_string(), |e| format!("{e:.4}"));
    for s in scores {
        out.push_str(&format!(
            "{:<16} {:>8.4} {:>8.4} {:>8.4} {:>8.4} {:>9.4} {:>7} {:>7} {:>9.3} {:>6}\n",
            s.plugin,
            s.metrics.precision,
            s.metrics.recall,
            s.metrics.ndcg,
            s.metrics.map,
            s.coverage,
            error(s.rmse),
            error(s.mae),
            s.train_seconds,
            s.users
        ));
    }
    out
}

/// The scores as CSV, one row per plugin.
pub fn csv(scores: &[PluginScore], k: usize) -> String {
    let mut out = format!(
        "plugin,precision@{k},recall@{k},ndcg@{k},map@{k},coverage@{k},train_seconds,users,rmse,mae\n"
    );
    let error = |e: Option<f64>| e.map(|e| e.to_string()).unwrap_or_default();
    for s in scores {
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{}\n",
            s.plugin,
            s.metrics.precision,
            s.metrics.recall,
            s.metrics.ndcg,
            s.metrics.map,
            s.coverage,
            s.train_seconds,
            s.users,
            error(s.rmse),
            error(s.mae)
        ));
    }
    out
}

/// The scores as one JSON object keyed by plugin name.
pub fn json(scores: &[PluginScore], k: usize) -> serde_json::Value {
    let mut object = serde_json::Map::new();
    for s in scores {
        object.insert(
            s.plugin.clone(),
            serde_json::json!({
                format!("precision@{k}"): s.metrics.precision,
                format!("recall@{k}"): s.metrics.recall,
                format!("ndcg@{k}"): s.metrics.ndcg,
                format!("map@{k}"): s.metrics.map,
                format!("coverage@{k}"): s.coverage,
                "rmse": s.rmse,
                "mae": s.mae,
                "train_seconds": s.train_seconds,
                "users": s.users,
            }),
        );
    }
    serde_json::Value::Object(object)
}
