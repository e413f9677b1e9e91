//! X509-SVID checks per the SPIFFE X509-SVID specification, plus the PEM
//! and DER plumbing that goes with them.
//!
//! [`validate_svid_chain`] checks only what the specification says an SVID
//! chain must look like; [`verify_svid_chain`] adds what makes it
//! trustworthy: each signature up to a trust root, and validity periods.
//! Signatures are checked with ring directly (x509-parser's `verify` feature
//! is deliberately not enabled) for ECDSA P-256/P-384 with SHA-256/384,
//! RSA PKCS#1 v1.5 with SHA-256/384/512, and Ed25519.
//!
//! No function here puts key bytes into an error, since errors end up in
//! logs: private-key problems are reported by kind only.

use std::str::FromStr;

use pem::{EncodeConfig, LineEnding, Pem};
use ring::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use crate::der::{self, oid};
use crate::id::{IdError, SpiffeId};

/// PEM label of certificates.
const CERTIFICATE_LABEL: &str = "CERTIFICATE";
/// PEM label of PKCS#8 private keys.
const PKCS8_LABEL: &str = "PRIVATE KEY";

/// Why certificates, keys or an SVID chain were rejected.
///
/// Certificate positions (`index`) count from the leaf, which is 0; a trust
/// root that completes a chain of `n` certificates is at index `n`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SvidError {
    /// The input holds no PEM block at all.
    #[error("no PEM blocks found")]
    NoPemBlocks,
    /// The input has PEM blocks, but none is a `CERTIFICATE`.
    #[error("no certificates found")]
    NoCertificates,
    /// The input has no `PRIVATE KEY` block.
    #[error("no PKCS#8 private key (\"PRIVATE KEY\" PEM block) found")]
    NoPrivateKey,
    /// The key is in another PEM format (`EC PRIVATE KEY`, `RSA PRIVATE KEY`,
    /// `ENCRYPTED PRIVATE KEY`); only unencrypted PKCS#8 is accepted.
    #[error(
        "private key is a \"{0}\" PEM block, not unencrypted PKCS#8 (convert it with `openssl pkcs8 -topk8 -nocrypt`)"
    )]
    NotPkcs8(String),
    /// PEM framing or base64 is broken. The detail is a fixed description,
    /// never the offending text, which may be key material.
    #[error("cannot decode PEM: {0}")]
    Pem(&'static str),
    /// A `PRIVATE KEY` block is not a PKCS#8 structure.
    #[error("malformed PKCS#8 private key")]
    MalformedPrivateKey,
    /// A certificate does not parse as X.509 DER.
    #[error("cannot parse certificate {index}: {reason}")]
    MalformedCertificate {
        /// Position in the input.
        index: usize,
        /// Parser message.
        reason: String,
    },
    /// A trust root does not parse as X.509 DER.
    #[error("cannot parse root certificate {index}: {reason}")]
    MalformedRoot {
        /// Position among the roots.
        index: usize,
        /// Parser message.
        reason: String,
    },
    /// No certificate was given.
    #[error("certificate chain is empty")]
    EmptyChain,
    /// The certificate has no URI SAN, so no SPIFFE ID.
    #[error("certificate contains no URI SAN")]
    NoUriSan,
    /// An X509-SVID has exactly one URI SAN; this has several.
    #[error("certificate contains more than one URI SAN")]
    MultipleUriSans,
    /// The URI SAN is not a valid SPIFFE ID.
    #[error("certificate URI SAN is not a valid SPIFFE ID: {0}")]
    InvalidSpiffeId(IdError),
    /// The leaf has basicConstraints CA=true.
    #[error("leaf certificate must not have CA flag set to true")]
    LeafIsCa,
    /// The leaf has no keyUsage, or one without digitalSignature.
    #[error("leaf certificate must have 'digitalSignature' set as key usage")]
    LeafMissingDigitalSignature,
    /// The leaf may sign certificates.
    #[error("leaf certificate must not have 'keyCertSign' set as key usage")]
    LeafHasKeyCertSign,
    /// The leaf may sign CRLs.
    #[error("leaf certificate must not have 'cRLSign' set as key usage")]
    LeafHasCrlSign,
    /// An intermediate is not a CA.
    #[error("signing certificate {index} must have CA flag set to true")]
    SigningCertNotCa {
        /// Position in the chain.
        index: usize,
    },
    /// An intermediate may not sign certificates.
    #[error("signing certificate {index} must have 'keyCertSign' set as key usage")]
    SigningCertMissingKeyCertSign {
        /// Position in the chain.
        index: usize,
    },
    /// `now` is before notBefore.
    #[error("certificate {index} is not valid until {not_before} (now {now}, unix seconds)")]
    NotYetValid {
        /// Position in the chain.
        index: usize,
        /// notBefore, unix seconds.
        not_before: i64,
        /// The time checked.
        now: i64,
    },
    /// `now` is after notAfter.
    #[error("certificate {index} expired at {not_after} (now {now}, unix seconds)")]
    Expired {
        /// Position in the chain.
        index: usize,
        /// notAfter, unix seconds.
        not_after: i64,
        /// The time checked.
        now: i64,
    },
    /// A certificate's issuer name is not the next certificate's subject.
    #[error("certificate {index} was not issued by the next certificate in the chain")]
    IssuerMismatch {
        /// Position of the issued certificate.
        index: usize,
    },
    /// A certificate's signature does not verify with its issuer's key.
    #[error("certificate {index} has an invalid signature")]
    BadSignature {
        /// Position of the signed certificate.
        index: usize,
    },
    /// The signature algorithm, or the issuer key type it needs, is not one
    /// we verify.
    #[error(
        "certificate {index} has an unsupported signature algorithm {algorithm} for its issuer's key"
    )]
    UnsupportedSignature {
        /// Position of the signed certificate.
        index: usize,
        /// Dotted OID of the signature algorithm.
        algorithm: String,
    },
    /// A CA's pathLenConstraint allows fewer intermediates below it.
    #[error("certificate {index} allows at most {max} intermediates below it")]
    PathLenExceeded {
        /// Position of the constraining CA.
        index: usize,
        /// Its pathLenConstraint.
        max: u32,
    },
    /// No root signed the top of the chain (Go's message).
    #[error("x509: certificate signed by unknown authority")]
    UnknownAuthority,
}

