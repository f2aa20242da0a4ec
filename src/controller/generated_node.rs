//! GeneratedNode reconcile: a Deployment that mounts the node's code and runs its start-up
//! script, a Service for its health/metrics port, and a status (`Available`, `Progressing`,
//! `Ready`) summarising the Deployment — Argo CD does not inherit health from children.
//!
//! It needs nothing from a NodeGeneration: a GeneratedNode written by hand, or synced from Git,
//! works the same.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, Patch};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};
use tracing::Instrument;

use super::cached_node::CachedNode;
use super::compact::{self, Rollout};
use super::lean::LeanMeta;
use super::node_generation::APPLIED_HASH_ANNOTATION;
use super::{Context, Error, apply_params, apply_status, delete_ignoring_missing, ready_event};
use crate::api::{Condition, ConditionStatus, GeneratedNode, GeneratedNodeSpec};
use crate::deploy::{self, Code, DeployDefaults, child_labels};
use crate::publish::configmap::key_for;
use crate::status;

pub const CONTROLLER: &str = "generatednode";
const AVAILABLE: &str = "Available";
const PROGRESSING: &str = "Progressing";
const READY: &str = "Ready";

pub async fn reconcile(cached: Arc<CachedNode>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _running = ctx.metrics.running(CONTROLLER);
    let started = Instant::now();
    let span = tracing::info_span!(
        "reconcile",
        controller = CONTROLLER,
        namespace = cached.namespace().unwrap_or_default(),
        name = %cached.name_any(),
    );
    let gn = cached.to_object();
    let result = reconcile_inner(&gn, &ctx).instrument(span).await;
    ctx.finish(CONTROLLER, &gn, started, result.is_ok());
    result
}

/// The code source resolved for the Deployment, or why it cannot be.
enum Source {
    Ready(Code),
    Missing {
        reason: &'static str,
        message: String,
    },
}

