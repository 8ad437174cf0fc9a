//! `GET /metrics`: Prometheus text exposition (format 0.0.4) of the counters the server keeps:
//! plugins (calls, failures, traps, model version), the cache, experiment exposures, learning
//! and the data. Rendered on scrape from the live counters; nothing is kept twice.
//!
//! Requests by route, method and status and their latency histogram come from
//! [`super::http_metrics`]. Plugin call latency and shed requests come with the hardening
//! milestone.

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
    let escaped = value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n");
    format!("{{{key}=\"{escaped}\"}}")
}

pub async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let learning = state.learning.clone();
    let stats = tokio::task::spawn_blocking(move || learning.stats())
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    let mut out = String::new();
    state.http_metrics.render(&mut out);

    let plugins: Vec<_> = state.plugins.current().iter().map(|p| p.status()).collect();
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

    let (stored, failed) = state.experiments.exposure_log_counts();
    family(
        &mut out,
        "recohost_exposures_stored_total",
        "counter",
        "Experiment exposures written to SQLite.",
        &[(String::new(), stored as f64)],
    );
    family(
        &mut out,
        "recohost_exposures_failed_total",
        "counter",
        "Experiment exposures that could not be written.",
        &[(String::new(), failed as f64)],
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

    Ok((
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        out,
    )
        .into_response())
}
