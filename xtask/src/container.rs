//! `cargo xtask container-test`: builds the image, brings the single-node docker-compose stack
//! up, checks `/health`, a recommendation, an event and a live edit of a mounted experiment
//! file, then tears everything down (also on failure).
//!
//! Needs a running Docker daemon and docker-compose; base images are made locally where they
//! cannot be pulled (`docker.rs`).

use std::path::Path;
use std::time::{Duration, Instant};

use super::docker::{self, Compose, expect, http};

const IMAGE: &str = "recohost:container-test";
const PROJECT: &str = "recohost-container-test";

pub fn container_test() -> Result<(), String> {
    docker::require_daemon()?;
    docker::ensure_base_images(&[docker::RUST, docker::REDIS])?;
    let image = docker::build_image(IMAGE)?;
    let experiments = docker::scratch_experiments(PROJECT)?;
    let port = docker::free_port()?;
    let compose = Compose::new(
        PROJECT,
        "docker-compose.yml",
        &[
            ("RECOHOST_IMAGE", IMAGE.into()),
            ("RECOHOST_PORT", port.to_string()),
            ("RECOHOST_EXPERIMENTS", experiments.display().to_string()),
        ],
    );
    let result = (|| {
        let up = Instant::now();
        compose.run(&["up", "-d", "--no-build"])?;
        compose.wait_healthy(&["api"], Duration::from_secs(300))?;
        let healthy_secs = up.elapsed().as_secs_f64();
        checks(port, &experiments)?;
        Ok::<_, String>(healthy_secs)
    })();
    compose.down(result.is_err());
    let _ = std::fs::remove_dir_all(experiments.parent().unwrap_or(&experiments));
    let healthy_secs = result?;
    println!(
        "container test passed: image {IMAGE} {:.1} MB (built in {:.0} s); \
         `docker-compose up` to healthy in {healthy_secs:.1} s",
        image.size_mb, image.build_secs
    );
    Ok(())
}

/// Health, a recommendation (served by the shipped experiment), an event, and a live edit
/// of the mounted experiment file.
fn checks(port: u16, experiments: &Path) -> Result<(), String> {
    let health = http(port, "GET", "/health", "")?;
    expect(&health, "\"status\":\"ok\"", "GET /health")?;
    expect(&health, "\"backend\":\"redis\"", "the cache is Redis")?;
    // User 123 is in the treatment group of model_comparison (docs/experiments.md).
    let body = r#"{"user_id": 123, "n_recommendations": 5}"#;
    let answer = http(port, "POST", "/recommend", body)?;
    expect(&answer, "\"group\":\"treatment\"", "POST /recommend")?;
    expect(&answer, "\"model\":\"hybrid\"", "POST /recommend")?;
    let event = r#"{"user_id": 123, "item_id": 1, "event_type": "click"}"#;
    expect(
        &http(port, "POST", "/events", event)?,
        "\"status\":\"success\"",
        "POST /events",
    )?;

    let file = experiments.join("model_comparison.toml");
    let text = std::fs::read_to_string(&file).map_err(|e| e.to_string())?;
    let edited = text.replace("plugin = \"hybrid\"", "plugin = \"popularity\"");
    let staging = experiments.join("model_comparison.toml.partial");
    std::fs::write(&staging, edited).map_err(|e| e.to_string())?;
    std::fs::rename(&staging, &file).map_err(|e| e.to_string())?;
    let edited_at = Instant::now();
    loop {
        let answer = http(port, "POST", "/recommend", body)?;
        if answer.contains("\"model\":\"popularity\"") {
            println!(
                "the edited experiment served after {} ms",
                edited_at.elapsed().as_millis()
            );
            return Ok(());
        }
        if edited_at.elapsed() > Duration::from_secs(30) {
            return Err(format!("the edited experiment never served: {answer}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
