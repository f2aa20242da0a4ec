//! A fake API server for reconcile tests (the tower-test pattern of kube-rs/controller-rs): it
//! records every request the reconciler sends and answers like the API server would for the
//! few verbs the operator uses, so tests assert on the exact writes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http::{Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use kube::runtime::reflector::{self, Lookup, store::Writer};
use kube::runtime::watcher;
use serde_json::{Value, json};

use super::cached_node::CachedNode;
use super::{Caches, Context, ControllerMetrics, children, compact};

use crate::deploy::DeployDefaults;
use crate::render::Renderer;

/// One request as the fake API server saw it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    /// Path and query.
    pub uri: String,
    pub body: Value,
}

impl Recorded {
    pub fn path(&self) -> &str {
        self.uri.split('?').next().unwrap_or_default()
    }

    pub fn is_write(&self) -> bool {
        self.method != "GET"
    }
}

/// Objects the fake server returns on GET, by path; everything else is 404.
#[derive(Clone, Default)]
pub struct FakeApi {
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    pub objects: Arc<Mutex<BTreeMap<String, Value>>>,
    /// Answer writes to paths containing this with a 500.
    pub fail_writes_to: Arc<Mutex<Option<String>>>,
}

impl FakeApi {
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    pub fn writes(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(Recorded::is_write)
            .collect()
    }

    pub fn clear(&self) {
        self.requests.lock().unwrap().clear();
    }

    pub fn put(&self, path: &str, obj: Value) {
        self.objects.lock().unwrap().insert(path.to_string(), obj);
    }

    fn respond(&self, method: &str, uri: &str, body: Value) -> (StatusCode, Value) {
        let path = uri.split('?').next().unwrap_or_default().to_string();
        if method != "GET"
            && let Some(fragment) = self.fail_writes_to.lock().unwrap().as_ref()
            && path.contains(fragment.as_str())
        {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                status_body(500, "InternalError", "injected failure"),
            );
        }
        match method {
            "GET" => match self.objects.lock().unwrap().get(&path) {
                Some(obj) => (StatusCode::OK, obj.clone()),
                None => (
                    StatusCode::NOT_FOUND,
                    status_body(404, "NotFound", "not found"),
                ),
            },
            "PATCH" | "PUT" => {
                let mut objects = self.objects.lock().unwrap();
                if let Some(parent) = path.strip_suffix("/status") {
                    // A status write returns the whole object with the new status.
                    let mut obj = objects.get(parent).cloned().unwrap_or_else(|| json!({}));
                    obj["status"] = body["status"].clone();
                    objects.insert(parent.to_string(), obj.clone());
                    return (StatusCode::OK, obj);
                }
                let mut obj = body;
                let name = path.rsplit('/').next().unwrap_or_default().to_string();
                if let Some(meta) = obj
                    .as_object_mut()
                    .map(|o| o.entry("metadata").or_insert_with(|| json!({})))
                {
                    meta["name"] = name.into();
                    meta["resourceVersion"] = "2".into();
                    meta["uid"] = "uid-child".into();
                    meta["generation"] = 1.into();
                }
                objects.insert(path, obj.clone());
                (StatusCode::OK, obj)
            }
            "POST" => (StatusCode::CREATED, body),
            "DELETE" => (
                StatusCode::OK,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}}),
            ),
            _ => (
                StatusCode::METHOD_NOT_ALLOWED,
                status_body(405, "MethodNotAllowed", "unsupported"),
            ),
        }
    }

    /// A client whose requests this fake answers.
    pub fn client(&self) -> Client {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let fake = self.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let method = request.method().to_string();
                let uri = request
                    .uri()
                    .path_and_query()
                    .map(|p| p.to_string())
                    .unwrap_or_default();
                let bytes = request
                    .into_body()
                    .collect_bytes()
                    .await
                    .unwrap_or_default();
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                fake.requests.lock().unwrap().push(Recorded {
                    method: method.clone(),
                    uri: uri.clone(),
                    body: body.clone(),
                });
                let (status, reply) = fake.respond(&method, &uri, body);
                let response = Response::builder()
                    .status(status)
                    .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                    .unwrap();
                send.send_response(response);
            }
        });
        Client::new(service, "default")
    }
}

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code
    })
}

/// Writers that fill the caches the way the watches would.
pub struct CacheWriters {
    pub generated_nodes: Writer<CachedNode>,
    pub config_maps: children::Writer<compact::CodeConfigMap>,
    pub deployments: children::Writer<compact::DeploymentState>,
    pub services: children::Writer<compact::ServiceState>,
}

/// An object, or a child's entry, that a test puts into a cache.
pub trait Cacheable<W> {
    fn put(self, writer: &mut W);
}

impl<K> Cacheable<Writer<K>> for K
where
    K: Lookup + Clone,
    K::DynamicType: Clone + Default + Eq + std::hash::Hash,
{
    fn put(self, writer: &mut Writer<K>) {
        writer.apply_watcher_event(&watcher::Event::Apply(self));
    }
}

impl<T> Cacheable<children::Writer<T>> for children::Entry<T> {
    fn put(self, writer: &mut children::Writer<T>) {
        writer.apply(watcher::Event::Apply(self));
    }
}

impl CacheWriters {
    pub fn apply<W>(writer: &mut W, obj: impl Cacheable<W>) {
        obj.put(writer);
    }
}

/// A context over the fake API with empty caches.
pub fn context(fake: &FakeApi) -> (Arc<Context>, CacheWriters) {
    let (gn_r, gn_w) = reflector::store();
    let (cm_r, mut cm_w) = children::store(Some(children::every));
    let (dep_r, mut dep_w) = children::store(None);
    let (svc_r, mut svc_w) = children::store(None);
    let (pod_r, mut pod_w) = children::store(Some(super::pod_health::PodState::matters));
    for ready in [
        cm_w.apply(watcher::Event::InitDone),
        dep_w.apply(watcher::Event::InitDone),
        svc_w.apply(watcher::Event::InitDone),
        pod_w.apply(watcher::Event::InitDone),
    ] {
        assert!(ready.is_none());
    }
    let ctx = Context::new(
        fake.client(),
        Renderer::embedded().unwrap(),
        None,
        DeployDefaults {
            image: "runtime:test".into(),
            image_runtime_version: env!("CARGO_PKG_VERSION").into(),
            kafka_bootstrap_servers: None,
            git_image: "runtime:test".into(),
        },
        ControllerMetrics::default(),
        Caches {
            generated_nodes: gn_r,
            config_maps: cm_r,
            deployments: dep_r,
            services: svc_r,
            pods: pod_r,
            synced: tokio::sync::watch::channel(true).1,
        },
    );
    (
        Arc::new(ctx),
        CacheWriters {
            generated_nodes: gn_w,
            config_maps: cm_w,
            deployments: dep_w,
            services: svc_w,
        },
    )
}
