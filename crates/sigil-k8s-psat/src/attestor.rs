//! Attesting one agent (SPIRE's `AttestorPlugin.Attest`).

use std::collections::{BTreeMap, HashMap, HashSet};

use sigil_spiffe::{IdError, Selector, SelectorError, SpiffeId, TrustDomain};

use crate::PLUGIN_NAME;
use crate::client::{ClientError, KubeSource};
use crate::config::{ClusterConfig, ConfigureError, ServerConfig};
use crate::payload::{AttestationData, PayloadError};
use crate::quote::go_quote;
use crate::status::{self, StatusError};

/// The configured plugin: one API server client source per cluster.
#[derive(Debug, Default)]
pub struct Attestor {
    /// `None`: loaded but never configured (SPIRE answers `not configured`).
    configured: Option<Configured>,
}

#[derive(Debug)]
struct Configured {
    trust_domain: TrustDomain,
    clusters: HashMap<String, Cluster>,
}

#[derive(Debug)]
struct Cluster {
    config: ClusterConfig,
    service_accounts: HashSet<String>,
    audience: Vec<String>,
    source: KubeSource,
}

/// A successful attestation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attested {
    pub agent_id: SpiffeId,
    /// Type `k8s_psat`, in SPIRE's order: the fixed eight, then node labels, then pod labels.
    pub selectors: Vec<Selector>,
    /// Always true: a PSAT can be presented again.
    pub can_reattest: bool,
}

/// The gRPC code an [`AttestError`] reaches the agent with (SPIRE's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    InvalidArgument,
    PermissionDenied,
    Internal,
    FailedPrecondition,
}

/// Why an agent was refused. The messages are SPIRE's, prefixed as its plugin wrapper does.
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    #[error("payload cannot be empty")]
    EmptyPayload,
    #[error("nodeattestor(k8s_psat): not configured")]
    NotConfigured,
    #[error("nodeattestor(k8s_psat): failed to unmarshal data payload: {0}")]
    Payload(PayloadError),
    #[error("nodeattestor(k8s_psat): missing cluster in attestation data")]
    MissingCluster,
    #[error("nodeattestor(k8s_psat): missing token in attestation data")]
    MissingToken,
    #[error("nodeattestor(k8s_psat): not configured for cluster {}", go_quote(.0))]
    UnknownCluster(String),
    #[error("nodeattestor(k8s_psat): unable to validate token with TokenReview API for cluster {}: {reason}", go_quote(.cluster))]
    TokenReview {
        cluster: String,
        reason: ClientError,
    },
    #[error("nodeattestor(k8s_psat): token not authenticated according to TokenReview API for cluster {}", go_quote(.0))]
    NotAuthenticated(String),
    #[error("nodeattestor(k8s_psat): failed to parse username from token review status for cluster {}: {reason}", go_quote(.cluster))]
    Username {
        cluster: String,
        reason: StatusError,
    },
    #[error("nodeattestor(k8s_psat): {} is not an allowed service account for cluster {}", go_quote(.service_account), go_quote(.cluster))]
    ServiceAccountNotAllowed {
        service_account: String,
        cluster: String,
    },
    #[error("nodeattestor(k8s_psat): failed to get pod name from token review status for cluster {}: {reason}", go_quote(.cluster))]
    PodName {
        cluster: String,
        reason: StatusError,
    },
    #[error("nodeattestor(k8s_psat): failed to get pod UID from token review status for cluster {}: {reason}", go_quote(.cluster))]
    PodUid {
        cluster: String,
        reason: StatusError,
    },
    #[error("nodeattestor(k8s_psat): failed to get pod from k8s API server for cluster {}: {reason}", go_quote(.cluster))]
    GetPod {
        cluster: String,
        reason: ClientError,
    },
    #[error("nodeattestor(k8s_psat): pod UID mismatch for pod {} in cluster {}: token bound to pod UID {}", go_quote(.pod), go_quote(.cluster), go_quote(.token_pod_uid))]
    PodUidMismatch {
        pod: String,
        cluster: String,
        token_pod_uid: String,
    },
    #[error("nodeattestor(k8s_psat): failed to get node from k8s API server for cluster {}: {reason}", go_quote(.cluster))]
    GetNode {
        cluster: String,
        reason: ClientError,
    },
    #[error("nodeattestor(k8s_psat): node UID is empty for cluster {}", go_quote(.0))]
    EmptyNodeUid(String),
    /// The cluster, node or pod names do not make a valid SPIFFE ID (SPIRE's server refuses
    /// the plugin's answer the same way).
    #[error("invalid agent ID: {0}")]
    AgentId(IdError),
    #[error("nodeattestor(k8s_psat): invalid selector: {0}")]
    Selector(SelectorError),
}

