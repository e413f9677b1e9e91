//! `WorkloadAttestor "k8s" { plugin_data { ... } }`: SPIRE's keys, Sigil's meaning.
//!
//! SPIRE users bring their `agent.conf`, so every key of SPIRE's `k8s` attestor is accepted.
//! Those that configure polling the kubelet (ports, kubelet TLS and credentials, poll attempts
//! and intervals, the container locator) have nothing to configure here — pods come from a
//! watch on the API server and the container from the kernel — so they are read, checked for
//! their type, and reported once as not needed.

use std::path::PathBuf;
use std::time::Duration;

use sigil_config::{Block, ConfigError};

/// SPIRE's default for `node_name_env`.
pub const DEFAULT_NODE_NAME_ENV: &str = "MY_NODE_NAME";
/// How long a caller whose pod is not in the store yet waits for the watch to deliver it.
pub const DEFAULT_POD_WAIT: Duration = Duration::from_secs(10);

/// The `k8s` workload attestor's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct K8sAttestorConfig {
    /// The node whose pods are watched (`node_name`, else the `node_name_env` variable).
    pub node_name: String,
    /// A kubeconfig for running outside the cluster; the in-cluster service account otherwise.
    pub kube_config_file: Option<PathBuf>,
    /// Emit pod selectors only (SPIRE's `disable_container_selectors`).
    pub disable_container_selectors: bool,
    /// Also watch Namespaces and emit `k8s:ns-label:<k>:<v>`.
    pub enable_namespace_labels: bool,
    /// `pod_wait_timeout`: how long a caller whose pod is not known yet waits for it.
    pub pod_wait: Duration,
    /// SPIRE keys that were set but mean nothing without kubelet polling.
    pub not_needed: Vec<&'static str>,
}

/// SPIRE's kubelet-polling keys, with their types (checked, then ignored).
const KUBELET_KEYS: &[(&str, KeyType)] = &[
    ("kubelet_read_only_port", KeyType::Integer),
    ("kubelet_secure_port", KeyType::Integer),
    ("kubelet_ca_path", KeyType::String),
    ("skip_kubelet_verification", KeyType::Bool),
    ("token_path", KeyType::String),
    ("certificate_path", KeyType::String),
    ("private_key_path", KeyType::String),
    ("use_anonymous_authentication", KeyType::Bool),
    ("max_poll_attempts", KeyType::Integer),
    ("poll_retry_interval", KeyType::Duration),
    ("reload_interval", KeyType::Duration),
    ("use_new_container_locator", KeyType::Bool),
    ("verbose_container_locator_logs", KeyType::Bool),
];

#[derive(Clone, Copy)]
enum KeyType {
    Integer,
    String,
    Bool,
    Duration,
}

// === impl K8sAttestorConfig ===

impl K8sAttestorConfig {
    /// Reads `plugin_data`, taking the node name from the environment when the file does not
    /// give it.
    pub fn from_plugin_data(data: Block) -> Result<Self, ConfigError> {
        Self::from_plugin_data_with_env(data, |name| std::env::var(name).ok())
    }

