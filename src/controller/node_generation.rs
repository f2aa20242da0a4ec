//! NodeGeneration reconcile: resolve the PRD, run the core (the same code `generate` uses),
//! publish one ConfigMap per node, create or update one GeneratedNode per node, delete the ones
//! no longer planned, and record the codegen state machine in status.
//!
//! Writes happen only when something differs from the caches: an unchanged, settled object is
//! recognised by `status.inputHash` and intact children, and costs zero write requests.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::api::{Api, Patch};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::cached_generation::CachedGeneration;
use super::children::digest;
use super::lean::{LeanMeta, NodeGenerationView};
use super::metrics::{NodeLabels, domain_label};
use super::{
    Context, Error, apply_params, apply_status, compact, delete_ignoring_missing, git_output,
    ready_event,
};
use crate::api::Condition;
use crate::api::{
    ConditionStatus, ConfigMapSource, GeneratedNode, GitOutput, NodeGeneration, NodeGenerationSpec,
    NodeGenerationStatus, NodeSource, OutputStatus,
};
use crate::codegen::{self, Identity};
use crate::manifest::Rejected;
use crate::pipeline::{self, Outcome};
use crate::publish::configmap;
use crate::render::RenderedShared;
use crate::status::{self, ANALYZED, DEPLOYED, GENERATED, PUBLISHED, READY, VALIDATED};
use crate::trace::GenerationTrace;

pub const CONTROLLER: &str = "nodegeneration";
/// Hash of the spec the operator last applied to a child; a child whose own spec no longer
/// hashes to it was edited by someone else and is re-applied.
pub const APPLIED_HASH_ANNOTATION: &str = "codegen.omninode.ai/applied-hash";
/// The file a code ConfigMap's node starts from (`<package>/__main__.py`): lets the GeneratedNode
/// controller check the code from its metadata-only cache, without reading the ConfigMap.
pub const ENTRY_ANNOTATION: &str = "codegen.omninode.ai/entry";

/// Ready reasons that only a change of the spec (or of the PRD) can clear: retrying them would
/// give the same answer, so the controller waits for a change instead.
const TERMINAL_REASONS: [&str; 15] = [
    "PrdEmpty",
    "PrdTooLarge",
    "PrdNoContent",
    "PrdSourceNotFound",
    "PrdKeyNotFound",
    "InvalidSpec",
    "QualityGateFailed",
    "RenderFailed",
    "NodeTooLarge",
    "ConfigMapKeyCollision",
    "UnsupportedFileName",
    "InvalidServiceName",
    "InvalidDomain",
    "TooManyNodes",
    "InvalidMessageTemplate",
];

/// Name of the ConfigMap holding a node's code.
pub fn code_config_map_name(node: &str) -> String {
    format!("{node}-code")
}

/// NodeGenerations whose `prdFrom` or `handlers` names this ConfigMap (the watch mapper): an
/// edit of the user's PRD or handlers regenerates at once.
pub fn referencing(
    store: &Store<CachedGeneration>,
    cm: &LeanMeta<ConfigMap>,
) -> Vec<ObjectRef<CachedGeneration>> {
    let ns = cm.namespace();
    let name = cm.name_any();
    store
        .state()
        .iter()
        .filter(|ng| ng.namespace() == ns)
        .filter(|ng| {
            let prd = ng
                .spec
                .prd_from
                .as_ref()
                .map(|f| &f.config_map_key_ref.name);
            let handlers = ng.spec.handlers.as_ref().map(|h| &h.config_map.name);
            prd == Some(&name) || handlers == Some(&name)
        })
        .map(|ng| ObjectRef::from_obj(ng.as_ref()))
        .collect()
}

pub async fn reconcile(cached: Arc<CachedGeneration>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _running = ctx.metrics.running(CONTROLLER);
    let started = Instant::now();
    let span = tracing::info_span!(
        "reconcile",
        controller = CONTROLLER,
        namespace = cached.namespace().unwrap_or_default(),
        name = %cached.name_any(),
        generation = cached.metadata.generation.unwrap_or(0),
    );
    let ng = cached.to_object();
    let result = reconcile_inner(&ng, &ctx).instrument(span).await;
    ctx.finish(CONTROLLER, &ng, started, result.is_ok());
    result
}

/// What the reconcile wants the status to say beyond the core's conditions.
struct Settled {
    conditions: Vec<Condition>,
    outcome: Option<Outcome>,
    output: OutputStatus,
    requeue: Action,
}

impl Settled {
    /// A generation that went all the way: `Published`, `Deployed` and `Ready` True with these
    /// reasons and messages (looked at again by the resync sweep).
    fn succeeded(
        mut conditions: Vec<Condition>,
        outcome: Outcome,
        [published, deployed, ready]: [(&str, String); 3],
        output: OutputStatus,
    ) -> Self {
        for (stage, (reason, message)) in
            [(PUBLISHED, published), (DEPLOYED, deployed), (READY, ready)]
        {
            conditions.push(Condition::new(
                stage,
                ConditionStatus::True,
                reason,
                message,
            ));
        }
        Settled {
            conditions,
            outcome: Some(outcome),
            output,
            requeue: Action::await_change(),
        }
    }

    /// A generation stopped by a reason only a spec change can clear.
    fn stopped(conditions: Vec<Condition>, outcome: Outcome) -> Self {
        Settled {
            conditions,
            outcome: Some(outcome),
            output: OutputStatus::default(),
            requeue: Action::await_change(),
        }
    }
}

async fn reconcile_inner(cached: &NodeGeneration, ctx: &Context) -> Result<Action, Error> {
    let ns = cached
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let name = cached.name_any();
    if ctx.nothing_to_do(&cached.metadata).await? {
        return Ok(Action::await_change());
    }
    if cached.spec.suspend {
        tracing::debug!("suspended; nothing to do");
        return Ok(Action::await_change());
    }
    let mut prd = resolve_prd(cached, ctx, &ns).await?;
    let mut handlers = resolve_handlers(cached, ctx, &ns).await?;
    let input_hash = input_hash(cached, &prd, &handlers, ctx.renderer.fingerprint());
    if let Some(action) = settled_action(cached, &input_hash, ctx, &ns).await? {
        return Ok(action);
    }

    // This generation must run, from the object as it is now: the cache dropped its inline
    // PRD and the parts of its status that only a run or a status write needs.
    let api: Api<NodeGenerationView> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(mut full) = api.get_opt(&name).await?.map(NodeGeneration::from) else {
        return Ok(Action::await_change());
    };
    forget_cached_digest(&mut full);
    if matches!(&prd, Ok(p) if p.text.is_none())
        || full.spec.prd != cached.spec.prd
        || full.spec.prd_from != cached.spec.prd_from
    {
        prd = resolve_prd(&full, ctx, &ns).await?;
    }
    if full.spec.handlers != cached.spec.handlers {
        handlers = resolve_handlers(&full, ctx, &ns).await?;
    }
    let input_hash = self::input_hash(&full, &prd, &handlers, ctx.renderer.fingerprint());
    let ng = &full;
    let generation = ng.metadata.generation.unwrap_or(0);
    let current = ng.status.clone().unwrap_or_default();

    let settled = match (prd, handlers) {
        (Err(rejected), _) => Settled {
            conditions: failure(ANALYZED, &rejected),
            outcome: None,
            output: OutputStatus::default(),
            requeue: Action::await_change(),
        },
        // The handlers' ConfigMap may be created after the NodeGeneration: look again soon.
        (Ok(_), Err(rejected)) => Settled {
            conditions: failure(ANALYZED, &rejected),
            outcome: None,
            output: OutputStatus::default(),
            requeue: Action::requeue(Duration::from_secs(30)),
        },
        (Ok(prd), Ok(handlers)) => {
            // Read just above; absent only if the server's copy has no PRD either.
            let Some(text) = prd.text else {
                return Err(Error::MissingField("spec.prd"));
            };
            let run = Run {
                generation,
                prd: &text,
                handlers: handlers.as_ref(),
            };
            let trace = trace_of(ng);
            let correlation_id = pipeline::correlation_id(&ns, &name, generation, &ng.spec);
            let span = tracing::info_span!(
                "generation",
                trace_id = %trace.trace_id(),
                correlation_id = %correlation_id,
            );
            // Err only when spans are not recorded (no OTLP endpoint): nothing to parent then.
            let _ = span.set_parent(trace.context());
            trace
                .scope(generate_and_publish(ng, ctx, &ns, &name, run).instrument(span))
                .await?
        }
    };
    write_status(
        ng,
        ctx,
        &current,
        settled.conditions,
        settled.outcome,
        settled.output,
        input_hash,
    )
    .await?;
    Ok(settled.requeue)
}

