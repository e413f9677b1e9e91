//! The three API server calls attestation makes (SPIRE's `apiserver.Client`): a TokenReview,
//! a pod GET and a node GET, through kube-rs.

use std::fmt;
use std::path::PathBuf;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::quote::go_quote_list;

/// Where a cluster's API server is and how to authenticate to it.
#[derive(Clone)]
pub enum KubeSource {
    /// A kubeconfig file, read again for every attestation (as SPIRE does), so rotated
    /// credentials in it take effect without a restart.
    KubeConfig(PathBuf),
    /// The in-cluster configuration (service account token and CA of the server's own pod).
    InCluster,
    /// A client built elsewhere (tests).
    Client(kube::Client),
}

/// A connected client (SPIRE's clientset).
#[derive(Clone)]
pub struct ApiClient(kube::Client);

/// A failed API server call. The messages are SPIRE's.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("unable to get clientset: unable to create client config: {0}")]
    Config(String),
    #[error("unable to get clientset: unable to create clientset for the given config: {}", kube_message(.0))]
    Client(#[source] kube::Error),
    #[error("unable to query token review API: {}", kube_message(.0))]
    TokenReview(#[source] kube::Error),
    #[error("token review API response contains an error: {0}")]
    ReviewError(String),
    #[error("token review API did not validate audience: wanted one of {} but got {}", go_quote_list(.wanted), go_quote_list(.got))]
    Audience {
        wanted: Vec<String>,
        got: Vec<String>,
    },
    #[error("empty namespace")]
    EmptyNamespace,
    #[error("empty pod name")]
    EmptyPodName,
    #[error("empty node name")]
    EmptyNodeName,
    #[error("unable to query pods API: {}", kube_message(.0))]
    Pod(#[source] kube::Error),
    #[error("unable to query nodes API: {}", kube_message(.0))]
    Node(#[source] kube::Error),
}

/// What client-go would say: an API server's refusal is its status message (`pods "x" not
/// found`), anything else kube-rs's description.
fn kube_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) if !status.message.is_empty() => status.message.clone(),
        other => other.to_string(),
    }
}

// === impl KubeSource ===

impl KubeSource {
    /// `kube_config_file` as configured: empty is the in-cluster configuration.
    pub fn from_kube_config_file(path: Option<PathBuf>) -> Self {
        match path {
            Some(p) => Self::KubeConfig(p),
            None => Self::InCluster,
        }
    }

    /// A client for one attestation (its three calls).
    pub async fn connect(&self) -> Result<ApiClient, ClientError> {
        let config = match self {
            Self::Client(c) => return Ok(ApiClient(c.clone())),
            Self::InCluster => {
                kube::Config::incluster().map_err(|e| ClientError::Config(e.to_string()))?
            }
            Self::KubeConfig(path) => {
                let kubeconfig =
                    Kubeconfig::read_from(path).map_err(|e| ClientError::Config(e.to_string()))?;
                kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                    .await
                    .map_err(|e| ClientError::Config(e.to_string()))?
            }
        };
        kube::Client::try_from(config)
            .map(ApiClient)
            .map_err(ClientError::Client)
    }
}

// === impl ApiClient ===

impl ApiClient {
    /// Asks the API server about `token` for `audiences` (SPIRE's `ValidateToken`): a review
    /// carrying an error fails, and so does an authenticated one whose audiences share none
    /// with those asked for (an API server that ignored them).
    pub async fn validate_token(
        &self,
        token: &str,
        audiences: &[String],
    ) -> Result<TokenReviewStatus, ClientError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                // Go's `omitempty`: no audiences means the API server's own.
                audiences: (!audiences.is_empty()).then(|| audiences.to_vec()),
            },
            ..Default::default()
        };
        let resp = Api::<TokenReview>::all(self.0.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(ClientError::TokenReview)?;
        let status = resp.status.unwrap_or_default();
        if let Some(error) = status.error.as_deref().filter(|e| !e.is_empty()) {
            return Err(ClientError::ReviewError(error.to_string()));
        }
        let got = status.audiences.clone().unwrap_or_default();
        if status.authenticated == Some(true)
            && !audiences.is_empty()
            && !audiences.iter().any(|a| got.contains(a))
        {
            return Err(ClientError::Audience {
                wanted: audiences.to_vec(),
                got,
            });
        }
        Ok(status)
    }

    /// The pod `namespace/name`.
    pub async fn get_pod(&self, namespace: &str, name: &str) -> Result<Pod, ClientError> {
        if namespace.is_empty() {
            return Err(ClientError::EmptyNamespace);
        }
        if name.is_empty() {
            return Err(ClientError::EmptyPodName);
        }
        Api::<Pod>::namespaced(self.0.clone(), namespace)
            .get(name)
            .await
            .map_err(ClientError::Pod)
    }

    /// The node `name`.
    pub async fn get_node(&self, name: &str) -> Result<Node, ClientError> {
        if name.is_empty() {
            return Err(ClientError::EmptyNodeName);
        }
        Api::<Node>::all(self.0.clone())
            .get(name)
            .await
            .map_err(ClientError::Node)
    }
}

impl fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiClient(..)")
    }
}

impl fmt::Debug for KubeSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::KubeConfig(p) => f.debug_tuple("KubeConfig").field(p).finish(),
            Self::InCluster => f.write_str("InCluster"),
            Self::Client(_) => f.write_str("Client(..)"),
        }
    }
}
