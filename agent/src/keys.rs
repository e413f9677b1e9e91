//! Private key material.
//!
//! Every private key the agent holds (its own SVID key and the workload SVID keys) is generated on
//! this node and never leaves it: the server only ever sees CSRs. Key bytes live in
//! [`PrivateKeyDer`], whose `Debug` prints `[redacted]` so that a stray `?key` in a log line or a
//! derived `Debug` on a containing struct cannot leak them.

use std::fmt;

use zeroize::Zeroizing;

/// Key generation or CSR failures.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("generating a P-256 key: {0}")]
    Generate(#[source] rcgen::Error),
    #[error("building a CSR: {0}")]
    Csr(#[source] rcgen::Error),
    #[error("parsing a private key: {0}")]
    Parse(#[source] rcgen::Error),
}

/// A PKCS#8 DER private key, zeroized on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateKeyDer(Zeroizing<Vec<u8>>);

/// A freshly generated key pair with its PKCS#8 encoding.
pub struct KeyPair {
    pkcs8: PrivateKeyDer,
    inner: rcgen::KeyPair,
}

// === impl PrivateKeyDer ===

impl PrivateKeyDer {
    pub fn new(pkcs8_der: Vec<u8>) -> Self {
        Self(Zeroizing::new(pkcs8_der))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The key as a rustls private key (for the agent's mTLS client certificate).
    pub fn to_rustls(&self) -> rustls_pki_types::PrivateKeyDer<'static> {
        rustls_pki_types::PrivateKeyDer::Pkcs8(rustls_pki_types::PrivatePkcs8KeyDer::from(
            self.0.to_vec(),
        ))
    }

    /// PEM (`PRIVATE KEY`), for files written with mode 0600.
    pub fn to_pem(&self) -> Zeroizing<String> {
        Zeroizing::new(pem::encode(&pem::Pem::new("PRIVATE KEY", self.0.to_vec())))
    }

    /// Parses a `PRIVATE KEY` PEM block.
    pub fn from_pem(text: &str) -> Option<Self> {
        let block = pem::parse(text).ok()?;
        (block.tag() == "PRIVATE KEY").then(|| Self::new(block.into_contents()))
    }
}

impl fmt::Debug for PrivateKeyDer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

// === impl KeyPair ===

impl KeyPair {
    /// Generates a P-256 key (the key type SPIRE uses by default for both agent and workload
    /// SVIDs, and the one every SPIFFE library accepts).
    pub fn generate() -> Result<Self, KeyError> {
        let inner = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(KeyError::Generate)?;
        Ok(Self {
            pkcs8: PrivateKeyDer::new(inner.serialize_der()),
            inner,
        })
    }

    /// Re-creates a key pair from its PKCS#8 encoding (a persisted agent key).
    pub fn from_pkcs8(key: &PrivateKeyDer) -> Result<Self, KeyError> {
        let der = rustls_pki_types::PrivatePkcs8KeyDer::from(key.as_bytes());
        let inner =
            rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der, &rcgen::PKCS_ECDSA_P256_SHA256)
                .map_err(KeyError::Parse)?;
        Ok(Self {
            pkcs8: key.clone(),
            inner,
        })
    }

    pub fn private_key(&self) -> &PrivateKeyDer {
        &self.pkcs8
    }

    pub fn into_private_key(self) -> PrivateKeyDer {
        self.pkcs8
    }

    /// A PKCS#10 CSR (DER) for this key. The server takes only the public key from it (it sets
    /// the subject and SANs from the registration entry), so the subject is left empty.
    pub fn csr_der(&self) -> Result<Vec<u8>, KeyError> {
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        let csr = params
            .serialize_request(&self.inner)
            .map_err(KeyError::Csr)?;
        Ok(csr.der().to_vec())
    }
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("algorithm", &"ECDSA P-256")
            .field("private_key", &self.pkcs8)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_key_bytes() {
        let kp = KeyPair::generate().unwrap();
        let dbg = format!("{kp:?} {:?}", kp.private_key());
        assert!(dbg.contains("[redacted]"));
        assert!(!dbg.contains(&format!("{:?}", &kp.private_key().as_bytes()[..8])));
    }

    #[test]
    fn csr_and_pem_round_trip() {
        let kp = KeyPair::generate().unwrap();
        let csr = kp.csr_der().unwrap();
        assert!(!csr.is_empty());
        let pem = kp.private_key().to_pem();
        let back = PrivateKeyDer::from_pem(&pem).unwrap();
        assert_eq!(&back, kp.private_key());
        KeyPair::from_pkcs8(&back).unwrap();
    }
}
