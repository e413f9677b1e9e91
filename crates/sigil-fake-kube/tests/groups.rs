//! kube-rs against the fake API server's named groups: EndpointSlices (label selector, watch),
//! Leases (optimistic concurrency for leader election), and a real CRD, spire-controller-
//! manager's ClusterSPIFFEID (`testdata/`, copied unmodified from upstream), served once
//! created: create, list, watch, server-side apply on `/status`, and gone with its CRD.

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::discovery::Discovery;
use kube::{Client, Config, ResourceExt};
use serde_json::{Value, json};
use sigil_fake_kube::FakeKube;
use std::time::Duration;

async fn client(kube: &FakeKube) -> Client {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    kube.write_kubeconfig(&path).unwrap();
    let config = Config::from_custom_kubeconfig(
        Kubeconfig::read_from(&path).unwrap(),
        &KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    Client::try_from(config).unwrap()
}

/// The next item of `stream`, failing the test after 10 s.
async fn next<S: futures::Stream + Unpin>(stream: &mut S) -> S::Item {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("no event within 10 s")
        .expect("stream ended")
}

fn slice(name: &str, service: &str, pod_ip: &str) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "default",
            "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [pod_ip], "targetRef": {"kind": "Pod", "name": "p"}}],
        "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]})
}

/// The upstream ClusterSPIFFEID CRD, as JSON.
fn cluster_spiffeid_crd() -> Value {
    let yaml = include_str!("../testdata/spire.spiffe.io_clusterspiffeids.yaml");
    serde_norway::from_str(yaml).unwrap()
}

fn cluster_spiffeid_api(client: Client) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("spire.spiffe.io", "v1alpha1", "ClusterSPIFFEID");
    Api::all_with(
        client,
        &ApiResource::from_gvk_with_plural(&gvk, "clusterspiffeids"),
    )
}

#[tokio::test]
async fn endpoint_slices_by_service_and_watch() {
    let kube = FakeKube::start().await.unwrap();
    kube.apply(slice("web-abc", "web", "10.0.0.1"));
    kube.apply(slice("db-xyz", "db", "10.0.0.2"));
    let c = client(&kube).await;
    let slices: Api<EndpointSlice> = Api::namespaced(c.clone(), "default");

    let web = slices
        .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
        .await
        .unwrap();
    let names: Vec<String> = web.items.iter().map(|s| s.name_any()).collect();
    assert_eq!(names, ["web-abc"]);
    assert_eq!(web.items[0].endpoints[0].addresses, ["10.0.0.1"]);
    let sent = kube.requests().into_iter().last().unwrap();
    assert_eq!(
        sent.path,
        "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"
    );

    // A watch on one service sees its slices only.
    let rv = web.metadata.resource_version.unwrap();
    let wp = WatchParams::default().labels("kubernetes.io/service-name=web");
    let mut events = Api::<EndpointSlice>::all(c.clone())
        .watch(&wp, &rv)
        .await
        .unwrap()
        .boxed();
    kube.apply(slice("db-xyz", "db", "10.0.0.9"));
    kube.apply(slice("web-def", "web", "10.0.0.3"));
    match next(&mut events).await.unwrap() {
        WatchEvent::Added(s) => assert_eq!(s.name_any(), "web-def"),
        e => panic!("{e:?}"),
    }
    slices
        .delete("web-abc", &DeleteParams::default())
        .await
        .unwrap();
    match next(&mut events).await.unwrap() {
        WatchEvent::Deleted(s) => assert_eq!(s.name_any(), "web-abc"),
        e => panic!("{e:?}"),
    }

    // Discovery finds the group, as kube-rs's does it.
    let discovery = Discovery::new(c).run().await.unwrap();
    let groups: Vec<String> = discovery.groups().map(|g| g.name().to_string()).collect();
    for g in [
        "",
        "discovery.k8s.io",
        "coordination.k8s.io",
        "apiextensions.k8s.io",
    ] {
        assert!(groups.iter().any(|n| n == g), "{g} not in {groups:?}");
    }
}

