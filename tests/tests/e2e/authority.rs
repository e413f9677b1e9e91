//! Authority management end to end: `localauthority x509|jwt prepare|activate|taint|revoke` and
//! `upstreamauthority taint|revoke` against a real server and agent, with a Workload API stream
//! held open throughout (the new SVIDs and bundles must reach it without reconnecting), and
//! `UpstreamAuthority "disk"` checked with OpenSSL's path building.

use crate::{Env, TD, pem_certs};
use sigil_e2e::harness::{Agent, CliOutput, Server, TestDir, run};
use sigil_e2e::workload::{self, request};
use sigil_proto::workload as pb;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use tonic::Streaming;

/// The latest message of an open `FetchX509SVID` stream that satisfies `want`, waiting up to
/// `timeout` for it.
async fn next_matching(
    stream: &mut Streaming<pb::X509svidResponse>,
    timeout: Duration,
    what: &str,
    mut want: impl FnMut(&pb::X509svidResponse) -> bool,
) -> pb::X509svidResponse {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(left, stream.message())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .expect("FetchX509SVID stream failed")
            .expect("FetchX509SVID stream ended");
        if want(&msg) {
            return msg;
        }
    }
}

fn chain(msg: &pb::X509svidResponse) -> Vec<Vec<u8>> {
    sigil_spiffe::x509::parse_der_certs(&msg.svids[0].x509_svid).expect("SVID chain")
}

fn bundle(msg: &pb::X509svidResponse) -> Vec<Vec<u8>> {
    sigil_spiffe::x509::parse_der_certs(&msg.svids[0].bundle).expect("bundle")
}

/// The authority key ID of the leaf: which CA signed it.
fn signer_of(msg: &pb::X509svidResponse) -> String {
    let leaf = &chain(msg)[0];
    sigil_spiffe::x509::key_ids(leaf)
        .expect("leaf parses")
        .1
        .expect("leaf names its issuer's key")
}

fn ski(der: &[u8]) -> String {
    sigil_spiffe::x509::key_ids(der)
        .expect("certificate parses")
        .0
        .expect("subject key identifier")
}

fn state(s: &Server, kind: &str) -> serde_json::Value {
    s.cli(&["localauthority", kind, "show", "-output", "json"])
        .ok()
        .json()
}

fn refused(out: CliOutput, stderr: &str) {
    let out = out.fails();
    assert!(out.stderr.contains(stderr), "want {stderr:?} in {out}");
}

