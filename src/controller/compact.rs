//! Compact cache entries: what a reconcile compares of an object, and nothing else. The
//! children's entries (code ConfigMaps, Deployments, Services) go into [`super::children`];
//! the controllers' own (GeneratedNodes, NodeGenerations) keep an identity of
//! [`identity`]'s and are `Resource`s of their kind through [`entry_of_kind`].
//!
//! A trimmed Kubernetes object still costs 2 to 3 KB in a cache (every label or annotation map
//! is a B-tree node of its own, an `ObjectMeta` is 0.3 KB before anything is set).

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus};
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;
use kube::runtime::watcher;
use serde::de::IgnoredAny;

use super::children::{Child, Controller, Digest, Entry, digest};
use super::lean::{Lean, LeanMeta};
use super::node_generation::{APPLIED_HASH_ANNOTATION, ENTRY_ANNOTATION};
use super::shared::SharedStrings;
use crate::api::{GeneratedNode, LABEL_GENERATION, NodeGeneration};
use crate::publish::configmap::CONTENT_HASH_ANNOTATION;

/// The identity of `meta` (name, namespace, generation, deletion timestamp, and apart its uid
/// and resourceVersion): the metadata a controller's own cache entry keeps.
pub fn identity(meta: ObjectMeta) -> (ObjectMeta, Version) {
    let version = Version {
        uid: Token::new(meta.uid),
        resource_version: Token::new(meta.resource_version),
    };
    let meta = ObjectMeta {
        name: meta.name,
        namespace: meta.namespace,
        generation: meta.generation,
        deletion_timestamp: meta.deletion_timestamp,
        ..Default::default()
    };
    (meta, version)
}

/// The shared copy of a value many cached specs and statuses repeat (a domain, a version, a
/// node's state).
pub fn shared_value(s: &str) -> Arc<str> {
    static VALUES: SharedStrings = SharedStrings::new();
    VALUES.get(s)
}

/// An object's uid and resourceVersion, kept beside a cache entry's `ObjectMeta` rather than
/// in it: kube-runtime's store copies both into the entry's key as well, four allocations an
/// entry for strings only our reconciles read. They are a UUID and a decimal number as the API
/// server makes them, and kept as such (anything else as text).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Version {
    uid: Token,
    resource_version: Token,
}

impl Version {
    pub fn uid(&self) -> Option<String> {
        self.uid.text()
    }

