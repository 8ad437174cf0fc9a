//! Model monitoring: online quality per model version, data drift between a reference and a
//! current window, alerts and rollback (issue 21, being built).
//!
//! - [`drift`]: the statistics (PSI, Jensen-Shannon distance, binning, a one-sided test of a
//!   drop in a proportion).
//! - [`features`]: a window of events kept as counters, and each feature's drift between a
//!   reference window and a current one.

pub mod drift;
pub mod features;
