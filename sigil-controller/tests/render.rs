//! A pod's entry from a ClusterSPIFFEID: spire-controller-manager's render and entry-key cases
//! (`testdata/scm-render.json`), then the seeds' ClusterSPIFFEIDs on Istio-shaped pods.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use sigil_controller::crd::{ClusterSPIFFEID, ClusterSPIFFEIDSpec};
use sigil_controller::render::{
    DEFAULT_PARENT_ID_TEMPLATE, ParsedSpec, RenderContext, RenderError, ServiceRef, entry_key,
    parse_selector, render_pod_entry, render_static_entry,
};
use sigil_gotemplate::Template;

fn testdata(name: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn ctx(td: &str, cluster: &str, domain: &str, parent: Option<&str>) -> RenderContext {
    RenderContext {
        trust_domain: td.parse().expect("trust domain"),
        cluster_name: cluster.into(),
        cluster_domain: domain.into(),
        parent_id_template: Template::parse(
            "parentIDTemplate",
            parent.unwrap_or(DEFAULT_PARENT_ID_TEMPLATE),
        )
        .expect("parent template"),
    }
}

#[test]
fn spire_controller_manager_render_cases() {
    let v: Value = serde_json::from_str(&testdata("scm-render.json")).unwrap();
    assert_eq!(v["default_parent_id_template"], DEFAULT_PARENT_ID_TEMPLATE);
    for case in v["render_pod_entry_cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let c = &case["config"];
        let ctx = ctx(
            c["trust_domain"].as_str().unwrap(),
            c["cluster_name"].as_str().unwrap(),
            c["cluster_domain"].as_str().unwrap(),
            c["parent_id_template"].as_str(),
        );
        let spec: ClusterSPIFFEIDSpec =
            serde_json::from_value(case["cluster_spiffe_id_spec"].clone()).expect(name);
        let spec = ParsedSpec::parse(&spec).expect(name);
        // Endpoint names are handed to the renderer as the services targeting the pod.
        let services: Vec<ServiceRef> = case["endpoints_list"]["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| ServiceRef {
                name: e["metadata"]["name"].as_str().unwrap().into(),
                namespace: e["metadata"]["namespace"].as_str().unwrap().into(),
            })
            .collect();
        let e = render_pod_entry(&ctx, &spec, &case["pod"], &case["node"], &services)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let want = &case["expect_asserted"];
        if let Some(id) = want["spiffe_id"].as_str() {
            assert_eq!(e.spiffe_id.to_string(), id, "{name}");
        }
        if let Some(id) = want["parent_id"].as_str() {
            assert_eq!(e.parent_id.to_string(), id, "{name}");
        }
        if let Some(n) = want["dns_names_count"].as_u64() {
            assert_eq!(e.dns_names.len() as u64, n, "{name}: {:?}", e.dns_names);
        }
        if let Some(prefix) = want["dns_names_prefix_in_order"].as_array() {
            for (i, p) in prefix.iter().enumerate() {
                assert_eq!(e.dns_names[i], p.as_str().unwrap(), "{name}");
            }
        }
        for n in want["dns_names_contains"].as_array().into_iter().flatten() {
            assert!(
                e.dns_names.iter().any(|d| d == n.as_str().unwrap()),
                "{name}: {n}"
            );
        }
        if let Some(ns) = want["jwt_svid_ttl_ns"].as_u64() {
            assert_eq!(e.jwt_svid_ttl, Duration::from_nanos(ns), "{name}");
        }
        // What upstream does not assert but its code implies.
        let derived = &case["expect_derived_not_asserted"];
        if let Some(dns) = derived["dns_names"].as_array() {
            let dns: Vec<&str> = dns.iter().map(|d| d.as_str().unwrap()).collect();
            assert_eq!(e.dns_names, dns, "{name}: order");
        }
        if let Some(sel) = derived["selectors"].as_array() {
            let got: Vec<String> = e
                .selectors
                .iter()
                .map(|(t, v)| format!("{t}:{v}"))
                .collect();
            let want: Vec<&str> = sel.iter().map(|s| s.as_str().unwrap()).collect();
            assert_eq!(got, want, "{name}");
        }
    }
}