/// What to do when this generation's inputs are the ones its status was made from: refresh a
/// Ready one's node states, or wait for a change after a terminal failure. `None`: it must run.
async fn settled_action(
    ng: &NodeGeneration,
    input_hash: &str,
    ctx: &Context,
    ns: &str,
) -> Result<Option<Action>, Error> {
    let Some(current) = &ng.status else {
        return Ok(None);
    };
    if current.observed_generation != ng.metadata.generation
        || current.input_hash.as_deref() != Some(input_hash)
    {
        return Ok(None);
    }
    match status::get(&current.conditions, READY) {
        Some(c)
            if (c.is_true() || c.reason == NODE_FAILING) && children_intact(ng, current, ctx) =>
        {
            refresh_nodes(ng, ctx, ns, current).await?;
            Ok(Some(Action::await_change()))
        }
        Some(c) if !c.is_true() && TERMINAL_REASONS.contains(&c.reason.as_str()) => {
            Ok(Some(Action::await_change()))
        }
        _ => Ok(None),
    }
}

/// What one generation runs on: the object's generation, its PRD and the user's handlers.
struct Run<'a> {
    generation: i64,
    prd: &'a str,
    handlers: Option<&'a BTreeMap<String, String>>,
}

/// Run the core and, when it succeeds, publish the nodes.
async fn generate_and_publish(
    ng: &NodeGeneration,
    ctx: &Context,
    ns: &str,
    name: &str,
    run: Run<'_>,
) -> Result<Settled, Error> {
    let Run {
        generation,
        prd,
        handlers,
    } = run;
    let identity = Identity {
        namespace: ns,
        name,
        generation,
        session: ng.uid().unwrap_or_else(|| name.to_string()),
    };
    let started = std::time::Instant::now();
    let outcome = match codegen::run(
        &ctx.renderer,
        &identity,
        &ng.spec,
        prd,
        ctx.intelligence.as_ref(),
    )
    .await
    {
        Ok(o) => {
            let m = &ctx.metrics;
            m.generation_seconds
                .observe(started.elapsed().as_secs_f64());
            m.stage("analysis", o.stage_seconds.analysis, None);
            if o.plan.is_some() {
                m.stage("render", o.stage_seconds.render, None);
            }
            if !o.nodes.is_empty() {
                m.stage("quality", o.stage_seconds.quality, None);
            }
            for node in &o.nodes {
                m.node_quality
                    .get_or_create(&NodeLabels {
                        node_type: node.planned.node_type.as_str().to_string(),
                        domain: domain_label(&node.planned.domain),
                    })
                    .observe(node.report.overall);
            }
            o
        }
        // `intelligence.mode: Required` and the service did not answer: try again later; with
        // no broker configured at all, only a restart or a spec change can help.
        Err(rejected) => {
            let requeue = if rejected.reason == codegen::INTELLIGENCE_NOT_CONFIGURED {
                Action::await_change()
            } else {
                Action::requeue(Duration::from_secs(30))
            };
            return Ok(Settled {
                conditions: failure(ANALYZED, &rejected),
                outcome: None,
                output: OutputStatus::default(),
                requeue,
            });
        }
    };
    let mut conditions = outcome.conditions.clone();
    if let Some(f) = &outcome.failure {
        let rejected = Rejected {
            reason: f.reason.clone(),
            message: f.message.clone(),
        };
        conditions.extend(blocked_after(f.condition, &rejected));
        return Ok(Settled::stopped(conditions, outcome));
    }
    let publishing = std::time::Instant::now();
    if let Some(git) = &ng.spec.output.git {
        let settled = publish_to_git(ng, ctx, ns, name, git, conditions, outcome)
            .instrument(tracing::info_span!("publish", output = "git"))
            .await;
        ctx.metrics
            .stage("publish", publishing.elapsed().as_secs_f64(), None);
        return settled;
    }
    let mut outcome = outcome;
    let mut taken = 0;
    if let Some(handlers) = handlers {
        for node in &mut outcome.nodes {
            taken += configmap::overlay_user_files(&mut node.rendered, handlers).len();
        }
    }

    // Build every child first: a node that cannot be published stops the whole generation
    // before anything is written.
    let owner = ng
        .controller_owner_ref(&())
        .ok_or(Error::MissingField("metadata.uid"))?;
    let mut children = Vec::new();
    for node in &outcome.nodes {
        match children_of(ng, ns, name, &owner, node, outcome.shared.as_ref()) {
            Ok(c) => children.push(c),
            Err(e) => {
                let rejected = Rejected {
                    reason: e.reason().to_string(),
                    message: e.to_string(),
                };
                conditions.extend(failure(PUBLISHED, &rejected));
                return Ok(Settled::stopped(conditions, outcome));
            }
        }
    }

    apply_children(ng, ctx, ns, name, &children)
        .instrument(tracing::info_span!("publish", output = "configmap"))
        .await?;
    ctx.metrics
        .stage("publish", publishing.elapsed().as_secs_f64(), None);

    let cm_names: Vec<String> = children
        .iter()
        .filter_map(|(cm, _)| cm.metadata.name.clone())
        .collect();
    let gn_names: Vec<String> = children.iter().map(|(_, gn)| gn.name_any()).collect();
    let deployed = deployed_message(&gn_names, ng.spec.deploy.enabled);
    let lowest = outcome
        .nodes
        .iter()
        .map(|n| n.report.overall)
        .fold(1.0f64, f64::min);
    let ready = ready_message(outcome.nodes.len(), lowest);
    let mut published = format!("code published in ConfigMap(s) {}", cm_names.join(", "));
    if let Some(source) = &ng.spec.handlers {
        published.push_str(&format!(
            "; {taken} handler module(s) from ConfigMap {}",
            source.config_map.name
        ));
    }
    Ok(Settled::succeeded(
        conditions,
        outcome,
        [
            ("ConfigMapsApplied", published),
            ("GeneratedNodesApplied", deployed),
            ("GenerationSucceeded", ready),
        ],
        OutputStatus {
            config_maps: cm_names,
            git: None,
        },
    ))
}

