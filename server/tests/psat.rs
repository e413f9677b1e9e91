//! k8s_psat node attestation against a real `sigil-server` process whose cluster's API server is
//! `sigil-fake-kube` (reached through the `kube_config_file` it writes), so tokens are signed
//! JWTs bound to pods and TokenReview checks them for real: attestation and its refusals as
//! agents see them, re-attestation to the same ID, bans, node-alias entries (`entry create
//! -node`) authorizing only the agents whose selectors match, and `agent show`. Two refusals
//! FakeKube cannot lead to are left to a minimal stub (`refusals_fake_kube_cannot_produce`).

mod common;

use std::convert::Infallible;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Launch, Server, TD, csr, node_client};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rcgen::KeyPair;
use serde_json::{Value, json};
use sigil_fake_kube::FakeKube;
use sigil_proto::admin as apb;
use sigil_proto::agent as pb;

/// The audience the server asks TokenReview for: k8s_psat's default, which the config keeps.
const AUDIENCE: &str = "spire-server";
/// The service account the config allows.
const AGENT_SA: (&str, &str) = ("spire", "spire-agent");
const TOKEN_TTL: Duration = Duration::from_secs(600);

// === the cluster ===

/// Node `node` labelled `zone`, with UID `uid-<node>`.
fn apply_node(kube: &FakeKube, node: &str, zone: &str) {
    kube.apply(json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": node, "uid": format!("uid-{node}"), "labels": {"zone": zone}}}));
}

/// Pod `ns/pod` with UID `uid`, scheduled on `node`.
fn apply_pod(kube: &FakeKube, ns: &str, pod: &str, uid: &str, node: &str) {
    kube.apply(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"namespace": ns, "name": pod, "uid": uid, "labels": {"app": "spire-agent"}},
        "spec": {"nodeName": node}, "status": {"hostIP": "10.0.0.1"}}));
}

/// Service account `ns:sa` and a pod of it on `node` (in `zone`); UIDs are `uid-<name>`.
fn add(kube: &FakeKube, (ns, sa): (&str, &str), pod: &str, node: &str, zone: &str) {
    kube.apply(json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"namespace": ns, "name": sa}}));
    apply_node(kube, node, zone);
    apply_pod(kube, ns, pod, &format!("uid-{pod}"), node);
}

/// A token of `ns:sa` bound to `pod` (as kubelet projects one into the agent's pod) for
/// `audience`.
fn token(kube: &FakeKube, (ns, sa): (&str, &str), pod: &str, audience: &str) -> String {
    kube.issue_token(ns, sa, &[audience], Some(pod), TOKEN_TTL)
        .unwrap()
}

/// How many TokenReviews `kube` was asked.
fn token_reviews(kube: &FakeKube) -> usize {
    kube.requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path == "/apis/authentication.k8s.io/v1/tokenreviews")
        .count()
}

/// A server whose `demo` cluster is reached through the kubeconfig `write_kubeconfig` writes
/// at the path it is given.
async fn start(write_kubeconfig: impl FnOnce(&Path)) -> Server {
    common::start_with(|l| {
        let kubeconfig = l.dir.join("kubeconfig");
        write_kubeconfig(&kubeconfig);
        Launch::Config(format!(
            r#"
server {{
    trust_domain = "{TD}"
    data_dir = "{data}"
    bind_address = "127.0.0.1"
    bind_port = "{port}"
    socket_path = "{admin}"
    log_level = "WARN"
}}
plugins {{
    NodeAttestor "join_token" {{
        plugin_data {{}}
    }}
    NodeAttestor "k8s_psat" {{
        plugin_data {{
            clusters = {{
                "demo" = {{
                    service_account_allow_list = ["{ns}:{sa}"]
                    kube_config_file = "{kubeconfig}"
                    allowed_node_label_keys = ["zone"]
                }}
            }}
        }}
    }}
}}
"#,
            data = l.data_dir.display(),
            port = l.port,
            admin = l.admin.display(),
            ns = AGENT_SA.0,
            sa = AGENT_SA.1,
            kubeconfig = kubeconfig.display(),
        ))
    })
    .await
}

/// A server whose `demo` cluster is `kube`.
async fn start_for(kube: &FakeKube) -> Server {
    start(|path| kube.write_kubeconfig(path).unwrap()).await
}

