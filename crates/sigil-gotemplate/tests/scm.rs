//! spire-controller-manager's rendering cases (`testdata/scm-render.json`, see
//! `testdata/README.md`) and the templates of the ClusterSPIFFEIDs in Sigil's seed
//! documents.
//!
//! The template data is built the way spire-controller-manager's `renderPodEntry` does:
//! `TrustDomain`, `ClusterName`, `ClusterDomain`, `NodeMeta`/`NodeSpec` for the parent ID,
//! then `PodMeta`/`PodSpec` for the rest, with Kubernetes' JSON field names mapped to Go's.

use serde_json::{Map, Value, json};
use sigil_gotemplate::{DataModel, Template};

const SCM: &str = include_str!("../testdata/scm-render.json");

/// Go field name of a Kubernetes JSON field (`uid` → `UID`, `serviceAccountName` →
/// `ServiceAccountName`).
fn go_name(json_name: &str) -> String {
    match json_name {
        "uid" => "UID".into(),
        "podIP" => "PodIP".into(),
        "hostIPC" => "HostIPC".into(),
        "hostPID" => "HostPID".into(),
        other => {
            let mut cs = other.chars();
            cs.next()
                .map(|c| c.to_ascii_uppercase().to_string() + cs.as_str())
                .unwrap_or_default()
        }
    }
}

/// Go's zero values for the fields templates name, so the struct model does not take an
/// unset field for a mistyped one.
fn with_zero_fields(obj: &Value, zero: &[(&str, Value)]) -> Value {
    let mut m = Map::new();
    for (k, v) in zero {
        m.insert((*k).to_owned(), v.clone());
    }
    if let Some(o) = obj.as_object() {
        for (k, v) in o {
            m.insert(go_name(k), v.clone());
        }
    }
    Value::Object(m)
}

fn object_meta(meta: &Value) -> Value {
    with_zero_fields(
        meta,
        &[
            ("Name", json!("")),
            ("GenerateName", json!("")),
            ("Namespace", json!("")),
            ("UID", json!("")),
            ("ResourceVersion", json!("")),
            ("Generation", json!(0)),
            ("Labels", Value::Null),
            ("Annotations", Value::Null),
        ],
    )
}

fn pod_spec(spec: &Value) -> Value {
    with_zero_fields(
        spec,
        &[
            ("ServiceAccountName", json!("")),
            ("NodeName", json!("")),
            ("Hostname", json!("")),
            ("Subdomain", json!("")),
            ("NodeSelector", Value::Null),
        ],
    )
}

fn node_spec(spec: &Value) -> Value {
    with_zero_fields(
        spec,
        &[
            ("PodCIDR", json!("")),
            ("ProviderID", json!("")),
            ("Unschedulable", json!(false)),
        ],
    )
}

/// spire-controller-manager's `templateData`. `with_pod` is false while rendering the
/// parent ID (PodMeta and PodSpec are still nil pointers then).
fn template_data(config: &Value, node: &Value, pod: &Value, with_pod: bool) -> Value {
    let (pod_meta, pod_spec_v) = if with_pod {
        (object_meta(&pod["metadata"]), pod_spec(&pod["spec"]))
    } else {
        (Value::Null, Value::Null)
    };
    json!({
        "TrustDomain": config["trust_domain"],
        "ClusterName": config["cluster_name"],
        "ClusterDomain": config["cluster_domain"],
        "PodMeta": pod_meta,
        "PodSpec": pod_spec_v,
        "NodeMeta": object_meta(&node["metadata"]),
        "NodeSpec": node_spec(&node["spec"]),
    })
}

