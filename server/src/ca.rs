//! The trust domain's certificate authority: an X.509 CA that signs X509-SVIDs, and an ES256
//! key that signs JWT-SVIDs.
//!
//! Both follow SPIRE's authority life cycle, each on its own: an *active* authority signs; when
//! it passes half its lifetime a successor is *prepared* (its root or key joins the bundle at
//! once, so every agent and workload learns to trust it) and it is *activated* at five sixths
//! of the old one's lifetime; the previous authority becomes *old* and stays in the bundle until
//! it expires. An operator can drive the same steps by hand (`localauthority x509|jwt
//! prepare|activate`), *taint* an old authority (agents re-issue everything it signed) and then
//! *revoke* it (it leaves the bundle). SVIDs are never valid beyond the CA that signs them.
//!
//! With `UpstreamAuthority "disk"` (see [`upstream`]) the X.509 CA is an intermediate signed by
//! the upstream key; the bundle then holds the upstream roots, not the server's CA.
//!
//! Keys are held by a key manager: `disk` writes them to a 0600 JSON file (atomically: temp file,
//! fsync, rename) so a restart keeps the same CA and bundle; `memory` keeps them in RAM only.

pub mod spire;
pub mod upstream;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use sigil_spiffe::bundle::{Bundle, JwtAuthority};
use sigil_spiffe::jwt::JwtSigner;
use sigil_spiffe::{SpiffeId, TrustDomain};
pub use spire::SpireUpstream;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use time::OffsetDateTime;
pub use upstream::DiskUpstream;

/// The `UpstreamAuthority` that signs the server's X.509 CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// `"disk"`: a key and certificate in files.
    Disk(DiskUpstream),
    /// `"spire"`: the upstream server of a nested deployment.
    Spire(SpireUpstream),
}

/// Where the CA and JWT signing keys live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyManager {
    /// Keys in a JSON file (0600), so a restart keeps the same CA and bundle.
    Disk { keys_path: PathBuf },
    /// Keys only in memory (tests): a restart makes a new CA.
    Memory,
}

/// The CA key algorithm (`ca_key_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    EcP256,
    EcP384,
}

impl std::str::FromStr for KeyType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ec-p256" => Ok(Self::EcP256),
            "ec-p384" => Ok(Self::EcP384),
            other => Err(format!(
                "unsupported key type {other:?} (supported: ec-p256, ec-p384)"
            )),
        }
    }
}

/// The CA certificate subject (`ca_subject`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaSubject {
    pub country: Vec<String>,
    pub organization: Vec<String>,
    pub common_name: String,
}

impl Default for CaSubject {
    fn default() -> Self {
        // SPIRE's default subject.
        Self {
            country: vec!["US".into()],
            organization: vec!["SPIFFE".into()],
            common_name: String::new(),
        }
    }
}

/// CA failures.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("key generation or signing failed: {0}")]
    Crypto(String),
    #[error("key manager file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("key manager file {0} is corrupt: {1}")]
    Corrupt(String, String),
    #[error("invalid certificate signing request: {0}")]
    Csr(String),
    #[error("the CA expires too soon to sign anything")]
    Expired,
    #[error("UpstreamAuthority \"disk\": {0}")]
    Upstream(String),
    #[error("UpstreamAuthority \"spire\": {0}")]
    UpstreamSpire(String),
    /// An authority-management request that SPIRE's rules refuse; `code` is the gRPC status
    /// SPIRE answers with, `message` its text.
    #[error("{message}")]
    Refused { code: RefusalCode, message: String },
}

/// The gRPC status of a refused authority-management request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalCode {
    InvalidArgument,
    FailedPrecondition,
    NotFound,
    Internal,
}

fn crypto(e: impl std::fmt::Display) -> CaError {
    CaError::Crypto(e.to_string())
}

fn refused(code: RefusalCode, message: impl Into<String>) -> CaError {
    CaError::Refused {
        code,
        message: message.into(),
    }
}

/// One X.509 authority: the CA certificate and its key.
struct X509Authority {
    /// rcgen issuer built from the certificate and key; signing needs nothing else.
    issuer: Issuer<'static, KeyPair>,
    cert_der: Vec<u8>,
    /// Upstream intermediates above this CA, leaf-most first (empty without an upstream, or when
    /// the upstream certificate is the root). They follow the CA in every SVID chain.
    upstream_chain: Vec<Vec<u8>>,
    /// Subject key ID, hex: SPIRE's authority ID.
    id: String,
    /// Subject key ID of the upstream certificate that signed it ("" without an upstream).
    upstream_id: String,
    not_before: i64,
    not_after: i64,
    /// PKCS#8 of the key, kept only to persist it (zeroized on drop).
    pkcs8: zeroize::Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for X509Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("X509Authority")
            .field("id", &self.id)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// One JWT signing key.
struct JwtKey {
    signer: JwtSigner,
    not_before: i64,
    not_after: i64,
    /// PKCS#8 of the key, kept only to persist it (zeroized on drop).
    pkcs8: zeroize::Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material: the key id and expiry only.
        f.debug_struct("JwtKey")
            .field("kid", &self.signer.kid())
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// What the life cycle needs to know of an authority.
trait Authority {
    fn id(&self) -> &str;
    fn not_before(&self) -> i64;
    fn not_after(&self) -> i64;
}

impl Authority for X509Authority {
    fn id(&self) -> &str {
        &self.id
    }
    fn not_before(&self) -> i64 {
        self.not_before
    }
    fn not_after(&self) -> i64 {
        self.not_after
    }
}

impl Authority for JwtKey {
    fn id(&self) -> &str {
        self.signer.kid()
    }
    fn not_before(&self) -> i64 {
        self.not_before
    }
    fn not_after(&self) -> i64 {
        self.not_after
    }
}

/// The authorities of one kind.
struct Slots<A> {
    active: Arc<A>,
    /// Prepared successor (in the bundle, not yet signing).
    prepared: Option<Arc<A>>,
    /// Previously active authorities, oldest first, in the bundle until they expire or are
    /// revoked. The last one is SPIRE's "old" authority while nothing is prepared.
    old: Vec<Arc<A>>,
}

impl<A: std::fmt::Debug> std::fmt::Debug for Slots<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slots")
            .field("active", &self.active)
            .field("prepared", &self.prepared)
            .field("old", &self.old)
            .finish()
    }
}

/// What SPIRE keeps in its "next" slot: the prepared authority, or else the old one.
enum Next<'a, A> {
    Prepared(&'a Arc<A>),
    Old(&'a Arc<A>),
    None,
}

impl<A: Authority> Slots<A> {
    fn new(active: A) -> Self {
        Self {
            active: Arc::new(active),
            prepared: None,
            old: Vec::new(),
        }
    }

    fn next(&self) -> Next<'_, A> {
        match (&self.prepared, self.old.last()) {
            (Some(p), _) => Next::Prepared(p),
            (None, Some(o)) => Next::Old(o),
            (None, None) => Next::None,
        }
    }

    fn all(&self) -> impl Iterator<Item = &Arc<A>> {
        self.old
            .iter()
            .chain([&self.active])
            .chain(self.prepared.iter())
    }

    /// Whether the schedule calls for a successor now.
    fn prepare_due(&self, now: i64) -> bool {
        let a = &self.active;
        self.prepared.is_none() && now >= a.not_before() + (a.not_after() - a.not_before()) / 2
    }

    /// Activates the prepared authority; the active one becomes old.
    fn activate(&mut self) -> bool {
        match self.prepared.take() {
            Some(next) => {
                let old = std::mem::replace(&mut self.active, next);
                self.old.push(old);
                true
            }
            None => false,
        }
    }

    /// Applies the schedule: a successor (made by the caller) is prepared, activated at 5/6 of
    /// the active one's life; expired old authorities leave. Returns whether anything changed.
    fn rotate(&mut self, now: i64, successor: Option<A>) -> bool {
        let mut changed = false;
        if let Some(next) = successor
            && self.prepared.is_none()
        {
            self.prepared = Some(Arc::new(next));
            changed = true;
        }
        let a = &self.active;
        let life = a.not_after() - a.not_before();
        if now >= a.not_before() + life * 5 / 6 {
            changed |= self.activate();
        }
        let before = self.old.len();
        self.old.retain(|g| g.not_after() > now);
        changed | (self.old.len() != before)
    }
}

/// Everything the CA holds; private keys, hence the hand-written `Debug`s.
struct State {
    x509: Slots<X509Authority>,
    jwt: Slots<JwtKey>,
    /// With an upstream authority: its roots, as the bundle publishes them (oldest first).
    upstream_roots: Vec<Vec<u8>>,
    /// Tainted X.509 authority IDs (local or upstream subject key IDs) and JWT key IDs.
    tainted_x509: BTreeSet<String>,
    tainted_jwt: BTreeSet<String>,
    /// Revoked upstream roots' subject key IDs: never re-added from the upstream's files.
    revoked_upstream: BTreeSet<String>,
    /// With `UpstreamAuthority "spire"`: the upstream bundle's JWT keys (every server's).
    upstream_jwt: Vec<JwtAuthority>,
    /// JWT keys downstream servers published here (`PublishJWTAuthority`), until they expire.
    published_jwt: Vec<JwtAuthority>,
    /// With `UpstreamAuthority "spire"`: what the upstream has tainted (followed, not stored:
    /// the next follow brings it back after a restart).
    upstream_tainted_x509: BTreeSet<String>,
    upstream_tainted_jwt: BTreeSet<String>,
    /// The bundle's `spiffe_sequence`: bumped on every change of the bundle, kept across
    /// restarts, so federated peers can refuse an older bundle.
    sequence: u64,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("x509", &self.x509)
            .field("jwt", &self.jwt)
            .field("tainted_x509", &self.tainted_x509)
            .field("tainted_jwt", &self.tainted_jwt)
            .field("sequence", &self.sequence)
            .finish_non_exhaustive()
    }
}

