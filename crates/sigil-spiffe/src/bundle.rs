//! Trust bundles: the X.509 and JWT authorities of one trust domain, and the
//! formats they travel in.
//!
//! - SPIFFE bundle JSON (SPIFFE Trust Domain and Bundle spec §4, the
//!   federation format): a JWK set whose keys carry `use: x509-svid` (with a
//!   one-certificate `x5c`) or `use: jwt-svid` (with a `kid`), plus
//!   `spiffe_refresh_hint` and `spiffe_sequence`.
//! - JWKS (what the Workload API's `FetchJWTBundles` returns per trust
//!   domain): only the JWT authorities.
//! - Concatenated DER (the Workload API's X.509 bundle format) and PEM: only
//!   the X.509 authorities.
//!
//! Parsing follows go-spiffe's `spiffebundle.Parse`, `jwtbundle.Parse` and
//! `x509bundle.Parse`, including their error messages, so that a bundle one
//! side accepts the other accepts too. A SPIFFE bundle document must have the
//! `keys` member (the spec requires it; go-spiffe: "no authorities found");
//! `"keys": []` is a valid, empty bundle (every authority revoked).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::id::TrustDomain;
use crate::jwk::{Jwk, JwkError, PublicKeyParams};
use crate::x509::{self, SvidError};

/// `use` of X.509 authorities in SPIFFE bundles (X509-SVID spec §6.1).
const X509_SVID_USE: &str = "x509-svid";
/// `use` of JWT authorities in SPIFFE bundles (JWT-SVID spec §7.1).
const JWT_SVID_USE: &str = "jwt-svid";

/// Why a bundle could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The document is not JSON of the expected shape.
    #[error("unable to parse JWKS: {0}")]
    Json(#[from] serde_json::Error),
    /// A SPIFFE bundle document without the `keys` member (or with `"keys": null`).
    #[error("no authorities found")]
    NoAuthorities,
    /// An `x509-svid` key has zero or several certificates.
    #[error("expected a single certificate in x509-svid entry {index}; got {count}")]
    X509EntryCertCount {
        /// Position in `keys`.
        index: usize,
        /// Certificates found.
        count: usize,
    },
    /// An `x509-svid` key's certificate is not usable.
    #[error("cannot parse certificate in x509-svid entry {index}: {reason}")]
    InvalidX509Entry {
        /// Position in `keys`.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// An `x509-svid` key's JWK members describe another key than its
    /// certificate's (go-jose rejects this too).
    #[error("public key of x509-svid entry {index} does not match its certificate")]
    X509EntryKeyMismatch {
        /// Position in `keys`.
        index: usize,
    },
    /// A JWT authority without `kid` (go-spiffe's message).
    #[error("error adding authority {index} of JWKS: keyID cannot be empty")]
    MissingKeyId {
        /// Position in `keys`.
        index: usize,
    },
    /// A JWT authority whose key members are unusable.
    #[error("error adding authority {index} of JWKS: {source}")]
    InvalidJwtKey {
        /// Position in `keys`.
        index: usize,
        /// What is wrong with it.
        source: JwkError,
    },
    /// PEM input could not be read (go-spiffe's wording).
    #[error("cannot parse certificate: {0}")]
    Pem(SvidError),
    /// An X.509 authority being added is not a usable certificate.
    #[error("invalid X.509 authority: {0}")]
    InvalidX509Authority(String),
    /// A JWT authority being added is not usable.
    #[error("invalid JWT authority {key_id:?}: {reason}")]
    InvalidJwtAuthority {
        /// Its key ID.
        key_id: String,
        /// What is wrong with it.
        reason: String,
    },
}

// === impl JwtAuthority ===

/// A JWT signing key of a trust domain.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JwtAuthority {
    /// The `kid` tokens name it by.
    pub key_id: String,
    /// SubjectPublicKeyInfo DER.
    pub public_key_der: Vec<u8>,
    /// When the key stops being published, unix seconds; 0 for never. Kept
    /// for the server's bookkeeping: SPIFFE bundle JSON has no such member,
    /// so it is neither written nor read there.
    pub expires_at: i64,
}

