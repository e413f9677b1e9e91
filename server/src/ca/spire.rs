//! `UpstreamAuthority "spire"` (alias `"sigil"`): nested servers. An intermediate server gets
//! its own X509-SVID from the local agent's Workload API (its entry is made with
//! `-downstream` on the upstream server), then asks the upstream server, over mutual TLS with
//! that SVID, to sign its CA (`NewDownstreamX509CA`). It publishes its JWT keys upstream
//! (`PublishJWTAuthority`) and follows the upstream's bundle, read from the same Workload API,
//! so every server of the trust domain publishes the same roots and JWT keys.
//!
//! The calls are async; the CA's callers run on the blocking pool, which may block on the
//! runtime (`Handle::block_on`).

use super::CaError;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use sigil_proto::agent as pb;
use sigil_proto::agent::node_client::NodeClient;
use sigil_proto::types;
use sigil_proto::workload as wpb;
use sigil_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use sigil_spiffe::bundle::JwtAuthority;
use sigil_spiffe::{SpiffeId, TrustDomain};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;

/// How long a start-up waits for the local agent to serve the server's SVID (its downstream
/// entry may not have reached the agent yet).
const SVID_WAIT: Duration = Duration::from_secs(60);
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// Configuration of `UpstreamAuthority "spire"` (SPIRE's `plugin_data` keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpireUpstream {
    pub server_address: String,
    pub server_port: u16,
    /// The local agent's Workload API socket (`workload_api_socket`, or seed 000's
    /// `workload_api_socket_path`).
    pub workload_api_socket: PathBuf,
}

/// What the upstream answered: a CA for our key, and the trust domain's roots.
pub(crate) struct Minted {
    pub ca_chain: Vec<Vec<u8>>,
    pub roots: Vec<Vec<u8>>,
}

/// The server's SVID from the Workload API, and the bundles the agent holds.
struct Fetched {
    chain: Vec<Vec<u8>>,
    key: zeroize::Zeroizing<Vec<u8>>,
    roots: Vec<Vec<u8>>,
}

fn upstream_err(what: &str, e: impl std::fmt::Display) -> CaError {
    CaError::UpstreamSpire(format!("{what}: {e}"))
}

fn block_on<T>(f: impl std::future::Future<Output = Result<T, CaError>>) -> Result<T, CaError> {
    let handle = tokio::runtime::Handle::try_current()
        .map_err(|_| upstream_err("calling the upstream server", "no async runtime"))?;
    handle.block_on(f)
}

fn request<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(
        "workload.spiffe.io",
        tonic::metadata::MetadataValue::from_static("true"),
    );
    req
}

// === impl SpireUpstream ===

impl SpireUpstream {
    async fn workload_client(&self) -> Result<SpiffeWorkloadApiClient<Channel>, CaError> {
        let path = self.workload_api_socket.clone();
        let ch = tonic::transport::Endpoint::try_from("http://localhost")
            .map_err(|e| upstream_err("Workload API endpoint", e))?
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await
            .map_err(|e| {
                upstream_err(
                    &format!(
                        "connecting to the Workload API at {}",
                        self.workload_api_socket.display()
                    ),
                    e,
                )
            })?;
        Ok(SpiffeWorkloadApiClient::new(ch))
    }

    async fn fetch_once(&self) -> Result<Fetched, CaError> {
        let mut c = self.workload_client().await?;
        let mut stream = c
            .fetch_x509svid(request(wpb::X509svidRequest {}))
            .await
            .map_err(|s| upstream_err("FetchX509SVID", s.message()))?
            .into_inner();
        let msg = tokio::time::timeout(CALL_TIMEOUT, stream.message())
            .await
            .map_err(|_| upstream_err("FetchX509SVID", "no answer"))?
            .map_err(|s| upstream_err("FetchX509SVID", s.message()))?
            .ok_or_else(|| upstream_err("FetchX509SVID", "the stream ended"))?;
        let svid = msg
            .svids
            .first()
            .ok_or_else(|| upstream_err("FetchX509SVID", "no SVID"))?;
        let split = |der: &[u8], what: &str| {
            sigil_spiffe::x509::parse_der_certs(der).map_err(|e| upstream_err(what, e))
        };
        Ok(Fetched {
            chain: split(&svid.x509_svid, "the server's SVID")?,
            key: zeroize::Zeroizing::new(svid.x509_svid_key.clone()),
            roots: split(&svid.bundle, "the trust bundle")?,
        })
    }

