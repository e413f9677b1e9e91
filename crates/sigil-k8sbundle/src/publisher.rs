//! SPIRE's `BundlePublisher "k8s_configmap"`: the trust bundle, in the format each target asks
//! for (`spiffe`, `jwks` or `pem`), kept in a ConfigMap of one or more clusters. Unlike the
//! `k8sbundle` notifier it creates the ConfigMap: it writes with server-side apply, field
//! manager `spire-bundlepublisher-k8s_configmap` (SPIRE's), so other fields stay someone else's.

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{Patch, PatchParams};
use sigil_config::{Block, ConfigError};
use sigil_spiffe::bundle::Bundle;

/// SPIRE's field manager for this plugin.
pub const FIELD_MANAGER: &str = "spire-bundlepublisher-k8s_configmap";

/// How a target stores the bundle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// SPIFFE bundle JSON (X.509 and JWT authorities, refresh hint, sequence).
    Spiffe,
    /// A plain JWK set: the same keys without `use` and without the SPIFFE members.
    Jwks,
    /// The X.509 authorities, PEM.
    Pem,
}

/// One cluster's ConfigMap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The key of `clusters` (an arbitrary ID, named in logs).
    pub id: String,
    pub configmap_name: String,
    pub configmap_key: String,
    pub namespace: String,
    pub kubeconfig_path: Option<PathBuf>,
    pub format: Format,
    pub refresh_hint: Option<Duration>,
}

/// `BundlePublisher "k8s_configmap" { plugin_data { clusters = { ... } } }`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PublisherConfig {
    pub targets: Vec<Target>,
}

// === impl PublisherConfig ===

impl PublisherConfig {
    /// SPIRE's keys and messages (`missing bundle format in cluster "x"`, ...).
    pub fn from_plugin_data(mut data: Block) -> Result<Self, ConfigError> {
        let invalid = |msg: String| ConfigError::invalid("BundlePublisher \"k8s_configmap\"", msg);
        let mut targets = Vec::new();
        if let Some(mut clusters) = data.block("clusters", "k8s_configmap clusters")? {
            let ids: Vec<String> = clusters.keys().map(str::to_string).collect();
            for id in ids {
                let Some(mut c) = clusters.block(&id, &format!("k8s_configmap cluster {id:?}"))?
                else {
                    continue;
                };
                let format = c.string("format")?.unwrap_or_default();
                let namespace = c.string("namespace")?.unwrap_or_default();
                let name = c.string("configmap_name")?.unwrap_or_default();
                let key = c.string("configmap_key")?.unwrap_or_default();
                if format.is_empty() {
                    return Err(invalid(format!("missing bundle format in cluster {id:?}")));
                }
                if namespace.is_empty() {
                    return Err(invalid(format!("missing namespace in cluster {id:?}")));
                }
                if name.is_empty() {
                    return Err(invalid(format!("missing configmap name in cluster {id:?}")));
                }
                if key.is_empty() {
                    return Err(invalid(format!("missing configmap key in cluster {id:?}")));
                }
                let format = match format.to_ascii_lowercase().as_str() {
                    "spiffe" => Format::Spiffe,
                    "jwks" => Format::Jwks,
                    "pem" => Format::Pem,
                    _ => {
                        return Err(invalid(format!(
                            "could not parse bundle format from cluster {id:?}: unknown bundle format: {format:?}"
                        )));
                    }
                };
                let refresh_hint = c.duration("refresh_hint").map_err(|e| {
                    invalid(format!(
                        "could not parse refresh_hint from cluster {id:?}: {e}"
                    ))
                })?;
                let kubeconfig_path = c
                    .string("kubeconfig_path")?
                    .filter(|p| !p.is_empty())
                    .map(PathBuf::from);
                c.finish()?;
                targets.push(Target {
                    id,
                    configmap_name: name,
                    configmap_key: key,
                    namespace,
                    kubeconfig_path,
                    format,
                    refresh_hint,
                });
            }
            clusters.finish()?;
        }
        data.finish()?;
        if targets.is_empty() {
            tracing::warn!(
                "BundlePublisher \"k8s_configmap\": no clusters configured; the bundle is not published"
            );
        }
        Ok(Self { targets })
    }
}

/// The bundle as `format` writes it.
pub fn render(bundle: &Bundle, format: Format, refresh_hint: Option<Duration>) -> String {
    match format {
        Format::Pem => bundle.to_pem(),
        Format::Spiffe => {
            let mut b = bundle.clone();
            if let Some(h) = refresh_hint {
                b.refresh_hint = Some(h.as_secs() as i64);
            }
            b.to_spiffe_json()
        }
        Format::Jwks => {
            let mut doc: serde_json::Value =
                serde_json::from_str(&bundle.to_spiffe_json()).unwrap_or_default();
            if let Some(keys) = doc["keys"].as_array_mut() {
                for k in keys {
                    if let Some(k) = k.as_object_mut() {
                        k.remove("use");
                    }
                }
            }
            let keys = doc["keys"].take();
            serde_json::to_string_pretty(&serde_json::json!({ "keys": keys })).unwrap_or_default()
        }
    }
}