fn render(name: &str, src: &str, data: &Value, model: &DataModel) -> String {
    let t = Template::parse(name, src).unwrap_or_else(|e| panic!("{e}"));
    t.execute_with(data, model)
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn spire_controller_manager_render_pod_entry_cases() {
    let scm: Value = serde_json::from_str(SCM).unwrap();
    let default_parent = scm["default_parent_id_template"].as_str().unwrap();
    let cases = scm["render_pod_entry_cases"].as_array().unwrap();
    assert_eq!(cases.len(), 3);
    let mut checked = 0;
    // Both data models must agree on well-formed data.
    for model in [DataModel::kubernetes(), DataModel::maps()] {
        for case in cases {
            let name = case["name"].as_str().unwrap();
            let config = &case["config"];
            let spec = &case["cluster_spiffe_id_spec"];
            let expect = &case["expect_asserted"];
            let parent_src = config["parent_id_template"]
                .as_str()
                .unwrap_or(default_parent);

            let parent_data = template_data(config, &case["node"], &case["pod"], false);
            let parent_id = render("parentIDTemplate", parent_src, &parent_data, &model);
            let data = template_data(config, &case["node"], &case["pod"], true);
            let spiffe_id = render(
                "spiffeIDTemplate",
                spec["spiffeIDTemplate"].as_str().unwrap(),
                &data,
                &model,
            );

            if let Some(want) = expect["parent_id"].as_str() {
                assert_eq!(parent_id, want, "{name}: parent ID");
                checked += 1;
            }
            if let Some(want) = expect["spiffe_id"].as_str() {
                assert_eq!(spiffe_id, want, "{name}: SPIFFE ID");
                checked += 1;
            }
            // The derived (not upstream-asserted) values must agree too.
            let derived = &case["expect_derived_not_asserted"];
            if let Some(want) = derived["spiffe_id"].as_str() {
                assert_eq!(spiffe_id, want, "{name}: derived SPIFFE ID");
            }
            if let Some(want) = derived["parent_id"].as_str() {
                assert_eq!(parent_id, want, "{name}: derived parent ID");
            }

            // DNS names: rendered templates, de-duplicated, then the endpoints' names
            // (sorted), as renderPodEntry does.
            let mut dns: Vec<String> = Vec::new();
            let push = |n: String, dns: &mut Vec<String>| {
                if !dns.contains(&n) {
                    dns.push(n);
                }
            };
            for t in spec["dnsNameTemplates"].as_array().into_iter().flatten() {
                push(
                    render("dnsNameTemplates", t.as_str().unwrap(), &data, &model),
                    &mut dns,
                );
            }
            let cluster_domain = config["cluster_domain"].as_str().unwrap_or("");
            let mut from_endpoints = Vec::new();
            for ep in case["endpoints_list"]["items"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let (n, ns) = (
                    ep["metadata"]["name"].as_str().unwrap(),
                    ep["metadata"]["namespace"].as_str().unwrap(),
                );
                from_endpoints.extend([n.to_owned(), format!("{n}.{ns}"), format!("{n}.{ns}.svc")]);
                if !cluster_domain.is_empty() {
                    from_endpoints.push(format!("{n}.{ns}.svc.{cluster_domain}"));
                }
            }
            from_endpoints.sort();
            for n in from_endpoints {
                push(n, &mut dns);
            }
            if let Some(count) = expect["dns_names_count"].as_u64() {
                assert_eq!(dns.len() as u64, count, "{name}: DNS name count {dns:?}");
                checked += 1;
            }
            if let Some(prefix) = expect["dns_names_prefix_in_order"].as_array() {
                let prefix: Vec<&str> = prefix.iter().map(|v| v.as_str().unwrap()).collect();
                assert_eq!(&dns[..prefix.len()], prefix.as_slice(), "{name}: DNS names");
                checked += 1;
            }
            for want in expect["dns_names_contains"]
                .as_array()
                .into_iter()
                .flatten()
            {
                assert!(
                    dns.iter().any(|d| d == want.as_str().unwrap()),
                    "{name}: missing {want}"
                );
            }
            if let Some(want) = derived["dns_names"].as_array() {
                let want: Vec<&str> = want.iter().map(|v| v.as_str().unwrap()).collect();
                assert_eq!(dns, want, "{name}: derived DNS names");
            }
        }
    }
    // spiffe_id (1) + parent_id (2) + count and prefix (1 case each), per model.
    assert_eq!(checked, 2 * 5);
}

/// The ClusterSPIFFEID templates of /work/shared/seeds (000_*, 001_*, 002_*: Istio
/// integration guides), rendered on a sample pod. `app_label` is the pod's `app` label,
/// if any.
fn seed_cases(app_label: Option<&str>) -> Vec<(&'static str, String)> {
    let app = app_label.unwrap_or("<no value>");
    vec![
        ("spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}",
            "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account".into()),
        ("spiffe://cluster-a.example.com/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}",
            "spiffe://cluster-a.example.com/ns/istio-system/sa/istio-ingressgateway-service-account".into()),
        ("spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/gateway/{{ .PodMeta.Labels.app }}",
            format!("spiffe://cluster.local/ns/istio-system/gateway/{app}")),
        ("spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/istiod",
            "spiffe://cluster.local/ns/istio-system/istiod".into()),
        ("k8s:ns:{{ .PodMeta.Namespace }}", "k8s:ns:istio-system".into()),
        ("k8s:sa:{{ .PodSpec.ServiceAccountName }}", "k8s:sa:istio-ingressgateway-service-account".into()),
        ("k8s:ns:istio-system", "k8s:ns:istio-system".into()),
        ("k8s:sa:istio-ingressgateway-service-account", "k8s:sa:istio-ingressgateway-service-account".into()),
        ("k8s:pod-label:app:{{ .PodMeta.Labels.app }}", format!("k8s:pod-label:app:{app}")),
        ("k8s:pod-label:istio:{{ .PodMeta.Labels.istio }}", "k8s:pod-label:istio:ingressgateway".into()),
        ("k8s:pod-label:app:istiod", "k8s:pod-label:app:istiod".into()),
        ("{{ .PodMeta.Labels.app }}.{{ .PodMeta.Namespace }}.svc.cluster.local",
            format!("{app}.istio-system.svc.cluster.local")),
        ("{{ .PodMeta.Name }}.{{ .PodMeta.Namespace }}.svc.cluster.local",
            "istio-ingressgateway-7d9f.istio-system.svc.cluster.local".into()),
        ("istio-ingressgateway.istio-system.svc.cluster.local", "istio-ingressgateway.istio-system.svc.cluster.local".into()),
        ("*.example.com", "*.example.com".into()),
        ("istiod.istio-system.svc.cluster.local", "istiod.istio-system.svc.cluster.local".into()),
        ("istiod.istio-system", "istiod.istio-system".into()),
    ]
}

fn sample_pod(app_label: Option<&str>) -> Value {
    let mut labels = json!({"istio": "ingressgateway"});
    if let Some(app) = app_label {
        labels["app"] = json!(app);
    }
    let config = json!({"trust_domain": "cluster.local", "cluster_name": "c1", "cluster_domain": "cluster.local"});
    let node = json!({"metadata": {"name": "node-1", "uid": "n-uid"}, "spec": {}});
    let pod = json!({
        "metadata": {"name": "istio-ingressgateway-7d9f", "namespace": "istio-system", "uid": "p-uid", "labels": labels},
        "spec": {"serviceAccountName": "istio-ingressgateway-service-account", "nodeName": "node-1"},
    });
    template_data(&config, &node, &pod, true)
}

#[test]
fn seed_templates_render() {
    for app in [Some("istio-ingressgateway"), None] {
        let data = sample_pod(app);
        for model in [DataModel::kubernetes(), DataModel::maps()] {
            for (src, want) in seed_cases(app) {
                assert_eq!(
                    render("seed", src, &data, &model),
                    want,
                    "{src} (app label {app:?})"
                );
            }
        }
    }
}

/// The issue this crate was written for: the gateway template on a pod without an `app`
/// label renders `<no value>` (an invalid SPIFFE ID, so spire-controller-manager fails the
/// render), and `index` renders an empty string instead.
#[test]
fn missing_label_field_access_versus_index() {
    let data = sample_pod(None);
    let model = DataModel::kubernetes();
    let gateway =
        "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/gateway/{{ .PodMeta.Labels.app }}";
    assert_eq!(
        render("g", gateway, &data, &model),
        "spiffe://cluster.local/ns/istio-system/gateway/<no value>"
    );
    let with_index = "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/gateway/{{ index .PodMeta.Labels \"app\" }}";
    assert_eq!(
        render("g", with_index, &data, &model),
        "spiffe://cluster.local/ns/istio-system/gateway/"
    );
    // A pod with no labels at all: Labels is a nil map in Go.
    let mut bare = data.clone();
    bare["PodMeta"]["Labels"] = Value::Null;
    assert_eq!(
        render("g", "{{ .PodMeta.Labels.app }}", &bare, &model),
        "<no value>"
    );
    assert_eq!(
        render("g", "{{ index .PodMeta.Labels \"app\" }}", &bare, &model),
        ""
    );
}
