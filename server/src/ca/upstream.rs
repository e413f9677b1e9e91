//! `UpstreamAuthority "disk"`: the server's X.509 CA is an intermediate signed by a key and
//! certificate an operator keeps in files, so the trust domain's root lives outside the server.
//!
//! The files are read again every time a new X.509 authority is made (start-up, rotation,
//! `localauthority x509 prepare`), so an operator rotates the upstream by replacing them.
//! Without `bundle_file_path` the upstream certificate must be self-signed and is the root;
//! with it, the certificate file may hold a chain (upstream certificate first) that must lead
//! to one of the bundle's roots.

use super::CaError;
use rcgen::{Issuer, KeyPair};
use std::path::PathBuf;
use x509_parser::prelude::X509Certificate;

/// Configuration of `UpstreamAuthority "disk"` (SPIRE's `plugin_data` keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskUpstream {
    pub cert_file_path: PathBuf,
    pub key_file_path: PathBuf,
    pub bundle_file_path: Option<PathBuf>,
}

/// The upstream authority as read from its files: what signs the server's CA.
pub(crate) struct UpstreamSigner {
    pub issuer: Issuer<'static, KeyPair>,
    /// The upstream certificate and the intermediates above it, leaf-most first; empty when the
    /// upstream certificate is itself the root (it is then in `roots`, not in SVID chains).
    pub chain: Vec<Vec<u8>>,
    /// The trust domain's roots.
    pub roots: Vec<Vec<u8>>,
    /// The earliest expiry along the chain: no CA it signs may outlive it.
    pub not_after: i64,
    /// Subject key ID (hex) of the upstream certificate: SPIRE's upstream authority ID.
    pub subject_key_id: String,
}

impl std::fmt::Debug for UpstreamSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The issuer holds the upstream private key.
        f.debug_struct("UpstreamSigner")
            .field("subject_key_id", &self.subject_key_id)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, CaError> {
    std::fs::read(path).map_err(|source| CaError::Io {
        path: path.display().to_string(),
        source,
    })
}

fn invalid(path: &std::path::Path, what: impl std::fmt::Display) -> CaError {
    CaError::Upstream(format!("{}: {what}", path.display()))
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, c)| c)
        .map_err(|e| e.to_string())
}

/// Whether `child` is signed by `parent`'s key (and names it as issuer).
fn signed_by(child: &X509Certificate<'_>, parent: &X509Certificate<'_>) -> bool {
    child.issuer() == parent.subject() && child.verify_signature(Some(parent.public_key())).is_ok()
}

// === impl DiskUpstream ===

impl DiskUpstream {
    /// Reads and checks the files.
    pub(crate) fn load(&self) -> Result<UpstreamSigner, CaError> {
        let cert_path = &self.cert_file_path;
        let chain = sigil_spiffe::x509::parse_pem_certs(&read(cert_path)?)
            .map_err(|e| invalid(cert_path, e))?;
        let key_path = &self.key_file_path;
        let key_der = zeroize::Zeroizing::new(
            sigil_spiffe::x509::parse_pkcs8_key_pem(&read(key_path)?).map_err(|e| {
                invalid(
                    key_path,
                    format!(
                        "{e} (the key must be unencrypted PKCS#8, \"PRIVATE KEY\"; convert one with `openssl pkcs8 -topk8 -nocrypt`)"
                    ),
                )
            })?,
        );
        let key = KeyPair::try_from(key_der.as_slice()).map_err(|e| invalid(key_path, e))?;
        let parsed: Vec<X509Certificate<'_>> = chain
            .iter()
            .map(|d| parse(d))
            .collect::<Result<_, _>>()
            .map_err(|e| invalid(cert_path, e))?;
        let upstream = &parsed[0];
        if upstream.public_key().raw != rcgen::PublicKeyData::subject_public_key_info(&key) {
            return Err(invalid(
                key_path,
                format!(
                    "the key does not belong to the certificate in {}",
                    cert_path.display()
                ),
            ));
        }
        if !upstream.is_ca() {
            return Err(invalid(cert_path, "the upstream certificate is not a CA"));
        }
        for (i, pair) in parsed.windows(2).enumerate() {
            if !signed_by(&pair[0], &pair[1]) {
                return Err(invalid(
                    cert_path,
                    format!("certificate {i} is not signed by certificate {}", i + 1),
                ));
            }
        }
        let (roots, svid_chain) = match &self.bundle_file_path {
            None => {
                if parsed.len() != 1 || !signed_by(upstream, upstream) {
                    return Err(invalid(
                        cert_path,
                        "without bundle_file_path the upstream certificate must be one self-signed CA certificate",
                    ));
                }
                (chain.clone(), Vec::new())
            }
            Some(bundle_path) => {
                let roots = sigil_spiffe::x509::parse_pem_certs(&read(bundle_path)?)
                    .map_err(|e| invalid(bundle_path, e))?;
                let top = &parsed[parsed.len() - 1];
                let anchored = roots.iter().any(|r| {
                    r == &chain[chain.len() - 1] || parse(r).is_ok_and(|root| signed_by(top, &root))
                });
                if !anchored {
                    return Err(invalid(
                        cert_path,
                        format!(
                            "the certificate chain does not lead to a root in {}",
                            bundle_path.display()
                        ),
                    ));
                }
                // A root that is in the certificate file too does not travel in SVID chains.
                let chain: Vec<Vec<u8>> = chain
                    .iter()
                    .filter(|c| !roots.contains(c))
                    .cloned()
                    .collect();
                (roots, chain)
            }
        };
        let not_after = parsed
            .iter()
            .map(|c| c.validity().not_after.timestamp())
            .min()
            .unwrap_or(i64::MAX);
        let (ski, _) = sigil_spiffe::x509::key_ids(&chain[0]).map_err(|e| invalid(cert_path, e))?;
        let subject_key_id = ski.ok_or_else(|| {
            invalid(
                cert_path,
                "the upstream certificate has no subject key identifier",
            )
        })?;
        let issuer = Issuer::from_ca_cert_der(&chain[0].as_slice().into(), key)
            .map_err(|e| invalid(cert_path, e))?;
        Ok(UpstreamSigner {
            issuer,
            chain: svid_chain,
            roots,
            not_after,
            subject_key_id,
        })
    }
}
