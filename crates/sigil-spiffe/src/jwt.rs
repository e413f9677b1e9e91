//! JWT-SVIDs per the SPIFFE JWT-SVID specification: signing (ES256 only,
//! which is what Sigil's server issues) and validation (ES256/384,
//! RS256/384/512 and PS256/384/512, which is what the specification allows
//! any SPIFFE issuer to use).
//!
//! Validation follows go-spiffe's `jwtsvid.ParseAndValidate`, with its error
//! messages, and is strict where JWT libraries are often lax: `alg: none`
//! and HMAC are refused outright (a bundle holds public keys, so an HMAC
//! "verification" with one would be forgeable), the key is chosen by `kid`
//! among the subject's own trust domain's authorities only, and the key
//! type must match `alg`.

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _, UnparsedPublicKey, VerificationAlgorithm};
use serde_json::{Map, Value};

use crate::bundle::Bundle;
use crate::der::{self, oid};
use crate::id::{IdError, SpiffeId, TrustDomain};
use crate::jwk::{EcCurve, PublicKeyParams};

/// Why a JWT-SVID could not be signed or was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// The private key is not a PKCS#8 ECDSA P-256 key. Never carries key
    /// bytes.
    #[error("signing key is not a valid PKCS#8 ECDSA P-256 private key")]
    InvalidSigningKey,
    /// ring could not generate a key or sign.
    #[error("failed to {0}")]
    Crypto(&'static str),
    /// Signing needs at least one audience (the spec requires `aud`).
    #[error("at least one audience is required")]
    NoAudience,
    /// The token is not a compact JWS with JSON header and claims.
    #[error("unable to parse JWT token: {0}")]
    Malformed(&'static str),
    /// `alg` is missing, `none`, HMAC or otherwise not allowed for SVIDs.
    #[error("unsupported token signature algorithm {0:?}")]
    UnsupportedAlgorithm(String),
    /// `typ` is present but neither `JWT` nor `JOSE`.
    #[error("token header type not equal to either JWT or JOSE")]
    InvalidType,
    /// The header has `crit`, whose extensions we would have to understand.
    #[error("token header has unsupported critical extensions")]
    CriticalHeader,
    /// No `kid` in the header.
    #[error("token header missing key id")]
    MissingKeyId,
    /// No `sub` claim.
    #[error("token missing subject claim")]
    MissingSubject,
    /// `sub` is not a SPIFFE ID.
    #[error("token has an invalid subject claim: {0}")]
    InvalidSubject(IdError),
    /// No `exp` claim.
    #[error("token missing exp claim")]
    MissingExpiry,
    /// No `aud` claim.
    #[error("token missing aud claim")]
    MissingAudience,
    /// A registered claim has the wrong JSON type.
    #[error("token has an invalid {0} claim")]
    InvalidClaim(&'static str),
    /// The lookup has no bundle for the subject's trust domain.
    #[error("no bundle found for trust domain \"{0}\"")]
    NoBundle(TrustDomain),
    /// The trust domain's bundle has no JWT authority with the token's kid.
    #[error("key id \"{kid}\" not found in bundle for trust domain \"{trust_domain}\"")]
    KeyNotFound {
        /// The token's kid.
        kid: String,
        /// The subject's trust domain.
        trust_domain: TrustDomain,
    },
    /// The authority's key cannot verify `alg` (e.g. ES256 with an RSA
    /// key, or the key is not a supported SPKI).
    #[error("token algorithm {alg} does not match the type of key \"{kid}\"")]
    KeyTypeMismatch {
        /// The token's alg.
        alg: &'static str,
        /// The token's kid.
        kid: String,
    },
    /// The signature does not verify.
    #[error("token signature verification failed")]
    BadSignature,
    /// `exp` is not after now.
    #[error("token has expired")]
    Expired,
    /// `nbf` is after now.
    #[error("token is not valid yet")]
    NotYetValid,
    /// The wanted audience is not in `aud` (go-spiffe's message).
    #[error("expected audience in {expected:?} (audience={actual:?})")]
    AudienceMismatch {
        /// The audiences accepted.
        expected: Vec<String>,
        /// The token's audiences.
        actual: Vec<String>,
    },
}

// === impl JwsAlgorithm ===

/// The JWS algorithms the JWT-SVID spec allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JwsAlgorithm {
    Es256,
    Es384,
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
}

impl JwsAlgorithm {
    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "ES256" => JwsAlgorithm::Es256,
            "ES384" => JwsAlgorithm::Es384,
            "RS256" => JwsAlgorithm::Rs256,
            "RS384" => JwsAlgorithm::Rs384,
            "RS512" => JwsAlgorithm::Rs512,
            "PS256" => JwsAlgorithm::Ps256,
            "PS384" => JwsAlgorithm::Ps384,
            "PS512" => JwsAlgorithm::Ps512,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            JwsAlgorithm::Es256 => "ES256",
            JwsAlgorithm::Es384 => "ES384",
            JwsAlgorithm::Rs256 => "RS256",
            JwsAlgorithm::Rs384 => "RS384",
            JwsAlgorithm::Rs512 => "RS512",
            JwsAlgorithm::Ps256 => "PS256",
            JwsAlgorithm::Ps384 => "PS384",
            JwsAlgorithm::Ps512 => "PS512",
        }
    }

    /// ring's verifier for this algorithm with a key whose SPKI says
    /// `key_alg`/`curve`, or `None` if the key type is wrong for `alg`
    /// (which is what stops RS256-signed-with-an-EC-key confusions).
    fn verifier(
        self,
        key_alg: &[u8],
        curve: Option<&[u8]>,
    ) -> Option<&'static dyn VerificationAlgorithm> {
        use JwsAlgorithm::*;
        let alg: &'static dyn VerificationAlgorithm = match (self, key_alg, curve) {
            (Es256, oid::EC_PUBLIC_KEY, Some(oid::P256)) => &signature::ECDSA_P256_SHA256_FIXED,
            (Es384, oid::EC_PUBLIC_KEY, Some(oid::P384)) => &signature::ECDSA_P384_SHA384_FIXED,
            (Rs256, oid::RSA_ENCRYPTION, _) => &signature::RSA_PKCS1_2048_8192_SHA256,
            (Rs384, oid::RSA_ENCRYPTION, _) => &signature::RSA_PKCS1_2048_8192_SHA384,
            (Rs512, oid::RSA_ENCRYPTION, _) => &signature::RSA_PKCS1_2048_8192_SHA512,
            (Ps256, oid::RSA_ENCRYPTION, _) => &signature::RSA_PSS_2048_8192_SHA256,
            (Ps384, oid::RSA_ENCRYPTION, _) => &signature::RSA_PSS_2048_8192_SHA384,
            (Ps512, oid::RSA_ENCRYPTION, _) => &signature::RSA_PSS_2048_8192_SHA512,
            _ => return None,
        };
        Some(alg)
    }
}

