//! Why a GeneratedNode's pods cannot run, from their container states: the kubelet's own reason
//! (`CrashLoopBackOff`, `ImagePullBackOff`, `ErrImageNeverPull`, …) becomes the node's `Ready`
//! reason, so a node that will not start says so instead of "rolling out" until the
//! Deployment's progress deadline.

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::ResourceExt;
use kube::runtime::reflector::Store;

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

/// The label that ties a node's pods to it (its Deployment's selector).
const NAME_LABEL: &str = "app.kubernetes.io/name";

/// A failing pod of GeneratedNode `name` in `ns`: the kubelet's reason and a message naming the
/// pod, the container and its last exit. Pods are looked at in name order, so the answer is
/// stable while nothing changes.
pub fn failure(pods: &Store<Pod>, ns: &str, name: &str) -> Option<(String, String)> {
    let mut mine: Vec<_> = pods
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(ns))
        .filter(|p| p.labels().get(NAME_LABEL).map(String::as_str) == Some(name))
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    mine.sort_by_key(|p| p.name_any());
    mine.iter().find_map(|p| pod_failure(p))
}

fn pod_failure(pod: &Pod) -> Option<(String, String)> {
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
        ContainerState, ContainerStateTerminated, ContainerStateWaiting, PodStatus,
    };

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
