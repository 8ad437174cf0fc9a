//! Server configuration: one TOML file, then environment overrides, then command-line flags.
//!
//! ```toml
//! bind = "127.0.0.1:8080"        # RECOHOST_BIND
//! data_dir = "data"              # RECOHOST_DATA_DIR; SQLite database and compiled-code cache
//! database_url = "postgres://recohost@db:5432/recohost"  # RECOHOST_DATABASE_URL; unset: SQLite
//! default_model = "hybrid"       # RECOHOST_DEFAULT_MODEL; used when a request names none
//! history_limit = 500            # newest events of a user sent to plugins with each request
//! max_recommendations = 100      # largest n_recommendations accepted
//! demo_data = true               # fill an empty database with generated demo data
//! admin_token = "..."            # RECOHOST_ADMIN_TOKEN; bearer token of operator actions
//! experiments_dir = "experiments" # RECOHOST_EXPERIMENTS_DIR; default ./experiments if present
//! fallback_model = "popularity"  # RECOHOST_FALLBACK_MODEL; answers when a plugin fails (unset: 503)
//!
//! [http]
//! max_in_flight = 64             # requests handled at once; more are shed with 503 + Retry-After
//! request_timeout_ms = 10000     # a request still unanswered after this gets 503
//! retry_after_secs = 1           # the Retry-After sent with a shed or timed-out request
//!
//! [events]
//! rating_min = 0.5               # ratings outside [rating_min, rating_max] are refused
//! rating_max = 5.0
//! max_batch = 10000              # most events in one POST /events/batch
//!
//! [cache]
//! backend = "memory"             # RECOHOST_CACHE; memory | redis | off (REDIS_URL implies redis)
//!                                # unset: memory on one node, redis in a cluster (shared by all)
//! redis_url = "redis://127.0.0.1:6379"   # REDIS_URL
//! max_entries = 100000           # memory: most entries kept
//! ttl_secs = 600                 # entries expire after this long
//! timeout_ms = 50                # redis: a slower command is a fault (served uncached)
//! retry_after_ms = 1000          # redis: after a fault, skip the cache this long
//!
//! [learning]
//! update_buffer_size = 1000      # update the models when this many events wait
//! update_interval_secs = 60      # ...or when events have waited this long (0: off)
//! snapshot_interval_secs = 60    # store model snapshots at most this often (0: every update)
//! retrain_interval_secs = 0      # full retrain on a schedule (0: only on request)
//! retrain_window_days = 0        # retrain on the last N days of events (0: all)
//! retrain_window_events = 0      # ...and at most the newest N events (0: all)
//! max_lag_events = 100000        # a plugin further behind is retrained instead of fed the backlog
//!                                # (default: the larger of 100000 and 10 x update_buffer_size)
//! failed_update_backoff_secs = 10        # a plugin whose update failed waits this long, doubled
//! max_failed_update_backoff_secs = 600   # after each failure in a row, up to this
//!
//! [shutdown]                     # on SIGTERM or Ctrl-C
//! drain_ms = 0                   # /health/ready answers 503 this long before the listener closes
//! grace_secs = 30                # the process exits at most this long after the drain
//!
//! [cluster]                      # with database_url: nodes sharing the database
//! lease_secs = 10                # the learner's lease; another node takes over within it
//! role = "all"                   # RECOHOST_ROLE, --role; all | serve (never the learner)
//! node_id = "node-a"             # RECOHOST_NODE_ID; default: host name and process id
//!
//! [[plugins]]
//! name = "popularity"
//! path = "dist/plugins/popularity.wasm"   # relative to this file
//! [plugins.config]                        # passed to the plugin as JSON
//! half_life_days = 30
//! [plugins.limits]                        # see PluginLimits
//! memory_mb = 512
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::plugins::PluginLimits;

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub bind: String,
    pub data_dir: PathBuf,
    /// PostgreSQL to keep everything in (`postgres://...`), shared by the nodes of a cluster.
    /// Unset: SQLite in `data_dir` (one node). `data_dir` still holds the compiled-code cache.
    pub database_url: Option<String>,
    pub default_model: String,
    pub history_limit: usize,
    pub max_recommendations: u32,
    pub demo_data: bool,
    /// Bearer token that operator actions (update, retrain) require. Without one, those
    /// actions are allowed only when the server listens on a loopback address.
    pub admin_token: Option<String>,
    /// Experiment definitions, one TOML file each, watched for changes. Unset: `experiments`
    /// in the working directory if it exists, else no experiments.
    pub experiments_dir: Option<PathBuf>,
    /// Plugin whose answer is served, marked as a fallback, when the chosen plugin fails or
    /// is unhealthy. Unset: such requests get 503.
    pub fallback_model: Option<String>,
    pub http: HttpConfig,
    pub events: EventsConfig,
    pub cache: CacheConfig,
    pub learning: LearningConfig,
    pub shutdown: ShutdownConfig,
    pub cluster: ClusterConfig,
    pub monitoring: MonitoringConfig,
    pub plugins: Vec<PluginDeclaration>,
    /// The file this was read from; its `[[plugins]]` are re-read on reload.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// `[shutdown]`: what a stop request (SIGTERM, Ctrl-C) does. At once `/health/ready`
