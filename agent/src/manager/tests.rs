//! The manager's state transitions, driven without a server: chunk assembly, snapshots and
//! deltas, signing results, CA changes, store writes.

use super::*;

fn chunk(snapshot: u64, ids: &[&str], bundle: bool, last: bool) -> SyncEntriesResponse {
    SyncEntriesResponse {
        entries: ids
            .iter()
            .map(|id| sigil_proto::types::Entry {
                id: id.to_string(),
                ..Default::default()
            })
            .collect(),
        bundle: bundle.then(|| sigil_proto::types::Bundle {
            trust_domain: "td".into(),
            ..Default::default()
        }),
        federated_bundles: vec![],
        last,
        snapshot,
        delta: false,
        deleted_entry_ids: vec![],
    }
}

#[test]
fn chunks_assemble_into_snapshots() {
    let mut p = None;
    assert!(accumulate(&mut p, chunk(1, &["a"], true, false)).is_none());
    assert!(accumulate(&mut p, chunk(1, &["b"], false, false)).is_none());
    let s = accumulate(&mut p, chunk(1, &["c"], false, true)).unwrap();
    assert_eq!(s.entries.len(), 3);
    assert!(s.bundle.is_some());
    assert_eq!(s.federated.as_deref().map(<[_]>::len), Some(0));
    // An interrupted snapshot is discarded when the next one starts.
    assert!(accumulate(&mut p, chunk(2, &["a"], true, false)).is_none());
    let s = accumulate(&mut p, chunk(3, &["x"], true, true)).unwrap();
    assert_eq!(s.number, 3);
    assert_eq!(s.entries.len(), 1);
    // A single-chunk snapshot.
    let s = accumulate(&mut p, chunk(4, &[], true, true)).unwrap();
    assert!(s.entries.is_empty());
}

// === Manager state transitions, without a server ===

struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    der: Vec<u8>,
}

impl TestCa {
    fn new() -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let der = params.self_signed(&key).unwrap().der().to_vec();
        Self {
            issuer: rcgen::Issuer::new(params, key),
            der,
        }
    }

    fn svid(&self, id: &str) -> (Vec<Vec<u8>>, PrivateKeyDer) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![rcgen::SanType::URI(id.try_into().unwrap())];
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::seconds(10);
        params.not_after = now + time::Duration::hours(1);
        let der = params.signed_by(&key, &self.issuer).unwrap().der().to_vec();
        (vec![der], PrivateKeyDer::new(key.serialize_der()))
    }
}

fn manager(ca: &TestCa) -> (Manager, ManagerHandle) {
    let host: crate::node::config::ServerHost = "127.0.0.1".parse().unwrap();
    let trust_domain = TrustDomain::from_id_or_name("td").unwrap();
    let (chain, key) = ca.svid("spiffe://td/spire/agent/join_token/t");
    let creds = Credentials {
        svid: Arc::new(crate::node::AgentSvid::new(chain, key).unwrap()),
        roots: Arc::new(vec![ca.der.clone()]),
        tainted: Default::default(),
    };
    Manager::new(
        ServerEndpoint::new(&host, 8081, &trust_domain),
        None,
        trust_domain.clone(),
        creds,
        None,
        jwt::DEFAULT_CACHE_SIZE,
    )
}

fn proto_entry(
    id: &str,
    spiffe_id: &str,
    parent: &str,
    created_at: i64,
) -> sigil_proto::types::Entry {
    sigil_proto::types::Entry {
        id: id.into(),
        spiffe_id: spiffe_id.into(),
        parent_id: parent.into(),
        selectors: vec![sigil_proto::types::Selector {
            r#type: "unix".into(),
            value: "uid:1".into(),
        }],
        created_at,
        ..Default::default()
    }
}

fn pending(entries: Vec<sigil_proto::types::Entry>, roots: Option<Vec<Vec<u8>>>) -> Pending {
    Pending {
        number: 1,
        delta: false,
        deleted: vec![],
        entries,
        bundle: roots.map(|r| sigil_proto::types::Bundle {
            trust_domain: "td".into(),
            x509_authorities: r,
            ..Default::default()
        }),
        federated: Some(vec![]),
    }
}

