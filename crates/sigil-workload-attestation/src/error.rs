//! Why a caller could not be attested.

use crate::peer::PeerGone;

/// Why a caller could not be attested. Maps to gRPC `Unavailable`.
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    /// The caller exited or its pid was recycled while we looked: any selectors read are not
    /// trustworthy.
    #[error("workload attestation failed: {0}")]
    PeerGone(#[from] PeerGone),
    #[error("workload attestation failed: {0}")]
    Failed(String),
}
