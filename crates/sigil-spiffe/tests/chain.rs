//! `verify_svid_chain` against freshly generated PKIs (rcgen), covering the
//! cases static vectors cannot: time windows relative to now, wrong roots,
//! rotated roots, path lengths, and RSA/P-384 issuers.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_RSA_SHA256, SanType,
    SignatureAlgorithm,
};
use sigil_spiffe::bundle::Bundle;
use sigil_spiffe::id::SpiffeId;
use sigil_spiffe::x509::{self, SvidError};
use time::OffsetDateTime;

const NOW: i64 = 1_750_000_000;
const HOUR: i64 = 3600;

/// A one-certificate slice, without cloning.
fn one(der: &Vec<u8>) -> &[Vec<u8>] {
    std::slice::from_ref(der)
}

fn at(unix: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(unix).unwrap()
}

/// A CA: its DER, and what is needed to sign with it.
struct Ca {
    der: Vec<u8>,
    params: CertificateParams,
    key: KeyPair,
}

impl Ca {
    fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::from_params(&self.params, &self.key)
    }
}

fn ca_params(cn: &str, path_len: Option<u8>, from: i64, to: i64) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.subject_alt_names = vec![SanType::URI("spiffe://example.org".try_into().unwrap())];
    params.not_before = at(from);
    params.not_after = at(to);
    params
}

fn key_for(alg: &'static SignatureAlgorithm) -> KeyPair {
    if alg == &PKCS_RSA_SHA256 {
        // ring cannot generate RSA keys; use the checked-in test key.
        let pem = include_str!("../testdata/jwt/rsa-2048-key.pem");
        KeyPair::from_pkcs8_pem_and_sign_algo(pem, alg).unwrap()
    } else {
        KeyPair::generate_for(alg).unwrap()
    }
}

fn root(cn: &str, alg: &'static SignatureAlgorithm, from: i64, to: i64) -> Ca {
    let params = ca_params(cn, None, from, to);
    let key = key_for(alg);
    let der = params.self_signed(&key).unwrap().der().to_vec();
    Ca { der, params, key }
}

fn intermediate(cn: &str, path_len: Option<u8>, parent: &Ca, from: i64, to: i64) -> Ca {
    let params = ca_params(cn, path_len, from, to);
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let der = params
        .signed_by(&key, &parent.issuer())
        .unwrap()
        .der()
        .to_vec();
    Ca { der, params, key }
}

fn leaf_params(id: &str, from: i64, to: i64) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![SanType::URI(id.try_into().unwrap())];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.not_before = at(from);
    params.not_after = at(to);
    params
}

fn leaf(id: &str, issuer: &Ca, from: i64, to: i64) -> Vec<u8> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    leaf_params(id, from, to)
        .signed_by(&key, &issuer.issuer())
        .unwrap()
        .der()
        .to_vec()
}

fn web() -> SpiffeId {
    "spiffe://example.org/web".parse().unwrap()
}

#[test]
fn leaf_signed_by_root() {
    for alg in [
        &PKCS_ECDSA_P256_SHA256,
        &PKCS_ECDSA_P384_SHA384,
        &PKCS_RSA_SHA256,
    ] {
        let ca = root("root", alg, NOW - HOUR, NOW + HOUR);
        let svid = leaf("spiffe://example.org/web", &ca, NOW - 60, NOW + 60);
        assert_eq!(
            x509::verify_svid_chain(one(&svid), one(&ca.der), NOW),
            Ok(web()),
            "{alg:?}"
        );
        // The root may also travel at the end of the chain.
        assert_eq!(
            x509::verify_svid_chain(&[svid, ca.der.clone()], one(&ca.der), NOW),
            Ok(web())
        );
    }
}

