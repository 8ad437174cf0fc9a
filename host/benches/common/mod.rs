//! What the benchmarks share: the bundled plugins and where their .wasm files are.

use std::path::PathBuf;

/// The bundled plugins (`plugins/*`), as `cargo xtask plugins` builds them.
pub const PLUGINS: [&str; 5] = [
    "popularity",
    "collaborative",
    "content",
    "hybrid",
    "ratings",
];

/// The built components: `RECOHOST_PLUGINS_DIR`, else `dist/plugins/` of the workspace.
pub fn plugins_dir() -> PathBuf {
    std::env::var_os("RECOHOST_PLUGINS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../dist/plugins"))
}
