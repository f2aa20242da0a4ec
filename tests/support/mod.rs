pub mod chart;
pub mod cluster;
pub mod kafka;
