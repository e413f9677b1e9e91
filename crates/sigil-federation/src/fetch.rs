//! One fetch of a federated trust domain's bundle: `GET` the endpoint URL over TLS,
//! authenticated by the relationship's profile, and parse the body strictly as a SPIFFE bundle
//! document of that trust domain.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use rustls_pki_types::ServerName;
use sigil_spiffe::{Bundle, TrustDomain};
use sigil_tls::{Authorizer, Roots, SvidVerifier};
use tokio::net::TcpStream;

use crate::{Profile, Relationship};

/// A bundle document is a few kilobytes; anything much larger is not one.
const MAX_BODY: usize = 1 << 20;

/// Why a fetch failed. The messages are what `federation show` prints as the last error.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(
        "no bundle of trust domain {0:?} to authenticate the endpoint with (set one: `bundle set`, `-trustDomainBundlePath` or `trustDomainBundle`)"
    )]
    NoTrustBundle(String),
    #[error("no system root certificates to authenticate the endpoint with: {0}")]
    NoSystemRoots(String),
    #[error("connecting to {0}: {1}")]
    Connect(String, String),
    #[error("TLS handshake with {0}: {1}")]
    Tls(String, String),
    #[error("HTTP request to {0}: {1}")]
    Http(String, String),
    #[error("{0} answered {1}")]
    Status(String, u16),
    #[error("reading the body from {0}: {1}")]
    Body(String, String),
    #[error("invalid bundle from {0}: {1}")]
    Invalid(String, String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

/// Fetches the bundle of `rel.trust_domain`. For `https_spiffe`, `spiffe_roots` are the X.509
/// authorities of the endpoint ID's trust domain as stored (empty: [`FetchError::NoTrustBundle`]).
pub async fn fetch(
    rel: &Relationship,
    spiffe_roots: Vec<Vec<u8>>,
    timeout: Duration,
) -> Result<Bundle, FetchError> {
    tokio::time::timeout(timeout, fetch_inner(rel, spiffe_roots))
        .await
        .map_err(|_| FetchError::Timeout(timeout))?
}

async fn fetch_inner(rel: &Relationship, spiffe_roots: Vec<Vec<u8>>) -> Result<Bundle, FetchError> {
    let url = rel.url.as_str().to_string();
    let config = match &rel.profile {
        Profile::HttpsSpiffe { endpoint_spiffe_id } => {
            if spiffe_roots.is_empty() {
                return Err(FetchError::NoTrustBundle(
                    endpoint_spiffe_id.trust_domain().as_str().to_string(),
                ));
            }
            // The endpoint's SVID, against the stored bundle and the configured ID: no host
            // name check (the URL's host is not what identifies a SPIFFE endpoint).
            let verifier = SvidVerifier::new(
                Roots::fixed(spiffe_roots),
                Authorizer::Id(endpoint_spiffe_id.clone()),
            );
            rustls::ClientConfig::builder_with_provider(sigil_tls::provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| FetchError::Tls(url.clone(), e.to_string()))?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_no_client_auth()
        }
        Profile::HttpsWeb => {
            let mut roots = rustls::RootCertStore::empty();
            let native = rustls_native_certs::load_native_certs();
            for cert in native.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                let why = native
                    .errors
                    .first()
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| "none found".into());
                return Err(FetchError::NoSystemRoots(why));
            }
            rustls::ClientConfig::builder_with_provider(sigil_tls::provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| FetchError::Tls(url.clone(), e.to_string()))?
                .with_root_certificates(roots)
                .with_no_client_auth()
        }
    };
    let addr = format!("{}:{}", bracket(rel.url.host()), rel.url.port());
    let tcp = TcpStream::connect(&addr)
        .await
        .map_err(|e| FetchError::Connect(addr.clone(), e.to_string()))?;
    let name = ServerName::try_from(rel.url.host().to_string())
        .map_err(|e| FetchError::Tls(url.clone(), e.to_string()))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| FetchError::Tls(url.clone(), e.to_string()))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| FetchError::Http(url.clone(), e.to_string()))?;
    let conn = tokio::spawn(conn);
    let req = hyper::Request::get(rel.url.path_and_query())
        .header("Host", host_header(rel))
        .header("Accept", "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| FetchError::Http(url.clone(), e.to_string()))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| FetchError::Http(url.clone(), e.to_string()))?;
    let status = resp.status();
    if !status.is_success() {
        conn.abort();
        return Err(FetchError::Status(url, status.as_u16()));
    }
    let body = Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| FetchError::Body(url.clone(), e.to_string()))?
        .to_bytes();
    conn.abort();
    parse(&rel.trust_domain, &body).map_err(|e| FetchError::Invalid(url, e))
}

fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

fn host_header(rel: &Relationship) -> String {
    if rel.url.port() == 443 {
        bracket(rel.url.host())
    } else {
        format!("{}:{}", bracket(rel.url.host()), rel.url.port())
    }
}

/// A fetched document as the bundle of `td`: strictly parsed (the SPIFFE bundle format), and
/// every X.509 authority that names a trust domain (a SPIFFE URI SAN, as SPIRE's CAs carry)
/// must name `td`: a bundle of another trust domain is refused.
pub fn parse(td: &TrustDomain, body: &[u8]) -> Result<Bundle, String> {
    let bundle = Bundle::from_spiffe_json(td.clone(), body).map_err(|e| e.to_string())?;
    for der in &bundle.x509_authorities {
        if let Some(other) = authority_trust_domain(der)
            && other != td.id().to_string()
        {
            return Err(format!(
                "an X.509 authority belongs to {other}, not {}",
                td.id()
            ));
        }
    }
    Ok(bundle)
}

/// The SPIFFE URI SAN of a CA certificate (`spiffe://td`), if it has one.
fn authority_trust_domain(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(u) if u.starts_with("spiffe://") => {
            // A CA's URI SAN is the trust domain ID; some issuers add a path (SPIRE does not).
            let rest = &u["spiffe://".len()..];
            let td = rest.split('/').next().unwrap_or(rest);
            Some(format!("spiffe://{}", td.to_ascii_lowercase()))
        }
        _ => None,
    })
}