impl JwtAuthority {
    /// Checks the authority can be published: non-empty kid, supported key.
    fn check(&self) -> Result<Jwk, BundleError> {
        let invalid = |reason: String| BundleError::InvalidJwtAuthority {
            key_id: self.key_id.clone(),
            reason,
        };
        if self.key_id.is_empty() {
            return Err(invalid("keyID cannot be empty".to_owned()));
        }
        Jwk::from_spki_der(&self.public_key_der).map_err(|e| invalid(e.to_string()))
    }
}

// === impl Bundle ===

/// The trust bundle of one trust domain.
///
/// The fields are public for convenience; the `add_*` methods and parsers
/// keep the invariants that serialization relies on (every X.509 authority
/// is a parsable certificate with a JWK-expressible key, every JWT
/// authority has a non-empty, unique kid and a JWK-expressible key).
/// Authorities that break them are left out when serializing rather than
/// making the whole document unreadable to other SPIFFE implementations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    /// The trust domain the authorities are for.
    pub trust_domain: TrustDomain,
    /// CA certificates, DER.
    pub x509_authorities: Vec<Vec<u8>>,
    /// JWT signing keys.
    pub jwt_authorities: Vec<JwtAuthority>,
    /// How often (seconds) consumers should poll for updates.
    pub refresh_hint: Option<i64>,
    /// Incremented on every change by the publisher.
    pub sequence_number: Option<u64>,
    /// Authority IDs (subject key IDs, lowercase hex) of X.509 authorities an operator has
    /// tainted: still trusted, but every SVID chained to one must be re-issued. Travels only
    /// between Sigil's server and agents (SPIFFE bundle JSON has no such member).
    pub tainted_x509_authorities: std::collections::BTreeSet<String>,
    /// Key IDs of tainted JWT authorities: tokens signed with them are dropped from caches.
    pub tainted_jwt_authorities: std::collections::BTreeSet<String>,
}

/// The SPIFFE bundle document as read. Unknown members are ignored.
#[derive(Deserialize)]
struct BundleDocIn {
    #[serde(default)]
    keys: Option<Vec<Jwk>>,
    #[serde(default)]
    spiffe_refresh_hint: Option<i64>,
    #[serde(default)]
    spiffe_sequence: Option<u64>,
}

/// The SPIFFE bundle document as written.
#[derive(Serialize)]
struct BundleDocOut {
    keys: Vec<Jwk>,
    #[serde(skip_serializing_if = "Option::is_none")]
    spiffe_refresh_hint: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    spiffe_sequence: Option<u64>,
}

/// A plain JWK set.
#[derive(Serialize, Deserialize)]
struct JwkSet {
    #[serde(default)]
    keys: Option<Vec<Jwk>>,
}

impl Bundle {
    /// An empty bundle.
    pub fn new(td: TrustDomain) -> Self {
        Bundle {
            trust_domain: td,
            x509_authorities: Vec::new(),
            jwt_authorities: Vec::new(),
            refresh_hint: None,
            sequence_number: None,
            tainted_x509_authorities: Default::default(),
            tainted_jwt_authorities: Default::default(),
        }
    }

    /// Whether the bundle has no authority at all.
    pub fn is_empty(&self) -> bool {
        self.x509_authorities.is_empty() && self.jwt_authorities.is_empty()
    }

    /// Adds a CA certificate (DER) unless it is already there, after
    /// checking that it parses and has a supported key. Returns whether it
    /// was added.
    pub fn add_x509_authority(&mut self, der: Vec<u8>) -> Result<bool, BundleError> {
        x509_authority_jwk(&der).map_err(BundleError::InvalidX509Authority)?;
        Ok(self.push_x509_authority(der))
    }

    fn push_x509_authority(&mut self, der: Vec<u8>) -> bool {
        if self.x509_authorities.contains(&der) {
            return false;
        }
        self.x509_authorities.push(der);
        true
    }

    /// Adds a JWT authority, replacing one with the same kid (as go-spiffe
    /// does), after checking the kid is non-empty and the key supported.
    pub fn add_jwt_authority(&mut self, authority: JwtAuthority) -> Result<(), BundleError> {
        authority.check()?;
        self.push_jwt_authority(authority);
        Ok(())
    }

    fn push_jwt_authority(&mut self, authority: JwtAuthority) {
        match self
            .jwt_authorities
            .iter_mut()
            .find(|a| a.key_id == authority.key_id)
        {
            Some(existing) => *existing = authority,
            None => self.jwt_authorities.push(authority),
        }
    }

