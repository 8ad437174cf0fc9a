//! Builders for a plugin's native unit tests, so the tests read as behaviour rather than as
//! struct literals. Used by the bundled plugins' tests; available to any plugin's.

use crate::{EventKind, Feedback, Item, ItemIndex, Request, Strategy};

/// A catalog of `n` untagged items titled "item 0", "item 1", ...
pub fn catalog(n: u32) -> Vec<Item> {
    (0..n)
        .map(|index| Item {
            index,
            title: format!("item {index}"),
            tags: vec![],
        })
        .collect()
}

/// A click of `user` on `item` at time 1.
pub fn click(user: u32, item: ItemIndex) -> Feedback {
    Feedback {
        user,
        item,
        kind: EventKind::Click,
        value: 1.0,
        timestamp: 1,
    }
}

/// The items `model` recommends, best first, to a user with `history`, excluding every item in
/// it (as the host does). Panics if the model refuses: in a test that is a failure.
pub fn recommend_for_history<S: Strategy>(
    model: &S,
    history: Vec<Feedback>,
    count: u32,
) -> Vec<ItemIndex> {
    let mut exclude: Vec<ItemIndex> = history.iter().map(|event| event.item).collect();
    exclude.sort_unstable();
    exclude.dedup();
    let user = history.first().map(|event| event.user);
    let request = Request {
        user,
        count,
        history,
        exclude,
    };
    model
        .recommend(&request)
        .expect("recommend")
        .iter()
        .map(|scored| scored.item)
        .collect()
}

/// [`recommend_for_history`] for a user who clicked `items`.
pub fn recommend_after_clicks<S: Strategy>(
    model: &S,
    items: &[ItemIndex],
    count: u32,
) -> Vec<ItemIndex> {
    let history = items.iter().map(|&item| click(99, item)).collect();
    recommend_for_history(model, history, count)
}
