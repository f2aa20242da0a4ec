//! Why a GeneratedNode's pods cannot run, from their container states: the kubelet's own reason
//! (`CrashLoopBackOff`, `ImagePullBackOff`, `ErrImageNeverPull`, …) becomes the node's `Ready`
//! reason, so a node that will not start says so instead of "rolling out" until the
//! Deployment's progress deadline. A container that started but keeps failing its readiness
//! probe has no kubelet reason; it gets [`READINESS_FAILING`] once it had time to pass.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerStatus, Pod, PodStatus};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use serde::de::IgnoredAny;

use super::children::{Children, Entry};
use super::lean::Lean;

/// A pod as its cache reads it: metadata and status (its spec is kilobytes nothing reads).
pub type PodView = Lean<Pod, IgnoredAny, PodStatus>;

/// Waiting reasons that mean the container will not start without a change.
pub const FAILING_REASONS: &[&str] = &[
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "ErrImageNeverPull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// The reason of a container that started but does not pass its readiness probe.
pub const READINESS_FAILING: &str = "ReadinessProbeFailing";

/// How long a started container may stay unready before it counts as failing: the readiness
/// probe's whole failure window (`deploy`: every 5 s, 3 failures) twice over, so that a pod
/// that is merely slow to pass it never flaps to failing.
pub const READINESS_GRACE: Duration = Duration::from_secs(30);

/// Whether `reason` (a GeneratedNode's `Ready` reason) says that it cannot start.
pub fn is_failing(reason: &str) -> bool {
    reason == READINESS_FAILING || FAILING_REASONS.contains(&reason)
}

/// The label that ties a node's pods to it (its Deployment's selector).
const NAME_LABEL: &str = "app.kubernetes.io/name";

/// What the pods of a GeneratedNode say about it.
#[derive(Debug, Default, PartialEq)]
pub struct Health {
    /// A failing pod: the reason and a message naming the pod, the container and its last exit.
    pub failure: Option<(String, String)>,
    /// When to look again: a started container is unready but still within its grace.
    pub recheck_in: Option<Duration>,
}

/// What [`health`] reads of a pod, worked out when its watch delivers it: the Pods cache holds
/// one per replica of every node, and a pod's spec and status are kilobytes. The rare parts are
/// boxed: most pods are neither failing nor unready.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodState {
    /// Being deleted: its containers' states no longer speak for the node.
    pub deleting: bool,
    /// A container that will not start: the kubelet's reason and a message naming it.
    pub failure: Option<Box<(String, String)>>,
    /// A started container that is not ready, and since when that counts (see [`unready`]).
    pub unready: Option<Box<Unready>>,
}

impl PodState {
    /// Whether the pod says anything about its node: one that is neither going, failing nor
    /// unready does not (and most are not), so the pods cache does not list it under its node.
    pub fn matters(&self) -> bool {
        *self != PodState::default()
    }
}

/// A running, started container that is not ready.
#[derive(Clone, Debug, PartialEq)]
pub struct Unready {
    pub container: String,
    /// The later of its start and the pod's last turn to unready.
    pub since: Timestamp,
}

/// The cache entry of a pod; its controller is the GeneratedNode its label names (the pods
/// cache keeps its index by controller: the pods of a node). No uid: the node does not own it.
pub fn cached(pod: &PodView) -> Entry<PodState> {
    let state = PodState {
        deleting: pod.metadata.deletion_timestamp.is_some(),
        failure: pod_failure(pod).map(Box::new),
        unready: unready_since(pod).map(Box::new),
    };
    let mut entry = super::compact::entry(&pod.metadata, None, state);
    entry.controller = pod.labels().get(NAME_LABEL).map(|n| Arc::from(n.as_str()));
    entry
}

