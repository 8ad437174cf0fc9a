//! Appending live events (`POST /events`): many clients' events in one transaction.

use rusqlite::params;

use super::{EventKind, EventRow, Store, StoreResult, unix_now};

/// A validated event, its item resolved to a dense index, its user still an external ID.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    pub user: String,
    pub item: u32,
    pub kind: EventKind,
    pub value: f32,
    pub timestamp: u64,
}

/// What [`Store::append_events`] wrote.
#[derive(Debug, Default)]
pub struct Appended {
    /// The stored events with their ids and user indices, in the order given.
    pub rows: Vec<EventRow>,
    /// Users registered by this append: (index, external ID).
    pub new_users: Vec<(u32, String)>,
}

impl Store {
    /// Stores `events` in one transaction, all or nothing. A user unknown to `known_user`
    /// is registered with the next free index, counting up from `next_user`.
    pub fn append_events(
        &self,
        events: &[NewEvent],
        known_user: impl Fn(&str) -> Option<u32>,
        next_user: u32,
    ) -> StoreResult<Appended> {
        let mut connection = self.lock();
        let transaction = connection.transaction()?;
        let mut appended = Appended {
            rows: Vec::with_capacity(events.len()),
            new_users: Vec::new(),
        };
        {
            let mut insert_user = transaction.prepare_cached(
                "INSERT INTO users (idx, external_id, created_at) VALUES (?1, ?2, ?3)",
            )?;
            let mut insert_event = transaction.prepare_cached(
                "INSERT INTO events (user_idx, item_idx, kind, value, timestamp)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            let mut registered = std::collections::HashMap::new();
            let now = unix_now();
            for event in events {
                let user = match known_user(&event.user) {
                    Some(index) => index,
                    None => match registered.get(event.user.as_str()) {
                        Some(&index) => index,
                        None => {
                            let index = next_user + appended.new_users.len() as u32;
                            insert_user.execute(params![index, event.user, now as i64])?;
                            registered.insert(event.user.as_str(), index);
                            appended.new_users.push((index, event.user.clone()));
                            index
                        }
                    },
                };
                insert_event.execute(params![
                    user,
                    event.item,
                    event.kind.as_str(),
                    f64::from(event.value),
                    event.timestamp as i64
                ])?;
                appended.rows.push(EventRow {
                    id: transaction.last_insert_rowid(),
                    user,
                    item: event.item,
                    kind: event.kind,
                    value: event.value,
                    timestamp: event.timestamp,
                });
            }
        }
        transaction.commit()?;
        Ok(appended)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ImportBatch, ItemRow};

    fn store_with_items(dir: &std::path::Path) -> Store {
        let store = Store::open(&dir.join("db")).unwrap();
        let items = (0..3)
            .map(|i| ItemRow {
                external_id: i.to_string(),
                title: format!("Item {i}"),
                tags: vec![],
            })
            .collect();
        store
            .import(&ImportBatch {
                items,
                events: vec![],
            })
            .unwrap();
        store
    }

    fn event(user: &str, item: u32) -> NewEvent {
        NewEvent {
            user: user.into(),
            item,
            kind: EventKind::Click,
            value: 1.0,
            timestamp: 5,
        }
    }

    #[test]
    fn registers_new_users_once_and_returns_ids_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_items(dir.path());
        let first = store
            .append_events(&[event("old", 0)], |_| None, 0)
            .unwrap();
        assert_eq!(first.new_users, vec![(0, "old".to_string())]);
        let known = |id: &str| (id == "old").then_some(0);
        let appended = store
            .append_events(
                &[event("new", 1), event("old", 2), event("new", 0)],
                known,
                1,
            )
            .unwrap();
        assert_eq!(appended.new_users, vec![(1, "new".to_string())]);
        let users: Vec<u32> = appended.rows.iter().map(|r| r.user).collect();
        assert_eq!(users, vec![1, 0, 1]);
        let ids: Vec<i64> = appended.rows.iter().map(|r| r.id).collect();
        assert_eq!(ids, vec![2, 3, 4]);
        assert_eq!(store.events_after(1).unwrap(), appended.rows);
    }

    #[test]
    fn a_failing_append_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_items(dir.path());
        // Item 9 does not exist: the foreign key fails the whole transaction.
        let result = store.append_events(&[event("a", 1), event("a", 9)], |_| None, 0);
        assert!(result.is_err());
        assert_eq!(store.counts().unwrap().events, 0);
        assert_eq!(store.counts().unwrap().users, 0);
    }
}
