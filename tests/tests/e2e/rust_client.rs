//! The agent's Workload API as seen by the Rust `spiffe` crate (an independent client), plus the
//! protocol-level checks that need a raw gRPC client.

use crate::{Env, TD, now, pem_certs};
use futures::StreamExt;
use sigil_e2e::harness::wait_for_svid;
use sigil_e2e::workload;
use sigil_proto::workload as pb;
use spiffe::{JwtSource, JwtSvid, SpiffeId, TrustDomain, WorkloadApiClient, X509Source};
use std::time::{Duration, Instant};

async fn client(env: &Env) -> WorkloadApiClient {
    WorkloadApiClient::connect_to(env.agent.endpoint())
        .await
        .expect("connecting the spiffe crate's client to the agent")
}

fn td() -> TrustDomain {
    TrustDomain::new(TD).expect("trust domain")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_client_fetches_x509_svid_and_bundles() {
    let env = Env::start("rs-x509");
    let id = env.register("/rust/x509", &[&Env::my_uid()], &[]);
    wait_for_svid(&env.agent.socket, &id).await;
    let c = client(&env).await;

    let svid = c.fetch_x509_svid().await.expect("fetch_x509_svid");
    assert_eq!(svid.spiffe_id().to_string(), id);
    let chain: Vec<Vec<u8>> = svid
        .cert_chain()
        .iter()
        .map(|c| c.as_bytes().to_vec())
        .collect();

    // The bundle the Workload API hands out is the server's, and the SVID chains up to it.
    let server_roots = pem_certs(&env.server.bundle_pem());
    let bundles = c.fetch_x509_bundles().await.expect("fetch_x509_bundles");
    let bundle = bundles.get(&td()).expect("a bundle for our trust domain");
    let api_roots: Vec<Vec<u8>> = bundle
        .authorities()
        .iter()
        .map(|c| c.as_bytes().to_vec())
        .collect();
    assert_eq!(
        api_roots, server_roots,
        "Workload API bundle differs from `sigil-server bundle show`"
    );
    let verified = sigil_spiffe::x509::verify_svid_chain(&chain, &server_roots, now())
        .expect("SVID chain verifies against the server's bundle");
    assert_eq!(verified.to_string(), id);

    // The SVID is short-lived and currently valid.
    let leaf = &chain[0];
    let nb = sigil_spiffe::x509::not_before_unix(leaf).expect("notBefore");
    let na = sigil_spiffe::x509::not_after_unix(leaf).expect("notAfter");
    assert!(
        nb <= now() + 1 && na > now(),
        "SVID not currently valid: {nb}..{na}"
    );

    // The context call returns the same identity and bundle.
    let ctx = c.fetch_x509_context().await.expect("fetch_x509_context");
    assert_eq!(
        ctx.default_svid()
            .expect("default SVID")
            .spiffe_id()
            .to_string(),
        id
    );
    assert!(ctx.bundle_set().get(&td()).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_client_fetches_and_validates_jwt_svids() {
    let env = Env::start("rs-jwt");
    let id = env.register("/rust/jwt", &[&Env::my_uid()], &[]);
    wait_for_svid(&env.agent.socket, &id).await;
    let c = client(&env).await;

    let svid = c
        .fetch_jwt_svid(["audience-1", "audience-2"], None)
        .await
        .expect("fetch_jwt_svid");
    assert_eq!(svid.spiffe_id().to_string(), id);
    let mut aud = svid.audience().to_vec();
    aud.sort();
    assert_eq!(aud, ["audience-1", "audience-2"]);
    assert!(
        svid.expiry().unix_timestamp() > now(),
        "JWT-SVID already expired"
    );

    // Asking for a specific SPIFFE ID works for ours.
    let want = SpiffeId::new(&id).expect("id");
    let by_id = c
        .fetch_jwt_svid(["audience-1"], Some(&want))
        .await
        .expect("fetch_jwt_svid with a SPIFFE ID");
    assert_eq!(by_id.spiffe_id(), &want);

    // Offline validation with the JWT bundle from the Workload API (jsonwebtoken + RustCrypto).
    let bundles = c.fetch_jwt_bundles().await.expect("fetch_jwt_bundles");
    assert!(bundles.get(&td()).is_some(), "no JWT bundle for {TD}");
    let ok = JwtSvid::parse_and_validate(svid.token(), &bundles, &["audience-1"])
        .expect("offline validation");
    assert_eq!(ok.spiffe_id().to_string(), id);
    JwtSvid::parse_and_validate(svid.token(), &bundles, &["not-my-audience"])
        .expect_err("offline validation must reject a wrong audience");
    let tampered = tamper(svid.token());
    JwtSvid::parse_and_validate(&tampered, &bundles, &["audience-1"])
        .expect_err("offline validation must reject a bad signature");

    // Validation by the agent.
    let v = c
        .validate_jwt_token("audience-2", svid.token())
        .await
        .expect("ValidateJWTSVID");
    assert_eq!(v.spiffe_id().to_string(), id);
    c.validate_jwt_token("not-my-audience", svid.token())
        .await
        .expect_err("the agent must reject a wrong audience");
    c.validate_jwt_token("audience-1", &tampered)
        .await
        .expect_err("the agent must reject a bad signature");
}

fn tamper(token: &str) -> String {
    let (rest, sig) = token.rsplit_once('.').expect("JWT has three parts");
    let first = if sig.starts_with('A') { 'B' } else { 'A' };
    format!("{rest}.{first}{}", &sig[1..])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_sources_serve_x509_and_jwt() {
    let env = Env::start("rs-sources");
    let id = env.register("/rust/sources", &[&Env::my_uid()], &[]);
    wait_for_svid(&env.agent.socket, &id).await;

    let x509 = X509Source::builder()
        .endpoint(env.agent.endpoint())
        .build()
        .await
        .expect("X509Source");
    let svid = x509.svid().expect("X509Source SVID");
    assert_eq!(svid.spiffe_id().to_string(), id);
    let b = x509
        .try_bundle_for_trust_domain(&td())
        .expect("X509Source bundle");
    let roots: Vec<Vec<u8>> = b
        .authorities()
        .iter()
        .map(|c| c.as_bytes().to_vec())
        .collect();
    let chain: Vec<Vec<u8>> = svid
        .cert_chain()
        .iter()
        .map(|c| c.as_bytes().to_vec())
        .collect();
    sigil_spiffe::x509::verify_svid_chain(&chain, &roots, now())
        .expect("source SVID verifies with source bundle");
    x509.shutdown().await;

    let jwt = JwtSource::builder()
        .endpoint(env.agent.endpoint())
        .build()
        .await
        .expect("JwtSource");
    let token = jwt
        .fetch_jwt_svid(["src-aud"])
        .await
        .expect("JwtSource fetch");
    assert_eq!(token.spiffe_id().to_string(), id);
    JwtSvid::parse_and_validate(token.token(), &jwt, &["src-aud"])
        .expect("validates with the source's bundles");
    jwt.shutdown().await;
}

/// SVIDs with a 10s TTL are rotated by the agent (at half-life) and pushed on an open stream
/// before the old one expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_stream_delivers_rotated_svids() {
    let env = Env::start("rs-rotate");
    let id = env.register("/rust/rotating", &[&Env::my_uid()], &["-x509SVIDTTL", "10"]);
    wait_for_svid(&env.agent.socket, &id).await;
    let c = client(&env).await;
    let mut stream = c
        .stream_x509_contexts()
        .await
        .expect("stream_x509_contexts");

    let leaf_of = |ctx: &spiffe::X509Context| {
        let svid = ctx.default_svid().expect("default SVID").clone();
        assert_eq!(svid.spiffe_id().to_string(), id);
        svid.leaf().as_bytes().to_vec()
    };
    let first = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("first stream message within 10s")
        .expect("stream open")
        .expect("first context");
    let first_leaf = leaf_of(&first);
    let first_na = sigil_spiffe::x509::not_after_unix(&first_leaf).expect("notAfter");
    // notBefore may be backdated (SPIRE backdates by 10s); notAfter is what the TTL sets.
    assert!(
        first_na <= now() + 11,
        "entry asked for a 10s X509-SVID TTL, but the SVID is valid for {}s more",
        first_na - now()
    );

    // Two rotations, each arriving while the previous SVID is still valid.
    let mut prev_leaf = first_leaf;
    let mut prev_na = first_na;
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut rotations = 0;
    while rotations < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        let ctx = tokio::time::timeout(left, stream.next())
            .await
            .unwrap_or_else(|_| {
                panic!("only {rotations} rotation(s) seen on the open stream in 40s")
            })
            .expect("stream ended")
            .expect("stream error");
        let leaf = leaf_of(&ctx);
        if leaf == prev_leaf {
            continue; // an update for some other reason (e.g. bundle)
        }
        assert!(
            now() <= prev_na,
            "rotated SVID arrived after the previous one expired ({} > {prev_na})",
            now()
        );
        let na = sigil_spiffe::x509::not_after_unix(&leaf).expect("notAfter");
        assert!(
            na > prev_na,
            "rotated SVID (notAfter {na}) does not outlive the previous one (notAfter {prev_na}); now {}",
            now()
        );
        assert_ne!(
            sigil_spiffe::x509::serial_hex(&leaf).expect("serial"),
            sigil_spiffe::x509::serial_hex(&prev_leaf).expect("serial")
        );
        prev_leaf = leaf;
        prev_na = na;
        rotations += 1;
    }
}

/// A new registration for a watching workload shows up on its open stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_stream_delivers_new_registrations() {
    let env = Env::start("rs-watch");
    let first = env.register("/rust/watch-1", &[&Env::my_uid()], &[]);
    wait_for_svid(&env.agent.socket, &first).await;
    let c = client(&env).await;
    let mut stream = c
        .stream_x509_contexts()
        .await
        .expect("stream_x509_contexts");
    let ctx = stream
        .next()
        .await
        .expect("stream open")
        .expect("first context");
    assert_eq!(ctx.svids().len(), 1);

    let second = env.register("/rust/watch-2", &[&Env::my_uid()], &[]);
    let got = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let ctx = stream
                .next()
                .await
                .expect("stream ended")
                .expect("stream error");
            let ids: Vec<String> = ctx
                .svids()
                .iter()
                .map(|s| s.spiffe_id().to_string())
                .collect();
            if ids.contains(&second) {
                return ids;
            }
        }
    })
    .await
    .expect("the new entry's SVID within 30s on the open stream");
    assert!(got.contains(&first), "the old SVID vanished: {got:?}");
}

