//! What the controller sees of the cluster: one watch per kind (Pods, Namespaces, Nodes,
//! EndpointSlices, ClusterSPIFFEIDs, ClusterStaticEntries) feeding an in-memory store of JSON
//! objects, and one [`Notify`] that every change pokes, so the reconcile loop runs after any
//! event and never misses one that lands while it runs (a `Notify` keeps the permit).
//!
//! Objects are kept as JSON because that is what the templates see (`.PodMeta`, `.PodSpec`,
//! ...), converted once per event rather than once per pass; what no template or rule reads
//! (`managedFields`, a pod's or node's `status`) is dropped to keep 10,000 pods small.
//!
//! A relist (after `410 Gone`) builds the new contents aside and swaps them in when it is
//! complete, so an object that still exists never disappears in between.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource};
use serde_json::Value;
use tokio::sync::{Notify, watch};

use crate::crd::{ClusterSPIFFEID, ClusterStaticEntry};

/// The watched kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Pod,
    Namespace,
    Node,
    EndpointSlice,
    ClusterSpiffeId,
    ClusterStaticEntry,
    ClusterFederatedTrustDomain,
}

/// Objects of one kind by `namespace/name` (or `name`).
#[derive(Debug, Default)]
pub struct Store {
    objects: RwLock<HashMap<String, Arc<Value>>>,
}

/// The stores of every kind, their sync state and the change signal.
#[derive(Debug)]
pub struct Cluster {
    pub pods: Store,
    pub namespaces: Store,
    pub nodes: Store,
    pub endpoint_slices: Store,
    pub cluster_spiffe_ids: Store,
    pub cluster_static_entries: Store,
    pub cluster_federated_trust_domains: Store,
    /// Poked on every change of any store.
    pub changed: Notify,
    synced: watch::Sender<usize>,
}

// === impl Kind ===

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Pod,
        Kind::Namespace,
        Kind::Node,
        Kind::EndpointSlice,
        Kind::ClusterSpiffeId,
        Kind::ClusterStaticEntry,
        Kind::ClusterFederatedTrustDomain,
    ];

    fn api_resource(self) -> ApiResource {
        use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
        use k8s_openapi::api::discovery::v1::EndpointSlice;
        match self {
            Kind::Pod => ApiResource::erase::<Pod>(&()),
            Kind::Namespace => ApiResource::erase::<Namespace>(&()),
            Kind::Node => ApiResource::erase::<Node>(&()),
            Kind::EndpointSlice => ApiResource::erase::<EndpointSlice>(&()),
            Kind::ClusterSpiffeId => ApiResource::erase::<ClusterSPIFFEID>(&()),
            Kind::ClusterStaticEntry => ApiResource::erase::<ClusterStaticEntry>(&()),
            Kind::ClusterFederatedTrustDomain => {
                ApiResource::erase::<crate::crd::ClusterFederatedTrustDomain>(&())
            }
        }
    }

    /// What of an object this controller keeps.
    fn strip(self, mut v: Value) -> Value {
        if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("managedFields");
        }
        if matches!(self, Kind::Pod | Kind::Node)
            && let Some(o) = v.as_object_mut()
        {
            o.remove("status");
        }
        v
    }
}

// === impl Store ===

impl Store {
    /// Every object, as shared handles (a pass works on these without holding the lock).
    pub fn all(&self) -> Vec<Arc<Value>> {
        self.read().values().cloned().collect()
    }

