//! The three key sources SPIRE polls, every `poll_interval`: the server (Sigil's admin API
//! `GetBundle`, SPIRE's Bundle API `GetBundle`), the Workload API (`FetchJWTBundles`, first
//! response) and a SPIFFE bundle file. A failed poll keeps the previous keys (and is logged);
//! the health checks see how long ago the last success was.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prost::Message as _;
use sigil_proto::admin::admin_client::AdminClient;
use sigil_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use sigil_spiffe::TrustDomain;
use sigil_spiffe::bundle::Bundle;
use sigil_spiffe::jwk::PublicKeyParams;
use tokio_stream::StreamExt as _;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::config::Source;
use crate::keys::{Fetched, JwtKey, KeyStore};

/// How long one poll may take before it counts as failed.
const POLL_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a poll failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("connecting to {path}: {source}")]
    Connect {
        path: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("{0}")]
    Rpc(#[from] tonic::Status),
    #[error("the stream ended without a response")]
    NoResponse,
    #[error("no bundle for trust domain {0:?} in Workload API response")]
    NoBundle(String),
    #[error("{0}")]
    InvalidTrustDomain(String),
    #[error("parsing the JWT bundle: {0}")]
    Bundle(#[from] sigil_spiffe::bundle::BundleError),
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

/// Polls `source` into `store` for as long as the task runs.
pub async fn poll(source: Source, store: Arc<KeyStore>) {
    let interval = source.poll_interval();
    tracing::debug!(?interval, "Polling started");
    let mut poller = Poller::new(source);
    loop {
        match tokio::time::timeout(POLL_TIMEOUT, poller.poll_once()).await {
            Ok(Ok(fetched)) => {
                let kids: Vec<String> = fetched.keys.iter().map(|k| k.kid.clone()).collect();
                if store.update(fetched, SystemTime::now()) {
                    tracing::info!(?kids, "JWT authorities updated");
                }
            }
            Ok(Err(error)) => {
                poller.reset();
                tracing::warn!(%error, "{}", poller.failure_message());
            }
            Err(_) => {
                poller.reset();
                let error = SourceError::Timeout(POLL_TIMEOUT);
                tracing::warn!(%error, "{}", poller.failure_message());
            }
        }
        tokio::time::sleep(interval).await;
    }
}

/// One source with its connection, kept between polls (a gRPC channel reconnects by itself,
/// but a failed poll drops it so the next one dials afresh).
struct Poller {
    source: Source,
    admin: Option<AdminClient<Channel>>,
    workload: Option<SpiffeWorkloadApiClient<Channel>>,
}

// === impl Poller ===

impl Poller {
    fn new(source: Source) -> Self {
        Self {
            source,
            admin: None,
            workload: None,
        }
    }

    fn reset(&mut self) {
        self.admin = None;
        self.workload = None;
    }

    /// SPIRE's warning for each source.
    fn failure_message(&self) -> &'static str {
        match self.source {
            Source::ServerApi { .. } => "Failed to fetch bundle",
            Source::WorkloadApi { .. } => "Failed to fetch JWKS from the Workload API",
            Source::File { .. } => "Failed to load SPIFFE trust bundle",
        }
    }

    async fn poll_once(&mut self) -> Result<Fetched, SourceError> {
        match &self.source {
            Source::ServerApi { socket, .. } => {
                let client = match &mut self.admin {
                    Some(c) => c,
                    None => self
                        .admin
                        .insert(AdminClient::new(uds_channel(socket).await?)),
                };
                let bundle = client
                    .get_bundle(sigil_proto::admin::GetBundleRequest {})
                    .await?
                    .into_inner();
                Ok(from_server_bundle(&bundle))
            }
            Source::WorkloadApi {
                socket_path,
                trust_domain,
                ..
            } => {
                let td = trust_domain.clone();
                let client = match &mut self.workload {
                    Some(c) => c,
                    None => self.workload.insert(SpiffeWorkloadApiClient::new(
                        uds_channel(socket_path).await?,
                    )),
                };
                let mut req = tonic::Request::new(sigil_proto::workload::JwtBundlesRequest {});
                // Every Workload API call carries the SPIFFE security header.
                req.metadata_mut().insert(
                    "workload.spiffe.io",
                    tonic::metadata::MetadataValue::from_static("true"),
                );
                let mut stream = client.fetch_jwt_bundles(req).await?.into_inner();
                let first = stream.next().await.ok_or(SourceError::NoResponse)??;
                from_workload_bundles(&first.bundles, &td)
            }
            Source::File { path, .. } => {
                let path = path.clone();
                let bytes = tokio::fs::read(&path)
                    .await
                    .map_err(|source| SourceError::Read {
                        path: path.display().to_string(),
                        source,
                    })?;
                from_bundle_file(&bytes)
            }
        }
    }
}

/// A channel to a gRPC server on a Unix socket.
async fn uds_channel(path: &Path) -> Result<Channel, SourceError> {
    let p: PathBuf = path.to_path_buf();
    // The URI is required by tonic and unused: the connector ignores it.
    let endpoint = Endpoint::from_static("http://localhost");
    endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let p = p.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(p).await?,
                ))
            }
        }))
        .await
        .map_err(|source| SourceError::Connect {
            path: path.display().to_string(),
            source,
        })
}

