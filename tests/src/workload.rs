//! A bare Workload API client built from the generated stubs: the tests use it where they need
//! control no SPIFFE library gives (omitting the security header), and the demo peer uses it to
//! get its SVID.

use anyhow::{Context, Result, anyhow};
use sigil_proto::workload as pb;
use sigil_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use std::path::{Path, PathBuf};
use tonic::transport::{Channel, Endpoint, Uri};

/// The metadata key every Workload API call must carry (SPIFFE Workload Endpoint spec).
pub const SECURITY_HEADER: &str = "workload.spiffe.io";

/// Dials the Workload API Unix socket.
pub async fn channel(socket: &Path) -> Result<Channel> {
    let path: PathBuf = socket.to_path_buf();
    Endpoint::try_from("http://localhost")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
        .with_context(|| format!("connecting to the Workload API at {}", socket.display()))
}

/// A client on the agent's socket.
pub async fn client(socket: &Path) -> Result<SpiffeWorkloadApiClient<Channel>> {
    Ok(SpiffeWorkloadApiClient::new(channel(socket).await?))
}

/// Wraps `msg` in a request carrying `workload.spiffe.io: true`.
pub fn request<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(
        SECURITY_HEADER,
        tonic::metadata::MetadataValue::from_static("true"),
    );
    req
}

/// One X509-SVID as the Workload API hands it out, with the chain split into certificates.
#[derive(Clone)]
pub struct Svid {
    pub spiffe_id: String,
    /// Leaf first, DER.
    pub chain: Vec<Vec<u8>>,
    /// PKCS#8 DER.
    pub key: Vec<u8>,
    /// X.509 authorities of the SVID's trust domain, DER.
    pub bundle: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Svid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private key.
        f.debug_struct("Svid")
            .field("spiffe_id", &self.spiffe_id)
            .field("chain_len", &self.chain.len())
            .field("bundle_len", &self.bundle.len())
            .finish_non_exhaustive()
    }
}

/// Reads the first message of `FetchX509SVID` and closes the stream.
pub async fn fetch_x509(socket: &Path) -> Result<Vec<Svid>, tonic::Status> {
    fetch_x509_context(socket).await.map(|(svids, _)| svids)
}

/// The first `FetchX509SVID` message: the SVIDs and the federated bundles (by trust domain
/// ID, X.509 authorities DER).
pub async fn fetch_x509_context(
    socket: &Path,
) -> Result<(Vec<Svid>, std::collections::BTreeMap<String, Vec<Vec<u8>>>), tonic::Status> {
    let mut c = client(socket)
        .await
        .map_err(|e| tonic::Status::unavailable(format!("{e:#}")))?;
    let mut stream = c
        .fetch_x509svid(request(pb::X509svidRequest {}))
        .await?
        .into_inner();
    let msg = stream
        .message()
        .await?
        .ok_or_else(|| tonic::Status::unknown("FetchX509SVID stream ended without a message"))?;
    let split = |der: &[u8], what: &str| {
        sigil_spiffe::x509::parse_der_certs(der)
            .map_err(|e| tonic::Status::internal(format!("agent sent a bad {what}: {e}")))
    };
    let mut federated = std::collections::BTreeMap::new();
    for (td, der) in &msg.federated_bundles {
        federated.insert(td.clone(), split(der, "federated bundle")?);
    }
    let svids = msg
        .svids
        .into_iter()
        .map(|s| {
            Ok(Svid {
                chain: split(&s.x509_svid, "x509_svid")?,
                bundle: split(&s.bundle, "bundle")?,
                spiffe_id: s.spiffe_id,
                key: s.x509_svid_key,
            })
        })
        .collect::<Result<Vec<_>, tonic::Status>>()?;
    Ok((svids, federated))
}

/// Fetches the X509-SVID whose SPIFFE ID is `want`, or the first one if `want` is `None`.
pub async fn fetch_one(socket: &Path, want: Option<&str>) -> Result<Svid> {
    let svids = fetch_x509(socket)
        .await
        .map_err(|s| anyhow!("FetchX509SVID: {:?}: {}", s.code(), s.message()))?;
    let ids: Vec<_> = svids.iter().map(|s| s.spiffe_id.clone()).collect();
    svids
        .into_iter()
        .find(|s| want.is_none_or(|w| s.spiffe_id == w))
        .ok_or_else(|| anyhow!("no X509-SVID for {want:?} (got {ids:?})"))
}
