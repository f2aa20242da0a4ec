//! Compact cache entries for the children the operator applies (code ConfigMaps, Deployments,
//! Services): what a reconcile compares, and nothing else.
//!
//! A trimmed Kubernetes object still costs 2 to 3 KB in a cache (every label or annotation map
//! is a B-tree node of its own, an `ObjectMeta` is 0.3 KB before anything is set); these entries
//! are a few hundred bytes. Their watches also stand in for kube-runtime's `owns` and its
//! `predicate_filter`: each watch event updates the store and, when the resourceVersion is new
//! (not a relist's repeat), triggers the owner's reconcile. One store per kind, and no second
//! map of every object's name, namespace and uid in a predicate cache.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::marker::PhantomData;

use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::reflector::{self, Lookup, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};

use super::node_generation::{APPLIED_HASH_ANNOTATION, ENTRY_ANNOTATION};
use crate::api::{GeneratedNode, LABEL_GENERATION, NodeGeneration};
use crate::publish::configmap::CONTENT_HASH_ANNOTATION;

/// A cached child of kind `K`: its identity, its controller and the fields `T` a reconcile reads.
#[derive(Debug, PartialEq)]
pub struct Cached<K, T> {
    pub name: String,
    pub namespace: String,
    pub resource_version: String,
    /// The controller owner of the kind this cache serves (`None` for anything else).
    pub owner: Option<Owner>,
    pub data: T,
    kind: PhantomData<fn() -> K>,
}

impl<K, T: Clone> Clone for Cached<K, T> {
    fn clone(&self) -> Self {
        Cached {
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            resource_version: self.resource_version.clone(),
            owner: self.owner.clone(),
            data: self.data.clone(),
            kind: PhantomData,
        }
    }
}

/// The controller owner of a child.
#[derive(Clone, Debug, PartialEq)]
pub struct Owner {
    pub name: String,
    pub uid: String,
}

impl<K, T> Cached<K, T> {
    /// The entry of `meta`, whose controller counts if it is of kind `owner_kind`.
    pub fn new(meta: &ObjectMeta, owner_kind: &str, data: T) -> Self {
        Self::with_owner(meta, controller_owner(meta, owner_kind), data)
    }

    /// The entry of `meta`, owned by `owner` (a pod's node is named by a label, not an owner
    /// reference).
    pub fn with_owner(meta: &ObjectMeta, owner: Option<Owner>, data: T) -> Self {
        Cached {
            name: meta.name.clone().unwrap_or_default(),
            namespace: meta.namespace.clone().unwrap_or_default(),
            resource_version: meta.resource_version.clone().unwrap_or_default(),
            owner,
            data,
            kind: PhantomData,
        }
    }

    /// Whether the controller with this uid controls the child.
    pub fn owned_by(&self, uid: Option<&str>) -> bool {
        Owner::is(self.owner.as_ref(), uid)
    }
}

impl Owner {
    /// Whether `owner` is the object with this uid.
    pub fn is(owner: Option<&Owner>, uid: Option<&str>) -> bool {
        uid.is_some() && owner.map(|o| o.uid.as_str()) == uid
    }
}

/// The controller owner of `meta`, if it is of kind `kind`.
pub fn controller_owner(meta: &ObjectMeta, kind: &str) -> Option<Owner> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true) && o.kind == kind)
        .map(|o| Owner {
            name: o.name.clone(),
            uid: o.uid.clone(),
        })
}

/// The store's key is built from these: the name and namespace only. Its resourceVersion and
/// uid would be copied into every key, and nothing reads them there.
impl<K: Resource<DynamicType = ()>, T> Lookup for Cached<K, T> {
    type DynamicType = ();

    fn kind(_: &()) -> Cow<'_, str> {
        K::kind(&())
    }
    fn group(_: &()) -> Cow<'_, str> {
        K::group(&())
    }
    fn version(_: &()) -> Cow<'_, str> {
        K::version(&())
    }
    fn plural(_: &()) -> Cow<'_, str> {
        K::plural(&())
    }
    fn name(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(&self.name))
    }
    fn namespace(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(&self.namespace))
    }
    fn resource_version(&self) -> Option<Cow<'_, str>> {
        None
    }
    fn uid(&self) -> Option<Cow<'_, str>> {
        None
    }
}

/// The identity of `meta` (name, namespace, uid, resourceVersion, generation, deletion
/// timestamp): the metadata a controller's own cache entry keeps.
pub fn identity(meta: ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        name: meta.name,
        namespace: meta.namespace,
        uid: meta.uid,
        resource_version: meta.resource_version,
        generation: meta.generation,
        deletion_timestamp: meta.deletion_timestamp,
        ..Default::default()
    }
}

