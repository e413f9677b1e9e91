//! The watch feeding the store, against a real-protocol API server (`sigil-fake-kube`): only
//! this node's pods, deletions, and catching up after an outage with a 410 relist, without
//! dropping pods that are still there.

use std::time::Duration;

use serde_json::{Value, json};
use sigil_fake_kube::FakeKube;
use sigil_k8s::{K8sAttestor, K8sAttestorConfig, Lookup};

fn pod(name: &str, uid: &str, node: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "uid": uid},
        "spec": {"nodeName": node, "serviceAccountName": "default",
                 "containers": [{"name": "c", "image": "i"}]},
    })
}

async fn eventually(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !ok() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_follows_this_nodes_pods() {
    let kube = FakeKube::start().await.expect("fake API server");
    kube.apply(pod("a", "00000000-0000-4000-8000-00000000000a", "n1"));
    kube.apply(pod(
        "elsewhere",
        "00000000-0000-4000-8000-00000000000e",
        "n2",
    ));
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    kube.write_kubeconfig(&kubeconfig).expect("kubeconfig");
    let config = K8sAttestorConfig {
        node_name: "n1".into(),
        kube_config_file: Some(kubeconfig),
        disable_container_selectors: false,
        enable_namespace_labels: false,
        pod_wait: Duration::from_secs(5),
        not_needed: Vec::new(),
    };
    let attestor = K8sAttestor::start(config).await.expect("client");
    let store = attestor.store().clone();
    let a = "00000000-0000-4000-8000-00000000000a";
    eventually("the first list", || {
        store.synced() && store.get(a).is_some()
    })
    .await;
    assert_eq!(store.len(), 1, "only this node's pods");
    assert_eq!(
        store.lookup(Some("00000000-0000-4000-8000-00000000000e"), None),
        Lookup::NoPod
    );

    // A new pod is pushed; a deleted one goes.
    let b = "00000000-0000-4000-8000-00000000000b";
    kube.apply(pod("b", b, "n1"));
    eventually("pod b", || store.get(b).is_some()).await;
    kube.delete("Pod", Some("default"), "b");
    eventually("pod b deleted", || store.get(b).is_none()).await;

    // Outage: the history is compacted meanwhile, so the watch must relist (410 Gone). Pod a
    // stays in the store throughout; pod c, created during the outage, arrives after it.
    kube.stop().await;
    let c = "00000000-0000-4000-8000-00000000000c";
    kube.apply(pod("c", c, "n1"));
    kube.compact();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        store.get(a).is_some(),
        "known pods stay while the API server is down"
    );
    kube.restart().await.expect("restart");
    eventually("pod c after the outage", || store.get(c).is_some()).await;
    assert!(store.get(a).is_some(), "the relist kept pod a");
    assert_eq!(store.len(), 2);
}