/// The other servers' authorities, as the datastore last told.
#[derive(Debug, Default)]
struct Peers {
    bundles: Vec<Bundle>,
    sequence: u64,
}

/// A certificate's notAfter (unix seconds), if it parses.
fn cert_not_after(der: &[u8]) -> Option<i64> {
    x509_parser::parse_x509_certificate(der)
        .ok()
        .map(|(_, c)| c.validity().not_after.timestamp())
}

/// Parameters of the CA.
#[derive(Debug, Clone)]
pub struct CaConfig {
    pub trust_domain: TrustDomain,
    pub ca_ttl: Duration,
    pub subject: CaSubject,
    pub key_type: KeyType,
    pub key_manager: KeyManager,
    pub jwt_issuer: Option<String>,
    pub upstream: Option<Upstream>,
}

/// The CA handle.
pub struct Ca {
    cfg: CaConfig,
    state: RwLock<State>,
    /// The other servers sharing this trust domain's datastore: their published authorities
    /// and the shared bundle sequence (see [`Ca::set_peers`]).
    peers: RwLock<Peers>,
    /// What tests check about where CPU work runs (see `Probes`).
    #[cfg(test)]
    pub(crate) probes: Probes,
}

/// Test-only records: which threads signed, and whether the state lock was free while a
/// successor's keys were generated. They make "keep CPU work off the async workers and out of
/// locks" something a test can fail on.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct Probes {
    pub sign_threads: std::sync::Mutex<Vec<std::thread::ThreadId>>,
    pub keygen_lock_free: std::sync::Mutex<Vec<bool>>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Ca");
        d.field("cfg", &self.cfg);
        match self.state.try_read() {
            Ok(state) => d.field("state", &*state),
            Err(_) => d.field("state", &"<locked>"),
        };
        d.finish()
    }
}

/// A signed X509-SVID.
#[derive(Debug, Clone)]
pub struct SignedSvid {
    /// Leaf first.
    pub chain: Vec<Vec<u8>>,
    pub serial_hex: String,
    pub expires_at: i64,
}

/// A CA signed for a downstream server.
#[derive(Debug, Clone)]
pub struct DownstreamCa {
    /// The new CA first, then the intermediates above it (DER).
    pub chain: Vec<Vec<u8>>,
    /// The trust domain's roots (DER).
    pub roots: Vec<Vec<u8>>,
}

/// An authority as `localauthority ... show` reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthorityInfo {
    pub authority_id: String,
    /// Unix seconds; 0 when not reported.
    pub expires_at: i64,
    pub upstream_authority_subject_key_id: String,
}

/// Active, prepared and old authorities of one kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthorityStates {
    pub active: Option<AuthorityInfo>,
    pub prepared: Option<AuthorityInfo>,
    pub old: Option<AuthorityInfo>,
}

/// Which authorities an operation is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthorityKind {
    X509,
    Jwt,
}

