//! `hybrid`: the `collaborative` and `content` models in one plugin, their scores blended.
//!
//! Each part's scores are min-max normalized over the candidate items (those not excluded), so
//! the weights mean what they say whatever the parts' scales. Users with little history get a
//! cold-start ramp: the collaborative share grows linearly with the history length up to
//! `cold_start_history` events, and popularity fills the rest. A user with no history at all
//! gets the most popular items.
//!
//! Config (all optional): `collaborative_weight` (default 0.8), `content_weight` (default 0.05),
//! `cold_start_history` (default 5), and `collaborative` / `content` tables passed on to the
//! parts (see those plugins).

mod model;

pub use model::{Hybrid, HybridConfig};

#[cfg(all(target_arch = "wasm32", feature = "component"))]
recohost_plugin_sdk::export_strategy!(Hybrid);
