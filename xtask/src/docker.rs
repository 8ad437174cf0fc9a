//! What the Docker tests share (`container.rs`, one node; `cluster_test.rs`, the compose
//! cluster): the daemon check, base images, the image build, a docker-compose project, and
//! plain HTTP to a published port.
//!
//! Base images missing from the local daemon (this machine cannot reach Docker Hub) are made
//! here under the names the Dockerfile and the compose files expect: `debian:bookworm-slim`
//! from `debootstrap`, the others from `docker/*.Dockerfile` on top of it. Where those images
//! can be pulled, nothing here is needed and the same files work unchanged.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::{root, run};

const DEBIAN: &str = "debian:bookworm-slim";
pub const RUST: &str = "rust:1.95-slim-bookworm";
pub const REDIS: &str = "redis:7.0-bookworm";
pub const POSTGRES: &str = "postgres:15-bookworm";
pub const HAPROXY: &str = "haproxy:2.6-bookworm";
/// Public tag -> the stand-in's Dockerfile, built on [`DEBIAN`].
const STAND_INS: [(&str, &str); 4] = [
    (RUST, "docker/rust-builder.Dockerfile"),
    (REDIS, "docker/redis.Dockerfile"),
    (POSTGRES, "docker/postgres.Dockerfile"),
    (HAPROXY, "docker/haproxy.Dockerfile"),
];

pub fn require_daemon() -> Result<(), String> {
    output(Command::new("docker").arg("info"))
        .map(drop)
        .map_err(|e| {
            format!("{e}\nstart a Docker daemon first (here: `dockerd --storage-driver=vfs &`)")
        })
}

/// The image as built from the repository's Dockerfile.
pub struct Image {
    pub build_secs: f64,
    pub size_mb: f64,
}

/// `docker build` of the repository under `tag` (dependency layers cached by cargo-chef: only
/// a change to a manifest or Cargo.lock rebuilds them).
pub fn build_image(tag: &'static str) -> Result<Image, String> {
    let started = Instant::now();
    run(Command::new("docker")
        .current_dir(root())
        .args(["build", "-t", tag, "."]))?;
    let build_secs = started.elapsed().as_secs_f64();
    let size =
        output(Command::new("docker").args(["image", "inspect", tag, "--format", "{{.Size}}"]))?;
    let size_mb = size.trim().parse::<f64>().map_err(|e| e.to_string())? / 1e6;
    Ok(Image {
        build_secs,
        size_mb,
    })
}

/// A docker-compose project: one compose file, its environment, torn down by [`down`].
///
/// [`down`]: Compose::down
pub struct Compose {
    project: String,
    file: &'static str,
    env: Vec<(String, String)>,
}

impl Compose {
    pub fn new(project: &str, file: &'static str, env: &[(&str, String)]) -> Self {
        Compose {
            project: project.into(),
            file,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("docker-compose");
        command
            .current_dir(root())
            .args(["-p", &self.project, "-f", self.file])
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        command
    }

    pub fn run(&self, args: &[&str]) -> Result<(), String> {
        run(&mut self.command(args))
    }

    /// The id of a service's container.
    pub fn container(&self, service: &str) -> Result<String, String> {
        Ok(output(&mut self.command(&["ps", "-q", service]))?
            .trim()
            .to_string())
    }

    /// Waits for the services' containers to pass their Docker health checks.
    pub fn wait_healthy(&self, services: &[&str], timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        for service in services {
            let container = self.container(service)?;
            loop {
                let status = output(Command::new("docker").args([
                    "inspect",
                    "--format",
                    "{{.State.Health.Status}}",
                    &container,
                ]))?;
                match status.trim() {
                    "healthy" => break,
                    "unhealthy" => return Err(format!("{service} is unhealthy")),
                    _ if Instant::now() > deadline => {
                        return Err(format!("{service} never became healthy"));
                    }
                    _ => std::thread::sleep(Duration::from_millis(250)),
                }
            }
        }
        Ok(())
    }

    /// Prints the services' last log lines (after a failure), then removes the project with
    /// its volumes.
    pub fn down(&self, failed: bool) {
        if failed {
            let _ = self.run(&["logs", "--tail", "200"]);
        }
        let _ = self.run(&["down", "-v"]);
    }
}

/// A scratch copy of the shipped experiments that the container's user (uid 10001) can read,
/// so that a test may edit it and leave the repository alone.
pub fn scratch_experiments(name: &str) -> Result<PathBuf, String> {
    let scratch = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    let experiments = scratch.join("experiments");
    std::fs::create_dir_all(&experiments).map_err(|e| e.to_string())?;
    let shipped = root().join("experiments/model_comparison.toml");
    std::fs::copy(&shipped, experiments.join("model_comparison.toml"))
        .map_err(|e| e.to_string())?;
    run(Command::new("chmod").args(["-R", "a+rX"]).arg(&scratch))?;
    Ok(experiments)
}

/// Makes stand-ins for those of `tags` that the daemon lacks, and Debian slim, their base.
/// A stand-in made before is built again (from cache unless its Dockerfile changed); an
/// image of that name that is not a stand-in (pulled from Docker Hub) is left alone.
pub fn ensure_base_images(tags: &[&str]) -> Result<(), String> {
    if !image_exists(DEBIAN) {
        import_debian()?;
    }
    for (tag, dockerfile) in STAND_INS {
        if tags.contains(&tag) && (!image_exists(tag) || is_stand_in(tag)) {
            run(Command::new("docker")
                .current_dir(root().join("docker"))
                .args(["build", "--label", STAND_IN_LABEL, "-t", tag, "-f"])
                .arg(root().join(dockerfile))
                .arg("."))?;
        }
    }
    Ok(())
}

/// `debian:bookworm-slim` from a debootstrap of Debian's archive.
fn import_debian() -> Result<(), String> {
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
    // proxy) go along, so that images built from this stand-in can fetch over HTTPS the way
    // the machine does; `ca-certificates`, once installed, picks them up.
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
    )))
}

/// Marks the images `ensure_base_images` made.
const STAND_IN_LABEL: &str = "org.recohost.stand-in=true";

fn is_stand_in(tag: &str) -> bool {
    output(Command::new("docker").args([
        "image",
        "inspect",
        tag,
        "--format",
        "{{index .Config.Labels \"org.recohost.stand-in\"}}",
    ]))
    .is_ok_and(|label| label.trim() == "true")
}

fn image_exists(tag: &str) -> bool {
    Command::new("docker")
        .args(["image", "inspect", tag])
        .output()
        .is_ok_and(|o| o.status.success())
}

pub fn output(command: &mut Command) -> Result<String, String> {
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

pub fn expect(answer: &str, needle: &str, what: &str) -> Result<(), String> {
    if answer.contains(needle) {
        Ok(())
    } else {
        Err(format!("{what}: expected {needle} in {answer}"))
    }
}

pub fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

/// One HTTP/1.0 exchange with the published port: the status and the whole response text
/// (status line, headers, body).
pub fn exchange(
    port: u16,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> Result<(u16, String), String> {
    let mut stream =
        std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: localhost\r\nContent-Type: application/json\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("{method} {path}: no HTTP status in {response:?}"))?;
    Ok((status, response))
}

/// [`exchange`] that must answer 2xx: the whole response text.
pub fn http(port: u16, method: &str, path: &str, body: &str) -> Result<String, String> {
    match exchange(port, method, path, "", body)? {
        (200..=299, response) => Ok(response),
        (_, response) => Err(format!("{method} {path}: {response}")),
    }
}
