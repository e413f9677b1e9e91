//! SPIRE's `k8s` workload attestor selectors, from a [`PodInfo`].
//!
//! The values and their spelling are SPIRE's (`pkg/agent/plugin/workloadattestor/k8s`), so
//! registration entries written for SPIRE match unchanged; the conformance vectors in
//! `tests/vectors.rs` hold SPIRE's expected lists.

use sigil_spiffe::Selector;

use crate::pod::{ContainerInfo, PodInfo};

/// The selector type of everything here.
pub const TYPE: &str = "k8s";

fn k8s(value: String) -> Selector {
    Selector {
        kind: TYPE.to_string(),
        value,
    }
}

/// Selectors about the pod: known as soon as the pod is, whatever its containers' state.
pub fn pod_selectors(pod: &PodInfo) -> Vec<Selector> {
    let mut out = vec![
        k8s(format!("sa:{}", pod.service_account)),
        k8s(format!("ns:{}", pod.namespace)),
        k8s(format!("node-name:{}", pod.node_name)),
        k8s(format!("pod-uid:{}", pod.uid)),
        k8s(format!("pod-name:{}", pod.name)),
        k8s(format!("pod-image-count:{}", pod.containers.len())),
        k8s(format!(
            "pod-init-image-count:{}",
            pod.init_containers.len()
        )),
    ];
    for c in &pod.containers {
        out.push(k8s(format!("pod-image:{}", c.image)));
        out.push(k8s(format!("pod-image:{}", c.image_id)));
    }
    for c in &pod.init_containers {
        out.push(k8s(format!("pod-init-image:{}", c.image)));
        out.push(k8s(format!("pod-init-image:{}", c.image_id)));
    }
    for (k, v) in &pod.labels {
        out.push(k8s(format!("pod-label:{k}:{v}")));
    }
    for o in &pod.owners {
        out.push(k8s(format!("pod-owner:{}:{}", o.kind, o.name)));
        out.push(k8s(format!("pod-owner-uid:{}:{}", o.kind, o.uid)));
    }
    out
}

/// Selectors about the caller's container.
pub fn container_selectors(c: &ContainerInfo) -> Vec<Selector> {
    let mut out = vec![k8s(format!("container-name:{}", c.name))];
    if !c.image.is_empty() {
        out.push(k8s(format!("container-image:{}", c.image)));
    }
    if !c.image_id.is_empty() {
        out.push(k8s(format!("container-image:{}", c.image_id)));
    }
    out
}

/// `ns-label:<k>:<v>` for each label of the pod's namespace.
pub fn namespace_label_selectors(labels: &[(String, String)]) -> Vec<Selector> {
    labels
        .iter()
        .map(|(k, v)| k8s(format!("ns-label:{k}:{v}")))
        .collect()
}