// === impl JwtSigner ===

/// Signs JWT-SVIDs with an ECDSA P-256 key (ES256).
pub struct JwtSigner {
    kid: String,
    key_pair: EcdsaKeyPair,
    rng: SystemRandom,
}

impl fmt::Debug for JwtSigner {
    // Only public facts: the key pair itself stays out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtSigner")
            .field("kid", &self.kid)
            .field("alg", &"ES256")
            .finish_non_exhaustive()
    }
}

impl JwtSigner {
    /// Loads a PKCS#8 ECDSA P-256 private key.
    pub fn from_pkcs8(kid: String, pkcs8_der: &[u8]) -> Result<Self, JwtError> {
        let rng = SystemRandom::new();
        let key_pair =
            EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8_der, &rng)
                .map_err(|_| JwtError::InvalidSigningKey)?;
        Ok(JwtSigner { kid, key_pair, rng })
    }

    /// Generates a new key; returns the signer and the key's PKCS#8 DER for
    /// storage.
    pub fn generate(kid: String) -> Result<(Self, Vec<u8>), JwtError> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| JwtError::Crypto("generate a key"))?;
        let pkcs8 = pkcs8.as_ref().to_vec();
        let signer = JwtSigner::from_pkcs8(kid, &pkcs8)?;
        Ok((signer, pkcs8))
    }

    /// The key ID put in every token's header.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as SubjectPublicKeyInfo DER, for the bundle.
    pub fn public_key_spki_der(&self) -> Vec<u8> {
        let params = der::tlv(der::TAG_OID, oid::P256);
        der::build_spki(
            oid::EC_PUBLIC_KEY,
            Some(&params),
            self.key_pair.public_key().as_ref(),
        )
    }

    /// The public key's parameters (for a JWK).
    pub fn public_key_params(&self) -> PublicKeyParams {
        let point = self.key_pair.public_key().as_ref();
        // Invariant: ring's P-256 public keys are uncompressed points,
        // 0x04 || X || Y with 32-byte coordinates; `get` keeps this total.
        PublicKeyParams::Ec {
            curve: EcCurve::P256,
            x: point.get(1..33).unwrap_or_default().to_vec(),
            y: point.get(33..65).unwrap_or_default().to_vec(),
        }
    }

    /// Signs a JWT-SVID for `sub`. `aud` becomes a string claim when it has
    /// one element and an array otherwise; `iat` and `exp` are unix seconds.
    pub fn sign(
        &self,
        sub: &SpiffeId,
        aud: &[String],
        iat: i64,
        exp: i64,
    ) -> Result<String, JwtError> {
        self.sign_with_issuer(sub, aud, iat, exp, None)
    }

    /// [`JwtSigner::sign`], adding an `iss` claim when `issuer` is given (SPIRE's
    /// `jwt_issuer`, which OIDC consumers such as cloud IAM federation require).
    pub fn sign_with_issuer(
        &self,
        sub: &SpiffeId,
        aud: &[String],
        iat: i64,
        exp: i64,
        issuer: Option<&str>,
    ) -> Result<String, JwtError> {
        let aud = match aud {
            [] => return Err(JwtError::NoAudience),
            [one] => Value::String(one.clone()),
            many => Value::Array(many.iter().cloned().map(Value::String).collect()),
        };
        // Members are inserted in alphabetical order, so the output is the
        // same whether or not serde_json's `preserve_order` is enabled.
        let mut header = Map::new();
        header.insert("alg".into(), "ES256".into());
        header.insert("kid".into(), self.kid.clone().into());
        header.insert("typ".into(), "JWT".into());
        let mut claims = Map::new();
        claims.insert("aud".into(), aud);
        claims.insert("exp".into(), exp.into());
        claims.insert("iat".into(), iat.into());
        if let Some(iss) = issuer {
            claims.insert("iss".into(), iss.into());
        }
        claims.insert("sub".into(), sub.as_str().into());

        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(Value::Object(header).to_string()),
            URL_SAFE_NO_PAD.encode(Value::Object(claims).to_string()),
        );
        let sig = self
            .key_pair
            .sign(&self.rng, signing_input.as_bytes())
            .map_err(|_| JwtError::Crypto("sign the token"))?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(sig.as_ref())
        ))
    }
}

