//! A minimal DER reader and writer for the few structures this crate handles
//! by hand: SubjectPublicKeyInfo (to convert keys to and from JWKs and to pick
//! a ring verification algorithm) and the PKCS#8 envelope.
//!
//! Why not a full ASN.1 crate: x509-parser already parses certificates, and
//! what is left is small enough that a short reader keeps the dependency list
//! to the workspace's. Every function here is total: any input, however
//! malformed, yields an error rather than a panic.

/// DER tag of an INTEGER.
pub(crate) const TAG_INTEGER: u8 = 0x02;
/// DER tag of a BIT STRING.
pub(crate) const TAG_BIT_STRING: u8 = 0x03;
/// DER tag of an OCTET STRING.
pub(crate) const TAG_OCTET_STRING: u8 = 0x04;
/// DER tag of NULL.
pub(crate) const TAG_NULL: u8 = 0x05;
/// DER tag of an OBJECT IDENTIFIER.
pub(crate) const TAG_OID: u8 = 0x06;
/// DER tag of a (constructed) SEQUENCE.
pub(crate) const TAG_SEQUENCE: u8 = 0x30;

/// Object identifiers, as the content octets of their DER encoding (which is
/// what both our reader and x509-parser's `Oid::as_bytes` hand out).
pub(crate) mod oid {
    /// id-ecPublicKey (1.2.840.10045.2.1).
    pub(crate) const EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    /// prime256v1 / P-256 (1.2.840.10045.3.1.7).
    pub(crate) const P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    /// secp384r1 / P-384 (1.3.132.0.34).
    pub(crate) const P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
    /// secp521r1 / P-521 (1.3.132.0.35).
    pub(crate) const P521: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x23];
    /// rsaEncryption (1.2.840.113549.1.1.1).
    pub(crate) const RSA_ENCRYPTION: &[u8] =
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    /// id-Ed25519 (1.3.101.112).
    pub(crate) const ED25519: &[u8] = &[0x2b, 0x65, 0x70];
    /// ecdsa-with-SHA256 (1.2.840.10045.4.3.2).
    pub(crate) const ECDSA_SHA256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
    /// ecdsa-with-SHA384 (1.2.840.10045.4.3.3).
    pub(crate) const ECDSA_SHA384: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03];
    /// sha256WithRSAEncryption (1.2.840.113549.1.1.11).
    pub(crate) const RSA_SHA256: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b];
    /// sha384WithRSAEncryption (1.2.840.113549.1.1.12).
    pub(crate) const RSA_SHA384: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c];
    /// sha512WithRSAEncryption (1.2.840.113549.1.1.13).
    pub(crate) const RSA_SHA512: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d];
}

/// The input is not the DER structure that was expected. Callers wrap it
/// with their own context, so it carries no detail of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DerError;

/// One tag-length-value element.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tlv<'a> {
    pub(crate) tag: u8,
    pub(crate) value: &'a [u8],
}

// === DER reading ===

/// Reads one element off the front of `input`, returning it and the rest.
pub(crate) fn read_tlv(input: &[u8]) -> Result<(Tlv<'_>, &[u8]), DerError> {
    let (&tag, rest) = input.split_first().ok_or(DerError)?;
    // High-tag-number form never occurs in the structures we read.
    if tag & 0x1f == 0x1f {
        return Err(DerError);
    }
    let (&first, rest) = rest.split_first().ok_or(DerError)?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        // 0x80 is BER's indefinite length, which DER forbids; more than four
        // length octets would describe an element larger than 4 GiB.
        if n == 0 || n > 4 || rest.len() < n {
            return Err(DerError);
        }
        let (len_bytes, rest) = rest.split_at(n);
        let len = len_bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, rest)
    };
    if rest.len() < len {
        return Err(DerError);
    }
    let (value, rest) = rest.split_at(len);
    Ok((Tlv { tag, value }, rest))
}

/// Reads one element that must carry `tag`, returning its value and the rest.
pub(crate) fn expect_tlv(input: &[u8], tag: u8) -> Result<(&[u8], &[u8]), DerError> {
    let (tlv, rest) = read_tlv(input)?;
    if tlv.tag != tag {
        return Err(DerError);
    }
    Ok((tlv.value, rest))
}

