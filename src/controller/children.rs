//! The caches of what the operator's objects own: code ConfigMaps, Deployments, Services and
//! the nodes' pods, each kept as the few fields a reconcile compares, in an index of our own.
//!
//! A kube-runtime store keeps every object behind an `Arc`, under a key with its own copies of
//! the name and namespace, and each string of an entry is an allocation of its own: a compact
//! Deployment entry cost 0.7 KB in 9 allocations there (measured), a pod 1.5 KB with its index
//! by node, and a node has four such children. Here a child is filed under the digest of its
//! name (the namespace is stored once) and keeps 64-bit digests of the strings a reconcile only
//! compares; only the index by controller keeps names.
//!
//! The watch of each kind also stands in for kube-runtime's `owns` and its `predicate_filter`:
//! each event updates the index and, when the resourceVersion is new (not a relist's repeat),
//! triggers the owner's reconcile.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::num::NonZeroU64;
use std::sync::{Arc, PoisonError, RwLock};

use futures::{Stream, StreamExt};
use kube::Resource;
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, watcher};

/// A 64-bit digest of a value a reconcile only compares for equality (a resourceVersion, a
/// uid, a content hash). Never zero, so that an optional one takes no more room (8 bytes, not
/// 16: the caches' tables hold tens of thousands of them).
pub type Digest = NonZeroU64;

/// The [`Digest`] of `value`. Kept in memory only, so the hasher need not be stable across
/// builds.
pub fn digest<T: Hash + ?Sized>(value: &T) -> Digest {
    let mut h = DefaultHasher::new();
    value.hash(&mut h);
    NonZeroU64::new(h.finish()).unwrap_or(NonZeroU64::MIN)
}

/// The object that controls a child: for a pod, the GeneratedNode its label names.
#[derive(Clone, Debug, PartialEq)]
pub struct Controller {
    pub name: Arc<str>,
    /// Digest of its uid.
    pub uid: Digest,
}

/// A cached child: what its reconciles read of it, `T`.
#[derive(Clone, Debug, PartialEq)]
pub struct Child<T> {
    /// Digest of its resourceVersion: a relist's repeat of a known version triggers nothing.
    pub resource_version: Digest,
    /// Digest of its controller's uid.
    pub owner: Option<Digest>,
    pub data: T,
}

impl Controller {
    /// Whether `controller` is the object with this uid.
    pub fn is(controller: Option<&Controller>, uid: Option<&str>) -> bool {
        owned(controller.map(|c| c.uid), uid)
    }
}

/// Whether `owner` (a uid's digest) is `uid`.
fn owned(owner: Option<Digest>, uid: Option<&str>) -> bool {
    match (uid, owner) {
        (Some(uid), Some(owner)) => owner == digest(uid),
        _ => false,
    }
}

impl<T> Child<T> {
    /// Whether the object with this uid controls the child.
    pub fn owned_by(&self, uid: Option<&str>) -> bool {
        owned(self.owner, uid)
    }
}

/// A child as its watch delivers it, before it is filed under its namespace and name.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry<T> {
    pub namespace: String,
    pub name: String,
    /// The name of its controller, whose reconcile its changes trigger.
    pub controller: Option<Arc<str>>,
    pub child: Child<T>,
}

/// One namespace's children, and (if the index is kept) their names by controller.
///
/// Children are filed under the digest of their name: a Deployment or a Service is looked up
/// by its node's name and never listed, so its entry keeps no string at all. Only the index by
/// controller keeps names (a generation's ConfigMaps are deleted by name, a pod's name is in
/// its node's message), each once.
struct Namespace<T> {
    children: HashMap<Digest, Child<T>>,
    /// A controller's children are one or two: a boxed slice, not a set or a growing vector.
    by_controller: HashMap<Arc<str>, Box<[Arc<str>]>>,
}

impl<T> Default for Namespace<T> {
    fn default() -> Self {
        Namespace {
            children: HashMap::new(),
            by_controller: HashMap::new(),
        }
    }
}

