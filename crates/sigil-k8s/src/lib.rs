//! Kubernetes for workload attestation.