/// The trace of the object's current generation (its name stands in for a UID it lacks only in
/// unit tests).
fn trace_of(ng: &NodeGeneration) -> GenerationTrace {
    GenerationTrace::of(
        &ng.uid().unwrap_or_else(|| ng.name_any()),
        ng.metadata.generation.unwrap_or(0),
    )
}

/// Apply the code ConfigMaps and GeneratedNodes that changed, and delete those no longer planned.
async fn apply_children(
    ng: &NodeGeneration,
    ctx: &Context,
    ns: &str,
    name: &str,
    children: &[(ConfigMap, GeneratedNode)],
) -> Result<(), Error> {
    let params = apply_params();
    let cms: Api<LeanMeta<ConfigMap>> = Api::namespaced(ctx.client.clone(), ns);
    let gns: Api<LeanMeta<GeneratedNode>> = Api::namespaced(ctx.client.clone(), ns);
    for (cm, gn) in children {
        let cm_name = cm.metadata.name.clone().unwrap_or_default();
        if !config_map_current(ctx, ns, cm) {
            cms.patch(&cm_name, &params, &Patch::Apply(cm)).await?;
        }
        let gn_name = gn.name_any();
        if !generated_node_current(ctx, ns, gn)? {
            gns.patch(&gn_name, &params, &Patch::Apply(gn)).await?;
        }
    }
    delete_unplanned(ng, ctx, ns, name, children).await
}

/// Git output: commit and push instead of applying children (those of an earlier ConfigMap
/// output are deleted; Git holds the nodes now).
async fn publish_to_git(
    ng: &NodeGeneration,
    ctx: &Context,
    ns: &str,
    name: &str,
    git: &GitOutput,
    mut conditions: Vec<Condition>,
    outcome: Outcome,
) -> Result<Settled, Error> {
    delete_unplanned(ng, ctx, ns, name, &[]).await?;
    match git_output::publish(ng, ctx, ns, git, &outcome.nodes, outcome.shared.as_ref()).await? {
        Ok(landed) => {
            ctx.metrics.git_push(if landed.reason == "Pushed" {
                "pushed"
            } else {
                "no_changes"
            });
            if landed.reason == "Pushed" && !landed.orphans.is_empty() {
                orphaned_handlers_event(ctx, ng, &landed.orphans).await;
            }
            let deployed = format!(
                "GeneratedNode manifests committed under {}/manifests; Argo CD (or kubectl apply) deploys them",
                landed.status.path
            );
            let ready = format!(
                "{} node(s) generated and committed at {}",
                outcome.nodes.len(),
                landed.status.commit
            );
            Ok(Settled::succeeded(
                conditions,
                outcome,
                [
                    (landed.reason, landed.message),
                    ("CommittedForGitOps", deployed),
                    ("GenerationSucceeded", ready),
                ],
                OutputStatus {
                    config_maps: Vec::new(),
                    git: Some(landed.status),
                },
            ))
        }
        Err(not) => {
            ctx.metrics.git_push("failed");
            conditions.extend(failure(PUBLISHED, &not.rejected));
            Ok(Settled {
                conditions,
                outcome: Some(outcome),
                output: OutputStatus::default(),
                requeue: not.retry.map_or_else(Action::await_change, Action::requeue),
            })
        }
    }
}

/// A Warning Event naming the user's handler modules that no operation routes to any more: the
/// operator keeps them, and a human decides.
async fn orphaned_handlers_event(ctx: &Context, ng: &NodeGeneration, orphans: &[String]) {
    let event = kube::runtime::events::Event {
        type_: kube::runtime::events::EventType::Warning,
        reason: "OrphanedHandlers".into(),
        note: Some(super::truncate(
            &format!(
                "kept {} handler module(s) whose operation is no longer in the PRD: {}",
                orphans.len(),
                orphans.join(", ")
            ),
            1000,
        )),
        action: "Publish".into(),
        secondary: None,
    };
    if let Err(e) = ctx.events.publish(&event, &ng.object_ref(&())).await {
        tracing::warn!(error = %e, "could not record an event");
    }
}

/// The user's handler modules (`spec.handlers`), or why they cannot be had.
async fn resolve_handlers(
    ng: &NodeGeneration,
    ctx: &Context,
    ns: &str,
) -> Result<Result<Option<BTreeMap<String, String>>, Rejected>, Error> {
    let Some(source) = &ng.spec.handlers else {
        return Ok(Ok(None));
    };
    let name = &source.config_map.name;
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    Ok(match api.get_opt(name).await? {
        Some(cm) => Ok(Some(cm.data.unwrap_or_default())),
        None => Err(Rejected {
            reason: "HandlersSourceNotFound".into(),
            message: format!("ConfigMap {name} (spec.handlers.configMap) does not exist"),
        }),
    })
}

/// Set, in the operator's cache only, to the SHA-256 of an inline PRD whose text the cache
/// dropped: the text is read again only when the generation must run.
pub const CACHED_PRD_DIGEST: &str = "codegen.omninode.ai/cached-prd-sha256";

/// Keep of a NodeGeneration what a reconcile reads to decide that a generation is settled:
/// its inline PRD becomes a digest (PRDs are most of a NodeGeneration's size), and its status
/// loses what only a run or a status write needs (the analysis, the list of ConfigMaps, the
/// trace id, the stage conditions before `Deployed`, the system's titles and edges). Both read
/// the object from the API server first. What a settled generation's refresh compares stays:
/// `Deployed`, `Ready`, the nodes and their states.
pub fn trim_cached(ng: &mut NodeGeneration) {
    forget_cached_digest(ng);
    if let Some(text) = ng.spec.prd.take() {
        ng.metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(CACHED_PRD_DIGEST.into(), sha256_hex(&text));
    }
    if let Some(status) = ng.status.as_mut() {
        status.analysis = None;
        status.trace_id = None;
        if let Some(output) = status.output.as_mut() {
            output.config_maps = Vec::new();
        }
        status
            .conditions
            .retain(|c| c.type_ == DEPLOYED || c.type_ == READY);
        for node in status.system.iter_mut().flat_map(|s| s.nodes.iter_mut()) {
            node.title = String::new();
            node.uses = Vec::new();
            node.guessed = Vec::new();
        }
    }
}

/// Drop an annotation of that name that came from the API server: set by a user, it would
/// stand for a PRD that is not there.
fn forget_cached_digest(ng: &mut NodeGeneration) {
    if let Some(annotations) = ng.metadata.annotations.as_mut() {
        annotations.remove(CACHED_PRD_DIGEST);
    }
}

/// The inline PRD's SHA-256, from its text or from the digest the cache kept.
fn inline_prd_digest(ng: &NodeGeneration) -> Option<String> {
    match &ng.spec.prd {
        Some(text) => Some(sha256_hex(text)),
        None => annotation(&ng.metadata, CACHED_PRD_DIGEST).map(str::to_string),
    }
}

fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// A generation's PRD: its digest always, its text unless the cache dropped it (inline PRDs).
struct Prd {
    digest: String,
    text: Option<String>,
}

impl Prd {
    fn text(text: String) -> Self {
        Prd {
            digest: sha256_hex(&text),
            text: Some(text),
        }
    }
}

