//! Conformance against the go-spiffe test vectors in `testdata/` (see its
//! README for provenance and the expected results asserted here).

use std::path::PathBuf;

use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _, RsaKeyPair};
use serde_json::Value;
use sigil_spiffe::bundle::{Bundle, BundleError};
use sigil_spiffe::id::{SpiffeId, TrustDomain};
use sigil_spiffe::jwk::PublicKeyParams;
use sigil_spiffe::x509::{self, SvidError};

fn vector(path: &str) -> Vec<u8> {
    let full: PathBuf = [env!("CARGO_MANIFEST_DIR"), "testdata", path]
        .iter()
        .collect();
    std::fs::read(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

fn svid(name: &str) -> Vec<u8> {
    vector(&format!("svid/x509svid/testdata/{name}"))
}

fn td() -> TrustDomain {
    "example.org".parse().unwrap()
}

fn workload_1() -> SpiffeId {
    "spiffe://example.org/workload-1".parse().unwrap()
}

// === svid/x509svid ===

#[test]
fn good_svids_validate() {
    for name in [
        "good-leaf-only.pem",
        "good-leaf-and-intermediate.pem",
        "good-cert-and-key.pem",
        "good-key-and-cert.pem",
    ] {
        let chain = x509::parse_pem_certs(&svid(name)).unwrap();
        let id = x509::validate_svid_chain(&chain).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(id, workload_1(), "{name}");
        assert_eq!(x509::spiffe_id_of_cert(&chain[0]).unwrap(), workload_1());
    }
    let chain = x509::parse_pem_certs(&svid("good-leaf-and-intermediate.pem")).unwrap();
    assert_eq!(chain.len(), 2);
    assert_eq!(x509::spiffe_id_of_cert(&chain[1]).unwrap(), td().id());
}

#[test]
fn bad_svids_are_rejected() {
    let rows: [(&str, SvidError); 7] = [
        ("wrong-leaf-ca-true.pem", SvidError::LeafIsCa),
        ("wrong-leaf-cert-sign.pem", SvidError::LeafHasKeyCertSign),
        ("wrong-leaf-crl-sign.pem", SvidError::LeafHasCrlSign),
        (
            "wrong-leaf-no-digital-signature.pem",
            SvidError::LeafMissingDigitalSignature,
        ),
        ("wrong-leaf-empty-id.pem", SvidError::NoUriSan),
        (
            "wrong-intermediate-no-ca.pem",
            SvidError::SigningCertNotCa { index: 1 },
        ),
        (
            "wrong-intermediate-no-key-cert-sign.pem",
            SvidError::SigningCertMissingKeyCertSign { index: 1 },
        ),
    ];
    for (name, expected) in rows {
        let chain = x509::parse_pem_certs(&svid(name)).unwrap();
        assert_eq!(x509::validate_svid_chain(&chain), Err(expected), "{name}");
    }
    assert_eq!(
        SvidError::LeafIsCa.to_string(),
        "leaf certificate must not have CA flag set to true"
    );
}

#[test]
fn unparsable_inputs() {
    assert!(matches!(
        x509::parse_pem_certs(&svid("corrupt-cert.pem")),
        Err(SvidError::MalformedCertificate { index: 0, .. })
    ));
    assert_eq!(
        x509::parse_pkcs8_key_pem(&svid("corrupt-key.pem")),
        Err(SvidError::MalformedPrivateKey)
    );
    assert_eq!(
        x509::parse_pem_certs(&svid("not-pem")),
        Err(SvidError::NoPemBlocks)
    );
    assert_eq!(
        x509::parse_pkcs8_key_pem(&svid("not-pem")),
        Err(SvidError::NoPemBlocks)
    );
    assert_eq!(
        x509::parse_pem_certs(&svid("key-pkcs8-ecdsa.pem")),
        Err(SvidError::NoCertificates)
    );
    assert_eq!(
        x509::parse_pkcs8_key_pem(&svid("good-leaf-only.pem")),
        Err(SvidError::NoPrivateKey)
    );
}

#[test]
fn pkcs8_keys_parse_and_load() {
    let rng = SystemRandom::new();
    let ec = x509::parse_pkcs8_key_pem(&svid("key-pkcs8-ecdsa.pem")).unwrap();
    EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &ec, &rng).unwrap();
    let rsa = x509::parse_pkcs8_key_pem(&svid("key-pkcs8-rsa.pem")).unwrap();
    RsaKeyPair::from_pkcs8(&rsa).unwrap();

    // The key in a cert+key file, in either order, is the leaf's key.
    for name in ["good-cert-and-key.pem", "good-key-and-cert.pem"] {
        let pem = svid(name);
        let key = x509::parse_pkcs8_key_pem(&pem).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &key, &rng)
            .unwrap();
        let cert = &x509::parse_pem_certs(&pem).unwrap()[0];
        let spki = x509::spki_der_of_cert(cert).unwrap();
        let PublicKeyParams::Ec { x, y, .. } = PublicKeyParams::from_spki_der(&spki).unwrap()
        else {
            panic!("{name}: expected an EC key");
        };
        assert_eq!(&pair.public_key().as_ref()[1..], [x, y].concat(), "{name}");
        // PEM round trip of the key.
        let again = x509::parse_pkcs8_key_pem(x509::pkcs8_key_to_pem(&key).as_bytes()).unwrap();
        assert_eq!(again, key);
    }
}

