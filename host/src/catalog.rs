//! The in-memory view of items and users that serving needs: external IDs to dense indices,
//! titles, and each user's history. Loaded from the store at start.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use crate::plugins::bindings::{Feedback, Item, WitEventKind};
use crate::store::{EventKind, EventRow, ItemRow};

/// Items, by dense index and by external ID.
pub struct Catalog {
    items: Vec<ItemRow>,
    /// Each item's ID and title as JSON, encoded once: every `/recommend` answer carries
    /// them, and escaping titles per answer was a twelfth of a cached request's time.
    json: Vec<ItemJson>,
    by_external_id: HashMap<String, u32>,
    plugin_items: std::sync::Arc<Vec<Item>>,
    fingerprint: String,
}

impl Catalog {
    pub fn new(items: Vec<ItemRow>) -> Self {
        let by_external_id = items
            .iter()
            .enumerate()
            .map(|(i, item)| (item.external_id.clone(), i as u32))
            .collect();
        let plugin_items: Vec<Item> = items
            .iter()
            .enumerate()
            .map(|(i, item)| Item {
                index: i as u32,
                title: item.title.clone(),
                tags: item.tags.clone(),
            })
            .collect();
        let mut digest = Sha256::new();
        for item in &items {
            digest.update(item.external_id.as_bytes());
            digest.update([0]);
            for tag in &item.tags {
                digest.update(tag.as_bytes());
                digest.update([1]);
            }
        }
        let fingerprint = crate::plugins::engine::hex(&digest.finalize());
        let json = items.iter().map(ItemJson::new).collect();
        Self {
            items,
            json,
            by_external_id,
            plugin_items: std::sync::Arc::new(plugin_items),
            fingerprint,
        }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn index_of(&self, external_id: &str) -> Option<u32> {
        self.by_external_id.get(external_id).copied()
    }

    pub fn get(&self, index: u32) -> Option<&ItemRow> {
        self.items.get(index as usize)
    }

    /// The item's ID and title as JSON.
    pub fn json(&self, index: u32) -> Option<&ItemJson> {
        self.json.get(index as usize)
    }

    /// The catalog as plugins receive it in `configure`.
    pub fn plugin_items(&self) -> std::sync::Arc<Vec<Item>> {
        self.plugin_items.clone()
    }

    /// Changes whenever an item is added or its tags change: trained models depend on it.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
}

/// An item's external ID (as the API writes IDs: a number when it is one) and title, as JSON
/// text ready to be written into an answer.
pub struct ItemJson {
    pub id: Box<serde_json::value::RawValue>,
    pub title: Box<serde_json::value::RawValue>,
}

impl ItemJson {
    fn new(item: &ItemRow) -> Self {
        Self {
            id: serde_json::value::to_raw_value(&crate::api::ids::to_json(&item.external_id))
                .expect("a JSON value encodes"),
            title: serde_json::value::to_raw_value(&item.title).expect("a string encodes"),
        }
    }
}

/// Registered users: their IDs, event counts and newest event ids, and (on a single node)
/// their histories. A cluster node keeps no histories: they are in the shared feature
/// store (`features`), and the counts and newest ids say whether what it reads there is
/// current.
#[derive(Default)]
pub struct Users {
    external_ids: Vec<String>,
    by_external_id: HashMap<String, u32>,
    /// Each user's event count: their version.
    counts: Vec<u32>,
    /// Each user's newest event id (0: none).
    newest: Vec<i64>,
    /// Each user's events, oldest first, when kept here.
    histories: Option<Vec<Vec<Feedback>>>,
    /// Id of the newest event recorded: an experiment exposure served now is answered by the
    /// user's events after it.
    last_event_id: i64,
    /// Events recorded, all users together (the same as the store's count).
    event_count: u64,
}

impl Users {
    /// Users with their histories (a single node), before any event is recorded.
    pub fn new(external_ids: Vec<String>) -> Self {
        Self::with(external_ids, true)
    }

    /// Users without their histories (a cluster node: they are in the feature store).
    pub fn without_histories(external_ids: Vec<String>) -> Self {
        Self::with(external_ids, false)
    }

