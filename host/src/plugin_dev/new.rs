//! `recohost plugin new NAME [--lang rust|python|js]`: a plugin project in `./NAME` that
//! builds and passes its tests at once. Each carries its own copy of the WIT contract and
//! depends only on its language's public registry (crates.io, PyPI, npm), so it needs neither
//! this repository nor an SDK release: a researcher can start from the binary alone.
//!
//! Every language gets the same shape: the algorithm in a module of its own with no
//! WebAssembly in it, tested natively (`cargo test`, pytest, `node --test`); a thin binding to
//! the contract; one command to build the component.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// The contract the generated project builds against (the host's own, at compile time).
const WIT: &str = include_str!("../../../wit/strategy.wit");

/// The language of a generated plugin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// cargo, wit-bindgen; `cargo build --release --target wasm32-wasip2`.
    Rust,
    /// componentize-py; `./build.sh`.
    Python,
    /// componentize-js; `npm run build`.
    Js,
}

/// A file of a generated project: its path, its template, whether it is a script to run.
struct Template {
    path: &'static str,
    text: &'static str,
    executable: bool,
}

const fn file(path: &'static str, text: &'static str) -> Template {
    Template {
        path,
        text,
        executable: false,
    }
}

const RUST: &[Template] = &[
    file("Cargo.toml", include_str!("template/rust/Cargo.toml.txt")),
    file("README.md", include_str!("template/rust/README.md.txt")),
    file(".gitignore", include_str!("template/rust/gitignore.txt")),
    file("src/lib.rs", include_str!("template/rust/lib.rs.txt")),
    file("src/model.rs", include_str!("template/rust/model.rs.txt")),
];

const PYTHON: &[Template] = &[
    file("README.md", include_str!("template/python/README.md.txt")),
    file(".gitignore", include_str!("template/python/gitignore.txt")),
    file(
        "pyproject.toml",
        include_str!("template/python/pyproject.toml.txt"),
    ),
    file(
        "requirements.txt",
        include_str!("template/python/requirements.txt.txt"),
    ),
    Template {
        path: "build.sh",
        text: include_str!("template/python/build.sh.txt"),
        executable: true,
    },
    file("src/app.py", include_str!("template/python/src/app.py.txt")),
    file(
        "src/model.py",
        include_str!("template/python/src/model.py.txt"),
    ),
    file(
        "tests/test_model.py",
        include_str!("template/python/tests/test_model.py.txt"),
    ),
];

const JS: &[Template] = &[
    file("README.md", include_str!("template/js/README.md.txt")),
    file(".gitignore", include_str!("template/js/gitignore.txt")),
    file("package.json", include_str!("template/js/package.json.txt")),
    file(
        "src/plugin.js",
        include_str!("template/js/src/plugin.js.txt"),
    ),
    file("src/model.js", include_str!("template/js/src/model.js.txt")),
    file(
        "test/model.test.js",
        include_str!("template/js/test/model.test.js.txt"),
    ),
];

impl Lang {
    fn templates(self) -> &'static [Template] {
        match self {
            Lang::Rust => RUST,
            Lang::Python => PYTHON,
            Lang::Js => JS,
        }
    }

    /// What to run next in the project, and the component it builds, for the CLI to print.
    pub fn next_steps(self, root: &Path, name: &str) -> (String, PathBuf) {
        let dir = root.display();
        match self {
            Lang::Rust => (
                format!("cd {dir} && cargo test && cargo build --release --target wasm32-wasip2"),
                root.join(format!(
                    "target/wasm32-wasip2/release/{}.wasm",
                    name.replace('-', "_")
                )),
            ),
            Lang::Python => (
                format!("cd {dir} && ./build.sh"),
                root.join(format!("{name}.wasm")),
            ),
            Lang::Js => (
                format!("cd {dir} && npm install && npm run build"),
                root.join(format!("{name}.wasm")),
            ),
        }
    }
}

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

/// Writes the project into `parent/name` and returns its path; refuses an existing path.
pub fn create(name: &str, lang: Lang, parent: &Path) -> anyhow::Result<PathBuf> {
    check_name(name)?;
    let root = parent.join(name);
    if root.exists() {
        bail!(
            "{} already exists: choose another name or move it away",
            root.display()
        );
    }
    let write = |relative: &str, text: &str| -> anyhow::Result<PathBuf> {
        let path = root.join(relative);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(path)
    };
    for template in lang.templates() {
        let path = write(template.path, &render(template.text, name))?;
        if template.executable {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .with_context(|| format!("cannot make {} executable", path.display()))?;
        }
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
        let root = create("my-model", Lang::Rust, temp.path()).expect("created");
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
    fn python_and_js_projects_are_complete_with_the_name_filled_in() {
        use std::os::unix::fs::PermissionsExt;
        let temp = tempfile::tempdir().expect("temp dir");
        for (lang, component_named_in) in [(Lang::Python, "build.sh"), (Lang::Js, "package.json")] {
            let root = create(
                "my-model",
                lang,
                temp.path().join(format!("{lang:?}")).as_path(),
            )
            .expect("created");
            for template in lang.templates() {
                let text = std::fs::read_to_string(root.join(template.path)).expect(template.path);
                assert!(
                    !text.contains("{{"),
                    "{lang:?} {}: a placeholder left",
                    template.path
                );
                let mode = std::fs::metadata(root.join(template.path)).expect("metadata");
                assert_eq!(
                    mode.permissions().mode() & 0o111 != 0,
                    template.executable,
                    "{lang:?} {}",
                    template.path
                );
            }
            let build = std::fs::read_to_string(root.join(component_named_in)).expect("build");
            assert!(build.contains("my-model.wasm"), "{lang:?}: {build}");
            assert!(root.join("wit/strategy.wit").is_file());
        }
    }

    #[test]
    fn refuses_bad_names_and_existing_folders() {
        let temp = tempfile::tempdir().expect("temp dir");
        for bad in ["", "My", "1abc", "a b", "../x", "a/b", &"x".repeat(65)] {
            assert!(
                create(bad, Lang::Python, temp.path()).is_err(),
                "{bad:?} accepted"
            );
        }
        create("taken", Lang::Js, temp.path()).expect("first");
        let error = create("taken", Lang::Rust, temp.path())
            .expect_err("second")
            .to_string();
        assert!(error.contains("already exists"), "{error}");
    }
}
