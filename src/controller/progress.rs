//! Generations still in progress, read from the controller's cache at scrape time: what the
//! stuck-generation alert reads.
//!
//! How long one has been in progress is measured by this process, from the first scrape that
//! saw it so (to within a scrape interval): a status carries no timestamp of when its current
//! spec was first seen, and a condition's transition time may be days older than a spec change.
//! A restart starts the clock again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use kube::ResourceExt;
use kube::runtime::reflector::Store;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;

use super::cached_generation::CachedGeneration;
use crate::api::Phase;

/// Scrape-time gauges over the NodeGeneration cache, which exists only once the controller
/// starts (after the registry is built): until then they read 0.
#[derive(Debug, Default, Clone)]
pub struct GenerationProgress {
    store: Arc<OnceLock<Store<CachedGeneration>>>,
    /// (uid, metadata.generation) → when it was first seen in progress.
    since: Arc<Mutex<HashMap<(String, i64), Instant>>>,
}

impl GenerationProgress {
    pub fn watch(&self, store: Store<CachedGeneration>) {
        let _ = self.store.set(store);
    }

    /// How many generations are in progress, and the age in seconds of the oldest.
    pub fn sample(&self, now: Instant) -> (i64, f64) {
        let Some(store) = self.store.get() else {
            return (0, 0.0);
        };
        let Ok(mut since) = self.since.lock() else {
            return (0, 0.0);
        };
        let mut seen = HashMap::new();
        for ng in store.state() {
            if let Some(key) = in_progress(&ng) {
                let first = since.get(&key).copied().unwrap_or(now);
                seen.insert(key, first);
            }
        }
        let oldest = seen
            .values()
            .map(|t| now.saturating_duration_since(*t).as_secs_f64())
            .fold(0.0, f64::max);
        let count = seen.len() as i64;
        *since = seen;
        (count, oldest)
    }
}

/// The key of a generation whose current spec has not settled (Completed or Failed) yet.
fn in_progress(ng: &CachedGeneration) -> Option<(String, i64)> {
    let generation = ng.metadata.generation.unwrap_or_default();
    let settled = ng.status.as_ref().is_some_and(|s| {
        s.observed_generation == Some(generation)
            && matches!(s.phase, Some(Phase::Completed | Phase::Failed))
    });
    (!settled).then(|| {
        (
            ng.version.uid().unwrap_or_else(|| ng.name_any()),
            generation,
        )
    })
}

impl Collector for GenerationProgress {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (count, oldest) = self.sample(Instant::now());
        let gauge = ConstGauge::new(count);
        gauge.encode(encoder.encode_descriptor(
            "generations_in_progress",
            "NodeGenerations whose current spec has not completed or failed yet",
            None,
            gauge.metric_type(),
        )?)?;
        let gauge = ConstGauge::new(oldest);
        gauge.encode(encoder.encode_descriptor(
            "generation_oldest_in_progress_seconds",
            "How long the oldest NodeGeneration in progress has been so, as seen by this replica",
            None,
            gauge.metric_type(),
        )?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{NodeGeneration, NodeGenerationSpec, NodeGenerationStatus};
    use kube::runtime::reflector::store;
    use kube::runtime::watcher::Event;
    use std::time::Duration;

    fn ng(uid: &str, generation: i64, status: Option<(i64, Phase)>) -> CachedGeneration {
        let mut ng = NodeGeneration::new(uid, NodeGenerationSpec::default());
        ng.metadata.namespace = Some("ns".into());
        ng.metadata.uid = Some(uid.into());
        ng.metadata.generation = Some(generation);
        ng.status = status.map(|(observed, phase)| NodeGenerationStatus {
            observed_generation: Some(observed),
            phase: Some(phase),
            ..Default::default()
        });
        CachedGeneration::from(ng)
    }

    #[test]
    fn only_unsettled_specs_count_and_their_age_runs_from_first_sight() {
        let (reader, mut writer) = store::<CachedGeneration>();
        let progress = GenerationProgress::default();
        assert_eq!(progress.sample(Instant::now()), (0, 0.0), "no store yet");
        progress.watch(reader);
        for ng in [
            ng("done", 1, Some((1, Phase::Completed))),
            ng("failed", 1, Some((1, Phase::Failed))),
            ng("new", 1, None),
            ng("edited", 2, Some((1, Phase::Completed))),
            ng("deploying", 1, Some((1, Phase::Deploying))),
        ] {
            writer.apply_watcher_event(&Event::Apply(ng));
        }
        let t0 = Instant::now();
        assert_eq!(progress.sample(t0), (3, 0.0));
        let (count, oldest) = progress.sample(t0 + Duration::from_secs(60));
        assert_eq!((count, oldest), (3, 60.0));
        // "new" settles; "edited" settles and is edited again: its clock starts over.
        writer.apply_watcher_event(&Event::Apply(ng("new", 1, Some((1, Phase::Completed)))));
        writer.apply_watcher_event(&Event::Apply(ng(
            "deploying",
            1,
            Some((1, Phase::Completed)),
        )));
        writer.apply_watcher_event(&Event::Apply(ng("edited", 3, Some((2, Phase::Completed)))));
        assert_eq!(progress.sample(t0 + Duration::from_secs(90)), (1, 0.0));
    }
}
