//! Service account tokens: TokenRequest issues ES256 JWTs with the claims of a real projected
//! token, TokenReview verifies them the way the API server's service account authenticator
//! does (signature, time, audiences, the bound object still existing with the same uid).

use crate::resources::{self, ISSUER};
use crate::store::{Key, Store};
use crate::{ApiError, now_unix};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};

/// The key tokens are signed with, as the API server's `--service-account-signing-key-file`.
pub struct Signer {
    key: EcdsaKeyPair,
    kid: String,
    rng: SystemRandom,
}

/// What a token is bound to (TokenRequest's `spec.boundObjectRef`).
#[derive(Clone, Debug)]
pub struct BoundRef {
    pub kind: String,
    pub name: String,
    pub uid: Option<String>,
}

/// A TokenRequest, already parsed.
#[derive(Clone, Debug)]
pub struct TokenSpec {
    pub namespace: String,
    pub service_account: String,
    /// Empty means the API server's own audience.
    pub audiences: Vec<String>,
    pub ttl_secs: u64,
    pub bound: Option<BoundRef>,
}

/// A validated token: the user it authenticates and the audiences it was accepted for.
#[derive(Clone, Debug)]
pub struct Authenticated {
    pub user: Value,
    pub audiences: Vec<String>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

// === impl Signer ===

impl Signer {
    pub fn new() -> Self {
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        // ring fails these only when the OS has no randomness, which no test can run without.
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("generating a P-256 key");
        let key = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng)
            .expect("ring parses the PKCS#8 document it just made");
        // The API server names its key by the SHA-256 of the public key's SPKI DER.
        let mut spki = P256_SPKI_PREFIX.to_vec();
        spki.extend_from_slice(key.public_key().as_ref());
        let kid = B64.encode(ring::digest::digest(&ring::digest::SHA256, &spki));
        Signer { key, kid, rng }
    }

    /// `header.claims.signature`, ES256 (the fixed r||s signature JWS wants).
    pub fn sign(&self, claims: &Value) -> String {
        let header = json!({"alg": "ES256", "kid": self.kid});
        let signing_input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        // ECDSA signing fails only without randomness (see `new`).
        let sig = self
            .key
            .sign(&self.rng, signing_input.as_bytes())
            .expect("signing with a valid key");
        format!("{signing_input}.{}", B64.encode(sig.as_ref()))
    }

    /// The claims of a token this signer made, or why it is not one.
    pub fn verify(&self, token: &str) -> Result<Value, String> {
        let parts: Vec<&str> = token.split('.').collect();
        let [header, claims, sig] = parts[..] else {
            return Err("token is not a JWT".into());
        };
        let header: Value = decode_json(header).ok_or("malformed JWT header")?;
        if header["alg"] != "ES256" || header["kid"] != self.kid.as_str() {
            return Err("go-jose/go-jose: error in cryptographic primitive".into());
        }
        let sig = B64.decode(sig).map_err(|_| "malformed JWT signature")?;
        signature::UnparsedPublicKey::new(
            &signature::ECDSA_P256_SHA256_FIXED,
            self.key.public_key().as_ref(),
        )
        .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
        .map_err(|_| "go-jose/go-jose: error in cryptographic primitive")?;
        decode_json(claims).ok_or_else(|| "malformed JWT claims".into())
    }

    /// The JWKS the API server serves at `/openid/v1/jwks`.
    pub fn jwks(&self) -> Value {
        let point = self.key.public_key().as_ref(); // 0x04 || x || y
        json!({"keys": [{
            "use": "sig",
            "kty": "EC",
            "kid": self.kid,
            "crv": "P-256",
            "alg": "ES256",
            "x": B64.encode(&point[1..33]),
            "y": B64.encode(&point[33..65]),
        }]})
    }
}

/// SubjectPublicKeyInfo DER of a P-256 key up to the uncompressed point.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

fn decode_json(part: &str) -> Option<Value> {
    serde_json::from_slice(&B64.decode(part).ok()?).ok()
}

fn uid_of(obj: &Value) -> Value {
    obj.pointer("/metadata/uid").cloned().unwrap_or(Value::Null)
}

