//! Feeds the [`PodStore`] from watches on the API server.
//!
//! kube-runtime's watcher lists then watches (resuming from the last resourceVersion, relisting
//! after `410 Gone`), and on errors backs off exponentially from 0.8 s to 30 s with jitter, so
//! a fleet of agents restarting together does not hammer the API server in lockstep; their
//! lists are served from the API server's watch cache (`resourceVersion=0`), not etcd.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};

use crate::pod::PodInfo;
use crate::store::{NamespaceInfo, PodStore, StoreEvent};

/// Lists at `resourceVersion=0`, which the API server answers from its watch cache instead of
/// a quorum read of etcd: what a DaemonSet of watchers, all listing at once after a rollout or
/// an API server restart, must do to not stampede it. kube-runtime only sends
/// `resourceVersion=0` on unpaginated lists; one node's pods (or the cluster's namespaces) are
/// a small list, and the cache ignores `limit` for such lists anyway. The price: behind a
/// lagging API server replica a list can be a moment old; the watch that follows, from that
/// list's resourceVersion, delivers what it missed straight away.
fn cached_lists(mut config: watcher::Config) -> watcher::Config {
    config = config.any_semantic();
    config.page_size = None;
    config
}

/// Watches the pods of `node_name` (`fieldSelector=spec.nodeName=<node>`), forever: the task
/// is aborted with its attestor.
pub async fn watch_pods(client: kube::Client, store: Arc<PodStore>, node_name: String) {
    let api: Api<Pod> = Api::all(client);
    let config =
        cached_lists(watcher::Config::default().fields(&format!("spec.nodeName={node_name}")));
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
            // The field selector already limits the watch to this node; the check is kept
            // here too, so that an API server (or proxy) that ignored it could never make
            // another node's pod attestable here.
            watcher::Event::Apply(p) => strip(&p).map(|p| match p.node_name == node_name {
                true => StoreEvent::Apply(p),
                false => StoreEvent::Delete(p),
            }),
            watcher::Event::Delete(p) => strip(&p).map(StoreEvent::Delete),
            watcher::Event::Init => Some(StoreEvent::InitStart),
            watcher::Event::InitApply(p) => strip(&p)
                .filter(|p| p.node_name == node_name)
                .map(StoreEvent::InitApply),
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
    let stream = watcher(api, cached_lists(watcher::Config::default())).default_backoff();
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
