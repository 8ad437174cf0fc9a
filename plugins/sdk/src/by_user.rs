//! Per-user lists built from a whole training window, each allocated once at its final size.
//!
//! Pushing event by event into one growing `Vec` per user is what `update` does with a small
//! batch, but over a training window it interleaves the growth of every user's list: at
//! MovieLens 25M's size (162k users, 25M events in time order) the sandbox's allocator is left
//! with several times the data in freed blocks too small to reuse, and the instance runs out of
//! its memory limit. Counting first and filling second costs one more pass over the events.

use crate::Feedback;

/// For each user index up to the largest of a kept event, the values `keep` maps that user's
/// events to, in the order of `events`; events it maps to `None` are left out. Each list's
/// capacity is exactly its length.
pub fn group_by_user<T>(events: &[Feedback], keep: impl Fn(&Feedback) -> Option<T>) -> Vec<Vec<T>> {
    let mut counts: Vec<usize> = Vec::new();
    for event in events {
        if keep(event).is_some() {
            let user = event.user as usize;
            if user >= counts.len() {
                counts.resize(user + 1, 0);
            }
            counts[user] += 1;
        }
    }
    let mut lists: Vec<Vec<T>> = counts.into_iter().map(Vec::with_capacity).collect();
    for event in events {
        if let Some(value) = keep(event) {
            lists[event.user as usize].push(value);
        }
    }
    lists
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EventKind;

    fn event(user: u32, item: u32) -> Feedback {
        Feedback {
            user,
            item,
            kind: EventKind::View,
            value: 1.0,
            timestamp: 0,
        }
    }

    #[test]
    fn lists_keep_each_users_events_in_order_at_exact_capacity() {
        let events = [
            event(2, 7),
            event(0, 1),
            event(2, 3),
            event(2, 9),
            event(0, 4),
        ];
        let lists = group_by_user(&events, |e| (e.item != 9).then_some(e.item));
        assert_eq!(lists, vec![vec![1, 4], vec![], vec![7, 3]]);
        // Users whose events are all left out get no list past the last kept one.
        assert_eq!(
            group_by_user(&events, |e| (e.user == 0).then_some(e.item)).len(),
            1
        );
        assert!(lists.iter().all(|list| list.capacity() == list.len()));
        assert!(group_by_user(&[], |e| Some(e.item)).is_empty());
    }
}
