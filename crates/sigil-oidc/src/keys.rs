//! The JWT authorities the provider publishes, and the JWKS document SPIRE writes for them
//! (go-jose's marshalling: member order `use`, `kty`, `kid`, `crv`, `alg`, `x`, `y`, `n`, `e`;
//! `alg` from the key as SPIRE's `JoseAlgFromPublicKey` picks it).
//!
//! Only public keys ever get here: there is nothing secret to log, but keys are still logged
//! by `kid` only, as SPIRE does.

use std::sync::{Arc, RwLock};
use std::time::{Instant, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use sigil_spiffe::jwk::{EcCurve, PublicKeyParams};

/// One JWT authority: its `kid` and public key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtKey {
    pub kid: String,
    pub key: PublicKeyParams,
}

/// What a poll found: the keys, and the bytes SPIRE compares to decide whether anything changed
/// (so `Last-Modified` moves only when the source's content does).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetched {
    pub fingerprint: Vec<u8>,
    pub keys: Vec<JwtKey>,
}

/// The current key set as the handlers see it.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// `None` until the first successful poll.
    pub keys: Option<Arc<Vec<JwtKey>>>,
    /// When the keys last changed (`Last-Modified`).
    pub modified: Option<SystemTime>,
    /// The last successful poll, for the health checks.
    pub last_poll: Option<Instant>,
}

/// The key set shared between the poller and the HTTP handlers.
#[derive(Debug, Default)]
pub struct KeyStore {
    inner: RwLock<(Snapshot, Option<Vec<u8>>)>,
}

// === impl KeyStore ===

impl KeyStore {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn snapshot(&self) -> Snapshot {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone()
    }

    /// Records a successful poll; the keys (and `Last-Modified`) change only if the content
    /// did. Returns whether it did.
    pub fn update(&self, fetched: Fetched, now: SystemTime) -> bool {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let changed = inner.1.as_deref() != Some(fetched.fingerprint.as_slice());
        if changed {
            inner.0.keys = Some(Arc::new(fetched.keys));
            inner.0.modified = Some(now);
            inner.1 = Some(fetched.fingerprint);
        }
        inner.0.last_poll = Some(Instant::now());
        changed
    }
}

/// go-jose's JSON Web Key as SPIRE serves it.
#[derive(Serialize)]
struct JoseJwk<'a> {
    #[serde(rename = "use", skip_serializing_if = "Option::is_none")]
    key_use: Option<&'static str>,
    kty: &'static str,
    #[serde(skip_serializing_if = "str::is_empty")]
    kid: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    crv: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    alg: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    x: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    y: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    n: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    e: Option<String>,
}

#[derive(Serialize)]
struct JoseJwks<'a> {
    keys: Vec<JoseJwk<'a>>,
}

/// SPIRE's `JoseAlgFromPublicKey`: RS256 for RSA of at least 2048 bits, ES256/ES384 for P-256
/// and P-384; anything else has no algorithm (and SPIRE logs it).
pub fn jose_alg(key: &PublicKeyParams) -> Result<&'static str, String> {
    match key {
        PublicKeyParams::Rsa { n, .. } if n.len() < 256 => {
            Err(format!("unsupported RSA key size: {}", n.len()))
        }
        PublicKeyParams::Rsa { .. } => Ok("RS256"),
        PublicKeyParams::Ec {
            curve: EcCurve::P256,
            ..
        } => Ok("ES256"),
        PublicKeyParams::Ec {
            curve: EcCurve::P384,
            ..
        } => Ok("ES384"),
        PublicKeyParams::Ec { curve, .. } => Err(format!(
            "unable to determine signature algorithm for EC public key size {}",
            curve_bits(*curve)
        )),
        PublicKeyParams::Ed25519 { .. } => Err(
            "unable to determine signature algorithm for public key type ed25519.PublicKey".into(),
        ),
    }
}

fn curve_bits(c: EcCurve) -> u32 {
    match c {
        EcCurve::P256 => 256,
        EcCurve::P384 => 384,
        EcCurve::P521 => 521,
    }
}

/// The `/keys` body: `{"keys": [...]}` indented by two spaces, as Go's `json.MarshalIndent`.
pub fn jwks_document(keys: &[JwtKey], set_key_use: bool) -> String {
    let b64 = |b: &[u8]| Some(URL_SAFE_NO_PAD.encode(b));
    let doc = JoseJwks {
        keys: keys
            .iter()
            .map(|k| {
                let alg = match jose_alg(&k.key) {
                    Ok(a) => Some(a),
                    Err(error) => {
                        tracing::error!(kid = %k.kid, %error, "Failed to get public key algorithm");
                        None
                    }
                };
                let mut jwk = JoseJwk {
                    key_use: set_key_use.then_some("sig"),
                    kty: k.key.kty(),
                    kid: &k.kid,
                    crv: None,
                    alg,
                    x: None,
                    y: None,
                    n: None,
                    e: None,
                };
                match &k.key {
                    PublicKeyParams::Ec { curve, x, y } => {
                        jwk.crv = Some(curve.name());
                        jwk.x = b64(x);
                        jwk.y = b64(y);
                    }
                    PublicKeyParams::Rsa { n, e } => {
                        jwk.n = b64(n);
                        jwk.e = b64(e);
                    }
                    PublicKeyParams::Ed25519 { x } => {
                        jwk.crv = Some("Ed25519");
                        jwk.x = b64(x);
                    }
                }
                jwk
            })
            .collect(),
    };
    go_json_indent(&doc)
}

/// Go's `json.MarshalIndent(v, "", "  ")`: serde's pretty printer has the same layout; Go also
/// escapes `<`, `>`, `&`, U+2028 and U+2029 (which can only occur inside strings here).
pub fn go_json_indent<T: Serialize>(v: &T) -> String {
    // Serializing these plain structs of strings cannot fail; an empty document would be
    // the visible symptom if it ever did.
    let s = serde_json::to_string_pretty(v).unwrap_or_default();
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}
