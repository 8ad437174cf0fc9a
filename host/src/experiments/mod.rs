//! Experiments: which arm (plugin) serves which user.
//!
//! - [`assignment`]: GrowthBook's published assignment algorithm (hash, bucket ranges,
//!   namespaces), checked against GrowthBook's own conformance cases.
//!
//! Experiment definitions (TOML files), serving by assignment and the endpoints come with the
//! experiments milestone.

pub mod assignment;
