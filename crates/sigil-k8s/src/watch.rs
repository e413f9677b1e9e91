//! Feeds the [`PodStore`] from watches on the API server.
//!
//! kube-runtime's watcher lists then watches (resuming from the last resourceVersion, relisting
//! after `410 Gone`), and on errors backs off exponentially from 0.8 s to 30 s with jitter, so
//! a fleet of agents restarting together does not hammer the API server in lockstep.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};

use crate::pod::PodInfo;
use crate::store::{NamespaceInfo, PodStore, StoreEvent};

/// Watches the pods of `node_name` (`fieldSelector=spec.nodeName=<node>`), forever: the task
/// is aborted with its attestor.
pub async fn watch_pods(client: kube::Client, store: Arc<PodStore>, node_name: String) {
    let api: Api<Pod> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node_name}"));
    let stream = watcher(api, config).default_backoff();
    futures::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(e) => e,
            Err(error) => {
                tracing::warn!(%error, node = %node_name, "pod watch failed; retrying with backoff");
                continue;
            }
        };
        let strip = |p: &Pod| PodInfo::from_pod(p);
        let event = match event {
            watcher::Event::Apply(p) => strip(&p).map(StoreEvent::Apply),
            watcher::Event::Delete(p) => strip(&p).map(StoreEvent::Delete),
            watcher::Event::Init => Some(StoreEvent::InitStart),
            watcher::Event::InitApply(p) => strip(&p).map(StoreEvent::InitApply),
            watcher::Event::InitDone => {
                tracing::debug!(node = %node_name, "pod list complete");
                Some(StoreEvent::InitDone)
            }
        };
        if let Some(event) = event {
            store.apply_pods(event);
        }
    }
}

/// Watches every Namespace, for `ns-label` selectors.
pub async fn watch_namespaces(client: kube::Client, store: Arc<PodStore>) {
    let api: Api<Namespace> = Api::all(client);
    let stream = watcher(api, watcher::Config::default()).default_backoff();
    futures::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(e) => e,
            Err(error) => {
                tracing::warn!(%error, "namespace watch failed; retrying with backoff");
                continue;
            }
        };
        let strip = |n: &Namespace| {
            let mut labels: Vec<(String, String)> = n
                .metadata
                .labels
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            labels.sort();
            NamespaceInfo {
                name: n.metadata.name.clone().unwrap_or_default(),
                labels,
            }
        };
        store.apply_namespaces(match event {
            watcher::Event::Apply(n) => StoreEvent::Apply(strip(&n)),
            watcher::Event::Delete(n) => StoreEvent::Delete(strip(&n)),
            watcher::Event::Init => StoreEvent::InitStart,
            watcher::Event::InitApply(n) => StoreEvent::InitApply(strip(&n)),
            watcher::Event::InitDone => StoreEvent::InitDone,
        });
    }
}