    fn with(external_ids: Vec<String>, keep_histories: bool) -> Self {
        let by_external_id = external_ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), i as u32))
            .collect();
        let users = external_ids.len();
        Self {
            external_ids,
            by_external_id,
            counts: vec![0; users],
            newest: vec![0; users],
            histories: keep_histories.then(|| vec![Vec::new(); users]),
            last_event_id: 0,
            event_count: 0,
        }
    }

    /// Gives back what the histories' growth left unused, after start-up recorded every
    /// stored event (up to half of each history).
    pub fn shrink_to_fit(&mut self) {
        for history in self.histories.iter_mut().flatten() {
            history.shrink_to_fit();
        }
    }

    /// Adds a user registered in the store under `index` (the next free one).
    pub fn register(&mut self, index: u32, external_id: String) {
        debug_assert_eq!(index as usize, self.external_ids.len());
        self.by_external_id.insert(external_id.clone(), index);
        self.external_ids.push(external_id);
        self.counts.push(0);
        self.newest.push(0);
        if let Some(histories) = &mut self.histories {
            histories.push(Vec::new());
        }
    }

    /// Appends a stored event to its user's record. Returns the user's previous newest
    /// event id (0: this is their first), or `None` for an unknown user.
    pub fn record(&mut self, event: &EventRow) -> Option<i64> {
        self.last_event_id = self.last_event_id.max(event.id);
        let user = event.user as usize;
        let newest = self.newest.get_mut(user)?;
        let previous = std::mem::replace(newest, event.id);
        self.counts[user] = self.counts[user].saturating_add(1);
        if let Some(history) = self.histories.as_mut().and_then(|h| h.get_mut(user)) {
            history.push(to_feedback(event));
        }
        self.event_count += 1;
        Some(previous)
    }

    /// Notes that the events up to `id` have been seen, though not all recorded (events of
    /// items the serving catalog does not hold).
    pub fn skip_to(&mut self, id: i64) {
        self.last_event_id = self.last_event_id.max(id);
    }

    /// Events recorded, all users together.
    pub fn event_count(&self) -> u64 {
        self.event_count
    }

    /// Id of the newest event recorded so far.
    pub fn last_event_id(&self) -> i64 {
        self.last_event_id
    }

    /// The user's version: how many events they have. Every new event changes it, and it is
    /// the same after a restart (events are never deleted), so cache keys built on it can
    /// outlive the process (Redis) without ever naming a stale answer.
    pub fn version(&self, user: u32) -> u64 {
        self.counts.get(user as usize).copied().map_or(0, u64::from)
    }

    /// The id of the user's newest event (0: none).
    pub fn newest_event(&self, user: u32) -> i64 {
        self.newest.get(user as usize).copied().unwrap_or(0)
    }

    pub fn len(&self) -> usize {
        self.external_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.external_ids.is_empty()
    }

    pub fn index_of(&self, external_id: &str) -> Option<u32> {
        self.by_external_id.get(external_id).copied()
    }

    /// The external ID of user `index`.
    pub fn external_id(&self, index: u32) -> Option<&str> {
        self.external_ids.get(index as usize).map(String::as_str)
    }

    /// The user's events, oldest first, when histories are kept here (else `None`).
    pub fn history(&self, user: u32) -> Option<&[Feedback]> {
        let histories = self.histories.as_ref()?;
        Some(
            histories
                .get(user as usize)
                .map(Vec::as_slice)
                .unwrap_or(&[]),
        )
    }
}

/// The plugin-facing form of a stored event.
pub fn to_feedback(event: &EventRow) -> Feedback {
    Feedback {
        user: event.user,
        item: event.item,
        kind: wit_kind(event.kind),
        value: event.value,
        timestamp: event.timestamp,
    }
}

/// The plugin-facing form of an event kind.
pub fn wit_kind(kind: EventKind) -> WitEventKind {
    match kind {
        EventKind::Rate => WitEventKind::Rate,
        EventKind::Click => WitEventKind::Click,
        EventKind::View => WitEventKind::View,
        EventKind::Purchase => WitEventKind::Purchase,
    }
}

/// The API's name of an event kind (`"rate"`, `"click"`, ...).
pub fn event_type_name(kind: WitEventKind) -> &'static str {
    match kind {
        WitEventKind::Rate => EventKind::Rate.as_str(),
        WitEventKind::Click => EventKind::Click.as_str(),
        WitEventKind::View => EventKind::View.as_str(),
        WitEventKind::Purchase => EventKind::Purchase.as_str(),
    }
}
