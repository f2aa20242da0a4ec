//! Leader election on a `coordination.k8s.io` Lease (kube-lease-manager), so two replicas never
//! both write. A replica that loses the lease stops its controllers and exits; Kubernetes
//! restarts it as a standby.

use std::sync::Arc;

use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tokio_util::sync::CancellationToken;

use super::RunConfig;
use crate::telemetry::Health;

/// Wait until this replica holds the lease (or `shutdown` is cancelled). Afterwards a background
/// task cancels `shutdown` if the lease is ever lost.
pub async fn acquire(
    client: &Client,
    config: &RunConfig,
    shutdown: CancellationToken,
    health: &Arc<Health>,
) -> anyhow::Result<()> {
    let namespace = config
        .lease_namespace
        .clone()
        .unwrap_or_else(|| "default".to_string());
    let identity = std::env::var("POD_NAME")
        .unwrap_or_else(|_| format!("omninode-operator-{}", uuid::Uuid::new_v4()));
    let duration = config.lease_duration_seconds.max(5);
    let manager = LeaseManagerBuilder::new(client.clone(), &config.lease_name)
        .with_namespace(&namespace)
        .with_identity(&identity)
        .with_duration(duration)
        .with_grace((duration / 3).max(2))
        .build()
        .await?;
    let (mut channel, task) = manager.watch().await;
    // A standby replica is healthy and ready: it serves probes and waits.
    health.set_ready(true);
    tracing::info!(lease = %config.lease_name, %namespace, %identity, "waiting for the lease");
    let leading = tokio::select! {
        _ = shutdown.cancelled() => false,
        r = channel.wait_for(|leading| *leading) => { r?; true }
    };
    if !leading {
        drop(channel);
        let _ = task.await;
        return Ok(());
    }
    health.set_ready(false);
    tracing::info!(%identity, "lease acquired; leading");
    tokio::spawn(async move {
        tokio::select! {
            r = channel.wait_for(|leading| !*leading) => {
                if r.is_ok() {
                    tracing::error!("lease lost; stopping");
                }
                shutdown.cancel();
            }
            _ = shutdown.cancelled() => {}
        }
        // Dropping the channel ends the manager's task, which releases the lease.
        drop(channel);
        let _ = task.await;
    });
    Ok(())
}