#[test]
fn apply_publishes_workload_entries_only() {
    let ca = TestCa::new();
    let (mut m, handle) = manager(&ca);
    assert!(!handle.snapshot.borrow().synced);
    m.apply(pending(
        vec![
            proto_entry("alias", "spiffe://td/node", "spiffe://td/spire/server", 0),
            proto_entry("b", "spiffe://td/b", "spiffe://td/node", 2),
            proto_entry("a", "spiffe://td/a", "spiffe://td/node", 1),
            proto_entry("bad", "not an id", "spiffe://td/node", 3),
        ],
        Some(vec![ca.der.clone()]),
    ));
    m.publish();
    let snap = handle.snapshot.borrow().clone();
    assert!(snap.synced);
    assert!(snap.bundle.is_some());
    // Node aliases and invalid entries are left out; the rest is oldest first.
    let ids: Vec<_> = snap
        .identities
        .iter()
        .map(|i| i.entry.id.as_str())
        .collect();
    assert_eq!(ids, ["a", "b"]);
}

#[test]
fn signing_results_are_checked_and_kept_across_unchanged_snapshots() {
    let ca = TestCa::new();
    let (mut m, handle) = manager(&ca);
    let entries = || vec![proto_entry("a", "spiffe://td/a", "spiffe://td/node", 1)];
    m.apply(pending(entries(), Some(vec![ca.der.clone()])));

    // An SVID for the wrong identity is refused and retried later.
    m.record_signing("a".into(), Ok(ca.svid("spiffe://td/other")));
    assert!(!m.state.svids.contains_key("a"));
    assert!(m.state.retry.contains_key("a"));

    m.record_signing("a".into(), Ok(ca.svid("spiffe://td/a")));
    let svid = m.state.svids["a"].clone();
    assert!(m.state.retry.is_empty());
    let now_ms = now_unix_ms();
    assert!(svid.rotate_at_ms > now_ms && svid.rotate_at_ms < now_ms + 3_600_000);
    m.publish();
    assert!(handle.snapshot.borrow().identities[0].svid.is_some());

    // The same snapshot again keeps the SVID; a changed SPIFFE ID drops it; so does deletion.
    m.apply(pending(entries(), None));
    assert!(Arc::ptr_eq(&m.state.svids["a"], &svid));
    m.apply(pending(
        vec![proto_entry(
            "a",
            "spiffe://td/renamed",
            "spiffe://td/node",
            1,
        )],
        None,
    ));
    assert!(!m.state.svids.contains_key("a"));
    m.record_signing("a".into(), Ok(ca.svid("spiffe://td/renamed")));
    m.apply(pending(vec![], None));
    assert!(m.state.svids.is_empty());
    m.publish();
    assert!(handle.snapshot.borrow().identities.is_empty());
}

fn delta(entries: Vec<sigil_proto::types::Entry>, deleted: &[&str]) -> Pending {
    Pending {
        number: 2,
        delta: true,
        deleted: deleted.iter().map(|d| d.to_string()).collect(),
        entries,
        bundle: None,
        federated: None,
    }
}

#[test]
fn deltas_change_only_what_they_name_and_resign_only_what_needs_it() {
    let ca = TestCa::new();
    let (mut m, handle) = manager(&ca);
    m.apply(pending(
        vec![
            proto_entry("a", "spiffe://td/a", "spiffe://td/node", 1),
            proto_entry("b", "spiffe://td/b", "spiffe://td/node", 2),
        ],
        Some(vec![ca.der.clone()]),
    ));
    m.record_signing("a".into(), Ok(ca.svid("spiffe://td/a")));
    m.record_signing("b".into(), Ok(ca.svid("spiffe://td/b")));
    let (a, b) = (m.state.svids["a"].clone(), m.state.svids["b"].clone());

    // A new entry: added, the others untouched.
    m.apply(delta(
        vec![proto_entry("c", "spiffe://td/c", "spiffe://td/node", 3)],
        &[],
    ));
    assert_eq!(m.state.entries.len(), 3);
    assert!(Arc::ptr_eq(&m.state.svids["a"], &a));
    assert!(!m.state.svids.contains_key("c"));

    // A revision bump whose SVID-relevant fields did not change keeps the SVID (spire#2639);
    // a changed DNS name drops it, so it is signed again.
    let mut bumped = proto_entry("a", "spiffe://td/a", "spiffe://td/node", 1);
    bumped.revision = 7;
    bumped.selectors.push(sigil_proto::types::Selector {
        r#type: "unix".into(),
        value: "gid:5".into(),
    });
    let mut renamed = proto_entry("b", "spiffe://td/b", "spiffe://td/node", 2);
    renamed.revision = 1;
    renamed.dns_names = vec!["b.example.org".into()];
    m.apply(delta(vec![bumped, renamed], &[]));
    assert!(
        Arc::ptr_eq(&m.state.svids["a"], &a),
        "re-signed for nothing"
    );
    assert_eq!(m.state.entries["a"].revision, 7);
    assert!(
        !m.state.svids.contains_key("b"),
        "kept an SVID without its DNS name"
    );
    assert!(!Arc::ptr_eq(&m.state.entries["b"], &m.state.entries["a"]));
    drop(b);

    // A deletion removes the entry and its SVID, nothing else.
    m.apply(delta(vec![], &["a"]));
    assert!(!m.state.entries.contains_key("a"));
    assert!(!m.state.svids.contains_key("a"));
    assert_eq!(m.state.entries.len(), 2);
    m.publish();
    let ids: Vec<_> = handle
        .snapshot
        .borrow()
        .identities
        .iter()
        .map(|i| i.entry.id.clone())
        .collect();
    assert_eq!(ids, ["b", "c"]);
}

