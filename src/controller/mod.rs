//! The controllers behind `omninode-operator run`: one for NodeGeneration (PRD → published code
//! and GeneratedNodes), one for GeneratedNode (→ Deployment + Service). They share one client,
//! one intelligence client, one metrics registry and the caches below.

mod backoff;
pub mod cached_generation;
pub mod cached_node;
mod cached_spec;
pub mod cached_status;
pub mod children;
pub mod compact;
pub mod config;
mod dependents;
mod events;
#[cfg(test)]
mod fixtures;
mod freshness;
pub mod generated_node;
mod git_output;
mod leader;
mod lean;
pub mod metrics;
pub mod node_generation;
mod pod_health;
mod progress;
mod resync;
mod shared;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::Api;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, predicates, watcher};
use kube::{Client, Resource, ResourceExt};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::api::{Condition, FIELD_MANAGER, GeneratedNode, LABEL_MANAGED_BY, NodeGeneration};
use crate::deploy::DeployDefaults;
use crate::intelligence::{self, IntelligenceClient};
use crate::render::Renderer;
use crate::telemetry::{self, Health};
use cached_generation::CachedGeneration;
use cached_node::CachedNode;
use children::Children;
use lean::LeanMeta;

pub use backoff::Backoff;
pub use config::RunConfig;
pub use metrics::ControllerMetrics;

/// Label selector of everything the operator creates.
pub const MANAGED_SELECTOR: &str = "app.kubernetes.io/managed-by=omninode-operator";
/// How long a NodeGeneration's reconcile waits for more triggers (trailing edge).
const NG_DEBOUNCE: Duration = Duration::from_millis(500);
/// Objects per page of a cache's (re)list. Each page is decoded whole, with its managed fields,
/// before the cache trims it; six caches list at once after a restart, so kube-runtime's 500
/// made the restart, not the steady state, the operator's memory peak (at 5,000 generations:
/// 211 MiB; 128 MiB with 250, 123 MiB with 100 but twice the lists and a slower resync).
const LIST_PAGE: u32 = 250;

