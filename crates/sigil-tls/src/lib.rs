//! SPIFFE authentication for rustls: one X509-SVID verifier for every TLS connection Sigil makes
//! or accepts (server ↔ agent, and the tests' mTLS peers).
//!
//! Verification is layered the way go-spiffe layers it over Go's `crypto/x509`:
//!
//! 1. **Path validation by maintained code**: `rustls-webpki` builds a path from the leaf through
//!    the presented intermediates to one of the trust domain's X.509 authorities, checking
//!    signatures, validity periods, basic constraints and path length, name constraints,
//!    extended key usage (server or client authentication, if the certificate lists any) and
//!    refusing unknown critical extensions.
//! 2. **SPIFFE rules on top** ([`sigil_spiffe::x509::validate_svid_chain`]): the leaf carries
//!    exactly one URI SAN and it is a SPIFFE ID, the leaf is not a CA, its key usage has
//!    digitalSignature and neither keyCertSign nor cRLSign; every signing certificate is a CA.
//! 3. **Authorization** of the verified ID ([`Authorizer`]): an exact ID, one of several, any
//!    member of a trust domain.
//!
//! DNS names play no part: peers are reached by IP, service name or load balancer alike, so the
//! server name a client passes to rustls is ignored.

use std::fmt;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use sigil_spiffe::x509::SvidError;
use sigil_spiffe::{SpiffeId, TrustDomain};

/// Which TLS role the verified certificate plays: selects the extended key usage webpki
/// requires when the certificate lists any (SVIDs usually list both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// The peer is a TLS server (`id-kp-serverAuth`).
    Server,
    /// The peer is a TLS client (`id-kp-clientAuth`).
    Client,
}

/// Which verified SPIFFE IDs a verifier accepts (go-spiffe's `tlsconfig.Authorizer`s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authorizer {
    /// Exactly this ID.
    Id(SpiffeId),
    /// Any of these IDs.
    OneOf(Vec<SpiffeId>),
    /// Any ID in this trust domain.
    MemberOf(TrustDomain),
}

/// Why a peer's certificate was refused.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The certificate path does not validate (signature, time, constraints, EKU, critical
    /// extensions, or no path to a trusted authority).
    #[error("certificate path validation failed: {0}")]
    Path(webpki::Error),
    /// The chain is not a valid X509-SVID.
    #[error("not a valid X509-SVID: {0}")]
    Svid(#[from] SvidError),
    /// The chain is fine but its ID is not the one expected.
    #[error("SPIFFE ID {got} is not authorized: expected {expected}")]
    Unauthorized { got: SpiffeId, expected: String },
    /// No authority to verify against.
    #[error("no X.509 authorities to verify against")]
    NoRoots,
}

/// Where the trusted X.509 authorities (DER) come from. Read on every handshake, so a CA
/// rotation or bundle update applies to the next connection without rebuilding TLS configs.
#[derive(Clone)]
pub enum Roots {
    /// A fixed set.
    Static(Arc<Vec<Vec<u8>>>),
    /// Produced per handshake (e.g. the server's CA, which rotates).
    Dynamic(Arc<dyn Fn() -> Vec<Vec<u8>> + Send + Sync>),
}

/// The rustls verifier (both [`ServerCertVerifier`] and [`ClientCertVerifier`]). See the crate
/// docs for what it checks.
pub struct SvidVerifier {
    trust: Trust,
    algorithms: WebPkiSupportedAlgorithms,
    client_auth_mandatory: bool,
    /// Why the last peer was refused: rustls only sends the peer an alert, so callers that
    /// want to say why (the demo, tests) read it here.
    last_rejection: Mutex<Option<String>>,
}

enum Trust {
    Verify {
        roots: Roots,
        authorizer: Authorizer,
    },
    /// Bootstrap only: see [`SvidVerifier::insecure_bootstrap`].
    InsecureBootstrap,
}

