//! TLS for the agent API: the server presents its own SVID (`spiffe://<td>/spire/server`,
//! renewed at half-life) and verifies agents' SVIDs against the CA's current roots. Client
//! certificates are optional at the TLS layer because `AttestAgent` runs before an agent has one;
//! every other RPC requires the verified identity (see `api::node`).

use crate::ca::Ca;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sigil_spiffe::SpiffeId;
use sigil_tls::{Authorizer, Roots, SvidVerifier};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// The server's own rotating TLS identity (holds its private key: `Debug` shows dates only).
pub struct ServerIdentity {
    current: RwLock<Arc<CertifiedKey>>,
    expires_at: RwLock<i64>,
    issued_at: RwLock<i64>,
}

// === impl ServerIdentity ===

impl std::fmt::Debug for ServerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerIdentity")
            .field(
                "issued_at",
                &*self.issued_at.read().unwrap_or_else(|p| p.into_inner()),
            )
            .field(
                "expires_at",
                &*self.expires_at.read().unwrap_or_else(|p| p.into_inner()),
            )
            .finish_non_exhaustive()
    }
}

impl ServerIdentity {
    /// Issues the first server SVID.
    pub fn new(ca: &Ca, ttl: Duration) -> Result<Self, String> {
        let (ck, exp) = Self::issue(ca, ttl)?;
        Ok(Self {
            current: RwLock::new(Arc::new(ck)),
            expires_at: RwLock::new(exp),
            issued_at: RwLock::new(crate::now_unix()),
        })
    }

    fn issue(ca: &Ca, ttl: Duration) -> Result<(CertifiedKey, i64), String> {
        let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let id =
            SpiffeId::from_path(ca.trust_domain(), "/spire/server").map_err(|e| e.to_string())?;
        let svid = ca
            .sign_x509_svid(&key, &id, &[], ttl, crate::now_unix())
            .map_err(|e| e.to_string())?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signing =
            rustls::crypto::ring::sign::any_ecdsa_type(&der).map_err(|e| e.to_string())?;
        let chain = svid.chain.into_iter().map(CertificateDer::from).collect();
        Ok((CertifiedKey::new(chain, signing), svid.expires_at))
    }

    /// Re-issues the SVID when half its lifetime has passed (or the CA changed).
    pub fn renew_if_due(&self, ca: &Ca, ttl: Duration, force: bool) -> Result<bool, String> {
        let now = crate::now_unix();
        let issued = *self.issued_at.read().unwrap_or_else(|p| p.into_inner());
        let exp = *self.expires_at.read().unwrap_or_else(|p| p.into_inner());
        if !force && now < issued + (exp - issued) / 2 {
            return Ok(false);
        }
        let (ck, exp) = Self::issue(ca, ttl)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(ck);
        *self.expires_at.write().unwrap_or_else(|p| p.into_inner()) = exp;
        *self.issued_at.write().unwrap_or_else(|p| p.into_inner()) = now;
        Ok(true)
    }
}

#[derive(Debug)]
struct Resolver(Arc<ServerIdentity>);

