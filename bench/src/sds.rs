//! SDS push fan-out: with N SDS streams open on the agent's socket (one connection each, as N
//! Envoys would have), the time from an SVID rotation landing in the agent's cache until the
//! new certificate has been received on every stream.
//!
//! The agent's real SDS service and socket server run in-process; the rotation is injected into
//! its snapshot channel exactly where the manager publishes it, so the clock starts at the
//! moment a real rotation would become visible.

use anyhow::{Context, Result, bail};
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};
use sigil_agent::keys::PrivateKeyDer;
use sigil_agent::manager::ManagerHandle;
use sigil_agent::manager::cache::{BundleRecord, Entry, Identity, Snapshot, WorkloadSvid};
use sigil_agent::manager::jwt::JwtSigner;
use sigil_agent::node::AgentSvid;
use sigil_agent::node::client::Credentials;
use sigil_agent::sds::{SECRET_TYPE_URL, SdsApi, SdsConfig};
use sigil_agent::workload::{self, WorkloadApi};
use sigil_workload_attestation::{Attestors, UnixAttestor};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    der: Vec<u8>,
}

impl Ca {
    fn new() -> Result<Self> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let der = params.self_signed(&key)?.der().to_vec();
        Ok(Self {
            issuer: Issuer::new(params, key),
            der,
        })
    }

    fn svid(&self, id: &str) -> Result<Arc<WorkloadSvid>> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.subject_alt_names = vec![SanType::URI(id.try_into()?)];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let der = params.signed_by(&key, &self.issuer)?.der().to_vec();
        Ok(Arc::new(WorkloadSvid {
            spiffe_id: id.parse()?,
            chain: vec![der],
            key: PrivateKeyDer::new(key.serialize_der()),
            not_before: 0,
            not_after: i64::MAX / 2,
            rotate_at_ms: i64::MAX,
        }))
    }
}

/// Raises the open-file limit to its hard maximum (each stream holds a client fd, a server fd
/// and a pidfd).
fn raise_nofile() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// Returns (milliseconds until all `n` streams had the rotated certificate, per-stream p50 ms).
pub async fn fanout(n: usize) -> Result<(f64, f64)> {
    raise_nofile();
    let ca = Ca::new()?;
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    let entry = Arc::new(
        Entry::from_proto(&sigil_proto::types::Entry {
            id: "e1".into(),
            spiffe_id: "spiffe://bench.td/envoy".into(),
            parent_id: "spiffe://bench.td/node".into(),
            selectors: vec![sigil_proto::types::Selector {
                r#type: "unix".into(),
                value: format!("uid:{uid}"),
            }],
            ..Default::default()
        })
        .map_err(anyhow::Error::msg)?,
    );
    let bundle = Arc::new(
        BundleRecord::from_proto(&sigil_proto::types::Bundle {
            trust_domain: "bench.td".into(),
            x509_authorities: vec![ca.der.clone()],
            ..Default::default()
        })
        .map_err(anyhow::Error::msg)?,
    );
    let snap = |svid: Arc<WorkloadSvid>| {
        Snapshot::new(
            "bench.td".parse().expect("valid trust domain"),
            true,
            Some(bundle.clone()),
            BTreeMap::new(),
            vec![Identity {
                entry: entry.clone(),
                svid: Some(svid),
            }],
        )
    };
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("api.sock");
    let (snapshots, snapshot_rx) =
        watch::channel(Arc::new(snap(ca.svid("spiffe://bench.td/envoy")?)));
    let agent_svid = ca.svid("spiffe://bench.td/spire/agent/join_token/t")?;
    let creds = Credentials {
        svid: Arc::new(AgentSvid::new(
            agent_svid.chain.clone(),
            PrivateKeyDer::new(agent_svid.key.as_bytes().to_vec()),
        )?),
        roots: Arc::new(vec![ca.der.clone()]),
        tainted: Default::default(),
    };
    let (_creds_tx, creds_rx) = watch::channel(Arc::new(creds));
    let (_client_tx, client_rx) = watch::channel(None);
    let handle = ManagerHandle {
        snapshot: snapshot_rx,
        creds: creds_rx,
        jwt: JwtSigner::new(client_rx, 0),
        connection: watch::channel(sigil_agent::manager::Connection {
            connected: true,
            since: 0,
        })
        .1,
    };
    let attestors = Attestors::new(vec![Arc::new(UnixAttestor::new(Default::default()))]);
    let sds = SdsApi::new(handle.clone(), attestors.clone(), SdsConfig::default());
    let api = WorkloadApi::new(handle, attestors);
    let listener = workload::bind(&socket)?;
    tokio::spawn(workload::serve(
        listener,
        api,
        sds,
        Default::default(),
        std::future::pending(),
    ));

    // Open n streams (one connection each) and wait for each one's first response.
    let mut streams = Vec::with_capacity(n);
    let mut senders = Vec::with_capacity(n);
    for _ in 0..n {
        let path = socket.clone();
        let ch = tonic::transport::Endpoint::try_from("http://localhost")?
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(DiscoveryRequest {
            type_url: SECRET_TYPE_URL.into(),
            resource_names: vec!["default".into()],
            ..Default::default()
        })
        .await?;
        let mut s = SecretDiscoveryServiceClient::new(ch)
            .stream_secrets(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        s.message()
            .await?
            .context("stream closed before the first response")?;
        streams.push(s);
        senders.push(tx);
    }

    // Rotate, then time every stream's receipt of the new version from the moment the rotated
    // snapshot is published.
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<()>(n);
    let rotated = snap(ca.svid("spiffe://bench.td/envoy")?);
    for mut s in streams {
        let done_tx = done_tx.clone();
        tokio::spawn(async move {
            if let Ok(Some(_)) = s.message().await {
                let _ = done_tx.send(()).await;
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(200)).await; // let every reader park
    let start = Instant::now();
    snapshots.send_replace(Arc::new(rotated));
    let mut times = Vec::with_capacity(n);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while times.len() < n {
        match tokio::time::timeout_at(deadline, done_rx.recv()).await {
            Ok(Some(_)) => times.push(start.elapsed()),
            _ => bail!("only {} of {n} streams received the rotation", times.len()),
        }
    }
    drop(senders);
    let all = times.iter().max().copied().unwrap_or_default();
    let mut sorted = times.clone();
    sorted.sort();
    let p50 = sorted[sorted.len() / 2];
    Ok((all.as_secs_f64() * 1e3, p50.as_secs_f64() * 1e3))
}
