//! `recohost plugin new NAME`: a plugin crate in `./NAME` that builds and passes its tests at
//! once. It depends only on crates.io (wit-bindgen, serde) and carries its own copy of the
//! WIT contract, so it needs neither this repository nor an SDK release: a researcher can
//! start from the binary alone.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// The contract the generated crate builds against (the host's own, at compile time).
const WIT: &str = include_str!("../../../wit/strategy.wit");

/// (path in the crate, template) pairs.
const FILES: [(&str, &str); 5] = [
    ("Cargo.toml", include_str!("template/Cargo.toml.txt")),
    ("README.md", include_str!("template/README.md.txt")),
    (".gitignore", include_str!("template/gitignore.txt")),
    ("src/lib.rs", include_str!("template/lib.rs.txt")),
    ("src/model.rs", include_str!("template/model.rs.txt")),
];

/// A plugin name: lower-case ASCII letters, digits, `-` and `_`, starting with a letter (a
/// valid crate name, a valid TOML key, and safe as a folder name everywhere).
fn check_name(name: &str) -> anyhow::Result<()> {
    let mut chars = name.chars();
    let valid = name.len() <= 64
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid {
        bail!(
            "{name:?} is not a valid plugin name: use lower-case letters, digits, '-' and '_', \
             starting with a letter, at most 64 characters"
        );
    }
    Ok(())
}

fn render(template: &str, name: &str) -> String {
    let crate_name = name.replace('-', "_");
    // Eight bytes identifying the plugin's snapshots.
    let magic: String = crate_name
        .chars()
        .chain(std::iter::repeat('_'))
        .take(8)
        .collect();
    template
        .replace("{{name}}", name)
        .replace("{{crate}}", &crate_name)
        .replace("{{magic}}", &magic)
}

/// Writes the crate into `parent/name` and returns its path; refuses an existing path.
pub fn create(name: &str, parent: &Path) -> anyhow::Result<PathBuf> {
    check_name(name)?;
    let root = parent.join(name);
    if root.exists() {
        bail!(
            "{} already exists: choose another name or move it away",
            root.display()
        );
    }
    let write = |relative: &str, text: &str| -> anyhow::Result<()> {
        let path = root.join(relative);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
    };
    for (relative, template) in FILES {
        write(relative, &render(template, name))?;
    }
    write("wit/strategy.wit", WIT)?;
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_complete_crate_with_the_name_filled_in() {
        let temp = tempfile::tempdir().expect("temp dir");
        let root = create("my-model", temp.path()).expect("created");
        for file in [
            "Cargo.toml",
            "README.md",
            ".gitignore",
            "src/lib.rs",
            "src/model.rs",
            "wit/strategy.wit",
        ] {
            let text = std::fs::read_to_string(root.join(file)).expect(file);
            assert!(!text.contains("{{"), "{file} has a placeholder left");
        }
        let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("manifest");
        assert!(manifest.contains("name = \"my-model\""), "{manifest}");
        let model = std::fs::read_to_string(root.join("src/model.rs")).expect("model");
        assert!(model.contains("b\"my_model\""), "eight-byte magic");
        let readme = std::fs::read_to_string(root.join("README.md")).expect("readme");
        assert!(readme.contains("release/my_model.wasm"), "{readme}");
    }

    #[test]
    fn refuses_bad_names_and_existing_folders() {
        let temp = tempfile::tempdir().expect("temp dir");
        for bad in ["", "My", "1abc", "a b", "../x", "a/b", &"x".repeat(65)] {
            assert!(create(bad, temp.path()).is_err(), "{bad:?} accepted");
        }
        create("taken", temp.path()).expect("first");
        let error = create("taken", temp.path())
            .expect_err("second")
            .to_string();
        assert!(error.contains("already exists"), "{error}");
    }
}
