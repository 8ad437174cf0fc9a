//! Online quality: which served lists were hit, what each model version's lists looked
//! like, and whether a new model version is significantly worse than the ones before it.
//!
//! - [`Attribution`]: lists wait up to `attribution_secs` for their user's next event: the
//!   first event of that user stored after the list was served decides it at once, a hit if
//!   it is on one of the list's items (a click-through too if it is a click). A list whose
//!   user does not come back in time is counted as unanswered and not judged. Only the next
//!   event counts: counting every event within the wait made a list's chance of a hit
//!   depend on how long its user's session was, which changes with who is active (on
//!   ML-100k, 48% to 90% between stretches of the same model), more than on the model; and
//!   whether a user comes back at all depends on the hour more than on the list.
//! - [`WindowQuality`]: per plugin and model version, the lists served in a window (their
//!   items and scores) and the outcomes that became final in it.
//! - [`VersionWatch`]: per plugin, a fixed-horizon test of each new model version. The
//!   candidate is a new version together with the versions that follow it (online learning
//!   makes one every few minutes, too few lists each for a test); once `quality_min_lists`
//!   of its lists are final, their hit rate is tested against the newest `quality_min_lists`
//!   outcomes of the versions before it by [`relative_drop`]: is it below `1 −
//!   quality_margin` times theirs, at `quality_alpha`? One decision per candidate, so
//!   `quality_alpha` is the false-alarm rate of each decision when the new rate is at least
//!   that share of the old.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::drift::relative_drop;
use crate::store::{EventKind, ServedListRow};

/// A list whose outcome is final.
#[derive(Clone, Debug, PartialEq)]
pub struct ListOutcome {
    pub plugin: Arc<str>,
    pub model_version: u64,
    /// Its user's next event came within `attribution_secs` (else it is not judged).
    pub answered: bool,
    pub hit: bool,
    pub clicked: bool,
}

struct OpenList {
    id: i64,
    plugin: Arc<str>,
    model_version: u64,
    after_event: i64,
    at_ms: u64,
    items: Vec<u32>,
}

/// Lists waiting for their users' next events.
pub struct Attribution {
    attribution_ms: u64,
    by_user: HashMap<Arc<str>, Vec<OpenList>>,
    /// (served at, user, list id), in the order served: when each list stops waiting.
    /// Entries of lists decided meanwhile are skipped when they come up.
    waiting: VecDeque<(u64, Arc<str>, i64)>,
    /// Lists decided since the last [`Self::close`].
    decided: Vec<ListOutcome>,
    open: usize,
    plugins: HashSet<Arc<str>>,
    /// Each user's events of the last [`LATE_LIST_GRACE_MS`], oldest first: a list logged
    /// after its user's next event was read (its writer lagged) is decided by them.
    recent: HashMap<Arc<str>, VecDeque<RecentEvent>>,
    /// (seen at, user) of those events, oldest first, to forget them.
    recent_order: VecDeque<(u64, Arc<str>)>,
    /// Per user, the newest event id forgotten: a list served before it cannot know its
    /// next event any more (it is not judged).
    /// (kept until its list could no longer be decided anyway: attribution time and grace).
    forgotten: HashMap<Arc<str>, (i64, u64)>,
    last_prune_ms: u64,
    /// Lists left unjudged because a cap was reached or their next event was forgotten,
    /// since start.
    pub overflowed: u64,
}

/// Most lists one user may have waiting (a shared ID such as "anonymous" would otherwise
/// make every event of theirs scan a long list); older ones go unjudged.
pub const MAX_WAITING_PER_USER: usize = 100;
/// Most lists waiting in all (about 100 bytes each); beyond, new ones go unjudged.
pub const MAX_WAITING: usize = 1_000_000;

/// An event kept for lists logged after it: id, item, kind, when it was seen.
type RecentEvent = (i64, u32, EventKind, u64);

/// How long events are kept for lists logged after them.
pub const LATE_LIST_GRACE_MS: u64 = 30_000;

impl Attribution {
    pub fn new(attribution_secs: u64) -> Self {
        Self {
            attribution_ms: attribution_secs.saturating_mul(1_000),
            by_user: HashMap::new(),
            waiting: VecDeque::new(),
            decided: Vec::new(),
            open: 0,
            plugins: HashSet::new(),
            recent: HashMap::new(),
            recent_order: VecDeque::new(),
            forgotten: HashMap::new(),
            last_prune_ms: 0,
            overflowed: 0,
        }
    }