    /// Put the uid and resourceVersion back into `meta`.
    pub fn restore(&self, meta: &mut ObjectMeta) {
        meta.uid = self.uid.text();
        meta.resource_version = self.resource_version.text();
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
enum Token {
    #[default]
    None,
    Uuid([u8; 16]),
    Number(u64),
    Text(Box<str>),
}

impl Token {
    /// Kept as a UUID or a number only if it comes back exactly as it came.
    fn new(s: Option<String>) -> Self {
        let Some(s) = s else { return Token::None };
        if let Ok(n) = s.parse::<u64>()
            && n.to_string() == s
        {
            return Token::Number(n);
        }
        if let Ok(u) = uuid::Uuid::try_parse(&s)
            && u.hyphenated().to_string() == s
        {
            return Token::Uuid(u.into_bytes());
        }
        Token::Text(s.into_boxed_str())
    }

    fn text(&self) -> Option<String> {
        match self {
            Token::None => None,
            Token::Uuid(b) => Some(uuid::Uuid::from_bytes(*b).hyphenated().to_string()),
            Token::Number(n) => Some(n.to_string()),
            Token::Text(t) => Some(t.to_string()),
        }
    }
}

/// A hex SHA-256 as we write them (lowercase) kept as its 32 bytes; anything else as text.
#[derive(Clone, Debug, PartialEq)]
pub enum HexDigest {
    Sha256([u8; 32]),
    Text(Box<str>),
}

impl HexDigest {
    pub fn new(s: String) -> Self {
        let mut bytes = [0; 32];
        let lower = !s.bytes().any(|b| b.is_ascii_uppercase());
        if lower && hex::decode_to_slice(&s, &mut bytes).is_ok() {
            HexDigest::Sha256(bytes)
        } else {
            HexDigest::Text(s.into_boxed_str())
        }
    }

    pub fn text(&self) -> String {
        match self {
            HexDigest::Sha256(bytes) => hex::encode(bytes),
            HexDigest::Text(text) => text.to_string(),
        }
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

/// What the NodeGeneration reconcile compares of a code ConfigMap (strings as [`digest`]s).
#[derive(Clone, Debug, PartialEq)]
pub struct CodeConfigMap {
    pub content_hash: Option<Digest>,
    /// Digest of the module the node's startup script runs (`deploy::entry_file` of the node's
    /// spec, which a reconcile works out again and checks against this).
    pub entry: Option<Digest>,
    /// The generation label: which NodeGeneration's run made it.
    pub generation: Option<Digest>,
    /// Digest of the labels and owner references, compared with those of the desired object.
    pub shape: u64,
}

/// What the GeneratedNode reconcile reads of a Deployment: the digest of the hash of what it
/// applied, and the rollout's counts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeploymentState {
    pub applied_hash: Option<Digest>,
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

/// What the GeneratedNode reconcile compares of a Service: the digest of the hash of what it
/// applied.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServiceState {
    pub applied_hash: Option<Digest>,
}

pub fn annotation(meta: &ObjectMeta, key: &str) -> Option<String> {
    meta.annotations.as_ref()?.get(key).cloned()
}

/// The [`digest`] of annotation `key` of `meta`, without copying its value.
pub fn annotation_digest(meta: &ObjectMeta, key: &str) -> Option<Digest> {
    Some(digest(meta.annotations.as_ref()?.get(key)?))
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

/// The cache entry of `meta`, controlled by `controller`.
pub fn entry<T>(meta: &ObjectMeta, controller: Option<Controller>, data: T) -> Entry<T> {
    Entry {
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
        child: Child {
            resource_version: digest(meta.resource_version.as_deref().unwrap_or_default()),
            owner: controller.as_ref().map(|c| c.uid),
            data,
        },
        controller: controller.map(|c| c.name),
    }
}

/// The controller of `meta`, if it is of kind `kind`.
pub fn controller_of(meta: &ObjectMeta, kind: &str) -> Option<Controller> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true) && o.kind == kind)
        .map(|o| Controller {
            name: Arc::from(o.name.as_str()),
            uid: digest(&o.uid),
        })
}

/// The cache entry of a code ConfigMap (owned by a NodeGeneration).
pub fn config_map(meta: &ObjectMeta) -> Entry<CodeConfigMap> {
    let data = CodeConfigMap {
        content_hash: annotation_digest(meta, CONTENT_HASH_ANNOTATION),
        entry: annotation_digest(meta, ENTRY_ANNOTATION),
        generation: meta
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_GENERATION))
            .map(digest),
        shape: shape(meta.labels.as_ref(), meta.owner_references.as_ref()),
    };
    let owner = controller_of(meta, &<NodeGeneration as Resource>::kind(&()));
    entry(meta, owner, data)
}

/// A node's Deployment as its cache and its apply read it: metadata and status.
pub type DeploymentView = Lean<Deployment, IgnoredAny, DeploymentStatus>;

/// The cache entry of a node's Deployment (owned by a GeneratedNode).
pub fn deployment(meta: &ObjectMeta, status: Option<&DeploymentStatus>) -> Entry<DeploymentState> {
    let data = DeploymentState {
        applied_hash: annotation_digest(meta, APPLIED_HASH_ANNOTATION),
        rollout: rollout(meta, status),
    };
    let owner = controller_of(meta, &<GeneratedNode as Resource>::kind(&()));
    entry(meta, owner, data)
}

/// The cache entry of a node's Service (owned by a GeneratedNode).
pub fn service(meta: &ObjectMeta) -> Entry<ServiceState> {
    let data = ServiceState {
        applied_hash: annotation_digest(meta, APPLIED_HASH_ANNOTATION),
    };
    let owner = controller_of(meta, &<GeneratedNode as Resource>::kind(&()));
    entry(meta, owner, data)
}