async fn reconcile_inner(gn: &GeneratedNode, ctx: &Context) -> Result<Action, Error> {
    let ns = gn
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let name = gn.name_any();
    if ctx.nothing_to_do(&gn.metadata).await? {
        return Ok(Action::await_change());
    }
    let deployments: Api<compact::DeploymentView> = Api::namespaced(ctx.client.clone(), &ns);
    let services: Api<LeanMeta<Service>> = Api::namespaced(ctx.client.clone(), &ns);

    if !gn.spec.deploy.enabled {
        if ctx.caches.deployments.get(&ns, &name).is_some() {
            delete_ignoring_missing(&deployments, &name).await?;
        }
        if ctx.caches.services.get(&ns, &name).is_some() {
            delete_ignoring_missing(&services, &name).await?;
        }
        let conditions = vec![
            Condition::new(
                AVAILABLE,
                ConditionStatus::False,
                "DeployDisabled",
                "spec.deploy.enabled is false",
            ),
            Condition::new(
                PROGRESSING,
                ConditionStatus::False,
                "DeployDisabled",
                "spec.deploy.enabled is false",
            ),
            Condition::new(
                READY,
                ConditionStatus::True,
                "DeployDisabled",
                "nothing to run: spec.deploy.enabled is false",
            ),
        ];
        write_status(gn, ctx, conditions, None).await?;
        return Ok(Action::await_change());
    }

    if let Some(message) = runtime_refusal(&gn.spec, &ctx.defaults) {
        // Pods already running (on an earlier image) are left alone: they still work.
        let reason = "RuntimeVersionUnsupported";
        write_status(gn, ctx, not_running(reason, message), None).await?;
        return Ok(Action::await_change());
    }

    // Rollout follows the system graph: no Deployment before the nodes this one uses are
    // Ready. Once deployed, a dependency that becomes unready does not take this node down.
    let waiting = unready_dependencies(gn, ctx, &ns);
    if !waiting.is_empty() && ctx.caches.deployments.get(&ns, &name).is_none() {
        let reason = "WaitingForDependencies";
        let message = format!("waiting for {} to be Ready", waiting.join(", "));
        write_status(gn, ctx, not_running(reason, message), None).await?;
        // A dependency's status change triggers this reconcile (see `dependents`).
        return Ok(Action::await_change());
    }

    let code = match source(gn, ctx, &ns).await? {
        Source::Ready(code) => code,
        Source::Missing { reason, message } => {
            write_status(gn, ctx, not_running(reason, message), None).await?;
            // The code may still be on its way (published just after this node was created).
            return Ok(Action::requeue(Duration::from_secs(15)));
        }
    };

    let owner = gn
        .controller_owner_ref(&())
        .ok_or(Error::MissingField("metadata.uid"))?;
    let labels = child_labels(gn);
    let mut deployment = deploy::deployment(gn, code, labels.clone(), &ctx.defaults);
    let mut service = deploy::service(gn, labels);
    deployment.metadata.owner_references = Some(vec![owner.clone()]);
    service.metadata.owner_references = Some(vec![owner]);
    let hash = hash_of(&deployment)?;
    stamp(&mut deployment.metadata, hash);
    let hash = hash_of(&service)?;
    stamp(&mut service.metadata, hash);

    // The Service first: the Deployment's events trigger the next reconcile, and by then the
    // Service's own event has (almost always) reached the cache, so it is not applied twice.
    let params = apply_params();
    let service_current = ctx
        .caches
        .services
        .get(&ns, &name)
        .is_some_and(|s| s.data.applied_hash == applied_hash(&service.metadata));
    if !service_current {
        services
            .patch(&name, &params, &Patch::Apply(&service))
            .await?;
    }
    let cached = ctx.caches.deployments.get(&ns, &name);
    let rollout = match cached {
        Some(d) if d.data.applied_hash == applied_hash(&deployment.metadata) => d.data.rollout,
        _ => {
            let applied = deployments
                .patch(&name, &params, &Patch::Apply(&deployment))
                .await?;
            compact::rollout(&applied.metadata, applied.status.as_ref())
        }
    };

    let (mut conditions, ready_replicas) = summarise(&rollout, gn.spec.deploy.replicas);
    // Only a node that is not Ready needs its pods looked at.
    let ready = conditions.iter().any(|c| c.type_ == READY && c.is_true());
    let health = if ready {
        Default::default()
    } else {
        super::pod_health::health(
            &ctx.caches.pods,
            &ns,
            &name,
            k8s_openapi::jiff::Timestamp::now(),
        )
    };
    if let Some((reason, message)) = health.failure {
        // A pod that will not start says why, instead of an open-ended "rolling out".
        for c in conditions.iter_mut().filter(|c| c.type_ == READY) {
            *c = Condition::new(READY, ConditionStatus::False, &reason, message.clone());
        }
    }
    write_status(gn, ctx, conditions, Some(ready_replicas)).await?;
    // An unready pod within its grace gets no event when the grace runs out: look then. The
    // periodic re-check is the resync sweep's (`resync`).
    Ok(health
        .recheck_in
        .map_or_else(Action::await_change, Action::requeue))
}

/// The conditions of a node that gets no Deployment (yet): all three False, for one reason.
fn not_running(reason: &str, message: String) -> Vec<Condition> {
    vec![
        Condition::new(AVAILABLE, ConditionStatus::False, reason, message.clone()),
        Condition::new(PROGRESSING, ConditionStatus::False, reason, message.clone()),
        Condition::new(READY, ConditionStatus::False, reason, message),
    ]
}

/// The GeneratedNodes of `spec.dependsOn` that are not Ready (missing ones included).
fn unready_dependencies(gn: &GeneratedNode, ctx: &Context, ns: &str) -> Vec<String> {
    gn.spec
        .depends_on
        .iter()
        .filter(|name| {
            let dep = ctx
                .caches
                .generated_nodes
                .get(&ObjectRef::new(name).within(ns));
            !dep.is_some_and(|d| is_ready(&d))
        })
        .cloned()
        .collect()
}

fn is_ready(gn: &CachedNode) -> bool {
    gn.status
        .as_ref()
        .and_then(|s| s.condition(READY))
        .is_some_and(|c| c.is_true())
}

fn stamp(meta: &mut ObjectMeta, hash: String) {
    meta.annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(APPLIED_HASH_ANNOTATION.to_string(), hash);
}

