//! The bundle endpoint and the refresher against each other on loopback, with generated PKIs:
//! what a fetched bundle must pass to replace the stored one, and what is visible when it does
//! not.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sigil_federation::endpoint::{BundleDocument, acceptor, serve};
use sigil_federation::fetch::{FetchError, fetch};
use sigil_federation::refresh::{BundleStore, Refresher, Status, interval_for};
use sigil_federation::{EndpointUrl, Profile, Relationship};
use sigil_spiffe::{Bundle, TrustDomain};

struct Pki {
    td: TrustDomain,
    ca_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

fn pki(td: &str) -> Pki {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.subject_alt_names = vec![SanType::URI(format!("spiffe://{td}").try_into().unwrap())];
    let ca_der = p.self_signed(&key).unwrap().der().to_vec();
    Pki {
        td: td.parse().unwrap(),
        ca_der,
        issuer: Issuer::new(p, key),
    }
}

/// The server SVID (`spiffe://<td>/spire/server`) a bundle endpoint presents.
fn server_svid(pki: &Pki) -> Arc<CertifiedKey> {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.subject_alt_names = vec![SanType::URI(
        format!("spiffe://{}/spire/server", pki.td.as_str())
            .try_into()
            .unwrap(),
    )];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let der = p.signed_by(&key, &pki.issuer).unwrap().der().to_vec();
    let signing = sigil_tls::provider()
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            key.serialize_der(),
        )))
        .unwrap();
    Arc::new(CertifiedKey::new(vec![CertificateDer::from(der)], signing))
}

#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

fn bundle(pki: &Pki, seq: Option<u64>) -> Bundle {
    let mut b = Bundle::new(pki.td.clone());
    b.add_x509_authority(pki.ca_der.clone()).unwrap();
    b.sequence_number = seq;
    b.refresh_hint = Some(60);
    b
}

/// A bundle endpoint serving whatever `doc` holds; its URL.
async fn endpoint(pki: &Pki, doc: Arc<Mutex<String>>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let document: BundleDocument = Arc::new(move || doc.lock().unwrap().clone());
    tokio::spawn(serve(
        listener,
        acceptor(Arc::new(Fixed(server_svid(pki)))).unwrap(),
        document,
    ));
    format!("https://localhost:{port}")
}

#[derive(Default)]
struct MemStore(Mutex<HashMap<String, Bundle>>);

impl BundleStore for MemStore {
    fn get<'a>(
        &'a self,
        td: &'a TrustDomain,
    ) -> Pin<Box<dyn Future<Output = Option<Bundle>> + Send + 'a>> {
        let b = self.0.lock().unwrap().get(td.as_str()).cloned();
        Box::pin(async move { b })
    }
    fn put(&self, bundle: Bundle) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        self.0
            .lock()
            .unwrap()
            .insert(bundle.trust_domain.as_str().to_string(), bundle);
        Box::pin(async { Ok(()) })
    }
}

fn spiffe_rel(td: &TrustDomain, url: &str, endpoint_td: &str) -> Relationship {
    Relationship {
        trust_domain: td.clone(),
        url: EndpointUrl::parse(url).unwrap(),
        profile: Profile::HttpsSpiffe {
            endpoint_spiffe_id: format!("spiffe://{endpoint_td}/spire/server")
                .parse()
                .unwrap(),
        },
    }
}

