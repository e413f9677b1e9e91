//! The agent API against a real `sigil-server` process: join-token attestation (single use),
//! mTLS-only calls, authorization of CSRs, eviction/ban, and a 100k-entry sync.

use rcgen::{CertificateParams, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use sigil_proto::admin as apb;
use sigil_proto::agent as pb;
use sigil_proto::agent::node_client::NodeClient;
use sigil_proto::types;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

const TD: &str = "example.org";

struct Server {
    child: Child,
    _dir: tempfile::TempDir,
    admin: PathBuf,
    port: u16,
    roots: Vec<Vec<u8>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let admin = dir.path().join("admin.sock");
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_sigil-server"))
        .args([
            "run",
            "-trustDomain",
            TD,
            "-bindAddress",
            "127.0.0.1",
            "-logLevel",
            "warn",
        ])
        .arg("-serverPort")
        .arg(port.to_string())
        .arg("-dataDir")
        .arg(dir.path().join("data"))
        .arg("-socketPath")
        .arg(&admin)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let roots = loop {
        if let Ok(mut c) = sigil_server::cli::connect(admin.to_str().unwrap()).await
            && let Ok(b) = c.get_bundle(apb::GetBundleRequest {}).await
        {
            break b.into_inner().x509_authorities;
        }
        assert!(Instant::now() < deadline, "server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    Server {
        child,
        _dir: dir,
        admin,
        port,
        roots,
    }
}

async fn node_client(s: &Server, client_cert: Option<(Vec<u8>, &KeyPair)>) -> NodeClient<Channel> {
    // The server's SVID, verified properly: chain to the bundle and the server's SPIFFE ID.
    let verifier = sigil_tls::SvidVerifier::new(
        sigil_tls::Roots::fixed(s.roots.clone()),
        sigil_tls::Authorizer::Id(format!("spiffe://{TD}/spire/server").parse().unwrap()),
    );
    let b = rustls::ClientConfig::builder_with_provider(sigil_tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut cfg = match client_cert {
        Some((cert, key)) => b
            .with_client_auth_cert(
                vec![CertificateDer::from(cert)],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap(),
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let port = s.port;
    let ch = tonic::transport::Endpoint::try_from("http://127.0.0.1")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let connector = connector.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
                let tls = connector
                    .connect(ServerName::try_from("sigil-server").unwrap(), tcp)
                    .await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await
        .unwrap();
    NodeClient::new(ch).max_decoding_message_size(64 << 20)
}

fn csr(key: &KeyPair) -> Vec<u8> {
    CertificateParams::default()
        .serialize_request(key)
        .unwrap()
        .der()
        .to_vec()
}

async fn token(s: &Server, alias: &str) -> String {
    let mut c = sigil_server::cli::connect(s.admin.to_str().unwrap())
        .await
        .unwrap();
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
    let mut c = sigil_server::cli::connect(s.admin.to_str().unwrap())
        .await
        .unwrap();
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
    let mut admin = sigil_server::cli::connect(s.admin.to_str().unwrap())
        .await
        .unwrap();
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

    async fn snapshot(stream: &mut tonic::Streaming<pb::SyncEntriesResponse>) -> (usize, usize) {
        let mut n = 0;
        let mut chunks = 0;
        loop {
            let m = tokio::time::timeout(Duration::from_secs(120), stream.message())
                .await
                .expect("sync stream stalled")
                .unwrap()
                .unwrap();
            if chunks == 0 {
                assert!(m.bundle.is_some(), "first chunk carries the bundle");
            }
            chunks += 1;
            n += m.entries.len();
            if m.last {
                return (n, chunks);
            }
        }
    }
    // Only the alias entry at first.
    assert_eq!(snapshot(&mut stream).await.0, 1);

    // A change is pushed without any polling.
    create(
        &s,
        vec![entry(&format!("spiffe://{TD}/one"), &node, "unix:uid:1")],
    )
    .await;
    assert_eq!(snapshot(&mut stream).await.0, 2);

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
    // Writes coalesce: read snapshots until one holds everything.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let (n, chunks) = snapshot(&mut stream).await;
        if n == N + 2 {
            assert!(chunks > 1, "100k entries must arrive in several chunks");
            break;
        }
        assert!(n < N + 2, "more entries than created: {n}");
        assert!(Instant::now() < deadline, "never saw all entries");
    }
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