async fn client(t: &Target) -> Result<kube::Client, String> {
    let config = match &t.kubeconfig_path {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| format!("{}: {e}", path.display()))?
        }
        None => kube::Config::incluster().map_err(|e| e.to_string())?,
    };
    kube::Client::try_from(config).map_err(|e| e.to_string())
}

async fn apply(client: &kube::Client, t: &Target, text: &str) -> Result<(), String> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &t.namespace);
    let obj = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": { "name": t.configmap_name, "namespace": t.namespace },
        "data": { t.configmap_key.clone(): text },
    });
    api.patch(
        &t.configmap_name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&obj),
    )
    .await
    .map(|_| ())
    .map_err(|e| format!("failed to apply ConfigMap for cluster {:?}: {e}", t.id))
}

/// Keeps every target's ConfigMap equal to `bundle()` rendered in its format (checked every
/// `interval`, retried after failures); logs once per change of each target's state.
pub async fn run(
    cfg: PublisherConfig,
    interval: Duration,
    bundle: impl Fn() -> Bundle + Send + 'static,
) {
    struct State {
        client: Option<kube::Client>,
        published: Option<String>,
        failing: Option<String>,
    }
    let mut states: Vec<State> = cfg
        .targets
        .iter()
        .map(|_| State {
            client: None,
            published: None,
            failing: None,
        })
        .collect();
    let mut tick = tokio::time::interval(interval);
    loop {
        tick.tick().await;
        let b = bundle();
        for (t, st) in cfg.targets.iter().zip(states.iter_mut()) {
            let text = render(&b, t.format, t.refresh_hint);
            if st.published.as_deref() == Some(text.as_str()) {
                continue;
            }
            if st.client.is_none() {
                match client(t).await {
                    Ok(c) => st.client = Some(c),
                    Err(e) => {
                        report(t, &mut st.failing, format!("Kubernetes client: {e}"));
                        continue;
                    }
                }
            }
            let Some(c) = &st.client else { continue };
            match apply(c, t, &text).await {
                Ok(()) => {
                    tracing::info!(cluster = %t.id, namespace = %t.namespace, config_map = %t.configmap_name, key = %t.configmap_key, "trust bundle published");
                    st.failing = None;
                    st.published = Some(text);
                }
                Err(e) => report(t, &mut st.failing, e),
            }
        }
    }
}

fn report(t: &Target, failing: &mut Option<String>, error: String) {
    if failing.as_deref() != Some(error.as_str()) {
        tracing::warn!(cluster = %t.id, %error, "BundlePublisher \"k8s_configmap\": publishing the trust bundle failed; retrying");
        *failing = Some(error);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(text: &str) -> Block {
        sigil_config::parse(text)
            .unwrap()
            .block("plugin_data", "plugin_data")
            .unwrap()
            .unwrap()
    }

    #[test]
    fn spire_sample_configuration() {
        let c = PublisherConfig::from_plugin_data(data(
            r#"plugin_data {
  clusters = {
    "example-cluster-1" = {
      configmap_name = "example.org"
      configmap_key = "bundle"
      namespace = "spire"
      kubeconfig_path = "/file/path/cluster-1"
      format = "spiffe"
    },
    "example-cluster-2" = {
      configmap_name = "example.org"
      configmap_key = "bundle"
      namespace = "spire"
      kubeconfig_path = "/file/path/cluster-2"
      format = "pem"
      refresh_hint = "10m"
    }
  }
}"#,
        ))
        .unwrap();
        assert_eq!(c.targets.len(), 2);
        assert_eq!(c.targets[0].format, Format::Spiffe);
        assert_eq!(c.targets[1].format, Format::Pem);
        assert_eq!(c.targets[1].refresh_hint, Some(Duration::from_secs(600)));
        for (cluster, want) in [
            (
                "namespace = \"s\"\n configmap_name = \"n\"\n configmap_key = \"k\"",
                "missing bundle format in cluster \"c\"",
            ),
            (
                "format = \"pem\"\n configmap_name = \"n\"\n configmap_key = \"k\"",
                "missing namespace in cluster \"c\"",
            ),
            (
                "format = \"pem\"\n namespace = \"s\"\n configmap_key = \"k\"",
                "missing configmap name in cluster \"c\"",
            ),
            (
                "format = \"pem\"\n namespace = \"s\"\n configmap_name = \"n\"",
                "missing configmap key in cluster \"c\"",
            ),
            (
                "format = \"der\"\n namespace = \"s\"\n configmap_name = \"n\"\n configmap_key = \"k\"",
                "could not parse bundle format from cluster \"c\"",
            ),
        ] {
            let err = PublisherConfig::from_plugin_data(data(&format!(
                "plugin_data {{\n clusters = {{\n \"c\" = {{\n {cluster}\n }}\n }}\n}}"
            )))
            .unwrap_err()
            .to_string();
            assert!(err.contains(want), "{err}");
        }
    }
}
