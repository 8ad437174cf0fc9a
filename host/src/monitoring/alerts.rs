//! Alerts raised and resolved with hysteresis.
//!
//! A drift alert is raised by one window at or above `psi_alert`, and resolved only after
//! `resolve_after_windows` windows in a row below `psi_warn`: a feature hovering around the
//! alert threshold raises one alert, not one per window. A quality alert is raised by a
//! failed quality test and resolved by a passed one (for a held plugin, the test of its
//! retrained model).

use std::collections::HashMap;

use serde::Serialize;
use serde_json::Value;

/// How serious.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Warning,
    Critical,
}

/// An alert as the API, the store and the webhooks show it.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Alert {
    /// Its id in the store.
    pub id: i64,
    /// What it is about: `drift:<feature>`, `prediction_drift:<plugin>`, `quality:<plugin>`.
    pub alert: String,
    pub severity: Severity,
    pub summary: String,
    /// The figures it was raised on (and, once resolved, those it was resolved on).
    #[schema(value_type = Object)]
    pub evidence: Value,
    pub raised_at_ms: u64,
    pub resolved_at_ms: Option<u64>,
    #[schema(value_type = Option<Object>)]
    pub resolution: Option<Value>,
}

/// What one observation of a drift statistic says.
#[derive(Clone, Debug)]
pub struct DriftReading {
    pub alert: String,
    pub psi: f64,
    pub summary: String,
    pub evidence: Value,
}

/// A change to announce.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    Raised(Alert),
    Resolved(Alert),
}

/// The open alerts and how long each drift alert has been quiet.
#[derive(Default)]
pub struct AlertBook {
    open: HashMap<String, (Alert, u32)>,
}

impl AlertBook {
    pub fn open(&self) -> impl Iterator<Item = &Alert> {
        self.open.values().map(|(alert, _)| alert)
    }

    pub fn is_open(&self, alert: &str) -> bool {
        self.open.contains_key(alert)
    }

    /// Takes an alert open in the store (a restart, or a new learner) back in.
    pub fn adopt(&mut self, alert: Alert) {
        self.open.insert(alert.alert.clone(), (alert, 0));
    }

    /// One window's drift readings (features without a reading this window keep their
    /// state). `raise` gives a raised alert its store id.
    pub fn drift(
        &mut self,
        readings: &[DriftReading],
        warn: f64,
        alert_at: f64,
        resolve_after: u32,
        now_ms: u64,
    ) -> Vec<Change> {
        let mut changes = Vec::new();
        for reading in readings {
            match self.open.get_mut(&reading.alert) {
                None if reading.psi >= alert_at => {
                    let alert = Alert {
                        id: 0,
                        alert: reading.alert.clone(),
                        severity: Severity::Critical,
                        summary: reading.summary.clone(),
                        evidence: reading.evidence.clone(),
                        raised_at_ms: now_ms,
                        resolved_at_ms: None,
                        resolution: None,
                    };
                    self.open.insert(reading.alert.clone(), (alert.clone(), 0));
                    changes.push(Change::Raised(alert));
                }
                None => {}
                Some((_, quiet)) if reading.psi < warn => {
                    *quiet += 1;
                    if *quiet >= resolve_after {
                        changes.push(self.resolve(&reading.alert, now_ms, &reading.evidence));
                    }
                }
                // Between the thresholds, or still above: not quiet.
                Some((_, quiet)) => *quiet = 0,
            }
        }
        changes
    }

    /// Raises `alert` unless it is open.
    pub fn raise(
        &mut self,
        alert: &str,
        severity: Severity,
        summary: String,
        evidence: Value,
        now_ms: u64,
    ) -> Option<Change> {
        if self.open.contains_key(alert) {
            return None;
        }
        let raised = Alert {
            id: 0,
            alert: alert.to_string(),
            severity,
            summary,
            evidence,
            raised_at_ms: now_ms,
            resolved_at_ms: None,
            resolution: None,
        };
        self.open.insert(alert.to_string(), (raised.clone(), 0));
        Some(Change::Raised(raised))
    }

    /// Resolves `alert` if it is open.
    pub fn resolve_if_open(
        &mut self,
        alert: &str,
        now_ms: u64,
        evidence: &Value,
    ) -> Option<Change> {
        self.open
            .contains_key(alert)
            .then(|| self.resolve(alert, now_ms, evidence))
    }

    fn resolve(&mut self, alert: &str, now_ms: u64, evidence: &Value) -> Change {
        let (mut resolved, _) = self.open.remove(alert).expect("open");
        resolved.resolved_at_ms = Some(now_ms);
        resolved.resolution = Some(evidence.clone());
        Change::Resolved(resolved)
    }

    /// Gives a just-raised alert its store id.
    pub fn set_id(&mut self, alert: &str, id: i64) {
        if let Some((open, _)) = self.open.get_mut(alert) {
            open.id = id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(psi: f64) -> DriftReading {
        DriftReading {
            alert: "drift:rating".into(),
            psi,
            summary: String::new(),
            evidence: Value::Null,
        }
    }

    #[test]
    fn drift_alerts_rise_once_and_resolve_after_quiet_windows_only() {
        let mut book = AlertBook::default();
        let mut step = |psi: f64, at: u64| book.drift(&[reading(psi)], 0.1, 0.25, 2, at);
        assert!(step(0.2, 1).is_empty(), "a warning is not an alert");
        assert!(matches!(step(0.3, 2)[..], [Change::Raised(_)]));
        assert!(step(0.4, 3).is_empty(), "raised once");
        assert!(step(0.05, 4).is_empty(), "one quiet window is not enough");
        assert!(
            step(0.15, 5).is_empty(),
            "between the thresholds: quiet count restarts"
        );
        assert!(step(0.05, 6).is_empty());
        let changes = step(0.05, 7);
        let [Change::Resolved(alert)] = &changes[..] else {
            panic!("{changes:?}")
        };
        assert_eq!((alert.raised_at_ms, alert.resolved_at_ms), (2, Some(7)));
        assert!(step(0.2, 8).is_empty());
    }
}
