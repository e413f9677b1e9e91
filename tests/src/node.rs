//! Raw calls to the server's agent API (`sigil.agent.v1.Node`) with a given agent SVID, for
//! checking what the server accepts, independently of `sigil-agent`.

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use sigil_proto::agent as pb;
use sigil_proto::agent::node_client::NodeClient;
use std::net::SocketAddr;
use std::sync::Arc;

/// Calls `SignJwtSvid` for an entry that does not exist, presenting `svid_pem` (leaf first) and
/// `key_pem` (PKCS#8), with the server verified against `roots`. The status the server answers
/// with: `PermissionDenied` "not authorized" means the SVID authenticated, other refusals say
/// why it did not. `None` if no call could be made (connection, TLS).
pub async fn jwt_call(
    addr: SocketAddr,
    roots: &[Vec<u8>],
    svid_pem: &[u8],
    key_pem: &[u8],
) -> Option<tonic::Status> {
    let chain = sigil_spiffe::x509::parse_pem_certs(svid_pem).ok()?;
    let key = sigil_spiffe::x509::parse_pkcs8_key_pem(key_pem).ok()?;
    let td = sigil_spiffe::x509::spiffe_id_of_cert(chain.first()?)
        .ok()?
        .trust_domain()
        .clone();
    let server_id = sigil_spiffe::SpiffeId::from_path(&td, "/spire/server").ok()?;
    let verifier = sigil_tls::SvidVerifier::new(
        sigil_tls::Roots::fixed(roots.to_vec()),
        sigil_tls::Authorizer::Id(server_id),
    );
    let mut cfg = rustls::ClientConfig::builder_with_provider(sigil_tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .ok()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(
            chain.into_iter().map(CertificateDer::from).collect(),
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
        )
        .ok()?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let channel = tonic::transport::Endpoint::try_from("http://127.0.0.1")
        .ok()?
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let connector = connector.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                let name = ServerName::try_from("sigil-server").map_err(std::io::Error::other)?;
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await
        .ok()?;
    NodeClient::new(channel)
        .sign_jwt_svid(pb::SignJwtSvidRequest {
            entry_id: "no-such-entry".into(),
            audience: vec!["e2e".into()],
        })
        .await
        .err()
}

/// An agent API client presenting `chain` (leaf first, DER) and `key` (PKCS#8 DER), the server
/// verified as `spiffe://<td>/spire/server` against `roots`.
pub async fn client(
    addr: SocketAddr,
    roots: &[Vec<u8>],
    chain: &[Vec<u8>],
    key: &[u8],
) -> anyhow::Result<NodeClient<tonic::transport::Channel>> {
    let td = sigil_spiffe::x509::spiffe_id_of_cert(
        chain
            .first()
            .ok_or_else(|| anyhow::anyhow!("empty chain"))?,
    )?
    .trust_domain()
    .clone();
    let server_id = sigil_spiffe::SpiffeId::from_path(&td, "/spire/server")?;
    let verifier = sigil_tls::SvidVerifier::new(
        sigil_tls::Roots::fixed(roots.to_vec()),
        sigil_tls::Authorizer::Id(server_id),
    );
    let mut cfg = rustls::ClientConfig::builder_with_provider(sigil_tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(
            chain.iter().cloned().map(CertificateDer::from).collect(),
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_vec())),
        )?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let channel = tonic::transport::Endpoint::try_from("http://127.0.0.1")?
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let connector = connector.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                let name = ServerName::try_from("sigil-server").map_err(std::io::Error::other)?;
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await?;
    Ok(NodeClient::new(channel))
}