    pub fn get(&self, key: &str) -> Option<Arc<Value>> {
        self.read().get(key).cloned()
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Value>>> {
        // A poisoned lock only means a panic elsewhere mid-insert; the map is still whole.
        self.objects.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<Value>>> {
        self.objects.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// `namespace/name`, or `name` for cluster-scoped objects.
pub fn key_of(v: &Value) -> String {
    let meta = &v["metadata"];
    let name = meta["name"].as_str().unwrap_or_default();
    match meta["namespace"].as_str() {
        Some(ns) if !ns.is_empty() => format!("{ns}/{name}"),
        _ => name.to_string(),
    }
}

// === impl Cluster ===

impl Cluster {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            pods: Store::default(),
            namespaces: Store::default(),
            nodes: Store::default(),
            endpoint_slices: Store::default(),
            cluster_spiffe_ids: Store::default(),
            cluster_static_entries: Store::default(),
            cluster_federated_trust_domains: Store::default(),
            changed: Notify::new(),
            synced: watch::channel(0).0,
        })
    }

    pub fn store(&self, kind: Kind) -> &Store {
        match kind {
            Kind::Pod => &self.pods,
            Kind::Namespace => &self.namespaces,
            Kind::Node => &self.nodes,
            Kind::EndpointSlice => &self.endpoint_slices,
            Kind::ClusterSpiffeId => &self.cluster_spiffe_ids,
            Kind::ClusterStaticEntry => &self.cluster_static_entries,
            Kind::ClusterFederatedTrustDomain => &self.cluster_federated_trust_domains,
        }
    }

    /// Starts a watch per kind in `kinds`; the tasks run until aborted.
    pub fn spawn_watches(
        self: &Arc<Self>,
        client: &kube::Client,
        kinds: &[Kind],
    ) -> Vec<tokio::task::JoinHandle<()>> {
        kinds
            .iter()
            .map(|&kind| {
                let this = self.clone();
                let client = client.clone();
                tokio::spawn(async move { this.watch(client, kind).await })
            })
            .collect()
    }

    /// Waits until `n` watches have listed once.
    pub async fn wait_synced(&self, n: usize) {
        let mut rx = self.synced.subscribe();
        // The sender lives in `self`, so `wait_for` cannot see it closed.
        let _ = rx.wait_for(|&synced| synced >= n).await;
    }

    async fn watch(&self, client: kube::Client, kind: Kind) {
        let api: Api<DynamicObject> = Api::all_with(client, &kind.api_resource());
        // Lists in pages of 500 (kube-runtime's default) so that 10,000 pods never sit in
        // memory three times at once (response body, decoded list, stored values).
        let config = watcher::Config::default();
        // Exponential backoff with jitter (0.8 s to 30 s): controllers restarting together
        // do not retry in lockstep.
        let stream = watcher(api, config).default_backoff();
        futures::pin_mut!(stream);
        let store = self.store(kind);
        let mut relist: Option<HashMap<String, Arc<Value>>> = None;
        let mut listed_once = false;
        while let Some(event) = stream.next().await {
            let event = match event {
                Ok(e) => e,
                Err(error) => {
                    tracing::warn!(%error, ?kind, "watch failed; retrying with backoff");
                    continue;
                }
            };
            let value = |o: DynamicObject| -> Option<(String, Arc<Value>)> {
                let v = kind.strip(serde_json::to_value(o).ok()?);
                Some((key_of(&v), Arc::new(v)))
            };
            match event {
                watcher::Event::Init => relist = Some(HashMap::new()),
                watcher::Event::InitApply(o) => {
                    if let (Some(buf), Some((k, v))) = (relist.as_mut(), value(o)) {
                        buf.insert(k, v);
                    }
                }
                watcher::Event::InitDone => {
                    if let Some(buf) = relist.take() {
                        *store.write() = buf;
                    }
                    if !listed_once {
                        listed_once = true;
                        self.synced.send_modify(|n| *n += 1);
                    }
                    self.changed.notify_one();
                }
                watcher::Event::Apply(o) => {
                    if let Some((k, v)) = value(o) {
                        store.write().insert(k, v);
                        self.changed.notify_one();
                    }
                }
                watcher::Event::Delete(o) => {
                    if let Some((k, _)) = value(o) {
                        store.write().remove(&k);
                        self.changed.notify_one();
                    }
                }
            }
        }
    }
}

/// The `ObjectReference` of a stored custom resource, for Events.
pub fn object_ref<K: Resource<DynamicType = ()>>(
    v: &Value,
) -> k8s_openapi::api::core::v1::ObjectReference {
    k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some(K::api_version(&()).into_owned()),
        kind: Some(K::kind(&()).into_owned()),
        name: v["metadata"]["name"].as_str().map(str::to_string),
        uid: v["metadata"]["uid"].as_str().map(str::to_string),
        resource_version: v["metadata"]["resourceVersion"]
            .as_str()
            .map(str::to_string),
        ..Default::default()
    }
}
