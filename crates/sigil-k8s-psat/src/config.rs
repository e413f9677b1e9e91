//! The server plugin's configuration (`NodeAttestor "k8s_psat" { plugin_data { clusters = {
//! "<name>" = { ... } } } }`), with SPIRE's keys, defaults and checks.

use std::collections::BTreeMap;
use std::path::PathBuf;

use sigil_config::{Block, ConfigError};

use crate::quote::go_quote;

/// The audience a PSAT must carry when a cluster does not set `audience` (SPIRE's default).
pub const DEFAULT_AUDIENCE: &str = "spire-server";

/// The clusters agents may attest from, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerConfig {
    pub clusters: BTreeMap<String, ClusterConfig>,
}

/// One cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterConfig {
    /// `<namespace>:<service account>` names whose tokens may attest; at least one.
    pub service_account_allow_list: Vec<String>,
    /// The audiences the TokenReview asks for: `None` (unset) is [`DEFAULT_AUDIENCE`], an
    /// empty list is the API server's own audience.
    pub audience: Option<Vec<String>>,
    /// The kubeconfig to reach the cluster's API server with; empty: the in-cluster
    /// configuration (the server runs in that cluster).
    pub kube_config_file: String,
    /// Node label keys that become `agent_node_label:<key>:<value>` selectors.
    pub allowed_node_label_keys: Vec<String>,
    /// Pod label keys that become `agent_pod_label:<key>:<value>` selectors.
    pub allowed_pod_label_keys: Vec<String>,
    /// Agent IDs end with `pod/<pod uid>` instead of the node's UID.
    pub use_pod_uid_for_agent_id: bool,
}

/// Why the plugin cannot be configured.
#[derive(Debug, thiserror::Error)]
pub enum ConfigureError {
    /// The plugin data is not HCL, or not of the expected shape (SPIRE's one message for a
    /// failed decode), with the detail.
    #[error("plugin configuration is malformed: {0}")]
    Malformed(ConfigError),
    /// A key Sigil does not know, or a value of the wrong type: named with its block.
    #[error(transparent)]
    Config(ConfigError),
    #[error("cluster {} configuration must have at least one service account allowed", go_quote(.0))]
    NoServiceAccounts(String),
    #[error("server core configuration must contain trust_domain")]
    MissingTrustDomain,
}

// === impl ServerConfig ===

impl ServerConfig {
    /// Reads a `plugin_data` block as the server's config walk hands it over. No clusters is
    /// allowed (SPIRE only notes that attestation is then effectively disabled).
    pub fn from_plugin_data(mut data: Block) -> Result<Self, ConfigureError> {
        let mut clusters = BTreeMap::new();
        if let Some(mut block) = data
            .block("clusters", "k8s_psat clusters")
            .map_err(ConfigureError::Config)?
        {
            let names: Vec<String> = block.keys().map(str::to_string).collect();
            for name in names {
                let what = format!("k8s_psat cluster {}", go_quote(&name));
                let cluster = block
                    .block(&name, &what)
                    .map_err(ConfigureError::Config)?
                    .unwrap_or_else(|| Block::new(what, Default::default()));
                clusters.insert(name, ClusterConfig::from_block(cluster)?);
            }
            block.finish().map_err(ConfigureError::Config)?;
        }
        data.finish().map_err(ConfigureError::Config)?;
        let config = Self { clusters };
        config.validate()?;
        Ok(config)
    }

    /// Reads `plugin_data` given as HCL text, as a SPIRE plugin's `Configure` receives it.
    pub fn from_hcl(text: &str) -> Result<Self, ConfigureError> {
        let data = sigil_config::parse(text).map_err(ConfigureError::Malformed)?;
        Self::from_plugin_data(data)
    }

    /// SPIRE's check: every cluster allows at least one service account (in name order, so
    /// the error is always about the same cluster).
    pub fn validate(&self) -> Result<(), ConfigureError> {
        match self
            .clusters
            .iter()
            .find(|(_, c)| c.service_account_allow_list.is_empty())
        {
            Some((name, _)) => Err(ConfigureError::NoServiceAccounts(name.clone())),
            None => Ok(()),
        }
    }
}