/// The health of GeneratedNode `name`'s pods in `ns` at `now`. Pods are looked at in name
/// order, so the answer is stable while nothing changes.
pub fn health(pods: &Children<PodState>, ns: &str, name: &str, now: Timestamp) -> Health {
    let mine: Vec<_> = pods
        .controlled_by(ns, name)
        .into_iter()
        .filter(|(_, p)| !p.data.deleting)
        .collect();
    let unready: Vec<Health> = mine
        .iter()
        .map(|(pod, p)| unready(pod, &p.data, now))
        .collect();
    let failure = mine.iter().zip(&unready).find_map(|((_, p), u)| {
        p.data
            .failure
            .as_deref()
            .cloned()
            .or_else(|| u.failure.clone())
    });
    let recheck_in = unready.iter().filter_map(|u| u.recheck_in).min();
    Health {
        failure,
        recheck_in,
    }
}

/// A pod's started container that is not ready: failing once it has run for
/// [`READINESS_GRACE`] and the pod has been unready as long; else when to look again.
fn unready(pod: &str, state: &PodState, now: Timestamp) -> Health {
    let Some(u) = &state.unready else {
        return Health::default();
    };
    let grace = READINESS_GRACE.as_secs() as i64;
    let waited = now.as_second() - u.since.as_second();
    if waited >= grace {
        let message = format!(
            "pod {pod}: container {} is running but has not passed its readiness probe for {}s",
            u.container, grace
        );
        return Health {
            failure: Some((READINESS_FAILING.to_string(), message)),
            recheck_in: None,
        };
    }
    Health {
        failure: None,
        recheck_in: Some(Duration::from_secs((grace - waited).max(1) as u64)),
    }
}

/// The first running, started container of an unready pod that is not ready itself.
fn unready_since(pod: &PodView) -> Option<Unready> {
    let status = pod.status.as_ref()?;
    let since_unready = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready" && c.status == "False")
        .and_then(|c| c.last_transition_time.as_ref())?
        .0;
    status.container_statuses.iter().flatten().find_map(|c| {
        let started_at = c.state.as_ref()?.running.as_ref()?.started_at.as_ref()?;
        (!c.ready && c.started == Some(true)).then(|| Unready {
            container: c.name.clone(),
            since: started_at.0.max(since_unready),
        })
    })
}

fn pod_failure(pod: &PodView) -> Option<(String, String)> {
    let status = pod.status.as_ref()?;
    let init = status.init_container_statuses.iter().flatten();
    let main = status.container_statuses.iter().flatten();
    init.chain(main)
        .find_map(|c| container_failure(c).map(|(reason, detail)| (reason, c, detail)))
        .map(|(reason, c, detail)| {
            (
                reason.clone(),
                format!(
                    "pod {}: container {} {reason}{detail}",
                    pod.name_any(),
                    c.name
                ),
            )
        })
}

/// The waiting reason of a container that will not start, with what is known of its last run.
/// A crash loop's back-off message (its delay grows) is left out: the status would change at
/// every restart.
fn container_failure(c: &ContainerStatus) -> Option<(String, String)> {
    let waiting = c.state.as_ref()?.waiting.as_ref()?;
    let reason = waiting.reason.clone()?;
    if !FAILING_REASONS.contains(&reason.as_str()) {
        return None;
    }
    let last = c.last_state.as_ref().and_then(|s| s.terminated.as_ref());
    let detail = match (reason.as_str(), last) {
        ("CrashLoopBackOff", Some(t)) => {
            let why = t.reason.as_deref().unwrap_or("terminated");
            let mut d = format!(" (last exit code {}, {why}", t.exit_code);
            if let Some(message) = t
                .message
                .as_deref()
                .map(str::trim)
                .filter(|m| !m.is_empty())
            {
                d.push_str(&format!(": {}", tail(message, 300)));
            }
            d.push(')');
            d
        }
        ("CrashLoopBackOff", None) => String::new(),
        (_, _) => waiting
            .message
            .as_deref()
            .map(|m| format!(": {}", tail(m, 300)))
            .unwrap_or_default(),
    };
    Some((reason, detail))
}

