//! SPIRE's `Notifier "k8sbundle"`: the server keeps its trust bundle (the X.509 roots, PEM) in
//! a ConfigMap, where agents (the Helm chart mounts it) and other consumers read it, and
//! updates it on every bundle change.
//!
//! As SPIRE's plugin, it patches a ConfigMap that must exist (the chart creates it): creating
//! ConfigMaps cannot be limited by name in RBAC, patching one can. A failed update is retried
//! until it succeeds.

pub mod publisher;

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{Patch, PatchParams};
use sigil_config::{Block, ConfigError};

/// The plugin's configuration (SPIRE's keys and defaults).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub namespace: String,
    pub config_map: String,
    pub config_map_key: String,
    pub kube_config_file: Option<PathBuf>,
    /// Keys SPIRE uses for features Sigil does not have (webhook and API service CA bundles):
    /// accepted, logged once.
    pub not_used: Vec<String>,
}

/// Why the bundle could not be published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("Kubernetes client: {0}")]
    Client(String),
    #[error("unable to update ConfigMap {namespace}/{name}: {source}")]
    Patch {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

// === impl Config ===

impl Config {
    /// From `Notifier "k8sbundle" { plugin_data { ... } }`.
    pub fn from_plugin_data(mut data: Block) -> Result<Self, ConfigError> {
        let namespace = data.string("namespace")?.unwrap_or_else(|| "spire".into());
        let config_map = data
            .string("config_map")?
            .unwrap_or_else(|| "spire-bundle".into());
        let config_map_key = data
            .string("config_map_key")?
            .unwrap_or_else(|| "bundle.crt".into());
        let kube_config_file = data.string("kube_config_file")?.map(PathBuf::from);
        let mut not_used = Vec::new();
        for key in ["webhook_label", "api_service_label"] {
            if data.string(key)?.is_some() {
                not_used.push(key.to_string());
            }
        }
        if data.block("clusters", "k8sbundle clusters")?.is_some() {
            return Err(ConfigError::invalid(
                "Notifier \"k8sbundle\" clusters",
                "publishing to other clusters is not supported; use one Notifier per server",
            ));
        }
        data.finish()?;
        Ok(Self {
            namespace,
            config_map,
            config_map_key,
            kube_config_file,
            not_used,
        })
    }

    /// A client: `kube_config_file`, else the pod's service account.
    pub async fn client(&self) -> Result<kube::Client, PublishError> {
        let config = match &self.kube_config_file {
            Some(path) => {
                let kc = kube::config::Kubeconfig::read_from(path)
                    .map_err(|e| PublishError::Client(format!("{}: {e}", path.display())))?;
                kube::Config::from_custom_kubeconfig(kc, &Default::default())
                    .await
                    .map_err(|e| PublishError::Client(format!("{}: {e}", path.display())))?
            }
            None => kube::Config::incluster().map_err(|e| PublishError::Client(e.to_string()))?,
        };
        kube::Client::try_from(config).map_err(|e| PublishError::Client(e.to_string()))
    }
}

/// Writes `pem` under the configured key of the ConfigMap (a merge patch: other keys stay).
pub async fn publish(client: &kube::Client, cfg: &Config, pem: &str) -> Result<(), PublishError> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &cfg.namespace);
    let patch = serde_json::json!({ "data": { cfg.config_map_key.clone(): pem } });
    api.patch(
        &cfg.config_map,
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map(|_| ())
    .map_err(|source| PublishError::Patch {
        namespace: cfg.namespace.clone(),
        name: cfg.config_map.clone(),
        source,
    })
}

/// Keeps the ConfigMap equal to `bundle()` (checked every `interval`; also right after a
/// failure's interval): runs until the task is dropped. Logs once per change of state.
pub async fn run(cfg: Config, interval: Duration, bundle: impl Fn() -> String + Send + 'static) {
    for key in &cfg.not_used {
        tracing::info!(key = %key, "Notifier \"k8sbundle\": key not needed by Sigil (no webhook or API service CA bundles); ignored");
    }
    let mut published: Option<String> = None;
    let mut failing: Option<String> = None;
    let mut client: Option<kube::Client> = None;
    let mut tick = tokio::time::interval(interval);
    loop {
        tick.tick().await;
        let pem = bundle();
        if published.as_deref() == Some(pem.as_str()) {
            continue;
        }
        if client.is_none() {
            match cfg.client().await {
                Ok(c) => client = Some(c),
                Err(e) => {
                    report(&mut failing, e.to_string());
                    continue;
                }
            }
        }
        let Some(c) = &client else { continue };
        match publish(c, &cfg, &pem).await {
            Ok(()) => {
                tracing::info!(namespace = %cfg.namespace, config_map = %cfg.config_map, key = %cfg.config_map_key, "trust bundle published");
                failing = None;
                published = Some(pem);
            }
            Err(e) => report(&mut failing, e.to_string()),
        }
    }
}

fn report(failing: &mut Option<String>, error: String) {
    if failing.as_deref() != Some(error.as_str()) {
        tracing::warn!(%error, "Notifier \"k8sbundle\": publishing the trust bundle failed; retrying");
        *failing = Some(error);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(text: &str) -> Block {
        let mut root = sigil_config::parse(text).unwrap();
        root.block("plugin_data", "plugin_data").unwrap().unwrap()
    }

    #[test]
    fn spire_keys_and_defaults() {
        let c = Config::from_plugin_data(data("plugin_data {\n}\n")).unwrap();
        assert_eq!(
            (
                c.namespace.as_str(),
                c.config_map.as_str(),
                c.config_map_key.as_str()
            ),
            ("spire", "spire-bundle", "bundle.crt")
        );
        let c = Config::from_plugin_data(data(
            "plugin_data {\n namespace = \"spire-server\"\n config_map = \"b\"\n config_map_key = \"ca.pem\"\n webhook_label = \"x\"\n kube_config_file = \"/k\"\n}\n",
        ))
        .unwrap();
        assert_eq!(c.namespace, "spire-server");
        assert_eq!(c.config_map_key, "ca.pem");
        assert_eq!(c.not_used, ["webhook_label"]);
        assert_eq!(
            c.kube_config_file.as_deref(),
            Some(std::path::Path::new("/k"))
        );
        let e = Config::from_plugin_data(data("plugin_data {\n clusters {\n }\n}\n")).unwrap_err();
        assert!(e.to_string().contains("not supported"), "{e}");
        let e =
            Config::from_plugin_data(data("plugin_data {\n nmespace = \"x\"\n}\n")).unwrap_err();
        assert!(e.to_string().contains("nmespace"), "{e}");
    }
}
