//! SPIFFE mTLS with rustls: both sides present their X509-SVID, and each side's verifier
//!
//! 1. verifies the peer's chain against the trust bundle from the Workload API with
//!    [`sigil_spiffe::x509::verify_svid_chain`] (signatures, validity, SVID structure), then
//! 2. authorizes the peer only if its SPIFFE ID is on an allow-list.
//!
//! DNS names play no part: the server name the client passes to rustls is ignored.

use crate::workload::Svid;
use anyhow::{Context, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use std::sync::{Arc, Mutex};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Checks a peer's SVID chain and SPIFFE ID. Remembers why it last rejected a peer, so callers
/// can print the reason (rustls only reports an alert).
#[derive(Debug)]
pub struct SpiffeVerifier {
    roots: Vec<Vec<u8>>,
    allowed: Vec<String>,
    algorithms: WebPkiSupportedAlgorithms,
    last_rejection: Mutex<Option<String>>,
}

impl SpiffeVerifier {
    /// `roots`: X.509 authorities of the trust domain (DER); `allowed`: SPIFFE IDs to accept.
    pub fn new(roots: Vec<Vec<u8>>, allowed: Vec<String>) -> Self {
        Self {
            roots,
            allowed,
            algorithms: provider().signature_verification_algorithms,
            last_rejection: Mutex::new(None),
        }
    }

    /// Why the last peer was rejected, if one was (and clears it).
    pub fn take_rejection(&self) -> Option<String> {
        self.last_rejection.lock().ok().and_then(|mut r| r.take())
    }

    fn reject(&self, reason: String, err: CertificateError) -> rustls::Error {
        if let Ok(mut r) = self.last_rejection.lock() {
            *r = Some(reason);
        }
        rustls::Error::InvalidCertificate(err)
    }

    /// Verifies the chain, then the allow-list; returns the peer's SPIFFE ID.
    pub fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<String, rustls::Error> {
        let chain: Vec<Vec<u8>> = std::iter::once(end_entity)
            .chain(intermediates)
            .map(|c| c.as_ref().to_vec())
            .collect();
        let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        let id = sigil_spiffe::x509::verify_svid_chain(&chain, &self.roots, now).map_err(|e| {
            self.reject(
                format!("peer's X509-SVID failed verification: {e}"),
                CertificateError::BadSignature,
            )
        })?;
        let id = id.to_string();
        if !self.allowed.contains(&id) {
            return Err(self.reject(
                format!(
                    "peer {id} is not authorized (allowed: {})",
                    self.allowed.join(", ")
                ),
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(id)
    }
}

impl ServerCertVerifier for SpiffeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity, intermediates, now)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl ClientCertVerifier for SpiffeVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity, intermediates, now)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

fn identity(svid: &Svid) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let chain = svid
        .chain
        .iter()
        .cloned()
        .map(CertificateDer::from)
        .collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(svid.key.clone()));
    (chain, key)
}

/// A server config presenting `svid` and requiring a client SVID from `allowed`.
pub fn server_config(
    svid: &Svid,
    allowed: Vec<String>,
) -> Result<(rustls::ServerConfig, Arc<SpiffeVerifier>)> {
    let verifier = Arc::new(SpiffeVerifier::new(svid.bundle.clone(), allowed));
    let (chain, key) = identity(svid);
    let cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier.clone())
        .with_single_cert(chain, key)
        .context("loading the server's SVID into rustls")?;
    Ok((cfg, verifier))
}

/// A client config presenting `svid` and requiring a server SVID from `allowed`.
pub fn client_config(
    svid: &Svid,
    allowed: Vec<String>,
) -> Result<(rustls::ClientConfig, Arc<SpiffeVerifier>)> {
    let verifier = Arc::new(SpiffeVerifier::new(svid.bundle.clone(), allowed));
    let (chain, key) = identity(svid);
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_client_auth_cert(chain, key)
        .context("loading the client's SVID into rustls")?;
    Ok((cfg, verifier))
}

/// The SPIFFE ID in a peer's leaf certificate.
pub fn peer_id(certs: Option<&[CertificateDer<'_>]>) -> Option<String> {
    let leaf = certs?.first()?;
    sigil_spiffe::x509::spiffe_id_of_cert(leaf.as_ref())
        .ok()
        .map(|id| id.to_string())
}