/// The server's current SVID as a rustls certificate source (the agent API, the bundle
/// endpoint's `https_spiffe` profile).
pub fn resolver(identity: Arc<ServerIdentity>) -> Arc<dyn ResolvesServerCert> {
    Arc::new(Resolver(identity))
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.0
                .current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

/// Builds the acceptor for the agent API.
pub fn acceptor(ca: Arc<Ca>, identity: Arc<ServerIdentity>) -> Result<TlsAcceptor, rustls::Error> {
    // Agents' SVIDs are verified against the CA's current roots, read per handshake because
    // they change on rotation. Client certificates are optional: AttestAgent runs before an
    // agent has one (every other call requires the verified identity, see `api::node`).
    let td = ca.trust_domain().clone();
    let verifier = SvidVerifier::new(
        Roots::dynamic(move || ca.x509_roots()),
        Authorizer::MemberOf(td),
    )
    .client_auth_optional();
    let mut cfg = rustls::ServerConfig::builder_with_provider(sigil_tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(Resolver(identity)));
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

/// What the handlers learn about the peer of a TLS connection.
#[derive(Debug, Clone)]
pub struct PeerIdentity {
    /// The verified agent SVID's SPIFFE ID, if a client certificate was presented.
    pub spiffe_id: Option<SpiffeId>,
    /// Serial of the presented certificate (hex).
    pub serial_hex: Option<String>,
    pub remote_addr: Option<SocketAddr>,
}

/// A TLS connection carrying its verified peer identity.
#[derive(Debug)]
pub struct TlsConn {
    inner: TlsStream<TcpStream>,
    peer: PeerIdentity,
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = PeerIdentity;
    fn connect_info(&self) -> PeerIdentity {
        self.peer.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// TLS handshakes in progress at once, by default. Each costs a task, buffers and (for a
/// client certificate) a chain verification; past this many, new connections wait in the
/// kernel's accept queue instead of growing memory and CPU without bound.
pub const MAX_CONCURRENT_HANDSHAKES: usize = 512;
/// How long a client may take to complete its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts TCP connections and completes TLS handshakes concurrently (a slow or hostile client
/// cannot stall others), at most `max_handshakes` at a time, yielding connections with their
/// peer identity.
pub fn incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    max_handshakes: usize,
) -> tokio_stream::wrappers::ReceiverStream<Result<TlsConn, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(128);
    let permits = Arc::new(tokio::sync::Semaphore::new(max_handshakes.max(1)));
    tokio::spawn(async move {
        loop {
            // Invariant: the semaphore is never closed, so acquiring only waits.
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let (tcp, addr) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
                drop(permit);
                let tls = match handshake {
                    Ok(Ok(t)) => t,
                    Ok(Err(e)) => {
                        tracing::debug!(%addr, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%addr, "TLS handshake timed out");
                        return;
                    }
                };
                let leaf = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| c.to_vec());
                let peer = PeerIdentity {
                    spiffe_id: leaf
                        .as_ref()
                        .and_then(|d| sigil_spiffe::x509::spiffe_id_of_cert(d).ok()),
                    serial_hex: leaf
                        .as_ref()
                        .and_then(|d| sigil_spiffe::x509::serial_hex(d).ok()),
                    remote_addr: Some(addr),
                };
                let _ = tx.send(Ok(TlsConn { inner: tls, peer })).await;
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::CaConfig;
    use crate::config::{CaSubject, KeyManager, KeyType};
    use tokio_stream::StreamExt;

    /// Beyond the cap, new handshakes wait (in the accept queue) until running ones finish, so
    /// idle or slow clients cannot make the server hold unbounded handshake state.
    #[tokio::test]
    async fn concurrent_handshakes_are_capped() {
        let ca = Arc::new(
            Ca::load_or_create(CaConfig {
                trust_domain: "example.org".parse().unwrap(),
                ca_ttl: Duration::from_secs(3600),
                subject: CaSubject::default(),
                key_type: KeyType::EcP256,
                key_manager: KeyManager::Memory,
                jwt_issuer: None,
                upstream: None,
            })
            .unwrap(),
        );
        let identity = Arc::new(ServerIdentity::new(&ca, Duration::from_secs(600)).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut conns = incoming(listener, acceptor(ca, identity).unwrap(), 2);
        tokio::spawn(async move { while conns.next().await.is_some() {} });

        // Two clients that connect and never say anything hold both permits.
        let idle = [
            TcpStream::connect(addr).await.unwrap(),
            TcpStream::connect(addr).await.unwrap(),
        ];
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut cfg = rustls::ClientConfig::builder_with_provider(sigil_tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(
                sigil_tls::SvidVerifier::insecure_bootstrap(),
            ))
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
        let handshake = {
            let connector = connector.clone();
            tokio::spawn(async move {
                let tcp = TcpStream::connect(addr).await.unwrap();
                let name = rustls::pki_types::ServerName::try_from("sigil").unwrap();
                connector.connect(name, tcp).await.map(drop)
            })
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            !handshake.is_finished(),
            "a third handshake ran past the cap"
        );
        // The idle clients leave: their handshakes fail, the waiting one proceeds.
        drop(idle);
        tokio::time::timeout(Duration::from_secs(5), handshake)
            .await
            .expect("the waiting handshake completes once permits are free")
            .unwrap()
            .unwrap();
    }
}
