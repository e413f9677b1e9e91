//! TLS to the server: SPIFFE authentication instead of Web PKI (the shared `sigil_tls`
//! verifier: webpki path validation with the SPIFFE rules on top).
//!
//! The server is identified by its SPIFFE ID (`spiffe://<td>/spire/server`) in an X509-SVID
//! chaining to the trust bundle, not by a DNS name: agents reach it by IP, service name or load
//! balancer interchangeably, so a hostname check would prove nothing and break often. The
//! connector plugs this TLS into tonic (which is built without TLS of its own).

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName};
use sigil_spiffe::SpiffeId;
use sigil_tls::{Authorizer, Roots, SvidVerifier};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::keys::PrivateKeyDer;

/// How the server's certificate is checked.
#[derive(Clone)]
pub enum ServerTrust {
    /// Chain to these roots (DER) and carry exactly this SPIFFE ID.
    Bundle {
        roots: Arc<Vec<Vec<u8>>>,
        server_id: SpiffeId,
    },
    /// `insecure_bootstrap`: accept any certificate (the handshake signature is still checked,
    /// so the peer does hold the key of the certificate it sent). Only ever used for the first
    /// AttestAgent; everything afterwards is verified against the bundle it returned.
    InsecureBootstrap,
}

/// The client side of the agent's mTLS: its SVID chain (leaf first) and key.
#[derive(Clone)]
pub struct ClientIdentity {
    pub chain: Vec<Vec<u8>>,
    pub key: PrivateKeyDer,
}

/// A tower service (`Uri` → connection) doing TCP + TLS for tonic's `connect_with_connector`.
/// The URI is ignored: the address and TLS settings are fixed at construction, and the config is
/// re-read on every connection so a renewed SVID or rotated bundle applies to reconnects.
#[derive(Clone)]
pub struct TlsConnector {
    addr: String,
    server_name: ServerName<'static>,
    config: Arc<dyn Fn() -> Result<Arc<ClientConfig>, rustls::Error> + Send + Sync>,
}

// === impl ServerTrust ===

impl fmt::Debug for ServerTrust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bundle { roots, server_id } => f
                .debug_struct("Bundle")
                .field("roots", &roots.len())
                .field("server_id", server_id)
                .finish(),
            Self::InsecureBootstrap => f.write_str("InsecureBootstrap"),
        }
    }
}

impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("chain_len", &self.chain.len())
            .field("key", &self.key)
            .finish()
    }
}

/// The crypto provider every agent TLS config uses (ring, per the workspace features).
pub fn provider() -> Arc<CryptoProvider> {
    sigil_tls::provider()
}

/// A client config for talking to the server.
pub fn client_config(
    trust: ServerTrust,
    identity: Option<&ClientIdentity>,
) -> Result<Arc<ClientConfig>, rustls::Error> {
    let verifier = Arc::new(match trust {
        ServerTrust::Bundle { roots, server_id } => {
            SvidVerifier::new(Roots::Static(roots), Authorizer::Id(server_id))
        }
        ServerTrust::InsecureBootstrap => SvidVerifier::insecure_bootstrap(),
    });
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match identity {
        Some(id) => builder.with_client_auth_cert(
            id.chain.iter().cloned().map(CertificateDer::from).collect(),
            id.key.to_rustls(),
        )?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

// === impl TlsConnector ===

impl TlsConnector {
    pub fn new(
        host: &str,
        port: u16,
        config: impl Fn() -> Result<Arc<ClientConfig>, rustls::Error> + Send + Sync + 'static,
    ) -> Self {
        // The SNI value is irrelevant to verification (see the module docs); an IP literal is
        // sent as no SNI at all, which rustls handles.
        // Invariant: `host` is a validated `ServerHost` (DNS name or IP literal), so the fallback
        // is unreachable; it only keeps this total without a panic.
        let server_name = ServerName::try_from(host.to_string())
            .unwrap_or(ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
        let addr = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Self {
            addr,
            server_name,
            config: Arc::new(config),
        }
    }
}

impl fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConnector")
            .field("addr", &self.addr)
            .finish()
    }
}

impl tower::Service<tonic::codegen::http::Uri> for TlsConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: tonic::codegen::http::Uri) -> Self::Future {
        let addr = self.addr.clone();
        let name = self.server_name.clone();
        let config = (self.config)();
        Box::pin(async move {
            let config = config.map_err(io::Error::other)?;
            let tcp = TcpStream::connect(&addr).await?;
            tcp.set_nodelay(true)?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok(TokioIo::new(tls))
        })
    }
}