// === impl ValidatedJwt ===

/// A JWT-SVID that passed [`validate`].
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedJwt {
    /// The `sub` claim.
    pub spiffe_id: SpiffeId,
    /// Every claim of the token, registered or not.
    pub claims: Map<String, Value>,
}

impl ValidatedJwt {
    /// The `exp` claim, unix seconds.
    pub fn expiry(&self) -> Option<i64> {
        self.claims.get("exp").and_then(numeric_date)
    }

    /// The `aud` claim as a list.
    pub fn audience(&self) -> Vec<String> {
        self.claims
            .get("aud")
            .and_then(|aud| audience_list(aud).ok())
            .unwrap_or_default()
    }
}

/// The header and claims of a token, not verified in any way.
#[derive(Debug, Clone, PartialEq)]
pub struct UnverifiedJwt {
    /// The JOSE header.
    pub header: Map<String, Value>,
    /// The claims.
    pub claims: Map<String, Value>,
}

/// Decodes a token's header and claims *without checking anything*. For
/// reading a token one already trusts (e.g. its `exp`, to cache an SVID the
/// agent just received from its server); never for authentication.
pub fn parse_unverified(token: &str) -> Result<UnverifiedJwt, JwtError> {
    let parts = split_token(token)?;
    Ok(UnverifiedJwt {
        header: decode_json_part(parts.header, "header is not a base64url JSON object")?,
        claims: decode_json_part(parts.claims, "claims are not a base64url JSON object")?,
    })
}

struct TokenParts<'a> {
    header: &'a str,
    claims: &'a str,
    signature: &'a str,
    signing_input: &'a str,
}

fn split_token(token: &str) -> Result<TokenParts<'_>, JwtError> {
    let mut parts = token.split('.');
    let (Some(header), Some(claims), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed(
            "compact JWS format must have three parts",
        ));
    };
    Ok(TokenParts {
        header,
        claims,
        signature,
        // The signing input is the first two parts with their dot.
        signing_input: &token[..header.len() + 1 + claims.len()],
    })
}

fn decode_json_part(part: &str, what: &'static str) -> Result<Map<String, Value>, JwtError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| JwtError::Malformed(what))?;
    serde_json::from_slice(&bytes).map_err(|_| JwtError::Malformed(what))
}

/// A JSON NumericDate as whole seconds. Fractions are allowed by RFC 7519;
/// truncating them toward the past is the conservative reading for `exp`
/// and a harmless one for `nbf`.
fn numeric_date(value: &Value) -> Option<i64> {
    value.as_i64().or_else(|| {
        let f = value.as_f64()?;
        // `as` saturates; out-of-range dates are nonsense either way.
        f.is_finite().then(|| f.floor() as i64)
    })
}

fn audience_list(aud: &Value) -> Result<Vec<String>, JwtError> {
    match aud {
        Value::String(one) => Ok(vec![one.clone()]),
        Value::Array(many) => many
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or(JwtError::InvalidClaim("aud"))
            })
            .collect(),
        _ => Err(JwtError::InvalidClaim("aud")),
    }
}

