//! SQLite-only behaviours of the datastore (the engine-independent ones are in
//! `engine_tests.rs`).

use super::*;
use sigil_spiffe::Selector;

fn entry(spiffe: &str, parent: &str, sel: &str) -> Entry {
    Entry {
        id: String::new(),
        spiffe_id: spiffe.parse().unwrap(),
        parent_id: parent.parse().unwrap(),
        selectors: vec![sel.parse::<Selector>().unwrap()],
        x509_svid_ttl: 0,
        jwt_svid_ttl: 0,
        dns_names: vec![],
        federates_with: vec![],
        admin: false,
        downstream: false,
        hint: String::new(),
        created_at: 0,
        revision: 0,
        store_svid: false,
        managed_by: String::new(),
    }
}

#[tokio::test]
async fn entries_persist_and_authorize() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ds.sqlite3");
    let agent: SpiffeId = "spiffe://td/spire/agent/join_token/t".parse().unwrap();
    {
        let ds = DataStore::open(&path).await.unwrap();
        let mut rx = ds.subscribe();
        let res = ds
            .create_entries(vec![
                entry("spiffe://td/node", agent.as_str(), "spiffe_id:x"),
                entry("spiffe://td/w1", "spiffe://td/node", "unix:uid:1"),
                entry("spiffe://td/w2", agent.as_str(), "unix:uid:2"),
                entry("spiffe://td/other", "spiffe://td/elsewhere", "unix:uid:3"),
                // similar to the second one: refused
                entry("spiffe://td/w1", "spiffe://td/node", "unix:uid:1"),
            ])
            .await;
        assert!(res[..4].iter().all(|r| r.is_ok()));
        assert!(matches!(res[4], Err(StoreError::AlreadyExists)));
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        let mut ids: Vec<String> = ds
            .authorized_entries(&agent)
            .iter()
            .map(|e| e.spiffe_id.to_string())
            .collect();
        ids.sort();
        assert_eq!(
            ids,
            ["spiffe://td/node", "spiffe://td/w1", "spiffe://td/w2"]
        );
    }
    // Reopen: everything acknowledged is still there.
    let ds = DataStore::open(&path).await.unwrap();
    assert_eq!(ds.count_entries(), 4);
    assert_eq!(ds.authorized_entries(&agent).len(), 3);
}

/// The database and its WAL and shared-memory files hold join tokens: 0600 even when the
/// process umask would allow more.
#[tokio::test]
async fn database_files_are_private_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ds.sqlite3");
    // SAFETY: umask has no preconditions; restored below.
    let old = unsafe { libc::umask(0) };
    let ds = DataStore::open(&path).await;
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let ds = ds.unwrap();
    ds.create_join_token("secret", 100).await.unwrap();
    for name in ["ds.sqlite3", "ds.sqlite3-wal", "ds.sqlite3-shm"] {
        let p = dir.path().join(name);
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{name}");
    }
}

#[tokio::test]
async fn join_token_is_single_use() {
    let dir = tempfile::tempdir().unwrap();
    let ds = DataStore::open(&dir.path().join("ds")).await.unwrap();
    ds.create_join_token("tok", 100).await.unwrap();
    assert!(ds.consume_join_token("tok", 50).await.unwrap());
    assert!(!ds.consume_join_token("tok", 50).await.unwrap());
    ds.create_join_token("old", 10).await.unwrap();
    assert!(!ds.consume_join_token("old", 50).await.unwrap());
}

fn psat_agent(id: &str, selectors: &[&str]) -> AgentRecord {
    AgentRecord {
        spiffe_id: id.parse().unwrap(),
        attestation_type: "k8s_psat".into(),
        serial: "01".into(),
        new_serial: String::new(),
        expires_at: 100,
        banned: false,
        created_at: 1,
        last_seen: 1,
        selectors: selectors.iter().map(|s| s.parse().unwrap()).collect(),
        can_reattest: true,
    }
}

fn ids(entries: &[Arc<Entry>]) -> Vec<String> {
    let mut v: Vec<String> = entries.iter().map(|e| e.spiffe_id.to_string()).collect();
    v.sort();
    v
}

