//! Prequential ("test, then train") evaluation of online learning.
//!
//! The ratings are ordered by timestamp. Every plugin is trained on the oldest part; the rest
//! is replayed event by event. Before an event is learned the plugin is asked for the user's
//! top-k list (a hit when the event's item is in it) and, for a `rate` event of a plugin that
//! predicts ratings, for its estimate of the rating. Two replays run side by side:
//!
//! - **frozen**: the model trained on the oldest part never learns again;
//! - **online**: the model learns each batch of `batch` replayed events through `update`, as
//!   the server does.
//!
//! In both, requests carry the user's history so far, as the server's would: a frozen model
//! still sees what the user just did, it just never updates its parameters. Items the user
//! already interacted with are excluded, so a repeat interaction is not scored.

use std::collections::HashMap;
use std::time::Instant;

use serde::Serialize;

use crate::catalog::{Catalog, wit_kind};
use crate::config::Config;
use crate::plugins::bindings::{Feedback, Request, WitEventKind};
use crate::plugins::{PluginEngine, PluginRuntime, Session};
use crate::store::{ImportEvent, ItemRow};

pub struct PrequentialOptions {
    pub k: usize,
    /// Share of the ratings (the newest) that is replayed.
    pub replay_fraction: f64,
    /// Events per `update` in the online replay.
    pub batch: usize,
    /// Evaluate only these plugins (all declared ones when empty).
    pub plugins: Vec<String>,
    /// Lowest and highest rating: estimates are clipped to this scale before scoring.
    pub rating_scale: (f32, f32),
    pub progress: bool,
}

/// The figures of one replay.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ReplayMetrics {
    /// Share of scored events whose item was in the top-k list asked for just before.
    pub recall: f64,
    /// Root mean squared error of the rating estimates (`None`: the plugin does not predict).
    pub rmse: Option<f64>,
    /// Mean absolute error of the rating estimates.
    pub mae: Option<f64>,
    /// Events scored for recall (the user had not interacted with the item before).
    pub scored: usize,
    /// `rate` events whose rating was estimated.
    pub rated: usize,
    /// The same figures per tenth of the replay, in time order (for the plot over time).
    pub windows: Vec<WindowMetrics>,
}

/// One stretch of the replay.
#[derive(Clone, Debug, Default, Serialize)]
pub struct WindowMetrics {
    /// Timestamp of the stretch's last event.
    pub until: u64,
    pub recall: Option<f64>,
    pub rmse: Option<f64>,
}

/// Stretches the replay is cut into for [`ReplayMetrics::windows`].
const WINDOWS: usize = 10;

#[derive(Clone, Debug, Serialize)]
pub struct PrequentialScore {
    pub plugin: String,
    pub frozen: ReplayMetrics,
    pub online: ReplayMetrics,
    pub warmup_events: usize,
    pub replayed_events: usize,
    pub batch: usize,
    pub seconds: f64,
}

/// Running sums of one replay.
#[derive(Clone, Default)]
struct Tally {
    hits: usize,
    scored: usize,
    squared_error: f64,
    absolute_error: f64,
    rated: usize,
    windows: Vec<WindowMetrics>,
    /// The sums when the current window began.
    window_start: (usize, usize, f64, usize),
}

impl Tally {
    fn metrics(&self, predicts: bool) -> ReplayMetrics {
        ReplayMetrics {
            recall: self.hits as f64 / self.scored.max(1) as f64,
            rmse: (predicts && self.rated > 0)
                .then(|| (self.squared_error / self.rated as f64).sqrt()),
            mae: (predicts && self.rated > 0).then(|| self.absolute_error / self.rated as f64),
            scored: self.scored,
            rated: self.rated,
            windows: self.windows.clone(),
        }
    }

    /// Closes the current window at `until`.
    fn close_window(&mut self, until: u64, predicts: bool) {
        let (hits, scored, squared_error, rated) = self.window_start;
        let (hits, scored) = (self.hits - hits, self.scored - scored);
        let (squared_error, rated) = (self.squared_error - squared_error, self.rated - rated);
        self.windows.push(WindowMetrics {
            until,
            recall: (scored > 0).then(|| hits as f64 / scored as f64),
            rmse: (predicts && rated > 0).then(|| (squared_error / rated as f64).sqrt()),
        });
        self.window_start = (self.hits, self.scored, self.squared_error, self.rated);
    }
}

/// Events with dense indices, oldest first.
struct Stream {
    catalog: Catalog,
    events: Vec<Feedback>,
}

fn stream(items: Vec<ItemRow>, mut ratings: Vec<ImportEvent>) -> Stream {
    // Stable: events with the same timestamp keep their file order.
    ratings.sort_by_key(|r| r.timestamp);
    let mut items = items;
    let mut item_index: HashMap<String, u32> = items
        .iter()
        .enumerate()
        .map(|(i, item)| (item.external_id.clone(), i as u32))
        .collect();
    let mut user_index: HashMap<String, u32> = HashMap::new();
    let mut events = Vec::with_capacity(ratings.len());
    for rating in &ratings {
        let next_item = items.len() as u32;
        let item = *item_index.entry(rating.item.clone()).or_insert_with(|| {
            items.push(ItemRow {
                external_id: rating.item.clone(),
                title: rating.item.clone(),
                tags: Vec::new(),
            });
            next_item
        });
        let next_user = user_index.len() as u32;
        let user = *user_index.entry(rating.user.clone()).or_insert(next_user);
        events.push(Feedback {
            user,
            item,
            kind: wit_kind(rating.kind),
            value: rating.value,
            timestamp: rating.timestamp,
        });
    }
    Stream {
        catalog: Catalog::new(items),
        events,
    }
}