/// Make `$entry` (a struct with a `metadata: ObjectMeta`, converted `From<$kind>`) a
/// `Resource` of the same kind as `$kind`, so that a controller and its object references run
/// on it, and deserializable through `$kind` (kube-runtime's controller asks for that; the
/// watch decodes `$kind` and converts it).
macro_rules! entry_of_kind {
    ($entry:ty, $kind:ty) => {
        impl kube::Resource for $entry {
            type DynamicType = ();
            type Scope = k8s_openapi::NamespaceResourceScope;

            fn kind(dt: &()) -> std::borrow::Cow<'_, str> {
                <$kind as kube::Resource>::kind(dt)
            }
            fn group(dt: &()) -> std::borrow::Cow<'_, str> {
                <$kind as kube::Resource>::group(dt)
            }
            fn version(dt: &()) -> std::borrow::Cow<'_, str> {
                <$kind as kube::Resource>::version(dt)
            }
            fn api_version(dt: &()) -> std::borrow::Cow<'_, str> {
                <$kind as kube::Resource>::api_version(dt)
            }
            fn plural(dt: &()) -> std::borrow::Cow<'_, str> {
                <$kind as kube::Resource>::plural(dt)
            }
            fn meta(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                &self.metadata
            }
            fn meta_mut(
                &mut self,
            ) -> &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                &mut self.metadata
            }
        }

        impl<'de> serde::Deserialize<'de> for $entry {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                <$kind as serde::Deserialize>::deserialize(d).map(<$entry>::from)
            }
        }
    };
}
pub(crate) use entry_of_kind;

/// What the NodeGeneration reconcile compares of a code ConfigMap.
#[derive(Clone, Debug, PartialEq)]
pub struct CodeConfigMap {
    pub content_hash: Option<String>,
    pub entry: Option<String>,
    /// The generation label: which NodeGeneration's run made it.
    pub generation: Option<String>,
    /// Digest of the labels and owner references, compared with those of the desired object.
    pub shape: u64,
}

/// What the GeneratedNode reconcile reads of a Deployment: the hash of what it applied and the
/// rollout's counts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeploymentState {
    pub applied_hash: Option<String>,
    pub rollout: Rollout,
}

/// A Deployment's rollout, as `kubectl rollout status` judges it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rollout {
    /// The controller has seen the latest spec (`observedGeneration >= generation`).
    pub observed: bool,
    /// Pods of every ReplicaSet, updated ones, ready ones and available ones.
    pub total: i32,
    pub updated: i32,
    pub ready: i32,
    pub available: i32,
    /// `Progressing` is False with `ProgressDeadlineExceeded`.
    pub stalled: bool,
}

/// What the GeneratedNode reconcile compares of a Service: the hash of what it applied.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServiceState {
    pub applied_hash: Option<String>,
}

pub type CachedConfigMap = Cached<ConfigMap, CodeConfigMap>;
pub type CachedDeployment = Cached<Deployment, DeploymentState>;
pub type CachedService = Cached<Service, ServiceState>;

pub fn annotation(meta: &ObjectMeta, key: &str) -> Option<String> {
    meta.annotations.as_ref()?.get(key).cloned()
}

/// Digest of what decides whether a child is still ours as applied: its labels and owners.
pub fn shape(
    labels: Option<&BTreeMap<String, String>>,
    owners: Option<&Vec<OwnerReference>>,
) -> u64 {
    let mut h = DefaultHasher::new();
    labels.filter(|l| !l.is_empty()).hash(&mut h);
    for o in owners.into_iter().flatten() {
        (&o.api_version, &o.kind, &o.name, &o.uid).hash(&mut h);
        (o.controller, o.block_owner_deletion).hash(&mut h);
    }
    h.finish()
}

/// The cache entry of a code ConfigMap (owned by a NodeGeneration).
pub fn config_map(meta: &ObjectMeta) -> CachedConfigMap {
    let data = CodeConfigMap {
        content_hash: annotation(meta, CONTENT_HASH_ANNOTATION),
        entry: annotation(meta, ENTRY_ANNOTATION),
        generation: meta
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_GENERATION).cloned()),
        shape: shape(meta.labels.as_ref(), meta.owner_references.as_ref()),
    };
    Cached::new(meta, &<NodeGeneration as Resource>::kind(&()), data)
}

/// The cache entry of a node's Deployment (owned by a GeneratedNode).
pub fn deployment(d: &Deployment) -> CachedDeployment {
    let data = DeploymentState {
        applied_hash: annotation(&d.metadata, APPLIED_HASH_ANNOTATION),
        rollout: rollout(d),
    };
    Cached::new(&d.metadata, &<GeneratedNode as Resource>::kind(&()), data)
}

