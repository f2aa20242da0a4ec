//! The GeneratedNodes that depend on each one (`spec.dependsOn`), kept up to date from their
//! watch: what a dependency's status change asks ("which nodes wait for this one?") without a
//! scan of every node of the namespace, which would make a large namespace quadratic.
//!
//! Names are kept once per namespace and shared by both directions (a node's dependencies,
//! a dependency's dependents): at 20,000 generations, object references with their own copies
//! of name and namespace cost about 0.4 KB per node.

use std::collections::HashMap;
use std::sync::Arc;

use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;

use super::cached_node::CachedNode;

/// Dependents by dependency, per namespace.
#[derive(Default)]
pub struct Dependents {
    namespaces: HashMap<Arc<str>, Namespace>,
}

#[derive(Default)]
struct Namespace {
    /// A dependency's dependents: one or a few, so a vector of exact size.
    dependents: HashMap<Arc<str>, Vec<Arc<str>>>,
    /// A dependent's dependencies, as last seen.
    dependencies: HashMap<Arc<str>, Box<[Arc<str>]>>,
}

impl Namespace {
    /// The shared copy of `name`, if either map holds it.
    fn name(&self, name: &str) -> Arc<str> {
        self.dependencies
            .get_key_value(name)
            .map(|(k, _)| k)
            .or_else(|| self.dependents.get_key_value(name).map(|(k, _)| k))
            .cloned()
            .unwrap_or_else(|| Arc::from(name))
    }

    fn remove(&mut self, node: &str) {
        for dependency in self.dependencies.remove(node).into_iter().flatten() {
            if let Some(dependents) = self.dependents.get_mut(&dependency) {
                dependents.retain(|d| &**d != node);
                if dependents.is_empty() {
                    self.dependents.remove(&dependency);
                }
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.dependents.is_empty() && self.dependencies.is_empty()
    }
}

impl Dependents {
    /// Keep up to date from one watch event; a relist starts over.
    pub fn update(&mut self, event: &watcher::Event<CachedNode>) {
        match event {
            watcher::Event::Init => self.namespaces.clear(),
            watcher::Event::Apply(gn) | watcher::Event::InitApply(gn) => self.apply(gn),
            watcher::Event::Delete(gn) => {
                self.remove(&gn.namespace().unwrap_or_default(), &gn.name_any())
            }
            watcher::Event::InitDone => {}
        }
    }

    /// Take in a node as it is now.
    pub fn apply(&mut self, gn: &CachedNode) {
        let (Some(ns), Some(name)) = (&gn.metadata.namespace, &gn.metadata.name) else {
            return;
        };
        self.remove(ns, name);
        if gn.spec.depends_on.is_empty() {
            return;
        }
        let namespace = match self.namespaces.get_mut(ns.as_str()) {
            Some(namespace) => namespace,
            None => self.namespaces.entry(Arc::from(ns.as_str())).or_default(),
        };
        let me = namespace.name(name);
        let mut dependencies: Vec<Arc<str>> = Vec::with_capacity(gn.spec.depends_on.len());
        for dependency in &gn.spec.depends_on {
            if dependencies.iter().any(|d| **d == **dependency) {
                continue;
            }
            let dependency = namespace.name(dependency);
            let dependents = namespace.dependents.entry(dependency.clone()).or_default();
            dependents.reserve_exact(1);
            dependents.push(me.clone());
            dependencies.push(dependency);
        }
        namespace
            .dependencies
            .insert(me, dependencies.into_boxed_slice());
    }

    /// Forget a deleted node.
    pub fn remove(&mut self, ns: &str, name: &str) {
        if let Some(namespace) = self.namespaces.get_mut(ns) {
            namespace.remove(name);
            if namespace.is_empty() {
                self.namespaces.remove(ns);
            }
        }
    }

    /// The nodes that depend on node `name` of namespace `ns`.
    pub fn of(&self, ns: &str, name: &str) -> Vec<ObjectRef<CachedNode>> {
        self.namespaces
            .get(ns)
            .and_then(|namespace| namespace.dependents.get(name))
            .into_iter()
            .flatten()
            .map(|d| ObjectRef::new(d).within(ns))
            .collect()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{GeneratedNode, GeneratedNodeDeploy, GeneratedNodeSpec, NodeSource, NodeType};

    fn node(name: &str, depends_on: &[&str]) -> CachedNode {
        let spec = GeneratedNodeSpec {
            node_type: NodeType::Effect,
            domain: "shop".into(),
            service_name: name.into(),
            version: "1.0.0".into(),
            source: NodeSource {
                config_map: None,
                git: None,
            },
            content_hash: "h".into(),
            deploy: GeneratedNodeDeploy::default(),
            depends_on: depends_on.iter().map(|d| d.to_string()).collect(),
            runtime: None,
        };
        let mut gn = GeneratedNode::new(name, spec);
        gn.metadata.namespace = Some("shop".into());
        CachedNode::from(gn)
    }

    fn names(refs: Vec<ObjectRef<CachedNode>>) -> Vec<String> {
        refs.into_iter().map(|r| r.name).collect()
    }

    #[test]
    fn dependents_follow_each_nodes_latest_dependencies() {
        let mut index = Dependents::default();
        index.apply(&node("api", &["store", "cache"]));
        index.apply(&node("worker", &["store", "store"]));
        index.apply(&node("store", &[]));
        assert_eq!(names(index.of("shop", "store")), ["api", "worker"]);
        assert_eq!(names(index.of("shop", "cache")), ["api"]);
        assert_eq!(index.of("other", "store"), []);
        assert_eq!(index.of("shop", "api"), []);

        // A node that no longer depends on one is no longer its dependent.
        index.apply(&node("api", &["cache"]));
        assert_eq!(names(index.of("shop", "store")), ["worker"]);
        index.update(&watcher::Event::Delete(node("worker", &["store"])));
        assert_eq!(index.of("shop", "store"), []);
        index.remove("shop", "api");
        assert!(index.is_empty());
    }

    #[test]
    fn a_relist_starts_over() {
        let mut index = Dependents::default();
        index.apply(&node("api", &["store"]));
        index.update(&watcher::Event::Init);
        assert!(index.is_empty());
        index.update(&watcher::Event::InitApply(node("api", &["cache"])));
        assert_eq!(index.of("shop", "store"), []);
        assert_eq!(names(index.of("shop", "cache")), ["api"]);
    }
}
