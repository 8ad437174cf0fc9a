//! `collaborative`: EASE, a closed-form item-item linear model (Steck, "Embarrassingly Shallow
//! Autoencoders for Sparse Data", WWW 2019).
//!
//! Training builds the item co-occurrence (Gram) matrix `G = XᵀX` of the binary user-item
//! matrix `X`, and the item-item weights `B = I - P·diag(1/diag(P))` with `P = (G + λI)⁻¹`,
//! with the diagonal forced to zero so an item cannot recommend itself. A user's score for
//! item `j` is `Σₕ B[h][j]` over the items `h` in their history. The solve (a Cholesky
//! factorization and inverse by `faer`, about n³/2 multiply-adds) covers the `max_items` most
//! interacted items; B is kept dense over them, so scoring is a sum of contiguous rows.
//! Optionally each row keeps only its `neighbors` strongest weights.
//!
//! Scoring reads the history the host sends with each request, so a user's newest feedback
//! counts at once, even from users the model has never seen (fold-in is free). `update` adds
//! the batch to the interaction matrix and re-solves `B` once the events since the last solve
//! reach `refresh_fraction` of those it was solved on; in between, `B` stays as it was.
//!
//! Config (`[plugins.config]`, all optional): `l2` (λ, default 300), `neighbors` (default 1000),
//! `max_items` (items in the solve, the most interacted first; default 1000), `refresh_fraction`
//! (default 0.1; 0 re-solves on every update), `event_weights`. The defaults were chosen by
//! `recohost eval` on ML-100k (docs/evaluation.md): beyond 1,000 items the solve costs more
//! than it gains there.

mod model;

pub use model::{Collaborative, CollaborativeConfig};

#[cfg(all(target_arch = "wasm32", feature = "component"))]
recohost_plugin_sdk::export_strategy!(Collaborative);