/// A node alias (an entry parented to the server) is held by every agent whose node
/// selectors include all of its selectors: entries parented to the alias are authorized for
/// those agents and reach their sync streams, and for no other agent; re-attesting with
/// other selectors gains or loses the alias.
#[tokio::test]
async fn node_aliases_follow_agent_selectors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ds.sqlite3");
    let ds = DataStore::open(&path).await.unwrap();
    let a: SpiffeId = "spiffe://td/spire/agent/k8s_psat/demo/node-a"
        .parse()
        .unwrap();
    let b: SpiffeId = "spiffe://td/spire/agent/k8s_psat/other/node-b"
        .parse()
        .unwrap();
    let demo = ["k8s_psat:cluster:demo", "k8s_psat:agent_ns:spire"];
    assert_eq!(
        ds.record_attestation(&psat_agent(a.as_str(), &demo))
            .await
            .unwrap(),
        Attestation::Recorded
    );
    ds.record_attestation(&psat_agent(b.as_str(), &["k8s_psat:cluster:other"]))
        .await
        .unwrap();
    let (sub_a, _) = ds.subscribe_sync(&a);
    let (sub_b, _) = ds.subscribe_sync(&b);

    let alias = "spiffe://td/k8s-cluster/demo";
    let created = ds
        .create_entries(vec![
            entry(alias, "spiffe://td/spire/server", "k8s_psat:cluster:demo"),
            // Needs a selector agent A does not have: not an alias of A.
            Entry {
                selectors: vec![
                    "k8s_psat:cluster:demo".parse().unwrap(),
                    "k8s_psat:agent_ns:kube-system".parse().unwrap(),
                ],
                ..entry(
                    "spiffe://td/k8s-cluster/demo-system",
                    "spiffe://td/spire/server",
                    "x:y",
                )
            },
        ])
        .await;
    let alias_id = created[0].as_ref().unwrap().id.clone();
    // The alias alone changes no entry set (the alias entry is no SVID of the agent's).
    assert!(sub_a.take().is_empty());
    ds.create_entries(vec![
        entry("spiffe://td/w", alias, "unix:uid:1"),
        entry(
            "spiffe://td/w-system",
            "spiffe://td/k8s-cluster/demo-system",
            "unix:uid:2",
        ),
    ])
    .await;
    assert_eq!(ids(&ds.authorized_entries(&a)), ["spiffe://td/w"]);
    assert_eq!(ds.node_aliases(&a), [alias.parse::<SpiffeId>().unwrap()]);
    assert!(ds.authorized_entries(&b).is_empty());
    let pending = sub_a.take();
    assert_eq!(pending.upserts.len(), 1, "{pending:?}");
    assert!(sub_b.take().is_empty());

    // B re-attests into the demo cluster: it gains the alias, A keeps it.
    ds.record_attestation(&psat_agent(b.as_str(), &demo))
        .await
        .unwrap();
    assert_eq!(ids(&ds.authorized_entries(&b)), ["spiffe://td/w"]);
    assert_eq!(sub_b.take().upserts.len(), 1);
    assert!(sub_a.take().is_empty());
    // A re-attests elsewhere: it loses it.
    ds.record_attestation(&psat_agent(a.as_str(), &["k8s_psat:cluster:other"]))
        .await
        .unwrap();
    assert!(ds.authorized_entries(&a).is_empty());
    assert_eq!(sub_a.take().deletes.len(), 1);

    // Persisted: a restart knows B's selectors.
    drop((sub_a, sub_b));
    let ds = DataStore::open(&path).await.unwrap();
    assert_eq!(ids(&ds.authorized_entries(&b)), ["spiffe://td/w"]);
    let rec = ds.get_agent(&b).await.unwrap().unwrap();
    let mut want: Vec<Selector> = demo.iter().map(|s| s.parse().unwrap()).collect();
    want.sort();
    assert_eq!(rec.selectors, want, "stored sorted");
    assert!(rec.can_reattest);

    // Deleting the alias reaches B's stream.
    let (sub_b, _) = ds.subscribe_sync(&b);
    ds.delete_entries(&[alias_id]).await;
    assert!(ds.authorized_entries(&b).is_empty());
    assert_eq!(sub_b.take().deletes.len(), 1);

    // Evicted: no selectors, no alias.
    ds.record_attestation(&psat_agent(a.as_str(), &demo))
        .await
        .unwrap();
    ds.create_entries(vec![entry(
        alias,
        "spiffe://td/spire/server",
        "k8s_psat:cluster:demo",
    )])
    .await;
    assert_eq!(ids(&ds.authorized_entries(&a)), ["spiffe://td/w"]);
    ds.evict_agent(&a).await.unwrap();
    assert!(ds.authorized_entries(&a).is_empty());
}

/// A banned agent's attestation changes nothing; re-attesting replaces the serial (the
/// previous SVID is no longer current) and keeps the creation time.
#[tokio::test]
async fn reattestation_replaces_the_serial_unless_banned() {
    let dir = tempfile::tempdir().unwrap();
    let ds = DataStore::open(&dir.path().join("ds")).await.unwrap();
    let id = "spiffe://td/spire/agent/k8s_psat/demo/n";
    ds.record_attestation(&psat_agent(id, &["k8s_psat:cluster:demo"]))
        .await
        .unwrap();
    let again = AgentRecord {
        serial: "02".into(),
        created_at: 50,
        last_seen: 50,
        ..psat_agent(id, &["k8s_psat:cluster:demo", "k8s_psat:agent_ns:x"])
    };
    ds.record_attestation(&again).await.unwrap();
    let rec = ds.get_agent(&again.spiffe_id).await.unwrap().unwrap();
    assert_eq!(
        (rec.serial.as_str(), rec.created_at, rec.last_seen),
        ("02", 1, 50)
    );
    assert_eq!(rec.selectors.len(), 2);
    ds.ban_agent(&again.spiffe_id).await.unwrap();
    let third = AgentRecord {
        serial: "03".into(),
        ..again.clone()
    };
    assert_eq!(
        ds.record_attestation(&third).await.unwrap(),
        Attestation::Banned
    );
    let rec = ds.get_agent(&again.spiffe_id).await.unwrap().unwrap();
    assert_eq!(rec.serial, "02");
    assert!(rec.banned);
}
