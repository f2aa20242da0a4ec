//! Objects as the operator reads them from the API server: without their managed fields, and
//! without the parts no reconcile reads (a Deployment's or a pod's spec).
//!
//! Every watch event, list page and apply response carries `metadata.managedFields`: one JSON
//! tree per field manager, mirroring every field it set (for a node's Deployment, the whole pod
//! template; for its pods, the ReplicaSet's). kube's `ObjectMeta` parses each tree into
//! `serde_json` values, a map and a string per field, only for the cache to drop them at once;
//! a Deployment's spec is as many again. Here serde skips what is not read, without
//! allocating. (The restarted operator, which lists everything, peaked 10 MiB lower at 5,000
//! generations: benchmarks.md.)

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::marker::PhantomData;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::Resource;
use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer};

use crate::api::{
    GeneratedNode, GeneratedNodeSpec, GeneratedNodeStatus, NodeGeneration, NodeGenerationSpec,
    NodeGenerationStatus,
};

/// An object of kind `K` with its spec read as `P` and its status as `S` (`IgnoredAny`: not
/// read at all), and its metadata without managed fields. Asked for whole of the API server.
#[derive(Clone, Debug, Deserialize)]
#[serde(bound(deserialize = "P: Deserialize<'de>, S: Deserialize<'de>"))]
pub struct Lean<K, P = IgnoredAny, S = IgnoredAny> {
    #[serde(deserialize_with = "metadata")]
    pub metadata: ObjectMeta,
    /// Every kind read so has one (`IgnoredAny` accepts any).
    pub spec: P,
    pub status: Option<S>,
    #[serde(skip)]
    kind: PhantomData<fn() -> K>,
}

/// For tests: the operator only ever reads these from the API server.
#[cfg(test)]
impl<K, P, S> Lean<K, P, S> {
    pub fn new(metadata: ObjectMeta, spec: P, status: Option<S>) -> Self {
        Lean {
            metadata,
            spec,
            status,
            kind: PhantomData,
        }
    }
}

/// The metadata alone of an object of kind `K`, without managed fields: asked of the API
/// server as metadata (like kube's `PartialObjectMeta`, which parses the managed fields).
#[derive(Clone, Debug, Deserialize)]
pub struct LeanMeta<K> {
    #[serde(deserialize_with = "metadata")]
    pub metadata: ObjectMeta,
    #[serde(skip)]
    kind: PhantomData<fn() -> K>,
}

#[cfg(test)]
impl<K> LeanMeta<K> {
    pub fn new(metadata: ObjectMeta) -> Self {
        LeanMeta {
            metadata,
            kind: PhantomData,
        }
    }
}