// === impl AttestError ===

impl AttestError {
    /// SPIRE's gRPC code for this refusal.
    pub fn code(&self) -> Code {
        match self {
            Self::EmptyPayload
            | Self::Payload(_)
            | Self::MissingCluster
            | Self::MissingToken
            | Self::UnknownCluster(_) => Code::InvalidArgument,
            Self::NotConfigured => Code::FailedPrecondition,
            Self::NotAuthenticated(_)
            | Self::ServiceAccountNotAllowed { .. }
            | Self::PodUidMismatch { .. } => Code::PermissionDenied,
            Self::TokenReview { .. }
            | Self::Username { .. }
            | Self::PodName { .. }
            | Self::PodUid { .. }
            | Self::GetPod { .. }
            | Self::GetNode { .. }
            | Self::EmptyNodeUid(_)
            | Self::AgentId(_)
            | Self::Selector(_) => Code::Internal,
        }
    }
}

// === impl Attestor ===

impl Attestor {
    /// The plugin before `Configure`: every attestation is refused with `not configured`.
    pub fn unconfigured() -> Self {
        Self::default()
    }

    /// SPIRE's `Configure`: the server's trust domain (required) and the plugin data. Each
    /// cluster reaches its API server through its kubeconfig, or the in-cluster configuration.
    pub fn configure(
        trust_domain: Option<TrustDomain>,
        config: ServerConfig,
    ) -> Result<Self, ConfigureError> {
        let trust_domain = trust_domain.ok_or(ConfigureError::MissingTrustDomain)?;
        config.validate()?;
        let clusters = config
            .clusters
            .into_iter()
            .map(|(name, config)| {
                let cluster = Cluster {
                    service_accounts: config.service_account_allow_list.iter().cloned().collect(),
                    audience: config.effective_audience(),
                    source: KubeSource::from_kube_config_file(config.kubeconfig_path()),
                    config,
                };
                (name, cluster)
            })
            .collect();
        Ok(Self {
            configured: Some(Configured {
                trust_domain,
                clusters,
            }),
        })
    }

    /// SPIRE's `Configure` with the plugin data as HCL text: the trust domain is checked
    /// first, then the text.
    pub fn configure_hcl(
        trust_domain: Option<TrustDomain>,
        plugin_data: &str,
    ) -> Result<Self, ConfigureError> {
        let trust_domain = trust_domain.ok_or(ConfigureError::MissingTrustDomain)?;
        Self::configure(Some(trust_domain), ServerConfig::from_hcl(plugin_data)?)
    }

    /// Reaches `cluster`'s API server through `source` instead (tests, embedding). False if
    /// there is no such cluster.
    pub fn set_kube_source(&mut self, cluster: &str, source: KubeSource) -> bool {
        match self
            .configured
            .as_mut()
            .and_then(|c| c.clusters.get_mut(cluster))
        {
            Some(c) => {
                c.source = source;
                true
            }
            None => false,
        }
    }

    /// The configured cluster names.
    pub fn clusters(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .configured
            .iter()
            .flat_map(|c| c.clusters.keys().map(String::as_str))
            .collect();
        names.sort_unstable();
        names
    }

