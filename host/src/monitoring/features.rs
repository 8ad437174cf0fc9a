//! What a window of events looked like, feature by feature, and how far a current window is
//! from a reference one ([`compare`]): the data-drift half of model monitoring.
//!
//! An [`EventWindow`] is kept incrementally (each event adds to a few counters; nothing is
//! scanned), so the learning node can close one every few minutes at any event rate. The
//! features, each compared by PSI and Jensen-Shannon distance ([`super::drift`]):
//!
//! | feature | bins |
//! |---|---|
//! | `event_kind` | rate, click, view, purchase |
//! | `rating` | each rating value seen in either window (half stars) |
//! | `item_popularity` | the reference's 50 most frequent items, and all others |
//! | `events_per_user` | deciles of the reference's events per active user, and beyond its largest |
//! | `new_users` | users' first events ever, and the other events |
//! | `new_items` | items' first events ever, and the other events |
//!
//! The reference is a run of events (the serving models' newest training data), usually
//! longer than a window. Every feature but one is a share of events, which does not depend
//! on how many events were counted (a first event ever is as likely in a short window as
//! in a long one). Events per user does: a user has more events in a longer run. So the
//! reference's is counted over consecutive runs as long as the current window
//! ([`Reference::events_per_user`]), and the two are alike when nothing changed.

use std::collections::{BTreeSet, HashMap};

use super::drift::{QuantileBins, TopCategories, jensen_shannon, psi};
use crate::store::EventKind;

/// Items given a bin of their own in `item_popularity`.
pub const TOP_ITEMS: usize = 50;

/// One window's counts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EventWindow {
    pub events: u64,
    kinds: [u64; 4],
    /// Rating value × 2 (half stars) -> count.
    ratings: HashMap<i64, u64>,
    items: HashMap<u32, u64>,
    per_user: HashMap<u32, u64>,
    new_user_events: u64,
    new_item_events: u64,
    /// Each event's user, in order (events per user are counted over runs of them).
    users: Vec<u32>,
}

/// One event as a window takes it.
#[derive(Clone, Copy, Debug)]
pub struct WindowEvent {
    pub user: u32,
    pub item: u32,
    pub kind: EventKind,
    pub value: f32,
    /// This is the user's first event ever.
    pub new_user: bool,
    /// This is the item's first event ever.
    pub new_item: bool,
}

impl EventWindow {
    /// Users with an event in the window.
    pub fn active_users(&self) -> usize {
        self.per_user.len()
    }

    pub fn record(&mut self, event: WindowEvent) {
        self.events += 1;
        self.kinds[event.kind.index()] += 1;
        if event.kind == EventKind::Rate && event.value.is_finite() {
            *self
                .ratings
                .entry((f64::from(event.value) * 2.0).round() as i64)
                .or_default() += 1;
        }
        *self.items.entry(event.item).or_default() += 1;
        *self.per_user.entry(event.user).or_default() += 1;
        self.users.push(event.user);
        self.new_user_events += u64::from(event.new_user);
        self.new_item_events += u64::from(event.new_item);
    }
}

/// The reference window.
#[derive(Clone, Debug, Default)]
pub struct Reference {
    pub window: EventWindow,
}

impl Reference {
    pub fn new(events: impl IntoIterator<Item = WindowEvent>) -> Self {
        let mut reference = Self::default();
        for event in events {
            reference.window.record(event);
        }
        reference
    }

    /// Events per active user, counted over consecutive runs of `run` events.
    pub fn events_per_user(&self, run: usize) -> Vec<f64> {
        per_user_runs(&self.window.users, run)
    }
}

/// Events per active user in each consecutive run of `run` events of `users`.
fn per_user_runs(users: &[u32], run: usize) -> Vec<f64> {
    let mut out = Vec::new();
    let run = run.max(1);
    // A short last run would count users over fewer events: left out when a full one
    // exists.
    let whole = if users.len() >= run {
        users.len() / run * run
    } else {
        users.len()
    };
    for chunk in users[..whole].chunks(run) {
        let mut counts: HashMap<u32, u64> = HashMap::new();
        for user in chunk {
            *counts.entry(*user).or_default() += 1;
        }
        out.extend(counts.values().map(|&c| c as f64));
    }
    out
}

/// How far one feature moved.
#[derive(Clone, Debug, PartialEq)]
pub struct FeatureDrift {
    pub feature: &'static str,
    /// `None` when a window has nothing for this feature (no ratings, say).
    pub psi: Option<f64>,
    pub jensen_shannon: Option<f64>,
}

fn drift(feature: &'static str, reference: &[f64], current: &[f64]) -> FeatureDrift {
    FeatureDrift {
        feature,
        psi: psi(reference, current),
        jensen_shannon: jensen_shannon(reference, current),
    }
}

