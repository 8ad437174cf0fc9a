//! `ratings`: predicts ratings (`predict`); the bundled plugin for RMSE-style use.
//!
//! Prediction for user u and item i is a baseline plus a neighbourhood correction:
//!
//! - baseline: `μ + b_i + b_u`, with the global mean rating μ, the damped item bias
//!   `b_i = Σ(r - μ) / (n_i + item_damping)` and the damped user bias
//!   `b_u = Σ(r - μ - b_j) / (n_u + user_damping)` over the user's ratings;
//! - correction: the user's residuals `r_uj - baseline_uj` on the `neighbors` items j most
//!   similar to i that they rated, weighted by similarity:
//!   `knn_weight * Σ s_ij res_j / Σ |s_ij|`. Similarities are Pearson correlations of the
//!   residuals over co-rating users, shrunk by `co / (co + shrinkage)`, between the
//!   `max_items` most-rated items.
//!
//! Only `rate` events are used. `update` is online for the baseline (means and biases move
//! with every rating) and periodic for the similarities: they are recomputed once the ratings
//! added since the last computation reach `refresh_fraction` of those it used.
//! `recommend` ranks items by `μ + b_i` (a damped "best rated" list, recomputed by `train`,
//! `update` and `load` rather than per request), which is not where this
//! plugin shines: ranking by predicted rating scores far below popularity on top-N metrics.

mod model;

pub use model::{Ratings, RatingsConfig};

#[cfg(all(target_arch = "wasm32", feature = "component"))]
recohost_plugin_sdk::export_strategy!(Ratings);