    /// [`from_plugin_data`](Self::from_plugin_data) with `env` standing in for the process
    /// environment.
    pub fn from_plugin_data_with_env(
        mut data: Block,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut not_needed = Vec::new();
        for &(key, ty) in KUBELET_KEYS {
            let present = match ty {
                KeyType::Integer => data.integer(key)?.is_some(),
                KeyType::String => data.string(key)?.is_some(),
                KeyType::Bool => data.bool(key)?.is_some(),
                KeyType::Duration => data.duration(key)?.is_some(),
            };
            if present {
                not_needed.push(key);
            }
        }
        let disable_container_selectors =
            data.bool("disable_container_selectors")?.unwrap_or(false);
        let enable_namespace_labels = data.bool("enable_namespace_labels")?.unwrap_or(false);
        let node_name_env = data
            .string("node_name_env")?
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| DEFAULT_NODE_NAME_ENV.to_string());
        let node_name = data.string("node_name")?.filter(|s| !s.is_empty());
        let kube_config_file = data
            .string("kube_config_file")?
            .filter(|s| !s.is_empty())
            .map(PathBuf::from);
        let pod_wait = match data.duration("pod_wait_timeout")? {
            Some(d) if d.is_zero() => {
                return Err(ConfigError::invalid(
                    "pod_wait_timeout",
                    "must be greater than zero",
                ));
            }
            Some(d) => d,
            None => DEFAULT_POD_WAIT,
        };
        data.finish()?;
        // SPIRE: `node_name` overrides the variable named by `node_name_env`.
        let node_name = node_name
            .or_else(|| env(&node_name_env).filter(|s| !s.is_empty()))
            .ok_or_else(|| {
                ConfigError::invalid(
                    "node_name",
                    format!(
                        "the k8s workload attestor needs the node's name: set node_name, or the \
                         {node_name_env} environment variable (node_name_env), e.g. from the \
                         downward API's spec.nodeName"
                    ),
                )
            })?;
        Ok(Self {
            node_name,
            kube_config_file,
            disable_container_selectors,
            enable_namespace_labels,
            pod_wait,
            not_needed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(hcl: &str, env: &[(&str, &str)]) -> Result<K8sAttestorConfig, ConfigError> {
        let mut root = sigil_config::parse(hcl).expect("valid HCL");
        let data = root
            .block("plugin_data", "plugin_data block")
            .expect("a block")
            .unwrap_or_default();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        K8sAttestorConfig::from_plugin_data_with_env(data, |name| {
            env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn every_spire_key_is_accepted() {
        let c = parse(
            r#"plugin_data {
                kubelet_read_only_port = 10255
                kubelet_secure_port = 10250
                kubelet_ca_path = "/run/secrets/kubernetes.io/serviceaccount/ca.crt"
                skip_kubelet_verification = true
                token_path = "/var/run/secrets/kubernetes.io/serviceaccount/token"
                certificate_path = "/x.crt"
                private_key_path = "/x.key"
                use_anonymous_authentication = false
                max_poll_attempts = 60
                poll_retry_interval = "500ms"
                reload_interval = "1m"
                use_new_container_locator = true
                verbose_container_locator_logs = false
                disable_container_selectors = true
                enable_namespace_labels = true
                node_name_env = "NODE"
                node_name = ""
            }"#,
            &[("NODE", "worker-1")],
        )
        .expect("SPIRE's keys are accepted");
        assert_eq!(c.node_name, "worker-1");
        assert!(c.disable_container_selectors && c.enable_namespace_labels);
        assert_eq!(c.not_needed.len(), KUBELET_KEYS.len());
        assert_eq!(c.pod_wait, DEFAULT_POD_WAIT);
    }

    #[test]
    fn node_name_sources() {
        let c = parse("plugin_data {}", &[("MY_NODE_NAME", "n1")]).unwrap();
        assert_eq!(c.node_name, "n1");
        assert!(c.not_needed.is_empty());
        let c = parse(
            "plugin_data { node_name = \"n2\" }",
            &[("MY_NODE_NAME", "n1")],
        )
        .unwrap();
        assert_eq!(c.node_name, "n2", "node_name overrides the variable");
        let err = parse("plugin_data {}", &[]).unwrap_err().to_string();
        assert!(err.contains("MY_NODE_NAME"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let env = [("MY_NODE_NAME", "n")];
        let err = parse("plugin_data { bogus = 1 }", &env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("bogus"), "{err}");
        let err = parse("plugin_data { max_poll_attempts = \"many\" }", &env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_poll_attempts"), "{err}");
        let err = parse("plugin_data { pod_wait_timeout = \"0s\" }", &env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("pod_wait_timeout"), "{err}");
        let c = parse(
            "plugin_data {\n pod_wait_timeout = \"250ms\"\n kube_config_file = \"/k\"\n}",
            &env,
        )
        .unwrap();
        assert_eq!(c.pod_wait, Duration::from_millis(250));
        assert_eq!(c.kube_config_file, Some(PathBuf::from("/k")));
    }
}