    /// The server's SVID, waiting (bounded) for the agent to have it.
    async fn fetch(&self) -> Result<Fetched, CaError> {
        let deadline = tokio::time::Instant::now() + SVID_WAIT;
        loop {
            match self.fetch_once().await {
                Ok(f) => return Ok(f),
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(e) => {
                    tracing::info!(error = %e, "waiting for this server's SVID from the Workload API");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// The upstream server's agent API, with mutual TLS: our SVID, and its
    /// `spiffe://<td>/spire/server` SVID checked against the bundle.
    async fn upstream_client(&self, f: &Fetched) -> Result<NodeClient<Channel>, CaError> {
        let leaf = f
            .chain
            .first()
            .ok_or_else(|| upstream_err("the server's SVID", "empty chain"))?;
        let td: TrustDomain = sigil_spiffe::x509::spiffe_id_of_cert(leaf)
            .map_err(|e| upstream_err("the server's SVID", e))?
            .trust_domain()
            .clone();
        let server_id = SpiffeId::from_path(&td, "/spire/server")
            .map_err(|e| upstream_err("the upstream server's ID", e))?;
        let verifier = sigil_tls::SvidVerifier::new(
            sigil_tls::Roots::fixed(f.roots.clone()),
            sigil_tls::Authorizer::Id(server_id),
        );
        let mut cfg = rustls::ClientConfig::builder_with_provider(sigil_tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| upstream_err("TLS", e))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(
                f.chain.iter().cloned().map(CertificateDer::from).collect(),
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(f.key.to_vec())),
            )
            .map_err(|e| upstream_err("the server's SVID", e))?;
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
        let (host, port) = (self.server_address.clone(), self.server_port);
        let ch = tonic::transport::Endpoint::try_from("http://upstream")
            .map_err(|e| upstream_err("upstream endpoint", e))?
            .connect_timeout(CALL_TIMEOUT)
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let (connector, host) = (connector.clone(), host.clone());
                async move {
                    let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
                    tcp.set_nodelay(true)?;
                    // The SPIFFE ID is what is checked; the name only satisfies rustls.
                    let name =
                        ServerName::try_from("sigil-server").map_err(std::io::Error::other)?;
                    let tls = connector.connect(name, tcp).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
                }
            }))
            .await
            .map_err(|e| {
                upstream_err(
                    &format!(
                        "connecting to the upstream server {}:{}",
                        self.server_address, self.server_port
                    ),
                    e,
                )
            })?;
        Ok(NodeClient::new(ch))
    }

    /// A CA certificate for `csr` from the upstream server.
    pub(crate) fn mint(&self, csr: Vec<u8>, ttl: Duration) -> Result<Minted, CaError> {
        block_on(async {
            let f = self.fetch().await?;
            let mut c = self.upstream_client(&f).await?;
            let resp = tokio::time::timeout(
                CALL_TIMEOUT,
                c.new_downstream_x509ca(pb::NewDownstreamX509caRequest {
                    csr,
                    preferred_ttl: ttl.as_secs() as i64,
                }),
            )
            .await
            .map_err(|_| upstream_err("NewDownstreamX509CA", "timed out"))?
            .map_err(|s| upstream_err("NewDownstreamX509CA", s.message()))?
            .into_inner();
            if resp.ca_cert_chain.is_empty() || resp.x509_authorities.is_empty() {
                return Err(upstream_err(
                    "NewDownstreamX509CA",
                    "the upstream server answered without a CA or roots",
                ));
            }
            Ok(Minted {
                ca_chain: resp.ca_cert_chain,
                roots: resp.x509_authorities,
            })
        })
    }

    /// Follows the upstream server's bundle (roots, every server's JWT keys, and what is
    /// tainted there), read from the upstream itself; our own JWT keys that are not in it yet
    /// are published first.
    pub(crate) async fn follow(&self, own_jwt: &[JwtAuthority]) -> Result<Followed, CaError> {
        let f = self.fetch_once().await?;
        let mut c = self.upstream_client(&f).await?;
        let b = tokio::time::timeout(
            CALL_TIMEOUT,
            c.get_downstream_bundle(pb::GetDownstreamBundleRequest {}),
        )
        .await
        .map_err(|_| upstream_err("GetDownstreamBundle", "timed out"))?
        .map_err(|s| upstream_err("GetDownstreamBundle", s.message()))?
        .into_inner();
        let mut jwt: Vec<JwtAuthority> = b
            .jwt_authorities
            .iter()
            .map(|k| JwtAuthority {
                key_id: k.key_id.clone(),
                public_key_der: k.public_key.clone(),
                expires_at: k.expires_at,
            })
            .collect();
        let missing: Vec<&JwtAuthority> = own_jwt
            .iter()
            .filter(|k| !jwt.iter().any(|u| u.key_id == k.key_id))
            .collect();
        if !missing.is_empty() {
            for k in missing {
                let resp = c
                    .publish_jwt_authority(pb::PublishJwtAuthorityRequest {
                        jwt_authority: Some(types::JwtKey {
                            key_id: k.key_id.clone(),
                            public_key: k.public_key_der.clone(),
                            expires_at: k.expires_at,
                        }),
                    })
                    .await
                    .map_err(|s| upstream_err("PublishJWTAuthority", s.message()))?
                    .into_inner();
                tracing::info!(kid = %k.key_id, "JWT authority published upstream");
                jwt = resp
                    .jwt_authorities
                    .into_iter()
                    .map(|k| JwtAuthority {
                        key_id: k.key_id,
                        public_key_der: k.public_key,
                        expires_at: k.expires_at,
                    })
                    .collect();
            }
        }
        let roots = if b.x509_authorities.is_empty() {
            f.roots
        } else {
            b.x509_authorities
        };
        Ok(Followed {
            roots,
            jwt,
            tainted_x509: b.tainted_x509_authorities.into_iter().collect(),
            tainted_jwt: b.tainted_jwt_authorities.into_iter().collect(),
        })
    }
}

/// The upstream server's bundle as a downstream server follows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Followed {
    pub roots: Vec<Vec<u8>>,
    pub jwt: Vec<JwtAuthority>,
    pub tainted_x509: std::collections::BTreeSet<String>,
    pub tainted_jwt: std::collections::BTreeSet<String>,
}