/// The cache entry of a node's Service (owned by a GeneratedNode).
pub fn service(meta: &ObjectMeta) -> CachedService {
    let data = ServiceState {
        applied_hash: annotation(meta, APPLIED_HASH_ANNOTATION),
    };
    Cached::new(meta, &<GeneratedNode as Resource>::kind(&()), data)
}

/// The rollout counts of `d`.
pub fn rollout(d: &Deployment) -> Rollout {
    let Some(st) = d.status.as_ref() else {
        return Rollout::default();
    };
    Rollout {
        observed: st
            .observed_generation
            .is_some_and(|o| o >= d.metadata.generation.unwrap_or(0)),
        total: st.replicas.unwrap_or(0),
        updated: st.updated_replicas.unwrap_or(0),
        ready: st.ready_replicas.unwrap_or(0),
        available: st.available_replicas.unwrap_or(0),
        stalled: st.conditions.iter().flatten().any(|c| {
            c.type_ == "Progressing"
                && c.status == "False"
                && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
        }),
    }
}

/// A cache of `api`'s objects as `compact` makes them, and the reconcile triggers of their
/// owners (of kind `O`): one for every event of a new resourceVersion, deletions included. The
/// triggers' stream drives the watch, so it must be polled (by `Controller::reconcile_on`).
/// `observe` sees every event the cache takes in (to keep an index).
pub fn cache<W, K, T, O>(
    api: Api<W>,
    config: watcher::Config,
    compact: fn(&W) -> Cached<K, T>,
    mut observe: impl FnMut(&watcher::Event<Cached<K, T>>) + Send + 'static,
) -> (
    Store<Cached<K, T>>,
    impl Stream<Item = ObjectRef<O>> + Send + 'static,
)
where
    W: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
    K: Resource<DynamicType = ()> + 'static,
    T: Clone + Send + Sync + 'static,
    O: Resource<DynamicType = ()> + 'static,
{
    let (reader, mut writer) = reflector::store::<Cached<K, T>>();
    let store = reader.clone();
    let triggers = watcher(api, config)
        .default_backoff()
        .filter_map(move |event| {
            let owners = match event {
                Ok(event) => {
                    let event = map_event(event, |o| compact(&o));
                    let owners = touched_owners::<K, T, O>(&reader, &event);
                    writer.apply_watcher_event(&event);
                    observe(&event);
                    owners
                }
                Err(e) => {
                    tracing::warn!(kind = %K::kind(&()), error = %e, "watch failed; retrying");
                    Vec::new()
                }
            };
            futures::future::ready(Some(futures::stream::iter(owners)))
        })
        .flatten();
    (store, triggers)
}

