//! Experiments: which arm (plugin) serves which user, and how each arm does.
//!
//! - [`definition`]: the TOML files, validated (file, field and reason for every error).
//! - [`assignment`]: GrowthBook's published assignment algorithm (hash, bucket ranges,
//!   namespaces), checked against GrowthBook's own conformance cases.
//! - [`live`]: the set in force (swapped atomically on reload), assignment of a user,
//!   sticky groups, exposure logging and results. The file watcher that reloads it is in
//!   [`crate::reload`].
//! - [`exposures`]: the batched exposure writer.
//! - [`results`]: per-arm statistics (confidence intervals, sample-ratio mismatch).
//! - [`results_cache`]: results computed at most every few seconds, shared by requests.
//! - [`bandit`]: the weights of a Thompson-sampling bandit from its counts (pure math);
//!   [`allocation`]: its weights revisions over time, who writes them, what a trial is.

pub mod allocation;
pub mod assignment;
pub mod bandit;
pub mod definition;
pub mod exposures;
pub mod live;
pub mod results;
pub mod results_cache;

pub use live::{Assignment, Decision, ExperimentError, Experiments, LiveExperiment, Placement};
