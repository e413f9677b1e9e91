//! Conversions between public keys as SubjectPublicKeyInfo DER (how Sigil
//! stores them) and as JSON Web Keys (how SPIFFE bundles and JWKS publish
//! them), per RFC 7517/7518 and RFC 8037 for Ed25519.
//!
//! Supported: EC P-256, P-384 and P-521 (uncompressed points), RSA, and
//! Ed25519. Points are not checked to lie on their curve here: a bogus point
//! simply never verifies a signature, which is where it matters.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::der::{self, DerError, oid};

/// Why a key cannot be converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwkError {
    /// The SPKI DER does not parse.
    #[error("malformed SubjectPublicKeyInfo")]
    MalformedSpki,
    /// The SPKI algorithm (or EC point format) has no JWK form we support.
    #[error("unsupported public key algorithm")]
    UnsupportedAlgorithm,
    /// The JWK `kty` is not `EC`, `RSA` or `OKP`.
    #[error("unsupported key type {0:?}")]
    UnsupportedKeyType(String),
    /// The JWK `crv` is not one we support for its `kty`.
    #[error("unsupported curve {0:?}")]
    UnsupportedCurve(String),
    /// A parameter the key type needs is absent.
    #[error("missing {0:?} parameter")]
    MissingParameter(&'static str),
    /// A parameter is not base64url.
    #[error("{0:?} parameter is not valid base64url")]
    InvalidBase64(&'static str),
    /// An EC coordinate or OKP key has the wrong size for its curve (RFC 7518
    /// requires the full, zero-padded length).
    #[error("{param:?} parameter has {actual} bytes; {crv} needs {expected}")]
    WrongLength {
        /// Which parameter.
        param: &'static str,
        /// The curve.
        crv: &'static str,
        /// Bytes the curve needs.
        expected: usize,
        /// Bytes given.
        actual: usize,
    },
    /// An RSA parameter decodes to zero / nothing.
    #[error("{0:?} parameter is empty")]
    EmptyParameter(&'static str),
}

impl From<DerError> for JwkError {
    fn from(_: DerError) -> Self {
        JwkError::MalformedSpki
    }
}

// === impl EcCurve ===

/// NIST curves that JWK `EC` keys name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EcCurve {
    /// P-256 (secp256r1).
    P256,
    /// P-384 (secp384r1).
    P384,
    /// P-521 (secp521r1).
    P521,
}

impl EcCurve {
    /// The JWK `crv` name.
    pub fn name(self) -> &'static str {
        match self {
            EcCurve::P256 => "P-256",
            EcCurve::P384 => "P-384",
            EcCurve::P521 => "P-521",
        }
    }

    /// Size of one coordinate in bytes.
    pub fn coordinate_len(self) -> usize {
        match self {
            EcCurve::P256 => 32,
            EcCurve::P384 => 48,
            EcCurve::P521 => 66,
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        match name {
            "P-256" => Some(EcCurve::P256),
            "P-384" => Some(EcCurve::P384),
            "P-521" => Some(EcCurve::P521),
            _ => None,
        }
    }

    fn oid(self) -> &'static [u8] {
        match self {
            EcCurve::P256 => oid::P256,
            EcCurve::P384 => oid::P384,
            EcCurve::P521 => oid::P521,
        }
    }

    fn from_oid(curve: &[u8]) -> Option<Self> {
        [EcCurve::P256, EcCurve::P384, EcCurve::P521]
            .into_iter()
            .find(|c| c.oid() == curve)
    }
}

// === impl PublicKeyParams ===

/// A public key's algorithm and raw parameters: the common ground of SPKI
/// DER and JWK.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PublicKeyParams {
    /// An elliptic-curve point.
    Ec {
        /// The curve.
        curve: EcCurve,
        /// X coordinate, big-endian, full length.
        x: Vec<u8>,
        /// Y coordinate, big-endian, full length.
        y: Vec<u8>,
    },
    /// An RSA key.
    Rsa {
        /// Modulus, big-endian, no leading zeros.
        n: Vec<u8>,
        /// Public exponent, big-endian, no leading zeros.
        e: Vec<u8>,
    },
    /// An Ed25519 key.
    Ed25519 {
        /// The 32-byte public key.
        x: Vec<u8>,
    },
}

