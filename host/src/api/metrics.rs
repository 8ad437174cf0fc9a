//! `GET /metrics`: Prometheus text exposition (format 0.0.4) of the counters the server keeps:
//! plugins (calls, failures, traps, model version), the cache, experiment exposures, learning
//! and the data. Rendered on scrape from the live counters; nothing is kept twice.
//!
//! Requests by route, method and status and their latency histogram come from
//! [`super::http_metrics`]; shed and timed-out requests from [`super::overload`].

use std::fmt::Write;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;

/// Writes one metric family: `# HELP`, `# TYPE`, then its samples.
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

/// `{key="value"}` with the value escaped as the format requires.
fn label(key: &str, value: &str) -> String {
    labels(&[(key, value)])
}

/// `{k1="v1",k2="v2"}`, values escaped as the format requires.
fn labels(pairs: &[(&str, &str)]) -> String {
    let inner: Vec<String> = pairs
        .iter()
        .map(|(key, value)| {
            let escaped = value
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{key}=\"{escaped}\"")
        })
        .collect();
    format!("{{{}}}", inner.join(","))
}

/// Prometheus text format (0.0.4).
#[utoipa::path(get, path = "/metrics", tag = "system",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let stats = state.learning.stats();
    let mut out = String::new();
    state.http_metrics.render(&mut out);

    let registry = state.plugins.current();
    let plugins: Vec<_> = registry.iter().map(|p| p.status()).collect();
    let per_plugin = |value: &dyn Fn(&crate::plugins::PluginStatus) -> f64| -> Vec<(String, f64)> {
        plugins
            .iter()
            .map(|p| (label("plugin", &p.name), value(p)))
            .collect()
    };
    family(
        &mut out,
        "recohost_plugin_calls_total",
        "counter",
        "Calls into the plugin.",
        &per_plugin(&|p| p.calls as f64),
    );
    family(
        &mut out,
        "recohost_plugin_failures_total",
        "counter",
        "Plugin calls that failed (error, limit or trap).",
        &per_plugin(&|p| p.failures as f64),
    );
    family(
        &mut out,
        "recohost_plugin_traps_total",
        "counter",
        "Plugin calls that trapped (the instance was rebuilt).",
        &per_plugin(&|p| p.traps as f64),
    );
    family(
        &mut out,
        "recohost_plugin_skipped_total",
        "counter",
        "Requests not sent to the plugin because it was unhealthy.",
        &per_plugin(&|p| p.skipped as f64),
    );
    family(
        &mut out,
        "recohost_plugin_fallbacks_total",
        "counter",
        "Requests the plugin failed that the fallback plugin answered.",
        &per_plugin(&|p| p.fallbacks as f64),
    );
    family(
        &mut out,
        "recohost_plugin_healthy",
        "gauge",
        "1 while the plugin is healthy, 0 while it is skipped after repeated failures.",
        &per_plugin(&|p| f64::from(u8::from(p.health.healthy))),
    );
    family(
        &mut out,
        "recohost_plugin_memory_bytes",
        "gauge",
        "Memory held by the plugin's idle, learner and spare instances on this node.",
        &per_plugin(&|p| p.memory.total_bytes as f64),
    );
    let _ = writeln!(
        out,
        "# HELP recohost_plugin_recommend_duration_seconds Time of a recommend call, from taking an instance to its answer."
    );
    let _ = writeln!(
        out,
        "# TYPE recohost_plugin_recommend_duration_seconds histogram"
    );
    for plugin in registry.iter() {
        let labels = label("plugin", plugin.name());
        plugin.recommend_latency().render(
            &mut out,
            "recohost_plugin_recommend_duration_seconds",
            labels.trim_start_matches('{').trim_end_matches('}'),
        );
    }
    family(
        &mut out,
        "recohost_plugin_model_version",
        "gauge",
        "Model version serving now (0: none).",
        &per_plugin(&|p| p.model_version.unwrap_or(0) as f64),
    );

    let cache = &state.recommender.cache;
    let report = cache.stats().report(cache.backend());
    let backend = label("backend", report.backend);
    for (name, help, value) in [
        (
            "recohost_cache_hits_total",
            "Recommendation lists served from the cache.",
            report.hits,
        ),
        (
            "recohost_cache_misses_total",
            "Cache lookups that found nothing.",
            report.misses,
        ),
        (
            "recohost_cache_stores_total",
            "Lists stored in the cache.",
            report.stores,
        ),
        (
            "recohost_cache_faults_total",
            "Cache backend errors and timeouts (requests served uncached).",
            report.faults,
        ),
        (
            "recohost_cache_bypassed_total",
            "Lookups skipped while the backend pauses after a fault.",
            report.bypassed,
        ),
    ] {
        family(
            &mut out,
            name,
            "counter",
            help,
            &[(backend.clone(), value as f64)],
        );
    }

    let overload = state.overload.report();
    family(
        &mut out,
        "recohost_http_shed_total",
        "counter",
        "Requests refused with 503 because max_in_flight requests were being handled.",
        &[(String::new(), overload.shed as f64)],
    );
    family(
        &mut out,
        "recohost_http_timeouts_total",
        "counter",
        "Requests answered 503 after request_timeout_ms.",
        &[(String::new(), overload.timed_out as f64)],
    );
    family(
        &mut out,
        "recohost_http_in_flight",
        "gauge",
        "Requests being handled now (/health and /metrics not counted).",
        &[(String::new(), overload.in_flight as f64)],
    );

    let logged = state.experiments.exposure_log_counts();
    family(
        &mut out,
        "recohost_exposures_stored_total",
        "counter",
        "Experiment exposures written to SQLite.",
        &[(String::new(), logged.stored as f64)],
    );
    family(
        &mut out,
        "recohost_exposures_failed_total",
        "counter",
        "Experiment exposures that could not be written.",
        &[(String::new(), logged.failed as f64)],
    );
    family(
        &mut out,
        "recohost_exposures_dropped_total",
        "counter",
        "Experiment exposures dropped because the log's queue was full.",
        &[(String::new(), logged.dropped as f64)],
    );

    // Bandits: the share of new users each group gets now, and the revision it comes from.
    let set = state.experiments.current();
    let bandits: Vec<_> = set
        .experiments
        .iter()
        .filter(|e| e.definition.bandit().is_some())
        .collect();
    let mut weights = Vec::new();
    for experiment in &bandits {
        let id = &experiment.definition.id;
        for (group, weight) in experiment
            .definition
            .groups
            .iter()
            .zip(experiment.weights_in_force())
        {
            weights.push((
                labels(&[("experiment", id), ("group", &group.name)]),
                weight,
            ));
        }
    }
    family(
        &mut out,
        "recohost_bandit_weight",
        "gauge",
        "A bandit group's share of new users now.",
        &weights,
    );
    family(
        &mut out,
        "recohost_bandit_weights_revision",
        "gauge",
        "The bandit's weights revision in force (0: none stored yet).",
        &bandits
            .iter()
            .map(|e| {
                (
                    label("experiment", &e.definition.id),
                    e.weights_revision() as f64,
                )
            })
            .collect::<Vec<_>>(),
    );

    family(
        &mut out,
        "recohost_learning_runs_total",
        "counter",
        "Model updates and retrains run (kept across restarts).",
        &[(String::new(), stats.update_count as f64)],
    );
    family(
        &mut out,
        "recohost_learning_buffer_events",
        "gauge",
        "Stored events waiting for the next update.",
        &[(String::new(), stats.buffer_size as f64)],
    );
    family(
        &mut out,
        "recohost_learning_unlearned_events",
        "gauge",
        "Stored events some model has not learned yet.",
        &[(String::new(), stats.unlearned_events as f64)],
    );
    family(
        &mut out,
        "recohost_learning_buffered_events",
        "gauge",
        "Events held in memory for updates (at most max_lag_events).",
        &[(String::new(), stats.buffered_events as f64)],
    );
    let failing: Vec<(String, f64)> = stats
        .models
        .iter()
        .map(|(name, model)| {
            let failures = model["failed_updates"].as_u64().unwrap_or(0);
            (label("plugin", name), failures as f64)
        })
        .collect();
    family(
        &mut out,
        "recohost_learning_failed_updates",
        "gauge",
        "The plugin's updates that failed in a row (0: it learns).",
        &failing,
    );
    family(
        &mut out,
        "recohost_events_stored",
        "gauge",
        "Events in the database.",
        &[(String::new(), stats.total_events_stored as f64)],
    );
    family(
        &mut out,
        "recohost_items",
        "gauge",
        "Items in the catalog.",
        &[(String::new(), state.catalog.len() as f64)],
    );
    if let Some(monitor) = &state.monitor {
        monitoring_metrics(&mut out, monitor, state.recommender.served.as_ref(), &stats);
    }

    Ok((
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        out,
    )
        .into_response())
}

