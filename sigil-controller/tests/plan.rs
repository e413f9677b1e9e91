//! A whole pass over a cluster snapshot: which ClusterSPIFFEIDs apply to which pods
//! (namespaces selected and ignored, pod selectors, class, fallback), masking of duplicates,
//! and the status stats, with the seeds' ClusterSPIFFEIDs among them.

use std::collections::HashMap;
use std::path::PathBuf;

use serde_json::{Value, json};
use sigil_controller::config::ControllerManagerConfig;
use sigil_controller::crd::{ClusterSPIFFEID, ClusterSPIFFEIDSpec};
use sigil_controller::plan::{
    By, ClusterSpiffeId, RenderCache, Scope, Snapshot, Stats, plan, plan_cached,
};
use sigil_controller::render::{DEFAULT_PARENT_ID_TEMPLATE, ParsedSpec, RenderContext};
use sigil_gotemplate::Template;

fn ctx() -> RenderContext {
    RenderContext {
        trust_domain: "example.org".parse().unwrap(),
        cluster_name: "demo".into(),
        cluster_domain: "cluster.local".into(),
        parent_id_template: Template::parse("parentIDTemplate", DEFAULT_PARENT_ID_TEMPLATE)
            .unwrap(),
    }
}

fn scope(class: &str, classless: bool) -> Scope {
    Scope {
        class_name: class.into(),
        watch_classless: classless,
        ignore: ControllerManagerConfig::default()
            .ignore_namespaces()
            .unwrap(),
    }
}

fn csid(name: &str, created: &str, spec: Value) -> ClusterSpiffeId {
    let spec: ClusterSPIFFEIDSpec = serde_json::from_value(spec).expect("spec");
    from_spec(name, created, &spec)
}

fn from_spec(name: &str, created: &str, spec: &ClusterSPIFFEIDSpec) -> ClusterSpiffeId {
    ClusterSpiffeId {
        name: name.into(),
        uid: format!("uid-{name}"),
        creation_timestamp: created.into(),
        class_name: spec.class_name.clone().unwrap_or_default(),
        fallback: spec.fallback.unwrap_or(false),
        auto_populate_dns_names: spec.auto_populate_dns_names.unwrap_or(false),
        spec_hash: 0,
        namespace_selector: spec.namespace_selector.clone(),
        pod_selector: spec.pod_selector.clone(),
        spec: ParsedSpec::parse(spec).map_err(|e| e.to_string()),
    }
}

fn ns(name: &str, labels: Value) -> Value {
    json!({"metadata": {"name": name, "labels": labels}})
}

fn pod(ns: &str, name: &str, sa: &str, node: &str, labels: Value) -> Value {
    json!({
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{ns}-{name}"), "labels": labels},
        "spec": {"serviceAccountName": sa, "nodeName": node},
    })
}

struct World {
    namespaces: Vec<Value>,
    pods: Vec<Value>,
    nodes: Vec<Value>,
}

impl World {
    fn snapshot(&self) -> Snapshot<'_> {
        let mut pods: HashMap<String, Vec<&Value>> = HashMap::new();
        for p in &self.pods {
            pods.entry(p["metadata"]["namespace"].as_str().unwrap().to_string())
                .or_default()
                .push(p);
        }
        Snapshot {
            namespaces: self.namespaces.iter().collect(),
            pods,
            nodes: self
                .nodes
                .iter()
                .map(|n| (n["metadata"]["name"].as_str().unwrap().to_string(), n))
                .collect(),
            services: HashMap::new(),
        }
    }
}

fn world() -> World {
    World {
        namespaces: vec![
            ns("default", json!({"kubernetes.io/metadata.name": "default"})),
            ns("bookinfo", json!({"istio-injection": "enabled"})),
            ns("istio-system", json!({})),
            ns("kube-system", json!({})),
        ],
        pods: vec![
            pod("default", "sleep-1", "sleep", "n1", json!({"app": "sleep"})),
            pod(
                "bookinfo",
                "productpage-1",
                "bookinfo-productpage",
                "n1",
                json!({"app": "productpage", "security.istio.io/tlsMode": "istio"}),
            ),
            pod(
                "istio-system",
                "ingress-1",
                "istio-ingressgateway",
                "n1",
                json!({"app": "istio-proxy", "istio": "ingressgateway", "security.istio.io/tlsMode": "istio"}),
            ),
            pod(
                "kube-system",
                "coredns-1",
                "coredns",
                "n1",
                json!({"app": "coredns"}),
            ),
            pod("default", "pending", "sleep", "", json!({"app": "sleep"})),
        ],
        nodes: vec![json!({"metadata": {"name": "n1", "uid": "node-1-uid"}, "spec": {}})],
    }
}