/// Each feature's drift from `reference` to `current`.
pub fn compare(reference_events: &Reference, current: &EventWindow) -> Vec<FeatureDrift> {
    let reference = &reference_events.window;
    let as_f64 = |counts: &[u64]| counts.iter().map(|&c| c as f64).collect::<Vec<_>>();
    let mut out = vec![drift(
        "event_kind",
        &as_f64(&reference.kinds),
        &as_f64(&current.kinds),
    )];

    let values: BTreeSet<i64> = reference
        .ratings
        .keys()
        .chain(current.ratings.keys())
        .copied()
        .collect();
    let rating_bins = |w: &EventWindow| -> Vec<f64> {
        values
            .iter()
            .map(|v| w.ratings.get(v).copied().unwrap_or(0) as f64)
            .collect()
    };
    out.push(drift(
        "rating",
        &rating_bins(reference),
        &rating_bins(current),
    ));

    let top = TopCategories::from_reference(&reference.items, TOP_ITEMS);
    out.push(drift(
        "item_popularity",
        &top.counts(&reference.items),
        &top.counts(&current.items),
    ));

    // Both sides over runs of the same length: the window's, or the reference's when the
    // window is the longer (a busy site's five minutes).
    let run = current.users.len().min(reference.users.len());
    let reference_activity = reference_events.events_per_user(run);
    let bins = QuantileBins::from_reference(&reference_activity);
    out.push(drift(
        "events_per_user",
        &bins.counts(reference_activity.iter().copied()),
        &bins.counts(per_user_runs(&current.users, run)),
    ));

    let share = |part: u64, whole: u64| [part as f64, whole.saturating_sub(part) as f64];
    out.push(drift(
        "new_users",
        &share(reference.new_user_events, reference.events),
        &share(current.new_user_events, current.events),
    ));
    out.push(drift(
        "new_items",
        &share(reference.new_item_events, reference.events),
        &share(current.new_item_events, current.events),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A window of `users` users with `per_user` events each, over `items` items, rated by
    /// `rating(n)` for the n-th event.
    fn window(users: u32, per_user: u32, items: u32, rating: impl Fn(u32) -> f32) -> EventWindow {
        reference(users, per_user, items, rating).window
    }

    fn reference(users: u32, per_user: u32, items: u32, rating: impl Fn(u32) -> f32) -> Reference {
        let mut events = Vec::new();
        let mut n = 0;
        for user in 0..users {
            for e in 0..per_user {
                events.push(WindowEvent {
                    user,
                    // A long tail: low item numbers are the popular ones.
                    item: (n * 7 + e * 13) % items % (1 + (n % items)),
                    kind: if n % 4 == 0 {
                        EventKind::Click
                    } else {
                        EventKind::Rate
                    },
                    value: rating(n),
                    new_user: false,
                    new_item: false,
                });
                n += 1;
            }
        }
        Reference::new(events)
    }

    fn feature<'a>(drifts: &'a [FeatureDrift], name: &str) -> &'a FeatureDrift {
        drifts.iter().find(|d| d.feature == name).unwrap()
    }

    #[test]
    fn a_window_against_itself_has_no_drift() {
        let r = reference(200, 10, 300, |n| 1.0 + (n % 5) as f32);
        for d in compare(&r, &r.window) {
            assert!(d.psi.is_some_and(|p| p.abs() < 1e-12), "{d:?}");
            assert!(d.jensen_shannon.is_some_and(|j| j < 1e-6), "{d:?}");
        }
    }

    #[test]
    fn ratings_one_star_up_and_a_new_item_mix_are_major_shifts() {
        let reference = reference(200, 10, 300, |n| 1.0 + (n % 4) as f32);
        let higher = window(200, 10, 300, |n| 2.0 + (n % 4) as f32);
        let drifts = compare(&reference, &higher);
        let rating = feature(&drifts, "rating");
        assert!(rating.psi.unwrap() > 0.25, "{rating:?}");
        // Nothing else moved.
        assert!(feature(&drifts, "event_kind").psi.unwrap() < 1e-9);
        assert!(feature(&drifts, "item_popularity").psi.unwrap() < 1e-9);

        // The same users, all on items the reference never saw.
        let mut elsewhere = EventWindow::default();
        for user in 0..200 {
            for e in 0..10 {
                elsewhere.record(WindowEvent {
                    user,
                    item: 10_000 + e,
                    kind: EventKind::Click,
                    value: 1.0,
                    new_user: false,
                    new_item: true,
                });
            }
        }
        let drifts = compare(&reference, &elsewhere);
        assert!(feature(&drifts, "item_popularity").psi.unwrap() > 0.25);
        assert!(feature(&drifts, "new_items").psi.unwrap() > 0.25);
        assert!(feature(&drifts, "event_kind").psi.unwrap() > 0.25);
        // No ratings now: the rating feature says it cannot tell.
        assert_eq!(feature(&drifts, "rating").psi, None);
    }

    #[test]
    fn a_short_window_of_the_same_users_is_no_drift_in_events_per_user() {
        // 400 users with 5 events each, in order: any run of 500 events has 100 users with
        // 5 each, like the reference's runs of 500; the whole reference (5 per user) too.
        let reference = reference(400, 5, 300, |_| 3.0);
        let short = window(100, 5, 300, |_| 3.0);
        let drifts = compare(&reference, &short);
        assert!(feature(&drifts, "events_per_user").psi.unwrap() < 1e-9);
        // Counted over the whole reference instead (one run), 5 per user too; but over runs
        // of 3 events (the way a 3-event window sees it) mostly 1 or 2 per user.
        assert!(reference.events_per_user(3).iter().all(|&c| c <= 3.0));
    }

    #[test]
    fn a_window_longer_than_the_reference_is_counted_in_runs_of_the_reference() {
        // The same stream, the window eight times the reference: no drift, though a user
        // has eight times the events in the window.
        let reference = reference(100, 5, 300, |_| 3.0);
        let long = window(800, 5, 300, |_| 3.0);
        let drifts = compare(&reference, &long);
        assert!(
            feature(&drifts, "events_per_user").psi.unwrap() < 1e-9,
            "{drifts:?}"
        );
    }

    #[test]
    fn heavier_users_show_in_events_per_user() {
        let reference = reference(400, 5, 300, |_| 3.0);
        let heavy = window(50, 40, 300, |_| 3.0);
        let drifts = compare(&reference, &heavy);
        assert!(
            feature(&drifts, "events_per_user").psi.unwrap() > 0.25,
            "{drifts:?}"
        );
    }
}