    /// The JWT authority with key ID `kid`.
    pub fn jwt_authority(&self, kid: &str) -> Option<&JwtAuthority> {
        self.jwt_authorities.iter().find(|a| a.key_id == kid)
    }

    /// The SPIFFE bundle JSON document (federation format).
    pub fn to_spiffe_json(&self) -> String {
        let x509_keys = self.x509_authorities.iter().filter_map(|der| {
            let mut jwk = x509_authority_jwk(der).ok()?;
            jwk.key_use = Some(X509_SVID_USE.to_owned());
            jwk.x5c = Some(vec![STANDARD.encode(der)]);
            Some(jwk)
        });
        let jwt_keys = self.jwt_authorities.iter().filter_map(|authority| {
            let mut jwk = authority.check().ok()?;
            jwk.key_use = Some(JWT_SVID_USE.to_owned());
            jwk.kid = Some(authority.key_id.clone());
            Some(jwk)
        });
        let doc = BundleDocOut {
            keys: x509_keys.chain(jwt_keys).collect(),
            spiffe_refresh_hint: self.refresh_hint,
            spiffe_sequence: self.sequence_number,
        };
        to_json(&doc)
    }

    /// Reads a SPIFFE bundle JSON document as go-spiffe's
    /// `spiffebundle.Parse` does: `x509-svid` keys need exactly one
    /// certificate, `jwt-svid` keys need a `kid`, keys with any other or no
    /// `use` (e.g. `wit-svid`) are ignored.
    pub fn from_spiffe_json(td: TrustDomain, json: &[u8]) -> Result<Bundle, BundleError> {
        let doc: BundleDocIn = parse_document(json)?;
        let mut bundle = Bundle::new(td);
        bundle.refresh_hint = doc.spiffe_refresh_hint;
        bundle.sequence_number = doc.spiffe_sequence;
        // An absent `keys` is an error, an empty one is not: `[]` says "no authorities",
        // absence says nothing (and is what a wrong document would look like).
        let keys = doc.keys.ok_or(BundleError::NoAuthorities)?;
        for (index, key) in keys.into_iter().enumerate() {
            match key.key_use.as_deref() {
                Some(X509_SVID_USE) => {
                    let der = x509_entry(index, &key)?;
                    bundle.push_x509_authority(der);
                }
                Some(JWT_SVID_USE) => {
                    bundle.push_jwt_authority(jwt_entry(index, &key)?);
                }
                _ => {}
            }
        }
        Ok(bundle)
    }

    /// A JWKS of the JWT authorities only, as the Workload API's
    /// `FetchJWTBundles` returns per trust domain (and go-spiffe's
    /// `jwtbundle.Marshal` writes): each key has `kid`, `kty` and its key
    /// members, and no `use`.
    pub fn to_jwks_json(&self) -> String {
        let keys = self
            .jwt_authorities
            .iter()
            .filter_map(|authority| {
                let mut jwk = authority.check().ok()?;
                jwk.kid = Some(authority.key_id.clone());
                Some(jwk)
            })
            .collect();
        to_json(&JwkSet { keys: Some(keys) })
    }

    /// Reads a JWKS as JWT authorities, as go-spiffe's `jwtbundle.Parse`
    /// does: every key is a JWT authority, whatever its `use`, and needs a
    /// `kid`.
    pub fn from_jwks_json(td: TrustDomain, json: &[u8]) -> Result<Bundle, BundleError> {
        let set: JwkSet = parse_document(json)?;
        let mut bundle = Bundle::new(td);
        for (index, key) in set.keys.unwrap_or_default().into_iter().enumerate() {
            bundle.push_jwt_authority(jwt_entry(index, &key)?);
        }
        Ok(bundle)
    }

    /// The X.509 authorities as concatenated DER (Workload API format).
    pub fn x509_authorities_concat_der(&self) -> Vec<u8> {
        self.x509_authorities.concat()
    }

    /// Reads concatenated DER certificates as X.509 authorities.
    pub fn from_x509_authorities_der(td: TrustDomain, der: &[u8]) -> Result<Bundle, BundleError> {
        let mut bundle = Bundle::new(td);
        for cert in x509::parse_der_certs(der).map_err(BundleError::Pem)? {
            bundle.add_x509_authority(cert)?;
        }
        Ok(bundle)
    }