/// A caller no entry matches is refused with PermissionDenied (by the spiffe crate and raw gRPC).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregistered_caller_gets_permission_denied() {
    let env = Env::start("rs-denied");
    // Someone else is registered, so the agent is synced and serving, just not to us.
    env.register("/someone-else", &["unix:uid:4242"], &[]);
    let c = client(&env).await;
    // Give the agent time to sync, then check repeatedly: the answer must stay "denied".
    tokio::time::sleep(Duration::from_secs(2)).await;
    match c.fetch_x509_svid().await {
        Err(
            spiffe::WorkloadApiError::NoIdentityIssued
            | spiffe::WorkloadApiError::PermissionDenied(_),
        ) => {}
        other => panic!("expected PermissionDenied, got {other:?}"),
    }
    match c.fetch_jwt_svid(["aud"], None).await {
        Err(
            spiffe::WorkloadApiError::NoIdentityIssued
            | spiffe::WorkloadApiError::PermissionDenied(_),
        ) => {}
        other => panic!("expected PermissionDenied for a JWT-SVID, got {other:?}"),
    }
    let status = workload::fetch_x509(&env.agent.socket)
        .await
        .expect_err("raw fetch must fail");
    assert_eq!(
        status.code(),
        tonic::Code::PermissionDenied,
        "raw gRPC status: {status:?}"
    );
}