/// The digest of the hash `meta` was stamped with, as the children caches keep it.
fn applied_hash(meta: &ObjectMeta) -> Option<super::children::Digest> {
    compact::annotation_digest(meta, APPLIED_HASH_ANNOTATION)
}

fn hash_of<T: serde::Serialize>(obj: &T) -> Result<String, Error> {
    Ok(hex::encode(Sha256::digest(serde_json::to_vec(obj)?)))
}

/// Why the node must not run on the operator's node image: its `spec.runtime` range excludes the
/// runtime that image carries. `None` when it fits, or when the node names an image of its own
/// (whose runtime the operator cannot know; the node checks at start-up).
fn runtime_refusal(spec: &GeneratedNodeSpec, defaults: &DeployDefaults) -> Option<String> {
    let range = spec.runtime.as_deref()?;
    if spec
        .deploy
        .image
        .as_deref()
        .is_some_and(|i| i != defaults.image)
    {
        return None;
    }
    let have = &defaults.image_runtime_version;
    match crate::runtime_compat::satisfies(have, range) {
        Ok(true) => None,
        Ok(false) => Some(format!(
            "the code needs omninode-runtime {range} (spec.runtime) but the node image {} has {have}; \
             regenerate the node with this operator, or run it on an image with a matching runtime \
             (spec.deploy.image)",
            defaults.image
        )),
        Err(e) => Some(format!("spec.runtime {range:?}: {e}")),
    }
}

/// Where the code is: a ConfigMap the operator published (its file list is in an annotation the
/// cache holds) or one written by hand (read once to map its keys back to paths).
async fn source(gn: &GeneratedNode, ctx: &Context, ns: &str) -> Result<Source, Error> {
    if let Some(git) = &gn.spec.source.git {
        return Ok(Source::Ready(Code::Git {
            repository: git.repository.clone(),
            revision: git.revision.clone(),
            path: git.path.clone(),
            shared_path: git.shared_path.clone(),
        }));
    }
    let Some(cm) = &gn.spec.source.config_map else {
        return Ok(Source::Missing {
            reason: "SourceNotSet",
            message: "spec.source names neither a ConfigMap nor a Git revision".into(),
        });
    };
    // The operator's own ConfigMaps name the module their node's spec implies.
    let cached = ctx.caches.config_maps.get(ns, &cm.name);
    let entry = deploy::entry_file(&gn.spec);
    if cached.and_then(|c| c.data.entry) == Some(super::children::digest(&entry)) {
        return Ok(Source::Ready(Code::ConfigMap {
            name: cm.name.clone(),
        }));
    }
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    match api.get_opt(&cm.name).await? {
        None => Ok(Source::Missing {
            reason: "SourceNotFound",
            message: format!(
                "ConfigMap {} (spec.source.configMap) does not exist",
                cm.name
            ),
        }),
        Some(found) => {
            let keys: Vec<String> = found
                .data
                .iter()
                .flat_map(|d| d.keys().cloned())
                .chain(found.binary_data.iter().flat_map(|d| d.keys().cloned()))
                .collect();
            Ok(entry_in(&entry, &cm.name, &keys))
        }
    }
}

/// The ConfigMap as the code source if its keys hold the package's `__main__.py`, `entry`.
fn entry_in(entry: &str, config_map: &str, keys: &[String]) -> Source {
    if keys.contains(&key_for(entry)) {
        Source::Ready(Code::ConfigMap {
            name: config_map.to_string(),
        })
    } else {
        Source::Missing {
            reason: "StartScriptMissing",
            message: format!("ConfigMap {config_map} has no {entry}"),
        }
    }
}