    /// The X.509 authorities as PEM.
    pub fn to_pem(&self) -> String {
        x509::certs_to_pem(&self.x509_authorities)
    }

    /// Reads PEM certificates as X.509 authorities, as go-spiffe's
    /// `x509bundle.Parse` does: empty input is an empty bundle; otherwise
    /// there must be at least one certificate block and every certificate
    /// must parse (other blocks are skipped).
    pub fn from_pem(td: TrustDomain, pem: &[u8]) -> Result<Bundle, BundleError> {
        let mut bundle = Bundle::new(td);
        if pem.iter().all(u8::is_ascii_whitespace) {
            return Ok(bundle);
        }
        for cert in x509::parse_pem_certs(pem).map_err(BundleError::Pem)? {
            bundle.add_x509_authority(cert)?;
        }
        Ok(bundle)
    }
}

/// Parses a JWK set document. Goes through `Value` first because serde's
/// derived structs also accept JSON arrays (`[]` would read as an empty
/// bundle), and Go, whose readers we match, only accepts objects.
fn parse_document<T: DeserializeOwned>(json: &[u8]) -> Result<T, BundleError> {
    let not_object = |what: &str| {
        BundleError::Json(<serde_json::Error as serde::de::Error>::custom(format!(
            "{what} is not a JSON object"
        )))
    };
    let doc: Value = serde_json::from_slice(json)?;
    let Value::Object(members) = &doc else {
        return Err(not_object("document"));
    };
    if let Some(Value::Array(keys)) = members.get("keys")
        && !keys.iter().all(Value::is_object)
    {
        return Err(not_object("a key"));
    }
    Ok(serde_json::from_value(doc)?)
}

/// Serializes one of this module's document types.
fn to_json(doc: &impl Serialize) -> String {
    // Invariant: the documents are structs of strings, integers, options
    // and vectors with string keys only, which serde_json always serializes.
    serde_json::to_string(doc).expect("bundle documents always serialize")
}

/// The JWK key members of a CA certificate, or why there are none.
fn x509_authority_jwk(der: &[u8]) -> Result<Jwk, String> {
    let spki = x509::spki_der_of_cert(der).map_err(|e| e.to_string())?;
    Jwk::from_spki_der(&spki).map_err(|e| e.to_string())
}

/// Reads an `x509-svid` key: exactly one certificate, whose key matches the
/// JWK members if there are any.
fn x509_entry(index: usize, key: &Jwk) -> Result<Vec<u8>, BundleError> {
    let certs = key.x5c.as_deref().unwrap_or_default();
    let [cert] = certs else {
        return Err(BundleError::X509EntryCertCount {
            index,
            count: certs.len(),
        });
    };
    let invalid = |reason: String| BundleError::InvalidX509Entry { index, reason };
    let der = STANDARD
        .decode(cert)
        .map_err(|_| invalid("x5c is not valid base64".to_owned()))?;
    let spki = x509::spki_der_of_cert(&der).map_err(|e| invalid(e.to_string()))?;
    let cert_key = PublicKeyParams::from_spki_der(&spki).map_err(|e| invalid(e.to_string()))?;
    let jwk_key = key
        .public_key()
        .map_err(|e| invalid(format!("invalid key members: {e}")))?;
    if jwk_key.is_some_and(|k| k != cert_key) {
        return Err(BundleError::X509EntryKeyMismatch { index });
    }
    Ok(der)
}

/// Reads a JWT authority key: non-empty `kid` and a supported key.
fn jwt_entry(index: usize, key: &Jwk) -> Result<JwtAuthority, BundleError> {
    let key_id = key
        .kid
        .clone()
        .filter(|kid| !kid.is_empty())
        .ok_or(BundleError::MissingKeyId { index })?;
    let public_key_der = key
        .spki_der()
        .and_then(|der| der.ok_or(JwkError::MissingParameter("kty")))
        .map_err(|source| BundleError::InvalidJwtKey { index, source })?;
    Ok(JwtAuthority {
        key_id,
        public_key_der,
        expires_at: 0,
    })
}