    /// Lists still waiting.
    pub fn open(&self) -> usize {
        self.open
    }

    pub fn served(&mut self, list: &ServedListRow) {
        let plugin = intern(&mut self.plugins, &list.plugin);
        // Its user's next event may have been read already, and even forgotten.
        if self
            .forgotten
            .get(list.user_id.as_str())
            .is_some_and(|&(id, _)| id > list.after_event)
            || self.open >= MAX_WAITING
        {
            self.overflowed += 1;
            return;
        }
        let earlier = self.recent.get(list.user_id.as_str()).and_then(|events| {
            events.iter().find(|(id, _, _, seen_at_ms)| {
                *id > list.after_event
                    && *seen_at_ms <= list.at_ms.saturating_add(self.attribution_ms)
            })
        });
        if let Some(&(_, item, kind, _)) = earlier {
            let hit = list.items.contains(&item);
            self.decided.push(ListOutcome {
                plugin,
                model_version: list.model_version,
                answered: true,
                hit,
                clicked: hit && kind == EventKind::Click,
            });
            return;
        }
        let user: Arc<str> = match self.by_user.get_key_value(list.user_id.as_str()) {
            Some((user, _)) => user.clone(),
            None => Arc::from(list.user_id.as_str()),
        };
        let waiting = self.by_user.entry(user.clone()).or_default();
        if waiting.len() >= MAX_WAITING_PER_USER {
            waiting.remove(0);
            self.open -= 1;
            self.overflowed += 1;
        }
        waiting.push(OpenList {
            id: list.id,
            plugin,
            model_version: list.model_version,
            after_event: list.after_event,
            at_ms: list.at_ms,
            items: list.items.clone(),
        });
        self.waiting.push_back((list.at_ms, user, list.id));
        self.open += 1;
    }

    /// An event `id` of `user` on `item`, seen at `seen_at_ms`: it decides each of the
    /// user's waiting lists served before it (by event id) and not expired.
    pub fn event(&mut self, user: &str, item: u32, kind: EventKind, id: i64, seen_at_ms: u64) {
        self.remember(user, item, kind, id, seen_at_ms);
        let Some(lists) = self.by_user.get_mut(user) else {
            return;
        };
        let attribution_ms = self.attribution_ms;
        let mut kept = Vec::new();
        for list in lists.drain(..) {
            if list.after_event < id && seen_at_ms <= list.at_ms.saturating_add(attribution_ms) {
                let hit = list.items.contains(&item);
                self.decided.push(ListOutcome {
                    plugin: list.plugin,
                    model_version: list.model_version,
                    answered: true,
                    hit,
                    clicked: hit && kind == EventKind::Click,
                });
                self.open -= 1;
            } else {
                kept.push(list);
            }
        }
        if kept.is_empty() {
            self.by_user.remove(user);
        } else {
            *lists = kept;
        }
    }

    fn remember(&mut self, user: &str, item: u32, kind: EventKind, id: i64, seen_at_ms: u64) {
        while let Some((at, _)) = self.recent_order.front() {
            if at.saturating_add(LATE_LIST_GRACE_MS) >= seen_at_ms {
                break;
            }
            let (_, old) = self.recent_order.pop_front().expect("a front");
            if let Some(events) = self.recent.get_mut(&old) {
                if let Some((id, ..)) = events.pop_front() {
                    self.forgotten.insert(old.clone(), (id, seen_at_ms));
                }
                if events.is_empty() {
                    self.recent.remove(&old);
                }
            }
        }
        let user: Arc<str> = match self.recent.get_key_value(user) {
            Some((user, _)) => user.clone(),
            None => Arc::from(user),
        };
        self.recent
            .entry(user.clone())
            .or_default()
            .push_back((id, item, kind, seen_at_ms));
        self.recent_order.push_back((seen_at_ms, user));
    }

    /// The lists decided since the last call, then those whose wait ended by `now_ms`
    /// without an answer.
    pub fn close(&mut self, now_ms: u64) -> Vec<ListOutcome> {
        let mut out = std::mem::take(&mut self.decided);
        if now_ms.saturating_sub(self.last_prune_ms) >= 60_000 {
            self.last_prune_ms = now_ms;
            let horizon = self.attribution_ms + LATE_LIST_GRACE_MS;
            self.forgotten
                .retain(|_, (_, at)| at.saturating_add(horizon) > now_ms);
        }
        while let Some((at_ms, _, _)) = self.waiting.front() {
            if at_ms.saturating_add(self.attribution_ms) > now_ms {
                break;
            }
            let (_, user, id) = self.waiting.pop_front().expect("a front");
            let Some(lists) = self.by_user.get_mut(&user) else {
                continue;
            };
            if let Some(position) = lists.iter().position(|l| l.id == id) {
                let list = lists.swap_remove(position);
                self.open -= 1;
                out.push(ListOutcome {
                    plugin: list.plugin,
                    model_version: list.model_version,
                    answered: false,
                    hit: false,
                    clicked: false,
                });
            }
            if lists.is_empty() {
                self.by_user.remove(&user);
            }
        }
        out
    }
}