/// Conditions from the Deployment, with reasons of our own so the status only changes when the
/// picture does (not on every intermediate Deployment update).
pub fn summarise(rollout: &Rollout, want: i32) -> (Vec<Condition>, i32) {
    let Rollout {
        observed,
        // Pods of every ReplicaSet: more than the updated ones means old pods still serve.
        total,
        updated,
        ready,
        available,
        stalled,
    } = *rollout;
    let mut out = Vec::new();
    let counts = format!("{available}/{want} replicas available");
    let is_available = want == 0 || (available >= want && want > 0);
    out.push(if is_available {
        Condition::new(
            AVAILABLE,
            ConditionStatus::True,
            "MinimumReplicasAvailable",
            counts.clone(),
        )
    } else {
        Condition::new(
            AVAILABLE,
            ConditionStatus::False,
            "ReplicasUnavailable",
            counts.clone(),
        )
    });
    // As `kubectl rollout status` judges it: every pod updated, no old one left, and enough
    // ready (old pods that are still ready do not count).
    let rolled_out = observed && updated >= want && total <= updated && ready >= want;
    out.push(if stalled {
        Condition::new(
            PROGRESSING,
            ConditionStatus::False,
            "ProgressDeadlineExceeded",
            "the rollout made no progress within its deadline",
        )
    } else if rolled_out {
        Condition::new(
            PROGRESSING,
            ConditionStatus::False,
            "RolloutComplete",
            format!("{updated}/{want} replicas updated"),
        )
    } else {
        Condition::new(
            PROGRESSING,
            ConditionStatus::True,
            "RollingOut",
            format!("rolling out the node's code: {counts}"),
        )
    });
    out.push(if rolled_out && is_available {
        Condition::new(READY, ConditionStatus::True, "DeploymentReady", counts)
    } else if stalled {
        Condition::new(
            READY,
            ConditionStatus::False,
            "ProgressDeadlineExceeded",
            counts,
        )
    } else {
        Condition::new(READY, ConditionStatus::False, "RollingOut", counts)
    });
    (out, ready)
}

async fn write_status(
    gn: &GeneratedNode,
    ctx: &Context,
    conditions: Vec<Condition>,
    ready_replicas: Option<i32>,
) -> Result<(), Error> {
    let current = gn.status.clone().unwrap_or_default();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let mut next = current.clone();
    for mut c in conditions {
        c.observed_generation = gn.metadata.generation;
        status::set_condition(&mut next.conditions, c, Some(&now));
    }
    next.conditions.sort_by_key(|c| match c.type_.as_str() {
        AVAILABLE => 0,
        PROGRESSING => 1,
        _ => 2,
    });
    next.ready_replicas = ready_replicas;
    next.observed_generation = gn.metadata.generation;
    if next == current {
        return Ok(());
    }
    apply_status(ctx, gn, &next).await?;
    observe_deploy(ctx, gn, &current, &next, &now);
    // Events on the transitions users care about: ready, and failures other than a rollout.
    ready_event(
        ctx,
        &gn.object_ref(&()),
        status::get(&current.conditions, READY),
        status::get(&next.conditions, READY),
        |ready| ready.is_true() || ready.reason != "RollingOut",
    )
    .await;
    Ok(())
}