/// What a reconcile can fail with; every variant is retried with per-object backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("serialising {0}")]
    Serialize(#[from] serde_json::Error),
    #[error("object has no {0}")]
    MissingField(&'static str),
    #[error("caches not synced yet")]
    CachesNotSynced,
}

/// Caches the reconcilers read instead of asking the API server.
#[derive(Clone)]
pub struct Caches {
    pub generated_nodes: Store<CachedNode>,
    /// The code ConfigMaps, by the NodeGeneration that controls them too.
    pub config_maps: Children<compact::CodeConfigMap>,
    pub deployments: Children<compact::DeploymentState>,
    pub services: Children<compact::ServiceState>,
    /// The nodes' pods, what their status says of a node that will not start; by node too.
    pub pods: Children<pod_health::PodState>,
    /// True once every cache above has its first full list.
    pub synced: tokio::sync::watch::Receiver<bool>,
}

/// Shared state of both controllers.
pub struct Context {
    pub client: Client,
    pub renderer: Renderer,
    pub intelligence: Option<IntelligenceClient>,
    pub events: events::Events,
    pub defaults: DeployDefaults,
    pub metrics: ControllerMetrics,
    pub backoff: Backoff,
    /// Our last status write per object, to skip stale cached copies.
    pub freshness: freshness::Freshness,
    pub caches: Caches,
    /// Writable directory for the Git output's throw-away repositories.
    pub git_scratch: std::path::PathBuf,
}

impl Context {
    /// Whether this copy of an object needs no reconcile: it is being deleted (garbage
    /// collection takes its children), or it predates our own last status write (the watch is
    /// about to deliver the newer copy, which triggers the next reconcile). Otherwise waits
    /// (bounded) until every cache has its first full list: deciding from a half-filled cache
    /// would take existing children for missing ones and rewrite them on every restart,
    /// upgrade or failover.
    async fn nothing_to_do(
        &self,
        meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    ) -> Result<bool, Error> {
        if meta.deletion_timestamp.is_some() {
            return Ok(true);
        }
        if self
            .freshness
            .is_stale(meta.uid.as_deref(), meta.resource_version.as_deref())
        {
            tracing::debug!("cached copy predates our last status write; waiting for the watch");
            return Ok(true);
        }
        let mut synced = self.caches.synced.clone();
        match tokio::time::timeout(Duration::from_secs(30), synced.wait_for(|s| *s)).await {
            Ok(Ok(_)) => Ok(false),
            _ => Err(Error::CachesNotSynced),
        }
    }

    pub fn new(
        client: Client,
        renderer: Renderer,
        intelligence: Option<IntelligenceClient>,
        defaults: DeployDefaults,
        metrics: ControllerMetrics,
        caches: Caches,
    ) -> Self {
        Context {
            events: events::Events::new(
                client.clone(),
                FIELD_MANAGER,
                std::env::var("POD_NAME").ok(),
            ),
            client,
            renderer,
            intelligence,
            defaults,
            metrics,
            backoff: Backoff::default(),
            freshness: Default::default(),
            caches,
            git_scratch: std::env::temp_dir().join("omninode-git"),
        }
    }

    /// Record a reconcile's duration and result, and reset or grow the object's backoff.
    fn finish<K: Resource<DynamicType = ()>>(
        &self,
        controller: &str,
        obj: &K,
        started: Instant,
        ok: bool,
    ) {
        self.metrics.observe(controller, ok, started.elapsed());
        if ok {
            self.backoff.reset(&ObjectRef::from_obj(obj).erase());
        }
    }
}

/// Error policy of both controllers: exponential per-object backoff (reset on success).
fn error_policy<K: Resource<DynamicType = ()>>(
    obj: Arc<K>,
    error: &Error,
    ctx: Arc<Context>,
) -> kube::runtime::controller::Action {
    let key = ObjectRef::from_obj(obj.as_ref()).erase();
    let delay = ctx.backoff.next(&key);
    tracing::warn!(object = %key, error = %error, retry_in = ?delay, "reconcile failed");
    kube::runtime::controller::Action::requeue(delay)
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Server-side apply as the operator, taking over fields another manager set (`force`).
///
/// `fieldValidation=Ignore` spares the API server a second, strict YAML parse of every patch
/// (the default, `Warn`, does one to find unknown or duplicate fields): our patches are
/// serialized from the same typed schemas the server checks, and kube drops the warnings `Warn`
/// would send anyway. Under load that parse was ~5 % of the API server's CPU.
pub(crate) fn apply_params() -> kube::api::PatchParams {
    kube::api::PatchParams::apply(FIELD_MANAGER)
        .force()
        .validation_ignore()
}

/// Server-side apply `status` on `obj`'s status subresource, remembering the resourceVersion it
/// returns (see `freshness`).
async fn apply_status<K>(
    ctx: &Context,
    obj: &K,
    status: &impl serde::Serialize,
) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    let mut request = kube::core::Request::new(api.resource_url())
        .patch_subresource(
            "status",
            &obj.name_any(),
            &apply_params(),
            &kube::api::Patch::Apply(&patch),
        )
        .map_err(kube::Error::BuildRequest)?;
    request
        .headers_mut()
        .insert(http::header::ACCEPT, METADATA_ONLY.clone());
    let written: LeanMeta<K> = ctx.client.request(request).await?;
    ctx.freshness.wrote(
        written.metadata.uid.as_deref(),
        written.metadata.resource_version.as_deref(),
    );
    Ok(())
}

/// Ask the API server to answer a write with the object's metadata only: nothing reads the
/// rest, and echoing a NodeGeneration with its PRD back costs the server encoding and us
/// decoding. (Children are applied through `Api<LeanMeta<_>>`, which sends the same header;
/// for a code ConfigMap the echo was ~80 KB.)
pub(crate) static METADATA_ONLY: http::HeaderValue =
    http::HeaderValue::from_static("application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1");

/// Delete a child; one already gone is fine.
async fn delete_ignoring_missing<K>(api: &Api<K>, name: &str) -> Result<(), Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api
        .delete(name, &kube::api::DeleteParams::background())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Record an Event when `Ready` changed (status or reason) and `worth` says so. Events are
/// best-effort: a failure to record one is logged, never a reconcile error.
async fn ready_event(
    ctx: &Context,
    object: &k8s_openapi::api::core::v1::ObjectReference,
    before: Option<&Condition>,
    after: Option<&Condition>,
    worth: impl Fn(&Condition) -> bool,
) {
    let Some(ready) = after else { return };
    let changed = before.is_none_or(|b| b.status != ready.status || b.reason != ready.reason);
    if !changed || !worth(ready) {
        return;
    }
    let event = Event {
        type_: if ready.is_true() {
            EventType::Normal
        } else {
            EventType::Warning
        },
        reason: ready.reason.clone(),
        note: Some(truncate(&ready.message, 1000)),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.events.publish(&event, object).await {
        tracing::warn!(error = %e, "could not record an event");
    }
}

/// Cut `s` to at most `max` bytes on a character boundary (Event notes are limited to 1 kB).
fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// A cache of `api`'s objects as the entries `C` a controller runs on (see `cached_node` and
/// `cached_generation`), and the watch events that fed it.
fn entries<K, C>(
    api: Api<K>,
    config: watcher::Config,
    compact: fn(K) -> C,
) -> (
    Store<C>,
    impl futures::Stream<Item = Result<watcher::Event<C>, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
    C: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let events = reflector::reflector(
        writer,
        watcher(api, config)
            .default_backoff()
            .map_ok(move |event| compact::map_event(event, compact)),
    );
    (reader, events)
}

/// Run the operator until a signal (or a lost lease) stops it.
pub async fn run(config: RunConfig) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone());

    let mut registry = Registry::default();
    let metrics = ControllerMetrics::default();
    metrics.register(&mut registry);
    let intelligence_metrics = intelligence::Metrics::default();
    intelligence_metrics.register(&mut registry);

    let kube_config = kube::Config::infer().await?;
    let client = kube::client::ClientBuilder::try_from(kube_config)?
        .with_layer(&metrics.api_layer())
        .build();

    let health = Health::new(registry);
    let server = telemetry::serve(config.metrics_addr, health.clone(), shutdown.clone()).await?;
    let server = tokio::spawn(server);

    if config.leader_elect {
        leader::acquire(&client, &config, shutdown.clone(), &health).await?;
        if shutdown.is_cancelled() {
            return Ok(());
        }
    }
    metrics.leader.set(1);

    let intelligence = match config.intelligence.kafka_bootstrap_servers {
        Some(_) => Some(IntelligenceClient::connect(
            config.intelligence.clone(),
            intelligence_metrics,
        )?),
        None => None,
    };
    let renderer = match &config.templates {
        Some(dir) => Renderer::from_dir(dir)?,
        None => Renderer::embedded()?,
    };
    let defaults = DeployDefaults {
        image: config.node_image.clone(),
        image_runtime_version: config.node_image_runtime_version.clone(),
        git_image: config.git_image.clone(),
        kafka_bootstrap_servers: config
            .node_kafka_bootstrap_servers
            .clone()
            .or_else(|| config.intelligence.kafka_bootstrap_servers.clone()),
    };
    let ns = config.namespace.as_deref();
    let managed = watcher::Config::default()
        .page_size(LIST_PAGE)
        .labels(MANAGED_SELECTOR);

    // Compact caches of the children, each fed by the watch that also triggers the owner's
    // reconcile.
    let (cm_reader, cm_owners) = children::cache::<_, _, CachedGeneration>(
        api::<LeanMeta<ConfigMap>>(&client, ns),
        managed.clone(),
        compact::config_map_of,
        Some(children::every),
    );
    let (dep_reader, dep_owners) = children::cache::<_, _, CachedNode>(
        api::<compact::DeploymentView>(&client, ns),
        managed.clone(),
        compact::deployment_of,
        None,
    );
    let (svc_reader, svc_owners) = children::cache::<_, _, CachedNode>(
        api::<LeanMeta<Service>>(&client, ns),
        managed.clone(),
        compact::service_of,
        None,
    );
    // The pods carry the Deployment's labels (ours among them); their status is all we read.
    let (pod_reader, pod_owners) = children::cache::<_, _, CachedNode>(
        api::<pod_health::PodView>(&client, ns),
        managed.clone(),
        pod_health::cached,
        Some(pod_health::PodState::matters),
    );
    // PRDs kept in the user's ConfigMaps: metadata only, never our own (large) ones.
    let user_config_maps = watcher(
        api::<LeanMeta<ConfigMap>>(&client, ns),
        watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}!={FIELD_MANAGER}")),
    )
    .default_backoff()
    .touched_objects()
    .predicate_filter(predicates::resource_version, Default::default());

    let controller_config = kube::runtime::Config::default().concurrency(config.concurrency.max(1));
    // The controllers' own caches, of compact entries like the children's (`cached_node`,
    // `cached_generation`). Listed in pages, like every other cache: a list from the API
    // server's watch cache (`any_semantic`) comes in one piece, held whole while it is decoded,
    // and made a restart's memory peak (62 MB of heap for 1,000 generations, against 37 MB
    // once listed; then the managed fields were still parsed, see `lean`).
    let everything = watcher::Config::default().page_size(LIST_PAGE);
    let (gn_reader, generated_nodes) = entries(
        api::<lean::GeneratedNodeView>(&client, ns),
        everything.clone(),
        |gn| CachedNode::from(GeneratedNode::from(gn)),
    );
    // The GeneratedNode controller already waits on this store's readiness, and kube-runtime's
    // readiness future wakes only one waiter (a second one can sleep forever); so /readyz
    // learns of this cache's first full list from the stream itself.
    let (gn_listed, mut gn_listed_rx) = tokio::sync::watch::channel(false);
    // Every applied GeneratedNode, for the reconcile of the nodes that depend on it; every
    // touched one, for its owner's. One watch feeds both controllers: a second one (`owns`)
    // would have the API server encode, and us decode, every GeneratedNode event twice.
    let (gn_dependents, gn_dependents_rx) = futures::channel::mpsc::unbounded();
    let (gn_owner, gn_owner_rx) = futures::channel::mpsc::unbounded();
    let mut dependents = dependents::Dependents::default();
    let generated_nodes = generated_nodes
        .inspect(move |event| {
            let Ok(event) = event else { return };
            dependents.update(event);
            match event {
                watcher::Event::InitDone => {
                    gn_listed.send_replace(true);
                }
                watcher::Event::Apply(gn) | watcher::Event::InitApply(gn) => {
                    let ns = gn.namespace().unwrap_or_default();
                    for d in dependents.of(&ns, &gn.name_any()) {
                        let _ = gn_dependents.unbounded_send(d);
                    }
                    if let Some(owner) = gn.owner_ref() {
                        let _ = gn_owner.unbounded_send(owner);
                    }
                }
                watcher::Event::Delete(gn) => {
                    if let Some(owner) = gn.owner_ref() {
                        let _ = gn_owner.unbounded_send(owner);
                    }
                }
                watcher::Event::Init => {}
            }
        })
        .applied_objects();
    let (ng_reader, node_generations) = entries(
        api::<lean::NodeGenerationView>(&client, ns),
        everything,
        |ng| CachedGeneration::from(NodeGeneration::from(ng)),
    );
    let node_generations = node_generations.applied_objects();
    // The periodic re-check of settled objects (drift no watch shows), swept over each cache.
    let resync_every = Duration::from_secs(config.resync_seconds.max(60));
    let gn_controller = Controller::for_stream(generated_nodes, gn_reader.clone())
        .with_config(controller_config.clone())
        .reconcile_on(dep_owners)
        .reconcile_on(svc_owners)
        .reconcile_on(pod_owners);
    let gn_controller = gn_controller
        .reconcile_on(gn_dependents_rx)
        .reconcile_on(resync::sweeps(gn_reader, resync_every));
    // A generation is reconciled for every status change of each of its nodes: wait for a
    // burst (a system's nodes moving together) to end, and write its status once.
    let ng_config = controller_config.debounce(NG_DEBOUNCE);
    let ng_controller = Controller::for_stream(node_generations, ng_reader.clone())
        .with_config(ng_config)
        .reconcile_on(cm_owners)
        .reconcile_on(gn_owner_rx)
        .reconcile_on(resync::sweeps(ng_reader, resync_every));
    let ng_store = ng_controller.store();
    metrics.progress.watch(ng_store.clone());
    let ng_controller = ng_controller.watches_stream(user_config_maps, move |cm| {
        node_generation::referencing(&ng_store, &cm)
    });

    let (synced_tx, synced_rx) = tokio::sync::watch::channel(false);
    let caches = Caches {
        generated_nodes: gn_controller.store(),
        config_maps: cm_reader,
        deployments: dep_reader,
        services: svc_reader,
        pods: pod_reader,
        synced: synced_rx,
    };
    let mut ctx = Context::new(
        client.clone(),
        renderer,
        intelligence,
        defaults,
        metrics,
        caches.clone(),
    );
    if let Some(dir) = &config.git_scratch_dir {
        ctx.git_scratch = dir.clone();
    }
    let ctx = Arc::new(ctx);

    // Ready once every cache has its first full list.
    {
        let health = health.clone();
        let caches = caches.clone();
        tokio::spawn(async move {
            let synced = tokio::join!(
                synced("GeneratedNodes", async move {
                    gn_listed_rx.wait_for(|listed| *listed).await.map(|_| ())
                }),
                synced("ConfigMaps", caches.config_maps.wait_until_ready()),
                synced("Deployments", caches.deployments.wait_until_ready()),
                synced("Services", caches.services.wait_until_ready()),
                synced("Pods", caches.pods.wait_until_ready()),
            );
            if synced.0 && synced.1 && synced.2 && synced.3 && synced.4 {
                tracing::info!("caches synced");
                synced_tx.send_replace(true);
                health.set_ready(true);
            }
        });
    }

    let ng = ng_controller
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(node_generation::reconcile, error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()));
    let gn = gn_controller
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(generated_node::reconcile, error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()));
    tracing::info!(namespace = ns.unwrap_or("<all>"), "controllers started");
    tokio::join!(ng, gn);
    ctx.metrics.leader.set(0);
    health.set_ready(false);
    shutdown.cancel();
    let _ = server.await;
    tracing::info!("stopped");
    Ok(())
}

async fn synced<E>(what: &str, ready: impl Future<Output = Result<(), E>>) -> bool {
    let ok = ready.await.is_ok();
    tracing::debug!(cache = what, ok, "cache synced");
    ok
}

/// Cancel `token` on SIGTERM or Ctrl-C.
fn spawn_signal_handler(token: CancellationToken) {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = tokio::signal::ctrl_c() => {}
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutdown requested");
        token.cancel();
    });
}
