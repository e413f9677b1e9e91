//! k8s_psat node attestation.
