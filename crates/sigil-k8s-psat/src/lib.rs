//! SPIRE's `k8s_psat` node attestation, server side.
//!
//! An agent running in a Kubernetes pod sends the projected service account token (PSAT)
//! kubelet mounts for it, with the name of its cluster. The server never reads the token's
//! claims: it asks that cluster's API server (a TokenReview, with the configured audiences)
//! whether the token is valid and whom it belongs to, checks the service account against the
//! cluster's allow list, looks the bound pod and its node up, and derives the agent's SPIFFE ID
//! (`spiffe://<td>/spire/agent/k8s_psat/<cluster>/<node uid>`) and its node selectors
//! (`k8s_psat:cluster:<name>`, `k8s_psat:agent_ns:<ns>`, ...). Everything is SPIRE's
//! (`pkg/server/plugin/nodeattestor/k8spsat`, `pkg/common/plugin/k8s`): the configuration keys,
//! the checks and their order, the selectors and their order, and the error messages, which
//! reach the agent as `nodeattestor(k8s_psat): ...`.
//!
//! Unlike a join token, a PSAT can be presented again (kubelet rotates it), so an agent
//! attested this way may re-attest: after a restart, to renew its SVID, or after an eviction.
//!
//! The agent's side (read the token file, send `{"cluster":..,"token":..}`) is small and lives
//! in the agent; the payload format is [`AttestationData`].

mod attestor;
mod client;
mod config;
mod payload;
mod quote;
mod status;

pub use self::attestor::{AttestError, Attested, Attestor, Code};
pub use self::client::{ApiClient, ClientError, KubeSource};
pub use self::config::{ClusterConfig, ConfigureError, DEFAULT_AUDIENCE, ServerConfig};
pub use self::payload::{AttestationData, PayloadError};
pub use self::quote::{go_quote, go_quote_list};
pub use self::status::{
    StatusError, agent_id, names_from_token_status, pod_name_from_token_status,
    pod_uid_from_token_status, selector_value,
};

/// The plugin's name: the `NodeAttestor "k8s_psat"` of the configs, the agents' attestation
/// type, and the type of the node selectors it produces.
pub const PLUGIN_NAME: &str = "k8s_psat";