// --- persistence format ---

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredX509 {
    key: String,
    cert: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    upstream_chain: Vec<String>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredJwt {
    kid: String,
    key: String,
    not_after: i64,
    #[serde(default)]
    not_before: i64,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(bound(deserialize = "T: serde::Deserialize<'de>"))]
struct StoredSlots<T> {
    active: T,
    #[serde(default)]
    prepared: Option<T>,
    #[serde(default)]
    old: Vec<T>,
}

/// A public JWT key of another server (no private part).
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredJwtAuthority {
    kid: String,
    public_key: String,
    expires_at: i64,
}

impl StoredJwtAuthority {
    fn from(a: &JwtAuthority) -> Self {
        Self {
            kid: a.key_id.clone(),
            public_key: B64.encode(&a.public_key_der),
            expires_at: a.expires_at,
        }
    }

    fn load(&self, path: &str) -> Result<JwtAuthority, CaError> {
        Ok(JwtAuthority {
            key_id: self.kid.clone(),
            public_key_der: B64
                .decode(&self.public_key)
                .map_err(|e| CaError::Corrupt(path.into(), format!("jwt authority: {e}")))?,
            expires_at: self.expires_at,
        })
    }
}

/// A generation as files written before X.509 and JWT authorities rotated separately held it.
#[derive(serde::Deserialize)]
struct LegacyGeneration {
    x509_key: String,
    x509_cert: String,
    jwt_kid: String,
    jwt_key: String,
    jwt_not_after: i64,
}

#[derive(serde::Serialize, serde::Deserialize, Default)]
struct StoredKeys {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    x509: Option<StoredSlots<StoredX509>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    jwt: Option<StoredSlots<StoredJwt>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    upstream_roots: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    tainted_x509: BTreeSet<String>,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    tainted_jwt: BTreeSet<String>,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    revoked_upstream: BTreeSet<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    upstream_jwt: Vec<StoredJwtAuthority>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    published_jwt: Vec<StoredJwtAuthority>,
    /// Absent in files written before federation: starts at 1.
    #[serde(default)]
    sequence: u64,
    // The format before separate rotation: read, never written.
    #[serde(default, skip_serializing)]
    active: Option<LegacyGeneration>,
    #[serde(default, skip_serializing)]
    next: Option<LegacyGeneration>,
    #[serde(default, skip_serializing)]
    retired: Vec<LegacyGeneration>,
}

fn random_serial() -> SerialNumber {
    let mut b = [0u8; 16];
    rand::Rng::fill(&mut rand::thread_rng(), &mut b);
    // Positive and non-zero, 127 bits of randomness (RFC 5280 §4.1.2.2).
    b[0] &= 0x7f;
    b[0] |= 0x01;
    SerialNumber::from_slice(&b)
}

fn random_kid() -> String {
    use rand::distributions::Alphanumeric;
    use rand::{Rng, thread_rng};
    thread_rng()
        .sample_iter(&Alphanumeric)
        .take(32)
        .map(char::from)
        .collect()
}

fn to_time(unix: i64) -> Result<OffsetDateTime, CaError> {
    OffsetDateTime::from_unix_timestamp(unix).map_err(crypto)
}

/// Published JWT authorities (from downstream servers) the bundle holds at most.
pub const MAX_PUBLISHED_JWT: usize = 256;

/// The X.509 distinguished name's `serialNumber` attribute: makes every CA's subject unique
/// (across rotations and servers under one upstream), which OpenSSL's path building needs.
const DN_SERIAL_NUMBER: [u64; 4] = [2, 5, 4, 5];

/// A CA certificate's fields: `ca_subject` plus a unique `serialNumber`, the trust domain's
/// SPIFFE ID as URI SAN (as SPIRE does for its CAs), CA key usages.
fn ca_params(
    cfg: &CaConfig,
    not_before: i64,
    not_after: i64,
) -> Result<CertificateParams, CaError> {
    let serial = random_serial();
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    for c in &cfg.subject.country {
        dn.push(DnType::CountryName, c.as_str());
    }
    for o in &cfg.subject.organization {
        dn.push(DnType::OrganizationName, o.as_str());
    }
    if !cfg.subject.common_name.is_empty() {
        dn.push(DnType::CommonName, cfg.subject.common_name.as_str());
    }
    dn.push(
        DnType::CustomDnType(DN_SERIAL_NUMBER.to_vec()),
        hex::encode(serial.to_bytes()),
    );
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.subject_alt_names = vec![SanType::URI(
        cfg.trust_domain
            .id()
            .to_string()
            .try_into()
            .map_err(crypto)?,
    )];
    params.serial_number = Some(serial);
    params.not_before = to_time(not_before)?;
    params.not_after = to_time(not_after)?;
    Ok(params)
}

fn ca_key(cfg: &CaConfig) -> Result<KeyPair, CaError> {
    let alg = match cfg.key_type {
        KeyType::EcP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        KeyType::EcP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
    };
    KeyPair::generate_for(alg).map_err(crypto)
}

/// A new X.509 authority as the configuration says (self-signed, `disk`, `spire`), and the
/// upstream's roots (empty when self-signed).
fn new_x509(cfg: &CaConfig, now: i64) -> Result<(X509Authority, Vec<Vec<u8>>), CaError> {
    match &cfg.upstream {
        None => Ok((X509Authority::create(cfg, None, now)?, Vec::new())),
        Some(Upstream::Disk(d)) => {
            let up = d.load()?;
            Ok((X509Authority::create(cfg, Some(&up), now)?, up.roots))
        }
        Some(Upstream::Spire(s)) => {
            let key = ca_key(cfg)?;
            let csr = CertificateParams::default()
                .serialize_request(&key)
                .map_err(crypto)?
                .der()
                .to_vec();
            let minted = s.mint(csr, cfg.ca_ttl)?;
            let mut chain = minted.ca_chain;
            let cert = chain.remove(0);
            // Roots do not travel in SVID chains.
            chain.retain(|c| !minted.roots.contains(c));
            let pkcs8 = zeroize::Zeroizing::new(key.serialize_der());
            let a = X509Authority::from_parts(pkcs8, cert, chain)
                .map_err(|e| CaError::UpstreamSpire(format!("the CA it signed: {e}")))?;
            if a.upstream_id.is_empty() {
                return Err(CaError::UpstreamSpire(
                    "the upstream server answered with a self-signed CA".into(),
                ));
            }
            Ok((a, minted.roots))
        }
    }
}

// === impl X509Authority ===

impl X509Authority {
    /// A new CA: self-signed, or signed by the upstream authority (its lifetime capped by it).
    fn create(
        cfg: &CaConfig,
        upstream: Option<&upstream::UpstreamSigner>,
        now: i64,
    ) -> Result<Self, CaError> {
        let key = ca_key(cfg)?;
        let not_before = now - 10; // small backdate for clock skew
        let mut not_after = now + cfg.ca_ttl.as_secs() as i64;
        if let Some(up) = upstream {
            not_after = not_after.min(up.not_after);
            if not_after <= now {
                return Err(CaError::Upstream(
                    "the upstream certificate has expired".into(),
                ));
            }
        }
        let mut params = ca_params(cfg, not_before, not_after)?;
        let (cert_der, upstream_chain, upstream_id) = match upstream {
            None => (
                params.self_signed(&key).map_err(crypto)?.der().to_vec(),
                Vec::new(),
                String::new(),
            ),
            Some(up) => {
                params.use_authority_key_identifier_extension = true;
                let cert = params.signed_by(&key, &up.issuer).map_err(crypto)?;
                (
                    cert.der().to_vec(),
                    up.chain.clone(),
                    up.subject_key_id.clone(),
                )
            }
        };
        let pkcs8 = zeroize::Zeroizing::new(key.serialize_der());
        let id = Self::id_of(&cert_der)?;
        let issuer = Issuer::new(params, key);
        Ok(Self {
            issuer,
            cert_der,
            upstream_chain,
            id,
            upstream_id,
            not_before,
            not_after,
            pkcs8,
        })
    }

    fn id_of(cert_der: &[u8]) -> Result<String, CaError> {
        sigil_spiffe::x509::key_ids(cert_der)
            .map_err(crypto)?
            .0
            .ok_or_else(|| CaError::Crypto("CA certificate without subject key identifier".into()))
    }

    fn store(&self) -> StoredX509 {
        StoredX509 {
            key: B64.encode(&*self.pkcs8),
            cert: B64.encode(&self.cert_der),
            upstream_chain: self.upstream_chain.iter().map(|c| B64.encode(c)).collect(),
        }
    }

    fn load(key_b64: &str, cert_b64: &str, chain: &[String], path: &str) -> Result<Self, CaError> {
        let corrupt = |what: &str, e: &dyn std::fmt::Display| {
            CaError::Corrupt(path.to_string(), format!("{what}: {e}"))
        };
        let pkcs8 =
            zeroize::Zeroizing::new(B64.decode(key_b64).map_err(|e| corrupt("x509 key", &e))?);
        let cert_der = B64.decode(cert_b64).map_err(|e| corrupt("x509 cert", &e))?;
        let upstream_chain = chain
            .iter()
            .map(|c| B64.decode(c).map_err(|e| corrupt("upstream chain", &e)))
            .collect::<Result<Vec<_>, _>>()?;
        Self::from_parts(pkcs8, cert_der, upstream_chain)
            .map_err(|e| CaError::Corrupt(path.to_string(), e))
    }

    /// An authority from its key (PKCS#8), certificate and upstream intermediates.
    fn from_parts(
        pkcs8: zeroize::Zeroizing<Vec<u8>>,
        cert_der: Vec<u8>,
        upstream_chain: Vec<Vec<u8>>,
    ) -> Result<Self, String> {
        let corrupt = |what: &str, e: &dyn std::fmt::Display| format!("{what}: {e}");
        let key = KeyPair::try_from(pkcs8.as_slice()).map_err(|e| corrupt("x509 key", &e))?;
        let issuer = Issuer::from_ca_cert_der(&cert_der.as_slice().into(), key)
            .map_err(|e| corrupt("x509 cert", &e))?;
        let (_, parsed) =
            x509_parser::parse_x509_certificate(&cert_der).map_err(|e| corrupt("x509 cert", &e))?;
        let (id, aki) =
            sigil_spiffe::x509::key_ids(&cert_der).map_err(|e| corrupt("x509 cert", &e))?;
        let id = id.ok_or_else(|| corrupt("x509 cert", &"no subject key identifier"))?;
        // Self-signed CAs name themselves; an upstream-signed one names the upstream key.
        let upstream_id = match aki {
            Some(aki) if aki != id => aki,
            _ => String::new(),
        };
        Ok(Self {
            issuer,
            not_before: parsed.validity().not_before.timestamp(),
            not_after: parsed.validity().not_after.timestamp(),
            cert_der,
            upstream_chain,
            id,
            upstream_id,
            pkcs8,
        })
    }
}

// === impl JwtKey ===

impl JwtKey {
    fn create(cfg: &CaConfig, now: i64) -> Result<Self, CaError> {
        let (signer, pkcs8) = JwtSigner::generate(random_kid()).map_err(crypto)?;
        Ok(Self {
            signer,
            not_before: now - 10,
            not_after: now + cfg.ca_ttl.as_secs() as i64,
            pkcs8: zeroize::Zeroizing::new(pkcs8),
        })
    }

    fn store(&self) -> StoredJwt {
        StoredJwt {
            kid: self.signer.kid().to_string(),
            key: B64.encode(&*self.pkcs8),
            not_after: self.not_after,
            not_before: self.not_before,
        }
    }

    fn load(s: &StoredJwt, ca_ttl: Duration, path: &str) -> Result<Self, CaError> {
        let pkcs8 = zeroize::Zeroizing::new(
            B64.decode(&s.key)
                .map_err(|e| CaError::Corrupt(path.into(), format!("jwt key: {e}")))?,
        );
        let signer = JwtSigner::from_pkcs8(s.kid.clone(), &pkcs8)
            .map_err(|e| CaError::Corrupt(path.into(), format!("jwt key: {e}")))?;
        // Files from before separate rotation have no not_before: the key was made one CA
        // lifetime before it expires.
        let not_before = if s.not_before == 0 {
            s.not_after - ca_ttl.as_secs() as i64
        } else {
            s.not_before
        };
        Ok(Self {
            signer,
            not_before,
            not_after: s.not_after,
            pkcs8,
        })
    }
}

fn load_slots<S, A>(
    s: &StoredSlots<S>,
    load: impl Fn(&S) -> Result<A, CaError>,
) -> Result<Slots<A>, CaError> {
    Ok(Slots {
        active: Arc::new(load(&s.active)?),
        prepared: s.prepared.as_ref().map(&load).transpose()?.map(Arc::new),
        old: s
            .old
            .iter()
            .map(|g| load(g).map(Arc::new))
            .collect::<Result<_, _>>()?,
    })
}

fn store_slots<A, S>(s: &Slots<A>, store: impl Fn(&A) -> S) -> StoredSlots<S> {
    StoredSlots {
        active: store(&s.active),
        prepared: s.prepared.as_deref().map(&store),
        old: s.old.iter().map(|a| store(a)).collect(),
    }
}

fn info_x509(a: &X509Authority) -> AuthorityInfo {
    AuthorityInfo {
        authority_id: a.id.clone(),
        expires_at: a.not_after,
        upstream_authority_subject_key_id: a.upstream_id.clone(),
    }
}

fn info_jwt(a: &JwtKey) -> AuthorityInfo {
    AuthorityInfo {
        authority_id: a.signer.kid().to_string(),
        expires_at: a.not_after,
        upstream_authority_subject_key_id: String::new(),
    }
}

fn states<A: Authority>(s: &Slots<A>, info: impl Fn(&A) -> AuthorityInfo) -> AuthorityStates {
    let (prepared, old) = match s.next() {
        Next::Prepared(p) => (Some(info(p)), None),
        Next::Old(o) => (None, Some(info(o))),
        Next::None => (None, None),
    };
    AuthorityStates {
        active: Some(info(&s.active)),
        prepared,
        old,
    }
}

// === impl State ===

impl State {
    fn load(stored: StoredKeys, cfg: &CaConfig, path: &str) -> Result<Self, CaError> {
        let ttl = cfg.ca_ttl;
        let (x509, jwt) = match (&stored.x509, &stored.jwt, &stored.active) {
            (Some(x), Some(j), _) => (
                load_slots(x, |s| {
                    X509Authority::load(&s.key, &s.cert, &s.upstream_chain, path)
                })?,
                load_slots(j, |s| JwtKey::load(s, ttl, path))?,
            ),
            (None, None, Some(active)) => {
                // Before separate rotation, each generation held both.
                let x = |g: &LegacyGeneration| {
                    X509Authority::load(&g.x509_key, &g.x509_cert, &[], path)
                };
                let j = |g: &LegacyGeneration| {
                    JwtKey::load(
                        &StoredJwt {
                            kid: g.jwt_kid.clone(),
                            key: g.jwt_key.clone(),
                            not_after: g.jwt_not_after,
                            not_before: 0,
                        },
                        ttl,
                        path,
                    )
                };
                let legacy = StoredSlotsRef {
                    active,
                    prepared: stored.next.as_ref(),
                    old: &stored.retired,
                };
                (legacy.load(x)?, legacy.load(j)?)
            }
            _ => {
                return Err(CaError::Corrupt(
                    path.into(),
                    "neither x509 and jwt authorities nor a legacy active generation".into(),
                ));
            }
        };
        let upstream_roots = stored
            .upstream_roots
            .iter()
            .map(|r| {
                B64.decode(r)
                    .map_err(|e| CaError::Corrupt(path.into(), format!("upstream root: {e}")))
            })
            .collect::<Result<_, _>>()?;
        Ok(State {
            x509,
            jwt,
            upstream_roots,
            tainted_x509: stored.tainted_x509,
            tainted_jwt: stored.tainted_jwt,
            revoked_upstream: stored.revoked_upstream,
            upstream_jwt: stored
                .upstream_jwt
                .iter()
                .map(|a| a.load(path))
                .collect::<Result<_, _>>()?,
            published_jwt: stored
                .published_jwt
                .iter()
                .map(|a| a.load(path))
                .collect::<Result<_, _>>()?,
            upstream_tainted_x509: BTreeSet::new(),
            upstream_tainted_jwt: BTreeSet::new(),
            sequence: stored.sequence.max(1),
        })
    }

    fn store(&self) -> StoredKeys {
        StoredKeys {
            x509: Some(store_slots(&self.x509, X509Authority::store)),
            jwt: Some(store_slots(&self.jwt, JwtKey::store)),
            upstream_roots: self.upstream_roots.iter().map(|r| B64.encode(r)).collect(),
            tainted_x509: self.tainted_x509.clone(),
            tainted_jwt: self.tainted_jwt.clone(),
            revoked_upstream: self.revoked_upstream.clone(),
            upstream_jwt: self
                .upstream_jwt
                .iter()
                .map(StoredJwtAuthority::from)
                .collect(),
            published_jwt: self
                .published_jwt
                .iter()
                .map(StoredJwtAuthority::from)
                .collect(),
            sequence: self.sequence,
            ..Default::default()
        }
    }

    /// Adds the upstream's roots that are new (and not revoked); drops expired ones.
    fn merge_upstream_roots(&mut self, roots: &[Vec<u8>], now: i64) -> bool {
        let mut changed = false;
        for r in roots {
            let id = sigil_spiffe::x509::key_ids(r).ok().and_then(|(ski, _)| ski);
            let revoked = id.is_some_and(|id| self.revoked_upstream.contains(&id));
            if !revoked && !self.upstream_roots.contains(r) {
                self.upstream_roots.push(r.clone());
                changed = true;
            }
        }
        let before = self.upstream_roots.len();
        self.upstream_roots
            .retain(|r| sigil_spiffe::x509::not_after_unix(r).is_ok_and(|t| t > now));
        changed | (before != self.upstream_roots.len())
    }

    /// The roots the bundle publishes: with an upstream, its roots (and any self-signed CA
    /// from before it was configured, kept there); without, the self-signed CAs and any roots
    /// of an upstream configured earlier, until they expire.
    fn roots(&self, upstream: bool) -> Vec<Vec<u8>> {
        if upstream {
            self.upstream_roots.clone()
        } else {
            let own = self.x509.all().filter(|a| a.upstream_id.is_empty());
            own.map(|a| a.cert_der.clone())
                .chain(self.upstream_roots.iter().cloned())
                .collect()
        }
    }

    /// The keys were written with another upstream configuration than the one in force (an
    /// `UpstreamAuthority` added to, or removed from, a running trust domain): a CA of the new
    /// kind becomes active at once, and what the old one signed stays trusted until it expires
    /// (its self-signed root joins the upstream roots, or the upstream roots stay published).
    fn adopt_upstream_change(&mut self, cfg: &CaConfig, now: i64) -> Result<bool, CaError> {
        let configured = cfg.upstream.is_some();
        let upstream_signed = !self.x509.active.upstream_id.is_empty();
        if configured == upstream_signed {
            return Ok(false);
        }
        if configured {
            let own: Vec<Vec<u8>> = self
                .x509
                .all()
                .filter(|a| a.upstream_id.is_empty())
                .map(|a| a.cert_der.clone())
                .collect();
            for root in own {
                if !self.upstream_roots.contains(&root) {
                    self.upstream_roots.push(root);
                }
            }
        }
        let (fresh, roots) = new_x509(cfg, now)?;
        self.merge_upstream_roots(&roots, now);
        self.x509.prepared = Some(Arc::new(fresh));
        self.x509.activate();
        self.sequence += 1;
        Ok(true)
    }
}

/// The legacy file's generations, borrowed, for loading either half of them.
struct StoredSlotsRef<'a> {
    active: &'a LegacyGeneration,
    prepared: Option<&'a LegacyGeneration>,
    old: &'a [LegacyGeneration],
}

