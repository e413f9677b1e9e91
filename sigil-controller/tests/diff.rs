//! From declared entries and the server's to the writes: create, update only what is outdated,
//! delete only what the controller owns, never join-token aliases (upstream's
//! `filter_join_token_entries_cases` included).

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use sigil_controller::diff::{CurrentEntry, Field, Ownership, diff, is_join_token_entry};
use sigil_controller::plan::{By, Declared};
use sigil_controller::render::{RenderedEntry, entry_key};

fn rendered(id: &str, parent: &str, sels: &[(&str, &str)]) -> RenderedEntry {
    RenderedEntry {
        spiffe_id: id.parse().unwrap(),
        parent_id: parent.parse().unwrap(),
        selectors: sels
            .iter()
            .map(|(t, v)| (t.to_string(), v.to_string()))
            .collect(),
        dns_names: vec!["a.svc".into()],
        x509_svid_ttl: Duration::from_secs(3600),
        jwt_svid_ttl: Duration::ZERO,
        federates_with: Vec::new(),
        admin: false,
        downstream: false,
        hint: String::new(),
        store_svid: false,
    }
}

fn current(entry_id: &str, e: &RenderedEntry) -> CurrentEntry {
    CurrentEntry {
        id: entry_id.into(),
        spiffe_id: e.spiffe_id.to_string(),
        parent_id: e.parent_id.to_string(),
        selectors: e.selectors.clone(),
        x509_svid_ttl: e.x509_svid_ttl,
        jwt_svid_ttl: e.jwt_svid_ttl,
        federates_with: Vec::new(),
        admin: e.admin,
        downstream: e.downstream,
        dns_names: e.dns_names.clone(),
        hint: e.hint.clone(),
        store_svid: e.store_svid,
    }
}

fn declared(entries: &[RenderedEntry]) -> BTreeMap<String, Declared> {
    entries
        .iter()
        .map(|e| {
            (
                entry_key(e.spiffe_id.as_ref(), e.parent_id.as_ref(), &e.selectors),
                Declared {
                    entry: e.clone(),
                    by: By::ClusterSpiffeId("csid".into()),
                },
            )
        })
        .collect()
}

const NODE: &str = "spiffe://td/spire/agent/k8s_psat/demo/n1";

#[test]
fn creates_updates_and_deletes_only_what_it_owns() {
    let a = rendered("spiffe://td/a", NODE, &[("k8s", "pod-uid:1")]);
    let b = rendered("spiffe://td/b", NODE, &[("k8s", "pod-uid:2")]);
    let gone = rendered("spiffe://td/gone", NODE, &[("k8s", "pod-uid:3")]);
    let by_hand = rendered("spiffe://td/hand", NODE, &[("unix", "uid:0")]);
    let mut b_old = current("id-b", &b);
    b_old.dns_names = vec!["old.svc".into()];
    b_old.x509_svid_ttl = Duration::from_secs(60);
    let cur = vec![
        current("id-a", &a),
        b_old,
        current("id-gone", &gone),
        current("id-hand", &by_hand),
    ];
    // Sigil's default: only what it created (recorded) is its own.
    let owned: HashSet<String> = ["id-a", "id-b", "id-gone"].map(String::from).into();
    let c = diff(
        &declared(&[a.clone(), b.clone()]),
        &cur,
        &Ownership::new("", None, owned),
    );
    assert!(c.create.is_empty());
    assert_eq!(c.update.len(), 1);
    assert_eq!(c.update[0].0, "id-b");
    assert_eq!(c.update[0].2, [Field::X509SvidTtl, Field::DnsNames]);
    assert_eq!(
        c.delete,
        ["id-gone"],
        "the hand-made entry is never deleted"
    );

    // Nothing recorded: an entry someone else made that already is what is declared stays
    // theirs (not created again, not updated); the rest is created; nothing is deleted.
    let new = rendered("spiffe://td/new", NODE, &[("k8s", "pod-uid:4")]);
    let mut b_changed = b.clone();
    b_changed.hint = "changed".into();
    let c = diff(
        &declared(&[a.clone(), b_changed, new.clone()]),
        &cur,
        &Ownership::new("", None, HashSet::new()),
    );
    assert_eq!(c.create.len(), 1);
    assert_eq!(c.create[0].1, new);
    assert_eq!(c.create[0].0, None, "the server picks the ID");
    assert!(c.delete.is_empty() && c.update.is_empty(), "{c:?}");
}

