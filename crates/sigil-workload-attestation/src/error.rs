//! Why a caller could not be attested.

use crate::peer::PeerGone;

/// Why a caller could not be attested. Maps to gRPC `Unavailable`.
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    /// The caller exited or its pid was recycled while we looked: any selectors read are not
    /// trustworthy.
    #[error("workload attestation failed: {0}")]
    PeerGone(#[from] PeerGone),
    /// One attestor could not say anything: only its selectors are lost.
    #[error("workload attestation failed: {0}")]
    Failed(String),
    /// The facts contradict each other (two pods claim the caller's container): the caller
    /// gets no identity at all rather than possibly another workload's. Maps to
    /// `PermissionDenied`.
    #[error("workload attestation refused: {0}")]
    Refused(String),
}
