//! A client for the API server: a kubeconfig file outside the cluster, the pod's service
//! account inside it.

use std::path::Path;

/// Why no client could be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("reading kubeconfig {path}: {source}")]
    Kubeconfig {
        path: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error(
        "in-cluster configuration (is the agent running in a pod with a service account?): {0}"
    )]
    InCluster(#[source] kube::config::InClusterError),
    #[error("building the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
}

/// A client from `kube_config_file`, or the in-cluster service account when `None`.
pub async fn client(kube_config_file: Option<&Path>) -> Result<kube::Client, ClientError> {
    let config = match kube_config_file {
        Some(path) => {
            let bad = |source| ClientError::Kubeconfig {
                path: path.display().to_string(),
                source,
            };
            let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(bad)?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .map_err(bad)?
        }
        None => kube::Config::incluster().map_err(ClientError::InCluster)?,
    };
    kube::Client::try_from(config).map_err(ClientError::Client)
}
