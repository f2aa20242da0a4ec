//! Templates and the pattern library are embedded with `include_dir!`/`include_str!`; tell
//! cargo to rebuild when they change (stable Rust cannot track the directory by itself).
fn main() {
    println!("cargo:rerun-if-changed=templates");
    println!("cargo:rerun-if-changed=src/analysis/pattern_library.yaml");
    println!("cargo:rerun-if-changed=python/omninode-runtime");
}
