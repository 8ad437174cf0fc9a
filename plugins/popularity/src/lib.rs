//! `popularity`: recommends the items with the most (recent) interactions.
//!
//! Every event adds its kind's weight to its item's score, and scores decay exponentially with
//! a configurable half-life, measured from the newest event seen (not the wall clock, so that
//! replaying old data gives the same model). `update` costs O(catalog + batch): it ages all
//! scores to the batch's newest timestamp and adds the batch. The answer does not depend on the
//! user beyond excluding what they have seen; this is the baseline every other plugin must beat
//! and the cold-start answer of the others.
//!
//! Config (`[plugins.config]` in TOML, all optional):
//! - `half_life_days` (default 0 = no decay): age at which an event counts half;
//! - `event_weights`: see [`recohost_plugin_sdk::weights::EventWeights`].

mod model;

pub use model::{Popularity, PopularityConfig};

#[cfg(all(target_arch = "wasm32", feature = "component"))]
recohost_plugin_sdk::export_strategy!(Popularity);
