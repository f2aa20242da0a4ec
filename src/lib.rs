//! omninode-operator: turns PRDs in `NodeGeneration` resources into runnable ONEX nodes.
//!
//! The pure core (`prd`, `analysis`, `render`, `quality`, composed by `pipeline`) has no I/O and is
//! shared by the offline `generate` command and the controller, so both produce identical files.

pub mod analysis;
pub mod api;
pub mod codegen;
pub mod controller;
pub mod deploy;
pub mod generate;
pub mod intelligence;
pub mod manifest;
pub mod naming;
pub mod pipeline;
pub mod prd;
pub mod publish;
pub mod quality;
pub mod render;
pub mod runtime_compat;
pub mod runtime_dist;
pub mod status;
pub mod telemetry;
pub mod trace;
pub mod training;