/// Model monitoring's gauges, from memory: the newest window's drift and quality, the open
/// alerts (as the learner knows them; other nodes report none), rollbacks, webhooks.
fn monitoring_metrics(
    out: &mut String,
    monitor: &crate::monitoring::monitor::Monitor,
    served: Option<&crate::monitoring::served::ServedLog>,
    stats: &crate::learning::LearningStats,
) {
    let status = monitor.status();
    let window = status.last_window.as_ref();
    let drift = status.last_drift.as_ref();
    let psi = |reports: Option<&Vec<crate::monitoring::monitor::FeatureReport>>, key: &str| {
        reports
            .into_iter()
            .flatten()
            .filter_map(|f| Some((label(key, &f.name), f.psi?)))
            .collect::<Vec<_>>()
    };
    family(
        out,
        "recohost_drift_psi",
        "gauge",
        "A feature's PSI in the newest drift window against the reference.",
        &psi(drift.map(|d| &d.features), "feature"),
    );
    family(
        out,
        "recohost_prediction_drift_psi",
        "gauge",
        "PSI of a plugin's scores in the newest drift window against its reference scores.",
        &psi(drift.map(|d| &d.predictions), "plugin"),
    );
    // Per plugin, over all its versions in the window (their lists weigh in).
    let mut judged: std::collections::BTreeMap<&str, (f64, f64, f64)> = Default::default();
    for quality in window.map(|w| w.quality.as_slice()).unwrap_or_default() {
        let entry = judged.entry(quality.plugin.as_str()).or_default();
        let n = quality.lists_judged as f64;
        entry.0 += n;
        entry.1 += quality.hit_rate.unwrap_or(0.0) * n;
        entry.2 += quality.ctr.unwrap_or(0.0) * n;
    }
    let rate = |pick: fn(&(f64, f64, f64)) -> f64| -> Vec<(String, f64)> {
        judged
            .iter()
            .filter(|(_, t)| t.0 > 0.0)
            .map(|(plugin, t)| (label("plugin", plugin), pick(t) / t.0))
            .collect()
    };
    family(
        out,
        "recohost_model_hit_rate",
        "gauge",
        "Share of the plugin's lists judged in the newest window whose user interacted with a listed item.",
        &rate(|t| t.1),
    );
    family(
        out,
        "recohost_model_ctr",
        "gauge",
        "Share of the plugin's lists judged in the newest window whose user clicked a listed item.",
        &rate(|t| t.2),
    );
    family(
        out,
        "recohost_model_lists_judged",
        "gauge",
        "The plugin's lists whose attribution closed in the newest window.",
        &judged
            .iter()
            .map(|(plugin, t)| (label("plugin", plugin), t.0))
            .collect::<Vec<_>>(),
    );
    family(
        out,
        "recohost_alert_open",
        "gauge",
        "1 for each open alert (on the learner).",
        &status
            .open_alerts
            .iter()
            .map(|a| {
                let severity = match a.severity {
                    crate::monitoring::alerts::Severity::Warning => "warning",
                    crate::monitoring::alerts::Severity::Critical => "critical",
                };
                (labels(&[("alert", &a.alert), ("severity", severity)]), 1.0)
            })
            .collect::<Vec<_>>(),
    );
    family(
        out,
        "recohost_model_held",
        "gauge",
        "1 when the plugin was rolled back and its updates are held until a retrain passes.",
        &stats
            .models
            .iter()
            .map(|(name, model)| {
                (
                    label("plugin", name),
                    f64::from(u8::from(model.get("held").is_some())),
                )
            })
            .collect::<Vec<_>>(),
    );
    family(
        out,
        "recohost_rollbacks_total",
        "counter",
        "Automatic rollbacks since start.",
        &[(String::new(), status.rollbacks as f64)],
    );
    let (dropped, failed_lists) = served.map_or((0, 0), |log| log.lost());
    family(
        out,
        "recohost_served_lists_lost_total",
        "counter",
        "Served lists not logged for monitoring: dropped (queue full) and failed to store.",
        &[
            (label("reason", "dropped"), dropped as f64),
            (label("reason", "failed"), failed_lists as f64),
        ],
    );
    let delivered = monitor
        .webhooks
        .delivered
        .load(std::sync::atomic::Ordering::Relaxed);
    let failed = monitor
        .webhooks
        .failed
        .load(std::sync::atomic::Ordering::Relaxed);
    family(
        out,
        "recohost_alert_webhooks_total",
        "counter",
        "Alert notifications delivered, and given up after every retry.",
        &[
            (label("outcome", "delivered"), delivered as f64),
            (label("outcome", "failed"), failed as f64),
        ],
    );
}
