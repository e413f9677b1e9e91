//! A pod, stripped to what selectors need.
//!
//! The agent keeps every pod of its node in memory; a full `Pod` object (spec, managed fields,
//! conditions, volumes) is kilobytes, the fields selectors read are a few hundred bytes. Parse
//! once, on the watch event, into [`PodInfo`]: lookups then never touch JSON.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

/// The fields of a Pod that the `k8s` workload attestor's selectors are made of.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PodInfo {
    /// `metadata.uid`: what the kernel-recorded cgroup names.
    pub uid: Arc<str>,
    pub namespace: String,
    pub name: String,
    pub node_name: String,
    /// `spec.serviceAccountName`.
    pub service_account: String,
    /// `metadata.labels`, sorted by key.
    pub labels: Vec<(String, String)>,
    pub owners: Vec<Owner>,
    /// `status.containerStatuses`, in order.
    pub containers: Vec<ContainerInfo>,
    /// `status.initContainerStatuses`.
    pub init_containers: Vec<ContainerInfo>,
    /// `status.ephemeralContainerStatuses`.
    pub ephemeral_containers: Vec<ContainerInfo>,
}

/// One `metadata.ownerReferences` item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub kind: String,
    pub name: String,
    pub uid: String,
}

/// One container status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerInfo {
    pub name: String,
    pub image: String,
    pub image_id: String,
    /// The runtime's container id without its `containerd://` (`cri-o://`, `docker://`)
    /// prefix; `None` until the runtime has created the container.
    pub container_id: Option<String>,
}

/// Which list of statuses a container was found in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContainerKind {
    Regular,
    Init,
    Ephemeral,
}

// === impl PodInfo ===

impl PodInfo {
    /// The stripped pod; `None` for an object without a UID (never from an API server).
    pub fn from_pod(pod: &Pod) -> Option<Self> {
        let meta = &pod.metadata;
        let uid = meta.uid.as_deref().filter(|u| !u.is_empty())?;
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let statuses = |list: Option<&Vec<ContainerStatus>>| -> Vec<ContainerInfo> {
            list.map(|l| l.iter().map(ContainerInfo::from_status).collect())
                .unwrap_or_default()
        };
        let mut labels: Vec<(String, String)> = meta
            .labels
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.sort();
        Some(Self {
            uid: uid.into(),
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            node_name: spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
            // `serviceAccount` is the deprecated alias the API server still fills in.
            service_account: spec
                .and_then(|s| s.service_account_name.clone().or(s.service_account.clone()))
                .unwrap_or_default(),
            labels,
            owners: meta
                .owner_references
                .iter()
                .flatten()
                .map(|o| Owner {
                    kind: o.kind.clone(),
                    name: o.name.clone(),
                    uid: o.uid.clone(),
                })
                .collect(),
            containers: statuses(status.and_then(|s| s.container_statuses.as_ref())),
            init_containers: statuses(status.and_then(|s| s.init_container_statuses.as_ref())),
            ephemeral_containers: statuses(
                status.and_then(|s| s.ephemeral_container_statuses.as_ref()),
            ),
        })
    }

    /// The container status whose id is `container_id`: regular containers first, then init
    /// and ephemeral ones (SPIRE's order).
    pub fn container(&self, container_id: &str) -> Option<(ContainerKind, &ContainerInfo)> {
        let find = |list: &'_ [ContainerInfo]| -> Option<usize> {
            list.iter()
                .position(|c| c.container_id.as_deref() == Some(container_id))
        };
        if let Some(i) = find(&self.containers) {
            return Some((ContainerKind::Regular, &self.containers[i]));
        }
        if let Some(i) = find(&self.init_containers) {
            return Some((ContainerKind::Init, &self.init_containers[i]));
        }
        find(&self.ephemeral_containers)
            .map(|i| (ContainerKind::Ephemeral, &self.ephemeral_containers[i]))
    }

    /// Every container id the pod's statuses list.
    pub fn container_ids(&self) -> impl Iterator<Item = &str> {
        self.containers
            .iter()
            .chain(&self.init_containers)
            .chain(&self.ephemeral_containers)
            .filter_map(|c| c.container_id.as_deref())
    }
}

// === impl ContainerInfo ===

impl ContainerInfo {
    fn from_status(s: &ContainerStatus) -> Self {
        Self {
            name: s.name.clone(),
            image: s.image.clone(),
            image_id: s.image_id.clone(),
            container_id: s
                .container_id
                .as_deref()
                .map(strip_runtime)
                .filter(|id| !id.is_empty())
                .map(str::to_string),
        }
    }
}

/// `containerd://<id>` → `<id>`: the status names the runtime as a URL scheme, the cgroup only
/// has the id. An id without a scheme is taken as is.
pub fn strip_runtime(id: &str) -> &str {
    match id.split_once("://") {
        Some((_, rest)) => rest.split('/').next().unwrap_or(rest),
        None => id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_prefixes_are_stripped() {
        assert_eq!(strip_runtime("containerd://abc"), "abc");
        assert_eq!(strip_runtime("cri-o://abc"), "abc");
        assert_eq!(strip_runtime("docker://abc"), "abc");
        assert_eq!(strip_runtime("abc"), "abc");
        assert_eq!(strip_runtime("containerd://"), "");
    }
}