/// answers 503, so that a load balancer or Kubernetes stops sending new requests; after
/// `drain_ms` the listener closes and the requests in flight finish; then the learning stops,
/// the models are stored, the lease is given up and the exposures are flushed. Whatever is
/// not done `grace_secs` after the drain is abandoned and the process exits (nothing
/// acknowledged is lost: events are stored before they are acknowledged).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    pub drain_ms: u64,
    pub grace_secs: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            drain_ms: 0,
            grace_secs: 30,
        }
    }
}

/// `[cluster]`: this node among the others sharing its PostgreSQL database (ignored on
/// SQLite, where the one node is always the learner).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// How long the learner's lease lasts without renewal: the longest a cluster goes
    /// without a learner when it dies.
    pub lease_secs: u64,
    pub role: crate::cluster::Role,
    pub node_id: Option<String>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            lease_secs: 10,
            role: crate::cluster::Role::All,
            node_id: None,
        }
    }
}

/// `[http]`: how much load the server takes before it sheds.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Requests handled at once (`/health` and `/metrics` excepted); more get 503 with
    /// `Retry-After` at once instead of queueing without bound.
    pub max_in_flight: usize,
    /// A request not answered within this gets 503 (the work it started is bounded by the
    /// plugins' own time budgets).
    pub request_timeout_ms: u64,
    pub retry_after_secs: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            // Little's law: 64 in flight at 1 ms each is 64,000 requests/s, more than a node
            // serves; a deeper queue only adds latency (docs/benchmarks.md, "Hardening").
            max_in_flight: 64,
            request_timeout_ms: 10_000,
            retry_after_secs: 1,
        }
    }
}

/// `[events]`: what `POST /events` accepts.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    pub rating_min: f32,
    pub rating_max: f32,
    pub max_batch: usize,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            rating_min: 0.5,
            rating_max: 5.0,
            max_batch: 10_000,
        }
    }
}

/// Where recommendation lists are cached.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CacheBackend {
    Memory,
    Redis,
    Off,
}

/// `[cache]`: the recommendation cache.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Unset: [`CacheConfig::backend_for`] picks by deployment.
    pub backend: Option<CacheBackend>,
    pub redis_url: String,
    pub max_entries: u64,
    pub ttl_secs: u64,
    pub timeout_ms: u64,
    pub retry_after_ms: u64,
}

impl CacheConfig {
    /// The backend in force: as configured, else the in-process cache on a single node and
    /// Redis in a cluster, where every node then finds the answers any node computed (and
    /// none keeps a second copy of them).
    pub fn backend_for(&self, clustered: bool) -> CacheBackend {
        self.backend.unwrap_or(if clustered {
            CacheBackend::Redis
        } else {
            CacheBackend::Memory
        })
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            backend: None,
            redis_url: "redis://127.0.0.1:6379".into(),
            max_entries: 100_000,
            ttl_secs: 600,
            timeout_ms: 50,
            retry_after_ms: 1_000,
        }
    }
}

/// `[learning]`: when models learn from new events.
#[derive(Clone, Debug, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct LearningConfig {
    pub update_buffer_size: usize,
    pub update_interval_secs: u64,
    pub snapshot_interval_secs: u64,
    pub retrain_interval_secs: u64,
    pub retrain_window_days: u64,
    pub retrain_window_events: u64,
    /// Most events the learning buffer holds, and how far (in events) a plugin may fall
    /// behind before it is retrained from the store instead of fed the whole backlog.
    /// Default: the larger of 100,000 and 10 × `update_buffer_size` ([`Self::max_lag`]).
    pub max_lag_events: Option<usize>,
    /// After a plugin's update fails, it is skipped this long before the next try, doubled
    /// after each failure in a row up to `max_failed_update_backoff_secs`.
    pub failed_update_backoff_secs: u64,
    pub max_failed_update_backoff_secs: u64,
}