/// The watch event of `compact(object)`.
pub fn map_event<K, C>(
    event: watcher::Event<K>,
    mut compact: impl FnMut(K) -> C,
) -> watcher::Event<C> {
    match event {
        watcher::Event::Apply(o) => watcher::Event::Apply(compact(o)),
        watcher::Event::Delete(o) => watcher::Event::Delete(compact(o)),
        watcher::Event::InitApply(o) => watcher::Event::InitApply(compact(o)),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

/// The owners to reconcile for `event`, judged against the store before it applies the event:
/// an object whose resourceVersion the store already holds (a relist repeating what the watch
/// delivered) triggers nothing.
fn touched_owners<K, T, O>(
    store: &Store<Cached<K, T>>,
    event: &watcher::Event<Cached<K, T>>,
) -> Vec<ObjectRef<O>>
where
    K: Resource<DynamicType = ()>,
    T: Clone,
    O: Resource<DynamicType = ()>,
{
    let (obj, deleted) = match event {
        watcher::Event::Apply(o) | watcher::Event::InitApply(o) => (o, false),
        watcher::Event::Delete(o) => (o, true),
        watcher::Event::Init | watcher::Event::InitDone => return Vec::new(),
    };
    let Some(owner) = &obj.owner else {
        return Vec::new();
    };
    let seen = !deleted
        && store
            .get(&ObjectRef::new(&obj.name).within(&obj.namespace))
            .is_some_and(|old| old.resource_version == obj.resource_version);
    if seen {
        return Vec::new();
    }
    vec![ObjectRef::new(&owner.name).within(&obj.namespace)]
}

/// Metadata-only objects keep the compact functions' signature (`fn(&K)`).
pub fn config_map_of(cm: &PartialObjectMeta<ConfigMap>) -> CachedConfigMap {
    config_map(&cm.metadata)
}

/// See [`config_map_of`].
pub fn service_of(svc: &PartialObjectMeta<Service>) -> CachedService {
    service(&svc.metadata)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::{DeploymentCondition, DeploymentStatus};

    use super::*;

    fn code_config_map(rv: &str, owner_uid: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some("hello-code".into()),
            namespace: Some("ns".into()),
            resource_version: Some(rv.into()),
            labels: Some(BTreeMap::from([(LABEL_GENERATION.into(), "hello".into())])),
            annotations: Some(BTreeMap::from([
                (CONTENT_HASH_ANNOTATION.into(), "abc".into()),
                (
                    "kubectl.kubernetes.io/last-applied-configuration".into(),
                    "{}".into(),
                ),
            ])),
            owner_references: Some(vec![OwnerReference {
                api_version: "codegen.omninode.ai/v1alpha1".into(),
                kind: "NodeGeneration".into(),
                name: "hello".into(),
                uid: owner_uid.into(),
                controller: Some(true),
                ..Default::default()
            }]),
            ..Default::default()
        }
    }

    #[test]
    fn a_config_map_entry_compares_equal_only_to_the_same_labels_owner_and_hashes() {
        let cached = config_map(&code_config_map("1", "uid-1"));
        assert_eq!(cached.data.content_hash.as_deref(), Some("abc"));
        assert_eq!(cached.data.generation.as_deref(), Some("hello"));
        assert!(cached.owned_by(Some("uid-1")));
        assert!(!cached.owned_by(Some("uid-2")) && !cached.owned_by(None));
        // Another resourceVersion or annotation nobody compares: the same entry data.
        assert_eq!(config_map(&code_config_map("7", "uid-1")).data, cached.data);
        // Another owner (a NodeGeneration deleted and created again): different.
        assert_ne!(config_map(&code_config_map("1", "uid-2")).data, cached.data);
        let mut relabelled = code_config_map("1", "uid-1");
        relabelled
            .labels
            .get_or_insert_default()
            .insert("team".into(), "x".into());
        assert_ne!(config_map(&relabelled).data, cached.data);
    }

    #[test]
    fn a_relisted_version_triggers_nothing_and_a_new_one_or_a_delete_its_owner() {
        let (store, mut writer) = reflector::store::<CachedConfigMap>();
        let v1 = config_map(&code_config_map("1", "uid-1"));
        let owners = |event: &watcher::Event<CachedConfigMap>| {
            touched_owners::<ConfigMap, CodeConfigMap, NodeGeneration>(&store, event)
        };
        let hello = vec![ObjectRef::<NodeGeneration>::new("hello").within("ns")];
        assert_eq!(owners(&watcher::Event::Apply(v1.clone())), hello);
        writer.apply_watcher_event(&watcher::Event::Apply(v1.clone()));
        assert_eq!(
            store
                .get(&ObjectRef::new("hello-code").within("ns"))
                .as_deref(),
            Some(&v1)
        );
        // A relist (after a restart of the watch) repeats version 1: no reconcile.
        writer.apply_watcher_event(&watcher::Event::Init);
        assert!(owners(&watcher::Event::InitApply(v1.clone())).is_empty());
        let v2 = config_map(&code_config_map("2", "uid-1"));
        assert_eq!(owners(&watcher::Event::InitApply(v2.clone())), hello);
        writer.apply_watcher_event(&watcher::Event::InitApply(v2.clone()));
        writer.apply_watcher_event(&watcher::Event::InitDone);
        assert_eq!(owners(&watcher::Event::Delete(v2)), hello);
        // Not controlled by a NodeGeneration: nobody to reconcile.
        let mut stray = code_config_map("3", "uid-1");
        stray.owner_references = None;
        assert!(owners(&watcher::Event::Apply(config_map(&stray))).is_empty());
    }

    #[test]
    fn a_deployment_entry_keeps_the_rollout_counts() {
        let mut d = Deployment::default();
        d.metadata.generation = Some(3);
        d.metadata.annotations = Some(BTreeMap::from([(
            APPLIED_HASH_ANNOTATION.into(),
            "h".into(),
        )]));
        d.status = Some(DeploymentStatus {
            observed_generation: Some(2),
            replicas: Some(2),
            updated_replicas: Some(1),
            ready_replicas: Some(2),
            available_replicas: Some(2),
            conditions: Some(vec![DeploymentCondition {
                type_: "Progressing".into(),
                status: "False".into(),
                reason: Some("ProgressDeadlineExceeded".into()),
                ..Default::default()
            }]),
            ..Default::default()
        });
        let cached = deployment(&d);
        assert_eq!(cached.data.applied_hash.as_deref(), Some("h"));
        assert_eq!(
            cached.data.rollout,
            Rollout {
                observed: false,
                total: 2,
                updated: 1,
                ready: 2,
                available: 2,
                stalled: true,
            }
        );
        assert_eq!(
            deployment(&Deployment::default()).data.rollout,
            Rollout::default()
        );
    }
}
