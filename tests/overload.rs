//! Overload: past `[http] max_in_flight` requests are shed with 503 and `Retry-After`, a
//! request past `request_timeout_ms` gets 503, `/health` keeps answering, and the server
//! recovers fully once the load is gone.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use recohost_e2e::{Server, config_text, error_code, fixture};
use serde_json::json;

/// The misbehaving fixture loops on `n_recommendations = 17` until its 2 s budget: a slow
/// request on demand.
fn server(http: &str) -> (Server, tempfile::TempDir) {
    let temp = tempfile::tempdir().unwrap();
    let config = format!(
        "{}\n[http]\n{http}\n[[plugins]]\nname = \"slow\"\npath = {:?}\n[plugins.limits]\nrecommend_ms = 2000\nfailures_before_unhealthy = 100\n",
        config_text(""),
        fixture("misbehaving").display().to_string()
    );
    let server = Server::start_in(&temp.path().join("data"), &config).unwrap();
    (server, temp)
}

fn slow_request() -> serde_json::Value {
    json!({"user_id": 5, "n_recommendations": 17, "model_type": "slow"})
}

#[test]
fn requests_over_the_in_flight_limit_are_shed_with_retry_after() {
    let (server, _temp) = server("max_in_flight = 2\nretry_after_secs = 3");
    let server = std::sync::Arc::new(server);
    let holders: Vec<_> = (0..2)
        .map(|_| {
            let server = server.clone();
            std::thread::spawn(move || server.post("/recommend", &slow_request()).0)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));

    let shed = server.post_response(
        "/recommend",
        &json!({"user_id": 5, "n_recommendations": 5, "model_type": "popularity"}),
    );
    assert_eq!(shed.status().as_u16(), 503);
    assert_eq!(shed.headers()["retry-after"], "3");
    let body: serde_json::Value = shed.json().unwrap();
    assert_eq!(error_code(&body), "overloaded", "{body}");
    // Probes, scrapes and the dashboard's overview still get through.
    assert_eq!(server.get("/health").0, 200);
    assert_eq!(server.get("/overview").0, 200);
    assert_eq!(server.get_text("/dashboard/").0, 200);
    let (_, _, metrics) = server.get_text("/metrics");
    assert!(metrics.contains("recohost_http_shed_total 1"), "{metrics}");
    assert!(metrics.contains("recohost_http_in_flight 2"), "{metrics}");

    for holder in holders {
        // The slow plugin's time budget ends both: 503 from the plugin, not a hang.
        assert_eq!(holder.join().unwrap(), 503);
    }
    let (status, body) = server.post(
        "/recommend",
        &json!({"user_id": 5, "n_recommendations": 5, "model_type": "popularity"}),
    );
    assert_eq!(status, 200, "recovered: {body}");
}

#[test]
fn a_request_past_its_deadline_gets_503() {
    let (server, _temp) = server("request_timeout_ms = 300");
    // The plugin would loop for its 2 s budget; the 300 ms request deadline answers first.
    let response = server.post_response("/recommend", &slow_request());
    assert_eq!(response.status().as_u16(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let body: serde_json::Value = response.json().unwrap();
    assert_eq!(error_code(&body), "timeout", "{body}");
    let (_, _, metrics) = server.get_text("/metrics");
    assert!(
        metrics.contains("recohost_http_timeouts_total 1"),
        "{metrics}"
    );
}