/// Scores kept per plugin and version in a window for their summary and prediction drift.
const SCORES_KEPT: usize = 20_000;

#[derive(Default)]
struct VersionWindow {
    lists_served: u64,
    listed: HashMap<u32, u64>,
    scores: Vec<f64>,
    judged: u64,
    unanswered: u64,
    hits: u64,
    clicks: u64,
}

/// One window's lists, per plugin and model version.
#[derive(Default)]
pub struct WindowQuality {
    versions: BTreeMap<(Arc<str>, u64), VersionWindow>,
    plugins: HashSet<Arc<str>>,
}

/// The shared copy of a plugin's name: one allocation per plugin, not one per list (the
/// monitor reads every list served, tens of thousands a second under load).
pub(crate) fn intern(names: &mut HashSet<Arc<str>>, name: &str) -> Arc<str> {
    if let Some(name) = names.get(name) {
        return name.clone();
    }
    let name: Arc<str> = Arc::from(name);
    names.insert(name.clone());
    name
}

/// A score distribution in brief.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScoreSummary {
    pub mean: f64,
    pub p10: f64,
    pub p50: f64,
    pub p90: f64,
}

impl ScoreSummary {
    fn of(scores: &[f64]) -> Option<Self> {
        let mut sorted: Vec<f64> = scores.iter().copied().filter(|s| s.is_finite()).collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
        Some(Self {
            mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
            p10: at(0.1),
            p50: at(0.5),
            p90: at(0.9),
        })
    }
}

/// One plugin's model version in one window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VersionQuality {
    pub plugin: String,
    pub model_version: u64,
    /// Lists it served in the window.
    pub lists_served: u64,
    /// Share of the catalog among their top-k items.
    pub coverage: f64,
    /// Mean popularity percentile of their top-k items (0: the least popular item, 1: the
    /// most popular), by events seen so far.
    pub popularity_percentile: Option<f64>,
    pub scores: Option<ScoreSummary>,
    /// Lists whose user's next event came in the window, and the share of them hit and
    /// clicked.
    pub lists_judged: u64,
    /// Lists whose user did not come back within `attribution_secs` (their wait ended in
    /// the window): not judged.
    pub lists_unanswered: u64,
    pub hit_rate: Option<f64>,
    pub ctr: Option<f64>,
}

impl WindowQuality {
    pub fn served(&mut self, list: &ServedListRow) {
        let window = self
            .versions
            .entry((intern(&mut self.plugins, &list.plugin), list.model_version))
            .or_default();
        window.lists_served += 1;
        for item in &list.items {
            *window.listed.entry(*item).or_default() += 1;
        }
        for score in &list.scores {
            if window.scores.len() < SCORES_KEPT {
                window.scores.push(f64::from(*score));
            }
        }
    }

    pub fn judged(&mut self, outcome: &ListOutcome) {
        let window = self
            .versions
            .entry((outcome.plugin.clone(), outcome.model_version))
            .or_default();
        if !outcome.answered {
            window.unanswered += 1;
            return;
        }
        window.judged += 1;
        window.hits += u64::from(outcome.hit);
        window.clicks += u64::from(outcome.clicked);
    }

    /// The window's figures; `percentile(item)` is an item's popularity percentile.
    pub fn summarize(
        &self,
        catalog_items: usize,
        percentile: impl Fn(u32) -> Option<f64>,
    ) -> Vec<VersionQuality> {
        self.versions
            .iter()
            .map(|((plugin, version), w)| {
                let listed: u64 = w.listed.values().sum();
                let weighted: f64 = w
                    .listed
                    .iter()
                    .filter_map(|(item, n)| percentile(*item).map(|p| p * *n as f64))
                    .sum();
                let rate = |k: u64| (w.judged > 0).then(|| k as f64 / w.judged as f64);
                VersionQuality {
                    plugin: plugin.to_string(),
                    model_version: *version,
                    lists_served: w.lists_served,
                    coverage: w.listed.len() as f64 / catalog_items.max(1) as f64,
                    popularity_percentile: (listed > 0).then(|| weighted / listed as f64),
                    scores: ScoreSummary::of(&w.scores),
                    lists_judged: w.judged,
                    lists_unanswered: w.unanswered,
                    hit_rate: rate(w.hits),
                    ctr: rate(w.clicks),
                }
            })
            .collect()
    }
}