/// Validates a JWT-SVID and returns its subject and claims.
///
/// `lookup` maps a trust domain to its bundle: a closure over whatever holds
/// the bundles, returning anything that borrows as a [`Bundle`]
/// (`&Bundle`, `Bundle`, `Arc<Bundle>`), e.g. `|td| bundles.get(td)` for a
/// `HashMap<TrustDomain, Bundle>`. It is asked only for the subject's trust
/// domain.
///
/// Checks, in order: three-part compact form with JSON header and claims;
/// `alg` one of ES256/ES384/RS256/RS384/RS512/PS256/PS384/PS512; `typ`, if
/// present, `JWT` or `JOSE`; no `crit`; `kid` present; `sub` a SPIFFE ID;
/// `exp` present; a bundle for `sub`'s trust domain with a JWT authority
/// named `kid` whose key type fits `alg`; the signature; `exp > now_unix`
/// (no leeway); `nbf`, if present, `<= now_unix`; `aud` present and
/// containing `audience`. `iat` is not checked against the clock, so that
/// an issuer whose clock runs ahead does not break validation; `exp`
/// bounds the token's life. A JWT authority's `expires_at` is not checked
/// either: publishing a key in the bundle is what makes it trusted, as in
/// SPIRE.
///
/// ```
/// use std::collections::HashMap;
/// use sigil_spiffe::{Bundle, JwtAuthority, JwtSigner, SpiffeId, TrustDomain, jwt};
///
/// let td: TrustDomain = "example.org".parse()?;
/// let (signer, _pkcs8) = JwtSigner::generate("key-1".to_owned())?;
/// let mut bundle = Bundle::new(td.clone());
/// bundle.add_jwt_authority(JwtAuthority {
///     key_id: signer.kid().to_owned(),
///     public_key_der: signer.public_key_spki_der(),
///     expires_at: 0,
/// })?;
/// let bundles = HashMap::from([(td, bundle)]);
///
/// let sub: SpiffeId = "spiffe://example.org/web".parse()?;
/// let token = signer.sign(&sub, &["db".to_owned()], 1_000, 1_300)?;
/// let svid = jwt::validate(&token, "db", 1_100, |td| bundles.get(td))?;
/// assert_eq!(svid.spiffe_id, sub);
/// assert!(jwt::validate(&token, "db", 1_300, |td| bundles.get(td)).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn validate<B, F>(
    token: &str,
    audience: &str,
    now_unix: i64,
    lookup: F,
) -> Result<ValidatedJwt, JwtError>
where
    F: Fn(&TrustDomain) -> Option<B>,
    B: Borrow<Bundle>,
{
    let parts = split_token(token)?;
    let header = decode_json_part(parts.header, "header is not a base64url JSON object")?;

    let alg_name = header
        .get("alg")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let alg = JwsAlgorithm::from_name(alg_name)
        .ok_or_else(|| JwtError::UnsupportedAlgorithm(alg_name.to_owned()))?;
    match header.get("typ") {
        None => {}
        Some(Value::String(typ)) if typ == "JWT" || typ == "JOSE" => {}
        Some(_) => return Err(JwtError::InvalidType),
    }
    if header.contains_key("crit") {
        return Err(JwtError::CriticalHeader);
    }
    let kid = header
        .get("kid")
        .and_then(Value::as_str)
        .filter(|kid| !kid.is_empty())
        .ok_or(JwtError::MissingKeyId)?;

    // The claims are read before verification only to learn which trust
    // domain's keys to verify with; nothing is trusted until then.
    let claims = decode_json_part(parts.claims, "claims are not a base64url JSON object")?;
    let sub = match claims.get("sub") {
        None => return Err(JwtError::MissingSubject),
        Some(Value::String(sub)) if sub.is_empty() => return Err(JwtError::MissingSubject),
        Some(Value::String(sub)) => SpiffeId::from_str(sub).map_err(JwtError::InvalidSubject)?,
        Some(_) => return Err(JwtError::InvalidClaim("sub")),
    };
    let exp = claims.get("exp").ok_or(JwtError::MissingExpiry)?;
    let exp = numeric_date(exp).ok_or(JwtError::InvalidClaim("exp"))?;

    let trust_domain = sub.trust_domain();
    let bundle = lookup(&trust_domain).ok_or_else(|| JwtError::NoBundle(trust_domain.clone()))?;
    let authority = bundle
        .borrow()
        .jwt_authority(kid)
        .ok_or_else(|| JwtError::KeyNotFound {
            kid: kid.to_owned(),
            trust_domain: trust_domain.clone(),
        })?;
    verify_signature(alg, kid, &authority.public_key_der, &parts)?;

    if now_unix >= exp {
        return Err(JwtError::Expired);
    }
    if let Some(nbf) = claims.get("nbf") {
        let nbf = numeric_date(nbf).ok_or(JwtError::InvalidClaim("nbf"))?;
        if now_unix < nbf {
            return Err(JwtError::NotYetValid);
        }
    }
    let actual = audience_list(claims.get("aud").ok_or(JwtError::MissingAudience)?)?;
    if !actual.iter().any(|aud| aud == audience) {
        return Err(JwtError::AudienceMismatch {
            expected: vec![audience.to_owned()],
            actual,
        });
    }
    Ok(ValidatedJwt {
        spiffe_id: sub,
        claims,
    })
}

