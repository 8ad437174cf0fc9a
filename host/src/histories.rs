//! Every user's events on a single node, oldest first, kept compactly for the request path
//! (their newest events go to the plugin; every item they had is excluded).
//!
//! Start-up reads the whole event log in id (time) order, so the users' events arrive
//! interleaved. Appended one by one to one growing `Vec` per user, or written straight into
//! per-user regions of one block, nearly every event landed far from the one before: at
//! MovieLens 25M's size (162k users, 25M events, 400-600 MB of histories) about 450 ns an
//! event on this VM (huge pages did not help), a third of a restart. So start-up
//! ([`HistoriesBuilder`]) first appends each event to the bucket of a range of about a
//! thousand users (a few hundred buckets: as many write streams as the caches and TLB keep),
//! then lays the buckets out one by one into one block, each user's events together: every
//! write is then near the last one of its stream. Events recorded after start-up go to a
//! small vector of the user's own, after their part of the block.
//!
//! An event takes 16 bytes here, its kind folded into the timestamp's byte (the plugin's
//! `Feedback` takes 24 and repeats the user).

use crate::catalog::wit_kind;
use crate::plugins::bindings::Feedback;
use crate::store::{EventKind, EventRow};

/// One event as a history keeps it. Aligned to 4 so that a staged event with its user is 20
/// bytes, not 24.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C, packed(4))]
struct HistoryEvent {
    item: u32,
    value: f32,
    /// The timestamp (seconds) shifted left by 8, the kind's index in the low byte. The API
    /// and the importer take timestamps at most a day ahead (`events::MAX_FUTURE_SECS`), far
    /// below 2^56; one beyond (stored by an importer before it checked) is kept as the
    /// largest that fits.
    stamp: u64,
}

/// The largest timestamp a [`HistoryEvent`] holds.
const LATEST: u64 = (1 << 56) - 1;

impl HistoryEvent {
    fn of(event: &EventRow) -> Self {
        Self {
            item: event.item,
            value: event.value,
            stamp: (event.timestamp.min(LATEST) << 8) | event.kind.index() as u64,
        }
    }

    fn feedback(self, user: u32) -> Feedback {
        let stamp = self.stamp;
        Feedback {
            user,
            item: self.item,
            kind: wit_kind(EventKind::ALL[usize::from(stamp as u8)]),
            value: self.value,
            timestamp: stamp >> 8,
        }
    }
}

/// Users' histories: each user's events from start-up together in one block, then a vector
/// per user for those recorded since.
#[derive(Default)]
pub struct Histories {
    /// The events read at start-up, user after user.
    block: Vec<HistoryEvent>,
    /// User `u`'s part of the block is `block[starts[u]..starts[u + 1]]`; users registered
    /// after start-up have none.
    starts: Vec<u64>,
    /// Events recorded since start-up, per user, oldest first.
    later: Vec<Vec<HistoryEvent>>,
}

impl Histories {
    /// How many users it has a history for.
    pub fn users(&self) -> usize {
        self.later.len()
    }

    /// Adds a user with no events (registered after start-up).
    pub fn register(&mut self) {
        self.later.push(Vec::new());
    }

    /// Appends `event` to its user's history; `false` for an unknown user.
    pub fn record(&mut self, event: &EventRow) -> bool {
        match self.later.get_mut(event.user as usize) {
            Some(later) => {
                later.push(HistoryEvent::of(event));
                true
            }
            None => false,
        }
    }

    /// User `user`'s history (empty for an unknown user).
    pub fn of(&self, user: u32) -> History<'_> {
        let index = user as usize;
        let read = match (self.starts.get(index), self.starts.get(index + 1)) {
            (Some(&start), Some(&end)) => &self.block[start as usize..end as usize],
            _ => &[],
        };
        History {
            user,
            read,
            later: self.later.get(index).map_or(&[], Vec::as_slice),
        }
    }
}

/// A user's event on its way into the block.
#[derive(Clone, Copy)]
#[repr(C, packed(4))]
struct Staged {
    user: u32,
    event: HistoryEvent,
}

/// Builds [`Histories`] from the event log read in order at start-up (see the module's
/// comment for why in two steps).
pub struct HistoriesBuilder {
    users: usize,
    /// Bucket `b` holds the events of users `b << USERS_PER_BUCKET_BITS` up to the next
    /// bucket's first, in the order pushed.
    buckets: Vec<Vec<Staged>>,
}

/// 2^this users to a bucket: a bucket's part of the block (1,024 users' events, 2.5 MB at
/// MovieLens 25M's size) stays in the caches while it is laid out.
const USERS_PER_BUCKET_BITS: u32 = 10;

impl HistoriesBuilder {
    /// For `users` users, indices `0..users`.
    pub fn new(users: usize) -> Self {
        Self {
            users,
            buckets: vec![Vec::new(); users.div_ceil(1 << USERS_PER_BUCKET_BITS)],
        }
    }

    /// Adds the next event of the log (ids ascending); `false` (and nothing kept) for a user
    /// outside `0..users`.
    pub fn push(&mut self, event: &EventRow) -> bool {
        if event.user as usize >= self.users {
            return false;
        }
        self.buckets[(event.user >> USERS_PER_BUCKET_BITS) as usize].push(Staged {
            user: event.user,
            event: HistoryEvent::of(event),
        });
        true
    }