/// The PRD, or why there is none (a terminal, user-facing reason).
async fn resolve_prd(
    ng: &NodeGeneration,
    ctx: &Context,
    ns: &str,
) -> Result<Result<Prd, Rejected>, Error> {
    let rejected = |reason: &str, message: String| {
        Ok(Err(Rejected {
            reason: reason.to_string(),
            message,
        }))
    };
    match (inline_prd_digest(ng), &ng.spec.prd_from) {
        (Some(digest), None) => Ok(Ok(Prd {
            digest,
            text: ng.spec.prd.clone(),
        })),
        (None, Some(from)) => {
            let key = &from.config_map_key_ref;
            let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
            match api.get_opt(&key.name).await? {
                None => rejected(
                    "PrdSourceNotFound",
                    format!("ConfigMap {} (spec.prdFrom) does not exist", key.name),
                ),
                Some(mut cm) => match cm.data.as_mut().and_then(|d| d.remove(&key.key)) {
                    Some(text) => Ok(Ok(Prd::text(text))),
                    None => rejected(
                        "PrdKeyNotFound",
                        format!("ConfigMap {} has no key {}", key.name, key.key),
                    ),
                },
            }
        }
        _ => rejected(
            "InvalidSpec",
            "exactly one of spec.prd and spec.prdFrom must be set".to_string(),
        ),
    }
}

/// What a generation's status was made from: the spec, the PRD and handlers it resolved to,
/// the templates and this operator's version. The same whether or not the cache dropped the
/// PRD's text.
fn input_hash(
    ng: &NodeGeneration,
    prd: &Result<Prd, Rejected>,
    handlers: &Result<Option<BTreeMap<String, String>>, Rejected>,
    fingerprint: &str,
) -> String {
    // The spec without the inline PRD: the PRD's digest stands for it below.
    let bare = NodeGenerationSpec {
        prd: None,
        ..ng.spec.clone()
    };
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(&bare).unwrap_or_default());
    h.update([0]);
    match prd {
        Ok(p) => {
            h.update([1]);
            h.update(p.digest.as_bytes());
        }
        Err(_) => h.update([0]),
    }
    if let Ok(Some(handlers)) = handlers {
        h.update([2]);
        h.update(serde_json::to_vec(handlers).unwrap_or_default());
    }
    h.update([0]);
    h.update(fingerprint.as_bytes());
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    hex::encode(h.finalize())
}

fn spec_hash<T: serde::Serialize>(spec: &T) -> Result<String, Error> {
    Ok(hex::encode(Sha256::digest(serde_json::to_vec(spec)?)))
}

/// A failed stage and the stages after it blocked, with `Ready` saying why.
fn failure(stage: &'static str, rejected: &Rejected) -> Vec<Condition> {
    let mut out = vec![Condition::new(
        stage,
        ConditionStatus::False,
        &rejected.reason,
        rejected.message.clone(),
    )];
    out.extend(blocked_after(stage, rejected));
    out
}

fn blocked_after(stage: &str, rejected: &Rejected) -> Vec<Condition> {
    let order = [ANALYZED, GENERATED, VALIDATED, PUBLISHED, DEPLOYED];
    let position = order.iter().position(|s| *s == stage).unwrap_or(0);
    let mut out: Vec<Condition> = order[position + 1..]
        .iter()
        .map(|s| {
            Condition::new(
                s,
                ConditionStatus::Unknown,
                "Blocked",
                format!("waiting for {stage}"),
            )
        })
        .collect();
    out.push(Condition::new(
        READY,
        ConditionStatus::False,
        &rejected.reason,
        rejected.message.clone(),
    ));
    out
}

/// The ConfigMap and the GeneratedNode of one node.
fn children_of(
    ng: &NodeGeneration,
    ns: &str,
    generation: &str,
    owner: &OwnerReference,
    node: &pipeline::NodeOutcome,
    shared: Option<&RenderedShared>,
) -> Result<(ConfigMap, GeneratedNode), configmap::ConfigMapError> {
    let labels = node.labels(generation);
    let cm_name = code_config_map_name(&node.name);
    let mut cm = configmap::config_map(&cm_name, Some(ns), labels.clone(), &node.rendered, shared)?;
    cm.metadata.owner_references = Some(vec![owner.clone()]);
    let spec = node.generated_node_spec(
        &ng.spec.deploy,
        NodeSource {
            config_map: Some(ConfigMapSource { name: cm_name }),
            git: None,
        },
    );
    cm.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(
            ENTRY_ANNOTATION.to_string(),
            crate::deploy::entry_file(&spec),
        );
    let hash = spec_hash(&spec).unwrap_or_default();
    let gn = GeneratedNode {
        metadata: ObjectMeta {
            name: Some(node.name.clone()),
            namespace: Some(ns.to_string()),
            labels: Some(labels),
            // The traceparent is not compared by `generated_node_current`: a node whose spec
            // did not change keeps the trace of the generation that made it.
            annotations: Some(BTreeMap::from([
                (APPLIED_HASH_ANNOTATION.to_string(), hash),
                (
                    crate::api::ANNOTATION_TRACEPARENT.to_string(),
                    trace_of(ng).traceparent(),
                ),
            ])),
            owner_references: Some(vec![owner.clone()]),
            ..Default::default()
        },
        spec,
        status: None,
    };
    Ok((cm, gn))
}

fn annotation<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

/// Whether the cached ConfigMap already holds what `desired` would apply.
fn config_map_current(ctx: &Context, ns: &str, desired: &ConfigMap) -> bool {
    let name = desired.metadata.name.clone().unwrap_or_default();
    ctx.caches
        .config_maps
        .get(ns, &name)
        .is_some_and(|cached| cached.data == compact::config_map(&desired.metadata).child.data)
}

/// Whether the cached GeneratedNode already is what `desired` would apply (and was not edited).
fn generated_node_current(ctx: &Context, ns: &str, desired: &GeneratedNode) -> Result<bool, Error> {
    let Some(cached) = ctx
        .caches
        .generated_nodes
        .get(&ObjectRef::new(&desired.name_any()).within(ns))
    else {
        return Ok(false);
    };
    let want = annotation(&desired.metadata, APPLIED_HASH_ANNOTATION);
    Ok(cached.applied_hash == want.map(digest)
        && Some(spec_hash(&cached.spec())?.as_str()) == want
        && cached.shape
            == compact::shape(
                desired.metadata.labels.as_ref(),
                desired.metadata.owner_references.as_ref(),
            ))
}

/// A settled generation's children are all there, unedited, with the recorded content.
fn children_intact(ng: &NodeGeneration, status: &NodeGenerationStatus, ctx: &Context) -> bool {
    if ng.spec.output.git.is_some() {
        // The children live in Git; what Argo CD does with them is its business.
        return status.output.as_ref().is_some_and(|o| o.git.is_some());
    }
    let ns = ng.namespace().unwrap_or_default();
    !status.nodes.is_empty()
        && status.nodes.iter().all(|node| {
            let gn = ctx
                .caches
                .generated_nodes
                .get(&ObjectRef::new(&node.name).within(&ns));
            let gn_ok = gn.is_some_and(|gn| {
                let spec = gn.spec();
                spec.content_hash == node.content_hash
                    && spec_hash(&spec).ok().map(|h| digest(&h)) == gn.applied_hash
                    && gn.owned_by(ng.metadata.uid.as_deref())
            });
            let cm = ctx
                .caches
                .config_maps
                .get(&ns, &code_config_map_name(&node.name));
            let cm_ok = cm.is_some_and(|cm| {
                cm.data.content_hash == Some(digest(&node.content_hash))
                    && cm.owned_by(ng.metadata.uid.as_deref())
            });
            gn_ok && cm_ok
        })
}