// === PEM and DER ===

/// Describes a PEM error without echoing any of the input, which may be a
/// private key.
fn pem_error(err: &pem::PemError) -> SvidError {
    let what = match err {
        pem::PemError::MismatchedTags(..) => "BEGIN and END labels differ",
        pem::PemError::MalformedFraming => "malformed framing",
        pem::PemError::MissingBeginTag => "missing BEGIN line",
        pem::PemError::MissingEndTag => "missing END line",
        pem::PemError::MissingData => "missing data",
        pem::PemError::InvalidData(_) => "invalid base64 data",
        pem::PemError::InvalidHeader(_) => "invalid header",
        pem::PemError::NotUtf8(_) => "not UTF-8",
    };
    SvidError::Pem(what)
}

fn parse_pem_blocks(input: &[u8]) -> Result<Vec<Pem>, SvidError> {
    let blocks = pem::parse_many(input).map_err(|e| pem_error(&e))?;
    if blocks.is_empty() {
        return Err(SvidError::NoPemBlocks);
    }
    Ok(blocks)
}

/// Parses one whole DER certificate (trailing bytes are an error, as in Go).
fn parse_cert(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    match x509_parser::parse_x509_certificate(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err("trailing data after certificate".to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

fn parse_chain_cert(der: &[u8], index: usize) -> Result<X509Certificate<'_>, SvidError> {
    parse_cert(der).map_err(|reason| SvidError::MalformedCertificate { index, reason })
}

/// Reads every `CERTIFICATE` block of a PEM file, in order, checking that
/// each parses. Other blocks (such as a private key in the same file) are
/// skipped, as go-spiffe does; a file with blocks but no certificate, or no
/// blocks at all, is an error.
pub fn parse_pem_certs(pem: &[u8]) -> Result<Vec<Vec<u8>>, SvidError> {
    let certs: Vec<Vec<u8>> = parse_pem_blocks(pem)?
        .into_iter()
        .filter(|block| block.tag() == CERTIFICATE_LABEL)
        .map(Pem::into_contents)
        .collect();
    if certs.is_empty() {
        return Err(SvidError::NoCertificates);
    }
    for (index, der) in certs.iter().enumerate() {
        parse_chain_cert(der, index)?;
    }
    Ok(certs)
}

/// Splits concatenated DER certificates (the Workload API's bundle and
/// chain format) into individual certificates.
pub fn parse_der_certs(concatenated: &[u8]) -> Result<Vec<Vec<u8>>, SvidError> {
    let mut rest = concatenated;
    let mut certs = Vec::new();
    while !rest.is_empty() {
        let index = certs.len();
        let (after, _) = x509_parser::parse_x509_certificate(rest).map_err(|e| {
            SvidError::MalformedCertificate {
                index,
                reason: e.to_string(),
            }
        })?;
        let len = rest.len() - after.len();
        certs.push(rest[..len].to_vec());
        rest = after;
    }
    Ok(certs)
}

/// PEM-encodes certificates, `\n` line endings, one block each.
pub fn certs_to_pem(ders: &[Vec<u8>]) -> String {
    let blocks: Vec<Pem> = ders
        .iter()
        .map(|der| Pem::new(CERTIFICATE_LABEL, der.clone()))
        .collect();
    pem::encode_many_config(&blocks, EncodeConfig::new().set_line_ending(LineEnding::LF))
}

/// Reads the first unencrypted PKCS#8 `PRIVATE KEY` block of a PEM file
/// (skipping certificates around it) and returns its DER, after checking the
/// PKCS#8 envelope. Any key algorithm is accepted here; loading the key is
/// up to its user.
pub fn parse_pkcs8_key_pem(pem: &[u8]) -> Result<Vec<u8>, SvidError> {
    let blocks = parse_pem_blocks(pem)?;
    let mut other_key_label = None;
    for block in blocks {
        if block.tag() == PKCS8_LABEL {
            let der = block.into_contents();
            der::check_pkcs8(&der).map_err(|_| SvidError::MalformedPrivateKey)?;
            return Ok(der);
        }
        if block.tag().ends_with("PRIVATE KEY") {
            other_key_label.get_or_insert_with(|| block.tag().to_owned());
        }
    }
    Err(match other_key_label {
        Some(label) => SvidError::NotPkcs8(label),
        None => SvidError::NoPrivateKey,
    })
}

/// PEM-encodes a PKCS#8 private key.
pub fn pkcs8_key_to_pem(pkcs8_der: &[u8]) -> String {
    let block = Pem::new(PKCS8_LABEL, pkcs8_der.to_vec());
    pem::encode_config(&block, EncodeConfig::new().set_line_ending(LineEnding::LF))
}

// === Single-certificate accessors ===

/// The SPIFFE ID in a certificate's single URI SAN.
pub fn spiffe_id_of_cert(der: &[u8]) -> Result<SpiffeId, SvidError> {
    let cert = parse_chain_cert(der, 0)?;
    id_from_cert(&cert, 0)
}

/// The serial number as lowercase hex without leading zeros (`"0"` for
/// zero), as Go's `SerialNumber.Text(16)` prints it.
pub fn serial_hex(der: &[u8]) -> Result<String, SvidError> {
    let cert = parse_chain_cert(der, 0)?;
    let hex: String = cert
        .tbs_certificate
        .raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let trimmed = hex.trim_start_matches('0');
    Ok(if trimmed.is_empty() {
        "0".to_owned()
    } else {
        trimmed.to_owned()
    })
}

/// notAfter, in unix seconds.
pub fn not_after_unix(der: &[u8]) -> Result<i64, SvidError> {
    let cert = parse_chain_cert(der, 0)?;
    Ok(cert.validity().not_after.timestamp())
}

/// notBefore, in unix seconds.
pub fn not_before_unix(der: &[u8]) -> Result<i64, SvidError> {
    let cert = parse_chain_cert(der, 0)?;
    Ok(cert.validity().not_before.timestamp())
}

/// The certificate's SubjectPublicKeyInfo DER.
pub fn spki_der_of_cert(der: &[u8]) -> Result<Vec<u8>, SvidError> {
    let cert = parse_chain_cert(der, 0)?;
    Ok(cert.public_key().raw.to_vec())
}

/// The certificate's key identifiers, lowercase hex (SPIRE's authority IDs): its own
/// `subjectKeyIdentifier` and the `authorityKeyIdentifier` naming its issuer's key, each `None`
/// when the extension is absent.
pub fn key_ids(der: &[u8]) -> Result<(Option<String>, Option<String>), SvidError> {
    use x509_parser::extensions::ParsedExtension;
    let cert = parse_chain_cert(der, 0)?;
    let (mut ski, mut aki) = (None, None);
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => ski = Some(hex_lower(id.0)),
            ParsedExtension::AuthorityKeyIdentifier(a) => {
                aki = a.key_identifier.as_ref().map(|id| hex_lower(id.0))
            }
            _ => {}
        }
    }
    Ok((ski, aki))
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// === SVID structure ===

fn id_from_cert(cert: &X509Certificate<'_>, index: usize) -> Result<SpiffeId, SvidError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| malformed(index, &e))?;
    let mut uris = san
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        });
    match (uris.next(), uris.next()) {
        (None, _) => Err(SvidError::NoUriSan),
        (Some(uri), None) => SpiffeId::from_str(uri).map_err(SvidError::InvalidSpiffeId),
        (Some(_), Some(_)) => Err(SvidError::MultipleUriSans),
    }
}