    /// Lays the buckets out into one block, each user's events together and in the order
    /// pushed; each bucket is freed once laid out.
    pub fn build(self) -> Histories {
        let total = self.buckets.iter().map(Vec::len).sum();
        let mut block = vec![HistoryEvent::default(); total];
        let mut starts = Vec::with_capacity(self.users + 1);
        starts.push(0u64);
        let mut next = Vec::new();
        for (bucket_index, bucket) in self.buckets.into_iter().enumerate() {
            let first_user = bucket_index << USERS_PER_BUCKET_BITS;
            let users = (self.users - first_user).min(1 << USERS_PER_BUCKET_BITS);
            // Where each of the bucket's users' events go next: counted, then summed up.
            next.clear();
            next.resize(users, 0u64);
            for staged in &bucket {
                next[staged.user as usize - first_user] += 1;
            }
            let mut at = *starts.last().unwrap_or(&0);
            for slot in &mut next {
                let count = *slot;
                *slot = at;
                at += count;
                starts.push(at);
            }
            for staged in &bucket {
                let slot = &mut next[staged.user as usize - first_user];
                block[*slot as usize] = staged.event;
                *slot += 1;
            }
        }
        Histories {
            block,
            starts,
            later: vec![Vec::new(); self.users],
        }
    }
}

/// One user's events, oldest first.
pub struct History<'a> {
    user: u32,
    /// Those read at start-up.
    read: &'a [HistoryEvent],
    /// Those recorded since.
    later: &'a [HistoryEvent],
}

impl History<'_> {
    pub fn len(&self) -> usize {
        self.read.len() + self.later.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The events, oldest first, as a plugin takes them.
    pub fn events(&self) -> impl DoubleEndedIterator<Item = Feedback> + '_ {
        let user = self.user;
        self.read
            .iter()
            .chain(self.later)
            .map(move |&event| event.feedback(user))
    }

    /// The items of the events, oldest first (with repeats).
    pub fn items(&self) -> impl Iterator<Item = u32> + '_ {
        self.read.iter().chain(self.later).map(|event| event.item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::bindings::WitEventKind;

    fn event(id: i64, user: u32, item: u32, kind: EventKind, timestamp: u64) -> EventRow {
        EventRow {
            id,
            user,
            item,
            kind,
            value: id as f32 / 2.0,
            timestamp,
        }
    }

    fn feedback(history: History<'_>) -> Vec<(u32, u32, WitEventKind, f32, u64)> {
        history
            .events()
            .map(|f| (f.user, f.item, f.kind, f.value, f.timestamp))
            .collect()
    }

    #[test]
    fn events_read_at_start_and_recorded_later_come_back_in_order() {
        // Users across three buckets (and one with no events), interleaved in time, every
        // kind among them.
        let users = (2 << USERS_PER_BUCKET_BITS) + 5;
        let last = users as u32 - 1;
        let stamp = 1_700_000_000;
        let kinds = EventKind::ALL;
        let read: Vec<EventRow> = (0..40)
            .map(|i| {
                let user = [0, last, 7, 1 << USERS_PER_BUCKET_BITS, 0, 7][i as usize % 6];
                event(
                    i + 1,
                    user,
                    i as u32 * 3,
                    kinds[i as usize % 4],
                    stamp + i as u64,
                )
            })
            .collect();
        let mut builder = HistoriesBuilder::new(users);
        for e in &read {
            assert!(builder.push(e));
        }
        assert!(!builder.push(&event(99, users as u32, 1, EventKind::Rate, stamp)));
        let mut histories = builder.build();
        let later = [
            event(41, 7, 500, EventKind::Purchase, stamp + 50),
            event(42, 3, 501, EventKind::View, stamp + 51),
        ];
        for e in &later {
            assert!(histories.record(e));
        }
        histories.register();
        let newcomer = event(43, users as u32, 502, EventKind::Click, stamp + 52);
        assert!(histories.record(&newcomer));
        assert!(!histories.record(&event(44, users as u32 + 1, 1, EventKind::Rate, stamp)));

        let all: Vec<&EventRow> = read.iter().chain(&later).chain([&newcomer]).collect();
        for user in [0, 1, 3, 7, 1 << USERS_PER_BUCKET_BITS, last, users as u32] {
            let expected: Vec<_> = all
                .iter()
                .filter(|e| e.user == user)
                .map(|e| (e.user, e.item, wit_kind(e.kind), e.value, e.timestamp))
                .collect();
            assert_eq!(feedback(histories.of(user)), expected, "user {user}");
            assert_eq!(histories.of(user).len(), expected.len());
            let items: Vec<u32> = histories.of(user).items().collect();
            assert_eq!(items, expected.iter().map(|e| e.1).collect::<Vec<_>>());
        }
        let newest_first: Vec<u32> = histories.of(7).events().rev().map(|f| f.item).collect();
        assert_eq!(newest_first.first(), Some(&500));
        assert!(histories.of(1).is_empty());
        assert!(histories.of(users as u32 + 9).is_empty());
    }

    #[test]
    fn a_timestamp_too_large_to_hold_is_kept_as_the_largest_that_fits() {
        let mut builder = HistoriesBuilder::new(1);
        // Just past what fits: shifted unclamped, its top bit would drop and leave 5.
        builder.push(&event(1, 0, 3, EventKind::Purchase, (1 << 56) | 5));
        let histories = builder.build();
        let kept = feedback(histories.of(0));
        assert_eq!(
            kept,
            [(0, 3, WitEventKind::Purchase, 0.5, LATEST)],
            "the kind survives"
        );
    }

    #[test]
    fn an_event_takes_sixteen_bytes_and_twenty_on_its_way_in() {
        assert_eq!(std::mem::size_of::<HistoryEvent>(), 16);
        assert_eq!(std::mem::size_of::<Staged>(), 20);
    }
}
