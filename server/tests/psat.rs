//! k8s_psat node attestation against a real `sigil-server` process whose cluster's API server is
//! a small stub (TokenReview, pod and node GETs over plain HTTP, reached through the
//! `kube_config_file` it writes): attestation and its refusals as agents see them,
//! re-attestation to the same ID, bans, node-alias entries (`entry create -node`) authorizing
//! only the agents whose selectors match, and `agent show`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rcgen::{CertificateParams, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use serde_json::{Value, json};
use sigil_proto::admin as apb;
use sigil_proto::agent as pb;
use sigil_proto::agent::node_client::NodeClient;
use tonic::transport::Channel;

const TD: &str = "example.org";

// === the API server stub ===

/// What the stub API server knows: tokens (→ the pod they are bound to) and objects.
#[derive(Default)]
struct Cluster {
    /// token → (namespace, service account, pod name, pod UID).
    tokens: HashMap<String, (String, String, String, String)>,
    pods: HashMap<(String, String), Value>,
    nodes: HashMap<String, Value>,
    /// The audiences of every TokenReview asked.
    asked: Vec<Value>,
}

#[derive(Clone, Default)]
struct KubeStub(Arc<Mutex<Cluster>>);

impl KubeStub {
    /// Serves on a free port; returns the kubeconfig pointing at it.
    async fn start(&self, dir: &Path) -> PathBuf {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let me = me.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let me = me.clone();
                            async move { Ok::<_, std::convert::Infallible>(me.answer(req).await) }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: stub\n  cluster:\n    server: http://127.0.0.1:{port}\ncontexts:\n- name: stub\n  context:\n    cluster: stub\n    user: stub\ncurrent-context: stub\nusers:\n- name: stub\n  user:\n    token: reviewer-token\n"
            ),
        )
        .unwrap();
        path
    }

    async fn answer(
        &self,
        req: hyper::Request<hyper::body::Incoming>,
    ) -> hyper::Response<Full<Bytes>> {
        let (parts, body) = req.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        let path = parts.uri.path().to_string();
        let mut c = self.0.lock().unwrap();
        let found = |v: Option<&Value>| match v {
            Some(v) => (200, v.clone()),
            None => (
                404,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                       "message": format!("{path} not found"), "reason": "NotFound", "code": 404}),
            ),
        };
        let (code, answer) = if path == "/apis/authentication.k8s.io/v1/tokenreviews" {
            let mut review: Value = serde_json::from_slice(&body).unwrap();
            let audiences = review["spec"]["audiences"].clone();
            c.asked.push(audiences.clone());
            let token = review["spec"]["token"].as_str().unwrap_or_default();
            review["status"] = match c.tokens.get(token) {
                Some((ns, sa, pod, uid)) => json!({
                    "authenticated": true,
                    "user": {
                        "username": format!("system:serviceaccount:{ns}:{sa}"),
                        "extra": {
                            "authentication.kubernetes.io/pod-name": [pod],
                            "authentication.kubernetes.io/pod-uid": [uid]
                        }
                    },
                    "audiences": audiences
                }),
                None => json!({"authenticated": false}),
            };
            (201, review)
        } else if let Some(rest) = path.strip_prefix("/api/v1/namespaces/") {
            let (ns, name) = rest.split_once("/pods/").unwrap();
            found(c.pods.get(&(ns.to_string(), name.to_string())))
        } else if let Some(name) = path.strip_prefix("/api/v1/nodes/") {
            found(c.nodes.get(name))
        } else {
            (404, json!({}))
        };
        hyper::Response::builder()
            .status(code)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(answer.to_string())))
            .unwrap()
    }

    /// A node and a pod of service account `ns:sa` on it, with a token bound to the pod.
    fn add(&self, token: &str, (ns, sa): (&str, &str), pod: &str, node: &str, zone: &str) {
        let mut c = self.0.lock().unwrap();
        let pod_uid = format!("uid-{pod}");
        c.tokens.insert(
            token.into(),
            (ns.into(), sa.into(), pod.into(), pod_uid.clone()),
        );
        c.pods.insert(
            (ns.into(), pod.into()),
            json!({"metadata": {"namespace": ns, "name": pod, "uid": pod_uid,
                                "labels": {"app": "spire-agent"}},
                   "spec": {"nodeName": node}, "status": {"hostIP": "10.0.0.1"}}),
        );
        c.nodes.insert(
            node.into(),
            json!({"metadata": {"name": node, "uid": format!("uid-{node}"),
                                "labels": {"zone": zone}}}),
        );
    }
}

// === the server ===

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