fn verify_signature(
    alg: JwsAlgorithm,
    kid: &str,
    spki_der: &[u8],
    parts: &TokenParts<'_>,
) -> Result<(), JwtError> {
    let mismatch = || JwtError::KeyTypeMismatch {
        alg: alg.name(),
        kid: kid.to_owned(),
    };
    let spki = der::parse_spki(spki_der).map_err(|_| mismatch())?;
    let curve = spki
        .parameters
        .filter(|p| p.tag == der::TAG_OID)
        .map(|p| p.value);
    let verifier = alg.verifier(spki.algorithm, curve).ok_or_else(mismatch)?;
    let sig = URL_SAFE_NO_PAD
        .decode(parts.signature)
        .map_err(|_| JwtError::Malformed("signature is not base64url"))?;
    UnparsedPublicKey::new(verifier, spki.key)
        .verify(parts.signing_input.as_bytes(), &sig)
        .map_err(|_| JwtError::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::JwtAuthority;
    use ring::rand::SecureRandom as _;
    use ring::signature::RsaKeyPair;

    const NOW: i64 = 1_700_000_000;

    fn td(name: &str) -> TrustDomain {
        name.parse().unwrap()
    }

    fn id(s: &str) -> SpiffeId {
        s.parse().unwrap()
    }

    fn bundle_with(td: TrustDomain, kid: &str, spki: Vec<u8>) -> Bundle {
        let mut bundle = Bundle::new(td);
        bundle
            .add_jwt_authority(JwtAuthority {
                key_id: kid.to_owned(),
                public_key_der: spki,
                expires_at: 0,
            })
            .unwrap();
        bundle
    }

    fn setup() -> (JwtSigner, Bundle) {
        let (signer, _) = JwtSigner::generate("k1".to_owned()).unwrap();
        let bundle = bundle_with(td("example.org"), "k1", signer.public_key_spki_der());
        (signer, bundle)
    }

    fn sign(signer: &JwtSigner, aud: &[&str], exp: i64) -> String {
        let aud: Vec<String> = aud.iter().map(|s| (*s).to_owned()).collect();
        signer
            .sign(&id("spiffe://example.org/web"), &aud, NOW - 10, exp)
            .unwrap()
    }

    fn b64json(value: &Value) -> String {
        URL_SAFE_NO_PAD.encode(value.to_string())
    }

    /// Reassembles a token with a replaced header and/or claims, keeping
    /// the original signature.
    fn forge(token: &str, header: Option<Value>, claims: Option<Value>) -> String {
        let parts: Vec<&str> = token.split('.').collect();
        let h = header.map_or(parts[0].to_owned(), |v| b64json(&v));
        let c = claims.map_or(parts[1].to_owned(), |v| b64json(&v));
        format!("{h}.{c}.{}", parts[2])
    }

    #[test]
    fn round_trip() {
        let (signer, bundle) = setup();
        let token = sign(&signer, &["spire"], NOW + 300);
        let v = validate(&token, "spire", NOW, |t: &TrustDomain| {
            (t == &bundle.trust_domain).then_some(&bundle)
        })
        .unwrap();
        assert_eq!(v.spiffe_id, id("spiffe://example.org/web"));
        assert_eq!(v.expiry(), Some(NOW + 300));
        assert_eq!(v.audience(), vec!["spire".to_owned()]);
        assert_eq!(v.claims["iat"], Value::from(NOW - 10));

        let unverified = parse_unverified(&token).unwrap();
        assert_eq!(
            Value::Object(unverified.header).to_string(),
            r#"{"alg":"ES256","kid":"k1","typ":"JWT"}"#
        );
        assert_eq!(unverified.claims["aud"], Value::from("spire"));
    }

    #[test]
    fn multiple_audiences_and_owned_lookup() {
        let (signer, bundle) = setup();
        let token = sign(&signer, &["a", "b"], NOW + 1);
        let shared = std::sync::Arc::new(bundle);
        let v = validate(&token, "b", NOW, |_: &TrustDomain| Some(shared.clone())).unwrap();
        assert_eq!(v.claims["aud"], serde_json::json!(["a", "b"]));
        assert_eq!(v.audience(), vec!["a".to_owned(), "b".to_owned()]);
    }

    #[test]
    fn signing_needs_audience() {
        let (signer, _) = setup();
        assert_eq!(
            signer.sign(&id("spiffe://example.org/x"), &[], 0, 1),
            Err(JwtError::NoAudience)
        );
    }

    #[test]
    fn rejections() {
        let (signer, bundle) = setup();
        let lookup = |t: &TrustDomain| (t == &bundle.trust_domain).then_some(&bundle);
        let good = sign(&signer, &["spire"], NOW + 300);
        let check = |token: &str, aud: &str, now: i64| validate(token, aud, now, lookup);

        // Tampered claims keep the old signature.
        let mut claims = parse_unverified(&good).unwrap().claims;
        claims.insert("sub".into(), "spiffe://example.org/admin".into());
        let tampered = forge(&good, None, Some(Value::Object(claims)));
        assert_eq!(check(&tampered, "spire", NOW), Err(JwtError::BadSignature));

        // Tampered signature.
        // (A middle character: the last one of 64 bytes has padding bits.)
        let mut bad_sig = good.clone().into_bytes();
        let pos = bad_sig.len() - 10;
        bad_sig[pos] = if bad_sig[pos] == b'A' { b'B' } else { b'A' };
        let bad_sig = String::from_utf8(bad_sig).unwrap();
        assert_eq!(check(&bad_sig, "spire", NOW), Err(JwtError::BadSignature));

        let err = check(&good, "other", NOW).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"expected audience in ["other"] (audience=["spire"])"#
        );

        assert_eq!(check(&good, "spire", NOW + 300), Err(JwtError::Expired));
        assert_eq!(check(&good, "spire", NOW + 301), Err(JwtError::Expired));
        assert!(check(&good, "spire", NOW + 299).is_ok());

        // Unknown kid.
        let (other, _) = JwtSigner::generate("k2".to_owned()).unwrap();
        let token = sign(&other, &["spire"], NOW + 300);
        let err = check(&token, "spire", NOW).unwrap_err();
        assert_eq!(
            err,
            JwtError::KeyNotFound {
                kid: "k2".into(),
                trust_domain: td("example.org")
            }
        );
        assert!(err.to_string().contains("key id \"k2\" not found"), "{err}");

        // Same kid, other key: signature fails.
        let (impostor, _) = JwtSigner::generate("k1".to_owned()).unwrap();
        let token = sign(&impostor, &["spire"], NOW + 300);
        assert_eq!(check(&token, "spire", NOW), Err(JwtError::BadSignature));

        // alg none, with and without a signature.
        let none_header = serde_json::json!({"alg": "none", "kid": "k1", "typ": "JWT"});
        let none = forge(&good, Some(none_header), None);
        assert_eq!(
            check(&none, "spire", NOW),
            Err(JwtError::UnsupportedAlgorithm("none".into()))
        );
        let unsigned = format!("{}.", none.rsplit_once('.').unwrap().0);
        assert_eq!(
            check(&unsigned, "spire", NOW),
            Err(JwtError::UnsupportedAlgorithm("none".into()))
        );
        // HMAC keyed with the public key: the classic confusion attack.
        let hs = forge(
            &good,
            Some(serde_json::json!({"alg": "HS256", "kid": "k1"})),
            None,
        );
        assert_eq!(
            check(&hs, "spire", NOW),
            Err(JwtError::UnsupportedAlgorithm("HS256".into()))
        );
        // RS256 claimed with an EC key.
        let rs = forge(
            &good,
            Some(serde_json::json!({"alg": "RS256", "kid": "k1"})),
            None,
        );
        assert!(matches!(
            check(&rs, "spire", NOW),
            Err(JwtError::KeyTypeMismatch { alg: "RS256", .. })
        ));
        let no_alg = forge(&good, Some(serde_json::json!({"kid": "k1"})), None);
        assert_eq!(
            check(&no_alg, "spire", NOW),
            Err(JwtError::UnsupportedAlgorithm(String::new()))
        );

        let bad_typ = forge(
            &good,
            Some(serde_json::json!({"alg": "ES256", "kid": "k1", "typ": "at+jwt"})),
            None,
        );
        assert_eq!(check(&bad_typ, "spire", NOW), Err(JwtError::InvalidType));
        let no_kid = forge(&good, Some(serde_json::json!({"alg": "ES256"})), None);
        assert_eq!(check(&no_kid, "spire", NOW), Err(JwtError::MissingKeyId));
        let crit = forge(
            &good,
            Some(serde_json::json!({"alg": "ES256", "kid": "k1", "crit": ["b64"]})),
            None,
        );
        assert_eq!(check(&crit, "spire", NOW), Err(JwtError::CriticalHeader));

        // Wrong trust domain: a subject elsewhere finds no bundle, even
        // though the signing key is trusted for example.org.
        let token = signer
            .sign(
                &id("spiffe://evil.org/web"),
                &["spire".into()],
                NOW,
                NOW + 300,
            )
            .unwrap();
        assert_eq!(
            check(&token, "spire", NOW),
            Err(JwtError::NoBundle(td("evil.org")))
        );
        assert_eq!(
            JwtError::NoBundle(td("evil.org")).to_string(),
            "no bundle found for trust domain \"evil.org\""
        );

        // Structure.
        assert!(matches!(
            check("a.b", "spire", NOW),
            Err(JwtError::Malformed(_))
        ));
        assert!(matches!(
            check("a.b.c.d", "spire", NOW),
            Err(JwtError::Malformed(_))
        ));
        assert!(matches!(
            check("!.b.c", "spire", NOW),
            Err(JwtError::Malformed(_))
        ));
        assert!(matches!(
            check("", "spire", NOW),
            Err(JwtError::Malformed(_))
        ));
    }

    #[test]
    fn claim_rules() {
        let (signer, bundle) = setup();
        let lookup = |_: &TrustDomain| Some(&bundle);
        let sign_claims = |claims: Value| -> String {
            let header = serde_json::json!({"alg": "ES256", "kid": "k1", "typ": "JWT"});
            let input = format!("{}.{}", b64json(&header), b64json(&claims));
            let sig = signer.key_pair.sign(&signer.rng, input.as_bytes()).unwrap();
            format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
        };
        let sub = "spiffe://example.org/w";
        let cases: Vec<(Value, Result<(), JwtError>)> = vec![
            (
                serde_json::json!({"sub": sub, "aud": "x", "exp": NOW + 5}),
                Ok(()),
            ),
            (
                serde_json::json!({"sub": sub, "aud": ["y", "x"], "exp": NOW + 5}),
                Ok(()),
            ),
            (
                serde_json::json!({"sub": sub, "aud": "x", "exp": (NOW + 5) as f64 + 0.5}),
                Ok(()),
            ),
            (
                serde_json::json!({"sub": sub, "aud": "x", "exp": NOW + 5, "nbf": NOW}),
                Ok(()),
            ),
            (
                serde_json::json!({"sub": sub, "aud": "x", "exp": NOW + 5, "nbf": NOW + 1}),
                Err(JwtError::NotYetValid),
            ),
            (
                serde_json::json!({"aud": "x", "exp": NOW + 5}),
                Err(JwtError::MissingSubject),
            ),
            (
                serde_json::json!({"sub": "", "aud": "x", "exp": NOW + 5}),
                Err(JwtError::MissingSubject),
            ),
            (
                serde_json::json!({"sub": "spiffe://Bad", "aud": "x", "exp": NOW + 5}),
                Err(JwtError::InvalidSubject(IdError::BadTrustDomainChar)),
            ),
            (
                serde_json::json!({"sub": 5, "aud": "x", "exp": NOW + 5}),
                Err(JwtError::InvalidClaim("sub")),
            ),
            (
                serde_json::json!({"sub": sub, "aud": "x"}),
                Err(JwtError::MissingExpiry),
            ),
            (
                serde_json::json!({"sub": sub, "aud": "x", "exp": "soon"}),
                Err(JwtError::InvalidClaim("exp")),
            ),
            (
                serde_json::json!({"sub": sub, "exp": NOW + 5}),
                Err(JwtError::MissingAudience),
            ),
            (
                serde_json::json!({"sub": sub, "aud": [1], "exp": NOW + 5}),
                Err(JwtError::InvalidClaim("aud")),
            ),
            (
                serde_json::json!({"sub": sub, "aud": [], "exp": NOW + 5}),
                Err(JwtError::AudienceMismatch {
                    expected: vec!["x".into()],
                    actual: vec![],
                }),
            ),
        ];
        for (claims, expected) in cases {
            let token = sign_claims(claims.clone());
            let got = validate(&token, "x", NOW, lookup).map(|_| ());
            assert_eq!(got, expected, "{claims}");
        }
    }

    #[test]
    fn rsa_tokens() {
        let pem = include_bytes!("../testdata/jwt/rsa-2048-key.pem");
        let pkcs8 = crate::x509::parse_pkcs8_key_pem(pem).unwrap();
        let key = RsaKeyPair::from_pkcs8(&pkcs8).unwrap();
        let components = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(key.public());
        let spki = PublicKeyParams::Rsa {
            n: components.n,
            e: components.e,
        }
        .to_spki_der();
        let bundle = bundle_with(td("example.org"), "rsa", spki);
        let rng = SystemRandom::new();
        let claims =
            serde_json::json!({"sub": "spiffe://example.org/r", "aud": "x", "exp": NOW + 60});

        let algs: [(&str, &'static dyn signature::RsaEncoding); 6] = [
            ("RS256", &signature::RSA_PKCS1_SHA256),
            ("RS384", &signature::RSA_PKCS1_SHA384),
            ("RS512", &signature::RSA_PKCS1_SHA512),
            ("PS256", &signature::RSA_PSS_SHA256),
            ("PS384", &signature::RSA_PSS_SHA384),
            ("PS512", &signature::RSA_PSS_SHA512),
        ];
        for (name, encoding) in algs {
            let sign_as = |alg: &str| {
                let header = serde_json::json!({"alg": alg, "kid": "rsa", "typ": "JOSE"});
                let input = format!("{}.{}", b64json(&header), b64json(&claims));
                let mut sig = vec![0; key.public().modulus_len()];
                key.sign(encoding, &rng, input.as_bytes(), &mut sig)
                    .unwrap();
                format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
            };
            let token = sign_as(name);
            let v = validate(&token, "x", NOW, |_: &TrustDomain| Some(&bundle))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(v.spiffe_id, id("spiffe://example.org/r"));
            // A signature made with one padding/hash does not pass as another.
            let other = if name.starts_with("RS") {
                "PS256"
            } else {
                "RS256"
            };
            let relabelled = forge(
                &token,
                Some(serde_json::json!({"alg": other, "kid": "rsa"})),
                None,
            );
            assert_eq!(
                validate(&relabelled, "x", NOW, |_: &TrustDomain| Some(&bundle)),
                Err(JwtError::BadSignature),
                "{name} as {other}"
            );
            // ES256 claimed with an RSA key.
            let es = forge(
                &token,
                Some(serde_json::json!({"alg": "ES256", "kid": "rsa"})),
                None,
            );
            assert!(matches!(
                validate(&es, "x", NOW, |_: &TrustDomain| Some(&bundle)),
                Err(JwtError::KeyTypeMismatch { .. })
            ));
        }
    }

    #[test]
    fn es384_tokens() {
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P384_SHA384_FIXED_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
        let point = key.public_key().as_ref();
        let spki = PublicKeyParams::Ec {
            curve: EcCurve::P384,
            x: point[1..49].to_vec(),
            y: point[49..].to_vec(),
        }
        .to_spki_der();
        let bundle = bundle_with(td("example.org"), "p384", spki);
        let header = serde_json::json!({"alg": "ES384", "kid": "p384"});
        let claims =
            serde_json::json!({"sub": "spiffe://example.org/e", "aud": "x", "exp": NOW + 60});
        let input = format!("{}.{}", b64json(&header), b64json(&claims));
        let sig = key.sign(&rng, input.as_bytes()).unwrap();
        let token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()));
        assert!(validate(&token, "x", NOW, |_: &TrustDomain| Some(&bundle)).is_ok());
        let es256 = forge(
            &token,
            Some(serde_json::json!({"alg": "ES256", "kid": "p384"})),
            None,
        );
        assert!(matches!(
            validate(&es256, "x", NOW, |_: &TrustDomain| Some(&bundle)),
            Err(JwtError::KeyTypeMismatch { .. })
        ));
    }

    #[test]
    fn signer_keys() {
        let (signer, pkcs8) = JwtSigner::generate("kid-1".to_owned()).unwrap();
        assert_eq!(signer.kid(), "kid-1");
        let reloaded = JwtSigner::from_pkcs8("kid-1".to_owned(), &pkcs8).unwrap();
        assert_eq!(reloaded.public_key_spki_der(), signer.public_key_spki_der());
        assert_eq!(
            PublicKeyParams::from_spki_der(&signer.public_key_spki_der()).unwrap(),
            signer.public_key_params()
        );
        let debug = format!("{signer:?}");
        assert_eq!(debug, "JwtSigner { kid: \"kid-1\", alg: \"ES256\", .. }");

        assert_eq!(
            JwtSigner::from_pkcs8("x".into(), &[0x30, 0x00]).unwrap_err(),
            JwtError::InvalidSigningKey
        );
        let mut junk = [0u8; 64];
        SystemRandom::new().fill(&mut junk).unwrap();
        assert_eq!(
            JwtSigner::from_pkcs8("x".into(), &junk).unwrap_err(),
            JwtError::InvalidSigningKey
        );
    }
}