/// Each item's popularity percentile from its event count: the share of items with fewer
/// events, ties sharing the middle of their ranks (0 to 1).
pub fn popularity_percentiles(counts: &[u64]) -> Vec<f64> {
    let n = counts.len();
    if n < 2 {
        return vec![0.5; n];
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| counts[i]);
    let mut out = vec![0.0; n];
    let mut start = 0;
    while start < n {
        let mut end = start;
        while end + 1 < n && counts[order[end + 1]] == counts[order[start]] {
            end += 1;
        }
        let rank = (start + end) as f64 / 2.0;
        for &i in &order[start..=end] {
            out[i] = rank / (n - 1) as f64;
        }
        start = end + 1;
    }
    out
}

/// The evidence of a quality decision.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct QualityTest {
    /// The first and last model versions of the candidate (it and the versions after it
    /// were tested).
    pub first_version: u64,
    pub last_version: u64,
    /// The newest version before it: what a rollback serves again.
    pub previous_version: u64,
    pub candidate_lists: u64,
    pub candidate_hits: u64,
    pub baseline_lists: u64,
    pub baseline_hits: u64,
    pub p_value: f64,
    pub alpha: f64,
    pub margin: f64,
}

/// What [`VersionWatch::judged`] decided.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// The candidate is not significantly worse.
    Passed(QualityTest),
    /// It is.
    Worse(QualityTest),
}

/// One plugin's quality test of each new model version.
pub struct VersionWatch {
    min_lists: usize,
    alpha: f64,
    margin: f64,
    /// Outcomes of accepted versions, newest last, at most `min_lists`.
    baseline: VecDeque<bool>,
    /// The newest accepted version.
    accepted: u64,
    candidate: Option<Candidate>,
    /// Versions judged worse (and rolled back or not): their late outcomes are ignored.
    rejected: HashSet<u64>,
    /// After a retrain, the versions before the retrained one that were left unjudged:
    /// their late outcomes are ignored too.
    unjudged_through: u64,
}

struct Candidate {
    /// The lowest and highest versions among its outcomes.
    first_version: u64,
    last_version: u64,
    outcomes: Vec<bool>,
}

impl VersionWatch {
    pub fn new(min_lists: u64, alpha: f64, margin: f64) -> Self {
        Self {
            min_lists: min_lists.max(1) as usize,
            alpha,
            margin,
            baseline: VecDeque::new(),
            accepted: 0,
            candidate: None,
            rejected: HashSet::new(),
            unjudged_through: 0,
        }
    }

    /// A final outcome of a list served by `version`.
    pub fn judged(&mut self, version: u64, hit: bool) -> Option<Verdict> {
        if self.rejected.contains(&version)
            || (version > self.accepted && version <= self.unjudged_through)
        {
            return None;
        }
        // Versions up to the newest accepted one are the baseline's; every newer one is the
        // candidate's, whichever came first (outcomes come in the order users answer).
        if version <= self.accepted {
            self.keep(hit);
            return None;
        }
        match &mut self.candidate {
            Some(candidate) => {
                candidate.first_version = candidate.first_version.min(version);
                candidate.last_version = candidate.last_version.max(version);
                candidate.outcomes.push(hit);
            }
            None if self.baseline.len() >= self.min_lists => {
                self.candidate = Some(Candidate {
                    first_version: version,
                    last_version: version,
                    outcomes: vec![hit],
                });
            }
            // Not enough to compare with yet (after start): it is the baseline.
            None => {
                self.keep(hit);
                self.accepted = self.accepted.max(version);
                return None;
            }
        }
        let full = self
            .candidate
            .as_ref()
            .is_some_and(|c| c.outcomes.len() >= self.min_lists);
        full.then(|| self.decide())
    }

    fn keep(&mut self, hit: bool) {
        self.baseline.push_back(hit);
        while self.baseline.len() > self.min_lists {
            self.baseline.pop_front();
        }
    }

