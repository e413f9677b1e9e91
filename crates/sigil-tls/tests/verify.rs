//! The shared verifier against freshly generated PKIs: what webpki adds over the SPIFFE structure
//! checks (critical extensions, name constraints, EKU), the SPIFFE rules themselves, and the
//! authorizers. Several cases are accepted by the structure-and-signature checks alone
//! (`verify_svid_chain`), which is why TLS uses this verifier.

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, ExtendedKeyUsagePurpose, GeneralSubtree,
    IsCa, Issuer, KeyPair, KeyUsagePurpose, NameConstraints, SanType,
};
use rustls::pki_types::{CertificateDer, UnixTime};
use sigil_tls::{Authorizer, Roots, SvidVerifier, Usage, VerifyError, verify_svid};
use time::{Duration, OffsetDateTime};

struct Ca {
    der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = OffsetDateTime::now_utc();
    p.not_before = now - Duration::hours(1);
    p.not_after = now + Duration::hours(10);
    p
}

fn root() -> Ca {
    let key = KeyPair::generate().unwrap();
    let params = ca_params();
    let der = params.self_signed(&key).unwrap().der().to_vec();
    Ca {
        der,
        issuer: Issuer::new(params, key),
    }
}

fn intermediate(parent: &Ca, tweak: impl FnOnce(&mut CertificateParams)) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = ca_params();
    tweak(&mut params);
    let der = params
        .signed_by(&key, &parent.issuer)
        .unwrap()
        .der()
        .to_vec();
    Ca {
        der,
        issuer: Issuer::new(params, key),
    }
}

fn leaf_params(id: &str) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.subject_alt_names = vec![SanType::URI(id.try_into().unwrap())];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = OffsetDateTime::now_utc();
    p.not_before = now - Duration::minutes(5);
    p.not_after = now + Duration::hours(1);
    p
}

fn leaf(ca: &Ca, params: CertificateParams) -> Vec<u8> {
    let key = KeyPair::generate().unwrap();
    params.signed_by(&key, &ca.issuer).unwrap().der().to_vec()
}

fn ders(chain: &[&Vec<u8>]) -> Vec<CertificateDer<'static>> {
    chain
        .iter()
        .map(|d| CertificateDer::from((*d).clone()))
        .collect()
}

fn verify(chain: &[&Vec<u8>], roots: &[&Vec<u8>], usage: Usage) -> Result<String, VerifyError> {
    let roots: Vec<Vec<u8>> = roots.iter().map(|r| (*r).clone()).collect();
    verify_svid(&ders(chain), &roots, UnixTime::now(), usage).map(|id| id.to_string())
}

/// The hand-written structure-and-signature check, for contrast.
fn legacy(chain: &[&Vec<u8>], roots: &[&Vec<u8>]) -> bool {
    let chain: Vec<Vec<u8>> = chain.iter().map(|c| (*c).clone()).collect();
    let roots: Vec<Vec<u8>> = roots.iter().map(|r| (*r).clone()).collect();
    let now = OffsetDateTime::now_utc().unix_timestamp();
    sigil_spiffe::x509::verify_svid_chain(&chain, &roots, now).is_ok()
}

#[test]
fn valid_chains_verify_for_both_roles() {
    let root = root();
    let mid = intermediate(&root, |_| {});
    let direct = leaf(&root, leaf_params("spiffe://example.org/a"));
    let via_mid = leaf(&mid, leaf_params("spiffe://example.org/b"));
    for usage in [Usage::Server, Usage::Client] {
        assert_eq!(
            verify(&[&direct], &[&root.der], usage).unwrap(),
            "spiffe://example.org/a"
        );
        assert_eq!(
            verify(&[&via_mid, &mid.der], &[&root.der], usage).unwrap(),
            "spiffe://example.org/b"
        );
    }
}

#[test]
fn unknown_critical_extension_is_refused() {
    let root = root();
    let mut params = leaf_params("spiffe://example.org/a");
    let mut ext = CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 99999, 1], vec![5, 0]);
    ext.set_criticality(true);
    params.custom_extensions = vec![ext];
    let svid = leaf(&root, params);
    assert!(
        legacy(&[&svid], &[&root.der]),
        "the structure checks alone accept it"
    );
    let err = verify(&[&svid], &[&root.der], Usage::Client).unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::Path(webpki::Error::UnsupportedCriticalExtension)
        ),
        "{err:?}"
    );
}

#[test]
fn name_constraints_are_enforced() {
    let root = root();
    let mid = intermediate(&root, |p| {
        p.name_constraints = Some(NameConstraints {
            permitted_subtrees: vec![GeneralSubtree::DnsName("example.org".into())],
            excluded_subtrees: vec![],
        });
    });
    let mut params = leaf_params("spiffe://example.org/a");
    params
        .subject_alt_names
        .push(SanType::DnsName("evil.example.com".try_into().unwrap()));
    let svid = leaf(&mid, params);
    assert!(legacy(&[&svid, &mid.der], &[&root.der]));
    let err = verify(&[&svid, &mid.der], &[&root.der], Usage::Server).unwrap_err();
    assert!(matches!(err, VerifyError::Path(_)), "{err:?}");

    // Inside the permitted subtree it verifies.
    let mut params = leaf_params("spiffe://example.org/b");
    params
        .subject_alt_names
        .push(SanType::DnsName("api.example.org".try_into().unwrap()));
    let ok = leaf(&mid, params);
    verify(&[&ok, &mid.der], &[&root.der], Usage::Server).unwrap();
}