impl PublicKeyParams {
    /// Reads a DER SubjectPublicKeyInfo.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, JwkError> {
        let spki = der::parse_spki(der)?;
        match spki.algorithm {
            oid::EC_PUBLIC_KEY => {
                let params = spki.parameters.ok_or(JwkError::MalformedSpki)?;
                if params.tag != der::TAG_OID {
                    // Explicit curve parameters: forbidden by RFC 5480.
                    return Err(JwkError::UnsupportedAlgorithm);
                }
                let curve =
                    EcCurve::from_oid(params.value).ok_or(JwkError::UnsupportedAlgorithm)?;
                let len = curve.coordinate_len();
                // Only the uncompressed form (0x04 || X || Y) has a JWK form
                // without point decompression.
                match spki.key.split_first() {
                    Some((0x04, xy)) if xy.len() == 2 * len => {
                        let (x, y) = xy.split_at(len);
                        Ok(PublicKeyParams::Ec {
                            curve,
                            x: x.to_vec(),
                            y: y.to_vec(),
                        })
                    }
                    Some((0x02 | 0x03, _)) => Err(JwkError::UnsupportedAlgorithm),
                    _ => Err(JwkError::MalformedSpki),
                }
            }
            oid::RSA_ENCRYPTION => {
                let body = der::expect_only(spki.key, der::TAG_SEQUENCE)?;
                let (n, rest) = der::expect_tlv(body, der::TAG_INTEGER)?;
                let e = der::expect_only(rest, der::TAG_INTEGER)?;
                let n = der::unsigned_integer_magnitude(n)?;
                let e = der::unsigned_integer_magnitude(e)?;
                if n.is_empty() || e.is_empty() {
                    return Err(JwkError::MalformedSpki);
                }
                Ok(PublicKeyParams::Rsa {
                    n: n.to_vec(),
                    e: e.to_vec(),
                })
            }
            oid::ED25519 => {
                if spki.key.len() != 32 || spki.parameters.is_some() {
                    return Err(JwkError::MalformedSpki);
                }
                Ok(PublicKeyParams::Ed25519 {
                    x: spki.key.to_vec(),
                })
            }
            _ => Err(JwkError::UnsupportedAlgorithm),
        }
    }

    /// Writes a DER SubjectPublicKeyInfo.
    pub fn to_spki_der(&self) -> Vec<u8> {
        match self {
            PublicKeyParams::Ec { curve, x, y } => {
                let mut point = Vec::with_capacity(1 + x.len() + y.len());
                point.push(0x04);
                point.extend_from_slice(x);
                point.extend_from_slice(y);
                let params = der::tlv(der::TAG_OID, curve.oid());
                der::build_spki(oid::EC_PUBLIC_KEY, Some(&params), &point)
            }
            PublicKeyParams::Rsa { n, e } => {
                let mut body = der::unsigned_integer(n);
                body.extend_from_slice(&der::unsigned_integer(e));
                let key = der::tlv(der::TAG_SEQUENCE, &body);
                let null = der::tlv(der::TAG_NULL, &[]);
                der::build_spki(oid::RSA_ENCRYPTION, Some(&null), &key)
            }
            PublicKeyParams::Ed25519 { x } => der::build_spki(oid::ED25519, None, x),
        }
    }

    /// The JWK `kty`.
    pub fn kty(&self) -> &'static str {
        match self {
            PublicKeyParams::Ec { .. } => "EC",
            PublicKeyParams::Rsa { .. } => "RSA",
            PublicKeyParams::Ed25519 { .. } => "OKP",
        }
    }
}

// === impl Jwk ===

/// One JSON Web Key as SPIFFE bundles carry it. Only the members SPIFFE uses
/// are modelled; others are ignored when reading. Field order here is the
/// order of members when writing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    /// `use`: `x509-svid` or `jwt-svid` in SPIFFE bundles.
    #[serde(rename = "use", default, skip_serializing_if = "Option::is_none")]
    pub key_use: Option<String>,
    /// `kty`: `EC`, `RSA` or `OKP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kty: Option<String>,
    /// `kid`: required for `jwt-svid` keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// `crv`, for EC and OKP keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    /// RSA modulus, base64url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    /// RSA exponent, base64url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
    /// EC x coordinate or OKP key, base64url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    /// EC y coordinate, base64url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    /// Certificate chain, standard base64 DER (not base64url, RFC 7517 §4.7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x5c: Option<Vec<String>>,
}