#[tokio::test]
async fn lease_replace_with_a_stale_version_conflicts() {
    let kube = FakeKube::start().await.unwrap();
    let leases: Api<Lease> = Api::namespaced(client(&kube).await, "kube-system");
    let lease = Lease {
        metadata: kube::api::ObjectMeta {
            name: Some("sigil-controller".into()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some("a".into()),
            lease_duration_seconds: Some(15),
            ..Default::default()
        }),
    };
    let created = leases.create(&PostParams::default(), &lease).await.unwrap();
    assert_eq!(created.metadata.namespace.as_deref(), Some("kube-system"));

    // Replica b takes it over, from the version it read.
    let mut taken = created.clone();
    taken.spec.as_mut().unwrap().holder_identity = Some("b".into());
    let taken = leases
        .replace("sigil-controller", &PostParams::default(), &taken)
        .await
        .unwrap();
    assert_ne!(
        taken.metadata.resource_version,
        created.metadata.resource_version
    );

    // Replica a, still holding the old version, loses.
    let mut stale = created.clone();
    stale.spec.as_mut().unwrap().holder_identity = Some("a2".into());
    let err = leases
        .replace("sigil-controller", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    let kube::Error::Api(status) = err else {
        panic!("{err:?}")
    };
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
    assert!(
        status
            .message
            .contains(r#"leases.coordination.k8s.io "sigil-controller""#),
        "{}",
        status.message
    );
    let now = kube
        .get("Lease", Some("kube-system"), "sigil-controller")
        .unwrap();
    assert_eq!(now["spec"]["holderIdentity"], "b");
    assert_eq!(now["apiVersion"], "coordination.k8s.io/v1");
}

#[tokio::test]
async fn crd_serves_cluster_spiffeids() {
    let kube = FakeKube::start().await.unwrap();
    let c = client(&kube).await;
    let ids = cluster_spiffeid_api(c.clone());
    // Not served before its CRD exists.
    let err = ids.list(&ListParams::default()).await.unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 404),
        "{err:?}"
    );

    let crds: Api<CustomResourceDefinition> = Api::all(c.clone());
    let crd: CustomResourceDefinition = serde_json::from_value(cluster_spiffeid_crd()).unwrap();
    let crd = crds.create(&PostParams::default(), &crd).await.unwrap();
    let conditions = crd.status.unwrap().conditions.unwrap();
    assert!(
        conditions
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
    );

    let id: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "spire.spiffe.io/v1alpha1", "kind": "ClusterSPIFFEID",
        "metadata": {"name": "default"},
        "spec": {"spiffeIDTemplate": "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}",
            "podSelector": {"matchLabels": {"app": "web"}}},
        "status": {"stats": {"podsSelected": 99}},
    }))
    .unwrap();
    let created = ids.create(&PostParams::default(), &id).await.unwrap();
    assert!(
        created.data.get("status").is_none(),
        "status is the status subresource's: {:?}",
        created.data
    );
    let listed = ids.list(&ListParams::default()).await.unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(
        listed.items[0].types.as_ref().unwrap().api_version,
        "spire.spiffe.io/v1alpha1"
    );
    assert_eq!(
        kube.requests().into_iter().last().unwrap().path,
        "/apis/spire.spiffe.io/v1alpha1/clusterspiffeids"
    );

    // Watch, then the controller reports its stats by server-side apply on /status.
    let rv = listed.metadata.resource_version.unwrap();
    let mut events = ids
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    let status = json!({"apiVersion": "spire.spiffe.io/v1alpha1", "kind": "ClusterSPIFFEID",
        "status": {"stats": {"podsSelected": 2, "entriesToSet": 2}}});
    let applied = ids
        .patch_status(
            "default",
            &PatchParams::apply("sigil-controller").force(),
            &Patch::Apply(&status),
        )
        .await
        .unwrap();
    assert_eq!(applied.data["status"]["stats"]["podsSelected"], 2);
    assert_eq!(
        applied.data["spec"]["podSelector"]["matchLabels"]["app"], "web",
        "a status apply leaves the spec"
    );
    let sent = kube.requests().into_iter().last().unwrap();
    assert_eq!(sent.method, "PATCH");
    assert_eq!(
        sent.param("fieldManager").as_deref(),
        Some("sigil-controller")
    );
    match next(&mut events).await.unwrap() {
        WatchEvent::Modified(o) => assert_eq!(o.data["status"]["stats"]["entriesToSet"], 2),
        e => panic!("{e:?}"),
    }

    // Server-side apply on the main resource: creates, then merges, leaving the status.
    let other = json!({"apiVersion": "spire.spiffe.io/v1alpha1", "kind": "ClusterSPIFFEID",
        "metadata": {"name": "gateway"},
        "spec": {"spiffeIDTemplate": "spiffe://{{ .TrustDomain }}/gw", "className": "a"}});
    let pp = PatchParams::apply("sigil-test").force();
    ids.patch("gateway", &pp, &Patch::Apply(&other))
        .await
        .unwrap();
    match next(&mut events).await.unwrap() {
        WatchEvent::Added(o) => assert_eq!(o.name_any(), "gateway"),
        e => panic!("{e:?}"),
    }
    let change = json!({"apiVersion": "spire.spiffe.io/v1alpha1", "kind": "ClusterSPIFFEID",
        "metadata": {"name": "default"}, "spec": {"className": "b"}});
    let merged = ids
        .patch("default", &pp, &Patch::Apply(&change))
        .await
        .unwrap();
    assert_eq!(merged.data["spec"]["className"], "b");
    assert!(merged.data["spec"]["spiffeIDTemplate"].is_string());
    assert_eq!(merged.data["status"]["stats"]["podsSelected"], 2);
    // The handle sees (and writes) custom resources too.
    assert_eq!(
        kube.get("ClusterSPIFFEID", None, "default").unwrap()["spec"]["className"],
        "b"
    );

    // Without a field manager, apply is refused.
    let err = ids
        .patch("default", &PatchParams::default(), &Patch::Apply(&change))
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 400),
        "{err:?}"
    );

    // Deleting the CRD deletes its objects and stops serving them.
    crds.delete("clusterspiffeids.spire.spiffe.io", &DeleteParams::default())
        .await
        .unwrap();
    let mut deleted = Vec::new();
    while deleted.len() < 2 {
        match next(&mut events).await.unwrap() {
            WatchEvent::Deleted(o) => deleted.push(o.name_any()),
            WatchEvent::Modified(_) => {}
            e => panic!("{e:?}"),
        }
    }
    deleted.sort();
    assert_eq!(deleted, ["default", "gateway"]);
    let err = ids.get("default").await.unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 404),
        "{err:?}"
    );
    let err = ids.list(&ListParams::default()).await.unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 404),
        "{err:?}"
    );
}