    /// Attests the agent that sent `payload`: every check of SPIRE's, in its order.
    pub async fn attest(&self, payload: &[u8]) -> Result<Attested, AttestError> {
        if payload.is_empty() {
            return Err(AttestError::EmptyPayload);
        }
        let config = self.configured.as_ref().ok_or(AttestError::NotConfigured)?;
        let data = AttestationData::parse(payload).map_err(AttestError::Payload)?;
        if data.cluster.is_empty() {
            return Err(AttestError::MissingCluster);
        }
        if data.token.is_empty() {
            return Err(AttestError::MissingToken);
        }
        let name = data.cluster.as_str();
        let cluster = config
            .clusters
            .get(name)
            .ok_or_else(|| AttestError::UnknownCluster(name.to_string()))?;
        let owned = || name.to_string();

        // One client for the three calls; failing to build it fails the first of them.
        let review_failed = |reason| AttestError::TokenReview {
            cluster: owned(),
            reason,
        };
        let api = cluster.source.connect().await.map_err(review_failed)?;
        let status = api
            .validate_token(&data.token, &cluster.audience)
            .await
            .map_err(review_failed)?;
        if status.authenticated != Some(true) {
            return Err(AttestError::NotAuthenticated(owned()));
        }
        let (namespace, service_account) =
            status::names_from_token_status(&status).map_err(|reason| AttestError::Username {
                cluster: owned(),
                reason,
            })?;
        let full_name = format!("{namespace}:{service_account}");
        if !cluster.service_accounts.contains(&full_name) {
            return Err(AttestError::ServiceAccountNotAllowed {
                service_account: full_name,
                cluster: owned(),
            });
        }
        let pod_name =
            status::pod_name_from_token_status(&status).map_err(|reason| AttestError::PodName {
                cluster: owned(),
                reason,
            })?;
        let pod_uid =
            status::pod_uid_from_token_status(&status).map_err(|reason| AttestError::PodUid {
                cluster: owned(),
                reason,
            })?;

        let pod =
            api.get_pod(&namespace, &pod_name)
                .await
                .map_err(|reason| AttestError::GetPod {
                    cluster: owned(),
                    reason,
                })?;
        // The token outlives nothing: a pod re-created under the same name has a new UID, and
        // the old pod's token must not attest as the new one.
        if pod.metadata.uid.as_deref().unwrap_or_default() != pod_uid {
            return Err(AttestError::PodUidMismatch {
                pod: pod_name,
                cluster: owned(),
                token_pod_uid: pod_uid,
            });
        }
        let node_name = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        let host_ip = pod
            .status
            .as_ref()
            .and_then(|s| s.host_ip.clone())
            .unwrap_or_default();
        let node = api
            .get_node(&node_name)
            .await
            .map_err(|reason| AttestError::GetNode {
                cluster: owned(),
                reason,
            })?;
        let node_uid = node.metadata.uid.clone().unwrap_or_default();
        if node_uid.is_empty() {
            return Err(AttestError::EmptyNodeUid(owned()));
        }

        let mut values = vec![
            status::selector_value("cluster", &[name]),
            status::selector_value("agent_ns", &[&namespace]),
            status::selector_value("agent_sa", &[&service_account]),
            status::selector_value("agent_pod_name", &[&pod_name]),
            status::selector_value("agent_pod_uid", &[&pod_uid]),
            status::selector_value("agent_node_ip", &[&host_ip]),
            status::selector_value("agent_node_name", &[&node_name]),
            status::selector_value("agent_node_uid", &[&node_uid]),
        ];
        let labels = |labels: &Option<BTreeMap<String, String>>, allowed: &[String], kind| {
            labels
                .iter()
                .flatten()
                .filter(|(k, _)| allowed.contains(k))
                .map(|(k, v)| status::selector_value(kind, &[k, v]))
                .collect::<Vec<_>>()
        };
        values.extend(labels(
            &node.metadata.labels,
            &cluster.config.allowed_node_label_keys,
            "agent_node_label",
        ));
        values.extend(labels(
            &pod.metadata.labels,
            &cluster.config.allowed_pod_label_keys,
            "agent_pod_label",
        ));
        let selectors = values
            .into_iter()
            .map(|v| Selector::new(PLUGIN_NAME, v).map_err(AttestError::Selector))
            .collect::<Result<Vec<_>, _>>()?;

        let suffix = if cluster.config.use_pod_uid_for_agent_id {
            format!("pod/{pod_uid}")
        } else {
            node_uid
        };
        let agent_id = status::agent_id(PLUGIN_NAME, &config.trust_domain, name, &suffix)
            .map_err(AttestError::AgentId)?;
        Ok(Attested {
            agent_id,
            selectors,
            can_reattest: true,
        })
    }
}