impl<T> Namespace<T> {
    /// Take `name` out of its controller's list. `hint` is the controller its latest event
    /// names, almost always the one it is listed under; if not (it was relabelled or
    /// released), every list is searched.
    fn unlist(&mut self, name: &str, hint: Option<&str>) {
        let listed = |names: &[Arc<str>]| names.iter().any(|n| &**n == name);
        let controller = match hint.and_then(|h| self.by_controller.get_key_value(h)) {
            Some((c, names)) if listed(names) => c.clone(),
            _ => match self.by_controller.iter().find(|(_, names)| listed(names)) {
                Some((c, _)) => c.clone(),
                None => return,
            },
        };
        let rest: Box<[Arc<str>]> = self
            .by_controller
            .remove(&controller)
            .unwrap_or_default()
            .iter()
            .filter(|n| &***n != name)
            .cloned()
            .collect();
        if !rest.is_empty() {
            self.by_controller.insert(controller, rest);
        }
    }

    /// File `name` under `controller`, sharing the controller's name if it is listed already.
    fn list(&mut self, name: &str, controller: Arc<str>) {
        let (key, names) = match self.by_controller.remove_entry(&controller) {
            Some((key, names)) => (key, names),
            None => (controller, Box::default()),
        };
        let names = names.iter().cloned().chain([Arc::from(name)]).collect();
        self.by_controller.insert(key, names);
    }
}

/// Which children a cache lists by controller: `None` for no index; else those this says
/// matter to their controller (every ConfigMap of a generation; the pods of a node that are
/// failing, unready or going, the others saying nothing about it).
pub type Listed<T> = Option<fn(&T) -> bool>;

/// For [`Listed`]: every child.
pub fn every<T>(_: &T) -> bool {
    true
}

/// Every namespace's children.
struct Index<T> {
    namespaces: HashMap<Arc<str>, Namespace<T>>,
    listed: Listed<T>,
}

impl<T> Index<T> {
    fn new(listed: Listed<T>) -> Self {
        Index {
            namespaces: HashMap::new(),
            listed,
        }
    }

    fn is_listed(&self, child: &Child<T>) -> bool {
        self.listed.is_some_and(|listed| listed(&child.data))
    }

    fn get(&self, ns: &str, name: &str) -> Option<&Child<T>> {
        self.namespaces.get(ns)?.children.get(&digest(name))
    }

    fn insert(&mut self, entry: Entry<T>) {
        let Entry {
            namespace,
            name,
            controller,
            child,
        } = entry;
        self.remove(&namespace, &name, controller.as_deref());
        let listed = self.is_listed(&child);
        let ns = match self.namespaces.get_mut(namespace.as_str()) {
            Some(ns) => ns,
            None => self.namespaces.entry(Arc::from(namespace)).or_default(),
        };
        if let Some(controller) = controller.filter(|_| listed) {
            ns.list(&name, controller);
        }
        ns.children.insert(digest(&name), child);
    }

    /// Remove child `name` of namespace `ns_name`; `controller` is the one its latest event
    /// names.
    fn remove(&mut self, ns_name: &str, name: &str, controller: Option<&str>) {
        let listed = self.listed;
        let Some(ns) = self.namespaces.get_mut(ns_name) else {
            return;
        };
        let Some(old) = ns.children.remove(&digest(name)) else {
            return;
        };
        if listed.is_some_and(|listed| listed(&old.data)) {
            ns.unlist(name, controller);
        }
        if ns.children.is_empty() {
            self.namespaces.remove(ns_name);
        }
    }
}

/// The read side of a children cache, shared by every reconcile.
pub struct Children<T> {
    index: Arc<RwLock<Index<T>>>,
    ready: tokio::sync::watch::Receiver<bool>,
}

impl<T> Clone for Children<T> {
    fn clone(&self) -> Self {
        Children {
            index: self.index.clone(),
            ready: self.ready.clone(),
        }
    }
}

impl<T: Clone> Children<T> {
    /// The child `name` of namespace `ns`.
    pub fn get(&self, ns: &str, name: &str) -> Option<Child<T>> {
        let index = self.index.read().unwrap_or_else(PoisonError::into_inner);
        index.get(ns, name).cloned()
    }

    /// The children of namespace `ns` that `controller` controls and the cache lists (see
    /// [`Listed`]), by name.
    pub fn controlled_by(&self, ns: &str, controller: &str) -> Vec<(Arc<str>, Child<T>)> {
        let index = self.index.read().unwrap_or_else(PoisonError::into_inner);
        let Some(space) = index.namespaces.get(ns) else {
            return Vec::new();
        };
        let mut children: Vec<_> = space
            .by_controller
            .get(controller)
            .into_iter()
            .flatten()
            .filter_map(|name| Some((name.clone(), space.children.get(&digest(name))?.clone())))
            .collect();
        children.sort_by(|a, b| a.0.cmp(&b.0));
        children
    }

