//! Shared by the socket-level tests: a throwaway CA, hand-built snapshots, and an agent's
//! Workload API + SDS endpoint served on a temp socket with no server behind it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};
use sigil_agent::keys::PrivateKeyDer;
use sigil_agent::manager::ManagerHandle;
use sigil_agent::manager::cache::{BundleRecord, Entry, Snapshot, WorkloadSvid};
use sigil_agent::manager::jwt::JwtSigner;
use sigil_agent::node::AgentSvid;
use sigil_agent::node::client::Credentials;
use sigil_agent::sds::{SdsApi, SdsConfig};
use sigil_agent::workload::{self, WorkloadApi};
use sigil_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use sigil_spiffe::TrustDomain;
use sigil_workload_attestation::{Attestors, UnixAttestor};
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};

pub struct Ca {
    pub issuer: Issuer<'static, KeyPair>,
    pub der: Vec<u8>,
}

impl Ca {
    pub fn new() -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let der = params.self_signed(&key).unwrap().der().to_vec();
        Self {
            issuer: Issuer::new(params, key),
            der,
        }
    }

    /// An X509-SVID for `id` and its PKCS#8 key.
    pub fn svid(&self, id: &str) -> (Vec<u8>, Vec<u8>) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![SanType::URI(id.try_into().unwrap())];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let der = params.signed_by(&key, &self.issuer).unwrap().der().to_vec();
        (der, key.serialize_der())
    }
}

pub fn my_uid() -> String {
    // SAFETY: geteuid has no preconditions.
    format!("uid:{}", unsafe { libc::geteuid() })
}

pub fn entry(id: &str, spiffe_id: &str, selector: &str, federates_with: &[&str]) -> Arc<Entry> {
    Arc::new(
        Entry::from_proto(&sigil_proto::types::Entry {
            id: id.into(),
            spiffe_id: spiffe_id.into(),
            parent_id: "spiffe://td/node".into(),
            selectors: vec![sigil_proto::types::Selector {
                r#type: "unix".into(),
                value: selector.into(),
            }],
            federates_with: federates_with.iter().map(|s| s.to_string()).collect(),
            hint: format!("hint-{id}"),
            ..Default::default()
        })
        .unwrap(),
    )
}

pub fn workload_svid(ca: &Ca, id: &str) -> Arc<WorkloadSvid> {
    let (der, key) = ca.svid(id);
    Arc::new(WorkloadSvid {
        spiffe_id: id.parse().unwrap(),
        chain: vec![der],
        key: PrivateKeyDer::new(key),
        not_before: 0,
        not_after: i64::MAX / 2,
        rotate_at_ms: i64::MAX,
    })
}

pub fn bundle(
    td: &str,
    x509: Vec<Vec<u8>>,
    jwt: Option<&sigil_spiffe::JwtSigner>,
) -> Arc<BundleRecord> {
    Arc::new(
        BundleRecord::from_proto(&sigil_proto::types::Bundle {
            trust_domain: td.into(),
            x509_authorities: x509,
            jwt_authorities: jwt
                .map(|s| sigil_proto::types::JwtKey {
                    key_id: s.kid().into(),
                    public_key: s.public_key_spki_der(),
                    expires_at: 0,
                })
                .into_iter()
                .collect(),
            ..Default::default()
        })
        .unwrap(),
    )
}

pub struct Harness {
    pub snapshots: watch::Sender<Arc<Snapshot>>,
    pub socket: PathBuf,
    _dir: tempfile::TempDir,
    _creds: watch::Sender<Arc<Credentials>>,
}

impl Harness {
    pub async fn start(ca: &Ca, snapshot: Snapshot) -> Self {
        Self::start_with(ca, snapshot, SdsConfig::default()).await
    }

    pub async fn start_with(ca: &Ca, snapshot: Snapshot, sds: SdsConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("public").join("api.sock");
        let (snapshots, snapshot_rx) = watch::channel(Arc::new(snapshot));
        let (agent_der, agent_key) = ca.svid("spiffe://td/spire/agent/join_token/t");
        let creds = Credentials {
            svid: Arc::new(AgentSvid::new(vec![agent_der], PrivateKeyDer::new(agent_key)).unwrap()),
            roots: Arc::new(vec![ca.der.clone()]),
            tainted: Default::default(),
        };
        let (creds_tx, creds_rx) = watch::channel(Arc::new(creds));
        // No server connection: JWT minting answers Unavailable.
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
        let sds = SdsApi::new(handle.clone(), attestors.clone(), sds);
        let api =
            WorkloadApi::new(handle, attestors).with_identity_wait(Duration::from_millis(300));
        let listener = workload::bind(&socket).unwrap();
        tokio::spawn(workload::serve(
            listener,
            api,
            sds,
            Default::default(),
            std::future::pending(),
        ));
        Self {
            snapshots,
            socket,
            _dir: dir,
            _creds: creds_tx,
        }
    }

    pub async fn client(&self) -> SpiffeWorkloadApiClient<Channel> {
        client(&self.socket).await
    }
}

pub async fn client(socket: &Path) -> SpiffeWorkloadApiClient<Channel> {
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
    SpiffeWorkloadApiClient::new(channel)
}

pub fn req<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    r
}

pub fn td() -> TrustDomain {
    "td".parse().unwrap()
}