fn ids(p: &sigil_controller::plan::Plan) -> Vec<String> {
    let mut v: Vec<String> = p
        .entries
        .values()
        .map(|d| d.entry.spiffe_id.to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn the_seeds_registration_over_a_cluster() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/seeds/002-istio-workload-registration.yaml");
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(&std::fs::read_to_string(path).unwrap()).unwrap();
    let csids: Vec<ClusterSpiffeId> = docs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let r: ClusterSPIFFEID = serde_json::from_value(d.clone()).unwrap();
            from_spec(
                r.metadata.name.as_deref().unwrap(),
                &format!("2026-01-0{}T00:00:00Z", i + 1),
                &r.spec,
            )
        })
        .collect();
    let w = world();
    let p = plan(&ctx(), &scope("", true), &csids, &w.snapshot());
    assert_eq!(
        ids(&p),
        [
            "spiffe://example.org/ns/bookinfo/sa/bookinfo-productpage",
            "spiffe://example.org/ns/istio-system/gateway/istio-proxy",
            "spiffe://example.org/ns/istio-system/sa/istio-ingressgateway",
        ]
    );
    // istio-sidecars: namespaces not named kube-system etc. (no `name` label: all but none
    // excluded by the expression), kube-system ignored by default.
    let s = p.stats["istio-sidecars"];
    assert_eq!(s.namespaces_selected, 4);
    assert_eq!(s.namespaces_ignored, 1);
    assert_eq!(s.pods_selected, 2, "the pods with tlsMode=istio");
    assert_eq!(s.entries_to_set, 2);
    // The gateway one: only istio-system (matchNames), its pod.
    let g = p.stats["istio-gateways"];
    assert_eq!(
        (g.namespaces_selected, g.pods_selected, g.entries_to_set),
        (1, 1, 1)
    );
    assert_eq!(p.stats["istio-control-plane"].pods_selected, 0);
    assert!(p.failures.is_empty(), "{:?}", p.failures);
    let e = &p
        .entries
        .values()
        .find(|d| d.by == By::ClusterSpiffeId("istio-gateways".into()))
        .unwrap()
        .entry;
    assert_eq!(
        e.parent_id.to_string(),
        "spiffe://example.org/spire/agent/k8s_psat/demo/node-1-uid"
    );
}

#[test]
fn fallback_masking_class_and_failures() {
    let w = world();
    let by_sa = json!({"spiffeIDTemplate": "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}"});
    // Two identical ClusterSPIFFEIDs: the older one wins every entry, the newer masks them all.
    let p = plan(
        &ctx(),
        &scope("", true),
        &[
            csid("newer", "2026-02-01T00:00:00Z", by_sa.clone()),
            csid("older", "2026-01-01T00:00:00Z", by_sa.clone()),
        ],
        &w.snapshot(),
    );
    assert_eq!(
        p.entries.len(),
        3,
        "sleep, productpage, ingress (kube-system ignored, pending skipped)"
    );
    assert!(
        p.entries
            .values()
            .all(|d| d.by == By::ClusterSpiffeId("older".into()))
    );
    assert_eq!(p.stats["older"].entries_to_set, 3);
    assert_eq!(
        p.stats["newer"],
        Stats {
            namespaces_selected: 4,
            namespaces_ignored: 1,
            pods_selected: 4,
            pod_entry_render_failures: 0,
            entries_masked: 3,
            entries_to_set: 0,
        }
    );
    assert!(
        p.failures.is_empty(),
        "an unscheduled pod is skipped quietly: {:?}",
        p.failures
    );

    // A fallback applies only to pods no other ClusterSPIFFEID rendered.
    let only_sleep = json!({
        "spiffeIDTemplate": "spiffe://{{ .TrustDomain }}/sleep/{{ .PodMeta.Name }}",
        "podSelector": {"matchLabels": {"app": "sleep"}},
    });
    let mut fallback = by_sa.clone();
    fallback["fallback"] = json!(true);
    let p = plan(
        &ctx(),
        &scope("", true),
        &[
            csid("fb", "2026-01-01T00:00:00Z", fallback),
            csid("sleep", "2026-02-01T00:00:00Z", only_sleep),
        ],
        &w.snapshot(),
    );
    assert_eq!(
        ids(&p),
        [
            "spiffe://example.org/ns/bookinfo/sa/bookinfo-productpage",
            "spiffe://example.org/ns/istio-system/sa/istio-ingressgateway",
            "spiffe://example.org/sleep/sleep-1",
        ]
    );

    // Class: only this controller's; classless ones only with watchClassless.
    let mut classed = by_sa.clone();
    classed["className"] = json!("other");
    let p = plan(
        &ctx(),
        &scope("mine", false),
        &[
            csid("c", "2026-01-01T00:00:00Z", classed.clone()),
            csid("classless", "2026-01-01T00:00:00Z", by_sa.clone()),
        ],
        &w.snapshot(),
    );
    assert!(p.entries.is_empty() && p.stats.is_empty());
    let p = plan(
        &ctx(),
        &scope("other", false),
        &[csid("c", "2026-01-01T00:00:00Z", classed)],
        &w.snapshot(),
    );
    assert_eq!(p.entries.len(), 3);

    // A render failure is counted and reported, and is never an entry.
    let by_label =
        json!({"spiffeIDTemplate": "spiffe://{{ .TrustDomain }}/gw/{{ .PodMeta.Labels.istio }}"});
    let p = plan(
        &ctx(),
        &scope("", true),
        &[csid("gw", "2026-01-01T00:00:00Z", by_label)],
        &w.snapshot(),
    );
    assert_eq!(ids(&p), ["spiffe://example.org/gw/ingressgateway"]);
    assert_eq!(
        p.stats["gw"].pod_entry_render_failures, 2,
        "{:?}",
        p.failures
    );
    assert!(
        p.failures
            .iter()
            .all(|(n, m)| n == "gw" && m.contains("<no value>"))
    );

    // A spec whose template does not parse: reported once, nothing rendered.
    let p = plan(
        &ctx(),
        &scope("", true),
        &[csid(
            "bad",
            "2026-01-01T00:00:00Z",
            json!({"spiffeIDTemplate": "{{"}),
        )],
        &w.snapshot(),
    );
    assert!(p.entries.is_empty());
    assert_eq!(p.failures.len(), 1);
}