/// Replays the newest `replay_fraction` of `ratings` against every declared plugin.
pub fn run(
    config: &Config,
    items: Vec<ItemRow>,
    ratings: Vec<ImportEvent>,
    options: &PrequentialOptions,
) -> anyhow::Result<Vec<PrequentialScore>> {
    let stream = stream(items, ratings);
    let warmup = ((1.0 - options.replay_fraction) * stream.events.len() as f64).round() as usize;
    let (train, replay) = stream.events.split_at(warmup.min(stream.events.len()));
    let engine = PluginEngine::new(None)?;
    let mut scores = Vec::new();
    for declaration in super::declared_plugins(config, &options.plugins)? {
        let plugin = crate::app::load_declared(&engine, declaration, &stream.catalog)?;
        let started = Instant::now();
        let score = replay_one(&plugin, train, replay, config.history_limit, options)?;
        scores.push(PrequentialScore {
            plugin: declaration.name.clone(),
            frozen: score.0,
            online: score.1,
            warmup_events: train.len(),
            replayed_events: replay.len(),
            batch: options.batch,
            seconds: started.elapsed().as_secs_f64(),
        });
    }
    Ok(scores)
}

fn replay_one(
    plugin: &PluginRuntime,
    train: &[Feedback],
    replay: &[Feedback],
    history_limit: usize,
    options: &PrequentialOptions,
) -> anyhow::Result<(ReplayMetrics, ReplayMetrics)> {
    let mut frozen = plugin.session(train)?;
    let mut online = plugin.session(train)?;
    let predicts = plugin.predicts_ratings();
    let mut histories: HashMap<u32, Vec<Feedback>> = HashMap::new();
    for event in train {
        histories.entry(event.user).or_default().push(*event);
    }
    let bar = super::progress_bar(options.progress, replay.len(), "events", plugin.name());
    let (mut frozen_tally, mut online_tally) = (Tally::default(), Tally::default());
    let mut pending = Vec::with_capacity(options.batch);
    let window_len = replay.len().div_ceil(WINDOWS).max(1);
    for (index, event) in replay.iter().enumerate() {
        let history = histories.entry(event.user).or_default();
        let mut exclude: Vec<u32> = history.iter().map(|e| e.item).collect();
        exclude.sort_unstable();
        exclude.dedup();
        let request = Request {
            user: Some(event.user),
            count: options.k as u32,
            history: history.iter().rev().take(history_limit).cloned().collect(),
            exclude,
        };
        let new_item = request.exclude.binary_search(&event.item).is_err();
        for (session, tally) in [
            (&mut frozen, &mut frozen_tally),
            (&mut online, &mut online_tally),
        ] {
            score_event(session, tally, &request, event, new_item, predicts, options)?;
        }
        history.push(*event);
        pending.push(*event);
        if pending.len() >= options.batch {
            online.update(&pending)?;
            pending.clear();
        }
        if (index + 1) % window_len == 0 || index + 1 == replay.len() {
            frozen_tally.close_window(event.timestamp, predicts);
            online_tally.close_window(event.timestamp, predicts);
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok((
        frozen_tally.metrics(predicts),
        online_tally.metrics(predicts),
    ))
}

fn score_event(
    session: &mut Session,
    tally: &mut Tally,
    request: &Request,
    event: &Feedback,
    new_item: bool,
    predicts: bool,
    options: &PrequentialOptions,
) -> anyhow::Result<()> {
    if new_item {
        let ranked = session.recommend(request)?;
        tally.scored += 1;
        if ranked
            .iter()
            .take(options.k)
            .any(|scored| scored.item == event.item)
        {
            tally.hits += 1;
        }
    }
    if predicts && event.kind == WitEventKind::Rate {
        let estimate = session.predict(event.user, &[event.item])?.first().copied();
        let estimate = super::metrics::scored_estimate(estimate, options.rating_scale);
        let error = f64::from(estimate - event.value);
        tally.squared_error += error * error;
        tally.absolute_error += error.abs();
        tally.rated += 1;
    }
    Ok(())
}

/// The scores as a table for the terminal.
pub fn table(scores: &[PrequentialScore], k: usize) -> String {
    let error = |e: Option<f64>| e.map_or("-".to_string(), |r| format!("{r:.4}"));
    let mut out = format!(
        "{:<16} {:>12} {:>12} {:>12} {:>12} {:>11} {:>11} {:>8} {:>9}\n",
        "plugin",
        format!("frozen R@{k}"),
        format!("online R@{k}"),
        "frozen RMSE",
        "online RMSE",
        "frozen MAE",
        "online MAE",
        "events",
        "seconds"
    );
    for s in scores {
        out.push_str(&format!(
            "{:<16} {:>12.4} {:>12.4} {:>12} {:>12} {:>11} {:>11} {:>8} {:>9.1}\n",
            s.plugin,
            s.frozen.recall,
            s.online.recall,
            error(s.frozen.rmse),
            error(s.online.rmse),
            error(s.frozen.mae),
            error(s.online.mae),
            s.replayed_events,
            s.seconds
        ));
    }
    out
}