impl StoredSlotsRef<'_> {
    fn load<A>(
        &self,
        load: impl Fn(&LegacyGeneration) -> Result<A, CaError>,
    ) -> Result<Slots<A>, CaError> {
        Ok(Slots {
            active: Arc::new(load(self.active)?),
            prepared: self.prepared.map(&load).transpose()?.map(Arc::new),
            old: self
                .old
                .iter()
                .map(|g| load(g).map(Arc::new))
                .collect::<Result<_, _>>()?,
        })
    }
}

// === impl Ca ===

impl Ca {
    /// Loads the CA from the key manager, or creates one.
    pub fn load_or_create(cfg: CaConfig) -> Result<Self, CaError> {
        let now = crate::now_unix();
        let state = match &cfg.key_manager {
            KeyManager::Disk { keys_path } if keys_path.exists() => {
                let p = keys_path.display().to_string();
                let text = std::fs::read(keys_path).map_err(|source| CaError::Io {
                    path: p.clone(),
                    source,
                })?;
                let stored: StoredKeys = serde_json::from_slice(&text)
                    .map_err(|e| CaError::Corrupt(p.clone(), e.to_string()))?;
                let mut state = State::load(stored, &cfg, &p)?;
                if state.adopt_upstream_change(&cfg, now)? {
                    tracing::info!(
                        upstream = cfg.upstream.is_some(),
                        "UpstreamAuthority changed since the CA was made: a new X.509 CA is active"
                    );
                }
                state
            }
            _ => {
                let (x509, roots) = new_x509(&cfg, now)?;
                let mut state = State {
                    x509: Slots::new(x509),
                    jwt: Slots::new(JwtKey::create(&cfg, now)?),
                    upstream_roots: Vec::new(),
                    tainted_x509: BTreeSet::new(),
                    tainted_jwt: BTreeSet::new(),
                    revoked_upstream: BTreeSet::new(),
                    upstream_jwt: Vec::new(),
                    published_jwt: Vec::new(),
                    upstream_tainted_x509: BTreeSet::new(),
                    upstream_tainted_jwt: BTreeSet::new(),
                    sequence: 1,
                };
                state.merge_upstream_roots(&roots, now);
                state
            }
        };
        let ca = Self {
            cfg,
            state: RwLock::new(state),
            peers: RwLock::default(),
            #[cfg(test)]
            probes: Probes::default(),
        };
        ca.persist()?;
        // A CA loaded after a long downtime may need to rotate straight away.
        ca.rotate_if_due(now)?;
        Ok(ca)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        // Poisoning would need a panic inside a short critical section that only swaps Arcs.
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    fn persist(&self) -> Result<(), CaError> {
        let KeyManager::Disk { keys_path } = &self.cfg.key_manager else {
            return Ok(());
        };
        let stored = self.read().store();
        let bytes = zeroize::Zeroizing::new(
            serde_json::to_vec_pretty(&stored).map_err(|e| CaError::Crypto(e.to_string()))?,
        );
        if let Some(dir) = keys_path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| CaError::Io {
                path: dir.display().to_string(),
                source,
            })?;
        }
        sigil_fs::write_atomic(keys_path, &bytes, sigil_fs::PRIVATE_FILE).map_err(|source| {
            CaError::Io {
                path: keys_path.display().to_string(),
                source,
            }
        })
    }

    /// A new X.509 authority (key generation and, with an upstream, reading its files: done
    /// without holding the state lock). Returns the upstream's roots too.
    fn create_x509(&self, now: i64) -> Result<(X509Authority, Vec<Vec<u8>>), CaError> {
        #[cfg(test)]
        self.probes
            .keygen_lock_free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(self.state.try_write().is_ok());
        new_x509(&self.cfg, now)
    }

    /// Prepares/activates/retires authorities as their lifetimes require. Returns true if the
    /// bundle changed (so agents must be told).
    pub fn rotate_if_due(&self, now: i64) -> Result<bool, CaError> {
        // Successors are made before taking the write lock, so signing (which reads the
        // state) never waits for key generation.
        let (x509_due, jwt_due) = {
            let s = self.read();
            (s.x509.prepare_due(now), s.jwt.prepare_due(now))
        };
        // An upstream that cannot sign right now must not hold back the JWT key's rotation (or
        // the retirement of expired authorities): its error is returned after the rest is done.
        let (x509_next, x509_error) = match x509_due.then(|| self.create_x509(now)).transpose() {
            Ok(next) => (next, None),
            Err(e) => (None, Some(e)),
        };
        let jwt_next = jwt_due
            .then(|| JwtKey::create(&self.cfg, now))
            .transpose()?;
        let changed = {
            let mut s = self.write();
            let (x509_next, roots) = match x509_next {
                Some((a, roots)) => (Some(a), roots),
                None => (None, Vec::new()),
            };
            let mut changed = s.merge_upstream_roots(&roots, now);
            changed |= s.x509.rotate(now, x509_next);
            changed |= s.jwt.rotate(now, jwt_next);
            let before = s.published_jwt.len();
            s.published_jwt
                .retain(|k| k.expires_at == 0 || k.expires_at > now);
            changed |= before != s.published_jwt.len();
            if changed {
                s.sequence += 1;
            }
            changed
        };
        if changed {
            self.persist()?;
        }
        match x509_error {
            Some(e) => Err(e),
            None => Ok(changed),
        }
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.cfg.trust_domain
    }

    /// Whether an upstream authority signs the X.509 CA.
    pub fn has_upstream(&self) -> bool {
        self.cfg.upstream.is_some()
    }

    /// The trust domain's bundle: this server's authorities ([`Ca::own_bundle`]) and those of
    /// every other server sharing the datastore, under the shared sequence.
    pub fn bundle(&self) -> Bundle {
        let mut b = self.own_bundle();
        let peers = self.peers_read();
        let now = crate::now_unix();
        for p in &peers.bundles {
            for der in &p.x509_authorities {
                if cert_not_after(der).is_none_or(|t| t > now) && !b.x509_authorities.contains(der)
                {
                    b.x509_authorities.push(der.clone());
                }
            }
            for k in &p.jwt_authorities {
                if (k.expires_at == 0 || k.expires_at > now)
                    && !b.jwt_authorities.iter().any(|o| o.key_id == k.key_id)
                {
                    b.jwt_authorities.push(k.clone());
                }
            }
            b.tainted_x509_authorities
                .extend(p.tainted_x509_authorities.iter().cloned());
            b.tainted_jwt_authorities
                .extend(p.tainted_jwt_authorities.iter().cloned());
        }
        b.sequence_number = Some(b.sequence_number.unwrap_or(0).max(peers.sequence));
        b
    }

    /// Takes the other servers' published authorities and the shared sequence. Returns whether
    /// the bundle changed.
    pub fn set_peers(&self, bundles: Vec<Bundle>, sequence: u64) -> bool {
        let mut p = self.peers.write().unwrap_or_else(|e| e.into_inner());
        let changed = p.bundles != bundles || p.sequence != sequence;
        p.bundles = bundles;
        p.sequence = sequence;
        changed
    }

    fn peers_read(&self) -> std::sync::RwLockReadGuard<'_, Peers> {
        // Peers are replaced whole: a panic elsewhere cannot leave them half-written.
        self.peers.read().unwrap_or_else(|e| e.into_inner())
    }

    /// This server's own authorities (what it publishes for the other servers): the roots and
    /// every JWT key it holds, with what is tainted, under its own sequence.
    pub fn own_bundle(&self) -> Bundle {
        let s = self.read();
        let mut b = Bundle::new(self.cfg.trust_domain.clone());
        b.x509_authorities = s.roots(self.has_upstream());
        for k in s.jwt.all() {
            b.jwt_authorities.push(JwtAuthority {
                key_id: k.signer.kid().to_string(),
                public_key_der: k.signer.public_key_spki_der(),
                expires_at: k.not_after,
            });
        }
        // Other servers' keys: the upstream's bundle, and what downstream servers published.
        for k in s.upstream_jwt.iter().chain(&s.published_jwt) {
            if !b.jwt_authorities.iter().any(|o| o.key_id == k.key_id) {
                b.jwt_authorities.push(k.clone());
            }
        }
        b.sequence_number = Some(s.sequence);
        b.tainted_x509_authorities = s
            .tainted_x509
            .union(&s.upstream_tainted_x509)
            .cloned()
            .collect();
        b.tainted_jwt_authorities = s
            .tainted_jwt
            .union(&s.upstream_tainted_jwt)
            .cloned()
            .collect();
        b
    }

    /// The bundle's sequence number: changes whenever the authorities do.
    pub fn sequence(&self) -> u64 {
        self.read().sequence
    }

    /// Root certificates that verify SVIDs (DER): this server's and the other servers'.
    pub fn x509_roots(&self) -> Vec<Vec<u8>> {
        let mut roots = self.read().roots(self.has_upstream());
        let now = crate::now_unix();
        for p in &self.peers_read().bundles {
            for der in &p.x509_authorities {
                if cert_not_after(der).is_none_or(|t| t > now) && !roots.contains(der) {
                    roots.push(der.clone());
                }
            }
        }
        roots
    }

    #[cfg(test)]
    fn record_signing(&self) {
        self.probes
            .sign_threads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(std::thread::current().id());
    }

    /// Signs an X509-SVID for `public_key` (from a verified CSR).
    pub fn sign_x509_svid(
        &self,
        public_key: &impl PublicKeyData,
        id: &SpiffeId,
        dns_names: &[String],
        ttl: Duration,
        now: i64,
    ) -> Result<SignedSvid, CaError> {
        #[cfg(test)]
        self.record_signing();
        let ca = self.read().x509.active.clone();
        // Never valid beyond the CA.
        let not_after = (now + ttl.as_secs() as i64).min(ca.not_after);
        if not_after <= now {
            return Err(CaError::Expired);
        }
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CountryName, "US");
        dn.push(DnType::OrganizationName, "SPIRE");
        if let Some(first) = dns_names.first() {
            // SPIRE puts the first DNS name in the CN for clients that still read it.
            dn.push(DnType::CommonName, first.as_str());
        }
        params.distinguished_name = dn;
        let mut sans = vec![SanType::URI(id.to_string().try_into().map_err(crypto)?)];
        for d in dns_names {
            sans.push(SanType::DnsName(d.clone().try_into().map_err(crypto)?));
        }
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
            KeyUsagePurpose::KeyAgreement,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let serial = random_serial();
        let serial_hex = hex::encode(serial.to_bytes());
        params.serial_number = Some(serial);
        params.not_before = to_time(now - 10)?;
        params.not_after = to_time(not_after)?;
        let cert = params.signed_by(public_key, &ca.issuer).map_err(crypto)?;
        // With an upstream, the CA is an intermediate: the chain carries it and whatever
        // upstream intermediates lead to the roots.
        let mut chain = vec![cert.der().to_vec()];
        if self.has_upstream() {
            chain.push(ca.cert_der.clone());
            chain.extend(ca.upstream_chain.iter().cloned());
        }
        Ok(SignedSvid {
            chain,
            serial_hex,
            expires_at: not_after,
        })
    }

    /// Parses and verifies a PKCS#10 CSR (signature = proof of possession) and returns its
    /// public key. Subject and extensions in the CSR are ignored: the server decides them.
    pub fn csr_public_key(csr_der: &[u8]) -> Result<rcgen::SubjectPublicKeyInfo, CaError> {
        use x509_parser::prelude::FromDer;
        let (rest, csr) =
            x509_parser::certification_request::X509CertificationRequest::from_der(csr_der)
                .map_err(|e| CaError::Csr(format!("malformed: {e}")))?;
        if !rest.is_empty() {
            return Err(CaError::Csr("trailing data".into()));
        }
        csr.verify_signature()
            .map_err(|_| CaError::Csr("signature does not verify".into()))?;
        let spki = csr.certification_request_info.subject_pki.raw;
        rcgen::SubjectPublicKeyInfo::from_der(spki).map_err(|e| CaError::Csr(e.to_string()))
    }

    /// Signs a JWT-SVID with the active key.
    pub fn sign_jwt_svid(
        &self,
        id: &SpiffeId,
        audience: &[String],
        ttl: Duration,
        now: i64,
    ) -> Result<(String, i64), CaError> {
        #[cfg(test)]
        self.record_signing();
        let key = self.read().jwt.active.clone();
        let exp = (now + ttl.as_secs() as i64).min(key.not_after);
        if exp <= now {
            return Err(CaError::Expired);
        }
        let token = key
            .signer
            .sign_with_issuer(id, audience, now, exp, self.cfg.jwt_issuer.as_deref())
            .map_err(crypto)?;
        Ok((token, exp))
    }

    /// Where the disk key manager keeps keys, if it is in use.
    pub fn keys_path(&self) -> Option<PathBuf> {
        match &self.cfg.key_manager {
            KeyManager::Disk { keys_path } => Some(keys_path.clone()),
            KeyManager::Memory => None,
        }
    }

    // --- nested servers (`UpstreamAuthority "spire"`, both ends) ---

    /// The `spire` upstream, if that is how this server's CA is signed.
    pub fn spire_upstream(&self) -> Option<&SpireUpstream> {
        match &self.cfg.upstream {
            Some(Upstream::Spire(s)) => Some(s),
            _ => None,
        }
    }

    /// Signs a CA for a downstream server's key (its CSR verified by the caller): a CA
    /// certificate with this trust domain's ID, never valid beyond the signing CA. Returns the
    /// chain and the roots.
    pub fn sign_downstream_ca(
        &self,
        public_key: &impl PublicKeyData,
        ttl: Duration,
        now: i64,
    ) -> Result<DownstreamCa, CaError> {
        let ca = self.read().x509.active.clone();
        let ttl = if ttl.is_zero() { self.cfg.ca_ttl } else { ttl };
        let not_after = (now + ttl.as_secs() as i64).min(ca.not_after);
        if not_after <= now {
            return Err(CaError::Expired);
        }
        let mut params = ca_params(&self.cfg, now - 10, not_after)?;
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(public_key, &ca.issuer).map_err(crypto)?;
        let mut chain = vec![cert.der().to_vec()];
        if self.has_upstream() {
            chain.push(ca.cert_der.clone());
            chain.extend(ca.upstream_chain.iter().cloned());
        }
        Ok(DownstreamCa {
            chain,
            roots: self.x509_roots(),
        })
    }

    /// A downstream server's JWT key joins the bundle. Returns whether the bundle changed.
    /// At most [`MAX_PUBLISHED_JWT`] keys are held (a misbehaving downstream must not grow
    /// every agent's bundle without bound); expired ones leave at rotation checks.
    pub fn publish_jwt_authority(&self, key: JwtAuthority) -> Result<bool, CaError> {
        let mut s = self.write();
        let own = s.jwt.all().any(|k| k.signer.kid() == key.key_id);
        let full = s.published_jwt.len() >= MAX_PUBLISHED_JWT;
        match s.published_jwt.iter_mut().find(|k| k.key_id == key.key_id) {
            _ if own => return Ok(false),
            Some(k) if *k == key => return Ok(false),
            Some(k) => *k = key,
            None if full => {
                return Err(refused(
                    RefusalCode::FailedPrecondition,
                    format!(
                        "the bundle already holds {MAX_PUBLISHED_JWT} published JWT authorities"
                    ),
                ));
            }
            None => s.published_jwt.push(key),
        }
        self.commit(s)?;
        Ok(true)
    }

    /// This server's own JWT keys (active, prepared, old): what a downstream publishes upstream.
    pub fn own_jwt_authorities(&self) -> Vec<JwtAuthority> {
        self.read()
            .jwt
            .all()
            .map(|k| JwtAuthority {
                key_id: k.signer.kid().to_string(),
                public_key_der: k.signer.public_key_spki_der(),
                expires_at: k.not_after,
            })
            .collect()
    }

    /// Takes the upstream's bundle as this server's (roots, the JWT keys of every server, and
    /// what the upstream tainted). Returns whether the bundle changed, and whether the active
    /// X.509 CA was signed by a tainted upstream authority (then a new one must be minted:
    /// re-signing SVIDs with this one would chain them to the tainted key again).
    pub fn follow_upstream(&self, f: spire::Followed) -> Result<(bool, bool), CaError> {
        let mut s = self.write();
        let stale = !s.x509.active.upstream_id.is_empty()
            && f.tainted_x509.contains(&s.x509.active.upstream_id);
        if f.roots.is_empty()
            || (s.upstream_roots == f.roots
                && s.upstream_jwt == f.jwt
                && s.upstream_tainted_x509 == f.tainted_x509
                && s.upstream_tainted_jwt == f.tainted_jwt)
        {
            return Ok((false, stale));
        }
        s.upstream_roots = f.roots;
        s.upstream_jwt = f.jwt;
        s.upstream_tainted_x509 = f.tainted_x509;
        s.upstream_tainted_jwt = f.tainted_jwt;
        self.commit(s)?;
        Ok((true, stale))
    }

    /// Replaces the active X.509 CA at once (prepare, then activate): for a downstream server
    /// whose CA the upstream tainted. Returns the new authority.
    pub fn replace_x509_now(&self, now: i64) -> Result<AuthorityInfo, CaError> {
        let prepared = self.prepare(AuthorityKind::X509, now)?;
        self.activate(AuthorityKind::X509, &prepared.authority_id)
    }

    // --- authority management (`localauthority`, `upstreamauthority`) ---

    /// Active, prepared and old authorities of one kind.
    pub fn authority_states(&self, kind: AuthorityKind) -> AuthorityStates {
        let s = self.read();
        match kind {
            AuthorityKind::X509 => states(&s.x509, info_x509),
            AuthorityKind::Jwt => states(&s.jwt, info_jwt),
        }
    }

    /// Commits a change of the bundle: bumps the sequence and persists.
    fn commit(&self, mut s: std::sync::RwLockWriteGuard<'_, State>) -> Result<(), CaError> {
        s.sequence += 1;
        drop(s);
        self.persist()
    }

    /// Makes a new authority and puts it in the prepared slot (replacing any prepared one).
    pub fn prepare(&self, kind: AuthorityKind, now: i64) -> Result<AuthorityInfo, CaError> {
        match kind {
            AuthorityKind::X509 => {
                let (a, roots) = self.create_x509(now)?;
                let info = info_x509(&a);
                let mut s = self.write();
                s.merge_upstream_roots(&roots, now);
                s.x509.prepared = Some(Arc::new(a));
                self.commit(s)?;
                Ok(info)
            }
            AuthorityKind::Jwt => {
                let k = JwtKey::create(&self.cfg, now)?;
                let info = info_jwt(&k);
                let mut s = self.write();
                s.jwt.prepared = Some(Arc::new(k));
                self.commit(s)?;
                Ok(info)
            }
        }
    }

    /// Activates the prepared authority `id` (SPIRE's checks and messages).
    pub fn activate(&self, kind: AuthorityKind, id: &str) -> Result<AuthorityInfo, CaError> {
        use RefusalCode::*;
        fn check<A: Authority>(s: &Slots<A>, id: &str) -> Result<(), CaError> {
            let (next_id, prepared) = match s.next() {
                Next::Prepared(p) => (p.id(), true),
                Next::Old(o) => (o.id(), false),
                Next::None => ("", false),
            };
            if id.is_empty() {
                return Err(refused(InvalidArgument, "no authority ID provided"));
            }
            if id != next_id {
                return Err(refused(InvalidArgument, "unexpected authority ID"));
            }
            if !prepared {
                return Err(refused(
                    Internal,
                    "only Prepared authorities can be activated: unsupported local authority status: OLD",
                ));
            }
            Ok(())
        }
        let mut s = self.write();
        let info = match kind {
            AuthorityKind::X509 => {
                check(&s.x509, id)?;
                s.x509.activate();
                info_x509(&s.x509.active)
            }
            AuthorityKind::Jwt => {
                check(&s.jwt, id)?;
                s.jwt.activate();
                info_jwt(&s.jwt.active)
            }
        };
        self.commit(s)?;
        Ok(info)
    }

    /// Taints the old local authority `id`: still trusted, but agents re-issue what it signed.
    pub fn taint(&self, kind: AuthorityKind, id: &str) -> Result<AuthorityInfo, CaError> {
        use RefusalCode::*;
        if kind == AuthorityKind::X509 && self.has_upstream() {
            return Err(refused(
                FailedPrecondition,
                "local authority can't be tainted if there is an upstream authority",
            ));
        }
        fn check<A: Authority>(s: &Slots<A>, id: &str) -> Result<(), CaError> {
            if id.is_empty() {
                return Err(refused(InvalidArgument, "no authority ID provided"));
            }
            if id == s.active.id() {
                return Err(refused(
                    InvalidArgument,
                    "unable to taint current local authority",
                ));
            }
            match s.next() {
                Next::Old(o) if o.id() == id => Ok(()),
                Next::Prepared(p) if p.id() == id => Err(refused(
                    InvalidArgument,
                    "only Old local authorities can be tainted: unsupported local authority status: PREPARED",
                )),
                _ => Err(refused(InvalidArgument, "unexpected authority ID")),
            }
        }
        let mut s = self.write();
        let info = match kind {
            AuthorityKind::X509 => {
                check(&s.x509, id)?;
                if !s.tainted_x509.insert(id.to_string()) {
                    return Err(refused(
                        InvalidArgument,
                        "failed to taint X.509 authority: root CA is already tainted",
                    ));
                }
                s.x509.old.last().map(|a| info_x509(a)).unwrap_or_default()
            }
            AuthorityKind::Jwt => {
                check(&s.jwt, id)?;
                if !s.tainted_jwt.insert(id.to_string()) {
                    return Err(refused(
                        InvalidArgument,
                        "failed to taint JWT authority: key is already tainted",
                    ));
                }
                // SPIRE reports only the ID of a tainted JWT authority.
                AuthorityInfo {
                    authority_id: id.to_string(),
                    ..Default::default()
                }
            }
        };
        self.commit(s)?;
        Ok(info)
    }

    /// Removes a tainted old authority from the bundle.
    pub fn revoke(&self, kind: AuthorityKind, id: &str) -> Result<AuthorityInfo, CaError> {
        use RefusalCode::*;
        let mut s = self.write();
        match kind {
            AuthorityKind::X509 => {
                if self.has_upstream() {
                    return Err(refused(
                        FailedPrecondition,
                        "local authority can't be revoked if there is an upstream authority",
                    ));
                }
                let invalid =
                    |why: &str| refused(InvalidArgument, format!("invalid authority ID: {why}"));
                if id.is_empty() {
                    return Err(invalid("no authority ID provided"));
                }
                if id == s.x509.active.id {
                    return Err(invalid("unable to use current authority"));
                }
                if !matches!(s.x509.next(), Next::Old(o) if o.id == id) {
                    return Err(invalid("only Old local authority can be revoked"));
                }
                if !s.tainted_x509.contains(id) {
                    return Err(refused(
                        InvalidArgument,
                        "failed to revoke X.509 authority: it is not possible to revoke an untainted root CA",
                    ));
                }
                s.x509.old.retain(|a| a.id != id);
                s.tainted_x509.remove(id);
            }
            AuthorityKind::Jwt => {
                let invalid =
                    |why: &str| refused(InvalidArgument, format!("invalid authority ID: {why}"));
                if id.is_empty() {
                    return Err(invalid("no authority ID provided"));
                }
                if let Some(p) = &s.jwt.prepared
                    && p.id() == id
                {
                    return Err(invalid("unable to use a prepared key"));
                }
                if id == s.jwt.active.id() {
                    return Err(invalid("unable to use current authority"));
                }
                if !s.jwt.old.iter().any(|k| k.id() == id) {
                    return Err(invalid("no JWT authority found with provided authority ID"));
                }
                if !s.tainted_jwt.contains(id) {
                    return Err(refused(
                        InvalidArgument,
                        "failed to revoke JWT authority: it is not possible to revoke an untainted key",
                    ));
                }
                s.jwt.old.retain(|k| k.id() != id);
                s.tainted_jwt.remove(id);
            }
        }
        self.commit(s)?;
        Ok(AuthorityInfo {
            authority_id: id.to_string(),
            ..Default::default()
        })
    }

    /// Checks `upstreamauthority taint|revoke -subjectKeyID` (SPIRE's rules and messages) and
    /// returns the normalised (lowercase) subject key ID.
    fn check_upstream_id(&self, s: &State, ski: &str, prefix: &str) -> Result<String, CaError> {
        use RefusalCode::*;
        if !self.has_upstream() {
            return Err(refused(
                FailedPrecondition,
                "upstream authority is not configured",
            ));
        }
        let ski = ski.to_ascii_lowercase();
        let invalid = |why: &str| refused(InvalidArgument, format!("{prefix}: {why}"));
        if ski.is_empty() {
            return Err(invalid("no subject key ID provided"));
        }
        if ski == s.x509.active.upstream_id {
            return Err(invalid(
                "unable to use upstream authority singing current authority",
            ));
        }
        match s.x509.next() {
            Next::Old(o) if o.upstream_id == ski => Ok(ski),
            Next::Prepared(p) if p.upstream_id == ski => Err(invalid(
                "only upstream authorities signing an old authority can be used",
            )),
            _ => Err(invalid(
                "upstream authority didn't sign the old local authority",
            )),
        }
    }

    fn upstream_root_position(s: &State, ski: &str) -> Option<usize> {
        s.upstream_roots.iter().position(|r| {
            sigil_spiffe::x509::key_ids(r).is_ok_and(|(id, _)| id.as_deref() == Some(ski))
        })
    }

    /// Taints the upstream root that signed the old local authority.
    pub fn taint_upstream(&self, ski: &str) -> Result<String, CaError> {
        let mut s = self.write();
        let ski = self.check_upstream_id(&s, ski, "provided subject key id is not valid")?;
        if Self::upstream_root_position(&s, &ski).is_none() {
            return Err(refused(
                RefusalCode::NotFound,
                "failed to taint upstream authority: no ca found with provided subject key ID",
            ));
        }
        if !s.tainted_x509.insert(ski.clone()) {
            return Err(refused(
                RefusalCode::InvalidArgument,
                "failed to taint upstream authority: root CA is already tainted",
            ));
        }
        self.commit(s)?;
        Ok(ski)
    }

    /// Removes a tainted upstream root from the bundle for good.
    pub fn revoke_upstream(&self, ski: &str) -> Result<String, CaError> {
        let mut s = self.write();
        let ski = self.check_upstream_id(&s, ski, "invalid subject key ID")?;
        let Some(pos) = Self::upstream_root_position(&s, &ski) else {
            return Err(refused(
                RefusalCode::NotFound,
                "failed to revoke X.509 upstream authority: no ca found with provided subject key ID",
            ));
        };
        if !s.tainted_x509.contains(&ski) {
            return Err(refused(
                RefusalCode::InvalidArgument,
                "failed to revoke X.509 upstream authority: it is not possible to revoke an untainted root CA",
            ));
        }
        s.upstream_roots.remove(pos);
        s.tainted_x509.remove(&ski);
        s.revoked_upstream.insert(ski.clone());
        self.commit(s)?;
        Ok(ski)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// Fails if `text` shows `key` in any way a derived `Debug` or a careless `Display` would
    /// print bytes: as a decimal list (`Vec<u8>`), hex, or base64, whole or in part.
    fn assert_no_key_bytes(text: &str, key: &[u8]) {
        assert!(key.len() >= 32);
        let b64 = B64.encode(key);
        assert!(!text.contains(&b64[8..40]), "base64 key bytes in {text}");
        for window in key.windows(8) {
            let decimal = window
                .iter()
                .map(u8::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            assert!(!text.contains(&decimal), "key bytes in {text}");
            let hexed = hex::encode(window);
            assert!(
                !text.to_lowercase().contains(&hexed),
                "hex key bytes in {text}"
            );
        }
    }

    /// A successor's keys are generated while the state lock is free, so signing never waits
    /// for key generation.
    #[test]
    fn rotation_generates_keys_outside_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(cfg(dir.path())).unwrap();
        assert!(ca.rotate_if_due(crate::now_unix() + 13 * 3600).unwrap());
        let seen = ca.probes.keygen_lock_free.lock().unwrap().clone();
        assert_eq!(seen, [true], "key generation ran under the state lock");
    }

    #[test]
    fn debug_never_shows_private_keys() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(cfg(dir.path())).unwrap();
        // Successors too, so the prepared slots are populated.
        assert!(ca.rotate_if_due(crate::now_unix() + 13 * 3600).unwrap());
        let state = ca.state.read().unwrap();
        let x509: Vec<&Arc<X509Authority>> = state.x509.all().collect();
        let jwt: Vec<&Arc<JwtKey>> = state.jwt.all().collect();
        assert_eq!((x509.len(), jwt.len()), (2, 2));
        let keys: Vec<Vec<u8>> = x509
            .iter()
            .map(|a| a.pkcs8.to_vec())
            .chain(jwt.iter().map(|k| k.pkcs8.to_vec()))
            .collect();
        let texts = [
            format!("{ca:?}"),
            format!("{ca:#?}"),
            format!("{:?}", *state),
            format!("{:?}", state.x509),
            format!("{:?}", x509[0]),
            format!("{:?}", jwt[0]),
        ];
        drop(state);
        let identity = crate::tls::ServerIdentity::new(&ca, Duration::from_secs(600)).unwrap();
        let identity = format!("{identity:?}");
        assert!(!identity.contains("key"), "{identity}");
        for text in &texts {
            assert!(text.contains("not_after"), "{text}");
            // Not even the fields: their own `Debug` may change with a dependency update.
            assert!(!text.contains("pkcs8"), "{text}");
            for key in &keys {
                assert_no_key_bytes(text, key);
            }
        }
    }

    fn cfg(dir: &Path) -> CaConfig {
        CaConfig {
            trust_domain: "example.org".parse().unwrap(),
            ca_ttl: Duration::from_secs(24 * 3600),
            subject: CaSubject::default(),
            key_type: KeyType::EcP256,
            key_manager: KeyManager::Disk {
                keys_path: dir.join("keys.json"),
            },
            jwt_issuer: None,
            upstream: None,
        }
    }

    fn csr() -> (KeyPair, Vec<u8>) {
        let key = KeyPair::generate().unwrap();
        let csr = CertificateParams::default()
            .serialize_request(&key)
            .unwrap()
            .der()
            .to_vec();
        (key, csr)
    }

    #[test]
    fn svid_has_the_spiffe_shape() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(cfg(dir.path())).unwrap();
        let (_k, csr) = csr();
        let pk = Ca::csr_public_key(&csr).unwrap();
        let id: SpiffeId = "spiffe://example.org/web".parse().unwrap();
        let now = crate::now_unix();
        let svid = ca
            .sign_x509_svid(
                &pk,
                &id,
                &["web.example.org".into()],
                Duration::from_secs(3600),
                now,
            )
            .unwrap();
        // Structure per the X509-SVID spec, and it chains to the bundle.
        let got =
            sigil_spiffe::x509::verify_svid_chain(&svid.chain, &ca.x509_roots(), now).unwrap();
        assert_eq!(got, id);
        let (_, cert) = x509_parser::parse_x509_certificate(&svid.chain[0]).unwrap();
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature() && !ku.key_cert_sign() && !ku.crl_sign());
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        let bc = cert.basic_constraints().unwrap().unwrap().value;
        assert!(!bc.ca);
        assert_eq!(cert.validity().not_after.timestamp(), svid.expires_at);
        assert!((svid.expires_at - now - 3600).abs() <= 1);
    }

    #[test]
    fn svid_never_outlives_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg(dir.path());
        c.ca_ttl = Duration::from_secs(600);
        let ca = Ca::load_or_create(c).unwrap();
        let (_k, csr) = csr();
        let pk = Ca::csr_public_key(&csr).unwrap();
        let id: SpiffeId = "spiffe://example.org/web".parse().unwrap();
        let now = crate::now_unix();
        let svid = ca
            .sign_x509_svid(&pk, &id, &[], Duration::from_secs(3600), now)
            .unwrap();
        assert!(svid.expires_at <= now + 600);
    }

    #[test]
    fn restart_keeps_ca_and_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let b1 = Ca::load_or_create(cfg(dir.path())).unwrap().bundle();
        let b2 = Ca::load_or_create(cfg(dir.path())).unwrap().bundle();
        assert_eq!(b1.x509_authorities, b2.x509_authorities);
        assert_eq!(b1.jwt_authorities[0].key_id, b2.jwt_authorities[0].key_id);
        let mode = std::fs::metadata(dir.path().join("keys.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn rotation_prepares_then_activates() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(cfg(dir.path())).unwrap();
        let start = crate::now_unix();
        assert!(!ca.rotate_if_due(start).unwrap());
        assert!(ca.rotate_if_due(start + 13 * 3600).unwrap());
        assert_eq!(ca.bundle().x509_authorities.len(), 2);
        let (_k, csr) = csr();
        let pk = Ca::csr_public_key(&csr).unwrap();
        let id: SpiffeId = "spiffe://example.org/web".parse().unwrap();
        let before = ca
            .sign_x509_svid(&pk, &id, &[], Duration::from_secs(60), start)
            .unwrap();
        assert!(ca.rotate_if_due(start + 21 * 3600).unwrap());
        let after = ca
            .sign_x509_svid(&pk, &id, &[], Duration::from_secs(60), start)
            .unwrap();
        let issuer = |der: &[u8]| {
            let roots = ca.x509_roots();
            roots.iter().position(|r| {
                sigil_spiffe::x509::verify_svid_chain(
                    &[der.to_vec()],
                    std::slice::from_ref(r),
                    start,
                )
                .is_ok()
            })
        };
        assert_ne!(issuer(&before.chain[0]), issuer(&after.chain[0]));
        // The old root expires and leaves the bundle.
        ca.rotate_if_due(start + 25 * 3600).unwrap();
        assert_eq!(ca.bundle().x509_authorities.len(), 2); // active + newly prepared next
    }

    #[test]
    fn bad_csr_is_refused() {
        assert!(Ca::csr_public_key(b"garbage").is_err());
        let (_k, mut csr) = csr();
        let n = csr.len();
        csr[n - 5] ^= 0xff; // break the signature
        assert!(Ca::csr_public_key(&csr).is_err());
    }

    #[test]
    fn jwt_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(cfg(dir.path())).unwrap();
        let id: SpiffeId = "spiffe://example.org/web".parse().unwrap();
        let now = crate::now_unix();
        let (tok, exp) = ca
            .sign_jwt_svid(&id, &["aud1".into()], Duration::from_secs(300), now)
            .unwrap();
        assert_eq!(exp, now + 300);
        let bundle = ca.bundle();
        let v = sigil_spiffe::jwt::validate(&tok, "aud1", now, |_| Some(&bundle)).unwrap();
        assert_eq!(v.spiffe_id, id);
        assert!(v.claims.get("iss").is_none());
        // With jwt_issuer configured, tokens carry `iss`.
        let mut c = cfg(dir.path());
        c.key_manager = KeyManager::Memory;
        c.jwt_issuer = Some("https://oidc.example.org".into());
        let ca = Ca::load_or_create(c).unwrap();
        let (tok, _) = ca
            .sign_jwt_svid(&id, &["aud1".into()], Duration::from_secs(300), now)
            .unwrap();
        let bundle = ca.bundle();
        let v = sigil_spiffe::jwt::validate(&tok, "aud1", now, |_| Some(&bundle)).unwrap();
        assert_eq!(v.claims["iss"], "https://oidc.example.org");
    }

    #[test]
    fn authority_rules_follow_spire() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(cfg(dir.path())).unwrap();
        let now = crate::now_unix();
        let refused_with = |r: Result<AuthorityInfo, CaError>, want: &str| match r {
            Err(CaError::Refused { message, .. }) => {
                assert!(message.contains(want), "{message} lacks {want}")
            }
            other => panic!("expected a refusal with {want}, got {other:?}"),
        };
        let first = ca.authority_states(AuthorityKind::X509).active.unwrap();
        refused_with(
            ca.taint(AuthorityKind::X509, ""),
            "no authority ID provided",
        );
        refused_with(
            ca.taint(AuthorityKind::X509, &first.authority_id),
            "unable to taint current local authority",
        );
        refused_with(
            ca.activate(AuthorityKind::X509, "nope"),
            "unexpected authority ID",
        );
        let next = ca.prepare(AuthorityKind::X509, now).unwrap();
        let seq = ca.sequence();
        refused_with(
            ca.taint(AuthorityKind::X509, &next.authority_id),
            "only Old local authorities can be tainted",
        );
        ca.activate(AuthorityKind::X509, &next.authority_id)
            .unwrap();
        assert!(ca.sequence() > seq);
        refused_with(
            ca.activate(AuthorityKind::X509, &first.authority_id),
            "only Prepared authorities can be activated",
        );
        refused_with(
            ca.revoke(AuthorityKind::X509, &first.authority_id),
            "untainted root CA",
        );
        ca.taint(AuthorityKind::X509, &first.authority_id).unwrap();
        assert!(
            ca.bundle()
                .tainted_x509_authorities
                .contains(&first.authority_id)
        );
        refused_with(
            ca.taint(AuthorityKind::X509, &first.authority_id),
            "already tainted",
        );
        // The taint survives a restart.
        let ca = Ca::load_or_create(cfg(dir.path())).unwrap();
        assert!(
            ca.bundle()
                .tainted_x509_authorities
                .contains(&first.authority_id)
        );
        ca.revoke(AuthorityKind::X509, &first.authority_id).unwrap();
        let b = ca.bundle();
        assert_eq!(b.x509_authorities.len(), 1);
        assert!(b.tainted_x509_authorities.is_empty());
        // JWT: revoke may name any old key, but not a prepared one.
        let jwt_first = ca.authority_states(AuthorityKind::Jwt).active.unwrap();
        let jwt_next = ca.prepare(AuthorityKind::Jwt, now).unwrap();
        refused_with(
            ca.revoke(AuthorityKind::Jwt, &jwt_next.authority_id),
            "unable to use a prepared key",
        );
        ca.activate(AuthorityKind::Jwt, &jwt_next.authority_id)
            .unwrap();
        refused_with(
            ca.revoke(AuthorityKind::Jwt, "nope"),
            "no JWT authority found",
        );
        let tainted = ca
            .taint(AuthorityKind::Jwt, &jwt_first.authority_id)
            .unwrap();
        assert_eq!(tainted.expires_at, 0, "SPIRE reports only the ID");
        ca.revoke(AuthorityKind::Jwt, &jwt_first.authority_id)
            .unwrap();
        assert_eq!(ca.bundle().jwt_authorities.len(), 1);
        // Tokens are signed by the new key.
        let id: SpiffeId = "spiffe://example.org/w".parse().unwrap();
        let (tok, _) = ca
            .sign_jwt_svid(&id, &["a".into()], Duration::from_secs(60), now)
            .unwrap();
        let header = sigil_spiffe::jwt::parse_unverified(&tok).unwrap().header;
        assert_eq!(header["kid"], jwt_next.authority_id.as_str());
    }

    #[test]
    fn legacy_keys_file_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(cfg(dir.path())).unwrap();
        let (x, j) = {
            let s = ca.state.read().unwrap();
            (s.x509.active.clone(), s.jwt.active.clone())
        };
        let legacy = serde_json::json!({
            "active": {
                "x509_key": B64.encode(&*x.pkcs8),
                "x509_cert": B64.encode(&x.cert_der),
                "jwt_kid": j.signer.kid(),
                "jwt_key": B64.encode(&*j.pkcs8),
                "jwt_not_after": j.not_after,
            },
            "retired": [],
            "sequence": 7,
        });
        std::fs::write(dir.path().join("keys.json"), legacy.to_string()).unwrap();
        let ca = Ca::load_or_create(cfg(dir.path())).unwrap();
        let b = ca.bundle();
        assert_eq!(b.x509_authorities, vec![x.cert_der.clone()]);
        assert_eq!(b.jwt_authorities[0].key_id, j.signer.kid());
        assert_eq!(b.sequence_number, Some(7));
    }

    #[test]
    fn upstream_files_are_checked_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let root_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let root = params.self_signed(&root_key).unwrap();
        let cert = dir.path().join("ca.crt");
        let key = dir.path().join("ca.key");
        std::fs::write(&cert, root.pem()).unwrap();
        std::fs::write(&key, root_key.serialize_pem()).unwrap();
        let up = DiskUpstream {
            cert_file_path: cert.clone(),
            key_file_path: key.clone(),
            bundle_file_path: None,
        };
        let mut c = cfg(dir.path());
        c.upstream = Some(Upstream::Disk(up.clone()));
        let ca = Ca::load_or_create(c.clone()).unwrap();
        assert_eq!(ca.x509_roots(), vec![root.der().to_vec()]);
        let (_k, csr) = csr();
        let pk = Ca::csr_public_key(&csr).unwrap();
        let id: SpiffeId = "spiffe://example.org/web".parse().unwrap();
        let now = crate::now_unix();
        let svid = ca
            .sign_x509_svid(&pk, &id, &[], Duration::from_secs(60), now)
            .unwrap();
        assert_eq!(svid.chain.len(), 2);
        sigil_spiffe::x509::verify_svid_chain(&svid.chain, &ca.x509_roots(), now).unwrap();
        // A key that is not the certificate's; a missing file; a non-PKCS#8 key.
        std::fs::write(&key, KeyPair::generate().unwrap().serialize_pem()).unwrap();
        let err = up.load().unwrap_err().to_string();
        assert!(err.contains("does not belong to the certificate"), "{err}");
        std::fs::remove_file(&key).unwrap();
        let err = up.load().unwrap_err().to_string();
        assert!(err.contains(&key.display().to_string()), "{err}");
        std::fs::write(
            &key,
            "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n",
        )
        .unwrap();
        let err = up.load().unwrap_err().to_string();
        assert!(err.contains("PKCS#8"), "{err}");
    }

    #[test]
    fn adding_an_upstream_to_a_running_trust_domain_keeps_the_old_root() {
        let dir = tempfile::tempdir().unwrap();
        let before = Ca::load_or_create(cfg(dir.path())).unwrap();
        let old_root = before.x509_roots();
        drop(before);
        let root_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let root = params.self_signed(&root_key).unwrap();
        std::fs::write(dir.path().join("up.crt"), root.pem()).unwrap();
        std::fs::write(dir.path().join("up.key"), root_key.serialize_pem()).unwrap();
        let mut c = cfg(dir.path());
        c.upstream = Some(Upstream::Disk(DiskUpstream {
            cert_file_path: dir.path().join("up.crt"),
            key_file_path: dir.path().join("up.key"),
            bundle_file_path: None,
        }));
        let ca = Ca::load_or_create(c.clone()).unwrap();
        let roots = ca.x509_roots();
        assert!(roots.contains(&old_root[0]) && roots.contains(&root.der().to_vec()));
        let active = ca.authority_states(AuthorityKind::X509).active.unwrap();
        assert!(!active.upstream_authority_subject_key_id.is_empty());
        // Signing chains to the upstream root now.
        let (_k, csr) = csr();
        let pk = Ca::csr_public_key(&csr).unwrap();
        let id: SpiffeId = "spiffe://example.org/w".parse().unwrap();
        let now = crate::now_unix();
        let svid = ca
            .sign_x509_svid(&pk, &id, &[], Duration::from_secs(60), now)
            .unwrap();
        sigil_spiffe::x509::verify_svid_chain(&svid.chain, &[root.der().to_vec()], now).unwrap();
        drop(ca);
        // And back: a self-signed CA again, the upstream root still published.
        let ca = Ca::load_or_create(cfg(dir.path())).unwrap();
        let roots = ca.x509_roots();
        assert!(roots.contains(&root.der().to_vec()), "upstream root kept");
        let active = ca.authority_states(AuthorityKind::X509).active.unwrap();
        assert!(active.upstream_authority_subject_key_id.is_empty());
    }

    /// An upstream that cannot sign when the X.509 CA is due does not hold back the JWT key.
    #[test]
    fn a_failing_upstream_does_not_block_jwt_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let root_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let root = params.self_signed(&root_key).unwrap();
        std::fs::write(dir.path().join("up.crt"), root.pem()).unwrap();
        std::fs::write(dir.path().join("up.key"), root_key.serialize_pem()).unwrap();
        let mut c = cfg(dir.path());
        c.upstream = Some(Upstream::Disk(DiskUpstream {
            cert_file_path: dir.path().join("up.crt"),
            key_file_path: dir.path().join("up.key"),
            bundle_file_path: None,
        }));
        let ca = Ca::load_or_create(c).unwrap();
        std::fs::remove_file(dir.path().join("up.key")).unwrap();
        let err = ca.rotate_if_due(crate::now_unix() + 13 * 3600).unwrap_err();
        assert!(err.to_string().contains("up.key"), "{err}");
        let jwt = ca.authority_states(AuthorityKind::Jwt);
        assert!(
            jwt.prepared.is_some(),
            "the JWT successor was prepared anyway"
        );
        assert!(ca.authority_states(AuthorityKind::X509).prepared.is_none());
    }
}