fn payload(cluster: &str, token: &str) -> Vec<u8> {
    sigil_k8s_psat::AttestationData {
        cluster: cluster.into(),
        token: token.into(),
    }
    .to_json()
}

/// AttestAgent with a k8s_psat payload; the SVID chain and its key.
async fn attest_psat(
    s: &Server,
    payload: Vec<u8>,
) -> Result<(sigil_proto::types::X509Svid, KeyPair), tonic::Status> {
    let key = KeyPair::generate().unwrap();
    let resp = node_client(s, None)
        .await
        .attest_agent(pb::AttestAgentRequest {
            attestation_type: "k8s_psat".into(),
            payload,
            csr: csr(&key),
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok((resp.svid.unwrap(), key))
}

async fn get_agent(s: &Server, id: &str) -> apb::Agent {
    s.admin_client()
        .await
        .get_agent(apb::GetAgentRequest {
            spiffe_id: id.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

fn selectors(a: &apb::Agent) -> Vec<String> {
    a.selectors
        .iter()
        .map(|s| format!("{}:{}", s.r#type, s.value))
        .collect()
}

/// `sigil-server <args> -socketPath <admin>`: (exit code, stdout, stderr).
fn cli(s: &Server, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sigil-server"))
        .args(args)
        .arg("-socketPath")
        .arg(&s.admin)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_refused(
    r: Result<(sigil_proto::types::X509Svid, KeyPair), tonic::Status>,
    code: tonic::Code,
    msg: &str,
) {
    match r {
        Ok((svid, _)) => panic!("attested as {}, want {code:?} {msg:?}", svid.spiffe_id),
        Err(e) => {
            assert_eq!(e.code(), code, "{}", e.message());
            assert!(e.message().contains(msg), "{:?} lacks {msg:?}", e.message());
        }
    }
}

#[tokio::test]
async fn attestation_reattestation_and_refusals() {
    let kube = FakeKube::start().await.unwrap();
    add(&kube, AGENT_SA, "agent-a", "node-1", "z1");
    let intruder = ("default", "intruder");
    add(&kube, intruder, "evil", "node-1", "z1");
    let tok_a = token(&kube, AGENT_SA, "agent-a", AUDIENCE);
    let tok_x = token(&kube, intruder, "evil", AUDIENCE);
    let s = start_for(&kube).await;
    let id = format!("spiffe://{TD}/spire/agent/k8s_psat/demo/uid-node-1");

    let (svid, key) = attest_psat(&s, payload("demo", &tok_a)).await.unwrap();
    assert_eq!(svid.spiffe_id, id);
    assert_eq!(
        sigil_spiffe::x509::verify_svid_chain(&svid.cert_chain, &s.roots, sigil_server::now_unix())
            .unwrap()
            .to_string(),
        id
    );
    // One TokenReview, which asked for "spire-server": the token carries only that audience,
    // and a review authenticates a token only for requested audiences it carries. (The refusal
    // of a token for another audience below quotes the audiences asked: exactly that one.)
    assert_eq!(token_reviews(&kube), 1);
    let agent = get_agent(&s, &id).await;
    assert_eq!(agent.attestation_type, "k8s_psat");
    assert!(agent.can_reattest);
    assert_eq!(
        selectors(&agent),
        [
            "k8s_psat:agent_node_ip:10.0.0.1",
            "k8s_psat:agent_node_label:zone:z1",
            "k8s_psat:agent_node_name:node-1",
            "k8s_psat:agent_node_uid:uid-node-1",
            "k8s_psat:agent_ns:spire",
            "k8s_psat:agent_pod_name:agent-a",
            "k8s_psat:agent_pod_uid:uid-agent-a",
            "k8s_psat:agent_sa:spire-agent",
            "k8s_psat:cluster:demo",
        ],
        "stored sorted, as SPIRE does"
    );
    let first_serial = agent.x509_svid_serial_number.clone();

    // A re-attestable agent renews by attesting again (SPIRE's rule).
    let mut c = node_client(&s, Some((svid.cert_chain[0].clone(), &key))).await;
    let e = c
        .renew_agent(pb::RenewAgentRequest { csr: csr(&key) })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    assert_eq!(e.message(), "agent must reattest instead of renew");

    // Kubelet rotated the token and the node moved zone: attesting again gives the same ID,
    // a new serial and the new selectors; the previous SVID is no longer accepted.
    let tok_a2 = token(&kube, AGENT_SA, "agent-a", AUDIENCE);
    apply_node(&kube, "node-1", "z2");
    let (again, _) = attest_psat(&s, payload("demo", &tok_a2)).await.unwrap();
    assert_eq!(again.spiffe_id, id);
    let agent = get_agent(&s, &id).await;
    assert_ne!(agent.x509_svid_serial_number, first_serial);
    assert!(selectors(&agent).contains(&"k8s_psat:agent_node_label:zone:z2".to_string()));
    assert!(!selectors(&agent).contains(&"k8s_psat:agent_node_label:zone:z1".to_string()));
    let e = c.sync_entries(pb::SyncEntriesRequest {}).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    assert!(
        e.message()
            .contains("SVID does not match expected serial number"),
        "{}",
        e.message()
    );

    // Refusals reach the agent with SPIRE's code and reason. The API server's TokenReview
    // refuses with an error (which SPIRE reports as a failed review, Internal) a token signed by
    // another cluster's API server, and one issued for another audience (its own, which a review
    // asking for no audience would accept). `refusals_fake_kube_cannot_produce` covers a review
    // that does not authenticate without an error.
    let review_error = |reason: &str| {
        format!(
            "nodeattestor(k8s_psat): unable to validate token with TokenReview API for cluster \"demo\": token review API response contains an error: [invalid bearer token, {reason}"
        )
    };
    let other_cluster = FakeKube::start().await.unwrap();
    add(&other_cluster, AGENT_SA, "agent-a", "node-1", "z1");
    let foreign = token(&other_cluster, AGENT_SA, "agent-a", AUDIENCE);
    assert_refused(
        attest_psat(&s, payload("demo", &foreign)).await,
        tonic::Code::Internal,
        &review_error("go-jose/go-jose: error in cryptographic primitive"),
    );
    let api_audience = token(&kube, AGENT_SA, "agent-a", sigil_fake_kube::API_AUDIENCE);
    assert_refused(
        attest_psat(&s, payload("demo", &api_audience)).await,
        tonic::Code::Internal,
        &review_error(&format!(
            "token audiences [\"{}\"] is invalid for the target audiences [\"{AUDIENCE}\"]",
            sigil_fake_kube::API_AUDIENCE
        )),
    );
    assert_refused(
        attest_psat(&s, payload("demo", &tok_x)).await,
        tonic::Code::PermissionDenied,
        "nodeattestor(k8s_psat): \"default:intruder\" is not an allowed service account for cluster \"demo\"",
    );
    assert_refused(
        attest_psat(&s, payload("prod", &tok_a2)).await,
        tonic::Code::InvalidArgument,
        "nodeattestor(k8s_psat): not configured for cluster \"prod\"",
    );
    assert_refused(
        attest_psat(&s, b"{".to_vec()).await,
        tonic::Code::InvalidArgument,
        "nodeattestor(k8s_psat): failed to unmarshal data payload",
    );
    // The pod was deleted, then re-created under the same name: the old pod's token no longer
    // attests. TokenReview itself refuses it, as the real one does (the token is bound to the
    // old pod's UID); `refusals_fake_kube_cannot_produce` covers the server's own UID check.
    kube.delete("Pod", Some("spire"), "agent-a").unwrap();
    let invalidated = review_error("service account token has been invalidated");
    assert_refused(
        attest_psat(&s, payload("demo", &tok_a2)).await,
        tonic::Code::Internal,
        &invalidated,
    );
    apply_pod(&kube, "spire", "agent-a", "uid-new", "node-1");
    assert_refused(
        attest_psat(&s, payload("demo", &tok_a2)).await,
        tonic::Code::Internal,
        &invalidated,
    );
    let key = KeyPair::generate().unwrap();
    let e = node_client(&s, None)
        .await
        .attest_agent(pb::AttestAgentRequest {
            attestation_type: "aws_iid".into(),
            payload: b"x".to_vec(),
            csr: csr(&key),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(
        e.message()
            .contains("could not find node attestor type \"aws_iid\""),
        "{}",
        e.message()
    );

    // Evicted: the agent (of the re-created pod, on the same node) attests again with a fresh
    // token. Banned: refused.
    let tok_a3 = token(&kube, AGENT_SA, "agent-a", AUDIENCE);
    let mut a = s.admin_client().await;
    a.evict_agent(apb::AgentIdRequest {
        spiffe_id: id.clone(),
    })
    .await
    .unwrap();
    attest_psat(&s, payload("demo", &tok_a3)).await.unwrap();
    a.ban_agent(apb::AgentIdRequest {
        spiffe_id: id.clone(),
    })
    .await
    .unwrap();
    assert_refused(
        attest_psat(&s, payload("demo", &tok_a3)).await,
        tonic::Code::PermissionDenied,
        "failed to attest: agent is banned",
    );

    // `agent show`, as spire-server prints it: the agent, a blank line, its selectors.
    let (code, out, err) = cli(&s, &["agent", "show", "-spiffeID", &id]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "Found an attested agent given its SPIFFE ID");
    assert_eq!(lines[2], format!("SPIFFE ID         : {id}"));
    assert_eq!(lines[3], "Attestation type  : k8s_psat");
    assert!(lines[4].starts_with("Expiration time   : 20") && lines[4].ends_with(" +0000 UTC"));
    assert_eq!(lines[5], "Banned            : true");
    assert_eq!(lines[6], "Can re-attest     : true");
    assert_eq!(lines[7], "");
    assert_eq!(
        lines[8],
        "Selectors         : k8s_psat:agent_node_ip:10.0.0.1"
    );
    assert_eq!(
        lines.last().copied(),
        Some("Selectors         : k8s_psat:cluster:demo")
    );
    assert_eq!(lines.len(), 8 + 9);
    let (_, out, _) = cli(&s, &["agent", "list", "-output", "json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["agents"][0]["can_reattest"], true);
    assert_eq!(
        v["agents"][0]["selectors"][8],
        json!({"type": "k8s_psat", "value": "cluster:demo"})
    );
}

/// A node alias made with `entry create -node` is held by exactly the agents whose selectors
/// include all of its own: a workload entry parented to it is signed for (and synced to) an
/// agent in zone z1, and refused to an agent of the same cluster in zone z2.
#[tokio::test]
async fn node_alias_authorizes_matching_agents_only() {
    let kube = FakeKube::start().await.unwrap();
    add(&kube, AGENT_SA, "agent-1", "node-1", "z1");
    add(&kube, AGENT_SA, "agent-2", "node-2", "z2");
    let tok_1 = token(&kube, AGENT_SA, "agent-1", AUDIENCE);
    let tok_2 = token(&kube, AGENT_SA, "agent-2", AUDIENCE);
    let s = start_for(&kube).await;
    let (svid1, key1) = attest_psat(&s, payload("demo", &tok_1)).await.unwrap();
    let (svid2, key2) = attest_psat(&s, payload("demo", &tok_2)).await.unwrap();

    let alias = format!("spiffe://{TD}/k8s-cluster/demo/z1");
    let (code, out, err) = cli(
        &s,
        &[
            "entry",
            "create",
            "-node",
            "-spiffeID",
            &alias,
            "-selector",
            "k8s_psat:cluster:demo",
            "-selector",
            "k8s_psat:agent_node_label:zone:z1",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("Parent ID        : spiffe://{TD}/spire/server")),
        "{out}"
    );
    // spire-server's validation of -node.
    let (code, _, err) = cli(
        &s,
        &[
            "entry",
            "create",
            "-node",
            "-spiffeID",
            &alias,
            "-selector",
            "a:b",
            "-federatesWith",
            "spiffe://other.org",
        ],
    );
    assert_eq!(
        (code, err.trim()),
        (1, "Error: node entries can not federate")
    );
    let (code, _, err) = cli(
        &s,
        &["entry", "create", "-spiffeID", &alias, "-selector", "a:b"],
    );
    assert_eq!(
        (code, err.trim()),
        (
            1,
            "Error: a parent ID is required if the node flag is not set"
        )
    );

    let (code, out, err) = cli(
        &s,
        &[
            "entry",
            "create",
            "-parentID",
            &alias,
            "-spiffeID",
            &format!("spiffe://{TD}/web"),
            "-selector",
            "unix:uid:1000",
            "-output",
            "json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let web = v["results"][0]["entry"]["id"].as_str().unwrap().to_string();

    let s = &s;
    let sign = |svid: sigil_proto::types::X509Svid, key: KeyPair, web: String| async move {
        let mut c = node_client(s, Some((svid.cert_chain[0].clone(), &key))).await;
        let wkey = KeyPair::generate().unwrap();
        let res = c
            .sign_x509_svids(pb::SignX509SvidsRequest {
                params: vec![pb::SvidParams {
                    entry_id: web,
                    csr: csr(&wkey),
                }],
            })
            .await
            .unwrap()
            .into_inner()
            .results;
        let mut sync = c
            .sync_entries(pb::SyncEntriesRequest {})
            .await
            .unwrap()
            .into_inner();
        let first = sync.message().await.unwrap().unwrap();
        let synced: Vec<String> = first.entries.iter().map(|e| e.spiffe_id.clone()).collect();
        (res[0].status.clone().unwrap().code, synced)
    };
    let (code1, synced1) = sign(svid1, key1, web.clone()).await;
    assert_eq!(code1, 0);
    assert_eq!(synced1, [format!("spiffe://{TD}/web")]);
    let (code2, synced2) = sign(svid2, key2, web.clone()).await;
    assert_eq!(code2, tonic::Code::PermissionDenied as i32);
    assert!(synced2.is_empty(), "{synced2:?}");
}

// === what FakeKube cannot produce ===

/// Two refusals FakeKube cannot lead to, from a minimal stub API server instead:
/// - A review that does not authenticate and gives no error: the real API server answers so
///   for a token none of its authenticators takes up (the service account one skips a token
///   that is not a JWT of its issuer), but FakeKube's review always says why it refuses.
/// - A pod re-created under the same name between the TokenReview and the pod GET: the server
///   compares the pod UID the review vouched for with the pod it gets, so the old pod's token
///   does not attest as the new pod. FakeKube serves both calls from one consistent store and
///   has no hook between requests, so a re-created pod already fails the review (see
///   `attestation_reattestation_and_refusals`).
#[tokio::test]
async fn refusals_fake_kube_cannot_produce() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(
                TokioIo::new(stream),
                hyper::service::service_fn(stub_answer),
            );
            tokio::spawn(conn);
        }
    });
    let s = start(|path| {
        let config = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "stub", "cluster": {"server": format!("http://127.0.0.1:{port}")}}],
            "users": [{"name": "stub", "user": {"token": "reviewer-token"}}],
            "contexts": [{"name": "stub", "context": {"cluster": "stub", "user": "stub"}}],
            "current-context": "stub",
        });
        std::fs::write(path, config.to_string()).unwrap();
    })
    .await;
    assert_refused(
        attest_psat(&s, payload("demo", "unknown-token")).await,
        tonic::Code::PermissionDenied,
        "nodeattestor(k8s_psat): token not authenticated according to TokenReview API for cluster \"demo\"",
    );
    assert_refused(
        attest_psat(&s, payload("demo", RACED_TOKEN)).await,
        tonic::Code::PermissionDenied,
        "nodeattestor(k8s_psat): pod UID mismatch for pod \"agent-a\" in cluster \"demo\": token bound to pod UID \"uid-agent-a\"",
    );
}

/// The token the stub's review authenticates.
const RACED_TOKEN: &str = "token-of-the-old-agent-a";

/// The stub's answers: TokenReview authenticates [`RACED_TOKEN`] as `spire:spire-agent` bound
/// to pod `agent-a` with UID `uid-agent-a` (checked before the re-creation), and no other
/// token, without an error; the pod GET finds `agent-a` with UID `uid-new` (after it).
async fn stub_answer(
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let (code, answer) = match req.uri().path() {
        "/apis/authentication.k8s.io/v1/tokenreviews" => {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let mut review: Value = serde_json::from_slice(&body).unwrap();
            review["status"] = if review["spec"]["token"] == RACED_TOKEN {
                json!({
                    "authenticated": true,
                    "user": {
                        "username": "system:serviceaccount:spire:spire-agent",
                        "extra": {
                            "authentication.kubernetes.io/pod-name": ["agent-a"],
                            "authentication.kubernetes.io/pod-uid": ["uid-agent-a"]
                        }
                    },
                    "audiences": review["spec"]["audiences"].clone(),
                })
            } else {
                json!({"authenticated": false, "user": {}})
            };
            (201, review)
        }
        "/api/v1/namespaces/spire/pods/agent-a" => (
            200,
            json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"namespace": "spire", "name": "agent-a", "uid": "uid-new"},
                   "spec": {"nodeName": "node-1"}}),
        ),
        path => (
            404,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                   "message": format!("{path} not found"), "reason": "NotFound", "code": 404}),
        ),
    };
    Ok(hyper::Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(answer.to_string())))
        .unwrap())
}
