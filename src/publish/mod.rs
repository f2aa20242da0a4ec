//! Where rendered nodes go: ConfigMaps (default) or a Git repository.

pub mod configmap;
pub mod git;
pub mod git_tree;