/// Delete the GeneratedNodes and ConfigMaps this generation owns but no longer plans.
async fn delete_unplanned(
    ng: &NodeGeneration,
    ctx: &Context,
    ns: &str,
    name: &str,
    children: &[(ConfigMap, GeneratedNode)],
) -> Result<(), Error> {
    let planned_gns: BTreeSet<String> = children.iter().map(|(_, gn)| gn.name_any()).collect();
    let planned_cms: BTreeSet<String> = children
        .iter()
        .filter_map(|(cm, _)| cm.metadata.name.clone())
        .collect();
    let gns: Api<GeneratedNode> = Api::namespaced(ctx.client.clone(), ns);
    for gn in ctx.caches.generated_nodes.state() {
        let gn_name = gn.name_any();
        let ours = gn.metadata.namespace.as_deref() == Some(ns)
            && gn.generation_label.as_deref() == Some(name)
            && gn.owned_by(ng.metadata.uid.as_deref());
        if ours && !planned_gns.contains(&gn_name) {
            tracing::info!(generated_node = %gn_name, "deleting a node no longer planned");
            delete_ignoring_missing(&gns, &gn_name).await?;
        }
    }
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    for (cm_name, cm) in ctx.caches.config_maps.controlled_by(ns, name) {
        let ours =
            cm.data.generation == Some(digest(name)) && cm.owned_by(ng.metadata.uid.as_deref());
        if ours && !planned_cms.contains(&*cm_name) {
            delete_ignoring_missing(&cms, &cm_name).await?;
        }
    }
    Ok(())
}

/// A system node's state from its GeneratedNode: `Ready`, or its `Ready` reason.
fn node_state(ctx: &Context, ns: &str, name: &str) -> Option<String> {
    let gn = ctx
        .caches
        .generated_nodes
        .get(&ObjectRef::new(name).within(ns))?;
    let ready = gn.status.as_ref().and_then(|s| s.condition(READY));
    Some(match ready {
        Some(c) if c.is_true() => "Ready".to_string(),
        Some(c) => c.reason().to_string(),
        None => "Pending".to_string(),
    })
}

/// The `Deployed` message of a generation whose GeneratedNodes `names` were applied.
fn deployed_message(names: &[String], deploy_enabled: bool) -> String {
    if deploy_enabled {
        format!(
            "GeneratedNode(s) {} applied; each reports its Deployment in its own status",
            names.join(", ")
        )
    } else {
        format!(
            "GeneratedNode(s) {} applied with deploy.enabled=false (no Deployments)",
            names.join(", ")
        )
    }
}

/// The `Ready` message of a generation of `nodes` nodes whose lowest quality is `lowest`.
fn ready_message(nodes: usize, lowest: f64) -> String {
    format!("{nodes} node(s) generated and published; lowest quality {lowest:.3}")
}

/// The `Deployed` and `Ready` reason of a generation one of whose nodes cannot start.
pub const NODE_FAILING: &str = "NodeFailing";

/// Bring a settled generation up to date with its GeneratedNodes (they roll out after it
/// settled): `status.system`, and `Deployed`/`Ready`, which turn False (`NodeFailing`, with the
/// pods' reason) while a node cannot start and back when it can. One status write when
/// something changed, none otherwise.
async fn refresh_nodes(
    ng: &NodeGeneration,
    ctx: &Context,
    ns: &str,
    current: &NodeGenerationStatus,
) -> Result<(), Error> {
    if refreshed(ng, ctx, ns, current) == *current {
        return Ok(());
    }
    // The cached status is trimmed (`trim_cached`): write from the server's copy.
    let api: Api<NodeGenerationView> = Api::namespaced(ctx.client.clone(), ns);
    let Some(mut full) = api.get_opt(&ng.name_any()).await?.map(NodeGeneration::from) else {
        return Ok(());
    };
    forget_cached_digest(&mut full);
    let current = full.status.clone().unwrap_or_default();
    let next = refreshed(&full, ctx, ns, &current);
    if next == current {
        return Ok(());
    }
    let (before, after) = (
        status::get(&current.conditions, READY),
        status::get(&next.conditions, READY),
    );
    if before.map(|c| (&c.status, &c.reason)) != after.map(|c| (&c.status, &c.reason)) {
        super::ready_event(ctx, &full.object_ref(&()), before, after, |_| true).await;
    }
    apply_status(ctx, &full, &next).await
}

/// `current` with the system's node states and `Deployed`/`Ready` as the GeneratedNodes say.
fn refreshed(
    ng: &NodeGeneration,
    ctx: &Context,
    ns: &str,
    current: &NodeGenerationStatus,
) -> NodeGenerationStatus {
    let mut next = current.clone();
    if let Some(system) = &current.system {
        let mut refreshed = system.clone();
        refreshed.refresh(|name| node_state(ctx, ns, name));
        next.system = Some(refreshed);
    }
    // In Git output the nodes are Argo CD's to apply: their health is reported there.
    if ng.spec.output.git.is_none() {
        let failing: Vec<String> = current
            .nodes
            .iter()
            .filter_map(|n| node_failure(ctx, ns, &n.name))
            .collect();
        let was_failing =
            status::get(&current.conditions, READY).is_some_and(|c| c.reason == NODE_FAILING);
        let conditions = if !failing.is_empty() {
            let message = failing.join("; ");
            vec![
                Condition::new(
                    DEPLOYED,
                    ConditionStatus::False,
                    NODE_FAILING,
                    message.clone(),
                ),
                Condition::new(READY, ConditionStatus::False, NODE_FAILING, message),
            ]
        } else if was_failing {
            let names: Vec<String> = current.nodes.iter().map(|n| n.name.clone()).collect();
            let lowest = current.quality.unwrap_or(1.0);
            vec![
                Condition::new(
                    DEPLOYED,
                    ConditionStatus::True,
                    "GeneratedNodesApplied",
                    deployed_message(&names, ng.spec.deploy.enabled),
                ),
                Condition::new(
                    READY,
                    ConditionStatus::True,
                    "GenerationSucceeded",
                    ready_message(names.len(), lowest),
                ),
            ]
        } else {
            Vec::new()
        };
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        for mut c in conditions {
            c.observed_generation = ng.metadata.generation;
            status::set_condition(&mut next.conditions, c, Some(&now));
        }
        status::sort(&mut next.conditions);
    }
    next
}

/// `<node>: <reason>: <message>` when GeneratedNode `name` cannot start.
fn node_failure(ctx: &Context, ns: &str, name: &str) -> Option<String> {
    let gn = ctx
        .caches
        .generated_nodes
        .get(&ObjectRef::new(name).within(ns))?;
    let ready = gn.status.as_ref()?.condition(READY)?;
    let failing = !ready.is_true() && super::pod_health::is_failing(ready.reason());
    failing.then(|| format!("{name}: {}: {}", ready.reason(), ready.message()))
}