/// The deploy stage of a node ends when it becomes Ready: it took from the moment it stopped
/// being Ready (its rollout began), or from its creation.
fn observe_deploy(
    ctx: &Context,
    gn: &GeneratedNode,
    current: &crate::api::GeneratedNodeStatus,
    next: &crate::api::GeneratedNodeStatus,
    now: &Time,
) {
    let was = status::get(&current.conditions, READY);
    if was.is_some_and(Condition::is_true)
        || !status::get(&next.conditions, READY).is_some_and(Condition::is_true)
    {
        return;
    }
    let since = was
        .and_then(|c| c.last_transition_time.as_ref())
        .or(gn.metadata.creation_timestamp.as_ref());
    if let Some(since) = since {
        let took = now.0.duration_since(since.0).as_secs_f64().max(0.0);
        let trace_id = gn
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(crate::api::ANNOTATION_TRACEPARENT))
            .and_then(|p| p.split('-').nth(1))
            .map(str::to_string);
        ctx.metrics.stage("deploy", took, trace_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::GeneratedNodeStatus;
    use crate::controller::dependents::Dependents;
    use crate::controller::fixtures::{CacheWriters, FakeApi, context};
    use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus};

    #[test]
    fn a_rollout_whose_new_pod_is_unready_is_not_ready_while_the_old_pod_serves() {
        let deployment = |replicas: i32, updated: i32, ready: i32| {
            let mut d = Deployment::default();
            d.metadata.generation = Some(2);
            d.status = Some(DeploymentStatus {
                observed_generation: Some(2),
                replicas: Some(replicas),
                updated_replicas: Some(updated),
                ready_replicas: Some(ready),
                available_replicas: Some(ready),
                ..Default::default()
            });
            d
        };
        let ready_of = |d: &Deployment| {
            let (conditions, _) = summarise(&compact::rollout(&d.metadata, d.status.as_ref()), 1);
            let ready = status::get(&conditions, READY).cloned().unwrap();
            (ready.status, ready.reason)
        };
        // The old pod is ready, the updated one is not: still rolling out.
        assert_eq!(
            ready_of(&deployment(2, 1, 1)),
            (ConditionStatus::False, "RollingOut".to_string())
        );
        // The old pod is gone and the updated one ready.
        assert_eq!(ready_of(&deployment(1, 1, 1)).0, ConditionStatus::True);
    }

    fn gn() -> GeneratedNode {
        let mut gn: GeneratedNode = serde_json::from_value(serde_json::json!({
            "apiVersion": "codegen.omninode.ai/v1alpha1", "kind": "GeneratedNode",
            "metadata": {"name": "hello-effect", "namespace": "ns", "uid": "uid-gn", "generation": 1},
            "spec": {"nodeType": "Effect", "domain": "api", "serviceName": "hello",
                     "source": {"configMap": {"name": "hello-code"}}, "contentHash": "h1"}
        }))
        .unwrap();
        gn.metadata.labels = Some(BTreeMap::from([(
            "app.kubernetes.io/instance".to_string(),
            "argo-app".to_string(),
        )]));
        gn
    }

    fn hand_written_code(fake: &FakeApi) {
        fake.put(
            "/api/v1/namespaces/ns/configmaps/hello-code",
            serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "hello-code", "namespace": "ns"},
                "data": {"node_api_hello_effect-__main__.py": "print()",
                         "node_api_hello_effect-node.py": "x = 1"}}),
        );
        fake.put(
            "/apis/codegen.omninode.ai/v1alpha1/namespaces/ns/generatednodes/hello-effect",
            serde_json::to_value(gn()).unwrap(),
        );
    }

    /// The cached entry of the code ConfigMap `hello-code`, naming `entry` as its module.
    fn cached_code(entry: &str) -> crate::controller::children::Entry<compact::CodeConfigMap> {
        compact::config_map(&ObjectMeta {
            name: Some("hello-code".into()),
            namespace: Some("ns".into()),
            annotations: Some(BTreeMap::from([(
                super::super::node_generation::ENTRY_ANNOTATION.to_string(),
                entry.to_string(),
            )])),
            ..Default::default()
        })
    }

    #[tokio::test]
    async fn a_cached_code_config_map_naming_the_specs_module_is_not_read_again() {
        let read = "GET /api/v1/namespaces/ns/configmaps/hello-code";
        let requests = |fake: &FakeApi| -> Vec<String> {
            fake.requests()
                .iter()
                .map(|r| format!("{} {}", r.method, r.path()))
                .collect()
        };
        let fake = FakeApi::default();
        hand_written_code(&fake);
        let (ctx, mut caches) = context(&fake);
        let module = deploy::entry_file(&gn().spec);
        CacheWriters::apply(&mut caches.config_maps, cached_code(&module));
        reconcile(Arc::new(CachedNode::from(gn())), ctx.clone())
            .await
            .unwrap();
        assert!(!requests(&fake).iter().any(|r| r == read));
        assert!(
            fake.writes()
                .iter()
                .any(|r| r.path().ends_with("deployments/hello-effect"))
        );
        // A module the spec does not imply (written by another version): read the ConfigMap.
        let fake = FakeApi::default();
        hand_written_code(&fake);
        let (ctx, mut caches) = context(&fake);
        CacheWriters::apply(&mut caches.config_maps, cached_code("other/__main__.py"));
        reconcile(Arc::new(CachedNode::from(gn())), ctx.clone())
            .await
            .unwrap();
        assert!(requests(&fake).iter().any(|r| r == read));
    }

    #[tokio::test]
    async fn a_hand_written_node_gets_a_deployment_a_service_and_a_status() {
        let fake = FakeApi::default();
        hand_written_code(&fake);
        let (ctx, mut caches) = context(&fake);
        let mut gn = gn();
        reconcile(Arc::new(CachedNode::from(gn.clone())), ctx.clone())
            .await
            .unwrap();
        let writes: Vec<String> = fake
            .writes()
            .iter()
            .map(|r| format!("{} {}", r.method, r.path()))
            .collect();
        assert_eq!(
            writes,
            vec![
                "PATCH /api/v1/namespaces/ns/services/hello-effect",
                "PATCH /apis/apps/v1/namespaces/ns/deployments/hello-effect",
                "PATCH /apis/codegen.omninode.ai/v1alpha1/namespaces/ns/generatednodes/hello-effect/status",
            ]
        );
        let d: Deployment = serde_json::from_value(fake.writes()[1].body.clone()).unwrap();
        let pod = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let volume = pod.volumes.as_ref().unwrap()[0]
            .config_map
            .as_ref()
            .unwrap();
        assert_eq!(volume.name, "hello-code");
        let command = pod.containers[0].command.clone().unwrap();
        assert_eq!(
            command[2..5],
            [
                "omninode_runtime.launch",
                deploy::CODE_DIR,
                "node_api_hello_effect"
            ]
        );
        assert_eq!(
            d.metadata.owner_references.as_ref().unwrap()[0].uid,
            "uid-gn"
        );
        assert!(
            !d.metadata
                .labels
                .as_ref()
                .unwrap()
                .contains_key("app.kubernetes.io/instance")
        );
        let status: GeneratedNodeStatus =
            serde_json::from_value(fake.writes()[2].body["status"].clone()).unwrap();
        let ready = status::get(&status.conditions, READY).unwrap();
        assert_eq!(
            (ready.status, ready.reason.as_str()),
            (ConditionStatus::False, "RollingOut")
        );

        // The Deployment becomes available: Ready flips, with an Event; then nothing more.
        let mut applied = d.clone();
        applied.metadata.generation = Some(1);
        applied.status = Some(DeploymentStatus {
            observed_generation: Some(1),
            replicas: Some(1),
            ready_replicas: Some(1),
            available_replicas: Some(1),
            updated_replicas: Some(1),
            ..Default::default()
        });
        // Cached as the operator caches it.
        CacheWriters::apply(
            &mut caches.deployments,
            compact::deployment(&applied.metadata, applied.status.as_ref()),
        );
        let svc: Service = serde_json::from_value(fake.writes()[0].body.clone()).unwrap();
        CacheWriters::apply(&mut caches.services, compact::service(&svc.metadata));
        gn.status = Some(status);
        fake.clear();
        reconcile(Arc::new(CachedNode::from(gn.clone())), ctx.clone())
            .await
            .unwrap();
        let writes = fake.writes();
        assert_eq!(writes.len(), 2, "{writes:#?}");
        assert!(writes[0].path().ends_with("/status"));
        assert_eq!(writes[1].body["reason"], "DeploymentReady");
        gn.status = serde_json::from_value(writes[0].body["status"].clone()).unwrap();
        fake.clear();
        reconcile(Arc::new(CachedNode::from(gn)), ctx)
            .await
            .unwrap();
        assert!(fake.writes().is_empty(), "{:#?}", fake.writes());
    }

    #[tokio::test]
    async fn missing_code_is_a_reason_and_disabled_deploys_remove_the_deployment() {
        let fake = FakeApi::default();
        let (ctx, mut caches) = context(&fake);
        fake.put(
            "/apis/codegen.omninode.ai/v1alpha1/namespaces/ns/generatednodes/hello-effect",
            serde_json::to_value(gn()).unwrap(),
        );
        reconcile(Arc::new(CachedNode::from(gn())), ctx.clone())
            .await
            .unwrap();
        let status: GeneratedNodeStatus =
            serde_json::from_value(fake.writes()[0].body["status"].clone()).unwrap();
        assert_eq!(
            status::get(&status.conditions, READY).unwrap().reason,
            "SourceNotFound"
        );

        let mut disabled = gn();
        disabled.spec.deploy.enabled = false;
        let mut d = Deployment::default();
        d.metadata.name = Some("hello-effect".into());
        d.metadata.namespace = Some("ns".into());
        CacheWriters::apply(
            &mut caches.deployments,
            compact::deployment(&d.metadata, None),
        );
        fake.clear();
        reconcile(Arc::new(CachedNode::from(disabled)), ctx)
            .await
            .unwrap();
        assert_eq!(fake.writes()[0].method, "DELETE");
        assert!(
            fake.writes()[0]
                .path()
                .ends_with("deployments/hello-effect")
        );
    }

    /// Store `node` in the fake API server, reconcile it, check that no Deployment was
    /// applied, and return the `Ready` condition it was given instead.
    async fn reconciled_without_deployment(
        fake: &FakeApi,
        ctx: &Arc<Context>,
        node: &GeneratedNode,
    ) -> Condition {
        fake.put(
            "/apis/codegen.omninode.ai/v1alpha1/namespaces/ns/generatednodes/hello-effect",
            serde_json::to_value(node).unwrap(),
        );
        reconcile(Arc::new(CachedNode::from(node.clone())), ctx.clone())
            .await
            .unwrap();
        let writes = fake.writes();
        assert!(!deployed(fake), "{writes:#?}");
        let status: GeneratedNodeStatus =
            serde_json::from_value(writes[0].body["status"].clone()).unwrap();
        status::get(&status.conditions, READY).unwrap().clone()
    }

    fn deployed(fake: &FakeApi) -> bool {
        fake.writes()
            .iter()
            .any(|w| w.path().contains("deployments"))
    }

    #[tokio::test]
    async fn a_runtime_range_the_node_image_misses_is_a_reason_not_a_deployment() {
        let fake = FakeApi::default();
        let (ctx, _caches) = context(&fake);
        hand_written_code(&fake);
        let mut node = gn();
        node.spec.runtime = Some(">=9.0.0,<10.0.0".into());
        let ready = reconciled_without_deployment(&fake, &ctx, &node).await;
        assert_eq!(ready.reason, "RuntimeVersionUnsupported");
        assert!(
            ready.message.contains(">=9.0.0,<10.0.0"),
            "{}",
            ready.message
        );

        // On an image of its own the node checks for itself: the operator deploys it.
        node.spec.deploy.image = Some("registry.example/custom:1".into());
        fake.clear();
        reconcile(Arc::new(CachedNode::from(node)), ctx)
            .await
            .unwrap();
        assert!(deployed(&fake), "{:#?}", fake.writes());
    }

    #[tokio::test]
    async fn a_node_waits_for_its_dependencies_to_be_ready_before_its_deployment() {
        let fake = FakeApi::default();
        let (ctx, mut caches) = context(&fake);
        hand_written_code(&fake);
        let mut node = gn();
        node.spec.depends_on = vec!["store-effect".into()];
        let ready = reconciled_without_deployment(&fake, &ctx, &node).await;
        assert_eq!(
            (ready.reason.as_str(), ready.message.as_str()),
            (
                "WaitingForDependencies",
                "waiting for store-effect to be Ready"
            )
        );

        // The dependency becomes Ready: it names this node as its dependent, and this node
        // gets its Deployment.
        let mut dep = gn();
        dep.metadata.name = Some("store-effect".into());
        dep.status = Some(GeneratedNodeStatus {
            conditions: vec![Condition::new(
                READY,
                ConditionStatus::True,
                "DeploymentReady",
                "1/1",
            )],
            ..Default::default()
        });
        CacheWriters::apply(&mut caches.generated_nodes, CachedNode::from(dep.clone()));
        CacheWriters::apply(&mut caches.generated_nodes, CachedNode::from(node.clone()));
        let (dep, node) = (CachedNode::from(dep), CachedNode::from(node));
        let mut dependents = Dependents::default();
        dependents.apply(&dep);
        dependents.apply(&node);
        assert_eq!(
            dependents.of("ns", "store-effect"),
            [ObjectRef::from_obj(&node)]
        );
        fake.clear();
        reconcile(Arc::new(node), ctx).await.unwrap();
        assert!(deployed(&fake), "{:#?}", fake.writes());
    }
}
