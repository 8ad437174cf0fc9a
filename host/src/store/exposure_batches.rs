//! Exposures as both engines store them: one row per experiment per writer batch, its
//! exposures encoded together in the row's body, in serving order.
//!
//! One row per exposure, with its four text columns and an index, cost the exposure writer
//! 7% of the server's CPU with cached answers under wrk (about 4 µs an exposure, most of it
//! SQLite's B-tree inserts), on the request path's cores. A batch is one insert however
//! many exposures it holds. The only reader, an experiment's results, reads all of an
//! experiment's exposures in order, which the batches give back as they were written.
//!
//! The body is postcard: the batch's distinct group and plugin names once, then per exposure
//! the indices of its names, the user's ID and varint integers (about 20 bytes an exposure
//! for numeric user IDs).

use serde::{Deserialize, Serialize};

use super::{ExposureKey, ExposureRow, StoreError, StoreResult};

/// Version of the body's encoding, its first byte: a build that meets another refuses the
/// row instead of misreading it.
const FORMAT: u8 = 1;

#[derive(Serialize, Deserialize)]
struct Body<'a> {
    #[serde(borrow)]
    names: Vec<&'a str>,
    #[serde(borrow)]
    exposures: Vec<Encoded<'a>>,
}

#[derive(Serialize, Deserialize)]
struct Encoded<'a> {
    group: u32,
    plugin: u32,
    user_id: &'a str,
    model_version: u64,
    after_event: i64,
    at_ms: u64,
    weights_revision: u64,
}

/// One row to store: an experiment's exposures of one batch.
pub struct Batch<'a> {
    pub experiment_id: &'a str,
    pub exposures: u32,
    pub body: Vec<u8>,
}

/// `rows` grouped by experiment (in the order each first appears), each group encoded in
/// serving order.
pub fn encode(rows: &[ExposureRow]) -> Vec<Batch<'_>> {
    let mut experiments: Vec<&str> = Vec::new();
    let mut bodies: Vec<Body<'_>> = Vec::new();
    for row in rows {
        let slot = match experiments.iter().position(|e| *e == row.experiment_id) {
            Some(slot) => slot,
            None => {
                experiments.push(&row.experiment_id);
                bodies.push(Body {
                    names: Vec::new(),
                    exposures: Vec::new(),
                });
                experiments.len() - 1
            }
        };
        let body = &mut bodies[slot];
        let group = name_index(&mut body.names, &row.group_name);
        let plugin = name_index(&mut body.names, &row.plugin);
        body.exposures.push(Encoded {
            group,
            plugin,
            user_id: &row.user_id,
            model_version: row.model_version,
            after_event: row.after_event,
            at_ms: row.at_ms,
            weights_revision: row.weights_revision,
        });
    }
    experiments
        .into_iter()
        .zip(bodies)
        .map(|(experiment_id, body)| {
            let bytes =
                postcard::to_extend(&body, vec![FORMAT]).expect("postcard encodes into a Vec");
            Batch {
                experiment_id,
                exposures: body.exposures.len() as u32,
                body: bytes,
            }
        })
        .collect()
}

/// `name`'s index in `names`, added if it is new (a batch has a handful of names).
fn name_index<'a>(names: &mut Vec<&'a str>, name: &'a str) -> u32 {
    let index = names.iter().position(|n| *n == name).unwrap_or_else(|| {
        names.push(name);
        names.len() - 1
    });
    index as u32
}

/// Appends the exposures of a stored batch `body` to `out`, numbering them from `next_id`
/// on (their order among an experiment's exposures).
pub fn decode(body: &[u8], next_id: &mut i64, out: &mut Vec<ExposureKey>) -> StoreResult<()> {
    let corrupt = |reason: String| StoreError::Corrupt(format!("an exposure batch {reason}"));
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
    let name = |index: u32| {
        body.names
            .get(index as usize)
            .copied()
            .ok_or_else(|| corrupt(format!("names a group {index} it does not hold")))
    };
    out.reserve(body.exposures.len());
    for exposure in &body.exposures {
        out.push(ExposureKey {
            id: *next_id,
            user_id: exposure.user_id.to_string(),
            group_name: name(exposure.group)?.to_string(),
            after_event: exposure.after_event,
            at_ms: exposure.at_ms,
            weights_revision: exposure.weights_revision,
        });
        *next_id += 1;
    }
    Ok(())
}

/// Orders an experiment's exposures read from both tables: the first `one_by_one` from the
/// table of rows stored one by one, the rest from batches. Such rows can be newer than the
/// batches (an older node still serving during a rolling upgrade writes them), so when both
/// kinds are there the whole list goes by serving time (stable: exposures of the same
/// millisecond keep their storage order) and is numbered again.
pub fn in_serving_order(exposures: &mut [ExposureKey], one_by_one: usize) {
    if one_by_one == 0 || one_by_one == exposures.len() {
        return;
    }
    exposures.sort_by_key(|e| e.at_ms);
    for (id, exposure) in (1..).zip(exposures.iter_mut()) {
        exposure.id = id;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(experiment: &str, group: &str, user: &str) -> ExposureRow {
        ExposureRow {
            experiment_id: experiment.into(),
            group_name: group.into(),
            user_id: user.into(),
            plugin: format!("plugin-of-{group}"),
            model_version: 3,
            after_event: 41,
            at_ms: 1_700_000_000_123,
            weights_revision: 2,
        }
    }

    #[test]
    fn batches_give_back_each_experiments_exposures_in_order() {
        let rows = [
            row("e", "a", "1"),
            row("f", "x", "2"),
            row("e", "b", "3"),
            row("e", "a", "ü"),
        ];
        let batches = encode(&rows);
        assert_eq!(
            batches
                .iter()
                .map(|b| (b.experiment_id, b.exposures))
                .collect::<Vec<_>>(),
            [("e", 3), ("f", 1)]
        );
        let mut next_id = 10;
        let mut keys = Vec::new();
        decode(&batches[0].body, &mut next_id, &mut keys).unwrap();
        assert_eq!(next_id, 13);
        let read: Vec<_> = keys
            .iter()
            .map(|k| (k.id, k.user_id.as_str(), k.group_name.as_str()))
            .collect();
        assert_eq!(read, [(10, "1", "a"), (11, "3", "b"), (12, "ü", "a")]);
        assert_eq!(
            (keys[0].after_event, keys[0].at_ms, keys[0].weights_revision),
            (41, 1_700_000_000_123, 2)
        );
    }

    #[test]
    fn a_foreign_or_damaged_body_is_refused() {
        let rows = [row("e", "a", "1")];
        let batches = encode(&rows);
        let mut body = batches[0].body.clone();
        let (mut next_id, mut keys) = (0, Vec::new());
        body[0] = 9;
        assert!(decode(&body, &mut next_id, &mut keys).is_err());
        assert!(decode(&[], &mut next_id, &mut keys).is_err());
        let truncated = &batches[0].body[..batches[0].body.len() - 3];
        assert!(decode(truncated, &mut next_id, &mut keys).is_err());
        assert!(keys.is_empty());
    }
}