#[tokio::test]
async fn handle_applies_crds_and_their_objects() {
    let kube = FakeKube::start().await.unwrap();
    kube.apply(cluster_spiffeid_crd());
    let stored = kube.apply(json!({"apiVersion": "spire.spiffe.io/v1alpha1",
        "kind": "ClusterSPIFFEID", "metadata": {"name": "x"},
        "spec": {"spiffeIDTemplate": "spiffe://td/x"}, "status": {"stats": {"podsSelected": 1}}}));
    assert_eq!(stored["apiVersion"], "spire.spiffe.io/v1alpha1");
    assert!(stored["metadata"].get("namespace").is_none());
    let ids = cluster_spiffeid_api(client(&kube).await);
    let x = ids.get_status("x").await.unwrap();
    assert_eq!(x.data["status"]["stats"]["podsSelected"], 1);
    assert!(
        kube.delete(
            "customresourcedefinitions",
            None,
            "clusterspiffeids.spire.spiffe.io"
        )
        .is_some()
    );
    let err = ids.get("x").await.unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 404),
        "{err:?}"
    );
}

#[tokio::test]
async fn namespaced_crd_with_two_versions() {
    let kube = FakeKube::start().await.unwrap();
    kube.apply(
        json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {"name": "v1", "served": true, "storage": true},
                {"name": "v2", "served": true, "storage": false},
            ]}}),
    );
    kube.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}}));
    let c = client(&kube).await;
    let api = |version: &str, ns: &str| -> Api<DynamicObject> {
        let gvk = GroupVersionKind::gvk("example.com", version, "Widget");
        Api::namespaced_with(
            c.clone(),
            ns,
            &ApiResource::from_gvk_with_plural(&gvk, "widgets"),
        )
    };
    let w: DynamicObject = serde_json::from_value(json!({"apiVersion": "example.com/v1",
        "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": 3}}))
    .unwrap();
    api("v1", "team")
        .create(&PostParams::default(), &w)
        .await
        .unwrap();
    // The same object at the other version, which differs only in apiVersion.
    let v2 = api("v2", "team").get("w").await.unwrap();
    assert_eq!(v2.types.unwrap().api_version, "example.com/v2");
    assert_eq!(v2.data["spec"]["size"], 3);
    assert!(
        api("v1", "default")
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    // A wrong apiVersion in the body is refused, as the API server does.
    let err = api("v2", "team")
        .create(&PostParams::default(), &w)
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 400),
        "{err:?}"
    );
    // A namespace takes its custom resources with it.
    kube.delete("Namespace", None, "team");
    assert!(kube.get("Widget", Some("team"), "w").is_none());
}
