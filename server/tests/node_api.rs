//! The agent API against a real `sigil-server` process: join-token attestation (single use),
//! mTLS-only calls, authorization of CSRs, eviction/ban, and a 100k-entry sync.

mod common;

use common::{Launch, Server, TD, csr, node_client};
use rcgen::KeyPair;
use sigil_proto::admin as apb;
use sigil_proto::agent as pb;
use sigil_proto::types;
use std::time::{Duration, Instant};

/// A server configured by flags alone.
async fn start() -> Server {
    common::start_with(|_| {
        Launch::Flags(
            ["-trustDomain", TD, "-logLevel", "warn"]
                .map(String::from)
                .to_vec(),
        )
    })
    .await
}

async fn token(s: &Server, alias: &str) -> String {
    let mut c = s.admin_client().await;
    c.create_join_token(apb::CreateJoinTokenRequest {
        ttl: 600,
        spiffe_id: alias.into(),
    })
    .await
    .unwrap()
    .into_inner()
    .value
}

async fn attest(
    s: &Server,
    token: &str,
    key: &KeyPair,
) -> Result<pb::AttestAgentResponse, tonic::Status> {
    node_client(s, None)
        .await
        .attest_agent(pb::AttestAgentRequest {
            join_token: token.into(),
            csr: csr(key),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

fn entry(spiffe: &str, parent: &str, sel: &str) -> types::Entry {
    let (t, v) = sel.split_once(':').unwrap();
    types::Entry {
        spiffe_id: spiffe.into(),
        parent_id: parent.into(),
        selectors: vec![types::Selector {
            r#type: t.into(),
            value: v.into(),
        }],
        ..Default::default()
    }
}

async fn create(s: &Server, entries: Vec<types::Entry>) -> Vec<String> {
    let mut c = s.admin_client().await;
    let r = c
        .batch_create_entry(apb::BatchCreateEntryRequest { entries })
        .await
        .unwrap()
        .into_inner();
    r.results
        .into_iter()
        .map(|r| {
            assert_eq!(r.status.as_ref().unwrap().code, 0, "{:?}", r.status);
            r.id
        })
        .collect()
}

#[tokio::test]
async fn attestation_authorization_and_eviction() {
    let s = start().await;
    let node = format!("spiffe://{TD}/node-a");
    let tok = token(&s, &node).await;
    let key = KeyPair::generate().unwrap();
    let resp = attest(&s, &tok, &key).await.unwrap();
    let svid = resp.svid.unwrap();
    assert_eq!(
        svid.spiffe_id,
        format!("spiffe://{TD}/spire/agent/join_token/{tok}")
    );
    assert_eq!(resp.bundle.unwrap().x509_authorities, s.roots);

    // The token is single use.
    let again = attest(&s, &tok, &KeyPair::generate().unwrap())
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::PermissionDenied);
    assert!(
        again.message().contains("join token"),
        "{}",
        again.message()
    );
    // Garbage CSR: InvalidArgument, and a fresh token is not burnt by it.
    let tok2 = token(&s, "").await;
    let bad = node_client(&s, None)
        .await
        .attest_agent(pb::AttestAgentRequest {
            join_token: tok2.clone(),
            csr: b"nope".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(
        attest(&s, &tok2, &KeyPair::generate().unwrap())
            .await
            .is_ok()
    );

    // Without a client certificate, agent calls are refused.
    let anon = node_client(&s, None)
        .await
        .sign_x509_svids(pb::SignX509SvidsRequest { params: vec![] })
        .await
        .unwrap_err();
    assert_eq!(anon.code(), tonic::Code::Unauthenticated);

    let mine = create(
        &s,
        vec![entry(&format!("spiffe://{TD}/web"), &node, "unix:uid:1000")],
    )
    .await;
    let theirs = create(
        &s,
        vec![entry(
            &format!("spiffe://{TD}/db"),
            &format!("spiffe://{TD}/node-b"),
            "unix:uid:1000",
        )],
    )
    .await;
    let mut c = node_client(&s, Some((svid.cert_chain[0].clone(), &key))).await;
    let wkey = KeyPair::generate().unwrap();
    let res = c
        .sign_x509_svids(pb::SignX509SvidsRequest {
            params: vec![
                pb::SvidParams {
                    entry_id: mine[0].clone(),
                    csr: csr(&wkey),
                },
                pb::SvidParams {
                    entry_id: theirs[0].clone(),
                    csr: csr(&wkey),
                },
            ],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(res[0].status.as_ref().unwrap().code, 0);
    let got = res[0].svid.as_ref().unwrap();
    assert_eq!(got.spiffe_id, format!("spiffe://{TD}/web"));
    assert_eq!(
        sigil_spiffe::x509::verify_svid_chain(&got.cert_chain, &s.roots, sigil_server::now_unix())
            .unwrap()
            .to_string(),
        format!("spiffe://{TD}/web")
    );
    assert_eq!(
        res[1].status.as_ref().unwrap().code,
        tonic::Code::PermissionDenied as i32
    );
    assert!(res[1].svid.is_none());

    // JWT: audience required; unauthorized entry refused.
    let jwt = c
        .sign_jwt_svid(pb::SignJwtSvidRequest {
            entry_id: mine[0].clone(),
            audience: vec!["aud".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(jwt.token.split('.').count(), 3);
    let e = c
        .sign_jwt_svid(pb::SignJwtSvidRequest {
            entry_id: theirs[0].clone(),
            audience: vec!["aud".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);

    // Renewal works, then eviction ends it.
    let renewed = c
        .renew_agent(pb::RenewAgentRequest { csr: csr(&key) })
        .await
        .unwrap()
        .into_inner()
        .svid
        .unwrap();
    assert_eq!(renewed.spiffe_id, svid.spiffe_id);
    let mut admin = s.admin_client().await;
    admin
        .evict_agent(apb::AgentIdRequest {
            spiffe_id: svid.spiffe_id.clone(),
        })
        .await
        .unwrap();
    let e = c
        .renew_agent(pb::RenewAgentRequest { csr: csr(&key) })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
}

#[tokio::test]
async fn sync_pushes_changes_and_scales_to_100k_entries() {
    let s = start().await;
    let node = format!("spiffe://{TD}/big-node");
    let tok = token(&s, &node).await;
    let key = KeyPair::generate().unwrap();
    let svid = attest(&s, &tok, &key).await.unwrap().svid.unwrap();
    let mut c = node_client(&s, Some((svid.cert_chain[0].clone(), &key))).await;
    let mut stream = c
        .sync_entries(pb::SyncEntriesRequest {})
        .await
        .unwrap()
        .into_inner();

    // What the agent holds, kept up to date from the full set and the deltas after it.
    let mut held = std::collections::HashSet::new();
    // Only the alias entry at first.
    let (first, _) = sync_message(&mut stream, &mut held).await;
    assert!(
        !first.delta && first.bundle.is_some(),
        "the full set with the bundle first"
    );
    assert_eq!(held.len(), 1);

    // A change is pushed without any polling, as a delta holding just that entry.
    create(
        &s,
        vec![entry(&format!("spiffe://{TD}/one"), &node, "unix:uid:1")],
    )
    .await;
    let (msg, _) = sync_message(&mut stream, &mut held).await;
    assert!(msg.delta);
    assert_eq!(held.len(), 2);

    // 100k entries: pushed in chunks, none lost.
    const N: usize = 100_000;
    for batch in 0..(N / 10_000) {
        let entries = (0..10_000)
            .map(|i| {
                entry(
                    &format!("spiffe://{TD}/w/{batch}/{i}"),
                    &node,
                    &format!("unix:uid:{i}"),
                )
            })
            .collect();
        create(&s, entries).await;
    }
    // Writes coalesce: read deltas until the agent holds everything.
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut most_chunks = 0;
    loop {
        let (_, chunks) = sync_message(&mut stream, &mut held).await;
        most_chunks = most_chunks.max(chunks);
        if held.len() == N + 2 {
            assert!(most_chunks > 1, "10k entries must arrive in several chunks");
            break;
        }
        assert!(
            held.len() < N + 2,
            "more entries than created: {}",
            held.len()
        );
        assert!(Instant::now() < deadline, "never saw all entries");
    }
}

/// Reads one whole sync message (all its chunks) and applies it to `held`: a full set replaces
/// it, a delta changes it. Returns the first chunk and the number of chunks.
async fn sync_message(
    stream: &mut tonic::Streaming<pb::SyncEntriesResponse>,
    held: &mut std::collections::HashSet<String>,
) -> (pb::SyncEntriesResponse, usize) {
    let mut first: Option<pb::SyncEntriesResponse> = None;
    let mut chunks = 0;
    loop {
        let m = tokio::time::timeout(Duration::from_secs(120), stream.message())
            .await
            .expect("sync stream stalled")
            .unwrap()
            .expect("sync stream ended");
        if first.is_none() && !m.delta {
            held.clear();
        }
        for id in &m.deleted_entry_ids {
            held.remove(id);
        }
        held.extend(m.entries.iter().map(|e| e.id.clone()));
        chunks += 1;
        let last = m.last;
        if first.is_none() {
            first = Some(m);
        }
        if last {
            return (first.expect("set above"), chunks);
        }
    }
}

/// Nothing arrives on `stream` for a while.
async fn quiet(stream: &mut tonic::Streaming<pb::SyncEntriesResponse>, who: &str) {
    if let Ok(m) = tokio::time::timeout(Duration::from_millis(300), stream.message()).await {
        panic!("{who} got a message it is not concerned by: {m:?}");
    }
}

async fn open_sync(s: &Server, alias: &str) -> (tonic::Streaming<pb::SyncEntriesResponse>, String) {
    let tok = token(s, alias).await;
    let key = KeyPair::generate().unwrap();
    let svid = attest(s, &tok, &key).await.unwrap().svid.unwrap();
    let mut c = node_client(s, Some((svid.cert_chain[0].clone(), &key))).await;
    let stream = c
        .sync_entries(pb::SyncEntriesRequest {})
        .await
        .unwrap()
        .into_inner();
    (stream, svid.spiffe_id)
}

/// A write reaches only the agents whose authorized set it changes (directly, through a node
/// alias, or through an entry it holds), as a delta; bundle changes reach every agent;
/// eviction and ban end the stream at once.
#[tokio::test]
async fn writes_reach_only_the_agents_they_concern() {
    let s = start().await;
    let (mut a, a_id) = open_sync(&s, "").await;
    let node_b = format!("spiffe://{TD}/node-b");
    let (mut b, _) = open_sync(&s, &node_b).await;
    let (mut c, c_id) = open_sync(&s, "").await;
    let (mut held_a, mut held_b, mut held_c) = Default::default();
    sync_message(&mut a, &mut held_a).await;
    sync_message(&mut b, &mut held_b).await;
    sync_message(&mut c, &mut held_c).await;
    assert_eq!(held_b.len(), 1, "B holds its alias entry");

    // Parented to A directly: A only.
    let web = create(
        &s,
        vec![entry(&format!("spiffe://{TD}/web"), &a_id, "unix:uid:1")],
    )
    .await;
    let (m, _) = sync_message(&mut a, &mut held_a).await;
    assert!(m.delta && m.bundle.is_none());
    assert_eq!(m.entries.len(), 1);
    assert_eq!(m.entries[0].id, web[0]);
    quiet(&mut b, "B").await;
    quiet(&mut c, "C").await;

    // Parented to B's node alias: B only.
    create(
        &s,
        vec![entry(&format!("spiffe://{TD}/db"), &node_b, "unix:uid:2")],
    )
    .await;
    let (m, _) = sync_message(&mut b, &mut held_b).await;
    assert_eq!(m.entries.len(), 1);
    assert_eq!(held_b.len(), 2);
    quiet(&mut a, "A").await;
    quiet(&mut c, "C").await;

    // Parented to an identity A holds (spiffe://td/web): A gets it too.
    let child = create(
        &s,
        vec![entry(
            &format!("spiffe://{TD}/web/child"),
            &format!("spiffe://{TD}/web"),
            "unix:uid:3",
        )],
    )
    .await;
    let (m, _) = sync_message(&mut a, &mut held_a).await;
    assert_eq!(m.entries[0].id, child[0]);
    quiet(&mut b, "B").await;

    // An update: A gets the new revision; nobody else hears of it.
    let mut admin = s.admin_client().await;
    let mut updated = entry(&format!("spiffe://{TD}/web"), &a_id, "unix:uid:1");
    updated.id = web[0].clone();
    updated.dns_names = vec!["web.example.org".into()];
    let r = admin
        .batch_update_entry(apb::BatchUpdateEntryRequest {
            entries: vec![updated],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.results[0].status.as_ref().unwrap().code, 0);
    let (m, _) = sync_message(&mut a, &mut held_a).await;
    assert_eq!(m.entries.len(), 1);
    assert_eq!(m.entries[0].revision, 1);
    quiet(&mut b, "B").await;
    quiet(&mut c, "C").await;

    // Deleting the entry A reached its child through: both leave A's set.
    admin
        .batch_delete_entry(apb::BatchDeleteEntryRequest {
            ids: vec![web[0].clone()],
        })
        .await
        .unwrap();
    let (m, _) = sync_message(&mut a, &mut held_a).await;
    let mut gone = m.deleted_entry_ids.clone();
    gone.sort();
    let mut want = vec![web[0].clone(), child[0].clone()];
    want.sort();
    assert_eq!(gone, want);
    assert!(held_a.is_empty());
    quiet(&mut b, "B").await;

    // A federated bundle reaches everyone.
    admin
        .set_federated_bundle(apb::SetFederatedBundleRequest {
            bundle: Some(types::Bundle {
                trust_domain: "other.org".into(),
                x509_authorities: s.roots.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    for (stream, held) in [
        (&mut a, &mut held_a),
        (&mut b, &mut held_b),
        (&mut c, &mut held_c),
    ] {
        let (m, _) = sync_message(stream, held).await;
        assert!(m.bundle.is_some());
        assert_eq!(m.federated_bundles.len(), 1);
    }

    // Ban C: its stream ends at once; the others go on.
    admin
        .ban_agent(apb::AgentIdRequest {
            spiffe_id: c_id.clone(),
        })
        .await
        .unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), c.message())
        .await
        .expect("the banned agent's stream ends at once");
    assert_eq!(end.unwrap_err().code(), tonic::Code::PermissionDenied);
    quiet(&mut a, "A").await;
}

/// An agent SVID replaced by renewal stops authenticating once the agent has used its new
/// one; until then it still works (the renewal's answer may have been lost).
#[tokio::test]
async fn renewed_agent_svid_replaces_the_old_one() {
    let s = start().await;
    let tok = token(&s, "").await;
    let key = KeyPair::generate().unwrap();
    let old = attest(&s, &tok, &key).await.unwrap().svid.unwrap();
    let mut with_old = node_client(&s, Some((old.cert_chain[0].clone(), &key))).await;
    let new_key = KeyPair::generate().unwrap();
    let new = with_old
        .renew_agent(pb::RenewAgentRequest { csr: csr(&new_key) })
        .await
        .unwrap()
        .into_inner()
        .svid
        .unwrap();
    let jwt = |entry_id: &str| pb::SignJwtSvidRequest {
        entry_id: entry_id.into(),
        audience: vec!["aud".into()],
    };
    // Not used yet: the old SVID still authenticates (a fresh connection each time, so the
    // server sees the certificate anew).
    let mut c = node_client(&s, Some((old.cert_chain[0].clone(), &key))).await;
    let e = c.sign_jwt_svid(jwt("none")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    assert!(e.message().contains("not authorized"), "{}", e.message());

    // The agent uses its new SVID: from now on only that one works.
    let mut c = node_client(&s, Some((new.cert_chain[0].clone(), &new_key))).await;
    let e = c.sign_jwt_svid(jwt("none")).await.unwrap_err();
    assert!(e.message().contains("not authorized"), "{}", e.message());
    let mut c = node_client(&s, Some((old.cert_chain[0].clone(), &key))).await;
    let e = c
        .renew_agent(pb::RenewAgentRequest { csr: csr(&key) })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    assert!(
        e.message()
            .contains("SVID does not match expected serial number"),
        "{}",
        e.message()
    );
    // The new one keeps working, across restarts of its connection.
    let mut c = node_client(&s, Some((new.cert_chain[0].clone(), &new_key))).await;
    c.renew_agent(pb::RenewAgentRequest { csr: csr(&new_key) })
        .await
        .unwrap();
}