/// Reads exactly one element carrying `tag` that spans all of `input`.
pub(crate) fn expect_only(input: &[u8], tag: u8) -> Result<&[u8], DerError> {
    let (value, rest) = expect_tlv(input, tag)?;
    if !rest.is_empty() {
        return Err(DerError);
    }
    Ok(value)
}

/// Returns the magnitude of a non-negative DER INTEGER body, without the
/// leading zero octet DER adds when the high bit is set.
pub(crate) fn unsigned_integer_magnitude(body: &[u8]) -> Result<&[u8], DerError> {
    match body {
        [] => Err(DerError),
        // Negative: RSA moduli and exponents never are.
        [first, ..] if first & 0x80 != 0 => Err(DerError),
        _ => {
            let skip = body.iter().take_while(|&&b| b == 0).count();
            Ok(&body[skip..])
        }
    }
}

// === DER writing ===

/// Appends one element to `out`.
pub(crate) fn write_tlv(out: &mut Vec<u8>, tag: u8, value: &[u8]) {
    out.push(tag);
    let len = value.len();
    match u8::try_from(len) {
        Ok(short) if short < 0x80 => out.push(short),
        _ => {
            let bytes = len.to_be_bytes();
            let skip = bytes.iter().take_while(|&&b| b == 0).count();
            let significant = &bytes[skip..];
            // At most size_of::<usize>() octets, so the count fits the low seven bits.
            out.push(0x80 | significant.len() as u8);
            out.extend_from_slice(significant);
        }
    }
    out.extend_from_slice(value);
}

/// Returns one encoded element.
pub(crate) fn tlv(tag: u8, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 6);
    write_tlv(&mut out, tag, value);
    out
}

/// Encodes an unsigned big-endian magnitude as a DER INTEGER.
pub(crate) fn unsigned_integer(magnitude: &[u8]) -> Vec<u8> {
    let skip = magnitude.iter().take_while(|&&b| b == 0).count();
    let trimmed = &magnitude[skip..];
    let mut body = Vec::with_capacity(trimmed.len() + 1);
    // DER integers are two's complement: a set high bit needs a zero octet
    // in front to stay positive, and zero itself is a single zero octet.
    if trimmed.first().is_none_or(|&b| b & 0x80 != 0) {
        body.push(0);
    }
    body.extend_from_slice(trimmed);
    tlv(TAG_INTEGER, &body)
}

// === SubjectPublicKeyInfo ===

/// The parts of a SubjectPublicKeyInfo that key handling needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Spki<'a> {
    /// Algorithm OID content octets.
    pub(crate) algorithm: &'a [u8],
    /// Algorithm parameters, if any.
    pub(crate) parameters: Option<Tlv<'a>>,
    /// The subjectPublicKey BIT STRING content, after the unused-bits octet.
    pub(crate) key: &'a [u8],
}

/// Parses a DER SubjectPublicKeyInfo that spans all of `der`.
pub(crate) fn parse_spki(der: &[u8]) -> Result<Spki<'_>, DerError> {
    let body = expect_only(der, TAG_SEQUENCE)?;
    let (alg_id, rest) = expect_tlv(body, TAG_SEQUENCE)?;
    let (algorithm, params_rest) = expect_tlv(alg_id, TAG_OID)?;
    let parameters = if params_rest.is_empty() {
        None
    } else {
        let (params, after) = read_tlv(params_rest)?;
        if !after.is_empty() {
            return Err(DerError);
        }
        Some(params)
    };
    let bits = expect_only(rest, TAG_BIT_STRING)?;
    // Keys are whole octets; a non-zero unused-bit count means corruption.
    let (&unused, key) = bits.split_first().ok_or(DerError)?;
    if unused != 0 {
        return Err(DerError);
    }
    Ok(Spki {
        algorithm,
        parameters,
        key,
    })
}