    fn decide(&mut self) -> Verdict {
        let candidate = self.candidate.take().expect("a candidate");
        let count = |o: &mut dyn Iterator<Item = &bool>| o.filter(|h| **h).count() as u64;
        let baseline = (count(&mut self.baseline.iter()), self.baseline.len() as u64);
        let tested = (
            count(&mut candidate.outcomes.iter()),
            candidate.outcomes.len() as u64,
        );
        // No difference to tell (both all hits or all misses) is no evidence of a drop.
        let p_value = relative_drop(baseline, tested, self.margin).map_or(1.0, |d| d.p_value);
        let test = QualityTest {
            first_version: candidate.first_version,
            last_version: candidate.last_version,
            previous_version: self.accepted,
            candidate_lists: tested.1,
            candidate_hits: tested.0,
            baseline_lists: baseline.1,
            baseline_hits: baseline.0,
            p_value,
            alpha: self.alpha,
            margin: self.margin,
        };
        if p_value < self.alpha {
            Verdict::Worse(test)
        } else {
            for hit in candidate.outcomes {
                self.keep(hit);
            }
            self.accepted = self.accepted.max(candidate.last_version);
            Verdict::Passed(test)
        }
    }

    /// The newest accepted version (what a rollback would restore).
    pub fn accepted(&self) -> u64 {
        self.accepted
    }

    /// Versions `first..=last` were judged worse and are no longer served: later outcomes of
    /// them are ignored, and the next new version is tested against the same baseline.
    pub fn reject(&mut self, first: u64, last: u64) {
        self.rejected.extend(first..=last);
        // A candidate of versions after these (collected since) stands.
        if self
            .candidate
            .as_ref()
            .is_some_and(|c| c.first_version <= last)
        {
            self.candidate = None;
        }
    }