async fn jwt_kid(agent: &Agent, audience: &str) -> String {
    let mut c = workload::client(&agent.socket).await.expect("client");
    let resp = c
        .fetch_jwtsvid(request(pb::JwtsvidRequest {
            audience: vec![audience.into()],
            spiffe_id: String::new(),
        }))
        .await
        .expect("FetchJWTSVID")
        .into_inner();
    let token = &resp.svids[0].svid;
    sigil_spiffe::jwt::parse_unverified(token)
        .expect("token parses")
        .header["kid"]
        .as_str()
        .expect("kid")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x509_prepare_activate_taint_revoke_reach_an_open_stream() {
    let env = Env::start("authority-x509");
    let s = &env.server;
    let id = env.register("/web", &[&Env::my_uid()], &[]);
    sigil_e2e::harness::wait_for_svid(&env.agent.socket, &id).await;
    let mut c = workload::client(&env.agent.socket).await.expect("client");
    let mut stream = c
        .fetch_x509svid(request(pb::X509svidRequest {}))
        .await
        .expect("FetchX509SVID")
        .into_inner();
    let first = next_matching(&mut stream, Duration::from_secs(20), "an SVID", |m| {
        !m.svids.is_empty()
    })
    .await;

    let shown = state(s, "x509");
    let old_id = shown["active"]["authority_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(signer_of(&first), old_id, "{shown}");
    assert!(
        shown.get("prepared").is_none() && shown.get("old").is_none(),
        "{shown}"
    );
    let pretty = s.cli(&["localauthority", "x509", "show"]).ok().stdout;
    assert!(
        pretty.starts_with(&format!(
            "Active X.509 authority:\n  Authority ID: {old_id}\n  Expires at: "
        )) && pretty.contains(
            "  Upstream authority ID: No upstream authority\n\nPrepared X.509 authority:\n  No prepared X.509 authority found\n\nOld X.509 authority:\n  No old X.509 authority found"
        ),
        "{pretty}"
    );

    // Rules that need no state change.
    refused(
        s.cli(&["localauthority", "x509", "taint"]),
        "Error: an authority ID is required",
    );
    refused(
        s.cli(&["localauthority", "x509", "taint", "-authorityID", &old_id]),
        "could not taint X.509 authority: rpc error: code = InvalidArgument desc = unable to taint current local authority",
    );
    refused(
        s.cli(&["upstreamauthority", "taint", "-subjectKeyID", &old_id]),
        "code = FailedPrecondition desc = upstream authority is not configured",
    );

    // Prepare: the new root joins the bundle on the open stream; the SVID is unchanged.
    let prepared = s
        .cli(&["localauthority", "x509", "prepare", "-output", "json"])
        .ok()
        .json();
    let new_id = prepared["prepared_authority"]["authority_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(new_id, old_id);
    let msg = next_matching(&mut stream, Duration::from_secs(10), "two roots", |m| {
        bundle(m).len() == 2
    })
    .await;
    assert_eq!(signer_of(&msg), old_id);
    assert!(bundle(&msg).iter().any(|r| ski(r) == new_id));
    refused(
        s.cli(&["localauthority", "x509", "taint", "-authorityID", &new_id]),
        "only Old local authorities can be tainted",
    );
    refused(
        s.cli(&[
            "localauthority",
            "x509",
            "activate",
            "-authorityID",
            &old_id,
        ]),
        "code = InvalidArgument desc = unexpected authority ID",
    );

    // Activate: new SVIDs come from the new authority (existing ones rotate on their own).
    let out = s
        .cli(&[
            "localauthority",
            "x509",
            "activate",
            "-authorityID",
            &new_id,
        ])
        .ok();
    assert!(
        out.stdout.starts_with(&format!(
            "Activated X.509 authority:\n  Authority ID: {new_id}\n"
        )),
        "{out}"
    );
    let shown = state(s, "x509");
    assert_eq!(shown["active"]["authority_id"], new_id.as_str(), "{shown}");
    assert_eq!(shown["old"]["authority_id"], old_id.as_str(), "{shown}");
    refused(
        s.cli(&["localauthority", "x509", "revoke", "-authorityID", &old_id]),
        "it is not possible to revoke an untainted root CA",
    );

    // Taint: every SVID chained to the old authority is re-issued, on the stream already open.
    let tainted_at = Instant::now();
    let out = s
        .cli(&["localauthority", "x509", "taint", "-authorityID", &old_id])
        .ok();
    assert!(
        out.stdout.starts_with("Tainted X.509 authority:\n"),
        "{out}"
    );
    let msg = next_matching(
        &mut stream,
        Duration::from_secs(10),
        "an SVID from the new authority",
        |m| !m.svids.is_empty() && signer_of(m) == new_id,
    )
    .await;
    eprintln!("re-issued {:?} after the taint", tainted_at.elapsed());
    assert_eq!(bundle(&msg).len(), 2, "a tainted root is still trusted");
    let b = s.cli(&["bundle", "show", "-output", "json"]).ok().json();
    let marks: Vec<(String, bool)> = b["x509_authorities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let der = base64_decode(a["asn1"].as_str().unwrap());
            (ski(&der), a["tainted"].as_bool().unwrap())
        })
        .collect();
    assert!(marks.contains(&(old_id.clone(), true)), "{b}");
    assert!(marks.contains(&(new_id.clone(), false)), "{b}");
    refused(
        s.cli(&["localauthority", "x509", "taint", "-authorityID", &old_id]),
        "root CA is already tainted",
    );

    // Revoke: the old root leaves the bundle (sequence bumped) on the open stream.
    let seq_before = b["sequence_number"]
        .as_str()
        .unwrap()
        .parse::<u64>()
        .unwrap();
    s.cli(&["localauthority", "x509", "revoke", "-authorityID", &old_id])
        .ok();
    let msg = next_matching(&mut stream, Duration::from_secs(10), "one root", |m| {
        bundle(m).len() == 1
    })
    .await;
    assert_eq!(ski(&bundle(&msg)[0]), new_id);
    let b = s.cli(&["bundle", "show", "-output", "json"]).ok().json();
    let seq_after = b["sequence_number"]
        .as_str()
        .unwrap()
        .parse::<u64>()
        .unwrap();
    assert!(seq_after > seq_before, "{b}");
    assert_eq!(pem_certs(&s.bundle_pem()).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_taint_drops_cached_tokens_and_revoke_removes_the_key() {
    let env = Env::start("authority-jwt");
    let s = &env.server;
    let id = env.register("/jwt", &[&Env::my_uid()], &[]);
    sigil_e2e::harness::wait_for_svid(&env.agent.socket, &id).await;
    let old_kid = jwt_kid(&env.agent, "aud").await;
    assert_eq!(state(s, "jwt")["active"]["authority_id"], old_kid.as_str());
    // Cached: the same kid again.
    assert_eq!(jwt_kid(&env.agent, "aud").await, old_kid);

    let prepared = s
        .cli(&["localauthority", "jwt", "prepare", "-output", "json"])
        .ok()
        .json();
    let new_kid = prepared["prepared_authority"]["authority_id"]
        .as_str()
        .unwrap()
        .to_string();
    refused(
        s.cli(&["localauthority", "jwt", "revoke", "-authorityID", &new_kid]),
        "invalid authority ID: unable to use a prepared key",
    );
    s.cli(&[
        "localauthority",
        "jwt",
        "activate",
        "-authorityID",
        &new_kid,
    ])
    .ok();
    // Still the cached token, signed by the old key: activation alone does not drop it.
    assert_eq!(jwt_kid(&env.agent, "aud").await, old_kid);

    let out = s
        .cli(&[
            "localauthority",
            "jwt",
            "taint",
            "-authorityID",
            &old_kid,
            "-output",
            "json",
        ])
        .ok();
    assert_eq!(
        out.json(),
        serde_json::json!({"tainted_authority": {"authority_id": old_kid}})
    );
    sigil_e2e::harness::wait_until("a token from the new key", Duration::from_secs(10), || {
        let kid = futures::executor::block_on(jwt_kid(&env.agent, "aud"));
        (kid == new_kid).then_some(())
    });
    let b = s.cli(&["bundle", "show", "-output", "json"]).ok().json();
    let old = b["jwt_authorities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["key_id"] == old_kid.as_str())
        .cloned();
    assert_eq!(old.map(|k| k["tainted"].clone()), Some(true.into()), "{b}");

    s.cli(&["localauthority", "jwt", "revoke", "-authorityID", &old_kid])
        .ok();
    // The Workload API's JWT bundle no longer has the key.
    sigil_e2e::harness::wait_until(
        "the old key out of the JWT bundle",
        Duration::from_secs(10),
        || {
            let jwks = futures::executor::block_on(async {
                let mut c = workload::client(&env.agent.socket).await.ok()?;
                let mut st = c
                    .fetch_jwt_bundles(request(pb::JwtBundlesRequest {}))
                    .await
                    .ok()?
                    .into_inner();
                st.message().await.ok()?
            })?;
            let doc = String::from_utf8(jwks.bundles[&format!("spiffe://{TD}")].clone()).ok()?;
            (!doc.contains(&old_kid) && doc.contains(&new_kid)).then_some(())
        },
    );
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .expect("base64")
}

fn openssl(dir: &Path, args: &[&str]) {
    let mut cmd = Command::new("openssl");
    cmd.current_dir(dir).args(args);
    run(cmd, Duration::from_secs(30)).ok();
}

/// A self-signed CA `name.crt` / `name.key` (PKCS#8) in `dir`.
fn make_root(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
            "-days",
            "2",
            "-subj",
            &format!("/O=Upstream/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

fn upstream_server(dir: &Path, cert: &Path, key: &Path, bundle: Option<&Path>) -> Server {
    let bundle_line = bundle
        .map(|b| format!("      bundle_file_path = \"{}\"\n", b.display()))
        .unwrap_or_default();
    Server::start_with_config_file(
        dir,
        TD,
        &format!(
            "server {{\n}}\nplugins {{\n  UpstreamAuthority \"disk\" {{\n    plugin_data {{\n      cert_file_path = \"{}\"\n      key_file_path = \"{}\"\n{bundle_line}    }}\n  }}\n}}\n",
            cert.display(),
            key.display()
        ),
    )
}

/// `openssl verify` of the SVID's chain against the roots: OpenSSL's own path building.
fn openssl_verifies(dir: &Path, msg: &pb::X509svidResponse) {
    let chain = chain(msg);
    std::fs::write(
        dir.join("leaf.pem"),
        sigil_spiffe::x509::certs_to_pem(&chain[..1]),
    )
    .unwrap();
    std::fs::write(
        dir.join("untrusted.pem"),
        sigil_spiffe::x509::certs_to_pem(&chain[1..]),
    )
    .unwrap();
    std::fs::write(
        dir.join("roots.pem"),
        sigil_spiffe::x509::certs_to_pem(&bundle(msg)),
    )
    .unwrap();
    openssl(
        dir,
        &[
            "verify",
            "-CAfile",
            "roots.pem",
            "-untrusted",
            "untrusted.pem",
            "leaf.pem",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_disk_signs_the_ca_and_its_root_rotates_by_taint_and_revoke() {
    let dir = TestDir::new("authority-upstream");
    let up = dir.sub("upstream");
    std::fs::create_dir_all(&up).unwrap();
    make_root(&up, "root1");
    std::fs::copy(up.join("root1.crt"), up.join("ca.crt")).unwrap();
    std::fs::copy(up.join("root1.key"), up.join("ca.key")).unwrap();
    let server = upstream_server(dir.path(), &up.join("ca.crt"), &up.join("ca.key"), None);
    let node = server.id("/node");
    let token = server.token(Some(&node));
    let agent = Agent::start(dir.path(), "agent", &server, &token);
    server.create_entry(&node, &server.id("/up"), &[&Env::my_uid()], &[]);
    sigil_e2e::harness::wait_for_svid(&agent.socket, &server.id("/up")).await;

    let root1 = pem_certs(&std::fs::read_to_string(up.join("root1.crt")).unwrap());
    let root1_id = ski(&root1[0]);
    let mut c = workload::client(&agent.socket).await.expect("client");
    let mut stream = c
        .fetch_x509svid(request(pb::X509svidRequest {}))
        .await
        .expect("FetchX509SVID")
        .into_inner();
    let msg = next_matching(&mut stream, Duration::from_secs(20), "an SVID", |m| {
        !m.svids.is_empty()
    })
    .await;
    // [leaf, server CA]; the bundle is the upstream root only.
    assert_eq!(chain(&msg).len(), 2);
    assert_eq!(bundle(&msg), root1);
    openssl_verifies(dir.path(), &msg);
    let shown = state(&server, "x509");
    assert_eq!(
        shown["active"]["upstream_authority_subject_key_id"],
        root1_id.as_str(),
        "{shown}"
    );
    refused(
        server.cli(&["localauthority", "x509", "taint", "-authorityID", "00"]),
        "local authority can't be tainted if there is an upstream authority",
    );

    // The operator rotates the upstream: new files, prepare, activate.
    make_root(&up, "root2");
    std::fs::copy(up.join("root2.crt"), up.join("ca.crt")).unwrap();
    std::fs::copy(up.join("root2.key"), up.join("ca.key")).unwrap();
    let root2 = pem_certs(&std::fs::read_to_string(up.join("root2.crt")).unwrap());
    let root2_id = ski(&root2[0]);
    let prepared = server
        .cli(&["localauthority", "x509", "prepare", "-output", "json"])
        .ok()
        .json();
    assert_eq!(
        prepared["prepared_authority"]["upstream_authority_subject_key_id"],
        root2_id.as_str()
    );
    let new_id = prepared["prepared_authority"]["authority_id"]
        .as_str()
        .unwrap()
        .to_string();
    next_matching(&mut stream, Duration::from_secs(10), "both roots", |m| {
        bundle(m).len() == 2
    })
    .await;
    refused(
        server.cli(&["upstreamauthority", "taint", "-subjectKeyID", &root2_id]),
        "only upstream authorities signing an old authority can be used",
    );
    server
        .cli(&[
            "localauthority",
            "x509",
            "activate",
            "-authorityID",
            &new_id,
        ])
        .ok();
    refused(
        server.cli(&["upstreamauthority", "taint", "-subjectKeyID", &root2_id]),
        "unable to use upstream authority singing current authority",
    );
    let out = server
        .cli(&[
            "upstreamauthority",
            "taint",
            "-subjectKeyID",
            &root1_id.to_uppercase(),
        ])
        .ok();
    assert_eq!(
        out.stdout.trim_end(),
        format!("Tainted X.509 upstream authority:\n  Subject Key ID: {root1_id}")
    );
    // Every SVID chained to root1 is re-issued under the new CA, on the open stream.
    let msg = next_matching(
        &mut stream,
        Duration::from_secs(10),
        "an SVID under the new CA",
        |m| !m.svids.is_empty() && signer_of(m) == new_id,
    )
    .await;
    openssl_verifies(dir.path(), &msg);
    server
        .cli(&["upstreamauthority", "revoke", "-subjectKeyID", &root1_id])
        .ok();
    let msg = next_matching(&mut stream, Duration::from_secs(10), "root2 alone", |m| {
        bundle(m) == root2
    })
    .await;
    openssl_verifies(dir.path(), &msg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_disk_with_a_bundle_file_puts_intermediates_in_the_chain() {
    let dir = TestDir::new("authority-upstream-chain");
    let up = dir.sub("upstream");
    std::fs::create_dir_all(&up).unwrap();
    make_root(&up, "root");
    // An intermediate signed by the root: the server's upstream.
    openssl(
        &up,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "inter.key",
            "-out",
            "inter.csr",
            "-subj",
            "/O=Upstream/CN=intermediate",
        ],
    );
    std::fs::write(
        up.join("ext.cnf"),
        "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n",
    )
    .unwrap();
    openssl(
        &up,
        &[
            "x509",
            "-req",
            "-in",
            "inter.csr",
            "-CA",
            "root.crt",
            "-CAkey",
            "root.key",
            "-CAcreateserial",
            "-out",
            "inter.crt",
            "-days",
            "1",
            "-extfile",
            "ext.cnf",
        ],
    );
    let server = upstream_server(
        dir.path(),
        &up.join("inter.crt"),
        &up.join("inter.key"),
        Some(&up.join("root.crt")),
    );
    let node = server.id("/node");
    let token = server.token(Some(&node));
    let agent = Agent::start(dir.path(), "agent", &server, &token);
    server.create_entry(&node, &server.id("/chain"), &[&Env::my_uid()], &[]);
    let svid = sigil_e2e::harness::wait_for_svid(&agent.socket, &server.id("/chain")).await;
    let inter = pem_certs(&std::fs::read_to_string(up.join("inter.crt")).unwrap());
    let root = pem_certs(&std::fs::read_to_string(up.join("root.crt")).unwrap());
    // [leaf, server CA, upstream intermediate]; the bundle holds the root only.
    assert_eq!(svid.chain.len(), 3);
    assert_eq!(svid.chain[2], inter[0]);
    assert_eq!(svid.bundle, root);
    let msg = pb::X509svidResponse {
        svids: vec![pb::X509svid {
            x509_svid: svid.chain.concat(),
            bundle: svid.bundle.concat(),
            ..Default::default()
        }],
        ..Default::default()
    };
    openssl_verifies(dir.path(), &msg);
    // The server CA never outlives the upstream certificate.
    let ca_not_after = sigil_spiffe::x509::not_after_unix(&svid.chain[1]).unwrap();
    assert!(ca_not_after <= sigil_spiffe::x509::not_after_unix(&inter[0]).unwrap());
}
