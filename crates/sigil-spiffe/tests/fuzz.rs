//! Fuzz-ish property tests: parsers of untrusted input never panic, and
//! valid values survive round trips.

use proptest::prelude::*;
use sigil_spiffe::bundle::Bundle;
use sigil_spiffe::id::{SpiffeId, TrustDomain};
use sigil_spiffe::selector::Selector;
use sigil_spiffe::{jwt, x509};

fn td() -> TrustDomain {
    "example.org".parse().unwrap()
}

/// Strings built from the characters that matter to SPIFFE ID parsing, so
/// that inputs reach deep into the parser instead of failing on the scheme.
fn id_like() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("spiffe://".to_owned()),
        Just("/".to_owned()),
        Just(".".to_owned()),
        Just("..".to_owned()),
        Just("%".to_owned()),
        Just(":".to_owned()),
        Just("@".to_owned()),
        Just("?".to_owned()),
        Just("#".to_owned()),
        "[a-zA-Z0-9._-]{0,12}",
        any::<char>().prop_map(String::from),
    ];
    prop::collection::vec(piece, 0..12).prop_map(|pieces| pieces.concat())
}

fn valid_id() -> impl Strategy<Value = String> {
    (
        "[a-z0-9._-]{1,40}",
        prop::collection::vec("[a-zA-Z0-9._-]{1,20}", 0..6),
    )
        .prop_filter_map("dot segments", |(td, segments)| {
            if segments.iter().any(|s| s == "." || s == "..") {
                return None;
            }
            Some(format!(
                "spiffe://{td}{}",
                segments.iter().map(|s| format!("/{s}")).collect::<String>()
            ))
        })
}

/// JSON documents shaped like bundles, with members of random types.
fn bundle_like() -> impl Strategy<Value = String> {
    let scalar = prop_oneof![
        Just("null".to_owned()),
        Just("5".to_owned()),
        Just("-1".to_owned()),
        Just("1.5".to_owned()),
        Just("\"\"".to_owned()),
        Just("\"x509-svid\"".to_owned()),
        Just("\"jwt-svid\"".to_owned()),
        Just("\"EC\"".to_owned()),
        Just("\"RSA\"".to_owned()),
        Just("\"OKP\"".to_owned()),
        Just("\"P-256\"".to_owned()),
        Just("\"AQAB\"".to_owned()),
        Just("[\"AQAB\"]".to_owned()),
        Just("[]".to_owned()),
        "\"[A-Za-z0-9_=+/-]{0,90}\"",
    ];
    let member = (
        prop_oneof![
            Just("use"),
            Just("kty"),
            Just("kid"),
            Just("crv"),
            Just("x"),
            Just("y"),
            Just("n"),
            Just("e"),
            Just("x5c")
        ],
        scalar.clone(),
    )
        .prop_map(|(k, v)| format!("\"{k}\":{v}"));
    let key = prop::collection::vec(member, 0..8).prop_map(|m| format!("{{{}}}", m.join(",")));
    (prop::collection::vec(key, 0..4), scalar.clone(), scalar).prop_map(|(keys, hint, seq)| {
        format!(
            "{{\"keys\":[{}],\"spiffe_refresh_hint\":{hint},\"spiffe_sequence\":{seq}}}",
            keys.join(",")
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn spiffe_id_never_panics(s in any::<String>()) {
        let _ = s.parse::<SpiffeId>();
        let _ = TrustDomain::from_id_or_name(&s);
        let _ = s.parse::<Selector>();
    }

    #[test]
    fn spiffe_id_like_never_panics(s in id_like()) {
        if let Ok(id) = s.parse::<SpiffeId>() {
            // Whatever parses is canonical and consistent.
            prop_assert_eq!(id.as_str(), s.as_str());
            let td = id.trust_domain();
            prop_assert!(id.is_member_of(&td));
            prop_assert_eq!(SpiffeId::from_path(&td, id.path()), Ok(id.clone()));
        }
        let _ = TrustDomain::from_id_or_name(&s);
    }

    #[test]
    fn valid_ids_round_trip(s in valid_id()) {
        let id: SpiffeId = s.parse().unwrap();
        prop_assert_eq!(id.to_string(), s);
        let json = serde_json::to_string(&id).unwrap();
        prop_assert_eq!(serde_json::from_str::<SpiffeId>(&json).unwrap(), id);
    }

    #[test]
    fn bundle_json_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Bundle::from_spiffe_json(td(), &bytes);
        let _ = Bundle::from_jwks_json(td(), &bytes);
        let _ = Bundle::from_pem(td(), &bytes);
        let _ = x509::parse_der_certs(&bytes);
        let _ = x509::parse_pkcs8_key_pem(&bytes);
    }

    #[test]
    fn bundle_like_json_never_panics(json in bundle_like()) {
        if let Ok(bundle) = Bundle::from_spiffe_json(td(), json.as_bytes()) {
            // Whatever parses serializes and parses back the same.
            let again = Bundle::from_spiffe_json(td(), bundle.to_spiffe_json().as_bytes());
            prop_assert_eq!(again.ok(), Some(bundle.clone()));
            let _ = bundle.to_jwks_json();
        }
        let _ = Bundle::from_jwks_json(td(), json.as_bytes());
    }

    #[test]
    fn der_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let chain = vec![bytes.clone()];
        let _ = x509::validate_svid_chain(&chain);
        let _ = x509::verify_svid_chain(&chain, &chain, 0);
        let _ = x509::spiffe_id_of_cert(&bytes);
        let _ = x509::serial_hex(&bytes);
        let _ = sigil_spiffe::jwk::PublicKeyParams::from_spki_der(&bytes);
    }

    #[test]
    fn jwt_never_panics(token in "[A-Za-z0-9_.-]{0,200}") {
        let bundle = Bundle::new(td());
        let _ = jwt::validate(&token, "aud", 0, |_: &TrustDomain| Some(&bundle));
        let _ = jwt::parse_unverified(&token);
    }
}