#[test]
fn extended_key_usage_must_fit_the_role() {
    let root = root();
    let mut params = leaf_params("spiffe://example.org/a");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
    let code = leaf(&root, params);
    assert!(legacy(&[&code], &[&root.der]));
    for usage in [Usage::Server, Usage::Client] {
        let err = verify(&[&code], &[&root.der], usage).unwrap_err();
        assert!(matches!(err, VerifyError::Path(_)), "{err:?}");
    }

    let mut params = leaf_params("spiffe://example.org/a");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_only = leaf(&root, params);
    verify(&[&client_only], &[&root.der], Usage::Client).unwrap();
    assert!(verify(&[&client_only], &[&root.der], Usage::Server).is_err());

    // No EKU extension at all: allowed for either role (RFC 5280 4.2.1.12).
    let mut params = leaf_params("spiffe://example.org/a");
    params.extended_key_usages = vec![];
    let none = leaf(&root, params);
    verify(&[&none], &[&root.der], Usage::Server).unwrap();
}

#[test]
fn spiffe_rules_apply_on_top() {
    let root = root();
    // Two URI SANs.
    let mut params = leaf_params("spiffe://example.org/a");
    params
        .subject_alt_names
        .push(SanType::URI("spiffe://example.org/b".try_into().unwrap()));
    let two = leaf(&root, params);
    assert!(matches!(
        verify(&[&two], &[&root.der], Usage::Client),
        Err(VerifyError::Svid(
            sigil_spiffe::x509::SvidError::MultipleUriSans
        ))
    ));
    // A leaf with keyCertSign.
    let mut params = leaf_params("spiffe://example.org/a");
    params.key_usages.push(KeyUsagePurpose::KeyCertSign);
    let signer = leaf(&root, params);
    assert!(matches!(
        verify(&[&signer], &[&root.der], Usage::Client),
        Err(VerifyError::Svid(_))
    ));
    // Not a SPIFFE ID.
    let mut params = leaf_params("spiffe://example.org/a");
    params.subject_alt_names = vec![SanType::URI("https://example.org/a".try_into().unwrap())];
    let web = leaf(&root, params);
    assert!(matches!(
        verify(&[&web], &[&root.der], Usage::Client),
        Err(VerifyError::Svid(_))
    ));
}

#[test]
fn wrong_roots_expired_and_empty() {
    let root = root();
    let other = crate::root();
    let svid = leaf(&root, leaf_params("spiffe://example.org/a"));
    let err = verify(&[&svid], &[&other.der], Usage::Client).unwrap_err();
    assert!(
        // Same (empty) subject name: webpki tries the wrong root and its signature fails.
        matches!(
            err,
            VerifyError::Path(
                webpki::Error::UnknownIssuer | webpki::Error::InvalidSignatureForPublicKey
            )
        ),
        "{err:?}"
    );
    assert!(matches!(
        verify(&[&svid], &[], Usage::Client),
        Err(VerifyError::NoRoots)
    ));
    let mut params = leaf_params("spiffe://example.org/a");
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(2);
    params.not_after = now - Duration::hours(1);
    let expired = leaf(&root, params);
    assert!(matches!(
        verify(&[&expired], &[&root.der], Usage::Client),
        Err(VerifyError::Path(webpki::Error::CertExpired { .. }))
    ));
}

#[test]
fn authorizers() {
    let id = |s: &str| s.parse::<sigil_spiffe::SpiffeId>().unwrap();
    let td = |s: &str| sigil_spiffe::TrustDomain::from_id_or_name(s).unwrap();
    let a = id("spiffe://example.org/a");
    assert!(Authorizer::Id(a.clone()).check(&a).is_ok());
    assert!(
        Authorizer::Id(id("spiffe://example.org/b"))
            .check(&a)
            .is_err()
    );
    assert!(
        Authorizer::OneOf(vec![id("spiffe://example.org/b"), a.clone()])
            .check(&a)
            .is_ok()
    );
    assert!(Authorizer::MemberOf(td("example.org")).check(&a).is_ok());
    let err = Authorizer::MemberOf(td("other.org")).check(&a).unwrap_err();
    assert_eq!(
        err.to_string(),
        "SPIFFE ID spiffe://example.org/a is not authorized: expected a member of trust domain other.org"
    );
}

#[test]
fn verifier_authorizes_and_remembers_why_it_refused() {
    let root = root();
    let svid = leaf(&root, leaf_params("spiffe://example.org/a"));
    let chain = ders(&[&svid]);
    let v = SvidVerifier::new(
        Roots::fixed(vec![root.der.clone()]),
        Authorizer::Id("spiffe://example.org/b".parse().unwrap()),
    );
    assert!(
        v.verify(&chain[0], &[], UnixTime::now(), Usage::Client)
            .is_err()
    );
    let roots = root.der.clone();
    let v = SvidVerifier::new(
        Roots::dynamic(move || vec![roots.clone()]),
        Authorizer::MemberOf(sigil_spiffe::TrustDomain::from_id_or_name("example.org").unwrap()),
    );
    let got = v
        .verify(&chain[0], &[], UnixTime::now(), Usage::Server)
        .unwrap();
    assert_eq!(got.unwrap().to_string(), "spiffe://example.org/a");

    // Insecure bootstrap trusts a server, never a client.
    let boot = SvidVerifier::insecure_bootstrap();
    assert!(matches!(
        boot.verify(&chain[0], &[], UnixTime::now(), Usage::Server),
        Ok(None)
    ));
    assert!(
        boot.verify(&chain[0], &[], UnixTime::now(), Usage::Client)
            .is_err()
    );
}
