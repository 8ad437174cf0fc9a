//! `cargo xtask container-test`: builds the image, brings the docker-compose stack up, checks
//! `/health`, a recommendation, an event and a live edit of a mounted experiment file, then
//! tears everything down (also on failure).
//!
//! Needs a running Docker daemon and docker-compose. Base images missing from the local
//! daemon (this machine cannot reach Docker Hub) are made here under the names the
//! Dockerfile and docker-compose.yml expect: `debian:bookworm-slim` from `debootstrap`,
//! `rust:1.95-slim-bookworm` and `redis:7.0-bookworm` from `docker/*.Dockerfile`. Where those
//! images can be pulled, nothing here is needed and the same files work unchanged.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::{root, run};

const DEBIAN: &str = "debian:bookworm-slim";
const RUST: &str = "rust:1.95-slim-bookworm";
const REDIS: &str = "redis:7.0-bookworm";
const IMAGE: &str = "recohost:container-test";
const PROJECT: &str = "recohost-container-test";

pub fn container_test() -> Result<(), String> {
    output(Command::new("docker").arg("info")).map_err(|e| {
        format!("{e}\nstart a Docker daemon first (here: `dockerd --storage-driver=vfs &`)")
    })?;
    ensure_base_images()?;

    let started = Instant::now();
    run(Command::new("docker")
        .current_dir(root())
        .args(["build", "-t", IMAGE, "."]))?;
    let build_secs = started.elapsed().as_secs_f64();
    let size =
        output(Command::new("docker").args(["image", "inspect", IMAGE, "--format", "{{.Size}}"]))?;
    let size_mb = size.trim().parse::<f64>().map_err(|e| e.to_string())? / 1e6;

    // A scratch copy of the experiments, so the edit below leaves the repository alone.
    let scratch =
        std::env::temp_dir().join(format!("recohost-container-test-{}", std::process::id()));
    let experiments = scratch.join("experiments");
    std::fs::create_dir_all(&experiments).map_err(|e| e.to_string())?;
    let shipped = root().join("experiments/model_comparison.toml");
    std::fs::copy(&shipped, experiments.join("model_comparison.toml"))
        .map_err(|e| e.to_string())?;
    // The container's user (uid 10001) reads the mounted folder.
    run(Command::new("chmod").args(["-R", "a+rX"]).arg(&scratch))?;
    let port = free_port()?;

    let compose = |args: &[&str]| {
        let mut command = Command::new("docker-compose");
        command
            .current_dir(root())
            .args(["-p", PROJECT])
            .args(args)
            .env("RECOHOST_IMAGE", IMAGE)
            .env("RECOHOST_PORT", port.to_string())
            .env("RECOHOST_EXPERIMENTS", &experiments);
        command
    };
    let result = (|| {
        let up = Instant::now();
        run(&mut compose(&["up", "-d", "--no-build"]))?;
        wait_healthy(&compose, Duration::from_secs(300))?;
        let healthy_secs = up.elapsed().as_secs_f64();
        checks(port, &experiments)?;
        Ok::<_, String>(healthy_secs)
    })();
    if result.is_err() {
        let _ = run(&mut compose(&["logs", "--tail", "50"]));
    }
    let _ = run(&mut compose(&["down", "-v"]));
    let _ = std::fs::remove_dir_all(&scratch);
    let healthy_secs = result?;
    println!(
        "container test passed: image {IMAGE} {size_mb:.1} MB (built in {build_secs:.0} s); \
         `docker-compose up` to healthy in {healthy_secs:.1} s"
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

fn wait_healthy(compose: &dyn Fn(&[&str]) -> Command, timeout: Duration) -> Result<(), String> {
    let container = output(&mut compose(&["ps", "-q", "api"]))?
        .trim()
        .to_string();
    let deadline = Instant::now() + timeout;
    loop {
        let status = output(Command::new("docker").args([
            "inspect",
            "--format",
            "{{.State.Health.Status}}",
            &container,
        ]))?;
        match status.trim() {
            "healthy" => return Ok(()),
            "unhealthy" => return Err("the api container is unhealthy".into()),
            _ if Instant::now() > deadline => return Err("the api never became healthy".into()),
            _ => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

fn ensure_base_images() -> Result<(), String> {
    if !image_exists(DEBIAN) {
        let rootfs = PathBuf::from("/var/cache/recohost/rootfs-bookworm");
        if !rootfs.join("bin").exists() {
            run(Command::new("debootstrap")
                .args(["--variant=minbase", "bookworm"])
                .arg(&rootfs)
                .arg("http://deb.debian.org/debian"))?;
        }
        // Slim like the public image: no docs, man pages, locales or package lists.
        for dir in [
            "usr/share/doc",
            "usr/share/man",
            "usr/share/locale",
            "usr/share/info",
            "var/lib/apt/lists",
            "var/cache/apt",
        ] {
            let path = rootfs.join(dir);
            let _ = std::fs::remove_dir_all(&path);
            let _ = std::fs::create_dir_all(&path);
        }
        let _ = std::fs::create_dir_all(rootfs.join("var/lib/apt/lists/partial"));
        // The machine's own extra certificate authorities (e.g. of a TLS-inspecting egress
        // proxy) go along, so that images built from this stand-in can fetch over HTTPS the
        // way the machine does; `ca-certificates`, once installed, picks them up.
        let local_cas = Path::new("/usr/local/share/ca-certificates");
        if let Ok(entries) = std::fs::read_dir(local_cas) {
            let target = rootfs.join("usr/local/share/ca-certificates");
            std::fs::create_dir_all(&target).map_err(|e| e.to_string())?;
            for entry in entries.flatten() {
                let _ = std::fs::copy(entry.path(), target.join(entry.file_name()));
            }
        }
        run(Command::new("sh").arg("-c").arg(format!(
            "tar -C {} -c . | docker import --change 'CMD [\"bash\"]' - {DEBIAN}",
            rootfs.display()
        )))?;
    }
    for (tag, dockerfile) in [
        (RUST, "docker/rust-builder.Dockerfile"),
        (REDIS, "docker/redis.Dockerfile"),
    ] {
        if !image_exists(tag) {
            run(Command::new("docker")
                .current_dir(root().join("docker"))
                .args(["build", "-t", tag, "-f"])
                .arg(root().join(dockerfile))
                .arg("."))?;
        }
    }
    Ok(())
}

fn image_exists(tag: &str) -> bool {
    Command::new("docker")
        .args(["image", "inspect", tag])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn output(command: &mut Command) -> Result<String, String> {
    let out = command.output().map_err(|e| format!("{command:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn expect(answer: &str, needle: &str, what: &str) -> Result<(), String> {
    if answer.contains(needle) {
        Ok(())
    } else {
        Err(format!("{what}: expected {needle} in {answer}"))
    }
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

/// One HTTP/1.0 request to the published port; the whole response (status line and body).
fn http(port: u16, method: &str, path: &str, body: &str) -> Result<String, String> {
    let mut stream =
        std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    if response.starts_with("HTTP/1.1 2") || response.starts_with("HTTP/1.0 2") {
        Ok(response)
    } else {
        Err(format!("{method} {path}: {response}"))
    }
}