/// Builds a SubjectPublicKeyInfo. `parameters` is an already-encoded element
/// (an OID for EC curves, NULL for RSA) or `None` (Ed25519).
pub(crate) fn build_spki(algorithm: &[u8], parameters: Option<&[u8]>, key: &[u8]) -> Vec<u8> {
    let mut alg_id = tlv(TAG_OID, algorithm);
    if let Some(params) = parameters {
        alg_id.extend_from_slice(params);
    }
    let mut bits = Vec::with_capacity(key.len() + 1);
    bits.push(0);
    bits.extend_from_slice(key);

    let mut body = tlv(TAG_SEQUENCE, &alg_id);
    write_tlv(&mut body, TAG_BIT_STRING, &bits);
    tlv(TAG_SEQUENCE, &body)
}

// === PKCS#8 ===

/// Checks that `der` is a PKCS#8 PrivateKeyInfo / OneAsymmetricKey envelope
/// (RFC 5958): version 0 or 1, an algorithm identifier and a non-empty
/// private key. The key inside is algorithm-specific and is left to whoever
/// loads it (ring, rcgen), so any algorithm passes here.
pub(crate) fn check_pkcs8(der: &[u8]) -> Result<(), DerError> {
    let body = expect_only(der, TAG_SEQUENCE)?;
    let (version, rest) = expect_tlv(body, TAG_INTEGER)?;
    if version != [0] && version != [1] {
        return Err(DerError);
    }
    let (alg_id, rest) = expect_tlv(rest, TAG_SEQUENCE)?;
    expect_tlv(alg_id, TAG_OID)?;
    let (private_key, mut rest) = expect_tlv(rest, TAG_OCTET_STRING)?;
    if private_key.is_empty() {
        return Err(DerError);
    }
    // Optional [0] attributes and [1] public key: only their framing matters.
    while !rest.is_empty() {
        let (_, after) = read_tlv(rest)?;
        rest = after;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lengths_round_trip() {
        for len in [0usize, 1, 127, 128, 255, 256, 70_000] {
            let value = vec![0xab; len];
            let encoded = tlv(TAG_OCTET_STRING, &value);
            let (parsed, rest) = read_tlv(&encoded).unwrap();
            assert!(rest.is_empty());
            assert_eq!(parsed.tag, TAG_OCTET_STRING);
            assert_eq!(parsed.value, &value[..]);
        }
    }

    #[test]
    fn rejects_truncated_and_indefinite() {
        assert!(read_tlv(&[]).is_err());
        assert!(read_tlv(&[0x04]).is_err());
        assert!(read_tlv(&[0x04, 0x05, 1, 2]).is_err());
        assert!(read_tlv(&[0x30, 0x80, 0, 0]).is_err());
        assert!(read_tlv(&[0x04, 0x85, 1, 1, 1, 1, 1]).is_err());
        assert!(read_tlv(&[0x1f, 0x01, 0x00]).is_err());
    }

    #[test]
    fn integers() {
        assert_eq!(unsigned_integer(&[]), vec![2, 1, 0]);
        assert_eq!(unsigned_integer(&[0, 0, 1]), vec![2, 1, 1]);
        assert_eq!(unsigned_integer(&[0x80]), vec![2, 2, 0, 0x80]);
        assert_eq!(unsigned_integer_magnitude(&[0, 0x80]).unwrap(), &[0x80]);
        assert!(unsigned_integer_magnitude(&[0x80]).is_err());
        assert!(unsigned_integer_magnitude(&[]).is_err());
    }

    #[test]
    fn spki_round_trip() {
        let null = tlv(TAG_NULL, &[]);
        let der = build_spki(oid::RSA_ENCRYPTION, Some(&null), &[1, 2, 3]);
        let spki = parse_spki(&der).unwrap();
        assert_eq!(spki.algorithm, oid::RSA_ENCRYPTION);
        assert_eq!(spki.parameters.map(|p| p.tag), Some(TAG_NULL));
        assert_eq!(spki.key, &[1, 2, 3]);

        let der = build_spki(oid::ED25519, None, &[9; 32]);
        let spki = parse_spki(&der).unwrap();
        assert!(spki.parameters.is_none());
        assert_eq!(spki.key, &[9; 32]);
    }
}