#[test]
fn vector_chain_verifies_within_its_validity() {
    // Leaf valid 2020-03-24 14:07:30..15:07:40 UTC, intermediate (P-384,
    // ecdsa-with-SHA384) 2020-03-24 14:05:03..2020-03-25 14:05:13 UTC.
    let chain = x509::parse_pem_certs(&svid("good-leaf-and-intermediate.pem")).unwrap();
    let (leaf, intermediate) = (&chain[..1], &chain[1..]);
    let during = 1_585_060_000;
    assert_eq!(
        x509::verify_svid_chain(leaf, intermediate, during),
        Ok(workload_1())
    );
    assert_eq!(
        x509::verify_svid_chain(&chain, intermediate, during),
        Ok(workload_1())
    );
    assert_eq!(x509::not_after_unix(&chain[0]), Ok(1_585_062_460));
    assert_eq!(x509::not_before_unix(&chain[0]), Ok(1_585_058_850));
    assert_eq!(
        x509::verify_svid_chain(leaf, intermediate, 1_585_062_461),
        Err(SvidError::Expired {
            index: 0,
            not_after: 1_585_062_460,
            now: 1_585_062_461
        })
    );
    assert_eq!(
        x509::verify_svid_chain(leaf, intermediate, 1_585_058_849),
        Err(SvidError::NotYetValid {
            index: 0,
            not_before: 1_585_058_850,
            now: 1_585_058_849
        })
    );
    // Inclusive bounds, as in Go.
    assert!(x509::verify_svid_chain(leaf, intermediate, 1_585_062_460).is_ok());
    assert_eq!(
        x509::verify_svid_chain(leaf, &[], during),
        Err(SvidError::UnknownAuthority)
    );
    // The chain's issuer is not in a bundle of unrelated roots.
    let other = x509::parse_pem_certs(&vector("bundle/x509bundle/testdata/certs.pem")).unwrap();
    assert_eq!(
        x509::verify_svid_chain(&chain, &other, during),
        Err(SvidError::UnknownAuthority)
    );
}

#[test]
fn serial_and_pem_round_trip() {
    let chain = x509::parse_pem_certs(&svid("good-leaf-and-intermediate.pem")).unwrap();
    let serial = x509::serial_hex(&chain[0]).unwrap();
    assert!(!serial.is_empty() && !serial.starts_with('0'), "{serial}");
    assert!(
        serial
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    );
    let pem = x509::certs_to_pem(&chain);
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\n"));
    assert!(!pem.contains('\r'));
    assert_eq!(x509::parse_pem_certs(pem.as_bytes()).unwrap(), chain);
    let concat = chain.concat();
    assert_eq!(x509::parse_der_certs(&concat).unwrap(), chain);
    assert!(x509::parse_der_certs(&concat[..concat.len() - 1]).is_err());
}

// === bundle/spiffebundle ===

fn spiffebundle(name: &str) -> Result<Bundle, BundleError> {
    Bundle::from_spiffe_json(
        td(),
        &vector(&format!("bundle/spiffebundle/testdata/{name}")),
    )
}

