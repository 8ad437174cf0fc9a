//! `content`: content-based recommendations from item tags (genres, keywords).
//!
//! Each item is a unit vector over its tags, weighted by inverse document frequency so that
//! rare tags say more than common ones. A user's taste profile is the sum of the vectors of the
//! items in their history, each weighted by how much they liked it: a rating counts by its
//! distance from `neutral_rating` (so a 1-star rating pushes its tags away), other events by
//! their `event_weights`. Items are scored by cosine similarity to the profile, blended with a
//! little popularity (`popularity_weight`) that also orders items the profile cannot tell apart.
//!
//! The profile is built from the history the host sends with each request, so a user's newest
//! feedback counts at once. `train` and `update` learn the popularity prior.
//!
//! Config (all optional): `neutral_rating` (default 3.0), `popularity_weight` (default 0.05),
//! `event_weights`.

mod model;

pub use model::{Content, ContentConfig};

#[cfg(all(target_arch = "wasm32", feature = "component"))]
recohost_plugin_sdk::export_strategy!(Content);
