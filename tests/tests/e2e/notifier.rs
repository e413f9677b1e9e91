//! `Notifier "k8sbundle"` (SPIRE's plugin, as the Helm chart configures it): the server keeps
//! its trust bundle in a ConfigMap, which agents mount as their bootstrap bundle. The
//! ConfigMap must exist (the chart creates it); until it does the server retries, and other
//! keys in it are left alone.

use std::time::Duration;

use serde_json::json;
use sigil_e2e::harness::{Server, TestDir, wait_until};
use sigil_fake_kube::FakeKube;

use crate::TD;

#[test]
fn k8sbundle_keeps_the_trust_bundle_in_a_config_map() {
    let dir = TestDir::new("k8sbundle");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let kube = rt.block_on(FakeKube::start_tls()).expect("fake API server");
    let kubeconfig = dir.path().join("kubeconfig");
    kube.write_kubeconfig(&kubeconfig).expect("kubeconfig");
    let server = Server::start_with_config_file(
        &dir.path().join("srv"),
        TD,
        &format!(
            "plugins {{\n  Notifier \"k8sbundle\" {{\n    plugin_data {{\n      namespace = \"spire\"\n      config_map = \"spire-bundle\"\n      kube_config_file = \"{}\"\n      webhook_label = \"spiffe.io/webhook\"\n    }}\n  }}\n}}\n",
            kubeconfig.display()
        ),
    );
    // No ConfigMap yet: nothing is created (that would need a cluster-wide create right).
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        kube.get("ConfigMap", Some("spire"), "spire-bundle")
            .is_none()
    );

    kube.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "spire"}}));
    kube.apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "spire-bundle", "namespace": "spire"},
        "data": {"other": "kept"}}));
    let want = server.bundle_pem();
    let cm = wait_until(
        "the bundle in the ConfigMap",
        Duration::from_secs(20),
        || {
            let cm = kube.get("ConfigMap", Some("spire"), "spire-bundle")?;
            (cm["data"]["bundle.crt"].as_str()? == want).then_some(cm)
        },
    );
    assert_eq!(cm["data"]["other"], "kept");
    assert!(want.contains("BEGIN CERTIFICATE"), "{want}");
    assert!(
        server.log().contains("not needed by Sigil"),
        "webhook_label is reported once as not needed: {}",
        server.log()
    );
}