fn malformed(index: usize, err: &impl std::fmt::Display) -> SvidError {
    SvidError::MalformedCertificate {
        index,
        reason: err.to_string(),
    }
}

/// Leaf rules, in go-spiffe's order: ID, then CA flag, then key usage.
fn validate_leaf(leaf: &X509Certificate<'_>) -> Result<SpiffeId, SvidError> {
    let id = id_from_cert(leaf, 0)?;
    let bc = leaf.basic_constraints().map_err(|e| malformed(0, &e))?;
    if bc.is_some_and(|bc| bc.value.ca) {
        return Err(SvidError::LeafIsCa);
    }
    // An absent keyUsage grants nothing, so it lacks digitalSignature.
    let ku = leaf
        .key_usage()
        .map_err(|e| malformed(0, &e))?
        .ok_or(SvidError::LeafMissingDigitalSignature)?;
    if !ku.value.digital_signature() {
        return Err(SvidError::LeafMissingDigitalSignature);
    }
    if ku.value.key_cert_sign() {
        return Err(SvidError::LeafHasKeyCertSign);
    }
    if ku.value.crl_sign() {
        return Err(SvidError::LeafHasCrlSign);
    }
    Ok(id)
}

fn validate_signing_cert(cert: &X509Certificate<'_>, index: usize) -> Result<(), SvidError> {
    let bc = cert.basic_constraints().map_err(|e| malformed(index, &e))?;
    if !bc.is_some_and(|bc| bc.value.ca) {
        return Err(SvidError::SigningCertNotCa { index });
    }
    let ku = cert.key_usage().map_err(|e| malformed(index, &e))?;
    if !ku.is_some_and(|ku| ku.value.key_cert_sign()) {
        return Err(SvidError::SigningCertMissingKeyCertSign { index });
    }
    Ok(())
}

