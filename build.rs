//! Templates and the pattern library are embedded with `include_dir!`/`include_str!`; tell
//! cargo to rebuild when they change (stable Rust cannot track the directory by itself).
//!
//! The `omninode-runtime` sources are embedded file by file through a list written here
//! (`$OUT_DIR/runtime_files.rs`): only what goes into its wheel (`pyproject.toml`, `README.md`,
//! `src/omninode_runtime/**`), never the caches that running its test suite leaves beside them
//! (`.mypy_cache` alone is megabytes, and would be copied into every `generate`).
use std::path::{Path, PathBuf};

const RUNTIME: &str = "python/omninode-runtime";
const RUNTIME_PACKAGE: &str = "src/omninode_runtime";
const SKIPPED_DIRS: &[&str] = &["__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"];

fn main() {
    println!("cargo:rerun-if-changed=templates");
    println!("cargo:rerun-if-changed=src/analysis/pattern_library.yaml");
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let runtime = root.join(RUNTIME);
    let mut files = vec![runtime.join("pyproject.toml"), runtime.join("README.md")];
    collect(&runtime.join(RUNTIME_PACKAGE), &mut files);
    files.sort();
    let mut list = String::from("&[\n");
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
        let relative = file
            .strip_prefix(&runtime)
            .expect("below the runtime")
            .to_string_lossy();
        list.push_str(&format!(
            "    ({relative:?}, include_bytes!({:?})),\n",
            file.display().to_string()
        ));
    }
    list.push(']');
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo"));
    std::fs::write(out.join("runtime_files.rs"), list).expect("write runtime_files.rs");
}

/// Every source file below `dir`; directories are watched too, so an added file rebuilds.
fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    println!("cargo:rerun-if-changed={}", dir.display());
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            if !SKIPPED_DIRS.contains(&name.as_str()) && !name.ends_with(".egg-info") {
                collect(&path, out);
            }
        } else if !name.ends_with(".pyc") && !name.ends_with(".pyo") {
            out.push(path);
        }
    }
}
