//! Objects grouped by the GeneratedNodes they name, kept up to date from their watch: what a
//! reconcile asks ("the nodes that depend on this one") without a scan of a cache that holds every such object of the namespace. Asked at every change, a
//! scan makes a large namespace quadratic.

use std::collections::HashMap;

use kube::runtime::reflector::{Lookup, ObjectRef};
use kube::runtime::watcher;

use crate::api::GeneratedNode;

/// Objects of kind `K` by the GeneratedNodes (of their namespace) that `names` finds in them.
pub struct ByNode<K: Lookup<DynamicType = ()>> {
    names: fn(&K) -> Vec<String>,
    /// A node's objects are one or two (a pod, two during a rollout): a vector, not a set,
    /// whose smallest table is four times the size.
    by_node: HashMap<ObjectRef<GeneratedNode>, Vec<ObjectRef<K>>>,
    of: HashMap<ObjectRef<K>, Vec<ObjectRef<GeneratedNode>>>,
}

impl<K: Lookup<DynamicType = ()>> ByNode<K> {
    pub fn new(names: fn(&K) -> Vec<String>) -> Self {
        ByNode {
            names,
            by_node: HashMap::new(),
            of: HashMap::new(),
        }
    }

    /// Keep up to date from one watch event; a relist starts over.
    pub fn update(&mut self, event: &watcher::Event<K>) {
        match event {
            watcher::Event::Init => {
                self.by_node.clear();
                self.of.clear();
            }
            watcher::Event::Apply(obj) | watcher::Event::InitApply(obj) => self.apply(obj),
            watcher::Event::Delete(obj) => self.remove(&obj.to_object_ref(())),
            watcher::Event::InitDone => {}
        }
    }

    /// Take in an object as it is now.
    pub fn apply(&mut self, obj: &K) {
        let mut me = obj.to_object_ref(());
        // Its resourceVersion and uid would be copied into both maps, and nothing reads them.
        me.extra = Default::default();
        self.remove(&me);
        let Some(ns) = obj.namespace() else { return };
        let nodes: Vec<_> = (self.names)(obj)
            .iter()
            .map(|n| ObjectRef::new(n).within(&ns))
            .collect();
        for node in &nodes {
            let objects = self.by_node.entry(node.clone()).or_default();
            if !objects.contains(&me) {
                objects.push(me.clone());
            }
        }
        if !nodes.is_empty() {
            self.of.insert(me, nodes);
        }
    }

    /// Forget a deleted object.
    pub fn remove(&mut self, obj: &ObjectRef<K>) {
        for node in self.of.remove(obj).into_iter().flatten() {
            if let Some(set) = self.by_node.get_mut(&node) {
                set.retain(|o| o != obj);
                if set.is_empty() {
                    self.by_node.remove(&node);
                }
            }
        }
    }

    /// The objects that name `node`.
    pub fn get(&self, node: &ObjectRef<GeneratedNode>) -> Vec<ObjectRef<K>> {
        self.by_node.get(node).cloned().unwrap_or_default()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.of.is_empty() && self.by_node.is_empty()
    }
}