fn validate_parsed(chain: &[X509Certificate<'_>]) -> Result<SpiffeId, SvidError> {
    let (leaf, signing) = chain.split_first().ok_or(SvidError::EmptyChain)?;
    let id = validate_leaf(leaf)?;
    for (i, cert) in signing.iter().enumerate() {
        validate_signing_cert(cert, i + 1)?;
    }
    Ok(id)
}

fn parse_chain(chain_der: &[Vec<u8>]) -> Result<Vec<X509Certificate<'_>>, SvidError> {
    chain_der
        .iter()
        .enumerate()
        .map(|(index, der)| parse_chain_cert(der, index))
        .collect()
}

/// Checks the structure of an X509-SVID chain (leaf first, then any
/// intermediates) and returns the leaf's SPIFFE ID. Time and signatures are
/// not checked; see [`verify_svid_chain`].
///
/// - the leaf has exactly one URI SAN, and it is a SPIFFE ID;
/// - the leaf is not a CA (CA=false or no basicConstraints);
/// - the leaf's keyUsage is present, has digitalSignature, and has neither
///   keyCertSign nor cRLSign;
/// - every other certificate is a CA with keyCertSign.
pub fn validate_svid_chain(chain_der: &[Vec<u8>]) -> Result<SpiffeId, SvidError> {
    validate_parsed(&parse_chain(chain_der)?)
}

// === Chain verification ===

fn check_validity(cert: &X509Certificate<'_>, index: usize, now: i64) -> Result<(), SvidError> {
    let not_before = cert.validity().not_before.timestamp();
    let not_after = cert.validity().not_after.timestamp();
    if now < not_before {
        return Err(SvidError::NotYetValid {
            index,
            not_before,
            now,
        });
    }
    if now > not_after {
        return Err(SvidError::Expired {
            index,
            not_after,
            now,
        });
    }
    Ok(())
}