    /// Resolves once the cache has its first full list; fails if its watch is gone first.
    pub async fn wait_until_ready(&self) -> Result<(), tokio::sync::watch::error::RecvError> {
        self.ready.clone().wait_for(|r| *r).await.map(|_| ())
    }
}

/// The write side: takes in the watch events.
pub struct Writer<T> {
    index: Arc<RwLock<Index<T>>>,
    /// A relist in progress: the index it is building.
    relist: Option<Index<T>>,
    ready: tokio::sync::watch::Sender<bool>,
}

/// An empty cache, listing the children `listed` by controller.
pub fn store<T>(listed: Listed<T>) -> (Children<T>, Writer<T>) {
    let index = Arc::new(RwLock::new(Index::new(listed)));
    let (ready, ready_rx) = tokio::sync::watch::channel(false);
    let children = Children {
        index: index.clone(),
        ready: ready_rx,
    };
    let writer = Writer {
        index,
        relist: None,
        ready,
    };
    (children, writer)
}

impl<T> Writer<T> {
    /// Take in one watch event; returns the controller (namespace and name) to reconcile for
    /// it: an object whose resourceVersion the cache already holds (a relist repeating what
    /// the watch delivered) triggers nothing.
    pub fn apply(&mut self, event: watcher::Event<Entry<T>>) -> Option<(String, Arc<str>)> {
        let mut index = self.index.write().unwrap_or_else(PoisonError::into_inner);
        match event {
            watcher::Event::Init => {
                self.relist = Some(Index::new(index.listed));
                None
            }
            watcher::Event::InitDone => {
                if let Some(fresh) = self.relist.take() {
                    *index = fresh;
                }
                self.ready.send_replace(true);
                None
            }
            watcher::Event::Apply(entry) | watcher::Event::InitApply(entry) => {
                let seen = index
                    .get(&entry.namespace, &entry.name)
                    .is_some_and(|old| old.resource_version == entry.child.resource_version);
                let trigger = entry
                    .controller
                    .clone()
                    .filter(|_| !seen)
                    .map(|o| (entry.namespace.clone(), o));
                match self.relist.as_mut() {
                    Some(fresh) => fresh.insert(entry),
                    None => index.insert(entry),
                }
                trigger
            }
            watcher::Event::Delete(entry) => {
                let controller = entry.controller.as_deref();
                index.remove(&entry.namespace, &entry.name, controller);
                if let Some(fresh) = self.relist.as_mut() {
                    fresh.remove(&entry.namespace, &entry.name, controller);
                }
                Some((entry.namespace, entry.controller?))
            }
        }
    }
}

