//! The in-memory view of items and users that serving needs: external IDs to dense indices,
//! titles, and each user's history. Loaded from the store at start.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use crate::histories::{Histories, History};
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
/// their histories ([`Histories`]). A cluster node keeps no histories: they are in the
/// shared feature store (`features`), and the counts and newest ids say whether what it
/// reads there is current.
#[derive(Default)]
pub struct Users {
    external_ids: Vec<String>,
    by_external_id: HashMap<String, u32>,
    /// Each user's event count and newest event id, side by side: start-up records every
    /// stored event here in time order, one random access each (two, with two vectors, were
    /// a sixth of a restart at MovieLens 25M's size).
    records: Vec<UserRecord>,
    /// Each user's events, when kept here.
    histories: Option<Histories>,
    /// Id of the newest event recorded: an experiment exposure served now is answered by the
    /// user's events after it.
    last_event_id: i64,
    /// Events recorded, all users together (the same as the store's count).
    event_count: u64,
}

/// What [`Users`] keeps of each user's events whether or not it keeps their history.
#[derive(Clone, Copy, Default)]
struct UserRecord {
    /// Their newest event's id (0: none).
    newest: i64,
    /// How many events they have: their version.
    count: u32,
}

impl Users {
    /// Users as the store lists them, before any event is recorded, with no histories: a
    /// cluster node never keeps them (they are in the feature store); a single node is given
    /// them by [`Self::keep_histories`] once start-up has read the log.
    pub fn without_histories(external_ids: Vec<String>) -> Self {
        Self::with(external_ids, None)
    }

    /// Users with empty histories, each event recorded from now on kept in them (a single
    /// node without a start-up pass: tests and benchmarks).
    pub fn with_histories(external_ids: Vec<String>) -> Self {
        let users = external_ids.len();
        Self::with(
            external_ids,
            Some(crate::histories::HistoriesBuilder::new(users).build()),
        )
    }

    fn with(external_ids: Vec<String>, histories: Option<Histories>) -> Self {
        let by_external_id = external_ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), i as u32))
            .collect();
        let users = external_ids.len();
        Self {
            external_ids,
            by_external_id,
            records: vec![UserRecord::default(); users],
            histories,
            last_event_id: 0,
            event_count: 0,
        }
    }

    /// Keeps `histories` (built from the events recorded so far) and every later event's
    /// place in them.
    pub fn keep_histories(&mut self, histories: Histories) {
        debug_assert_eq!(histories.users(), self.len(), "histories for other users");
        self.histories = Some(histories);
    }

    /// Adds a user registered in the store under `index` (the next free one).
    pub fn register(&mut self, index: u32, external_id: String) {
        debug_assert_eq!(index as usize, self.external_ids.len());
        self.by_external_id.insert(external_id.clone(), index);
        self.external_ids.push(external_id);
        self.records.push(UserRecord::default());
        if let Some(histories) = &mut self.histories {
            histories.register();
        }
    }

    /// Appends a stored event to its user's record. Returns the user's previous newest
    /// event id (0: this is their first), or `None` for an unknown user.
    pub fn record(&mut self, event: &EventRow) -> Option<i64> {
        self.last_event_id = self.last_event_id.max(event.id);
        let user = event.user as usize;
        let record = self.records.get_mut(user)?;
        let previous = std::mem::replace(&mut record.newest, event.id);
        record.count = record.count.saturating_add(1);
        if let Some(histories) = &mut self.histories {
            histories.record(event);
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
        self.records
            .get(user as usize)
            .map_or(0, |record| u64::from(record.count))
    }

    /// The id of the user's newest event (0: none).
    pub fn newest_event(&self, user: u32) -> i64 {
        self.records
            .get(user as usize)
            .map_or(0, |record| record.newest)
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

    /// The user's events, when histories are kept here (else `None`).
    pub fn history(&self, user: u32) -> Option<History<'_>> {
        Some(self.histories.as_ref()?.of(user))
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
