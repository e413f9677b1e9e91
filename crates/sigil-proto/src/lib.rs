//! Generated protobuf and gRPC code. Regenerate with `cargo xtask codegen` (needs `protoc`); the
//! output is committed so that building Sigil never needs `protoc`.
#![allow(missing_debug_implementations, clippy::all)]

/// The SPIFFE Workload API (`SpiffeWorkloadAPI`, package-less as in the SPIFFE spec).
pub mod workload {
    include!("gen/_.rs");
}

/// Module tree mirroring the proto packages, so generated `super::` paths resolve.
pub mod sigil {
    pub mod types {
        pub mod v1 {
            include!("gen/sigil.types.v1.rs");
        }
    }
    pub mod agent {
        pub mod v1 {
            include!("gen/sigil.agent.v1.rs");
        }
    }
    pub mod admin {
        pub mod v1 {
            include!("gen/sigil.admin.v1.rs");
        }
    }
}

/// Admin API (server Unix socket).
pub use sigil::admin::v1 as admin;
/// Server <-> agent API.
pub use sigil::agent::v1 as agent;
/// Types shared by the agent and admin APIs.
pub use sigil::types::v1 as types;
