//! The agent's node attestors: what it sends in `AttestAgent`.

use std::path::{Path, PathBuf};

use sigil_proto::agent::AttestAgentRequest;

use super::config::{JoinToken, PsatConfig};

/// How this agent proves its node to the server.
#[derive(Clone, Debug)]
pub enum NodeAttestor {
    /// A single-use join token: attests once; the agent then renews its SVID.
    JoinToken(JoinToken),
    /// The projected service account token of the agent's pod (SPIRE's `k8s_psat`): fresh
    /// evidence at every attestation, so the agent attests again instead of renewing, and after
    /// an eviction.
    K8sPsat(PsatConfig),
}

/// The evidence could not be gathered (SPIRE's agent plugin messages).
#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    #[error("unable to load token from {}: {source}", .path.display())]
    ReadToken {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("unable to load token from {}: {:?} is empty", .0.display(), .0.display().to_string())]
    EmptyToken(PathBuf),
}

// === impl NodeAttestor ===

impl NodeAttestor {
    /// SPIRE's plugin name, as the server records it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::JoinToken(_) => "join_token",
            Self::K8sPsat(_) => "k8s_psat",
        }
    }

    /// Whether the agent attests again (rather than renewing) to get a new SVID.
    pub fn can_reattest(&self) -> bool {
        matches!(self, Self::K8sPsat(_))
    }

    /// The request for one attestation with `csr`. The projected token is read now: kubelet
    /// replaces it long before it expires, so an old copy may already be refused.
    pub fn request(&self, csr: Vec<u8>) -> Result<AttestAgentRequest, EvidenceError> {
        Ok(match self {
            Self::JoinToken(token) => AttestAgentRequest {
                join_token: token.as_str().to_string(),
                csr,
                ..Default::default()
            },
            Self::K8sPsat(psat) => AttestAgentRequest {
                attestation_type: self.name().to_string(),
                payload: sigil_k8s_psat::AttestationData {
                    cluster: psat.cluster.clone(),
                    token: read_token(&psat.token_path)?,
                }
                .to_json(),
                csr,
                ..Default::default()
            },
        })
    }
}

/// The token file as it is (as SPIRE: not trimmed; invalid UTF-8 replaced as Go's JSON
/// encoder would).
fn read_token(path: &Path) -> Result<String, EvidenceError> {
    let data = std::fs::read(path).map_err(|source| EvidenceError::ReadToken {
        path: path.to_path_buf(),
        source,
    })?;
    if data.is_empty() {
        return Err(EvidenceError::EmptyToken(path.to_path_buf()));
    }
    Ok(String::from_utf8_lossy(&data).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psat_payload_is_spires_json_and_reread_every_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let attestor = NodeAttestor::K8sPsat(PsatConfig {
            cluster: "demo".into(),
            token_path: path.clone(),
        });
        assert!(attestor.can_reattest());
        let err = attestor.request(vec![]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("unable to load token from {}: ", path.display())),
            "{err}"
        );
        std::fs::write(&path, "").unwrap();
        assert_eq!(
            attestor.request(vec![]).unwrap_err().to_string(),
            format!(
                "unable to load token from {}: \"{}\" is empty",
                path.display(),
                path.display()
            )
        );
        std::fs::write(&path, "eyJ.first.sig").unwrap();
        let req = attestor.request(vec![1]).unwrap();
        assert_eq!(req.attestation_type, "k8s_psat");
        assert_eq!(
            String::from_utf8(req.payload).unwrap(),
            r#"{"cluster":"demo","token":"eyJ.first.sig"}"#
        );
        assert_eq!((req.csr, req.join_token.as_str()), (vec![1], ""));
        // Kubelet rotated it.
        std::fs::write(&path, "eyJ.second.sig").unwrap();
        let req = attestor.request(vec![]).unwrap();
        assert_eq!(
            String::from_utf8(req.payload).unwrap(),
            r#"{"cluster":"demo","token":"eyJ.second.sig"}"#
        );
    }

    #[test]
    fn join_token_request() {
        let attestor = NodeAttestor::JoinToken(JoinToken::new("abc"));
        assert!(!attestor.can_reattest());
        let req = attestor.request(vec![7]).unwrap();
        assert_eq!(
            (req.join_token.as_str(), req.attestation_type.as_str()),
            ("abc", "")
        );
        assert!(req.payload.is_empty());
    }
}