impl Jwk {
    /// A JWK with the key members (`kty`, `crv`, `x`, `y`, `n`, `e`) of `key`
    /// filled in and nothing else.
    pub fn from_public_key(key: &PublicKeyParams) -> Jwk {
        let b64 = |bytes: &[u8]| Some(URL_SAFE_NO_PAD.encode(bytes));
        let mut jwk = Jwk {
            kty: Some(key.kty().to_owned()),
            ..Jwk::default()
        };
        match key {
            PublicKeyParams::Ec { curve, x, y } => {
                jwk.crv = Some(curve.name().to_owned());
                jwk.x = b64(x);
                jwk.y = b64(y);
            }
            PublicKeyParams::Rsa { n, e } => {
                jwk.n = b64(n);
                jwk.e = b64(e);
            }
            PublicKeyParams::Ed25519 { x } => {
                jwk.crv = Some("Ed25519".to_owned());
                jwk.x = b64(x);
            }
        }
        jwk
    }

    /// A JWK for a SubjectPublicKeyInfo DER.
    pub fn from_spki_der(der: &[u8]) -> Result<Jwk, JwkError> {
        PublicKeyParams::from_spki_der(der).map(|key| Jwk::from_public_key(&key))
    }

    /// The key this JWK describes, or `None` if it has no `kty` (an entry
    /// that only carries `x5c`).
    pub fn public_key(&self) -> Result<Option<PublicKeyParams>, JwkError> {
        let Some(kty) = self.kty.as_deref() else {
            return Ok(None);
        };
        let key = match kty {
            "EC" => {
                let crv = self
                    .crv
                    .as_deref()
                    .ok_or(JwkError::MissingParameter("crv"))?;
                let curve = EcCurve::from_name(crv)
                    .ok_or_else(|| JwkError::UnsupportedCurve(crv.to_owned()))?;
                let x =
                    fixed_len_param("x", self.x.as_deref(), curve.name(), curve.coordinate_len())?;
                let y =
                    fixed_len_param("y", self.y.as_deref(), curve.name(), curve.coordinate_len())?;
                PublicKeyParams::Ec { curve, x, y }
            }
            "RSA" => {
                let n = rsa_param("n", self.n.as_deref())?;
                let e = rsa_param("e", self.e.as_deref())?;
                PublicKeyParams::Rsa { n, e }
            }
            "OKP" => {
                let crv = self
                    .crv
                    .as_deref()
                    .ok_or(JwkError::MissingParameter("crv"))?;
                if crv != "Ed25519" {
                    return Err(JwkError::UnsupportedCurve(crv.to_owned()));
                }
                let x = fixed_len_param("x", self.x.as_deref(), "Ed25519", 32)?;
                PublicKeyParams::Ed25519 { x }
            }
            other => return Err(JwkError::UnsupportedKeyType(other.to_owned())),
        };
        Ok(Some(key))
    }

    /// The SubjectPublicKeyInfo DER of the key, or `None` without `kty`.
    pub fn spki_der(&self) -> Result<Option<Vec<u8>>, JwkError> {
        Ok(self.public_key()?.map(|key| key.to_spki_der()))
    }
}

/// Decodes a base64url member. Trailing `=` padding is tolerated, as
/// go-jose does, although RFC 7515 base64url has none.
fn decode_param(name: &'static str, value: Option<&str>) -> Result<Vec<u8>, JwkError> {
    let value = value.ok_or(JwkError::MissingParameter(name))?;
    URL_SAFE_NO_PAD
        .decode(value.trim_end_matches('='))
        .map_err(|_| JwkError::InvalidBase64(name))
}

fn fixed_len_param(
    name: &'static str,
    value: Option<&str>,
    crv: &'static str,
    expected: usize,
) -> Result<Vec<u8>, JwkError> {
    let bytes = decode_param(name, value)?;
    if bytes.len() != expected {
        return Err(JwkError::WrongLength {
            param: name,
            crv,
            expected,
            actual: bytes.len(),
        });
    }
    Ok(bytes)
}