/// Calls without the `workload.spiffe.io: true` header are refused with InvalidArgument.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_security_header_is_invalid_argument() {
    let env = Env::start("rs-header");
    let id = env.register("/rust/header", &[&Env::my_uid()], &[]);
    wait_for_svid(&env.agent.socket, &id).await;
    let mut raw = workload::client(&env.agent.socket)
        .await
        .expect("raw client");

    let status = match raw
        .fetch_x509svid(tonic::Request::new(pb::X509svidRequest {}))
        .await
    {
        Err(s) => s,
        Ok(resp) => resp
            .into_inner()
            .message()
            .await
            .expect_err("FetchX509SVID without the header must fail"),
    };
    assert_eq!(
        status.code(),
        tonic::Code::InvalidArgument,
        "FetchX509SVID: {status:?}"
    );

    let status = raw
        .fetch_jwtsvid(tonic::Request::new(pb::JwtsvidRequest {
            audience: vec!["a".into()],
            spiffe_id: String::new(),
        }))
        .await
        .expect_err("FetchJWTSVID without the header must fail");
    assert_eq!(
        status.code(),
        tonic::Code::InvalidArgument,
        "FetchJWTSVID: {status:?}"
    );

    let status = raw
        .validate_jwtsvid(tonic::Request::new(pb::ValidateJwtsvidRequest {
            audience: "a".into(),
            svid: "x.y.z".into(),
        }))
        .await
        .expect_err("ValidateJWTSVID without the header must fail");
    assert_eq!(
        status.code(),
        tonic::Code::InvalidArgument,
        "ValidateJWTSVID: {status:?}"
    );

    // The same call with the header works, so the refusal above was about the header.
    let svids = workload::fetch_x509(&env.agent.socket)
        .await
        .expect("with the header");
    assert_eq!(svids[0].spiffe_id, id);
}
