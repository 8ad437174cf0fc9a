//! Model monitoring: online quality per model version, data drift between a reference and
//! a current window, alerts and rollback (docs/monitoring.md).
//!
//! - [`served`]: the log of lists served, written off the request path.
//! - [`drift`]: the statistics (PSI, Jensen-Shannon distance, binning, a one-sided test of a
//!   drop in a proportion).
//! - [`features`]: a window of events kept as counters, and each feature's drift between a
//!   reference window and a current one.
//! - [`quality`]: which lists were hit, per-version quality figures, the quality test.
//! - [`alerts`]: raising and resolving with hysteresis; [`webhooks`]: telling receivers.
//! - [`monitor`]: the thread that follows the logs and acts on what it finds.

pub mod alerts;
pub mod drift;
pub mod features;
pub mod monitor;
pub mod quality;
pub mod served;
pub mod webhooks;