/// A new bundle is written to the data dir on the blocking pool, not on the async worker
/// running the sync session (here the test's thread: a current-thread runtime).
#[tokio::test]
async fn bundle_writes_run_off_the_async_workers() {
    let ca = TestCa::new();
    let (mut m, _handle) = manager(&ca);
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::new(dir.path());
    m.store = Some(store.clone());
    m.apply(pending(vec![], Some(vec![ca.der.clone()])));
    m.persist_bundle().await;
    let writers = store.writers.lock().unwrap().clone();
    assert_eq!(writers.len(), 1);
    assert_ne!(writers[0], std::thread::current().id());
    assert!(dir.path().join("bundle.pem").exists());
}

#[test]
fn deltas_must_follow_what_was_applied() {
    let full = pending(vec![], None);
    assert!(check_sequence(None, &full).is_ok());
    assert!(check_sequence(Some(7), &full).is_ok());
    let d = delta(vec![], &[]); // number 2
    assert!(check_sequence(None, &d).is_err());
    assert!(check_sequence(Some(1), &d).is_ok());
    assert!(check_sequence(Some(2), &d).is_err());
    assert!(check_sequence(Some(0), &d).is_err());
}

#[test]
fn delta_chunks_assemble() {
    let mut p = None;
    let mut first = chunk(5, &["x"], false, false);
    first.delta = true;
    first.deleted_entry_ids = vec!["gone".into()];
    assert!(accumulate(&mut p, first).is_none());
    let mut second = chunk(5, &["y"], false, true);
    second.delta = true;
    let d = accumulate(&mut p, second).unwrap();
    assert!(d.delta);
    assert_eq!(d.entries.len(), 2);
    assert_eq!(d.deleted, ["gone"]);
    assert!(
        d.federated.is_none(),
        "a delta without bundles keeps the federated set"
    );
}

#[test]
fn new_ca_replaces_roots_and_rotates_orphaned_svids() {
    let ca = TestCa::new();
    let (mut m, handle) = manager(&ca);
    m.apply(pending(
        vec![proto_entry("a", "spiffe://td/a", "spiffe://td/node", 1)],
        Some(vec![ca.der.clone()]),
    ));
    m.record_signing("a".into(), Ok(ca.svid("spiffe://td/a")));
    assert!(m.state.svids["a"].rotate_at_ms > 0);

    // The old CA is still in the bundle: nothing to do.
    let new_ca = TestCa::new();
    m.apply(pending(
        vec![proto_entry("a", "spiffe://td/a", "spiffe://td/node", 1)],
        Some(vec![ca.der.clone(), new_ca.der.clone()]),
    ));
    assert!(m.state.svids["a"].rotate_at_ms > 0);
    assert_eq!(handle.creds.borrow().roots.len(), 2);

    // The old CA is gone: the SVID is due now, and the server is trusted by the new roots.
    m.apply(pending(
        vec![proto_entry("a", "spiffe://td/a", "spiffe://td/node", 1)],
        Some(vec![new_ca.der.clone()]),
    ));
    assert_eq!(m.state.svids["a"].rotate_at_ms, 0);
    assert_eq!(*handle.creds.borrow().roots, vec![new_ca.der.clone()]);
    assert_eq!(m.state.next_due_ms(), Some(0));
}