#[test]
fn spire_controller_manager_entry_key_cases() {
    let v: Value = serde_json::from_str(&testdata("scm-render.json")).unwrap();
    let key = |e: &Value| {
        let sels: Vec<(String, String)> = e["selectors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["type"].as_str().unwrap().to_string(),
                    s["value"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        entry_key(
            e["spiffeID"].as_str().unwrap(),
            e["parentID"].as_str().unwrap(),
            &sels,
        )
    };
    let cases = v["entry_key_cases"]["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 10);
    for case in cases {
        assert_eq!(
            key(&case["a"]) == key(&case["b"]),
            case["expect_same_key"].as_bool().unwrap(),
            "{}",
            case["name"]
        );
    }
}

fn istio_pod(labels: Value) -> Value {
    json!({
        "metadata": {"name": "productpage-v1-6b7f6", "namespace": "bookinfo",
                     "uid": "7d2c0c1e-7e2d-4b5a-9c1f-0a1b2c3d4e5f", "labels": labels},
        "spec": {"serviceAccountName": "bookinfo-productpage", "nodeName": "worker-1"},
    })
}

fn node() -> Value {
    json!({"metadata": {"name": "worker-1", "uid": "6f1c2d3e-0000-4000-8000-000000000001"}, "spec": {}})
}

#[test]
fn the_seeds_cluster_spiffeids_render() {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(&testdata("seeds/002-istio-workload-registration.yaml"))
            .expect("seed 002");
    let specs: Vec<ParsedSpec> = docs
        .iter()
        .map(|d| {
            let r: ClusterSPIFFEID = serde_json::from_value(d.clone()).expect("a ClusterSPIFFEID");
            ParsedSpec::parse(&r.spec).expect("its templates parse")
        })
        .collect();
    let ctx = ctx("example.org", "demo", "cluster.local", None);
    let pod = istio_pod(json!({"app": "productpage", "security.istio.io/tlsMode": "istio"}));
    let e = render_pod_entry(&ctx, &specs[0], &pod, &node(), &[]).expect("sidecar entry");
    assert_eq!(
        e.spiffe_id.to_string(),
        "spiffe://example.org/ns/bookinfo/sa/bookinfo-productpage"
    );
    assert_eq!(
        e.parent_id.to_string(),
        "spiffe://example.org/spire/agent/k8s_psat/demo/6f1c2d3e-0000-4000-8000-000000000001"
    );
    let sels: Vec<String> = e
        .selectors
        .iter()
        .map(|(t, v)| format!("{t}:{v}"))
        .collect();
    assert_eq!(
        sels,
        [
            "k8s:pod-uid:7d2c0c1e-7e2d-4b5a-9c1f-0a1b2c3d4e5f",
            "k8s:ns:bookinfo",
            "k8s:sa:bookinfo-productpage",
            "k8s:pod-label:app:productpage",
        ]
    );
    assert_eq!(
        e.dns_names,
        [
            "productpage.bookinfo.svc.cluster.local",
            "productpage-v1-6b7f6.bookinfo.svc.cluster.local"
        ]
    );
    assert_eq!(
        e.x509_svid_ttl,
        Duration::from_secs(3600),
        "ttl: 3600 is seconds"
    );

    // The gateway template on a pod without an `app` label: Go renders `<no value>`, which is
    // not a valid SPIFFE ID path: a render failure, never an entry.
    let gw = istio_pod(json!({"istio": "ingressgateway"}));
    let err = render_pod_entry(&ctx, &specs[1], &gw, &node(), &[]).unwrap_err();
    assert!(matches!(err, RenderError::InvalidId { .. }), "{err}");
    assert!(err.to_string().contains("<no value>"), "{err}");
    let gw = istio_pod(json!({"istio": "ingressgateway", "app": "istio-proxy"}));
    let e = render_pod_entry(&ctx, &specs[1], &gw, &node(), &[]).expect("gateway entry");
    assert_eq!(
        e.spiffe_id.to_string(),
        "spiffe://example.org/ns/bookinfo/gateway/istio-proxy"
    );
    assert_eq!(e.x509_svid_ttl, Duration::from_secs(7200));

    // Services targeting the pod add their names, sorted, after the templates'.
    let svc = [ServiceRef {
        name: "productpage".into(),
        namespace: "bookinfo".into(),
    }];
    let e = render_pod_entry(&ctx, &specs[0], &pod, &node(), &svc).unwrap();
    assert_eq!(
        e.dns_names,
        [
            "productpage.bookinfo.svc.cluster.local",
            "productpage-v1-6b7f6.bookinfo.svc.cluster.local",
            "productpage",
            "productpage.bookinfo",
            "productpage.bookinfo.svc",
        ],
        "no duplicate of the template's name"
    );
}

#[test]
fn bad_specs_and_renders_are_errors() {
    let ctx = ctx("example.org", "demo", "cluster.local", None);
    let spec = |v: Value| -> ClusterSPIFFEIDSpec { serde_json::from_value(v).unwrap() };
    // A template that does not parse: reported for the resource, once.
    let err = ParsedSpec::parse(&spec(
        json!({"spiffeIDTemplate": "spiffe://{{ .TrustDomain"}),
    ))
    .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("failed to parse spiffeIDTemplate template"),
        "{err}"
    );
    let err = ParsedSpec::parse(&spec(json!({
        "spiffeIDTemplate": "spiffe://x/y", "federatesWith": ["not a td"]
    })))
    .unwrap_err();
    assert!(err.to_string().contains("federatesWith"), "{err}");
    // Another trust domain.
    let s = ParsedSpec::parse(&spec(json!({"spiffeIDTemplate": "spiffe://other.org/x"}))).unwrap();
    let err = render_pod_entry(&ctx, &s, &istio_pod(json!({})), &node(), &[]).unwrap_err();
    assert!(err.to_string().contains("expected trust domain"), "{err}");
    // A misspelt field is an error (Go: can't evaluate field), not an empty string.
    let s = ParsedSpec::parse(&spec(json!({
        "spiffeIDTemplate": "spiffe://example.org/{{ .PodSpec.ServiceAcountName }}"
    })))
    .unwrap();
    let err = render_pod_entry(&ctx, &s, &istio_pod(json!({})), &node(), &[]).unwrap_err();
    assert!(matches!(err, RenderError::Execute { .. }), "{err}");
    // Selectors are `type:value`.
    assert!(parse_selector("k8s:ns:default").is_ok());
    for bad in ["k8s", ":x", "k8s:"] {
        assert!(parse_selector(bad).is_err(), "{bad}");
    }
}

#[test]
fn static_entries_render_as_upstream() {
    use sigil_controller::crd::ClusterStaticEntrySpec;
    let spec = |v: Value| -> ClusterStaticEntrySpec { serde_json::from_value(v).unwrap() };
    let e = render_static_entry(&spec(json!({
        "spiffeID": "spiffe://example.org/db",
        "parentID": "spiffe://example.org/spire/server",
        "selectors": ["k8s_psat:cluster:demo", "unix:uid:0"],
        "federatesWith": ["other.org"],
        "x509SVIDTTL": "1h",
        "jwtSVIDTTL": 300,
        "dnsNames": ["db.example.org"],
        "admin": true,
        "storeSVID": true,
        "hint": "db",
    })))
    .expect("a valid static entry");
    assert_eq!(e.spiffe_id.to_string(), "spiffe://example.org/db");
    assert_eq!(e.selectors[1], ("unix".to_string(), "uid:0".to_string()));
    assert_eq!(e.x509_svid_ttl, Duration::from_secs(3600));
    assert_eq!(e.jwt_svid_ttl, Duration::from_secs(300));
    assert_eq!(e.federates_with[0].as_str(), "other.org");
    assert!(e.admin && e.store_svid && !e.downstream);
    for (v, msg) in [
        (
            json!({"spiffeID": "nope", "parentID": "spiffe://x/p", "selectors": []}),
            "failed to parse SPIFFEID",
        ),
        (
            json!({"spiffeID": "spiffe://x/a", "parentID": "nope", "selectors": []}),
            "failed to parse ParentID",
        ),
        (
            json!({"spiffeID": "spiffe://x/a", "parentID": "spiffe://x/p", "selectors": ["novalue:"]}),
            "failed to parse Selectors: value cannot be empty",
        ),
        (
            json!({"spiffeID": "spiffe://x/a", "parentID": "spiffe://x/p", "selectors": [], "federatesWith": ["BAD TD"]}),
            "invalid federatesWith value",
        ),
    ] {
        let err = render_static_entry(&spec(v)).unwrap_err().to_string();
        assert!(err.starts_with(msg), "{err}");
    }
}
