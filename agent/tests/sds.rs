//! Envoy SDS v3 over the agent's real socket with a raw xDS client: resource naming (Istio's
//! `default` / `ROOTCA`, SPIFFE IDs, trust-domain IDs, `ALL`), validation-context styles, and the
//! protocol edge cases (ACK, NACK, stale nonce, unknown names, a caller with no entry), for the
//! state-of-the-world, delta and fetch forms.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use envoy_types::pb::envoy::config::core::v3::{BuildVersion, Node, node::UserAgentVersionType};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    Secret, SpiffeCertValidatorConfig, secret,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use envoy_types::pb::envoy::r#type::v3::SemanticVersion;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::Message;
use sigil_agent::manager::cache::{Identity, Snapshot, WorkloadSvid};
use sigil_agent::sds::{SECRET_TYPE_URL, SdsConfig};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

async fn sds_client(socket: &Path) -> SecretDiscoveryServiceClient<Channel> {
    let path = socket.to_path_buf();
    let channel = Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: tonic::codegen::http::Uri| {
            let p = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(p).await?,
                ))
            }
        }))
        .await
        .unwrap();
    SecretDiscoveryServiceClient::new(channel)
}

fn envoy_node(major: u32, minor: u32) -> Node {
    Node {
        id: "sidecar~10.0.0.1~pod.ns~ns.svc.cluster.local".into(),
        user_agent_name: "envoy".into(),
        user_agent_version_type: Some(UserAgentVersionType::UserAgentBuildVersion(BuildVersion {
            version: Some(SemanticVersion {
                major_number: major,
                minor_number: minor,
                patch: 0,
            }),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn request(names: &[&str], node: Option<Node>) -> DiscoveryRequest {
    DiscoveryRequest {
        node,
        type_url: SECRET_TYPE_URL.into(),
        resource_names: names.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn secrets(resp: &DiscoveryResponse) -> Vec<Secret> {
    resp.resources
        .iter()
        .map(|a| {
            assert_eq!(a.type_url, SECRET_TYPE_URL);
            Secret::decode(a.value.as_slice()).unwrap()
        })
        .collect()
}

/// The trust domains of a SPIFFE-validator validation context, or `None` for `trusted_ca`.
fn validator_domains(s: &Secret) -> Option<Vec<String>> {
    let Some(secret::Type::ValidationContext(ctx)) = &s.r#type else {
        panic!("{} is not a validation context", s.name);
    };
    let cfg = ctx.custom_validator_config.as_ref()?;
    assert_eq!(cfg.name, "envoy.tls.cert_validator.spiffe");
    let any = cfg.typed_config.as_ref().unwrap();
    let v = SpiffeCertValidatorConfig::decode(any.value.as_slice()).unwrap();
    Some(v.trust_domains.iter().map(|t| t.name.clone()).collect())
}

fn cert_pem(s: &Secret) -> (String, String) {
    let Some(secret::Type::TlsCertificate(t)) = &s.r#type else {
        panic!("{} is not a TLS certificate", s.name);
    };
    let text = |d: &Option<envoy_types::pb::envoy::config::core::v3::DataSource>| match d
        .as_ref()
        .and_then(|d| d.specifier.as_ref())
    {
        Some(envoy_types::pb::envoy::config::core::v3::data_source::Specifier::InlineBytes(b)) => {
            String::from_utf8(b.clone()).unwrap()
        }
        other => panic!("expected inline bytes, got {other:?}"),
    };
    (text(&t.certificate_chain), text(&t.private_key))
}

struct Fixture {
    ca: Ca,
    h: Harness,
    snap: Box<dyn Fn(Arc<WorkloadSvid>) -> Snapshot + Send + Sync>,
}

async fn fixture(mine: &str, cfg: SdsConfig) -> Fixture {
    let ca = Ca::new();
    let me = entry("e1", "spiffe://td/me", mine, &["spiffe://other"]);
    let second = entry("e2", "spiffe://td/me-too", mine, &[]);
    let mut federated = BTreeMap::new();
    federated.insert(
        "other".parse().unwrap(),
        bundle("other", vec![ca.der.clone()], None),
    );
    federated.insert(
        "unrelated".parse().unwrap(),
        bundle("unrelated", vec![ca.der.clone()], None),
    );
    let own = bundle("td", vec![ca.der.clone()], None);
    let other_svid = workload_svid(&ca, "spiffe://td/me-too");
    let snap = move |svid: Arc<WorkloadSvid>| {
        Snapshot::new(
            td(),
            true,
            Some(own.clone()),
            federated.clone(),
            vec![
                Identity {
                    entry: me.clone(),
                    svid: Some(svid),
                },
                Identity {
                    entry: second.clone(),
                    svid: Some(other_svid.clone()),
                },
            ],
        )
    };
    let first = snap(workload_svid(&ca, "spiffe://td/me"));
    let h = Harness::start_with(&ca, first, cfg).await;
    Fixture {
        ca,
        h,
        snap: Box::new(snap),
    }
}

/// Opens a SotW stream; returns the sender for further requests and the response stream.
async fn open(
    socket: &Path,
    first: DiscoveryRequest,
) -> (
    mpsc::Sender<DiscoveryRequest>,
    tonic::Streaming<DiscoveryResponse>,
) {
    let (tx, rx) = mpsc::channel(8);
    tx.send(first).await.unwrap();
    let stream = sds_client(socket)
        .await
        .stream_secrets(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    (tx, stream)
}

async fn next(stream: &mut tonic::Streaming<DiscoveryResponse>) -> DiscoveryResponse {
    tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("no SDS response")
        .unwrap()
        .expect("stream ended")
}

async fn assert_quiet(stream: &mut tonic::Streaming<DiscoveryResponse>, why: &str) {
    if let Ok(m) = tokio::time::timeout(Duration::from_millis(400), stream.message()).await {
        panic!("expected no response ({why}), got {m:?}");
    }
}

#[tokio::test]
async fn istio_names_and_validation_styles() {
    let f = fixture(&my_uid(), SdsConfig::default()).await;

    // Istio's two resources, as a modern Envoy asks for them.
    let (_tx, mut s) = open(&f.h.socket, request(&["default"], Some(envoy_node(1, 40)))).await;
    let r = next(&mut s).await;
    assert!(!r.version_info.is_empty() && !r.nonce.is_empty());
    assert_eq!(r.type_url, SECRET_TYPE_URL);
    let got = secrets(&r);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].name, "default");
    let (chain, key) = cert_pem(&got[0]);
    let ders = sigil_spiffe::x509::parse_pem_certs(chain.as_bytes()).unwrap();
    assert_eq!(
        sigil_spiffe::x509::spiffe_id_of_cert(&ders[0])
            .unwrap()
            .to_string(),
        "spiffe://td/me",
        "default is the caller's first SVID"
    );
    assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "PKCS#8 PEM");

    let (_tx, mut s) = open(&f.h.socket, request(&["ROOTCA"], Some(envoy_node(1, 40)))).await;
    let got = secrets(&next(&mut s).await);
    assert_eq!(got[0].name, "ROOTCA");
    assert_eq!(
        validator_domains(&got[0]).unwrap(),
        ["td", "other"],
        "own bundle plus the federated one the caller's entry federates with"
    );

    // An old Envoy (1.17) gets trusted_ca.
    let (_tx, mut s) = open(&f.h.socket, request(&["ROOTCA"], Some(envoy_node(1, 17)))).await;
    let got = secrets(&next(&mut s).await);
    assert_eq!(validator_domains(&got[0]), None);

    // Per-Envoy opt-out in node metadata.
    let mut node = envoy_node(1, 40);
    node.metadata = Some(envoy_types::pb::google::protobuf::Struct {
        fields: [(
            "disable_spiffe_cert_validation".to_string(),
            envoy_types::pb::google::protobuf::Value {
                kind: Some(envoy_types::pb::google::protobuf::value::Kind::BoolValue(
                    true,
                )),
            },
        )]
        .into_iter()
        .collect(),
    });
    let (_tx, mut s) = open(&f.h.socket, request(&["ROOTCA"], Some(node))).await;
    assert_eq!(validator_domains(&secrets(&next(&mut s).await)[0]), None);

    // Exact SPIFFE ID, trust-domain IDs, ALL.
    let (_tx, mut s) = open(
        &f.h.socket,
        request(
            &["spiffe://td/me-too", "spiffe://td", "spiffe://other", "ALL"],
            None,
        ),
    )
    .await;
    let got = secrets(&next(&mut s).await);
    let names: Vec<&str> = got.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        ["spiffe://td/me-too", "spiffe://td", "spiffe://other", "ALL"]
    );
    let (chain, _) = cert_pem(&got[0]);
    let ders = sigil_spiffe::x509::parse_pem_certs(chain.as_bytes()).unwrap();
    assert_eq!(
        sigil_spiffe::x509::spiffe_id_of_cert(&ders[0])
            .unwrap()
            .to_string(),
        "spiffe://td/me-too"
    );
    assert_eq!(validator_domains(&got[1]).unwrap(), ["td"]);
    assert_eq!(validator_domains(&got[2]).unwrap(), ["other"]);
    assert_eq!(validator_domains(&got[3]).unwrap(), ["td", "other"]);

    // Empty list: everything the caller may have.
    let (_tx, mut s) = open(&f.h.socket, request(&[], None)).await;
    let got = secrets(&next(&mut s).await);
    let mut names: Vec<&str> = got.iter().map(|s| s.name.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "ALL",
            "ROOTCA",
            "default",
            "spiffe://other",
            "spiffe://td",
            "spiffe://td/me",
            "spiffe://td/me-too"
        ]
    );
}

#[tokio::test]
async fn configured_names_and_global_opt_out() {
    let cfg = SdsConfig {
        default_svid_name: "my-svid".into(),
        default_bundle_name: "my-ca".into(),
        default_all_bundles_name: "everything".into(),
        disable_spiffe_cert_validation: true,
    };
    let f = fixture(&my_uid(), cfg).await;
    let (_tx, mut s) = open(
        &f.h.socket,
        request(&["my-svid", "my-ca", "everything"], None),
    )
    .await;
    let got = secrets(&next(&mut s).await);
    assert_eq!(got[0].name, "my-svid");
    assert_eq!(got[1].name, "my-ca");
    assert_eq!(
        validator_domains(&got[1]),
        None,
        "disabled in the agent config"
    );
    // With the new names configured, Istio's defaults are unknown.
    let (_tx, mut s) = open(&f.h.socket, request(&["default"], None)).await;
    let err = s.message().await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn unknown_names_and_unregistered_callers_fail() {
    let f = fixture(&my_uid(), SdsConfig::default()).await;
    let (_tx, mut s) = open(
        &f.h.socket,
        request(&["default", "spiffe://td/someone-else", "nope"], None),
    )
    .await;
    let err = s.message().await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("nope") && err.message().contains("spiffe://td/someone-else"),
        "names the unknown resources: {}",
        err.message()
    );
    // A federated trust domain the caller's entries do not federate with is not served.
    let (_tx, mut s) = open(&f.h.socket, request(&["spiffe://unrelated"], None)).await;
    assert_eq!(
        s.message().await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );

    // A caller that matches no entry gets nothing, on every form of the API.
    let f = fixture("uid:4242", SdsConfig::default()).await;
    let (_tx, mut s) = open(&f.h.socket, request(&["default"], None)).await;
    let err = s.message().await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    let err = sds_client(&f.h.socket)
        .await
        .fetch_secrets(request(&["ROOTCA"], None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
}

#[tokio::test]
async fn ack_nack_stale_nonce_and_rotation_push() {
    let f = fixture(&my_uid(), SdsConfig::default()).await;
    let (tx, mut s) = open(&f.h.socket, request(&["default"], None)).await;
    let first = next(&mut s).await;

    // ACK: nothing to say.
    tx.send(DiscoveryRequest {
        version_info: first.version_info.clone(),
        response_nonce: first.nonce.clone(),
        ..request(&["default"], None)
    })
    .await
    .unwrap();
    assert_quiet(&mut s, "ACK").await;

    // NACK: logged, not re-sent.
    tx.send(DiscoveryRequest {
        version_info: String::new(),
        response_nonce: first.nonce.clone(),
        error_detail: Some(RpcStatus {
            code: 3,
            message: "bad certificate".into(),
            ..Default::default()
        }),
        ..request(&["default"], None)
    })
    .await
    .unwrap();
    assert_quiet(&mut s, "NACK").await;

    // A stale nonce is ignored even if it asks for something new.
    tx.send(DiscoveryRequest {
        response_nonce: "not-the-last-nonce".into(),
        ..request(&["default", "ROOTCA"], None)
    })
    .await
    .unwrap();
    assert_quiet(&mut s, "stale nonce").await;

    // The same change with the current nonce is answered with a new version.
    tx.send(DiscoveryRequest {
        version_info: first.version_info.clone(),
        response_nonce: first.nonce.clone(),
        ..request(&["default", "ROOTCA"], None)
    })
    .await
    .unwrap();
    let second = next(&mut s).await;
    assert_ne!(second.version_info, first.version_info);
    assert_ne!(second.nonce, first.nonce);
    assert_eq!(secrets(&second).len(), 2);

    // Rotation is pushed without a request.
    let rotated = workload_svid(&f.ca, "spiffe://td/me");
    f.h.snapshots
        .send_replace(Arc::new((f.snap)(rotated.clone())));
    let third = next(&mut s).await;
    assert_ne!(third.version_info, second.version_info);
    let (chain, _) = cert_pem(&secrets(&third)[0]);
    assert_eq!(
        sigil_spiffe::x509::parse_pem_certs(chain.as_bytes()).unwrap()[0],
        rotated.chain[0]
    );
    // An unchanged snapshot is not re-sent.
    f.h.snapshots.send_replace(Arc::new((f.snap)(rotated)));
    assert_quiet(&mut s, "nothing changed").await;
}

#[tokio::test]
async fn delta_and_fetch() {
    let f = fixture(&my_uid(), SdsConfig::default()).await;
    // Fetch (unary).
    let r = sds_client(&f.h.socket)
        .await
        .fetch_secrets(request(&["default", "ROOTCA"], None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(secrets(&r).len(), 2);
    assert!(!r.version_info.is_empty());

    // Delta: subscribe, get both; rotation sends only what changed.
    let (tx, rx) = mpsc::channel(8);
    tx.send(DeltaDiscoveryRequest {
        node: Some(envoy_node(1, 40)),
        type_url: SECRET_TYPE_URL.into(),
        resource_names_subscribe: vec!["default".into(), "ROOTCA".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let mut s = sds_client(&f.h.socket)
        .await
        .delta_secrets(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), s.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let mut names: Vec<&str> = first.resources.iter().map(|r| r.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["ROOTCA", "default"]);
    assert!(first.resources.iter().all(|r| !r.version.is_empty()));
    // ACK.
    tx.send(DeltaDiscoveryRequest {
        type_url: SECRET_TYPE_URL.into(),
        response_nonce: first.nonce.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    f.h.snapshots
        .send_replace(Arc::new((f.snap)(workload_svid(&f.ca, "spiffe://td/me"))));
    let upd = tokio::time::timeout(Duration::from_secs(5), s.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let names: Vec<&str> = upd.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["default"], "only the rotated SVID");
    // Unknown subscription: InvalidArgument naming it.
    tx.send(DeltaDiscoveryRequest {
        type_url: SECRET_TYPE_URL.into(),
        response_nonce: upd.nonce.clone(),
        resource_names_subscribe: vec!["bogus".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(5), s.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("bogus"));
}

/// Receives one fd sent with SCM_RIGHTS on `sock`.
fn recv_fd(sock: &std::os::unix::net::UnixStream) -> std::os::fd::OwnedFd {
    use std::os::fd::{AsRawFd, FromRawFd};
    let mut data = [0u8; 16];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    let mut cmsg = [0u8; 64];
    // SAFETY: a zeroed msghdr is a valid "empty" value; every pointer set below outlives the
    // recvmsg call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.as_mut_ptr().cast();
    msg.msg_controllen = cmsg.len();
    // SAFETY: valid socket fd and msghdr as set up above.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, 0) };
    assert!(n >= 0, "recvmsg: {}", std::io::Error::last_os_error());
    // SAFETY: the kernel filled msg_control; CMSG_FIRSTHDR/CMSG_DATA walk it as documented.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        assert!(!c.is_null(), "no fd received");
        assert_eq!((*c).cmsg_type, libc::SCM_RIGHTS);
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
        std::os::fd::OwnedFd::from_raw_fd(fd)
    }
}

/// The caller is the process that connected. If it hands its connection to another process and
/// exits, the stream it opened ends: nobody else inherits its identity.
#[tokio::test]
async fn stream_ends_when_the_connecting_process_exits() {
    let f = fixture(&my_uid(), SdsConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let handoff = dir.path().join("handoff.sock");
    let listener = std::os::unix::net::UnixListener::bind(&handoff).unwrap();
    // A separate process connects to the agent, passes the connection to us, and exits when told.
    let script = format!(
        "import socket,sys\n\
         a=socket.socket(socket.AF_UNIX); a.connect({agent:?})\n\
         h=socket.socket(socket.AF_UNIX); h.connect({handoff:?})\n\
         socket.send_fds(h,[b'x'],[a.fileno()])\n\
         h.recv(1)\n",
        agent = f.h.socket.display().to_string(),
        handoff = handoff.display().to_string(),
    );
    let mut child = std::process::Command::new("python3")
        .args(["-c", &script])
        .spawn()
        .expect("python3");
    let (conn, _) = listener.accept().unwrap();
    let fd = recv_fd(&conn);
    let std_stream = std::os::unix::net::UnixStream::from(fd);
    std_stream.set_nonblocking(true).unwrap();
    let slot = Arc::new(std::sync::Mutex::new(Some(std_stream)));
    let channel = Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: tonic::codegen::http::Uri| {
            let s = slot.lock().unwrap().take();
            async move {
                let s = s.ok_or_else(|| std::io::Error::other("connection already used"))?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::from_std(s)?,
                ))
            }
        }))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(4);
    tx.send(request(&["default"], None)).await.unwrap();
    let mut s = SecretDiscoveryServiceClient::new(channel)
        .stream_secrets(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    // While the connecting process lives, the stream serves its identity.
    assert_eq!(secrets(&next(&mut s).await)[0].name, "default");
    // Let it exit: the stream must end even though the connection (now ours) stays open.
    std::io::Write::write_all(&mut &conn, b"x").unwrap();
    child.wait().unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), s.message())
        .await
        .expect("the stream outlived the process that opened it");
    assert!(
        matches!(end, Ok(None) | Err(_)),
        "expected the stream to end, got {end:?}"
    );
    drop(tx);
}
