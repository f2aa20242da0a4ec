//! Where rendered nodes go: ConfigMaps (default) or Git (later).

pub mod configmap;