/// Issues a token for `spec` the way TokenRequest does; returns it with its expiry (unix
/// seconds).
pub fn issue(store: &Store, signer: &Signer, spec: &TokenSpec) -> Result<(String, u64), ApiError> {
    let lookup = |plural: &str, ns: Option<&str>, name: &str| {
        let res = resources::by_plural(plural).expect("a resource of the table");
        store.get(&Key::new(res, ns, name)).cloned()
    };
    let ns = spec.namespace.as_str();
    let sa = lookup("serviceaccounts", Some(ns), &spec.service_account)
        .ok_or_else(|| ApiError::not_found("serviceaccounts", &spec.service_account))?;
    let mut k8s = json!({
        "namespace": ns,
        "serviceaccount": {"name": spec.service_account, "uid": uid_of(&sa)},
    });
    if let Some(b) = &spec.bound {
        let (plural, scope) = match b.kind.as_str() {
            "Pod" => ("pods", Some(ns)),
            "Node" => ("nodes", None),
            other => {
                return Err(ApiError::bad_request(format!(
                    "cannot bind token to object of type {other}"
                )));
            }
        };
        let obj =
            lookup(plural, scope, &b.name).ok_or_else(|| ApiError::not_found(plural, &b.name))?;
        if let Some(uid) = &b.uid
            && uid_of(&obj) != uid.as_str()
        {
            return Err(ApiError::new(
                409,
                "Conflict",
                format!(
                    "the UID in the bound object reference ({uid}) does not match the UID in record. The object might have been deleted and then recreated"
                ),
            ));
        }
        let node_name = match plural {
            "pods" => {
                k8s["pod"] = json!({"name": b.name, "uid": uid_of(&obj)});
                obj.pointer("/spec/nodeName")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            }
            _ => Some(b.name.clone()),
        };
        if let Some(node) = node_name.and_then(|n| lookup("nodes", None, &n).map(|o| (n, o))) {
            k8s["node"] = json!({"name": node.0, "uid": uid_of(&node.1)});
        }
    }
    let audiences = if spec.audiences.is_empty() {
        vec![ISSUER.to_string()]
    } else {
        spec.audiences.clone()
    };
    let now = now_unix();
    let exp = now + spec.ttl_secs;
    let claims = json!({
        "aud": audiences,
        "exp": exp,
        "iat": now,
        "iss": ISSUER,
        "jti": uuid::Uuid::new_v4().to_string(),
        "kubernetes.io": k8s,
        "nbf": now,
        "sub": format!("system:serviceaccount:{ns}:{}", spec.service_account),
    });
    Ok((signer.sign(&claims), exp))
}

/// Validates `token` for `audiences` (empty: the API server's own) as TokenReview does.
pub fn authenticate(
    store: &Store,
    signer: &Signer,
    token: &str,
    audiences: &[String],
) -> Result<Authenticated, String> {
    let claims = signer.verify(token)?;
    if claims["iss"] != ISSUER {
        return Err("token issuer is not trusted".into());
    }
    let now = now_unix();
    if claims["exp"].as_u64().is_none_or(|exp| now >= exp) {
        return Err("service account token has expired".into());
    }
    if claims["nbf"].as_u64().is_some_and(|nbf| now < nbf) {
        return Err("service account token is not valid yet".into());
    }
    let token_aud: Vec<String> = match &claims["aud"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    };
    let wanted: Vec<String> = if audiences.is_empty() {
        vec![ISSUER.to_string()]
    } else {
        audiences.to_vec()
    };
    let common: Vec<String> = wanted
        .iter()
        .filter(|a| token_aud.contains(a))
        .cloned()
        .collect();
    if common.is_empty() {
        return Err(format!(
            "token audiences {} is invalid for the target audiences {}",
            go_quoted(&token_aud),
            go_quoted(&wanted)
        ));
    }
    let k8s = &claims["kubernetes.io"];
    let ns = k8s["namespace"].as_str().unwrap_or_default();
    let sa_name = k8s
        .pointer("/serviceaccount/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let sa_uid = k8s
        .pointer("/serviceaccount/uid")
        .cloned()
        .unwrap_or(Value::Null);
    let invalidated = || "service account token has been invalidated".to_string();
    let still = |plural: &str, scope: Option<&str>, claim: &Value| -> bool {
        let res = resources::by_plural(plural).expect("a resource of the table");
        let name = claim["name"].as_str().unwrap_or_default();
        store
            .get(&Key::new(res, scope, name))
            .is_some_and(|o| uid_of(o) == claim["uid"])
    };
    if !still(
        "serviceaccounts",
        Some(ns),
        &json!({"name": sa_name, "uid": sa_uid}),
    ) {
        return Err(invalidated());
    }
    let mut extra = serde_json::Map::new();
    if let Some(pod) = k8s.get("pod") {
        if !still("pods", Some(ns), pod) {
            return Err(invalidated());
        }
        extra.insert(
            "authentication.kubernetes.io/pod-name".into(),
            json!([pod["name"]]),
        );
        extra.insert(
            "authentication.kubernetes.io/pod-uid".into(),
            json!([pod["uid"]]),
        );
    }
    if let Some(node) = k8s.get("node") {
        // Only a token bound to the node itself dies with it; a pod's token names its node
        // for information.
        if k8s.get("pod").is_none() && !still("nodes", None, node) {
            return Err(invalidated());
        }
        extra.insert(
            "authentication.kubernetes.io/node-name".into(),
            json!([node["name"]]),
        );
        extra.insert(
            "authentication.kubernetes.io/node-uid".into(),
            json!([node["uid"]]),
        );
    }
    if let Some(jti) = claims["jti"].as_str() {
        extra.insert(
            "authentication.kubernetes.io/credential-id".into(),
            json!([format!("JTI={jti}")]),
        );
    }
    Ok(Authenticated {
        user: json!({
            "username": format!("system:serviceaccount:{ns}:{sa_name}"),
            "uid": sa_uid,
            "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{ns}"), "system:authenticated"],
            "extra": extra,
        }),
        audiences: common,
    })
}