#[test]
fn entry_id_prefix_and_cleanup() {
    let a = rendered("spiffe://td/a", NODE, &[("k8s", "pod-uid:1")]);
    let cur = vec![
        current(
            "cluster1.x1",
            &rendered("spiffe://td/old", NODE, &[("k8s", "pod-uid:9")]),
        ),
        current(
            "cluster2.x2",
            &rendered("spiffe://td/other", NODE, &[("k8s", "pod-uid:8")]),
        ),
        current(
            "7f3c-unprefixed",
            &rendered("spiffe://td/legacy", NODE, &[("k8s", "pod-uid:7")]),
        ),
    ];
    // `cluster1` and `cluster1.` are the same prefix; new IDs are `cluster1.<uuid>`.
    for prefix in ["cluster1", "cluster1."] {
        let c = diff(
            &declared(std::slice::from_ref(&a)),
            &cur,
            &Ownership::new(prefix, None, HashSet::new()),
        );
        let id = c.create[0].0.clone().expect("an ID with the prefix");
        assert!(
            id.starts_with("cluster1.") && id.len() == "cluster1.".len() + 36,
            "{id}"
        );
        assert_eq!(
            c.delete,
            ["cluster1.x1"],
            "other prefixes and unprefixed are untouched"
        );
    }
    // Cleanup of the unprefixed entries of an older deployment (empty cleanup prefix).
    let c = diff(
        &declared(&[]),
        &cur,
        &Ownership::new("cluster1", Some(""), HashSet::new()),
    );
    let mut d = c.delete.clone();
    d.sort();
    assert_eq!(d, ["7f3c-unprefixed", "cluster1.x1"]);
    // Cleanup of another prefix.
    let c = diff(
        &declared(&[]),
        &cur,
        &Ownership::new("cluster1", Some("cluster2."), HashSet::new()),
    );
    let mut d = c.delete.clone();
    d.sort();
    assert_eq!(d, ["cluster1.x1", "cluster2.x2"]);
}

#[test]
fn duplicates_are_removed_and_join_token_aliases_kept() {
    let a = rendered("spiffe://td/a", NODE, &[("k8s", "pod-uid:1")]);
    let alias = rendered(
        "spiffe://td/node",
        "spiffe://td/spire/agent/join_token/717290d1-6e81-40cc-b9c4-1416f8c30cfd",
        &[(
            "spiffe_id",
            "spiffe://td/spire/agent/join_token/717290d1-6e81-40cc-b9c4-1416f8c30cfd",
        )],
    );
    let cur = vec![
        current("p.1", &a),
        current("p.2", &a),
        current("p.3", &alias),
    ];
    let c = diff(
        &declared(&[a]),
        &cur,
        &Ownership::new("p", None, HashSet::new()),
    );
    assert_eq!(
        c.delete,
        ["p.2"],
        "one of the two copies stays, the alias is never deleted"
    );
}

#[test]
fn spire_controller_manager_join_token_cases() {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/scm-render.json");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    let entry = |e: &Value| CurrentEntry {
        id: e["id"].as_str().unwrap().into(),
        spiffe_id: e["spiffeID"].as_str().unwrap().into(),
        parent_id: e["parentID"].as_str().unwrap().into(),
        selectors: e["selectors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["type"].as_str().unwrap().into(),
                    s["value"].as_str().unwrap().into(),
                )
            })
            .collect(),
        x509_svid_ttl: Duration::ZERO,
        jwt_svid_ttl: Duration::ZERO,
        federates_with: Vec::new(),
        admin: false,
        downstream: false,
        dns_names: Vec::new(),
        hint: String::new(),
        store_svid: false,
    };
    for case in v["filter_join_token_entries_cases"]["cases"]
        .as_array()
        .unwrap()
    {
        let kept: Vec<String> = case["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(entry)
            .filter(|e| !is_join_token_entry(e))
            .map(|e| e.id)
            .collect();
        let want: Vec<String> = case["expected"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(kept, want, "{}", case["name"]);
    }
}
