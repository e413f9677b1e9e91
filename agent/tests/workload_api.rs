//! The Workload API over a real Unix socket, driven by hand-built snapshots (no server): the
//! SPIFFE semantics of each RPC, stream updates, and the status codes clients rely on.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sigil_agent::manager::cache::{Identity, Snapshot, WorkloadSvid};
use sigil_proto::workload as pb;
use sigil_spiffe::SpiffeId;

#[tokio::test]
async fn x509_svids_stream_updates_and_denials() {
    let ca = Ca::new();
    let me = entry("e1", "spiffe://td/me", &my_uid(), &["spiffe://other"]);
    let stranger = entry("e2", "spiffe://td/stranger", "uid:4242", &[]);
    let mut federated = BTreeMap::new();
    federated.insert(
        "other".parse().unwrap(),
        bundle("other", vec![ca.der.clone()], None),
    );
    let own = bundle("td", vec![ca.der.clone()], None);
    let svid1 = workload_svid(&ca, "spiffe://td/me");
    let snap = |svid: Option<Arc<WorkloadSvid>>, with_me: bool| {
        let mut identities = vec![];
        if with_me {
            identities.push(Identity {
                entry: me.clone(),
                svid,
            });
        }
        identities.push(Identity {
            entry: stranger.clone(),
            svid: Some(workload_svid(&ca, "spiffe://td/stranger")),
        });
        Snapshot::new(td(), true, Some(own.clone()), federated.clone(), identities)
    };
    let h = Harness::start(&ca, snap(Some(svid1.clone()), true)).await;
    let mut c = h.client().await;

    // Without the security header.
    let err = match c
        .fetch_x509svid(tonic::Request::new(pb::X509svidRequest {}))
        .await
    {
        Err(s) => s,
        Ok(r) => r.into_inner().message().await.unwrap_err(),
    };
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(err.message(), "security header missing from request");

    let mut stream = c
        .fetch_x509svid(req(pb::X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.svids.len(), 1, "only the caller's own identity");
    let s = &first.svids[0];
    assert_eq!(s.spiffe_id, "spiffe://td/me");
    assert_eq!(s.x509_svid, svid1.chain[0]);
    assert_eq!(s.x509_svid_key, svid1.key.as_bytes());
    assert_eq!(s.bundle, ca.der);
    assert_eq!(s.hint, "hint-e1");
    assert_eq!(
        first.federated_bundles.keys().collect::<Vec<_>>(),
        ["spiffe://other"]
    );

    // Bundles: own plus the federated one of the caller's entry.
    let mut bundles = c
        .fetch_x509_bundles(req(pb::X509BundlesRequest {}))
        .await
        .unwrap()
        .into_inner();
    let b = bundles.message().await.unwrap().unwrap();
    let mut keys: Vec<_> = b.bundles.keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, ["spiffe://other", "spiffe://td"]);

    // A rotated SVID reaches the open stream.
    let svid2 = workload_svid(&ca, "spiffe://td/me");
    h.snapshots
        .send_replace(Arc::new(snap(Some(svid2.clone()), true)));
    let next = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(next.svids[0].x509_svid, svid2.chain[0]);

    // The caller's entry is deleted: the stream ends with PermissionDenied.
    h.snapshots.send_replace(Arc::new(snap(None, false)));
    let err = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);

    // And a new call is denied at once.
    let err = c
        .fetch_x509svid(req(pb::X509svidRequest {}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert_eq!(err.message(), "no identity issued");
    let err = c
        .fetch_jwtsvid(req(pb::JwtsvidRequest {
            audience: vec!["a".into()],
            spiffe_id: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
}

#[tokio::test]
async fn unsynced_or_unsigned_is_unavailable() {
    let ca = Ca::new();
    let me = entry("e1", "spiffe://td/me", &my_uid(), &[]);
    let own = bundle("td", vec![ca.der.clone()], None);
    // Entry known but its SVID not signed yet.
    let snap = Snapshot::new(
        td(),
        true,
        Some(own.clone()),
        BTreeMap::new(),
        vec![Identity {
            entry: me.clone(),
            svid: None,
        }],
    );
    let h = Harness::start(&ca, snap).await;
    let mut c = h.client().await;
    let err = c
        .fetch_x509svid(req(pb::X509svidRequest {}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");

    // Never synced: Unavailable rather than PermissionDenied.
    h.snapshots.send_replace(Arc::new(Snapshot::new(
        td(),
        false,
        Some(own),
        BTreeMap::new(),
        vec![],
    )));
    let err = c
        .fetch_x509svid(req(pb::X509svidRequest {}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");

    // The SVID arrives while a call waits: it is served.
    let waiting = tokio::spawn({
        let mut c = h.client().await;
        async move { c.fetch_x509svid(req(pb::X509svidRequest {})).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    h.snapshots.send_replace(Arc::new(Snapshot::new(
        td(),
        true,
        Some(bundle("td", vec![ca.der.clone()], None)),
        BTreeMap::new(),
        vec![Identity {
            entry: me,
            svid: Some(workload_svid(&ca, "spiffe://td/me")),
        }],
    )));
    let mut stream = waiting.await.unwrap().unwrap().into_inner();
    assert_eq!(stream.message().await.unwrap().unwrap().svids.len(), 1);
}

#[tokio::test]
async fn jwt_bundles_validation_and_minting_errors() {
    let ca = Ca::new();
    let (signer, _) = sigil_spiffe::JwtSigner::generate("kid-1".into()).unwrap();
    let me = entry("e1", "spiffe://td/me", &my_uid(), &[]);
    let own = bundle("td", vec![ca.der.clone()], Some(&signer));
    let snap = Snapshot::new(
        td(),
        true,
        Some(own),
        BTreeMap::new(),
        vec![Identity {
            entry: me,
            svid: Some(workload_svid(&ca, "spiffe://td/me")),
        }],
    );
    let h = Harness::start(&ca, snap).await;
    let mut c = h.client().await;

    let mut jwt_bundles = c
        .fetch_jwt_bundles(req(pb::JwtBundlesRequest {}))
        .await
        .unwrap()
        .into_inner();
    let b = jwt_bundles.message().await.unwrap().unwrap();
    let jwks: serde_json::Value = serde_json::from_slice(&b.bundles["spiffe://td"]).unwrap();
    assert_eq!(jwks["keys"][0]["kid"], "kid-1");

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let sub: SpiffeId = "spiffe://td/someone".parse().unwrap();
    let token = signer
        .sign(&sub, &["aud-1".into(), "aud-2".into()], now, now + 300)
        .unwrap();
    let ok = c
        .validate_jwtsvid(req(pb::ValidateJwtsvidRequest {
            audience: "aud-2".into(),
            svid: token.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.spiffe_id, "spiffe://td/someone");
    let claims = ok.claims.unwrap().fields;
    assert_eq!(
        claims["exp"].kind,
        Some(prost_types::value::Kind::NumberValue((now + 300) as f64))
    );
    assert!(matches!(
        claims["aud"].kind,
        Some(prost_types::value::Kind::ListValue(_))
    ));

    let err = c
        .validate_jwtsvid(req(pb::ValidateJwtsvidRequest {
            audience: "other".into(),
            svid: token.clone(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = c
        .validate_jwtsvid(req(pb::ValidateJwtsvidRequest {
            audience: String::new(),
            svid: token,
        }))
        .await
        .unwrap_err();
    assert_eq!(err.message(), "audience must be specified");

    let err = c
        .fetch_jwtsvid(req(pb::JwtsvidRequest {
            audience: vec![],
            spiffe_id: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(err.message(), "audience must be specified");
    // Asking for an identity the caller does not have.
    let err = c
        .fetch_jwtsvid(req(pb::JwtsvidRequest {
            audience: vec!["a".into()],
            spiffe_id: "spiffe://td/not-me".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    // The agent has no server connection here: minting is Unavailable.
    let err = c
        .fetch_jwtsvid(req(pb::JwtsvidRequest {
            audience: vec!["a".into()],
            spiffe_id: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
}