/// The server's bundle: its JWT authorities only (SPIRE asks for that mask); a key that does
/// not parse is skipped with a warning, as SPIRE does.
pub fn from_server_bundle(bundle: &sigil_proto::types::Bundle) -> Fetched {
    let masked = sigil_proto::types::Bundle {
        trust_domain: bundle.trust_domain.clone(),
        jwt_authorities: bundle.jwt_authorities.clone(),
        ..Default::default()
    };
    let keys = bundle
        .jwt_authorities
        .iter()
        .filter_map(|k| match PublicKeyParams::from_spki_der(&k.public_key) {
            Ok(key) => Some(JwtKey {
                kid: k.key_id.clone(),
                key,
            }),
            Err(error) => {
                tracing::warn!(kid = %k.key_id, %error, "Malformed public key in bundle");
                None
            }
        })
        .collect();
    Fetched {
        fingerprint: masked.encode_to_vec(),
        keys,
    }
}

/// The JWT bundle of `trust_domain` from a `FetchJWTBundles` response (keys may be trust
/// domain names or IDs, as go-spiffe accepts both).
pub fn from_workload_bundles(
    bundles: &std::collections::HashMap<String, Vec<u8>>,
    trust_domain: &str,
) -> Result<Fetched, SourceError> {
    let want = TrustDomain::from_id_or_name(trust_domain)
        .map_err(|e| SourceError::InvalidTrustDomain(e.to_string()))?;
    let (td, raw) = bundles
        .iter()
        .find_map(|(k, v)| {
            TrustDomain::from_id_or_name(k)
                .ok()
                .filter(|td| *td == want)
                .map(|td| (td, v))
        })
        .ok_or_else(|| SourceError::NoBundle(want.id_string()))?;
    let bundle = Bundle::from_jwks_json(td, raw)?;
    Ok(fetched_from_bundle(&bundle, raw.clone()))
}

/// A SPIFFE bundle document (`file { path }`): its `jwt-svid` keys.
pub fn from_bundle_file(bytes: &[u8]) -> Result<Fetched, SourceError> {
    // go-spiffe loads the file without a trust domain; any name does, only keys are used.
    let td = TrustDomain::from_id_or_name("file.bundle.invalid")
        .map_err(|e| SourceError::InvalidTrustDomain(e.to_string()))?;
    let bundle = Bundle::from_spiffe_json(td, bytes)?;
    Ok(fetched_from_bundle(&bundle, bytes.to_vec()))
}

fn fetched_from_bundle(bundle: &Bundle, fingerprint: Vec<u8>) -> Fetched {
    let keys = bundle
        .jwt_authorities
        .iter()
        .filter_map(|a| {
            PublicKeyParams::from_spki_der(&a.public_key_der)
                .ok()
                .map(|key| JwtKey {
                    kid: a.key_id.clone(),
                    key,
                })
        })
        .collect();
    Fetched { fingerprint, keys }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JWKS: &str = r#"{"keys":[{"kty":"EC","kid":"k1","crv":"P-256","x":"ngLYQnlfF6GsojUwqtcEE3WgTNG2RUlsGhK73RNEl5k","y":"tKbiDSUSsQ3F1P7wteeHNXIcU-cx6CgSbroeQrQHTLM"}]}"#;

    #[test]
    fn workload_bundles_by_trust_domain() {
        let mut m = std::collections::HashMap::new();
        m.insert("spiffe://other.test".to_string(), b"{\"keys\":[]}".to_vec());
        m.insert("spiffe://td.test".to_string(), JWKS.as_bytes().to_vec());
        let f = from_workload_bundles(&m, "td.test").unwrap();
        assert_eq!(f.keys.len(), 1);
        assert_eq!(f.keys[0].kid, "k1");
        assert!(matches!(
            from_workload_bundles(&m, "missing.test"),
            Err(SourceError::NoBundle(_))
        ));
    }

    #[test]
    fn bundle_file_jwt_keys_only() {
        let doc = JWKS.replace("\"kty\"", "\"use\":\"jwt-svid\",\"kty\"");
        let f = from_bundle_file(doc.as_bytes()).unwrap();
        assert_eq!(f.keys.len(), 1);
        // Keys without a SPIFFE `use` are not JWT authorities.
        assert!(from_bundle_file(JWKS.as_bytes()).unwrap().keys.is_empty());
        assert!(from_bundle_file(b"nope").is_err());
    }

    #[test]
    fn server_bundle_skips_malformed_keys() {
        let good = sigil_spiffe::jwk::Jwk {
            kty: Some("EC".into()),
            crv: Some("P-256".into()),
            x: Some("ngLYQnlfF6GsojUwqtcEE3WgTNG2RUlsGhK73RNEl5k".into()),
            y: Some("tKbiDSUSsQ3F1P7wteeHNXIcU-cx6CgSbroeQrQHTLM".into()),
            ..Default::default()
        }
        .spki_der()
        .unwrap()
        .unwrap();
        let b = sigil_proto::types::Bundle {
            trust_domain: "td.test".into(),
            x509_authorities: vec![vec![1, 2, 3]],
            jwt_authorities: vec![
                sigil_proto::types::JwtKey {
                    key_id: "good".into(),
                    public_key: good,
                    expires_at: 0,
                },
                sigil_proto::types::JwtKey {
                    key_id: "bad".into(),
                    public_key: vec![0],
                    expires_at: 0,
                },
            ],
            ..Default::default()
        };
        let f = from_server_bundle(&b);
        assert_eq!(
            f.keys.iter().map(|k| k.kid.as_str()).collect::<Vec<_>>(),
            ["good"]
        );
        // An X.509-only change is not a key change (SPIRE asks for the JWT authorities only).
        let mut b2 = b.clone();
        b2.x509_authorities.push(vec![4]);
        assert_eq!(from_server_bundle(&b2).fingerprint, f.fingerprint);
    }
}