// === impl ClusterConfig ===

impl ClusterConfig {
    fn from_block(mut b: Block) -> Result<Self, ConfigureError> {
        let c = (|| {
            let c = Self {
                service_account_allow_list: b
                    .strings("service_account_allow_list")?
                    .unwrap_or_default(),
                audience: b.strings("audience")?,
                kube_config_file: b.string("kube_config_file")?.unwrap_or_default(),
                allowed_node_label_keys: b.strings("allowed_node_label_keys")?.unwrap_or_default(),
                allowed_pod_label_keys: b.strings("allowed_pod_label_keys")?.unwrap_or_default(),
                use_pod_uid_for_agent_id: b.bool("use_pod_uid_for_agent_id")?.unwrap_or(false),
            };
            b.finish()?;
            Ok(c)
        })();
        c.map_err(ConfigureError::Config)
    }

    /// The audiences the TokenReview asks for.
    pub fn effective_audience(&self) -> Vec<String> {
        match &self.audience {
            None => vec![DEFAULT_AUDIENCE.to_string()],
            Some(a) => a.clone(),
        }
    }

    /// The kubeconfig path, or `None` for the in-cluster configuration.
    pub fn kubeconfig_path(&self) -> Option<PathBuf> {
        (!self.kube_config_file.is_empty()).then(|| PathBuf::from(&self.kube_config_file))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SPIRE's Helm chart renders `server.conf` as JSON, where HCL's blocks and maps become
    /// arrays of one-key objects.
    #[test]
    fn reads_the_helm_charts_json_form() {
        let c = ServerConfig::from_hcl(
            r#"{"clusters": [{"demo": [{"service_account_allow_list": ["spire:spire-agent"],
                 "audience": ["spire-server"], "allowed_node_label_keys": [],
                 "allowed_pod_label_keys": []}]},
                {"other": {"service_account_allow_list": ["x:y"]}}]}"#,
        )
        .unwrap();
        assert_eq!(
            c.clusters["demo"].service_account_allow_list,
            ["spire:spire-agent"]
        );
        assert_eq!(c.clusters["other"].service_account_allow_list, ["x:y"]);
    }

    #[test]
    fn reads_every_key() {
        let c = ServerConfig::from_hcl(
            r#"clusters = {
                "demo" = {
                    service_account_allow_list = ["spire:spire-agent"]
                    audience = []
                    kube_config_file = "/k"
                    allowed_node_label_keys = ["a"]
                    allowed_pod_label_keys = ["b"]
                    use_pod_uid_for_agent_id = true
                }
                "other" = { service_account_allow_list = ["x:y"] }
            }"#,
        )
        .unwrap();
        let demo = &c.clusters["demo"];
        assert_eq!(demo.service_account_allow_list, ["spire:spire-agent"]);
        assert_eq!(demo.effective_audience(), Vec::<String>::new());
        assert_eq!(demo.kubeconfig_path(), Some(PathBuf::from("/k")));
        assert_eq!(demo.allowed_node_label_keys, ["a"]);
        assert_eq!(demo.allowed_pod_label_keys, ["b"]);
        assert!(demo.use_pod_uid_for_agent_id);
        let other = &c.clusters["other"];
        assert_eq!(other.effective_audience(), [DEFAULT_AUDIENCE]);
        assert_eq!(other.kubeconfig_path(), None);
        assert!(!other.use_pod_uid_for_agent_id);
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = ServerConfig::from_hcl(
            r#"clusters = { "demo" = { service_account_allow_list = ["a:b"], bogus = 1 } }"#,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"unsupported key "bogus" in k8s_psat cluster "demo""#
        );
        let err = ServerConfig::from_hcl("cluster = {}").unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"unsupported key "cluster" in config file"#
        );
        let err = ServerConfig::from_hcl(r#"clusters = "demo""#).unwrap_err();
        assert!(err.to_string().contains("clusters"), "{err}");
    }
}