/// Waits until the relationship's status satisfies `ok`.
async fn wait_status(r: &Refresher, td: &TrustDomain, ok: impl Fn(&Status) -> bool) -> Status {
    for _ in 0..200 {
        if let Some((_, s)) = r.get(td)
            && ok(&s)
        {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("status never matched: {:?}", r.get(td));
}

#[tokio::test]
async fn refresher_keeps_the_good_bundle_and_says_why() {
    let a = pki("a.test");
    let doc = Arc::new(Mutex::new(bundle(&a, Some(5)).to_spiffe_json()));
    let url = endpoint(&a, doc.clone()).await;
    let store = Arc::new(MemStore::default());
    // The bootstrap bundle: without it, an https_spiffe endpoint cannot be authenticated.
    let refresher = Refresher::new(store.clone());
    let rel = spiffe_rel(&a.td, &url, "a.test");
    refresher.set(rel.clone());
    let s = wait_status(&refresher, &a.td, |s| s.last_error.is_some()).await;
    assert!(
        s.last_error
            .unwrap()
            .1
            .contains("no bundle of trust domain"),
        "bootstrap"
    );
    assert!(s.next_attempt.is_some());
    store.put(bundle(&a, Some(1))).await.unwrap();

    // Fetched: stored, sequence 5, next attempt at hint/4 → 15 s floor.
    refresher.refresh(&a.td);
    let s = wait_status(&refresher, &a.td, |s| s.sequence == Some(5)).await;
    assert!(s.last_error.is_none() && s.last_success.is_some());
    assert_eq!(store.get(&a.td).await.unwrap().sequence_number, Some(5));

    // An older sequence: refused, the stored bundle stays, the error says so.
    *doc.lock().unwrap() = bundle(&a, Some(4)).to_spiffe_json();
    refresher.refresh(&a.td);
    let s = wait_status(&refresher, &a.td, |s| s.last_error.is_some()).await;
    assert!(s.last_error.unwrap().1.contains("older than the stored 5"));
    assert_eq!(store.get(&a.td).await.unwrap().sequence_number, Some(5));

    // Another trust domain's bundle (its CA names spiffe://evil.test): refused.
    let evil = pki("evil.test");
    let mut wrong = bundle(&evil, Some(9));
    wrong.trust_domain = a.td.clone();
    *doc.lock().unwrap() = wrong.to_spiffe_json();
    refresher.refresh(&a.td);
    wait_status(&refresher, &a.td, |s| {
        s.last_error
            .as_ref()
            .is_some_and(|e| e.1.contains("belongs to spiffe://evil.test"))
    })
    .await;
    assert_eq!(
        store.get(&a.td).await.unwrap().x509_authorities,
        vec![a.ca_der.clone()]
    );

    // Not a bundle: refused.
    *doc.lock().unwrap() = r#"{"keys": [{"use": "x509-svid", "kty": "EC"}]}"#.into();
    refresher.refresh(&a.td);
    wait_status(&refresher, &a.td, |s| {
        s.last_error
            .as_ref()
            .is_some_and(|e| e.1.contains("invalid bundle"))
    })
    .await;
    assert_eq!(store.get(&a.td).await.unwrap().sequence_number, Some(5));

    // Recovered, then an empty key set: a revocation, applied.
    *doc.lock().unwrap() = bundle(&a, Some(6)).to_spiffe_json();
    refresher.refresh(&a.td);
    wait_status(&refresher, &a.td, |s| {
        s.sequence == Some(6) && s.last_error.is_none()
    })
    .await;
    *doc.lock().unwrap() = r#"{"keys": [], "spiffe_sequence": 7}"#.into();
    refresher.refresh(&a.td);
    wait_status(&refresher, &a.td, |s| s.sequence == Some(7)).await;
    assert!(store.get(&a.td).await.unwrap().is_empty());

    assert_eq!(refresher.list().len(), 1);
    assert!(refresher.remove(&a.td));
    assert!(refresher.get(&a.td).is_none());
}

#[tokio::test]
async fn https_spiffe_authenticates_the_configured_id_only() {
    let a = pki("a.test");
    let doc = Arc::new(Mutex::new(bundle(&a, Some(1)).to_spiffe_json()));
    let url = endpoint(&a, doc).await;
    let roots = vec![a.ca_der.clone()];
    // The right ID: fetched.
    let got = fetch(
        &spiffe_rel(&a.td, &url, "a.test"),
        roots.clone(),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(got.x509_authorities, roots);
    // Another ID than the endpoint presents: refused in the handshake.
    let mut rel = spiffe_rel(&a.td, &url, "a.test");
    rel.profile = Profile::HttpsSpiffe {
        endpoint_spiffe_id: "spiffe://a.test/other".parse().unwrap(),
    };
    let err = fetch(&rel, roots.clone(), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Tls(..)), "{err}");
    // Roots of another trust domain: refused.
    let other = pki("a.test");
    let err = fetch(
        &spiffe_rel(&a.td, &url, "a.test"),
        vec![other.ca_der],
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, FetchError::Tls(..)), "{err}");
    // A path that is not the bundle: the status code.
    let err = fetch(
        &spiffe_rel(&a.td, &format!("{url}/nope"), "a.test"),
        roots,
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, FetchError::Status(_, 404)), "{err}");
}

#[test]
fn refresh_interval_is_a_quarter_of_the_hint_bounded() {
    assert_eq!(interval_for(Some(3600)), Duration::from_secs(900));
    assert_eq!(interval_for(Some(20)), Duration::from_secs(15));
    assert_eq!(interval_for(None), Duration::from_secs(300));
    assert_eq!(interval_for(Some(0)), Duration::from_secs(300));
}
