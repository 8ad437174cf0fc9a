//! Experiments: which arm (plugin) serves which user.
//!
//! - [`definition`]: the TOML files, validated (file, field and reason for every error).
//! - [`assignment`]: GrowthBook's published assignment algorithm (hash, bucket ranges,
//!   namespaces), checked against GrowthBook's own conformance cases.
//!
//! Serving by assignment, hot reload and the endpoints come with the
//! experiments milestone.

pub mod assignment;
pub mod definition;
