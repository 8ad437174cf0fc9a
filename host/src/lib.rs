//! recohost: a recommendation server whose strategies are sandboxed WebAssembly components.
//!
//! Where things live:
//! - [`config`]: the TOML config file and its environment overrides.
//! - [`store`]: durable records (items, users, events, snapshots, experiments) in SQLite or
//!   PostgreSQL, behind one interface, with each engine's migrations.
//! - [`cluster`]: this node among others on one PostgreSQL: the learner's lease, following
//!   the models and experiments the cluster publishes.
//! - [`plugin_set`]: plugins published to a whole cluster, over each node's declared ones.
//! - [`catalog`]: the in-memory maps from external IDs to the dense indices plugins use.
//! - [`plugins`]: the wasmtime host: engine, contract check, limits, instances, pools.
//! - [`recommend`]: the recommendation service (model choice, plugin call, answer checks).
//! - [`cache`]: the recommendation cache (in-process or Redis) and its keys.
//! - [`features`]: what a recommendation needs of its user: in memory on one node, in Redis
//!   (with PostgreSQL behind it) in a cluster.
//! - [`redis_link`]: a Redis connection with deadlines that steps aside after a fault.
//! - [`events`]: validation and durable group-committed storage of live events.
//! - [`learning`]: the feedback buffer, update scheduler, updates and retrains.
//! - [`experiments`]: experiment files, GrowthBook-compatible assignment, exposures, results.
//! - [`monitoring`]: model monitoring: online quality, drift, alerts, automatic rollback.
//! - [`batch_writer`]: the thread that stores a measurement log (exposures, served lists) in
//!   batches, off the request path.
//! - [`histogram`]: the latency histogram behind `/metrics`.
//! - [`timeline`]: recent rates and latency sampled every 2 s (`GET /overview`).
//! - [`dashboard`]: the operator dashboard's pages, embedded in the binary.
//! - [`reload`]: plugins and experiments changed without a restart (file watchers, reload).
//! - [`import`]: MovieLens readers and the demo-data generator.
//! - [`plugin_dev`]: `recohost plugin new` and `plugin check`, for plugin authors.
//! - [`eval`]: offline evaluation (splits, ranking metrics, the `eval` command).
//! - [`app`]: start-up: store, catalog, plugins, restoring or training every model.
//! - [`api`]: the axum HTTP layer.

pub mod api;
pub mod app;
pub mod batch_writer;
pub mod cache;
pub mod catalog;
pub mod cluster;
pub mod config;
pub mod dashboard;
pub mod eval;
pub mod events;
pub mod experiments;
pub mod features;
pub mod histogram;
pub mod histories;
pub mod import;
pub mod learning;
pub mod monitoring;
pub mod plugin_dev;
pub mod plugin_set;
pub mod plugins;
pub mod recommend;
pub mod redis_link;
pub mod reload;
pub mod store;
pub mod timeline;
