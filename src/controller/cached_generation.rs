//! A NodeGeneration as its controller caches it: identity, spec without the PRD's text, the
//! status trimmed to what a settled generation's refresh compares (`trim_cached`), and the
//! inline PRD's digest.
//!
//! Its labels and annotations (Argo CD's tracking ones, the user's own) are never read by a
//! reconcile; as maps they cost about 0.5 KB each however few their entries. The controller runs
//! on these entries (a `Resource` of the same kind) and rebuilds the object its reconcile reads
//! with [`CachedGeneration::to_object`]; a generation that must run reads the whole object from
//! the API server first.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::cached_status::CachedCondition;
use super::compact;
use super::node_generation::{CACHED_PRD_DIGEST, trim_cached};
use crate::api::{NodeGeneration, NodeGenerationSpec, NodeGenerationStatus};

/// A cached NodeGeneration.
#[derive(Clone, Debug, PartialEq)]
pub struct CachedGeneration {
    /// Name, namespace, generation and deletion timestamp only.
    pub metadata: ObjectMeta,
    /// Its uid and resourceVersion.
    pub version: compact::Version,
    /// The spec, without an inline PRD's text.
    pub spec: NodeGenerationSpec,
    /// The status without its conditions, which are kept as `conditions`.
    pub status: Option<NodeGenerationStatus>,
    pub conditions: Box<[CachedCondition]>,
    /// The SHA-256 of the inline PRD, if the spec had one (we made it: lowercase hex, kept as
    /// its 32 bytes).
    prd_digest: Option<[u8; 32]>,
}

impl From<NodeGeneration> for CachedGeneration {
    fn from(mut ng: NodeGeneration) -> Self {
        trim_cached(&mut ng);
        let NodeGeneration {
            metadata,
            spec,
            mut status,
        } = ng;
        let conditions = status
            .as_mut()
            .map(|s| std::mem::take(&mut s.conditions))
            .unwrap_or_default()
            .into_iter()
            .map(Into::into)
            .collect();
        let prd_digest = metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(CACHED_PRD_DIGEST))
            .and_then(|hex| {
                let mut digest = [0; 32];
                hex::decode_to_slice(hex, &mut digest).ok()?;
                Some(digest)
            });
        let (metadata, version) = compact::identity(metadata);
        CachedGeneration {
            metadata,
            version,
            spec,
            status,
            conditions,
            prd_digest,
        }
    }
}

impl CachedGeneration {
    /// The NodeGeneration as the reconcile reads a cached one: the identity, the spec with the
    /// PRD's digest standing for its text, and the trimmed status.
    pub fn to_object(&self) -> NodeGeneration {
        let mut metadata = self.metadata.clone();
        self.version.restore(&mut metadata);
        metadata.annotations = self
            .prd_digest
            .map(|d| BTreeMap::from([(CACHED_PRD_DIGEST.to_string(), hex::encode(d))]));
        let mut status = self.status.clone();
        if let Some(status) = status.as_mut() {
            status.conditions = self
                .conditions
                .iter()
                .map(CachedCondition::to_condition)
                .collect();
        }
        NodeGeneration {
            metadata,
            spec: self.spec.clone(),
            status,
        }
    }
}

compact::entry_of_kind!(CachedGeneration, NodeGeneration);

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::reflector::ObjectRef;

    #[test]
    fn an_entry_keeps_the_prd_as_its_digest_and_no_labels_or_annotations() {
        let mut ng = NodeGeneration::new(
            "orders",
            NodeGenerationSpec {
                prd: Some("# Orders\n".into()),
                ..Default::default()
            },
        );
        ng.metadata.namespace = Some("shop".into());
        ng.metadata.uid = Some("ng-uid".into());
        ng.metadata.generation = Some(3);
        ng.metadata.labels = Some(BTreeMap::from([("team".into(), "orders".into())]));
        // Set by a user, this annotation would stand for a PRD that is not there.
        ng.metadata.annotations = Some(BTreeMap::from([
            (CACHED_PRD_DIGEST.to_string(), "forged".to_string()),
            (
                "argocd.argoproj.io/tracking-id".to_string(),
                "x".to_string(),
            ),
        ]));
        let entry = CachedGeneration::from(ng.clone());
        assert_eq!(entry.spec.prd, None);
        let digest = hex::encode(entry.prd_digest.unwrap());
        assert_eq!(
            digest,
            "00d427d86cda4ae7d0683fa95fd7ed3da046d200fe513c6bc1d074850328232d"
        );
        assert_eq!(entry.metadata.labels, None);
        assert_eq!(entry.metadata.annotations, None);
        assert_eq!(entry.metadata.generation, Some(3));
        assert_eq!(
            ObjectRef::from_obj(&entry).erase(),
            ObjectRef::from_obj(&ng).erase()
        );

        let rebuilt = entry.to_object();
        assert_eq!(
            rebuilt.metadata.annotations,
            Some(BTreeMap::from([(CACHED_PRD_DIGEST.to_string(), digest)]))
        );
        assert_eq!(rebuilt.spec.prd, None);
    }
}