/// The crypto provider for every Sigil TLS config (ring, per the workspace features).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Verifies an X509-SVID chain (leaf first) against `roots` at `now` for `usage`, returning
/// the leaf's SPIFFE ID. Authorization is the caller's business (see [`Authorizer::check`]).
pub fn verify_svid(
    chain: &[CertificateDer<'_>],
    roots: &[Vec<u8>],
    now: UnixTime,
    usage: Usage,
) -> Result<SpiffeId, VerifyError> {
    let (leaf, intermediates) = chain
        .split_first()
        .ok_or(VerifyError::Svid(SvidError::EmptyChain))?;
    // SPIFFE structure first: it names the precise rule a malformed SVID breaks, where
    // webpki would only say "bad certificate".
    let owned: Vec<Vec<u8>> = chain.iter().map(|c| c.as_ref().to_vec()).collect();
    let id = sigil_spiffe::x509::validate_svid_chain(&owned)?;

    let root_ders: Vec<CertificateDer<'_>> = roots
        .iter()
        .map(|r| CertificateDer::from(r.as_slice()))
        .collect();
    // A root that does not parse cannot anchor anything; skipping it only narrows trust.
    let anchors: Vec<_> = root_ders
        .iter()
        .filter_map(|r| webpki::anchor_from_trusted_cert(r).ok())
        .collect();
    if anchors.is_empty() {
        return Err(VerifyError::NoRoots);
    }
    let ee = webpki::EndEntityCert::try_from(leaf).map_err(VerifyError::Path)?;
    let eku = match usage {
        Usage::Server => webpki::KeyUsage::server_auth(),
        Usage::Client => webpki::KeyUsage::client_auth(),
    };
    ee.verify_for_usage(
        provider().signature_verification_algorithms.all,
        &anchors,
        intermediates,
        now,
        eku,
        None,
        None,
    )
    .map_err(VerifyError::Path)?;
    Ok(id)
}

// === impl Authorizer ===

impl Authorizer {
    /// Accepts `id` or says what was expected.
    pub fn check(&self, id: &SpiffeId) -> Result<(), VerifyError> {
        let ok = match self {
            Self::Id(want) => want == id,
            Self::OneOf(ids) => ids.contains(id),
            Self::MemberOf(td) => id.is_member_of(td),
        };
        if ok {
            return Ok(());
        }
        let expected = match self {
            Self::Id(want) => want.to_string(),
            Self::OneOf(ids) => {
                let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
                format!("one of {}", ids.join(", "))
            }
            Self::MemberOf(td) => format!("a member of trust domain {}", td.as_str()),
        };
        Err(VerifyError::Unauthorized {
            got: id.clone(),
            expected,
        })
    }
}

// === impl VerifyError ===

impl VerifyError {
    /// The closest rustls certificate error, so peers get a meaningful TLS alert.
    fn to_rustls(&self) -> rustls::Error {
        let err = match self {
            Self::Path(webpki::Error::CertExpired { .. }) => CertificateError::Expired,
            Self::Path(webpki::Error::CertNotValidYet { .. }) => CertificateError::NotValidYet,
            Self::Path(webpki::Error::UnknownIssuer) | Self::NoRoots => {
                CertificateError::UnknownIssuer
            }
            Self::Path(webpki::Error::InvalidSignatureForPublicKey) => {
                CertificateError::BadSignature
            }
            Self::Path(webpki::Error::RequiredEkuNotFoundContext(_)) => {
                CertificateError::InvalidPurpose
            }
            Self::Unauthorized { .. } => CertificateError::ApplicationVerificationFailure,
            other => CertificateError::Other(rustls::OtherError(Arc::new(std::io::Error::other(
                other.to_string(),
            )))),
        };
        rustls::Error::InvalidCertificate(err)
    }
}

// === impl Roots ===

impl Roots {
    pub fn fixed(roots: Vec<Vec<u8>>) -> Self {
        Self::Static(Arc::new(roots))
    }

    pub fn dynamic(f: impl Fn() -> Vec<Vec<u8>> + Send + Sync + 'static) -> Self {
        Self::Dynamic(Arc::new(f))
    }

    fn with<R>(&self, f: impl FnOnce(&[Vec<u8>]) -> R) -> R {
        match self {
            Self::Static(r) => f(r),
            Self::Dynamic(g) => f(&g()),
        }
    }
}

impl fmt::Debug for Roots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Static(r) => f.debug_tuple("Static").field(&r.len()).finish(),
            Self::Dynamic(_) => f.write_str("Dynamic"),
        }
    }
}