    /// A retrain made `version`: the versions before it not yet judged are left unjudged
    /// (their line was replaced), and `version` starts the next candidate, even if some of
    /// its lists were taken into one already.
    pub fn retrained(&mut self, version: u64) {
        if self
            .candidate
            .as_ref()
            .is_some_and(|c| c.first_version < version)
        {
            self.candidate = None;
        }
        self.unjudged_through = self.unjudged_through.max(version.saturating_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(id: i64, user: &str, at_ms: u64, after_event: i64, items: Vec<u32>) -> ServedListRow {
        ServedListRow {
            id,
            at_ms,
            user_id: user.into(),
            plugin: "p".into(),
            model_version: 1,
            after_event,
            scores: vec![1.0; items.len()],
            items,
        }
    }

    #[test]
    fn a_list_is_decided_by_its_users_next_event_and_unanswered_after_the_wait() {
        let mut attribution = Attribution::new(10);
        attribution.served(&list(1, "a", 1_000, 5, vec![7, 8]));
        attribution.served(&list(2, "b", 1_000, 5, vec![7]));
        attribution.served(&list(3, "a", 2_000, 5, vec![9]));
        attribution.served(&list(4, "c", 2_000, 5, vec![1]));
        // An event stored before the lists were served does not count.
        attribution.event("a", 7, EventKind::Click, 5, 1_100);
        // c's event on item 7 decides c's list 4 (a miss), none of a's or b's.
        attribution.event("c", 7, EventKind::Click, 6, 1_100);
        // a's next event: on 8, a click. It decides both of a's lists at once: a hit and
        // click-through for list 1, a miss for list 3.
        attribution.event("a", 8, EventKind::Click, 7, 2_500);
        // b's next event misses; one after it on the listed item changes nothing.
        attribution.event("b", 3, EventKind::Rate, 8, 3_000);
        attribution.event("b", 7, EventKind::Rate, 9, 3_100);
        assert_eq!(
            attribution.open(),
            0,
            "c's list 4 was decided by c's event 6"
        );
        let outcomes: Vec<(bool, bool, bool)> = attribution
            .close(3_200)
            .iter()
            .map(|o| (o.answered, o.hit, o.clicked))
            .collect();
        assert_eq!(
            outcomes,
            vec![
                (true, false, false),
                (true, true, true),
                (true, false, false),
                (true, false, false)
            ]
        );
        // A list whose user does not come back within 10 s is unanswered, and an event
        // after the wait does not decide it.
        attribution.served(&list(5, "d", 4_000, 9, vec![2]));
        attribution.event("d", 2, EventKind::Rate, 10, 14_001);
        assert!(attribution.close(13_999).is_empty());
        let late = attribution.close(14_000);
        assert_eq!(late.len(), 1);
        assert!(!late[0].answered);
        assert_eq!(attribution.open(), 0);
    }

    #[test]
    fn a_list_logged_after_its_users_next_event_was_read_is_still_decided_by_it() {
        let mut attribution = Attribution::new(10);
        attribution.event("a", 3, EventKind::Rate, 6, 1_000);
        attribution.event("a", 7, EventKind::Click, 8, 1_100);
        // Served after event 6 was stored, logged late: event 8 is its next.
        attribution.served(&list(1, "a", 1_050, 6, vec![7]));
        let outcomes = attribution.close(1_200);
        assert_eq!(outcomes.len(), 1);
        assert!(outcomes[0].answered && outcomes[0].hit && outcomes[0].clicked);
        assert_eq!(attribution.open(), 0);
        // Events older than the grace are forgotten.
        attribution.event("b", 1, EventKind::Rate, 9, 1_100 + LATE_LIST_GRACE_MS + 1);
        assert!(!attribution.recent.contains_key("a"));
    }

    #[test]
    fn a_clearly_worse_version_is_caught_and_an_equal_one_passes() {
        let mut watch = VersionWatch::new(100, 0.001, 0.3);
        // Version 1: a 20% hit rate, the baseline.
        for i in 0..100 {
            assert_eq!(watch.judged(1, i % 5 == 0), None);
        }
        // Version 2, as good: passes after 100 of its lists.
        let mut verdict = None;
        for i in 0..100 {
            verdict = watch.judged(2, i % 5 == 1).or(verdict);
        }
        assert!(matches!(verdict, Some(Verdict::Passed(_))), "{verdict:?}");
        // Version 3 and its successor 4 hit 1%: worse, against version 2.
        let mut verdict = None;
        for i in 0..100 {
            verdict = watch.judged(3 + (i % 2), i == 50).or(verdict);
        }
        let Some(Verdict::Worse(test)) = verdict else {
            panic!("{verdict:?}")
        };
        assert_eq!((test.first_version, test.previous_version), (3, 2));
        assert_eq!((test.candidate_hits, test.baseline_hits), (1, 20));
        assert!(test.p_value < 1e-5);
        // Rejected: their late lists are ignored; the restored model (version 5) is tested
        // against the same baseline and passes.
        watch.reject(3, 4);
        assert_eq!(watch.judged(4, false), None);
        let mut verdict = None;
        for i in 0..100 {
            verdict = watch.judged(5, i % 5 == 2).or(verdict);
        }
        assert!(matches!(verdict, Some(Verdict::Passed(_))), "{verdict:?}");
    }

    #[test]
    fn a_candidate_spans_every_version_after_the_accepted_one_whichever_answers_first() {
        let mut watch = VersionWatch::new(10, 0.001, 0.3);
        for _ in 0..10 {
            watch.judged(1, true);
        }
        assert_eq!(watch.accepted(), 1);
        // Version 3 answers first, version 2 late: both in one candidate, from 2 to 3.
        let mut verdict = None;
        for i in 0..10 {
            verdict = watch.judged(if i < 5 { 3 } else { 2 }, true).or(verdict);
        }
        let Some(Verdict::Passed(test)) = verdict else {
            panic!("{verdict:?}")
        };
        assert_eq!((test.first_version, test.last_version), (2, 3));
        // Accepted through its newest version: a late outcome of 3 is the baseline's now.
        assert_eq!(watch.accepted(), 3);
        assert_eq!(watch.judged(3, true), None);
        assert!(watch.candidate.is_none());
    }

    #[test]
    fn equal_rates_raise_false_alarms_at_about_alpha() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let (mut worse, mut decisions) = (0, 0);
        let mut watch = VersionWatch::new(200, 0.05, 0.0);
        let mut version = 1;
        for n in 0..400_000u32 {
            if n % 150 == 0 {
                version += 1;
            }
            match watch.judged(version, rng.random_bool(0.1)) {
                Some(Verdict::Worse(_)) => {
                    worse += 1;
                    decisions += 1;
                    watch.reject(version, version);
                    version += 1;
                }
                Some(Verdict::Passed(_)) => decisions += 1,
                None => {}
            }
        }
        let rate = worse as f64 / decisions as f64;
        assert!(decisions > 1_000, "{decisions}");
        assert!(
            rate < 0.08,
            "false alarms {rate} over {decisions} decisions"
        );
    }

    #[test]
    fn percentiles_rank_items_by_events_with_ties_in_the_middle() {
        assert_eq!(
            popularity_percentiles(&[5, 1, 5, 0]),
            vec![5.0 / 6.0, 1.0 / 3.0, 5.0 / 6.0, 0.0]
        );
    }
}
