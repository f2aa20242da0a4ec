//! Kubernetes Events about our resources, sent as they happen.
//!
//! kube-runtime's `Recorder` keeps every Event it sends for six minutes, to turn a repeat into
//! a series. Ours never repeat within that key: each names the object's resourceVersion, which
//! every status write changes. So its cache only grew, by an Event per node and per generation
//! (and each send scanned it all under a write lock). This sends the same Event and keeps
//! nothing.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use kube::runtime::events::{Event, EventType};

use super::lean::LeanMeta;

/// Sends `events.k8s.io/v1` Events as `controller` (this replica: `instance`).
#[derive(Clone)]
pub struct Events {
    client: Client,
    controller: String,
    instance: String,
}

impl Events {
    pub fn new(client: Client, controller: &str, instance: Option<String>) -> Self {
        Events {
            client,
            controller: controller.to_string(),
            instance: instance.unwrap_or_else(|| controller.to_string()),
        }
    }

    /// Create one Event about `regarding`, in its namespace.
    pub async fn publish(
        &self,
        ev: &Event,
        regarding: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let namespace = regarding.namespace.as_deref().unwrap_or("default");
        let event = K8sEvent {
            metadata: ObjectMeta {
                namespace: Some(namespace.to_string()),
                // As kubectl and client-go name them: the object, then a unique suffix.
                name: Some(format!(
                    "{}.{:x}",
                    regarding.name.as_deref().unwrap_or(&self.controller),
                    now.as_nanosecond()
                )),
                ..Default::default()
            },
            action: Some(ev.action.clone()),
            reason: Some(ev.reason.clone()),
            note: ev.note.clone(),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            related: ev.secondary.clone(),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            type_: Some(
                match ev.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .into(),
            ),
            ..Default::default()
        };
        // Answered with its metadata alone, without managed fields: nothing reads the echo.
        let api = Api::<K8sEvent>::namespaced(self.client.clone(), namespace);
        let body = serde_json::to_vec(&event).map_err(kube::Error::SerdeError)?;
        let mut request = kube::core::Request::new(api.resource_url())
            .create(&PostParams::default(), body)
            .map_err(kube::Error::BuildRequest)?;
        request
            .headers_mut()
            .insert(http::header::ACCEPT, super::METADATA_ONLY.clone());
        self.client.request::<LeanMeta<K8sEvent>>(request).await?;
        Ok(())
    }
}