#[test]
fn leaf_through_intermediates() {
    let ca = root("root", &PKCS_ECDSA_P384_SHA384, NOW - HOUR, NOW + HOUR);
    let mid = intermediate("mid", None, &ca, NOW - HOUR, NOW + HOUR);
    let low = intermediate("low", None, &mid, NOW - HOUR, NOW + HOUR);
    let svid = leaf("spiffe://example.org/web", &low, NOW - 60, NOW + 60);
    let chain = vec![svid.clone(), low.der.clone(), mid.der.clone()];
    assert_eq!(
        x509::verify_svid_chain(&chain, one(&ca.der), NOW),
        Ok(web())
    );
    assert_eq!(x509::validate_svid_chain(&chain), Ok(web()));

    // A missing intermediate breaks the chain.
    let gap = vec![svid.clone(), low.der.clone()];
    assert_eq!(
        x509::verify_svid_chain(&gap, one(&ca.der), NOW),
        Err(SvidError::UnknownAuthority)
    );
    // Out of order.
    let swapped = vec![svid, mid.der.clone(), low.der.clone()];
    assert_eq!(
        x509::verify_svid_chain(&swapped, one(&ca.der), NOW),
        Err(SvidError::IssuerMismatch { index: 0 })
    );
}

#[test]
fn expired_and_not_yet_valid() {
    let ca = root(
        "root",
        &PKCS_ECDSA_P256_SHA256,
        NOW - 10 * HOUR,
        NOW + 10 * HOUR,
    );
    let roots = [ca.der.clone()];
    let expired = leaf("spiffe://example.org/web", &ca, NOW - 2 * HOUR, NOW - HOUR);
    assert!(matches!(
        x509::verify_svid_chain(one(&expired), &roots, NOW),
        Err(SvidError::Expired { index: 0, .. })
    ));
    // Structure alone does not look at time.
    assert_eq!(x509::validate_svid_chain(&[expired]), Ok(web()));

    let future = leaf("spiffe://example.org/web", &ca, NOW + HOUR, NOW + 2 * HOUR);
    assert!(matches!(
        x509::verify_svid_chain(&[future], &roots, NOW),
        Err(SvidError::NotYetValid { index: 0, .. })
    ));

    // An expired intermediate or root fails the chain too.
    let old_mid = intermediate("mid", None, &ca, NOW - 2 * HOUR, NOW - HOUR);
    let svid = leaf("spiffe://example.org/web", &old_mid, NOW - 60, NOW + 60);
    assert!(matches!(
        x509::verify_svid_chain(&[svid, old_mid.der.clone()], &roots, NOW),
        Err(SvidError::Expired { index: 1, .. })
    ));
    let old_root = root("root", &PKCS_ECDSA_P256_SHA256, NOW - 2 * HOUR, NOW - HOUR);
    let svid = leaf("spiffe://example.org/web", &old_root, NOW - 60, NOW + 60);
    assert!(matches!(
        x509::verify_svid_chain(&[svid], one(&old_root.der), NOW),
        Err(SvidError::Expired { index: 1, .. })
    ));
}

#[test]
fn wrong_root() {
    let ca = root("root", &PKCS_ECDSA_P256_SHA256, NOW - HOUR, NOW + HOUR);
    let svid = leaf("spiffe://example.org/web", &ca, NOW - 60, NOW + 60);

    // Another root with another name.
    let other = root("other", &PKCS_ECDSA_P256_SHA256, NOW - HOUR, NOW + HOUR);
    assert_eq!(
        x509::verify_svid_chain(one(&svid), one(&other.der), NOW),
        Err(SvidError::UnknownAuthority)
    );
    // An impostor root with the same name but another key.
    let impostor = root("root", &PKCS_ECDSA_P256_SHA256, NOW - HOUR, NOW + HOUR);
    assert_eq!(
        x509::verify_svid_chain(one(&svid), one(&impostor.der), NOW),
        Err(SvidError::UnknownAuthority)
    );
    // During rotation, both are in the bundle: the right one is found.
    let roots = [impostor.der.clone(), other.der.clone(), ca.der.clone()];
    assert_eq!(x509::verify_svid_chain(one(&svid), &roots, NOW), Ok(web()));
    // Through a bundle's authorities.
    let mut bundle = Bundle::new("example.org".parse().unwrap());
    for der in roots {
        bundle.add_x509_authority(der).unwrap();
    }
    assert_eq!(
        x509::verify_svid_chain(one(&svid), &bundle.x509_authorities, NOW),
        Ok(web())
    );
    // An intermediate whose signature was made by another key.
    let forged_mid = intermediate("mid", None, &impostor, NOW - HOUR, NOW + HOUR);
    let svid = leaf("spiffe://example.org/web", &forged_mid, NOW - 60, NOW + 60);
    assert_eq!(
        x509::verify_svid_chain(&[svid, forged_mid.der.clone()], one(&ca.der), NOW),
        Err(SvidError::UnknownAuthority)
    );
    // A malformed root is reported as such.
    assert!(matches!(
        x509::verify_svid_chain(
            &[leaf("spiffe://example.org/web", &ca, NOW - 60, NOW + 60)],
            &[b"junk".to_vec()],
            NOW
        ),
        Err(SvidError::MalformedRoot { index: 0, .. })
    ));
}

