//! Kubernetes for workload attestation: SPIRE's `k8s` workload attestor, fed by the API server.
//!
//! SPIRE learns a caller's pod by polling the kubelet (500 ms apart, up to 60 tries). Here the
//! pod UID and container id come from the cgroup the kernel recorded when the caller connected
//! (`sigil-workload-attestation`), and the node's pods are pushed by a watch on the API server
//! into a [`PodStore`]: a new pod is known as soon as the API server says so, and nothing polls.
//!
//! - [`config`]: `WorkloadAttestor "k8s"`'s `plugin_data` (every SPIRE key accepted).
//! - [`pod`]: a Pod stripped to the fields selectors use.
//! - [`selectors`]: SPIRE's `k8s:` selectors.
//! - [`store`]: the pods by UID and container id; waiting for a pod; noticing its deletion.
//! - [`watch`]: kube-runtime watchers feeding the store.
//! - [`attestor`]: the [`WorkloadAttestor`](sigil_workload_attestation::WorkloadAttestor).

pub mod attestor;
mod client;
pub mod config;
pub mod pod;
pub mod selectors;
pub mod store;
pub mod watch;

pub use self::attestor::K8sAttestor;
pub use self::client::{ClientError, client};
pub use self::config::K8sAttestorConfig;
pub use self::pod::{ContainerInfo, PodInfo};
pub use self::store::{Lookup, NamespaceInfo, PodStore, StoreEvent};
