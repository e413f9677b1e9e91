//! `WorkloadAttestor "k8s"`: the kernel-recorded pod UID and container id joined to the pod the
//! watch delivered.

use std::sync::Arc;

use futures::future::BoxFuture;
use sigil_spiffe::Selector;
use sigil_workload_attestation::{AttestError, Caller, WorkloadAttestor, WorkloadChange};
use tokio::task::JoinHandle;

use crate::config::K8sAttestorConfig;
use crate::selectors::{self, container_selectors, namespace_label_selectors};
use crate::store::{Lookup, PodStore};

/// The `k8s` attestor: SPIRE's selectors for callers in pods of this node.
#[derive(Debug)]
pub struct K8sAttestor {
    store: Arc<PodStore>,
    config: K8sAttestorConfig,
    /// The watch tasks feeding `store`, aborted with the attestor.
    tasks: Vec<JoinHandle<()>>,
}

// === impl K8sAttestor ===

impl K8sAttestor {
    /// Connects to the API server and starts the watches. Returns at once: callers wait for
    /// their pod (up to `pod_wait`), not the agent's start-up for the first list.
    pub async fn start(config: K8sAttestorConfig) -> Result<Self, crate::ClientError> {
        let client = crate::client(config.kube_config_file.as_deref()).await?;
        Ok(Self::with_client(client, config))
    }

    /// [`start`](Self::start) with a given client (tests, a shared client).
    pub fn with_client(client: kube::Client, config: K8sAttestorConfig) -> Self {
        if !config.not_needed.is_empty() {
            tracing::info!(
                keys = ?config.not_needed,
                "k8s workload attestor: these kubelet settings are not needed (pods come from a \
                 watch on the API server, the container from the kernel) and are ignored"
            );
        }
        let store = Arc::new(PodStore::new());
        let mut tasks = vec![tokio::spawn(crate::watch::watch_pods(
            client.clone(),
            store.clone(),
            config.node_name.clone(),
        ))];
        if config.enable_namespace_labels {
            tasks.push(tokio::spawn(crate::watch::watch_namespaces(
                client,
                store.clone(),
            )));
        }
        tracing::info!(node = %config.node_name, "k8s workload attestor: watching this node's pods");
        Self {
            store,
            config,
            tasks,
        }
    }

    /// An attestor over a store someone else feeds (tests, benchmarks).
    pub fn with_store(store: Arc<PodStore>, config: K8sAttestorConfig) -> Self {
        Self {
            store,
            config,
            tasks: Vec::new(),
        }
    }

    pub fn store(&self) -> &Arc<PodStore> {
        &self.store
    }

    /// The selectors for a caller whose cgroup names `pod_uid` / `container_id`, waiting for
    /// the pod if the watch has not delivered it yet. Not in a pod: no selectors.
    pub async fn selectors(
        &self,
        pod_uid: Option<&str>,
        container_id: Option<&str>,
    ) -> Result<Vec<Selector>, AttestError> {
        if pod_uid.is_none() && container_id.is_none() {
            return Ok(Vec::new());
        }
        let found = self
            .store
            .wait_lookup(pod_uid, container_id, self.config.pod_wait)
            .await;
        let (pod, pod_sels, container) = match found {
            Lookup::Pod {
                pod,
                selectors,
                container,
            } => (pod, selectors, container),
            Lookup::NoPod => {
                // Not a pod of this node (or not one yet): no `k8s:` selectors, never a guess.
                return Err(AttestError::Failed(format!(
                    "no pod {} on node {:?} after waiting {:?} for the API server",
                    describe(pod_uid, container_id),
                    self.config.node_name,
                    self.config.pod_wait,
                )));
            }
            Lookup::Conflict { container_id, pods } => {
                return Err(AttestError::Refused(format!(
                    "two pods found with same container Id {container_id} (pods {})",
                    pods.join(", ")
                )));
            }
        };
        let mut out = pod_sels.to_vec();
        if !self.config.disable_container_selectors
            && let Some(c) = &container
        {
            out.extend(container_selectors(c));
            if let Some(id) = &c.container_id {
                out.push(Selector {
                    kind: selectors::TYPE.into(),
                    value: format!("container-id:{id}"),
                });
            }
        }
        if self.config.enable_namespace_labels {
            let ns = self
                .store
                .wait_namespace(&pod.namespace, self.config.pod_wait)
                .await
                .ok_or_else(|| {
                    AttestError::Failed(format!(
                        "unable to get namespace labels: namespace {:?} not found",
                        pod.namespace
                    ))
                })?;
            out.extend(namespace_label_selectors(&ns.labels));
        }
        // `Attestors` sorts and de-duplicates the union of every attestor's selectors.
        Ok(out)
    }
}

fn describe(pod_uid: Option<&str>, container_id: Option<&str>) -> String {
    match (pod_uid, container_id) {
        (Some(uid), _) => format!("with UID {uid}"),
        (None, Some(id)) => format!("listing container {id}"),
        (None, None) => String::new(),
    }
}

impl Drop for K8sAttestor {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl WorkloadAttestor for K8sAttestor {
    fn name(&self) -> &'static str {
        "k8s"
    }

    fn attest<'a>(
        &'a self,
        caller: &'a Caller,
    ) -> BoxFuture<'a, Result<Vec<Selector>, AttestError>> {
        Box::pin(async move {
            let Some(pod) = &caller.pod else {
                return Ok(Vec::new());
            };
            self.selectors(Some(&pod.pod_uid), pod.container_id.as_deref())
                .await
        })
    }

    fn watch(&self, caller: &Caller) -> Option<BoxFuture<'static, WorkloadChange>> {
        let uid = caller.pod.as_ref()?.pod_uid.clone();
        let store = self.store.clone();
        // What attestation is about to see (or newer): any later difference is a change.
        let seen = store.get(&uid);
        Some(Box::pin(async move {
            match store.pod_changed(&uid, seen).await {
                None => WorkloadChange::Ended,
                Some(_) => WorkloadChange::Changed,
            }
        }))
    }
}
