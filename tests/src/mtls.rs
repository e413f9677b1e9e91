//! SPIFFE mTLS with rustls: both sides present their X509-SVID, and each side's verifier
//!
//! 1. verifies the peer's chain against the trust bundle from the Workload API with Sigil's
//!    shared verifier (`sigil_tls`: webpki path validation, then the SPIFFE SVID rules), then
//! 2. authorizes the peer only if its SPIFFE ID is on an allow-list.
//!
//! DNS names play no part: the server name the client passes to rustls is ignored.

use crate::workload::Svid;
use anyhow::{Context, Result};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sigil_tls::{Authorizer, Roots, SvidVerifier};
use std::sync::Arc;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    sigil_tls::provider()
}

/// Checks a peer's SVID chain and SPIFFE ID: Sigil's shared verifier. It remembers why it last
/// rejected a peer ([`SvidVerifier::take_rejection`]), so callers can print the reason (rustls
/// only reports an alert).
pub type SpiffeVerifier = SvidVerifier;

/// A verifier of peers chaining to `roots` (the trust domain's X.509 authorities, DER) whose
/// SPIFFE ID is one of `allowed`.
pub fn verifier(roots: Vec<Vec<u8>>, allowed: &[String]) -> Result<SpiffeVerifier> {
    let ids = allowed
        .iter()
        .map(|id| {
            id.parse::<sigil_spiffe::SpiffeId>()
                .with_context(|| format!("allowed SPIFFE ID {id:?}"))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(SvidVerifier::new(
        Roots::fixed(roots),
        Authorizer::OneOf(ids),
    ))
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
    let verifier = Arc::new(verifier(svid.bundle.clone(), &allowed)?);
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
    let verifier = Arc::new(verifier(svid.bundle.clone(), &allowed)?);
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
