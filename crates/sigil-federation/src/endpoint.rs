//! The bundle endpoint: the trust domain's bundle as a SPIFFE bundle document on `GET /`, over
//! TLS 1.2 or 1.3 (rustls has nothing older), `Content-Type: application/json`.
//!
//! The certificate is the caller's choice ([`rustls::server::ResolvesServerCert`]): the
//! server's own rotating SVID for `https_spiffe`, or [`FileCert`] (a Web PKI certificate and
//! key from files, read again when they change) for `https_web`.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// What the endpoint serves: the current bundle document, built per request (it changes with
/// every CA rotation).
pub type BundleDocument = Arc<dyn Fn() -> String + Send + Sync>;

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS acceptor of a bundle endpoint presenting `cert` (TLS 1.2 and 1.3 only).
pub fn acceptor(cert: Arc<dyn ResolvesServerCert>) -> Result<TlsAcceptor, rustls::Error> {
    let config = rustls::ServerConfig::builder_with_provider(sigil_tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves the bundle endpoint on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, acceptor: TlsAcceptor, document: BundleDocument) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(error) => {
                tracing::warn!(%error, "bundle endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let document = document.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "bundle endpoint: TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let service = hyper::service::service_fn(move |req| {
                let document = document.clone();
                async move { Ok::<_, Infallible>(respond(&req, &document)) }
            });
            if let Err(error) = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%peer, %error, "bundle endpoint: connection ended");
            }
        });
    }
}

fn respond<B>(req: &Request<B>, document: &BundleDocument) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        Response::builder()
            .status(status)
            .header("Content-Type", content_type)
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_default()
    };
    if req.uri().path() != "/" {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "404 page not found\n".into(),
        );
    }
    if req.method() != Method::GET {
        let mut r = reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "method not allowed\n".into(),
        );
        r.headers_mut()
            .insert("Allow", hyper::header::HeaderValue::from_static("GET"));
        return r;
    }
    reply(StatusCode::OK, "application/json", document())
}

/// A certificate and key from PEM files (SPIRE's `serving_cert_file`), read again when their
/// modification time changes, checked every `file_sync_interval`. A file that cannot be read
/// or parsed keeps the previous certificate in service (and is logged).
pub struct FileCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<(Arc<CertifiedKey>, Option<SystemTime>, Option<SystemTime>)>,
}

/// Why a certificate file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FileCertError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
}

// === impl FileCert ===

impl std::fmt::Debug for FileCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Holds a private key: only the paths are shown.
        f.debug_struct("FileCert")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .finish_non_exhaustive()
    }
}

impl FileCert {
    /// Loads the files once; an error here stops start-up.
    pub fn load(cert_path: PathBuf, key_path: PathBuf) -> Result<Arc<Self>, FileCertError> {
        let (ck, c, k) = read_pair(&cert_path, &key_path)?;
        Ok(Arc::new(Self {
            cert_path,
            key_path,
            current: RwLock::new((Arc::new(ck), c, k)),
        }))
    }

    /// Reads the files again if they changed since the last read.
    pub fn reload_if_changed(&self) -> Result<bool, FileCertError> {
        let mtime = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let (c, k) = (mtime(&self.cert_path), mtime(&self.key_path));
        {
            let cur = self.current.read().unwrap_or_else(|e| e.into_inner());
            if cur.1 == c && cur.2 == k {
                return Ok(false);
            }
        }
        let (ck, c, k) = read_pair(&self.cert_path, &self.key_path)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = (Arc::new(ck), c, k);
        Ok(true)
    }

    /// Checks the files every `interval` for as long as the task runs (the bundle endpoint
    /// and sigil-oidc's `serving_cert_file`).
    pub async fn watch(self: Arc<Self>, interval: Duration) {
        let mut tick = tokio::time::interval(interval.max(Duration::from_secs(1)));
        loop {
            tick.tick().await;
            match self.reload_if_changed() {
                Ok(true) => {
                    tracing::info!(cert = %self.cert_path.display(), "serving certificate reloaded")
                }
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(%error, "keeping the previous serving certificate")
                }
            }
        }
    }
}

impl ResolvesServerCert for FileCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .0
                .clone(),
        )
    }
}

fn read_pair(
    cert_path: &PathBuf,
    key_path: &PathBuf,
) -> Result<(CertifiedKey, Option<SystemTime>, Option<SystemTime>), FileCertError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let read = |p: &PathBuf| {
        std::fs::read(p).map_err(|source| FileCertError::Read {
            path: p.display().to_string(),
            source,
        })
    };
    let invalid = |p: &PathBuf, reason: String| FileCertError::Invalid {
        path: p.display().to_string(),
        reason,
    };
    let cert_pem = read(cert_path)?;
    let key_pem = read(key_path)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(cert_path, e.to_string()))?;
    if chain.is_empty() {
        return Err(invalid(cert_path, "no certificate in the file".into()));
    }
    let key =
        PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| invalid(key_path, e.to_string()))?;
    let signing = sigil_tls::provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| invalid(key_path, e.to_string()))?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match()
        .map_err(|e| invalid(key_path, format!("does not match the certificate: {e}")))?;
    let mtime = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    Ok((ck, mtime(cert_path), mtime(key_path)))
}