fn rsa_param(name: &'static str, value: Option<&str>) -> Result<Vec<u8>, JwkError> {
    let bytes = decode_param(name, value)?;
    // Normalize like the SPKI side so that the two compare equal.
    let skip = bytes.iter().take_while(|&&b| b == 0).count();
    if skip == bytes.len() {
        return Err(JwkError::EmptyParameter(name));
    }
    Ok(bytes[skip..].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    const P256_JWK: &str = r#"{"kty":"EC","kid":"C6vs25welZOx6WksNYfbMfiw9l96pMnD","crv":"P-256","x":"ngLYQnlfF6GsojUwqtcEE3WgTNG2RUlsGhK73RNEl5k","y":"tKbiDSUSsQ3F1P7wteeHNXIcU-cx6CgSbroeQrQHTLM"}"#;

    #[test]
    fn ec_round_trip() {
        let jwk: Jwk = serde_json::from_str(P256_JWK).unwrap();
        let spki = jwk.spki_der().unwrap().unwrap();
        // DER prefix of a P-256 SPKI: SEQUENCE(89) { SEQUENCE(19) { ecPublicKey, prime256v1 } ...
        assert_eq!(spki.len(), 91);
        assert_eq!(&spki[..4], &[0x30, 0x59, 0x30, 0x13]);
        let mut back = Jwk::from_spki_der(&spki).unwrap();
        back.kid = jwk.kid.clone();
        assert_eq!(back, jwk);
    }

    #[test]
    fn rsa_and_ed25519_round_trip() {
        let rsa = PublicKeyParams::Rsa {
            n: vec![0xc0; 256],
            e: vec![1, 0, 1],
        };
        let der = rsa.to_spki_der();
        assert_eq!(PublicKeyParams::from_spki_der(&der).unwrap(), rsa);
        let jwk = Jwk::from_public_key(&rsa);
        assert_eq!(jwk.e.as_deref(), Some("AQAB"));
        assert_eq!(jwk.public_key().unwrap(), Some(rsa));

        let ed = PublicKeyParams::Ed25519 { x: vec![7; 32] };
        let der = ed.to_spki_der();
        assert_eq!(der.len(), 44);
        assert_eq!(PublicKeyParams::from_spki_der(&der).unwrap(), ed);
        assert_eq!(Jwk::from_public_key(&ed).public_key().unwrap(), Some(ed));
    }

    #[test]
    fn rsa_leading_zeros_are_normalized() {
        let jwk = Jwk {
            kty: Some("RSA".into()),
            n: Some(URL_SAFE_NO_PAD.encode([0, 0, 0xc0, 1])),
            e: Some("AQAB".into()),
            ..Jwk::default()
        };
        let Some(PublicKeyParams::Rsa { n, .. }) = jwk.public_key().unwrap() else {
            panic!("expected RSA");
        };
        assert_eq!(n, vec![0xc0, 1]);
    }

    #[test]
    fn rejects_bad_jwks() {
        let base: Jwk = serde_json::from_str(P256_JWK).unwrap();
        let with = |f: &dyn Fn(&mut Jwk)| {
            let mut jwk = base.clone();
            f(&mut jwk);
            jwk.public_key()
        };
        assert_eq!(with(&|j| j.kty = None), Ok(None));
        assert_eq!(
            with(&|j| j.kty = Some("oct".into())),
            Err(JwkError::UnsupportedKeyType("oct".into()))
        );
        assert_eq!(
            with(&|j| j.crv = Some("P-192".into())),
            Err(JwkError::UnsupportedCurve("P-192".into()))
        );
        assert_eq!(
            with(&|j| j.crv = None),
            Err(JwkError::MissingParameter("crv"))
        );
        assert_eq!(with(&|j| j.y = None), Err(JwkError::MissingParameter("y")));
        assert_eq!(
            with(&|j| j.x = Some("!!".into())),
            Err(JwkError::InvalidBase64("x"))
        );
        assert!(matches!(
            with(&|j| j.x = Some("AQAB".into())),
            Err(JwkError::WrongLength { param: "x", .. })
        ));
        let rsa = Jwk {
            kty: Some("RSA".into()),
            n: Some("AAAA".into()),
            e: Some("AQAB".into()),
            ..Jwk::default()
        };
        assert_eq!(rsa.public_key(), Err(JwkError::EmptyParameter("n")));
    }

    #[test]
    fn rejects_bad_spki() {
        assert_eq!(
            PublicKeyParams::from_spki_der(&[]),
            Err(JwkError::MalformedSpki)
        );
        assert_eq!(
            PublicKeyParams::from_spki_der(&[0x30, 0x03, 0x02, 0x01, 0x00]),
            Err(JwkError::MalformedSpki)
        );
        // A compressed P-256 point.
        let params = der::tlv(der::TAG_OID, oid::P256);
        let mut point = vec![0x02];
        point.extend_from_slice(&[1; 32]);
        let der = der::build_spki(oid::EC_PUBLIC_KEY, Some(&params), &point);
        assert_eq!(
            PublicKeyParams::from_spki_der(&der),
            Err(JwkError::UnsupportedAlgorithm)
        );
        // Unknown algorithm.
        let der = der::build_spki(&[0x2a, 0x03], None, &[1]);
        assert_eq!(
            PublicKeyParams::from_spki_der(&der),
            Err(JwkError::UnsupportedAlgorithm)
        );
    }
}