impl LearningConfig {
    /// `max_lag_events`, or its default.
    pub fn max_lag(&self) -> usize {
        self.max_lag_events
            .unwrap_or_else(|| self.update_buffer_size.saturating_mul(10).max(100_000))
    }
}

impl Default for LearningConfig {
    fn default() -> Self {
        Self {
            update_buffer_size: 1_000,
            update_interval_secs: 60,
            snapshot_interval_secs: 60,
            retrain_interval_secs: 0,
            retrain_window_days: 0,
            retrain_window_events: 0,
            max_lag_events: None,
            failed_update_backoff_secs: 10,
            max_failed_update_backoff_secs: 600,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".into(),
            data_dir: PathBuf::from("data"),
            database_url: None,
            default_model: "hybrid".into(),
            history_limit: 500,
            max_recommendations: 100,
            demo_data: true,
            admin_token: None,
            experiments_dir: None,
            fallback_model: None,
            http: HttpConfig::default(),
            events: EventsConfig::default(),
            cache: CacheConfig::default(),
            learning: LearningConfig::default(),
            shutdown: ShutdownConfig::default(),
            cluster: ClusterConfig::default(),
            monitoring: MonitoringConfig::default(),
            plugins: Vec::new(),
            source: None,
        }
    }
}

/// `[monitoring]`: online quality per model version, data drift, alerts (docs/monitoring.md).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MonitoringConfig {
    pub enabled: bool,
    /// A window closes after this long, once it holds `min_window_events` events.
    pub window_secs: u64,
    pub min_window_events: u64,
    /// The reference the windows are compared with: the newest this many events when the
    /// server started or the last retrain ran (the serving models' training data).
    pub reference_events: usize,
    /// The list positions that count for hit rate, CTR, coverage and popularity.
    pub top_k: usize,
    /// A list is a hit when its user interacts with one of its items within this long.
    pub attribution_secs: u64,
    /// Share of served lists recorded (1: all of them).
    pub sample_rate: f64,
    /// How long lists, windows and resolved alerts are kept.
    pub retention_hours: u64,
    /// PSI from which a feature's drift is a warning, and from which it raises an alert.
    pub psi_warn: f64,
    pub psi_alert: f64,
    /// Windows in a row below `psi_warn` that resolve a drift alert.
    pub resolve_after_windows: u32,
    /// Lists of a new model version (and the versions after it) and of the versions before
    /// it that the quality test waits for, and the test's false-alarm rate.
    pub quality_min_lists: u64,
    pub quality_alpha: f64,
    /// A new version is worse when its hit rate is significantly below `1 − quality_margin`
    /// times the previous versions' (0.3: a drop of more than 30%).
    pub quality_margin: f64,
    pub webhooks: Vec<WebhookConfig>,
}

impl Default for MonitoringConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            window_secs: 300,
            min_window_events: 1_000,
            reference_events: 20_000,
            top_k: 10,
            attribution_secs: 1_800,
            sample_rate: 1.0,
            retention_hours: 168,
            psi_warn: 0.1,
            psi_alert: 0.25,
            resolve_after_windows: 2,
            quality_min_lists: 500,
            quality_alpha: 0.001,
            quality_margin: 0.3,
            webhooks: Vec::new(),
        }
    }
}

/// `[[monitoring.webhooks]]`: where alerts are POSTed as JSON when raised and resolved.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://` or `https://`.
    pub url: String,
    #[serde(default = "WebhookConfig::default_timeout_ms")]
    pub timeout_ms: u64,
    /// Tries in all; the wait between them starts at 1 s and doubles.
    #[serde(default = "WebhookConfig::default_attempts")]
    pub max_attempts: u32,
}

impl WebhookConfig {
    fn default_timeout_ms() -> u64 {
        5_000
    }

    fn default_attempts() -> u32 {
        5
    }
}

