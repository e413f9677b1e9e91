//! ClusterFederatedTrustDomain → relationships: upstream's validation rules, the seed's
//! aliases, oldest-wins conflicts, and the writes against what the server has.

use std::sync::Arc;

use serde_json::{Value, json};
use sigil_controller::federation::{changes, declared};
use sigil_proto::admin::FederationRelationship;

fn cftd(name: &str, created: &str, spec: Value) -> Arc<Value> {
    Arc::new(json!({
        "apiVersion": "spire.spiffe.io/v1alpha1", "kind": "ClusterFederatedTrustDomain",
        "metadata": {"name": name, "uid": format!("uid-{name}"), "creationTimestamp": created},
        "spec": spec,
    }))
}

fn spiffe(td: &str) -> Value {
    json!({
        "trustDomain": td,
        "bundleEndpointURL": format!("https://spire.{td}:8443"),
        "bundleEndpointProfile": {"type": "https_spiffe", "endpointSPIFFEID": format!("spiffe://{td}/spire/server")},
    })
}

#[test]
fn upstream_rules_and_the_seed_alias() {
    let seed_000 = cftd(
        "cluster-b-federation",
        "2026-01-01T00:00:00Z",
        json!({
            "trustDomain": "cluster-b.example.com",
            "bundleEndpointURL": "https://spire-server.cluster-b.svc:8443",
            "bundleEndpointProfile": {"type": "HTTPSSPIFFEAuthentication", "endpointSPIFFEID": "spiffe://cluster-b.example.com/spire/server"},
        }),
    );
    let with = |name: &str, f: &dyn Fn(&mut Value)| {
        let mut s = spiffe(&format!("{name}.test"));
        f(&mut s);
        cftd(name, "2026-01-02T00:00:00Z", s)
    };
    let objects = vec![
        seed_000,
        with("http", &|s| s["bundleEndpointURL"] = json!("http://x.test")),
        with("userinfo", &|s| {
            s["bundleEndpointURL"] = json!("https://u:p@x.test")
        }),
        with("nohost", &|s| {
            s["bundleEndpointURL"] = json!("https:///bundle")
        }),
        with("web-with-id", &|s| {
            s["bundleEndpointProfile"]["type"] = json!("https_web")
        }),
        with("spiffe-without-id", &|s| {
            s["bundleEndpointProfile"] = json!({"type": "https_spiffe"})
        }),
        with("bad-bundle", &|s| {
            s["trustDomainBundle"] = json!("not json")
        }),
        with("good-bundle", &|s| {
            s["trustDomainBundle"] = json!(r#"{"keys": []}"#)
        }),
        with("other-class", &|s| s["className"] = json!("other")),
    ];
    let (desired, notes) = declared(&objects, |class| class.is_empty());
    let tds: Vec<&String> = desired.keys().collect();
    assert_eq!(tds, ["cluster-b.example.com", "good-bundle.test"]);
    let b = &desired["cluster-b.example.com"];
    assert_eq!(b.profile, "https_spiffe");
    assert_eq!(
        b.endpoint_spiffe_id,
        "spiffe://cluster-b.example.com/spire/server"
    );
    assert!(
        desired["good-bundle.test"]
            .bundle
            .as_ref()
            .is_some_and(|b| b.is_empty())
    );
    let note = |name: &str| {
        notes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no note for {name}: {notes:?}"))
    };
    let alias = note("cluster-b-federation");
    assert!(
        alias.applied && alias.message.contains("\"https_spiffe\""),
        "{alias:?}"
    );
    for (name, says) in [
        ("http", "scheme must be https"),
        ("userinfo", "user info is not allowed"),
        ("nohost", "bundleEndpointURL"),
        ("web-with-id", "not applicable for the https_web profile"),
        (
            "spiffe-without-id",
            "must be set for the https_spiffe profile",
        ),
        ("bad-bundle", "invalid trustDomainBundle"),
    ] {
        let n = note(name);
        assert!(!n.applied && n.message.contains(says), "{name}: {n:?}");
    }
    assert!(notes.iter().all(|n| n.name != "other-class"));
}

#[test]
fn oldest_wins_a_trust_domain() {
    let objects = vec![
        cftd("newer", "2026-02-01T00:00:00Z", spiffe("a.test")),
        cftd("older", "2026-01-01T00:00:00Z", spiffe("a.test")),
    ];
    let (desired, notes) = declared(&objects, |_| true);
    assert_eq!(desired["a.test"].by, "older");
    assert_eq!(notes.len(), 1);
    assert_eq!(notes[0].name, "newer");
    assert!(notes[0].message.contains("\"older\""));
}

#[test]
fn writes_only_what_the_controller_owns() {
    let me = "sigil-controller/demo/";
    let objects = vec![
        cftd("a", "2026-01-01T00:00:00Z", spiffe("a.test")),
        cftd("b", "2026-01-01T00:00:00Z", spiffe("b.test")),
        cftd("c", "2026-01-01T00:00:00Z", spiffe("c.test")),
        cftd("d", "2026-01-01T00:00:00Z", spiffe("d.test")),
    ];
    let (desired, _) = declared(&objects, |_| true);
    let rel = |td: &str, url: &str, managed_by: &str, source: &str| FederationRelationship {
        trust_domain: td.into(),
        bundle_endpoint_url: url.into(),
        bundle_endpoint_profile: "https_spiffe".into(),
        endpoint_spiffe_id: format!("spiffe://{td}/spire/server"),
        managed_by: managed_by.into(),
        source: source.into(),
        ..Default::default()
    };
    let current = vec![
        // a: ours, up to date. b: ours, moved. c: someone else's. gone: ours, undeclared.
        rel("a.test", "https://spire.a.test:8443", me, "api"),
        rel("b.test", "https://old.b.test", me, "api"),
        rel("c.test", "https://c", "", "api"),
        rel("gone.test", "https://g", me, "api"),
        rel("static.test", "https://s", "", "config"),
    ];
    let (create, update, delete, notes) = changes(&desired, &current, me);
    assert_eq!(
        create
            .iter()
            .map(|d| d.trust_domain.as_str())
            .collect::<Vec<_>>(),
        ["d.test"]
    );
    assert_eq!(
        update
            .iter()
            .map(|d| d.trust_domain.as_str())
            .collect::<Vec<_>>(),
        ["b.test"]
    );
    assert_eq!(delete, ["gone.test"]);
    assert_eq!(notes.len(), 1);
    assert_eq!(notes[0].name, "c");
}
