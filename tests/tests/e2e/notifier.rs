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

/// `BundlePublisher "k8s_configmap"` (SPIRE's newer plugin): the bundle in each target's
/// format, written with server-side apply (the ConfigMap is created), and kept current.
#[test]
fn bundle_publisher_writes_every_format_and_follows_changes() {
    let dir = TestDir::new("bundlepublisher");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let kube = rt.block_on(FakeKube::start_tls()).expect("fake API server");
    let kubeconfig = dir.path().join("kubeconfig");
    kube.write_kubeconfig(&kubeconfig).expect("kubeconfig");
    kube.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "spire"}}));
    let cluster = |name: &str, format: &str, extra: &str| {
        format!(
            "\"{name}\" = {{\n configmap_name = \"bundle-{format}\"\n configmap_key = \"bundle\"\n namespace = \"spire\"\n kubeconfig_path = \"{}\"\n format = \"{format}\"\n {extra}\n }}",
            kubeconfig.display()
        )
    };
    let server = Server::start_with_config_file(
        &dir.path().join("srv"),
        TD,
        &format!(
            "plugins {{\n  BundlePublisher \"k8s_configmap\" {{\n    plugin_data {{\n      clusters = {{\n {},\n {},\n {}\n }}\n    }}\n  }}\n}}\n",
            cluster("a", "spiffe", "refresh_hint = \"10m\""),
            cluster("b", "jwks", ""),
            cluster("c", "pem", ""),
        ),
    );
    let data = |format: &str| -> Option<String> {
        kube.get("ConfigMap", Some("spire"), &format!("bundle-{format}"))?["data"]["bundle"]
            .as_str()
            .map(str::to_string)
    };
    let pem = server.bundle_pem();
    wait_until("the PEM bundle", Duration::from_secs(20), || {
        (data("pem")? == pem).then_some(())
    });
    let spiffe: serde_json::Value = serde_json::from_str(&wait_until(
        "the SPIFFE bundle",
        Duration::from_secs(20),
        || data("spiffe"),
    ))
    .expect("SPIFFE bundle JSON");
    assert_eq!(spiffe["spiffe_refresh_hint"], 600, "{spiffe}");
    assert!(spiffe["spiffe_sequence"].as_u64().is_some(), "{spiffe}");
    let parsed = sigil_spiffe::bundle::Bundle::from_spiffe_json(
        TD.parse().unwrap(),
        spiffe.to_string().as_bytes(),
    )
    .expect("a valid SPIFFE bundle");
    assert_eq!(
        parsed.x509_authorities,
        sigil_spiffe::x509::parse_pem_certs(pem.as_bytes()).unwrap()
    );
    let jwks: serde_json::Value =
        serde_json::from_str(&wait_until("the JWKS", Duration::from_secs(20), || {
            data("jwks")
        }))
        .expect("JWKS");
    let keys = jwks["keys"].as_array().expect("keys");
    assert!(keys.iter().all(|k| k.get("use").is_none()), "{jwks}");
    assert!(keys.iter().any(|k| k["x5c"].is_array()), "{jwks}");
    assert!(keys.iter().any(|k| k["kid"].is_string()), "{jwks}");
    assert!(jwks.get("spiffe_sequence").is_none(), "{jwks}");

    // A new authority reaches every ConfigMap.
    server.cli(&["localauthority", "x509", "prepare"]).ok();
    let pem = server.bundle_pem();
    assert_eq!(
        sigil_spiffe::x509::parse_pem_certs(pem.as_bytes())
            .unwrap()
            .len(),
        2
    );
    wait_until(
        "the new root in the PEM ConfigMap",
        Duration::from_secs(20),
        || (data("pem")? == pem).then_some(()),
    );
    wait_until(
        "the new root in the SPIFFE ConfigMap",
        Duration::from_secs(20),
        || {
            let b = sigil_spiffe::bundle::Bundle::from_spiffe_json(
                TD.parse().unwrap(),
                data("spiffe")?.as_bytes(),
            )
            .ok()?;
            (b.x509_authorities.len() == 2).then_some(())
        },
    );
}