// === impl SvidVerifier ===

impl SvidVerifier {
    /// Verifies peers against `roots` and accepts those `authorizer` allows. As a client
    /// verifier, a client certificate is requested and required.
    pub fn new(roots: Roots, authorizer: Authorizer) -> Self {
        Self {
            trust: Trust::Verify { roots, authorizer },
            algorithms: provider().signature_verification_algorithms,
            client_auth_mandatory: true,
            last_rejection: Mutex::new(None),
        }
    }

    /// As a client verifier: request a client certificate but let clients without one in (the
    /// application then decides per call; a presented certificate is still fully verified).
    pub fn client_auth_optional(mut self) -> Self {
        self.client_auth_mandatory = false;
        self
    }

    /// Accepts any server certificate: `insecure_bootstrap`, only ever used by an agent for its
    /// first AttestAgent, whose answer (the bundle) everything afterwards is verified against.
    /// The handshake signature is still checked, so the peer holds the key of what it sent.
    pub fn insecure_bootstrap() -> Self {
        Self {
            trust: Trust::InsecureBootstrap,
            algorithms: provider().signature_verification_algorithms,
            client_auth_mandatory: true,
            last_rejection: Mutex::new(None),
        }
    }

    /// Why the last peer was refused, if one was (and clears it).
    pub fn take_rejection(&self) -> Option<String> {
        self.last_rejection.lock().ok().and_then(|mut r| r.take())
    }

    /// Verifies and authorizes a presented chain; the peer's SPIFFE ID, or `None` when
    /// bootstrapping insecurely.
    pub fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: Usage,
    ) -> Result<Option<SpiffeId>, VerifyError> {
        let Trust::Verify { roots, authorizer } = &self.trust else {
            // Bootstrap trust is for the server's certificate only: never admit a client.
            return match usage {
                Usage::Server => Ok(None),
                Usage::Client => Err(VerifyError::NoRoots),
            };
        };
        let chain: Vec<CertificateDer<'_>> = std::iter::once(end_entity.clone())
            .chain(intermediates.iter().cloned())
            .collect();
        let id = roots.with(|roots| verify_svid(&chain, roots, now, usage))?;
        authorizer.check(&id)?;
        Ok(Some(id))
    }

    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: Usage,
    ) -> Result<(), rustls::Error> {
        self.verify(end_entity, intermediates, now, usage)
            .map(drop)
            .map_err(|e| {
                tracing::debug!(error = %e, "peer certificate refused");
                let err = e.to_rustls();
                if let Ok(mut r) = self.last_rejection.lock() {
                    *r = Some(e.to_string());
                }
                err
            })
    }
}

impl fmt::Debug for SvidVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("SvidVerifier");
        match &self.trust {
            Trust::Verify { roots, authorizer } => {
                d.field("roots", roots).field("authorizer", authorizer)
            }
            Trust::InsecureBootstrap => d.field("trust", &"InsecureBootstrap"),
        };
        d.field("client_auth_mandatory", &self.client_auth_mandatory)
            .finish()
    }
}

impl ServerCertVerifier for SvidVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity, intermediates, now, Usage::Server)?;
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

impl ClientCertVerifier for SvidVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.client_auth_mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity, intermediates, now, Usage::Client)?;
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
