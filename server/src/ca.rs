//! The trust domain's certificate authority: a self-signed root that signs X509-SVIDs, and an
//! ES256 key that signs JWT-SVIDs.
//!
//! Rotation follows SPIRE's shape: when the active CA passes half its lifetime a successor is
//! *prepared* (its root and JWT key join the bundle at once, so every agent and workload learns
//! to trust it), and it is *activated* at five sixths of the old CA's lifetime. SVIDs are never
//! valid beyond the CA that signs them.
//!
//! Keys are held by a key manager: `disk` writes them to a 0600 JSON file (atomically: temp file,
//! fsync, rename) so a restart keeps the same CA and bundle; `memory` keeps them in RAM only.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use sigil_spiffe::bundle::{Bundle, JwtAuthority};
use sigil_spiffe::jwt::JwtSigner;
use sigil_spiffe::{SpiffeId, TrustDomain};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use time::OffsetDateTime;

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
}

fn crypto(e: impl std::fmt::Display) -> CaError {
    CaError::Crypto(e.to_string())
}

/// One X.509 authority: a root certificate and its key.
struct X509Authority {
    /// rcgen issuer built from the certificate and key; signing needs nothing else.
    issuer: Issuer<'static, KeyPair>,
    cert_der: Vec<u8>,
    not_before: i64,
    not_after: i64,
}

impl std::fmt::Debug for X509Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("X509Authority")
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// One JWT signing key.
struct JwtKey {
    signer: JwtSigner,
    not_after: i64,
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

/// A CA generation: the X.509 root and JWT key that rotate together.
struct Generation {
    x509: X509Authority,
    jwt: JwtKey,
    /// PKCS#8 of both keys, kept only to persist them (zeroized on drop).
    x509_pkcs8: zeroize::Zeroizing<Vec<u8>>,
    jwt_pkcs8: zeroize::Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The PKCS#8 fields are left out on purpose: whether `Zeroizing`'s own `Debug` hides
        // its contents depends on the zeroize version, so nothing here relies on it.
        f.debug_struct("Generation")
            .field("x509", &self.x509)
            .field("jwt", &self.jwt)
            .finish_non_exhaustive()
    }
}

/// Generations of the CA; holds private keys, hence the hand-written `Debug` below.
struct State {
    active: Arc<Generation>,
    /// Prepared successor (in the bundle, not yet signing).
    next: Option<Arc<Generation>>,
    /// Older generations still in the bundle until they expire.
    retired: Vec<Arc<Generation>>,
    /// The bundle's `spiffe_sequence`: bumped on every change of the bundle, kept across
    /// restarts, so federated peers can refuse an older bundle.
    sequence: u64,
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
}

/// The CA handle.
pub struct Ca {
    cfg: CaConfig,
    state: RwLock<State>,
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

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("active", &self.active)
            .field("next", &self.next)
            .field("retired", &self.retired)
            .finish()
    }
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