/// A server whose `demo` cluster is served by `kube`.
async fn start(kube: &KubeStub) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = kube.start(dir.path()).await;
    let admin = dir.path().join("admin.sock");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let conf = dir.path().join("server.conf");
    std::fs::write(
        &conf,
        format!(
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
                    service_account_allow_list = ["spire:spire-agent"]
                    kube_config_file = "{kubeconfig}"
                    allowed_node_label_keys = ["zone"]
                }}
            }}
        }}
    }}
}}
"#,
            data = dir.path().join("data").display(),
            admin = admin.display(),
            kubeconfig = kubeconfig.display(),
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_sigil-server"))
        .arg("run")
        .arg("-config")
        .arg(&conf)
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
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }))
        .await
        .unwrap();
    NodeClient::new(ch)
}

fn csr(key: &KeyPair) -> Vec<u8> {
    CertificateParams::default()
        .serialize_request(key)
        .unwrap()
        .der()
        .to_vec()
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

async fn admin(s: &Server) -> sigil_proto::admin::admin_client::AdminClient<Channel> {
    sigil_server::cli::connect(s.admin.to_str().unwrap())
        .await
        .unwrap()
}

async fn get_agent(s: &Server, id: &str) -> apb::Agent {
    admin(s)
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
    let kube = KubeStub::default();
    kube.add("tok-a", ("spire", "spire-agent"), "agent-a", "node-1", "z1");
    kube.add("tok-x", ("default", "intruder"), "evil", "node-1", "z1");
    let s = start(&kube).await;
    let id = format!("spiffe://{TD}/spire/agent/k8s_psat/demo/uid-node-1");

    let (svid, key) = attest_psat(&s, payload("demo", "tok-a")).await.unwrap();
    assert_eq!(svid.spiffe_id, id);
    assert_eq!(
        sigil_spiffe::x509::verify_svid_chain(&svid.cert_chain, &s.roots, sigil_server::now_unix())
            .unwrap()
            .to_string(),
        id
    );
    assert_eq!(kube.0.lock().unwrap().asked, [json!(["spire-server"])]);
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
    kube.add(
        "tok-a2",
        ("spire", "spire-agent"),
        "agent-a",
        "node-1",
        "z2",
    );
    let (again, _) = attest_psat(&s, payload("demo", "tok-a2")).await.unwrap();
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

    // Refusals reach the agent with SPIRE's code and reason.
    assert_refused(
        attest_psat(&s, payload("demo", "unknown-token")).await,
        tonic::Code::PermissionDenied,
        "nodeattestor(k8s_psat): token not authenticated according to TokenReview API for cluster \"demo\"",
    );
    assert_refused(
        attest_psat(&s, payload("demo", "tok-x")).await,
        tonic::Code::PermissionDenied,
        "nodeattestor(k8s_psat): \"default:intruder\" is not an allowed service account for cluster \"demo\"",
    );
    assert_refused(
        attest_psat(&s, payload("prod", "tok-a2")).await,
        tonic::Code::InvalidArgument,
        "nodeattestor(k8s_psat): not configured for cluster \"prod\"",
    );
    assert_refused(
        attest_psat(&s, b"{".to_vec()).await,
        tonic::Code::InvalidArgument,
        "nodeattestor(k8s_psat): failed to unmarshal data payload",
    );
    // The pod was re-created under the same name: the old pod's token no longer attests.
    kube.0
        .lock()
        .unwrap()
        .pods
        .get_mut(&("spire".into(), "agent-a".into()))
        .unwrap()["metadata"]["uid"] = json!("uid-new");
    assert_refused(
        attest_psat(&s, payload("demo", "tok-a2")).await,
        tonic::Code::PermissionDenied,
        "pod UID mismatch for pod \"agent-a\" in cluster \"demo\": token bound to pod UID \"uid-agent-a\"",
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

    // Evicted: the agent attests again with a fresh token. Banned: refused.
    kube.add(
        "tok-a3",
        ("spire", "spire-agent"),
        "agent-a",
        "node-1",
        "z2",
    );
    let mut a = admin(&s).await;
    a.evict_agent(apb::AgentIdRequest {
        spiffe_id: id.clone(),
    })
    .await
    .unwrap();
    attest_psat(&s, payload("demo", "tok-a3")).await.unwrap();
    a.ban_agent(apb::AgentIdRequest {
        spiffe_id: id.clone(),
    })
    .await
    .unwrap();
    assert_refused(
        attest_psat(&s, payload("demo", "tok-a3")).await,
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
    let kube = KubeStub::default();
    kube.add("tok-1", ("spire", "spire-agent"), "agent-1", "node-1", "z1");
    kube.add("tok-2", ("spire", "spire-agent"), "agent-2", "node-2", "z2");
    let s = start(&kube).await;
    let (svid1, key1) = attest_psat(&s, payload("demo", "tok-1")).await.unwrap();
    let (svid2, key2) = attest_psat(&s, payload("demo", "tok-2")).await.unwrap();

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