/// A cache of `api`'s objects as `compact` makes them (those `listed` indexed by controller),
/// and the reconcile triggers of their controllers (of kind `O`). The
/// triggers' stream drives the watch, so it must be polled (by `Controller::reconcile_on`).
pub fn cache<W, T, O>(
    api: Api<W>,
    config: watcher::Config,
    compact: fn(&W) -> Entry<T>,
    listed: Listed<T>,
) -> (
    Children<T>,
    impl Stream<Item = ObjectRef<O>> + Send + 'static,
)
where
    W: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    T: Send + Sync + 'static,
    O: Resource<DynamicType = ()> + 'static,
{
    let (children, mut writer) = store(listed);
    let triggers = watcher(api, config)
        .default_backoff()
        .filter_map(move |event| {
            let trigger = match event {
                Ok(event) => writer.apply(super::compact::map_event(event, |o| compact(&o))),
                Err(e) => {
                    tracing::warn!(error = %e, "watch of children failed; retrying");
                    None
                }
            };
            futures::future::ready(trigger.map(|(ns, name)| ObjectRef::<O>::new(&name).within(&ns)))
        });
    (children, triggers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, rv: &str, controller: Option<&str>) -> Entry<u8> {
        Entry {
            namespace: "ns".into(),
            name: name.into(),
            controller: controller.map(Arc::from),
            child: Child {
                resource_version: digest(rv),
                owner: controller.map(|_| digest("uid-1")),
                data: 0,
            },
        }
    }

    fn names(children: &[(Arc<str>, Child<u8>)]) -> Vec<&str> {
        children.iter().map(|(n, _)| &**n).collect()
    }

    #[test]
    fn a_relisted_version_triggers_nothing_and_a_new_one_or_a_delete_its_controller() {
        let (children, mut writer) = store(Some(every));
        let hello = Some(("ns".to_string(), Arc::from("hello")));
        let v1 = entry("hello-code", "1", Some("hello"));
        assert_eq!(writer.apply(watcher::Event::Apply(v1.clone())), hello);
        assert_eq!(children.get("ns", "hello-code"), Some(v1.child.clone()));
        assert!(
            children
                .get("ns", "hello-code")
                .unwrap()
                .owned_by(Some("uid-1"))
        );
        assert!(
            !children
                .get("ns", "hello-code")
                .unwrap()
                .owned_by(Some("uid-2"))
        );
        assert!(!children.get("ns", "hello-code").unwrap().owned_by(None));
        // A relist (after a restart of the watch) repeats version 1: no reconcile.
        assert_eq!(writer.apply(watcher::Event::Init), None);
        assert_eq!(writer.apply(watcher::Event::InitApply(v1.clone())), None);
        let v2 = entry("hello-code", "2", Some("hello"));
        // The relist replaces the cache only once it is complete.
        assert_eq!(writer.apply(watcher::Event::InitApply(v2.clone())), hello);
        assert_eq!(children.get("ns", "hello-code"), Some(v1.child));
        writer.apply(watcher::Event::InitDone);
        assert_eq!(children.get("ns", "hello-code"), Some(v2.child.clone()));
        assert_eq!(writer.apply(watcher::Event::Delete(v2)), hello);
        assert_eq!(children.get("ns", "hello-code"), None);
        // Controlled by nothing: nobody to reconcile.
        assert_eq!(
            writer.apply(watcher::Event::Apply(entry("stray", "3", None))),
            None
        );
    }

    #[test]
    fn the_index_by_controller_follows_applies_moves_deletes_and_relists() {
        let (children, mut writer) = store(Some(every));
        for (pod, node) in [("n-b", "n"), ("n-a", "n"), ("m-a", "m")] {
            writer.apply(watcher::Event::Apply(entry(pod, "1", Some(node))));
        }
        assert_eq!(names(&children.controlled_by("ns", "n")), ["n-a", "n-b"]);
        assert_eq!(names(&children.controlled_by("ns", "m")), ["m-a"]);
        assert!(children.controlled_by("ns", "other").is_empty());
        assert!(children.controlled_by("other-ns", "n").is_empty());
        // Relabelled to another node: it leaves the first one.
        writer.apply(watcher::Event::Apply(entry("n-b", "2", Some("m"))));
        assert_eq!(names(&children.controlled_by("ns", "n")), ["n-a"]);
        assert_eq!(names(&children.controlled_by("ns", "m")), ["m-a", "n-b"]);
        writer.apply(watcher::Event::Delete(entry("n-a", "1", Some("n"))));
        assert!(children.controlled_by("ns", "n").is_empty());
        // A delete that no longer names its controller still takes it out of the list.
        writer.apply(watcher::Event::Apply(entry("x-a", "1", Some("x"))));
        writer.apply(watcher::Event::Delete(entry("x-a", "2", None)));
        assert!(children.controlled_by("ns", "x").is_empty());
        assert_eq!(children.get("ns", "x-a"), None);
        // A relist that no longer has m-a.
        writer.apply(watcher::Event::Init);
        writer.apply(watcher::Event::InitApply(entry("n-b", "2", Some("m"))));
        writer.apply(watcher::Event::InitDone);
        assert_eq!(names(&children.controlled_by("ns", "m")), ["n-b"]);
        assert_eq!(children.get("ns", "m-a"), None);
    }

    #[test]
    fn an_optional_digest_takes_no_more_room_than_a_digest() {
        assert_eq!(std::mem::size_of::<Option<Digest>>(), 8);
        assert_eq!(std::mem::size_of::<Child<()>>(), 16);
    }

    #[tokio::test]
    async fn it_is_ready_after_its_first_full_list() {
        let (children, mut writer) = store::<u8>(None);
        assert!(!*children.ready.borrow());
        writer.apply(watcher::Event::Init);
        writer.apply(watcher::Event::InitApply(entry("a", "1", None)));
        assert!(!*children.ready.borrow());
        writer.apply(watcher::Event::InitDone);
        // Two waiters: both wake.
        let (a, b) = (children.clone(), children.clone());
        let (a, b) = tokio::join!(a.wait_until_ready(), b.wait_until_ready());
        assert!(a.is_ok() && b.is_ok());
        assert!(children.get("ns", "a").is_some());
    }
}