// --- persistence format ---

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredGeneration {
    x509_key: String,
    x509_cert: String,
    jwt_kid: String,
    jwt_key: String,
    jwt_not_after: i64,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredKeys {
    active: StoredGeneration,
    #[serde(default)]
    next: Option<StoredGeneration>,
    #[serde(default)]
    retired: Vec<StoredGeneration>,
    /// Absent in files written before federation: starts at 1.
    #[serde(default)]
    sequence: u64,
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

// === impl Generation ===

impl Generation {
    fn create(cfg: &CaConfig, now: i64) -> Result<Self, CaError> {
        let alg = match cfg.key_type {
            KeyType::EcP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyType::EcP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        };
        let key = KeyPair::generate_for(alg).map_err(crypto)?;
        let not_before = now - 10; // small backdate for clock skew
        let not_after = now + cfg.ca_ttl.as_secs() as i64;
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
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        // The trust domain's SPIFFE ID as URI SAN, as SPIRE does for its CAs.
        params.subject_alt_names = vec![SanType::URI(
            cfg.trust_domain
                .id()
                .to_string()
                .try_into()
                .map_err(crypto)?,
        )];
        params.serial_number = Some(random_serial());
        params.not_before = to_time(not_before)?;
        params.not_after = to_time(not_after)?;
        let cert = params.self_signed(&key).map_err(crypto)?;
        let x509_pkcs8 = zeroize::Zeroizing::new(key.serialize_der());
        let cert_der = cert.der().to_vec();
        let (jwt_signer, jwt_pkcs8) = JwtSigner::generate(random_kid()).map_err(crypto)?;
        let issuer = Issuer::new(params, key);
        Ok(Self {
            x509: X509Authority {
                issuer,
                cert_der,
                not_before,
                not_after,
            },
            jwt: JwtKey {
                signer: jwt_signer,
                not_after,
            },
            x509_pkcs8,
            jwt_pkcs8: zeroize::Zeroizing::new(jwt_pkcs8),
        })
    }

    fn store(&self) -> StoredGeneration {
        StoredGeneration {
            x509_key: B64.encode(&*self.x509_pkcs8),
            x509_cert: B64.encode(&self.x509.cert_der),
            jwt_kid: self.jwt.signer.kid().to_string(),
            jwt_key: B64.encode(&*self.jwt_pkcs8),
            jwt_not_after: self.jwt.not_after,
        }
    }

    fn load(s: &StoredGeneration, path: &str) -> Result<Self, CaError> {
        let corrupt = |what: &str, e: &dyn std::fmt::Display| {
            CaError::Corrupt(path.to_string(), format!("{what}: {e}"))
        };
        let key_der = zeroize::Zeroizing::new(
            B64.decode(&s.x509_key)
                .map_err(|e| corrupt("x509_key", &e))?,
        );
        let cert_der = B64
            .decode(&s.x509_cert)
            .map_err(|e| corrupt("x509_cert", &e))?;
        let key = KeyPair::try_from(key_der.as_slice()).map_err(|e| corrupt("x509_key", &e))?;
        let issuer = Issuer::from_ca_cert_der(&cert_der.as_slice().into(), key)
            .map_err(|e| corrupt("x509_cert", &e))?;
        let (_, parsed) =
            x509_parser::parse_x509_certificate(&cert_der).map_err(|e| corrupt("x509_cert", &e))?;
        let not_before = parsed.validity().not_before.timestamp();
        let not_after = parsed.validity().not_after.timestamp();
        let jwt_der =
            zeroize::Zeroizing::new(B64.decode(&s.jwt_key).map_err(|e| corrupt("jwt_key", &e))?);
        let signer = JwtSigner::from_pkcs8(s.jwt_kid.clone(), &jwt_der)
            .map_err(|e| corrupt("jwt_key", &e))?;
        Ok(Self {
            x509: X509Authority {
                issuer,
                cert_der,
                not_before,
                not_after,
            },
            jwt: JwtKey {
                signer,
                not_after: s.jwt_not_after,
            },
            x509_pkcs8: key_der,
            jwt_pkcs8: jwt_der,
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
                State {
                    active: Arc::new(Generation::load(&stored.active, &p)?),
                    next: stored
                        .next
                        .as_ref()
                        .map(|g| Generation::load(g, &p).map(Arc::new))
                        .transpose()?,
                    retired: stored
                        .retired
                        .iter()
                        .map(|g| Generation::load(g, &p).map(Arc::new))
                        .collect::<Result<_, _>>()?,
                    sequence: stored.sequence.max(1),
                }
            }
            _ => State {
                active: Arc::new(Generation::create(&cfg, now)?),
                next: None,
                retired: vec![],
                sequence: 1,
            },
        };
        let ca = Self {
            cfg,
            state: RwLock::new(state),
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

    fn persist(&self) -> Result<(), CaError> {
        let KeyManager::Disk { keys_path } = &self.cfg.key_manager else {
            return Ok(());
        };
        let stored = {
            let s = self.read();
            StoredKeys {
                active: s.active.store(),
                next: s.next.as_ref().map(|g| g.store()),
                retired: s.retired.iter().map(|g| g.store()).collect(),
                sequence: s.sequence,
            }
        };
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

    /// Prepares/activates/retires generations as their lifetimes require. Returns true if the
    /// bundle changed (so agents must be told).
    pub fn rotate_if_due(&self, now: i64) -> Result<bool, CaError> {
        // A successor's keys are generated before taking the write lock, so signing (which
        // reads the state) never waits for key generation.
        let due = {
            let s = self.read();
            let a = &s.active.x509;
            s.next.is_none() && now >= a.not_before + (a.not_after - a.not_before) / 2
        };
        let successor = due.then(|| self.create_generation(now)).transpose()?;
        let changed = {
            let mut s = self.state.write().unwrap_or_else(|p| p.into_inner());
            let mut changed = false;
            if let Some(next) = successor
                && s.next.is_none()
            {
                s.next = Some(Arc::new(next));
                changed = true;
            }
            let a = &s.active.x509;
            let life = a.not_after - a.not_before;
            if now >= a.not_before + life * 5 / 6
                && let Some(next) = s.next.take()
            {
                let old = std::mem::replace(&mut s.active, next);
                s.retired.push(old);
                changed = true;
            }
            let before = s.retired.len();
            s.retired.retain(|g| g.x509.not_after > now);
            changed |= s.retired.len() != before;
            if changed {
                s.sequence += 1;
            }
            changed
        };
        if changed {
            self.persist()?;
        }
        Ok(changed)
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.cfg.trust_domain
    }

    /// The trust domain's own bundle: every generation's root and JWT key.
    pub fn bundle(&self) -> Bundle {
        let s = self.read();
        let mut b = Bundle::new(self.cfg.trust_domain.clone());
        let gens = s.retired.iter().chain([&s.active]).chain(s.next.iter());
        for g in gens {
            b.x509_authorities.push(g.x509.cert_der.clone());
            b.jwt_authorities.push(JwtAuthority {
                key_id: g.jwt.signer.kid().to_string(),
                public_key_der: g.jwt.signer.public_key_spki_der(),
                expires_at: g.jwt.not_after,
            });
        }
        b.sequence_number = Some(s.sequence);
        b
    }

    /// Root certificates that verify SVIDs (DER).
    pub fn x509_roots(&self) -> Vec<Vec<u8>> {
        self.bundle().x509_authorities
    }

    /// A successor generation (key generation: CPU work, done without holding the state lock).
    fn create_generation(&self, now: i64) -> Result<Generation, CaError> {
        #[cfg(test)]
        self.probes
            .keygen_lock_free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(self.state.try_write().is_ok());
        Generation::create(&self.cfg, now)
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
        let active = self.read().active.clone();
        let ca = &active.x509;
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
        Ok(SignedSvid {
            chain: vec![cert.der().to_vec()],
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
        let active = self.read().active.clone();
        let exp = (now + ttl.as_secs() as i64).min(active.jwt.not_after);
        if exp <= now {
            return Err(CaError::Expired);
        }
        let token = active
            .jwt
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
        // A successor too, so `next` is populated.
        assert!(ca.rotate_if_due(crate::now_unix() + 13 * 3600).unwrap());
        let state = ca.state.read().unwrap();
        let generations: Vec<&Arc<Generation>> = std::iter::once(&state.active)
            .chain(state.next.iter())
            .collect();
        assert_eq!(generations.len(), 2);
        let keys: Vec<Vec<u8>> = generations
            .iter()
            .flat_map(|g| [g.x509_pkcs8.to_vec(), g.jwt_pkcs8.to_vec()])
            .collect();
        let texts = [
            format!("{ca:?}"),
            format!("{ca:#?}"),
            format!("{:?}", *state),
            format!("{:?}", generations[0]),
            format!("{:?}", generations[0].jwt),
            format!("{:?}", generations[0].x509),
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
}
