//! Talking to the intelligence service (omniarchon / omniintelligence) over Kafka, and falling
//! back to the built-in pattern library when it is slow, failing or absent.

pub mod advisor;
mod breaker;
mod client;
mod config;
mod health;
mod metrics;
pub mod wire;

pub use breaker::State as CircuitState;
pub use client::{ContractFamily, IntelligenceClient, IntelligenceError};
pub use config::IntelligenceConfig;
pub use metrics::Metrics;
