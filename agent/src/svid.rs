//! X.509 helpers shared by the node client, the cache and the CLI: thin wrappers over
//! `sigil_spiffe::x509` plus the certificate fields the agent needs (validity window).

use sigil_spiffe::SpiffeId;

/// A certificate or chain that cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct SvidError(pub String);

/// Verifies an X509-SVID chain (leaf first) against `roots` at `now` (Unix seconds) and returns
/// the leaf's SPIFFE ID.
pub fn verify_chain(chain: &[Vec<u8>], roots: &[Vec<u8>], now: i64) -> Result<SpiffeId, SvidError> {
    sigil_spiffe::x509::verify_svid_chain(chain, roots, now).map_err(|e| SvidError(e.to_string()))
}

/// Whether any certificate of `chain` is, or was signed by, one of the `tainted` authorities
/// (subject key IDs, hex): such an SVID must be re-issued.
pub fn chained_to(chain: &[Vec<u8>], tainted: &std::collections::BTreeSet<String>) -> bool {
    !tainted.is_empty()
        && chain.iter().any(|der| {
            sigil_spiffe::x509::key_ids(der).is_ok_and(|(ski, aki)| {
                ski.is_some_and(|s| tainted.contains(&s))
                    || aki.is_some_and(|a| tainted.contains(&a))
            })
        })
}

/// The SPIFFE ID in a certificate's URI SAN.
pub fn spiffe_id(cert_der: &[u8]) -> Result<SpiffeId, SvidError> {
    sigil_spiffe::x509::spiffe_id_of_cert(cert_der).map_err(|e| SvidError(e.to_string()))
}

/// `(not_before, not_after)` in Unix seconds.
pub fn validity(cert_der: &[u8]) -> Result<(i64, i64), SvidError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| SvidError(format!("parsing certificate: {e}")))?;
    let v = cert.validity();
    Ok((v.not_before.timestamp(), v.not_after.timestamp()))
}

/// Certificates as concatenated PEM `CERTIFICATE` blocks.
pub fn certs_to_pem(certs: &[Vec<u8>]) -> String {
    certs
        .iter()
        .map(|c| pem::encode(&pem::Pem::new("CERTIFICATE", c.clone())))
        .collect()
}

/// All `CERTIFICATE` blocks of a PEM text.
pub fn certs_from_pem(text: &str) -> Result<Vec<Vec<u8>>, SvidError> {
    let blocks = pem::parse_many(text).map_err(|e| SvidError(format!("parsing PEM: {e}")))?;
    Ok(blocks
        .into_iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .map(|b| b.into_contents())
        .collect())
}

/// Splits concatenated DER certificates (the Workload API's encoding) into single ones.
pub fn split_der_certs(mut der: &[u8]) -> Result<Vec<Vec<u8>>, SvidError> {
    let mut out = Vec::new();
    while !der.is_empty() {
        let (rest, _) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| SvidError(format!("parsing certificate: {e}")))?;
        let used = der.len() - rest.len();
        out.push(der[..used].to_vec());
        der = rest;
    }
    Ok(out)
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

    #[test]
    fn chained_to_finds_the_signing_authority() {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::default();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let ca_id = sigil_spiffe::x509::key_ids(ca.der()).unwrap().0.unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let mut leaf = CertificateParams::default();
        leaf.use_authority_key_identifier_extension = true;
        let leaf = leaf
            .signed_by(&KeyPair::generate().unwrap(), &issuer)
            .unwrap();
        let chain = vec![leaf.der().to_vec()];
        assert!(chained_to(&chain, &[ca_id.clone()].into()));
        assert!(!chained_to(&chain, &["00ff".to_string()].into()));
        assert!(!chained_to(&chain, &Default::default()));
        // An intermediate in the chain counts by its own key ID too.
        let with_ca = vec![chain[0].clone(), ca.der().to_vec()];
        assert!(chained_to(&with_ca, &[ca_id].into()));
    }
}
