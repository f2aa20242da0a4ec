pub mod cluster;
pub mod kafka;