/// Checks a CA's pathLenConstraint, given how many intermediates sit between
/// it and the leaf.
fn check_path_len(
    ca: &X509Certificate<'_>,
    index: usize,
    intermediates_below: usize,
) -> Result<(), SvidError> {
    let bc = ca.basic_constraints().map_err(|e| malformed(index, &e))?;
    if let Some(max) = bc.and_then(|bc| bc.value.path_len_constraint)
        && usize::try_from(max).is_ok_and(|max| intermediates_below > max)
    {
        return Err(SvidError::PathLenExceeded { index, max });
    }
    Ok(())
}

/// Why one signature check failed; turned into an [`SvidError`] by callers
/// who know the certificate's position.
enum SignatureError {
    Unsupported(String),
    Invalid,
}

/// Picks ring's algorithm from the signature OID and the issuer's key type.
fn verification_algorithm(
    sig_alg: &[u8],
    issuer_spki: &der::Spki<'_>,
) -> Option<&'static dyn VerificationAlgorithm> {
    let curve = issuer_spki
        .parameters
        .filter(|p| p.tag == der::TAG_OID)
        .map(|p| p.value);
    let alg: &'static dyn VerificationAlgorithm = match (sig_alg, issuer_spki.algorithm, curve) {
        (oid::ECDSA_SHA256, oid::EC_PUBLIC_KEY, Some(oid::P256)) => {
            &signature::ECDSA_P256_SHA256_ASN1
        }
        (oid::ECDSA_SHA384, oid::EC_PUBLIC_KEY, Some(oid::P256)) => {
            &signature::ECDSA_P256_SHA384_ASN1
        }
        (oid::ECDSA_SHA256, oid::EC_PUBLIC_KEY, Some(oid::P384)) => {
            &signature::ECDSA_P384_SHA256_ASN1
        }
        (oid::ECDSA_SHA384, oid::EC_PUBLIC_KEY, Some(oid::P384)) => {
            &signature::ECDSA_P384_SHA384_ASN1
        }
        (oid::RSA_SHA256, oid::RSA_ENCRYPTION, _) => &signature::RSA_PKCS1_2048_8192_SHA256,
        (oid::RSA_SHA384, oid::RSA_ENCRYPTION, _) => &signature::RSA_PKCS1_2048_8192_SHA384,
        (oid::RSA_SHA512, oid::RSA_ENCRYPTION, _) => &signature::RSA_PKCS1_2048_8192_SHA512,
        (oid::ED25519, oid::ED25519, _) => &signature::ED25519,
        _ => return None,
    };
    Some(alg)
}

/// Verifies `cert`'s signature with the key in `issuer`.
fn verify_signature(
    cert: &X509Certificate<'_>,
    issuer: &X509Certificate<'_>,
) -> Result<(), SignatureError> {
    let sig_alg = &cert.signature_algorithm.algorithm;
    // The signed TBS names the algorithm too; a mismatch with the outer one
    // is a sign of tampering (RFC 5280 §4.1.1.2).
    if cert.tbs_certificate.signature.algorithm != *sig_alg {
        return Err(SignatureError::Invalid);
    }
    let unsupported = || SignatureError::Unsupported(sig_alg.to_id_string());
    let issuer_spki = der::parse_spki(issuer.public_key().raw).map_err(|_| unsupported())?;
    let alg = verification_algorithm(sig_alg.as_bytes(), &issuer_spki).ok_or_else(unsupported)?;
    if cert.signature_value.unused_bits != 0 {
        return Err(SignatureError::Invalid);
    }
    UnparsedPublicKey::new(alg, issuer_spki.key)
        .verify(cert.tbs_certificate.as_ref(), &cert.signature_value.data)
        .map_err(|_| SignatureError::Invalid)
}

fn signature_error(index: usize, err: SignatureError) -> SvidError {
    match err {
        SignatureError::Unsupported(algorithm) => {
            SvidError::UnsupportedSignature { index, algorithm }
        }
        SignatureError::Invalid => SvidError::BadSignature { index },
    }
}