/// The render cache: a second pass over the same cluster renders nothing new and plans the
/// same; a new resourceVersion, node contents or spec renders again; what is gone is dropped.
#[test]
fn render_cache_reuses_only_what_did_not_change() {
    let spec = json!({
        "spiffeIDTemplate": "spiffe://{{ .TrustDomain }}/app/{{ .PodMeta.Labels.app }}/node/{{ .NodeMeta.Labels.zone }}",
    });
    let mut c = csid("apps", "2026-01-01T00:00:00Z", spec);
    c.spec_hash = 1;
    let mut w = world();
    w.nodes[0]["metadata"]["labels"] = json!({"zone": "a"});
    for (i, p) in w.pods.iter_mut().enumerate() {
        p["metadata"]["resourceVersion"] = json!(format!("{}", 10 + i));
    }
    let scope = scope("", true);
    let mut cache = RenderCache::default();
    let first = plan_cached(
        &ctx(),
        &scope,
        std::slice::from_ref(&c),
        &[],
        &w.snapshot(),
        &mut cache,
    );
    let cached = cache.len();
    assert!(cached >= 3, "{cached} renders cached");
    let again = plan_cached(
        &ctx(),
        &scope,
        std::slice::from_ref(&c),
        &[],
        &w.snapshot(),
        &mut cache,
    );
    assert_eq!(ids(&first), ids(&again));
    assert_eq!(first.stats, again.stats);
    assert_eq!(cache.len(), cached);

    // Relabelled (the API server bumps the resourceVersion): rendered again.
    w.pods[0]["metadata"]["labels"]["app"] = json!("sleepy");
    w.pods[0]["metadata"]["resourceVersion"] = json!("99");
    let p = plan_cached(
        &ctx(),
        &scope,
        std::slice::from_ref(&c),
        &[],
        &w.snapshot(),
        &mut cache,
    );
    assert!(
        ids(&p).contains(&"spiffe://example.org/app/sleepy/node/a".to_string()),
        "{:?}",
        ids(&p)
    );
    // The node's labels changed (its status would not matter): every pod on it renders again.
    w.nodes[0]["metadata"]["labels"]["zone"] = json!("b");
    let p = plan_cached(
        &ctx(),
        &scope,
        std::slice::from_ref(&c),
        &[],
        &w.snapshot(),
        &mut cache,
    );
    assert!(
        ids(&p).iter().all(|id| id.ends_with("/node/b")),
        "{:?}",
        ids(&p)
    );
    // Another spec: nothing of the old one is reused.
    let mut c2 = csid(
        "apps",
        "2026-01-01T00:00:00Z",
        json!({"spiffeIDTemplate": "spiffe://{{ .TrustDomain }}/v2/{{ .PodMeta.Name }}"}),
    );
    c2.spec_hash = 2;
    let p = plan_cached(
        &ctx(),
        &scope,
        std::slice::from_ref(&c2),
        &[],
        &w.snapshot(),
        &mut cache,
    );
    assert!(
        ids(&p).iter().all(|id| id.contains("/v2/")),
        "{:?}",
        ids(&p)
    );
    // Pods gone: their renders are dropped.
    w.pods.truncate(1);
    plan_cached(
        &ctx(),
        &scope,
        std::slice::from_ref(&c2),
        &[],
        &w.snapshot(),
        &mut cache,
    );
    assert_eq!(cache.len(), 1);
}