#[test]
fn tampered_signature() {
    let ca = root("root", &PKCS_ECDSA_P256_SHA256, NOW - HOUR, NOW + HOUR);
    let mid = intermediate("mid", None, &ca, NOW - HOUR, NOW + HOUR);
    let mut svid = leaf("spiffe://example.org/web", &mid, NOW - 60, NOW + 60);
    // Change one byte of the signed content: the SAN URI's "web" -> "wec".
    let pos = svid.windows(3).rposition(|w| w == b"web").unwrap();
    svid[pos + 2] = b'c';
    assert_eq!(
        x509::verify_svid_chain(&[svid, mid.der.clone()], one(&ca.der), NOW),
        Err(SvidError::BadSignature { index: 0 })
    );
}

#[test]
fn path_len_constraint() {
    let ca = root("root", &PKCS_ECDSA_P256_SHA256, NOW - HOUR, NOW + HOUR);
    let mid = intermediate("mid", Some(0), &ca, NOW - HOUR, NOW + HOUR);
    let low = intermediate("low", None, &mid, NOW - HOUR, NOW + HOUR);
    let svid = leaf("spiffe://example.org/web", &low, NOW - 60, NOW + 60);
    assert_eq!(
        x509::verify_svid_chain(&[svid, low.der.clone(), mid.der.clone()], one(&ca.der), NOW),
        Err(SvidError::PathLenExceeded { index: 2, max: 0 })
    );
    let svid = leaf("spiffe://example.org/web", &mid, NOW - 60, NOW + 60);
    assert_eq!(
        x509::verify_svid_chain(&[svid, mid.der.clone()], one(&ca.der), NOW),
        Ok(web())
    );
}

#[test]
fn structure_rules_on_generated_certs() {
    let ca = root("root", &PKCS_ECDSA_P256_SHA256, NOW - HOUR, NOW + HOUR);
    let sign = |params: CertificateParams| {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        params.signed_by(&key, &ca.issuer()).unwrap().der().to_vec()
    };
    let base = || leaf_params("spiffe://example.org/web", NOW - 60, NOW + 60);

    let mut two_uris = base();
    two_uris
        .subject_alt_names
        .push(SanType::URI("spiffe://example.org/db".try_into().unwrap()));
    assert_eq!(
        x509::validate_svid_chain(&[sign(two_uris)]),
        Err(SvidError::MultipleUriSans)
    );

    let mut bad_id = base();
    bad_id.subject_alt_names = vec![SanType::URI("spiffe://Example.org/web".try_into().unwrap())];
    let der = sign(bad_id);
    assert!(matches!(
        x509::validate_svid_chain(one(&der)),
        Err(SvidError::InvalidSpiffeId(_))
    ));
    assert!(matches!(
        x509::spiffe_id_of_cert(&der),
        Err(SvidError::InvalidSpiffeId(_))
    ));

    let mut no_ku = base();
    no_ku.key_usages.clear();
    assert_eq!(
        x509::validate_svid_chain(&[sign(no_ku)]),
        Err(SvidError::LeafMissingDigitalSignature)
    );

    // No basicConstraints at all is fine for a leaf.
    let mut no_bc = base();
    no_bc.is_ca = IsCa::NoCa;
    assert_eq!(x509::validate_svid_chain(&[sign(no_bc)]), Ok(web()));

    // A leaf is not a signing certificate.
    let svid = sign(base());
    assert_eq!(
        x509::validate_svid_chain(&[svid.clone(), svid.clone()]),
        Err(SvidError::SigningCertNotCa { index: 1 })
    );

    // Accessors.
    let mut serial = base();
    serial.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x0a, 0xbc]));
    let der = sign(serial);
    assert_eq!(x509::serial_hex(&der).unwrap(), "abc");
    assert_eq!(x509::not_after_unix(&der).unwrap(), NOW + 60);
    assert_eq!(x509::spiffe_id_of_cert(&der).unwrap(), web());
}