impl MonitoringConfig {
    fn validate(&self) -> anyhow::Result<()> {
        if !(1..=86_400).contains(&self.window_secs)
            || !(1..=604_800).contains(&self.attribution_secs)
            || !(1..=87_600).contains(&self.retention_hours)
        {
            bail!(
                "[monitoring] window_secs must be 1-86400, attribution_secs 1-604800 and retention_hours 1-87600"
            );
        }
        if self.min_window_events < 100 || self.reference_events < 1_000 {
            bail!(
                "[monitoring] min_window_events must be at least 100 and reference_events at least 1000"
            );
        }
        if !(1..=1_000).contains(&self.top_k) {
            bail!("[monitoring] top_k must be between 1 and 1000");
        }
        if !(self.sample_rate > 0.0 && self.sample_rate <= 1.0) {
            bail!("[monitoring] sample_rate must be in (0, 1]");
        }
        if !(self.psi_warn > 0.0 && self.psi_warn < self.psi_alert && self.psi_alert.is_finite()) {
            bail!("[monitoring] psi_warn must be positive and below psi_alert");
        }
        if self.resolve_after_windows == 0 {
            bail!("[monitoring] resolve_after_windows must be at least 1");
        }
        if self.quality_min_lists < 30 || !(self.quality_alpha > 0.0 && self.quality_alpha < 0.5) {
            bail!(
                "[monitoring] quality_min_lists must be at least 30 and quality_alpha in (0, 0.5)"
            );
        }
        if !(0.0..1.0).contains(&self.quality_margin) {
            bail!("[monitoring] quality_margin must be in [0, 1)");
        }
        for hook in &self.webhooks {
            if !(hook.url.starts_with("http://") || hook.url.starts_with("https://")) {
                bail!(
                    "[[monitoring.webhooks]] url {:?} must start with http:// or https://",
                    hook.url
                );
            }
            if !(1..=60_000).contains(&hook.timeout_ms) || !(1..=20).contains(&hook.max_attempts) {
                bail!("[[monitoring.webhooks]] timeout_ms must be 1-60000 and max_attempts 1-20");
            }
        }
        Ok(())
    }
}

/// One `[[plugins]]` entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginDeclaration {
    /// Name used in requests (`model_type`) and in experiments.
    pub name: String,
    /// The .wasm component; relative paths are relative to the config file.
    pub path: PathBuf,
    /// Passed to the plugin's `configure` as a JSON object.
    #[serde(default)]
    pub config: toml::Table,
    #[serde(default)]
    pub limits: PluginLimits,
    /// When model monitoring finds a new model version's online quality significantly worse
    /// than the version before it, serve that version again and stop updating the plugin
    /// until a retrain (`[monitoring]`, docs/monitoring.md). Off unless set.
    #[serde(default)]
    pub auto_rollback: bool,
    /// Set for a plugin published to the cluster (`plugin_set.rs`): the revision it came in.
    #[serde(skip)]
    pub published_revision: Option<u64>,
}

impl PluginDeclaration {
    pub fn config_json(&self) -> String {
        serde_json::to_string(&self.config).unwrap_or_else(|_| "{}".into())
    }
}