/// The rollout counts of a Deployment.
pub fn rollout(meta: &ObjectMeta, status: Option<&DeploymentStatus>) -> Rollout {
    let Some(st) = status else {
        return Rollout::default();
    };
    Rollout {
        observed: st
            .observed_generation
            .is_some_and(|o| o >= meta.generation.unwrap_or(0)),
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

/// The compact functions of the watched kinds, as `children::cache` takes them (`fn(&K)`).
pub fn config_map_of(cm: &LeanMeta<ConfigMap>) -> Entry<CodeConfigMap> {
    config_map(&cm.metadata)
}

/// See [`config_map_of`].
pub fn service_of(svc: &LeanMeta<Service>) -> Entry<ServiceState> {
    service(&svc.metadata)
}

/// See [`config_map_of`].
pub fn deployment_of(d: &DeploymentView) -> Entry<DeploymentState> {
    deployment(&d.metadata, d.status.as_ref())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::DeploymentCondition;

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
        assert_eq!(
            (cached.namespace.as_str(), cached.name.as_str()),
            ("ns", "hello-code")
        );
        assert_eq!(cached.controller.as_deref(), Some("hello"));
        let cached = cached.child;
        assert_eq!(cached.data.content_hash, Some(digest("abc")));
        assert_eq!(cached.data.generation, Some(digest("hello")));
        assert!(cached.owned_by(Some("uid-1")));
        assert!(!cached.owned_by(Some("uid-2")) && !cached.owned_by(None));
        // Another resourceVersion or annotation nobody compares: the same entry data.
        let later = config_map(&code_config_map("7", "uid-1")).child;
        assert_eq!(later.data, cached.data);
        assert_ne!(later.resource_version, cached.resource_version);
        // Another owner (a NodeGeneration deleted and created again): different.
        assert_ne!(
            config_map(&code_config_map("1", "uid-2")).child.data,
            cached.data
        );
        let mut relabelled = code_config_map("1", "uid-1");
        relabelled
            .labels
            .get_or_insert_default()
            .insert("team".into(), "x".into());
        assert_ne!(config_map(&relabelled).child.data, cached.data);
        let mut stray = code_config_map("3", "uid-1");
        stray.owner_references = None;
        let stray = config_map(&stray);
        assert_eq!((stray.controller, stray.child.owner), (None, None));
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
        let cached = deployment(&d.metadata, d.status.as_ref()).child;
        assert_eq!(cached.data.applied_hash, Some(digest("h")));
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
            deployment(&ObjectMeta::default(), None).child.data.rollout,
            Rollout::default()
        );
    }

    #[test]
    fn a_version_comes_back_exactly() {
        for (uid, rv) in [
            (Some("0b6f3c1e-2a4d-4e5f-9a7b-1c2d3e4f5a6b"), Some("123456")),
            (Some("0B6F3C1E-2A4D-4E5F-9A7B-1C2D3E4F5A6B"), Some("0042")),
            (Some("not-a-uuid"), Some("abc")),
            (None, None),
        ] {
            let meta = ObjectMeta {
                name: Some("n".into()),
                uid: uid.map(Into::into),
                resource_version: rv.map(Into::into),
                ..Default::default()
            };
            let (mut kept, version) = identity(meta.clone());
            assert_eq!(
                (kept.uid.as_deref(), kept.resource_version.as_deref()),
                (None, None)
            );
            version.restore(&mut kept);
            assert_eq!(kept, meta);
        }
    }

    #[test]
    fn a_hex_digest_comes_back_exactly() {
        let sha = "1d18c161cc6eab1bdffda900cda2a8ba6fca470ff3e358ad981dc532a95e3a49";
        for text in [sha, &sha.to_uppercase(), "abc", ""] {
            assert_eq!(HexDigest::new(text.to_string()).text(), text);
        }
        assert!(matches!(HexDigest::new(sha.into()), HexDigest::Sha256(_)));
    }
}