/// The `status` of a TokenReview of `token` for `audiences`.
pub fn review_status(store: &Store, signer: &Signer, token: &str, audiences: &[String]) -> Value {
    // Not a JWT at all: the service account authenticator does not claim it and no other
    // authenticator does either, so the real server answers "not authenticated" with no error.
    if token.split('.').count() != 3 {
        return json!({"authenticated": false, "user": {}});
    }
    match authenticate(store, signer, token, audiences) {
        Ok(a) => json!({"authenticated": true, "user": a.user, "audiences": a.audiences}),
        Err(e) => json!({
            "authenticated": false,
            "user": {},
            "error": format!("[invalid bearer token, {e}, unknown]"),
        }),
    }
}

/// `["a" "b"]`, how Go's `%q` prints a string slice (the real error text uses it).
fn go_quoted(v: &[String]) -> String {
    let items: Vec<String> = v
        .iter()
        .map(|s| Value::String(s.clone()).to_string())
        .collect();
    format!("[{}]", items.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::by_plural;

    fn store() -> Store {
        let mut s = Store::default();
        let r = |p| by_plural(p).unwrap();
        s.put(
            r("serviceaccounts"),
            json!({"metadata": {"name": "sa", "namespace": "ns", "uid": "sa-uid"}}),
        );
        s.put(
            r("nodes"),
            json!({"metadata": {"name": "n1", "uid": "node-uid"}}),
        );
        s.put(r("pods"), json!({"metadata": {"name": "p", "namespace": "ns", "uid": "pod-uid"}, "spec": {"nodeName": "n1"}}));
        s
    }

    fn spec(aud: &[&str], pod: Option<&str>) -> TokenSpec {
        TokenSpec {
            namespace: "ns".into(),
            service_account: "sa".into(),
            audiences: aud.iter().map(|s| s.to_string()).collect(),
            ttl_secs: 600,
            bound: pod.map(|p| BoundRef {
                kind: "Pod".into(),
                name: p.into(),
                uid: None,
            }),
        }
    }

    #[test]
    fn issue_and_review() {
        let (mut s, signer) = (store(), Signer::new());
        let (tok, _) = issue(&s, &signer, &spec(&["a", "b"], Some("p"))).unwrap();
        let claims = signer.verify(&tok).unwrap();
        assert_eq!(claims["sub"], "system:serviceaccount:ns:sa");
        assert_eq!(claims["kubernetes.io"]["node"]["uid"], "node-uid");
        let ok = review_status(&s, &signer, &tok, &["b".into(), "c".into()]);
        assert_eq!(ok["authenticated"], true);
        assert_eq!(ok["audiences"], json!(["b"]));
        assert_eq!(
            ok["user"]["extra"]["authentication.kubernetes.io/pod-uid"],
            json!(["pod-uid"])
        );
        let bad = review_status(&s, &signer, &tok, &["spire-server".into()]);
        assert_eq!(
            bad["error"],
            r#"[invalid bearer token, token audiences ["a" "b"] is invalid for the target audiences ["spire-server"], unknown]"#
        );
        s.remove(&Key::new(by_plural("pods").unwrap(), Some("ns"), "p"));
        assert_eq!(
            review_status(&s, &signer, &tok, &["a".into()])["authenticated"],
            false
        );
        // Tampering breaks the signature; another signer's token is not ours.
        let forged = format!("{}x", &tok[..tok.len() - 1]);
        assert!(signer.verify(&forged).is_err());
        assert!(Signer::new().verify(&tok).is_err());
        // Not a JWT: nobody claims it; not authenticated, and no error (as the real server).
        let none = review_status(&s, &signer, "not-a-jwt", &["a".into()]);
        assert_eq!(none, json!({"authenticated": false, "user": {}}));
    }

    #[test]
    fn issue_checks_objects() {
        let (s, signer) = (store(), Signer::new());
        let mut sp = spec(&[], None);
        sp.service_account = "nope".into();
        assert_eq!(issue(&s, &signer, &sp).unwrap_err().code, 404);
        assert_eq!(
            issue(&s, &signer, &spec(&[], Some("nope")))
                .unwrap_err()
                .code,
            404
        );
        let mut sp = spec(&[], Some("p"));
        sp.bound.as_mut().unwrap().uid = Some("other".into());
        assert_eq!(issue(&s, &signer, &sp).unwrap_err().code, 409);
        let (tok, _) = issue(&s, &signer, &spec(&[], None)).unwrap();
        assert_eq!(signer.verify(&tok).unwrap()["aud"], json!([ISSUER]));
        assert!(authenticate(&s, &signer, &tok, &[]).is_ok());
    }
}
