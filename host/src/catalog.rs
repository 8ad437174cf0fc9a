//! The in-memory view of items and users that serving needs: external IDs to dense indices,
//! titles, and each user's history. Loaded from the store at start.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use crate::plugins::bindings::{Feedback, Item, WitEventKind};
use crate::store::{EventKind, EventRow, ItemRow};

/// Items, by dense index and by external ID.
pub struct Catalog {
    items: Vec<ItemRow>,
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
        Self {
            items,
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

    /// The catalog as plugins receive it in `configure`.
    pub fn plugin_items(&self) -> std::sync::Arc<Vec<Item>> {
        self.plugin_items.clone()
    }

    /// Changes whenever an item is added or its tags change: trained models depend on it.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
}

/// Registered users and their histories.
#[derive(Default)]
pub struct Users {
    external_ids: Vec<String>,
    by_external_id: HashMap<String, u32>,
    /// Each user's events, oldest first.
    histories: Vec<Vec<Feedback>>,
    /// Id of the newest event recorded: an experiment exposure served now is answered by the
    /// user's events after it.
    last_event_id: i64,
    /// Events recorded, all users together (the same as the store's count).
    event_count: u64,
}

impl Users {
    pub fn new(external_ids: Vec<String>, events: &[EventRow]) -> Self {
        let by_external_id = external_ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), i as u32))
            .collect();
        let mut histories = vec![Vec::new(); external_ids.len()];
        for event in events {
            if let Some(history) = histories.get_mut(event.user as usize) {
                history.push(to_feedback(event));
            }
        }
        Self {
            external_ids,
            by_external_id,
            histories,
            last_event_id: events.last().map(|e| e.id).unwrap_or(0),
            event_count: events.len() as u64,
        }
    }

    /// Adds a user registered in the store under `index` (the next free one).
    pub fn register(&mut self, index: u32, external_id: String) {
        debug_assert_eq!(index as usize, self.external_ids.len());
        self.by_external_id.insert(external_id.clone(), index);
        self.external_ids.push(external_id);
        self.histories.push(Vec::new());
    }

    /// Appends a stored event to its user's history.
    pub fn record(&mut self, event: &EventRow) {
        if let Some(history) = self.histories.get_mut(event.user as usize) {
            history.push(to_feedback(event));
            self.event_count += 1;
        }
        self.last_event_id = self.last_event_id.max(event.id);
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
        self.history(user).len() as u64
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

    /// The user's events, oldest first.
    pub fn history(&self, user: u32) -> &[Feedback] {
        self.histories
            .get(user as usize)
            .map(Vec::as_slice)
            .unwrap_or(&[])
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
