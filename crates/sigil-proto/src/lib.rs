//! Generated protobuf and gRPC code. Regenerate with `cargo xtask codegen` (needs `protoc`); the
//! output is committed so that building Sigil never needs `protoc`.
#![allow(missing_debug_implementations, clippy::all)]

/// The SPIFFE Workload API (`SpiffeWorkloadAPI`, package-less as in the SPIFFE spec).
pub mod workload {
    include!("gen/_.rs");
}

/// Types shared by the agent and admin APIs.
pub mod types {
    include!("gen/sigil.types.v1.rs");
}

/// Server <-> agent API.
pub mod agent {
    include!("gen/sigil.agent.v1.rs");
}

/// Admin API (server Unix socket).
pub mod admin {
    include!("gen/sigil.admin.v1.rs");
}