/// `Resource` for a view of kind `K`: its type information is `K`'s.
macro_rules! resource_of_kind {
    ($view:ident [$($param:ident),*], metadata_api = $metadata_api:literal) => {
        impl<K: Resource, $($param),*> Resource for $view<K, $($param),*> {
            type DynamicType = K::DynamicType;
            type Scope = K::Scope;

            fn kind(dt: &Self::DynamicType) -> Cow<'_, str> {
                K::kind(dt)
            }
            fn group(dt: &Self::DynamicType) -> Cow<'_, str> {
                K::group(dt)
            }
            fn version(dt: &Self::DynamicType) -> Cow<'_, str> {
                K::version(dt)
            }
            fn plural(dt: &Self::DynamicType) -> Cow<'_, str> {
                K::plural(dt)
            }
            fn metadata_api() -> bool {
                $metadata_api
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

resource_of_kind!(Lean[P, S], metadata_api = false);
resource_of_kind!(LeanMeta[], metadata_api = true);

/// A GeneratedNode as its controller's cache reads it.
pub type GeneratedNodeView = Lean<GeneratedNode, GeneratedNodeSpec, GeneratedNodeStatus>;

/// A NodeGeneration as its controller's cache reads it.
pub type NodeGenerationView = Lean<NodeGeneration, NodeGenerationSpec, NodeGenerationStatus>;

impl From<GeneratedNodeView> for GeneratedNode {
    fn from(gn: GeneratedNodeView) -> Self {
        GeneratedNode {
            metadata: gn.metadata,
            spec: gn.spec,
            status: gn.status,
        }
    }
}

impl From<NodeGenerationView> for NodeGeneration {
    fn from(ng: NodeGenerationView) -> Self {
        NodeGeneration {
            metadata: ng.metadata,
            spec: ng.spec,
            status: ng.status,
        }
    }
}

/// `ObjectMeta` read without its managed fields (every other field as kube reads it).
fn metadata<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Meta {
        annotations: Option<BTreeMap<String, String>>,
        creation_timestamp: Option<Time>,
        deletion_grace_period_seconds: Option<i64>,
        deletion_timestamp: Option<Time>,
        finalizers: Option<Vec<String>>,
        generate_name: Option<String>,
        generation: Option<i64>,
        labels: Option<BTreeMap<String, String>>,
        name: Option<String>,
        namespace: Option<String>,
        owner_references: Option<Vec<OwnerReference>>,
        resource_version: Option<String>,
        self_link: Option<String>,
        uid: Option<String>,
    }
    let m = Meta::deserialize(d)?;
    Ok(ObjectMeta {
        annotations: m.annotations,
        creation_timestamp: m.creation_timestamp,
        deletion_grace_period_seconds: m.deletion_grace_period_seconds,
        deletion_timestamp: m.deletion_timestamp,
        finalizers: m.finalizers,
        generate_name: m.generate_name,
        generation: m.generation,
        labels: m.labels,
        managed_fields: None,
        name: m.name,
        namespace: m.namespace,
        owner_references: m.owner_references,
        resource_version: m.resource_version,
        self_link: m.self_link,
        uid: m.uid,
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus};
    use k8s_openapi::api::core::v1::ConfigMap;

    use super::*;

    /// A Deployment as a watch delivers it, managed fields and all.
    const DEPLOYMENT: &str = r#"{
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {
            "name": "hello", "namespace": "ns", "uid": "u-1", "resourceVersion": "42",
            "generation": 3, "creationTimestamp": "2026-12-06T00:00:00Z",
            "labels": {"app.kubernetes.io/name": "hello"},
            "annotations": {"omninode.ai/applied-hash": "h"},
            "ownerReferences": [{"apiVersion": "codegen.omninode.ai/v1alpha1",
                "kind": "GeneratedNode", "name": "hello", "uid": "u-0", "controller": true}],
            "finalizers": ["f"],
            "managedFields": [{"manager": "omninode-operator", "operation": "Apply",
                "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:replicas": {}}}}]
        },
        "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "node"}]}}},
        "status": {"observedGeneration": 3, "readyReplicas": 2}
    }"#;

    #[test]
    fn a_lean_object_has_all_of_its_metadata_but_the_managed_fields() {
        let full: Deployment = serde_json::from_str(DEPLOYMENT).unwrap();
        let lean: Lean<Deployment, IgnoredAny, DeploymentStatus> =
            serde_json::from_str(DEPLOYMENT).unwrap();
        assert!(full.metadata.managed_fields.is_some());
        let expected = ObjectMeta {
            managed_fields: None,
            ..full.metadata
        };
        assert_eq!(lean.metadata, expected);
        assert_eq!(lean.status, full.status);
        // Metadata only: a PartialObjectMetadata, or any object, reads the same.
        let meta: LeanMeta<Deployment> = serde_json::from_str(DEPLOYMENT).unwrap();
        assert_eq!(meta.metadata, expected);
    }

    #[test]
    fn a_lean_object_is_a_resource_of_its_kind() {
        type View = Lean<Deployment, IgnoredAny, DeploymentStatus>;
        assert_eq!(View::kind(&()), "Deployment");
        assert_eq!(View::api_version(&()), "apps/v1");
        assert_eq!(View::plural(&()), "deployments");
        assert!(!View::metadata_api());
        assert!(LeanMeta::<ConfigMap>::metadata_api());
        assert_eq!(
            LeanMeta::<ConfigMap>::url_path(&(), Some("ns")),
            "/api/v1/namespaces/ns/configmaps"
        );
    }
}