#[test]
fn spiffe_bundles_parse() {
    let rows = [
        (
            "spiffebundle_valid_1.json",
            1,
            vec!["C6vs25welZOx6WksNYfbMfiw9l96pMnD"],
            None,
            None,
        ),
        (
            "spiffebundle_valid_2.json",
            1,
            vec![
                "IRsID4VIM3T11TsK43Ny1DgCD5UNWhva",
                "qjwWkiMpkHzIxsSrAsLxSZ2WZ8AyMESx",
                "uNhqAaPI7NDn7IHOsa2ac1BF4O5qGxjZ",
                "y3UHKFp0WqPpG7gVr3FKieiEzwH8fTMm",
                "mbrcuIaIUUapdCCmhQon4xJSicDmAVfK",
                "cHPeHMMEtvTeSMBc20DzPPhkF41BN2WJ",
            ],
            Some(60),
            Some(1),
        ),
        (
            "spiffebundle_valid_with_wit.json",
            1,
            vec![
                "IRsID4VIM3T11TsK43Ny1DgCD5UNWhva",
                "qjwWkiMpkHzIxsSrAsLxSZ2WZ8AyMESx",
            ],
            Some(60),
            Some(1),
        ),
    ];
    for (name, x509_count, kids, hint, seq) in rows {
        let bundle = spiffebundle(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(bundle.trust_domain, td());
        assert_eq!(bundle.x509_authorities.len(), x509_count, "{name}");
        let got: Vec<&str> = bundle
            .jwt_authorities
            .iter()
            .map(|a| a.key_id.as_str())
            .collect();
        assert_eq!(got, kids, "{name}");
        assert_eq!(bundle.refresh_hint, hint, "{name}");
        assert_eq!(bundle.sequence_number, seq, "{name}");
        for authority in &bundle.jwt_authorities {
            assert_eq!(authority.expires_at, 0);
            assert!(PublicKeyParams::from_spki_der(&authority.public_key_der).is_ok());
        }
    }
    // `"keys": []` is a valid, empty bundle: every authority revoked.
    let bundle = Bundle::from_spiffe_json(
        td(),
        br#"{"keys": [], "spiffe_refresh_hint": 60, "spiffe_sequence": 2}"#,
    )
    .unwrap();
    assert!(bundle.is_empty());
    assert_eq!(bundle.sequence_number, Some(2));
}

#[test]
fn spiffe_bundle_without_keys_is_rejected() {
    // The SPIFFE bundle spec requires `keys`; go-spiffe refuses a document without it.
    let err = spiffebundle("spiffebundle_no_keys.json").unwrap_err();
    assert!(matches!(err, BundleError::NoAuthorities), "{err:?}");
    assert_eq!(err.to_string(), "no authorities found");
    for doc in [
        &br#"{}"#[..],
        br#"{"keys": null}"#,
        br#"{"spiffe_sequence": 3}"#,
    ] {
        assert!(
            matches!(
                Bundle::from_spiffe_json(td(), doc),
                Err(BundleError::NoAuthorities)
            ),
            "{}",
            String::from_utf8_lossy(doc)
        );
    }
}

#[test]
fn spiffe_bundles_rejected() {
    let err = spiffebundle("spiffebundle_missing_kid.json").unwrap_err();
    assert!(
        matches!(err, BundleError::MissingKeyId { index: 1 }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "error adding authority 1 of JWKS: keyID cannot be empty"
    );

    let err = spiffebundle("spiffebundle_multiple_x509.json").unwrap_err();
    assert_eq!(
        err.to_string(),
        "expected a single certificate in x509-svid entry 0; got 2"
    );

    let bad_docs: [&[u8]; 8] = [
        b"",
        b"{",
        b"[]",
        b"null",
        b"{\"keys\": 5}",
        b"{\"keys\": [[\"x509-svid\"]]}",
        b"{\"spiffe_sequence\": -1}",
        b"{\"spiffe_refresh_hint\": 1.5}",
    ];
    for bad in bad_docs {
        assert!(
            matches!(
                Bundle::from_spiffe_json(td(), bad),
                Err(BundleError::Json(_))
            ),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
}

/// The keys of a bundle document, as JSON objects, in document order.
fn keys_of(json: &[u8]) -> Vec<Value> {
    let doc: Value = serde_json::from_slice(json).unwrap();
    doc["keys"].as_array().cloned().unwrap_or_default()
}

#[test]
fn spiffe_bundles_round_trip() {
    for name in ["spiffebundle_valid_1.json", "spiffebundle_valid_2.json"] {
        let original = vector(&format!("bundle/spiffebundle/testdata/{name}"));
        let bundle = Bundle::from_spiffe_json(td(), &original).unwrap();
        let json = bundle.to_spiffe_json();
        let again = Bundle::from_spiffe_json(td(), json.as_bytes()).unwrap();
        assert_eq!(again, bundle, "{name}");
        // Our keys are exactly go-spiffe's, member for member.
        assert_eq!(keys_of(json.as_bytes()), keys_of(&original), "{name}");
        let doc: Value = serde_json::from_str(&json).unwrap();
        let src: Value = serde_json::from_slice(&original).unwrap();
        assert_eq!(
            doc.get("spiffe_refresh_hint"),
            src.get("spiffe_refresh_hint")
        );
        assert_eq!(doc.get("spiffe_sequence"), src.get("spiffe_sequence"));
    }
    // The wit-svid keys are dropped, the rest is kept.
    let bundle = spiffebundle("spiffebundle_valid_with_wit.json").unwrap();
    let keys = keys_of(bundle.to_spiffe_json().as_bytes());
    assert_eq!(keys.len(), 3);
    assert!(keys.iter().all(|k| k["use"] != "wit-svid"));
}

#[test]
fn spiffe_bundle_json_shape() {
    let bundle = spiffebundle("spiffebundle_valid_1.json").unwrap();
    let json = bundle.to_spiffe_json();
    assert!(
        json.starts_with(r#"{"keys":[{"use":"x509-svid","kty":"EC","crv":"P-384","x":"#),
        "{json}"
    );
    assert!(
        json.contains(
            r#"{"use":"jwt-svid","kty":"EC","kid":"C6vs25welZOx6WksNYfbMfiw9l96pMnD","crv":"P-256""#
        ),
        "{json}"
    );
    assert!(!json.contains("spiffe_refresh_hint"));
    let empty = Bundle::new(td()).to_spiffe_json();
    assert_eq!(empty, r#"{"keys":[]}"#);
    let mut hinted = Bundle::new(td());
    hinted.refresh_hint = Some(300);
    hinted.sequence_number = Some(7);
    assert_eq!(
        hinted.to_spiffe_json(),
        r#"{"keys":[],"spiffe_refresh_hint":300,"spiffe_sequence":7}"#
    );
}

#[test]
fn x509_entry_key_must_match_certificate() {
    let original = vector("bundle/spiffebundle/testdata/spiffebundle_valid_1.json");
    let mut doc: Value = serde_json::from_slice(&original).unwrap();
    // Swap the x509 entry's coordinates for the JWT key's (wrong curve too).
    doc["keys"][0]["crv"] = "P-256".into();
    doc["keys"][0]["x"] = doc["keys"][1]["x"].clone();
    doc["keys"][0]["y"] = doc["keys"][1]["y"].clone();
    let err = Bundle::from_spiffe_json(td(), doc.to_string().as_bytes()).unwrap_err();
    assert!(
        matches!(err, BundleError::X509EntryKeyMismatch { index: 0 }),
        "{err:?}"
    );

    // An x5c-only entry (no JWK members) is accepted.
    let mut doc: Value = serde_json::from_slice(&original).unwrap();
    for member in ["kty", "crv", "x", "y"] {
        doc["keys"][0].as_object_mut().unwrap().remove(member);
    }
    let bundle = Bundle::from_spiffe_json(td(), doc.to_string().as_bytes()).unwrap();
    assert_eq!(bundle.x509_authorities.len(), 1);

    // A corrupt certificate is not.
    let mut doc: Value = serde_json::from_slice(&original).unwrap();
    doc["keys"][0]["x5c"] = serde_json::json!(["Q09SUlVQVA=="]);
    let err = Bundle::from_spiffe_json(td(), doc.to_string().as_bytes()).unwrap_err();
    assert!(
        matches!(err, BundleError::InvalidX509Entry { index: 0, .. }),
        "{err:?}"
    );
}

// === bundle/jwtbundle ===

#[test]
fn jwks_vectors() {
    for (name, count) in [("jwks_valid_1.json", 1), ("jwks_valid_2.json", 2)] {
        let original = vector(&format!("bundle/jwtbundle/testdata/{name}"));
        let bundle = Bundle::from_jwks_json(td(), &original).unwrap();
        assert_eq!(bundle.jwt_authorities.len(), count, "{name}");
        assert!(bundle.x509_authorities.is_empty());
        // Round trip to the same document, member for member.
        let json = bundle.to_jwks_json();
        let ours: Value = serde_json::from_str(&json).unwrap();
        let theirs: Value = serde_json::from_slice(&original).unwrap();
        assert_eq!(ours, theirs, "{name}");
        assert!(!json.contains("\"use\""));
    }
    let err = Bundle::from_jwks_json(
        td(),
        &vector("bundle/jwtbundle/testdata/jwks_missing_kid.json"),
    )
    .unwrap_err();
    assert!(
        matches!(err, BundleError::MissingKeyId { index: 1 }),
        "{err:?}"
    );

    // The JWT keys of a SPIFFE bundle, as a JWKS.
    let bundle = spiffebundle("spiffebundle_valid_1.json").unwrap();
    let jwks: Value = serde_json::from_str(&bundle.to_jwks_json()).unwrap();
    let theirs: Value =
        serde_json::from_slice(&vector("bundle/jwtbundle/testdata/jwks_valid_1.json")).unwrap();
    assert_eq!(jwks, theirs);
}

// === bundle/x509bundle ===

fn x509bundle(name: &str) -> Result<Bundle, BundleError> {
    Bundle::from_pem(td(), &vector(&format!("bundle/x509bundle/testdata/{name}")))
}

#[test]
fn pem_bundles() {
    assert_eq!(x509bundle("cert.pem").unwrap().x509_authorities.len(), 1);
    let certs = x509bundle("certs.pem").unwrap();
    assert_eq!(certs.x509_authorities.len(), 2);
    assert!(x509bundle("empty.pem").unwrap().is_empty());
    assert!(matches!(
        x509bundle("key.pem"),
        Err(BundleError::Pem(SvidError::NoCertificates))
    ));
    assert!(matches!(
        x509bundle("corrupted.pem"),
        Err(BundleError::Pem(SvidError::MalformedCertificate { .. }))
    ));
    assert!(matches!(
        x509bundle("not-pem.pem"),
        Err(BundleError::Pem(SvidError::NoPemBlocks))
    ));
    assert_eq!(
        x509bundle("key.pem").unwrap_err().to_string(),
        "cannot parse certificate: no certificates found"
    );

    // PEM and concatenated-DER round trips.
    let again = Bundle::from_pem(td(), certs.to_pem().as_bytes()).unwrap();
    assert_eq!(again, certs);
    let der = certs.x509_authorities_concat_der();
    assert_eq!(
        der.len(),
        certs.x509_authorities.iter().map(Vec::len).sum::<usize>()
    );
    assert_eq!(
        Bundle::from_x509_authorities_der(td(), &der).unwrap(),
        certs
    );

    // RSA x509-svid entries in SPIFFE JSON carry n and e.
    let json = certs.to_spiffe_json();
    let keys = keys_of(json.as_bytes());
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0]["kty"], "RSA");
    assert_eq!(keys[0]["e"], "AQAB");
    assert!(keys[0]["n"].is_string());
    assert_eq!(
        Bundle::from_spiffe_json(td(), json.as_bytes()).unwrap(),
        certs
    );
}

#[test]
fn duplicate_authorities() {
    let mut bundle = x509bundle("cert.pem").unwrap();
    let cert = bundle.x509_authorities[0].clone();
    assert!(!bundle.add_x509_authority(cert).unwrap());
    assert_eq!(bundle.x509_authorities.len(), 1);
    assert!(bundle.add_x509_authority(b"junk".to_vec()).is_err());

    // A duplicate kid in a document: the last one wins, as in go-spiffe.
    let src = vector("bundle/jwtbundle/testdata/jwks_valid_2.json");
    let mut doc: Value = serde_json::from_slice(&src).unwrap();
    doc["keys"][1]["kid"] = doc["keys"][0]["kid"].clone();
    let bundle = Bundle::from_jwks_json(td(), doc.to_string().as_bytes()).unwrap();
    assert_eq!(bundle.jwt_authorities.len(), 1);
    let expected = Bundle::from_jwks_json(
        td(),
        serde_json::json!({"keys": [doc["keys"][1].clone()]})
            .to_string()
            .as_bytes(),
    )
    .unwrap();
    assert_eq!(bundle, expected);
}