/// Verifies an X509-SVID chain (leaf first, then intermediates; the root
/// may be included at the end) against trust roots at time `now_unix`, and
/// returns the leaf's SPIFFE ID.
///
/// On top of [`validate_svid_chain`]: every certificate, and the root that
/// completes the chain, must be within its validity period (inclusive
/// bounds, as in Go); each certificate's issuer name must be the next one's
/// subject and its signature must verify with the next one's key; CA
/// pathLenConstraints must hold; the top of the chain must be one of the
/// roots or be signed by one of them. Roots themselves are trusted as given
/// (no CA-flag requirement, as in Go). The roots should be the X.509
/// authorities of the leaf's trust domain: choosing them is the caller's job.
pub fn verify_svid_chain(
    chain_der: &[Vec<u8>],
    roots_der: &[Vec<u8>],
    now_unix: i64,
) -> Result<SpiffeId, SvidError> {
    let chain = parse_chain(chain_der)?;
    let id = validate_parsed(&chain)?;
    let roots = roots_der
        .iter()
        .enumerate()
        .map(|(index, der)| {
            parse_cert(der).map_err(|reason| SvidError::MalformedRoot { index, reason })
        })
        .collect::<Result<Vec<_>, _>>()?;

    for (index, cert) in chain.iter().enumerate() {
        check_validity(cert, index, now_unix)?;
        if index > 0 {
            // Certificates 1..index-1 are the intermediates below this one.
            check_path_len(cert, index, index - 1)?;
        }
    }
    for (index, pair) in chain.windows(2).enumerate() {
        let [cert, issuer] = pair else { continue };
        if cert.issuer().as_raw() != issuer.subject().as_raw() {
            return Err(SvidError::IssuerMismatch { index });
        }
        verify_signature(cert, issuer).map_err(|e| signature_error(index, e))?;
    }

    let (Some(top), Some(top_der)) = (chain.last(), chain_der.last()) else {
        return Err(SvidError::EmptyChain);
    };
    let top_index = chain.len().saturating_sub(1);
    // The chain may already end with a trusted root.
    if roots_der.iter().any(|root| root == top_der) {
        return Ok(id);
    }
    // Otherwise some root must have signed the top. Several roots can share
    // a subject during CA rotation, so try each; report the most specific
    // failure if none works.
    let mut failure = SvidError::UnknownAuthority;
    let root_index = chain.len();
    for root in roots
        .iter()
        .filter(|r| r.subject().as_raw() == top.issuer().as_raw())
    {
        match verify_signature(top, root) {
            Ok(()) => {
                check_validity(root, root_index, now_unix)?;
                check_path_len(root, root_index, top_index)?;
                return Ok(id);
            }
            Err(SignatureError::Unsupported(algorithm)) => {
                failure = SvidError::UnsupportedSignature {
                    index: top_index,
                    algorithm,
                };
            }
            Err(SignatureError::Invalid) => {}
        }
    }
    Err(failure)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_errors_do_not_echo_input() {
        let secret = b"-----BEGIN PRIVATE KEY-----\nSECRET!!KEY\n-----END PRIVATE KEY-----\n";
        let err = parse_pkcs8_key_pem(secret).unwrap_err();
        assert_eq!(err, SvidError::Pem("invalid base64 data"));
        assert!(!format!("{err} {err:?}").contains("SECRET"));
    }

    #[test]
    fn other_key_formats_are_named() {
        let sec1 = pem::encode(&Pem::new("EC PRIVATE KEY", vec![1, 2, 3]));
        assert_eq!(
            parse_pkcs8_key_pem(sec1.as_bytes()),
            Err(SvidError::NotPkcs8("EC PRIVATE KEY".into()))
        );
        let cert_only = pem::encode(&Pem::new("CERTIFICATE", vec![1, 2, 3]));
        assert_eq!(
            parse_pkcs8_key_pem(cert_only.as_bytes()),
            Err(SvidError::NoPrivateKey)
        );
        assert_eq!(parse_pkcs8_key_pem(b""), Err(SvidError::NoPemBlocks));
        let bad = pkcs8_key_to_pem(&[0x30, 0x03, 0x02, 0x01, 0x05]);
        assert_eq!(
            parse_pkcs8_key_pem(bad.as_bytes()),
            Err(SvidError::MalformedPrivateKey)
        );
    }

    #[test]
    fn empty_chain() {
        assert_eq!(validate_svid_chain(&[]), Err(SvidError::EmptyChain));
        assert_eq!(verify_svid_chain(&[], &[], 0), Err(SvidError::EmptyChain));
    }
}
