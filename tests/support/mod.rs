pub mod chart;
pub mod cluster;
pub mod git_server;
pub mod kafka;
pub mod kubelet_node;
pub mod node_process;
pub mod otlp;
pub mod prometheus;