/// The last `max` characters of `text` (a traceback's end says the most).
fn tail(text: &str, max: usize) -> String {
    let count = text.chars().count();
    if count <= max {
        return text.to_string();
    }
    let tail: String = text.chars().skip(count - max).collect();
    format!("…{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateTerminated, ContainerStateWaiting,
    };

    /// The pod as its watch delivers it (see [`PodView`]).
    fn cached(p: &Pod) -> Entry<PodState> {
        super::cached(&view(p))
    }

    fn pod_failure(p: &Pod) -> Option<(String, String)> {
        super::pod_failure(&view(p))
    }

    fn view(p: &Pod) -> PodView {
        Lean::new(p.metadata.clone(), IgnoredAny, p.status.clone())
    }

    fn status(waiting: &str, message: &str, exit: Option<i32>) -> ContainerStatus {
        ContainerStatus {
            name: "node".into(),
            state: Some(ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some(waiting.into()),
                    message: Some(message.into()),
                }),
                ..Default::default()
            }),
            last_state: exit.map(|code| ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: code,
                    reason: Some("Error".into()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn pod(c: ContainerStatus) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some("n-abc".into());
        p.status = Some(PodStatus {
            container_statuses: Some(vec![c]),
            ..Default::default()
        });
        p
    }

    #[test]
    fn a_crash_loop_names_the_pod_the_container_and_the_exit_without_the_back_off() {
        let p = pod(status(
            "CrashLoopBackOff",
            "back-off 40s restarting",
            Some(1),
        ));
        let (reason, message) = pod_failure(&p).unwrap();
        assert_eq!(reason, "CrashLoopBackOff");
        assert_eq!(
            message,
            "pod n-abc: container node CrashLoopBackOff (last exit code 1, Error)"
        );
    }

    /// A pod whose container started at `started` (seconds) and is unready since `unready`.
    fn unready_pod(started: i64, unready: i64, ready: bool) -> Pod {
        use k8s_openapi::api::core::v1::{ContainerStateRunning, PodCondition};
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        let at = |s: i64| Time(Timestamp::from_second(s).unwrap());
        let mut p = Pod::default();
        p.metadata.name = Some("n-abc".into());
        p.status = Some(PodStatus {
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                last_transition_time: Some(at(unready)),
                ..Default::default()
            }]),
            container_statuses: Some(vec![ContainerStatus {
                name: "node".into(),
                ready,
                started: Some(true),
                state: Some(ContainerState {
                    running: Some(ContainerStateRunning {
                        started_at: Some(at(started)),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        });
        p
    }

    #[test]
    fn a_started_container_failing_readiness_fails_only_after_its_grace() {
        let now = |s: i64| Timestamp::from_second(s).unwrap();
        let p = unready_pod(1_000, 1_010, false);
        // 20 s after it became unready: look again in 10 s.
        let state = |p: &Pod| cached(p).child.data;
        let early = unready("n-abc", &state(&p), now(1_030));
        assert_eq!(early.failure, None);
        assert_eq!(early.recheck_in, Some(Duration::from_secs(10)));
        let late = unready("n-abc", &state(&p), now(1_040));
        let (reason, message) = late.failure.unwrap();
        assert_eq!(reason, READINESS_FAILING);
        assert_eq!(
            message,
            "pod n-abc: container node is running but has not passed its readiness probe for 30s"
        );
        assert!(is_failing(&reason));
        // The message does not change as time goes on (status writes stay put).
        assert_eq!(
            unready("n-abc", &state(&p), now(5_000)).failure.unwrap().1,
            message
        );
        // A ready pod is healthy and needs no second look.
        assert_eq!(
            unready(
                "n-abc",
                &state(&unready_pod(1_000, 1_010, true)),
                now(9_000)
            ),
            Health::default()
        );
    }

    #[test]
    fn a_nodes_health_comes_from_its_own_pods_through_the_index() {
        use kube::runtime::watcher::Event;
        let (store, mut writer) = super::super::children::store(Some(PodState::matters));
        let of_node = |node: &str, pod_name: &str, p: Pod| {
            let mut p = p;
            p.metadata.name = Some(pod_name.into());
            p.metadata.namespace = Some("ns".into());
            p.metadata.labels = Some([(NAME_LABEL.to_string(), node.to_string())].into());
            p
        };
        let crashing = of_node("n", "n-abc", pod(status("CrashLoopBackOff", "", Some(1))));
        let other = of_node("m", "m-abc", pod(status("ErrImagePull", "x", None)));
        for p in [&crashing, &other] {
            writer.apply(Event::Apply(cached(p)));
        }
        let now = Timestamp::from_second(0).unwrap();
        let failure = |name: &str| health(&store, "ns", name, now).failure;
        assert_eq!(failure("n").unwrap().0, "CrashLoopBackOff");
        assert_eq!(failure("m").unwrap().0, "ErrImagePull");
        assert_eq!(failure("other"), None);
        writer.apply(Event::Delete(cached(&crashing)));
        assert_eq!(failure("n"), None);
        // Recovered: a pod that says nothing about its node is not listed under it.
        let recovered = of_node("m", "m-abc", unready_pod(1_000, 1_010, true));
        assert!(!cached(&recovered).child.data.matters());
        writer.apply(Event::Apply(cached(&recovered)));
        assert_eq!(failure("m"), None);
        assert!(store.controlled_by("ns", "m").is_empty());
        assert!(store.get("ns", "m-abc").is_some());
    }

    #[test]
    fn a_pods_entry_keeps_what_its_health_needs() {
        use k8s_openapi::api::core::v1::{Container, PodCondition, PodSpec};
        let now = Timestamp::from_second(1_040).unwrap();
        let full = |mut p: Pod| {
            p.metadata.namespace = Some("ns".into());
            p.metadata.labels = Some(
                [(NAME_LABEL, "n"), ("pod-template-hash", "abc")]
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .into(),
            );
            p.metadata.annotations = Some([("a".to_string(), "b".repeat(500))].into());
            p.spec = Some(PodSpec {
                containers: vec![Container {
                    name: "node".into(),
                    ..Default::default()
                }],
                ..Default::default()
            });
            let status = p.status.get_or_insert_with(Default::default);
            status.pod_ip = Some("10.0.0.1".into());
            status
                .conditions
                .get_or_insert_with(Vec::new)
                .push(PodCondition {
                    type_: "PodScheduled".into(),
                    status: "True".into(),
                    ..Default::default()
                });
            for c in status.container_statuses.iter_mut().flatten() {
                c.image = "registry.example/node:1".into();
            }
            p
        };
        let unready_since = unready_pod(1_000, 1_010, false);
        let crashing = pod(status("CrashLoopBackOff", "back-off", Some(1)));
        let creating = pod(status("ContainerCreating", "", None));
        // The spec, the other labels and annotations, the image: nothing the entry depends on.
        for p in [&unready_since, &crashing, &creating] {
            let entry = cached(&full(p.clone()));
            assert_eq!(entry.child.data, cached(p).child.data);
            assert_eq!(entry.controller.as_deref(), Some("n"));
        }
        let entry = cached(&unready_since).child;
        assert_eq!(entry.data.failure, None);
        assert_eq!(
            unready("n-abc", &entry.data, now)
                .failure
                .map(|f| f.0)
                .as_deref(),
            Some(READINESS_FAILING)
        );
        assert_eq!(
            cached(&crashing).child.data.failure.map(|f| *f),
            pod_failure(&crashing)
        );
        assert_eq!(cached(&creating).child.data, PodState::default());
    }

    #[test]
    fn image_errors_keep_the_kubelets_message_and_starting_is_no_failure() {
        let p = pod(status("ErrImageNeverPull", "image x not present", None));
        assert_eq!(
            pod_failure(&p).unwrap().1,
            "pod n-abc: container node ErrImageNeverPull: image x not present"
        );
        assert!(pod_failure(&pod(status("ContainerCreating", "", None))).is_none());
    }
}