impl Config {
    /// Reads `path`, resolves relative paths against its folder, applies environment overrides.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the config file {}", path.display()))?;
        let mut config = Self::parse(&text, path)?;
        config.apply_env(|key| std::env::var(key).ok())?;
        config
            .validate()
            .with_context(|| format!("invalid config file {}", path.display()))?;
        Ok(config)
    }

    /// The config in `text`, read from `path` (relative paths are resolved against its
    /// folder); not yet validated, no environment applied.
    pub fn parse(text: &str, path: &Path) -> anyhow::Result<Self> {
        let mut config: Config = toml::from_str(text)
            .with_context(|| format!("invalid config file {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for plugin in &mut config.plugins {
            if plugin.path.is_relative() {
                plugin.path = base.join(&plugin.path);
            }
        }
        if config.data_dir.is_relative() {
            config.data_dir = base.join(&config.data_dir);
        }
        if let Some(dir) = config.experiments_dir.as_mut()
            && dir.is_relative()
        {
            *dir = base.join(&*dir);
        }
        config.source = Some(path.to_path_buf());
        Ok(config)
    }

    /// Applies `RECOHOST_*` overrides from `lookup`. An empty variable counts as unset (as
    /// docker-compose's `${VAR:-}` passes it).
    pub fn apply_env(&mut self, lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<()> {
        let lookup = |key: &str| lookup(key).filter(|value| !value.is_empty());
        if let Some(bind) = lookup("RECOHOST_BIND") {
            self.bind = bind;
        }
        if let Some(dir) = lookup("RECOHOST_DATA_DIR") {
            self.data_dir = PathBuf::from(dir);
        }
        if let Some(url) = lookup("RECOHOST_DATABASE_URL") {
            self.database_url = Some(url);
        }
        if let Some(role) = lookup("RECOHOST_ROLE") {
            self.cluster.role = match role.as_str() {
                "all" => crate::cluster::Role::All,
                "serve" => crate::cluster::Role::Serve,
                other => bail!("RECOHOST_ROLE must be all or serve, not {other:?}"),
            };
        }
        if let Some(id) = lookup("RECOHOST_NODE_ID") {
            self.cluster.node_id = Some(id);
        }
        if let Some(model) = lookup("RECOHOST_DEFAULT_MODEL") {
            self.default_model = model;
        }
        if let Some(model) = lookup("RECOHOST_FALLBACK_MODEL") {
            self.fallback_model = Some(model);
        }
        if let Some(dir) = lookup("RECOHOST_EXPERIMENTS_DIR") {
            self.experiments_dir = Some(PathBuf::from(dir));
        }
        if let Some(url) = lookup("REDIS_URL") {
            self.cache.redis_url = url;
            self.cache.backend = Some(CacheBackend::Redis);
        }
        if let Some(backend) = lookup("RECOHOST_CACHE") {
            self.cache.backend = Some(match backend.as_str() {
                "memory" => CacheBackend::Memory,
                "redis" => CacheBackend::Redis,
                "off" => CacheBackend::Off,
                other => bail!("RECOHOST_CACHE={other:?}: expected memory, redis or off"),
            });
        }
        if let Some(token) = lookup("RECOHOST_ADMIN_TOKEN") {
            self.admin_token = Some(token);
        }
        if let Some(flag) = lookup("RECOHOST_DEMO_DATA") {
            self.demo_data = flag
                .parse()
                .with_context(|| format!("RECOHOST_DEMO_DATA={flag:?}: expected true or false"))?;
        }
        Ok(())
    }

    /// The database this configuration keeps everything in.
    pub fn database(&self) -> crate::store::Database {
        crate::store::Database::from_url_or_dir(self.database_url.as_deref(), &self.data_dir)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if let Some(url) = &self.database_url
            && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
        {
            bail!("database_url must be a postgres:// URL (unset it to use SQLite in data_dir)");
        }
        if !(1..=3600).contains(&self.cluster.lease_secs) {
            bail!("[cluster] lease_secs must be between 1 and 3600");
        }
        if self.history_limit > 100_000 {
            bail!("history_limit must be at most 100000");
        }
        if self.database_url.is_some() && self.history_limit == 0 {
            // The cluster's feature store keeps `history_limit` events a user.
            bail!("history_limit must be at least 1 with database_url");
        }
        let mut names = std::collections::HashSet::new();
        for plugin in &self.plugins {
            if plugin.name.is_empty()
                || plugin.name.len() > 64
                || !plugin
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                bail!(
                    "plugin name {:?}: use 1-64 letters, digits, '-' or '_'",
                    plugin.name
                );
            }
            if !names.insert(&plugin.name) {
                bail!("plugin name {:?} is declared twice", plugin.name);
            }
            plugin
                .limits
                .validate()
                .map_err(|e| anyhow::anyhow!("plugin {:?}: {e}", plugin.name))?;
        }
        if !self.plugins.is_empty() && !names.contains(&self.default_model) {
            bail!(
                "default_model {:?} is not a declared plugin (declared: {})",
                self.default_model,
                self.plugins
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if let Some(fallback) = &self.fallback_model
            && !names.contains(fallback)
        {
            bail!("fallback_model {fallback:?} is not a declared plugin");
        }
        self.monitoring.validate()?;
        let http = &self.http;
        if http.max_in_flight == 0 || http.request_timeout_ms == 0 {
            bail!("[http] max_in_flight and request_timeout_ms must be positive");
        }
        let events = &self.events;
        if !(events.rating_min.is_finite()
            && events.rating_max.is_finite()
            && events.rating_min < events.rating_max)
        {
            bail!("[events] rating_min must be below rating_max, both finite");
        }
        if events.max_batch == 0 {
            bail!("[events] max_batch must be at least 1");
        }
        if self
            .learning
            .max_lag_events
            .is_some_and(|lag| lag < self.learning.update_buffer_size)
        {
            bail!("[learning] max_lag_events must be at least update_buffer_size");
        }
        let (first, max) = (
            self.learning.failed_update_backoff_secs,
            self.learning.max_failed_update_backoff_secs,
        );
        if first == 0 || max < first || max > 86_400 {
            bail!(
                "[learning] failed_update_backoff_secs must be positive and at most max_failed_update_backoff_secs, itself at most 86400"
            );
        }
        if self.learning.update_buffer_size == 0 {
            bail!("[learning] update_buffer_size must be at least 1");
        }
        if self.admin_token.as_deref().is_some_and(|t| t.len() < 16) {
            bail!("admin_token must be at least 16 characters");
        }
        let cache = &self.cache;
        if cache.ttl_secs == 0 || cache.timeout_ms == 0 || cache.max_entries == 0 {
            bail!("[cache] ttl_secs, timeout_ms and max_entries must be at least 1");
        }
        if self.max_recommendations == 0 {
            bail!("max_recommendations must be at least 1");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_plugins_relative_to_the_file_and_applies_env() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("recohost.toml");
        std::fs::write(
            &path,
            r#"
            default_model = "pop"
            [[plugins]]
            name = "pop"
            path = "plugins/pop.wasm"
            [plugins.config]
            half_life_days = 7
            "#,
        )
        .unwrap();
        let mut config = Config::load(&path).unwrap();
        assert_eq!(config.plugins[0].path, dir.path().join("plugins/pop.wasm"));
        assert_eq!(config.plugins[0].config_json(), r#"{"half_life_days":7}"#);
        config
            .apply_env(|key| (key == "RECOHOST_BIND").then(|| "0.0.0.0:9".to_string()))
            .unwrap();
        assert_eq!(config.bind, "0.0.0.0:9");
    }

    #[test]
    fn the_shipped_config_files_are_valid() {
        for file in [
            "recohost.toml",
            "docker/recohost.toml",
            "deploy/kubernetes/base/recohost.toml",
        ] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(file);
            let text = std::fs::read_to_string(&path).unwrap();
            let config = Config::parse(&text, &path).unwrap_or_else(|e| panic!("{file}: {e:#}"));
            config
                .validate()
                .unwrap_or_else(|e| panic!("{file}: {e:#}"));
            assert_eq!(config.plugins.len(), 5, "{file}");
        }
    }

    #[test]
    fn bad_monitoring_settings_are_refused_naming_the_setting() {
        let refused = |text: &str| -> String {
            let config: Config = match toml::from_str(text) {
                Ok(config) => config,
                Err(error) => return error.to_string(),
            };
            format!("{:#}", config.validate().expect_err(text))
        };
        assert!(refused("[monitoring]\npsi_warn = 0.3\npsi_alert = 0.2").contains("psi_warn"));
        assert!(refused("[monitoring]\nsample_rate = 0.0").contains("sample_rate"));
        assert!(refused("[monitoring]\nquality_alpha = 0.7").contains("quality_alpha"));
        assert!(refused("[monitoring]\nquality_margin = 1.0").contains("quality_margin"));
        assert!(refused("[monitoring]\nattribution_secs = 0").contains("attribution_secs"));
        assert!(refused("[monitoring]\nretention_hours = 99999999").contains("retention_hours"));
        assert!(refused("[monitoring]\ntop_k = 0").contains("top_k"));
        assert!(refused("[[monitoring.webhooks]]\nurl = \"ftp://x\"").contains("http://"));
        assert!(refused("[monitoring]\nwindow = 5").contains("unknown field"));
        // The defaults are valid.
        let config: Config = toml::from_str("[monitoring]\n").unwrap();
        config.validate().unwrap();
    }

    #[test]
    fn rejects_unknown_keys_duplicates_and_a_missing_default() {
        let parse = |text: &str| -> anyhow::Result<Config> {
            let config: Config = toml::from_str(text)?;
            config.validate()?;
            Ok(config)
        };
        assert!(parse("bnd = 'x'").is_err());
        let twice =
            "default_model='a'\n[[plugins]]\nname='a'\npath='a'\n[[plugins]]\nname='a'\npath='b'";
        assert!(parse(twice).unwrap_err().to_string().contains("twice"));
        assert!(parse("default_model='z'\n[[plugins]]\nname='a'\npath='a'").is_err());
    }
}