/// Merge the new conditions into the current status and write it if anything differs; emit an
/// Event when `Ready` changes.
async fn write_status(
    ng: &NodeGeneration,
    ctx: &Context,
    current: &NodeGenerationStatus,
    conditions: Vec<Condition>,
    outcome: Option<Outcome>,
    output: OutputStatus,
    input_hash: String,
) -> Result<(), Error> {
    let generation = ng.metadata.generation;
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let mut next = current.clone();
    for mut c in conditions {
        c.observed_generation = generation;
        status::set_condition(&mut next.conditions, c, Some(&now));
    }
    status::sort(&mut next.conditions);
    match &outcome {
        Some(o) => {
            o.fill_status(&mut next);
            if let Some(system) = next.system.as_mut() {
                let ns = ng.namespace().unwrap_or_default();
                system.refresh(|name| node_state(ctx, &ns, name));
            }
        }
        None => {
            next.analysis = None;
            next.nodes = Vec::new();
            next.node_count = None;
            next.quality = None;
        }
    }
    let ready = status::get(&next.conditions, READY).cloned();
    if ready.as_ref().is_some_and(Condition::is_true) {
        next.output = Some(output);
    }
    next.phase = Some(status::phase(&next.conditions));
    next.observed_generation = generation;
    next.trace_id = Some(trace_of(ng).trace_id());
    next.input_hash = Some(input_hash);
    if &next == current {
        return Ok(());
    }
    apply_status(ctx, ng, &next).await?;

    let before = status::get(&current.conditions, READY);
    if let Some(now) = ready.as_ref()
        && before.is_none_or(|b| (&b.status, &b.reason) != (&now.status, &now.reason))
    {
        ctx.metrics.settled(now.is_true(), &now.reason);
    }
    ready_event(ctx, &ng.object_ref(&()), before, ready.as_ref(), |_| true).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{LABEL_GENERATION, PrdSource};
    use crate::controller::cached_node::CachedNode;
    use crate::controller::cached_spec::CachedSpec;
    use crate::controller::fixtures::{CacheWriters, FakeApi, context};

    const PRD: &str = "# Order Writer\n\n## Overview\nPersists incoming orders.\n\n## Functional Requirements\n- Write order records to PostgreSQL\n- Update an order's status\n";

    fn ng(prd: &str) -> NodeGeneration {
        let mut ng = NodeGeneration::new(
            "orders",
            NodeGenerationSpec {
                prd: Some(prd.to_string()),
                ..Default::default()
            },
        );
        ng.metadata.namespace = Some("ns".into());
        ng.metadata.uid = Some("uid-orders".into());
        ng.metadata.generation = Some(1);
        ng
    }

    #[test]
    fn a_generated_node_leads_to_the_generation_that_controls_it() {
        let mut gn: GeneratedNode = serde_json::from_value(serde_json::json!({
            "apiVersion": "codegen.omninode.ai/v1alpha1", "kind": "GeneratedNode",
            "metadata": {"name": "orders-writer-effect", "namespace": "ns"},
            "spec": {"nodeType": "Effect", "domain": "api", "serviceName": "writer",
                     "source": {"configMap": {"name": "c"}}, "contentHash": "h"}
        }))
        .unwrap();
        let owner_of =
            |gn: &GeneratedNode| CachedNode::from(gn.clone()).owner_ref::<NodeGeneration>();
        assert_eq!(owner_of(&gn), None);
        let mut owner = ng(PRD).controller_owner_ref(&()).unwrap();
        owner.controller = None;
        gn.metadata.owner_references = Some(vec![owner.clone()]);
        assert_eq!(owner_of(&gn), None, "an owner that is not the controller");
        owner.controller = Some(true);
        gn.metadata.owner_references = Some(vec![owner]);
        assert_eq!(owner_of(&gn), Some(ObjectRef::new("orders").within("ns")));
    }

    #[test]
    fn an_edit_of_the_prd_or_the_handlers_config_map_reaches_its_generations() {
        use kube::runtime::{reflector, watcher};
        let mut from_cm = ng(PRD);
        from_cm.metadata.name = Some("from-cm".into());
        from_cm.spec.prd = None;
        from_cm.spec.prd_from = serde_json::from_value(
            serde_json::json!({"configMapKeyRef": {"name": "prds", "key": "prd.md"}}),
        )
        .unwrap();
        let mut handled = ng(PRD);
        handled.metadata.name = Some("handled".into());
        handled.spec.handlers =
            serde_json::from_value(serde_json::json!({"configMap": {"name": "my-handlers"}}))
                .unwrap();
        let (store, mut writer) = reflector::store();
        for ng in [from_cm, handled, ng(PRD)] {
            writer.apply_watcher_event(&watcher::Event::Apply(CachedGeneration::from(ng)));
        }
        let names = |cm: &str, ns: &str| {
            let meta = LeanMeta::<ConfigMap>::new(ObjectMeta {
                name: Some(cm.into()),
                namespace: Some(ns.into()),
                ..Default::default()
            });
            let mut refs: Vec<String> = referencing(&store, &meta)
                .into_iter()
                .map(|r| r.name)
                .collect();
            refs.sort();
            refs
        };
        assert_eq!(names("prds", "ns"), ["from-cm"]);
        assert_eq!(names("my-handlers", "ns"), ["handled"]);
        assert!(names("my-handlers", "other").is_empty());
        assert!(names("unrelated", "ns").is_empty());
    }

    /// The fake API server starts out holding the object, as a real one would.
    fn stored(fake: &FakeApi, ng: &NodeGeneration) {
        fake.put(
            "/apis/codegen.omninode.ai/v1alpha1/namespaces/ns/nodegenerations/orders",
            serde_json::to_value(ng).unwrap(),
        );
    }

    fn writes_to(fake: &FakeApi) -> Vec<String> {
        fake.writes()
            .iter()
            .map(|r| format!("{} {}", r.method, r.path()))
            .collect()
    }

    /// Feed what the fake server accepted into the caches and the object, as the watches would.
    fn settle(fake: &FakeApi, ng: &mut NodeGeneration, caches: &mut CacheWriters) {
        for r in fake.writes() {
            if r.method != "PATCH" {
                continue;
            }
            let mut body = r.body.clone();
            body["metadata"]["resourceVersion"] = "2".into();
            body["metadata"]["uid"] = "uid-child".into();
            body["metadata"]["generation"] = 1.into();
            if r.path().ends_with("/status") {
                ng.status = serde_json::from_value(r.body["status"].clone()).unwrap();
            } else if r.path().contains("/configmaps/") {
                let cm: ConfigMap = serde_json::from_value(body).unwrap();
                CacheWriters::apply(&mut caches.config_maps, compact::config_map(&cm.metadata));
            } else if r.path().contains("/generatednodes/") {
                let gn: GeneratedNode = serde_json::from_value(body).unwrap();
                CacheWriters::apply(&mut caches.generated_nodes, CachedNode::from(gn));
            }
        }
    }

    /// Reconcile `ng` as the controller would: from its cache entry.
    async fn reconcile_cached(ng: NodeGeneration, ctx: Arc<Context>) -> Result<Action, Error> {
        reconcile(Arc::new(CachedGeneration::from(ng)), ctx).await
    }

    #[tokio::test]
    async fn a_new_generation_publishes_children_then_a_settled_one_writes_nothing() {
        let fake = FakeApi::default();
        let (ctx, mut caches) = context(&fake);
        let mut ng = ng(PRD);
        stored(&fake, &ng);
        reconcile_cached(ng.clone(), ctx.clone()).await.unwrap();
        let writes = writes_to(&fake);
        assert_eq!(
            writes,
            vec![
                "PATCH /api/v1/namespaces/ns/configmaps/orders-order-writer-effect-code",
                "PATCH /apis/codegen.omninode.ai/v1alpha1/namespaces/ns/generatednodes/orders-order-writer-effect",
                "PATCH /apis/codegen.omninode.ai/v1alpha1/namespaces/ns/nodegenerations/orders/status",
                "POST /apis/events.k8s.io/v1/namespaces/ns/events",
            ],
            "{writes:#?}"
        );
        // Every write is a forced server-side apply that skips the server's strict re-parse.
        for write in &fake.writes()[..3] {
            for param in [
                "fieldManager=omninode-operator",
                "force=true",
                "fieldValidation=Ignore",
            ] {
                assert!(write.uri.contains(param), "{} lacks {param}", write.uri);
            }
        }
        let status_write = &fake.writes()[2];
        let status: NodeGenerationStatus =
            serde_json::from_value(status_write.body["status"].clone()).unwrap();
        let types: Vec<(&str, ConditionStatus, Option<i64>)> = status
            .conditions
            .iter()
            .map(|c| (c.type_.as_str(), c.status, c.observed_generation))
            .collect();
        assert_eq!(
            types,
            [ANALYZED, GENERATED, VALIDATED, PUBLISHED, DEPLOYED, READY]
                .iter()
                .map(|t| (*t, ConditionStatus::True, Some(1)))
                .collect::<Vec<_>>()
        );
        assert!(
            status
                .conditions
                .iter()
                .all(|c| c.last_transition_time.is_some())
        );
        assert_eq!(status.phase, Some(crate::api::Phase::Completed));
        assert_eq!(status.observed_generation, Some(1));
        assert_eq!(status.node_count, Some(1));
        assert_eq!(
            status.output.unwrap().config_maps,
            vec!["orders-order-writer-effect-code"]
        );
        let event = &fake.writes()[3].body;
        assert_eq!(event["type"], "Normal");
        assert_eq!(event["reason"], "GenerationSucceeded");

        // The children carry labels and the owner reference; the GeneratedNode points at the code.
        let cm = &fake.writes()[0].body;
        assert_eq!(cm["metadata"]["labels"][LABEL_GENERATION], "orders");
        assert_eq!(cm["metadata"]["ownerReferences"][0]["uid"], "uid-orders");
        assert_eq!(cm["metadata"]["ownerReferences"][0]["controller"], true);
        assert!(
            cm["metadata"]["annotations"][ENTRY_ANNOTATION]
                .as_str()
                .unwrap()
                .ends_with("/__main__.py")
        );
        let gn = &fake.writes()[1].body;
        assert_eq!(
            gn["spec"]["source"]["configMap"]["name"],
            "orders-order-writer-effect-code"
        );
        assert_eq!(gn["spec"]["nodeType"], "Effect");

        // Second pass over the settled object: no request at all.
        settle(&fake, &mut ng, &mut caches);
        fake.clear();
        reconcile_cached(ng.clone(), ctx.clone()).await.unwrap();
        assert!(fake.requests().is_empty(), "{:#?}", fake.requests());

        // A GeneratedNode edited by someone else is put back, and only it.
        let mut edited = (*ctx
            .caches
            .generated_nodes
            .get(&ObjectRef::new("orders-order-writer-effect").within("ns"))
            .unwrap())
        .clone();
        let mut spec = edited.spec();
        spec.deploy.replicas = 5;
        edited.spec = CachedSpec::new(spec, "orders-order-writer-effect");
        CacheWriters::apply(&mut caches.generated_nodes, edited);
        reconcile_cached(ng.clone(), ctx.clone()).await.unwrap();
        assert_eq!(
            writes_to(&fake),
            vec![
                "PATCH /apis/codegen.omninode.ai/v1alpha1/namespaces/ns/generatednodes/orders-order-writer-effect"
            ]
        );
    }

    /// A failed generation's writes: its status (`Ready=False`, phase `Failed`) and a Warning
    /// Event, no child. Returns the `Ready` condition.
    #[tokio::test]
    async fn the_cache_keeps_the_prds_digest_and_only_a_run_reads_the_text() {
        let fake = FakeApi::default();
        let (ctx, mut caches) = context(&fake);
        let mut ng = ng(PRD);
        stored(&fake, &ng);
        let stripped = |ng: &NodeGeneration| {
            let cached = CachedGeneration::from(ng.clone());
            assert_eq!(cached.spec.to_spec().prd, None);
            Arc::new(cached)
        };
        reconcile(stripped(&ng), ctx.clone()).await.unwrap();
        let reads: Vec<String> = fake
            .requests()
            .iter()
            .filter(|r| !r.is_write())
            .map(|r| r.path().to_string())
            .collect();
        assert_eq!(
            reads,
            ["/apis/codegen.omninode.ai/v1alpha1/namespaces/ns/nodegenerations/orders"]
        );
        assert_eq!(writes_to(&fake).len(), 4, "{:#?}", writes_to(&fake));

        // Settled: the digest stands for the text in the input hash, so nothing is read.
        settle(&fake, &mut ng, &mut caches);
        fake.clear();
        reconcile(stripped(&ng), ctx.clone()).await.unwrap();
        assert!(fake.requests().is_empty(), "{:#?}", fake.requests());

        // An annotation of that name set by a user stands for nothing: a prdFrom generation
        // carrying one is no "inline and prdFrom" error.
        let mut from_cm = ng.clone();
        from_cm.spec.prd = None;
        from_cm.spec.prd_from = Some(Box::new(PrdSource {
            config_map_key_ref: crate::api::ConfigMapKeyRef {
                name: "prd".into(),
                key: "prd.md".into(),
            },
        }));
        from_cm
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(CACHED_PRD_DIGEST.into(), "0".repeat(64));
        let cached = stripped(&from_cm);
        assert_eq!(inline_prd_digest(&cached.to_object()), None);

        // An edited PRD runs again, from the text read from the server.
        ng.spec.prd = Some(format!("{PRD}- Archive orders older than a year\n"));
        ng.metadata.generation = Some(2);
        stored(&fake, &ng);
        reconcile(stripped(&ng), ctx.clone()).await.unwrap();
        let status_write = fake
            .writes()
            .into_iter()
            .find(|r| r.path().ends_with("/status"))
            .unwrap();
        assert_eq!(status_write.body["status"]["observedGeneration"], 2);
    }

    #[tokio::test]
    async fn a_settled_generation_writes_a_failing_node_from_the_servers_whole_status() {
        let fake = FakeApi::default();
        let (ctx, mut caches) = context(&fake);
        let mut ng = ng(PRD);
        stored(&fake, &ng);
        reconcile_cached(ng.clone(), ctx.clone()).await.unwrap();
        settle(&fake, &mut ng, &mut caches);
        stored(&fake, &ng);
        let whole = ng.status.clone().unwrap();
        assert!(whole.analysis.is_some() && whole.trace_id.is_some());

        // Its node cannot start.
        let key = ObjectRef::new("orders-order-writer-effect").within("ns");
        let mut gn = (*ctx.caches.generated_nodes.get(&key).unwrap()).clone();
        gn.status = Some(
            crate::api::GeneratedNodeStatus {
                conditions: vec![Condition::new(
                    READY,
                    ConditionStatus::False,
                    "CrashLoopBackOff",
                    "pod p: container node CrashLoopBackOff",
                )],
                ..Default::default()
            }
            .into(),
        );
        CacheWriters::apply(&mut caches.generated_nodes, gn);
        let cached = CachedGeneration::from(ng.clone());
        let trimmed = cached.to_object().status.unwrap();
        assert!(trimmed.analysis.is_none() && trimmed.trace_id.is_none());
        assert!(trimmed.output.as_ref().unwrap().config_maps.is_empty());
        let kept: Vec<_> = cached.conditions.iter().map(|c| c.type_()).collect();
        assert_eq!(kept, [DEPLOYED, READY]);
        fake.clear();
        reconcile(Arc::new(cached), ctx.clone()).await.unwrap();

        // One read of the object, and a status written from it: nothing the cache dropped is lost.
        let reads: Vec<_> = fake
            .requests()
            .into_iter()
            .filter(|r| !r.is_write())
            .collect();
        assert_eq!(reads.len(), 1, "{reads:#?}");
        let write = fake
            .writes()
            .into_iter()
            .find(|r| r.path().ends_with("/status"))
            .unwrap();
        let written: NodeGenerationStatus =
            serde_json::from_value(write.body["status"].clone()).unwrap();
        assert_eq!(
            status::get(&written.conditions, READY).unwrap().reason,
            NODE_FAILING
        );
        assert_eq!(written.analysis, whole.analysis);
        assert_eq!(written.trace_id, whole.trace_id);
        assert_eq!(written.output, whole.output);
        assert_eq!(written.conditions.len(), whole.conditions.len());
        assert_eq!(
            written.system.as_ref().map(|s| s.nodes.len()),
            whole.system.as_ref().map(|s| s.nodes.len())
        );
        for (w, n) in written
            .system
            .iter()
            .flat_map(|s| &s.nodes)
            .zip(whole.system.iter().flat_map(|s| &s.nodes))
        {
            assert_eq!(
                (&w.title, &w.uses, &w.guessed),
                (&n.title, &n.uses, &n.guessed)
            );
        }
    }

    fn failed_without_children(fake: &FakeApi) -> Condition {
        assert_eq!(
            writes_to(fake),
            vec![
                "PATCH /apis/codegen.omninode.ai/v1alpha1/namespaces/ns/nodegenerations/orders/status",
                "POST /apis/events.k8s.io/v1/namespaces/ns/events",
            ]
        );
        assert_eq!(fake.writes()[1].body["type"], "Warning");
        let status: NodeGenerationStatus =
            serde_json::from_value(fake.writes()[0].body["status"].clone()).unwrap();
        assert_eq!(status.phase, Some(crate::api::Phase::Failed));
        let ready = status::get(&status.conditions, READY).unwrap().clone();
        assert_eq!(ready.status, ConditionStatus::False);
        ready
    }

    #[tokio::test]
    async fn an_invalid_prd_fails_cleanly_once_and_writes_no_children() {
        let fake = FakeApi::default();
        let (ctx, mut caches) = context(&fake);
        let mut ng = ng("   \n\n");
        stored(&fake, &ng);
        reconcile_cached(ng.clone(), ctx.clone()).await.unwrap();
        let ready = failed_without_children(&fake);
        assert_eq!(ready.reason, "PrdEmpty");

        settle(&fake, &mut ng, &mut caches);
        fake.clear();
        reconcile_cached(ng, ctx).await.unwrap();
        assert!(fake.requests().is_empty(), "{:#?}", fake.requests());
    }

    #[tokio::test]
    async fn required_intelligence_without_a_broker_waits_for_a_change_instead_of_retrying() {
        let fake = FakeApi::default();
        let (ctx, _caches) = context(&fake);
        let mut ng = ng(PRD);
        ng.spec.intelligence.mode = crate::api::IntelligenceMode::Required;
        stored(&fake, &ng);
        let action = reconcile_cached(ng, ctx).await.unwrap();
        assert_eq!(action, Action::await_change());
        let ready = failed_without_children(&fake);
        assert_eq!(ready.reason, codegen::INTELLIGENCE_NOT_CONFIGURED);
        assert!(
            ready.message.contains("KAFKA_BOOTSTRAP_SERVERS"),
            "{}",
            ready.message
        );
    }

    #[tokio::test]
    async fn a_missing_prd_config_map_is_a_reason_not_an_error() {
        let fake = FakeApi::default();
        let (ctx, _caches) = context(&fake);
        let mut ng = ng("");
        ng.spec.prd = None;
        ng.spec.prd_from = Some(Box::new(PrdSource {
            config_map_key_ref: crate::api::ConfigMapKeyRef {
                name: "prds".into(),
                key: "orders.md".into(),
            },
        }));
        stored(&fake, &ng);
        reconcile_cached(ng.clone(), ctx.clone()).await.unwrap();
        let status: NodeGenerationStatus =
            serde_json::from_value(fake.writes()[0].body["status"].clone()).unwrap();
        assert_eq!(
            status::get(&status.conditions, READY).unwrap().reason,
            "PrdSourceNotFound"
        );

        // Once the ConfigMap exists (its watch triggers the reconcile), the PRD is read from it.
        fake.put(
            "/api/v1/namespaces/ns/configmaps/prds",
            serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "prds", "namespace": "ns"}, "data": {"orders.md": PRD}}),
        );
        fake.clear();
        reconcile_cached(ng, ctx).await.unwrap();
        assert!(
            writes_to(&fake)
                .iter()
                .any(|w| w.ends_with("generatednodes/orders-order-writer-effect"))
        );
    }

    #[tokio::test]
    async fn nodes_no_longer_planned_are_deleted() {
        let fake = FakeApi::default();
        let (ctx, mut caches) = context(&fake);
        let ng = ng(PRD);
        let mut stale = GeneratedNode::new(
            "orders-old-compute",
            serde_json::from_value(serde_json::json!({
                "nodeType": "Compute", "domain": "data", "serviceName": "old",
                "source": {"configMap": {"name": "orders-old-compute-code"}}
            }))
            .unwrap(),
        );
        stale.metadata.namespace = Some("ns".into());
        stale.metadata.labels = Some(BTreeMap::from([(
            LABEL_GENERATION.to_string(),
            "orders".to_string(),
        )]));
        stale.metadata.owner_references = Some(vec![ng.controller_owner_ref(&()).unwrap()]);
        CacheWriters::apply(&mut caches.generated_nodes, CachedNode::from(stale));
        stored(&fake, &ng);
        reconcile_cached(ng, ctx).await.unwrap();
        assert!(writes_to(&fake).contains(
            &"DELETE /apis/codegen.omninode.ai/v1alpha1/namespaces/ns/generatednodes/orders-old-compute".to_string()
        ));
    }

    #[tokio::test]
    async fn api_errors_are_returned_for_backoff_and_leave_status_alone() {
        let fake = FakeApi::default();
        *fake.fail_writes_to.lock().unwrap() = Some("/generatednodes/".into());
        let (ctx, _caches) = context(&fake);
        stored(&fake, &ng(PRD));
        let err = reconcile_cached(ng(PRD), ctx.clone()).await.unwrap_err();
        assert!(matches!(err, Error::Kube(_)), "{err}");
        assert!(!writes_to(&fake).iter().any(|w| w.ends_with("/status")));
        let key = ObjectRef::<NodeGeneration>::new("orders")
            .within("ns")
            .erase();
        let first = ctx.backoff.next(&key);
        assert!(ctx.backoff.next(&key) > first);
    }

    #[tokio::test]
    async fn suspended_generations_are_left_alone() {
        let fake = FakeApi::default();
        let (ctx, _caches) = context(&fake);
        let mut ng = ng(PRD);
        ng.spec.suspend = true;
        reconcile_cached(ng, ctx).await.unwrap();
        assert!(fake.requests().is_empty());
    }
}
