//! Served lists as both engines store them: one row per writer batch, the batch's lists
//! encoded together in the row's body, in serving order.
//!
//! One row per list, with two text columns and an index on its time, cost the served-list
//! writer 5% of the server's CPU under wrk with the cache off (every answer is a list), and
//! model monitoring another 3.5% reading them back row by row. A batch is one insert and one
//! read however many lists it holds, and about a third of the bytes.
//!
//! A list's id is its batch's id times [`LISTS_PER_BATCH`] plus its position in the batch:
//! ids still grow in storage order, so readers page through lists by id as before.
//!
//! The body is postcard: the batch's distinct plugin names once, then per list the index of
//! its plugin, the user's ID, varint integers and the items (varints) and scores.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use super::{ServedListRow, StoreError, StoreResult};

/// Version of the body's encoding, its first byte: a build that meets another refuses the
/// row instead of misreading it.
const FORMAT: u8 = 1;

/// Lists a batch holds at most; a list's id is `batch id * LISTS_PER_BATCH + position`.
pub const LISTS_PER_BATCH: i64 = 1 << 16;

#[derive(Serialize, Deserialize)]
struct Body<'a> {
    #[serde(borrow)]
    plugins: Vec<&'a str>,
    #[serde(borrow)]
    lists: Vec<Encoded<'a>>,
}

#[derive(Serialize, Deserialize)]
struct Encoded<'a> {
    at_ms: u64,
    user_id: &'a str,
    plugin: u32,
    model_version: u64,
    after_event: i64,
    // Borrowed when encoding, owned when read.
    items: Cow<'a, [u32]>,
    scores: Cow<'a, [f32]>,
}

/// One row to store.
pub struct Batch {
    /// The newest list's time: the batch expires with it.
    pub newest_at_ms: u64,
    pub lists: u32,
    pub body: Vec<u8>,
}

/// `lists` as rows to store, in order, each at most [`LISTS_PER_BATCH`] lists.
pub fn encode(lists: &[ServedListRow]) -> Vec<Batch> {
    lists
        .chunks(LISTS_PER_BATCH as usize)
        .map(|chunk| {
            let mut body = Body {
                plugins: Vec::new(),
                lists: Vec::with_capacity(chunk.len()),
            };
            for list in chunk {
                let plugin = match body.plugins.iter().position(|p| *p == list.plugin) {
                    Some(index) => index,
                    None => {
                        body.plugins.push(&list.plugin);
                        body.plugins.len() - 1
                    }
                };
                body.lists.push(Encoded {
                    at_ms: list.at_ms,
                    user_id: &list.user_id,
                    plugin: plugin as u32,
                    model_version: list.model_version,
                    after_event: list.after_event,
                    items: Cow::Borrowed(&list.items),
                    scores: Cow::Borrowed(&list.scores),
                });
            }
            Batch {
                newest_at_ms: chunk.iter().map(|l| l.at_ms).max().unwrap_or(0),
                lists: chunk.len() as u32,
                body: postcard::to_extend(&body, vec![FORMAT])
                    .expect("postcard encodes into a Vec"),
            }
        })
        .collect()
}

/// The first batch that can hold lists with ids above `after`.
pub fn first_batch_after(after: i64) -> i64 {
    after.max(0) / LISTS_PER_BATCH
}

/// The id of the last list of batch `batch_id` holding `lists` lists.
pub fn last_list_id(batch_id: i64, lists: i64) -> i64 {
    batch_id * LISTS_PER_BATCH + lists.max(1) - 1
}

/// Appends the lists of stored batch `batch_id` with ids above `after` to `out`, until it
/// holds `limit`.
pub fn decode(
    batch_id: i64,
    body: &[u8],
    after: i64,
    limit: usize,
    out: &mut Vec<ServedListRow>,
) -> StoreResult<()> {
    let corrupt =
        |reason: String| StoreError::Corrupt(format!("served-list batch {batch_id} {reason}"));
    let rest = match body.split_first() {
        Some((&FORMAT, rest)) => rest,
        Some((format, _)) => {
            return Err(corrupt(format!(
                "has format {format}, this build reads {FORMAT}"
            )));
        }
        None => return Err(corrupt("is empty".into())),
    };
    let body: Body<'_> =
        postcard::from_bytes(rest).map_err(|error| corrupt(format!("is unreadable: {error}")))?;
    for (position, list) in (0..).zip(body.lists) {
        let id = batch_id * LISTS_PER_BATCH + position;
        if id <= after {
            continue;
        }
        if out.len() >= limit {
            break;
        }
        let plugin = body
            .plugins
            .get(list.plugin as usize)
            .ok_or_else(|| corrupt(format!("names a plugin {} it does not hold", list.plugin)))?;
        out.push(ServedListRow {
            id,
            at_ms: list.at_ms,
            user_id: list.user_id.to_string(),
            plugin: plugin.to_string(),
            model_version: list.model_version,
            after_event: list.after_event,
            items: list.items.into_owned(),
            scores: list.scores.into_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(user: &str, plugin: &str, at_ms: u64) -> ServedListRow {
        ServedListRow {
            id: 0,
            at_ms,
            user_id: user.into(),
            plugin: plugin.into(),
            model_version: 7,
            after_event: 41,
            items: vec![3, 1, 4_000_000_000],
            scores: vec![0.5, -1.25, f32::MIN_POSITIVE],
        }
    }

    #[test]
    fn a_batch_gives_back_its_lists_in_order_with_ids_that_grow() {
        let lists = [
            list("a", "hybrid", 5),
            list("ü", "popularity", 9),
            list("c", "hybrid", 7),
        ];
        let batches = encode(&lists);
        assert_eq!(batches.len(), 1);
        assert_eq!((batches[0].lists, batches[0].newest_at_ms), (3, 9));
        let mut read = Vec::new();
        decode(2, &batches[0].body, 0, 10, &mut read).unwrap();
        let ids: Vec<i64> = read.iter().map(|l| l.id).collect();
        assert_eq!(
            ids,
            [
                2 * LISTS_PER_BATCH,
                2 * LISTS_PER_BATCH + 1,
                2 * LISTS_PER_BATCH + 2
            ]
        );
        for (read, written) in read.iter().zip(&lists) {
            assert_eq!(
                ServedListRow {
                    id: 0,
                    ..read.clone()
                },
                *written
            );
        }
        assert_eq!(last_list_id(2, 3), ids[2]);
        // Paging: after the first list, at most one.
        let mut page = Vec::new();
        decode(2, &batches[0].body, ids[0], 1, &mut page).unwrap();
        assert_eq!(page.iter().map(|l| l.id).collect::<Vec<_>>(), [ids[1]]);
        assert_eq!(first_batch_after(ids[1]), 2);
    }

    #[test]
    fn a_row_of_another_format_or_garbage_is_refused() {
        let mut body = encode(&[list("a", "p", 1)]).remove(0).body;
        let mut out = Vec::new();
        body[0] = FORMAT + 1;
        assert!(decode(1, &body, 0, 10, &mut out).is_err());
        assert!(decode(1, &[FORMAT, 0xff, 0xff], 0, 10, &mut out).is_err());
        assert!(decode(1, &[], 0, 10, &mut out).is_err());
        assert!(out.is_empty());
    }
}
