//! `collaborative`: EASE, a closed-form item-item linear model (Steck, "Embarrassingly Shallow
//! Autoencoders for Sparse Data", WWW 2019).
//!
//! Training builds the item co-occurrence (Gram) matrix `G = XᵀX` of the binary user-item
//! matrix `X`, and the item-item weights `B = I - P·diag(1/diag(P))` with `P = (G + λI)⁻¹`,
//! with the diagonal forced to zero so an item cannot recommend itself. A user's score for
//! item `j` is `Σₕ B[h][j]` over the items `h` in their history. Each row of `B` keeps only its
//! `neighbors` largest weights, which makes snapshots small and scoring a sparse sum.
//!
//! Scoring reads the history the host sends with each request, so a user's newest feedback
//! counts at once, even from users the model has never seen (fold-in is free). `update` adds
//! the batch to the interaction matrix and re-solves `B` once the events since the last solve
//! reach `refresh_fraction` of those it was solved on; in between, `B` stays as it was.
//!
//! Config (`[plugins.config]`, all optional): `l2` (λ, default 250), `neighbors` (default 200),
//! `max_items` (items in the solve, the most interacted first; default 4000), `refresh_fraction`
//! (default 0.1; 0 re-solves on every update), `event_weights`.

pub mod linalg;
mod model;

pub use model::{Collaborative, CollaborativeConfig};

#[cfg(all(target_arch = "wasm32", feature = "component"))]
recohost_plugin_sdk::export_strategy!(Collaborative);
